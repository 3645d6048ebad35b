"""The localisation error of CAMs (paper Eq. 8): the share of (image, class) trials whose boxes miss.

Every map of a present class is boxed with [`cam_boxes`][hiercam.maps.cam_boxes] (max-normalised, kept above
the background threshold, 8-connected regions) and a trial is a hit when some box overlaps a ground-truth
box of its class with ``IoU >= iou``. Boxes follow the convention of [`hiercam.maps`][hiercam.maps]
(``(x1, y1, x2, y2)`` with exclusive far edges, as ``torchvision.ops.box_iou``). The error is a fraction in
[0, 1] (lower is better), like every hiercam metric; reports print percent.

[`localization_error`][hiercam.localization_error] and [`LocalizationError`][hiercam.LocalizationError] share
the private kernels ``_localization_update`` and ``_localization_compute`` (the torchmetrics pattern).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hiercam._validation import check_choice, check_threshold
from hiercam.maps import BoxComponents, level_boxes, normalize_maps
from hiercam.metrics._base import Metric
from hiercam.metrics._inputs import BoxesArg, check_boxes, check_maps_and_labels, check_thresholds

__all__ = ["localization_error", "LocalizationError"]

_MAX_LEVELS = 32767  # thresholds labelled in one pass: the largest level that level_boxes takes


# --------------------------------------------------------------------------------------------- kernels
def _localization_update(
    maps: Tensor,
    labels: Tensor,
    boxes: BoxesArg,
    thresholds: list[float],
    iou: float,
    components: BoxComponents,
) -> Tensor:
    """``[[errors, pairs], ...]`` (int64 ``(T, 2)``, CPU) per threshold over the (image, present class) pairs.

    Inputs are checked and the maps of the present classes normalised once, whatever the number of
    thresholds. The masks of all thresholds are nested, so every threshold of every map is boxed in one
    labelling ([`level_boxes`][hiercam.maps.level_boxes] of the number of thresholds below each pixel) and
    every box is compared with the ground truth of its pair in one ``box_iou``.
    """
    check_maps_and_labels(maps, labels)
    truth = check_boxes(boxes, maps.shape[0], maps.shape[1])
    from torchvision.ops import box_iou  # imported here: slow to import

    images, classes = torch.nonzero(labels.to(device=maps.device, dtype=torch.bool), as_tuple=True)
    present = normalize_maps(maps[images, classes].detach(), "max", validate_args=False).cpu()  # checked
    counts = torch.zeros(len(thresholds), 2, dtype=torch.long)
    counts[:, 1] = len(present)
    if not len(present):
        return counts
    targets = [
        truth[image][0][truth[image][1] == cls]
        for image, cls in zip(images.tolist(), classes.tolist(), strict=True)
    ]
    target_boxes = torch.cat(targets)
    target_pairs = torch.repeat_interleave(torch.tensor([len(t) for t in targets]))
    values = present if present.dtype in (torch.float32, torch.float64) else present.float()
    unique = sorted(set(thresholds))
    hits = torch.zeros(len(present), len(unique), dtype=torch.bool)
    for first in range(0, len(unique), _MAX_LEVELS):
        # ``present > t`` compares in the maps' dtype: the edges are the thresholds rounded to it
        edges = torch.tensor(unique[first : first + _MAX_LEVELS], dtype=present.dtype).to(values.dtype)
        found = level_boxes(torch.bucketize(values, edges), components)  # level i: the mask ``> edges[i]``
        same_pair = found.maps[:, None] == target_pairs[None, :]
        overlaps = box_iou(found.boxes.to(torch.float64), target_boxes) >= iou
        hit = (overlaps & same_pair).any(dim=1)
        hits[found.maps[hit], first + found.levels[hit]] = True
    errors = (~hits).sum(dim=0)
    column = {threshold: index for index, threshold in enumerate(unique)}
    counts[:, 0] = errors[[column[threshold] for threshold in thresholds]]
    return counts


def _localization_compute(counts: Tensor) -> Tensor:
    """Error fraction from ``[..., [errors, pairs]]``; NaN where there were no pairs."""
    errors, pairs = counts[..., 0].to(torch.float64), counts[..., 1].to(torch.float64)
    return torch.where(pairs > 0, errors / pairs.clamp_min(1), torch.full_like(pairs, torch.nan))


def _check_options(iou: float, components: BoxComponents) -> tuple[float, BoxComponents]:
    return check_threshold(iou, "iou"), check_choice(components, "components", ("largest", "all"))


# --------------------------------------------------------------------------------------------- public API
def localization_error(
    maps: Tensor,
    labels: Tensor,
    *,
    boxes: BoxesArg,
    thresholds: float | Sequence[float] = 0.15,
    iou: float = 0.5,
    components: BoxComponents = "largest",
) -> Tensor:
    """Localisation error (paper Eq. 8, "mLEV") as a fraction in [0, 1]: lower is better.

    Every (image, class) pair with ``labels[b, k] = 1`` is one trial. Its map gives boxes with
    [`cam_boxes`][hiercam.maps.cam_boxes] (at each threshold, ``components``); the trial is a success when
    some predicted box has ``IoU >= iou`` (``torchvision.ops.box_iou``) with some ground-truth box of class
    ``k`` in that image, and an error otherwise, including when there is no predicted box or no ground-truth
    box of that class. Classes with ``labels[b, k] = 0`` are not evaluated, whatever boxes they have; an
    image with no present class contributes nothing. The result is ``errors / trials`` over the whole batch.

    Args:
        maps: class activation maps ``(B, K, H, W)`` in the frame of the boxes, floating point, finite.
        labels: multi-hot image labels ``(B, K)`` (0/1, any dtype), normally the ground truth.
        boxes: ground-truth boxes, a list with one entry per image, each either a tensor ``(M, 5)`` of rows
            ``(class, x1, y1, x2, y2)`` or a pair ``(boxes (M, 4), classes (M,))``; ``M`` may be 0.
            Coordinates follow the box convention of [`hiercam.maps`][hiercam.maps] (exclusive far edges).
        thresholds: background threshold(s) of the max-normalised maps in (0, 1): a float gives a scalar
            error, a sequence of ``T`` floats one error per threshold (maps normalised once).
        iou: the IoU a box needs to count as a hit, in (0, 1); the paper uses 0.5.
        components: ``"largest"`` (one box per map) or ``"all"`` (every component), see
            [`cam_boxes`][hiercam.maps.cam_boxes].

    Returns:
        A float64 tensor on the CPU, 0-dim for a float threshold or ``(T,)``: the error fraction, NaN if no
        class is present in any image.

    Raises:
        TypeError: wrong argument types.
        ValueError: shapes disagree, the batch is empty, ``labels`` is not 0/1, ``maps`` is not finite, a
            box is malformed (``x2 < x1`` or ``y2 < y1``) or has a class outside ``[0, K)``, or an option is
            out of range.

    Examples:
        >>> import torch
        >>> maps = torch.zeros(1, 2, 8, 8)
        >>> maps[0, 0, 2:6, 2:6] = 1.0  # class 0: right where its box is
        >>> maps[0, 1, 0:2, 0:2] = 1.0  # class 1: far from its box
        >>> boxes = [torch.tensor([[0, 2, 2, 6, 6], [1, 4, 4, 8, 8]])]
        >>> localization_error(maps, torch.tensor([[1, 1]]), boxes=boxes)
        tensor(0.5000, dtype=torch.float64)
    """
    values, scalar = check_thresholds(thresholds)
    iou, components = _check_options(iou, components)
    errors = _localization_compute(_localization_update(maps, labels, boxes, values, iou, components))
    return errors[0] if scalar else errors


class LocalizationError(Metric):
    """Streaming localisation error (paper Eq. 8): counts of errors and trials accumulated over a dataset.

    The figure is ``errors / trials`` over all (image, present class) pairs seen, exactly
    [`localization_error`][hiercam.localization_error] on the whole dataset at once; both share their
    kernels. With a sequence of ``thresholds`` every update scores every threshold (inputs checked and maps
    normalised once per batch), so a threshold can be chosen on validation data in one pass, as with
    [`MeanIoU`][hiercam.MeanIoU].

    A metric like the others: ``update`` / ``compute`` / ``reset``, calling it returns the batch's figure and
    accumulates it, ``state_dict`` / ``load_state_dict`` and ``.to(device)`` as any ``nn.Module``. In a
    ``torch.distributed`` run, ``compute`` sums the counts of all processes (every process must call it, one
    with no data too).

    Args:
        thresholds: background threshold(s) in (0, 1): a float gives a scalar error, a sequence of ``T``
            floats one error per threshold.
        iou: IoU needed for a hit, in (0, 1).
        components: ``"largest"`` or ``"all"`` (see [`cam_boxes`][hiercam.maps.cam_boxes]).
        sync_on_compute: sum the state across processes in [`compute`][hiercam.LocalizationError.compute].

    Attributes:
        counts: int64 ``(T, 2)``, ``[errors, trials]`` per threshold accumulated so far.

    Examples:
        >>> import torch
        >>> metric = LocalizationError()
        >>> maps = torch.zeros(1, 1, 8, 8)
        >>> maps[0, 0, 2:6, 2:6] = 1.0
        >>> metric.update(maps, torch.tensor([[1]]), boxes=[torch.tensor([[0, 2, 2, 6, 6]])])
        >>> metric.update(maps, torch.tensor([[1]]), boxes=[torch.tensor([[0, 0, 0, 2, 2]])])
        >>> metric.compute()
        tensor(0.5000, dtype=torch.float64)
    """

    counts: Tensor

    def __init__(
        self,
        *,
        thresholds: float | Sequence[float] = 0.15,
        iou: float = 0.5,
        components: BoxComponents = "largest",
        sync_on_compute: bool = True,
    ) -> None:
        super().__init__(sync_on_compute=sync_on_compute)
        values, self._scalar = check_thresholds(thresholds)
        self.iou, self.components = _check_options(iou, components)
        self.thresholds: float | tuple[float, ...] = values[0] if self._scalar else tuple(values)
        self._values = values
        self.add_state("counts", torch.zeros((len(values), 2), dtype=torch.long), "sum")

    def update(self, maps: Tensor, labels: Tensor, *, boxes: BoxesArg) -> None:
        """Add a batch; arguments as in [`localization_error`][hiercam.localization_error]."""
        batch = _localization_update(maps, labels, boxes, self._values, self.iou, self.components)
        self.counts = self.counts + batch.to(self.counts.device)

    def forward(self, maps: Tensor, labels: Tensor, *, boxes: BoxesArg) -> Tensor:
        """The error of this batch alone, which is also added to the state."""
        result: Tensor = super().forward(maps, labels, boxes=boxes)
        return result

    def _compute(self) -> Tensor:
        errors = _localization_compute(self.counts)
        return errors[0] if self._scalar else errors

    def compute(self) -> Tensor:
        """Error fraction over everything seen since ``reset``, NaN before any trial.

        Returns:
            A float64 tensor, 0-dim for a float threshold or ``(T,)``.
        """
        result: Tensor = super().compute()
        return result

    def _options(self) -> dict[str, object]:
        return {"thresholds": self._values, "iou": self.iou, "components": self.components}

    def _check_loaded(self, states: dict[str, Tensor], prefix: str) -> None:
        counts = states.get("counts")
        if counts is None:
            return
        trials = counts[:, 1:]
        if bool((counts[:, :1] > trials).any()) or bool((trials != trials[:1]).any()):
            raise ValueError(
                f"state {prefix + 'counts'!r} must hold [errors, trials] rows with errors <= trials and the "
                "same trials in every row"
            )

    def extra_repr(self) -> str:
        """The options, shown by ``repr``."""
        return f"thresholds={self.thresholds}, iou={self.iou}, components={self.components!r}"
