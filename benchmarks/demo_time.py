"""How long ``make demo`` takes from a fresh clone, install included, beside the machine's ResNet-50 speed.

Each run clones this repository's committed ``HEAD`` into a new temporary folder (``git clone``: what a new
user gets; uncommitted changes are not included) and times ``make demo`` there, from the creation of the
virtual environment and the installation of PyTorch and hiercam to the report. It prints each run's time,
the minimum, median and maximum, the pipeline's stages (median over runs, from the run's ``run.json``) and
how much the log holds (lines and characters: a log file, not a terminal). Before the first run and after
the last it measures a torchvision ResNet-50 forward pass (random weights, eval, batch 8, 224 x 224, 2
threads, median of 5: the measurement of ``benchmarks/cam_speed.py``), so that a time can be read as a
count of such forward passes on any machine. Issue 19's budget: at most 5 minutes, about 400 forward passes
of a machine where one takes 0.741 s.

Results go to ``benchmarks/results/demo_time.json``, one entry per run, written after every run, and each
run's output to ``demo_time_run<N>.log`` beside it; a second call with the same settings and commit adds runs
until ``--runs`` are done (resumable).

Options: ``--venv DIR`` reuses an existing virtual environment with hiercam's dependencies (no install: a
quicker check of the pipeline's part; not the headline figure); ``--quick`` runs ``make demo`` with
``hiercam demo --quick`` (a check of this script, in seconds after the install); ``--threads N`` passes
``--threads N`` to the demo.

Run: ``python benchmarks/demo_time.py --runs 3`` (the headline figure), or
``python benchmarks/demo_time.py --runs 1 --quick --venv .venv`` (a check of the script).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUDGET_SECONDS, BUDGET_FORWARDS = 300.0, 400


def resnet50_forward(rounds: int = 5) -> float:
    """Median seconds of a ResNet-50 forward pass, batch 8, as ``benchmarks/cam_speed.py`` measures it."""
    sys.path.insert(0, str(HERE))
    import cam_speed
    import torch

    before = torch.get_num_threads()
    try:
        model, images = cam_speed.setup(8, 20)  # 2 threads, random weights, eval, batch 8, 224 x 224

        def forward() -> object:
            with torch.no_grad():
                return model(images)

        return statistics.median(cam_speed.time_rounds({"forward": forward}, rounds)["forward"])
    finally:
        torch.set_num_threads(before)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def one_run(commit: str, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """Clone, ``make demo``, time it; the run's entry for the JSON."""
    demo_args = (["--quick"] if args.quick else []) + (
        ["--threads", str(args.threads)] if args.threads else []
    )
    with tempfile.TemporaryDirectory(prefix="hiercam-demo-") as folder:
        clone = Path(folder) / "hiercam"
        start = time.perf_counter()
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "checkout", "--quiet", commit], cwd=clone, check=True)
        command = [
            "make",
            "demo",
            f"PYTHON={args.python}",
            "DEMO_OUT=demo-report",
            f"DEMO_ARGS={shlex.join(demo_args)}",
        ]
        if args.venv is not None:  # reuse: its install markers are taken as up to date
            venv = Path(args.venv).resolve()
            command += [f"VENV={venv}", "-o", f"{venv}/.demo-installed", "-o", f"{venv}/.torch-installed"]
        with log.open("w") as stream:
            done = subprocess.run(command, cwd=clone, stdout=stream, stderr=subprocess.STDOUT, check=False)
        seconds = time.perf_counter() - start
        text = log.read_text(errors="replace")
        if done.returncode != 0:
            raise SystemExit(f"make demo failed ({done.returncode}); its output is in {log}:\n{text[-3000:]}")
        run_json = clone / "demo-report" / "run.json"
        stages = json.loads(run_json.read_text())["seconds"] if run_json.is_file() else {}
        threads = json.loads(run_json.read_text()).get("threads") if run_json.is_file() else None
    lines = text.splitlines()
    return {
        "seconds": seconds,
        "pipeline_seconds": stages.get("total"),
        "install_and_startup_seconds": seconds - stages["total"] if "total" in stages else None,
        "stages": stages,
        "threads": threads,
        "log_lines": len(lines),
        "log_characters": len(text),
        "last_line": lines[-1] if lines else "",
        "log": str(log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="fresh-clone runs wanted in the JSON (default 3)")
    parser.add_argument("--quick", action="store_true", help="`hiercam demo --quick`: a check of this script")
    parser.add_argument("--venv", default=None, help="reuse this virtual environment (no install)")
    parser.add_argument("--threads", type=int, default=None, help="pass --threads N to the demo")
    parser.add_argument(
        "--python", default="python3", help="the Python that creates the venv (default python3)"
    )
    parser.add_argument("--out", default=str(HERE / "results" / "demo_time.json"), help="the JSON file")
    args = parser.parse_args()
    commit = git("rev-parse", "HEAD")
    if git("status", "--porcelain", "--untracked-files=no"):
        print(f"note: uncommitted changes are not measured; the clone is at {commit[:12]}")
    settings = {"commit": commit, "quick": args.quick, "venv": args.venv, "threads": args.threads}
    out = Path(args.out)
    data: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    if data.get("settings") != settings:  # another commit or other options: start afresh
        data = {"settings": settings, "machine": machine(), "resnet50_forward_seconds": {}, "runs": []}
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(data["runs"]) < args.runs:
        data["resnet50_forward_seconds"]["before"] = resnet50_forward()
        print(f"ResNet-50 forward (batch 8, 2 threads): {data['resnet50_forward_seconds']['before']:.3f} s")
        while len(data["runs"]) < args.runs:
            index = len(data["runs"]) + 1
            entry = one_run(commit, args, out.with_name(f"{out.stem}_run{index}.log"))
            data["runs"].append(entry)
            out.write_text(json.dumps(data, indent=2) + "\n")  # resumable: one entry per finished run
            print(f"run {index}: {entry['seconds']:.1f} s ({entry['last_line']})")
        data["resnet50_forward_seconds"]["after"] = resnet50_forward()
    report(data)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {out}")


def report(data: dict[str, Any]) -> None:
    """Print the runs, min / median / max, the stages and the log's size."""
    runs, forward = data["runs"], data["resnet50_forward_seconds"]
    settings, where = data["settings"], data["machine"]
    print(f"\nmachine: {where['cpu']}, {where['cores']} cores, {where['platform']}, Python {where['python']}")
    print(
        f"commit {settings['commit'][:12]}; "
        + ", ".join(f"{k} {v}" for k, v in settings.items() if k != "commit")
    )
    unit = min(forward.values())  # the machine's speed when least disturbed
    print(
        "ResNet-50 forward, batch 8, 2 threads: "
        + ", ".join(f"{k} {v:.3f} s" for k, v in forward.items())
        + f"; forwards below are counted at {unit:.3f} s"
    )
    if max(forward.values()) > 1.2 * unit:
        print("warning: the forward time moved by over 20 % during the runs (the machine's load changed)")
    times = [run["seconds"] for run in runs]
    for i, run in enumerate(runs, 1):
        print(
            f"run {i}: {run['seconds']:.1f} s = {run['seconds'] / unit:.0f} forwards "
            f"(pipeline {run['pipeline_seconds']:.1f} s, install and start-up "
            f"{run['install_and_startup_seconds']:.1f} s); log {run['log_lines']} lines, "
            f"{run['log_characters']} characters"
        )
    low, mid, high = min(times), statistics.median(times), max(times)
    what = "make demo from a fresh clone" + (" (venv reused: no install)" if settings["venv"] else "")
    print(
        f"{what}: min {low:.0f} s, median {mid:.0f} s, max {high:.0f} s "
        f"({mid / unit:.0f} ResNet-50 forwards at the median; budget {BUDGET_SECONDS:.0f} s on a machine at "
        f"0.741 s, {BUDGET_FORWARDS} forwards)"
    )
    stages = [key for key in runs[0]["stages"]]
    print(f"\n{'stage (from run.json)':32s} {'median s':>9s} {'min s':>8s} {'max s':>8s} {'forwards':>9s}")
    for stage in stages:
        values = [run["stages"][stage] for run in runs if stage in run["stages"]]
        median = statistics.median(values)
        print(f"{stage:32s} {median:9.1f} {min(values):8.1f} {max(values):8.1f} {median / unit:9.0f}")
    rest = [run["install_and_startup_seconds"] for run in runs]
    print(f"{'install and start-up':32s} {statistics.median(rest):9.1f} {min(rest):8.1f} {max(rest):8.1f}")
    print(f"\ncommand: {shlex.join(sys.argv)}")


if __name__ == "__main__":
    main()
