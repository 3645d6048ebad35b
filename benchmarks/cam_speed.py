"""All-class Grad-CAM speed: hiercam vs torchcam vs pytorch-grad-cam, interleaved in one run.

Setting (issue 3): torchvision ResNet-50 (random init, eval), 20 classes, batch 8, 224x224, CPU, 2 threads.
Each round runs every contender once, in rotating order; the table shows medians over rounds and each
median's ratio to one forward pass (the floor: no CAM can be cheaper than computing the activations).

* forward            ``model(x)`` under ``no_grad``
* hiercam            ``GradCAM(model, "layer4")(x)``: all maps from the verified closed form (no backward)
* hiercam general    the same with ``closed_form=False``: one forward, one batched backward for all classes
* hiercam feature    ``GradCAM(model, "layer4")(x, size="feature")``: no resizing to the input
* resize only        ``hiercam.maps.resize_maps``: the one batched bilinear resize of the raw maps to the
  input size (the share of "hiercam" spent resizing)
* torchcam           one forward, then ``GradCAM(...)(k, scores, retain_graph=True)`` per class
* pytorch-grad-cam   ``GradCAM(...)(x, targets)`` per class: a forward and a backward per class

Gradient-free methods and test-time augmentation (issue 16), on ``--scorecam-batch`` images:

* scorecam hiercam           ``ScoreCAM(model, "layer4")(x, classes)``: ``B * 2048`` masked forwards shared by
                              all classes
* scorecam torchcam          ``ScoreCAM(...)(k, scores)`` per class: ``B * 2048`` masked forwards per class
* scorecam pytorch-grad-cam  ``ScoreCAM(...)(x, targets)`` per class, the same
* multiscale+flip hiercam    ``MultiScaleCAM(GradCAM(model, "layer4"))(x)``: IRN's scales (1, 0.5, 1.5, 2) and
                              the flips, one call per scale
* multiscale+flip forwards   the forwards alone at those scales, flips included (the floor of the above)

A ViT-Tiny (timm ``vit_tiny_patch16_224``, random init, ``--vit-batch`` images, all classes): ``hiercam``
(``GradCAM(model)``: the layer ``blocks.11.norm1`` and the token reshape chosen automatically, one forward and
one batched backward) against ``pytorch-grad-cam`` (its documented ``reshape_transform``, a forward and a
backward per class).

A ScoreCAM call of a peer takes minutes per class on a CPU: the peers run ``--scorecam-peer-classes`` classes
and their time is scaled to all classes (the table says so); ``--scorecam-peer-classes 0`` runs all.

Peak memory: for each contender alone in a fresh subprocess, the growth of the peak resident set size
(``VmHWM``, reset through ``/proc/self/clear_refs`` after building the model and the contenders) over the
resident set size at that point. (``ru_maxrss`` would be wrong: Linux keeps it across ``exec``, so a child
reports its parent's peak.) Linux only.

The score family (issue 27), on one CPU thread (``torch.set_num_threads(1)``): ResNet-18 (random init,
``--family-classes`` classes), ``--family-batch`` images of ``--family-size`` pixels, target ``layer4``
(512 channels; ``--quick``: ``layer3``, 256 channels, and fewer samples). For ScoreCAM, SSCAM, ISCAM and
AblationCAM it prints seconds per image (hiercam: all classes from one call; a peer: one class, its call
per class) and per image and class, against pytorch-grad-cam (ScoreCAM, AblationCAM) and torchcam (ScoreCAM,
SSCAM, ISCAM) on the same model, side by side in one run, each also as a ratio to the bare forwards the
method needs: ``rows = C x samples`` forwards per image of the model alone (under ``inference_mode``, at the
same batch size, 64). ``hiercam max_channels=64`` is the Faster Score-CAM variant (64 channels per image);
its ratio is to the forwards of all channels. The peers' SSCAM and ISCAM run the same ``--family-samples``.
Each figure is the best of ``--family-rounds`` interleaved rounds (rotating order), the least disturbed by
other work on the machine.

The other methods of issue 27 (EigenGradCAM, GradCAMElementWise, ShapleyCAM, FinerCAM, FullGrad, guided
backpropagation and Guided Grad-CAM, Smooth Grad-CAM++, KPCA-CAM, FEM, RandomCAM, Deep Feature
Factorization), against the peer that has each, on ResNet-18 and one thread: ``peer_methods_speed.py``
(``--peer-methods-only`` runs only that section, ``--no-peer-methods`` skips it).

Run: ``python benchmarks/cam_speed.py [--rounds 5] [--classes 20] [--batch 8] [--size 224]
[--scorecam-batch 1] [--scorecam-peer-classes 2] [--no-gradient-free] [--no-score-family]``
(a quick check that it runs: ``--rounds 1 --classes 3 --batch 1 --size 64 --scorecam-peer-classes 1``);
only the score family: ``python benchmarks/cam_speed.py --score-family-only [--quick]``
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from peer_methods_speed import peer_methods
from torchvision.models import resnet50

logging.getLogger("torchcam").setLevel(logging.ERROR)


def setup(batch: int, num_classes: int, size: int = 224) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = resnet50(num_classes=num_classes).eval()
    return model, torch.randn(batch, 3, size, size)


def contenders(
    model: torch.nn.Module, images: torch.Tensor, classes: list[int]
) -> dict[str, Callable[[], object]]:
    import pytorch_grad_cam
    import torchcam.methods
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import hiercam

    closed = hiercam.GradCAM(model, "layer4")
    closed(images[:1])  # the first call runs the general path and verifies the closed form
    general = hiercam.GradCAM(model, "layer4", closed_form=False)
    batch = len(images)
    raw = closed(images, classes, size="feature", normalize=None)
    input_size = (int(images.shape[-2]), int(images.shape[-1]))

    def forward() -> object:
        with torch.no_grad():
            return model(images)

    def torchcam_run() -> object:
        extractor = torchcam.methods.GradCAM(model, "layer4")
        try:
            scores = model(images)
            return [extractor(k, scores, retain_graph=True) for k in classes]
        finally:
            extractor.remove_hooks()

    def pgc_run() -> object:
        with pytorch_grad_cam.GradCAM(model, target_layers=[model.layer4]) as cam:
            return [cam(images, targets=[ClassifierOutputTarget(k)] * batch) for k in classes]

    return {
        "forward": forward,
        "hiercam": lambda: closed(images, classes),
        "hiercam general": lambda: general(images, classes),
        "hiercam feature": lambda: closed(images, classes, size="feature"),
        "resize only": lambda: hiercam.maps.resize_maps(raw, input_size),
        "torchcam": torchcam_run,
        "pytorch-grad-cam": pgc_run,
    }


def gradient_free_contenders(
    model: torch.nn.Module, images: torch.Tensor, classes: list[int], peer_classes: list[int]
) -> dict[str, Callable[[], object]]:
    """ScoreCAM (hiercam: all ``classes``; the peers: ``peer_classes``) and the multi-scale + flip maps."""
    import pytorch_grad_cam
    import torch.nn.functional as F
    import torchcam.methods
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import hiercam

    score = hiercam.ScoreCAM(model, "layer4", batch_size=64)
    multiscale = hiercam.MultiScaleCAM(hiercam.GradCAM(model, "layer4"))
    multiscale(images[:1])  # verifies the closed form
    batch = len(images)
    height, width = images.shape[-2:]

    def forward() -> object:
        with torch.no_grad():
            return model(images)

    def torchcam_run() -> object:
        extractor = torchcam.methods.ScoreCAM(model, "layer4", batch_size=64)
        try:
            with torch.no_grad():
                scores = model(images)
            return [extractor(k, scores) for k in peer_classes]
        finally:
            extractor.remove_hooks()

    def pgc_run() -> object:
        with pytorch_grad_cam.ScoreCAM(model, target_layers=[model.layer4]) as cam:
            cam.batch_size = 64
            return [cam(images, targets=[ClassifierOutputTarget(k)] * batch) for k in peer_classes]

    def scaled_forwards() -> object:
        with torch.no_grad():
            for s in hiercam.IRN_SCALES:
                x = F.interpolate(images, size=(round(height * s), round(width * s)), mode="bilinear")
                model(torch.cat([x, x.flip(-1)]))
        return None

    return {
        "forward": forward,
        "scorecam hiercam": lambda: score(images, classes),
        "scorecam torchcam": torchcam_run,
        "scorecam pytorch-grad-cam": pgc_run,
        "multiscale+flip hiercam": lambda: multiscale(images, classes),
        "multiscale+flip forwards": scaled_forwards,
    }


def time_rounds(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for name in names:  # warm-up
        runs[name]()
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def memory_child(
    name: str,
    batch: int,
    num_classes: int,
    classes: list[int],
    size: int = 224,
    peer_classes: list[int] | None = None,
) -> None:
    """In a fresh process: RSS after set-up, reset the peak counter, run the contender, print the growth."""
    model, x = setup(batch, num_classes, size)
    if peer_classes is None:
        runs = contenders(model, x, classes)
    else:
        runs = gradient_free_contenders(model, x, classes, peer_classes)
    before = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    if _status_mib("VmHWM") > before + 1:
        raise RuntimeError("could not reset the peak RSS counter (VmHWM)")
    runs[name]()
    print(json.dumps(_status_mib("VmHWM") - before))


def peak_memory(
    name: str,
    batch: int,
    num_classes: int,
    classes: list[int],
    size: int = 224,
    peer_classes: list[int] | None = None,
) -> float:
    here = Path(__file__).resolve().parent
    code = (
        f"import sys; sys.path.insert(0, {str(here)!r}); import cam_speed as b;"
        f"b.memory_child({name!r}, {batch}, {num_classes}, {classes!r}, {size}, {peer_classes!r})"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--scorecam-batch", type=int, default=1, help="images for ScoreCAM and multi-scale")
    parser.add_argument(
        "--scorecam-peer-classes",
        type=int,
        default=2,
        help="classes the peers' ScoreCAM runs (their time is scaled to all classes); 0: all",
    )
    parser.add_argument("--no-gradient-free", action="store_true", help="skip ScoreCAM and multi-scale")
    parser.add_argument("--vit-batch", type=int, default=8, help="images for ViT-Tiny; 0 skips it")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-contender memory subprocesses")
    parser.add_argument("--no-score-family", action="store_true", help="skip the score family")
    parser.add_argument("--score-family-only", action="store_true", help="run only the score family section")
    parser.add_argument("--quick", action="store_true", help="score family: layer3 and 2 samples")
    parser.add_argument("--family-classes", type=int, default=10)
    parser.add_argument("--family-batch", type=int, default=1, help="images per call in the score family")
    parser.add_argument("--family-size", type=int, default=64, help="input side in the score family")
    parser.add_argument("--family-samples", type=int, default=4, help="SSCAM / ISCAM samples")
    parser.add_argument("--family-rounds", type=int, default=2, help="score family: best of these rounds")
    parser.add_argument("--no-peer-methods", action="store_true", help="skip the methods of issue 27")
    parser.add_argument("--peer-methods-only", action="store_true", help="run only the methods of issue 27")
    args = parser.parse_args()
    if args.score_family_only:
        score_family(args)
        return
    if args.peer_methods_only:
        peer_methods(rounds=args.family_rounds + 1)
        return
    model, images = setup(args.batch, args.classes, args.size)
    all_classes = list(range(args.classes))
    threads = torch.get_num_threads()
    size = f"{args.size}x{args.size}"
    print(f"torch {torch.__version__}, {threads} threads, ResNet-50, batch {args.batch}, {size}")
    for label, classes in (("all classes", all_classes), ("single class", [min(3, args.classes - 1)])):
        times = time_rounds(contenders(model, images, classes), args.rounds)
        floor = statistics.median(times["forward"])
        print(f"\n{label} ({len(classes)}), median of {args.rounds} interleaved rounds:")
        print(f"  {'contender':18s} {'median s':>9s} {'x forward':>10s}")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:18s} {median:9.3f} {median / floor:9.2f}x")
    if not args.no_memory:
        print("\npeak RSS growth, all classes, each contender alone in a fresh process (MiB):")
        for name in ("forward", "hiercam", "hiercam general", "torchcam", "pytorch-grad-cam"):
            print(f"  {name:18s} {peak_memory(name, args.batch, args.classes, all_classes, args.size):9.0f}")
    if args.vit_batch:
        vit(args, all_classes)
    if not args.no_gradient_free:
        gradient_free(args, all_classes)
    if not args.no_score_family:
        score_family(args)
    if not args.no_peer_methods:
        peer_methods(rounds=args.family_rounds + 1)


def vit_contenders(batch: int, classes: list[int], size: int) -> dict[str, Callable[[], object]]:
    """Grad-CAM of all ``classes`` on a random-init timm ViT-Tiny: hiercam against pytorch-grad-cam."""
    import pytorch_grad_cam
    import timm
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import hiercam

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=size, num_classes=len(classes)).eval()
    images = torch.randn(batch, 3, size, size)
    grid = size // 16
    cam = hiercam.GradCAM(model)  # layer and token reshape chosen on the first call
    cam(images[:1])

    def reshape_transform(tensor: torch.Tensor) -> torch.Tensor:  # pytorch-grad-cam's documented one
        result = tensor[:, 1:, :].reshape(tensor.size(0), grid, grid, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    def forward() -> object:
        with torch.no_grad():
            return model(images)

    def pgc_run() -> object:
        layers = [model.blocks[-1].norm1]
        peer = pytorch_grad_cam.GradCAM(model, target_layers=layers, reshape_transform=reshape_transform)
        with peer:
            return [peer(images, targets=[ClassifierOutputTarget(k)] * batch) for k in classes]

    return {"forward": forward, "hiercam": lambda: cam(images, classes), "pytorch-grad-cam": pgc_run}


def vit(args: argparse.Namespace, all_classes: list[int]) -> None:
    """ViT-Tiny Grad-CAM for all classes, hiercam against pytorch-grad-cam, as x forward."""
    times = time_rounds(vit_contenders(args.vit_batch, all_classes, args.size), args.rounds)
    floor = statistics.median(times["forward"])
    label = f"ViT-Tiny, all classes ({len(all_classes)}), batch {args.vit_batch}"
    print(f"\n{label}, median of {args.rounds} interleaved rounds:")
    print(f"  {'contender':18s} {'median s':>9s} {'x forward':>10s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:18s} {median:9.3f} {median / floor:9.2f}x")


def gradient_free(args: argparse.Namespace, all_classes: list[int]) -> None:
    """ScoreCAM for all classes against the peers class by class, and multi-scale + flip, as x forward."""
    model, images = setup(args.scorecam_batch, args.classes, args.size)
    count = args.scorecam_peer_classes or len(all_classes)
    peer_classes = all_classes[:count]
    scale = len(all_classes) / len(peer_classes)
    runs = gradient_free_contenders(model, images, all_classes, peer_classes)
    times = time_rounds(runs, 1)
    floor = statistics.median(times["forward"])
    note = "" if scale == 1 else f" (peers: {len(peer_classes)} classes, time x{scale:g})"
    print(f"\ngradient-free, {len(all_classes)} classes, batch {args.scorecam_batch}, one round{note}:")
    print(f"  {'contender':26s} {'s':>9s} {'x forward':>10s}")
    for name, values in times.items():
        seconds = statistics.median(values) * (scale if "torchcam" in name or "pytorch" in name else 1)
        print(f"  {name:26s} {seconds:9.3f} {seconds / floor:9.1f}x")
    if not args.no_memory:
        print("\npeak RSS growth, gradient-free, each contender alone in a fresh process (MiB):")
        for name in runs:
            mib = peak_memory(name, args.scorecam_batch, args.classes, all_classes, args.size, peer_classes)
            print(f"  {name:26s} {mib:9.0f}")


FAMILY_BATCH = 64  # masked images per forward, for every library and for the bare forwards


def family_contenders(
    model: torch.nn.Module, images: torch.Tensor, layer: str, classes: list[int], samples: int
) -> dict[str, tuple[Callable[[], object], int, int]]:
    """``name: (run, classes it explains, rows per image)`` for the score family on ``model``."""
    import pytorch_grad_cam
    import torchcam.methods
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import hiercam

    batch = len(images)
    channels = {"layer3": 256, "layer4": 512}[layer]  # ResNet-18
    size, quiet = FAMILY_BATCH, False
    ours: dict[str, hiercam.BaseCAM] = {
        "ScoreCAM": hiercam.ScoreCAM(model, layer, batch_size=size, progress=quiet),
        "SSCAM": hiercam.SSCAM(model, layer, num_samples=samples, batch_size=size, progress=quiet),
        "ISCAM": hiercam.ISCAM(model, layer, num_samples=samples, batch_size=size, progress=quiet),
        "AblationCAM": hiercam.AblationCAM(model, layer, batch_size=size, progress=quiet),
    }
    fast = hiercam.ScoreCAM(model, layer, max_channels=64, batch_size=size, progress=quiet)
    k = classes[0]

    def torchcam_run(method: str, **options: int) -> Callable[[], object]:
        def run() -> object:
            extractor = getattr(torchcam.methods, method)(model, layer, batch_size=FAMILY_BATCH, **options)
            try:
                with torch.no_grad():
                    scores = model(images)
                return extractor(k, scores)
            finally:
                extractor.remove_hooks()

        return run

    def pgc_run(method: str) -> Callable[[], object]:
        def run() -> object:
            layers = [model.get_submodule(layer)]
            peer_type = getattr(pytorch_grad_cam, method)
            options = {"batch_size": FAMILY_BATCH} if method == "AblationCAM" else {}
            with peer_type(model, target_layers=layers, **options) as cam:
                cam.batch_size = FAMILY_BATCH
                return cam(images, targets=[ClassifierOutputTarget(k)] * batch)

        return run

    runs: dict[str, tuple[Callable[[], object], int, int]] = {}
    for name, cam in ours.items():
        rows = channels * (samples if name in ("SSCAM", "ISCAM") else 1)
        runs[f"{name} hiercam"] = (partial(cam, images, classes), len(classes), rows)
        if name != "AblationCAM":
            extra = {"num_samples": samples} if name != "ScoreCAM" else {}
            runs[f"{name} torchcam"] = (torchcam_run(name, **extra), 1, rows)
        if name in ("ScoreCAM", "AblationCAM"):
            runs[f"{name} pytorch-grad-cam"] = (pgc_run(name), 1, rows)
        if name == "ScoreCAM":
            runs["ScoreCAM hiercam max_channels=64"] = (partial(fast, images, classes), len(classes), rows)
    return runs


def bare_forwards(model: torch.nn.Module, images: torch.Tensor, rows: int) -> float:
    """Seconds for ``rows`` forwards per image of ``images``, ``FAMILY_BATCH`` at a time (inference mode)."""
    total = rows * len(images)
    chunk = images[:1].expand(FAMILY_BATCH, -1, -1, -1).contiguous()
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, total, FAMILY_BATCH):
            model(chunk[: min(FAMILY_BATCH, total - first)])
    return time.perf_counter() - start


def score_family(args: argparse.Namespace) -> None:
    """ScoreCAM, SSCAM, ISCAM, AblationCAM against both peers: seconds per image and class, x forwards."""
    from torchvision.models import resnet18

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = resnet18(num_classes=args.family_classes).eval()
    images = torch.randn(args.family_batch, 3, args.family_size, args.family_size)
    layer, samples = ("layer3", 2) if args.quick else ("layer4", args.family_samples)
    classes = list(range(args.family_classes))
    runs = family_contenders(model, images, layer, classes, samples)
    row_counts = sorted({rows for _, _, rows in runs.values()})
    timed: dict[str, Callable[[], object]] = {
        f"bare forwards ({rows} per image)": partial(bare_forwards, model, images, rows)
        for rows in row_counts
    }
    timed.update({name: run for name, (run, _, _) in runs.items()})
    with torch.inference_mode():
        model(images)  # warm-up
    best = {name: float("inf") for name in timed}
    names = list(timed)
    for r in range(args.family_rounds):  # rotating order; the best of the rounds (least disturbed)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            timed[name]()
            best[name] = min(best[name], (time.perf_counter() - start) / len(images))
    size = f"{args.family_size}x{args.family_size}"
    print(
        f"\nscore family: torch {torch.__version__}, 1 thread, ResNet-18 {layer}, {args.family_classes} "
        f"classes, batch {args.family_batch}, {size}, {samples} samples (SSCAM, ISCAM), "
        f"{FAMILY_BATCH} images per forward, best of {args.family_rounds} interleaved rounds"
    )
    print(f"  {'contender':34s} {'s/image':>9s} {'s/image/class':>14s} {'x forwards':>11s}")
    for rows in row_counts:
        label = f"bare forwards ({rows} per image)"
        print(f"  {label:34s} {best[label]:9.3f}")
    for name, (_, count, rows) in runs.items():
        floor = best[f"bare forwards ({rows} per image)"]
        seconds = best[name]
        print(f"  {name:34s} {seconds:9.3f} {seconds / count:14.4f} {seconds / floor:10.2f}x")


if __name__ == "__main__":
    main()
