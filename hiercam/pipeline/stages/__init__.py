"""The pipeline's stages, one module per stage, in the order a run calls them.

1. ``training``: the base classifier (stage 1a), later the level models and the controls' models (stage 2);
2. ``grouping``: the class hierarchy from the base classifier's class vectors (stage 1b);
3. ``extraction``: the maps of every model on the evaluation splits (stage 3).

Stage 4, scoring the maps, is ``hiercam.pipeline.evaluation``. Each stage takes the run's
[`RunContext`][hiercam.pipeline.context.RunContext], reads what earlier stages wrote to the run directory
and writes its own outputs there; a stage (or one model of a stage) whose content key
(``hiercam.pipeline.keys``) matches a completed one is skipped. Training resumes from the last completed
epoch after an interruption.
"""

from hiercam.pipeline.stages.extraction import extract_maps, split_level_heads
from hiercam.pipeline.stages.grouping import build_hierarchy, load_hierarchy_file
from hiercam.pipeline.stages.training import (
    TrainedModel,
    ensemble_size,
    shuffled_control_hierarchy,
    train_base,
    train_ensemble,
    train_level_heads,
    train_level_models,
    train_levels,
    train_shuffled_levels,
    train_subcategory_model,
)

__all__ = [
    "TrainedModel",
    "train_base",
    "train_ensemble",
    "ensemble_size",
    "build_hierarchy",
    "load_hierarchy_file",
    "train_levels",
    "train_level_models",
    "train_level_heads",
    "train_subcategory_model",
    "shuffled_control_hierarchy",
    "train_shuffled_levels",
    "extract_maps",
    "split_level_heads",
]
