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

ModelKind = Literal["base", "ensemble", "two_branch", "single"]
VariantKind = Literal["baseline", "ensemble", "two_branch", "grouping", "full", "full_tuned", "level"]

#: The level-0 single-branch models, named by their kind alone.
_LEVEL_ZERO_KINDS = ("base", "ensemble")

_MODEL_NAME = re.compile(r"(two_branch|single)_L(\d+)")
_LEVEL_NAME = re.compile(r"level_(\d+)")


@dataclass(frozen=True, order=True)
class ModelKey:
    """Which model of a run: the base classifier, its ensemble partner, or a level model.

    Attributes:
        kind: ``"base"`` (single branch on the ``K`` classes), ``"ensemble"`` (a second base classifier
            trained from another seed: the partner of ``base`` in the ensemble control), ``"two_branch"`` or
            ``"single"``.
        level: hierarchy level whose groups the model classifies (0: the classes; always 0 for ``"base"``
            and ``"ensemble"``).

    Example:
        >>> ModelKey("two_branch", 1).name
        'two_branch_L1'
        >>> ModelKey.from_name("single_L2")
        ModelKey(kind='single', level=2)
        >>> ModelKey("ensemble").name
        'ensemble'
    """

    kind: ModelKind
    level: int = 0

    def __post_init__(self) -> None:
        if self.kind not in get_args(ModelKind):
            raise ValueError(f"`kind` must be one of {get_args(ModelKind)}, got {self.kind!r}")
        if isinstance(self.level, bool) or not isinstance(self.level, int) or self.level < 0:
            raise ValueError(f"`level` must be an integer >= 0, got {self.level!r}")
        if self.kind in _LEVEL_ZERO_KINDS and self.level != 0:
            raise ValueError(f"the {self.kind} classifier is a level-0 model, got `level` {self.level}")

    @property
    def name(self) -> str:
        """The model's name in files and tables.

        ``"base"``, ``"ensemble"``, ``"two_branch_L<l>"`` or ``"single_L<l>"``.
        """
        return self.kind if self.kind in _LEVEL_ZERO_KINDS else f"{self.kind}_L{self.level}"

    @classmethod
    def from_name(cls, name: str) -> ModelKey:
        """The key written as ``name`` (see ``ModelKey.name``).

        Raises:
            ValueError: ``name`` is not a model name.
        """
        if name in _LEVEL_ZERO_KINDS:
            return cls(name)  # type: ignore[arg-type]
        match = _MODEL_NAME.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            raise ValueError(
                f"{name!r} is not a model name ('base', 'ensemble', 'two_branch_L<n>' or 'single_L<n>')"
            )
        kind: ModelKind = "two_branch" if match[1] == "two_branch" else "single"
        return cls(kind, int(match[2]))


_DESCRIPTIONS = {
    "baseline": "Grad-CAM baseline (single branch, no grouping)",
    "ensemble": "ensemble control: two single-branch models averaged",
    "two_branch": "+ orthogonal two-branch only",
    "grouping": "+ grouping only",
    "full": "both: two-branch + grouping, Eq. 6",
    "full_tuned": "both, fusion weights chosen on val",
}


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: which maps are scored.

    * ``baseline``: Grad-CAM of the single-branch base classifier;
    * ``ensemble``: the control of the two-branch model at the same training compute: the Grad-CAMs of two
      independently trained single-branch models (``base`` and ``ensemble``, two seeds), averaged with
      [`average_branch_maps`][hiercam.average_branch_maps] as the two branches are;
    * ``two_branch``: the branch average of the level-0 two-branch model (orthogonal loss only);
    * ``grouping``: Eq. 6 over single-branch models (grouping only);
    * ``full``: Eq. 6 over the two-branch models (the paper's method); ``full_tuned``: the same with fusion
      weights chosen on validation data;
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
        return self.kind in ("grouping", "full", "full_tuned")

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
