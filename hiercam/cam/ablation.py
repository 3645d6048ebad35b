"""AblationCAM: channels weighted by the drop of the class scores when they are zeroed in the target layer."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hiercam._validation import type_name
from hiercam.cam._heads import HeadState
from hiercam.cam._perturbation import PerturbationCAM, ScoreReader, row_parts

__all__ = ["AblationCAM"]


class AblationCAM(PerturbationCAM):
    """Ablation-CAM (Desai & Ramaswamy, 2020): channels weighted by the score drop when they are zeroed.

    For image ``b`` and channel ``c``, the target layer's output is replaced (by a forward hook that exists
    only during the call) with ``A_b`` where channel ``c`` is set to zero, and the weight of class ``k`` is
    pytorch-grad-cam's ``(score_k - ablated_k) / score_k``; the map is ``ReLU(sum_c w_bkc * A_bc)``. ``B * C``
    ablated passes, ``batch_size`` per forward under ``torch.inference_mode``, every requested class from the
    same logits.

    Against pytorch-grad-cam 1.5.7: the same weights and maps where the activation's minimum is 0 (after a
    ReLU: ResNet's ``layer4``, VGG's ``features``). Where it holds negative values, pytorch-grad-cam sets the
    ablated channel to ``min - 1e7`` instead of 0 (and its running minimum changes within a batch); hiercam
    keeps the paper's zero. A class score of exactly 0 cannot be divided by: a ``ValueError``.

    Args:
        model: the classifier (see [`BaseCAM`][hiercam.BaseCAM]).
        target_layer: the layer explained, as for [`BaseCAM`][hiercam.BaseCAM].
        batch_size: ablated copies per forward pass, ``>= 1``.
        max_channels: ablate only each image's ``max_channels`` channels of largest spatial standard
            deviation, as for [`ScoreCAM`][hiercam.ScoreCAM]; the others get weight 0 (as
            pytorch-grad-cam's channels left out by ``ratio_channels_to_ablate``, which it chooses
            differently); ``None`` ablates every channel.
        eigen_smooth: as for [`BaseCAM`][hiercam.BaseCAM].
        reshape: as for [`BaseCAM`][hiercam.BaseCAM]; the channels are zeroed in the layer's own output,
            so it must be ``(B, C, h, w)``: a layer read as tokens or channels-last fails at the call.
        output: as for [`BaseCAM`][hiercam.BaseCAM]; ``targets`` work as with Grad-CAM.
        progress: show the progress of the ablated forwards, as for [`ScoreCAM`][hiercam.ScoreCAM].

    Raises:
        TypeError, ValueError: ``batch_size`` or ``max_channels`` is not an int ``>= 1``, ``progress`` not a
            bool (and as for [`BaseCAM`][hiercam.BaseCAM]); at the call, also a target layer that is not
            ``(B, C, h, w)`` or a class score of exactly 0.

    Examples:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> AblationCAM(resnet18(num_classes=3), "layer4", batch_size=128)(torch.randn(1, 3, 64, 64), 1).shape
        torch.Size([1, 1, 64, 64])
    """

    def _weights(
        self,
        head: HeadState,
        features: Tensor,
        inputs: Tensor,
        logits: Tensor,
        scores: ScoreReader,
        channels: Tensor | None,
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
        batch = features.shape[0]
        count = features.shape[1] if channels is None else channels.shape[1]
        ablated = torch.empty(batch * count, scores.count, device=features.device)
        with self._progress(head, batch * count, "ablated copies") as progress:
            for start, stop in self._chunks(batch * count):
                image, _, channel = row_parts(start, stop, 1, count, channels, features.device)
                replaced = features[image]  # advanced indexing: a copy
                replaced[torch.arange(stop - start, device=features.device), channel] = 0
                ablated[start:stop] = self._ablated_scores(head, layer, replaced, inputs, scores, image)
                progress.update(stop - start)
        per_pair = original.to(ablated.device).repeat_interleave(count, dim=0)
        weights = (per_pair - ablated) / per_pair
        return weights.view(batch, count, -1).permute(2, 0, 1)

    def _ablated_scores(
        self,
        head: HeadState,
        layer: nn.Module,
        replaced: Tensor,
        inputs: Tensor,
        scores: ScoreReader,
        image: Tensor,
    ) -> Tensor:
        """The scores ``(n, K')`` of the images ``image``, the target layer's output set to ``replaced``."""

        def substitute(_module: nn.Module, _inputs: Any, output: Any) -> Tensor:
            if not isinstance(output, Tensor) or output.shape != replaced.shape:
                got = tuple(output.shape) if isinstance(output, Tensor) else type_name(output)
                raise ValueError(f"`target_layer` {head.name!r} changed its output shape: {got}")
            return replaced

        handle = layer.register_forward_hook(substitute)
        try:
            images_of = image.to(inputs.device)
            return self._forward_scores(head, inputs[images_of], scores, images_of)
        finally:
            handle.remove()
