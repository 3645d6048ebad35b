"""Bad inputs to the CAM extractors end in a clear error naming the argument, never a silently wrong map
(issue 15, items 3 and 7). Each row of ``BAD`` is one bad input; the count is in the CHANGELOG."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import hiercam


def tiny(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, num_classes),
    ).eval()


def with_nan(value: float) -> torch.Tensor:
    images = torch.randn(2, 3, 8, 8)
    images[1, 2, 3, 4] = value
    return images


class Sqrt(nn.Module):
    """Finite forward, infinite derivative where its input is exactly zero (after a ReLU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sqrt()


class Overflow(nn.Module):
    """Overflows float32 to inf, then clamps: finite logits from an infinite activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1e39


class Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(x, posinf=1.0, neginf=-1.0)


def nan_weights() -> nn.Module:
    model = tiny()
    with torch.no_grad():
        model[4].weight[0, 0] = float("nan")
    return model


def sqrt_at_zero_model() -> nn.Module:
    """On zero images every value before ``Sqrt`` is exactly 0: finite logits, infinite input gradients."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        Sqrt(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def sqrt_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        Sqrt(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def overflow_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        Overflow(),
        Clamp(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def zero_score_model() -> nn.Module:
    """Class 1's score is exactly 0 for every image (its weights and bias are zero)."""
    model = tiny()
    with torch.no_grad():
        model[4].weight[1] = 0.0
        model[4].bias[1] = 0.0
    return model


def lazy_model() -> nn.Module:
    """A valid model with a lazy layer (uninitialised until its first call)."""
    return nn.Sequential(nn.Conv2d(3, 4, 5), nn.Flatten(), nn.LazyLinear(2))


class DictNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = tiny()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scores": self.net(x), "features": x}


class TupleNet(DictNet):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.net(x), x


class Split(nn.Module):
    """(B, N, C) tokens to (B, heads, N, C / heads), like an attention layer's per-head view."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (2, -1)).transpose(1, 2)


class TokenNet(nn.Module):
    """Tokens (B, count, 4) from a 16x16 (or 32x32) image, then a linear classifier on their mean."""

    def __init__(self, count: int, heads: bool = False) -> None:
        super().__init__()
        self.count = count
        self.embed = nn.Linear(3, 4)
        self.heads = Split() if heads else nn.Identity()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool1d(x.flatten(2), self.count).transpose(1, 2)
        tokens = self.embed(pooled)
        return self.fc(
            self.heads(tokens).mean(dim=(1, 2)) if isinstance(self.heads, Split) else tokens.mean(1)
        )


def closed_form_then(classes: torch.Tensor) -> Any:
    cam = hiercam.GradCAM(tiny(), "0")
    images = torch.randn(2, 3, 8, 8)
    cam(images, torch.tensor([0, 1]))
    cam(images, torch.tensor([0, 1]))
    return cam(images, classes)


Call = Callable[[], Any]
BAD: dict[str, tuple[Call, type[Exception], str]] = {
    # images: checked once at the boundary
    "images NaN": (
        lambda: hiercam.GradCAM(tiny(), "0")(with_nan(float("nan"))),
        ValueError,
        "`images` must be finite",
    ),
    "images +Inf": (
        lambda: hiercam.GradCAM(tiny(), "0")(with_nan(float("inf"))),
        ValueError,
        "`images` must be finite",
    ),
    "images -Inf": (
        lambda: hiercam.GradCAM(tiny(), "0")(with_nan(-float("inf"))),
        ValueError,
        "`images` must be finite",
    ),
    "images NaN, CAM": (
        lambda: hiercam.CAM(tiny(), "0")(with_nan(float("nan"))),
        ValueError,
        "`images` must be finite",
    ),
    "images NaN, two-branch": (
        lambda: hiercam.GradCAM(hiercam.TwoBranchNet(lambda: nn.Conv2d(3, 4, 3), num_classes=2))(
            with_nan(float("nan"))
        ),
        ValueError,
        "`images` must be finite",
    ),
    "empty batch": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.randn(0, 3, 8, 8)),
        ValueError,
        r"`images` must hold at least one image of positive size, got shape \(0, 3, 8, 8\)",
    ),
    "zero height": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.randn(1, 3, 0, 8)),
        ValueError,
        "`images` must hold at least one image",
    ),
    "1 channel for a 3-channel model": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.randn(1, 1, 8, 8)),
        ValueError,
        r"`model` cannot take `images` of shape \(1, 1, 8, 8\).*to have 3 channels",
    ),
    "1 channel, automatic layer": (
        lambda: hiercam.GradCAM(tiny())(torch.randn(1, 1, 8, 8)),
        ValueError,
        r"`model` cannot take `images` of shape \(1, 1, 8, 8\)",
    ),
    "float64 images, float32 model": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.randn(1, 3, 8, 8, dtype=torch.float64)),
        TypeError,
        r"`images` of dtype torch.float64 do not match `model` \(its parameters are torch.float32",
    ),
    "float16 images, float32 model": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.randn(1, 3, 8, 8, dtype=torch.float16)),
        TypeError,
        "`images` of dtype torch.float16 do not match `model`",
    ),
    "images smaller than the kernel": (
        lambda: hiercam.GradCAM(lazy_model(), "0")(torch.randn(1, 3, 3, 3)),
        ValueError,
        r"`model` cannot take `images` of shape \(1, 3, 3, 3\)",
    ),
    "integer images": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.zeros(1, 3, 8, 8, dtype=torch.int64)),
        TypeError,
        "`images` must be a floating-point tensor",
    ),
    "images not a tensor": (
        lambda: hiercam.GradCAM(tiny(), "0")([[0.0]]),
        TypeError,
        "`images` must be a torch.Tensor, got list",
    ),
    # non-finite values produced inside the model, named where they appear
    "NaN weights: logits": (
        lambda: hiercam.GradCAM(nan_weights(), "0")(torch.randn(1, 3, 8, 8)),
        ValueError,
        "`model` returned NaN or infinite logits",
    ),
    "infinite derivative: gradients": (
        lambda: hiercam.GradCAM(sqrt_model(), "1")(torch.randn(2, 3, 8, 8)),
        ValueError,
        r"the gradients of the logits with respect to `target_layer` '1' hold NaN or infinite values",
    ),
    "infinite derivative: FullGrad": (
        lambda: hiercam.FullGrad(sqrt_at_zero_model())(torch.zeros(2, 3, 8, 8)),
        ValueError,
        r"FullGrad: the gradients of the scores are NaN or infinite for finite `images`",
    ),
    "infinite derivative: FullGrad, eigen_smooth": (
        lambda: hiercam.FullGrad(sqrt_at_zero_model(), eigen_smooth=True)(torch.zeros(2, 3, 16, 16)),
        ValueError,
        r"FullGrad: the gradients of the scores are NaN or infinite for finite `images`",
    ),
    "infinite derivative: GuidedBackprop": (
        lambda: hiercam.GuidedBackprop(sqrt_at_zero_model())(torch.zeros(2, 3, 8, 8)),
        ValueError,
        r"GuidedBackprop: the gradients of the scores are NaN or infinite for finite `images`",
    ),
    "infinite derivative: GuidedGradCAM's guided gradients": (
        # the target layer is after the square root: its Grad-CAM is finite, the input gradients are not
        lambda: hiercam.GuidedGradCAM(sqrt_at_zero_model(), "2")(torch.zeros(2, 3, 8, 8)),
        ValueError,
        r"GuidedGradCAM: the guided gradients of the scores are NaN or infinite for finite `images`",
    ),
    "overflowing layer: activations": (
        lambda: hiercam.GradCAM(overflow_model(), "1")(torch.randn(2, 3, 8, 8)),
        ValueError,
        r"the output of `target_layer` '1' holds NaN or infinite values",
    ),
    # classes
    "classes: float vector": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.randn(1, 3, 8, 8), torch.tensor([0.0, 1.0])),
        ValueError,
        "`classes` tensor must be a",
    ),
    "classes: mask of 2s": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.randn(1, 3, 8, 8), torch.full((1, 3), 2)),
        ValueError,
        "`classes` must hold only 0/1 values",
    ),
    "classes: empty list": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.randn(1, 3, 8, 8), []),
        ValueError,
        "`classes` must not be an empty list",
    ),
    "classes: bool": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.randn(1, 3, 8, 8), True),
        TypeError,
        "`classes` must be None, an int",
    ),
    "classes: out of range, two-branch": (
        lambda: hiercam.GradCAM(hiercam.TwoBranchNet(lambda: nn.Conv2d(3, 4, 3), num_classes=2))(
            torch.randn(1, 3, 8, 8), 2
        ),
        ValueError,
        r"`classes` must be class indices in \[0, 2\)",
    ),
    # one class per image: a (B,) integer tensor
    "classes: (B,) tensor of the wrong length": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.randn(2, 3, 8, 8), torch.tensor([0, 1, 2])),
        ValueError,
        r"`classes` \(B,\) tensor must hold one class per image \(B = 2\), got shape \(3,\)",
    ),
    "classes: (B,) tensor out of range": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.randn(2, 3, 8, 8), torch.tensor([0, 3])),
        ValueError,
        r"`classes` must be class indices in \[0, 3\), got 3",
    ),
    "classes: (B,) tensor negative": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.randn(2, 3, 8, 8), torch.tensor([0, -1])),
        ValueError,
        "`classes` must be non-negative class indices, got -1",
    ),
    "classes: (B,) bool tensor": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.randn(2, 3, 8, 8), torch.tensor([True, False])),
        ValueError,
        r"`classes` \(B,\) tensor must hold integer class indices, got dtype torch.bool",
    ),
    "classes: (B,) tensor out of range, closed form": (
        lambda: closed_form_then(torch.tensor([0, 5])),
        ValueError,
        r"`classes` must be class indices in \[0, 3\), got 5",
    ),
    # targets
    "classes and targets together": (
        lambda: hiercam.GradCAM(tiny(), "0")(
            torch.randn(2, 3, 8, 8), 1, targets=hiercam.ClassifierOutputTarget(1)
        ),
        ValueError,
        "pass either `classes` or `targets`, not both",
    ),
    "targets: wrong length": (
        lambda: hiercam.GradCAM(tiny(), "0")(
            torch.randn(2, 3, 8, 8), targets=[hiercam.ClassifierOutputTarget(1)]
        ),
        ValueError,
        r"`targets` must hold one target per image \(2\), got 1",
    ),
    "targets: not callable": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.randn(2, 3, 8, 8), targets=[1, 2]),
        TypeError,
        r"`targets\[0\]` must be callable, got int",
    ),
    "targets: category out of range": (
        lambda: hiercam.GradCAM(tiny(), "0")(
            torch.randn(1, 3, 8, 8), targets=hiercam.ClassifierOutputTarget(3)
        ),
        ValueError,
        r"ClassifierOutputTarget\(3\): `category` 3 is out of range for 3 classes",
    ),
    "targets: not a scalar": (
        lambda: hiercam.GradCAM(tiny(), "0")(torch.randn(1, 3, 8, 8), targets=lambda out: out),
        ValueError,
        r"`targets\[0\]` must return a floating-point scalar tensor, got \(3,\)",
    ),
    "target: negative category": (
        lambda: hiercam.ClassifierOutputTarget(-1),
        ValueError,
        "`category` must be a non-negative int, got -1",
    ),
    "target: mask not 2-D": (
        lambda: hiercam.SemanticSegmentationTarget(0, torch.ones(1, 8, 8)),
        ValueError,
        r"`mask` must have shape \(H, W\), got \(1, 8, 8\)",
    ),
    # output
    "output: missing key": (
        lambda: hiercam.GradCAM(DictNet(), "net.0", output="logits")(torch.randn(1, 3, 8, 8)),
        ValueError,
        r"`output` key 'logits' is not in the output of `model` \(its keys: 'scores', 'features'\)",
    ),
    "output: none for a dict": (
        lambda: hiercam.GradCAM(DictNet(), "net.0")(torch.randn(1, 3, 8, 8)),
        ValueError,
        r"`model` returned a dict with keys 'scores', 'features'; pass `output=`",
    ),
    "output: index out of range": (
        lambda: hiercam.GradCAM(TupleNet(), "net.0", output=2)(torch.randn(1, 3, 8, 8)),
        ValueError,
        "`output` index 2 is out of range for `model`, which returned a tuple of 2 items",
    ),
    "output: key for a tuple": (
        lambda: hiercam.GradCAM(TupleNet(), "net.0", output="out")(torch.randn(1, 3, 8, 8)),
        ValueError,
        "`output` 'out' cannot select from a tuple of 2 items",
    ),
    "output: wrong type": (
        lambda: hiercam.GradCAM(tiny(), "0", output=1.5),  # type: ignore[arg-type]
        TypeError,
        "`output` must be None, a key, an index or a callable, got float",
    ),
    "output: callable returns no tensor": (
        lambda: hiercam.GradCAM(TupleNet(), "net.0", output=lambda out: out[0].tolist())(
            torch.randn(1, 3, 8, 8)
        ),
        ValueError,
        "selected list, not a tensor",
    ),
    "output: with a multi-head model": (
        lambda: hiercam.GradCAM(hiercam.TwoBranchNet(lambda: nn.Conv2d(3, 4, 3), num_classes=2), output=0),
        ValueError,
        "`output` is not used with a multi-head model",
    ),
    # tokens and reshape
    "tokens: count that is no grid": (
        lambda: hiercam.GradCAM(TokenNet(30), "embed")(torch.randn(1, 3, 16, 16)),
        ValueError,
        r"`target_layer` 'embed' outputs \(1, 30, 4\): 30 tokens are no patch grid of a 16x16 input.*"
        r"pass `reshape=`",
    ),
    "tokens: ambiguous count": (
        lambda: hiercam.GradCAM(TokenNet(16), "embed")(torch.randn(1, 3, 48, 48)),
        ValueError,
        r"16 tokens fit several patch grids of a 48x48 input \(TokenReshape\(\(4, 4\), prefix=0\), "
        r"TokenReshape\(\(3, 3\), prefix=7\)\); pass `reshape=`",
    ),
    "tokens: reshape=None": (
        lambda: hiercam.GradCAM(TokenNet(17), "embed", reshape=None)(torch.randn(1, 3, 16, 16)),
        ValueError,
        r"`target_layer` 'embed' must output a \(B, C, H, W\) tensor, got \(1, 17, 4\); "
        "pass `reshape='auto'`",
    ),
    "reshape: wrong type": (
        lambda: hiercam.GradCAM(tiny(), "0", reshape="tokens"),  # type: ignore[arg-type]
        TypeError,
        "`reshape` must be 'auto', None or a callable, got 'tokens'",
    ),
    "reshape: callable returns the wrong shape": (
        lambda: hiercam.GradCAM(TokenNet(17), "embed", reshape=lambda t: t)(torch.randn(1, 3, 16, 16)),
        ValueError,
        r"`reshape` must turn the output \(1, 17, 4\) of `target_layer` 'embed' into \(B, C, h, w\)",
    ),
    "reshape: TokenReshape of the wrong grid": (
        lambda: hiercam.GradCAM(TokenNet(17), "embed", reshape=hiercam.TokenReshape((3, 3), prefix=1))(
            torch.randn(1, 3, 16, 16)
        ),
        ValueError,
        r"`reshape` TokenReshape\(grid=\(3, 3\), prefix=1\) needs tokens \(B, 10, C\), got \(1, 17, 4\)",
    ),
    "TokenReshape: bad grid": (
        lambda: hiercam.TokenReshape((0, 4)),
        ValueError,
        r"`grid` must be a \(h, w\) tuple of positive ints, got \(0, 4\)",
    ),
    "TokenReshape: negative prefix": (
        lambda: hiercam.TokenReshape((2, 2), prefix=-1),
        ValueError,
        "`prefix` must be a non-negative int, got -1",
    ),
    "channels-last reading of an attention-like tensor": (
        lambda: hiercam.GradCAM(TokenNet(17, heads=True), "heads")(torch.randn(1, 3, 16, 16)),
        ValueError,
        r"`target_layer` 'heads' outputs \(1, 2, 17, 2\): this is neither \(B, C, h, w\) nor channels-last",
    ),
    # gradient-free and perturbation methods, eigen_smooth, multi-scale aggregation
    "ScoreCAM batch_size 0": (
        lambda: hiercam.ScoreCAM(tiny(), "0", batch_size=0),
        ValueError,
        "`batch_size` must be >= 1, got 0",
    ),
    "ScoreCAM batch_size -3": (
        lambda: hiercam.ScoreCAM(tiny(), "0", batch_size=-3),
        ValueError,
        "`batch_size` must be >= 1, got -3",
    ),
    "ScoreCAM batch_size float": (
        lambda: hiercam.ScoreCAM(tiny(), "0", batch_size=2.5),  # type: ignore[arg-type]
        TypeError,
        "`batch_size` must be an int, got float",
    ),
    "AblationCAM batch_size 0": (
        lambda: hiercam.AblationCAM(tiny(), "0", batch_size=0),
        ValueError,
        "`batch_size` must be >= 1",
    ),
    "AblationCAM batch_size None": (
        lambda: hiercam.AblationCAM(tiny(), "0", batch_size=None),  # type: ignore[arg-type]
        TypeError,
        "`batch_size` must be an int, got NoneType",
    ),
    "AblationCAM zero class score": (
        lambda: hiercam.AblationCAM(zero_score_model(), "1")(torch.randn(2, 3, 8, 8), 1),
        ValueError,
        r"AblationCAM divides by the class score, which is exactly 0 for image 0, class 1 \(`classes`\)",
    ),
    "ScoreCAM NaN images": (
        lambda: hiercam.ScoreCAM(tiny(), "0")(with_nan(float("nan"))),
        ValueError,
        "`images` must be finite",
    ),
    "ScoreCAM overflowing layer": (
        lambda: hiercam.ScoreCAM(overflow_model(), "1")(torch.randn(2, 3, 8, 8)),
        ValueError,
        r"the output of `target_layer` '1' holds NaN or infinite values",
    ),
    "EigenCAM overflowing layer": (
        lambda: hiercam.EigenCAM(overflow_model(), "1")(torch.randn(2, 3, 8, 8)),
        ValueError,
        r"the output of `target_layer` '1' holds NaN or infinite values",
    ),
    "eigen_smooth overflowing layer": (
        lambda: hiercam.GradCAM(overflow_model(), "1", eigen_smooth=True)(torch.randn(2, 3, 8, 8)),
        ValueError,
        r"the output of `target_layer` '1' holds NaN or infinite values",
    ),
    "ScoreCAM classes out of range": (
        lambda: hiercam.ScoreCAM(tiny(), "0")(torch.randn(1, 3, 8, 8), 3),
        ValueError,
        r"`classes` must be class indices in \[0, 3\)",
    ),
    "eigen_smooth not a bool": (
        lambda: hiercam.GradCAM(tiny(), "0", eigen_smooth="yes"),  # type: ignore[arg-type]
        TypeError,
        "`eigen_smooth` must be a bool, got str",
    ),
    "MultiScaleCAM empty scales": (
        lambda: hiercam.MultiScaleCAM(hiercam.GradCAM(tiny(), "0"), ()),
        ValueError,
        "`scales` must hold at least one scale",
    ),
    "MultiScaleCAM zero scale": (
        lambda: hiercam.MultiScaleCAM(hiercam.GradCAM(tiny(), "0"), (1.0, 0)),
        ValueError,
        "`scales` must be positive and finite, got 0",
    ),
    "MultiScaleCAM negative scale": (
        lambda: hiercam.MultiScaleCAM(hiercam.GradCAM(tiny(), "0"), (-0.5,)),
        ValueError,
        "`scales` must be positive and finite, got -0.5",
    ),
    "MultiScaleCAM NaN scale": (
        lambda: hiercam.MultiScaleCAM(hiercam.GradCAM(tiny(), "0"), (float("nan"),)),
        ValueError,
        "`scales` must be positive and finite, got nan",
    ),
    "MultiScaleCAM infinite scale": (
        lambda: hiercam.MultiScaleCAM(hiercam.GradCAM(tiny(), "0"), (float("inf"),)),
        ValueError,
        "`scales` must be positive and finite, got inf",
    ),
    "MultiScaleCAM scales a number": (
        lambda: hiercam.MultiScaleCAM(hiercam.GradCAM(tiny(), "0"), 1.0),  # type: ignore[arg-type]
        TypeError,
        "`scales` must be a sequence of positive numbers, got float",
    ),
    "MultiScaleCAM scales a string": (
        lambda: hiercam.MultiScaleCAM(hiercam.GradCAM(tiny(), "0"), "1.0"),  # type: ignore[arg-type]
        TypeError,
        "`scales` must be a sequence of positive numbers, got str",
    ),
    "MultiScaleCAM scale a bool": (
        lambda: hiercam.MultiScaleCAM(hiercam.GradCAM(tiny(), "0"), (1.0, True)),
        TypeError,
        "`scales` must hold numbers, got bool",
    ),
    "MultiScaleCAM scale shrinks images to nothing": (
        lambda: hiercam.MultiScaleCAM(hiercam.GradCAM(tiny(), "0"), (1.0, 0.05))(torch.randn(1, 3, 8, 8)),
        ValueError,
        r"`scales` 0.05 shrinks 8x8 `images` to 0x0",
    ),
    "MultiScaleCAM cam a model": (
        lambda: hiercam.MultiScaleCAM(tiny()),  # type: ignore[arg-type]
        TypeError,
        "`cam` must be a CAM extractor",
    ),
    "MultiScaleCAM flip not a bool": (
        lambda: hiercam.MultiScaleCAM(hiercam.GradCAM(tiny(), "0"), flip=1),  # type: ignore[arg-type]
        TypeError,
        "`flip` must be a bool, got int",
    ),
    "MultiScaleCAM unknown pass_normalize": (
        lambda: hiercam.MultiScaleCAM(hiercam.GradCAM(tiny(), "0"), pass_normalize="l2"),  # type: ignore[arg-type]
        ValueError,
        "`pass_normalize` must be one of",
    ),
    "MultiScaleCAM NaN images": (
        lambda: hiercam.MultiScaleCAM(hiercam.GradCAM(tiny(), "0"))(with_nan(float("nan"))),
        ValueError,
        "`images` must be finite",
    ),
    "MultiScaleCAM bad size": (
        lambda: hiercam.MultiScaleCAM(hiercam.GradCAM(tiny(), "0"))(torch.randn(1, 3, 8, 8), size=(0, 4)),
        ValueError,
        "`size` must be 'input', 'feature' or a",
    ),
    "MultiScaleCAM unknown normalize": (
        lambda: hiercam.MultiScaleCAM(hiercam.GradCAM(tiny(), "0"))(
            torch.randn(1, 3, 8, 8),
            normalize="l1",  # type: ignore[arg-type]
        ),
        ValueError,
        "`normalize` must be one of",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_clear_error(case: str) -> None:
    call, error, match = BAD[case]
    with pytest.raises(error, match=match):
        call()


def test_the_original_error_is_chained() -> None:
    with pytest.raises(ValueError, match="torch said: Given groups=1") as info:
        hiercam.GradCAM(tiny(), "0")(torch.randn(1, 1, 8, 8))
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("two_branch", [False, True])
@pytest.mark.parametrize("size", ["input", "feature"])
def test_an_all_zero_class_mask_gives_zero_maps(size: str, two_branch: bool) -> None:
    torch.manual_seed(0)
    model = hiercam.TwoBranchNet(lambda: nn.Conv2d(3, 4, 3), num_classes=3).eval() if two_branch else tiny()
    images = torch.randn(2, 3, 10, 10)
    cam = hiercam.GradCAM(model)
    for _ in range(2):  # the general path, then the closed form
        maps = cam(images, torch.zeros(2, 3), size=size)  # type: ignore[arg-type]
        assert maps.shape[:2] == (2, 3)
        assert maps.shape[-2:] == ((10, 10) if size == "input" else (8, 8) if two_branch else (10, 10))
        assert torch.equal(maps, torch.zeros_like(maps))
    assert cam.logits is not None
    assert cam.logits.shape == (2, 3)
    hiercam_mask = torch.tensor([[0, 1, 0], [0, 0, 0]])
    partial = cam(images, hiercam_mask)
    torch.testing.assert_close(partial, cam(images) * hiercam_mask[:, :, None, None])


def test_no_hook_is_left_after_any_bad_input() -> None:
    model = tiny()
    for images in (with_nan(float("nan")), torch.randn(1, 1, 8, 8), torch.randn(0, 3, 8, 8)):
        with pytest.raises((ValueError, TypeError)):
            hiercam.GradCAM(model, "0")(images)
        with pytest.raises((ValueError, TypeError)):
            hiercam.GradCAM(model)(images)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    assert not any(m.training for m in model.modules())


def test_a_lazy_model_is_valid_input() -> None:
    torch.manual_seed(0)
    model = lazy_model()
    images = torch.randn(2, 3, 8, 8)
    maps = hiercam.GradCAM(model, "0")(images, normalize=None, size="feature")
    features = model[0](images)
    logits = model[2](model[1](features))
    expected = []
    for k in range(2):
        (grad,) = torch.autograd.grad(logits[:, k].sum(), features, retain_graph=True)
        expected.append(torch.relu((grad.mean(dim=(2, 3), keepdim=True) * features).sum(1)))
    torch.testing.assert_close(maps, torch.stack(expected, 1).detach())
