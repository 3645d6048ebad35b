"""The shared metric base beyond the contract of every metric (``test_metric_contract.py``): state_dict keys,
non-persistent states, ``.to`` and ``repr``, and torchmetrics as the oracle in a streaming loop.

Oracles: torchmetrics where the definitions agree (``MulticlassJaccardIndex`` on the predicted masks,
``MultilabelAveragePrecision`` on classes with positives).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassJaccardIndex, MultilabelAveragePrecision

from hiercam.metrics import (
    LocalizationError,
    MeanAveragePrecision,
    MeanIoU,
    Metric,
    maps_to_masks,
)

THRESHOLDS = [0.1, 0.3, 0.5]


def batches(count: int = 4, size: int = 3) -> list[dict[str, object]]:
    """Batches of maps ``(B, 3, 12, 12)``, labels, masks, boxes and scores that agree with each other."""
    generator = torch.Generator().manual_seed(11)
    out = []
    for _ in range(count):
        maps = torch.rand(size, 3, 12, 12, generator=generator) ** 4
        labels = torch.randint(0, 2, (size, 3), generator=generator)
        labels[:, 0] = 1
        maps[:, :, 2:9, 3:10] += labels[:, :, None, None] * torch.rand(size, 3, 1, 1, generator=generator)
        masks = torch.randint(0, 4, (size, 12, 12), generator=generator)
        masks[:, 0] = 255
        boxes = [torch.tensor([[k, 3.0, 2.0, 10.0, 9.0] for k in range(3)]) for _ in range(size)]
        scores = torch.randn(size, 3, generator=generator) + 0.7 * labels
        out.append({"maps": maps, "labels": labels, "masks": masks, "boxes": boxes, "scores": scores})
    return out


def collection() -> dict[str, Metric]:
    return {
        "miou": MeanIoU(4, thresholds=THRESHOLDS),
        "miou_at_015": MeanIoU(4),
        "loc": LocalizationError(thresholds=THRESHOLDS),
        "map": MeanAveragePrecision(),
    }


def step(metrics: dict[str, Metric], batch: dict[str, object]) -> dict[str, object]:
    """One batch through every metric with ``forward``, as a ``MetricCollection`` or Lightning step does."""
    maps, labels = batch["maps"], batch["labels"]
    return {
        "miou": metrics["miou"](maps, labels, masks=batch["masks"]).miou,
        "miou_at_015": metrics["miou_at_015"](maps, labels, masks=batch["masks"]).miou,
        "loc": metrics["loc"](maps, labels, boxes=batch["boxes"]),
        "map": metrics["map"](batch["scores"], labels),
    }


def test_state_dict_keys_and_a_state_that_does_not_fit() -> None:
    data = batches(1)[0]
    trained = collection()
    step(trained, data)
    assert set(trained["map"].state_dict()) == {"scores", "labels"}  # a "cat" state: one tensor
    assert set(trained["miou"].state_dict()) == {"confmat", "_options"}  # the options it was made with
    with pytest.raises(ValueError, match=r"made with thresholds=\[0.1, 0.3, 0.5\]"):
        MeanIoU(4).load_state_dict(trained["miou"].state_dict())  # 3 thresholds do not fit 1
    without_options = {"confmat": trained["miou"].state_dict()["confmat"]}
    with pytest.raises(ValueError, match="'confmat' must have shape"):
        MeanIoU(4).load_state_dict(without_options)
    empty = MeanAveragePrecision()
    empty.load_state_dict(MeanAveragePrecision().state_dict())
    assert empty.scores == []
    assert MeanAveragePrecision().per_class().tolist() == []  # no data: no class


def test_figures_over_batches_are_not_means_of_batch_figures() -> None:
    data = batches()
    metric = MeanAveragePrecision()
    per_batch = [float(metric(batch["scores"], batch["labels"])) for batch in data]
    assert float(metric.compute()) != pytest.approx(sum(per_batch) / len(per_batch), abs=1e-4)


def test_non_persistent_states_stay_out_of_a_model_checkpoint() -> None:
    data = batches(1)[0]
    model = nn.ModuleDict({"head": nn.Linear(2, 2), "miou": MeanIoU(4), "map": MeanAveragePrecision()})
    model["miou"].persistent(False)
    model["map"].persistent(False)
    model["miou"](data["maps"], data["labels"], masks=data["masks"])
    model["map"](data["scores"], data["labels"])
    assert set(model.state_dict()) == {"head.weight", "head.bias"}
    fresh = nn.ModuleDict({"head": nn.Linear(2, 2), "miou": MeanIoU(4), "map": MeanAveragePrecision()})
    fresh["miou"].persistent(False)
    fresh["map"].persistent(False)
    fresh.load_state_dict(model.state_dict())  # strict: loads without the metrics' states
    assert fresh["miou"].confmat.sum() == 0
    assert model["miou"].persistent(True) is model["miou"]
    assert set(model.state_dict()) == {"head.weight", "head.bias", "miou.confmat", "miou._options"}


def test_metrics_are_modules_and_move_with_to() -> None:
    data = batches(1)[0]
    model = nn.ModuleDict(collection())  # e.g. inside a LightningModule: moved with the model
    step(dict(model.items()), data)
    model.to(torch.float64)  # no device but the CPU here: the state moves like any buffer
    assert model["miou"].confmat.dtype == torch.long  # integer counts are not cast
    assert model["map"].scores[0].dtype == torch.float64
    assert model["miou"].to("cpu") is model["miou"]
    assert (
        repr(model["loc"]) == "LocalizationError(thresholds=(0.1, 0.3, 0.5), iou=0.5, components='largest')"
    )
    model["miou"].reset()
    assert model["miou"].confmat.sum() == 0


@pytest.mark.parametrize("ignore", [255, None])
def test_mean_iou_agrees_with_torchmetrics_in_the_loop(ignore: int | None) -> None:
    ours = MeanIoU(4, thresholds=0.3, ignore_index=ignore)
    peer = MulticlassJaccardIndex(num_classes=4, ignore_index=ignore, average="macro")
    for batch in batches():
        masks = batch["masks"] if ignore is not None else batch["masks"].clamp_max(3)
        ours(batch["maps"], batch["labels"], masks=masks)
        peer(maps_to_masks(batch["maps"], batch["labels"], 0.3), masks)
    assert float(ours.compute().miou) == pytest.approx(float(peer.compute()), abs=1e-6)


def test_mean_average_precision_agrees_with_torchmetrics_in_the_loop() -> None:
    ours = MeanAveragePrecision()
    peer = MultilabelAveragePrecision(num_labels=3, average="none", thresholds=None)
    for batch in batches():
        ours(batch["scores"], batch["labels"])
        peer(batch["scores"], batch["labels"])
    torch.testing.assert_close(
        ours.per_class(), peer.compute(), atol=1e-6, rtol=0
    )  # every class has positives
