"""The CAM engine shared by every method: one forward pass, the gradients of all requested classes at once.

How a call works:

1. The model runs once, in eval mode (every module's ``training`` flag is restored afterwards), with a forward
   hook on the target layer that exists only during the call.
2. The gradients of all requested class scores with respect to the target activation come from one batched
   ``torch.autograd.grad(..., is_grads_batched=True)`` call (chunked to bound memory), never one forward or
   one backward per class. ``autograd.grad`` leaves every ``.grad`` field untouched.
3. **Closed form.** When the target layer feeds a global average pool and a single ``nn.Linear`` (ResNet,
   MobileNetV2, EfficientNet, TwoBranchNet branches...), the gradient of class ``k`` is the constant
   ``W[k] / (h * w)`` at every position, so no backward is needed. This is detected *numerically*: on the
   first call the engine runs the general path and checks that the gradients equal ``W[k] / (h * w)`` and
   that ``logits == W @ mean(A) + b``; only then do later calls use the closed form (a forward under
   ``no_grad`` plus an ``einsum``), and each of them re-checks ``logits == W @ mean(A) + b`` and falls back
   to the general path if it fails. Pass ``closed_form=False`` to always use the general path.
4. Maps are computed in float32 (also under autocast), ReLU'd, resized and normalised on the input's device.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._validation import check_choice, check_tensor, format_shape, type_name
from hiercam.cam._classes import ClassesArg, parse_classes
from hiercam.maps import NormalizeMode, normalize_maps
from hiercam.models.two_branch import Branch, TwoBranchNet

__all__ = ["BaseCAM", "SizeArg", "average_branch_maps"]

SizeArg = Literal["input", "feature"] | tuple[int, int]
ClosedFormState = Literal["unknown", "verified", "general"]

_GRADIENT_BYTES = 256 * 2**20  # memory budget for one batched gradient chunk


def average_branch_maps(maps: Sequence[Tensor] | Tensor, normalize: NormalizeMode | None = "max") -> Tensor:
    """The CAM of a two-branch model (paper section 3.4.2): the mean of the branch maps.

    Each branch map is normalised first (so that a branch with larger activations does not dominate), the
    maps are averaged, and the mean is normalised again so that a ``"max"``-normalised result peaks at 1.
    With ``normalize=None`` the raw maps are averaged.

    Args:
        maps: a sequence of maps of the same shape ``(..., H, W)``, or a tensor with the branch dimension
            first, ``(2, ..., H, W)``.
        normalize: ``"max"``, ``"minmax"`` or ``None`` (see
            [`hiercam.normalize_maps`][hiercam.normalize_maps]).

    Returns:
        The averaged maps ``(..., H, W)``.

    Examples:
        >>> import torch
        >>> m1 = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
        >>> m2 = torch.tensor([[0.0, 0.0], [0.0, 5.0]])
        >>> average_branch_maps([m1, m2])
        tensor([[0., 1.],
                [0., 1.]])
    """
    stacked = maps if isinstance(maps, Tensor) else torch.stack(list(maps))
    check_tensor(stacked, "maps", floating=True)
    if stacked.ndim < 3:
        raise ValueError(
            f"`maps` must stack to shape (branches, ..., H, W), got {format_shape(stacked.shape)}"
        )
    return normalize_maps(normalize_maps(stacked, normalize).mean(dim=0), normalize)


@dataclass
class _Head:
    """One target layer and the logits it explains (a plain model has one head, a two-branch model two)."""

    name: str | None
    layer: nn.Module | None
    logits_of: Callable[[Any], Tensor]
    classifier: nn.Linear | None = None
    state: ClosedFormState = "unknown"
    activation: Tensor | None = field(default=None, repr=False)


class BaseCAM:
    """Base class of the CAM extractors: hooks, the batched gradients, the closed form, resizing.

    Subclasses define how activations ``A (B, C, h, w)`` and gradients ``G (K', B, C, h, w)`` combine into
    maps ``(B, K', h, w)`` before the ReLU (``_combine``).

    Args:
        model: the classifier; it must return logits ``(B, K)``.
        target_layer: the layer whose output is explained: a module of ``model``, its dotted name
            (``"layer4"``, ``"features.18"``), or ``None`` to pick, on the first call, the last layer (in
            execution order) whose output is 4-D with a spatial size above 1x1. ``repr`` shows the choice.
        classifier: the ``nn.Linear`` (or its name) for the closed form; by default the only linear layer of
            shape ``(K, C)``, if there is exactly one.
        closed_form: use the closed form once it has been verified (see the module docstring); ``False``
            always uses the general path.

    A [`TwoBranchNet`][hiercam.TwoBranchNet] is explained branch by branch (paper section 3.4.2): each
    branch's map comes from its own features and its own logits, and the call returns their mean
    ([`average_branch_maps`][hiercam.average_branch_maps]); ``branch_maps`` keeps both,
    ``(2, B, K', H', W')``. ``target_layer`` is then ``None`` (each branch's ``features``) or a dotted name
    inside each branch, and ``logits`` holds the mean logits. The closed form is verified for each branch with
    its own classifier.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``target_layer`` has the wrong type.
        ValueError: ``target_layer`` or ``classifier`` does not name a submodule.
    """

    _uses_gradients: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        classifier: nn.Linear | str | None = None,
        closed_form: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module, got {type_name(model)}")
        self.model = model
        self.closed_form = bool(closed_form)
        self.logits: Tensor | None = None
        self.branch_maps: Tensor | None = None
        self._removed = False
        self._output_logits: Callable[[Any], Tensor] = _plain_logits
        self._heads: list[_Head]
        if isinstance(model, TwoBranchNet):
            if classifier is not None:
                raise ValueError("`classifier` is not used with a TwoBranchNet: each branch has its own")
            self._heads = _branch_heads(model, target_layer)
            self._output_logits = _mean_logits
            return
        name, layer = (
            (None, None) if target_layer is None else _resolve_layer(model, target_layer, "target_layer")
        )
        fc = None
        if classifier is not None:
            _, module = _resolve_layer(model, classifier, "classifier")
            if not isinstance(module, nn.Linear):
                raise TypeError(f"`classifier` must be an nn.Linear, got {type_name(module)}")
            fc = module
        self._heads = [_Head(name, layer, _plain_logits, fc)]

    # ------------------------------------------------------------------------------------------ public API
    @property
    def target_layer(self) -> str | None:
        """Dotted name of the target layer (``None`` until chosen on the first call when not given)."""
        return self._heads[0].name

    def __call__(
        self,
        images: Tensor,
        classes: ClassesArg = None,
        *,
        size: SizeArg = "input",
        normalize: NormalizeMode | None = "max",
    ) -> Tensor:
        """Class activation maps for a batch, all requested classes in one pass.

        Args:
            images: input batch ``(B, C, H, W)``, floating point, on the model's device.
            classes: ``None`` for all ``K`` classes; an int; a list (or 1-D tensor) of class indices, the
                same for every image; or a ``(B, K)`` multi-hot / boolean mask of per-image classes (maps of
                classes absent from an image are zeros).
            size: ``"input"`` (bilinear upsampling to ``(H, W)``), ``"feature"`` (the target layer's
                resolution) or an explicit ``(H, W)``.
            normalize: ``"max"`` (each map divided by its maximum: the IRN convention used for mIoU at 0.15),
                ``"minmax"`` or ``None`` (raw ReLU'd maps).

        Returns:
            Maps ``(B, K', H', W')`` in float32 on the images' device, ``K'`` the number of requested classes
            (``K`` for ``None`` or a mask). The logits of the forward pass are kept in ``logits``.

        Raises:
            TypeError, ValueError: bad images, classes, size or normalize (class indices are range-checked
                against the logits, before any gradient is computed); a target layer that is not reached by
                the forward pass or does not output ``(B, C, H, W)``.
            RuntimeError: the extractor was removed.
        """
        if self._removed:
            raise RuntimeError(f"{type(self).__name__} was removed; create a new one")
        check_tensor(images, "images", dims="B, C, H, W", floating=True)
        request = parse_classes(classes, images.shape[0])
        out_size = _check_size(size, images)
        check_choice(normalize, "normalize", ("max", "minmax", None))

        with self._call_context(images) as inputs:
            if any(head.layer is None for head in self._heads):
                self._choose_layer(inputs)
            use_closed_form = self.closed_form and all(head.state == "verified" for head in self._heads)
            if not self._uses_gradients or use_closed_form:
                output = self._forward(inputs, with_graph=False)
                if self._uses_gradients and not all(
                    self._forward_identity_holds(h, output) for h in self._heads
                ):
                    for head in self._heads:
                        head.state = "unknown"
                    output = self._forward(inputs, with_graph=True)
            else:
                output = self._forward(inputs, with_graph=True)
            try:
                logits = self._output_logits(output)
                resolved = request.resolve(logits.shape[1])
                # float32 maps; gradients reachable even inside the caller's no_grad()
                with torch.autocast(images.device.type, enabled=False), torch.enable_grad():
                    maps = [
                        self._finish(self._head_maps(h, output, resolved.indices), out_size)
                        for h in self._heads
                    ]
            finally:
                for head in self._heads:
                    head.activation = None
        self.logits = logits.detach()
        maps = [resolved.place(m) for m in maps]
        if len(maps) == 1:
            return normalize_maps(maps[0], normalize)
        self.branch_maps = normalize_maps(torch.stack(maps), normalize)
        return average_branch_maps(maps, normalize)

    def remove(self) -> None:
        """Release the extractor: stored tensors are dropped and later calls raise. Safe to call twice.

        No hook is ever left on the model between calls; this only frees memory.
        """
        self._removed = True
        self.logits = None
        self.branch_maps = None
        for head in self._heads:
            head.activation = None

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        layers = ", ".join(
            repr(h.name) if h.name is not None else "<chosen on first call>" for h in self._heads
        )
        states = ", ".join(h.state for h in self._heads)
        closed = f"closed_form={states}" if self.closed_form and self._uses_gradients else "closed_form=off"
        return f"{type(self).__name__}(target_layer={layers}, {closed})"

    # ------------------------------------------------------------------------------------------ method hook
    def _combine(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """Maps ``(B, K', h, w)`` before ReLU from ``A (B, C, h, w)`` and ``G (K', B, C, h, w)`` (float32)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ internals
    @contextmanager
    def _call_context(self, images: Tensor) -> Iterator[Tensor]:
        """Eval mode restored per module, inference mode lifted, inputs usable by autograd."""
        modes = [(module, module.training) for module in self.model.modules()]
        with ExitStack() as stack:
            if torch.is_inference_mode_enabled():
                stack.enter_context(torch.inference_mode(False))
            if self._uses_gradients and any(p.is_inference() for p in self.model.parameters()):
                raise ValueError(
                    "`model` has inference-mode parameters (created or loaded under torch.inference_mode()); "
                    "gradient-based CAMs need autograd: build the model outside inference mode"
                )
            inputs = images.clone() if images.is_inference() else images
            try:
                self.model.eval()
                yield inputs
            finally:
                for module, training in modes:
                    module.training = training

    def _forward(self, inputs: Tensor, *, with_graph: bool) -> Any:
        handles = []
        try:
            for head in self._heads:
                if head.layer is None:  # pragma: no cover - _choose_layer runs first
                    raise RuntimeError("the target layer was not chosen")
                handles.append(head.layer.register_forward_hook(self._capture(head, with_graph)))
            for head in self._heads:
                head.activation = None
            with torch.enable_grad() if with_graph else torch.no_grad():
                output = self.model(inputs)
        finally:
            for handle in handles:
                handle.remove()
        for head in self._heads:
            if head.activation is None:
                raise ValueError(
                    f"`target_layer` {head.name!r} was not reached by the forward pass of `model`"
                )
        return output

    def _capture(self, head: _Head, with_graph: bool) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            if not isinstance(output, Tensor) or output.ndim != 4:
                got = format_shape(output.shape) if isinstance(output, Tensor) else type_name(output)
                raise ValueError(f"`target_layer` {head.name!r} must output a (B, C, H, W) tensor, got {got}")
            if with_graph and not output.requires_grad:
                # Frozen layers upstream: start the graph here so that gradients reach the activation.
                output = output.detach().requires_grad_().clone()
                head.activation = output
                return output
            head.activation = output
            return None

        return hook

    def _choose_layer(self, inputs: Tensor) -> None:
        """Pick the last layer (execution order) with a 4-D output larger than 1x1, from one small forward."""
        seen: list[tuple[str, nn.Module]] = []

        def record(name: str, module: nn.Module) -> Callable[[nn.Module, Any, Any], None]:
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
                if isinstance(output, Tensor) and output.ndim == 4 and output.shape[-2:].numel() > 1:
                    seen.append((name, module))

            return hook

        handles = [m.register_forward_hook(record(n, m)) for n, m in self.model.named_modules() if n]
        try:
            with torch.no_grad():
                self.model(inputs[:1])
        finally:
            for handle in handles:
                handle.remove()
        if not seen:
            raise ValueError("no layer of `model` outputs a 4-D tensor larger than 1x1; pass `target_layer`")
        name, layer = seen[-1]
        for head in self._heads:
            head.name, head.layer = name, layer

    def _head_maps(self, head: _Head, output: Any, indices: list[int]) -> Tensor:
        activation = head.activation
        if activation is None:  # pragma: no cover - _forward guarantees it
            raise RuntimeError("no activation captured")
        logits = head.logits_of(output)
        if not indices:
            return activation.new_zeros(activation.shape[0], 0, *activation.shape[-2:], dtype=torch.float32)
        features = activation.detach().float()
        if not self._uses_gradients:
            return self._combine(features, self._closed_form_gradients(head, activation, logits, indices))
        if head.state == "verified" and self.closed_form and not activation.requires_grad:
            return self._combine(features, self._closed_form_gradients(head, activation, logits, indices))
        gradients = _batched_gradients(logits[:, indices], activation, head.name)
        if head.state == "unknown" and self.closed_form:
            head.state = (
                "verified" if self._closed_form_holds(head, output, gradients, indices) else "general"
            )
        return self._combine(features, gradients)

    def _classifier_for(self, head: _Head, logits: Tensor, activation: Tensor) -> nn.Linear | None:
        shape = (logits.shape[1], activation.shape[1])
        if head.classifier is not None:
            return head.classifier if tuple(head.classifier.weight.shape) == shape else None
        matches = [
            m for m in self.model.modules() if isinstance(m, nn.Linear) and tuple(m.weight.shape) == shape
        ]
        return matches[0] if len(matches) == 1 else None

    def _closed_form_gradients(
        self, head: _Head, activation: Tensor, logits: Tensor, indices: list[int]
    ) -> Tensor:
        classifier = self._classifier_for(head, logits, activation)
        if classifier is None or not self._forward_identity_holds(head, None, activation, logits):
            raise ValueError(
                f"{type(self).__name__} needs the target layer to feed a global average pool and a single "
                f"linear classifier of shape (K, C); this does not hold for `target_layer` {head.name!r}"
                + ("" if classifier is not None else "; pass `classifier` if it is not found automatically")
            )
        batch, _, height, width = activation.shape
        weight = classifier.weight.detach().float()[indices] / (height * width)
        return weight[:, None, :, None, None].expand(len(indices), batch, -1, height, width)

    def _forward_identity_holds(
        self, head: _Head, output: Any, activation: Tensor | None = None, logits: Tensor | None = None
    ) -> bool:
        """Whether ``logits == W @ mean_hw(A) + b`` for this head's classifier, within the dtype tolerance."""
        activation = head.activation if activation is None else activation
        logits = head.logits_of(output) if logits is None else logits
        if activation is None:
            return False
        classifier = self._classifier_for(head, logits, activation)
        if classifier is None:
            return False
        pooled = activation.detach().float().mean(dim=(-2, -1))
        predicted = F.linear(pooled, classifier.weight.detach().float(), _float_or_none(classifier.bias))
        error = (predicted - logits.detach().float()).abs().amax()
        return bool(error <= _tolerance(activation) * logits.detach().float().abs().amax().clamp_min(1.0))

    def _closed_form_holds(self, head: _Head, output: Any, gradients: Tensor, indices: list[int]) -> bool:
        activation = head.activation
        if activation is None or not self._forward_identity_holds(head, output):
            return False
        expected = self._closed_form_gradients(head, activation, head.logits_of(output), indices)
        error = (gradients - expected).abs().amax()
        return bool(error <= _tolerance(activation) * expected.abs().amax() + 1e-12)

    def _finish(self, maps: Tensor, size: tuple[int, int] | None) -> Tensor:
        maps = F.relu(maps)
        if size is not None and tuple(maps.shape[-2:]) != size:
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        return maps


def _batched_gradients(scores: Tensor, activation: Tensor, layer: str | None) -> Tensor:
    """Gradients ``(K', B, C, h, w)`` of each column of ``scores (B, K')`` summed over the batch, w.r.t. A.

    Samples do not interact in eval mode, so the gradient of ``scores[:, k].sum()`` holds every image's own
    gradient. All columns go through one vmapped backward (``is_grads_batched``), chunked to bound memory.
    """
    if not scores.requires_grad:
        raise ValueError(f"the logits of `model` do not depend on `target_layer` {layer!r} through autograd")
    batch, count = scores.shape
    chunk = max(1, _GRADIENT_BYTES // max(1, activation.numel() * 4))
    pieces = []
    for start in range(0, count, chunk):
        part = scores[:, start : start + chunk]
        n = part.shape[1]
        seeds = (
            torch.eye(n, dtype=part.dtype, device=part.device)[:, None, :].expand(n, batch, n).contiguous()
        )
        grads: Tensor | None
        try:
            grads = torch.autograd.grad(
                part, activation, seeds, retain_graph=True, allow_unused=True, is_grads_batched=True
            )[0]
        except RuntimeError:  # an op without a batching rule: the same gradients, one backward per class
            columns = [
                torch.autograd.grad(part[:, j].sum(), activation, retain_graph=True, allow_unused=True)[0]
                for j in range(n)
            ]
            grads = None if any(c is None for c in columns) else torch.stack(columns)
        if grads is None:
            raise ValueError(f"`target_layer` {layer!r} does not influence the logits of `model`")
        pieces.append(grads.float())
    return torch.cat(pieces)


def _branch_heads(net: TwoBranchNet, target_layer: nn.Module | str | None) -> list[_Head]:
    """One head per branch: its feature extractor (or ``target_layer`` inside it) and its own logits."""
    if target_layer is not None and not isinstance(target_layer, str):
        raise TypeError(
            "`target_layer` of a TwoBranchNet must be None (the branch features) or a dotted name inside "
            f"each branch such as 'features.layer3', got {type_name(target_layer)}"
        )
    heads = []
    for index, branch in enumerate(net.branches):
        if not isinstance(branch, Branch):  # pragma: no cover - TwoBranchNet builds Branch modules
            raise TypeError(f"`model.branches[{index}]` must be a Branch, got {type_name(branch)}")
        name, layer = (
            ("features", branch.features)
            if target_layer is None
            else (_resolve_layer(branch, target_layer, "target_layer"))
        )
        heads.append(_Head(f"branches.{index}.{name}", layer, _BranchLogits(index), branch.classifier))
    return heads


@dataclass(frozen=True)
class _BranchLogits:
    """Logits ``(B, K)`` of one branch, from a [`TwoBranchOutput`][hiercam.TwoBranchOutput]."""

    index: int

    def __call__(self, output: Any) -> Tensor:
        logits: Tensor = output.logits[self.index]
        return logits


def _mean_logits(output: Any) -> Tensor:
    logits: Tensor = output.mean_logits
    return logits


def _plain_logits(output: Any) -> Tensor:
    if not isinstance(output, Tensor) or output.ndim != 2:
        got = format_shape(output.shape) if isinstance(output, Tensor) else type_name(output)
        raise ValueError(f"`model` must return logits of shape (B, K), got {got}")
    return output


def _resolve_layer(model: nn.Module, layer: nn.Module | str, argument: str) -> tuple[str, nn.Module]:
    if isinstance(layer, str):
        names = dict(model.named_modules())
        if layer not in names:
            close = difflib.get_close_matches(layer, names, n=3)
            hint = (
                f"; did you mean {', '.join(map(repr, close))}?" if close else "; see model.named_modules()"
            )
            raise ValueError(f"`{argument}` {layer!r} is not a submodule of {type_name(model)}{hint}")
        return layer, names[layer]
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer and name:
                return name, module
        raise ValueError(f"`{argument}` ({type_name(layer)}) is not a submodule of `model`")
    raise TypeError(f"`{argument}` must be an nn.Module, a dotted name or None, got {type_name(layer)}")


def _check_size(size: Any, images: Tensor) -> tuple[int, int] | None:
    if size == "input":
        return int(images.shape[-2]), int(images.shape[-1])
    if size == "feature":
        return None
    if (
        isinstance(size, tuple)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        return int(size[0]), int(size[1])
    raise ValueError(f"`size` must be 'input', 'feature' or a (H, W) tuple of positive ints, got {size!r}")


def _tolerance(activation: Tensor) -> float:
    return 1e-4 if activation.dtype in (torch.float32, torch.float64) else 2e-2


def _float_or_none(bias: Tensor | None) -> Tensor | None:
    return None if bias is None else bias.detach().float()
