"""Stage 3: the maps of every model on a split, at feature resolution, with their logits.

Grad-CAMs (multi-scale with ``method.multiscale`` / ``method.flip``), the maps of every head of a
level-heads model, and the correlation between a two-branch model's branches. Stored under their content
key ([`maps_key`][hiercam.pipeline.keys.maps_key]) in ``ctx.maps_dir``; under ``torchrun`` every process
extracts its shard of the images and the shards are gathered.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hiercam.cam import GradCAM, MultiScaleCAM, level_heads_maps
from hiercam.hierarchy import ClassHierarchy
from hiercam.pipeline.artifacts import load_tensors, read_marker, save_tensors, write_marker
from hiercam.pipeline.config import PipelineConfig
from hiercam.pipeline.context import RunContext
from hiercam.pipeline.keys import ModelKey, maps_key
from hiercam.pipeline.results import ExtractedMaps, ModelMaps
from hiercam.pipeline.stages.training import TrainedModel, shuffled_control_hierarchy

__all__ = ["extract_maps", "split_level_heads"]


#: Images per extraction batch at the input size.
_EXTRACTION_BATCH = 64


#: The models whose maps are those of every head of a ``LevelHeadsNet`` (``_level_heads_batch``).
_HEADS_KINDS = ("level_heads", "shuffled_level_heads")


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
    scales = _inference_scales(ctx.config)
    softmax_over = ctx.config.method.softmax_over_labels
    key = maps_key(ctx.config, {m.identity.name: m.content_key for m in models.values()}, split, scales)
    folder = ctx.maps_dir
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
    progress = ctx.step_progress(
        len(models) * len(shard), f"maps of {len(models)} models ({split})", "images"
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


def _level_heads_batch(model: nn.Module, images: Tensor, hierarchy: ClassHierarchy) -> tuple[Tensor, Tensor]:
    """A ``LevelHeadsNet``'s maps and level-0 logits of one batch, on the CPU.

    The maps are those of every head at feature resolution, not normalised
    ([`level_heads_maps`][hiercam.cam.level_heads_maps]), concatenated along the channels, level 0 first:
    ``(B, K + N_1 + ... + N_L, h, w)`` float16; the logits are the level-0 head's ``(B, K)`` float32.
    """
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
