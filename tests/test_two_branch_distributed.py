"""TwoBranchNet + TwoBranchLoss under DistributedDataParallel: 2 CPU processes, gloo, a few SGD steps.

DDP averages gradients over processes. The BCE terms and a "batchmean" orthogonal term are means over the
batch, so two processes on halves of each batch must end where one process on the whole batch does. A "sum"
orthogonal term is a sum over each half: averaged, it is half the single-process term, so the equivalent
single-process run uses lam / world_size.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hiercam import TwoBranchLoss

pytestmark = pytest.mark.usefixtures("one_thread")


WORKER_PATH = Path(__file__).with_name("ddp_two_branch_worker.py")


def _load_worker():
    spec = importlib.util.spec_from_file_location("ddp_two_branch_worker", WORKER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ddp_weights(tmp_path_factory) -> dict[str, list[dict[str, torch.Tensor]]]:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    # One retry, only for a worker killed by a signal (a gloo teardown abort seen once on a loaded machine,
    # after the weights were written); a Python error fails at once; the retry's weights are checked as usual.
    for attempt in range(2):
        out_dir = tmp_path_factory.mktemp("ddp")
        result = subprocess.run(
            [sys.executable, str(WORKER_PATH), str(out_dir)], capture_output=True, text=True, timeout=300
        )
        if result.returncode == 0 or "terminated with signal" not in result.stderr or attempt == 1:
            break
    assert result.returncode == 0, result.stderr[-3000:]
    worker = _load_worker()
    return {
        name: [
            torch.load(out_dir / f"{name}_rank{r}.pt", weights_only=True) for r in range(worker.WORLD_SIZE)
        ]
        for name in worker.CONFIGS
    }


def _reference(reduction: str, lam: float) -> dict[str, torch.Tensor]:
    worker = _load_worker()
    net = worker.build_net()
    worker.train(net, TwoBranchLoss(weight=lam, reduction=reduction), None)
    return net.state_dict()


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["batchmean", "sum"])
def test_ranks_agree_with_each_other_and_with_one_process(ddp_weights, name: str) -> None:
    worker = _load_worker()
    reduction, lam = worker.CONFIGS[name]
    rank0, rank1 = ddp_weights[name]
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    start = worker.build_net().state_dict()
    assert _max_difference(rank0, start) > 1e-3  # the steps did move the weights
    lam_equivalent = lam if reduction == "batchmean" else lam / worker.WORLD_SIZE
    reference = _reference(reduction, lam_equivalent)
    for key in rank0:
        torch.testing.assert_close(rank0[key], reference[key], rtol=0, atol=1e-6, msg=key)
    if reduction == "sum":  # the documented caveat is real: the same lam on one process differs
        assert _max_difference(rank0, _reference(reduction, lam)) > 1e-4
