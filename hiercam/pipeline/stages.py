"""The pipeline's stages: base classifier and hierarchy, level models, CAMs, evaluation.

Each stage reads what earlier stages wrote to the run directory and writes its own outputs there; a stage (or
one model of a stage) whose inputs and config did not change since it last completed is skipped
(``hiercam.pipeline.artifacts``). Training resumes from the last completed epoch after an interruption.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from hiercam._progress import Progress, is_terminal, print_line
from hiercam.cam import GradCAM, MultiScaleCAM
from hiercam.grouping import group_classes
from hiercam.hierarchy import ClassHierarchy, frequent_classes
from hiercam.losses import TwoBranchLoss
from hiercam.pipeline.adaptation import GroupingAdaptation
from hiercam.pipeline.artifacts import digest, load_tensors, read_marker, save_tensors, write_marker
from hiercam.pipeline.config import ConfigError, DataConfig, ModelConfig, PipelineConfig
from hiercam.pipeline.data import Split, class_names, load_split, train_loader
from hiercam.pipeline.distributed import Distributed
from hiercam.pipeline.keys import ModelKey, ModelKind
from hiercam.pipeline.networks import backbone_factory, build_classifier, build_two_branch
from hiercam.pipeline.results import ExtractedMaps, ModelMaps
from hiercam.training import fit

__all__ = [
    "EVAL_SPLITS",
    "RunContext",
    "TrainedModel",
    "train_base",
    "train_ensemble",
    "build_hierarchy",
    "load_hierarchy_file",
    "shuffled_control_hierarchy",
    "train_shuffled_levels",
    "ensemble_size",
    "train_levels",
    "train_level_models",
    "train_level_heads",
    "extract_maps",
    "split_level_heads",
]

EVAL_SPLITS = ("val", "test")

#: Layout of the map caches (``ExtractedMaps.to_tensors``); part of their key.
_MAPS_LAYOUT = 2


@dataclass
class RunContext:
    """What every stage needs: the config, the run directory, options, and the data (loaded once).

    ``cache`` is a folder shared by several runs (e.g. a hyper-parameter sweep): models and CAMs are stored
    there under their content keys, so runs that need the same model train it once. ``grouping`` is set by
    ``build_hierarchy``: how the grouping adapted (the run's result records it).
    """

    config: PipelineConfig
    out: Path
    force: bool = False
    progress: bool = True
    log: Callable[[str], None] = print_line
    cache: Path | None = None
    dist: Distributed = field(default_factory=Distributed.current)
    timings: dict[str, float] = field(default_factory=dict)
    grouping: GroupingAdaptation | None = None
    _data: dict[str, Split] = field(default_factory=dict)

    @property
    def models_dir(self) -> Path:
        """Where trained models are kept: ``<cache>/models`` with a shared cache, else ``<out>/models``."""
        return (self.cache if self.cache is not None else self.out) / "models"

    @property
    def device(self) -> torch.device:
        """The device to train and extract on: ``"auto"`` is CUDA when available.

        Under ``torchrun`` with CUDA, each process takes its own GPU, ``cuda:<LOCAL_RANK>``.
        """
        name = self.config.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cuda" and self.dist.world > 1:
            name = f"cuda:{self.dist.local_rank}"
        return torch.device(name)

    def data(self, split: str) -> Split:
        """One split, drawn or read on first use."""
        if split not in self._data:
            start = time.perf_counter()
            self._data[split] = load_split(self.config, split)
            self.timings[f"data_{split}"] = time.perf_counter() - start
        return self._data[split]

    def data_key(self) -> dict[str, Any]:
        """The config entries that fix the data (and the input scaling)."""
        return {"seed": self.config.seed, "data": section_key(self.config.data)}


#: Config fields added after models were first cached: left out of the keys while at their defaults, so that
#: the models and maps of earlier runs stay valid.
_ADDED_FIELDS: dict[type[Any], tuple[str, ...]] = {
    DataConfig: ("min_box_area", "background_classes", "input_norm"),
    ModelConfig: ("weights", "freeze_batchnorm"),
}


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


@dataclass
class TrainedModel:
    """A trained model and what identifies it.

    Attributes:
        identity: which model of the run (kind and level).
        model: the trained network, in eval mode on the run's device.
        content_key: SHA-256 of everything it was trained from (its cache key).
        history: one record per epoch (see [`History`][hiercam.History]).
    """

    identity: ModelKey
    model: nn.Module
    content_key: str
    history: list[dict[str, float]]


def _train(
    ctx: RunContext,
    identity: ModelKey,
    model: nn.Module,
    key_parts: dict[str, Any],
    *,
    loss: Callable[..., Any] | None = None,
    hierarchy: ClassHierarchy | None = None,
    shuffle_seed: int | None = None,
) -> TrainedModel:
    """Train one model with [`fit`][hiercam.fit], or load it when a completed run with the same key exists.

    ``shuffle_seed`` seeds the sample order and the training's random state (default: the run's ``seed``).
    """
    config = ctx.config
    name, level = identity.name, identity.level
    seed = config.seed if shuffle_seed is None else shuffle_seed
    key = digest(
        {
            **key_parts,
            **ctx.data_key(),
            "model": section_key(config.model),
            "train": dataclasses.asdict(config.train),
            "name": name,
            "level": level,
        }
    )
    folder = ctx.models_dir
    stem = f"{name}-{key[:16]}"  # content-addressed: runs that share a model (same key) share the file
    weights, marker_path = folder / f"{stem}.pt", folder / f"{stem}.json"
    ctx.dist.barrier()  # what rank 0 wrote before is visible to every process
    marker = None if ctx.force else read_marker(marker_path, key)
    if marker is not None and weights.is_file():
        try:
            model.load_state_dict(load_tensors(weights))
        except RuntimeError as error:  # a state dict of another model
            raise ValueError(
                f"{weights}: does not fit the {name} model ({error}); delete it to retrain"
            ) from None
        ctx.log(f"  {name}: up to date, loaded")
        history = marker.get("history")
        if not isinstance(history, list):
            raise ValueError(
                f"{marker_path}: the model marker has no `history` list; delete the file to retrain"
            )
        return TrainedModel(identity, model.to(ctx.device).eval(), key, history)
    if ctx.dist.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / f"{stem}.ckpt"
    if checkpoint.is_file():  # fit resumes from it: check it first, to name the file if it is damaged
        _check_resume_file(checkpoint)
    transform = (
        None if level == 0 or hierarchy is None else functools.partial(hierarchy.remap_labels, level=level)
    )
    ctx.log(f"  {name}: training {config.train.epochs} epochs on {len(ctx.data('train'))} images")
    start = time.perf_counter()
    model.to(ctx.device)
    cuda = ctx.device.type == "cuda"
    if config.train.channels_last and cuda:
        model.to(memory_format=torch.channels_last)  # convolutions then run channels-last
    trainee: nn.Module = model
    if ctx.dist.world > 1:
        # batch statistics over the global batch, as on one device (SyncBatchNorm needs CUDA); frozen
        # BatchNorm layers use their stored statistics and stay as they are
        if cuda and not config.model.freeze_batchnorm:
            trainee = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        trainee = nn.parallel.DistributedDataParallel(
            trainee, device_ids=[ctx.device.index] if cuda else None
        )
    train, workers = config.train, config.data.num_workers
    optimizer = torch.optim.Adam(trainee.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    scheduler = None
    if train.scheduler == "plateau":
        scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=train.patience)
    training_set = ctx.data("train").training_set(augment=True)
    validation_set = ctx.data("val").training_set(augment=False)
    history = fit(
        trainee,
        train_loader(training_set, train.batch_size, seed, ctx.dist, num_workers=workers),
        epochs=train.epochs,
        loss=loss,
        optimizer=optimizer,
        val_loader=train_loader(
            validation_set,
            max(train.batch_size, 64),
            config.seed,
            ctx.dist,
            shuffle=False,
            num_workers=workers,
        ),
        scheduler=scheduler,
        device=ctx.device,
        amp=train.amp,
        amp_dtype=torch.bfloat16 if train.amp_dtype == "bfloat16" else torch.float16,
        checkpoint=checkpoint,
        progress=ctx.progress,
        labels_transform=transform,
        seed=seed,
    )
    ctx.timings[f"train_{name}"] = time.perf_counter() - start
    if ctx.dist.is_main:
        save_tensors(weights, {k: v.detach().cpu() for k, v in model.state_dict().items()})
        write_marker(marker_path, key, {"history": history.records})
        checkpoint.unlink(missing_ok=True)
    ctx.dist.barrier()
    ctx.log(f"  {name}: val mAP {history['val_map'][-1]:.3f}")
    return TrainedModel(identity, model.eval(), key, history.records)


def _check_resume_file(path: Path) -> None:
    """A training checkpoint left by an interrupted run must be one ``fit`` can resume from."""
    from hiercam._checkpoint import load_checkpoint

    try:
        load_checkpoint(path)
    except Exception as error:  # torch raises many types for a damaged file: name the file
        raise ValueError(
            f"{path}: the training checkpoint of an interrupted run cannot be read "
            f"({type(error).__name__}: {error}); delete it to train this model from scratch"
        ) from None


def _model_seed(config: PipelineConfig, index: int) -> int:
    return config.seed * 1000 + index


def train_base(ctx: RunContext) -> TrainedModel:
    """Stage 1a: the single-branch classifier on all ``K`` classes (also the baseline Grad-CAM model)."""
    config = ctx.config
    num_classes = len(class_names(config))
    model = build_classifier(
        config.model, num_classes, _model_seed(config, 0), input_norm=config.data.input_norm
    )
    return _train(ctx, ModelKey("base"), model, {"kind": "single"})


def train_ensemble(ctx: RunContext, index: int = 1) -> TrainedModel:
    """An ensemble control's member: the base classifier's recipe, trained independently.

    Another initialisation seed and another sample order (its own shuffle seed): with ``base`` it makes two
    independently trained single-branch models, the same training compute as one two-branch model.
    ``index`` (>= 1) numbers the members beside the base classifier, for controls of more models (member 1
    is the pipeline's ``ensemble`` model).
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 1:
        raise ValueError(f"`index` must be an integer >= 1, got {index!r}")
    config = ctx.config
    num_classes = len(class_names(config))
    seed = _model_seed(config, 1 if index == 1 else 30 + index)
    model = build_classifier(config.model, num_classes, seed, input_norm=config.data.input_norm)
    # trained under the name "ensemble" (the cache key of member 1 and of earlier versions), then numbered
    trained = _train(
        ctx, ModelKey("ensemble"), model, {"kind": "single", "shuffle_seed": seed}, shuffle_seed=seed
    )
    return dataclasses.replace(trained, identity=ModelKey("ensemble", member=index))


def ensemble_size(config: PipelineConfig, hierarchy: ClassHierarchy | None) -> int:
    """The models of the ensemble control, the base classifier included: as many as the method trains.

    With ``method.branches = 1``: the base classifier and one per group level of ``hierarchy``; with
    ``branches = 2``: two (the training compute of one two-branch model, as the paper's control). At least
    two (the grouping may have left no group level). With ``method.level_heads`` the method trains one
    ``LevelHeadsNet`` beside the base classifier (which builds the hierarchy): two, the minimum, so the
    control has the compute of the method, base classifier included.

    Example:
        >>> from hiercam.hierarchy import ClassHierarchy
        >>> h = ClassHierarchy([[0, 0, 1, 1, 2], [0, 0, 0, 0, 1]])
        >>> single = PipelineConfig().replace(method__branches=1)
        >>> ensemble_size(single, h), ensemble_size(PipelineConfig(), h)
        (3, 2)
    """
    if config.method.branches == 2 or config.method.level_heads or hierarchy is None:
        return 2
    return max(2, hierarchy.num_levels)


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
    parts: dict[str, Any] = {
        "base": base.content_key,
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
    from_file = load_hierarchy_file(config) if method.grouping_source == "file" else None
    if method.grouping_source != "fc":  # left out for "fc": hierarchies of earlier runs stay valid
        parts["grouping_source"] = method.grouping_source
        if from_file is not None:
            parts["hierarchy_file"] = from_file.to_dict()
    key = digest(parts)
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
    from hiercam._io import atomic_write_json, atomic_write_text

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
        from hiercam.grouping import HierarchicalKMeans
        from hiercam.grouping_sources import cooccurrence_embeddings

        kmeans = HierarchicalKMeans(levels, singletons=singletons, unit_norm=True, random_state=config.seed)
        return kmeans.fit(cooccurrence_embeddings(targets), names)
    return group_classes(
        base.model,
        levels,
        names,
        unit_norm=method.grouping_unit_norm,
        weighted=method.grouping_weighted,
        random_state=config.seed,
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


def train_levels(
    ctx: RunContext, hierarchy: ClassHierarchy | None, hierarchy_key: str
) -> dict[ModelKey, TrainedModel]:
    """Stage 2: a two-branch model per level (0 = classes), and single-branch level models (ablation).

    With ``method.branches = 1`` no two-branch model is trained: only the single-branch level models, or,
    with ``method.level_heads``, one [`LevelHeadsNet`][hiercam.models.LevelHeadsNet] (``train_level_heads``,
    keyed ``ModelKey("level_heads")``). Without a hierarchy (the grouping left no group level: see
    ``build_hierarchy``) no model is trained.
    """
    if hierarchy is None:
        return {}
    config, method = ctx.config, ctx.config.method
    if method.level_heads:
        return _renamed([train_level_heads(ctx, hierarchy, hierarchy_key)], "level_heads")
    trained: dict[ModelKey, TrainedModel] = {}
    for level in range(hierarchy.num_levels):
        level_key = {"hierarchy": hierarchy_key if level else None}
        if method.branches == 1:
            if level > 0:
                trained.update(_train_single_level(ctx, hierarchy, level, level_key))
            continue
        two_branch = _train_two_branch_level(ctx, hierarchy, level, level_key)
        trained[two_branch.identity] = two_branch
        if config.ablation and level > 0:
            trained.update(_train_single_level(ctx, hierarchy, level, level_key))
    return trained


def _train_two_branch_level(
    ctx: RunContext, hierarchy: ClassHierarchy, level: int, level_key: dict[str, Any]
) -> TrainedModel:
    """The two-branch model of the groups of ``level``, trained with the orthogonal loss."""
    config, method = ctx.config, ctx.config.method
    # DDP averages the processes' gradients: a sum over each process's share of the batch would weigh the
    # orthogonal term by weight / world; weight * world gives exactly the gradient of one process on the
    # whole batch
    weight = method.orthogonal_weight * (ctx.dist.world if method.orthogonal_reduction == "sum" else 1)
    loss_key = {  # the names of the keys of models trained before the config's renames: they stay valid
        "lam": method.orthogonal_weight,
        "reduction": method.orthogonal_reduction,
        "normalize": method.orthogonal_unit_norm,
        "mode": method.orthogonal_mode,
    }
    pair = build_two_branch(
        config.model,
        hierarchy.num_groups(level),
        _model_seed(config, 10 + level),
        input_norm=config.data.input_norm,
    )
    heads = pair.classifier_heads() if method.orthogonal_mode == "cam" else None
    loss = TwoBranchLoss(
        weight=weight,
        reduction=method.orthogonal_reduction,
        unit_norm=method.orthogonal_unit_norm,
        mode=method.orthogonal_mode,
        heads=heads,
    )
    identity = ModelKey("two_branch", level)
    key = {"kind": "two_branch", **loss_key, **level_key}
    return _train(ctx, identity, pair, key, loss=loss, hierarchy=hierarchy)


def shuffled_control_hierarchy(
    config: PipelineConfig, hierarchy: ClassHierarchy | None
) -> ClassHierarchy | None:
    """The hierarchy of the shuffled control: ``shuffled_hierarchy(hierarchy, seed=config.seed)``.

    ``None`` when ``config.shuffled_control`` is off or there is no hierarchy (the grouping fell back).
    """
    if not config.shuffled_control or hierarchy is None:
        return None
    from hiercam.grouping_agreement import shuffled_hierarchy

    return shuffled_hierarchy(hierarchy, seed=config.seed)


def train_shuffled_levels(ctx: RunContext, hierarchy: ClassHierarchy | None) -> dict[ModelKey, TrainedModel]:
    """The shuffled control's level models (``PipelineConfig.shuffled_control``), keyed ``shuffled_*``.

    The method's level models (levels >= 1) trained again on
    ``shuffled_control_hierarchy``: two-branch models
    with ``method.branches = 2``, single-branch ones (``train_level_models``) with ``branches = 1``. Their
    cache keys hold the shuffled hierarchy's digest as ``hierarchy``, so they never meet the real
    hierarchy's models. The level-0 model (the base classifier, or the level-0 two-branch model) does not
    depend on the hierarchy and is shared with the method. With ``method.level_heads`` the control is one
    ``LevelHeadsNet`` trained on the shuffled hierarchy (its own level-0 head included), keyed
    ``ModelKey("shuffled_level_heads")``. Empty when the control is off or there is no hierarchy.
    """
    shuffled = shuffled_control_hierarchy(ctx.config, hierarchy)
    if shuffled is None:
        return {}
    key = digest(shuffled.to_dict())
    if ctx.config.method.level_heads:
        return _renamed([train_level_heads(ctx, shuffled, key)], "shuffled_level_heads")
    if ctx.config.method.branches == 1:
        models = train_level_models(ctx, shuffled, key)
    else:
        models = [
            _train_two_branch_level(ctx, shuffled, level, {"hierarchy": key})
            for level in range(1, shuffled.num_levels)
        ]
    renamed = {}
    for model in models:
        kind: ModelKind = "shuffled_single" if model.identity.kind == "single" else "shuffled_two_branch"
        identity = ModelKey(kind, model.identity.level)
        renamed[identity] = dataclasses.replace(model, identity=identity)
    return renamed


def _renamed(models: list[TrainedModel], kind: ModelKind) -> dict[ModelKey, TrainedModel]:
    """``models`` keyed ``ModelKey(kind, level)``: the run's name for them (their cache keys unchanged)."""
    renamed = {}
    for model in models:
        identity = ModelKey(kind, model.identity.level)
        renamed[identity] = dataclasses.replace(model, identity=identity)
    return renamed


def train_level_models(ctx: RunContext, hierarchy: ClassHierarchy, hierarchy_key: str) -> list[TrainedModel]:
    """A single-branch classifier of the groups of every level >= 1 of ``hierarchy``, in level order.

    ``hierarchy_key`` identifies the hierarchy in the models' cache keys (any hierarchy: the run's own, a
    shuffled control, one from another grouping source).
    """
    return [
        model
        for level in range(1, hierarchy.num_levels)
        for model in _train_single_level(ctx, hierarchy, level, {"hierarchy": hierarchy_key}).values()
    ]


def train_level_heads(ctx: RunContext, hierarchy: ClassHierarchy, hierarchy_key: str) -> TrainedModel:
    """One [`LevelHeadsNet`][hiercam.models.LevelHeadsNet]: each level's classifier as a head of one backbone.

    Trained with [`LevelHeadsLoss`][hiercam.losses.LevelHeadsLoss] (the sum of every level's BCE) on the
    base classifier's recipe: the hierarchy at the training cost of one model.
    """
    from hiercam.losses import LevelHeadsLoss
    from hiercam.models import LevelHeadsNet

    config = ctx.config
    with torch.random.fork_rng():
        torch.manual_seed(_model_seed(config, 40))
        features = backbone_factory(config.model, config.data.input_norm)()
        net = LevelHeadsNet(features, hierarchy)
    identity = ModelKey("single", 0)
    key = {"kind": "level_heads", "hierarchy": hierarchy_key}
    return _train(ctx, identity, net, key, loss=LevelHeadsLoss(hierarchy), hierarchy=hierarchy)


def _train_single_level(
    ctx: RunContext, hierarchy: ClassHierarchy, level: int, level_key: dict[str, Any]
) -> dict[ModelKey, TrainedModel]:
    """The single-branch classifier of the groups of ``level``."""
    config = ctx.config
    identity = ModelKey("single", level)
    single = build_classifier(
        config.model,
        hierarchy.num_groups(level),
        _model_seed(config, 20 + level),
        input_norm=config.data.input_norm,
    )
    return {identity: _train(ctx, identity, single, {"kind": "single", **level_key}, hierarchy=hierarchy)}


def extract_maps(
    ctx: RunContext,
    models: dict[ModelKey, TrainedModel],
    split: str,
    hierarchy: ClassHierarchy | None,
) -> ExtractedMaps:
    """Stage 3: Grad-CAMs of every model for every image of ``split`` at feature resolution, and logits.

    Two-branch models also get the Pearson correlation between their branches' maps of each group. Cached in
    ``cams/<split>-<key>.pt`` (keyed by the models' and the data's keys). Under ``torchrun`` every process
    extracts its shard of the images and the shards are gathered.

    With ``method.multiscale`` (or ``method.flip``) every model's extractor is wrapped in
    [`MultiScaleCAM`][hiercam.MultiScaleCAM] (scales ``method.multiscale``, default ``[1.0]``; mirror images
    with ``method.flip``; raw maps averaged, as IRN): the maps are that average at the feature resolution of
    the largest scale (e.g. 14 x 14 for a 7 x 7 feature map and scale 2: finer than one pass's, as IRN's),
    or of the input size when no scale exceeds 1. The logits and the branch correlation stay those of the
    plain pass at the input size: the refinement changes the maps only.

    With ``method.softmax_over_labels`` every model explains the log-softmax over each image's labelled
    classes (for a level model: its groups in ``hierarchy``, for the shuffled control's level models in the
    shuffled hierarchy; ``None`` when there is no level model).

    A level-heads model (``method.level_heads``: ``level_heads``, ``shuffled_level_heads``) gets the maps of
    all its heads in one pass ([`level_heads_maps`][hiercam.cam.level_heads_maps], for ``hierarchy`` or the
    shuffled control's), concatenated along the channels (``split_level_heads`` splits them), and its
    level-0 head's logits (the config rules refuse ``multiscale``, ``flip`` and ``softmax_over_labels``
    with it).
    """
    parts: dict[str, Any] = {
        "models": {m.identity.name: m.content_key for m in models.values()},
        "data": ctx.data_key(),
        "split": split,
        "layout": _MAPS_LAYOUT,  # caches of an older layout are not read, but redone
    }
    scales = _inference_scales(ctx.config)
    if scales is not None:  # left out when unset: the map caches of earlier runs stay valid
        parts["multiscale"] = {"scales": list(scales), "flip": ctx.config.method.flip, "size": "largest"}
    softmax_over = ctx.config.method.softmax_over_labels
    if softmax_over:
        parts["softmax_over_labels"] = True
    key = digest(parts)
    folder = ctx.models_dir.parent / "cams" if ctx.cache is not None else ctx.out / "cams"
    path, marker_path = folder / f"{split}-{key[:16]}.pt", folder / f"{split}-{key[:16]}.json"
    ctx.dist.barrier()
    if not ctx.force and read_marker(marker_path, key) is not None and path.is_file():
        return ExtractedMaps.from_tensors(load_tensors(path), path)
    data = ctx.data(split)
    shard = ctx.dist.shard(len(data))

    def gather(pieces: list[Tensor]) -> Tensor:
        return ctx.dist.gather_rows(torch.cat(pieces), len(data))

    labels = gather([labels for _, _, labels, _, _ in data.batches(64, shard)])
    batch = _extraction_batch(scales, ctx.config.method.flip)
    shuffled = shuffled_control_hierarchy(ctx.config, hierarchy)
    enlarge = 1.0 if scales is None else max(1.0, *scales)  # maps at the largest scale's feature size
    extracted: dict[ModelKey, ModelMaps] = {}
    progress = Progress(
        len(models) * len(shard),
        f"  maps of {len(models)} models ({split})",
        log=ctx.log,
        unit="images",
        terminal=ctx.progress and ctx.dist.is_main and is_terminal(),
    )
    for identity, trained in models.items():
        if identity.kind in _HEADS_KINDS:
            groups = shuffled if identity.kind == "shuffled_level_heads" else hierarchy
            if groups is None:
                raise ValueError(f"the {identity.name} model needs its hierarchy to extract its maps")
            maps, logits = [], []
            for _, images, *_ in data.batches(_EXTRACTION_BATCH, shard):
                batch_maps, batch_logits = _level_heads_batch(
                    trained.model, images.to(ctx.device, non_blocking=True), groups
                )
                maps.append(batch_maps)
                logits.append(batch_logits)
                progress.update(len(images))
            extracted[identity] = ModelMaps(gather(maps), gather(logits))
            continue
        extractor = GradCAM(trained.model)
        multi = None if scales is None else MultiScaleCAM(extractor, scales, flip=ctx.config.method.flip)
        maps, logits, correlations = [], [], []
        for _, images, image_labels, *_ in data.batches(batch, shard):
            images = images.to(ctx.device, non_blocking=True)
            present = None
            if softmax_over:
                level, present = identity.level, image_labels
                groups = shuffled if identity.kind.startswith("shuffled_") else hierarchy
                if level and groups is not None:
                    present = groups.remap_labels(image_labels, level)
                present = present.to(ctx.device)
            cams = extractor(images, size="feature", normalize=None, softmax_over=present)
            if extractor.logits is not None:
                logits.append(extractor.logits.float().cpu())
            if extractor.branch_maps is not None:
                correlations.append(_branch_correlation(extractor.branch_maps).cpu())
            if multi is not None:  # the plain pass gave the logits, branch maps and feature size
                size = (round(cams.shape[-2] * enlarge), round(cams.shape[-1] * enlarge))
                cams = multi(images, size=size, normalize=None, softmax_over=present)
            maps.append(cams.to("cpu", torch.float16))
            progress.update(len(images))
        extractor.remove()
        extracted[identity] = ModelMaps(
            gather(maps), gather(logits), gather(correlations) if correlations else None
        )
    progress.close()
    result = ExtractedMaps(labels, extracted)
    if ctx.dist.is_main:
        save_tensors(path, result.to_tensors())
        write_marker(marker_path, key, {})
    return result


#: Images per extraction batch at the input size.
_EXTRACTION_BATCH = 64

#: The models whose maps are those of every head of a ``LevelHeadsNet`` (``_level_heads_batch``).
_HEADS_KINDS = ("level_heads", "shuffled_level_heads")


def _level_heads_batch(model: nn.Module, images: Tensor, hierarchy: ClassHierarchy) -> tuple[Tensor, Tensor]:
    """A ``LevelHeadsNet``'s maps and level-0 logits of one batch, on the CPU.

    The maps are those of every head at feature resolution, not normalised
    ([`level_heads_maps`][hiercam.cam.level_heads_maps]), concatenated along the channels, level 0 first:
    ``(B, K + N_1 + ... + N_L, h, w)`` float16; the logits are the level-0 head's ``(B, K)`` float32.
    """
    from hiercam.cam import level_heads_maps

    base, levels = level_heads_maps(model, images, hierarchy, size="feature", normalize=None)
    with torch.no_grad():
        logits = model(images)[0]
    return torch.cat([base, *levels], dim=1).to("cpu", torch.float16), logits.float().cpu()


def split_level_heads(maps: Tensor, hierarchy: ClassHierarchy) -> tuple[Tensor, list[Tensor]]:
    """The ``(B, K + N_1 + ... + N_L, h, w)`` maps of a level-heads model as ``(base, level maps)``.

    ``base`` is ``(B, K, h, w)``; the level maps one ``(B, N_l, h, w)`` tensor per group level, in order
    (``fuse_hierarchy``'s arguments).

    Raises:
        ValueError: ``maps`` does not have ``sum(hierarchy.level_sizes)`` channels.
    """
    sizes = list(hierarchy.level_sizes)
    if maps.ndim != 4 or maps.shape[1] != sum(sizes):
        raise ValueError(
            f"`maps` must have shape (B, {sum(sizes)}, h, w) for levels of sizes {sizes}, got "
            f"{tuple(maps.shape)}"
        )
    base, *levels = maps.split(sizes, dim=1)
    return base, levels


def _extraction_batch(scales: tuple[float, ...] | None, flip: bool) -> int:
    """Images per extraction batch: 64 at the input size, fewer when multi-scale passes are larger.

    A pass at scale ``s`` holds ``s**2`` times the activations (twice with ``flip``: the mirror images run in
    the same batch), and the first batch at each size keeps the autograd graph, so the batch shrinks by that
    factor to keep the peak memory of a plain batch (64 MobileNetV2 images at 448 px with their mirror images
    need about 50 GB). The maps do not depend on the batch size (models are in eval mode).
    """
    if scales is None:
        return _EXTRACTION_BATCH
    factor = max(1.0, max(scales) ** 2) * (2 if flip else 1)
    return max(1, int(_EXTRACTION_BATCH // factor))


def _inference_scales(config: PipelineConfig) -> tuple[float, ...] | None:
    """The scales of multi-scale CAM aggregation, or ``None`` for the plain pass.

    ``method.multiscale``; ``(1.0,)`` when only ``method.flip`` is set.
    """
    method = config.method
    if method.multiscale is None:
        return (1.0,) if method.flip else None
    return method.multiscale


def _branch_correlation(branch_maps: Tensor) -> Tensor:
    """Pearson r between branch 1 and branch 2 maps, per image and class: ``(2, B, K, h, w) -> (B, K)``."""
    first, second = (m.flatten(2) for m in branch_maps.float())
    first = first - first.mean(-1, keepdim=True)
    second = second - second.mean(-1, keepdim=True)
    denominator = first.norm(dim=-1) * second.norm(dim=-1)
    safe = denominator.where(denominator > 0, torch.full_like(denominator, torch.nan))
    correlation: Tensor = (first * second).sum(-1) / safe
    return correlation
