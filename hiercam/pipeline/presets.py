"""Named settings: the bundled configs (the demo's, the benchmark's) and the method presets applied on top.

[`demo_config`][hiercam.pipeline.demo_config] and [`bench_config`][hiercam.pipeline.bench_config] are whole
configs on the bundled FashionScenes data (``hiercam demo``, ``hiercam bench``).

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

__all__ = ["demo_config", "bench_config", "Preset", "PRESETS", "apply_preset"]


#: The demo's sizes (``demo_config``), chosen so that ``make demo`` from a fresh clone, install included,
#: takes at most 5 minutes on a slow 2-core machine (``benchmarks/demo_time.py`` measures it); the
#: full-size setting of ``docs/benchmarks.md`` is ``bench_config``.
DEMO_SIZES: dict[str, Any] = {
    "data__train_scenes": 4000,
    "data__val_scenes": 300,
    "data__test_scenes": 300,
    "train__epochs": 4,
    "method__levels": (4,),
    # MaxBoxAccV2/PxAP's threshold sweep would be a third of the demo's time; deletion/insertion on 32 images
    "evaluation__wsol": False,
    "evaluation__faithfulness_images": 32,
}

#: ``--quick``: tiny images, few scenes, 2 epochs; every stage and every ablation model, in seconds.
QUICK_SIZES: dict[str, Any] = {
    "data__image_size": 48,
    "data__train_scenes": 256,
    "data__val_scenes": 64,
    "data__test_scenes": 64,
    "model__width": 8,
    "train__epochs": 2,
    "train__lr": 3e-3,
}


def demo_config(*, quick: bool = False, seed: int = 0) -> PipelineConfig:
    """The bundled-data demo: FashionScenes, ``small_convnet``, on the CPU.

    The demo shows a method against the Grad-CAM baseline (the ``demo`` command: the preset ``recommended``).
    It trains only the models the preset's method needs (``ablation=False``: no extra models for the paper's
    ablation; ``ensemble=False``: no ensemble control; one group level, 10 -> 4): for ``recommended`` the base
    classifier and the two-branch models of levels 10 and 4, for ``single_branch`` the base classifier and the
    single-branch model of the 4 groups. On 4,000 training scenes for 4 epochs; it scores 300
    validation and 300 test scenes (deletion / insertion on 32 test images; no MaxBoxAccV2 / PxAP, whose
    threshold sweep would cost a third of the demo's time). The paper's full
    ablation is ``hiercam bench``, on [`bench_config`][hiercam.pipeline.bench_config]. ``quick`` is a smoke
    test of every stage, ablation, ensemble control and levels 10 -> 4 -> 2 included (48-pixel images, 256
    scenes, 2 epochs), in seconds; its numbers mean nothing.

    Args:
        quick: the smoke-test sizes instead of the demo's.
        seed: seed of data, initialisation and shuffling.

    Returns:
        The config. Its method settings other than ``levels`` are the defaults (the paper's); the ``demo``
        command applies a preset on top.

    Example:
        >>> config = demo_config()
        >>> config.data.train_scenes, config.train.epochs, config.method.levels
        (4000, 4, (4,))
        >>> config.ablation, config.ensemble, config.evaluation.wsol
        (False, False, False)
        >>> demo_config(quick=True).method.levels
        (4, 2)
    """
    config = PipelineConfig(seed=seed, device="cpu")
    if quick:
        return config.replace(**QUICK_SIZES)
    return config.replace(ablation=False, ensemble=False, **DEMO_SIZES)


def bench_config(*, quick: bool = False, seed: int = 0) -> PipelineConfig:
    """The FashionScenes setting of ``docs/benchmarks.md``: 10,000 training scenes, 6 epochs, every model.

    The default config of ``hiercam bench`` and ``benchmarks/ablation_sweep.py``: the paper's ablation (Table
    4) with the single-branch level models (``ablation=True``), both controls (the ensemble and the shuffled
    hierarchy, ``shuffled_control=True``), 500 validation and 500 test scenes, on the CPU. ``quick`` is the
    same smoke test as ``demo_config(quick=True)``.

    Example:
        >>> config = bench_config()
        >>> config.data.train_scenes, config.train.epochs, config.ablation, config.shuffled_control
        (10000, 6, True, True)
    """
    if quick:
        return demo_config(quick=True, seed=seed)
    return PipelineConfig(seed=seed, device="cpu", shuffled_control=True)


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
            "subcategories": 0,
            "subcategory_min_size": 5,
            "subcategory_weight": 5.0,
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
        "+3.7 to +5.0 test mIoU over Grad-CAM on MSRC-21 in three record sets of 5, 5 and 10 seeds, below "
        "Grad-CAM on FashionScenes, benchmarks/hierarchy_evidence.py)",
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
    "subcategory": Preset(
        "`single_branch` and also sub-category CAMs (row `subcategory`; SC-CAM, Chang et al., CVPR 2020): "
        "every class split into at most 10 sub-categories by K-means of pooled image features (of the "
        "frozen pretrained backbone when there is one), one net trained on the classes and the "
        "sub-categories, the maps of its class head",
        {**_SINGLE_BRANCH, "subcategories": 10},
    ),
    "recommended": Preset(
        "chosen on validation data only, by setting (docs/benchmarks.md, 'Does the hierarchy earn its "
        "place?'): with a pretrained backbone (`model.weights` or `model.pretrained`), the settings of "
        "`prototype` (LPCAM with every other class as context: +3.7 to +5.0 test mIoU over Grad-CAM on "
        "MSRC-21 in three record sets of 5, 5 and 10 seeds); a network trained from scratch keeps the "
        "settings of `orthogonal_light` (prototype CAMs lose on FashionScenes)",
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
