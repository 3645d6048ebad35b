"""The real-photo benchmark's table: every preset's method rows against plain Grad-CAM and the plain ensemble.

Reads the per-seed records that ``hiercam bench --results benchmarks/results`` keeps
(``benchmarks/results/<dataset>/<preset>/seed_<n>.json``) and prints, per dataset, one Markdown table:
validation mIoU@0.15 and its paired difference to Grad-CAM (what the presets are chosen on), then the test
figures: mIoU@0.15, mIoU@t* (t* chosen on validation), localisation error, classification mAP, each with the
paired difference to plain Grad-CAM (the ``baseline`` row of a preset without refinements; every preset of a
seed shares the same trained base classifier through the bench's model cache) and to the plain ensemble
control; "apart" says whether the seeds' ranges do not overlap. Figures in percent: mean ± standard deviation
[min, max] over the seeds present; only seeds recorded for both a row and its reference are paired.

    python benchmarks/preset_table.py                       # every dataset under benchmarks/results
    python benchmarks/preset_table.py --dataset msrc21 --json benchmarks/results/msrc21/table.json

Nothing is trained or evaluated here: the figures are those the records hold.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from hiercam.pipeline.report import seed_stats
from hiercam.pipeline.results import strict_json

#: (preset, variant, what the row is). The plain references come first: "plain" is any preset of ``PLAIN``.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("plain", "baseline", "Grad-CAM baseline (plain)"),
    ("plain", "ensemble", "ensemble control: two single-branch models averaged (plain)"),
    ("paper", "two_branch", "paper, Table 4: + orthogonal two-branch only"),
    ("paper", "grouping", "paper, Table 4: + grouping only"),
    ("paper", "full", "paper, Table 4: both (the paper's method)"),
    ("orthogonal_light", "full", "old `recommended` (`orthogonal_light`): both, Eq. 6"),
    ("single_branch", "grouping", "`single_branch`: Eq. 6 over single-branch models"),
    ("multiscale", "baseline", "refinement alone: Grad-CAM + multi-scale"),
    ("multiscale", "grouping", "`multiscale`: `single_branch` + multi-scale"),
    ("softmax_over_labels", "baseline", "refinement alone: Grad-CAM + softmax over labelled classes"),
    ("softmax_over_labels", "grouping", "`softmax_over_labels`: `single_branch` + softmax"),
    ("refined", "baseline", "both refinements on Grad-CAM"),
    ("refined", "ensemble", "both refinements on the ensemble control"),
    ("refined", "grouping", "`refined`: `single_branch` + both refinements"),
)
#: Presets whose baseline and ensemble rows are plain Grad-CAM (no inference refinement).
PLAIN = ("paper", "single_branch", "orthogonal_light")


def load(results: Path, dataset: str) -> dict[str, dict[int, dict[str, Any]]]:
    """``{preset: {seed: record}}`` of one dataset."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted((results / dataset).glob("*/seed_*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        seed = int(path.stem.split("_")[1])
        found.setdefault(path.parent.name, {})[seed] = record
    return found


def plain_records(records: dict[str, dict[int, dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    """Per seed, the record of the first preset of ``PLAIN`` that has it.

    Its baseline and ensemble rows are plain Grad-CAM of the seed's shared base models, the same in every
    plain preset of the seed.
    """
    merged: dict[int, dict[str, Any]] = {}
    for preset in reversed(PLAIN):
        merged.update(records.get(preset, {}))
    return merged


def figure(record: dict[str, Any], variant: str, split: str, name: str) -> float:
    entry = record["metrics"]["variants"].get(variant, {}).get(split, {})
    value = entry.get(name)
    return math.nan if value is None else float(value)


def model_map(record: dict[str, Any], variant: str) -> float:
    model = {"baseline": "base", "ensemble": "ensemble", "grouping": "base"}.get(variant, "two_branch_L0")
    value = record["metrics"]["classification_map"].get("test", {}).get(model)
    return math.nan if value is None else float(value)


def cell(summary: dict[str, float], digits: int = 2) -> str:
    if math.isnan(summary["mean"]):  # no finite value
        return ""
    mean, std, low, high = (100 * summary[k] for k in ("mean", "std", "min", "max"))
    return f"{mean:.{digits}f} ± {std:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def apart(row: list[float], reference: list[float]) -> str:
    if len(row) < 2 or len(reference) < 2:
        return ""
    return "yes" if min(row) > max(reference) or max(row) < min(reference) else "no"


def table(records: dict[str, dict[int, dict[str, Any]]]) -> tuple[str, list[dict[str, Any]]]:
    plain = plain_records(records)
    if not plain:
        return "No plain preset (paper, single_branch, orthogonal_light) recorded yet.\n", []
    rows_json: list[dict[str, Any]] = []
    lines = [
        "Plain Grad-CAM and the plain ensemble: the baseline and ensemble rows of the plain presets "
        "(`paper`, `single_branch`, `orthogonal_light`: the same base models per seed). Seeds per row in "
        "the last column.",
        "",
        "| row | val mIoU@0.15 | Δ val vs Grad-CAM | test mIoU@0.15 | Δ vs Grad-CAM | apart | "
        "Δ vs ensemble | test mIoU@t* | Δ@t* vs Grad-CAM | test LocErr@0.15 | mAP | seeds |",
        "| --- | ---: | ---: | ---: | ---: | :---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for preset, variant, label in ROWS:
        rec = plain if preset == "plain" else records.get(preset, {})
        seeds = sorted(s for s, r in rec.items() if variant in r["metrics"]["variants"])
        if not seeds:
            continue

        def values(
            split: str, name: str, source: dict[int, dict[str, Any]], which: str, among: list[int]
        ) -> list[float]:
            return [figure(source[s], which, split, name) for s in among]

        paired = [s for s in seeds if s in plain]
        out: dict[str, Any] = {"preset": preset, "variant": variant, "row": label, "seeds": seeds}
        cells = []
        for split, name in (("val", "miou"), ("test", "miou"), ("test", "miou_at_val_threshold")):
            own = values(split, name, rec, variant, seeds)
            base = values(split, name, plain, "baseline", paired)
            delta = [a - b for a, b in zip(values(split, name, rec, variant, paired), base, strict=True)]
            out[f"{split}_{name}"] = seed_stats(own)
            out[f"{split}_{name}_vs_gradcam"] = seed_stats(delta)
            is_reference = preset == "plain" and variant == "baseline"
            cells.append(cell(seed_stats(own)))
            cells.append("" if is_reference else cell(seed_stats(delta)))
            if split == "test" and name == "miou":
                cells.append("" if is_reference else apart(values(split, name, rec, variant, paired), base))
                ensemble = values(split, name, plain, "ensemble", paired)
                versus = [
                    a - b for a, b in zip(values(split, name, rec, variant, paired), ensemble, strict=True)
                ]
                out["test_miou_vs_ensemble"] = seed_stats(versus)
                is_ensemble = preset == "plain" and variant == "ensemble"
                cells.append("" if is_ensemble or not ensemble else cell(seed_stats(versus)))
        loc = seed_stats(values("test", "loc_error", rec, variant, seeds))
        mean_ap = seed_stats([model_map(rec[s], variant) for s in seeds])
        out["test_loc_error"], out["map"] = loc, mean_ap
        cells += [cell(loc), cell(mean_ap), ", ".join(map(str, seeds))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        rows_json.append(out)
    return "\n".join(lines) + "\n", rows_json


def faithfulness(records: dict[str, dict[int, dict[str, Any]]]) -> str:
    """Deletion and insertion areas of every row on the first ``faithfulness_images`` test images."""
    lines = [
        "| row | test deletion (lower is better) | test insertion (higher is better) | seeds |",
        "| --- | ---: | ---: | :---: |",
    ]
    for preset, variant, label in ROWS:
        by_seed = plain_records(records) if preset == "plain" else records.get(preset, {})
        seeds = sorted(s for s, r in by_seed.items() if variant in r["metrics"]["variants"])
        if not seeds:
            continue
        deletion = seed_stats([figure(by_seed[s], variant, "test", "deletion") for s in seeds])
        insertion = seed_stats([figure(by_seed[s], variant, "test", "insertion") for s in seeds])
        if math.isnan(deletion["mean"]) and math.isnan(insertion["mean"]):
            continue
        lines.append(f"| {label} | {cell(deletion)} | {cell(insertion)} | {', '.join(map(str, seeds))} |")
    return "\n".join(lines) + "\n"


def stability(records: dict[str, dict[int, dict[str, Any]]]) -> str:
    """How much the level-1 grouping depends on the seed: adjusted Rand index between every pair of seeds."""
    from itertools import combinations

    from sklearn.metrics import adjusted_rand_score

    lines = []
    for preset in ("paper", "single_branch"):
        by_seed = records.get(preset, {})
        groups = {s: r["metrics"]["hierarchy"]["assignments"][0] for s, r in sorted(by_seed.items())}
        pairs = [
            f"seeds {a}-{b}: {adjusted_rand_score(groups[a], groups[b]):.2f}"
            for a, b in combinations(groups, 2)
        ]
        if pairs:
            lines.append(f"- `{preset}` (level 1): " + ", ".join(pairs))
    return "\n".join(lines) + "\n" if lines else ""


def times(records: dict[str, dict[int, dict[str, Any]]]) -> str:
    """Seconds of pipeline per preset and seed (``total`` of each record), and per seed over the presets.

    A preset's run loads the models that an earlier preset of the same seed trained (the bench's cache), so
    the first preset to need a model pays for its training.
    """
    seeds = sorted({s for by_seed in records.values() for s in by_seed})
    lines = [
        "| preset | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "| --- |" + " ---: |" * len(seeds),
    ]
    totals = dict.fromkeys(seeds, 0.0)
    for preset, by_seed in records.items():
        cells = []
        for seed in seeds:
            seconds = by_seed.get(seed, {}).get("seconds", {}).get("total")
            cells.append("" if seconds is None else f"{seconds:.0f} s")
            totals[seed] += seconds or 0.0
        lines.append(f"| {preset} | " + " | ".join(cells) + " |")
    lines.append("| all presets | " + " | ".join(f"{totals[s] / 60:.1f} min" for s in seeds) + " |")
    return "\n".join(lines) + "\n"


#: The candidates for ``recommended``: each preset's own method row.
CANDIDATES: tuple[tuple[str, str], ...] = (
    ("paper", "full"),
    ("orthogonal_light", "full"),
    ("single_branch", "grouping"),
    ("multiscale", "grouping"),
    ("softmax_over_labels", "grouping"),
    ("refined", "grouping"),
)


def choice(by_dataset: dict[str, dict[str, dict[int, dict[str, Any]]]]) -> str:
    """The rule that chose ``recommended``, on validation data only.

    Per dataset, a candidate's validation mIoU@0.15 minus plain Grad-CAM's (paired by seed, mean over the
    seeds recorded); the chosen preset is the one whose worse dataset gains most (the target asks for a gain
    on both datasets).
    """
    datasets = sorted(by_dataset)
    lines = [
        "| candidate | " + " | ".join(f"Δ val {d} (seeds)" for d in datasets) + " | worse dataset |",
        "| --- |" + " ---: |" * (len(datasets) + 1),
    ]
    ranked = []
    for preset, variant in CANDIDATES:
        cells, deltas = [], []
        for dataset in datasets:
            records = by_dataset[dataset]
            plain = plain_records(records)
            own = records.get(preset, {})
            seeds = [s for s in sorted(own) if s in plain and variant in own[s]["metrics"]["variants"]]
            values = [
                figure(own[s], variant, "val", "miou") - figure(plain[s], "baseline", "val", "miou")
                for s in seeds
            ]
            mean = statistics.fmean(values) if values else math.nan
            deltas.append(mean)
            cells.append(f"{100 * mean:+.2f} ({', '.join(map(str, seeds))})" if values else "")
        worst = min(deltas) if deltas and not any(math.isnan(d) for d in deltas) else math.nan
        ranked.append((worst, preset))
        shown = "" if math.isnan(worst) else f"{100 * worst:+.2f}"
        lines.append(f"| `{preset}` ({variant}) | " + " | ".join(cells) + f" | {shown} |")
    best = max((r for r in ranked if not math.isnan(r[0])), default=None)
    if best is not None:
        lines += ["", f"Chosen by the rule: `{best[1]}`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--dataset", nargs="*", default=None, help="default: every dataset with records")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON (one dataset)")
    args = parser.parse_args()
    datasets = args.dataset or sorted(p.name for p in args.results.iterdir() if p.is_dir())
    loaded = {dataset: load(args.results, dataset) for dataset in datasets}
    recorded = {dataset: records for dataset, records in loaded.items() if records}
    if len(recorded) > 1:  # the rule compares the datasets
        print(f"## The choice of `recommended` (validation only)\n\n{choice(recorded)}")
    for dataset in datasets:
        records = load(args.results, dataset)
        if not records:
            continue
        text, rows = table(records)
        print(f"## {dataset}\n\n{text}\nDeletion and insertion (against the base classifier):\n")
        print(f"{faithfulness(records)}\nPipeline time per run:\n\n{times(records)}")
        agreement = stability(records)
        print(f"Agreement of the level-1 groups between seeds (adjusted Rand index):\n\n{agreement}")
        if args.json is not None and len(datasets) == 1:
            args.json.write_text(json.dumps(strict_json(rows), indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
