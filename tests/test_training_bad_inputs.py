"""fit/evaluate on bad inputs: NaN, non-binary labels, History JSON, truncated and hostile checkpoints."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hiercam import History, evaluate, fit
from hiercam.training import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def batches(n: int = 3, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(4, 3, 2, 2, generator=g), (torch.rand(4, 3, generator=g) < 0.5).float())
        for _ in range(n)
    ]


def state(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# ------------------------------------------------------------------------------------------ NaN
def test_nan_images_stop_training_before_the_step_and_name_the_batch() -> None:
    data = batches()
    data[1] = (data[1][0].clone().index_fill_(0, torch.tensor([2]), float("nan")), data[1][1])
    model = tiny()
    with pytest.raises(
        ValueError, match=r"non-finite .* in epoch 1/2 \(training\), batch 2: the batch's images"
    ):
        fit(model, data, epochs=2, lr=1e-2, progress=False)
    # oracle: the weights are those after the first batch only (the NaN batch changed nothing)
    reference = tiny()
    fit(reference, data[:1], epochs=1, lr=1e-2, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(state(model), state(reference), strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


class Blows(nn.Module):
    """Finite images, infinite logits from batch ``at`` on (a model whose weights diverged)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.linear, self.at, self.calls = nn.Linear(12, 3), at, 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        out = self.linear(x.flatten(1))
        return out * float("inf") if self.calls >= self.at else out


def test_non_finite_logits_from_finite_images_are_named() -> None:
    with pytest.raises(ValueError, match=r"in epoch 1/1 \(training\), batch 3: the model's logits hold NaN"):
        fit(Blows(at=3), batches(), epochs=1, progress=False)


def test_a_nan_loss_from_finite_logits_names_the_loss_and_its_term() -> None:
    from typing import NamedTuple

    class Parts(NamedTuple):
        total: Tensor
        bce: Tensor
        extra: Tensor

    def loss(output: Tensor, labels: Tensor) -> Parts:
        bce = F.binary_cross_entropy_with_logits(output, labels)
        extra = torch.log(output.detach().min() - output.detach().max() - 1)  # log of a negative: NaN
        return Parts(bce + extra, bce, extra)

    with pytest.raises(
        ValueError, match=r"non-finite loss terms \['loss', 'total', 'extra'\] .* the logits are"
    ):
        fit(tiny(), batches(), epochs=1, loss=loss, progress=False)


def test_nan_in_validation_is_named_and_not_a_scores_error() -> None:
    val = batches(2, seed=5)
    val[1] = (val[1][0].clone().fill_(float("nan")), val[1][1])
    with pytest.raises(ValueError, match=r"epoch 1/1 \(validation\), batch 2: the batch's images") as error:
        fit(tiny(), batches(), epochs=1, val_loader=val, progress=False)
    assert "scores" not in str(error.value)
    with pytest.raises(ValueError, match=r"non-finite .* in evaluate, batch 2"):
        evaluate(tiny(), val)


def test_infinite_images_are_caught_too() -> None:
    data = batches(1)
    data[0] = (data[0][0].clone().fill_(float("inf")), data[0][1])
    with pytest.raises(ValueError, match=r"batch 1: the batch's images hold NaN or infinite values"):
        fit(tiny(), data, epochs=1, progress=False)


# ------------------------------------------------------------------------------------------ labels
@pytest.mark.parametrize(
    ("bad", "shown"),
    [(2.0, r"\[2.0\]"), (-1.0, r"\[-1.0\]"), (0.5, r"\[0.5\]"), (float("nan"), r"\[nan\]")],
)
def test_fit_refuses_labels_that_are_not_0_or_1(bad: float, shown: str) -> None:
    data = batches()
    labels = data[2][1].clone()
    labels[1, 2] = bad
    data[2] = (data[2][0], labels)
    model = tiny()
    with pytest.raises(ValueError, match=rf"`labels` must hold only 0/1 values .*got {shown} in epoch 1/1 "):
        fit(model, data, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"`labels` must hold only 0/1 values .* in evaluate, batch 3"):
        evaluate(model, data)


def test_labels_transform_output_is_checked() -> None:
    data = batches(1)
    with pytest.raises(ValueError, match=r"`labels` must hold only 0/1 values .*after `labels_transform`"):
        fit(tiny(), data, epochs=1, labels_transform=lambda y: y * 2, progress=False)
    with pytest.raises(TypeError, match="`labels_transform` must return a torch.Tensor, got list"):
        fit(tiny(), data, epochs=1, labels_transform=lambda y: y.tolist(), progress=False)


def test_batch_mapping_reads_labels_then_targets() -> None:
    ((x, y),) = batches(1)
    a, b = tiny(), tiny()
    fit(a, [{"image": x, "labels": y}], epochs=1, progress=False)
    fit(b, [{"image": x, "labels": y}], epochs=1, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(state(a), state(b), strict=True))
    with pytest.raises(TypeError, match="batch labels must be a torch.Tensor, got list"):
        fit(tiny(), [{"image": x, "labels": y.tolist()}], epochs=1, progress=False)


# ------------------------------------------------------------------------------------------ History JSON
def reject(constant: str) -> None:
    raise AssertionError(f"not standard JSON: {constant}")


def test_history_save_writes_standard_json_and_load_restores_nan(tmp_path: Path) -> None:
    history = History([{"epoch": 1.0, "val_map": float("nan"), "val_loss": float("inf")}, {"epoch": 2.0}])
    path = history.save(tmp_path / "history.json")
    data = json.loads(path.read_text(), parse_constant=reject)
    assert data == [{"epoch": 1.0, "val_map": None, "val_loss": None}, {"epoch": 2.0}]
    again = History.load(path)
    assert again.records[1] == {"epoch": 2.0}
    assert again["val_map"][0] != again["val_map"][0]  # NaN
    assert history.records[0]["val_loss"] == float("inf")  # the caller's records are not modified


def test_history_of_a_run_with_nan_map_saves_as_standard_json(tmp_path: Path) -> None:
    data = batches(2)
    no_positives = [(x, torch.zeros_like(y)) for x, y in data]
    history = fit(tiny(), data, epochs=1, val_loader=no_positives, progress=False)
    assert history["val_map"][0] != history["val_map"][0]  # NaN: no class has a positive
    text = history.save(tmp_path / "h.json").read_text()
    assert json.loads(text, parse_constant=reject)[0]["val_map"] is None


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"epoch": 1}', "must hold a JSON list"),
        ("[1, 2]", "must hold a JSON list"),
        ("[{", "is not a JSON file"),
    ],
)
def test_history_load_refuses_other_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"`path` '.*bad.json' {match}"):
        History.load(path)


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("ck") / "run.pt"
    fit(tiny(), batches(), epochs=1, checkpoint=path, progress=False)
    return path.read_bytes()


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated-half"),
        pytest.param(lambda b: b[:-20], id="truncated-end"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: bytes(range(256)) * 4, id="garbage"),
        pytest.param(lambda b: b"hello, not a checkpoint", id="text"),
        pytest.param(lambda b: pickle.dumps(os.getcwd, protocol=2), id="hostile-pickle"),
    ],
)
def test_unreadable_checkpoints_name_the_file(tmp_path: Path, written: bytes, mangle) -> None:
    path = tmp_path / "run.pt"
    path.write_bytes(mangle(written))
    model = tiny()
    before = state(model)
    with pytest.raises(
        ValueError, match=r"`checkpoint` '.*run.pt' could not be read as a hiercam.fit checkpoint"
    ):
        fit(model, batches(), epochs=2, checkpoint=path, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, state(model), strict=True))


def tampered(tmp_path: Path, written: bytes, change) -> Path:
    path = tmp_path / "run.pt"
    path.write_bytes(written)
    data = torch.load(path, weights_only=True)
    change(data)
    torch.save(data, path)
    return path


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.pop("model"), "lacks the key 'model'"),
        (lambda d: d.pop("rng"), "lacks the key 'rng'"),
        (
            lambda d: d.update(version=True),
            r"not a hiercam.fit version 1 checkpoint \(found \('hiercam.fit', True\)",
        ),
        (lambda d: d.update(version=1.0), "not a hiercam.fit version 1 checkpoint"),
        (lambda d: d.update(epoch="1"), "key 'epoch' must be an int >= 1, got str '1'"),
        (lambda d: d.update(epoch=True), "key 'epoch' must be an int >= 1, got bool"),
        (lambda d: d.update(epoch=0), "key 'epoch' must be an int >= 1, got int 0"),
        (lambda d: d.update(history=[]), "key 'history' must be a list of 1 epoch records"),
        (lambda d: d.update(history=[{"epoch": "one"}]), "key 'history' must be a list of"),
        (lambda d: d.update(model={"0.weight": [1.0]}), "key 'model' must be a state dict of tensors"),
        (lambda d: d.update(optimizer={"state": {}}), "key 'optimizer' must be an optimizer state dict"),
        (lambda d: d.update(scheduler=[1]), "key 'scheduler' must be a state dict or None"),
        (lambda d: d["rng"].update(numpy=["MT19937"]), "key 'rng.numpy' must be NumPy's legacy state"),
        (
            lambda d: d["rng"].update(python=(3, (1, 2), None)),
            "key 'rng.python' must be Python's random state",
        ),
        (lambda d: d["rng"].pop("torch"), "key 'rng.torch' must be a uint8 tensor, got NoneType"),
        (lambda d: d["rng"].update(generators=[1]), "key 'rng.generators' must be a list of uint8"),
        (
            lambda d: d["model"].update({"1.weight": torch.zeros(5, 12)}),
            r"key 'model' does not fit `model` \(1.weight: \(5, 12\) in the file, \(3, 12\) in `model`\)",
        ),
        (lambda d: d["model"].pop("1.bias"), r"key 'model' does not fit `model` \(missing \['1.bias'\]\)"),
        (
            lambda d: d["optimizer"]["param_groups"][0]["params"].pop(),
            r"key 'optimizer' has parameter groups of sizes \[1\], the optimizer \[2\]",
        ),
    ],
)
def test_tampered_checkpoints_name_the_file_and_key(
    tmp_path: Path, written: bytes, change, match: str
) -> None:
    path = tampered(tmp_path, written, change)
    model = tiny(seed=3)
    before = state(model)
    with pytest.raises(ValueError, match=rf"`checkpoint` '.*run.pt'.*{match}"):
        fit(model, batches(), epochs=2, checkpoint=path, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, state(model), strict=True))  # nothing loaded


def test_load_checkpoint_reads_what_fit_wrote_and_refuses_what_fit_refuses(
    tmp_path: Path, written: bytes
) -> None:
    path = tmp_path / "run.pt"
    path.write_bytes(written)
    data = load_checkpoint(path)
    assert data["epoch"] == 1
    assert [r["epoch"] for r in data["history"]] == [1.0]
    assert set(data["model"]) == {"1.weight", "1.bias"}
    path.write_bytes(written[: len(written) // 2])
    with pytest.raises(
        ValueError, match=r"`checkpoint` '.*run.pt' could not be read as a hiercam.fit checkpoint"
    ):
        load_checkpoint(path)
    tampered(tmp_path, written, lambda d: d.pop("rng"))
    with pytest.raises(ValueError, match=r"`checkpoint` '.*run.pt'.*lacks the key 'rng'"):
        load_checkpoint(path)


def test_an_intact_checkpoint_still_resumes(tmp_path: Path, written: bytes) -> None:
    path = tmp_path / "run.pt"
    path.write_bytes(written)
    resumed = tiny()
    history = fit(resumed, batches(), epochs=2, checkpoint=path, progress=False)
    whole = tiny()
    reference = fit(whole, batches(), epochs=2, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(state(resumed), state(whole), strict=True))
    assert history["train_loss"] == reference["train_loss"]
