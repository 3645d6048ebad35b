"""How long each example script takes as the how-to pages run it, beside the machine's ResNet-50 speed.

Runs every example of ``examples/`` without ``--quick`` (the command its how-to page shows), each in a fresh
process in a scratch folder, one after the other, and prints its wall time, the time in ResNet-50 forward
passes (batch 8, 2 threads, as ``benchmarks/cam_speed.py`` measures them, before the first and after the last
example), and the machine. The how-to pages state these times. ``voc_recipe.py`` needs the VOC data and is
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
#: example -> its how-to page (where its time is stated)
PAGES = {
    "all_class_cams": "docs/howto/cams.md",
    "evaluate_cams": "docs/howto/evaluate.md",
    "fuse_cams": "docs/howto/fusion.md",
    "hierarchy_levels": "docs/howto/hierarchy.md",
    "orthogonal_loss": "docs/howto/orthogonal-loss.md",
    "two_branch_backbone": "docs/howto/two-branch.md",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", default=list(PAGES), choices=list(PAGES), metavar="NAME")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the examples")
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
                [sys.executable, str(ROOT / "examples" / f"{name}.py")],
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
        print(f"{name:22s} {value:8.1f} {value / unit:9.0f}  {PAGES[name]}")
    if args.json is not None:
        record = {"machine": where, "resnet50_forward_seconds": forward, "seconds": seconds}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
