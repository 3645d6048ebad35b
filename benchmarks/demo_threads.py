"""The demo's stages with 1 and 2 threads (and a loading worker), back to back, beside a ResNet-50 forward.

Runs the demo pipeline (``hiercam.pipeline.demo_config`` with the preset ``recommended``, as ``hiercam demo``)
once per setting and round, each in a fresh process and folder, in rotating order so that changing machine
load hits every setting alike, and prints each stage's median seconds per setting (from the run's
``run.json``) and its ratio to the first setting. Before each run it times a torchvision ResNet-50 forward
pass (batch 8, 224 x 224, median of 3) with the run's thread count: the unit in which issue 19 states the
demo's time budget, and a gauge of how loaded the machine was.

Settings: ``t1`` (1 thread, loading in the main process), ``t2`` (2 threads), ``t1w1`` (1 thread and one
DataLoader worker). ``--train-scenes`` and ``--epochs`` shrink the runs for a quick look; image size, model
and batch stay the demo's, so the per-step costs compare like with like.

``--steps N`` times only training steps of the demo's two kinds of model, 1 and 2 threads interleaved step by
step (seconds; the minimum shows the machine at its quietest).

Run: ``python benchmarks/demo_threads.py [--rounds 1] [--settings t1 t2 t1w1] [--train-scenes 1000]``, or
``python benchmarks/demo_threads.py --steps 40``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SETTINGS = {"t1": (1, 0), "t2": (2, 0), "t1w1": (1, 1), "t2w1": (2, 1)}


def resnet50_forward(threads: int, rounds: int = 3) -> float:
    """Median seconds of a ResNet-50 forward pass, batch 8, 224 x 224, with ``threads`` threads."""
    import torch
    from torchvision.models import resnet50

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model, images = resnet50(num_classes=20).eval(), torch.randn(8, 3, 224, 224)
        times = []
        with torch.no_grad():
            model(images)  # warm-up
            for _ in range(rounds):
                start = time.perf_counter()
                model(images)
                times.append(time.perf_counter() - start)
        return statistics.median(times)
    finally:
        torch.set_num_threads(before)


def step_times(rounds: int) -> None:
    """Training steps of the demo's models (batch 32, 80 x 80) with 1 and 2 threads, interleaved step by step.

    Prints the minimum (the machine at its quietest), 10th percentile and median per model and thread count:
    seconds instead of minutes, and the minimum shows what a quiet machine would do even on a busy one.
    """
    import torch

    from hiercam.losses import TwoBranchLoss
    from hiercam.pipeline import demo_config
    from hiercam.pipeline.networks import build_classifier, build_two_branch

    config = demo_config()
    before = torch.get_num_threads()
    torch.manual_seed(0)
    images, labels = torch.randn(32, 3, 80, 80), torch.randint(0, 2, (32, 10)).float()
    base = build_classifier(config.model, 10, 0)
    pair = build_two_branch(config.model, 10, 1)
    two_branch_loss = TwoBranchLoss(weight=1e-6, reduction="sum")
    models = {
        "base classifier": (base, torch.nn.BCEWithLogitsLoss()),
        "two-branch model": (pair, lambda output, target: two_branch_loss(output, target)[0]),
    }
    try:
        for name, (model, loss) in models.items():
            optimizer = torch.optim.Adam(model.parameters(), 1e-3)

            def step(model: Any = model, loss: Any = loss, optimizer: Any = optimizer) -> None:
                optimizer.zero_grad()
                loss(model(images), labels).backward()
                optimizer.step()

            times: dict[int, list[float]] = {1: [], 2: []}
            for threads in times:  # warm-up
                torch.set_num_threads(threads)
                step()
            for r in range(rounds):
                for threads in (1, 2) if r % 2 else (2, 1):
                    torch.set_num_threads(threads)
                    start = time.perf_counter()
                    step()
                    times[threads].append(time.perf_counter() - start)
            for threads, values in times.items():
                values.sort()
                low, tenth, median = values[0], values[len(values) // 10], statistics.median(values)
                print(
                    f"{name}, {threads} thread(s): min {1e3 * low:.1f} ms, 10th percentile "
                    f"{1e3 * tenth:.1f} ms, median {1e3 * median:.1f} ms"
                )
    finally:
        torch.set_num_threads(before)


def child(threads: int, workers: int, out: str, changes: dict[str, Any]) -> None:
    """One demo run in this process; prints the run's ``seconds`` as JSON on the last line."""
    import torch

    from hiercam.pipeline import apply_preset, demo_config, run_pipeline

    torch.set_num_threads(threads)
    config = apply_preset(demo_config().replace(data__num_workers=workers, **changes), "recommended")
    result = run_pipeline(config, out, progress=False, log=lambda _line: None)
    print(json.dumps(result.seconds))


def run_setting(name: str, changes: dict[str, Any]) -> dict[str, float]:
    threads, workers = SETTINGS[name]
    with tempfile.TemporaryDirectory() as folder:
        code = (
            f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import demo_threads;"
            f"demo_threads.child({threads}, {workers}, {folder!r}, {changes!r})"
        )
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        seconds: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        seconds["process"] = time.perf_counter() - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs per setting (default 1)")
    parser.add_argument("--settings", nargs="+", default=["t1", "t2", "t1w1"], choices=list(SETTINGS))
    parser.add_argument("--train-scenes", type=int, default=None, help="fewer training scenes (quick look)")
    parser.add_argument("--epochs", type=int, default=None, help="fewer epochs (quick look)")
    parser.add_argument("--json", default=None, help="also write the raw figures here")
    parser.add_argument(
        "--steps", type=int, default=None, metavar="N", help="only N interleaved training steps per setting"
    )
    args = parser.parse_args()
    if args.steps is not None:
        step_times(args.steps)
        return
    changes: dict[str, Any] = {}
    if args.train_scenes is not None:
        changes["data__train_scenes"] = args.train_scenes
    if args.epochs is not None:
        changes["train__epochs"] = args.epochs
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in args.settings}
    for r in range(args.rounds):
        order = args.settings[r % len(args.settings) :] + args.settings[: r % len(args.settings)]
        for name in order:
            forward = resnet50_forward(SETTINGS[name][0])
            seconds = run_setting(name, changes)
            seconds["resnet50_forward"] = forward
            runs[name].append(seconds)
            print(f"round {r + 1} {name}: total {seconds['total']:.1f} s, ResNet-50 forward {forward:.3f} s")
    stages = [key for key in runs[args.settings[0]][0] if key != "resnet50_forward"] + ["resnet50_forward"]
    first = args.settings[0]
    print(
        f"\nmedian seconds over {args.rounds} round(s); ratio to {first} in brackets"
        + (f"; {changes}" if changes else "")
    )
    header = f"{'stage':28s}" + "".join(f"{name:>18s}" for name in args.settings)
    print(header)
    for stage in stages:
        medians = {
            name: statistics.median(run.get(stage, float("nan")) for run in values)
            for name, values in runs.items()
        }
        cells = "".join(f"{medians[n]:10.2f} ({medians[n] / medians[first]:4.2f})" for n in args.settings)
        print(f"{stage:28s}{cells}")
    if args.json is not None:
        Path(args.json).write_text(json.dumps({"changes": changes, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
