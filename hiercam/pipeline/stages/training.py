"""Stages 1a and 2: the models of a run (the base classifier, the level models, the controls' models).

Each model is trained with [`fit`][hiercam.fit] and stored under its content key
([`model_key`][hiercam.pipeline.keys.model_key]) in ``ctx.models_dir``; a model whose key matches a completed
one is loaded instead of trained, and training resumes from the last completed epoch after an interruption.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import Dataset

from hiercam.grouping import SubCategories, shuffled_hierarchy
from hiercam.hierarchy import ClassHierarchy
from hiercam.losses import LevelHeadsLoss, SubCategoryLoss, TwoBranchLoss
from hiercam.models import LevelHeadsNet, SubCategoryNet
from hiercam.pipeline.artifacts import digest, load_tensors, read_marker, save_tensors, write_marker
from hiercam.pipeline.config import PipelineConfig
from hiercam.pipeline.context import RunContext
from hiercam.pipeline.data import class_names, train_loader
from hiercam.pipeline.keys import ModelKey, ModelKind, model_key
from hiercam.pipeline.networks import backbone_factory, build_classifier, build_two_branch
from hiercam.training import fit, load_checkpoint

__all__ = [
    "TrainedModel",
    "train_base",
    "train_ensemble",
    "ensemble_size",
    "train_levels",
    "train_level_models",
    "train_level_heads",
    "train_subcategory_model",
    "shuffled_control_hierarchy",
    "train_shuffled_levels",
]


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
    extra_targets: tuple[Tensor, Tensor] | None = None,
) -> TrainedModel:
    """Train one model with [`fit`][hiercam.fit], or load it when a completed run with the same key exists.

    ``shuffle_seed`` seeds the sample order and the training's random state (default: the run's ``seed``).
    ``extra_targets`` (``(N_train, S)``, ``(N_val, S)``) are appended to every sample's labels, by index.
    """
    config = ctx.config
    name, level = identity.name, identity.level
    seed = config.seed if shuffle_seed is None else shuffle_seed
    key = model_key(config, identity, key_parts)
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
    if extra_targets is not None:
        training_set = _WithTargets(training_set, extra_targets[0])
        validation_set = _WithTargets(validation_set, extra_targets[1])
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
        heads = train_level_heads(ctx, hierarchy, hierarchy_key)
        return {heads.identity: heads}
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
    base classifier's recipe: the hierarchy at the training cost of one model. Named
    ``ModelKey("level_heads")`` (``hierarchy_key`` tells the run's hierarchy from a shuffled one).
    """
    config = ctx.config
    with torch.random.fork_rng():
        torch.manual_seed(_model_seed(config, 40))
        features = backbone_factory(config.model, config.data.input_norm)()
        net = LevelHeadsNet(features, hierarchy)
    key = {"kind": "level_heads", "hierarchy": hierarchy_key}
    return _train(ctx, ModelKey("level_heads"), net, key, loss=LevelHeadsLoss(hierarchy), hierarchy=hierarchy)


def train_subcategory_model(
    ctx: RunContext, subcategories: SubCategories, targets: tuple[Tensor, Tensor], key: str, *, shuffled: bool
) -> TrainedModel:
    """One [`SubCategoryNet`][hiercam.models.SubCategoryNet]: the classes and their sub-categories (SC-CAM).

    Trained on the base classifier's recipe with [`SubCategoryLoss`][hiercam.losses.SubCategoryLoss]
    (weight ``method.subcategory_weight``, SC-CAM's 5 by default), on the class labels followed by
    ``targets`` (the training and validation images' ``SubCategories.targets``, in split order): the
    training cost of one model. ``key`` identifies the targets in the cache key; ``shuffled`` names the
    model ``ModelKey("shuffled_subcategory")`` (the control whose assignments are permuted) instead of
    ``ModelKey("subcategory")``.
    """
    config = ctx.config
    with torch.random.fork_rng():
        torch.manual_seed(_model_seed(config, 50))
        features = backbone_factory(config.model, config.data.input_norm)()
        net = SubCategoryNet(features, subcategories.num_classes, subcategories.num_subcategories)
    identity = ModelKey("shuffled_subcategory" if shuffled else "subcategory")
    return _train(
        ctx,
        identity,
        net,
        {"kind": "subcategory", "targets": key, "weight": float(config.method.subcategory_weight)},
        loss=SubCategoryLoss(subcategories.num_classes, weight=config.method.subcategory_weight),
        extra_targets=targets,
    )


class _WithTargets(Dataset[dict[str, Tensor]]):
    """Another dataset's samples with ``extra[index]`` appended to their labels."""

    def __init__(self, dataset: Dataset[Any], extra: Tensor) -> None:
        if len(dataset) != len(extra):  # type: ignore[arg-type]
            raise ValueError(f"{len(extra)} rows of targets for {len(dataset)} samples")  # type: ignore[arg-type]
        self.dataset, self.extra = dataset, extra.float().cpu()

    def __len__(self) -> int:
        return len(self.extra)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = self.dataset[index]
        labels = torch.cat([sample["labels"].float(), self.extra[index]])
        return {"image": sample["image"], "labels": labels}


def shuffled_control_hierarchy(
    config: PipelineConfig, hierarchy: ClassHierarchy | None
) -> ClassHierarchy | None:
    """The hierarchy of the shuffled control: ``shuffled_hierarchy(hierarchy, seed=config.seed)``.

    ``None`` when ``config.shuffled_control`` is off or there is no hierarchy (the grouping fell back).
    """
    if not config.shuffled_control or hierarchy is None:
        return None
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
        return _renamed(train_level_models(ctx, shuffled, key), "shuffled_single")
    models = [
        _train_two_branch_level(ctx, shuffled, level, {"hierarchy": key})
        for level in range(1, shuffled.num_levels)
    ]
    return _renamed(models, "shuffled_two_branch")


def _renamed(models: list[TrainedModel], kind: ModelKind) -> dict[ModelKey, TrainedModel]:
    """``models`` keyed ``ModelKey(kind, level)``: the run's name for them (their cache keys unchanged)."""
    renamed = {}
    for model in models:
        identity = ModelKey(kind, model.identity.level)
        renamed[identity] = dataclasses.replace(model, identity=identity)
    return renamed
