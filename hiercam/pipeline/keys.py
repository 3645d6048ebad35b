"""Who is who in a run: a model's key and an ablation row's variant.

[`ModelKey`][hiercam.pipeline.ModelKey] names a model, [`Variant`][hiercam.pipeline.Variant] an evaluated map.
Names such as ``"two_branch_L1"`` and ``"level_2"`` exist only in files and tables; ``from_name`` reads them
back and refuses anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["ModelKind", "ModelKey", "VariantKind", "Variant"]

ModelKind = Literal[
    "base",
    "ensemble",
    "two_branch",
    "single",
    "shuffled_two_branch",
    "shuffled_single",
    "level_heads",
    "shuffled_level_heads",
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
    "level",
]

#: The models named by their kind alone (level 0: the base classifier, its ensemble partners, and the
#: level-heads nets, whose level-0 head classifies the ``K`` classes).
_LEVEL_ZERO_KINDS = ("base", "ensemble", "level_heads", "shuffled_level_heads")

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
            level of the hierarchy, or of the shuffled one: ``method.level_heads``).
        level: hierarchy level whose groups the model classifies (0: the classes; always 0 for ``"base"``,
            ``"ensemble"`` and the level-heads kinds, whose logits in a run are their level-0 head's).
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
                "'single_L<n>', 'shuffled_two_branch_L<n>', 'shuffled_single_L<n>', 'level_heads' or "
                "'shuffled_level_heads')"
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
