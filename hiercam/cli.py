"""The ``hiercam`` command line: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from hiercam._version import __version__

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hiercam`` command."""
    parser = argparse.ArgumentParser(
        prog="hiercam",
        description="Better class activation maps from a hierarchy of class groups (Meng et al., 2020).",
    )
    parser.add_argument("--version", action="version", version=f"hiercam {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="train a small classifier on synthetic data and print the class hierarchy it implies",
        description="Train a linear classifier on 12 synthetic classes whose features share channels "
        "within a planted two-level hierarchy, then recover the hierarchy from its class vectors.",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--out", default=None, help="folder for hierarchy.json (default: print only)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(seed=args.seed, out=args.out)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse rejects it first


def _demo(seed: int, out: str | None) -> int:
    import torch
    import torch.nn.functional as F

    from hiercam.grouping import group_classes

    # Features shaped like a CNN's: channels shared by a super-group (4 each), by a group (4 each) and
    # private to a class (2 each), as "dog" channels fire for every dog breed. 2 x 3 x 2 = 12 classes.
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(12).repeat_interleave(100)
    parts = [(labels // 6, 2, 4), (labels // 2, 6, 4), (labels, 12, 2)]
    features = torch.cat(
        [F.one_hot(index, count).repeat_interleave(width, 1) for index, count, width in parts], 1
    )
    noise = torch.randn((2, *features.shape), generator=generator) * 0.3
    features = torch.relu(features * (1 + noise[0]) + noise[1])
    torch.manual_seed(seed)
    classifier = torch.nn.Linear(features.shape[1], 12)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        # The L2 penalty matters: trained to separation without it, the rows of sibling classes move apart
        # (only the sibling competes on their shared channels) and the class vectors lose the hierarchy.
        loss = F.cross_entropy(classifier(features), labels) + 0.01 * classifier.weight.pow(2).sum()
        loss.backward()
        optimizer.step()
    accuracy = (classifier(features).argmax(1) == labels).float().mean().item()
    names = [f"s{c // 6}g{c // 2 % 3}c{c % 2}" for c in range(12)]
    hierarchy = group_classes(classifier, levels=(6, 2), class_names=names, random_state=seed)
    print(f"trained a linear classifier on 12 synthetic classes: train accuracy {accuracy:.1%}")
    print("class sNgMcK is class K of group M of super-group N; the planted tree is recovered when each")
    print("level-1 group holds one sNgM pair and each level-2 group one sN prefix.\n")
    print(hierarchy)
    if out is not None:
        from pathlib import Path

        path = hierarchy.save(Path(out) / "hierarchy.json")
        print(f"\nwrote {path}")
    return 0
