"""Choose the demo's hyper-parameters on validation data only (test is never computed here).

Coordinate-wise, on the full demo config, for each seed given:

1. grouping: plain K-means, L2-normalised class vectors, size-weighted centres (levels 4, 2), and other
   level counts, all with the paper's orthogonal loss switched off (lam = 0);
2. orthogonal loss weight lam in {0, 1e-6, 1e-5, 1e-4} (the paper's raw sum) with the chosen grouping.

Models and CAMs shared by configs are trained once (a shared cache keyed by content). Prints, per config,
validation mIoU@0.15 and at the validation-best threshold of every variant, the two-branch level-0 model's
mAP, and the correlation between its two branches' CAMs; writes ``sweep.json``.

Run: ``python benchmarks/ablation_sweep.py --out sweep --seeds 0 1``
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from hiercam.pipeline import demo_config, run_pipeline


def evaluate(config: Any, out: Path, seeds: list[int]) -> dict[str, Any]:
    rows = []
    for seed in seeds:
        run = run_pipeline(
            config.replace(seed=seed),
            out / f"seed_{seed}",
            test=False,
            progress=False,
            cache=out.parent / "cache",
            log=lambda _line: None,
        )
        variants = run["variants"]
        rows.append(
            {
                **{f"{name}@0.15": v["val"]["miou"] for name, v in variants.items()},
                **{f"{name}@t*": v["val"]["miou_at_val_threshold"] for name, v in variants.items()},
                "mAP two_branch_L0": 100 * run["classification_map"]["val"]["two_branch_L0"],
                "mAP base": 100 * run["classification_map"]["val"]["base"],
                "branch r L0": run["branch_cam_correlation"]["val"]["two_branch_L0"],
            }
        )
    return {key: statistics.fmean(row[key] for row in rows) for key in rows[0]}


def show(label: str, result: dict[str, Any]) -> None:
    keys = [
        "baseline@0.15",
        "two_branch@0.15",
        "grouping@0.15",
        "full@0.15",
        "full@t*",
        "baseline@t*",
        "mAP base",
        "mAP two_branch_L0",
        "branch r L0",
    ]
    print(f"{label:34s} " + " ".join(f"{result[k]:7.2f}" for k in keys), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="sweep")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    out = Path(args.out)
    base = demo_config()
    print(
        f"{'config (val only, mean over seeds)':34s} "
        + " ".join(
            f"{k:>7s}" for k in ["base", "2br", "group", "full", "full@t", "base@t", "mAPb", "mAP2br", "r"]
        ),
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    grouping = {
        "plain (4, 2)": {},
        "normalize (4, 2)": {"method__grouping_normalize": True},
        "weighted (4, 2)": {"method__grouping_weighted": True},
        "normalize (3,)": {"method__grouping_normalize": True, "method__levels": (3,)},
        "normalize (6, 3)": {"method__grouping_normalize": True, "method__levels": (6, 3)},
    }
    for label, changes in grouping.items():
        config = base.replace(method__lam=0.0, **changes)
        results[f"lam 0, {label}"] = evaluate(config, out / f"g{len(results)}", args.seeds)
        show(f"lam 0, {label}", results[f"lam 0, {label}"])
    best_label = max(grouping, key=lambda label: results[f"lam 0, {label}"]["full@0.15"])
    for lam in (1e-6, 1e-5, 1e-4):
        config = base.replace(method__lam=lam, **grouping[best_label])
        key = f"lam {lam:g}, {best_label}"
        results[key] = evaluate(config, out / f"l{len(results)}", args.seeds)
        show(key, results[key])
    (out / "sweep.json").write_text(json.dumps({"seeds": args.seeds, "results": results}, indent=2))


if __name__ == "__main__":
    main()
