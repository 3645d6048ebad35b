"""The shared metric base: forward, update/compute/reset, state_dict, .to, and use in a collection loop.

Oracles: the functional forms (which share the kernels but not the state handling), torchmetrics where the
definitions agree (``MulticlassJaccardIndex`` on the predicted masks, ``MultilabelAveragePrecision`` on
classes with positives), and hand-computed figures.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassJaccardIndex, MultilabelAveragePrecision

from hiercam.metrics import (
    LocalizationError,
    MeanAveragePrecision,
    MeanIoU,
    Metric,
    localization_error,
    maps_to_masks,
    mean_average_precision,
    mean_iou,
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


def functional(batch: dict[str, object]) -> dict[str, torch.Tensor]:
    maps, labels = batch["maps"], batch["labels"]
    return {
        "miou": mean_iou(maps, labels, masks=batch["masks"], thresholds=THRESHOLDS).miou,
        "miou_at_015": mean_iou(maps, labels, masks=batch["masks"]).miou,
        "loc": localization_error(maps, labels, boxes=batch["boxes"], thresholds=THRESHOLDS),
        "map": mean_average_precision(batch["scores"], labels),
    }


def joined(parts: list[dict[str, object]]) -> dict[str, object]:
    return {
        "maps": torch.cat([p["maps"] for p in parts]),
        "labels": torch.cat([p["labels"] for p in parts]),
        "masks": torch.cat([p["masks"] for p in parts]),
        "boxes": [box for p in parts for box in p["boxes"]],
        "scores": torch.cat([p["scores"] for p in parts]),
    }


def test_collection_loop_forward_per_batch_compute_at_the_end_reset() -> None:
    data = batches()
    metrics = collection()
    for epoch in range(2):
        for batch in data:
            values = step(metrics, batch)
            expected = functional(batch)  # forward returns the figure of this batch alone
            for name, value in values.items():
                torch.testing.assert_close(value.double(), expected[name].double(), equal_nan=True)
        totals = {name: metric.compute() for name, metric in metrics.items()}
        whole = functional(joined(data))  # compute: the figure over every batch of the epoch
        torch.testing.assert_close(totals["miou"].miou, whole["miou"])
        torch.testing.assert_close(totals["miou_at_015"].miou, whole["miou_at_015"])
        torch.testing.assert_close(totals["loc"], whole["loc"])
        torch.testing.assert_close(totals["map"], whole["map"])
        assert totals["miou"].miou.shape == (3,)
        assert totals["miou_at_015"].miou.shape == ()
        assert all(0.0 <= float(v) <= 1.0 for v in [*totals["miou"].miou, *totals["loc"], totals["map"]])
        if epoch == 0:  # the figures over several batches are not the mean of the batch figures
            assert float(totals["map"]) != pytest.approx(
                sum(float(functional(b)["map"]) for b in data) / len(data), abs=1e-4
            )
        for metric in metrics.values():
            metric.reset()
        assert math.isnan(float(metrics["miou_at_015"].compute().miou))
        assert torch.isnan(metrics["loc"].compute()).all()
        assert math.isnan(float(metrics["map"].compute()))


def test_update_then_compute_equals_forward_accumulation() -> None:
    data = batches(3)
    by_forward, by_update = collection(), collection()
    for batch in data:
        step(by_forward, batch)
        by_update["miou"].update(batch["maps"], batch["labels"], masks=batch["masks"])
        by_update["loc"].update(batch["maps"], batch["labels"], boxes=batch["boxes"])
        by_update["map"].update(batch["scores"], batch["labels"])
    assert torch.equal(by_forward["miou"].confmat, by_update["miou"].confmat)
    assert torch.equal(by_forward["loc"].counts, by_update["loc"].counts)
    assert torch.equal(torch.cat(by_forward["map"].scores), torch.cat(by_update["map"].scores))


def test_refused_batch_in_forward_leaves_the_state_unchanged() -> None:
    data = batches(2)
    metrics = collection()
    step(metrics, data[0])
    confmat, counts = metrics["miou"].confmat.clone(), metrics["loc"].counts.clone()
    with pytest.raises(ValueError, match="`labels` must hold only 0/1 values"):
        metrics["miou"](data[1]["maps"], data[1]["labels"] * 2, masks=data[1]["masks"])
    with pytest.raises(ValueError, match=r"`boxes` must have one entry per image \(3\), got 1"):
        metrics["loc"](data[1]["maps"], data[1]["labels"], boxes=data[1]["boxes"][:1])
    with pytest.raises(ValueError, match="must have 3 classes like earlier batches, got 2"):
        metrics["map"](data[1]["scores"][:, :2], data[1]["labels"][:, :2])
    assert torch.equal(metrics["miou"].confmat, confmat)
    assert torch.equal(metrics["loc"].counts, counts)
    assert len(metrics["map"].scores) == 1


def test_state_dict_round_trip_through_a_file() -> None:
    data = batches(3)
    trained = collection()
    for batch in data[:2]:
        step(trained, batch)
    buffer = io.BytesIO()
    torch.save({name: metric.state_dict() for name, metric in trained.items()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert set(saved["map"]) == {"scores", "labels"}
    assert set(saved["miou"]) == {"confmat"}
    restored = collection()
    for name, metric in restored.items():
        metric.load_state_dict(saved[name])
    for metrics in (trained, restored):  # both carry on with the last batch
        step(metrics, data[2])
    for name in trained:
        torch.testing.assert_close(
            torch.as_tensor(
                restored[name].compute()[0] if name.startswith("miou") else restored[name].compute()
            ),
            torch.as_tensor(
                trained[name].compute()[0] if name.startswith("miou") else trained[name].compute()
            ),
        )
    empty = MeanAveragePrecision()
    empty.load_state_dict(MeanAveragePrecision().state_dict())  # an empty state round-trips too
    assert empty.scores == []
    with pytest.raises(RuntimeError, match="size mismatch for confmat"):
        MeanIoU(4).load_state_dict(saved["miou"])  # 3 thresholds do not fit 1


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
    assert set(model.state_dict()) == {"head.weight", "head.bias", "miou.confmat"}


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
