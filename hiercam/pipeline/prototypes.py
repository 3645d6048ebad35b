"""The prototype row: LPCAM maps of the base classifier (``method.prototype_context``).

LPCAM (Chen & Sun, CVPR 2023, [`PrototypeCAM`][hiercam.PrototypeCAM]) clusters the base classifier's local
features of the training split into class prototypes (where the class's max-normalised Grad-CAM exceeds
``foreground_threshold``) and context prototypes (the rest of the class's images); a class's map is
``ReLU(mean cos(x, class prototypes) - mean cos(x, context set))``. The context set is the class's own
context prototypes (``"own"``, as published), plus the class prototypes of its level-1 siblings in the
hierarchy (``"siblings"``) or of every other class (``"others"``). The settings are LPCAM's for PASCAL VOC
(its public code), used unchanged: nothing is tuned.

The prototypes (cached per base model and data) and the maps of each split (cached per context) are stored
beside the Grad-CAMs, under content keys.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hiercam.cam import GradCAM, PrototypeCAM, prototype_cam, sibling_classes
from hiercam.hierarchy import ClassHierarchy
from hiercam.maps import normalize_maps
from hiercam.pipeline.artifacts import digest, load_tensors, read_marker, save_tensors, write_marker
from hiercam.pipeline.context import RunContext
from hiercam.pipeline.keys import data_key
from hiercam.pipeline.stages import TrainedModel

__all__ = ["PROTOTYPE_OPTIONS", "Prototypes", "fit_prototypes", "prototype_context", "prototype_maps"]

#: LPCAM's settings for PASCAL VOC (its public code); ``max_points`` bounds the K-means cost per class/set.
PROTOTYPE_OPTIONS: dict[str, Any] = {"num_clusters": 12, "foreground_threshold": 0.1, "max_points": 20000}

#: Images per batch of feature and Grad-CAM extraction.
_BATCH = 64


@dataclass(frozen=True)
class Prototypes:
    """LPCAM's prototypes of one model.

    Attributes:
        own: ``K`` tensors ``(N_k, C)``: the class prototypes of each class (float32, on the CPU).
        context: ``K`` tensors ``(M_k, C)``: the context prototypes of each class.
    """

    own: list[Tensor]
    context: list[Tensor]


def _parts(model: nn.Module) -> tuple[Callable[[Tensor], Tensor], nn.Linear]:
    """The model's ``forward_features`` and its linear ``classifier`` (what LPCAM reads)."""
    forward, classifier = getattr(model, "forward_features", None), getattr(model, "classifier", None)
    if not callable(forward) or not isinstance(classifier, nn.Linear):
        raise TypeError(
            f"prototype CAMs need a single-branch classifier with `forward_features` and a linear "
            f"`classifier`, got {type(model).__name__}"
        )
    return forward, classifier


def fit_prototypes(ctx: RunContext, base: TrainedModel) -> Prototypes:
    """The base classifier's LPCAM prototypes from the training split (cached).

    The features are ``base.model.forward_features``; the maps its plain Grad-CAMs at the feature resolution,
    max-normalised; K-means with ``PROTOTYPE_OPTIONS`` and ``seed`` = the run's seed.
    """
    options = {**PROTOTYPE_OPTIONS, "seed": ctx.config.seed}
    parts = {"base": base.content_key, "options": options, "data": data_key(ctx.config), "what": "prototypes"}
    key = digest(parts)
    folder = ctx.maps_dir
    path, marker_path = folder / f"prototypes-{key[:16]}.pt", folder / f"prototypes-{key[:16]}.json"
    if not ctx.force and read_marker(marker_path, key) is not None and path.is_file():
        stored = load_tensors(path)
        count = sum(name.startswith("own/") for name in stored)
        return Prototypes(
            [stored[f"own/{k}"] for k in range(count)], [stored[f"context/{k}"] for k in range(count)]
        )
    started = time.perf_counter()
    forward, classifier = _parts(base.model)
    cam = PrototypeCAM(
        classifier.weight.detach(),
        classifier_bias=None if classifier.bias is None else classifier.bias.detach(),
        **options,
    )
    extractor = GradCAM(base.model)
    train = ctx.data("train")
    try:
        with ctx.step_progress(
            len(train), "LPCAM prototypes: maps and features (train)", "images"
        ) as progress:
            for _, images, labels, *_ in train.batches(_BATCH):
                images = images.to(ctx.device)
                maps = normalize_maps(extractor(images, size="feature", normalize=None).float())
                with torch.inference_mode():
                    features = forward(images).float()
                cam.update(features, maps, labels)
                progress.update(len(images))
    finally:
        extractor.remove()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cam.cluster()
    for warning in caught:
        ctx.log(f"  prototypes: {warning.message}")
    own = [p.to(torch.float32) for p in cam.class_prototypes_ or []]
    context = [p.to(torch.float32) for p in cam.context_prototypes_ or []]
    ctx.timings["prototypes"] = time.perf_counter() - started
    ctx.log(f"  prototypes of the base classifier clustered in {ctx.timings['prototypes']:.0f} s")
    if ctx.dist.is_main:
        flat = {f"own/{k}": p for k, p in enumerate(own)} | {f"context/{k}": p for k, p in enumerate(context)}
        save_tensors(path, flat)
        write_marker(marker_path, key, {})
    return Prototypes(own, context)


def prototype_context(prototypes: Prototypes, context: str, hierarchy: ClassHierarchy | None) -> list[Tensor]:
    """Each class's context set for ``method.prototype_context`` = ``context``.

    ``"own"``: its own context prototypes; ``"siblings"``: with the class prototypes of its level-1 siblings
    in ``hierarchy`` (none without a hierarchy); ``"others"``: with those of every other class.

    Raises:
        ValueError: ``context`` is not ``"own"``, ``"siblings"`` or ``"others"``.
    """
    own = prototypes.own
    if context == "own":
        return list(prototypes.context)
    if context == "others":
        added = [[j for j in range(len(own)) if j != k] for k in range(len(own))]
    elif context == "siblings":
        added = [[] for _ in own] if hierarchy is None else sibling_classes(hierarchy, 1)
    else:
        raise ValueError(f"`context` must be 'own', 'siblings' or 'others', got {context!r}")
    return [torch.cat([prototypes.context[k], *(own[j] for j in added[k])]) for k in range(len(own))]


def prototype_maps(
    ctx: RunContext, base: TrainedModel, hierarchy: ClassHierarchy | None, hierarchy_key: str, split: str
) -> Tensor:
    """``(N, K, h, w)`` float16 LPCAM maps of the base classifier on ``split``, at feature resolution.

    Not normalised (``prototype_cam(..., normalize=None)``): the evaluation upsamples and max-normalises
    them as every other map. Cached in ``cams/prototype-<split>-<key>.pt``, keyed by the base model, the
    options (``method.prototype_context``, ``PROTOTYPE_OPTIONS``, the seed), the hierarchy (for
    ``"siblings"``) and the data.
    """
    context_name = ctx.config.method.prototype_context
    parts = {
        "base": base.content_key,
        "options": {**PROTOTYPE_OPTIONS, "seed": ctx.config.seed, "context": context_name},
        "hierarchy": hierarchy_key if context_name == "siblings" and hierarchy is not None else None,
        "data": data_key(ctx.config),
        "split": split,
    }
    key = digest(parts)
    folder = ctx.maps_dir
    stem = f"prototype-{split}-{key[:16]}"
    path, marker_path = folder / f"{stem}.pt", folder / f"{stem}.json"
    if not ctx.force and read_marker(marker_path, key) is not None and path.is_file():
        maps: Tensor = load_tensors(path)["maps"]
        return maps
    prototypes = fit_prototypes(ctx, base)
    context = prototype_context(prototypes, context_name, hierarchy)
    forward, _ = _parts(base.model)
    pieces = []
    data = ctx.data(split)
    with ctx.step_progress(len(data), f"LPCAM maps ({split})", "images") as progress:
        for _, images, *_ in data.batches(_BATCH):
            with torch.inference_mode():
                features = forward(images.to(ctx.device)).float().cpu()
            pieces.append(prototype_cam(features, prototypes.own, context, normalize=None).to(torch.float16))
            progress.update(len(images))
    result = torch.cat(pieces)
    if ctx.dist.is_main:
        save_tensors(path, {"maps": result})
        write_marker(marker_path, key, {})
    return result
