"""Host synchronisations of the CAM engine's per-batch path on a CUDA GPU, with the value checks off.

For every case, the extractor is called once (the first call chooses the layer and verifies the closed form,
which may synchronise), then once more under ``torch.cuda.set_sync_debug_mode``: ``"warn"`` (the default)
records every synchronising CUDA call (a blocking copy either way, a stream synchronisation) with the line
of Python that made it; ``--error`` turns the first one into an exception instead. The CPU-side count of
``hiercam._host_reads.HostReads`` (what the CPU tests check) is printed next to it.

Expected: 0 for every case but those marked "known", whose syncs are listed in ``docs/cam.md``
("On the GPU and with torch.compile"). The script exits with status 1 when an unmarked case synchronises,
and with status 0 and a message when CUDA is not available.

Usage: python benchmarks/gpu_sync_check.py [--error] [--batch 8] [--size 112]
"""

from __future__ import annotations

import argparse
import functools
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import hiercam
from hiercam._host_reads import host_reads

Case = tuple[Callable[[], Any], dict[str, Any], bool]  # extractor, call options, known to synchronise


def small_cnn() -> nn.Module:
    """Conv, ReLU, conv, ReLU, global average pool, linear (the closed form holds at layer "3")."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 20),
    )


def cases(device: torch.device) -> dict[str, Case]:
    from torchvision.models import resnet18

    def on(model: nn.Module) -> nn.Module:
        return model.to(device).eval()

    def two_branch() -> nn.Module:
        torch.manual_seed(0)
        backbone = functools.partial(hiercam.SmallConvNet, width=8, norm="group")
        return on(hiercam.TwoBranchNet(backbone, num_classes=20))

    return {
        "GradCAM general path": (lambda: hiercam.GradCAM(on(small_cnn()), "3", closed_form=False), {}, False),
        "GradCAM closed form": (lambda: hiercam.GradCAM(on(small_cnn()), "3"), {}, False),
        "GradCAM closed form, classes=[3, 1]": (
            lambda: hiercam.GradCAM(on(small_cnn()), "3"),
            {"classes": [3, 1]},
            False,
        ),
        "GradCAM resnet18 layer4": (
            lambda: hiercam.GradCAM(on(resnet18(num_classes=20)), "layer4"),
            {},
            False,
        ),
        "GradCAMPlusPlus general path": (
            lambda: hiercam.GradCAMPlusPlus(on(small_cnn()), "3", closed_form=False),
            {},
            False,
        ),
        "LayerCAM general path": (lambda: hiercam.LayerCAM(on(small_cnn()), "1"), {}, False),
        "LayerCAM closed form": (lambda: hiercam.LayerCAM(on(small_cnn()), "3"), {}, False),
        "ScoreCAM": (
            lambda: hiercam.ScoreCAM(on(small_cnn()), "3", batch_size=64, progress=False),
            {},
            False,
        ),
        "MultiScaleCAM GradCAM": (
            lambda: hiercam.MultiScaleCAM(hiercam.GradCAM(on(small_cnn()), "3"), scales=(1.0, 0.5)),
            {},
            False,
        ),
        "GradCAM TwoBranchNet": (lambda: hiercam.GradCAM(two_branch()), {}, False),
        "GradCAM top_k=1 (known)": (lambda: hiercam.GradCAM(on(small_cnn()), "3"), {"top_k": 1}, True),
    }


def synchronisations(call: Callable[[], object], error: bool) -> list[str]:
    """The synchronising CUDA calls of ``call()`` as ``file:line: message`` (with ``error``: the first)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("error" if error else "warn")
        try:
            call()
        except RuntimeError as failure:
            frames = [f for f in traceback.extract_tb(failure.__traceback__) if "hiercam" in f.filename]
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
            return [f"{where}: {str(failure).splitlines()[0]}"]
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return [
        f"{w.filename}:{w.lineno}: {str(w.message).splitlines()[0]}"
        for w in caught
        if "sync" in str(w.message)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--error", action="store_true", help='set_sync_debug_mode("error"): stop at the first'
    )
    parser.add_argument("--batch", type=int, default=8, help="images per call (default 8)")
    parser.add_argument("--size", type=int, default=112, help="image height and width (default 112)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("CUDA is not available: nothing to check (run this on a machine with an NVIDIA GPU)")
        return 0
    device = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}, hiercam {hiercam.__version__}")
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    unexpected = 0
    with hiercam.checks(False):
        for name, (build, options, known) in cases(device).items():
            cam = build()
            cam(images, **options)  # chooses the layer, verifies the closed form: may synchronise
            cam(images, **options)
            found = synchronisations(lambda: cam(images, **options), args.error)  # noqa: B023
            reads = host_reads(lambda: cam(images, **options))  # noqa: B023
            status = "ok" if not found else ("known" if known else "UNEXPECTED")
            unexpected += bool(found) and not known
            print(f"{name:<40} syncs {len(found):>3}  host reads (CPU count) {reads:>3}  {status}")
            for line in found[:10]:
                print(f"    {line}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
