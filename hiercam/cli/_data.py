"""The ``hiercam data`` command: ``hiercam data check ROOT`` validates a segmentation folder without training.

The logic, testable without argparse, is [`check_folder`][hiercam.datasets.check_folder].
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hiercam.cli._args import fraction, positive_int

__all__ = ["add_data_parser", "run_data"]


def add_data_parser(commands: Any) -> None:
    """Add the ``data`` command (sub-command ``check``) to the sub-parsers ``commands`` of ``hiercam``."""
    data = commands.add_parser(
        "data",
        help="check a dataset folder before training",
        description="Tools for your own dataset folder (layout: docs/howto/own-dataset.md).",
    )
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="validate a segmentation folder and print what each split holds",
        description="Read every image and mask of the train, val and test splits of ROOT: files readable, "
        "class ids in range, image_labels.json agreeing with the masks. Prints a table per split (images, "
        "sizes, presence of each class in %%, pixels per class) and flags near-ubiquitous classes and "
        "classes absent from a split. Exit status 1 when there are errors, 0 otherwise.",
    )
    check.add_argument("root", metavar="ROOT", help="the dataset folder (holding classes.json, images/)")
    check.add_argument(
        "--min-pixels",
        type=positive_int,
        default=1,
        metavar="N",
        help="labels from masks: fewest pixels that make a class present (default: 1)",
    )
    check.add_argument(
        "--min-fraction",
        type=fraction,
        default=0.0,
        metavar="F",
        help="labels from masks: smallest share of the image a present class covers (default: 0)",
    )
    check.add_argument(
        "--ubiquitous",
        type=fraction,
        default=0.9,
        metavar="F",
        help="flag classes present in more than this share of the training images (default: 0.9)",
    )


def run_data(args: argparse.Namespace) -> int:
    """Run ``hiercam data check``: print the report; 1 when the folder has errors, else 0."""
    from hiercam.datasets import check_folder

    report = check_folder(
        args.root,
        min_pixels=args.min_pixels,
        min_fraction=args.min_fraction,
        ubiquitous_fraction=args.ubiquitous,
    )
    print(report.to_text(), flush=True)
    if not report.ok:
        print(f"hiercam data check: {len(report.errors)} errors in {args.root}", file=sys.stderr)
        return 1
    return 0
