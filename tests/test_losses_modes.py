"""Where orthogonality acts: the "spatial" and "cam" modes of the orthogonal loss (beyond the paper)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import hiercam
from hiercam import OrthogonalLoss, TwoBranchLoss, orthogonal_loss


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


def naive_spatial(f1: np.ndarray, f2: np.ndarray) -> np.ndarray:
    return np.array([cosine(f1[b].mean(0).ravel(), f2[b].mean(0).ravel()) for b in range(len(f1))])


def naive_cam(
    f1: np.ndarray, f2: np.ndarray, w1: np.ndarray, w2: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    out = []
    for b in range(len(f1)):
        values = []
        for k in np.nonzero(targets[b])[0]:
            m1 = np.maximum(sum(w1[k, c] * f1[b, c] for c in range(f1.shape[1])), 0).ravel()
            m2 = np.maximum(sum(w2[k, c] * f2[b, c] for c in range(f2.shape[1])), 0).ravel()
            values.append(cosine(m1, m2))
        out.append(np.mean(values) if values else 0.0)
    return np.array(out)


def random_inputs(seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    f1 = torch.randn(4, 5, 3, 3, generator=g, dtype=torch.float64)
    f2 = torch.randn(4, 5, 3, 3, generator=g, dtype=torch.float64)
    w1 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    w2 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    targets = (torch.rand(4, 6, generator=g) > 0.6).long()
    targets[0] = 0  # a sample without a class
    return f1, f2, w1, w2, targets


@pytest.mark.parametrize("seed", range(3))
def test_spatial_and_cam_match_naive_loops(seed: int) -> None:
    f1, f2, w1, w2, targets = random_inputs(seed)
    spatial = orthogonal_loss(f1, f2, mode="spatial", reduction="none", rectify=False)
    np.testing.assert_allclose(spatial.numpy(), naive_spatial(f1.numpy(), f2.numpy()), rtol=1e-10, atol=1e-12)
    cam = orthogonal_loss(f1, f2, mode="cam", classifier_weights=(w1, w2), labels=targets, reduction="none")
    expected = naive_cam(f1.numpy(), f2.numpy(), w1.numpy(), w2.numpy(), targets.numpy())
    np.testing.assert_allclose(cam.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert cam[0] == 0.0


def test_hand_computed_values() -> None:
    # spatial: branch 1 looks at the left column, branch 2 at the right one, then both at the same pixel
    f1 = torch.zeros(2, 2, 2, 2)
    f2 = torch.zeros(2, 2, 2, 2)
    f1[0, :, :, 0] = 1.0
    f2[0, :, :, 1] = 3.0
    f1[1, 0, 0, 0] = 2.0
    f2[1, 1, 0, 0] = 5.0
    torch.testing.assert_close(
        orthogonal_loss(f1, f2, mode="spatial", reduction="none"), torch.tensor([0.0, 1.0])
    )
    # cam: one channel each, class 0 weighs it +1 in both branches; the maps overlap on 1 of 2 pixels
    g1 = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    g2 = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    w = torch.ones(1, 1)
    value = orthogonal_loss(
        g1, g2, mode="cam", classifier_weights=(w, w), labels=torch.ones(1, 1), reduction="none"
    )
    torch.testing.assert_close(value, torch.tensor([0.5]))  # cos = 1 / (sqrt 2 * sqrt 2)


@pytest.mark.parametrize("mode", ["spatial", "cam"])
def test_reductions_and_module_equal_function(mode: str) -> None:
    f1, f2, w1, w2, targets = random_inputs(7)
    extra = {"classifier_weights": (w1, w2), "labels": targets} if mode == "cam" else {"rectify": False}
    per_sample = orthogonal_loss(f1, f2, mode=mode, reduction="none", **extra)
    torch.testing.assert_close(orthogonal_loss(f1, f2, mode=mode, **extra), per_sample.sum())
    torch.testing.assert_close(
        orthogonal_loss(f1, f2, mode=mode, reduction="batchmean", **extra), per_sample.mean()
    )
    torch.testing.assert_close(
        orthogonal_loss(f1, f2, mode=mode, reduction="mean", **extra), per_sample.mean()
    )
    module = OrthogonalLoss(0.5, "batchmean", mode=mode, rectify=False)
    extra.pop("rectify", None)
    torch.testing.assert_close(module(f1, f2, **extra), 0.5 * per_sample.mean())


@pytest.mark.parametrize("mode", ["spatial", "cam"])
def test_gradcheck(mode: str) -> None:
    f1, f2, w1, w2, targets = random_inputs(11)
    f1, f2, w1, w2 = (t.clone().requires_grad_() for t in (f1, f2, w1, w2))
    if mode == "spatial":
        assert torch.autograd.gradcheck(
            lambda a, b: orthogonal_loss(a, b, mode="spatial", rectify=False), (f1, f2)
        )
    else:
        assert torch.autograd.gradcheck(
            lambda a, b, u, v: orthogonal_loss(a, b, mode="cam", classifier_weights=(u, v), labels=targets),
            (f1, f2, w1, w2),
        )


def test_cam_mode_is_the_cosine_of_the_cam_engines_branch_maps() -> None:
    torch.manual_seed(0)
    backbone = lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, 2, 1))  # noqa: E731
    net = hiercam.TwoBranchNet(backbone, num_classes=5).eval()
    images = torch.randn(3, 3, 12, 12)
    targets = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    cam = hiercam.GradCAM(net, closed_form=False)  # the general path: real gradients
    cam(images, size="feature", normalize=None)
    assert cam.branch_maps is not None
    maps = cam.branch_maps.flatten(3)  # (2, B, K, h * w)
    cos = torch.nn.functional.cosine_similarity(maps[0], maps[1], dim=-1)
    expected = torch.stack([cos[b][targets[b].bool()].mean() for b in range(3)])
    output = net(images)
    heads = net.classifier_heads()
    got = orthogonal_loss(
        *output.features,
        mode="cam",
        classifier_weights=(heads[0].weight, heads[1].weight),
        labels=targets,
        reduction="none",
    )
    torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-6)


def test_two_branch_loss_cam_mode_reads_the_heads_and_trains_them() -> None:
    torch.manual_seed(0)
    net = hiercam.TwoBranchNet(lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), num_classes=3)
    loss = TwoBranchLoss(weight=0.5, reduction="batchmean", mode="cam", heads=net.classifier_heads())
    assert not list(loss.parameters())  # the heads belong to the network
    images, targets = torch.randn(2, 3, 8, 8), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    output = net(images)
    parts = loss(output, targets)
    heads = net.classifier_heads()
    orthogonal = orthogonal_loss(
        *output.features,
        mode="cam",
        classifier_weights=(heads[0].weight, heads[1].weight),
        labels=targets,
        reduction="batchmean",
    )
    torch.testing.assert_close(parts.orthogonal, orthogonal)
    torch.testing.assert_close(
        parts.total, parts.classification_1 + parts.classification_2 + 0.5 * orthogonal
    )
    parts.orthogonal.backward()
    assert heads[0].weight.grad is not None
    assert heads[0].weight.grad.abs().sum() > 0
    assert "mode='cam'" in repr(loss)


def test_bad_input() -> None:
    f = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="`unit_norm` applies to mode='feature' only"):
        orthogonal_loss(f, f, mode="spatial", unit_norm=True)
    with pytest.raises(
        ValueError, match=r"`f1` must have shape \(B, C, H, W\) for mode='spatial', got \(2, 3\)"
    ):
        orthogonal_loss(torch.rand(2, 3), torch.rand(2, 3), mode="spatial")
    with pytest.raises(ValueError, match="mode='cam' needs `classifier_weights`"):
        orthogonal_loss(f, f, mode="cam")
    with pytest.raises(ValueError, match=r"`classifier_weights\[1\]` must have shape \(K, C\) = \(5, 3\)"):
        orthogonal_loss(
            f, f, mode="cam", classifier_weights=(torch.rand(5, 3), torch.rand(5, 4)), labels=torch.ones(2, 5)
        )
    with pytest.raises(ValueError, match="`labels` must have 2 rows"):
        orthogonal_loss(
            f, f, mode="cam", classifier_weights=(torch.rand(5, 3), torch.rand(5, 3)), labels=torch.ones(3, 5)
        )
    with pytest.raises(ValueError, match="`mode` must be one of 'feature', 'spatial', 'cam', got 'channel'"):
        orthogonal_loss(f, f, mode="channel")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode='cam' needs `heads`"):
        TwoBranchLoss(mode="cam")
    with pytest.raises(TypeError, match="`heads` must be two nn.Linear classifiers"):
        TwoBranchLoss(mode="cam", heads=(nn.Linear(2, 2),))  # type: ignore[arg-type]
