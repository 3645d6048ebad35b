"""Running the whole method: ``run_pipeline`` for one config, ``run_bench`` over seeds, presets."""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from hiercam._io import atomic_write_json, atomic_write_text
from hiercam._progress import print_line
from hiercam._version import __version__
from hiercam.pipeline.config import ConfigError, PipelineConfig
from hiercam.pipeline.context import RunContext
from hiercam.pipeline.distributed import Distributed
from hiercam.pipeline.evaluation import score_run
from hiercam.pipeline.networks import check_backbone, check_weights
from hiercam.pipeline.presets import apply_preset
from hiercam.pipeline.report import bench_markdown, compare_markdown, seed_stats, write_report
from hiercam.pipeline.results import RunResult, VariantScores, strict_json
from hiercam.pipeline.stages import (
    build_hierarchy,
    ensemble_size,
    extract_maps,
    load_hierarchy_file,
    train_base,
    train_ensemble,
    train_levels,
    train_shuffled_levels,
)

__all__ = [
    "run_pipeline",
    "run_bench",
    "run_preset_bench",
    "seed_record_path",
]

#: The splits a run extracts and scores (``test=False``: validation only).
_EVAL_SPLITS = ("val", "test")


def run_pipeline(
    config: PipelineConfig,
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print_line,
    test: bool = True,
    cache: str | Path | None = None,
) -> RunResult:
    """Run every stage into ``out``; stages whose inputs did not change since they completed are skipped.

    Writes ``config.json`` (the full config), ``run.json`` (versions, seeds, timings), ``metrics.json``,
    ``report.md`` and ``figures/*.png`` (when matplotlib is installed), besides the stages' own artifacts.
    Everything that can be checked before work starts is checked first (the config against the dataset and
    the processes, the backbone's name, the data); only then is ``config.json`` written, and the outputs of
    an earlier run in ``out`` removed, so that ``config.json`` always describes the run that wrote the
    ``metrics.json`` beside it.

    Args:
        config: the run's settings.
        out: run directory.
        force: redo every stage even when up to date.
        progress: progress of training (per epoch), CAM extraction and scoring: tqdm bars when stderr is a
            terminal, plain lines otherwise (one per epoch, one per extraction and scoring step).
        log: where progress lines go (default: stdout, flushed line by line).
        test: also extract and score the test split. Hyper-parameter sweeps pass ``False`` so that test data
            is never looked at while choosing.
        cache: a folder for models and CAMs shared between runs (stored under content keys), e.g. by the
            runs of a sweep; default ``out``.

    Returns:
        The run's [`RunResult`][hiercam.pipeline.RunResult]; ``metrics.json`` is its ``to_json()``.

    Raises:
        ConfigError: a setting that cannot run here (naming the key), before any work.
        FileNotFoundError: missing data.
        ValueError: damaged data or files of an earlier run (naming the file).
    """
    out = Path(out)
    distributed = Distributed.current()
    if not distributed.is_main:  # under torchrun only rank 0 logs and writes
        log = _silent
    ctx = RunContext(
        config, out, force=force, progress=progress, log=log, cache=None if cache is None else Path(cache)
    )
    splits = _EVAL_SPLITS if test else ("val",)
    _preflight(ctx, splits)  # everything that can be checked before work starts
    if distributed.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in _RUN_OUTPUTS:  # from an earlier run: config.json must describe the metrics beside it
            (out / stale).unlink(missing_ok=True)
        atomic_write_json(out / "config.json", config.to_dict())
    started = time.perf_counter()

    log(f"[1/4] base classifier and class hierarchy ({config.data.dataset}, {config.model.backbone})")
    stage = time.perf_counter()
    base = train_base(ctx)
    hierarchy, hierarchy_key = build_hierarchy(ctx, base)
    log("no group level: the method's rows are the baseline maps" if hierarchy is None else str(hierarchy))
    ctx.timings["stage1_base_and_hierarchy"] = time.perf_counter() - stage

    log(
        (
            "[2/4] level models: none (no group level)"
            if hierarchy is None
            else "[2/4] level models: one level-heads net, a head per level (`method.level_heads`)"
            if config.method.level_heads
            else "[2/4] level models: single-branch only (`method.branches` = 1)"
            if config.method.branches == 1
            else f"[2/4] level models: two-branch (orthogonal weight {config.method.orthogonal_weight:g}, "
            f"{config.method.orthogonal_reduction})" + (" and single-branch" if config.ablation else "")
        )
        + (
            f", the ensemble control's {ensemble_size(config, hierarchy) - 1} more base classifier(s)"
            if config.ensemble
            else ""
        )
        + (", the shuffled-hierarchy control's level models" if config.shuffled_control and hierarchy else "")
        + (", SC-CAM's sub-category net" if config.method.subcategories else "")
    )
    stage = time.perf_counter()
    models = {base.identity: base}
    if config.ensemble:  # the ensemble control: as many single-branch models as the method trains
        for index in range(1, ensemble_size(config, hierarchy)):
            partner = train_ensemble(ctx, index=index)
            models[partner.identity] = partner
    models.update(train_levels(ctx, hierarchy, hierarchy_key))
    models.update(train_shuffled_levels(ctx, hierarchy))
    if config.method.subcategories:  # SC-CAM's net (row `subcategory`) and its control's
        from hiercam.pipeline.subcategories import train_subcategories

        models.update(train_subcategories(ctx, base))
    ctx.timings["stage2_levels"] = time.perf_counter() - stage

    log(f"[3/4] class activation maps of every model ({', '.join(splits)})")
    stage = time.perf_counter()
    extracted = {split: extract_maps(ctx, models, split, hierarchy) for split in splits}
    if config.method.prototype_context != "none":  # LPCAM maps of the base classifier (row `prototype`)
        from hiercam.pipeline.prototypes import prototype_maps

        extracted = {
            split: dataclasses.replace(
                maps, prototype=prototype_maps(ctx, base, hierarchy, hierarchy_key, split)
            )
            for split, maps in extracted.items()
        }
    ctx.timings["stage3_cams"] = time.perf_counter() - stage

    log(f"[4/4] evaluation: mIoU and localisation error, M0' = {config.method.rest_reduction!r}")
    result = score_run(ctx, models, hierarchy, extracted)
    ctx.timings["total"] = time.perf_counter() - started
    result.seconds = dict(ctx.timings)
    if distributed.is_main:
        _write_outputs(ctx, result)
    distributed.barrier()  # the processes end together: none leaves while rank 0 still writes
    return result


def _write_outputs(ctx: RunContext, result: RunResult) -> None:
    """``metrics.json``, ``run.json`` and the report (rank 0)."""
    config, out = ctx.config, ctx.out
    result.save(out / "metrics.json")
    atomic_write_json(
        out / "run.json",
        {
            "hiercam": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
            "processes": ctx.dist.world,
            "device": str(ctx.device),
            "seed": config.seed,
            "seconds": result.seconds,
        },
    )
    write_report(config, result, out)
    ctx.log(f"wrote {out / 'report.md'} in {result.seconds['total']:.0f} s")


#: bench.json's figure names (those of metrics.json) -> the SplitScores fields.
_BENCH_FIGURES = {
    "miou": "miou",
    "loc_error": "loc_error",
    "miou_at_val_threshold": "miou_at_chosen",
    "loc_error_at_val_threshold": "loc_error_at_chosen",
    "max_box_acc": "max_box_acc",
    "pxap": "pxap",
    "deletion": "deletion",
    "insertion": "insertion",
}


def run_bench(
    config: PipelineConfig,
    seeds: Sequence[int],
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print_line,
    cache: str | Path | None = None,
    results: str | Path | None = None,
    label: str = "config",
) -> dict[str, Any]:
    """Run the pipeline once per seed (``out/seed_<n>``) and aggregate: mean, standard deviation, min, max.

    Writes ``bench.json`` and ``bench.md`` (the ablation table) into ``out``. ``cache`` is passed to
    [`run_pipeline`][hiercam.pipeline.run_pipeline] (models shared with other benches).

    With ``results``, every finished seed is also kept as
    ``<results>/<dataset>/<label>/seed_<n>.json`` (its full config, figures, versions and timings: small
    enough to commit), and a seed whose file holds the same config is read back instead of run again, so an
    interrupted bench loses at most the seed in progress (whose finished models and epochs the run directory
    keeps too), even when ``out`` is gone. ``force`` runs every seed again.
    """
    out = Path(out)
    runs: dict[int, RunResult] = {}
    for seed in seeds:
        seeded = config.replace(seed=seed)
        record = None if results is None else seed_record_path(results, seeded, label)
        kept = None if record is None or force else _read_seed_record(record, seeded)
        if kept is not None:
            log(f"=== seed {seed}: done before, read from {record}")
            runs[seed] = kept
            continue
        log(f"=== seed {seed}")
        runs[seed] = run_pipeline(
            seeded,
            out / f"seed_{seed}",
            force=force,
            progress=progress,
            log=log,
            cache=cache,
        )
        if record is not None:
            _write_seed_record(record, seeded, runs[seed])
    first = runs[seeds[0]]
    variants: dict[str, Any] = {}
    # seeds may differ in their rows (a level dropped, or no group level left, for one seed): NaN where absent
    for variant in dict.fromkeys(variant for s in seeds for variant in runs[s].variants):
        scores = {s: runs[s].variants.get(variant) for s in seeds}
        splits = next(found.splits for found in scores.values() if found is not None)
        entry: dict[str, Any] = {
            split: {
                name: seed_stats([_seed_figure(scores[s], split, field) for s in seeds])
                for name, field in _BENCH_FIGURES.items()
            }
            for split in splits
        }
        entry["threshold"] = [math.nan if found is None else found.threshold for found in scores.values()]
        variants[variant.name] = entry

    def over_seeds(table: str) -> dict[str, dict[str, Any]]:
        return {
            split: {
                key.name: seed_stats([getattr(runs[s], table)[split].get(key, math.nan) for s in seeds])
                for key in row
            }
            for split, row in getattr(first, table).items()
        }

    result = {
        "seeds": list(seeds),
        "config": config.to_dict(),
        "units": "fraction",
        "variants": variants,
        "classification_map": over_seeds("classification_map"),
        "branch_cam_correlation": over_seeds("branch_correlation"),
        "fusion_weights": [runs[s].to_json()["fusion_weights"] for s in seeds],
        "rest_reduction": config.method.rest_reduction,
        "seconds": {str(s): runs[s].seconds.get("total", math.nan) for s in seeds},
    }
    atomic_write_json(out / "bench.json", strict_json(result))
    atomic_write_text(out / "bench.md", bench_markdown(result))
    return result


def _seed_figure(scores: VariantScores | None, split: str, field: str) -> float:
    """One seed's figure of a row, NaN when the seed has no such row or split."""
    if scores is None or split not in scores.splits:
        return math.nan
    value: float = getattr(scores.splits[split], field)
    return value


def seed_record_path(results: str | Path, config: PipelineConfig, label: str) -> Path:
    """Where [`run_bench`][hiercam.pipeline.run_bench] keeps one seed's result.

    ``<results>/<dataset>/<label>/seed_<seed>.json``.

    Raises:
        ValueError: ``label`` is not a plain folder name.

    Example:
        >>> from hiercam.pipeline import PipelineConfig
        >>> seed_record_path("benchmarks/results", PipelineConfig(seed=2), "recommended").as_posix()
        'benchmarks/results/fashion_scenes/recommended/seed_2.json'
    """
    if not label or Path(label).name != label or label in (".", "..") or not label.isprintable():
        raise ValueError(f"`label` must be a plain folder name, got {label!r}")
    return Path(results) / config.data.dataset / label / f"seed_{config.seed}.json"


#: Layout version of the per-seed records of ``run_bench``.
_RECORD_VERSION = 1


def _write_seed_record(path: Path, config: PipelineConfig, result: RunResult) -> None:
    atomic_write_json(
        path,
        {
            "record_version": _RECORD_VERSION,
            "config": config.to_dict(),
            "hiercam": __version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "seconds": strict_json(result.seconds),
            "metrics": result.to_json(),
        },
    )


def _read_seed_record(path: Path, config: PipelineConfig) -> RunResult | None:
    """The result kept in ``path`` when it was made with ``config``; ``None`` when there is none to reuse.

    Raises:
        ValueError: naming the file, when it exists but is damaged (delete it to run the seed again).
    """
    if not path.is_file():
        return None
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"{path}: not JSON ({error}); delete it to run the seed again") from None
    if not isinstance(data, dict) or data.get("record_version") != _RECORD_VERSION:
        raise ValueError(f"{path}: not a bench seed record of this version; delete it to run the seed again")
    try:  # a record made before a config field existed was made with that field's default
        recorded = PipelineConfig.from_dict(data.get("config") or {}).to_dict()
    except ValueError:
        return None  # settings this version cannot read: run again (and overwrite)
    if recorded != config.to_dict():
        return None  # made with other settings: run again (and overwrite)
    result = RunResult.from_json(data.get("metrics", {}), path)
    seconds = data.get("seconds") or {}
    result.seconds = {str(k): float(v) for k, v in seconds.items() if isinstance(v, (int, float))}
    return result


def run_preset_bench(
    config: PipelineConfig,
    presets: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print_line,
    results: str | Path | None = None,
) -> dict[str, Any]:
    """[`run_bench`][hiercam.pipeline.run_bench] for each preset (``out/<preset>``), then one comparison.

    Models and CAMs are shared between the presets through ``out/cache`` (the baseline is trained once per
    seed). Writes ``compare.json`` and ``compare.md``: per preset, its fused method's test figures next to
    the baseline Grad-CAM's, with mean and spread over the seeds.

    Args:
        config: the base config; each preset's method settings replace its own (see
            [`apply_preset`][hiercam.pipeline.apply_preset]).
        presets: names from ``hiercam.pipeline.PRESETS``; checked before anything runs.
        seeds: one run per seed and preset.
        out: output folder.
        force: redo every stage even when up to date.
        progress: tqdm bars during training.
        log: where progress lines go.
        results: keep every finished (preset, seed) as ``<results>/<dataset>/<preset>/seed_<n>.json`` and
            read back those already there (see [`run_bench`][hiercam.pipeline.run_bench]).

    Returns:
        ``{"seeds": [...], "presets": {name: run_bench result}}``; a preset that the data rules out (a
        ``ValueError``) is recorded as ``{"error": message}`` and the others still run. (A preset whose
        grouping leaves no group level is not ruled out: it falls back to the baseline, see
        [`GroupingAdaptation`][hiercam.pipeline.GroupingAdaptation].)
    """
    if not presets:
        raise ConfigError("`presets` is empty; name at least one preset")
    configs = {name: apply_preset(config, name) for name in presets}  # unknown names fail here, first
    out = Path(out)
    benches = {}
    for name, preset_config in configs.items():
        log(f"##### preset {name}")
        try:
            benches[name] = run_bench(
                preset_config,
                seeds,
                out / name,
                force=force,
                progress=progress,
                log=log,
                cache=out / "cache",
                results=results,
                label=name,
            )
        except ValueError as error:  # the data rule the preset out (e.g. every level saturated): a result too
            log(f"preset {name} not run: {error}")
            benches[name] = {"error": str(error)}
    result = {"seeds": list(seeds), "presets": benches}
    atomic_write_json(out / "compare.json", strict_json(result))
    atomic_write_text(out / "compare.md", compare_markdown(result))
    return result


#: A run's own outputs, removed when a new run starts in the same folder.
_RUN_OUTPUTS = ("metrics.json", "run.json", "report.md", "config.json")


def _preflight(ctx: RunContext, splits: Sequence[str]) -> None:
    """The checks that need more than the config itself: processes, device, backbone, data."""
    config, distributed = ctx.config, ctx.dist
    if distributed.world > 1 and config.train.batch_size % distributed.world:
        raise ConfigError(
            f"`train.batch_size` ({config.train.batch_size}) is the global batch and must be divisible by "
            f"the {distributed.world} processes"
        )
    if config.train.amp and ctx.device.type != "cuda":
        raise ConfigError(f"`train.amp` (mixed precision) needs CUDA, but the run would use {ctx.device}")
    check_backbone(config.model)
    check_weights(config.model)  # a missing file or one that does not fit the network, before any training
    if config.method.grouping_source == "file":
        load_hierarchy_file(config)  # a missing file or other classes than the dataset's, before any training
    ctx.data("train")  # data problems (a missing folder, a damaged annotation) show before any training
    if config.data.dataset != "fashion_scenes":  # read from disk: a missing split file shows now too
        for split in splits:
            ctx.data(split)


def _silent(_line: str) -> None:
    """The log of processes other than rank 0."""
