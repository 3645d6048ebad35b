"""The CAM engine shared by every method: one forward pass, the gradients of all requested classes at once.

How a call works:

1. The inputs are checked once, at the boundary: ``images`` must be a non-empty, finite ``(B, C, H, W)``
   floating-point batch (one ``aminmax`` pass over the images, negligible next to the forward). torch's own
   errors for a dtype, channel count, size or device that ``model`` cannot take are re-raised naming
   ``images`` and ``model``.
2. The model runs once, in eval mode (every module's ``training`` flag is restored afterwards), with a forward
   hook on the target layer that exists only during the call. **In-place operations after the target layer**
   (an in-place ReLU after a BatchNorm chosen as target, DenseNet's ``F.relu(features, inplace=True)``) would
   overwrite the stored activation and re-route its gradient. The hook records the output's version counter;
   when a later in-place op has changed it, the forward is run again with the hook handing the rest of the
   model a copy, and the extractor keeps copying on later calls. The cost is nothing where no in-place op
   follows the layer, and otherwise one extra forward on the first call and one copy of the activation
   (``B x C x h x w`` values) per call.
3. The gradients of all requested class scores with respect to the target activation come from one batched
   ``torch.autograd.grad(..., is_grads_batched=True)`` call (chunked to bound memory), never one forward or
   one backward per class. Only when that vmapped backward has no batching rule for some op does the engine
   run one backward per class; any other error (out of memory above all) propagates. ``autograd.grad``
   leaves every ``.grad`` field untouched.
4. **Closed form.** When the target layer feeds a global average pool and a single ``nn.Linear`` (ResNet,
   MobileNetV2, EfficientNet, TwoBranchNet branches...), the gradient of class ``k`` is the constant
   ``W[k] / (h * w)`` at every position, so no backward is needed. It is used only after a call on the
   general path has verified, for the requested classes and that input size, that (a) every autograd node
   between the target layer and the logits is affine (views, means, average pools, the linear layer: a ReLU,
   GELU, max pool or any unknown op fails), so the gradients do not depend on the input; (b) the gradients
   equal ``W[k] / (h * w)``; and (c) ``logits == W @ mean(A) + b``. Later calls with those classes and that
   size use a forward under ``no_grad`` plus an ``einsum``; each re-checks (c) and falls back to the
   general path if it fails. Other classes or another input size are verified first (the verified classes
   are kept per input size, for the last 32 sizes), and so is a model whose modules changed (one replaced,
   added or removed). ``repr`` shows the state; pass ``closed_form=False`` to always use the general path.
   The re-check (c) is a value check: with the checks off the host does not read it, and the images for
   which it fails get NaN maps instead of a fallback (no wrong map that looks normal).
5. Maps are computed in float32 (also under autocast), checked to be finite once per head (non-finite
   logits, target activations or gradients are a ``ValueError`` that says which; these, and the finiteness
   of ``images``, are value checks that [`hiercam.set_checks`][hiercam.set_checks] switches off), ReLU'd,
   resized (one batched ``interpolate``, [`resize_maps`][hiercam.maps.resize_maps]) and normalised on the
   input's device (``hiercam.cam.postprocess``).

Token outputs ``(B, N, C)`` and channels-last maps are read as ``(B, C, h, w)`` through the ``reshape``
option (``hiercam.cam.reshape``), applied to the activation and to the gradients of the general path; the
automatic layer choice is in ``hiercam.cam._layers``. The scores come from the model's output through
``output`` and, for any output, ``targets`` (``hiercam.cam.targets``); a ``(B,)`` class tensor selects one
logit per image (``hiercam.cam._classes``), which the closed form serves too.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._validation import all_finite, check_choice, should_check, type_name
from hiercam.cam._autograd import batched_gradients
from hiercam.cam._checks import (
    check_elements,
    check_images,
    check_model,
    check_size,
    non_finite_origin,
    uncompiled,
)
from hiercam.cam._classes import ClassesArg, ClassRequest, ResolvedClasses, parse_classes
from hiercam.cam._closed_form import (
    closed_form_gradients,
    forward_identity_holds,
    same_modules,
    unless_identity_holds,
    verify,
)
from hiercam.cam._forward import as_map, call_model, eval_context, head_logits, hooked_forward
from hiercam.cam._heads import HeadState, LayerArg, MapPlan, build_heads
from hiercam.cam._layers import choose_layer
from hiercam.cam._pca import smoothed_maps
from hiercam.cam._release import Releasable
from hiercam.cam.contrast import check_softmax_over, softmax_over_gradients
from hiercam.cam.postprocess import average_branch_maps, average_layer_maps, normalize_own, resize_heads
from hiercam.cam.reshape import ReshapeArg
from hiercam.cam.targets import OutputArg, TargetsArg, check_targets, target_scores
from hiercam.maps import NormalizeMode, normalize_maps
from hiercam.protocols import MultiHeadModel

__all__ = ["BaseCAM", "SizeArg"]

SizeArg = Literal["input", "feature"] | tuple[int, int]

MAPS_WARNING_BYTES = 2**30
"""An all-class call whose maps would hold more than this many bytes warns once per extractor."""


class BaseCAM(Releasable):
    """Base class of the CAM extractors: hooks, the batched gradients, the closed form, resizing.

    Subclasses define how activations ``A (B, C, h, w)`` and gradients ``G (K', B, C, h, w)`` combine into
    maps ``(B, K', h, w)`` before the ReLU (``_combine``).

    Args:
        model: the classifier; it must return logits ``(B, K)`` (or an output that ``output`` selects them
            from, or any output explained through ``targets``), unless it is a multi-head model (below).
        target_layer: the layer whose output is explained: a module of ``model``, its dotted name
            (``"layer4"``, ``"features.18"``), or ``None`` to pick it on the first call (below);
            ``target_layer`` and ``repr`` show the choice. A list of layers (``["layer3", "layer4"]``,
            pytorch-grad-cam's ``target_layers``) explains each and averages the maps (below).
        classifier: the ``nn.Linear`` (or its name) for the closed form; by default the only linear layer of
            shape ``(K, C)``, if there is exactly one.
        closed_form: use the closed form once it has been verified (see the module docstring); ``False``
            always uses the general path.
        reshape: how the target layer's output is read as a map ``(B, C, h, w)``: ``"auto"`` (maps as they
            are, channels-last ``(B, h, w, C)`` permuted, tokens ``(B, N, C)`` folded into the patch grid
            inferred from the token count and the input size, prefix tokens dropped; ambiguous counts are an
            error), a callable applied to the output and to its gradients (like pytorch-grad-cam's
            ``reshape_transform``, e.g. [`TokenReshape`][hiercam.TokenReshape]), or ``None`` (the output
            must be ``(B, C, h, w)``). See ``hiercam.cam.reshape``.
        output: which part of the model's output holds the scores: ``None`` (the output is a tensor), a key
            (``"out"`` for torchvision's segmentation models), an index, or a callable on the output. See
            ``hiercam.cam.targets``.
        eigen_smooth: replace each map by the first principal component of the method's weighted
            activations (per image and class; pytorch-grad-cam's ``eigen_smooth``, see
            [`principal_component_maps`][hiercam.principal_component_maps]).

    A multi-head model ([`MultiHeadModel`][hiercam.MultiHeadModel]: a ``cam_heads()`` method, e.g.
    [`TwoBranchNet`][hiercam.TwoBranchNet]) is explained head by head (paper section 3.4.2): each head's map
    comes from its own feature layer and its own logits, and the call returns their mean
    ([`average_branch_maps`][hiercam.average_branch_maps]); ``branch_maps`` keeps every head's maps,
    ``(heads, B, K', H', W')``. ``target_layer`` is then ``None`` (each head's feature layer) or a dotted name
    inside each head's ``scope``, and ``logits`` holds the mean of the heads' logits. The closed form is
    verified for each head with its own classifier.

    **Several target layers** (a plain model): one forward pass, each layer's maps computed as for one layer
    (the gradients of all of them from the same graph), then combined in pytorch-grad-cam's order: each
    layer's ReLU'd maps normalised (``normalize``) at the layer's own resolution, resized to the output size
    (``size="feature"``: the finest layer's), averaged, and the mean normalised again. ``branch_maps`` keeps
    the per-layer maps ``(layers, B, K', H', W')``; ``target_layers`` their names. The closed form is used
    only when every layer is verified for it (rarely: a layer before the last one is not).

    With ``target_layer=None`` the layer is chosen on the first call from one probe forward and backward:
    the last layer whose output is a real feature map of the input that the scores depend on, never an
    attention tensor; for a transformer (token or channels-last outputs last) the last block's norm with
    ``reshape="auto"``, an error otherwise. ``target_layer`` then holds its name. See
    ``hiercam.cam._layers``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``target_layer``, ``reshape`` or ``output`` has the
            wrong type, or ``model.cam_heads()`` returns something other than [`CAMHead`][hiercam.CAMHead]
            objects.
        ValueError: ``target_layer`` or ``classifier`` does not name a submodule, or ``classifier`` or
            ``output`` is given for a multi-head model.
    """

    _uses_gradients: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerArg = None,
        *,
        classifier: nn.Linear | str | None = None,
        closed_form: bool = True,
        reshape: ReshapeArg = "auto",
        output: OutputArg = None,
        eigen_smooth: bool = False,
    ) -> None:
        model, target_layer, classifier = uncompiled(check_model(model), target_layer, classifier)
        if not (reshape is None or reshape == "auto" or (callable(reshape) and not isinstance(reshape, str))):
            raise TypeError(f"`reshape` must be 'auto', None or a callable, got {reshape!r}")
        if not isinstance(eigen_smooth, bool):
            raise TypeError(f"`eigen_smooth` must be a bool, got {type_name(eigen_smooth)}")
        self.model = model
        self.closed_form = bool(closed_form)
        self.reshape = reshape
        self.eigen_smooth = eigen_smooth
        self._inputs: Tensor | None = None  # the call's images, for perturbation methods (hiercam.cam.score)
        self._softmax_over: Tensor | None = None  # the call's ``softmax_over``, bool, during the call
        self.logits: Tensor | None = None
        self.classes: Tensor | None = None
        self.branch_maps: Tensor | None = None
        self._removed = False
        self._warned_memory = False
        self._num_classes: int | None = None
        self._heads: list[HeadState] = build_heads(model, target_layer, classifier, output)
        self._layer_mean = len(self._heads) > 1 and not isinstance(model, MultiHeadModel)

    # ------------------------------------------------------------------------------------------ public API
    @property
    def target_layer(self) -> str | None:
        """Dotted name of the target layer (``None`` until chosen on the first call when not given).

        With several target layers (or heads), the first; ``target_layers`` lists them all.
        """
        return self._heads[0].name

    @property
    def target_layers(self) -> list[str | None]:
        """Dotted names of every target layer: one per layer given, or per head of a multi-head model."""
        return [head.name for head in self._heads]

    def __call__(
        self,
        images: Tensor,
        classes: ClassesArg = None,
        *,
        top_k: int | None = None,
        targets: TargetsArg = None,
        size: SizeArg = "input",
        normalize: NormalizeMode | None = "max",
        softmax_over: Tensor | None = None,
    ) -> Tensor:
        """Class activation maps for a batch, all requested classes in one pass.

        Args:
            images: input batch ``(B, C, H, W)``, floating point, finite, on the model's device, ``B >= 1``.
            classes: ``None`` for all ``K`` classes; an int; a list of class indices, the same for every
                image; a ``(B,)`` integer tensor, one class per image (``classes[i]`` for image ``i``, maps
                ``(B, 1, H', W')``); or a ``(B, K)`` multi-hot / boolean mask of per-image classes (maps of
                classes absent from an image are zeros; an all-zero mask gives all-zero maps).
            top_k: instead of ``classes``, each image's ``top_k`` highest-scoring classes (by the logits of
                this forward pass; ``top_k=1`` is the predicted class, pytorch-grad-cam's ``targets=None``),
                highest first: maps ``(B, top_k, H', W')``, their classes in ``classes`` ``(B, top_k)``.
                Memory and backward cost grow with ``top_k``, not with ``K``.
            targets: instead of ``classes``, what to explain in each image: a callable, or one per image,
                that maps one image's selected output (``(K,)`` logits, a ``(K, H, W)`` segmentation map...)
                to a scalar score, e.g. [`ClassifierOutputTarget`][hiercam.ClassifierOutputTarget] or
                [`SemanticSegmentationTarget`][hiercam.SemanticSegmentationTarget]; maps ``(B, 1, H', W')``.
                The closed form is not used with targets.
            size: ``"input"`` (bilinear upsampling to ``(H, W)``), ``"feature"`` (the target layer's
                resolution) or an explicit ``(H, W)``.
            normalize: ``"max"`` (each map divided by its maximum: the IRN convention used for mIoU at 0.15),
                ``"minmax"`` or ``None`` (raw ReLU'd maps).
            softmax_over: ``(B, K)`` 0/1 labels (or bools) of each image's classes, with ``classes=None``:
                explain every class ``c`` by its log-softmax over the image's classes plus ``c`` instead of
                its logit, so that what ``c`` shares with the other classes of the image is subtracted (the
                softmax-over-present-classes target, ``hiercam.cam.contrast``; exact, from the same one
                backward; a class with no other class in its image keeps its plain map). Gradient-based
                methods only.

        Returns:
            Maps ``(B, K', H', W')`` in float32 on the images' device, ``K'`` the number of requested classes
            (``K`` for ``None`` or a mask, 1 for a ``(B,)`` tensor or ``targets``, ``top_k``). The logits of
            the forward pass (the selected output) are kept in ``logits``, and the class of every map in
            ``classes``: ``(B, K')`` int64 on the CPU (``classes[i, j]`` is the class of ``maps[i, j]``;
            ``None`` with ``targets``).

        Warns:
            UserWarning: once per extractor, when a call for all classes (``classes=None`` or a mask) would
                hold more than 1 GiB of maps (``B * K * H' * W' * 4`` bytes, e.g. 2 images of a
                1000-class model at 224 x 224 hold 383 MiB); it names ``top_k``.

        Raises:
            TypeError, ValueError: bad images (empty, NaN or Inf, a dtype, channel count, size or device the
                model cannot take), classes (a ``(B,)`` tensor of another length), targets, size or normalize
                (class indices are range-checked against the logits, before any gradient is computed); an
                ``output`` that selects nothing; a target layer that is not reached by the forward pass or
                whose output cannot be read as ``(B, C, h, w)``; non-finite logits, target activations or
                gradients (the message says which).
            RuntimeError: the extractor was removed.
        """
        if self._removed:
            raise RuntimeError(f"{type(self).__name__} was removed; create a new one")
        check_images(images)
        if targets is not None and (classes is not None or top_k is not None):
            given = "classes" if classes is not None else "top_k"
            raise ValueError(f"pass either `{given}` or `targets`, not both")
        targets = check_targets(targets, images.shape[0])
        if softmax_over is not None:
            selects = classes if top_k is None else top_k
            softmax_over = self._check_softmax_over(softmax_over, images.shape[0], selects, targets)
        request = parse_classes(classes, images.shape[0], top_k)
        out_size = check_size(size, images)
        check_choice(normalize, "normalize", ("max", "minmax", None))
        return self._explain(images, request, targets, out_size, normalize, softmax_over)

    def _explain(
        self,
        images: Tensor,
        request: ClassRequest,
        targets: TargetsArg,
        out_size: tuple[int, int] | None,
        normalize: NormalizeMode | None,
        softmax_over: Tensor | None,
    ) -> Tensor:
        """The maps of a checked call (``MultiScaleCAM`` passes per-image classes ``(B, k)`` here)."""
        input_size = (int(images.shape[-2]), int(images.shape[-1]))

        with self._call_context(images) as inputs:
            if any(head.layer is None for head in self._heads):
                self._choose_layer(inputs, targets)
            closed = targets is None and self._closed_form_ready(request, input_size)
            output = self._run(inputs, input_size, with_graph=self._needs_graph and not closed)
            self._inputs = inputs
            try:
                head_logits = [self._head_logits(head, output, targets) for head in self._heads]
                if (
                    closed
                    and should_check()
                    and not all(
                        forward_identity_holds(self.model, h, lg)
                        for h, lg in zip(self._heads, head_logits, strict=True)
                    )
                ):  # checks off: no host read, unless_identity_holds in _head_maps instead
                    for head in self._heads:
                        head.state = "unknown"
                    closed = False
                    output = self._run(inputs, input_size, with_graph=True)
                    head_logits = [self._head_logits(head, output, targets) for head in self._heads]
                logits = head_logits[0] if len(head_logits) == 1 else torch.stack(head_logits).mean(dim=0)
                if softmax_over is not None and softmax_over.shape[1] != logits.shape[1]:
                    raise ValueError(
                        f"`softmax_over` has {softmax_over.shape[1]} classes but the model has "
                        f"{logits.shape[1]}"
                    )
                self._softmax_over = softmax_over
                if targets is None:
                    resolved = request.resolve(logits)
                    self._num_classes = int(logits.shape[1])
                else:
                    resolved = ResolvedClasses([0], None, 1)
                if out_size is not None:  # before the backward and the maps are allocated
                    check_elements(
                        images.shape[0] * resolved.num_outputs * out_size[0] * out_size[1],
                        "size" if out_size != input_size else "classes",
                        f"the {resolved.num_outputs} maps of each of {images.shape[0]} images at "
                        f"{out_size[0]}x{out_size[1]}",
                        "explain fewer classes per call (`classes=[...]` or `top_k`), fewer images, or "
                        "pass a smaller `size`",
                    )
                plan = MapPlan(resolved, targets, closed, input_size)
                # float32 maps; gradients reachable even inside the caller's no_grad()
                with torch.autocast(images.device.type, enabled=False), torch.enable_grad():
                    raw = [
                        F.relu(self._head_maps(h, lg, plan))
                        for h, lg in zip(self._heads, head_logits, strict=True)
                    ]
                    if targets is None and request.indices is None and request.per_image is None:
                        size = out_size or (int(raw[0].shape[-2]), int(raw[0].shape[-1]))
                        self._warn_memory(images.shape[0], resolved.num_outputs, size)
                    maps = [] if self._layer_mean else resize_heads(raw, out_size)
            finally:
                self._inputs = None
                self._softmax_over = None
                for head in self._heads:
                    head.activation = None
        self.logits = logits.detach()
        self.classes = None if targets is not None else resolved.class_indices(images.shape[0])
        if self._layer_mean:
            mean, self.branch_maps = average_layer_maps([resolved.place(m) for m in raw], out_size, normalize)
            return mean
        maps = [resolved.place(m) for m in maps]
        if len(maps) == 1:
            return normalize_own(maps[0], normalize)
        # the maps were checked to be finite per head: no second check of the same values
        self.branch_maps = normalize_maps(torch.stack(maps), normalize, validate_args=False)
        return average_branch_maps(maps, normalize, validate_args=False)

    def remove(self) -> None:
        """Release the extractor: stored tensors are dropped and later calls raise. Safe to call twice.

        No hook is ever left on the model between calls; this only frees memory.
        """
        self._removed = True
        self.logits = None
        self.classes = None
        self.branch_maps = None
        for head in self._heads:
            head.activation = None

    def __repr__(self) -> str:
        layers = ", ".join(
            repr(h.name) if h.name is not None else "<chosen on first call>" for h in self._heads
        )
        states = ", ".join(h.state for h in self._heads)
        closed = (
            f"closed_form={states}" if self.closed_form or not self._uses_gradients else "closed_form=off"
        )
        readings = sorted({h.reading for h in self._heads if h.reading != "map"})
        read = f"read as {', '.join(readings)}" if readings else ""
        parts = [f"target_layer={layers}", read, closed if self._needs_graph else self._extra_repr()]
        parts += ["eigen_smooth=True"] if self.eigen_smooth else []
        return f"{type(self).__name__}({', '.join(p for p in parts if p)})"

    # ------------------------------------------------------------------------------------------ method hook
    def _combine(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """Maps ``(B, K', h, w)`` before ReLU from ``A (B, C, h, w)`` and ``G (K', B, C, h, w)`` (float32)."""
        raise NotImplementedError

    # ------------------------------------------- extension points: gradient-free methods, eigen_smooth
    # Gradient-free and perturbation methods (hiercam.cam.score, hiercam.cam.eigen) set ``_needs_graph``
    # False: the forward pass then runs under no_grad, and they override ``_head_maps(head, logits, plan)``
    # (the call's images are in ``self._inputs`` meanwhile). They read the activation as a map with
    # ``_as_map(head, ...)`` (tokens and channels-last outputs), score the classes with ``plan.resolved``
    # (``indices``, one class per image through ``per_image_rows``) or the ``plan.targets``.
    # ``eigen_smooth`` goes through ``_maps`` and the methods' ``_terms``.
    _needs_graph: ClassVar[bool] = True

    def _extra_repr(self) -> str:
        return ""

    def _scores(self, logits: Tensor, plan: MapPlan) -> Tensor:
        """The scores ``(B, K')`` explained: the targets, or the classes' logits (FinerCAM: others)."""
        if plan.targets is not None:
            return target_scores(logits, plan.targets)
        return plan.resolved.scores(logits)

    def _gradients(self, scores: Tensor, activation: Tensor, head: HeadState) -> Tensor:
        """Gradients ``(K', B, ...)`` of the columns of ``scores`` w.r.t. ``activation`` (ShapleyCAM: +)."""
        return batched_gradients(scores, activation, head.name)

    def _terms(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """The weighted activations ``(B, K', C, h, w)`` whose sum over ``C`` is ``_combine``'s maps."""
        raise NotImplementedError(f"{type(self).__name__} does not support `eigen_smooth`")

    def _maps(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """``_combine``, or with ``eigen_smooth`` the first principal component of the ``_terms``."""
        if not self.eigen_smooth or (
            should_check() and not (all_finite(activations) and all_finite(gradients))
        ):
            return self._combine(activations, gradients)  # non-finite inputs: the caller names them
        return smoothed_maps(lambda part: self._terms(activations, gradients[part]), gradients.shape[0])

    # ------------------------------------------------------------------------------------------ internals
    def _warn_memory(self, batch: int, count: int, size: tuple[int, int]) -> None:
        """Warn once when an all-class call holds more than ``MAPS_WARNING_BYTES`` of float32 maps."""
        needed = batch * count * size[0] * size[1] * 4
        if self._warned_memory or needed <= MAPS_WARNING_BYTES:
            return
        self._warned_memory = True
        warnings.warn(
            f"{type(self).__name__}: the maps of all {count} classes of {batch} images at "
            f"{size[0]}x{size[1]} hold {needed / 2**30:.1f} GiB; pass `top_k=1` (each image's predicted "
            "class) or `classes=[...]` to explain fewer classes (warned once per extractor)",
            UserWarning,
            stacklevel=3,
        )

    @contextmanager
    def _call_context(self, images: Tensor) -> Iterator[Tensor]:
        """Eval mode restored per module, inference mode lifted, inputs usable by autograd."""
        with eval_context(self.model, images) as inputs:
            yield inputs

    def _closed_form_ready(self, request: ClassRequest, input_size: tuple[int, int]) -> bool:
        """Whether the closed form was verified for every head, for these classes and this input size."""
        if (self._uses_gradients and not self.closed_form) or self._num_classes is None:
            return False
        wanted = request.planned(self._num_classes)
        return all(
            h.state == "verified"
            and wanted <= h.verified.get(input_size, frozenset())
            and same_modules(self.model, h)
            for h in self._heads
        )

    def _run(self, inputs: Tensor, input_size: tuple[int, int], *, with_graph: bool) -> Any:
        """The forward pass; run again with copied activations if a later in-place op changed one."""
        output = self._forward(inputs, input_size, with_graph=with_graph)
        changed = [h for h in self._heads if h.activation is not None and h.activation._version != h.version]
        if not changed:
            return output
        for head in changed:
            head.copy_activation = True
        return self._forward(inputs, input_size, with_graph=with_graph)

    def _forward(self, inputs: Tensor, input_size: tuple[int, int], *, with_graph: bool) -> Any:
        return hooked_forward(
            self._call_model, self._heads, inputs, input_size, self.reshape, with_graph=with_graph
        )

    def _call_model(self, inputs: Tensor, images: Tensor | None = None) -> Any:
        """``model(inputs)``; torch's errors on bad inputs are translated naming ``images`` (the caller's)."""
        return call_model(self.model, inputs, images)

    def _choose_layer(self, inputs: Tensor, targets: TargetsArg) -> None:
        """Pick the target layer from one probe forward and backward (``hiercam.cam._layers``)."""
        if callable(self.reshape) and not isinstance(self.reshape, str):
            raise ValueError(
                "a `reshape` callable needs `target_layer`: the layer it reads cannot be guessed"
            )

        def scores_of(output: Any) -> Tensor:
            return self._head_logits(self._heads[0], output, targets)

        name, layer = choose_layer(
            self.model, inputs, partial(self._call_model, images=inputs), scores_of, self.reshape
        )
        for head in self._heads:
            head.name, head.layer = name, layer

    def _head_logits(self, head: HeadState, output: Any, targets: TargetsArg = None) -> Tensor:
        return head_logits(self.model, head, output, targets)

    def _head_maps(self, head: HeadState, logits: Tensor, plan: MapPlan) -> Tensor:
        """One head's maps ``(B, K', h, w)`` before the ReLU, from its logits ``(B, K)``."""
        activation, features = self._features(head)
        resolved, targets = plan.resolved, plan.targets
        if not resolved.indices:
            return features.new_zeros(features.shape[0], 0, *features.shape[-2:])
        if plan.closed:
            gradients = closed_form_gradients(self.model, head, features, logits, resolved)
        else:
            raw = self._gradients(self._scores(logits, plan), activation, head)
            gradients = self._as_map(head, raw.flatten(0, 1)).unflatten(0, raw.shape[:2]).float()
            if targets is None and (
                not self._uses_gradients or (self.closed_form and head.state != "general")
            ):
                verify(self.model, head, logits, gradients, resolved, plan.input_size)
            if not self._uses_gradients:
                if head.state != "verified":
                    raise ValueError(
                        f"{type(self).__name__} needs the target layer to feed a global average pool and a "
                        f"single linear classifier of shape (K, C); this does not hold for `target_layer` "
                        f"{head.name!r}" + ("; pass `classifier` if it is not found automatically")
                    )
                gradients = closed_form_gradients(self.model, head, features, logits, resolved)
        if self._softmax_over is not None:  # every class was requested (checked): rows in class order
            gradients = softmax_over_gradients(gradients.detach(), logits.detach(), self._softmax_over)
        maps = self._maps(features, gradients)
        if plan.closed and not should_check():
            maps = unless_identity_holds(self.model, head, logits, maps)
        if should_check() and not all_finite(maps):
            raise ValueError(non_finite_origin(head, features, gradients))
        return maps

    def _check_softmax_over(
        self, value: Tensor, batch: int, classes: ClassesArg, targets: TargetsArg
    ) -> Tensor:
        if not self._needs_graph:
            raise ValueError(
                f"`softmax_over` needs a gradient-based method; {type(self).__name__} uses no gradients"
            )
        if classes is not None or targets is not None:
            raise ValueError("`softmax_over` explains every class: pass `classes=None` and no `targets`")
        return check_softmax_over(value, batch)

    def _features(self, head: HeadState) -> tuple[Tensor, Tensor]:
        """The head's captured activation, and it detached and read as float32 maps ``(B, C, h, w)``."""
        activation = head.activation
        if activation is None:  # pragma: no cover - _forward guarantees it
            raise RuntimeError("no activation captured")
        return activation, self._as_map(head, activation.detach()).float()

    @staticmethod
    def _as_map(head: HeadState, values: Tensor) -> Tensor:
        """The target layer's output (or its gradients, batch-flattened) as ``(B, C, h, w)``."""
        return as_map(head, values)
