"""Bad labels given to the losses: a clear ValueError naming `labels`, before any loss is computed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hiercam import OrthogonalLoss, TwoBranchLoss, TwoBranchOutput, orthogonal_loss

pytestmark = pytest.mark.usefixtures("one_thread")

NOT_BINARY = [
    pytest.param(torch.tensor([[0.0, 2.0, 1.0], [1.0, 0.0, 0.0]]), id="two"),
    pytest.param(torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, 0.0]]), id="minus-one"),
    pytest.param(torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 0.0]]), id="soft"),
    pytest.param(torch.tensor([[0.0, float("nan"), 1.0], [1.0, 0.0, 0.0]]), id="nan"),
    pytest.param(torch.tensor([[0, 3, 1], [1, 0, 0]]), id="int-three"),
]


def features() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 4, 3, 3, generator=g), torch.rand(2, 4, 3, 3, generator=g)


@pytest.mark.parametrize("labels", NOT_BINARY)
def test_cam_mode_refuses_labels_that_are_not_0_or_1(labels: torch.Tensor) -> None:
    f1, f2 = features()
    weights = (torch.rand(3, 4), torch.rand(3, 4))
    with pytest.raises(ValueError, match="`labels` must hold only 0/1 values"):
        orthogonal_loss(f1, f2, mode="cam", classifier_weights=weights, labels=labels)
    with pytest.raises(ValueError, match="`labels` must hold only 0/1 values"):
        OrthogonalLoss(mode="cam")(f1, f2, classifier_weights=weights, labels=labels)


@pytest.mark.parametrize("labels", NOT_BINARY)
def test_two_branch_loss_refuses_labels_that_are_not_0_or_1(labels: torch.Tensor) -> None:
    f1, f2 = features()
    output = TwoBranchOutput(torch.zeros(2, 2, 3), (f1, f2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="`labels` must hold only 0/1 values"):
        TwoBranchLoss()(output, labels)
    heads = (nn.Linear(4, 3), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="`labels` must hold only 0/1 values"):
        TwoBranchLoss(mode="cam", heads=heads)(output, labels)


def test_binary_labels_of_every_dtype_still_work() -> None:
    f1, f2 = features()
    output = TwoBranchOutput(torch.zeros(2, 2, 3), (f1, f2), torch.zeros(2, 3))
    base = torch.tensor([[0, 1, 1], [1, 0, 0]])
    values = [float(TwoBranchLoss()(output, base.to(dtype)).total) for dtype in (torch.bool, torch.long)]
    assert values[0] == values[1] == float(TwoBranchLoss()(output, base.float()).total)


def test_bad_rectify_and_classifier_weights() -> None:
    f1, f2 = features()
    with pytest.raises(TypeError, match="`rectify` must be a bool or None, got float"):
        orthogonal_loss(f1, f2, rectify=1.0)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match="`classifier_weights` must be a pair of \\(K, C\\) tensors, got Tensor"
    ):
        orthogonal_loss(f1, f2, mode="cam", classifier_weights=torch.rand(3, 4), labels=torch.ones(2, 3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`unit_norm` must be a bool, got str"):
        OrthogonalLoss(unit_norm="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`weight` must be a finite number >= 0, got inf"):
        TwoBranchLoss(weight=float("inf"))
