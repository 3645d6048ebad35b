"""LevelHeadsNet, LevelHeadsLoss and level_heads_maps against hand-computed oracles."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from torch import Tensor, nn
from torchvision import models

import hiercam
from hiercam import ClassHierarchy, GradCAM, SmallConvNet, fuse_hierarchy
from hiercam.cam import level_heads_maps
from hiercam.losses import LevelHeadsLoss, LevelHeadsLossOutput, level_heads_loss
from hiercam.models import LevelHeadsNet, LevelHeadsOutput, LevelView

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
# 6 classes -> 3 groups -> 2 groups
HIERARCHY = ClassHierarchy([[0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 1, 1]])


def tiny_backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2), nn.ReLU())


def make_net(**kwargs: object) -> LevelHeadsNet:
    return LevelHeadsNet(tiny_backbone(), HIERARCHY, **kwargs)  # type: ignore[arg-type]


def labels_for(batch: int) -> Tensor:
    labels = (torch.rand(batch, 6) < 0.4).float()
    labels[:, 0] = 1.0  # every image has a class
    return labels


def naive_remap(labels: Tensor, level: int) -> Tensor:
    """Group labels by a loop over the groups: present when any member class is."""
    if level == 0:
        return labels.float()
    groups = HIERARCHY.groups(level)
    return torch.stack([labels[:, members].amax(dim=1) for members in groups], dim=1).float()


def naive_gradcam(net: LevelHeadsNet, images: Tensor, level: int) -> Tensor:
    """Grad-CAM of one head by plain autograd: one gradient per class, weights = spatial mean of it."""
    net.eval()
    activations = net.features(images)
    logits = net.heads[level](activations.mean(dim=(2, 3)))
    maps = []
    for k in range(logits.shape[1]):
        (gradient,) = torch.autograd.grad(logits[:, k].sum(), activations, retain_graph=True)
        weights = gradient.mean(dim=(2, 3))
        maps.append(F.relu((weights[:, :, None, None] * activations).sum(dim=1)))
    return torch.stack(maps, dim=1).detach()


def hooks_of(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


# --------------------------------------------------------------------------------------------- the net
@pytest.mark.parametrize("pool", ["avg", "max"])
def test_each_head_is_linear_of_pooled_backbone_features(pool: str) -> None:
    net = make_net(pool=pool).eval()
    images = torch.randn(3, 3, 16, 16)
    output = net(images)
    assert isinstance(output, LevelHeadsOutput)
    assert isinstance(output, tuple)
    assert [tuple(x.shape) for x in output] == [(3, 6), (3, 3), (3, 2)]
    features = net.features(images)
    pooled = features.mean(dim=(2, 3)) if pool == "avg" else features.amax(dim=(2, 3))
    for level, logits in enumerate(output):
        head = net.heads[level]
        torch.testing.assert_close(logits, pooled @ head.weight.T + head.bias)
    assert output.class_logits is output[0]
    assert net.level_sizes == (6, 3, 2)
    assert net.num_levels == 3
    assert net.num_classes == 6
    assert net.num_features == 12


def test_head_sizes_instead_of_a_hierarchy_and_small_convnet() -> None:
    net = LevelHeadsNet(SmallConvNet(width=4), [5, 3, 3]).eval()
    assert net.num_features == 16
    assert [tuple(x.shape) for x in net(torch.zeros(2, 3, 32, 32))] == [(2, 5), (2, 3), (2, 3)]


def test_torchvision_classifier_is_cut_on_a_copy() -> None:
    resnet = models.resnet18(num_classes=7)
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    net = LevelHeadsNet(resnet, HIERARCHY)
    assert net.num_features == 512
    assert [tuple(x.shape) for x in net.eval()(torch.zeros(1, 3, 64, 64))] == [(1, 6), (1, 3), (1, 2)]
    ours = {p.data_ptr() for p in net.parameters()}
    assert not any(p.data_ptr() in ours for p in resnet.parameters())
    assert all(torch.equal(v, resnet.state_dict()[k]) for k, v in before.items())
    assert hasattr(resnet, "fc")  # the caller's classifier keeps its head


def test_training_flag_and_device_follow_the_backbone() -> None:
    backbone = tiny_backbone().eval().double()
    net = LevelHeadsNet(backbone, HIERARCHY)
    assert not net.training
    assert all(head.weight.dtype == torch.float64 for head in net.heads)


def test_level_view_shares_parameters() -> None:
    net = make_net().eval()
    view = net.level(2)
    assert isinstance(view, LevelView)
    assert view.net is net
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(view(images), net(images)[2])
    with torch.no_grad():
        net.heads[2].bias.add_(1.0)
    torch.testing.assert_close(view(images), net(images)[2])
    assert {id(p) for p in view.parameters()} == {id(p) for p in net.parameters()}


# -------------------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize(
    ("weights", "reduction"),
    [(None, "sum"), (None, "mean"), ((1.0, 0.5, 0.0), "sum"), ((2.0, 1.0, 1.0), "mean")],
)
def test_loss_is_weighted_sum_of_level_bce(weights: tuple[float, ...] | None, reduction: str) -> None:
    output = [torch.randn(5, n) for n in HIERARCHY.level_sizes]
    labels = labels_for(5)
    parts = level_heads_loss(output, labels, HIERARCHY, weights=weights, reduction=reduction)  # type: ignore[arg-type]
    terms = [
        F.binary_cross_entropy_with_logits(x, naive_remap(labels, level)) for level, x in enumerate(output)
    ]
    factors = weights or (1.0, 1.0, 1.0)
    expected = sum(w * t for w, t in zip(factors, terms, strict=True))
    if reduction == "mean":
        expected = expected / sum(factors)
    assert isinstance(parts, LevelHeadsLossOutput)
    torch.testing.assert_close(parts.total, expected)
    for got, term in zip(parts.levels, terms, strict=True):
        torch.testing.assert_close(got, term)
    module = LevelHeadsLoss(HIERARCHY, weights=weights, reduction=reduction)  # type: ignore[arg-type]
    torch.testing.assert_close(module(output, labels).total, parts.total)
    assert list(parts._asdict()) == ["total", "level_0", "level_1", "level_2"]


def test_loss_gradcheck_float64_and_bool_labels() -> None:
    output = tuple(torch.randn(3, n, dtype=torch.float64, requires_grad=True) for n in HIERARCHY.level_sizes)
    labels = labels_for(3).bool()

    def total(*logits: Tensor) -> Tensor:
        return level_heads_loss(list(logits), labels, HIERARCHY, weights=[1.0, 2.0, 0.5]).total

    assert total(*output).dtype == torch.float64
    assert torch.autograd.gradcheck(total, output)


def test_loss_under_autocast_is_float32() -> None:
    output = [torch.randn(4, n).bfloat16() for n in HIERARCHY.level_sizes]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = level_heads_loss(output, labels_for(4), HIERARCHY)
    assert parts.total.dtype == torch.float32


# -------------------------------------------------------------------------------------------- the maps
@pytest.mark.parametrize("level", [0, 1, 2])
def test_engine_gradcam_of_one_level_equals_naive_gradcam(level: int) -> None:
    net = make_net().train()
    images = torch.randn(2, 3, 16, 16)
    expected = naive_gradcam(net, images, level)
    net.train()
    extractor = GradCAM(net, "features", output=level)
    for _ in range(2):  # the general path, then the verified closed form
        got = extractor(images, size="feature", normalize=None)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert "verified" in repr(extractor)
    assert net.training
    assert all(m.training for m in net.modules())
    view_maps = GradCAM(net.level(level), "net.features")(images, size="feature", normalize=None)
    torch.testing.assert_close(view_maps, expected, atol=1e-5, rtol=1e-5)
    assert hooks_of(net) == 0


def test_level_heads_maps_equals_naive_and_fuses_as_eq6() -> None:
    net = make_net()
    images = torch.randn(3, 3, 16, 16)
    base, levels = level_heads_maps(net, images, HIERARCHY, size="feature", normalize=None)
    assert hooks_of(net) == 0
    torch.testing.assert_close(base, naive_gradcam(net, images, 0), atol=1e-5, rtol=1e-5)
    for level, maps in enumerate(levels, start=1):
        torch.testing.assert_close(maps, naive_gradcam(net, images, level), atol=1e-5, rtol=1e-5)
    # Eq. 6 without M0' and without rescaling: M0[k] + mean over levels of the map of k's group
    fused = fuse_hierarchy(
        base, levels, HIERARCHY, rest_reduction=None, clamp=False, normalize=None, normalize_inputs=None
    )
    for k in range(6):
        groups = [levels[level - 1][:, HIERARCHY.group_of(k, level)] for level in (1, 2)]
        torch.testing.assert_close(fused[:, k], base[:, k] + (groups[0] + groups[1]) / 2)
    # the default call: input size, max-normalised, and the full Eq. 6 with labels
    base, levels = level_heads_maps(net, images, HIERARCHY)
    assert base.shape == (3, 6, 16, 16)
    assert [m.shape[1] for m in levels] == [3, 2]
    assert torch.allclose(base.flatten(2).amax(-1)[base.flatten(2).amax(-1) > 0], torch.tensor(1.0))
    fused = fuse_hierarchy(base, levels, HIERARCHY, labels_for(3))
    assert fused.shape == (3, 6, 16, 16)
    assert torch.isfinite(fused).all()


def test_no_hook_left_after_an_error() -> None:
    net = make_net()
    other = ClassHierarchy([[0, 0, 1, 1, 1, 1]])  # 2 levels, the net has 3
    with pytest.raises(ValueError, match=r"`model` returned 3 outputs but `hierarchy` has 2 levels"):
        level_heads_maps(net, torch.randn(1, 3, 16, 16), other)
    assert hooks_of(net) == 0
    with pytest.raises(ValueError, match="`output` index 3 is out of range"):
        GradCAM(net, "features", output=3)(torch.randn(1, 3, 16, 16))
    assert hooks_of(net) == 0


# ------------------------------------------------------------------------------------------------- fit
def test_fit_trains_all_heads_and_scores_level_0() -> None:
    net = LevelHeadsNet(SmallConvNet(width=4, norm="group"), HIERARCHY)
    images = torch.randn(8, 3, 24, 24)
    labels = labels_for(8)
    batches = [(images, labels)]
    history = hiercam.fit(
        net, batches, epochs=2, loss=LevelHeadsLoss(HIERARCHY), val_loader=batches, lr=1e-2, progress=False
    )
    assert history["train_loss"][1] < history["train_loss"][0]
    assert {"train_level_0", "train_level_1", "train_level_2", "val_level_2"} <= set(history.keys())
    total = sum(history[f"train_level_{level}"][0] for level in range(3))
    assert history["train_loss"][0] == pytest.approx(total, rel=1e-5)
    with torch.no_grad():
        output = net.eval()(images)
    present = labels.sum(0) > 0
    by_hand = average_precision_score(
        labels[:, present].numpy(), output[0][:, present].numpy(), average="macro"
    )
    assert history["val_map"][-1] == pytest.approx(by_hand, abs=1e-5)
    group_labels = naive_remap(labels, 1)
    kept = group_labels.sum(0) > 0
    level_1 = average_precision_score(group_labels[:, kept].numpy(), output[1][:, kept].numpy())
    assert history["val_map"][-1] != pytest.approx(level_1, abs=1e-9)


def test_fit_default_loss_points_to_level_heads_loss() -> None:
    with pytest.raises(TypeError, match="LevelHeadsLoss for a LevelHeadsNet"):
        hiercam.fit(make_net(), [(torch.randn(2, 3, 16, 16), labels_for(2))], epochs=1, progress=False)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"backbone": "resnet"}, TypeError, "`backbone` must be an nn.Module, got str"),
        ({"hierarchy": "abc"}, TypeError, "`hierarchy` must be a ClassHierarchy or a sequence"),
        ({"hierarchy": 6}, TypeError, "`hierarchy` must be a ClassHierarchy or a sequence"),
        ({"hierarchy": []}, ValueError, "`hierarchy` must hold at least one head size"),
        ({"hierarchy": [6, 0]}, ValueError, r"`hierarchy\[1\]` must be >= 1, got 0"),
        ({"hierarchy": [6, 2.0]}, TypeError, r"`hierarchy\[1\]` must be an int, got float"),
        ({"pool": "min"}, ValueError, "`pool` must be one of 'avg', 'max', got 'min'"),
    ],
)
def test_net_errors_name_the_argument(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    arguments: dict[str, object] = {"backbone": tiny_backbone(), "hierarchy": HIERARCHY, **kwargs}
    with pytest.raises(error, match=message):
        LevelHeadsNet(**arguments)  # type: ignore[arg-type]


def test_level_and_forward_errors() -> None:
    net = make_net()
    with pytest.raises(ValueError, match="`level` must be <= 2, got 3"):
        net.level(3)
    with pytest.raises(TypeError, match="`level` must be an int"):
        net.level(1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("`x` must have shape (B, C, H, W), got (3, 16, 16)")):
        net(torch.zeros(3, 16, 16))
    with pytest.raises(TypeError, match="`net` must be a LevelHeadsNet"):
        LevelView(nn.Linear(2, 2), 0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"output": torch.zeros(4, 6)}, TypeError, "`output` must be a sequence of logits"),
        ({"output": [torch.zeros(4, 6), torch.zeros(4, 3)]}, ValueError, "one logits tensor per level"),
        (
            {"output": [torch.zeros(4, 6), torch.zeros(4, 2), torch.zeros(4, 2)]},
            ValueError,
            re.escape("`output[1]` must have shape (B, N_1) = (4, 3), got (4, 2)"),
        ),
        (
            {"output": [torch.zeros(4, 6, dtype=torch.long), torch.zeros(4, 3), torch.zeros(4, 2)]},
            TypeError,
            r"`output\[0\]` must be a floating-point tensor",
        ),
        ({"labels": torch.ones(4, 5)}, ValueError, r"`labels` must have shape \(B, K\) = \(4, 6\)"),
        ({"labels": torch.full((4, 6), 2.0)}, ValueError, "`labels` must hold only 0/1 values"),
        ({"hierarchy": [6, 3, 2]}, TypeError, "`hierarchy` must be a ClassHierarchy, got list"),
        ({"weights": [1.0, 1.0]}, ValueError, r"`weights` must hold one weight per level \(3\), got 2"),
        ({"weights": [1.0, -1.0, 1.0]}, ValueError, r"`weights\[1\]` must be a finite number >= 0"),
        ({"weights": [0.0, 0.0, 0.0]}, ValueError, "`weights` must hold at least one positive weight"),
        ({"weights": 1.0}, TypeError, "`weights` must be a sequence of floats or None, got float"),
        ({"reduction": "max"}, ValueError, "`reduction` must be one of 'sum', 'mean', got 'max'"),
    ],
)
def test_loss_errors_name_the_argument(
    change: dict[str, object], error: type[Exception], message: str
) -> None:
    arguments: dict[str, object] = {
        "output": [torch.zeros(4, n) for n in HIERARCHY.level_sizes],
        "labels": torch.ones(4, 6),
        "hierarchy": HIERARCHY,
        **change,
    }
    with pytest.raises(error, match=message):
        level_heads_loss(**arguments)  # type: ignore[arg-type]


def test_loss_module_checks_when_built() -> None:
    with pytest.raises(TypeError, match="`hierarchy` must be a ClassHierarchy"):
        LevelHeadsLoss([6, 3, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`weights` must hold one weight per level"):
        LevelHeadsLoss(HIERARCHY, weights=[1.0])
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        LevelHeadsLoss(HIERARCHY, reduction="none")  # type: ignore[arg-type]


def test_level_heads_maps_errors() -> None:
    net = make_net()
    images = torch.randn(1, 3, 16, 16)
    with pytest.raises(TypeError, match="`hierarchy` must be a ClassHierarchy"):
        level_heads_maps(net, images, [6, 3, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`method` must be a CAM class"):
        level_heads_maps(net, images, HIERARCHY, method=nn.Linear)  # type: ignore[arg-type]
    regrouped = ClassHierarchy([[0, 0, 1, 1, 1, 2], [0, 0, 0, 0, 0, 1]])  # other groups, the same sizes
    assert level_heads_maps(net, images, regrouped).base.shape == (1, 6, 16, 16)  # only sizes are checked
    with pytest.raises(TypeError, match="`model` must return one logits tensor per level"):
        level_heads_maps(net.level(0), images, HIERARCHY, target_layer="net.features")
    assert hooks_of(net) == 0


# ------------------------------------------------------------------------------------------------ docs
def test_howto_example_runs() -> None:
    page = (ROOT / "docs" / "howto" / "level-heads.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, re.DOTALL)
    example = next(block for block in blocks if block.startswith("import torch"))
    namespace: dict[str, object] = {}
    exec(compile(example, "level-heads.md", "exec"), namespace)
    fused = namespace["fused"]
    assert isinstance(fused, Tensor)
    assert fused.shape == (4, 6, 48, 48)
