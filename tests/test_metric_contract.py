"""The contract of every streaming metric, checked by one harness (torchmetrics' ``MetricTester`` idea).

Each metric class of ``hiercam.metrics`` has a small case below: its constructor options, a few tiny batches
and the functional form with the same options. Every case goes through the same checks:

* **streaming equals functional**: ``update`` over the batches, then ``compute``, equals the function on all
  batches at once; calling the metric (``forward``) returns the function on that batch alone and accumulates
  the same state as ``update``;
* **state_dict round trip**: a fresh metric loaded from a saved state computes the same, and carries on alike;
* **a refused batch** (bad input: ``ValueError`` / ``TypeError``) leaves the state unchanged, through
  ``update`` and through ``forward``;
* **reset** returns to the state of a fresh metric (NaN figures);
* **torch.distributed**: two CPU processes (gloo) that share the batches, or where one process has no data at
  all, both compute the figure of all the data.

The oracle tests (hand values, peer libraries) stay in the per-metric files (``test_metrics_*.py``).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import hiercam.metrics as metrics
from hiercam.metrics import (
    ROAD,
    ConfidenceChange,
    DeletionInsertion,
    LocalizationError,
    MaxBoxAcc,
    MeanAveragePrecision,
    MeanIoU,
    Metric,
    PxAP,
    confidence_change,
    deletion_insertion,
    localization_error,
    max_box_acc,
    mean_average_precision,
    mean_iou,
    pxap,
    road,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# One batch: the positional arguments and the keyword arguments of ``update`` (and of the function).
Batch = tuple[tuple[Tensor, ...], dict[str, Any]]


@dataclass
class Case:
    """A metric class, how to build it, its functional form with the same options, its batches."""

    make: Callable[[], Metric]
    functional: Callable[..., Any]
    batches: list[Batch]
    bad: Batch  # refused by ``update`` and ``forward`` after a good batch


def tiny_model(num_classes: int = 3, channels: int = 3) -> nn.Module:
    """A randomly initialised conv net ``(B, C, 8, 8) -> (B, K)`` in eval mode, the same in every process."""
    generator = torch.Generator().manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model.eval()


def cam_data(batches: int = 3, size: int = 2, classes: int = 3, side: int = 8) -> list[dict[str, Any]]:
    """Tiny batches of maps, labels, masks, boxes and images that agree with each other."""
    generator = torch.Generator().manual_seed(3)
    out = []
    for _ in range(batches):
        maps = torch.rand(size, classes, side, side, generator=generator) ** 3
        labels = torch.randint(0, 2, (size, classes), generator=generator)
        labels[:, 0] = 1
        maps[:, :, 2:6, 1:5] += labels[:, :, None, None] * torch.rand(
            size, classes, 1, 1, generator=generator
        )
        masks = torch.randint(0, classes + 1, (size, side, side), generator=generator)
        masks[:, 0] = 255
        boxes = [torch.tensor([[k, 1.0, 2.0, 5.0, 6.0] for k in range(classes)]) for _ in range(size)]
        images = torch.rand(size, 3, side, side, generator=generator)
        scores = torch.randn(size, classes, generator=generator) + labels
        out.append(dict(maps=maps, labels=labels, masks=masks, boxes=boxes, images=images, scores=scores))
    return out


def _with(data: list[dict[str, Any]], key: str) -> list[Batch]:
    return [((d["maps"], d["labels"]), {key: d[key]}) for d in data]


def _cases() -> dict[str, Callable[[], Case]]:
    def miou() -> Case:
        data = cam_data()
        options = dict(thresholds=[0.2, 0.5], ignore_index=255)
        bad = ((data[1]["maps"], data[1]["labels"] * 2), {"masks": data[1]["masks"]})
        return Case(
            partial(MeanIoU, 4, **options),
            partial(mean_iou, num_classes=4, **options),
            _with(data, "masks"),
            bad,
        )

    def mean_ap() -> Case:
        data = cam_data()
        batches: list[Batch] = [((d["scores"], d["labels"]), {}) for d in data]
        bad = ((data[1]["scores"][:, :2], data[1]["labels"][:, :2]), {})  # K differs from earlier batches
        return Case(MeanAveragePrecision, mean_average_precision, batches, bad)

    def localization() -> Case:
        data = cam_data()
        options = dict(thresholds=[0.15, 0.4], components="all")
        bad = ((data[1]["maps"], data[1]["labels"]), {"boxes": data[1]["boxes"][:1]})  # one entry short
        return Case(
            partial(LocalizationError, **options),
            partial(localization_error, **options),
            _with(data, "boxes"),
            bad,
        )

    def box_acc() -> Case:
        data = cam_data()
        bad = ((data[1]["maps"].long(), data[1]["labels"]), {"boxes": data[1]["boxes"]})
        return Case(
            partial(MaxBoxAcc, interval=0.1), partial(max_box_acc, interval=0.1), _with(data, "boxes"), bad
        )

    def pixel_ap() -> Case:
        data = cam_data()
        bad = ((data[1]["maps"], data[1]["labels"]), {"masks": data[1]["masks"].float()})
        return Case(partial(PxAP, interval=0.1), partial(pxap, interval=0.1), _with(data, "masks"), bad)

    def deletion() -> Case:
        data, model = cam_data(), tiny_model()
        options = dict(steps=4, batch_size=3)
        bad = ((data[1]["maps"], data[1]["labels"]), {"images": data[1]["images"][:, :, :4]})
        return Case(
            partial(DeletionInsertion, model, **options),
            partial(deletion_insertion, model=model, **options),
            _with(data, "images"),
            bad,
        )

    def confidence() -> Case:
        data, model = cam_data(), tiny_model()
        nan_maps = data[1]["maps"].clone()
        nan_maps[0, 0, 0, 0] = float("nan")
        bad = ((nan_maps, data[1]["labels"]), {"images": data[1]["images"]})
        return Case(
            partial(ConfidenceChange, model, score="sigmoid"),
            partial(confidence_change, model=model, score="sigmoid"),
            _with(data, "images"),
            bad,
        )

    def remove_and_debias() -> Case:
        data, model = cam_data(), tiny_model()
        options = dict(percentages=[20, 60], noise=0.0)  # no noise: the same figures however split
        bad = ((data[1]["maps"], data[1]["labels"] * 2), {"images": data[1]["images"]})
        return Case(
            partial(ROAD, model, **options), partial(road, model=model, **options), _with(data, "images"), bad
        )

    return {
        "MeanIoU": miou,
        "MeanAveragePrecision": mean_ap,
        "LocalizationError": localization,
        "MaxBoxAcc": box_acc,
        "PxAP": pixel_ap,
        "DeletionInsertion": deletion,
        "ConfidenceChange": confidence,
        "ROAD": remove_and_debias,
    }


CASES = _cases()


# --------------------------------------------------------------------------------------------- helpers
def join(batches: Sequence[Batch]) -> Batch:
    """All batches as one: tensors concatenated along the batch, lists (boxes) chained."""

    def cat(values: list[Any]) -> Any:
        return torch.cat(values) if isinstance(values[0], Tensor) else [v for value in values for v in value]

    args = tuple(cat([b[0][i] for b in batches]) for i in range(len(batches[0][0])))
    kwargs = {key: cat([b[1][key] for b in batches]) for key in batches[0][1]}
    return args, kwargs


def figures(result: Any) -> list[Tensor]:
    """The tensors of a result: a tensor, or the fields of a named tuple (or a list of them)."""
    return list(result) if isinstance(result, (tuple, list)) else [result]


def assert_same(got: Any, want: Any) -> None:
    for a, b in zip(figures(got), figures(want), strict=True):
        torch.testing.assert_close(a.double().cpu(), b.double().cpu(), equal_nan=True)


def state(metric: Metric) -> dict[str, Tensor]:
    return {key: value.clone() for key, value in metric.state_dict().items()}


def assert_state(metric: Metric, expected: dict[str, Tensor]) -> None:
    now = metric.state_dict()
    assert set(now) == set(expected)
    for key, value in expected.items():
        assert torch.equal(now[key], value), key


# --------------------------------------------------------------------------------------------- the checks
def test_every_streaming_metric_has_a_case() -> None:
    exported = {
        name
        for name in metrics.__all__
        if isinstance(cls := getattr(metrics, name), type) and issubclass(cls, Metric) and cls is not Metric
    }
    assert exported == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_streaming_equals_functional(name: str) -> None:
    case = CASES[name]()
    by_update, by_forward = case.make(), case.make()
    for args, kwargs in case.batches:
        by_update.update(*args, **kwargs)
        assert_same(by_forward(*args, **kwargs), case.functional(*args, **kwargs))  # the batch alone
    args, kwargs = join(case.batches)
    whole = case.functional(*args, **kwargs)
    assert_same(by_update.compute(), whole)
    assert_same(by_forward.compute(), whole)
    assert_state(by_forward, state(by_update))
    assert_same(by_update.compute(), by_update.compute())  # compute does not change the state


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_round_trip(name: str) -> None:
    case = CASES[name]()
    trained = case.make()
    for args, kwargs in case.batches[:-1]:
        trained.update(*args, **kwargs)
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    restored = case.make()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert_same(restored.compute(), trained.compute())
    args, kwargs = case.batches[-1]
    for metric in (trained, restored):  # both carry on with the last batch
        metric.update(*args, **kwargs)
    assert_same(restored.compute(), trained.compute())
    empty = case.make()
    empty.load_state_dict(case.make().state_dict())  # an empty state round-trips too
    assert_same(empty.compute(), case.make().compute())


@pytest.mark.parametrize("name", sorted(CASES))
def test_refused_batch_leaves_the_state_unchanged(name: str) -> None:
    case = CASES[name]()
    metric = case.make()
    args, kwargs = case.batches[0]
    metric.update(*args, **kwargs)
    before, figure = state(metric), metric.compute()
    bad_args, bad_kwargs = case.bad
    with pytest.raises((ValueError, TypeError)):
        metric.update(*bad_args, **bad_kwargs)
    assert_state(metric, before)
    with pytest.raises((ValueError, TypeError)):
        metric(*bad_args, **bad_kwargs)
    assert_state(metric, before)
    assert_same(metric.compute(), figure)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reset_returns_to_the_initial_state(name: str) -> None:
    case = CASES[name]()
    metric, fresh = case.make(), case.make()
    initial = state(fresh)
    assert all(torch.isnan(value).all() for value in figures(fresh.compute()))
    for args, kwargs in case.batches:
        metric(*args, **kwargs)
    metric.reset()
    assert_state(metric, initial)
    assert_same(metric.compute(), fresh.compute())
    args, kwargs = case.batches[0]
    metric.update(*args, **kwargs)  # usable again after reset
    assert_same(metric.compute(), case.functional(*args, **kwargs))


# --------------------------------------------------------------------------------------------- distributed
WORKER = textwrap.dedent(
    """
    import os, sys
    import torch
    import torch.distributed as dist

    rank, store, out, tests = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    sys.path.insert(0, tests)
    import test_metric_contract as contract

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    results = {}
    for name, build in contract.CASES.items():
        case = build()
        shared, lonely, local = case.make(), case.make(), case.make()
        local.sync_on_compute = False
        for index, (args, kwargs) in enumerate(case.batches):
            if index % 2 == rank:  # the batches shared out between the two processes
                shared.update(*args, **kwargs)
                local.update(*args, **kwargs)
            if rank == 0:  # rank 1 has no data at all and must still take part in the sync
                lonely(*args, **kwargs)
        before = contract.state(shared)
        results[name] = {
            "shared": contract.figures(shared.compute()),
            "lonely": contract.figures(lonely.compute()),
            "empty": contract.figures(case.make().compute()),
            "local": contract.figures(local.compute()),
            "state_kept": all(torch.equal(v, shared.state_dict()[k]) for k, v in before.items()),
        }
    torch.save(results, out)
    dist.barrier()  # nobody tears down gloo while a peer still talks to it
    dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown, which gloo's threads occasionally abort
    """
)


@pytest.mark.slow
def test_sync_across_processes_even_with_a_process_without_data(tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(worker),
                str(rank),
                str(tmp_path / "store"),
                str(tmp_path / f"{rank}.pt"),
                str(Path(__file__).resolve().parent),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, output.decode()
    results = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in range(2)]
    for name, build in CASES.items():
        case = build()
        whole = case.functional(*join(case.batches)[0], **join(case.batches)[1])
        mine = [b for index, b in enumerate(case.batches) if index % 2 == 1]
        rank_1_alone = case.functional(*join(mine)[0], **join(mine)[1])
        for rank, result in enumerate(results):
            got = result[name]
            assert_same(got["shared"], figures(whole))
            assert_same(got["lonely"], figures(whole))
            assert all(torch.isnan(value).all() for value in got["empty"]), name
            assert got["state_kept"], name
            if rank == 1:  # without sync, a process sees only its own batches
                assert_same(got["local"], figures(rank_1_alone))
