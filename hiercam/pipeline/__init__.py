"""The whole method as one pipeline: train, group, train levels, extract CAMs, fuse, evaluate, report.

Stages write their artifacts to a run directory and are skipped on a re-run when their inputs and config
did not change, so an interrupted run resumes where it stopped (``force=True`` redoes everything).
"""

from hiercam.pipeline.adaptation import GroupingAdaptation
from hiercam.pipeline.config import (
    ConfigError,
    DataConfig,
    EvaluationConfig,
    MethodConfig,
    ModelConfig,
    PipelineConfig,
    TrainConfig,
    load_config,
)
from hiercam.pipeline.distributed import Distributed, init_distributed
from hiercam.pipeline.keys import ModelKey, Variant
from hiercam.pipeline.presets import PRESETS, Preset, apply_preset, bench_config, demo_config
from hiercam.pipeline.results import (
    ExtractedMaps,
    FigureScenes,
    FusionWeights,
    MapScores,
    ModelMaps,
    RunResult,
    SplitScores,
    ThresholdCurve,
    VariantScores,
)
from hiercam.pipeline.run import run_bench, run_pipeline, run_preset_bench

__all__ = [
    "PipelineConfig",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "MethodConfig",
    "EvaluationConfig",
    "ConfigError",
    "load_config",
    "demo_config",
    "bench_config",
    "run_pipeline",
    "run_bench",
    "run_preset_bench",
    "RunResult",
    "ModelKey",
    "Variant",
    "ModelMaps",
    "ExtractedMaps",
    "ThresholdCurve",
    "MapScores",
    "SplitScores",
    "VariantScores",
    "FusionWeights",
    "FigureScenes",
    "GroupingAdaptation",
    "PRESETS",
    "Preset",
    "apply_preset",
    "init_distributed",
    "Distributed",
]
