"""Transformers (issue 16, items 1 and 2): token and channels-last outputs, and an automatic layer choice that
never reads an attention tensor as an image.

Oracle: pytorch-grad-cam with its documented ``reshape_transform`` (drop the class token, fold the patch
tokens into the grid, move channels first) on timm and torchvision ViT and Swin models (random init). timm's
Swin now outputs channels-last maps ``(B, 7, 7, C)`` where pytorch-grad-cam's documentation assumed tokens
``(B, 49, C)``; its reshape there is the permutation ``(0, 3, 1, 2)``. torchvision's VisionTransformer
initialises its head to zeros (every gradient would be zero), so the tests draw it at random.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from cam_test_helpers import oriented_projection, pearson
from torch import nn
from torchvision import models
from torchvision.models.vision_transformer import VisionTransformer

import hiercam

timm = pytest.importorskip("timm")
pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import eigen_cam as peer_eigen_cam  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

CLASSES = [3, 1]


def vit_reshape(prefix: int, height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-grad-cam's documented ViT reshape_transform (usage_examples/vit_example.py)."""

    def reshape_transform(tensor: torch.Tensor) -> torch.Tensor:
        result = tensor[:, prefix:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    return reshape_transform


def channels_last(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(0, 3, 1, 2)


def peer_maps(model: nn.Module, layer: nn.Module, images: torch.Tensor, reshape=None) -> torch.Tensor:
    with pgc.GradCAM(model, target_layers=[layer], reshape_transform=reshape) as peer:
        out = peer(images, targets=[ClassifierOutputTarget(k) for k in CLASSES[: len(images)]])
    return torch.from_numpy(out)[:, None]


def agree(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    live = ours.flatten(1).amax(dim=1) > 0
    assert int(live.sum()) * 2 >= len(live), "most maps are all zero: the comparison would prove little"
    try:
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    except AssertionError:
        assert pearson(ours, theirs) > 0.999


def timm_vit(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=5, **kwargs).eval()


def tv_vit() -> nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
    ).eval()
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model


def images(size: int, count: int = 2) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("kwargs", "prefix", "layer"),
    [
        ({}, 1, "blocks.11.norm1"),
        ({"reg_tokens": 4}, 5, "blocks.11.norm1"),
        # average-pooled patch tokens: the final norm feeds the pool at every position, like a CNN's last map
        ({"class_token": False, "global_pool": "avg"}, 0, "norm"),
    ],
    ids=["class token", "class + 4 registers", "no prefix, average pool"],
)
def test_timm_vit_matches_pytorch_grad_cam(kwargs: dict, prefix: int, layer: str) -> None:
    model = timm_vit(**kwargs)
    x = images(64)
    cam = hiercam.GradCAM(model)  # automatic layer and reshape
    ours = cam(x, torch.tensor(CLASSES), normalize="minmax")
    assert cam.target_layer == layer
    assert f"tokens(grid=(4, 4), prefix={prefix})" in repr(cam)
    theirs = peer_maps(model, model.get_submodule(layer), x, vit_reshape(prefix, 4, 4))
    agree(ours, theirs)


def test_deit_distilled_has_two_prefix_tokens() -> None:
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", img_size=64, num_classes=5).eval()
    x = images(64)
    cam = hiercam.GradCAM(model)
    ours = cam(x, torch.tensor(CLASSES), normalize="minmax")
    assert "prefix=2" in repr(cam)
    agree(ours, peer_maps(model, model.blocks[-1].norm1, x, vit_reshape(2, 4, 4)))


def test_timm_swin_matches_pytorch_grad_cam() -> None:
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", num_classes=5).eval()
    x = images(224, 1)
    layer = "layers.3.blocks.1.norm1"  # channels-last (B, 7, 7, 768)
    ours = hiercam.GradCAM(model, layer)(x, torch.tensor(CLASSES[:1]), normalize="minmax")
    agree(ours, peer_maps(model, model.get_submodule(layer), x, channels_last))
    chosen = hiercam.GradCAM(model)
    chosen(x, 0, size="feature")
    assert chosen.target_layer == "norm"  # the final norm, read channels-last, not as C = 7, h = 7, w = 768
    assert "read as channels-last" in repr(chosen)


def test_torchvision_vit_matches_pytorch_grad_cam() -> None:
    model = tv_vit()
    x = images(64)
    cam = hiercam.GradCAM(model)
    ours = cam(x, torch.tensor(CLASSES), normalize="minmax")
    assert cam.target_layer == "encoder.layers.encoder_layer_1.ln_1"
    layer = model.encoder.layers[-1].ln_1
    agree(ours, peer_maps(model, layer, x, vit_reshape(1, 4, 4)))


def test_torchvision_swin_matches_pytorch_grad_cam() -> None:
    torch.manual_seed(0)
    model = models.swin_t(num_classes=5).eval()
    x = images(224, 1)
    layer = "features.7.1.norm1"  # channels-last (B, 7, 7, 768)
    ours = hiercam.GradCAM(model, layer)(x, torch.tensor(CLASSES[:1]), normalize="minmax")
    agree(ours, peer_maps(model, model.get_submodule(layer), x, channels_last))
    chosen = hiercam.GradCAM(model)
    auto = chosen(x, torch.tensor(CLASSES[:1]), normalize="minmax")
    assert chosen.target_layer == "permute"  # torchvision permutes to (B, C, h, w) before its pool
    agree(auto, peer_maps(model, model.permute, x))


@pytest.mark.slow
def test_torchvision_vit_b_16_one_image() -> None:
    torch.manual_seed(0)
    model = models.vit_b_16(num_classes=5).eval()
    nn.init.normal_(model.heads.head.weight, std=0.05)
    x = images(224, 1)
    cam = hiercam.GradCAM(model, "encoder.layers.encoder_layer_11.ln_1")
    ours = cam(x, torch.tensor(CLASSES[:1]), normalize="minmax")
    agree(ours, peer_maps(model, model.encoder.layers[-1].ln_1, x, vit_reshape(1, 14, 14)))


def test_explicit_reshape_callable_and_token_reshape() -> None:
    model = timm_vit()
    x = images(64)
    auto = hiercam.GradCAM(model, "blocks.11.norm1")(x)
    fixed = hiercam.GradCAM(model, "blocks.11.norm1", reshape=hiercam.TokenReshape((4, 4), prefix=1))(x)
    peer_style = hiercam.GradCAM(model, "blocks.11.norm1", reshape=vit_reshape(1, 4, 4))(x)
    torch.testing.assert_close(fixed, auto)
    torch.testing.assert_close(peer_style, auto)
    assert auto.shape == (2, 5, 64, 64)


def test_attention_tensors_are_never_chosen() -> None:
    """With the attention map materialised ((B, heads, N, N), square like an image), the old rule (the last
    4-D output larger than 1x1) chose it; the automatic choice takes the last block's norm1."""
    model = timm_vit()
    for block in model.blocks:
        block.attn.fused_attn = False  # attn_drop now outputs (B, 3, 17, 17)
    cam = hiercam.GradCAM(model)
    cam(images(64), 0)
    assert cam.target_layer == "blocks.11.norm1"
    with pytest.raises(ValueError, match=r"looks like a transformer.*`reshape=None`.*pass `reshape='auto'`"):
        hiercam.GradCAM(model, reshape=None)(images(64))
    with pytest.raises(ValueError, match="a `reshape` callable needs `target_layer`"):
        hiercam.GradCAM(model, reshape=vit_reshape(1, 4, 4))(images(64))
    # an attention tensor named explicitly is refused with the options to use
    with pytest.raises(
        ValueError,
        match=r"`target_layer` 'blocks.11.attn.q_norm' outputs \(2, 3, 17, 64\): this is neither "
        r"\(B, C, h, w\) nor channels-last.*pass `reshape=`.*or choose another `target_layer`",
    ):
        hiercam.GradCAM(model, "blocks.11.attn.q_norm")(images(64))
    assert count_hooks(model) == 0


def test_cnns_keep_their_layer() -> None:
    torch.manual_seed(0)
    for factory, layer in [
        (lambda: models.resnet18(num_classes=4), "layer4"),
        (lambda: models.mobilenet_v3_small(num_classes=4), "features"),
    ]:
        cam = hiercam.GradCAM(factory().eval())
        cam(images(64, 1), 0)
        assert cam.target_layer == layer
        assert "read as" not in repr(cam)


def test_zero_initialised_head_is_a_clear_error() -> None:
    model = VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=16, num_classes=3
    ).eval()
    with pytest.raises(ValueError, match="gradients of the scores are zero.*pass `target_layer`"):
        hiercam.GradCAM(model)(images(32, 1))
    assert count_hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())


def small_vit() -> nn.Module:
    torch.manual_seed(0)
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    return TimmViT(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3)


def count_hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def test_hook_hygiene_with_tokens() -> None:
    model = small_vit().train()
    model.blocks[0].norm1.weight.requires_grad_(False)
    grads = [p.grad for p in model.parameters()]
    flags = [p.requires_grad for p in model.parameters()]
    x = images(32)
    cam = hiercam.GradCAM(model)
    first = cam(x, torch.tensor([0, 2]))
    for _ in range(200):
        cam(x, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"`classes` must be class indices in \[0, 3\), got 7"):
        cam(x, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="pass `reshape=`"):
        hiercam.GradCAM(model, "blocks.0.attn.q_norm")(x)
    assert count_hooks(model) == 0
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))
    torch.testing.assert_close(cam(x, torch.tensor([0, 2])), first)


def test_reshape_none_takes_an_unusual_map_as_it_is() -> None:
    """A 7x7 adaptive pool of a 16x128 image is no plausible grid: refused by "auto", taken by None."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(), nn.Linear(4 * 49, 3)
    ).eval()
    x = torch.randn(2, 3, 16, 128)
    with pytest.raises(ValueError, match="pass `reshape=None` to take it as"):
        hiercam.GradCAM(model, "1")(x)
    ours = hiercam.GradCAM(model, "1", reshape=None)(x, normalize=None, size="feature")
    pooled = model[1](model[0](x))
    logits = model[3](model[2](pooled))
    expected = []
    for k in range(3):
        (grad,) = torch.autograd.grad(logits[:, k].sum(), pooled, retain_graph=True)
        expected.append((grad.mean(dim=(2, 3), keepdim=True) * pooled).sum(1).relu())
    torch.testing.assert_close(ours, torch.stack(expected, 1).detach())


def test_gradient_free_methods_read_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    model = timm_vit()
    x = images(64)
    eigen = hiercam.EigenCAM(model)
    ours = eigen(x, 0, normalize="minmax")[:, 0]
    assert eigen.target_layer == "blocks.11.norm1"
    # pytorch-grad-cam keeps LAPACK's arbitrary sign of the principal axis: the oracle takes hiercam's sign
    monkeypatch.setattr(peer_eigen_cam, "get_2d_projection", oriented_projection)
    with pgc.EigenCAM(
        model, target_layers=[model.blocks[-1].norm1], reshape_transform=vit_reshape(1, 4, 4)
    ) as peer:
        theirs = torch.from_numpy(peer(x, targets=None))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    score = hiercam.ScoreCAM(model, "blocks.11.norm1", batch_size=64)
    fixed = hiercam.ScoreCAM(model, "blocks.11.norm1", batch_size=64, reshape=hiercam.TokenReshape((4, 4), 1))
    torch.testing.assert_close(score(x, torch.tensor(CLASSES)), fixed(x, torch.tensor(CLASSES)))
    with pytest.raises(
        ValueError, match=r"AblationCAM zeroes channels.*is read as tokens\(grid=\(4, 4\), prefix=1\)"
    ):
        hiercam.AblationCAM(model, "blocks.11.norm1")(x, 0)
    assert count_hooks(model) == 0


class ChannelsLastNet(nn.Module):
    """A 4x4 patch embedding, then a channels-last LayerNorm (B, 16, 16, 18): 18 channels, close to w = 16."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 18, 4, stride=4)
        self.norm = nn.LayerNorm(18)
        self.fc = nn.Linear(18, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.embed(x).permute(0, 2, 3, 1)).mean(dim=(1, 2)))


def test_the_better_fitting_reading_of_a_4d_output_wins() -> None:
    """(B, 16, 16, 18) of a 64 x 64 image fits both readings; 16 x 16 fits better than 16 x 18."""
    torch.manual_seed(0)
    model = ChannelsLastNet().eval()
    x = images(64)
    cam = hiercam.GradCAM(model)
    ours = cam(x, normalize=None, size="feature")
    assert cam.target_layer == "norm"
    assert "read as channels-last" in repr(cam)
    features = model.norm(model.embed(x).permute(0, 2, 3, 1))
    logits = model.fc(features.mean(dim=(1, 2)))
    expected = []
    for k in range(3):
        (grad,) = torch.autograd.grad(logits[:, k].sum(), features, retain_graph=True)
        expected.append((grad.mean(dim=(1, 2), keepdim=True) * features).sum(-1).relu())
    torch.testing.assert_close(ours, torch.stack(expected, 1).detach())


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).detach().mean(dim=(2, 3)))


def test_scores_that_no_map_reaches_are_a_clear_error() -> None:
    model = Detached().eval()
    with pytest.raises(
        ValueError, match="1 layers can be read as maps, but the scores do not depend on them"
    ):
        hiercam.GradCAM(model)(images(16, 1))
    assert count_hooks(model) == 0
