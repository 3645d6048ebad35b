"""The ``hiercam`` command: its argument parser and the ``demo``, ``run``, ``bench``, ``hierarchy`` commands.

Each command parses its arguments and calls ``hiercam.pipeline`` (or ``group_classes``); no logic of its own.
The ``cam`` command is in ``hiercam.cli._cam``, ``data check`` in ``hiercam.cli._data``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hiercam._version import __version__
from hiercam.cli._args import one_line, positive_int
from hiercam.cli._cam import add_cam_parser, run_cam
from hiercam.cli._data import add_data_parser, run_data

__all__ = ["main", "build_parser"]

# the preset names, without importing torch for `--help` (tests check they equal hiercam.pipeline.PRESETS)
PRESET_NAMES = (
    "paper",
    "spatial",
    "cam",
    "signal_groups",
    "fusion_weights",
    "orthogonal_light",
    "single_branch",
    "multiscale",
    "softmax_over_labels",
    "refined",
    "prototype",
    "prototype_siblings",
    "level_heads",
    "subcategory",
    "recommended",
)
PRESET_HELP = f"method settings: {', '.join(PRESET_NAMES)} (default: paper; see docs/benchmarks.md)"


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
        help="run the whole method on the bundled FashionScenes data and write a report",
        description="Train the base classifier, group its classes, train the level models, extract, fuse "
        "and evaluate CAMs on bundled FashionScenes data with a small CPU backbone; writes report.md, "
        "metrics.json and figures: the recommended method against the Grad-CAM baseline (the full "
        "ablation is `hiercam bench`). See README.md for its measured time; --quick is a smoke test of "
        "every stage in seconds (its numbers mean nothing).",
    )
    demo.add_argument("--quick", action="store_true", help="tiny data and 2 epochs: a smoke test")
    demo.add_argument("--out", default="demo-report", help="run directory (default: demo-report)")
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of data, initialisation and shuffling (default: 0)"
    )
    demo.add_argument("--force", action="store_true", help="redo every stage, even those up to date")
    demo.add_argument(
        "--preset",
        default="recommended",
        choices=PRESET_NAMES,
        help=f"method settings: {', '.join(PRESET_NAMES)} (default: recommended; see docs/benchmarks.md)",
    )
    _add_threads(demo)

    run = commands.add_parser(
        "run",
        help="run the pipeline with a config file (TOML or JSON)",
        description="Run the pipeline with the settings of CONFIG (see docs/pipeline.md for the keys). "
        "Stages already completed with the same inputs are skipped, so an interrupted run resumes.",
    )
    run.add_argument("config", help="a .toml or .json config file")
    run.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    run.add_argument("--data", default=None, help="data folder; overrides `data.root` of the config")
    run.add_argument("--seed", type=int, default=None, help="overrides `seed` of the config")
    run.add_argument("--force", action="store_true", help="redo every stage, even those up to date")
    run.add_argument(
        "--preset",
        default=None,
        choices=PRESET_NAMES,
        help="replace the config's method settings by a preset's (default: keep the config's)",
    )
    _add_threads(run)

    hierarchy = commands.add_parser(
        "hierarchy",
        help="print the class grouping of a trained classifier's checkpoint",
        description="Load a classifier's state dict (read with torch.load(weights_only=True)), take the rows "
        "of its classifier weight as class vectors and print the hierarchy found by hierarchical K-means.",
    )
    hierarchy.add_argument(
        "checkpoint", help="a state dict (.pt), a fit() checkpoint, or a weight tensor file"
    )
    hierarchy.add_argument("--levels", type=int, nargs="+", required=True, help="group counts, e.g. 12 8 5")
    hierarchy.add_argument("--layer", default=None, help="classifier layer name in the state dict, e.g. fc")
    hierarchy.add_argument("--names", default=None, help="text file with one class name per line")
    hierarchy.add_argument("--normalize", action="store_true", help="L2-normalise class vectors first")
    hierarchy.add_argument(
        "--weighted", action="store_true", help="weight group centres by their class counts"
    )
    hierarchy.add_argument("--seed", type=int, default=0, help="K-means seed (default: 0)")
    hierarchy.add_argument("--out", default=None, help="also save the hierarchy as JSON here")

    bench = commands.add_parser(
        "bench",
        help="the ablation table (paper Table 4) over several seeds, with mean and spread",
        description="Run the pipeline once per seed (the demo config, or --config) and write bench.md and "
        "bench.json with the mean, standard deviation and range of every figure. With several presets, "
        "each gets its own folder and bench.md, models are shared through OUT/cache, and compare.md sets "
        "the presets side by side.",
    )
    bench.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default: 3)")
    bench.add_argument(
        "--config",
        default=None,
        help="a config file (default: the FashionScenes setting of docs/benchmarks.md)",
    )
    bench.add_argument("--out", default="bench", help="output directory (default: bench)")
    bench.add_argument("--quick", action="store_true", help="the quick demo config: a smoke test")
    _add_threads(bench)
    bench.add_argument("--force", action="store_true", help="redo every stage, even those up to date")
    bench.add_argument(
        "--results",
        default=None,
        metavar="DIR",
        help="also keep each finished (dataset, preset, seed) as DIR/<dataset>/<preset>/seed_<n>.json and "
        "read back those already there with the same config, so an interrupted bench resumes "
        "(e.g. benchmarks/results)",
    )
    bench.add_argument(
        "--preset",
        nargs="+",
        default=None,
        choices=PRESET_NAMES,
        metavar="NAME",
        help="one or more presets to compare ("
        + ", ".join(PRESET_NAMES)
        + "); default: the config's own method settings",
    )
    add_cam_parser(commands)
    add_data_parser(commands)
    return parser


def _add_threads(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="PyTorch CPU threads (torch.set_num_threads); default: PyTorch's own (OMP_NUM_THREADS, or one "
        "per core). On a machine shared with other jobs, 1 is often much faster",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0 on success; 2 for a usage error or a mistake in the user's input: an invalid config (``ConfigError``,
    naming the key), a bad argument (``TypeError``/``ValueError`` naming it), a missing, damaged or misplaced
    file or folder (``OSError``, ``ValueError`` naming the file), a missing optional package
    (``ImportError``). Each is reported as one line ``hiercam <command>: error: ...`` on stderr, never a
    traceback (set the environment variable ``HIERCAM_TRACEBACK=1`` to get one), and is checked before any
    work where it can be.
    """
    started = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch

    threads = torch.get_num_threads()
    try:
        return _dispatch(args, started)
    except (ValueError, TypeError, OSError, ImportError) as error:  # ConfigError is a ValueError
        if os.environ.get("HIERCAM_TRACEBACK", "") not in ("", "0"):
            raise
        print(f"hiercam {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    finally:  # main() called from Python leaves the process's thread count as it found it
        torch.set_num_threads(threads)


def _dispatch(args: argparse.Namespace, started: float) -> int:
    """Run the parsed command: the output folder checked first, then the command's own work."""
    import torch

    from hiercam._io import check_out_dir

    out = getattr(args, "out", None)
    if out is not None and args.command == "hierarchy":  # a JSON file
        if Path(out).is_dir():
            raise ValueError(f"`--out` {out!r} is a folder; a JSON file to write was expected")
        check_out_dir(Path(out).parent, "--out")
    elif out is not None:
        check_out_dir(out, "--out")
    if args.command in ("demo", "run", "bench"):
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for all the processes
            print(_threads_line(args.command, torch.get_num_threads(), args.threads is None), flush=True)
    if args.command == "demo":
        return _demo(args, started)
    if args.command == "run":
        return _run(args, started)
    if args.command == "hierarchy":
        return _hierarchy(args)
    if args.command == "cam":
        return run_cam(args)
    if args.command == "data":
        return run_data(args)
    return _bench(args, started)


def _threads_line(command: str, threads: int, default: bool) -> str:
    """The first line of a pipeline command: its thread count, with a hint when the cores look busy."""
    line = f"hiercam {command}: {threads} thread{'s' if threads > 1 else ''}"
    line += " (PyTorch's default; --threads N to choose)" if default else ""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = os.cpu_count() or 1
    if threads > 1 and load >= cores - 0.5:  # other jobs hold the cores: threads would wait for each other
        line += (
            f"; the machine looks busy (load average {load:.1f} on {cores} cores): on a shared machine "
            "--threads 1 is often much faster"
        )
    return line


def _done(command: str, started: float, report: Path) -> None:
    """The last line of a command: the total time, from the start of ``main``, and where the report is."""
    seconds = time.perf_counter() - started
    took = f"{seconds:.0f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"
    print(f"hiercam {command}: done in {took}; report: {report}", flush=True)


def _demo(args: argparse.Namespace, started: float) -> int:
    from hiercam.pipeline import PRESETS, apply_preset, demo_config, run_pipeline
    from hiercam.pipeline.report import ablation_rows

    config = apply_preset(demo_config(quick=args.quick, seed=args.seed), args.preset)
    metrics = run_pipeline(config, args.out, force=args.force)
    print(f"\nmethod settings: preset {args.preset} ({PRESETS[args.preset].description})", flush=True)
    print("\n".join(ablation_rows(metrics)), flush=True)
    _done("demo", started, Path(args.out) / "report.md")
    return 0


def _run(args: argparse.Namespace, started: float) -> int:
    from hiercam.pipeline import load_config, run_pipeline
    from hiercam.pipeline.distributed import init_distributed
    from hiercam.pipeline.report import ablation_rows

    changes: dict[str, Any] = {}
    if args.data is not None:
        changes["data__root"] = args.data
    if args.seed is not None:
        changes["seed"] = args.seed
    config = load_config(args.config, **changes)
    if args.preset is not None:
        from hiercam.pipeline import apply_preset

        config = apply_preset(config, args.preset)
    distributed = init_distributed()  # under torchrun: join the other processes
    out = args.out if args.out is not None else Path("runs") / Path(args.config).stem
    metrics = run_pipeline(config, out, force=args.force)
    if distributed.is_main:
        print("\n" + "\n".join(ablation_rows(metrics)), flush=True)
        _done("run", started, Path(out) / "report.md")
    return 0


def _hierarchy(args: argparse.Namespace) -> int:
    from hiercam._io import read_text_file
    from hiercam.grouping import group_classes
    from hiercam.pipeline.checkpoints import classifier_weight

    names = None
    if args.names is not None:
        lines = read_text_file(args.names, "--names").splitlines()
        names = [line.strip() for line in lines if line.strip()]
    weight = classifier_weight(args.checkpoint, args.layer)
    hierarchy = group_classes(
        weight,
        args.levels,
        names,
        unit_norm=args.normalize,
        weighted=args.weighted,
        seed=args.seed,
    )
    print(hierarchy)
    if args.out is not None:
        print(f"wrote {hierarchy.save(args.out)}")
    return 0


def _bench(args: argparse.Namespace, started: float) -> int:
    from hiercam._io import check_out_dir
    from hiercam.pipeline import apply_preset, bench_config, load_config, run_bench, run_preset_bench
    from hiercam.pipeline.report import bench_markdown, compare_markdown

    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    if args.results is not None:
        check_out_dir(args.results, "--results")
    config = load_config(args.config) if args.config is not None else bench_config(quick=args.quick)
    seeds = list(range(args.seeds))
    if args.preset is not None and len(args.preset) > 1:
        compared = run_preset_bench(
            config, args.preset, seeds, args.out, force=args.force, results=args.results
        )
        print("\n" + compare_markdown(compared), flush=True)
        _done("bench", started, Path(args.out) / "compare.md")
        return 0
    # the record folder: the preset, else the config's own method settings named by the config
    label = Path(args.config).stem if args.config is not None else ("quick" if args.quick else "bench")
    if args.preset is not None:
        config = apply_preset(config, args.preset[0])
        label = args.preset[0]
    result = run_bench(config, seeds, args.out, force=args.force, results=args.results, label=label)
    print("\n" + bench_markdown(result), flush=True)
    _done("bench", started, Path(args.out) / "bench.md")
    return 0
