"""The ``hiercam cam`` command: its arguments, and the call to ``explain_images``.

The logic, testable without argparse, is [`explain_images`][hiercam.cli.explain.explain_images].
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hiercam.cam import IRN_SCALES, METHODS
from hiercam.cli._args import eigen_smooth_methods

__all__ = ["add_cam_parser", "parse_method_options", "run_cam"]


def add_cam_parser(commands: Any) -> None:
    """Add the ``cam`` command to the sub-parsers ``commands`` of the ``hiercam`` parser."""
    cam = commands.add_parser(
        "cam",
        help="class activation maps of image files: overlay PNGs and raw maps",
        description="Explain image files with a torchvision or timm classifier: writes DIR/<image>.pt (the "
        "maps, classes and scores), DIR/<image>_<class>.png overlays (drawn on the image scaled down to at "
        "most 2048 pixels on its longer side) and DIR/summary.json. Nothing is downloaded: "
        "--weights is a local state dict read with torch.load(weights_only=True); without it the model keeps "
        "its random initialisation (a warning says so).",
    )
    cam.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files (any format PIL reads), folders, or quoted glob patterns such as 'photos/*.jpg'; "
        "files of a folder or pattern that are not images are skipped and listed",
    )
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
        nargs="+",
        metavar="NAME",
        help="target layer, a dotted module name, or several (their maps averaged) (default: automatic)",
    )
    cam.add_argument(
        "--method",
        default="gradcam",
        metavar="NAME",
        help=f"one of {', '.join(METHODS)} (default gradcam; case, '-' and '_' ignored)",
    )
    which = cam.add_mutually_exclusive_group()
    which.add_argument(
        "--classes", type=int, nargs="+", default=None, metavar="K", help="class indices to explain"
    )
    which.add_argument(
        "--top-k",
        dest="top_k",
        type=int,
        default=None,
        metavar="K",
        help="explain the K highest-scoring classes of each image (default 1)",
    )
    cam.add_argument(
        "--class-names",
        default=None,
        metavar="FILE",
        help="the model's class names: a JSON list or one name per line (shown in the output)",
    )
    cam.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=[224],
        metavar="S",
        help="input size: S or H W, 8 to 4096 pixels a side (default 224)",
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
    cam.add_argument(
        "--eigen-smooth",
        action="store_true",
        help="the first principal component of the method's weighted activations (pytorch-grad-cam's "
        f"eigen_smooth; not taken by {', '.join(eigen_smooth_methods(takes=False))})",
    )
    cam.add_argument(
        "--multiscale",
        type=float,
        nargs="*",
        default=None,
        metavar="S",
        help="IRN's test-time augmentation: the maps of the image at these scales and of its mirror images, "
        f"averaged (no value: {' '.join(f'{s:g}' for s in IRN_SCALES)})",
    )
    cam.add_argument(
        "--method-option",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="a keyword argument of the method's constructor, repeatable; VALUE is read as JSON, else kept "
        "as text (e.g. --method-option comparisons=[1,2] --method-option alpha=0.8 for finercam)",
    )
    cam.add_argument("--no-overlay", action="store_true", help="write only the maps (no matplotlib needed)")
    cam.add_argument(
        "--device",
        default=None,
        metavar="DEVICE",
        help="cpu, cuda, cuda:N or mps (default: cuda if available)",
    )
    cam.add_argument("--out", required=True, metavar="DIR", help="output directory")


def parse_method_options(pairs: list[str]) -> dict[str, Any]:
    """``--method-option NAME=VALUE`` pairs as a dict; each VALUE read as JSON, else kept as text.

    Raises:
        ValueError: a pair without ``=`` or with an empty name, or a name given twice.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        name = name.strip()
        if not equals or not name:
            raise ValueError(f"--method-option must be NAME=VALUE, got {pair!r}")
        if name in options:
            raise ValueError(f"--method-option {name!r} is given twice")
        try:
            options[name] = json.loads(text)
        except json.JSONDecodeError:
            options[name] = text
    return options


def run_cam(args: argparse.Namespace) -> int:
    """Run ``hiercam cam`` with parsed arguments; 0 on success.

    A mistake in the user's input raises (``TypeError``, ``ValueError``, ``OSError``, ``ImportError``), and
    ``hiercam.cli.commands.main`` reports it as one line with exit status 2.
    """
    from hiercam.cli.explain import explain_images

    records = explain_images(
        args.images,
        args.model,
        args.out,
        weights=args.weights,
        num_classes=args.num_classes,
        layer=args.layer,
        method=args.method,
        classes=args.classes,
        top_k=args.top_k,
        size=args.size,
        input_norm=args.input_norm,
        normalize=None if args.normalize == "none" else args.normalize,
        overlays=not args.no_overlay,
        device=args.device,
        class_names=args.class_names,
        eigen_smooth=args.eigen_smooth,
        scales=None if args.multiscale is None else args.multiscale or IRN_SCALES,
        method_options=parse_method_options(args.method_option or []),
    )
    for record in records:
        labels = record.names or [str(k) for k in record.classes]
        pairs = ", ".join(f"{k} ({s:.2f})" for k, s in zip(labels, record.scores, strict=True))
        print(f"{record.image}: classes {pairs} -> {record.maps}")
    summary = Path(args.out) / "summary.json"
    skipped = json.loads(summary.read_text(encoding="utf-8"))["skipped"]
    if skipped:
        print(f"skipped {len(skipped)} files that are not images: {', '.join(skipped)}")
    print(f"wrote {summary}")
    return 0
