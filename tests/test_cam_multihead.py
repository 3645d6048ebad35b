"""The multi-head protocol of the CAM engine, on a model that is not hiercam's, and the batched backward."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import hiercam
from hiercam.cam import _autograd


class ThreeHeads(nn.Module):
    """A multi-exit network written without hiercam's models: a shared stem, three heads of different depth.

    Head 0 ends in global average pooling + linear (closed form valid), head 1 has a GELU between its
    feature layer and the pool (general path), head 2 uses max pooling (general path).
    """

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.exits = nn.ModuleList(
            [
                nn.Conv2d(6, 8, 3, padding=1),
                nn.Sequential(nn.Conv2d(6, 5, 3, stride=2, padding=1), nn.Conv2d(5, 7, 3, padding=1)),
                nn.Conv2d(6, 9, 3, stride=2, padding=1),
            ]
        )
        self.fcs = nn.ModuleList(nn.Linear(c, num_classes) for c in (8, 7, 9))

    def pooled(self, index: int, features: torch.Tensor) -> torch.Tensor:
        if index == 1:
            return nn.functional.gelu(features).mean(dim=(2, 3))
        if index == 2:
            return features.amax(dim=(2, 3))
        return features.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        stem = self.stem(x)
        logits = [
            fc(self.pooled(i, e(stem))) for i, (e, fc) in enumerate(zip(self.exits, self.fcs, strict=True))
        ]
        return {"exits": logits}

    def cam_heads(self) -> list[hiercam.CAMHead]:
        return [
            hiercam.CAMHead(
                self.exits[i], f"exits.{i}", lambda out, i=i: out["exits"][i], self.fcs[i], f"exits.{i}"
            )
            for i in range(3)
        ]


def naive_gradcam(model: ThreeHeads, head: int, images: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of one head written out: plain autograd, one backward per class, ReLU, bilinear, max-norm."""
    stem = model.stem(images)
    features = model.exits[head](stem)
    logits = model.fcs[head](model.pooled(head, features))
    maps = []
    for k in range(logits.shape[1]):
        (grad,) = torch.autograd.grad(logits[:, k].sum(), features, retain_graph=True)
        maps.append(torch.relu((grad.mean(dim=(2, 3), keepdim=True) * features).sum(1)))
    up = nn.functional.interpolate(
        torch.stack(maps, 1).detach(), size=images.shape[-2:], mode="bilinear", align_corners=False
    )
    return hiercam.normalize_maps(up)


@pytest.fixture
def three() -> ThreeHeads:
    torch.manual_seed(0)
    return ThreeHeads().eval()


def test_a_foreign_three_head_model_is_explained_head_by_head(three: ThreeHeads) -> None:
    assert isinstance(three, hiercam.MultiHeadModel)
    images = torch.randn(3, 3, 16, 16)
    cam = hiercam.GradCAM(three)
    first = cam(images)
    second = cam(images)  # head 0 by the verified closed form, heads 1 and 2 by the general path
    heads = [naive_gradcam(three, i, images) for i in range(3)]
    expected = hiercam.normalize_maps(torch.stack(heads).mean(dim=0))
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected, rtol=1e-5, atol=1e-5)
    assert cam.branch_maps is not None
    torch.testing.assert_close(cam.branch_maps, torch.stack(heads), rtol=1e-5, atol=1e-5)
    assert "target_layer='exits.0', 'exits.1', 'exits.2', closed_form=verified, general, general" in repr(cam)
    assert cam.logits is not None
    torch.testing.assert_close(cam.logits, torch.stack(three(images)["exits"]).mean(dim=0))


def test_a_target_layer_name_is_looked_up_inside_each_head_scope() -> None:
    class Wide(ThreeHeads):
        def __init__(self) -> None:
            super().__init__()
            self.exits = nn.ModuleList(
                nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.Conv2d(8, 8, 1)) for _ in range(3)
            )
            self.fcs = nn.ModuleList(nn.Linear(8, 4) for _ in range(3))

    torch.manual_seed(1)
    model = Wide().eval()
    images = torch.randn(2, 3, 12, 12)
    cam = hiercam.GradCAM(model, "0", closed_form=False)
    assert "target_layer='exits.0.0', 'exits.1.0', 'exits.2.0'" in repr(cam)
    got = cam(images, normalize=None, size="feature")
    per_head = []
    for i in range(3):
        inner = model.exits[i][0](model.stem(images))
        logits = model.fcs[i](model.pooled(i, model.exits[i][1](inner)))
        columns = []
        for k in range(4):
            (grad,) = torch.autograd.grad(logits[:, k].sum(), inner, retain_graph=True)
            columns.append(torch.relu((grad.mean(dim=(2, 3), keepdim=True) * inner).sum(1)))
        per_head.append(torch.stack(columns, 1).detach())
    torch.testing.assert_close(got, torch.stack(per_head).mean(0))  # normalize=None: the raw mean


def test_the_engine_does_not_import_models() -> None:
    import ast
    from pathlib import Path

    package = Path(hiercam.__file__).parent / "cam"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("hiercam.models"), path.name


def test_bad_heads_are_clear_errors(three: ThreeHeads) -> None:
    class NoHeads(ThreeHeads):
        def cam_heads(self) -> list[hiercam.CAMHead]:
            return []

    class WrongName(ThreeHeads):
        def cam_heads(self) -> list[hiercam.CAMHead]:
            return [hiercam.CAMHead(self.exits[0], "exits.1", lambda out: out["exits"][0])]

    class NotHeads(ThreeHeads):
        def cam_heads(self) -> list[Any]:
            return [(self.exits[0], "exits.0")]

    with pytest.raises(ValueError, match=r"`model.cam_heads\(\)` of NoHeads returned no head"):
        hiercam.GradCAM(NoHeads())
    with pytest.raises(
        ValueError, match=r"`model.cam_heads\(\)\[0\]`.name 'exits.1' must be the dotted name"
    ):
        hiercam.GradCAM(WrongName())
    with pytest.raises(TypeError, match=r"`model.cam_heads\(\)\[0\]` must be a hiercam.CAMHead, got tuple"):
        hiercam.GradCAM(NotHeads())
    with pytest.raises(ValueError, match="`classifier` is not used with a multi-head model"):
        hiercam.GradCAM(three, classifier="fcs.0")


class ItemInBackward(torch.autograd.Function):
    """Identity whose backward calls ``.item()``: no batching rule under the vmap of ``is_grads_batched``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad.sum().item()
        return grad


class NoBatchingRule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(ItemInBackward.apply(self.conv(x))).mean(dim=(2, 3)))


def test_an_op_without_batching_rule_falls_back_to_one_backward_per_class() -> None:
    model = NoBatchingRule().eval()
    images = torch.randn(2, 3, 8, 8)
    features = model.conv(images)
    scores = model.fc(torch.tanh(ItemInBackward.apply(features)).mean(dim=(2, 3)))
    seeds = torch.eye(3)[:, None, :].expand(3, 2, 3).contiguous()
    with pytest.raises(RuntimeError, match="Batching rule not implemented"):  # the case the fallback is for
        torch.autograd.grad(scores, features, seeds, is_grads_batched=True)
    got = hiercam.GradCAM(model, "conv")(images, normalize=None, size="feature")
    features = model.conv(images)
    scores = model.fc(torch.tanh(features).mean(dim=(2, 3)))
    expected = []
    for k in range(3):
        (grad,) = torch.autograd.grad(scores[:, k].sum(), features, retain_graph=True)
        expected.append(torch.relu((grad.mean(dim=(2, 3), keepdim=True) * features).sum(1)))
    torch.testing.assert_close(got, torch.stack(expected, 1).detach())


@pytest.mark.parametrize(
    "message",
    [
        "CUDA out of memory. Tried to allocate 2.00 GiB",
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory",
        "something else went wrong in a backward",
    ],
)
def test_other_errors_of_the_batched_backward_propagate(
    monkeypatch: pytest.MonkeyPatch, message: str
) -> None:
    calls: list[bool] = []

    def failing_grad(*args: Any, **kwargs: Any) -> Any:
        calls.append(bool(kwargs.get("is_grads_batched")))
        raise RuntimeError(message)

    model = NoBatchingRule().eval()
    monkeypatch.setattr(_autograd.torch.autograd, "grad", failing_grad)
    with pytest.raises(RuntimeError, match=message.split(".")[0].replace("[", r"\[")):
        hiercam.GradCAM(model, "conv")(torch.randn(1, 3, 8, 8))
    assert calls == [True]  # no per-class retry after an out-of-memory error
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_batching_failures_are_told_apart_from_other_errors() -> None:
    assert _autograd.is_batching_failure(RuntimeError("Batching rule not implemented for aten::item."))
    assert _autograd.is_batching_failure(
        RuntimeError("vmap: It looks like you're calling .item() on a Tensor")
    )
    assert not _autograd.is_batching_failure(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert not _autograd.is_batching_failure(RuntimeError("DefaultCPUAllocator: can't allocate memory"))


def test_hook_hygiene_and_caller_state_on_a_multi_head_model(three: ThreeHeads) -> None:
    three.train()
    three.stem[0].weight.requires_grad_(False)
    three.fcs[1].weight.grad = torch.full_like(three.fcs[1].weight, 3.0)
    flags = [m.training for m in three.modules()]
    requires = [p.requires_grad for p in three.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in three.parameters()]
    cam = hiercam.GradCAM(three)
    for _ in range(3):
        cam(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="`images` must be finite"):
        cam(torch.full((1, 3, 16, 16), float("nan")))
    assert [m.training for m in three.modules()] == flags
    assert [p.requires_grad for p in three.parameters()] == requires
    for p, g in zip(three.parameters(), grads, strict=True):
        assert (p.grad is None) == (g is None)
        if g is not None:
            assert torch.equal(p.grad, g)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in three.modules()) == 0
