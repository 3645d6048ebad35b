from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from torch import Tensor, nn
from torch.utils.data import DataLoader

from hiercam import (
    ClassHierarchy,
    FashionScenes,
    History,
    MeanAveragePrecision,
    SmallConvNet,
    TwoBranchLoss,
    TwoBranchNet,
    average_precision,
    collate_scenes,
    evaluate,
    fit,
    mean_average_precision,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ mAP
def random_scores(seed: int, n: int = 60, k: int = 6) -> tuple[Tensor, Tensor]:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(n, k)), 1)  # rounding makes ties, which sklearn groups
    targets = (rng.random((n, k)) < 0.3).astype(np.int64)
    targets[:, -1] = 0  # a class without positives
    return torch.tensor(scores, dtype=torch.float32), torch.tensor(targets)


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_scikit_learn(seed: int) -> None:
    scores, targets = random_scores(seed)
    per_class = average_precision(scores, targets)
    for k in range(scores.shape[1] - 1):
        expected = average_precision_score(targets[:, k].numpy(), scores[:, k].numpy())
        assert per_class[k].item() == pytest.approx(expected, abs=1e-6)
    assert math.isnan(per_class[-1].item())
    expected_mean = np.mean([average_precision_score(targets[:, k], scores[:, k]) for k in range(5)])
    assert mean_average_precision(scores, targets).item() == pytest.approx(expected_mean, abs=1e-6)


def test_accumulated_map_equals_one_shot_and_policies() -> None:
    scores, targets = random_scores(7)
    metric = MeanAveragePrecision()
    for start in range(0, 60, 16):
        metric.update(scores[start : start + 16], targets[start : start + 16].bool())
    torch.testing.assert_close(metric.per_class(), average_precision(scores, targets), equal_nan=True)
    assert metric.compute().item() == pytest.approx(mean_average_precision(scores, targets).item())
    metric.reset()
    assert math.isnan(metric.compute().item())  # no data: NaN, like every metric
    assert metric.per_class().shape == (0,)
    assert math.isnan(mean_average_precision(scores, torch.zeros_like(targets)).item())
    perfect = mean_average_precision(targets.float() + 0.5 * scores.sigmoid(), targets)
    assert perfect.item() == pytest.approx(1.0)


def test_map_rejects_bad_input() -> None:
    scores, targets = random_scores(0)
    with pytest.raises(ValueError, match="`scores` and `labels` must have the same shape"):
        mean_average_precision(scores, targets[:, :3])
    with pytest.raises(ValueError, match="0/1 values"):
        mean_average_precision(scores, targets * 2)
    with pytest.raises(ValueError, match="finite"):
        mean_average_precision(scores.masked_fill(targets.bool(), float("nan")), targets)
    with pytest.raises(TypeError, match="floating-point"):
        average_precision(targets, targets)
    metric = MeanAveragePrecision()
    metric.update(scores, targets)
    with pytest.raises(ValueError, match="must have 6 classes like earlier batches, got 3"):
        metric.update(scores[:, :3], targets[:, :3])


# ------------------------------------------------------------------------------------------ fixtures
SIZE = 40


@functools.cache
def scene_batches(split: str, num: int, batch: int) -> list[dict]:
    data = FashionScenes(split, num_scenes=num, image_size=SIZE, seed=3)
    return list(DataLoader(data, batch_size=batch, collate_fn=collate_scenes))


class Cached(torch.utils.data.Dataset):
    """Pre-drawn scenes, so that tests spend their time training rather than drawing."""

    def __init__(self, num: int) -> None:
        batches = scene_batches("train", num, num)
        self.images, self.labels = batches[0]["image"], batches[0]["labels"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]


def classifier(seed: int = 0, dropout: float = 0.0, classes: int = 10, norm: str = "batch") -> nn.Module:
    torch.manual_seed(seed)
    backbone = SmallConvNet(width=4, norm=norm)
    return nn.Sequential(
        backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(16, classes)
    )


def shuffled_loader(seed: int | None = None) -> DataLoader:
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return DataLoader(Cached(48), batch_size=12, shuffle=True, generator=generator)


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def without_time(history: History) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history.records]


# ------------------------------------------------------------------------------------------ fit
def test_a_few_batches_of_training_lower_the_loss() -> None:
    model = classifier(norm="group")  # no running statistics: eval mode measures what training changed
    batches = scene_batches("train", 64, 16)
    before = evaluate(model, batches)["loss"]
    history = fit(model, batches, epochs=5, lr=3e-3, progress=False)
    after = evaluate(model, batches)["loss"]
    assert after < before - 0.05
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["epoch"] == [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("generator_seed", [None, 5])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, generator_seed: int | None
) -> None:
    val = scene_batches("val", 16, 16)
    straight = classifier(dropout=0.3)
    reference = fit(
        straight, shuffled_loader(generator_seed), epochs=3, lr=1e-3, val_loader=val, progress=False
    )

    path = tmp_path / "run.pt"
    first = classifier(dropout=0.3)
    fit(
        first,
        shuffled_loader(generator_seed),
        epochs=1,
        lr=1e-3,
        val_loader=val,
        checkpoint=path,
        progress=False,
    )
    resumed_model = classifier(dropout=0.3)  # a fresh process would rebuild the model the same way
    resumed = fit(
        resumed_model,
        shuffled_loader(generator_seed),
        epochs=3,
        lr=1e-3,
        val_loader=val,
        checkpoint=path,
        progress=False,
    )
    assert weights_equal(straight, resumed_model)
    assert without_time(resumed) == without_time(reference)
    assert not weights_equal(straight, classifier(dropout=0.3))


class SimulatedKillError(Exception):
    pass


class Interrupting:
    """A loader that raises in the middle of its n-th pass, like a killed job."""

    def __init__(self, loader: DataLoader, fail_on_pass: int) -> None:
        self.loader, self.fail_on_pass, self.passes = loader, fail_on_pass, 0
        self.generator = loader.generator
        self.sampler = loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.passes += 1
        for number, batch in enumerate(self.loader):
            if self.passes == self.fail_on_pass and number == 2:
                raise SimulatedKillError
            yield batch


def test_interrupted_run_resumes_from_last_completed_epoch(tmp_path: Path) -> None:
    straight = classifier(dropout=0.2)
    fit(straight, shuffled_loader(), epochs=3, lr=1e-3, progress=False)

    path = tmp_path / "run.pt"
    interrupted = classifier(dropout=0.2)
    with pytest.raises(SimulatedKillError):
        fit(
            interrupted,
            Interrupting(shuffled_loader(), 3),
            epochs=3,
            lr=1e-3,
            checkpoint=path,
            progress=False,
        )
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 2
    assert saved["format"] == "hiercam.fit"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]  # atomic writes leave no temporary file
    resumed = classifier(dropout=0.2)
    history = fit(resumed, shuffled_loader(), epochs=3, lr=1e-3, checkpoint=path, progress=False)
    assert len(history) == 3
    assert weights_equal(straight, resumed)
    # a finished checkpoint resumes to its final weights without training
    again = classifier(dropout=0.2)
    assert len(fit(again, shuffled_loader(), epochs=3, checkpoint=path, progress=False)) == 3
    assert weights_equal(straight, again)
    with pytest.raises(ValueError, match="holds 3 completed epochs, more than `epochs`=2"):
        fit(classifier(), shuffled_loader(), epochs=2, checkpoint=path, progress=False)


def test_seeded_runs_are_deterministic_and_leave_caller_state_alone() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = classifier(dropout=0.3), classifier(dropout=0.3), classifier(dropout=0.3)
    a.eval()
    torch.set_rng_state(state)
    fit(a, shuffled_loader(), epochs=1, lr=1e-3, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert not a.training  # the caller's mode is restored
    fit(b, shuffled_loader(), epochs=1, lr=1e-3, progress=False)
    fit(c, shuffled_loader(), epochs=1, lr=1e-3, progress=False, seed=1)
    assert weights_equal(a, b)
    assert not weights_equal(a, c)


def test_scheduler_steps_once_per_epoch_and_history_records_lr(tmp_path: Path) -> None:
    model = classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    history = fit(
        model, shuffled_loader(), epochs=3, optimizer=optimizer, scheduler=scheduler, progress=False
    )
    assert history["lr"] == pytest.approx([0.1, 0.05, 0.025])
    history.save(tmp_path / "history.json")
    assert json.loads((tmp_path / "history.json").read_text())[2]["lr"] == pytest.approx(0.025)
    assert "train_loss" in repr(history)
    with pytest.raises(KeyError, match="no record has 'val_map'"):
        history["val_map"]


def test_plateau_scheduler_is_the_default() -> None:
    # the monitored loss cannot improve with a zero learning rate: lr halves after patience 5 + 1 epochs
    model = nn.Linear(3, 2)
    data = [(torch.randn(4, 3), torch.ones(4, 2))]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-12)
    history = fit(model, data, epochs=8, optimizer=optimizer, progress=False)
    assert history["lr"][:7] == pytest.approx([1e-12] * 7)
    assert history["lr"][7] == pytest.approx(0.5e-12)


# ------------------------------------------------------------------------------------------ contracts
class PairOutput(NamedTuple):
    logits: Tensor  # (2, B, K)
    features: tuple[Tensor, Tensor]
    mean_logits: Tensor  # (B, K)


class PairLoss(NamedTuple):
    total: Tensor
    classification: Tensor
    orthogonal: Tensor


class TwoHeads(nn.Module):
    """Stand-in for TwoBranchNet: a shared backbone, two linear heads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = SmallConvNet(width=4)
        self.heads = nn.ModuleList([nn.Linear(16, 10), nn.Linear(16, 10)])

    def forward(self, images: Tensor) -> PairOutput:
        maps = self.backbone(images)
        half = maps.shape[1] // 2
        features = (maps[:, :half], maps[:, half:])
        pooled = maps.mean((2, 3))
        logits = torch.stack([head(pooled) for head in self.heads])
        return PairOutput(logits, features, logits.mean(0))


def pair_loss(output: PairOutput, targets: Tensor) -> PairLoss:
    classification = sum(F.binary_cross_entropy_with_logits(b, targets) for b in output.logits) / 2
    a, b = (f.flatten(1) for f in output.features)
    orthogonal = (a * b).sum(1).pow(2).mean() * 1e-6
    return PairLoss(classification + orthogonal, classification, orthogonal)


def test_two_branch_model_with_named_tuple_loss() -> None:
    model = TwoHeads()
    val = scene_batches("val", 32, 16)
    history = fit(
        model, scene_batches("train", 32, 16), epochs=2, loss=pair_loss, val_loader=val, progress=False
    )
    assert {"train_total", "train_classification", "train_orthogonal", "val_orthogonal"} <= set(
        history.keys()
    )
    assert history["train_loss"] == history["train_total"]
    total = history["train_classification"][0] + history["train_orthogonal"][0]
    assert history["train_total"][0] == pytest.approx(total, rel=1e-5)
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(b["image"]).mean_logits for b in val])
    expected = mean_average_precision(scores, torch.cat([b["labels"] for b in val]))
    assert history["val_map"][-1] == pytest.approx(expected.item(), abs=1e-6)
    model.train()
    measured = evaluate(model, val, loss=pair_loss)
    assert model.training
    assert measured["map"] == pytest.approx(expected.item(), abs=1e-6)
    assert measured["loss"] == pytest.approx(history["val_loss"][-1], rel=1e-5)
    assert set(measured) == {"loss", "total", "classification", "orthogonal", "map"}
    with pytest.raises(TypeError, match="default loss .* needs a model that returns a logits tensor"):
        fit(model, val, epochs=1, progress=False)


def test_real_two_branch_net_trains_and_resumes_with_two_branch_loss(tmp_path: Path) -> None:
    def net() -> TwoBranchNet:
        torch.manual_seed(0)
        return TwoBranchNet(functools.partial(SmallConvNet, width=4, norm="group"), num_classes=10)

    loss = TwoBranchLoss(weight=1e-3, reduction="batchmean")
    train, val = shuffled_loader(seed=5), scene_batches("val", 32, 16)
    whole = net()
    history = fit(whole, train, epochs=3, loss=loss, val_loader=val, lr=3e-3, progress=False)
    assert {"train_classification_1", "train_classification_2", "train_orthogonal", "val_map"} <= set(
        history.keys()
    )
    parts = history["train_classification_1"][0] + history["train_classification_2"][0]
    assert history["train_loss"][0] == pytest.approx(parts + 1e-3 * history["train_orthogonal"][0], rel=1e-5)
    assert history["train_loss"][-1] < history["train_loss"][0]
    checkpoint = tmp_path / "two_branch.pt"
    first = net()
    fit(
        first,
        shuffled_loader(seed=5),
        epochs=1,
        loss=loss,
        val_loader=val,
        lr=3e-3,
        checkpoint=checkpoint,
        progress=False,
    )
    resumed = net()
    again = fit(
        resumed,
        shuffled_loader(seed=5),
        epochs=3,
        loss=loss,
        val_loader=val,
        lr=3e-3,
        checkpoint=checkpoint,
        progress=False,
    )
    assert weights_equal(resumed, whole)
    assert without_time(again) == without_time(history)


def test_labels_transform_trains_a_level_model() -> None:
    hierarchy = FashionScenes.natural_hierarchy()
    remap = functools.partial(hierarchy.remap_labels, level=1)
    val = scene_batches("val", 32, 16)
    model = classifier(classes=hierarchy.num_groups(1))
    history = fit(
        model,
        scene_batches("train", 32, 16),
        epochs=1,
        val_loader=val,
        labels_transform=remap,
        progress=False,
    )
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(b["image"]) for b in val])
    targets = hierarchy.remap_labels(torch.cat([b["labels"] for b in val]), 1)
    assert history["val_map"][0] == pytest.approx(mean_average_precision(scores, targets).item(), abs=1e-6)
    with pytest.raises(ValueError, match=r"logits \(16, 4\) and labels \(16, 10\) .* `labels_transform`"):
        fit(model, val, epochs=1, progress=False)
    assert isinstance(hierarchy, ClassHierarchy)


# ------------------------------------------------------------------------------------------ bad input
def test_fit_rejects_bad_arguments_and_batches(tmp_path: Path) -> None:
    model, data = classifier(), scene_batches("val", 16, 16)
    with pytest.raises(ValueError, match="`epochs` must be >= 1, got 0"):
        fit(model, data, epochs=0)
    with pytest.raises(ValueError, match=r"`amp` on device cpu needs `amp_dtype=torch.bfloat16`"):
        fit(model, data, epochs=1, amp=True)
    with pytest.raises(
        ValueError, match="`scheduler` must be 'plateau', None or a scheduler object, got 'cosine'"
    ):
        fit(model, data, epochs=1, scheduler="cosine")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`optimizer` must be a torch.optim.Optimizer"):
        fit(model, data, epochs=1, optimizer="adam")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module, got function"):
        fit(lambda x: x, data, epochs=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a batch must be a mapping with 'image' and 'labels' keys"):
        fit(model, [torch.zeros(2, 3, SIZE, SIZE)], epochs=1, progress=False)
    with pytest.raises(TypeError, match="`loss` term 'loss' must be a scalar tensor, got \\(16, 10\\)"):
        fit(model, data, epochs=1, progress=False, loss=lambda o, t: (o - t) ** 2)
    with pytest.raises(ValueError, match="a loader yielded no batch .* not a generator"):
        fit(model, (b for b in data), epochs=2, progress=False)
    with pytest.raises(ValueError, match="`lr` must be > 0, got 0"):
        fit(model, data, epochs=1, lr=0)
    bogus = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, bogus)
    with pytest.raises(ValueError, match="is not a hiercam.fit version 1 checkpoint"):
        fit(model, data, epochs=1, checkpoint=bogus, progress=False)


# ------------------------------------------------------------------------------------------ bf16 on the CPU
def test_fit_trains_under_bfloat16_autocast_on_the_cpu() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    seen: list[torch.dtype] = []
    model[-1].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(6, 3, 2, 2, generator=g), (torch.rand(6, 3, generator=g) < 0.5).float())]
    before = [p.detach().clone() for p in model.parameters()]
    history = fit(model, data, epochs=1, amp=True, amp_dtype=torch.bfloat16, lr=1e-2, progress=False)
    assert seen == [torch.bfloat16]  # the forward ran under bf16 autocast
    loss = history["train_loss"][0]
    assert math.isfinite(loss)
    with torch.no_grad():  # oracle: the float32 BCE of the bf16 logits at the starting weights
        x, y = data[0]
        logits = F.linear(F.linear(x.flatten(1), before[0], before[1]).relu(), before[2], before[3])
        expected = F.binary_cross_entropy_with_logits(logits, y).item()
    assert loss == pytest.approx(expected, abs=0.02)  # bf16 keeps 8 bits of mantissa
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match=r"`amp_dtype` must be torch.float16 or torch.bfloat16"):
        fit(model, data, epochs=1, amp=True, amp_dtype=torch.float32, progress=False)
