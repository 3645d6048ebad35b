"""The ``hiercam cam`` command: its arguments, and the call to ``explain_images``.

The logic, testable without argparse, is [`explain_images`][hiercam.cli.explain.explain_images].
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_cam_parser", "run_cam"]


def add_cam_parser(commands: Any) -> None:
    """Add the ``cam`` command to the sub-parsers ``commands`` of the ``hiercam`` parser."""
    cam = commands.add_parser(
        "cam",
        help="class activation maps of image files: overlay PNGs and raw maps",
        description="Explain image files with a torchvision or timm classifier: writes DIR/<image>.pt (the "
        "maps, classes and scores), DIR/<image>_<class>.png overlays and DIR/summary.json. Nothing is "
        "downloaded: "
        "--weights is a local state dict read with torch.load(weights_only=True); without it the model keeps "
        "its random initialisation (a warning says so).",
    )
    cam.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    cam.add_argument(
        "--model",
        required=True,
        metavar="NAME",
        help="a torchvision classification model (e.g. resnet50) or timm:<name>",
    )
    cam.add_argument(
        "--weights", default=None, metavar="FILE", help="a local state dict file that fits the model"
    )
    cam.add_argument(
        "--num-classes", type=int, default=None, metavar="K", help="classes of the model (default: 1000)"
    )
    cam.add_argument(
        "--layer",
        default=None,
        metavar="NAME",
        help="target layer, a dotted module name (default: automatic)",
    )
    cam.add_argument(
        "--method",
        default="gradcam",
        metavar="NAME",
        help="gradcam (default), gradcamplusplus, xgradcam, layercam, hirescam, cam: hiercam.cam.METHODS",
    )
    which = cam.add_mutually_exclusive_group()
    which.add_argument(
        "--classes", type=int, nargs="+", default=None, metavar="K", help="class indices to explain"
    )
    which.add_argument(
        "--top", type=int, default=None, metavar="K", help="explain the K best classes of each image (1)"
    )
    cam.add_argument(
        "--size", type=int, nargs="+", default=[224], metavar="S", help="input size: S or H W (default 224)"
    )
    cam.add_argument(
        "--input-norm",
        default="imagenet",
        choices=("imagenet", "tanh", "none"),
        help="pixel scaling: ImageNet mean/std (default), x/127.5-1 (tanh) or [0, 1] (none)",
    )
    cam.add_argument(
        "--normalize",
        default="max",
        choices=("max", "minmax", "none"),
        help="rescaling of the saved maps (default: max)",
    )
    cam.add_argument("--no-overlay", action="store_true", help="write only the maps (no matplotlib needed)")
    cam.add_argument(
        "--device", default=None, metavar="DEVICE", help="e.g. cpu or cuda (default: cuda if available)"
    )
    cam.add_argument("--out", required=True, metavar="DIR", help="output directory")


def run_cam(args: argparse.Namespace) -> int:
    """Run ``hiercam cam`` with parsed arguments; 0 on success, 2 for a mistake in the user's input."""
    from hiercam.cli.explain import explain_images

    try:
        records = explain_images(
            args.images,
            args.model,
            args.out,
            weights=args.weights,
            num_classes=args.num_classes,
            layer=args.layer,
            method=args.method,
            classes=args.classes,
            top=args.top,
            size=args.size,
            input_norm=args.input_norm,
            normalize=None if args.normalize == "none" else args.normalize,
            overlays=not args.no_overlay,
            device=args.device,
        )
    except (TypeError, ValueError, ImportError) as error:  # the user's files, names and options
        print(f"hiercam cam: error: {error}", file=sys.stderr)
        return 2
    for record in records:
        pairs = ", ".join(f"{k} ({s:.2f})" for k, s in zip(record.classes, record.scores, strict=True))
        print(f"{record.image}: classes {pairs} -> {record.maps}")
    print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0
