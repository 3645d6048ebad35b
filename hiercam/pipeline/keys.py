"""Who is who in a run, and the content keys of what it caches.

[`ModelKey`][hiercam.pipeline.ModelKey] names a model, [`Variant`][hiercam.pipeline.Variant] an evaluated map.
Names such as ``"two_branch_L1"`` and ``"level_2"`` exist only in files and tables; ``from_name`` reads them
back and refuses anything else.

A cached step (a trained model, the hierarchy, the maps of a split) is found by its *content key*: the
SHA-256 ([`digest`][hiercam.pipeline.artifacts.digest]) of everything it depends on, the parts of the config
it reads and the keys of the steps it uses. ``model_key``, ``hierarchy_key`` and ``maps_key`` build them; a
config field added after models were first cached enters a key only when it differs from its default
(``section_key``), so the models and maps of earlier runs stay valid.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from hiercam.pipeline.artifacts import digest
from hiercam.pipeline.config import DataConfig, ModelConfig, PipelineConfig

__all__ = [
    "ModelKind",
    "ModelKey",
    "VariantKind",
    "Variant",
    "section_key",
    "data_key",
    "model_key",
    "hierarchy_key",
    "maps_key",
]

ModelKind = Literal[
    "base",
    "ensemble",
    "two_branch",
    "single",
    "shuffled_two_branch",
    "shuffled_single",
    "level_heads",
    "shuffled_level_heads",
    "subcategory",
    "shuffled_subcategory",
]
VariantKind = Literal[
    "baseline",
    "ensemble",
    "two_branch",
    "grouping",
    "heads",
    "full",
    "full_tuned",
    "shuffled",
    "prototype",
    "subcategory",
    "subcategory_shuffled",
    "level",
]

#: The models named by their kind alone (level 0: the base classifier, its ensemble partners, and the
#: level-heads and sub-category nets, whose first head classifies the ``K`` classes).
_LEVEL_ZERO_KINDS = (
    "base",
    "ensemble",
    "level_heads",
    "shuffled_level_heads",
    "subcategory",
    "shuffled_subcategory",
)

_MODEL_NAME = re.compile(r"(shuffled_two_branch|shuffled_single|two_branch|single)_L(\d+)")
_ENSEMBLE_NAME = re.compile(r"ensemble_(\d+)")
_LEVEL_NAME = re.compile(r"level_(\d+)")


@dataclass(frozen=True, order=True, repr=False)
class ModelKey:
    """Which model of a run: the base classifier, its ensemble partners, or a level model.

    Attributes:
        kind: ``"base"`` (single branch on the ``K`` classes), ``"ensemble"`` (another base classifier
            trained from another seed: a member of the ensemble control beside ``base``), ``"two_branch"``,
            ``"single"``, or ``"shuffled_two_branch"`` / ``"shuffled_single"`` (a level model of the
            shuffled-hierarchy control: trained on groups of the same sizes with the classes placed at
            random, see ``PipelineConfig.shuffled_control``), or ``"level_heads"`` /
            ``"shuffled_level_heads"`` (one [`LevelHeadsNet`][hiercam.models.LevelHeadsNet] with a head per
            level of the hierarchy, or of the shuffled one: ``method.level_heads``), or ``"subcategory"`` /
            ``"shuffled_subcategory"`` (a [`SubCategoryNet`][hiercam.models.SubCategoryNet] on K-means
            sub-categories of each class, or on the same sub-categories with the images permuted).
        level: hierarchy level whose groups the model classifies (0: the classes; always 0 for ``"base"``,
            ``"ensemble"``, the level-heads and the sub-category kinds, whose logits in a run are their
            level-0 head's).
        member: which ensemble member (``>= 1``; ``1`` is the pipeline's first ``ensemble`` model); always 1
            for the other kinds.

    Example:
        >>> ModelKey("two_branch", 1).name
        'two_branch_L1'
        >>> ModelKey.from_name("single_L2")
        ModelKey(kind='single', level=2)
        >>> ModelKey("ensemble").name, ModelKey("ensemble", member=3).name
        ('ensemble', 'ensemble_3')
        >>> ModelKey.from_name("shuffled_single_L1")
        ModelKey(kind='shuffled_single', level=1)
    """

    kind: ModelKind
    level: int = 0
    member: int = 1

    def __post_init__(self) -> None:
        if self.kind not in get_args(ModelKind):
            raise ValueError(f"`kind` must be one of {get_args(ModelKind)}, got {self.kind!r}")
        if isinstance(self.level, bool) or not isinstance(self.level, int) or self.level < 0:
            raise ValueError(f"`level` must be an integer >= 0, got {self.level!r}")
        if self.kind in _LEVEL_ZERO_KINDS and self.level != 0:
            raise ValueError(f"the {self.kind} classifier is a level-0 model, got `level` {self.level}")
        if isinstance(self.member, bool) or not isinstance(self.member, int) or self.member < 1:
            raise ValueError(f"`member` must be an integer >= 1, got {self.member!r}")
        if self.kind != "ensemble" and self.member != 1:
            raise ValueError(f"only an ensemble model has a `member` number, got {self.kind!r} {self.member}")

    def __repr__(self) -> str:
        member = f", member={self.member}" if self.member != 1 else ""
        return f"ModelKey(kind={self.kind!r}, level={self.level}{member})"

    @property
    def name(self) -> str:
        """The model's name in files and tables.

        ``"base"``, ``"ensemble"``, ``"ensemble_<m>"`` (member ``m`` >= 2), ``"two_branch_L<l>"``,
        ``"single_L<l>"``, ``"shuffled_two_branch_L<l>"``, ``"shuffled_single_L<l>"``, ``"level_heads"`` or
        ``"shuffled_level_heads"``.
        """
        if self.kind == "ensemble" and self.member != 1:
            return f"ensemble_{self.member}"
        return self.kind if self.kind in _LEVEL_ZERO_KINDS else f"{self.kind}_L{self.level}"

    @classmethod
    def from_name(cls, name: str) -> ModelKey:
        """The key written as ``name`` (see ``ModelKey.name``).

        Raises:
            ValueError: ``name`` is not a model name.
        """
        if name in _LEVEL_ZERO_KINDS:
            return cls(name)  # type: ignore[arg-type]
        member = _ENSEMBLE_NAME.fullmatch(name) if isinstance(name, str) else None
        if member is not None and int(member[1]) >= 2:
            return cls("ensemble", member=int(member[1]))
        match = _MODEL_NAME.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            raise ValueError(
                f"{name!r} is not a model name ('base', 'ensemble', 'ensemble_<m>', 'two_branch_L<n>', "
                "'single_L<n>', 'shuffled_two_branch_L<n>', 'shuffled_single_L<n>', 'level_heads', "
                "'shuffled_level_heads', 'subcategory' or 'shuffled_subcategory')"
            )
        return cls(match[1], int(match[2]))  # type: ignore[arg-type]


_DESCRIPTIONS = {
    "baseline": "Grad-CAM baseline (single branch, no grouping)",
    "ensemble": "ensemble control: independently trained single-branch models averaged",
    "two_branch": "+ orthogonal two-branch only",
    "grouping": "+ grouping only",
    "heads": "level heads on one backbone: Eq. 6 over one LevelHeadsNet's heads",
    "full": "both: two-branch + grouping, Eq. 6",
    "full_tuned": "both, fusion weights chosen on val",
    "shuffled": "shuffled-hierarchy control: the method's Eq. 6, groups of the same sizes, classes at random",
    "prototype": "prototype CAM (LPCAM) of the base classifier",
    "subcategory": "sub-category CAM (SC-CAM): the class head of a net trained on K-means sub-categories too",
    "subcategory_shuffled": "SC-CAM control: the same sub-category sizes, the images assigned at random",
}


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: which maps are scored.

    * ``baseline``: Grad-CAM of the single-branch base classifier;
    * ``ensemble``: the control of the method at the same training compute: the Grad-CAMs of independently
      trained single-branch models (``base`` and the ``ensemble`` members, one seed each; as many models as
      the method trains, see ``PipelineConfig.ensemble``), averaged with
      [`average_branch_maps`][hiercam.average_branch_maps] as the two branches are;
    * ``two_branch``: the branch average of the level-0 two-branch model (orthogonal loss only);
    * ``grouping``: Eq. 6 over single-branch models (grouping only);
    * ``heads``: Eq. 6 over the heads of one [`LevelHeadsNet`][hiercam.models.LevelHeadsNet] (the level-0
      head's maps as ``M0``, the other heads' as the level maps; ``method.level_heads``, where it is the
      method's row instead of ``grouping``);
    * ``full``: Eq. 6 over the two-branch models (the paper's method); ``full_tuned``: the same with fusion
      weights chosen on validation data;
    * ``shuffled``: the method's Eq. 6 (``full``, ``grouping`` with ``method.branches = 1``, ``heads`` with
      ``method.level_heads``) over level models (or a ``LevelHeadsNet``) trained on the shuffled hierarchy
      (the same group sizes, the classes at random: the control that tells whether the grouping's content
      matters, ``PipelineConfig.shuffled_control``);
    * ``prototype``: LPCAM maps of the base classifier (``method.prototype_context``);
    * ``subcategory``: the class head's maps of a [`SubCategoryNet`][hiercam.models.SubCategoryNet] (SC-CAM,
      ``method.subcategories``); ``subcategory_shuffled``: the same net trained on shuffled sub-categories
      (its control, with ``shuffled_control``);
    * ``level`` (with ``level`` >= 1): the level model's map of each class's group, alone (a diagnostic).

    Example:
        >>> Variant("level", 2).name, Variant.from_name("full").fused
        ('level_2', True)
    """

    kind: VariantKind
    level: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in get_args(VariantKind):
            raise ValueError(f"`kind` must be one of {get_args(VariantKind)}, got {self.kind!r}")
        if self.kind == "level":
            if isinstance(self.level, bool) or not isinstance(self.level, int) or self.level < 1:
                raise ValueError(f"a `level` variant needs `level` >= 1, got {self.level!r}")
        elif self.level is not None:
            raise ValueError(f"only a `level` variant has a level, got {self.kind!r} with {self.level!r}")

    @property
    def name(self) -> str:
        """``kind``, or ``"level_<l>"``."""
        return f"level_{self.level}" if self.kind == "level" else self.kind

    @property
    def fused(self) -> bool:
        """Whether the maps are fused with Eq. 6."""
        return self.kind in ("grouping", "heads", "full", "full_tuned", "shuffled")

    @property
    def description(self) -> str:
        """What the row is, in words (the report's first column)."""
        return f"level {self.level} model alone" if self.kind == "level" else _DESCRIPTIONS[self.kind]

    @classmethod
    def from_name(cls, name: str) -> Variant:
        """The variant written as ``name``.

        Raises:
            ValueError: ``name`` is not a variant name.
        """
        match = _LEVEL_NAME.fullmatch(name) if isinstance(name, str) else None
        if match is not None:
            return cls("level", int(match[1]))
        if name == "level" or name not in get_args(VariantKind):
            raise ValueError(f"{name!r} is not a variant name ({', '.join(_DESCRIPTIONS)} or 'level_<n>')")
        return cls(name)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- content keys
#: Config fields added after models were first cached: left out of the keys while at their defaults, so that
#: the models and maps of earlier runs stay valid.
_ADDED_FIELDS: dict[type[Any], tuple[str, ...]] = {
    DataConfig: (
        "min_box_area",
        "background_classes",
        "input_norm",
        "min_pixels",
        "min_fraction",
        "eval_image_size",
    ),
    ModelConfig: ("weights", "freeze_batchnorm"),
}

#: Layout of the map caches (``ExtractedMaps.to_tensors``); part of their key.
_MAPS_LAYOUT = 2


def section_key(section: DataConfig | ModelConfig) -> dict[str, Any]:
    """A config section as a cache key: every field, but added ones only when they differ from the default.

    Example:
        >>> "input_norm" in section_key(DataConfig())
        False
        >>> section_key(DataConfig(input_norm="tanh"))["input_norm"]
        'tanh'
    """
    values = dataclasses.asdict(section)
    defaults = {f.name: f.default for f in dataclasses.fields(section)}
    for name in _ADDED_FIELDS[type(section)]:
        if values[name] == defaults[name]:
            del values[name]
    return values


def data_key(config: PipelineConfig) -> dict[str, Any]:
    """The config entries that fix the data (and the input scaling): the seed and the ``data`` section.

    Example:
        >>> sorted(data_key(PipelineConfig()))
        ['data', 'seed']
    """
    return {"seed": config.seed, "data": section_key(config.data)}


def model_key(config: PipelineConfig, identity: ModelKey, parts: Mapping[str, Any]) -> str:
    """The content key of a trained model: its data, backbone, training settings, name and ``parts``.

    ``parts`` holds what else the model depends on: its kind of training (``{"kind": "single"}``), the
    hierarchy's key for a level model, the loss settings of a two-branch model.

    Example:
        >>> key = model_key(PipelineConfig(), ModelKey("base"), {"kind": "single"})
        >>> len(key), key == model_key(PipelineConfig(seed=1), ModelKey("base"), {"kind": "single"})
        (64, False)
    """
    return digest(
        {
            **parts,
            **data_key(config),
            "model": section_key(config.model),
            "train": dataclasses.asdict(config.train),
            "name": identity.name,
            "level": identity.level,
        }
    )


def hierarchy_key(config: PipelineConfig, base_key: str, file_hierarchy: Mapping[str, Any] | None) -> str:
    """The content key of the grouping stage's hierarchy.

    Args:
        config: the run's config (the ``method`` entries of the grouping, the seed).
        base_key: the base classifier's content key (whose class vectors are grouped).
        file_hierarchy: with ``method.grouping_source = "file"``, the file's hierarchy (``to_dict()``).

    Example:
        >>> hierarchy_key(PipelineConfig(), "abc", None) != hierarchy_key(PipelineConfig(), "abd", None)
        True
    """
    method = config.method
    parts: dict[str, Any] = {
        "base": base_key,
        "levels": method.levels,
        "normalize": method.grouping_unit_norm,
        "weighted": method.grouping_weighted,
        "max_group_presence": method.max_group_presence,
        "seed": config.seed,
    }
    if method.max_class_presence is not None:  # left out when unset: hierarchies of earlier runs stay valid
        parts["max_class_presence"] = method.max_class_presence
    if method.max_group_presence is not None:  # saturated groups are split before levels are dropped
        parts["saturated_groups"] = "split"
    if method.grouping_source != "fc":  # left out for "fc": hierarchies of earlier runs stay valid
        parts["grouping_source"] = method.grouping_source
        if file_hierarchy is not None:
            parts["hierarchy_file"] = dict(file_hierarchy)
    return digest(parts)


def maps_key(
    config: PipelineConfig,
    model_keys: Mapping[str, str],
    split: str,
    scales: tuple[float, ...] | None,
) -> str:
    """The content key of the extracted maps of ``split``.

    Args:
        config: the run's config (its data, ``method.flip``, ``method.softmax_over_labels``).
        model_keys: every extracted model's name and content key.
        split: ``"train"``, ``"val"`` or ``"test"``.
        scales: the scales of multi-scale aggregation, ``None`` for the plain pass.

    Example:
        >>> config = PipelineConfig()
        >>> maps_key(config, {"base": "abc"}, "val", None) == maps_key(config, {"base": "abc"}, "val", (1.0,))
        False
    """
    parts: dict[str, Any] = {
        "models": dict(model_keys),
        "data": data_key(config),
        "split": split,
        "layout": _MAPS_LAYOUT,  # caches of an older layout are not read, but redone
    }
    if scales is not None:  # left out when unset: the map caches of earlier runs stay valid
        parts["multiscale"] = {"scales": list(scales), "flip": config.method.flip, "size": "largest"}
    if config.method.softmax_over_labels:
        parts["softmax_over_labels"] = True
    return digest(parts)
