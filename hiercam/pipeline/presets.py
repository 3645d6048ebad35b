"""Named method settings: the paper's, each variant beyond the paper, and the one hiercam recommends.

A preset is a set of ``PipelineConfig.method`` settings: the paper's, then the preset's own changes. It
applies on top of any config (the demo's, a VOC recipe's) and keeps the rest of it (levels, thresholds,
data, model, training), so ``hiercam demo --preset recommended`` and
``hiercam bench --preset paper spatial`` compare like with like. Every choice below was made on
validation data only (``benchmarks/ablation_sweep.py`` on FashionScenes; ``recommended`` on the validation
splits of FashionScenes and MSRC-21, ``benchmarks/preset_table.py``); the measured test figures are in
``docs/benchmarks.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hiercam.pipeline.config import ConfigError, PipelineConfig

__all__ = ["Preset", "PRESETS", "apply_preset"]


@dataclass(frozen=True)
class Preset:
    """A named set of changes to a config's ``method`` section.

    Attributes:
        description: one line for ``--help`` and tables.
        method: ``MethodConfig`` fields and their values.
        pretrained: the fields and values used instead of ``method`` when the backbone starts from pretrained
            weights (``model.weights`` or ``model.pretrained``); ``None``: ``method`` in every setting.
    """

    description: str
    method: dict[str, Any]
    pretrained: dict[str, Any] | None = None

    def settings(self, config: PipelineConfig) -> dict[str, Any]:
        """The method settings of this preset for ``config``'s setting (pretrained backbone or not).

        Example:
            >>> from hiercam.pipeline import demo_config
            >>> preset = Preset("demo", {"branches": 1}, pretrained={"branches": 2})
            >>> preset.settings(demo_config()), preset.settings(demo_config().replace(model__pretrained=True))
            ({'branches': 1}, {'branches': 2})
        """
        starts_pretrained = config.model.weights is not None or config.model.pretrained
        return dict(self.pretrained if starts_pretrained and self.pretrained is not None else self.method)


#: The method settings shared by the single-branch presets: no two-branch model, Eq. 6 over single-branch
#: level models, L2-normalised class vectors, near-ubiquitous classes kept out of the grouping.
_SINGLE_BRANCH: dict[str, Any] = {"branches": 1, "grouping_unit_norm": True, "max_class_presence": 0.9}

#: IRN's inference scales, without the mirror images (which would double the cost: on 2 CPU cores, the
#: real-photo benchmark could not afford them).
_MULTISCALE: dict[str, Any] = {"multiscale": (1.0, 0.5, 1.5, 2.0), "flip": False}

#: The recommended preset before the real-photo benchmark (chosen on FashionScenes alone).
_ORTHOGONAL_LIGHT: dict[str, Any] = {
    "grouping_unit_norm": True,
    "orthogonal_weight": 1e-6,
    "max_class_presence": 0.9,
    "max_group_presence": 0.9,
}

PRESETS: dict[str, Preset] = {
    "paper": Preset(
        "the paper: orthogonal loss on feature maps (weight 1e-4, raw sum), plain K-means, every level, "
        "Eq. 6 with unit weights",
        {
            "grouping_unit_norm": False,
            "grouping_weighted": False,
            "orthogonal_weight": 1e-4,
            "orthogonal_reduction": "sum",
            "orthogonal_unit_norm": False,
            "orthogonal_mode": "feature",
            "max_group_presence": None,
            "max_class_presence": None,
            "fusion_weights": (1.0, 1.0, 1.0),
            "choose_fusion_weights": False,
            "multiscale": None,
            "flip": False,
            "softmax_over_labels": False,
            "branches": 2,
            "prototype_context": "none",
            "level_heads": False,
        },
    ),
    "spatial": Preset(
        "orthogonality between the branches' channel-pooled activation maps (per-sample cosine, weight 0.1)",
        {"orthogonal_mode": "spatial", "orthogonal_reduction": "batchmean", "orthogonal_weight": 0.1},
    ),
    "cam": Preset(
        "orthogonality between the branches' CAMs of each ground-truth class (per-sample cosine, weight 0.1)",
        {"orthogonal_mode": "cam", "orthogonal_reduction": "batchmean", "orthogonal_weight": 0.1},
    ),
    "signal_groups": Preset(
        "split the groups present in more than 90 % of the training images, then drop the group levels "
        "still saturated",
        {"max_group_presence": 0.9},
    ),
    "fusion_weights": Preset(
        "also report the fusion with weights (a, b, c) chosen on validation data (row `full_tuned`)",
        {"choose_fusion_weights": True},
    ),
    "orthogonal_light": Preset(
        "the recommended preset until the real-photo benchmark (chosen on FashionScenes validation data): "
        "L2-normalised class vectors, the paper's loss with orthogonal weight 1e-6, classes in more than "
        "90 % of the training images kept out of the grouping, then groups in more than 90 % of them split "
        "(levels still saturated dropped)",
        _ORTHOGONAL_LIGHT,
    ),
    "single_branch": Preset(
        "no two-branch model: Eq. 6 over single-branch level models (the paper's `grouping` row), "
        "L2-normalised class vectors, classes in more than 90 % of the training images kept out of the "
        "grouping",
        _SINGLE_BRANCH,
    ),
    "multiscale": Preset(
        "`single_branch` with IRN's multi-scale aggregation of every model's Grad-CAMs at inference "
        "(scales 1, 0.5, 1.5, 2; without IRN's mirror images, which double the cost)",
        {**_SINGLE_BRANCH, **_MULTISCALE},
    ),
    "softmax_over_labels": Preset(
        "`single_branch` with every class explained by its log-softmax over the image's labelled classes "
        "instead of its logit",
        {**_SINGLE_BRANCH, "softmax_over_labels": True},
    ),
    "refined": Preset(
        "`single_branch` with both refinements: multi-scale and the softmax over the labelled classes",
        {**_SINGLE_BRANCH, **_MULTISCALE, "softmax_over_labels": True},
    ),
    "prototype": Preset(
        "`single_branch` and also prototype CAMs (row `prototype`): LPCAM of the base classifier whose "
        'context set also holds the class prototypes of every other class (`prototype_context = "others"`; '
        "+3.7 test mIoU over Grad-CAM on MSRC-21 over 5 seeds, below Grad-CAM on FashionScenes, "
        "benchmarks/hierarchy_evidence.py)",
        {**_SINGLE_BRANCH, "prototype_context": "others"},
    ),
    "prototype_siblings": Preset(
        "`single_branch` and also prototype CAMs (row `prototype`): LPCAM of the base classifier whose "
        "context set also holds the class prototypes of the class's level-1 siblings in the hierarchy "
        '(`prototype_context = "siblings"`; on MSRC-21 no better than a shuffled hierarchy\'s siblings)',
        {**_SINGLE_BRANCH, "prototype_context": "siblings"},
    ),
    "level_heads": Preset(
        "`single_branch` with the level classifiers as heads of one shared backbone: one LevelHeadsNet "
        "(a linear head per hierarchy level, trained jointly) instead of one single-branch model per "
        "level, and Eq. 6 over its heads (row `heads`); the base classifier still builds the hierarchy "
        "and is the baseline",
        {**_SINGLE_BRANCH, "level_heads": True},
    ),
    "recommended": Preset(
        "chosen on validation data only, by setting (docs/benchmarks.md, 'Does the hierarchy earn its "
        "place?'): with a pretrained backbone (`model.weights` or `model.pretrained`), the settings of "
        "`prototype` (LPCAM with every other class as context: +3.7 test mIoU over Grad-CAM on MSRC-21, 5 "
        "seeds); a network trained from scratch keeps the settings of `orthogonal_light` (prototype CAMs "
        "lose on FashionScenes)",
        dict(_ORTHOGONAL_LIGHT),
        pretrained={**_SINGLE_BRANCH, "prototype_context": "others"},
    ),
}


def apply_preset(config: PipelineConfig, name: str) -> PipelineConfig:
    """``config`` with the paper's method settings, then those of preset ``name``; the rest is kept.

    Args:
        config: any pipeline config; not modified.
        name: a key of ``PRESETS``.

    Returns:
        A new config.

    Raises:
        ConfigError: ``name`` is not a preset.

    Example:
        >>> from hiercam.pipeline import apply_preset, demo_config
        >>> apply_preset(demo_config(), "spatial").method.orthogonal_mode
        'spatial'
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    settings = {**PRESETS["paper"].method, **PRESETS[name].settings(config)}
    return config.replace(**{f"method__{key}": value for key, value in settings.items()})
