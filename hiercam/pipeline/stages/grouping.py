"""Stage 1b: the grouping, from the base classifier's class vectors to the run's class hierarchy.

Hierarchical K-means of the class vectors (or of label co-occurrence, or a hierarchy file), adapted to the
training data: classes and groups present in almost every image are kept out, split or dropped
([`GroupingAdaptation`][hiercam.pipeline.GroupingAdaptation] records what adapted). The hierarchy is stored
in the run directory under its content key ([`hierarchy_key`][hiercam.pipeline.keys.hierarchy_key]).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from hiercam._io import atomic_write_json, atomic_write_text
from hiercam.grouping import HierarchicalKMeans, cooccurrence_embeddings, group_classes
from hiercam.hierarchy import ClassHierarchy, frequent_classes
from hiercam.pipeline.adaptation import GroupingAdaptation
from hiercam.pipeline.artifacts import read_marker, write_marker
from hiercam.pipeline.config import ConfigError, PipelineConfig
from hiercam.pipeline.context import RunContext
from hiercam.pipeline.data import class_names
from hiercam.pipeline.keys import hierarchy_key
from hiercam.pipeline.stages.training import TrainedModel

__all__ = ["build_hierarchy", "load_hierarchy_file"]


def build_hierarchy(ctx: RunContext, base: TrainedModel) -> tuple[ClassHierarchy | None, str]:
    """Stage 1b: class vectors of the base classifier, hierarchical K-means; ``hierarchy.json``.

    With ``method.max_class_presence`` the classes present in more than that fraction of the training
    images are kept out of the grouping (their own group at every level, see
    [`frequent_classes`][hiercam.frequent_classes]); the levels that would have no more groups than there
    are such classes are left out (logged). When that would leave none, every level gets as many more
    groups as there are kept-out classes (the kept-out classes alone, and the groups asked for the others),
    as long as that stays below the number of classes.

    With ``method.max_group_presence`` the saturated groups are split first
    ([`split_saturated_groups`][hiercam.ClassHierarchy.split_saturated_groups]: a group present in more
    than that fraction of the training images is cut into halves of its children, and a level left with
    the groups of the level below is removed), then the levels still saturated (a class alone in more than
    that fraction) are dropped.

    When no group level is left, the run falls back to the baseline: the hierarchy is ``None``, no level
    model is trained, and the method's Eq. 6 rows are the baseline maps. What adapted, and why, is logged
    and set as ``ctx.grouping`` (a [`GroupingAdaptation`][hiercam.pipeline.GroupingAdaptation]).

    Returns the hierarchy (or ``None``) and its key. Also writes ``hierarchy.txt`` (the tree with group sizes,
    or why there is none) and the fraction of training images in which each group is present
    (``hierarchy_presence.json``).
    """
    config, method = ctx.config, ctx.config.method
    from_file = load_hierarchy_file(config) if method.grouping_source == "file" else None
    key = hierarchy_key(config, base.content_key, None if from_file is None else from_file.to_dict())
    path, marker_path = ctx.out / "hierarchy.json", ctx.out / "hierarchy.marker.json"
    ctx.dist.barrier()
    if not ctx.force:
        done = _built_hierarchy(path, marker_path, key)
        if done is not None:
            hierarchy, ctx.grouping = done
            return hierarchy, key
    if not ctx.dist.is_main:  # rank 0 builds it; the others read it
        ctx.dist.barrier()
        done = _built_hierarchy(path, marker_path, key)
        if done is None:
            raise ValueError(f"{marker_path}: rank 0 wrote no hierarchy for this run")
        hierarchy, ctx.grouping = done
        return hierarchy, key
    targets = ctx.data("train").labels
    names = class_names(config)
    if from_file is not None:  # the file's levels and kept-out classes, as they are
        singletons, levels, reason = list(from_file.singletons), from_file.level_sizes[1:], None
    else:
        singletons, levels, reason = _kept_out(
            method.max_class_presence, method.levels, targets, names, ctx.log
        )
    grouping = GroupingAdaptation(
        names,
        method.levels if from_file is None else levels,
        levels,
        tuple(singletons),
        method.max_class_presence,
        method.max_group_presence,
        fallback=reason,
    )
    hierarchy = None
    if levels:
        hierarchy = from_file or _group(ctx, base, levels, names, singletons, targets)
        if method.max_group_presence is not None:
            hierarchy, grouping = _split_and_drop(hierarchy, targets, grouping)
    for note in grouping.saturation_notes():
        ctx.log(f"  {note}")
    if hierarchy is None:
        for stale in (path, ctx.out / "hierarchy_presence.json"):  # of an earlier run in the same folder
            stale.unlink(missing_ok=True)
        atomic_write_text(ctx.out / "hierarchy.txt", f"no group level: {grouping.fallback}\n")
    else:
        hierarchy.save(path)
        presence = {
            str(level): hierarchy.remap_labels(targets, level).float().mean(0).tolist()
            for level in range(1, hierarchy.num_levels)
        }
        atomic_write_text(ctx.out / "hierarchy.txt", str(hierarchy) + "\n")
        atomic_write_json(ctx.out / "hierarchy_presence.json", presence)
    write_marker(marker_path, key, {"grouping": grouping.to_json()})
    ctx.grouping = grouping
    ctx.dist.barrier()
    return hierarchy, key


def _group(
    ctx: RunContext,
    base: TrainedModel,
    levels: tuple[int, ...],
    names: tuple[str, ...],
    singletons: list[int],
    targets: Tensor,
) -> ClassHierarchy:
    """Hierarchical K-means of the class vectors of ``method.grouping_source`` (``"fc"`` or co-occurrence)."""
    config, method = ctx.config, ctx.config.method
    if method.grouping_source == "cooccurrence":
        kmeans = HierarchicalKMeans(levels, singletons=singletons, unit_norm=True, seed=config.seed)
        return kmeans.fit(cooccurrence_embeddings(targets), names)
    return group_classes(
        base.model,
        levels,
        names,
        unit_norm=method.grouping_unit_norm,
        weighted=method.grouping_weighted,
        seed=config.seed,
        singletons=singletons,
    )


def load_hierarchy_file(config: PipelineConfig) -> ClassHierarchy:
    """The hierarchy of ``method.hierarchy_file``, checked against the dataset's classes.

    Raises:
        ConfigError: naming ``method.hierarchy_file``, when it is not set, cannot be read, is not a
            hierarchy JSON, or its class names are not the dataset's (in the dataset's order).
    """
    file = config.method.hierarchy_file
    if file is None:
        raise ConfigError("`method.hierarchy_file` is not set (`method.grouping_source` 'file' needs it)")
    try:
        hierarchy = ClassHierarchy.load(file)
    except (OSError, ValueError) as error:
        raise ConfigError(f"`method.hierarchy_file`: unreadable {file!r}: {error}") from None
    names = class_names(config)
    if hierarchy.class_names != names:
        raise ConfigError(
            f"`method.hierarchy_file` {file!r} holds the classes {list(hierarchy.class_names)}, but the "
            f"dataset's classes are {list(names)}"
        )
    if hierarchy.num_levels < 2:
        raise ConfigError(f"`method.hierarchy_file` {file!r} has no group level (only the classes)")
    return hierarchy


def _built_hierarchy(
    path: Path, marker_path: Path, key: str
) -> tuple[ClassHierarchy | None, GroupingAdaptation] | None:
    """The hierarchy and its record of a completed stage with ``key``; ``None`` when it is to be built.

    Markers of versions that did not record the adaptation are redone (the grouping is cheap).
    """
    marker = read_marker(marker_path, key)
    if marker is None or not isinstance(marker.get("grouping"), dict):
        return None
    try:
        grouping = GroupingAdaptation.from_json(marker["grouping"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{marker_path}: the step marker's `grouping` is damaged ({error}); delete it to redo the step"
        ) from None
    if grouping.fallback is not None:
        return None, grouping
    if not path.is_file():
        return None
    return ClassHierarchy.load(path), grouping


def _split_and_drop(
    hierarchy: ClassHierarchy, labels: Tensor, grouping: GroupingAdaptation
) -> tuple[ClassHierarchy | None, GroupingAdaptation]:
    """Split the saturated groups, then drop the levels still saturated (``method.max_group_presence``)."""
    limit = grouping.max_group_presence
    if limit is None:
        return hierarchy, grouping
    result = hierarchy.saturated_splits(labels, limit)
    grouping = dataclasses.replace(grouping, splits=result.splits, removed_levels=result.removed_levels)
    if result.hierarchy is None:
        reason = (
            f"once the groups present in more than {limit:.0%} of the training images were split, every "
            "level held the same groups as the level below it (every class alone)"
        )
        return None, dataclasses.replace(grouping, fallback=reason)
    survivors = [level for level in range(1, hierarchy.num_levels) if level not in result.removed_levels]
    try:
        kept = result.hierarchy.drop_saturated_levels(labels, limit)
    except ValueError:  # every level saturated by a class alone (labels were checked by the split)
        names, alone = hierarchy.class_names, set(hierarchy.singletons)
        frequent = [names[c] for c in frequent_classes(labels, limit) if c not in alone]
        one = len(frequent) == 1
        reason = f"after splitting, every level still has a group present in more than {limit:.0%} of the "
        reason += "training images" + (
            f": {', '.join(map(repr, frequent))} alone {'is' if one else 'are'} in more than {limit:.0%} of "
            f"them; keep {'it' if one else 'them'} out of the grouping with `method.max_class_presence`"
            if frequent
            else ""
        )
        return None, dataclasses.replace(grouping, dropped_levels=tuple(survivors), fallback=reason)
    dropped = tuple(
        level
        for new, level in enumerate(survivors, start=1)
        if result.hierarchy.num_groups(new) not in kept.level_sizes
    )
    return kept, dataclasses.replace(grouping, dropped_levels=dropped)


def _kept_out(
    limit: float | None,
    levels: tuple[int, ...],
    labels: Tensor,
    names: tuple[str, ...],
    log: Callable[[str], None],
) -> tuple[list[int], tuple[int, ...], str | None]:
    """The classes kept out of the grouping (``method.max_class_presence``), the levels, and why none is left.

    A level needs more groups than the kept-out classes. When no level of ``levels`` has, each gets as many
    more groups as there are kept-out classes (below the number of classes): the kept-out classes alone
    beside the groups asked for the others. The third value is ``None``, or why no level is possible.
    """
    if limit is None:
        return [], levels, None
    singletons = frequent_classes(labels, limit)
    if not singletons:
        return [], levels, None
    count = len(singletons)
    kept = tuple(n for n in levels if n > count)
    shown = ", ".join(f"{names[c]} ({float(labels[:, c].float().mean()):.0%})" for c in singletons)
    log(f"  kept out of the grouping (in more than {limit:.0%} of the training images): {shown}")
    if not kept:
        kept = tuple(n + count for n in levels if n + count < len(names))
        if not kept:
            others = len(names) - count
            return (
                singletons,
                (),
                f"`method.max_class_presence` = {limit} keeps {count} of the {len(names)} classes out of the "
                f"grouping, which leaves {others} {'class' if others == 1 else 'classes'} to group: too few "
                f"for any level of `method.levels` {list(levels)} beside them",
            )
        log(
            f"  levels {list(levels)} -> {list(kept)}: every level had no more groups than the {count} "
            f"kept-out classes; each gets {count} more (the kept-out classes alone, and the groups asked for "
            "the others)"
        )
    elif kept != levels:
        log(f"  levels {list(levels)} -> {list(kept)}: a level needs more groups than the kept-out classes")
    return singletons, kept, None
