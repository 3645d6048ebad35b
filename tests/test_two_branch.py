from __future__ import annotations

import os
import shutil

import pytest
import torch
from torch import nn
from torchvision import models

from hiercam import (
    Branch,
    GlobalPool,
    TwoBranchLoss,
    TwoBranchNet,
    TwoBranchOutput,
    class_embeddings,
    orthogonal_loss,
)
from hiercam.grouping import MultiHeadClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2), nn.ReLU())


def test_output_shapes_and_fields() -> None:
    net = TwoBranchNet(tiny_backbone, num_classes=5)
    out = net(torch.randn(4, 3, 16, 16))
    assert isinstance(out, TwoBranchOutput)
    assert out._fields == ("logits", "features", "mean_logits")
    assert out.logits.shape == (2, 4, 5)
    assert isinstance(out.features, tuple)
    assert [f.shape for f in out.features] == [(4, 12, 7, 7), (4, 12, 7, 7)]
    assert out.mean_logits.shape == (4, 5)
    torch.testing.assert_close(out.mean_logits, (out.logits[0] + out.logits[1]) / 2)
    assert net.num_classes == 5
    assert net.num_features == 12
    assert isinstance(net.branches, nn.ModuleList)
    assert len(net.branches) == 2
    assert all(isinstance(b, Branch) for b in net.branches)


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_branch_logits_are_classifier_of_pool_of_features(pool: str) -> None:
    net = TwoBranchNet(tiny_backbone, num_classes=3, pool=pool)
    x = torch.randn(2, 3, 16, 16)
    out = net(x)
    for i, branch in enumerate(net.branches):
        maps = branch.features(x)
        torch.testing.assert_close(out.features[i], maps)
        pooled = maps.mean(dim=(2, 3)) if pool == "avg" else maps.flatten(2).max(dim=2).values
        expected = pooled @ branch.classifier.weight.T + branch.classifier.bias
        torch.testing.assert_close(out.logits[i], expected)
        torch.testing.assert_close(branch(x), expected)  # a Branch is an ordinary classifier
        torch.testing.assert_close(branch.forward_head(branch.forward_features(x)), expected)


def test_pool_is_recognisable_global_average_pooling() -> None:
    net = TwoBranchNet(tiny_backbone, num_classes=3)
    for branch in net.branches:
        assert isinstance(branch.pool, GlobalPool)
        assert branch.pool.mode == "avg"
        assert isinstance(branch.classifier, nn.Linear)
        assert branch.classifier.weight.shape == (3, 12)
    x = torch.randn(2, 12, 5, 4)
    torch.testing.assert_close(GlobalPool("avg")(x), nn.AdaptiveAvgPool2d(1)(x).flatten(1))
    torch.testing.assert_close(GlobalPool("max")(x), nn.AdaptiveMaxPool2d(1)(x).flatten(1))


def test_hooks_on_branch_features_see_the_maps_used_for_the_logits() -> None:
    net = TwoBranchNet(tiny_backbone, num_classes=3)
    seen: list[torch.Tensor] = []
    handles = [b.features.register_forward_hook(lambda _m, _i, o: seen.append(o)) for b in net.branches]
    out = net(torch.randn(2, 3, 16, 16))
    for handle in handles:
        handle.remove()
    assert seen[0] is out.features[0]
    assert seen[1] is out.features[1]


def test_module_backbone_is_copied_twice_with_the_same_weights() -> None:
    backbone = tiny_backbone()
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    net = TwoBranchNet(backbone, num_classes=4)
    first, second = (dict(b.features.named_parameters()) for b in net.branches)
    for name, parameter in first.items():
        assert torch.equal(parameter, second[name])  # same start ...
        assert parameter.data_ptr() != second[name].data_ptr()  # ... separate parameters
        assert parameter.data_ptr() != dict(backbone.named_parameters())[name].data_ptr()
    heads = net.classifier_heads()
    assert not torch.equal(heads[0].weight, heads[1].weight)  # fresh classifier per branch
    net(torch.randn(2, 3, 16, 16)).logits.sum().backward()
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, state[key])
    assert all(p.grad is None for p in backbone.parameters())


def test_factory_backbone_gives_independent_initialisations() -> None:
    net = TwoBranchNet(tiny_backbone, num_classes=4)
    w0, w1 = (b.features[0].weight for b in net.branches)
    assert not torch.equal(w0, w1)


def test_torchvision_classifier_is_cut_and_its_mode_kept() -> None:
    net = TwoBranchNet(models.mobilenet_v3_small(num_classes=10).eval(), num_classes=3)
    assert not net.training
    assert all(not m.training for m in net.modules())
    assert net.num_features == 576
    out = net(torch.randn(1, 3, 32, 32))
    assert out.features[0].shape == (1, 576, 1, 1)
    assert out.logits.shape == (2, 1, 3)


def test_every_parameter_gets_a_gradient_from_the_loss() -> None:
    net = TwoBranchNet(tiny_backbone, num_classes=3)
    out = net(torch.randn(4, 3, 16, 16))
    TwoBranchLoss()(out, torch.ones(4, 3)).total.backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert missing == []


def test_class_embeddings_average_the_branches_or_pick_one() -> None:
    net = TwoBranchNet(tiny_backbone, num_classes=6)
    assert isinstance(net, MultiHeadClassifier)
    heads = net.classifier_heads()
    assert heads[0] is net.branches[0].classifier
    assert heads[1] is net.branches[1].classifier
    expected = (heads[0].weight + heads[1].weight).detach() / 2
    torch.testing.assert_close(class_embeddings(net), expected)
    assert torch.equal(class_embeddings(net, layer="branches.0.classifier"), heads[0].weight.detach())
    assert torch.equal(class_embeddings(net, layer="branches.1.classifier"), heads[1].weight.detach())


def test_float64_backbone_gives_float64_classifier_and_output() -> None:
    net = TwoBranchNet(tiny_backbone().double(), num_classes=2)
    assert net.branches[0].classifier.weight.dtype == torch.float64
    out = net(torch.randn(2, 3, 16, 16, dtype=torch.float64))
    assert out.logits.dtype == torch.float64


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"`num_classes` must be >= 1, got 0"):
        TwoBranchNet(tiny_backbone, num_classes=0)
    with pytest.raises(TypeError, match=r"`num_classes` must be an int, got float"):
        TwoBranchNet(tiny_backbone, num_classes=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`pool` must be one of 'avg', 'max', got 'mean'"):
        TwoBranchNet(tiny_backbone, num_classes=2, pool="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`mode` must be one of 'avg', 'max', got 'sum'"):
        GlobalPool("sum")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`backbone` must be an nn.Module or a factory of modules, got str"):
        TwoBranchNet("resnet18", num_classes=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"the `backbone` factory must return an nn.Module, got str"):
        TwoBranchNet(lambda: "resnet18", num_classes=2)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match=r"`features` must be an nn.Module, got int"):
        Branch(3, num_features=3, num_classes=2)  # type: ignore[arg-type]


def test_branch_checks_its_features() -> None:
    with pytest.raises(ValueError, match=r"`pool` must be one of 'avg', 'max', got 'min'"):
        Branch(nn.Conv2d(3, 4, 3), num_features=4, num_classes=2, pool="min")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`num_features` must be >= 1, got 0"):
        Branch(nn.Conv2d(3, 4, 3), num_features=0, num_classes=2)
    branch = Branch(nn.Conv2d(3, 4, 3), num_features=5, num_classes=2)
    with pytest.raises(ValueError, match=r"`features` must return \(B, 5, h, w\) maps, got \(2, 4, 6, 6\)"):
        branch(torch.zeros(2, 3, 8, 8))


def test_factory_returning_the_same_module_twice() -> None:
    shared = tiny_backbone()
    with pytest.raises(ValueError, match=r"factory returned modules that share parameters"):
        TwoBranchNet(lambda: shared, num_classes=2)
    trunk = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"factory returned modules that share parameters"):
        TwoBranchNet(lambda: nn.Sequential(trunk, nn.ReLU()), num_classes=2)


def test_factory_returning_different_widths() -> None:
    widths = iter([4, 5])
    with pytest.raises(ValueError, match=r"same number of feature channels, got 4 and 5"):
        TwoBranchNet(lambda: nn.Conv2d(3, next(widths), 3), num_classes=2)


def test_backbone_that_is_neither_cuttable_nor_4d() -> None:
    classifier = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(
        ValueError, match=r"`backbone` \(Sequential, feature module\) must return \(B, C, H, W\)"
    ):
        TwoBranchNet(classifier, num_classes=2)


def test_bad_images() -> None:
    net = TwoBranchNet(tiny_backbone, num_classes=2)
    with pytest.raises(ValueError, match=r"`x` must have shape \(B, C, H, W\), got \(3, 16, 16\)"):
        net(torch.randn(3, 16, 16))
    with pytest.raises(TypeError, match=r"`x` must be a torch.Tensor, got list"):
        net([1.0])  # type: ignore[arg-type]


def test_torch_compile_matches_eager() -> None:
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this platform / Python")
    if not any(shutil.which(cxx) for cxx in (os.environ.get("CXX", "g++"), "c++", "clang++")):
        pytest.skip("torch.compile (inductor) needs a C++ compiler, none found")
    torch.manual_seed(0)
    eager = TwoBranchNet(lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), num_classes=2)
    compiled_net = TwoBranchNet(lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), num_classes=2)
    compiled_net.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_net)
    loss = TwoBranchLoss(1e-2, reduction="batchmean")
    x = torch.randn(2, 3, 8, 8)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected_out = eager(x)
    loss(expected_out, targets).total.backward()
    got_out = compiled(x)
    loss(got_out, targets).total.backward()
    assert isinstance(got_out, TwoBranchOutput)
    torch.testing.assert_close(got_out.logits, expected_out.logits)
    torch.testing.assert_close(got_out.features, expected_out.features)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled_net.parameters(), strict=True):
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, msg=name)


# --- the branches really decorrelate --------------------------------------------------------------------


def synthetic_multilabel(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with up to 3 class patterns (a colour per class) pasted at random places."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 3, 16, 16, generator=g)
    y = (torch.rand(n, 3, generator=g) < 0.4).float()
    for i, k in y.nonzero().tolist():
        r, c = torch.randint(0, 12, (2,), generator=g).tolist()
        x[i, k, r : r + 5, c : c + 5] += 1.5
    return x, y


def train_two_branch(lam: float, steps: int = 100) -> tuple[TwoBranchNet, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    net = TwoBranchNet(tiny_backbone, num_classes=3)
    loss_fn = TwoBranchLoss(weight=lam, reduction="batchmean", unit_norm=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = synthetic_multilabel(256, seed=1)
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        optimizer.zero_grad()
        loss_fn(net(x[idx]), y[idx]).total.backward()
        optimizer.step()
    return net.eval(), synthetic_multilabel(256, seed=3)


def test_orthogonal_loss_decorrelates_branch_features_on_held_out_data() -> None:
    results = {}
    for lam in (0.0, 0.1):
        net, (x, y) = train_two_branch(lam)
        with torch.no_grad():
            out = net(x)
        overlap = orthogonal_loss(*out.features, reduction="none", unit_norm=True).mean()
        accuracy = ((out.mean_logits > 0).float() == y).float().mean()
        results[lam] = (float(overlap), float(accuracy))
    (overlap_0, accuracy_0), (overlap_1, accuracy_1) = results[0.0], results[0.1]
    # Measured when written: overlap 0.33 -> 0.001, per-label accuracy 1.000 -> 1.000.
    assert accuracy_0 > 0.9  # the task is learnt at all
    assert overlap_1 < 0.25 * overlap_0
    assert abs(accuracy_1 - accuracy_0) < 0.03
