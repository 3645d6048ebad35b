"""The run context: what every stage of a run shares (config, run directory, options, data, processes).

A [`RunContext`][hiercam.pipeline.context.RunContext] is built once per run by
[`run_pipeline`][hiercam.pipeline.run_pipeline] and handed to every stage (``hiercam.pipeline.stages``, the
evaluation). It loads each split on first use and keeps it, and records how long each step took.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hiercam._progress import Progress, is_terminal, print_line
from hiercam.pipeline.adaptation import GroupingAdaptation
from hiercam.pipeline.config import PipelineConfig
from hiercam.pipeline.data import DataSplit, load_split
from hiercam.pipeline.distributed import Distributed

__all__ = ["RunContext"]


@dataclass
class RunContext:
    """What every stage needs: the config, the run directory, options, and the data (loaded once).

    ``cache`` is a folder shared by several runs (e.g. a hyper-parameter sweep): models and CAMs are stored
    there under their content keys (``hiercam.pipeline.keys``), so runs that need the same model train it
    once. ``grouping`` is set by ``build_hierarchy``: how the grouping adapted (the run's result records it).

    Example:
        >>> from hiercam.pipeline import demo_config
        >>> ctx = RunContext(demo_config(quick=True), Path("runs/demo"))
        >>> ctx.models_dir.as_posix(), ctx.maps_dir.as_posix(), str(ctx.device)
        ('runs/demo/models', 'runs/demo/cams', 'cpu')
    """

    config: PipelineConfig
    out: Path
    force: bool = False
    progress: bool = True
    log: Callable[[str], None] = print_line
    cache: Path | None = None
    dist: Distributed = field(default_factory=Distributed.current)
    timings: dict[str, float] = field(default_factory=dict)
    grouping: GroupingAdaptation | None = None
    _data: dict[str, DataSplit] = field(default_factory=dict)

    @property
    def models_dir(self) -> Path:
        """Where trained models are kept: ``<cache>/models`` with a shared cache, else ``<out>/models``."""
        return (self.cache if self.cache is not None else self.out) / "models"

    @property
    def maps_dir(self) -> Path:
        """Where extracted maps are kept: ``<cache>/cams`` with a shared cache, else ``<out>/cams``."""
        return (self.cache if self.cache is not None else self.out) / "cams"

    @property
    def device(self) -> torch.device:
        """The device to train and extract on: ``"auto"`` is CUDA when available.

        Under ``torchrun`` with CUDA, each process takes its own GPU, ``cuda:<LOCAL_RANK>``.
        """
        name = self.config.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cuda" and self.dist.world > 1:
            name = f"cuda:{self.dist.local_rank}"
        return torch.device(name)

    def step_progress(self, total: int, desc: str, unit: str, *, enabled: bool = True) -> Progress:
        """The progress of one long step of a stage, as a context manager (``update(n)`` as work is done).

        A tqdm bar on a terminal (rank 0 only), else a line in ``log`` every 30 s while the step runs; then
        one closing line ``"  <desc>: <done> <unit> in <seconds> s"``. With ``progress=False`` only the
        closing line is written; ``enabled=False`` writes nothing (a step with nothing to do).
        """
        return Progress(
            total,
            f"  {desc}",
            enabled=enabled,
            log=self.log,
            unit=unit,
            interval=30.0 if self.progress else math.inf,
            terminal=self.progress and self.dist.is_main and is_terminal(),
        )

    def data(self, split: str) -> DataSplit:
        """One split, drawn or read on first use."""
        if split not in self._data:
            start = time.perf_counter()
            self._data[split] = load_split(self.config, split)
            self.timings[f"data_{split}"] = time.perf_counter() - start
        return self._data[split]
