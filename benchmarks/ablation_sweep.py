"""Choose hyper-parameters on validation data only (the test split is never computed here).

Every row is the full FashionScenes config (`hiercam.pipeline.bench_config`, the demo's before issue 19)
with a few changes, run for each seed with ``run_pipeline(..., test=False)``; models shared between rows are
trained once (a cache keyed by content).
Steps, each using the best choice of the previous ones (by the full method's validation mIoU at 0.15):

1. grouping (issue 7): plain K-means, L2-normalised class vectors, size-weighted centres; levels (4, 2);
   the orthogonal loss off (``lam = 0``);
2. the paper's orthogonal loss weight (issue 7): ``lam`` in {1e-6, 1e-5, 1e-4}, raw sum over the batch;
3. beyond the paper (issue 10): orthogonality on the maps (``mode`` "spatial" and "cam", per-sample cosines,
   ``lam`` in {0.1, 1}), dropping levels with a group in more than 90 % of the training images, and fusion
   weights chosen on validation data; the other readings of ``M0'`` (``rest`` "mean" and "none");
4. every choice of step 3 that beat the paper-faithful row, together.

Prints, per row and averaged over the seeds, the validation mIoU at 0.15 of the baseline, the two-branch
model, grouping only and the full method, the full method's mIoU at its validation-best threshold, the
two-branch level-0 model's mAP and the Pearson correlation between its two branches' CAMs; writes
``sweep.json`` after every row; run again with the same ``--out`` and seeds, finished rows are kept.

Run: ``python benchmarks/ablation_sweep.py --out sweep --seeds 0 1`` (about an hour on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from hiercam.pipeline import ModelKey, bench_config, run_pipeline

COLUMNS = {
    "base": "baseline@0.15",
    "2br": "two_branch@0.15",
    "group": "grouping@0.15",
    "full": "full@0.15",
    "full@t*": "full@t*",
    "tuned@t*": "full_tuned@t*",
    "mAP 2br": "mAP two_branch_L0",
    "r 2br": "branch r L0",
}


def cells(result: dict[str, Any]) -> str:
    return " ".join(f"{result.get(key, float('nan')):7.2f}" for key in COLUMNS.values())


def evaluate(changes: dict[str, Any], out: Path, seeds: list[int]) -> dict[str, float]:
    rows = []
    for seed in seeds:
        config = bench_config(seed=seed).replace(**changes)
        run = run_pipeline(
            config,
            out / f"seed_{seed}",
            test=False,
            progress=False,
            cache=out.parent / "cache",
            log=lambda _: None,
        )
        row = {}
        for variant, scores in run.variants.items():  # fractions; the table shows percent
            row[f"{variant.name}@0.15"] = 100 * scores.splits["val"].miou
            row[f"{variant.name}@t*"] = 100 * scores.splits["val"].miou_at_chosen
        level0 = ModelKey("two_branch", 0)
        row["mAP two_branch_L0"] = 100 * run.classification_map["val"][level0]
        row["branch r L0"] = run.branch_correlation["val"][level0]
        rows.append(row)
    return {key: statistics.fmean(row[key] for row in rows) for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="sweep")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    out = Path(args.out)
    results: dict[str, dict[str, float]] = {}
    previous: dict[str, Any] = {}
    saved = out / "sweep.json"
    if saved.is_file():  # resume an interrupted sweep: rows with the same seeds and changes are kept
        stored = json.loads(saved.read_text())
        if stored.get("seeds") == args.seeds:
            previous = stored["results"]

    def row(label: str, changes: dict[str, Any]) -> dict[str, float]:
        kept = previous.get(label)
        if kept is not None and kept.get("changes") == changes and "error" not in kept:
            results[label] = kept
            print(f"{label:42s} {cells(kept)} (kept from {saved})", flush=True)
            return kept
        try:
            result = evaluate(changes, out / f"row_{len(results)}", args.seeds)
        except ValueError as error:  # e.g. every level saturated: a result too
            print(f"{label:42s} not run: {error}", flush=True)
            results[label] = {"changes": changes, "error": str(error)}  # type: ignore[dict-item]
            return {"full@0.15": float("nan")}
        results[label] = {"changes": changes, **result}  # type: ignore[dict-item]
        print(f"{label:42s} {cells(result)}", flush=True)
        temporary = saved.with_suffix(".tmp")
        temporary.write_text(json.dumps({"seeds": args.seeds, "results": results}, indent=2))
        temporary.replace(saved)  # atomic: an interrupted sweep never leaves a half file
        return result

    out.mkdir(parents=True, exist_ok=True)
    print(
        f"{'validation only, mean over seeds ' + str(args.seeds):42s} "
        + " ".join(f"{c:>7s}" for c in COLUMNS)
    )
    grouping = {
        "plain": {},
        "normalize": {"method__grouping_unit_norm": True},
        "weighted": {"method__grouping_weighted": True},
    }
    scores = {
        name: row(f"1. lam 0, grouping {name}", {"method__orthogonal_weight": 0.0, **g})["full@0.15"]
        for name, g in grouping.items()
    }
    best_grouping = grouping[max(scores, key=lambda name: scores[name])]
    lams = {0.0: scores[max(scores, key=lambda name: scores[name])]}
    for lam in (1e-6, 1e-5, 1e-4):
        changes = {"method__orthogonal_weight": lam, **best_grouping}
        lams[lam] = row(f"2. feature sum, lam {lam:g}", changes)["full@0.15"]
    best_lam = max(lams, key=lambda lam: lams[lam])
    paper = {"method__orthogonal_weight": best_lam, **best_grouping}
    paper_score = lams[best_lam]
    best_maps: tuple[float, dict[str, Any]] = (paper_score, {})
    for mode in ("spatial", "cam"):
        for lam in (0.1, 1.0):
            changes = {
                "method__orthogonal_mode": mode,
                "method__orthogonal_reduction": "batchmean",
                "method__orthogonal_weight": lam,
            }
            score = row(f"3. {mode} batchmean, lam {lam:g}", {**best_grouping, **changes})["full@0.15"]
            if score > best_maps[0]:
                best_maps = (score, changes)
    presence = {"method__max_group_presence": 0.9}
    combination = {**paper, **best_maps[1]}
    if row("3. max group presence 0.9", {**paper, **presence})["full@0.15"] > paper_score:
        combination.update(presence)
    fusion = row("3. fusion weights chosen on val", {**paper, "method__choose_fusion_weights": True})
    if fusion.get("full_tuned@0.15", float("-inf")) > fusion["full@0.15"]:
        combination["method__choose_fusion_weights"] = True
    for rest in ("mean", "none"):  # the reading of M0' (evaluation only: models and CAMs come from the cache)
        row(f"3. M0' = {rest} (default max)", {**paper, "method__rest_reduction": rest})
    # 4. every step that helped on validation, together (the candidate for the "recommended" preset)
    row("4. best combination", combination)


if __name__ == "__main__":
    main()
