"""SC-CAM's pieces: sub-category clustering, its shuffled control, the loss and the net, against oracles.

Oracles: scikit-learn's KMeans run on each class's rows by hand, a naive nearest-centre loop, SC-CAM's own
loss (``F.multilabel_soft_margin_loss`` on both heads, its ``train_cls.py``), plain-autograd Grad-CAM and
scikit-learn's average precision.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, average_precision_score
from torch import Tensor, nn

import hiercam
from hiercam import GradCAM, SmallConvNet
from hiercam.grouping import SubCategories, cluster_subcategories, shuffle_subcategories
from hiercam.losses import SubCategoryLoss, SubCategoryLossOutput, subcategory_loss
from hiercam.models import SubCategoryNet
from hiercam.pipeline import PipelineConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(seed: int = 0) -> tuple[Tensor, Tensor]:
    """40 images, 3 classes (class 2 in 6 images), 4-D features with structure inside each class."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(40, 3)
    labels[:24, 0] = 1
    labels[16:34, 1] = 1
    labels[34:, 2] = 1
    centres = torch.randn(6, 4, generator=generator) * 5
    features = centres[torch.arange(40) % 6] + torch.randn(40, 4, generator=generator) * 0.3
    return features, labels


# ------------------------------------------------------------------------------------------- clustering
@pytest.mark.parametrize(("clusters", "min_size"), [(10, 5), (3, 1), (1, 5), (4, 7)])
def test_clusters_are_sklearn_kmeans_of_each_class(clusters: int, min_size: int) -> None:
    features, labels = blobs()
    sub = cluster_subcategories(features, labels, clusters=clusters, min_size=min_size, seed=3)
    counts = [max(1, min(clusters, int(n) // min_size)) for n in labels.sum(0)]
    assert sub.counts == tuple(counts)
    assert sub.parents == tuple(k for k, c in enumerate(counts) for _ in range(c))
    assignments = sub.assign(features, labels)
    offsets = [sum(counts[:k]) for k in range(3)]
    for k in range(3):
        rows = labels[:, k].bool()
        expected = KMeans(n_clusters=counts[k], n_init=10, random_state=3).fit(
            features[rows].double().numpy()
        )
        ours = assignments[rows, k] - offsets[k]
        assert adjusted_rand_score(expected.labels_, ours.numpy()) == pytest.approx(1.0)
        assert ours.min() >= 0
        assert ours.max() < counts[k]
        # numbered by first appearance: the first image of the class is in sub-category 0
        assert int(ours[0]) == 0
    assert bool((assignments[~labels.bool()] == -1).all())


def test_assign_is_the_nearest_centre_of_the_class_naive_loop() -> None:
    features, labels = blobs()
    sub = cluster_subcategories(features, labels, clusters=3, min_size=2, unit_norm=True)
    new_features, new_labels = blobs(seed=1)
    assignments = sub.assign(new_features, new_labels)
    points = F.normalize(new_features, dim=1)
    for n in range(len(points)):
        for k in range(3):
            if new_labels[n, k] == 0:
                assert int(assignments[n, k]) == -1
                continue
            own = [s for s, parent in enumerate(sub.parents) if parent == k]
            distances = [float(((points[n] - sub.centers[s]) ** 2).sum()) for s in own]
            assert int(assignments[n, k]) == own[distances.index(min(distances))]


def test_targets_are_multi_hot_of_the_assignments() -> None:
    sub = SubCategories(torch.zeros(5, 2), (0, 0, 1, 2, 2), 3, False)
    assignments = torch.tensor([[1, 2, -1], [-1, -1, 4], [0, -1, 3]])
    expected = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 0, 1], [1, 0, 0, 1, 0]], dtype=torch.float32)
    assert torch.equal(sub.targets(assignments), expected)


def test_shuffle_keeps_sizes_and_presence_is_seeded_and_leaves_input_alone() -> None:
    features, labels = blobs()
    sub = cluster_subcategories(features, labels, clusters=4, min_size=3)
    assignments = sub.assign(features, labels)
    before = assignments.clone()
    shuffled = shuffle_subcategories(assignments, seed=5)
    assert torch.equal(assignments, before)
    assert torch.equal(shuffled == -1, assignments == -1)
    for k in range(3):
        assert sorted(shuffled[:, k].tolist()) == sorted(assignments[:, k].tolist())
    assert torch.equal(shuffled, shuffle_subcategories(assignments, seed=5))
    assert not torch.equal(shuffled, assignments)
    assert torch.equal(sub.targets(shuffled).sum(0), sub.targets(assignments).sum(0))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda f, y: cluster_subcategories(f.long(), y), TypeError, "`features` must be a floating-point"),
        (lambda f, y: cluster_subcategories(f[:3], y), ValueError, "the same number of images"),
        (lambda f, y: cluster_subcategories(f, y * 2), ValueError, "`labels` must hold only 0/1"),
        (lambda f, y: cluster_subcategories(f, y, clusters=0), ValueError, "`clusters` must be >= 1"),
        (lambda f, y: cluster_subcategories(f, y, min_size=1.5), TypeError, "`min_size` must be an int"),
        (lambda f, y: cluster_subcategories(f, y, unit_norm=1), TypeError, "`unit_norm` must be a bool"),
        (
            lambda f, y: cluster_subcategories(f, torch.cat([y, torch.zeros(40, 1)], 1)),
            ValueError,
            r"classes \[3\] are in none",
        ),
        (
            lambda f, y: cluster_subcategories(f * float("nan"), y),
            ValueError,
            "`features` must be finite",
        ),
        (lambda f, y: shuffle_subcategories(y, seed=0), TypeError, "must be an integer tensor"),
        (lambda f, y: shuffle_subcategories(y.long(), seed=-1), ValueError, "`seed` must be >= 0"),
    ],
)
def test_clustering_errors_name_the_argument(
    call: Callable[[Tensor, Tensor], object], error: type[Exception], message: str
) -> None:
    features, labels = blobs()
    with pytest.raises(error, match=message):
        call(features, labels)


def test_assign_and_targets_errors() -> None:
    features, labels = blobs()
    sub = cluster_subcategories(features, labels, clusters=2, min_size=5)
    with pytest.raises(ValueError, match="D = 4 columns"):
        sub.assign(features[:, :3], labels)
    with pytest.raises(ValueError, match="K = 3 columns"):
        sub.assign(features, labels[:, :2])
    with pytest.raises(ValueError, match=r"indices in -1\.\.4"):
        sub.targets(torch.tensor([[5, -1, -1]]))
    with pytest.raises(ValueError, match="another class"):
        sub.targets(torch.tensor([[2, -1, -1]]))  # sub-category 2 is class 1's
    with pytest.raises(TypeError, match="integer tensor"):
        sub.targets(torch.zeros(1, 3))


# ------------------------------------------------------------------------------------------------ loss
@pytest.mark.parametrize("weight", [5.0, 0.0, 0.3])
def test_loss_is_sc_cams_multilabel_soft_margin_on_both_heads(weight: float) -> None:
    logits = torch.randn(6, 9)
    targets = (torch.rand(6, 9) < 0.3).float()
    parts = SubCategoryLoss(num_classes=4, weight=weight)(logits, targets)
    assert isinstance(parts, SubCategoryLossOutput)
    classes = F.multilabel_soft_margin_loss(logits[:, :4], targets[:, :4])
    subcategories = F.multilabel_soft_margin_loss(logits[:, 4:], targets[:, 4:])
    torch.testing.assert_close(parts.classes, classes)
    torch.testing.assert_close(parts.subcategories, subcategories)
    torch.testing.assert_close(parts.total, classes + weight * subcategories)


def test_loss_gradcheck_float64_and_float32_under_autocast() -> None:
    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 1, 0, 0], [1, 1, 0, 0, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda x: subcategory_loss(x, targets, 2).total, (logits,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = subcategory_loss(torch.randn(3, 5).bfloat16(), targets, 2)
    assert parts.total.dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"logits": torch.zeros(2, 5).long()}, TypeError, "`logits` must be a floating-point"),
        ({"targets": torch.zeros(2, 4)}, ValueError, "must have the same shape"),
        ({"targets": torch.full((2, 5), 2.0)}, ValueError, "`targets` must hold only 0/1"),
        ({"num_classes": 5}, ValueError, "`num_classes` must be <= 4"),
        ({"num_classes": 0}, ValueError, "`num_classes` must be >= 1"),
        ({"weight": -1.0}, ValueError, "`weight` must be a finite number >= 0"),
        ({"weight": "5"}, TypeError, "`weight` must be a float"),
    ],
)
def test_loss_errors_name_the_argument(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    arguments: dict[str, object] = {
        "logits": torch.zeros(2, 5),
        "targets": torch.zeros(2, 5),
        "num_classes": 2,
    }
    arguments.update(kwargs)
    weight = arguments.pop("weight", 5.0)
    with pytest.raises(error, match=message):
        subcategory_loss(**arguments, weight=weight)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------- net
def tiny_backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2), nn.ReLU())


def test_net_is_two_linear_heads_of_one_pooled_backbone_and_classes_shares_them() -> None:
    backbone = tiny_backbone()
    before = {name: value.clone() for name, value in backbone.state_dict().items()}
    net = SubCategoryNet(backbone, num_classes=3, num_subcategories=5).eval()
    images = torch.randn(2, 3, 16, 16)
    pooled = net.net.features(images).mean((2, 3))
    expected = torch.cat([net.net.heads[0](pooled), net.net.heads[1](pooled)], 1)
    torch.testing.assert_close(net(images), expected)
    classifier = net.classes()
    torch.testing.assert_close(classifier(images), expected[:, :3])
    assert classifier.net is net.net
    assert all(torch.equal(before[name], value) for name, value in backbone.state_dict().items())


def test_gradcam_of_the_class_head_equals_naive_gradcam() -> None:
    net = SubCategoryNet(tiny_backbone(), num_classes=3, num_subcategories=4).eval()
    images = torch.randn(2, 3, 16, 16)
    extractor = GradCAM(net.classes(), "net.features")
    try:
        maps = extractor(images, size="feature", normalize=None)
    finally:
        extractor.remove()
    activations = net.net.features(images)
    logits = net.net.heads[0](activations.mean((2, 3)))
    expected = []
    for k in range(3):
        (gradient,) = torch.autograd.grad(logits[:, k].sum(), activations, retain_graph=True)
        expected.append(F.relu((gradient.mean((2, 3))[:, :, None, None] * activations).sum(1)))
    torch.testing.assert_close(maps, torch.stack(expected, 1).detach(), rtol=1e-5, atol=1e-6)


def test_fit_trains_both_heads_and_scores_every_column() -> None:
    features, labels = torch.randn(8, 4), torch.zeros(8, 3)
    labels[:, 0] = 1
    labels[4:, 1] = 1
    labels[::3, 2] = 1
    sub = cluster_subcategories(features, labels, clusters=2, min_size=1)
    targets = torch.cat([labels, sub.targets(sub.assign(features, labels))], 1)
    net = SubCategoryNet(SmallConvNet(width=4, norm="group"), 3, sub.num_subcategories)
    images = torch.randn(8, 3, 24, 24)
    batches = [(images, targets)]
    history = hiercam.fit(
        net, batches, epochs=2, loss=SubCategoryLoss(3), val_loader=batches, lr=1e-2, progress=False
    )
    assert history["train_loss"][1] < history["train_loss"][0]
    assert {"train_classes", "train_subcategories", "val_subcategories"} <= set(history.keys())
    with torch.no_grad():
        output = net.eval()(images)
    present = targets.sum(0) > 0
    by_hand = average_precision_score(targets[:, present].numpy(), output[:, present].numpy())
    assert history["val_map"][-1] == pytest.approx(by_hand, abs=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"backbone": "resnet"}, TypeError, "`backbone` must be an nn.Module"),
        ({"num_classes": 0}, ValueError, "`num_classes` must be >= 1"),
        ({"num_subcategories": 2.0}, TypeError, "`num_subcategories` must be an int"),
        ({"pool": "min"}, ValueError, "`pool` must be one of"),
    ],
)
def test_net_errors_name_the_argument(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    arguments: dict[str, object] = {"backbone": tiny_backbone(), "num_classes": 3, "num_subcategories": 4}
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        SubCategoryNet(**arguments)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- pipeline
def test_pipeline_stage_trains_on_appended_targets_and_loads_from_the_cache(
    tmp_path: object, tiny_config: Callable[..., PipelineConfig]
) -> None:
    from pathlib import Path

    from hiercam.pipeline.context import RunContext
    from hiercam.pipeline.stages import train_base, train_subcategory_model

    out = Path(str(tmp_path))
    ctx = RunContext(tiny_config(), out, progress=False, log=lambda _: None)
    base = train_base(ctx)
    features = {}
    with torch.no_grad():
        for split in ("train", "val"):
            pieces = [
                base.model.forward_features(images).mean((2, 3))
                for _, images, *_ in ctx.data(split).batches(64)
            ]
            features[split] = torch.cat(pieces)
    train_labels, val_labels = ctx.data("train").labels, ctx.data("val").labels
    sub = cluster_subcategories(features["train"], train_labels, clusters=3, min_size=4)
    targets = (
        sub.targets(sub.assign(features["train"], train_labels)),
        sub.targets(sub.assign(features["val"], val_labels)),
    )
    trained = train_subcategory_model(ctx, sub, targets, "key", shuffled=False)
    assert isinstance(trained.model, SubCategoryNet)
    assert trained.identity.name == "subcategory"
    assert trained.model.classes()(torch.zeros(1, 3, 48, 48)).shape == (1, sub.num_classes)
    again = RunContext(tiny_config(), out, progress=False, log=lambda _: None)
    loaded = train_subcategory_model(again, sub, targets, "key", shuffled=True)
    assert loaded.identity.name == "shuffled_subcategory"
    assert loaded.content_key != trained.content_key  # another name: never the real sub-categories' model
    with pytest.raises(ValueError, match="rows of targets"):
        train_subcategory_model(ctx, sub, (targets[0][:5], targets[1]), "other", shuffled=False)
