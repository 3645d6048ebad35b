"""Peak memory of Grad-CAM on a 1000-class model: all classes (the default) against ``top_k=1``.

Each variant runs in a fresh Python process (so that one variant's peak does not hide another's): a
random-init torchvision ResNet-50 with 1000 classes (nothing is downloaded), ``B`` images of 224 x 224, and
one call of ``hiercam.GradCAM(model, "layer4")``. Printed per variant: the process's peak resident memory
(``ru_maxrss``), the peak above the same process after one plain forward pass of the model (what the CAM call
itself adds), the size of the returned maps and the wall time.

Run: ``python benchmarks/many_classes_memory.py`` (about a minute on 2 CPU cores; ``--batch 2`` by default).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

VARIANTS = ("all", "top1")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kiB on Linux


def _child(variant: str, batch: int) -> dict[str, float]:
    import torch
    from torchvision.models import resnet50

    import hiercam

    torch.manual_seed(0)
    model = resnet50(num_classes=1000).eval()
    images = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        model(images)
    before = _peak_mib()
    start = time.perf_counter()
    with warnings.catch_warnings(), hiercam.GradCAM(model, "layer4") as cam:
        warnings.simplefilter("ignore")  # the all-class call may warn about its size
        maps = cam(images, top_k=1) if variant == "top1" else cam(images)
    seconds = time.perf_counter() - start
    return {
        "peak_mib": _peak_mib(),
        "added_mib": _peak_mib() - before,
        "maps_mib": maps.numel() * maps.element_size() / 2**20,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2, help="images per call (default 2)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.batch)))
        return
    rows = {}
    for variant in VARIANTS:
        done = subprocess.run(
            [sys.executable, __file__, "--child", variant, "--batch", str(args.batch)],
            check=True,
            capture_output=True,
            text=True,
        )
        rows[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"GradCAM(resnet50, 1000 classes, random init)(x), x = ({args.batch}, 3, 224, 224), CPU")
    print(f"{'':24}{'all classes':>14}{'top_k=1':>14}")
    for key, label in (
        ("peak_mib", "peak RSS (MiB)"),
        ("added_mib", "added by the call (MiB)"),
        ("maps_mib", "returned maps (MiB)"),
        ("seconds", "time (s)"),
    ):
        print(f"{label:24}{rows['all'][key]:>14.1f}{rows['top1'][key]:>14.1f}")


if __name__ == "__main__":
    main()
