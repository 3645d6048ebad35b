"""Perturbation methods: ScoreCAM and AblationCAM, every requested class from the same batched forwards.

Both weight the channels of the target activation ``A (B, C, h, w)`` by how the class scores react when the
model sees one channel at a time: ScoreCAM masks the *input* with each upsampled channel, AblationCAM zeroes
each channel of the *activation*. That takes ``B * C`` extra forward passes, run ``batch_size`` at a time
under ``no_grad``. The peers run all of them once per class; here the logits of every requested class come
from the same passes, so the cost does not grow with the number of classes.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam._progress import Progress
from hiercam._validation import all_finite, check_int, should_check, type_name
from hiercam.cam._heads import HeadState, MapPlan
from hiercam.cam._pca import smoothed_maps
from hiercam.cam.eigen import non_finite_activation
from hiercam.cam.engine import BaseCAM
from hiercam.cam.methods import _weighted_sum, _weighted_terms
from hiercam.cam.reshape import ReshapeArg
from hiercam.cam.targets import OutputArg, TargetsArg, target_scores

__all__ = ["ScoreCAM", "AblationCAM"]

_MINMAX_EPS = 1e-8  # pytorch-grad-cam's and torchcam's guard in the min-max normalisation of the masks
_LOG = logging.getLogger("hiercam.cam")
_LOG_INTERVAL = 10.0  # seconds between progress lines in a log


class _Perturbation(BaseCAM):
    """Shared engine of the perturbation methods: channel weights ``(K', B, C)`` from batched forwards."""

    _needs_graph: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        batch_size: int = 32,
        eigen_smooth: bool = False,
        reshape: ReshapeArg = "auto",
        output: OutputArg = None,
        progress: bool = True,
    ) -> None:
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        if not isinstance(progress, bool):
            raise TypeError(f"`progress` must be a bool, got {type_name(progress)}")
        self.progress = progress
        super().__init__(
            model, target_layer, closed_form=False, eigen_smooth=eigen_smooth, reshape=reshape, output=output
        )
        self._autocast: tuple[str, bool, torch.dtype] = ("cpu", False, torch.bfloat16)

    def _run(self, inputs: Tensor, input_size: tuple[int, int], *, with_graph: bool) -> Any:
        # the caller's autocast state, for the perturbed forwards (the engine turns it off for the maps)
        device = inputs.device.type
        self._autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return super()._run(inputs, input_size, with_graph=with_graph)

    def _extra_repr(self) -> str:
        return f"batch_size={self.batch_size}"

    def _weights(
        self, head: HeadState, features: Tensor, inputs: Tensor, logits: Tensor, scores: _Scores
    ) -> Tensor:
        raise NotImplementedError

    def _head_maps(self, head: HeadState, logits: Tensor, plan: MapPlan) -> Tensor:
        activation, features = self._features(head)
        inputs = self._inputs
        if inputs is None:  # pragma: no cover - the engine sets it
            raise RuntimeError("no images kept for the perturbations")
        resolved, targets = plan.resolved, plan.targets
        if not resolved.indices:
            return features.new_zeros(features.shape[0], 0, *features.shape[-2:])
        if should_check() and not all_finite(features):
            raise non_finite_activation(head)
        scores = _Scores(resolved.indices, targets)
        with torch.no_grad():
            weights = self._weights(
                head, features.to(activation.dtype), inputs.detach(), logits.detach(), scores
            )
        weights = weights if targets is not None else resolved.per_image_rows(weights)
        if not self.eigen_smooth:
            return _weighted_sum(weights, features)
        return smoothed_maps(lambda part: _weighted_terms(weights[part], features), weights.shape[0])

    def _chunks(self, total: int) -> list[tuple[int, int]]:
        return [(start, min(start + self.batch_size, total)) for start in range(0, total, self.batch_size)]

    def _progress(self, head: HeadState, total: int, unit: str) -> Progress:
        """The progress of one head's perturbed forwards: a bar on a terminal, lines in the log."""
        return Progress(
            total,
            f"{type(self).__name__} {head.name}",
            enabled=self.progress,
            log=_LOG.info,
            unit=unit,
            interval=_LOG_INTERVAL,
        )

    def _forward_scores(self, head: HeadState, inputs: Tensor, scores: _Scores, images_of: Tensor) -> Tensor:
        """The scores ``(n, K')`` (float32) of one batch of perturbed copies of the images ``images_of``.

        The forward runs under the caller's autocast state, like the first forward whose scores it is compared
        with.
        """
        device, enabled, dtype = self._autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            output = self._call_model(inputs)
        return scores(self._head_logits(head, output, scores.targets), images_of)


class _Scores:
    """What the perturbation methods score: the logits of ``indices`` (columns), or each image's target."""

    def __init__(self, indices: list[int], targets: TargetsArg) -> None:
        self.indices, self.targets = indices, targets
        self.count = 1 if targets is not None else len(indices)
        self.names = ["`targets`"] if targets is not None else [f"{k} (`classes`)" for k in indices]

    def __call__(self, selected: Tensor, images_of: Tensor) -> Tensor:
        """Scores ``(n, count)`` of outputs ``selected`` whose rows belong to the images ``images_of``."""
        if self.targets is None:
            return selected[:, self.indices].float()
        per_image = [self.targets] * (int(images_of.max()) + 1) if callable(self.targets) else self.targets
        rows = [per_image[int(b)] for b in images_of.tolist()]
        return target_scores(selected, rows).float()


class ScoreCAM(_Perturbation):
    """Score-CAM (Wang et al., 2020): channels weighted by the score of the input masked with them.

    For image ``b`` and channel ``c``, the mask ``M_bc`` is the channel ``A_bc`` upsampled to the input size
    (bilinear, ``align_corners=False``) and min-max normalised to ``[0, 1]`` (``(U - min) / (max - min +
    1e-8)``, so a constant channel gives an all-zero mask); the model scores ``images[b] * M_bc``. The
    weight of channel ``c`` for class ``k`` is ``softmax_c(score_k(images[b] * M_bc))``, and the map is
    ``ReLU(sum_c w_bkc * A_bc)`` on the raw activations. ``B * C`` masked images in all, ``batch_size`` per
    forward, every requested class read from the same logits.

    Against the peers (tests/test_cam_gradient_free.py gives the agreement):

    * pytorch-grad-cam 1.5.7 upsamples with ``nn.UpsamplingBilinear2d`` (``align_corners=True``) and then
      min-max normalises, as here; it runs the masked images once per class.
    * torchcam 0.5 min-max normalises at the feature resolution and then upsamples; its softmax is over
      ``score(masked) - score(images)``, which is the same softmax.
    * Where the target layer has the input's resolution (no upsampling) all three agree to float precision.

    Args:
        model: the classifier (see [`BaseCAM`][hiercam.BaseCAM]; each head of a multi-head model is
            scored with its own logits).
        target_layer: the layer explained, as for [`BaseCAM`][hiercam.BaseCAM].
        batch_size: masked images per forward pass, ``>= 1`` (memory: ``batch_size`` images through the model
            without an autograd graph).
        eigen_smooth: as for [`BaseCAM`][hiercam.BaseCAM].
        reshape: as for [`BaseCAM`][hiercam.BaseCAM]: token and channels-last outputs are read as maps
            (the masks are their channels).
        output: as for [`BaseCAM`][hiercam.BaseCAM]; ``targets`` work as with Grad-CAM.
        progress: show the progress of the masked forwards: a bar on a terminal (stderr), and lines on the
            ``"hiercam.cam"`` logger (INFO: every 10 s and when a call ends); ``False`` shows nothing.

    Raises:
        TypeError, ValueError: ``batch_size`` is not an int ``>= 1``, ``progress`` not a bool (and as for
            [`BaseCAM`][hiercam.BaseCAM]).

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> cam = ScoreCAM(resnet18(num_classes=3), "layer4", batch_size=64)
        >>> cam(torch.randn(1, 3, 64, 64)).shape  # 512 masked images, all 3 classes from them
        torch.Size([1, 3, 64, 64])
    """

    def _weights(
        self, head: HeadState, features: Tensor, inputs: Tensor, logits: Tensor, scores: _Scores
    ) -> Tensor:
        batch, channels, height, width = features.shape
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        flat = features.reshape(batch * channels, 1, height, width)
        perturbed = torch.empty(batch * channels, scores.count, device=features.device)
        with self._progress(head, batch * channels, "masked images") as progress:
            for start, stop in self._chunks(batch * channels):
                self._score_chunk(head, flat, inputs, scores, perturbed, (start, stop), channels, size)
                progress.update(stop - start)
        return torch.softmax(perturbed.view(batch, channels, -1), dim=1).permute(2, 0, 1)

    def _score_chunk(
        self,
        head: HeadState,
        flat: Tensor,
        inputs: Tensor,
        scores: _Scores,
        perturbed: Tensor,
        rows: tuple[int, int],
        channels: int,
        size: tuple[int, int],
    ) -> None:
        """The scores of the masked images ``rows`` (one per image and channel), into ``perturbed``."""
        start, stop = rows
        masks = flat[start:stop].float()
        if tuple(masks.shape[-2:]) != size:
            masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        low = masks.amin(dim=(-2, -1), keepdim=True)
        masks = (masks - low) / (masks.amax(dim=(-2, -1), keepdim=True) - low + _MINMAX_EPS)
        images_of = torch.arange(start, stop, device=inputs.device) // channels
        images = inputs[images_of]
        perturbed[start:stop] = self._forward_scores(
            head, images.mul_(masks.to(inputs.dtype)), scores, images_of
        )


class AblationCAM(_Perturbation):
    """Ablation-CAM (Desai & Ramaswamy, 2020): channels weighted by the score drop when they are zeroed.

    For image ``b`` and channel ``c``, the target layer's output is replaced (by a forward hook that exists
    only during the call) with ``A_b`` where channel ``c`` is set to zero, and the weight of class ``k`` is
    pytorch-grad-cam's ``(score_k - ablated_k) / score_k``; the map is ``ReLU(sum_c w_bkc * A_bc)``. ``B * C``
    ablated passes, ``batch_size`` per forward, every requested class from the same logits.

    Against pytorch-grad-cam 1.5.7: the same weights and maps where the activation's minimum is 0 (after a
    ReLU: ResNet's ``layer4``, VGG's ``features``). Where it holds negative values, pytorch-grad-cam sets the
    ablated channel to ``min - 1e7`` instead of 0 (and its running minimum changes within a batch); hiercam
    keeps the paper's zero. A class score of exactly 0 cannot be divided by: a ``ValueError``.

    Args:
        model: the classifier (see [`BaseCAM`][hiercam.BaseCAM]).
        target_layer: the layer explained, as for [`BaseCAM`][hiercam.BaseCAM].
        batch_size: ablated copies per forward pass, ``>= 1``.
        eigen_smooth: as for [`BaseCAM`][hiercam.BaseCAM].
        reshape: as for [`BaseCAM`][hiercam.BaseCAM]; the channels are zeroed in the layer's own output,
            so it must be ``(B, C, h, w)``: a layer read as tokens or channels-last fails at the call.
        output: as for [`BaseCAM`][hiercam.BaseCAM]; ``targets`` work as with Grad-CAM.
        progress: show the progress of the ablated forwards, as for [`ScoreCAM`][hiercam.ScoreCAM].

    Raises:
        TypeError, ValueError: ``batch_size`` is not an int ``>= 1``, ``progress`` not a bool (and as for
            [`BaseCAM`][hiercam.BaseCAM]); at the call, also a target layer that is not ``(B, C, h, w)``
            or a class score of exactly 0.

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> AblationCAM(resnet18(num_classes=3), "layer4", batch_size=128)(torch.randn(1, 3, 64, 64), 1).shape
        torch.Size([1, 1, 64, 64])
    """

    def _weights(
        self, head: HeadState, features: Tensor, inputs: Tensor, logits: Tensor, scores: _Scores
    ) -> Tensor:
        if head.to_map is not None:
            raise ValueError(
                f"AblationCAM zeroes channels of the target layer's output, which must be (B, C, h, w); "
                f"`target_layer` {head.name!r} is read as {head.reading}: choose a (B, C, h, w) layer or "
                "another method"
            )
        original = scores(logits, torch.arange(logits.shape[0], device=logits.device))  # (B, K')
        zero = (original == 0).nonzero()
        if len(zero):
            b, k = zero[0].tolist()
            raise ValueError(
                f"AblationCAM divides by the class score, which is exactly 0 for image {b}, class "
                f"{scores.names[k]}"
            )
        layer = head.layer
        if layer is None:  # pragma: no cover - chosen before the forward
            raise RuntimeError("the target layer was not chosen")
        batch, channels = features.shape[:2]
        ablated = torch.empty(batch * channels, scores.count, device=features.device)
        with self._progress(head, batch * channels, "ablated copies") as progress:
            for start, stop in self._chunks(batch * channels):
                self._ablate_chunk(head, layer, features, inputs, scores, ablated, (start, stop))
                progress.update(stop - start)
        image_of = torch.arange(batch * channels, device=ablated.device) // channels
        per_pair = original.to(ablated.device)[image_of]
        weights = (per_pair - ablated) / per_pair
        return weights.view(batch, channels, -1).permute(2, 0, 1)

    def _ablate_chunk(
        self,
        head: HeadState,
        layer: nn.Module,
        features: Tensor,
        inputs: Tensor,
        scores: _Scores,
        ablated: Tensor,
        rows: tuple[int, int],
    ) -> None:
        """The scores of the ablated copies ``rows`` (one per image and channel), written into ``ablated``."""
        start, stop = rows
        channels = features.shape[1]
        pairs = torch.arange(start, stop, device=features.device)
        replaced = features[pairs // channels]  # advanced indexing: a copy
        replaced[torch.arange(stop - start, device=features.device), pairs % channels] = 0

        def substitute(_module: nn.Module, _inputs: Any, output: Any) -> Tensor:
            if not isinstance(output, Tensor) or output.shape != replaced.shape:
                got = tuple(output.shape) if isinstance(output, Tensor) else type_name(output)
                raise ValueError(f"`target_layer` {head.name!r} changed its output shape: {got}")
            return replaced

        handle = layer.register_forward_hook(substitute)
        try:
            images_of = pairs.to(inputs.device) // channels
            ablated[start:stop] = self._forward_scores(head, inputs[images_of], scores, images_of)
        finally:
            handle.remove()
