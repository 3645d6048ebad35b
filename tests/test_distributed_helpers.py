"""hiercam._distributed outside a process group: every helper is the single-process identity.

The helpers under two processes are covered by test_metrics_distributed.py (metrics, an empty rank
included), test_pipeline_distributed.py (sharding and gathering) and test_two_branch_distributed.py (fit).
"""

from __future__ import annotations

import torch

from hiercam import _distributed
from hiercam.pipeline.distributed import Distributed


def test_single_process_helpers_are_identities() -> None:
    state = torch.arange(6).reshape(3, 2)
    assert _distributed.world_size() == 1
    assert _distributed.rank() == 0
    assert _distributed.local_rank() == 0
    assert _distributed.is_main()
    assert _distributed.collective_device() == torch.device("cpu")
    assert _distributed.sync_sum(state) is state
    assert _distributed.sync_cat(state) is state
    assert _distributed.sync_cat(None) is None
    assert _distributed.gather_objects({"a": 1}) == [{"a": 1}]
    assert _distributed.gather_rows(state, 3) is state
    _distributed.barrier()  # no process group: returns at once


def test_pipeline_view_of_one_process() -> None:
    here = Distributed.current()
    assert here == Distributed(rank=0, world=1, local_rank=0)
    assert here.is_main
    assert here.shard(5) == [0, 1, 2, 3, 4]
    assert Distributed(rank=1, world=3).shard(8) == [1, 4, 7]
