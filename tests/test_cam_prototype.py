"""Prototype CAMs (LPCAM): a naive per-class, per-pixel reference, hand-computed maps, the context option,
errors, inputs left alone, dtypes and devices, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from hiercam import ClassHierarchy
from hiercam.cam import PrototypeCAM, prototype_cam, sibling_classes

E = torch.eye(3, dtype=torch.float64)
SQRT2 = math.sqrt(2.0)

# ------------------------------------------------------------------------------------------ naive reference


def naive_centers(points: list[torch.Tensor], num_clusters: int, seed: int) -> list[torch.Tensor]:
    """Cosine K-means centres: KMeans on unit vectors, each centre the raw mean of its cluster, in order of
    first appearance (the documented rule), built point by point."""
    if not points:
        return []
    unit = np.stack([(p / p.norm()).double().numpy() for p in points])
    assigned = KMeans(n_clusters=min(num_clusters, len(points)), n_init=1, random_state=seed).fit_predict(
        unit
    )
    order: list[int] = []
    for label in assigned:
        if int(label) not in order:
            order.append(int(label))
    centres = []
    for label in order:
        members = [points[i].double() for i in range(len(points)) if assigned[i] == label]
        centres.append(sum(members) / len(members))
    return centres


def softmax_score(centre: torch.Tensor, weight: torch.Tensor, cls: int) -> float:
    logits = [float(centre @ weight[j].double()) for j in range(weight.shape[0])]
    top = max(logits)
    return math.exp(logits[cls] - top) / sum(math.exp(v - top) for v in logits)


def naive_prototypes(
    features: torch.Tensor,
    maps: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    *,
    num_clusters: int,
    threshold: float,
    class_score: float,
    context_score: tuple[float, float],
    seed: int,
) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Per class: the selected class and context prototypes (lists of (C,) tensors)."""
    batch, _, height, width = features.shape
    own, context = [], []
    for cls in range(weight.shape[0]):
        fg, bg = [], []
        for b in range(batch):
            if labels[b, cls] != 1:
                continue
            for y in range(height):
                for x in range(width):
                    (fg if maps[b, cls, y, x] > threshold else bg).append(features[b, :, y, x])
        centres = naive_centers(fg, num_clusters, seed)
        scores = [softmax_score(c, weight, cls) for c in centres]
        chosen = [c for c, s in zip(centres, scores, strict=True) if s > class_score]
        if centres and not chosen:
            chosen = [c for c, s in zip(centres, scores, strict=True) if s >= max(scores) - 1e-6]
        own.append(chosen)
        low, high = context_score
        context.append(
            [c for c in naive_centers(bg, num_clusters, seed) if low < softmax_score(c, weight, cls) < high]
        )
    return own, context


def mean_cosine(pixel: torch.Tensor, prototypes: list[torch.Tensor]) -> float:
    return sum(float(F.cosine_similarity(pixel, p.double(), dim=0)) for p in prototypes) / len(prototypes)


def naive_maps(
    features: torch.Tensor, own: list[list[torch.Tensor]], context: list[list[torch.Tensor]]
) -> torch.Tensor:
    """M_k(x) = ReLU(mean_f cos(x, f) - mean_b cos(x, b)) per pixel, divided by the map's maximum."""
    batch, _, height, width = features.shape
    out = torch.zeros(batch, len(own), height, width, dtype=torch.float64)
    for b in range(batch):
        for cls in range(len(own)):
            if not own[cls]:
                continue
            for y in range(height):
                for x in range(width):
                    pixel = features[b, :, y, x].double()
                    value = mean_cosine(pixel, own[cls])
                    if context[cls]:
                        value -= mean_cosine(pixel, context[cls])
                    out[b, cls, y, x] = max(value, 0.0)
            peak = float(out[b, cls].max())
            if peak > 0:
                out[b, cls] /= peak
    return out


def planted(
    seed: int = 0, batch: int = 6, classes: int = 3, channels: int = 8, size: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features with class parts (two directions per class) in the foreground and shared clutter elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    parts = torch.randn(classes, 2, channels, generator=gen).abs() + 3 * torch.eye(classes, channels)[:, None]
    clutter = torch.randn(3, channels, generator=gen).abs()
    labels = (torch.rand(batch, classes, generator=gen) < 0.5).long()
    labels[torch.arange(batch), torch.arange(batch) % classes] = 1
    features = clutter[torch.randint(0, 3, (batch, size, size), generator=gen)].permute(0, 3, 1, 2).clone()
    maps = torch.zeros(batch, classes, size, size)
    for b in range(batch):
        for cls in labels[b].nonzero().flatten().tolist():
            y, x = torch.randint(0, size - 2, (2,), generator=gen).tolist()
            part = parts[cls, torch.randint(0, 2, (3, 3), generator=gen)].permute(2, 0, 1)
            features[b, :, y : y + 3, x : x + 3] = part
            maps[b, cls, y : y + 3, x : x + 3] = 0.5 + 0.5 * torch.rand(3, 3, generator=gen)
    features = features + 0.05 * torch.randn(features.shape, generator=gen)
    weight = 2 * torch.eye(classes, channels) + 0.1 * torch.randn(classes, channels, generator=gen)
    return features, maps, labels, weight


SETTINGS: dict = dict(num_clusters=3, threshold=0.1, class_score=0.6, context_score=(0.05, 0.9), seed=0)


def make_cam(weight: torch.Tensor, **changes: object) -> PrototypeCAM:
    settings = {**SETTINGS, **changes}
    return PrototypeCAM(
        weight,
        num_clusters=settings["num_clusters"],
        foreground_threshold=settings["threshold"],
        class_score=settings["class_score"],
        context_score=settings["context_score"],
        seed=settings["seed"],
        context_classes=settings.get("context_classes"),
    )


# ------------------------------------------------------------------------------------------ reference checks


@pytest.mark.parametrize("seed", [0, 1])
def test_maps_equal_the_naive_reference(seed: int) -> None:
    features, maps, labels, weight = planted(seed)
    cam = make_cam(weight).fit(features, maps, labels)
    own, context = naive_prototypes(features, maps, labels, weight, **SETTINGS)
    assert [len(p) for p in own] == [len(p) for p in cam.class_prototypes_]
    assert [len(p) for p in context] == [len(p) for p in cam.context_prototypes_]
    assert any(len(p) > 1 for p in own)  # both rules select something
    assert any(len(p) for p in context)
    for got, want in zip(cam.class_prototypes_ + cam.context_prototypes_, own + context, strict=True):
        if want:
            torch.testing.assert_close(got.double(), torch.stack(want), atol=1e-5, rtol=1e-5)
    test_features = features.flip(0) + 0.3 * torch.randn(features.shape)
    expected = naive_maps(test_features, own, context)
    torch.testing.assert_close(cam(test_features).double(), expected, atol=1e-5, rtol=0)
    assert (expected.amax(dim=(-2, -1)) == 1).any()


def test_foreground_centers_hold_every_centre_before_the_class_score_test() -> None:
    features, maps, labels, weight = planted(0)
    cam = make_cam(weight, class_score=0.9).fit(features, maps, labels)
    batch, _, height, width = features.shape
    rejected = 0
    for cls in range(weight.shape[0]):
        foreground = [
            features[b, :, y, x]
            for b in range(batch)
            for y in range(height)
            for x in range(width)
            if labels[b, cls] == 1 and maps[b, cls, y, x] > SETTINGS["threshold"]
        ]
        want = torch.stack(naive_centers(foreground, SETTINGS["num_clusters"], SETTINGS["seed"]))
        got = cam.foreground_centers_[cls].double()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        passed = [c for c in want if softmax_score(c, weight, cls) > 0.9]
        assert len(cam.class_prototypes_[cls]) == max(len(passed), 1)
        rejected += len(want) - len(passed)
    assert rejected > 0  # the test rejects some centres here, which only foreground_centers_ shows
    cam.reset()
    assert cam.foreground_centers_ is None


def test_context_classes_equal_the_naive_reference() -> None:
    features, maps, labels, weight = planted(2)
    siblings = [[1], [0, 2], []]
    cam = make_cam(weight, context_classes=siblings).fit(features, maps, labels)
    own, context = naive_prototypes(features, maps, labels, weight, **SETTINGS)
    pooled = [context[k] + [p for j in siblings[k] for p in own[j]] for k in range(3)]
    expected = naive_maps(features, own, pooled)
    got = cam(features).double()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    plain = make_cam(weight).fit(features, maps, labels)(features).double()
    assert (got[:, :2] - plain[:, :2]).abs().max() > 0.05  # the option changes the classes it names
    torch.testing.assert_close(got[:, 2], plain[:, 2], atol=1e-6, rtol=0)  # and no other


def test_function_and_class_agree() -> None:
    features, maps, labels, weight = planted(3)
    cam = make_cam(weight, context_classes=[[2], [], [0]]).fit(features, maps, labels)
    context = [
        torch.cat([cam.context_prototypes_[0], cam.class_prototypes_[2]]),
        cam.context_prototypes_[1],
        torch.cat([cam.context_prototypes_[2], cam.class_prototypes_[0]]),
    ]
    torch.testing.assert_close(
        cam(features, labels), prototype_cam(features, cam.class_prototypes_, context, labels)
    )


def test_update_over_batches_equals_one_fit() -> None:
    features, maps, labels, weight = planted(4)
    whole = make_cam(weight).fit(features, maps, labels)
    parts = make_cam(weight)
    for chunk in range(0, 6, 2):
        parts.update(features[chunk : chunk + 2], maps[chunk : chunk + 2], labels[chunk : chunk + 2])
    torch.testing.assert_close(parts.cluster().weights_, whole.weights_, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------ by hand


def hand_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class 0 parts e0 and e0+e1 (scored 0.99 and 0.5 by W = 5 I), class 1 along e1, background e2."""
    a, ab, b, bg = E[0], E[0] + E[1], E[1], E[2]
    features = torch.stack([torch.stack([a, a, ab, ab, bg, bg], 1), torch.stack([b, b, b, bg, bg, bg], 1)])
    features = features[:, :, None]  # (2, 3, 1, 6)
    maps = torch.tensor(
        [[[1.0, 1, 0.8, 0.8, 0.1, 0], [0] * 6], [[0] * 6, [1.0, 1, 1, 0, 0, 0]]], dtype=torch.float64
    )
    return features, maps[:, :, None], torch.tensor([[1, 0], [0, 1]])


def test_hand_computed_maps() -> None:
    features, maps, labels = hand_batch()
    cam = PrototypeCAM(5 * E[:2], num_clusters=2).fit(features, maps, labels)
    # class 0: centres e0 (p0 = 0.993, kept) and e0+e1 (p0 = 0.5, dropped); context e2 (p0 = 0.5, kept);
    # the pixel at exactly the threshold (0.1) counts as background
    torch.testing.assert_close(cam.class_prototypes_[0], E[0][None])
    torch.testing.assert_close(cam.context_prototypes_[0], E[2][None])
    torch.testing.assert_close(cam.weights_, torch.tensor([[1.0, 0, -1], [0, 1, -1]], dtype=torch.float64))
    probe = torch.stack([E[0], E[2], (E[0] + E[2]), 2 * E[0] + E[2], E[0] + E[1]], 1)[None, :, None]
    got = cam(probe)[0, 0, 0]
    expected = torch.tensor([1.0, 0.0, 0.0, 1 / math.sqrt(5), 1 / SQRT2], dtype=torch.float64)
    torch.testing.assert_close(got, expected)


def test_hand_computed_context_classes() -> None:
    features, maps, labels = hand_batch()
    cam = PrototypeCAM(5 * E[:2], num_clusters=2, context_classes=[[1], []]).fit(features, maps, labels)
    # class 0's context set is {e2, e1}: M(x) = ReLU(cos(x, e0) - (cos(x, e2) + cos(x, e1)) / 2)
    torch.testing.assert_close(cam.weights_[0], torch.tensor([1.0, -0.5, -0.5], dtype=torch.float64))
    probe = torch.stack([E[0], E[0] + E[1], E[1]], 1)[None, :, None]
    expected = torch.tensor([1.0, (1 / SQRT2 - 1 / (2 * SQRT2)), 0.0], dtype=torch.float64)
    torch.testing.assert_close(cam(probe)[0, 0, 0], expected)
    torch.testing.assert_close(
        cam(probe)[0, 1], PrototypeCAM(5 * E[:2], num_clusters=2).fit(*hand_batch())(probe)[0, 1]
    )


def test_fallback_keeps_the_best_scored_centre() -> None:
    features, maps, labels = hand_batch()
    cam = PrototypeCAM(5 * E[:2], num_clusters=2, class_score=0.999).fit(features, maps, labels)
    torch.testing.assert_close(cam.class_prototypes_[0], E[0][None])  # 0.993 < 0.999: the best one is kept


def test_labels_zero_absent_classes() -> None:
    features, maps, labels = hand_batch()
    cam = PrototypeCAM(5 * E[:2], num_clusters=2).fit(features, maps, labels)
    masked = cam(features, labels)
    assert masked[0, 1].abs().max() == 0
    assert masked[1, 0].abs().max() == 0
    torch.testing.assert_close(masked[0, 0], cam(features)[0, 0])


def test_class_without_training_image_warns_and_gives_zero_maps() -> None:
    features, maps, labels = hand_batch()
    maps3 = torch.cat([maps, torch.zeros_like(maps[:, :1])], dim=1)
    labels3 = torch.cat([labels, torch.zeros_like(labels[:, :1])], dim=1)
    weight = torch.cat([5 * E[:2], E[2:]])
    with pytest.warns(UserWarning, match=r"classes \[2\] have no foreground feature"):
        cam = PrototypeCAM(weight, num_clusters=2).fit(features, maps3, labels3)
    assert cam(features)[:, 2].abs().max() == 0
    assert cam.class_prototypes_[2].shape == (0, 3)


# ------------------------------------------------------------------------------------------ properties


def test_inputs_are_not_modified() -> None:
    features, maps, labels, weight = planted(5)
    copies = [t.clone() for t in (features, maps, labels, weight)]
    cam = make_cam(weight).fit(features, maps, labels)
    before = cam.weights_.clone()
    cam(features, labels)
    prototype_cam(features, cam.class_prototypes_, cam.context_prototypes_, labels)
    for original, copy in zip((features, maps, labels, weight), copies, strict=True):
        assert torch.equal(original, copy)
    weight.mul_(-1)  # the caller changing its weight later does not change the fitted object
    assert torch.equal(cam.weights_, before)
    assert torch.equal(cam.classifier_weight.float(), -weight)


def test_fit_is_deterministic_for_a_seed() -> None:
    features, maps, labels, weight = planted(6)
    first = make_cam(weight, seed=7).fit(features, maps, labels)
    second = make_cam(weight, seed=7).fit(features, maps, labels)
    assert torch.equal(first.weights_, second.weights_)
    assert torch.equal(first(features), second(features))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))],
)
def test_output_device_and_dtype_follow_the_features(dtype: torch.dtype, device: str) -> None:
    features, maps, labels, weight = planted(0)
    cam = make_cam(weight.to(device, dtype)).fit(
        features.to(device, dtype), maps.to(device, dtype), labels.to(device)
    )
    out = cam(features.to(device, dtype), labels.to(device))
    assert out.dtype == dtype
    assert out.device.type == device
    assert out.shape == (6, 3, 5, 5)
    reference = make_cam(weight.double()).fit(features.double(), maps.double(), labels)(
        features.double(), labels
    )
    torch.testing.assert_close(out.cpu().double(), reference, atol=1e-5, rtol=0)


def test_prototype_cam_gradcheck() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.rand(1, 4, 2, 3, dtype=torch.float64, generator=gen).requires_grad_()
    own = [
        torch.rand(2, 4, dtype=torch.float64, generator=gen),
        torch.rand(1, 4, dtype=torch.float64, generator=gen),
    ]
    context = [torch.rand(1, 4, dtype=torch.float64, generator=gen), torch.zeros(0, 4, dtype=torch.float64)]
    assert torch.autograd.gradcheck(lambda f: prototype_cam(f, own, context), (features,))


def test_max_points_subsamples_deterministically() -> None:
    features, maps, labels, weight = planted(1)
    everything = make_cam(weight).fit(features, maps, labels)
    bounded = PrototypeCAM(weight, num_clusters=3, class_score=0.6, max_points=10_000).fit(
        features, maps, labels
    )
    assert torch.equal(bounded.weights_, everything.weights_)  # a bound above the count changes nothing
    few = [PrototypeCAM(weight, num_clusters=3, max_points=8).fit(features, maps, labels) for _ in range(2)]
    assert torch.equal(few[0].weights_, few[1].weights_)


def test_sibling_classes() -> None:
    hierarchy = ClassHierarchy([[0, 1, 0, 1, 2], [0, 0, 0, 0, 1]])
    assert sibling_classes(hierarchy, 1) == [[2], [3], [0], [1], []]
    assert sibling_classes(hierarchy, 2) == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2], []]
    assert sibling_classes(hierarchy, 0) == [[]] * 5
    PrototypeCAM(torch.ones(5, 2), context_classes=sibling_classes(hierarchy, 2))  # accepted as is


def test_repr() -> None:
    cam = PrototypeCAM(5 * E[:2], num_clusters=2)
    assert repr(cam).startswith("PrototypeCAM(classes=2, channels=3, num_clusters=2,")
    assert "fitted=False" in repr(cam)
    assert "fitted=True" in repr(cam.fit(*hand_batch()))
    assert not PrototypeCAM(5 * E[:2]).is_fitted


def test_normalize_none_keeps_the_similarity_differences() -> None:
    cam = PrototypeCAM(5 * E[:2], num_clusters=2).fit(*hand_batch())
    probe = torch.stack([E[0] + E[1], E[1] + E[2]], 1)[None, :, None]
    raw = cam(probe, normalize=None)[0, 0, 0]
    torch.testing.assert_close(raw, torch.tensor([1 / SQRT2, 0.0], dtype=torch.float64))
    torch.testing.assert_close(cam(probe)[0, 0, 0], torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="`normalize` must be one of"):
        cam(probe, normalize="sum")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(classifier_weight=[[1.0]]), TypeError, "`classifier_weight` must be a torch.Tensor"),
        (dict(classifier_weight=torch.ones(3)), ValueError, r"`classifier_weight` must have shape \(K, C\)"),
        (dict(classifier_weight=torch.ones(2, 0)), ValueError, "`classifier_weight` must not be empty"),
        (
            dict(classifier_weight=torch.tensor([[math.nan]])),
            ValueError,
            "`classifier_weight` must be finite",
        ),
        (
            dict(classifier_bias=torch.ones(3)),
            ValueError,
            r"`classifier_bias` must have shape \(K,\) = \(2,\)",
        ),
        (dict(num_clusters=0), ValueError, "`num_clusters` must be >= 1"),
        (dict(num_clusters=2.0), TypeError, "`num_clusters` must be an int"),
        (dict(foreground_threshold=1.5), ValueError, "`foreground_threshold` must be between 0 and 1"),
        (dict(class_score=0), ValueError, "`class_score` must be between 0 and 1"),
        (dict(context_score=(0.9, 0.1)), ValueError, "`context_score` must satisfy 0 <= low < high <= 1"),
        (dict(context_score=0.5), TypeError, "`context_score` must be a pair"),
        (
            dict(context_classes=[[1]]),
            ValueError,
            r"`context_classes` must hold one sequence per class \(K = 2\)",
        ),
        (dict(context_classes=[[0], []]), ValueError, r"`context_classes\[0\]` must not hold class 0 itself"),
        (dict(context_classes=[[2], []]), ValueError, r"`context_classes\[0\]` must hold classes 0..1"),
        (dict(context_classes=[[], [0, 0]]), ValueError, r"`context_classes\[1\]` must not repeat a class"),
        (dict(context_classes=[[1.0], []]), TypeError, r"`context_classes\[0\]` must hold ints"),
        (dict(context_classes="ab"), TypeError, "`context_classes` must be None or a sequence"),
        (dict(max_points=0), ValueError, "`max_points` must be >= 1"),
        (dict(seed=-1), ValueError, "`seed` must be >= 0"),
    ],
)
def test_constructor_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    arguments = {"classifier_weight": 5 * E[:2], **kwargs}
    with pytest.raises(error, match=match):
        PrototypeCAM(**arguments)


def test_fit_and_call_errors() -> None:
    features, maps, labels = hand_batch()
    cam = PrototypeCAM(5 * E[:2], num_clusters=2)
    with pytest.raises(RuntimeError, match="PrototypeCAM is not fitted"):
        cam(features)
    with pytest.raises(ValueError, match="no features collected"):
        cam.cluster()
    with pytest.raises(ValueError, match=r"`features` must have C = 3 channels"):
        cam.fit(features[:, :2], maps, labels)
    with pytest.raises(TypeError, match="`features` must be a floating-point tensor"):
        cam.fit(features.long(), maps, labels)
    with pytest.raises(ValueError, match="`features` must be finite"):
        cam.fit(features * math.inf, maps, labels)
    with pytest.raises(ValueError, match=r"`maps` must have shape \(B, K, h, w\) = \(2, 2, 1, 6\)"):
        cam.fit(features, maps[..., :3], labels)
    with pytest.raises(ValueError, match=r"`maps` must be normalised to \[0, 1\]"):
        cam.fit(features, 2 * maps, labels)
    with pytest.raises(ValueError, match="`labels` must hold only 0/1 values"):
        cam.fit(features, maps, 2 * labels)
    with pytest.raises(ValueError, match=r"`labels` must have shape \(B, K\) = \(2, 2\)"):
        cam.fit(features, maps, labels[:1])
    assert not cam.is_fitted
    cam.fit(features, maps, labels)
    with pytest.raises(ValueError, match=r"`features` must have shape \(B, C, h, w\)"):
        cam(features[0])
    with pytest.raises(ValueError, match=r"`labels` must have shape \(B, K\) = \(2, 2\)"):
        cam(features, labels.T[:, :1])


def test_prototype_cam_errors() -> None:
    features = torch.rand(1, 3, 2, 2)
    with pytest.raises(TypeError, match="`class_prototypes` must be a sequence of K tensors"):
        prototype_cam(features, torch.rand(1, 3))
    with pytest.raises(ValueError, match=r"`class_prototypes\[0\]` must have shape \(N, C\) with C = 3"):
        prototype_cam(features, [torch.rand(1, 2)])
    with pytest.raises(ValueError, match=r"`context_prototypes` must hold K = 1 tensors"):
        prototype_cam(features, [torch.rand(1, 3)], [torch.rand(1, 3)] * 2)
    with pytest.raises(ValueError, match="`class_prototypes` must hold one tensor per class, got none"):
        prototype_cam(features, [])
    with pytest.raises(TypeError, match="`hierarchy` must be a ClassHierarchy"):
        sibling_classes([[0, 1]], 1)  # type: ignore[arg-type]
