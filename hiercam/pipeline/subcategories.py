"""The sub-category row: SC-CAM's class maps (``method.subcategories``), and its shuffled control.

SC-CAM (Chang et al., CVPR 2020) splits every class into sub-categories by K-means of the pooled image
features of the training images that hold it
([`cluster_subcategories`][hiercam.grouping.cluster_subcategories]) and trains one
[`SubCategoryNet`][hiercam.models.SubCategoryNet] on the classes and the sub-categories
([`SubCategoryLoss`][hiercam.losses.SubCategoryLoss], weight ``method.subcategory_weight``, SC-CAM's 5); the
row's maps are the Grad-CAMs of its class head. The features are those of the **frozen pretrained backbone**
when the model has pretrained weights (no training seed changes them), else those of the trained base
classifier (SC-CAM's own first round). With ``shuffled_control`` the same net is trained again on the
sub-categories permuted over each class's images
([`shuffle_subcategories`][hiercam.grouping.shuffle_subcategories], the same sizes): row
``subcategory_shuffled``.

The pooled features are cached beside the maps, under content keys; the nets are cached as every model.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from hiercam.grouping import SubCategories, cluster_subcategories, shuffle_subcategories
from hiercam.models import Branch, SubCategoryNet
from hiercam.pipeline.artifacts import digest, load_tensors, read_marker, save_tensors, write_marker
from hiercam.pipeline.context import RunContext
from hiercam.pipeline.data import class_names
from hiercam.pipeline.keys import ModelKey, data_key, section_key
from hiercam.pipeline.networks import build_classifier
from hiercam.pipeline.stages import TrainedModel, train_subcategory_model

__all__ = ["pooled_features", "train_subcategories"]

#: Images per batch of feature extraction.
_BATCH = 64


def pooled_features(ctx: RunContext, base: TrainedModel, split: str) -> tuple[Tensor, str]:
    """``(N, C)`` float32 globally pooled feature maps of ``split``'s images, and where they come from.

    The source is ``"pretrained"`` (the frozen backbone of ``model.weights`` / ``model.pretrained``, which
    no training changes) or ``"base"`` (the trained base classifier, for a backbone trained from scratch).
    Cached in ``cams/pooled-<split>-<key>.pt``, keyed by the source and the data.
    """
    model_config = ctx.config.model
    pretrained = model_config.pretrained or model_config.weights is not None
    source = "pretrained" if pretrained else "base"
    parts = {
        "source": section_key(model_config) if pretrained else base.content_key,
        "data": data_key(ctx.config),
        "split": split,
    }
    key = digest(parts)
    stem = f"pooled-{split}-{key[:16]}"
    path, marker_path = ctx.maps_dir / f"{stem}.pt", ctx.maps_dir / f"{stem}.json"
    if not ctx.force and read_marker(marker_path, key) is not None and path.is_file():
        features: Tensor = load_tensors(path)["features"]
        return features, source
    model: Branch | nn.Module
    if pretrained:
        model = build_classifier(
            model_config, len(class_names(ctx.config)), 0, input_norm=ctx.config.data.input_norm
        ).to(ctx.device)
    else:
        model = base.model
    forward = getattr(model, "forward_features", None)
    if not callable(forward):
        raise TypeError(f"the {source} model has no `forward_features`: its pooled features cannot be read")
    was_training = model.training
    model.eval()
    pieces = []
    data = ctx.data(split)
    try:
        with torch.inference_mode():
            for _, images, *_ in data.batches(_BATCH):
                maps = forward(images.to(ctx.device))
                pieces.append(maps.float().mean((2, 3)).cpu())
    finally:
        model.train(was_training)
    features = torch.cat(pieces)
    if ctx.dist.is_main:
        ctx.maps_dir.mkdir(parents=True, exist_ok=True)
        save_tensors(path, {"features": features})
        write_marker(marker_path, key, {})
    return features, source


def train_subcategories(ctx: RunContext, base: TrainedModel) -> dict[ModelKey, TrainedModel]:
    """SC-CAM's net (``ModelKey("subcategory")``) and, with ``shuffled_control``, its control's.

    Each returned model is the net's class head as a plain ``(B, K)`` classifier
    (``SubCategoryNet.classes()``): what the extraction stage explains and scores. Empty when
    ``method.subcategories`` is 0.
    """
    method = ctx.config.method
    if not method.subcategories:
        return {}
    train_features, source = pooled_features(ctx, base, "train")
    val_features, _ = pooled_features(ctx, base, "val")
    train_labels, val_labels = ctx.data("train").labels, ctx.data("val").labels
    subcategories = cluster_subcategories(
        train_features,
        train_labels,
        clusters=method.subcategories,
        min_size=method.subcategory_min_size,
        seed=0,  # the same sub-categories for every seed when the features are a frozen backbone's
    )
    ctx.log(
        f"  sub-categories of the {source} features: {subcategories.num_subcategories} "
        f"(per class {list(subcategories.counts)})"
    )
    real = (
        subcategories.assign(train_features, train_labels),
        subcategories.assign(val_features, val_labels),
    )
    wanted = {False: real}
    if ctx.config.shuffled_control:
        seed = ctx.config.seed
        wanted[True] = (shuffle_subcategories(real[0], seed), shuffle_subcategories(real[1], seed))
    trained = {}
    for shuffled, assignments in wanted.items():
        model = _train(ctx, subcategories, assignments, source, shuffled)
        net = model.model
        if not isinstance(net, SubCategoryNet):  # pragma: no cover - train_subcategory_model builds one
            raise TypeError(f"expected a SubCategoryNet, got {type(net).__name__}")
        trained[model.identity] = dataclasses.replace(model, model=net.classes())
    return trained


def _train(
    ctx: RunContext,
    subcategories: SubCategories,
    assignments: tuple[Tensor, Tensor],
    source: str,
    shuffled: bool,
) -> TrainedModel:
    """One ``SubCategoryNet`` on the class labels and the sub-categories of ``assignments`` (train, val)."""
    key = digest(
        {
            "source": source,
            "train": assignments[0].tolist(),
            "val": assignments[1].tolist(),
            "sizes": list(subcategories.counts),
        }
    )
    targets = (subcategories.targets(assignments[0]), subcategories.targets(assignments[1]))
    return train_subcategory_model(ctx, subcategories, targets, key, shuffled=shuffled)
