"""How long each example script takes as the how-to pages run it, beside the machine's ResNet-50 speed.

Runs every example of ``examples/`` without ``--quick`` (the command its how-to page shows), each in a fresh
process in a scratch folder, one after the other, and prints its wall time, the time in ResNet-50 forward
passes (batch 8, 2 threads, as ``benchmarks/cam_speed.py`` measures them, before the first and after the last
example), and the machine, with the pages that state each time. ``voc_recipe.py`` needs the VOC data and is
left out.

Run: ``python benchmarks/examples_time.py [--only all_class_cams fuse_cams] [--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: examples that need data the repository does not hold
NEEDS_DATA = {"voc_recipe"}


def examples() -> dict[str, str]:
    """Every example script (by name) and the how-to page that states its time (the one that runs it)."""
    pages = {}
    for script in sorted((ROOT / "examples").glob("*.py")):
        if script.stem in NEEDS_DATA:
            continue
        found = [
            str(page.relative_to(ROOT))
            for page in sorted((ROOT / "docs").rglob("*.md"))
            if f"python examples/{script.name} " in page.read_text(encoding="utf-8")
        ]
        pages[script.stem] = ", ".join(found) or "(no page)"
    return pages


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    pages = examples()
    parser.add_argument("--only", nargs="+", default=list(pages), choices=list(pages), metavar="NAME")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the examples")
    parser.add_argument("--quick", action="store_true", help="--quick runs: checks this script")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from demo_time import machine, resnet50_forward

    forward = {"before": resnet50_forward()}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    seconds = {}
    for name in args.only:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, str(ROOT / "examples" / f"{name}.py"), *(["--quick"] if args.quick else [])],
                cwd=folder,
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            seconds[name] = time.perf_counter() - start
        print(f"{name}: {seconds[name]:.1f} s", flush=True)
    forward["after"] = resnet50_forward()
    unit = min(forward.values())
    where = machine()
    print(f"\nmachine: {where['cpu']}, {where['cores']} cores, {where['platform']}, Python {where['python']}")
    before, after = forward["before"], forward["after"]
    print(f"ResNet-50 forward, batch 8, 2 threads: before {before:.3f} s, after {after:.3f} s")
    print(f"\n{'example':22s} {'seconds':>8s} {'forwards':>9s}  page")
    for name, value in seconds.items():
        print(f"{name:22s} {value:8.1f} {value / unit:9.0f}  {pages[name]}")
    if args.json is not None:
        record = {"machine": where, "resnet50_forward_seconds": forward, "seconds": seconds}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
