"""The engine of the perturbation methods (ScoreCAM family, AblationCAM): rows of perturbed copies, batched.

A perturbation method scores perturbed copies of each image: one *row* per image ``b``, sample ``s`` and
scored channel ``c`` (ScoreCAM: one sample, every channel; SSCAM and ISCAM: ``num_samples`` samples). The
rows are numbered image-major, ``r = (b * S + s) * N + j`` for the ``j``-th scored channel of image ``b``, and
go through the model ``batch_size`` at a time whatever image or sample they belong to, so every forward but
the last is full. The forwards run under ``torch.inference_mode`` (no autograd records, no version counters)
and the caller's autocast state; the scores of every requested class are read from the same logits.

``max_channels`` scores only each image's ``N`` channels whose activation map varies most (the largest
standard deviation over positions): the "Faster Score-CAM" of Tabayashi (2020,
https://github.com/tabayashi0117/Score-CAM#faster-score-cam), also tf-keras-vis's ``max_N``. The other
channels get weight 0. The scored channels keep their order (ascending index), so ``max_channels=C`` gives
the same rows, and the same maps, as ``None``.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
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

__all__ = ["PerturbationCAM", "ScoreReader", "row_parts", "top_channels"]

_LOG = logging.getLogger("hiercam.cam")
_LOG_INTERVAL = 10.0  # seconds between progress lines in a log


def top_channels(features: Tensor, count: int | None) -> Tensor | None:
    """Each image's ``count`` channels of largest spatial standard deviation, in ascending channel order.

    Args:
        features: activations ``(B, C, h, w)``.
        count: how many channels to keep, or ``None`` for all.

    Returns:
        Channel indices ``(B, N)`` with ``N = count``, or ``None`` when every channel is kept (``count`` is
        ``None`` or ``>= C``).

    Example:
        >>> a = torch.zeros(1, 3, 2, 2)
        >>> a[0, 2, 0, 0] = 5.0
        >>> a[0, 0, 1, 1] = 1.0
        >>> top_channels(a, 2)
        tensor([[0, 2]])
    """
    if count is None or count >= features.shape[1]:
        return None
    spread = features.flatten(2).std(dim=2, correction=0)
    return spread.topk(count, dim=1).indices.sort(dim=1).values


class ScoreReader:
    """What a perturbation method scores: the logits of ``indices`` (columns), or each image's target.

    Args:
        indices: the requested classes (ignored with ``targets``).
        targets: the call's targets, or ``None``.
        device: where the outputs are (the class indices are put there once, not at every forward).
    """

    def __init__(self, indices: list[int], targets: TargetsArg, device: torch.device) -> None:
        self.indices, self.targets = indices, targets
        self.count = 1 if targets is not None else len(indices)
        self.names = ["`targets`"] if targets is not None else [f"{k} (`classes`)" for k in indices]
        self._columns = torch.tensor(indices, dtype=torch.long, device=device)

    def __call__(self, selected: Tensor, images_of: Tensor) -> Tensor:
        """Scores ``(n, count)`` (float32) of the outputs ``selected`` of the images ``images_of``."""
        if self.targets is None:
            return selected.index_select(1, self._columns).float()
        per_image = [self.targets] * (int(images_of.max()) + 1) if callable(self.targets) else self.targets
        rows = [per_image[int(b)] for b in images_of.tolist()]
        return target_scores(selected, rows).float()


class PerturbationCAM(BaseCAM):
    """Shared engine of the perturbation methods: channel weights ``(K', B, N)`` from batched forwards.

    Subclasses define ``_weights``, the weights of the scored channels, and may extend ``_extra_repr``.
    """

    _needs_graph: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        batch_size: int = 32,
        max_channels: int | None = None,
        eigen_smooth: bool = False,
        reshape: ReshapeArg = "auto",
        output: OutputArg = None,
        progress: bool = True,
    ) -> None:
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.max_channels = (
            None if max_channels is None else check_int(max_channels, "max_channels", minimum=1)
        )
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
        channels = "" if self.max_channels is None else f", max_channels={self.max_channels}"
        return f"batch_size={self.batch_size}{channels}"

    def _weights(
        self,
        head: HeadState,
        features: Tensor,
        inputs: Tensor,
        logits: Tensor,
        scores: ScoreReader,
        channels: Tensor | None,
    ) -> Tensor:
        """Weights ``(K', B, N)`` of the scored channels (``channels (B, N)``, or all ``C`` for ``None``)."""
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
        scores = ScoreReader(resolved.indices, targets, logits.device)
        channels = top_channels(features, self.max_channels)
        with torch.inference_mode():
            scored = self._weights(
                head, features.to(activation.dtype), inputs.detach(), logits.detach(), scores, channels
            )
        scored = scored.clone()  # a normal tensor again, outside inference mode
        if channels is None:
            weights = scored
        else:
            weights = scored.new_zeros(scored.shape[0], *features.shape[:2])
            weights.scatter_(2, channels.expand(scored.shape[0], -1, -1), scored)
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

    def _forward_scores(
        self, head: HeadState, inputs: Tensor, scores: ScoreReader, images_of: Tensor
    ) -> Tensor:
        """The scores ``(n, K')`` (float32) of one batch of perturbed copies of the images ``images_of``.

        The forward runs under the caller's autocast state, like the first forward whose scores it is compared
        with.
        """
        device, enabled, dtype = self._autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            output = self._call_model(inputs)
        return scores(self._head_logits(head, output, scores.targets), images_of)


def row_parts(
    start: int, stop: int, samples: int, count: int, channels: Tensor | None, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Image, sample and channel ``(n,)`` of the rows ``start:stop`` (``count`` channels per sample)."""
    rows = torch.arange(start, stop, device=device)
    image = rows // (samples * count)
    slot = rows % count
    channel = slot if channels is None else channels[image, slot]
    return image, (rows // count) % samples, channel
