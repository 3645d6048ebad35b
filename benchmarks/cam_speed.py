"""All-class Grad-CAM speed: hiercam vs torchcam vs pytorch-grad-cam, interleaved in one run.

Setting (issue 3): torchvision ResNet-50 (random init, eval), 20 classes, batch 8, 224x224, CPU, 2 threads.
Each round runs every contender once, in rotating order; the table shows medians over rounds and each
median's ratio to one forward pass (the floor: no CAM can be cheaper than computing the activations).

* forward            ``model(x)`` under ``no_grad``
* hiercam            ``GradCAM(model, "layer4")(x)``: all maps from the verified closed form (no backward)
* hiercam general    the same with ``closed_form=False``: one forward, one batched backward for all classes
* hiercam feature    ``GradCAM(model, "layer4")(x, size="feature")``: no resizing to the input
* resize only        ``hiercam.cam.resize_maps``: the one batched bilinear resize of the raw maps to 224x224
  (the share of "hiercam" spent resizing)
* torchcam           one forward, then ``GradCAM(...)(k, scores, retain_graph=True)`` per class
* pytorch-grad-cam   ``GradCAM(...)(x, targets)`` per class: a forward and a backward per class

Peak memory: for each contender alone in a fresh subprocess, the growth of the peak resident set size
(``VmHWM``, reset through ``/proc/self/clear_refs`` after building the model and the contenders) over the
resident set size at that point. (``ru_maxrss`` would be wrong: Linux keeps it across ``exec``, so a child
reports its parent's peak.) Linux only.

Run: ``python benchmarks/cam_speed.py [--rounds 5] [--classes 20] [--batch 8]``
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
from pathlib import Path

import torch
from torchvision.models import resnet50

logging.getLogger("torchcam").setLevel(logging.ERROR)


def setup(batch: int, num_classes: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = resnet50(num_classes=num_classes).eval()
    return model, torch.randn(batch, 3, 224, 224)


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
        "resize only": lambda: hiercam.cam.resize_maps(raw, input_size),
        "torchcam": torchcam_run,
        "pytorch-grad-cam": pgc_run,
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


def memory_child(name: str, batch: int, num_classes: int, classes: list[int]) -> None:
    """In a fresh process: RSS after set-up, reset the peak counter, run the contender, print the growth."""
    model, x = setup(batch, num_classes)
    runs = contenders(model, x, classes)
    before = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    if _status_mib("VmHWM") > before + 1:
        raise RuntimeError("could not reset the peak RSS counter (VmHWM)")
    runs[name]()
    print(json.dumps(_status_mib("VmHWM") - before))


def peak_memory(name: str, batch: int, num_classes: int, classes: list[int]) -> float:
    here = Path(__file__).resolve().parent
    code = (
        f"import sys; sys.path.insert(0, {str(here)!r}); import cam_speed as b;"
        f"b.memory_child({name!r}, {batch}, {num_classes}, {classes!r})"
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
    parser.add_argument("--no-memory", action="store_true", help="skip the per-contender memory subprocesses")
    args = parser.parse_args()
    model, images = setup(args.batch, args.classes)
    all_classes = list(range(args.classes))
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, ResNet-50, batch {args.batch}, 224x224")
    for label, classes in (("all classes", all_classes), ("single class", [3])):
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
            print(f"  {name:18s} {peak_memory(name, args.batch, args.classes, all_classes):9.0f}")


if __name__ == "__main__":
    main()
