"""The pipeline on MSRC-21 (a fake tree), scored labels, local weights, frozen BatchNorm, frequent classes,
the ensemble control and resumable bench records."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from hiercam import ClassHierarchy, SmallConvNet, average_branch_maps, mean_iou
from hiercam.cli import main
from hiercam.datasets import MSRC21_CLASSES, MSRC21_STUFF_CLASSES, write_fake_msrc21
from hiercam.models import TanhNormalize
from hiercam.pipeline import (
    ConfigError,
    ExtractedMaps,
    ModelKey,
    ModelMaps,
    PipelineConfig,
    RunResult,
    Variant,
    apply_preset,
    run_bench,
    run_pipeline,
)
from hiercam.pipeline.data import InMemorySplit, class_names, load_split
from hiercam.pipeline.evaluation import score_split, variant_maps, variants_of
from hiercam.pipeline.networks import (
    EvalBatchNorm,
    build_classifier,
    build_two_branch,
    check_weights,
    freeze_batchnorm,
)
from hiercam.pipeline.run import seed_record_path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_MSRC = Path(os.environ.get("HIERCAM_MSRC21", SHARED / "data" / "msrc21"))
SHARED_WEIGHTS = Path(os.environ.get("HIERCAM_MOBILENET", SHARED / "models" / "mobilenet_v2_imagenet.pth"))
GRASS = MSRC21_CLASSES.index("grass")


def _msrc_config(root: Path, **method: Any) -> PipelineConfig:
    return PipelineConfig.from_dict(
        {
            "device": "cpu",
            "data": {"dataset": "msrc21", "root": str(root), "image_size": 32, "min_box_area": 4},
            "model": {"width": 4, "norm": "group"},
            "train": {"epochs": 1, "batch_size": 8},
            "method": {"levels": [3, 2], **method},
        }
    )


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake MSRC tree of 24 images (12 train, 6 val, 6 test)."""
    root: Path = write_fake_msrc21(tmp_path_factory.mktemp("msrc"), num_images=24, seed=1)["root"]
    return root


@pytest.fixture(scope="module")
def msrc_run(fake_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineConfig, Path]:
    """One recommended run on the fake tree (1 epoch, tiny models), shared by the tests below."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = apply_preset(_msrc_config(fake_root), "recommended")
    out = tmp_path_factory.mktemp("run")
    run_pipeline(config, out, progress=False, log=lambda _: None)
    torch.set_num_threads(threads)
    return config, out


# ------------------------------------------------------------------------------------------------- config
def test_msrc_config_keys_and_class_names(fake_root: Path) -> None:
    config = _msrc_config(fake_root)
    assert config.data.background_classes == ()
    assert class_names(config) == MSRC21_CLASSES
    stuff = config.replace(data__background_classes="stuff")
    assert class_names(stuff) == tuple(c for c in MSRC21_CLASSES if c not in MSRC21_STUFF_CLASSES)
    named = config.replace(data__background_classes=["sky", "grass"])
    assert len(class_names(named)) == 19
    assert "sky" not in class_names(named)
    assert config.replace(data__input_norm="tanh").data.input_norm == "tanh"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"data__background_classes": 3},
            "`data.background_classes` must be one of 'stuff' or a list, got 3",
        ),
        ({"data__background_classes": "sky"}, "must be one of 'stuff' or a list, got 'sky'"),
        ({"data__background_classes": ["sky", 3]}, "`data.background_classes[1]` must be a string, got 3"),
        ({"data__background_classes": ["zebra"]}, "unknown class(es) 'zebra'"),
        ({"data__background_classes": ["sky", "sky"]}, "names a class twice"),
        ({"data__background_classes": list(MSRC21_CLASSES[:-1])}, "at least two classes to score"),
        ({"data__root": None}, "`data.root` must name the MSRC-21 folder"),
        ({"data__min_box_area": -1}, "`data.min_box_area` must be >= 0"),
        ({"data__input_norm": "zscore"}, "`data.input_norm` must be one of"),
        ({"model__weights": " "}, "`model.weights` must name a file"),
        ({"model__weights": "w.pt", "model__pretrained": True}, "set only one"),
        ({"method__max_class_presence": 1.0}, "`method.max_class_presence` must be between 0 and 1"),
        ({"method__max_class_presence": 0}, "`method.max_class_presence` must be between 0 and 1"),
        ({"method__levels": [21]}, "fewer groups than the 21 classes"),
    ],
)
def test_bad_msrc_and_model_keys_are_config_errors(
    fake_root: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        _msrc_config(fake_root).replace(**changes)
    assert message in str(info.value)


def test_stuff_background_counts_its_classes(fake_root: Path) -> None:
    config = _msrc_config(fake_root)
    with pytest.raises(ConfigError, match="fewer groups than the 15 classes"):
        config.replace(data__background_classes="stuff", method__levels=[15])


def test_background_classes_only_for_msrc() -> None:
    with pytest.raises(ConfigError, match="applies to 'msrc21' only"):
        PipelineConfig().replace(data__background_classes="stuff")


# ------------------------------------------------------------------------------------------ scored labels
class _NoBackgroundSplit(InMemorySplit):
    """A split whose masks have no background: its mIoU averages the class labels only."""

    @property
    def scored_labels(self) -> tuple[int, ...]:
        return tuple(range(1, self.labels.shape[1] + 1))


def test_miou_averages_the_scored_labels_only() -> None:
    # one image 1 x 4, K = 2: mask [1, 1, 2, 2]; class 0 fires on the left half, class 1 weakly then strongly
    maps = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 0.1, 1.0]]]])
    labels = torch.tensor([[1.0, 1.0]])
    mask = torch.tensor([[[1, 1, 2, 2]]], dtype=torch.uint8)
    split = _NoBackgroundSplit(torch.zeros(1, 3, 1, 4, dtype=torch.uint8), labels, mask, [torch.zeros(0, 5)])
    extracted = ExtractedMaps(labels, {ModelKey("base"): ModelMaps(maps, torch.zeros(1, 2))})
    config = PipelineConfig(device="cpu", ablation=False, ensemble=False).replace(method__levels=[1])
    hierarchy = ClassHierarchy([[0, 0]])
    curves = score_split(config, split, extracted, hierarchy, [Variant("baseline")], localization=False)
    at = config.method.thresholds.index(0.15)
    # prediction at 0.15: [1, 1, 0 (background: 0.1 < 0.15), 2]: IoU 1 = 2/2, IoU 2 = 1/2, IoU 0 = 0/1
    assert curves[Variant("baseline")].miou[at] == pytest.approx(0.75)
    # every label (the FashionScenes/VOC convention) would count the background's 0 by construction
    every = mean_iou(maps, labels.long(), masks=mask.long(), num_classes=3, thresholds=0.15)
    assert float(every.miou) == pytest.approx(0.5)
    plain = InMemorySplit(split.images, labels, mask, split.boxes)
    assert plain.scored_labels == (0, 1, 2)
    curves = score_split(config, plain, extracted, hierarchy, [Variant("baseline")], localization=False)
    assert curves[Variant("baseline")].miou[at] == pytest.approx(0.5)


def test_msrc_split_scores_its_classes(fake_root: Path) -> None:
    config = _msrc_config(fake_root)
    split = load_split(config, "val")
    assert split.scored_labels == tuple(range(1, 22))
    assert load_split(config.replace(data__background_classes="stuff"), "val").scored_labels == tuple(
        range(16)
    )
    _, images, labels, masks, boxes = next(split.batches(4))
    assert images.shape == (4, 3, 32, 32)
    assert labels.shape == (4, 21)
    assert masks.shape == (4, 32, 32)
    assert 0 not in masks.unique().tolist()  # no background class: label 0 never occurs
    assert len(boxes) == 4


# ------------------------------------------------------------------------------------------------ weights
def test_weights_file_starts_every_model(tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = SmallConvNet(width=4, norm="batch")
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    config = PipelineConfig(device="cpu").replace(model__width=4, model__weights=str(path))
    check_weights(config.model)
    for seed in (0, 1):
        model = build_classifier(config.model, 10, seed)
        for key, value in source.state_dict().items():
            torch.testing.assert_close(model.features.state_dict()[key], value)
    pair = build_two_branch(config.model, 10, 0)  # both branches start from the file
    for branch in pair.branches:
        for key, value in source.state_dict().items():
            torch.testing.assert_close(branch.features.state_dict()[key], value)


@pytest.mark.parametrize("content", ["wrong_width", "list", "damaged", "missing"])
def test_bad_weights_files_are_config_errors_naming_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "w.pt"
    if content == "wrong_width":
        torch.save(SmallConvNet(width=8).state_dict(), path)
    elif content == "list":
        torch.save([1, 2, 3], path)
    elif content == "damaged":
        path.write_bytes(b"not a torch file")
    config = PipelineConfig(device="cpu").replace(model__width=4, model__weights=str(path))
    with pytest.raises(ConfigError) as info:
        check_weights(config.model)
    assert "`model.weights`" in str(info.value)
    assert str(path) in str(info.value)


def test_run_stops_before_work_for_bad_weights(tmp_path: Path, fake_root: Path) -> None:
    config = _msrc_config(fake_root).replace(model__weights=str(tmp_path / "none.pt"))
    with pytest.raises(ConfigError, match="none.pt not found"):
        run_pipeline(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_run_stops_before_work_for_a_partial_tree(tmp_path: Path) -> None:
    root = write_fake_msrc21(tmp_path / "tree", num_images=8)["root"]
    (root / "splits" / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test.txt"):
        run_pipeline(_msrc_config(root), tmp_path / "run", progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists()
    with pytest.raises(FileNotFoundError, match="MSRC-21 folder"):
        run_pipeline(_msrc_config(tmp_path / "nowhere"), tmp_path / "run", progress=False, log=lambda _: None)


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="../shared/models/mobilenet_v2_imagenet.pth absent")
def test_real_mobilenet_weights_load_with_tanh_scaling() -> None:
    from torchvision.models import mobilenet_v2

    config = PipelineConfig(device="cpu").replace(
        model__backbone="mobilenet_v2", model__weights=str(SHARED_WEIGHTS), model__freeze_batchnorm=True
    )
    check_weights(config.model)
    model = build_classifier(config.model, 21, 0, input_norm="tanh").eval()
    reference = mobilenet_v2()
    reference.load_state_dict(torch.load(SHARED_WEIGHTS, weights_only=True))
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference.eval().features(images * 2 - 1)
        got = model.features(images)
    torch.testing.assert_close(got, expected)
    assert isinstance(model.features[0], TanhNormalize)


# ------------------------------------------------------------------------------------ input norm and BN
def test_input_norm_defaults_and_choices() -> None:
    from hiercam.models import ImageNetNormalize, SmallConvNet

    small = PipelineConfig(device="cpu").replace(model__width=4)
    assert isinstance(build_classifier(small.model, 3, 0).features, SmallConvNet)  # default: none
    assert isinstance(build_classifier(small.model, 3, 0, input_norm="none").features, SmallConvNet)
    assert isinstance(build_classifier(small.model, 3, 0, input_norm="tanh").features[0], TanhNormalize)
    scaled = build_classifier(small.model, 3, 0, input_norm="imagenet").features
    assert isinstance(scaled[0], ImageNetNormalize)
    images = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(TanhNormalize()(images), images * 255 / 127.5 - 1)


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()), nn.Conv2d(4, 2, 1))


def test_frozen_batchnorm_keeps_its_statistics_and_learns_its_affine() -> None:
    for frozen in (False, True):
        net = _bn_net()
        net[1][0].running_mean.fill_(0.3)
        if frozen:
            assert freeze_batchnorm(net) is net
        norm = net[1][0]
        assert isinstance(norm, EvalBatchNorm) == frozen
        stats = (norm.running_mean.clone(), norm.running_var.clone())
        weight = norm.weight.detach().clone()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        net.train()
        images = torch.randn(4, 3, 6, 6) * 3 + 2
        loss = net(images).square().mean()
        loss.backward()
        optimizer.step()
        assert norm.training is not frozen
        assert torch.equal(norm.running_mean, stats[0]) is frozen
        assert not torch.equal(norm.weight.detach(), weight)  # the affine part learns either way
        if frozen:  # in training mode it normalises with the stored statistics, as in eval
            with torch.no_grad():
                expected = (images.new_tensor(0) + net[0](images) - stats[0].view(1, -1, 1, 1)) / torch.sqrt(
                    stats[1].view(1, -1, 1, 1) + norm.eps
                ) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
                torch.testing.assert_close(norm(net[0](images)), expected)


def test_frozen_batchnorm_keeps_the_state_dict_keys() -> None:
    net = _bn_net()
    keys = list(net.state_dict())
    frozen = freeze_batchnorm(_bn_net())
    assert list(frozen.state_dict()) == keys
    frozen.load_state_dict(net.state_dict())


# ------------------------------------------------------------------------------------------- keys and rows
def test_ensemble_key_and_variant() -> None:
    assert ModelKey("ensemble").name == "ensemble"
    assert ModelKey.from_name("ensemble") == ModelKey("ensemble")
    assert Variant.from_name("ensemble").description.startswith("ensemble control")
    assert not Variant("ensemble").fused
    with pytest.raises(ValueError, match="level-0 model"):
        ModelKey("ensemble", 1)
    with pytest.raises(ValueError, match="not a model name"):
        ModelKey.from_name("ensemble_L1")


def test_ensemble_variant_averages_the_two_models_like_a_naive_loop() -> None:
    torch.manual_seed(3)
    first, second = torch.rand(2, 3, 4, 4) * 5, torch.rand(2, 3, 4, 4)
    labels = torch.ones(2, 3)
    extracted = ExtractedMaps(
        labels,
        {
            ModelKey("base"): ModelMaps(first, torch.zeros(2, 3)),
            ModelKey("ensemble"): ModelMaps(second, torch.zeros(2, 3)),
        },
    )
    hierarchy = ClassHierarchy([[0, 0, 1]])
    ((_, maps),) = variant_maps(
        extracted, torch.arange(2), hierarchy, labels, (4, 4), [Variant("ensemble")], "max"
    )
    expected = torch.empty_like(first)
    for b in range(2):
        for k in range(3):
            mean = (first[b, k] / first[b, k].max() + second[b, k] / second[b, k].max()) / 2
            expected[b, k] = mean / mean.max()
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(maps, average_branch_maps([first / first.amax((2, 3), True), second]))


def test_variants_put_the_ensemble_next_to_the_baseline() -> None:
    hierarchy = ClassHierarchy([[0, 0, 1]])
    config = PipelineConfig(device="cpu")
    assert [v.name for v in variants_of(config, hierarchy)][:2] == ["baseline", "ensemble"]
    assert "ensemble" not in [v.name for v in variants_of(config.replace(ensemble=False), hierarchy)]


# ----------------------------------------------------------------------------------------- the full run
def test_msrc_run_scores_classes_and_reports_the_ensemble(msrc_run: tuple[PipelineConfig, Path]) -> None:
    _, out = msrc_run
    result = RunResult.load(out / "metrics.json")
    assert result.scored_labels == tuple(range(1, 22))
    assert [v.name for v in result.variants][:2] == ["baseline", "ensemble"]
    assert ModelKey("ensemble") in result.histories
    report = (out / "report.md").read_text()
    assert "ensemble control: independently trained single-branch models averaged" in report
    assert "left out: background" in report
    models = sorted((out / "models").glob("*.pt"))
    base = torch.load(next(p for p in models if p.name.startswith("base-")), weights_only=True)
    partner = torch.load(next(p for p in models if p.name.startswith("ensemble-")), weights_only=True)
    assert not torch.equal(base["classifier.weight"], partner["classifier.weight"])  # trained independently
    for entry in json.loads((out / "metrics.json").read_text())["variants"].values():
        figures = dict(entry["test"])
        assert all(0 <= value <= 1 for value in figures.pop("max_box_acc_per_iou"))
        assert all(value is None or 0 <= value <= 1 for value in figures.values())


def _frequent_grass_tree(root: Path) -> Path:
    """A fake tree whose class grass is in 97 % of the training images (33 of 34)."""
    info = write_fake_msrc21(root, num_images=68, seed=2)
    labels = info["labels"]
    for number, image_id in enumerate(info["splits"]["train"]):
        mask = info["masks"][image_id]
        if number == 0:  # the one training image without grass
            mask[mask == GRASS] = 255
        else:
            mask[mask == 255] = GRASS
        Image.fromarray(mask).save(root / "labels" / f"{image_id}.png")
        labels[image_id] = sorted(int(v) for v in np.unique(mask) if v != 255)
    (root / "image_labels.json").write_text(json.dumps(labels))
    return root


def test_recommended_keeps_a_frequent_class_out_and_runs(tmp_path: Path, one_thread: None) -> None:
    root = _frequent_grass_tree(tmp_path / "tree")
    config = _msrc_config(root, levels=[3, 2])
    train = load_split(config, "train").labels
    assert float(train[:, GRASS].mean()) == pytest.approx(33 / 34)
    # the group rule alone (split, then drop saturated levels): grass saturates every level that groups it,
    # even alone, so no level is left and the run falls back to the baseline, saying why
    old = run_pipeline(
        apply_preset(config, "signal_groups"), tmp_path / "old", progress=False, log=lambda _: None
    )
    assert old.hierarchy is None
    assert old.grouping is not None
    assert old.grouping.fallback is not None
    assert "'grass' alone is in more than 90% of them; keep it out" in old.grouping.fallback
    assert "'grass' alone is in more than 90% of them" in (tmp_path / "old" / "report.md").read_text()
    lines: list[str] = []
    result = run_pipeline(
        apply_preset(config, "recommended"), tmp_path / "new", progress=False, log=lines.append
    )
    assert result.hierarchy.singletons == (GRASS,)
    for level in range(1, result.hierarchy.num_levels):
        assert [GRASS] in [list(group) for group in result.hierarchy.groups(level)]
    assert any("kept out of the grouping" in line and "grass (97%)" in line for line in lines)
    assert "grass" in (tmp_path / "new" / "hierarchy.txt").read_text()


def test_levels_no_larger_than_the_kept_out_classes_are_trimmed_or_raised(
    tmp_path: Path, one_thread: None
) -> None:
    root = _frequent_grass_tree(tmp_path / "tree")
    # grass is kept out: a level of 1 group cannot hold it and another group, so it is left out
    config = _msrc_config(root, levels=[3, 1], max_class_presence=0.9)
    lines: list[str] = []
    result = run_pipeline(
        config.replace(ablation=False, ensemble=False), tmp_path / "run", progress=False, log=lines.append
    )
    assert result.hierarchy.level_sizes == (21, 3)
    assert any("levels [3, 1] -> [3]" in line for line in lines)
    # no level has more groups than the kept-out class: each gets one more (grass alone, 1 group of the rest)
    lines.clear()
    raised = run_pipeline(
        config.replace(method__levels=[1], ablation=False, ensemble=False),
        tmp_path / "raised",
        progress=False,
        log=lines.append,
    )
    assert raised.hierarchy is not None
    others = [c for c in range(21) if c != GRASS]
    assert sorted(raised.hierarchy.groups(1), key=len) == [[GRASS], others]
    assert any(
        "levels [1] -> [2]: every level had no more groups than the 1 kept-out" in line for line in lines
    )
    assert raised.grouping is not None
    assert (raised.grouping.requested_levels, raised.grouping.levels) == ((1,), (2,))
    assert "levels [1] -> [2]" in (tmp_path / "raised" / "report.md").read_text()


# ------------------------------------------------------------------------------------------------- bench
def test_bench_keeps_each_seed_and_resumes(tmp_path: Path, fake_root: Path, one_thread: None) -> None:
    config = apply_preset(_msrc_config(fake_root).replace(ablation=False), "recommended")
    results = tmp_path / "results"
    first = run_bench(
        config, [0], tmp_path / "bench", results=results, label="recommended", log=lambda _: None
    )
    record = results / "msrc21" / "recommended" / "seed_0.json"
    assert record == seed_record_path(results, config.replace(seed=0), "recommended")
    stored = json.loads(record.read_text())
    assert stored["config"] == config.replace(seed=0).to_dict()
    assert stored["seconds"]["total"] > 0
    assert "ensemble" in first["variants"]
    assert first["seconds"]["0"] > 0
    # an interrupted session: the run folders are gone, the record is read back and nothing trains
    lines: list[str] = []
    again = run_bench(
        config, [0], tmp_path / "bench2", results=results, label="recommended", log=lines.append
    )
    assert not (tmp_path / "bench2" / "seed_0").exists()
    assert any("read from" in line for line in lines)
    assert again["variants"] == first["variants"]
    assert "ensemble control" in (tmp_path / "bench2" / "bench.md").read_text()
    # another config is run again (and its record replaces the old one)
    changed = config.replace(method__threshold=0.2, method__thresholds=[0.1, 0.2])
    run_bench(changed, [0], tmp_path / "bench3", results=results, label="recommended", log=lambda _: None)
    assert (tmp_path / "bench3" / "seed_0").is_dir()
    assert json.loads(record.read_text())["config"]["method"]["threshold"] == 0.2
    record.write_text("{not json")
    with pytest.raises(ValueError, match="seed_0.json: not JSON"):
        run_bench(changed, [0], tmp_path / "bench4", results=results, label="recommended", log=lambda _: None)
    with pytest.raises(ValueError, match="plain folder name"):
        seed_record_path(results, config, "../up")


def test_bench_command_writes_records(tmp_path: Path, fake_root: Path, one_thread: None) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(
        'device = "cpu"\nablation = false\n[data]\ndataset = "msrc21"\n'
        f"root = {json.dumps(str(fake_root))}\nimage_size = 32\n"
        '[model]\nwidth = 4\nnorm = "group"\n[train]\nepochs = 1\nbatch_size = 8\n[method]\nlevels = [3, 2]\n'
    )
    argv = ["bench", "--config", str(path), "--seeds", "1", "--out", str(tmp_path / "out")]
    assert main([*argv, "--preset", "recommended", "--results", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "msrc21" / "recommended" / "seed_0.json").is_file()
    assert main([*argv, "--results", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "msrc21" / "tiny" / "seed_0.json").is_file()


def test_msrc_config_file_points_at_shared() -> None:
    from hiercam.pipeline import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "msrc21_mobilenet_v2.toml"
    config = load_config(path)
    assert config.data.root == "../shared/data/msrc21"
    assert config.model.weights == "../shared/models/mobilenet_v2_imagenet.pth"
    assert config.data.input_norm == "tanh"
    assert config.model.freeze_batchnorm
    if not (SHARED_WEIGHTS.is_file() and (SHARED_MSRC / "splits" / "all.txt").is_file()):
        pytest.skip("../shared (MSRC-21 and the MobileNetV2 weights) is not available")
    real = config.replace(data__root=str(SHARED_MSRC), model__weights=str(SHARED_WEIGHTS))
    check_weights(real.model)
    assert [len(load_split(real, split)) for split in ("train", "val", "test")] == [276, 59, 256]


def test_voc_style_msrc_config_is_the_msrc_config_with_stuff_as_background() -> None:
    from hiercam.pipeline import load_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    objects = load_config(configs / "msrc21_objects_mobilenet_v2.toml")
    assert tuple(objects.data.background_classes) == MSRC21_STUFF_CLASSES
    assert tuple(objects.method.levels) == (6,)
    plain = load_config(configs / "msrc21_mobilenet_v2.toml")
    stuff = objects.data.background_classes
    assert objects == plain.replace(data__background_classes=stuff, method__levels=[6])
    if not (SHARED_WEIGHTS.is_file() and (SHARED_MSRC / "splits" / "all.txt").is_file()):
        pytest.skip("../shared (MSRC-21 and the MobileNetV2 weights) is not available")
    real = objects.replace(data__root=str(SHARED_MSRC), model__weights=str(SHARED_WEIGHTS))
    train = load_split(real, "train")
    assert train.labels.shape == (276, 15)
    assert int((train.labels.sum(1) == 0).sum()) == 47  # photos of stuff alone: negatives for every class


def test_cache_keys_leave_out_new_keys_at_their_defaults() -> None:
    from hiercam.pipeline import DataConfig, ModelConfig
    from hiercam.pipeline.keys import section_key

    old_data = {"dataset", "root", "image_size", "train_scenes", "val_scenes", "test_scenes", "items"}
    assert set(section_key(DataConfig())) == old_data | {"num_workers"}
    assert set(section_key(ModelConfig())) == {"backbone", "width", "norm", "pretrained"}
    assert section_key(DataConfig(input_norm="tanh"))["input_norm"] == "tanh"
    assert section_key(ModelConfig(weights="w.pt", freeze_batchnorm=True))["freeze_batchnorm"] is True
