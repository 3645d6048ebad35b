"""The whole pipeline on a fake PASCAL VOC tree (the real data is never needed in tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hiercam import ClassHierarchy
from hiercam.cli import main
from hiercam.datasets.fake_voc import write_fake_voc
from hiercam.datasets.voc import VOC_CLASSES
from hiercam.pipeline import ConfigError, load_config


def test_voc_pipeline_runs_end_to_end(tmp_path: Path) -> None:
    fake = write_fake_voc(tmp_path / "data", num_images=16, seed=1)
    config = tmp_path / "voc_tiny.toml"
    config.write_text(
        'device = "cpu"\n[data]\ndataset = "voc"\nimage_size = 64\n'
        "[model]\nwidth = 4\n[train]\nepochs = 1\nbatch_size = 8\n[method]\nlevels = [6, 3]\n"
    )
    out = tmp_path / "run"
    assert main(["run", str(config), "--data", str(fake["root"]), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    hierarchy = ClassHierarchy.load(out / "hierarchy.json")
    assert hierarchy.class_names == VOC_CLASSES
    assert hierarchy.level_sizes == (20, 6, 3)
    assert set(metrics["variants"]) == {
        "baseline",
        "ensemble",
        "two_branch",
        "grouping",
        "full",
        "level_1",
        "level_2",
    }
    for entry in metrics["variants"].values():
        for split in ("val", "test"):
            figures = dict(entry[split])
            assert all(0 <= value <= 1 for value in figures.pop("max_box_acc_per_iou"))
            if split == "val":  # deletion / insertion: test images only
                assert figures.pop("deletion") is None
                assert figures.pop("insertion") is None
            assert all(0 <= value <= 1 for value in figures.values())
    # VOC has no public test labels: "test" is the official validation set, as in the paper
    assert metrics["scores"]["test"] == metrics["scores"]["val"]
    config_used = json.loads((out / "config.json").read_text())
    assert config_used["data"]["root"] == str(fake["root"])
    assert (out / "figures" / "cams.png").stat().st_size > 10_000


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["voc_resnet50.toml", "voc_vgg16.toml"])
def test_shipped_voc_configs_hold_the_papers_settings(name: str) -> None:
    config = load_config(CONFIGS / name, data__root="/data/VOCdevkit")
    assert config.data.dataset == "voc"
    assert config.data.image_size == 224
    assert config.method.levels == (12, 8, 5)
    assert (config.method.orthogonal_weight, config.method.orthogonal_reduction) == (1e-4, "sum")
    assert (config.train.lr, config.train.batch_size, config.train.epochs, config.train.patience) == (
        1e-4,
        20,
        100,
        5,
    )
    assert config.train.scheduler == "plateau"
    assert config.model.pretrained
    with pytest.raises(ConfigError, match="`data.root` must name the VOCdevkit folder"):
        load_config(CONFIGS / name)


def test_torchvision_backbones_take_images_in_zero_one() -> None:
    from hiercam.models import ImageNetNormalize
    from hiercam.pipeline.config import ModelConfig
    from hiercam.pipeline.networks import build_classifier

    model = build_classifier(ModelConfig(backbone="resnet18"), num_classes=20, seed=0).eval()
    assert isinstance(model.features[0], ImageNetNormalize)
    images = torch.rand(2, 3, 64, 64)
    expected = (images - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
        [0.229, 0.224, 0.225]
    )[:, None, None]
    torch.testing.assert_close(model.features[0](images), expected)
    assert model(images).shape == (2, 20)
    with pytest.raises(ValueError, match="`model.backbone` 'resnet9000' is not a torchvision classification"):
        build_classifier(ModelConfig(backbone="resnet9000"), num_classes=20, seed=0)
