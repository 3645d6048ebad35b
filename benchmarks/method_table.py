"""Which CAM method localises best on real photos: every method of ``hiercam.cam.METHODS`` on MSRC-21.

Every CAM method of the package (``hiercam.cam.METHODS``: a method joins the table by being exported) is run
on the same MSRC-21 base classifiers as the other real-photo tables of docs/benchmarks.md (the
``single_branch`` config of ``benchmarks/hierarchy_evidence.py``: same config, same seeds, the same
content-keyed model cache), in three forms:

* ``<method>``: the method with its defaults, on the target layer that it chooses itself;
* ``<method>+eigen``: with ``eigen_smooth=True`` (the methods whose constructor takes it);
* ``<method>+ms``: wrapped in ``MultiScaleCAM`` (IRN's scales 1, 0.5, 1.5, 2 and the mirror images, maps at
  twice the feature resolution, as the multi-scale rows of hierarchy_evidence.py);
* ``<method>[<n>ch]``: the methods with a ``max_channels`` option (the Score-CAM family: one forward pass per
  channel and image, 1280 channels here) also score only their ``n`` channels of largest spread
  (Faster Score-CAM), since their defaults do not fit a CPU budget.

Scoring follows hierarchy_evidence.py: maps at feature resolution, upsampled (bilinear) to the 224 x 224
image and max-normalised, the classes present in the image against a constant background plane; mIoU over
the 21 classes at 0.15 and at t* (the threshold of ``THRESHOLDS`` with the best validation mIoU, applied
once to test), MaxBoxAccV2 (IoUs 0.3 / 0.5 / 0.7), PxAP, the deletion and insertion areas of RISE (20 steps,
the base classifier's sigmoid score) and the seconds per image of the maps (one thread).

**Cost and the subset.** Each variant's cost is measured once, on two images, the first time it appears
(``plan.json``; the same plan holds for every seed): a variant whose maps of the whole validation and test
splits take at most ``FULL_CAP`` seconds is scored on them (the *full* table); the others on a fixed,
seeded subset of ``SUBSET_VAL`` validation and ``SUBSET_TEST`` test images (t* chosen on the validation
subset), or not at all when even that exceeds ``SUBSET_CAP`` seconds (listed with their cost). Every variant
is also scored on that subset (the *subset* table: like for like), and the deletion and insertion areas of
every variant are measured on the first ``FAITHFULNESS`` images of the test subset.

Resumable: one record per (seed, variant), written atomically to
``<results>/methods/msrc21/seed_<n>/<variant>.json``; a rerun skips the records it finds, and picks up the
methods exported since (seed 0 first, then 1 and 2).

    python benchmarks/method_table.py                 # seeds 0 1 2, every variant (needs ../shared)
    python benchmarks/method_table.py --table         # the tables of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hierarchy_evidence as evidence  # the benchmark beside this one: its config, cache and scoring
import torch
from torch import Tensor, nn

from hiercam.pipeline.context import RunContext
from hiercam.pipeline.stages import train_base

ROOT = Path(__file__).resolve().parent.parent
DATASET = "msrc21"
#: hierarchy_evidence.py's grid with 0 and 0.005 added below: t* sat at its lowest value, 0.01. At 0 every
#: pixel where some present class has a positive map goes to its best class (the natural end of the grid).
THRESHOLDS = (0.0, 0.005, *evidence.THRESHOLDS)
PAPER_THRESHOLD = evidence.PAPER_THRESHOLD
FULL_CAP = 60.0  # seconds of maps for the whole val + test splits (315 images): scored on them
SUBSET_CAP = 300.0  # seconds of maps for the subset: scored on it; above, not run
SUBSET_VAL, SUBSET_TEST, FAITHFULNESS = 16, 32, 8
SUBSET_SEED = 0
FAITHFULNESS_STEPS = 10  # 20 in the pipeline: halved for time (a coarser curve, the same areas' meaning)
MAX_CHANNELS = 32
BATCH = 16
#: One batch, as in the run: the cost of some methods grows with the classes present in the batch.
CALIBRATION_IMAGES = BATCH
#: Seconds: a variant that needs longer for 1 + CALIBRATION_IMAGES images exceeds SUBSET_CAP on the subset.
CALIBRATION_LIMIT = SUBSET_CAP / (SUBSET_VAL + SUBSET_TEST) * (1 + CALIBRATION_IMAGES)


@dataclass(frozen=True)
class Variant:
    """One row: a method of ``METHODS`` and how it is run."""

    method: str
    form: str  # "plain", "eigen", "ms"
    max_channels: int | None = None

    @property
    def name(self) -> str:
        """The row's name: ``gradcam``, ``gradcam+eigen``, ``scorecam[32ch]+ms``..."""
        channels = "" if self.max_channels is None else f"[{self.max_channels}ch]"
        suffix = "" if self.form == "plain" else f"+{self.form}"
        return f"{self.method}{channels}{suffix}"


def variants() -> list[Variant]:
    """Every variant of every method exported now, in ``METHODS`` order."""
    from hiercam.cam import METHODS

    out = []
    for method, cls in METHODS.items():
        params = inspect.signature(cls.__init__).parameters
        for channels in (None, MAX_CHANNELS) if "max_channels" in params else (None,):
            out.append(Variant(method, "plain", channels))
            if "eigen_smooth" in params:
                out.append(Variant(method, "eigen", channels))
            out.append(Variant(method, "ms", channels))
    return out


def method_digest(method: str) -> str:
    """A digest of the source of the method's module (a record says which code made it)."""
    from hiercam.cam import METHODS

    return hashlib.sha256(inspect.getsource(inspect.getmodule(METHODS[method])).encode()).hexdigest()[:12]


class Extractor:
    """``extract(images, labels) -> (B, K, h, w)`` raw maps of one variant (classes absent: zeros)."""

    def __init__(self, variant: Variant, model: nn.Module) -> None:
        from hiercam.cam import IRN_SCALES, METHODS, MultiScaleCAM

        cls = METHODS[variant.method]
        params = inspect.signature(cls.__init__).parameters
        kwargs: dict[str, Any] = {}
        if "progress" in params:
            kwargs["progress"] = False
        if variant.max_channels is not None:
            kwargs["max_channels"] = variant.max_channels
        if variant.form == "eigen":
            kwargs["eigen_smooth"] = True
        self.options = dict(kwargs)
        self.cam = cls(model, **kwargs)
        self.multi = MultiScaleCAM(self.cam, IRN_SCALES) if variant.form == "ms" else None
        self.scale = max(IRN_SCALES)

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        """Raw maps ``(B, K, h, w)`` of the classes ``labels (B, K)`` marks (feature resolution)."""
        classes = labels.bool()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.multi is None:
                return self.cam(images, classes, size="feature", normalize=None)
            plain = self.cam(images[:1], classes[:1], size="feature", normalize=None)
            size = (
                min(round(plain.shape[-2] * self.scale), int(images.shape[-2])),
                min(round(plain.shape[-1] * self.scale), int(images.shape[-1])),
            )
            return self.multi(images, classes, size=size, normalize=None)

    @property
    def target_layer(self) -> str | None:
        """The layer the method explains (chosen on the first call)."""
        return self.cam.target_layer

    def remove(self) -> None:
        """Release the extractor's hooks."""
        self.cam.remove()


class _TooSlowError(Exception):
    """The calibration ran out of time."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``_TooSlowError`` in the main thread after ``seconds``."""

    def stop(_signum: int, _frame: Any) -> None:
        raise _TooSlowError

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def calibrate(ctx: RunContext, model: nn.Module, variant: Variant, subset: dict[str, list[int]]) -> float:
    """Seconds per image of the variant's maps, on the first images of the test subset (inf: too slow)."""
    rows = subset["test"][: 1 + CALIBRATION_IMAGES]
    _, images, labels, *_ = next(ctx.data("test").batches(len(rows), rows))
    torch.manual_seed(0)
    extractor = Extractor(variant, model)
    try:
        with time_limit(CALIBRATION_LIMIT):
            extractor(images[:1], labels[:1])  # the first call chooses the layer, verifies the closed form
            start = time.perf_counter()
            extractor(images[1:], labels[1:])
            return (time.perf_counter() - start) / CALIBRATION_IMAGES
    except _TooSlowError:
        return float("inf")
    finally:
        extractor.remove()


def subsets(ctx: RunContext) -> dict[str, list[int]]:
    """The fixed, seeded image subsets of val and test (the same for every seed and variant)."""
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    out = {}
    for split, count in (("val", SUBSET_VAL), ("test", SUBSET_TEST)):
        order = torch.randperm(len(ctx.data(split)), generator=generator)
        out[split] = order[:count].tolist()
    out["faithfulness"] = out["test"][:FAITHFULNESS]
    for key in out:
        out[key] = sorted(out[key])
    return out


def plan_for(
    ctx: RunContext,
    model: nn.Module,
    wanted: Sequence[Variant],
    subset: dict[str, list[int]],
    path: Path,
    log: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Each variant's scope (``full``, ``subset``, ``skipped``) from its measured cost, kept in ``path``."""
    plan: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else {}
    full_images = len(ctx.data("val")) + len(ctx.data("test"))
    subset_images = len(subset["val"]) + len(subset["test"])
    for variant in wanted:
        if variant.name in plan:
            continue
        plain = Variant(variant.method, "plain", variant.max_channels).name
        if variant.form != "plain" and plan.get(plain, {}).get("scope") == "skipped":
            # eigen smoothing and the multi-scale passes only add to the plain method's cost
            plan[variant.name] = {**plan[plain], "scope": "skipped", "as": plain}
            log(f"{variant.name}: skipped as {plain}")
            write_json(path, plan)
            continue
        try:
            seconds = calibrate(ctx, model, variant, subset)
        except Exception as error:  # a method that fails here is reported and tried again on the next run
            log(f"{variant.name}: calibration failed: {error!r}")
            continue
        if seconds * full_images <= FULL_CAP:
            scope = "full"
        elif seconds * subset_images <= SUBSET_CAP:
            scope = "subset"
        else:
            scope = "skipped"
        plan[variant.name] = {
            "seconds_per_image": seconds,
            "scope": scope,
            "seed": ctx.config.seed,
            "at_least": CALIBRATION_LIMIT / (1 + CALIBRATION_IMAGES),
        }
        log(f"{variant.name}: {seconds:.3g} s per image -> {scope}")
        write_json(path, plan)
    return plan


def write_json(path: Path, value: Any) -> None:
    """Write atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, allow_nan=True))
    tmp.replace(path)


class SplitScores:
    """The streaming figures of one split: per-image confusions, and on test the threshold-free figures."""

    def __init__(self, model: nn.Module, with_wsol: bool, subset: Sequence[int], faithful: Sequence[int]):
        from hiercam.metrics import DeletionInsertion, MaxBoxAcc, PxAP

        self.confusions: list[Tensor] = []
        self.rows: list[Tensor] = []
        self.with_wsol = with_wsol
        self.subset = set(subset)
        self.faithful = set(faithful)
        self.box = {"full": MaxBoxAcc(), "subset": MaxBoxAcc()}
        self.pixel = {"full": PxAP(ignore_index=255), "subset": PxAP(ignore_index=255)}
        self.perturb = DeletionInsertion(model, steps=FAITHFULNESS_STEPS, score="sigmoid", batch_size=16)

    def update(
        self, rows: Tensor, maps: Tensor, images: Tensor, labels: Tensor, masks: Tensor, boxes: Any
    ) -> None:
        """Add a batch of raw maps ``(B, K, h, w)``."""
        size = (int(images.shape[-2]), int(images.shape[-1]))
        up = evidence.upsample(maps, size)
        if not torch.isfinite(up).all():
            raise ValueError("non-finite maps")
        n = labels.shape[1] + 1
        self.confusions.append(evidence.confusions(up, labels, masks, THRESHOLDS, n))
        self.rows.append(rows)
        if not self.with_wsol:
            return
        self.box["full"].update(up, labels, boxes=boxes)
        self.pixel["full"].update(up, labels, masks=masks)
        pick = [i for i, r in enumerate(rows.tolist()) if r in self.subset]
        if pick:
            index = torch.tensor(pick)
            self.box["subset"].update(up[index], labels[index], boxes=[boxes[i] for i in pick])
            self.pixel["subset"].update(up[index], labels[index], masks=masks[index])
        pick = [i for i, r in enumerate(rows.tolist()) if r in self.faithful]
        if pick:
            index = torch.tensor(pick)
            self.perturb.update(up[index], labels[index], images=images[index])

    def confusion(self, rows: Sequence[int] | None) -> Tensor:
        """``(T, N, n, n)`` confusions of the images ``rows`` (all scored by default)."""
        everything = torch.cat(self.confusions, dim=1)
        if rows is None:
            return everything
        order = torch.cat(self.rows).tolist()
        return everything[:, [order.index(r) for r in rows]]

    def wsol(self, scope: str) -> dict[str, Any]:
        """MaxBoxAccV2 (and per IoU) and PxAP in percent, of ``full`` or ``subset``."""
        found = self.box[scope].compute()
        return {
            "max_box_acc_v2": float(found.value) * 100,
            "max_box_acc_per_iou": [float(v) * 100 for v in found.per_iou],
            "pxap": float(self.pixel[scope].compute()) * 100,
        }

    def faithfulness(self) -> dict[str, float]:
        """The deletion and insertion areas in percent."""
        areas = self.perturb.compute()
        return {"deletion": float(areas.deletion) * 100, "insertion": float(areas.insertion) * 100}


def miou_figures(val: Tensor, test: Tensor, scored: Sequence[int]) -> dict[str, Any]:
    """t* on the validation confusions ``(T, N, n, n)``, then test at 0.15 and at t*."""
    curve = evidence.figures(val.sum(1), scored)
    best = int(torch.nan_to_num(curve["miou"], nan=-1.0).argmax())
    paper = THRESHOLDS.index(PAPER_THRESHOLD)
    out: dict[str, Any] = {
        "val_miou_curve": [float(v) * 100 for v in curve["miou"]],
        "t_star": THRESHOLDS[best],
        "t_star_at_edge": best in (0, len(THRESHOLDS) - 1),
        "val_miou_paper": float(curve["miou"][paper]) * 100,
        "val_images": int(val.shape[1]),
        "test_images": int(test.shape[1]),
    }
    for tag, t in (("paper", paper), ("t_star", best)):
        for metric, value in evidence.figures(test[t].sum(0), scored).items():
            out[f"test_{metric}_{tag}"] = float(value) * 100
    return out


def run_variant(
    ctx: RunContext,
    model: nn.Module,
    variant: Variant,
    scope: str,
    subset: dict[str, list[int]],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Score one variant on its scope (and on the subset), timing its maps."""
    torch.manual_seed(ctx.config.seed)
    extractor = Extractor(variant, model)
    scored = list(ctx.data("val").scored_labels)
    seconds, images_done = 0.0, 0
    results: dict[str, SplitScores] = {}
    try:
        for split in ("val", "test"):
            rows = None if scope == "full" else subset[split]
            scores = SplitScores(model, split == "test", subset["test"], subset["faithfulness"])
            for index, images, labels, masks, boxes in ctx.data(split).batches(BATCH, rows):
                start = time.perf_counter()
                maps = extractor(images, labels)
                seconds += time.perf_counter() - start
                images_done += len(index)
                scores.update(index, maps.detach().float(), images, labels, masks, boxes)
            results[split] = scores
    finally:
        layer = extractor.target_layer
        extractor.remove()
    val, test = results["val"], results["test"]
    record: dict[str, Any] = {
        "scope": scope,
        "seconds_per_image": seconds / images_done,
        "target_layer": layer,
        "options": extractor.options,
        "subset": {
            **miou_figures(val.confusion(subset["val"]), test.confusion(subset["test"]), scored),
            **test.wsol("subset"),
            **test.faithfulness(),
            "faithfulness_images": len(subset["faithfulness"]),
        },
    }
    if scope == "full":
        record["full"] = {
            **miou_figures(val.confusion(None), test.confusion(None), scored),
            **test.wsol("full"),
        }
    return record


def run_seed(
    seed: int,
    cache: Path,
    folder: Path,
    only: Sequence[str] | None,
    log: Callable[[str], None],
) -> None:
    """Every variant of one seed not yet recorded (the cheapest first)."""
    ctx = evidence.context(DATASET, seed, cache, log)
    base = train_base(ctx)
    model = base.model.eval()
    subset = subsets(ctx)
    wanted = [v for v in variants() if only is None or v.method in only or v.name in only]
    todo = [v for v in wanted if not (folder / f"seed_{seed}" / f"{v.name}.json").is_file()]
    if not todo:
        log("every variant is recorded")
        return
    plan = plan_for(ctx, model, todo, subset, folder / "plan.json", log)
    todo = [v for v in todo if v.name in plan and plan[v.name]["scope"] != "skipped"]
    todo.sort(key=lambda v: plan[v.name]["seconds_per_image"] * (4 if plan[v.name]["scope"] == "full" else 1))
    for variant in todo:
        path = folder / f"seed_{seed}" / f"{variant.name}.json"
        if path.is_file():
            continue
        start = time.perf_counter()
        try:
            record = run_variant(ctx, model, variant, plan[variant.name]["scope"], subset, log)
        except Exception:  # reported; no record, so that the next run tries again
            log(f"{variant.name} failed:\n{traceback.format_exc()}")
            continue
        record.update(
            dataset=DATASET,
            seed=seed,
            variant=variant.name,
            method=variant.method,
            form=variant.form,
            max_channels=variant.max_channels,
            source=method_digest(variant.method),
            model=base.content_key,
            subset_images={k: list(v) for k, v in subset.items()},
            thresholds=list(THRESHOLDS),
            wall_seconds=time.perf_counter() - start,
            torch=torch.__version__,
            threads=torch.get_num_threads(),
        )
        write_json(path, record)
        part = record.get("full", record["subset"])
        log(
            f"{variant.name} ({record['scope']}): test mIoU@0.15 {part['test_miou_paper']:.2f}, "
            f"@t*={part['t_star']:g} {part['test_miou_t_star']:.2f}, "
            f"{record['seconds_per_image']:.3f} s/img, "
            f"{record['wall_seconds']:.0f} s"
        )


# ------------------------------------------------------------------------------------------------- tables
def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _short(values: Sequence[float]) -> str:
    """``mean ± std`` (the mean alone for one value)."""
    mean = _mean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.1f} ± {std:.1f}"


def _delta(have: Sequence[dict[str, Any]], reference: dict[int, dict[str, Any]], part: str, key: str) -> str:
    """The difference to Grad-CAM of the same seed (``apart``: the two rows' seed ranges do not overlap)."""
    pairs = [
        (r[part][key], reference[r["seed"]][part][key])
        for r in have
        if r["seed"] in reference and part in reference[r["seed"]]
    ]
    if not pairs:
        return ""
    ours, theirs = [a for a, _ in pairs], [b for _, b in pairs]
    apart = len(pairs) > 1 and (min(ours) > max(theirs) or max(ours) < min(theirs))
    return evidence._spread([a - b for a, b in pairs], "+") + (" apart" if apart else "")


def print_tables(folder: Path) -> None:
    """The Markdown tables from the records: the full splits, the subset, and the variants not run.

    Rows are sorted by their mean test mIoU at t*; every figure is a mean over the seeds recorded (the
    ``seeds`` column), with the standard deviation and ``[min, max]`` for the mIoU columns; Δ is paired with
    Grad-CAM of the same seed (``apart``: the seed ranges of the two rows do not overlap).
    """
    records: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(folder.glob("seed_*/*.json")):
        record = json.loads(path.read_text())
        records.setdefault(record["variant"], {})[record["seed"]] = record
    if not records:
        print("no records")
        return
    plan = json.loads((folder / "plan.json").read_text()) if (folder / "plan.json").is_file() else {}
    any_record = next(iter(next(iter(records.values())).values()))
    counts = {k: len(v) for k, v in any_record["subset_images"].items()}
    reference = records.get("gradcam", {})
    faithful = f"deletion / insertion on {counts['faithfulness']} test photos, {FAITHFULNESS_STEPS} steps"
    for part, caption in (
        ("full", f"The whole splits (59 validation / 256 test photos; {faithful})"),
        (
            "subset",
            f"The fixed subset, every variant ({counts['val']} validation / {counts['test']} test photos; "
            f"{faithful})",
        ),
    ):
        rows = {
            name: [r for _, r in sorted(by_seed.items()) if part in r] for name, by_seed in records.items()
        }
        rows = {name: have for name, have in rows.items() if have}
        order = sorted(rows, key=lambda n: -_mean([r[part]["test_miou_t_star"] for r in rows[n]]))
        print(f"\n#### {caption}\n")
        print(
            "| variant | seeds | test mIoU@0.15 | Δ vs gradcam | test mIoU@t* | Δ@t* vs gradcam | t* | "
            "MaxBoxAccV2 | PxAP | deletion ↓ | insertion ↑ | s / image |"
        )
        print("| --- | :---: |" + " ---: |" * 10)
        for name in order:
            have = rows[name]
            figures = [r[part] for r in have]
            t_star = ", ".join(
                format(f["t_star"], "g") + ("(edge)" if f["t_star_at_edge"] else "") for f in figures
            )
            is_reference = name == "gradcam"
            print(
                f"| {name} | {len(have)} | {evidence._spread([f['test_miou_paper'] for f in figures])} | "
                f"{'' if is_reference else _delta(have, reference, part, 'test_miou_paper')} | "
                f"{evidence._spread([f['test_miou_t_star'] for f in figures])} | "
                f"{'' if is_reference else _delta(have, reference, part, 'test_miou_t_star')} | {t_star} | "
                f"{_short([f['max_box_acc_v2'] for f in figures])} | "
                f"{_short([f['pxap'] for f in figures])} | "
                f"{_short([r['subset']['deletion'] for r in have])} | "
                f"{_short([r['subset']['insertion'] for r in have])} | "
                f"{_mean([r['seconds_per_image'] for r in have]):.3g} |"
            )
    skipped = {n: p for n, p in plan.items() if p["scope"] == "skipped"}
    if skipped:
        print(f"\nNot run (their maps of the subset would take more than {SUBSET_CAP:g} s on one thread):\n")
        for name, entry in skipped.items():
            seconds = entry["seconds_per_image"]
            if "as" in entry:
                shown = f"at least the cost of {entry['as']}"
            elif seconds == float("inf"):
                shown = f"more than {entry['at_least']:.1f} s per image"
            else:
                shown = f"{seconds:.3g} s per image"
            print(f"- {name}: {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--methods", nargs="+", default=None, help="methods or variants to run (default: all)"
    )
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "evidence-cache")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="print the tables from the records")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.results / "methods" / DATASET
    if args.table:
        print_tables(folder)
        return
    for seed in args.seeds:
        start = time.perf_counter()

        def log(line: str, seed: int = seed, start: float = start) -> None:
            print(f"[{DATASET} seed {seed} {time.perf_counter() - start:7.1f}s] {line.strip()}", flush=True)

        run_seed(seed, args.cache, folder, args.methods, log)


if __name__ == "__main__":
    main()
