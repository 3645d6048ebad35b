"""Speed of the methods issue 27 added, against the peer that has each, side by side in one run.

Setting: torchvision ResNet-18 (random init, eval, ``--classes`` classes), ``--batch`` random images of
``--size`` pixels, target ``layer4``, one CPU thread. For every method: hiercam explains all the classes in
one call; the peer runs its documented call once per class (pytorch-grad-cam: ``cam(images, targets)``;
torchcam: ``extractor(k, scores)``; guided backpropagation: pytorch-grad-cam's ``GuidedBackpropReLUModel``
once per image and class, as its API takes one image). The class-agnostic methods (KPCA-CAM, FEM,
RandomCAM: every class gets the same map) and Deep Feature Factorization (concepts, not classes) are run
once by the peer as well: a second class would be the same work again.

Each figure is the best of ``--rounds`` interleaved rounds (rotating order: the least disturbed by other
work on the machine), printed with its ratio to one forward pass of the batch (``x forward``) and the peer's
time over hiercam's (``peer / hiercam``: above 1, hiercam is faster). The score family (ScoreCAM, SSCAM,
ISCAM, AblationCAM) has its own section in ``cam_speed.py`` (``--score-family-only``).

Run: ``python benchmarks/peer_methods_speed.py [--classes 10] [--batch 2] [--size 112] [--rounds 3]``, or
through ``python benchmarks/cam_speed.py --peer-methods-only``.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Race:
    """One method: hiercam's all-class call and the peer's calls for the same maps."""

    method: str
    peer: str
    ours: Callable[[], object]
    theirs: Callable[[], object]


def races(model: nn.Module, images: torch.Tensor, classes: list[int]) -> list[Race]:
    import pytorch_grad_cam as pgc
    import torchcam.methods
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import hiercam

    batch, layer = len(images), model.layer4
    size = tuple(images.shape[1:])

    def per_class(peer_type: type, **options: object) -> Callable[[], object]:
        def run() -> object:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with peer_type(model, target_layers=[layer], **options) as cam:
                    return [cam(images, targets=[ClassifierOutputTarget(k)] * batch) for k in classes]

        return run

    def once(peer_type: type) -> Callable[[], object]:
        def run() -> object:
            with peer_type(model, target_layers=[layer]) as cam:
                return cam(images, targets=[ClassifierOutputTarget(classes[0])] * batch)

        return run

    def finer() -> object:
        with pgc.FinerCAM(model, [layer]) as cam:
            return [cam(images, target_idx=k) for k in classes]

    def full_grad() -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pgc.FullGrad(model, []) as cam:
                return [cam(images, targets=[ClassifierOutputTarget(k)] * batch) for k in classes]

    guided_model = pgc.GuidedBackpropReLUModel(copy.deepcopy(model), device="cpu")  # it swaps the ReLUs

    def guided() -> object:
        return [guided_model(images[i : i + 1].clone(), k) for i in range(batch) for k in classes]

    def guided_grad_cam() -> object:
        return per_class(pgc.GradCAM)(), guided()

    def smooth() -> object:
        extractor = torchcam.methods.SmoothGradCAMpp(
            model, "layer4", num_samples=4, std=0.3, input_shape=size
        )
        try:
            scores = model(images)
            return [extractor(k, scores, retain_graph=True) for k in classes]
        finally:
            extractor.remove_hooks()

    def factorization() -> object:
        return pgc.DeepFeatureFactorization(model, layer, computation_on_concepts=model.fc)(images, 5)

    def ours(cam: Callable[..., object]) -> Callable[[], object]:
        return lambda: cam(images, classes)

    dff = hiercam.DeepFeatureFactorization(model, "layer4")
    return [
        Race(
            "EigenGradCAM",
            "pytorch-grad-cam",
            ours(hiercam.EigenGradCAM(model, "layer4")),
            per_class(pgc.EigenGradCAM),
        ),
        Race(
            "GradCAMElementWise",
            "pytorch-grad-cam",
            ours(hiercam.GradCAMElementWise(model, "layer4")),
            per_class(pgc.GradCAMElementWise),
        ),
        Race(
            "ShapleyCAM",
            "pytorch-grad-cam",
            ours(hiercam.ShapleyCAM(model, "layer4")),
            per_class(pgc.ShapleyCAM),
        ),
        Race("FinerCAM", "pytorch-grad-cam", ours(hiercam.FinerCAM(model, "layer4")), finer),
        Race("FullGrad", "pytorch-grad-cam", ours(hiercam.FullGrad(model)), full_grad),
        Race("GuidedBackprop", "pytorch-grad-cam", ours(hiercam.GuidedBackprop(model)), guided),
        Race(
            "GuidedGradCAM", "pytorch-grad-cam", ours(hiercam.GuidedGradCAM(model, "layer4")), guided_grad_cam
        ),
        Race(
            "SmoothGradCAMPlusPlus (4 samples)",
            "torchcam",
            ours(hiercam.SmoothGradCAMPlusPlus(model, "layer4", num_samples=4, std=0.3)),
            smooth,
        ),
        Race(
            "KPCACAM (class-agnostic)",
            "pytorch-grad-cam",
            ours(hiercam.KPCACAM(model, "layer4")),
            once(pgc.KPCA_CAM),
        ),
        Race("FEM (class-agnostic)", "pytorch-grad-cam", ours(hiercam.FEM(model, "layer4")), once(pgc.FEM)),
        Race(
            "RandomCAM (class-agnostic)",
            "pytorch-grad-cam",
            ours(hiercam.RandomCAM(model, "layer4")),
            once(pgc.RandomCAM),
        ),
        Race("DeepFeatureFactorization (5)", "pytorch-grad-cam", lambda: dff(images, 5), factorization),
    ]


def best_times(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """The best of ``rounds`` interleaved rounds per run, after one warm-up call each."""
    best = {name: float("inf") for name in runs}
    names = list(runs)
    for name in names:
        runs[name]()
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            runs[name]()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def peer_methods(classes: int = 10, batch: int = 2, size: int = 112, rounds: int = 3) -> None:
    """Print one row per method: hiercam's and the peer's seconds, each as x forward, and their ratio."""
    from torchvision.models import resnet18

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = resnet18(num_classes=classes).eval()
    images = torch.randn(batch, 3, size, size)
    all_classes = list(range(classes))

    def forward() -> object:
        with torch.no_grad():
            return model(images)

    runs: dict[str, Callable[[], object]] = {"forward": forward}
    listed = races(model, images, all_classes)
    for race in listed:
        runs[f"{race.method} hiercam"] = race.ours
        runs[f"{race.method} peer"] = race.theirs
    best = best_times(runs, rounds)
    floor = best["forward"]
    print(
        f"\nthe methods of issue 27: torch {torch.__version__}, 1 thread, ResNet-18 layer4, "
        f"{classes} classes, batch {batch}, {size}x{size}, best of {rounds} interleaved rounds; "
        f"one forward: {floor * 1e3:.1f} ms"
    )
    header = f"  {'method':34s} {'peer':17s} {'hiercam s':>10s} {'x fwd':>7s} {'peer s':>9s} {'x fwd':>7s}"
    print(header + f" {'peer / hiercam':>15s}")
    for race in listed:
        ours, theirs = best[f"{race.method} hiercam"], best[f"{race.method} peer"]
        print(
            f"  {race.method:34s} {race.peer:17s} {ours:10.3f} {ours / floor:6.1f}x {theirs:9.3f} "
            f"{theirs / floor:6.1f}x {theirs / ours:14.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    peer_methods(args.classes, args.batch, args.size, args.rounds)


if __name__ == "__main__":
    main()
