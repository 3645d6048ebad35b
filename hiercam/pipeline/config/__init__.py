"""The pipeline's typed configuration, loadable from TOML or JSON, validated before any training starts.

``core``: [`PipelineConfig`][hiercam.pipeline.PipelineConfig] (every section together) and
[`load_config`][hiercam.pipeline.load_config]; ``sections``: the data, model, training, method and
evaluation sections and [`ConfigError`][hiercam.pipeline.ConfigError]; ``_rules``: the checks a built config
passes (the sections < the rules < the config: no import cycle).
"""

from hiercam.pipeline.config.core import PipelineConfig, load_config
from hiercam.pipeline.config.sections import (
    ConfigError,
    DataConfig,
    EvaluationConfig,
    MethodConfig,
    ModelConfig,
    TrainConfig,
    background_class_names,
    folder_classes,
)

__all__ = [
    "PipelineConfig",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "MethodConfig",
    "EvaluationConfig",
    "ConfigError",
    "load_config",
    "background_class_names",
    "folder_classes",
]
