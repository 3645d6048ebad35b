"""FullGrad: the input-gradient and the bias-gradients of every convolution and batch norm, summed.

Srinivas & Fleuret (2019, "Full-Gradient Representation for Neural Network Visualization", NeurIPS)
decompose a ReLU network's output into an input term and one term per bias: ``f(x) = grad_x f . x +
sum_l grad_{b_l} f . b_l``. The saliency map shows both, each post-processed (absolute value, rescaled to
``[0, 1]``, upsampled to the input) and summed:

    ``S(x) = sum_c psi(|x_c * grad_{x_c} f|) + sum_l sum_c psi(|b_lc * grad_{z_lc} f|)``

with ``z_l`` the output of layer ``l`` (the gradient with respect to a bias is the gradient with respect to
its output, broadcast). FullGrad has no target layer: it reads every ``nn.Conv2d`` with a bias and every
``nn.BatchNorm2d`` (subclasses included), whose bias in eval mode is ``beta - mu * gamma / sqrt(var +
eps)``.

With ``eigen_smooth`` (pytorch-grad-cam's option for FullGrad) the terms are not summed: each input channel's
map and each layer's map (its channels summed) is rescaled to ``[0, 1]`` and shrunk to an eighth of the
input's size, and the map is the first principal component of those maps (the layers as the features, the
positions as the samples), rescaled to ``[0, 1]`` and enlarged back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._validation import all_finite, type_name
from hiercam.cam._autograd import is_batching_failure
from hiercam.cam._heads import HeadState, MapPlan
from hiercam.cam._input_gradients import InputGradientCAM
from hiercam.cam._pca import principal_component_maps
from hiercam.cam.targets import OutputArg

__all__ = ["FullGrad"]

_RESCALE_EPS = 1e-7  # pytorch-grad-cam's guard in the [0, 1] rescaling (scale_cam_image)
_GRADIENT_BYTES = 256 * 2**20  # memory budget of the gradients of one chunk of classes
_EIGEN_SHRINK = 8  # pytorch-grad-cam's FullGrad projects its eigen_smooth maps at 1/8 of the input's size


class FullGrad(InputGradientCAM):
    """FullGrad (Srinivas & Fleuret, 2019): input-gradient and bias-gradient maps of the whole model, summed.

    For each image and class: ``|x * grad_x s|`` for each input channel, and ``|b_c * grad_{z_c} s|`` for
    each channel ``c`` of the output ``z`` of every bias layer (``nn.Conv2d`` with a bias,
    ``nn.BatchNorm2d``), each map min-max rescaled to ``[0, 1]`` on its own (``(m - min) / (max - min +
    1e-7)``, as pytorch-grad-cam does), upsampled bilinearly to the input size and summed. A layer called
    twice in the forward pass counts twice. The map is at the input's resolution (``size="feature"`` too).

    All requested classes take part in one batched backward to the input and to every bias layer's output
    (by chunks of classes that bound the memory of those gradients). There is no target layer and no
    ``softmax_over``; a model without a bias layer gets the input term alone.

    ``eigen_smooth=True`` replaces the sum by the first principal component of the terms, as
    pytorch-grad-cam's ``eigen_smooth`` for FullGrad does: every input channel's term and every layer's term
    (its channels summed), each rescaled to ``[0, 1]`` and shrunk bilinearly to ``(H // 8, W // 8)`` (at least
    1 x 1), are the features of each position; the map is the centred positions' projection on the first
    principal axis ([`principal_component_maps`][hiercam.principal_component_maps], oriented to correlate
    with the terms' sum where pytorch-grad-cam keeps LAPACK's arbitrary sign), rescaled to ``[0, 1]`` and
    enlarged bilinearly to the input size.

    Against the peers: pytorch-grad-cam 1.5.7 is the same computation (test
    ``tests/test_cam_peer_gradient_methods.py``). The authors' implementation (``fullgrad-saliency``) rescales
    each layer's gradients over all of its channels at once rather than per channel and upsamples with
    ``align_corners=True``; hiercam follows pytorch-grad-cam.

    Args:
        model: the classifier (see [`BaseCAM`][hiercam.BaseCAM]; a multi-head model averages its heads).
        target_layer: must be ``None`` (every bias layer is used).
        output: as for [`BaseCAM`][hiercam.BaseCAM].

    Raises:
        ValueError: a ``target_layer`` is given, or (at the call) a batch norm keeps no running statistics
            (its bias is then not a constant); and as for [`BaseCAM`][hiercam.BaseCAM].

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> cam = FullGrad(resnet18(num_classes=3))
        >>> cam(torch.randn(2, 3, 32, 32), top_k=1).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: None = None,
        *,
        eigen_smooth: bool = False,
        output: OutputArg = None,
    ) -> None:
        if not isinstance(eigen_smooth, bool):
            raise TypeError(f"`eigen_smooth` must be a bool, got {type_name(eigen_smooth)}")
        super().__init__(model, target_layer, output=output)
        self.eigen_smooth = eigen_smooth
        # (gradient edge of a layer's output, its bias, the output's number of values)
        self._captured: list[tuple[Any, Tensor, int]] = []

    def _extra_repr(self) -> str:
        count = sum(1 for m in self.model.modules() if _bias_of(m, check=False) is not None)
        return f"bias_layers={count}" + (", eigen_smooth=True" if self.eigen_smooth else "")

    def _hooks(self) -> Any:
        return self._capture()

    @contextmanager
    def _capture(self) -> Iterator[None]:
        """Record the gradient edge of every bias layer's output (and its bias) during the forward pass.

        The edge is the output as the layer produced it, so an in-place op after the layer (a ReLU after a
        batch norm) changes neither the value nor the gradient read.
        """
        captured: list[tuple[Any, Tensor, int]] = []

        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            bias = _bias_of(module)
            if bias is not None and isinstance(output, Tensor) and output.requires_grad and output.ndim == 4:
                edge = torch.autograd.graph.get_gradient_edge(output)
                captured.append((edge, bias.detach(), output.numel()))

        handles = [m.register_forward_hook(hook) for m in self.model.modules() if _is_bias_layer(m)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._captured = captured

    def _explain(self, *args: Any, **kwargs: Any) -> Tensor:
        try:
            return super()._explain(*args, **kwargs)
        finally:
            self._captured = []

    def _input_maps(self, head: HeadState, scores: Tensor, inputs: Tensor, plan: MapPlan) -> Tensor:
        if not scores.requires_grad:
            raise ValueError("the scores of `model` do not depend on `images` through autograd")
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        per_class = 4 * (inputs.numel() + sum(numel for _, _, numel in self._captured))  # bytes of one class
        chunk = max(1, _GRADIENT_BYTES // max(1, per_class))
        pieces = []
        for start in range(0, scores.shape[1], chunk):
            part = scores[:, start : start + chunk]
            pieces.append(self._chunk_maps(part, inputs, size))
        return torch.cat(pieces, dim=1)

    def _chunk_maps(self, part: Tensor, inputs: Tensor, size: tuple[int, int]) -> Tensor:
        """The maps ``(B, n, H, W)`` of the columns of ``part (B, n)``."""
        terms = self._terms_of(part, inputs, size)
        if not self.eigen_smooth:
            total = next(terms).sum(dim=2)
            for layer in terms:
                total += layer
            return total.transpose(0, 1)
        small = (max(1, size[0] // _EIGEN_SHRINK), max(1, size[1] // _EIGEN_SHRINK))
        channels = next(terms)
        shrunk = [_shrunk(channels[:, :, c], small) for c in range(channels.shape[2])]
        stacked = torch.stack(shrunk + [_shrunk(layer, small) for layer in terms], dim=2)  # (n, B, T, h, w)
        # no projection of non-finite terms: their sum keeps them, and the caller names them
        projection = (
            _rescaled(principal_component_maps(stacked)) if all_finite(stacked) else stacked.sum(dim=2)
        )
        return F.interpolate(projection, size=size, mode="bilinear", align_corners=False).transpose(0, 1)

    def _terms_of(self, part: Tensor, inputs: Tensor, size: tuple[int, int]) -> Iterator[Tensor]:
        """FullGrad's terms of the columns of ``part (B, n)``, each rescaled per channel, at the input's size.

        First the input term per channel ``(n, B, C, H, W)``, then each bias layer's term, its channels
        summed, ``(n, B, H, W)`` (a layer that does not reach the scores gives none).
        """
        gradients = _batched_gradients(part, [inputs, *(edge for edge, _, _ in self._captured)])
        input_gradient = gradients[0]
        if input_gradient is None:
            raise ValueError("the scores of `model` do not depend on `images` through autograd")
        yield _rescaled(input_gradient.float().mul(inputs.detach().float()).abs_())
        for gradient, (_, bias, _) in zip(gradients[1:], self._captured, strict=True):
            if gradient is None:  # a layer that does not reach the scores
                continue
            terms = gradient.float().mul(bias.float()[:, None, None]).abs_()  # (n, B, C, h, w)
            layer = _rescaled(terms).sum(dim=2)  # rescaled per channel, summed: resizing is linear
            if layer.shape[-2:] != size:
                layer = F.interpolate(layer, size=size, mode="bilinear", align_corners=False)
            yield layer


def _shrunk(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Maps ``(n, B, H, W)`` rescaled to ``[0, 1]`` each, then resized bilinearly to ``size``."""
    return F.interpolate(_rescaled(maps), size=size, mode="bilinear", align_corners=False)


def _rescaled(values: Tensor) -> Tensor:
    """Every map of ``values (..., h, w)`` rescaled to ``[0, 1]``: ``(m - min) / (max - min + 1e-7)``."""
    shifted = values - values.amin(dim=(-2, -1), keepdim=True)
    return shifted / (shifted.amax(dim=(-2, -1), keepdim=True) + _RESCALE_EPS)


def _batched_gradients(part: Tensor, sources: list[Any]) -> list[Tensor | None]:
    """Gradients ``(n, B, ...)`` of each column of ``part (B, n)`` w.r.t. every source, one batched backward.

    One backward per column only where an op has no batching rule, as the engine does.
    """
    batch, n = part.shape
    seeds = torch.eye(n, dtype=part.dtype, device=part.device)[:, None, :].expand(n, batch, n).contiguous()
    try:
        return list(
            torch.autograd.grad(
                part, sources, seeds, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
        )
    except RuntimeError as error:
        if not is_batching_failure(error):
            raise
    columns = [
        torch.autograd.grad(part[:, j].sum(), sources, retain_graph=True, allow_unused=True) for j in range(n)
    ]
    return [
        None if any(c[i] is None for c in columns) else torch.stack([c[i] for c in columns])
        for i in range(len(sources))
    ]


def _is_bias_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.BatchNorm2d))


def _bias_of(module: nn.Module, *, check: bool = True) -> Tensor | None:
    """The bias of a bias layer in eval mode (``None`` for other modules or a convolution without one)."""
    if isinstance(module, nn.BatchNorm2d):
        if module.running_mean is None or module.running_var is None:
            if not check:
                return None
            raise ValueError(
                f"FullGrad needs the running statistics of every batch norm: {type_name(module)} was built "
                "with track_running_stats=False, so its bias in eval mode depends on the batch"
            )
        scale = torch.rsqrt(module.running_var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight
        shift = module.bias if module.bias is not None else torch.zeros_like(scale)
        return shift - module.running_mean * scale
    if isinstance(module, nn.Conv2d):
        return module.bias
    return None
