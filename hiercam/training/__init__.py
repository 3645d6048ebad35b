"""Training multi-label classifiers the paper's way: [`fit`][hiercam.fit] and [`evaluate`][hiercam.evaluate].

Modules: ``train`` (``fit`` and ``evaluate``), ``history`` (the per-epoch [`History`][hiercam.History]); the
training loop and the checkpoints are private, except
[`load_checkpoint`][hiercam.training.load_checkpoint], which reads and validates a checkpoint of ``fit``.
"""

from hiercam.training._checkpoint import load_checkpoint
from hiercam.training.history import History
from hiercam.training.train import evaluate, fit

__all__ = ["fit", "evaluate", "History", "load_checkpoint"]
