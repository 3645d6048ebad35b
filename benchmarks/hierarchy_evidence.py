"""Does the class hierarchy add anything beyond extra models? The controls and designs, on real photos.

For each dataset and seed this trains (or loads, from the pipeline's content-keyed model cache) the models of
every row, extracts their maps on the validation and test splits, and scores every row against the same
masks:

* ``gradcam``: Grad-CAM of the base classifier (one model);
* ``ensemble``: the maps of as many independently trained single models as ``grouping`` trains, averaged
  (the same-compute control of Eq. 6 over level models);
* ``ensemble_fused``: Eq. 6 with those models' class maps as its levels (fused as ``grouping`` is, no groups);
* ``grouping``: Eq. 6 over the base classifier and single-branch level models of the FC-weight hierarchy
  (Eq. 1-3, the ``single_branch`` preset's settings);
* ``grouping_shuffled``: the same, with level models trained on a shuffled hierarchy (the same group sizes,
  the classes assigned at random): a hierarchy that helps beats it, one that does not ties it;
* ``grouping_cooccurrence``: the same, with a hierarchy from label co-occurrence (independent of the seed);
  ``grouping_prototypes`` / ``_shuffled``: with the frozen backbone's prototype hierarchy;
  ``grouping_apart`` / ``_shuffled``: with ``apart_hierarchy`` (similar classes grouped, classes that share
  images kept apart); ``grouping_given`` / ``_shuffled``: with a hierarchy the user gives as a JSON file
  (``GIVEN_HIERARCHIES``: MSRC-21's objects grouped by their WordNet hypernyms, written by hand);
* ``grouping_plus`` / ``_shuffled``: Eq. 6 whose ``M0`` is the ``ensemble``'s averaged maps, with the level
  models of ``grouping`` (``grouping_shuffled``) as its levels; its controls train one more class model per
  level instead: ``ensemble_plus`` averages them all, ``ensemble_plus_fused`` is Eq. 6 over the ensemble
  with the extra class models as the levels (does a level model add what one more class model adds?);
* ``heads`` / ``heads_shuffled``: Eq. 6 over the level heads of one shared backbone (one model's training);
* ``prototype`` (LPCAM, training-free, the base classifier's features) and ``prototype_siblings`` /
  ``prototype_siblings_shuffled``: LPCAM whose context also holds the class prototypes of the class's
  siblings in the hierarchy (its shuffled control);
* ``prototype_others``: LPCAM whose context holds the class prototypes of every other class (no hierarchy);
  ``prototype_others_ensemble``: ``prototype_others`` of each of ``ensemble``'s models (the prototypes of
  each model clustered from its own features and Grad-CAMs), the maps averaged as ``ensemble`` averages its
  Grad-CAMs (no hierarchy; added after the finalists' five seeds, with ``ensemble`` as its same-compute
  control);
  ``prototype_distant`` / ``_shuffled`` / ``_prototypes``: every other class *but* the siblings of the
  FC-weight / shuffled / frozen-backbone prototype hierarchy (the hierarchy names the classes too alike to be
  context; added after seeds 0-4 showed siblings as context doing worse than every other class);
* ``prototype_groups`` / ``_shuffled``: Eq. 6 with training-free maps: ``prototype_others``' class map plus
  the mean of its groups' maps (a group's map: the class prototypes of all its classes against every class
  outside it), over the frozen backbone's prototype hierarchy (the FC-weight one without a pretrained
  backbone) or its shuffled control;
* ``prototype_groups_absent`` / ``_shuffled``: the same, but a group's map borrows only the class prototypes
  of the group's classes *absent* from the image; a group-mate present in the image is a negative, as in
  ``prototype_others`` (labels-aware group maps: added after ``prototype_groups`` lost to ``prototype_others``
  where group-mates share the image); ``prototype_groups_gated`` / ``_shuffled``: the same group maps as a
  gate, ``P_k * mean_i G_i(k)`` (added after ``prototype_groups_absent`` failed its rule);
  ``prototype_groups_apart`` / ``_shuffled``: ``prototype_groups_absent`` over a hierarchy that groups the
  frozen backbone's class prototypes by similarity while keeping classes that share images apart
  (``apart_hierarchy``); ``prototype_groups_uncertain`` / ``_shuffled``: ``prototype_groups_absent``'s group
  term only where the class maps leave a pixel's class uncertain;
* ``prototype_routed`` / ``_shuffled``: the frozen backbone's prototype hierarchy (or its shuffled copy)
  routes the decision: the image's classes in one level-1 group compete by their contrast with each other, the
  group's best one carrying the group's ``prototype_others`` evidence (``routed_maps``);
  ``prototype_present``: the same with one group of all the image's classes (no hierarchy);
* ``recam`` / ``recam_siblings`` / ``recam_siblings_shuffled``: ReCAM fine-tunings of the base classifier
  (every class, the siblings, shuffled siblings as the softmax's negatives), explained by their ``W' * W``
  maps; with ``_plain`` (``recam_plain``, ...) by the fine-tuned net's own classifier ``W``; ``finetune``
  (their control): the same training with the re-activation weight 0;
* with ``--multiscale``: every row whose maps come from Grad-CAM also with IRN's multi-scale aggregation.

Figures: mIoU at 0.15 and at t* (the threshold with the best validation mIoU, from a grid wide enough that t*
is not at its edge: a warning names any row where it is), the mean precision and recall of the scored classes
at those thresholds, and paired bootstrap intervals (1000 resamples of the test images) of every row's
difference to ``gradcam`` and to its controls. The test split is scored once, after every choice is made on
validation.

Resumable: models are cached (``--cache``), every (dataset, seed) record is written atomically to
``<results>/hierarchy/<dataset>/seed_<n>.json`` and skipped when it holds every row asked for; a record is
scored in one go, so a run naming fewer rows than a record holds stops rather than drop them (`--rescore`
scores every named row again).

    python benchmarks/hierarchy_evidence.py --dataset msrc21 --seeds 0 1 2
    python benchmarks/hierarchy_evidence.py --dataset fashion_scenes --seeds 0 1 2
    python benchmarks/hierarchy_evidence.py --table          # the tables of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hiercam import GradCAM, MultiScaleCAM, average_branch_maps, fuse_hierarchy
from hiercam.hierarchy import ClassHierarchy
from hiercam.maps import normalize_maps
from hiercam.metrics import maps_to_masks
from hiercam.pipeline import apply_preset, bench_config, load_config
from hiercam.pipeline.artifacts import digest
from hiercam.pipeline.config import PipelineConfig
from hiercam.pipeline.context import RunContext
from hiercam.pipeline.keys import data_key
from hiercam.pipeline.stages import (
    TrainedModel,
    build_hierarchy,
    train_base,
    train_ensemble,
    train_level_heads,
    train_level_models,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "msrc21": lambda seed: load_config(ROOT / "configs" / "msrc21_mobilenet_v2.toml", seed=seed),
    # VOC-style: the stuff classes are the background of training and scoring (15 object classes)
    "msrc21_objects": lambda seed: load_config(
        ROOT / "configs" / "msrc21_objects_mobilenet_v2.toml", seed=seed
    ),
    "fashion_scenes": lambda seed: bench_config(seed=seed),
    "quick": lambda seed: bench_config(quick=True, seed=seed),  # a smoke test of this script
}
#: A grid wide enough that the validation-chosen threshold is not at its edge.
#: The lower end approaches the natural edge 0 (every pixel to its best present class): MSRC-21 scored without
#: background classes has no background pixel to predict, so its best threshold can sit there.
THRESHOLDS = (0.01, 0.02, 0.03, 0.04, *(round(0.05 * i, 2) for i in range(1, 20)))
PAPER_THRESHOLD = 0.15
BOOTSTRAP = 1000
IRN_SCALES = (1.0, 0.5, 1.5, 2.0)
ROWS_ORDER = (
    "gradcam",
    "ensemble",
    "ensemble_fused",
    "grouping",
    "grouping_shuffled",
    "grouping_cooccurrence",
    "grouping_prototypes",
    "grouping_prototypes_shuffled",
    "grouping_apart",
    "grouping_apart_shuffled",
    "grouping_given",
    "grouping_given_shuffled",
    "ensemble_plus",
    "ensemble_plus_fused",
    "grouping_plus",
    "grouping_plus_shuffled",
    "heads",
    "heads_shuffled",
    "prototype",
    "prototype_siblings",
    "prototype_siblings_shuffled",
    "prototype_siblings_cooccurrence",
    "prototype_siblings_prototypes",
    "prototype_others",
    "prototype_others_ensemble",
    "prototype_others_restarts",
    "prototype_grouping",
    "prototype_grouping_shuffled",
    "prototype_distant",
    "prototype_distant_shuffled",
    "prototype_distant_prototypes",
    "prototype_groups",
    "prototype_groups_shuffled",
    "prototype_groups_absent",
    "prototype_groups_absent_shuffled",
    "prototype_groups_gated",
    "prototype_groups_gated_shuffled",
    "prototype_groups_apart",
    "prototype_groups_apart_shuffled",
    "prototype_groups_uncertain",
    "prototype_groups_uncertain_shuffled",
    "prototype_present",
    "prototype_routed",
    "prototype_routed_shuffled",
    "subcategory",
    "subcategory_shuffled",
    "recam",
    "recam_siblings",
    "recam_siblings_shuffled",
    "finetune",
    "recam_plain",
    "recam_siblings_plain",
    "recam_siblings_shuffled_plain",
)
ROWS_ORDER = tuple(row + suffix for suffix in ("", "_ms") for row in ROWS_ORDER)
ROWS = ROWS_ORDER[: len(ROWS_ORDER) // 2]


def config_for(dataset: str, seed: int, subcategory_weight: float | None = None) -> PipelineConfig:
    """The dataset's benchmark config with the ``single_branch`` preset (no two-branch model).

    ``subcategory_weight`` replaces SC-CAM's auxiliary weight (``method.subcategory_weight``, 5 by default).
    """
    config = apply_preset(CONFIGS[dataset](seed), "single_branch")
    config = config.replace(device="cpu", evaluation__faithfulness_images=0, evaluation__wsol=False)
    if subcategory_weight is not None:
        config = config.replace(method__subcategory_weight=subcategory_weight)
    return config


@dataclass
class SeedModels:
    """The trained models and hierarchies of one seed."""

    base: TrainedModel
    partners: list[TrainedModel]
    hierarchies: dict[str, ClassHierarchy]
    level_models: dict[str, list[TrainedModel]]
    heads: dict[str, TrainedModel]
    subcategory: dict[str, TrainedModel]
    recam: dict[str, TrainedModel]
    #: the members after ``partners`` that the ``ensemble_plus`` rows add (as many as there are levels)
    extra_partners: list[TrainedModel] = dataclasses.field(default_factory=list)


def final_val_map(models: SeedModels) -> dict[str, float]:
    """Each trained model's validation mAP after its last epoch (level 0's logits), by a readable name.

    ``base``, ``partner_<i>``, ``extra_partner_<i>``, ``level_<hierarchy>_<l>``, ``heads_<hierarchy>``,
    ``subcategory_<name>``, ``recam_<name>``: what a record keeps so that a reading such as "the level heads'
    class head scores a lower mAP" can be checked from the JSON alone.
    """
    named: dict[str, TrainedModel] = {"base": models.base}
    named |= {f"partner_{i}": m for i, m in enumerate(models.partners)}
    named |= {f"extra_partner_{i}": m for i, m in enumerate(models.extra_partners)}
    for name, level_models in models.level_models.items():
        named |= {f"level_{name}_{level}": m for level, m in enumerate(level_models, start=1)}
    named |= {f"heads_{name}": m for name, m in models.heads.items()}
    named |= {f"subcategory_{name}": m for name, m in models.subcategory.items()}
    named |= {f"recam_{name}": m for name, m in models.recam.items()}
    return {name: float(m.history[-1].get("val_map", math.nan)) for name, m in named.items() if m.history}


def train_models(ctx: RunContext, rows: Sequence[str], log: Callable[[str], None]) -> SeedModels:
    """Every model the chosen rows need (loaded when cached)."""
    base = train_base(ctx)
    hierarchy, fc_key = build_hierarchy(ctx, base)
    hierarchies = {"fc": hierarchy}
    level_models: dict[str, list[TrainedModel]] = {}

    def content_key(name: str) -> str:
        """The cache key of the models trained on ``hierarchies[name]``: the hierarchy's content."""
        return digest(hierarchies[name].to_dict())

    def level_models_on(name: str) -> list[TrainedModel]:
        """Single-branch level models on ``hierarchies[name]``."""
        return train_level_models(ctx, hierarchies[name], content_key(name))

    wanted = {row.removesuffix("_ms") for row in rows}
    if wanted & {"grouping", "grouping_plus"}:
        level_models["fc"] = train_level_models(ctx, hierarchy, fc_key)
    if wanted & {
        "grouping_shuffled",
        "grouping_plus_shuffled",
        "prototype_siblings_shuffled",
        "prototype_distant_shuffled",
        "heads_shuffled",
    }:
        from hiercam.grouping import shuffled_hierarchy

        shuffled = shuffled_hierarchy(hierarchy, seed=ctx.config.seed)
        hierarchies["shuffled"] = shuffled
        if wanted & {"grouping_shuffled", "grouping_plus_shuffled"}:
            level_models["shuffled"] = level_models_on("shuffled")
    if wanted & {"grouping_cooccurrence", "prototype_siblings_cooccurrence"}:
        from hiercam.grouping import HierarchicalKMeans, cooccurrence_embeddings

        labels = ctx.data("train").labels
        levels = tuple(hierarchy.level_sizes[1:])
        cooc = HierarchicalKMeans(levels, singletons=hierarchy.singletons, unit_norm=True, seed=0).fit(
            cooccurrence_embeddings(labels), hierarchy.class_names
        )
        hierarchies["cooccurrence"] = cooc
        if "grouping_cooccurrence" in wanted:
            level_models["cooccurrence"] = level_models_on("cooccurrence")
    if wanted & PROTOTYPE_LEVEL_ROWS and ctx.config.model.weights is None:
        raise SystemExit("the grouping_prototypes rows need a pretrained backbone (its class prototypes)")
    if ctx.config.model.weights is not None and (
        any(row.startswith("prototype") for row in wanted)
        or wanted & (GROUP_SOURCE_ROWS | PROTOTYPE_LEVEL_ROWS)
    ):
        hierarchies["prototypes"] = embedding_hierarchy(ctx, base, hierarchy)
    if wanted & {group_map_row("apart"), group_map_row("apart", shuffled=True), *APART_LEVEL_ROWS}:
        from hiercam.grouping import shuffled_hierarchy

        if ctx.config.model.weights is None:
            raise SystemExit(
                "the prototype_groups_apart and grouping_apart rows need a pretrained backbone"
                " (its class prototypes)"
            )

        hierarchies["apart"] = apart_hierarchy(
            prototype_embeddings(ctx, base), ctx.data("train").labels, hierarchy, APART_RATE
        )
        hierarchies["apart_shuffled"] = shuffled_hierarchy(hierarchies["apart"], seed=ctx.config.seed)
        log(f"apart hierarchy, level 1: {', '.join(hierarchies['apart'].group_names(1))}")
    for row in sorted(wanted & APART_LEVEL_ROWS):  # level models on the apart hierarchy or its shuffled copy
        name = "apart" + ("_shuffled" if row.endswith("_shuffled") else "")
        level_models[name] = level_models_on(name)
    if wanted & GIVEN_LEVEL_ROWS:
        from hiercam.grouping import shuffled_hierarchy

        hierarchies["given"] = given_hierarchy(hierarchy)
        hierarchies["given_shuffled"] = shuffled_hierarchy(hierarchies["given"], seed=ctx.config.seed)
        log(f"given hierarchy, level 1: {', '.join(hierarchies['given'].group_names(1))}")
        for row in sorted(wanted & GIVEN_LEVEL_ROWS):  # level models on the given hierarchy or its shuffle
            name = "given" + ("_shuffled" if row.endswith("_shuffled") else "")
            level_models[name] = level_models_on(name)
    if wanted & (GROUP_SOURCE_SHUFFLED_ROWS | PROTOTYPE_LEVEL_ROWS):
        from hiercam.grouping import shuffled_hierarchy

        source = group_source(ctx)
        hierarchies[f"{source}_shuffled"] = shuffled_hierarchy(hierarchies[source], seed=ctx.config.seed)
    if wanted & PROTOTYPE_LEVEL_ROWS:
        log(f"prototype hierarchy, level 1: {', '.join(hierarchies['prototypes'].group_names(1))}")
    # level models on group_source's hierarchy ("prototypes" with a pretrained backbone) or its shuffled copy
    for row in sorted(wanted & {"prototype_grouping", "prototype_grouping_shuffled", *PROTOTYPE_LEVEL_ROWS}):
        name = group_source(ctx) + ("_shuffled" if row.endswith("_shuffled") else "")
        level_models[name] = level_models_on(name)
    heads = {}
    if "heads" in wanted:
        heads["fc"] = train_level_heads(ctx, hierarchy, fc_key)
    if "heads_shuffled" in wanted:
        heads["shuffled"] = train_level_heads(ctx, hierarchies["shuffled"], content_key("shuffled"))
    subcategory = {}
    if wanted & {"subcategory", "subcategory_shuffled"}:
        subcategory = subcategory_models(ctx, base, wanted, log)
    recam = {}
    if any(row.startswith("recam") or row == "finetune" for row in wanted):
        recam = recam_models(ctx, base, hierarchies, wanted, log)
    partners, extra_partners = [], []
    levels = hierarchy.num_levels - 1
    if wanted & {"ensemble", "ensemble_fused", "prototype_others_ensemble", *PLUS_ROWS}:
        # as many single models as `grouping` trains: the base and one per level
        partners = [train_ensemble(ctx, index=index) for index in range(1, levels + 1)]
    if wanted & {"ensemble_plus", "ensemble_plus_fused"}:  # one more class model per level
        extra_partners = [train_ensemble(ctx, index=index) for index in range(levels + 1, 2 * levels + 1)]
    return SeedModels(
        base, partners, hierarchies, level_models, heads, subcategory, recam, extra_partners=extra_partners
    )


#: ReCAM's settings (its public code: re-activation weight 1, the backbone at 0.1 times the predictor's rate),
#: on the base classifier's recipe (Adam at its rate for the backbone, 8 epochs); fixed before any figure.
RECAM_OPTIONS: dict[str, Any] = {"weight": 1.0, "predictor_lr_factor": 10.0}


@dataclass(frozen=True)
class GroupMapDesign:
    """How the rows ``prototype_groups[_<kind>][_shuffled]`` build their maps with ``group_prototype_maps``.

    ``labels_aware``: the group maps are written per image from its labels (the absent group-mates alone);
    ``fusion``: how the group term joins the class map; ``hierarchy``: the key of the hierarchy in
    ``SeedModels.hierarchies`` (``None``: ``group_source``'s), its ``_shuffled`` copy for the control.
    """

    labels_aware: bool = False
    fusion: str = "sum"
    hierarchy: str | None = None


#: Each group-map design by its ``<kind>`` (``""``: ``prototype_groups`` itself).
GROUP_MAP_DESIGNS = {
    "": GroupMapDesign(),
    "absent": GroupMapDesign(labels_aware=True),
    "gated": GroupMapDesign(labels_aware=True, fusion="product"),
    "apart": GroupMapDesign(labels_aware=True, hierarchy="apart"),
    "uncertain": GroupMapDesign(labels_aware=True, fusion="uncertain"),
}


def group_map_row(kind: str, shuffled: bool = False) -> str:
    """The row name of a group-map design (``kind`` a key of ``GROUP_MAP_DESIGNS``)."""
    return "prototype_groups" + (f"_{kind}" if kind else "") + ("_shuffled" if shuffled else "")


def group_map_design(row: str) -> tuple[GroupMapDesign, bool]:
    """The design of a ``prototype_groups...`` row, and whether the row is its shuffled control."""
    kind = row.removeprefix("prototype_groups").removesuffix("_shuffled").removeprefix("_")
    return GROUP_MAP_DESIGNS[kind], row.endswith("_shuffled")


#: The rows whose groups are ``group_source``'s hierarchy, and those on its shuffled copy.
_SOURCE_KINDS = [kind for kind, design in GROUP_MAP_DESIGNS.items() if design.hierarchy is None]
GROUP_SOURCE_SHUFFLED_ROWS = {
    *(group_map_row(kind, shuffled=True) for kind in _SOURCE_KINDS),
    "recam_siblings_shuffled",
    "recam_siblings_shuffled_plain",
    "prototype_grouping_shuffled",
    "prototype_routed_shuffled",
}
GROUP_SOURCE_ROWS = {
    *(group_map_row(kind) for kind in _SOURCE_KINDS),
    "recam_siblings",
    "recam_siblings_plain",
    "prototype_grouping",
    "prototype_routed",
    *GROUP_SOURCE_SHUFFLED_ROWS,
}


#: Eq. 6 over level models trained on the frozen backbone's prototype hierarchy, and on its shuffled copy.
PROTOTYPE_LEVEL_ROWS = {"grouping_prototypes", "grouping_prototypes_shuffled"}

#: Eq. 6 over level models trained on ``apart_hierarchy`` (similar classes grouped, classes that share images
#: kept apart), and on its shuffled copy.
APART_LEVEL_ROWS = {"grouping_apart", "grouping_apart_shuffled"}

#: Eq. 6 over level models trained on the hierarchy the user gives (``GIVEN_HIERARCHIES``), and on its
#: shuffled copy.
GIVEN_LEVEL_ROWS = {"grouping_given", "grouping_given_shuffled"}

#: The hierarchies a user gives: ``ClassHierarchy.save`` JSON files, each written for one dataset's classes.
#: ``msrc21_objects_wordnet.json``: MSRC-21's 15 objects (VOC-style) grouped by their WordNet hypernyms into
#: as many groups as the config's level (6): mammals {cow, sheep, cat, dog}, vehicles {aeroplane, car,
#: bicycle, boat}, the person {face, body}, the other artefacts {sign, book, chair}, {flower} (a plant),
#: {bird}; written by hand before any model of it was trained (docs/benchmarks.md, rule 7).
GIVEN_HIERARCHIES = (ROOT / "benchmarks" / "hierarchies" / "msrc21_objects_wordnet.json",)


def given_hierarchy(reference: ClassHierarchy) -> ClassHierarchy:
    """The given hierarchy (``GIVEN_HIERARCHIES``) whose classes are ``reference``'s, in the same order.

    Raises:
        SystemExit: no given hierarchy is written for these classes.
    """
    for path in GIVEN_HIERARCHIES:
        given = ClassHierarchy.load(path)
        if given.class_names == reference.class_names:
            return given
    raise SystemExit(
        f"the grouping_given rows need a given hierarchy of the classes {list(reference.class_names)};"
        f" none of {[p.name for p in GIVEN_HIERARCHIES]} holds them"
    )


#: A third source of maps beside the two-model ensemble: Eq. 6 over the ensemble with the level models
#: (``grouping_plus``, ``_shuffled``), and its controls with as many class models instead (``ensemble_plus``:
#: averaged; ``ensemble_plus_fused``: Eq. 6 with them as the levels).
PLUS_ROWS = {"ensemble_plus", "ensemble_plus_fused", "grouping_plus", "grouping_plus_shuffled"}


def group_source(ctx: RunContext) -> str:
    """The hierarchy of the ``prototype_groups`` and ``recam_siblings`` rows: seed-stable where possible.

    The frozen pretrained backbone's prototype hierarchy when there is a pretrained backbone (groups that do
    not depend on the training seed), else the FC-weight hierarchy.
    """
    return "prototypes" if ctx.config.model.weights is not None else "fc"


def recam_models(
    ctx: RunContext,
    base: TrainedModel,
    hierarchies: dict[str, ClassHierarchy],
    wanted: set[str],
    log: Callable[[str], None],
) -> dict[str, TrainedModel]:
    """ReCAM fine-tunings of the base classifier: every class as negatives, the siblings, shuffled siblings.

    The siblings are those of ``group_source``'s hierarchy (and of its shuffled copy), which ``train_models``
    puts in ``hierarchies``: the frozen backbone's prototype hierarchy when there is a pretrained backbone
    (seed-stable groups of classes that look alike), else the FC-weight hierarchy. The models ``all``,
    ``siblings`` and ``siblings_shuffled`` are ``ReCAMNet.recam_classifier()``, whose Grad-CAM is ReCAM's
    re-activated map; with the suffix ``_plain`` (``plain`` for ``all``) they are the same fine-tuning's
    ``ReCAMNet.plain_classifier()``, the fine-tuned net's own classifier ``W`` (ReCAM's training without its
    ``W' * W`` map). ``finetune`` is the same training with the re-activation term's weight 0: the base
    classifier trained as long again with its BCE alone, the control of the ``_plain`` rows.
    """
    from hiercam.losses import sibling_candidates

    source = group_source(ctx)
    fine_tunings: dict[str, tuple[Tensor | None, float]] = {}
    if wanted & {"recam", "recam_plain"}:
        fine_tunings["all"] = (None, RECAM_OPTIONS["weight"])
    if wanted & {"recam_siblings", "recam_siblings_plain"}:
        fine_tunings["siblings"] = (sibling_candidates(hierarchies[source], 1), RECAM_OPTIONS["weight"])
    if wanted & {"recam_siblings_shuffled", "recam_siblings_shuffled_plain"}:
        shuffled = hierarchies[f"{source}_shuffled"]
        fine_tunings["siblings_shuffled"] = (sibling_candidates(shuffled, 1), RECAM_OPTIONS["weight"])
    if "finetune" in wanted:
        fine_tunings["finetune"] = (None, 0.0)
    models = {}
    for name, (allowed, weight) in fine_tunings.items():
        net, key = recam_model(ctx, base, name, allowed, log, weight)
        plain = dataclasses.replace(
            base,
            model=net.plain_classifier().eval(),
            content_key=digest({"recam": key, "classifier": "plain"}),
        )
        if name == "finetune":
            models[name] = plain
            continue
        models[name] = dataclasses.replace(base, model=net.recam_classifier().eval(), content_key=key)
        models["plain" if name == "all" else f"{name}_plain"] = plain
    return models


def recam_model(
    ctx: RunContext,
    base: TrainedModel,
    name: str,
    candidates: Tensor | None,
    log: Callable[[str], None],
    weight: float = RECAM_OPTIONS["weight"],
) -> tuple[Any, str]:
    """One ReCAM fine-tuning of the base classifier (cached under ``<cache>/recam``): the net and its key.

    ``weight`` is the re-activation term's (0: the base classifier trained on with its BCE alone).
    """
    from hiercam import fit
    from hiercam.losses import ReActivationLoss
    from hiercam.models import ReCAMNet
    from hiercam.pipeline.data import train_loader

    if ctx.cache is None:
        raise ValueError("the evidence runs need a model cache")
    config = ctx.config
    train = config.train
    key = digest(
        {
            "base": base.content_key,
            "candidates": None if candidates is None else candidates.int().tolist(),
            "train": dataclasses.asdict(train),
            **{**RECAM_OPTIONS, "weight": weight},
        }
    )
    folder = ctx.cache / "recam"
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}-{key[:16]}.pt"
    with torch.random.fork_rng():  # the predictor's initialisation follows the seed, not what ran before
        torch.manual_seed(config.seed)
        net = ReCAMNet(base.model.features, base.model.classifier)
    if weights.is_file():
        net.load_state_dict(torch.load(weights, weights_only=True))
        log(f"recam {name}: loaded")
    else:
        begin = time.perf_counter()
        backbone = [*net.features.parameters(), *net.classifier.parameters()]
        optimizer = torch.optim.Adam(
            [
                {"params": [p for p in backbone if p.requires_grad], "lr": train.lr},
                {"params": net.predictor.parameters(), "lr": train.lr * RECAM_OPTIONS["predictor_lr_factor"]},
            ],
            weight_decay=train.weight_decay,
        )
        history = fit(
            net,
            train_loader(
                ctx.data("train").training_set(augment=True), train.batch_size, config.seed, ctx.dist
            ),
            epochs=train.epochs,
            loss=ReActivationLoss(weight=weight, candidates=candidates),
            optimizer=optimizer,
            val_loader=train_loader(
                ctx.data("val").training_set(augment=False), 64, config.seed, ctx.dist, shuffle=False
            ),
            scheduler=None,
            checkpoint=weights.with_suffix(".ckpt"),
            progress=False,
            seed=config.seed,
        )
        tmp = weights.with_suffix(".tmp")
        torch.save(net.state_dict(), tmp)
        tmp.replace(weights)
        weights.with_suffix(".ckpt").unlink(missing_ok=True)
        ctx.timings[f"train_recam_{name}"] = time.perf_counter() - begin
        log(
            f"recam {name}: trained in {ctx.timings[f'train_recam_{name}']:.0f}s, val mAP "
            f"{history['val_map'][-1]:.3f}, re-activation {history['train_reactivation'][-1]:.3f}"
        )
    return net.eval(), key


#: SC-CAM's settings (its public code: 10 sub-categories per class), with fewer clusters for a class seen in
#: few images (at least 5 images per cluster); fixed before any figure was seen. The loss weight is the
#: config's ``method.subcategory_weight`` (SC-CAM's 5 unless ``--subcategory-weight`` replaces it).
SUBCATEGORY_OPTIONS: dict[str, Any] = {"subcategories": 10, "subcategory_min_size": 5}


def subcategory_models(
    ctx: RunContext, base: TrainedModel, wanted: set[str], log: Callable[[str], None]
) -> dict[str, TrainedModel]:
    """SC-CAM's nets from the pipeline's own stage, and the shuffled control's when it is wanted.

    [`train_subcategories`][hiercam.pipeline.subcategories.train_subcategories] with SC-CAM's settings: the
    sub-categories of the frozen pretrained backbone's pooled features (the base classifier's for a network
    trained from scratch), K-means seed 0, the weight of ``method.subcategory_weight``.
    """
    from hiercam.pipeline.keys import ModelKey
    from hiercam.pipeline.subcategories import train_subcategories

    config = ctx.config.replace(
        shuffled_control="subcategory_shuffled" in wanted,
        **{f"method__{name}": value for name, value in SUBCATEGORY_OPTIONS.items()},
    )
    begin = time.perf_counter()
    trained = train_subcategories(dataclasses.replace(ctx, config=config), base)
    ctx.timings["subcategories"] = time.perf_counter() - begin
    log(f"sub-category nets ready in {ctx.timings['subcategories']:.0f}s")
    names = {"real": ModelKey("subcategory"), "shuffled": ModelKey("shuffled_subcategory")}
    return {name: trained[key] for name, key in names.items() if key in trained}


def prototype_embeddings(ctx: RunContext, base: TrainedModel) -> Tensor:
    """``(K, C)`` class prototypes of the frozen pretrained backbone (cached).

    Per class, the mean feature of the pretrained (not fine-tuned) backbone inside its region (the base
    classifier's max-normalised Grad-CAM >= 0.5) over the training images holding it
    ([`PrototypeEmbeddings`][hiercam.PrototypeEmbeddings]).
    """
    from hiercam.grouping import PrototypeEmbeddings
    from hiercam.pipeline.networks import build_classifier

    def compute() -> Tensor:
        labels = ctx.data("train").labels
        frozen = build_classifier(
            ctx.config.model, int(labels.shape[1]), 0, input_norm=ctx.config.data.input_norm
        ).eval()
        regions = normalize_maps(gradcam_maps(ctx, base, "train", None).float())
        embeddings = PrototypeEmbeddings(0.5)
        start = 0
        with torch.inference_mode():
            for _, images, batch_labels, *_ in ctx.data("train").batches(64):
                features = frozen.forward_features(images)
                embeddings.update(features, regions[start : start + len(images)], batch_labels)
                start += len(images)
        return embeddings.compute()

    return cached(ctx, f"prototype-embeddings-{base.content_key[:16]}", compute)


def embedding_hierarchy(ctx: RunContext, base: TrainedModel, fc: ClassHierarchy) -> ClassHierarchy:
    """A hierarchy from class prototypes of the frozen pretrained backbone (recorded for its seed agreement).

    The [`prototype_embeddings`][hierarchy_evidence.prototype_embeddings] grouped like the FC-weight hierarchy
    (same levels, same kept-out classes, L2-normalised, K-means seed 0).
    """
    from hiercam.grouping import HierarchicalKMeans

    return HierarchicalKMeans(fc.level_sizes[1:], singletons=fc.singletons, unit_norm=True, seed=0).fit(
        prototype_embeddings(ctx, base), fc.class_names
    )


#: Two classes share images when either is in at least this fraction of the other's training images.
APART_RATE = 0.1


def apart_hierarchy(
    embeddings: Tensor, labels: Tensor, reference: ClassHierarchy, rate: float = APART_RATE
) -> ClassHierarchy:
    """Similar classes grouped, classes sharing images kept apart: the groups of ``prototype_groups_apart``.

    The cosine distance between the L2-normalised ``embeddings`` ``(K, C)``, set to 10 (beyond any cosine
    distance) for every pair of classes where either is in at least ``rate`` of the other's images in
    ``labels`` ``(N, K)``; complete linkage (scipy), so no group holds such a pair while the level's group
    count can be met without one; the tree cut at ``reference``'s group counts (its kept-out classes alone).
    Fixed before any figure of it was seen.
    """
    import numpy as np
    from scipy.cluster.hierarchy import cut_tree, linkage
    from scipy.spatial.distance import squareform

    unit = F.normalize(embeddings.double(), dim=1)
    distance = (1 - unit @ unit.T).clamp_min(0)
    present = labels.double()
    together = present.T @ present
    share = together / present.sum(0).clamp_min(1)[:, None]  # share[k, j]: of k's images, the part with j
    shared = share >= rate
    distance[shared | shared.T] = 10.0
    distance.fill_diagonal_(0)
    alone = set(reference.singletons)
    grouped = [k for k in range(reference.num_classes) if k not in alone]
    square = distance[grouped][:, grouped].numpy()
    tree = linkage(squareform((square + square.T) / 2, checks=False), method="complete")
    counts = [size - len(alone) for size in reference.level_sizes[1:]]
    cuts = cut_tree(tree, n_clusters=counts)
    levels = []
    for column, count in enumerate(counts):
        assignment = np.empty(reference.num_classes, dtype=np.int64)
        order: dict[int, int] = {}
        for index, k in enumerate(grouped):  # groups numbered by first appearance, kept-out classes last
            assignment[k] = order.setdefault(int(cuts[index, column]), len(order))
        for offset, k in enumerate(sorted(alone)):
            assignment[k] = count + offset
        levels.append(assignment.tolist())
    return ClassHierarchy(levels, reference.class_names, singletons=sorted(alone))


def gradcam_maps(
    ctx: RunContext, trained: TrainedModel, split: str, scales: tuple[float, ...] | None
) -> Tensor:
    """``(N, K, h, w)`` float16 Grad-CAMs of a model on a split at feature resolution (cached on disk)."""
    if ctx.cache is None:
        raise ValueError("the evidence runs need a model cache")
    tag = "plain" if scales is None else "ms" + "_".join(f"{s:g}" for s in scales)
    path = (
        ctx.cache
        / "evidence_maps"
        / f"{split}-{tag}-{trained.content_key[:16]}-{digest(data_key(ctx.config))[:16]}.pt"
    )
    if path.is_file():
        return torch.load(path, weights_only=True)
    extractor = GradCAM(trained.model)
    multi = None if scales is None else MultiScaleCAM(extractor, scales)
    pieces = []
    batch = 64 if scales is None else 16
    for _, images, *_ in ctx.data(split).batches(batch):
        if multi is None:
            cams = extractor(images, size="feature", normalize=None)
        else:
            plain = extractor(images, size="feature", normalize=None)
            size = (round(plain.shape[-2] * max(scales)), round(plain.shape[-1] * max(scales)))
            cams = multi(images, size=size, normalize=None)
        pieces.append(cams.to(torch.float16))
    extractor.remove()
    maps = torch.cat(pieces)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(maps, tmp)
    tmp.replace(path)
    return maps


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """The pipeline's scoring convention: bilinear to the image size, then max-normalised per map."""
    return normalize_maps(F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False))


def confusions(maps: Tensor, labels: Tensor, masks: Tensor, thresholds: Sequence[float], n: int) -> Tensor:
    """Per-image confusion matrices ``(T, B, n, n)`` (rows: truth, columns: prediction; void ignored).

    The prediction is ``maps_to_masks`` at every threshold from one arg-max: a pixel takes the present class
    with the largest max-normalised map (ties to the lower index) when that value is above the threshold, the
    background otherwise. So one histogram of (image, truth, top class, threshold bin of the top value) gives
    every threshold's confusion by cumulative sums. Checked against ``maps_to_masks`` on every call at the
    middle threshold.
    """
    count, steps = len(maps), len(thresholds)
    normalised = normalize_maps(maps).masked_fill(~labels.bool()[:, :, None, None], -1.0)
    value, top = normalised.max(dim=1)  # (B, H, W)
    grid = torch.tensor(list(thresholds), dtype=value.dtype)
    bins = torch.searchsorted(grid, value.contiguous(), right=False)  # thresholds strictly below the value
    middle = steps // 2
    if not torch.equal(
        torch.where(bins > middle, top + 1, 0), maps_to_masks(maps, labels, thresholds[middle])
    ):
        raise RuntimeError("the one-arg-max prediction differs from maps_to_masks")
    classes = n - 1
    image = torch.arange(count).view(-1, 1, 1).expand_as(top)
    flat = ((image * n + masks.long()) * classes + top) * (steps + 1) + bins
    valid = masks != 255
    histogram = torch.bincount(flat[valid], minlength=count * n * classes * (steps + 1))
    histogram = histogram.view(count, n, classes, steps + 1)
    # above[..., t] = pixels whose top value is above thresholds[t]: bins > t
    above = histogram.flip(-1).cumsum(-1).flip(-1)[..., 1:]  # (B, n, classes, T)
    out = torch.zeros(steps, count, n, n, dtype=torch.int64)
    out[:, :, :, 1:] = above.permute(3, 0, 1, 2)
    total = histogram.sum((2, 3))  # (B, n) valid pixels per true label
    out[:, :, :, 0] = (total[..., None] - above.sum(2)).permute(2, 0, 1)
    return out


def figures(confusion: Tensor, scored: Sequence[int]) -> dict[str, Tensor]:
    """mIoU, mean precision and mean recall of the ``scored`` labels from confusions ``(..., n, n)``."""
    diagonal = confusion.diagonal(dim1=-2, dim2=-1).double()
    truth, predicted = confusion.sum(-1).double(), confusion.sum(-2).double()
    union = truth + predicted - diagonal
    idx = list(scored)

    def mean(numerator: Tensor, denominator: Tensor) -> Tensor:
        value = numerator[..., idx] / denominator[..., idx]
        return value.nanmean(-1)

    iou = torch.where(union[..., idx] > 0, diagonal[..., idx] / union[..., idx], torch.nan).nanmean(-1)
    return {"miou": iou, "precision": mean(diagonal, predicted), "recall": mean(diagonal, truth)}


def row_makers(
    ctx: RunContext, models: SeedModels, rows: Sequence[str], split: str, log: Callable[[str], None]
) -> dict[str, Callable[[Tensor, Tensor, tuple[int, int]], Tensor]]:
    """For each row, ``make(rows, labels, size) -> maps (B, K, H, W)`` of the images ``rows`` of ``split``."""
    rest = "max"
    makers: dict[str, Callable[[Tensor, Tensor, tuple[int, int]], Tensor]] = {}
    cache: dict[tuple[str, bool], Tensor] = {}

    def maps_of(trained: TrainedModel, multiscale: bool) -> Tensor:
        key = (trained.content_key, multiscale)
        if key not in cache:
            begin = time.perf_counter()
            cache[key] = gradcam_maps(ctx, trained, split, IRN_SCALES if multiscale else None)
            ctx.timings[f"maps_{split}_{trained.content_key[:8]}_{multiscale}"] = time.perf_counter() - begin
        return cache[key]

    for row in rows:
        name, multiscale = row.removesuffix("_ms"), row.endswith("_ms")

        def up(trained: TrainedModel, index: Tensor, size: tuple[int, int], ms: bool = multiscale) -> Tensor:
            return upsample(maps_of(trained, ms)[index], size)

        def ensemble(index: Tensor, size: tuple[int, int], up=up) -> Tensor:
            """The ``ensemble`` row's maps: the base and its partners, averaged."""
            return average_branch_maps([up(m, index, size) for m in [models.base, *models.partners]])

        if name == "gradcam":
            makers[row] = lambda index, labels, size, up=up: up(models.base, index, size)
        elif name == "ensemble":
            makers[row] = lambda index, labels, size, ensemble=ensemble: ensemble(index, size)
        elif name == "ensemble_fused":  # Eq. 6 with the partners' class maps as the levels: no groups
            makers[row] = lambda index, labels, size, up=up: fused_over_models(
                up(models.base, index, size), [up(m, index, size) for m in models.partners], labels
            )
        elif name == "ensemble_plus":
            members = [models.base, *models.partners, *models.extra_partners]
            makers[row] = lambda index, labels, size, up=up, members=members: average_branch_maps(
                [up(m, index, size) for m in members]
            )
        elif name == "ensemble_plus_fused":  # Eq. 6 over the ensemble, the extra class models as the levels
            makers[row] = lambda index, labels, size, up=up, ensemble=ensemble: fused_over_models(
                ensemble(index, size), [up(m, index, size) for m in models.extra_partners], labels
            )
        elif name.startswith("grouping"):
            source = {
                "grouping": "fc",
                "grouping_shuffled": "shuffled",
                "grouping_cooccurrence": "cooccurrence",
                "grouping_prototypes": "prototypes",
                "grouping_prototypes_shuffled": "prototypes_shuffled",
                "grouping_apart": "apart",
                "grouping_apart_shuffled": "apart_shuffled",
                "grouping_given": "given",
                "grouping_given_shuffled": "given_shuffled",
                "grouping_plus": "fc",
                "grouping_plus_shuffled": "shuffled",
            }[name]
            hierarchy, level_models = models.hierarchies[source], models.level_models[source]
            # grouping_plus: Eq. 6 whose M0 is the ensemble's maps (M0' too), the level models as the levels
            over = ensemble if name.startswith("grouping_plus") else None

            def fused(
                index: Tensor,
                labels: Tensor,
                size: tuple[int, int],
                up=up,
                h=hierarchy,
                lm=level_models,
                over=over,
            ):
                base = up(models.base, index, size) if over is None else over(index, size)
                levels = [up(m, index, size) for m in lm]
                return fuse_hierarchy(base, levels, h, labels, rest_reduction=rest)

            makers[row] = fused
        elif name.startswith("recam") or name == "finetune":
            which = (
                "finetune" if name == "finetune" else name.removeprefix("recam").removeprefix("_") or "all"
            )
            rc = models.recam[which]
            makers[row] = lambda index, labels, size, up=up, rc=rc: up(rc, index, size)
        elif name.startswith("subcategory"):
            sc = models.subcategory["shuffled" if name.endswith("_shuffled") else "real"]
            makers[row] = lambda index, labels, size, up=up, sc=sc: up(sc, index, size)
        elif name.startswith("prototype"):
            makers[row] = prototype_maker(ctx, models, name, split, multiscale, log)
        elif name.startswith("heads"):
            makers[row] = heads_maker(ctx, models, name, split, multiscale)
        else:
            raise ValueError(f"unknown row {row!r}")
    return makers


def fused_over_models(base: Tensor, others: Sequence[Tensor], labels: Tensor) -> Tensor:
    """Eq. 6 without groups: ``M0 + mean_i M_i - M0'`` with other models' *class* maps as the ``M_i``.

    ``grouping``'s fusion (every term max-normalised, ``M0'`` the maximum of the other present classes'
    ``M0``, the sum clamped at 0 and max-normalised) with each level model replaced by a class model of
    another seed: ``ensemble_fused``, the same-compute control that is fused as ``grouping`` is.
    """
    from hiercam.fusion import fuse, rest_maps  # the M0' that fuse_hierarchy builds, not a second copy

    scaled = normalize_maps(base)
    rest = rest_maps(scaled, labels, "max")
    return fuse(scaled, [normalize_maps(m) for m in others], rest)


def cached(ctx: RunContext, name: str, compute: Callable[[], Tensor]) -> Tensor:
    """A tensor cached on disk under the model cache (``name`` must hold every key it depends on)."""
    if ctx.cache is None:
        raise ValueError("the evidence runs need a model cache")
    path = ctx.cache / "evidence_maps" / f"{name}-{digest(data_key(ctx.config))[:16]}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(value, tmp)
    tmp.replace(path)
    return value


def base_features(ctx: RunContext, base: TrainedModel, split: str) -> Tensor:
    """``(N, C, h, w)`` float16 feature maps of a model (the layer its Grad-CAM explains), cached."""

    def compute() -> Tensor:
        pieces = []
        with torch.inference_mode():
            for _, images, *_ in ctx.data(split).batches(64):
                pieces.append(base.model.forward_features(images).to(torch.float16))
        return torch.cat(pieces)

    return cached(ctx, f"features-{split}-{base.content_key[:16]}", compute)


#: LPCAM's settings for PASCAL VOC (its public code), used unchanged: nothing is tuned on these datasets.
PROTOTYPE_OPTIONS: dict[str, Any] = {"num_clusters": 12, "foreground_threshold": 0.1, "max_points": 20000}

#: ``prototype_others_restarts``' second K-means seed: the training seed plus this (the first is the seed).
RESTART_SEED_OFFSET = 1000

#: LPCAM's K-means seed when ``--prototype-seed`` is given (default: the training seed), to measure how much
#: of a row's spread comes from the clustering rather than from the trained model.
PROTOTYPE_SEED: int | None = None


#: ``--objects-only``: score MSRC-21's object classes against a background of its "stuff" classes (the maps
#: unchanged; a diagnostic of completeness against background, which the 21-class protocol cannot show).
OBJECTS_ONLY = False


def objects_only(labels: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """``(labels, masks)`` with MSRC-21's stuff classes out of the labels and their pixels background (0)."""
    from hiercam.datasets import MSRC21_CLASSES, MSRC21_STUFF_CLASSES

    stuff = [MSRC21_CLASSES.index(name) for name in MSRC21_STUFF_CLASSES]
    labels = labels.clone()
    labels[:, stuff] = 0
    masks = masks.clone()
    for k in stuff:
        masks[masks == k + 1] = 0
    return labels, masks


def scored_labels(ctx: RunContext, split: str) -> list[int]:
    """The confusion-matrix labels the mIoU averages (``--objects-only``: background and the objects)."""
    if not OBJECTS_ONLY:
        return list(ctx.data(split).scored_labels)
    from hiercam.datasets import MSRC21_CLASSES, MSRC21_STUFF_CLASSES

    return [0] + [k + 1 for k, name in enumerate(MSRC21_CLASSES) if name not in MSRC21_STUFF_CLASSES]


def kmeans_seed_of(ctx: RunContext, kmeans_seed: int | None = None) -> int:
    """LPCAM's K-means seed: ``kmeans_seed``, else ``--prototype-seed``, else the training seed."""
    for seed in (kmeans_seed, PROTOTYPE_SEED):
        if seed is not None:
            return seed
    return ctx.config.seed


def prototypes(
    ctx: RunContext,
    base: TrainedModel,
    log: Callable[[str], None],
    level: tuple[ClassHierarchy, int] | None = None,
    kmeans_seed: int | None = None,
) -> list[list[Tensor]]:
    """LPCAM's class and context prototypes of a model, from the training split (cached).

    ``level=(hierarchy, i)`` for a classifier of the groups of level ``i``: the prototypes of its groups, from
    the training images' group labels. ``kmeans_seed`` replaces the K-means seed (default:
    ``--prototype-seed``, else the training seed).
    """
    from hiercam.cam import PrototypeCAM

    seed = kmeans_seed_of(ctx, kmeans_seed)

    def compute() -> list[list[Tensor]]:
        begin = time.perf_counter()
        train_maps = normalize_maps(gradcam_maps(ctx, base, "train", None).float())
        cam = PrototypeCAM(
            base.model.classifier.weight.detach(),
            classifier_bias=base.model.classifier.bias.detach(),
            seed=seed,
            **PROTOTYPE_OPTIONS,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            labels = ctx.data("train").labels
            if level is not None:
                labels = level[0].remap_labels(labels, level[1])
            cam.fit(base_features(ctx, base, "train").float(), train_maps, labels)
        for warning in caught:
            log(f"prototypes: {warning.message}")
        ctx.timings["prototypes"] = time.perf_counter() - begin
        log(f"prototypes clustered in {ctx.timings['prototypes']:.0f}s")
        return [list(cam.class_prototypes_), list(cam.context_prototypes_)]

    name = f"prototypes-{base.content_key[:16]}-{digest(PROTOTYPE_OPTIONS)[:8]}"
    if seed != ctx.config.seed:
        name += f"-kmeans{seed}"
    return cached(ctx, name, compute)  # type: ignore[arg-type, return-value]


def averaged(maps: Sequence[Tensor]) -> Callable[[Tensor, Tensor, tuple[int, int]], Tensor]:
    """A row maker averaging several ``(N, K, h, w)`` maps, each upsampled first, as ``ensemble`` averages."""
    return lambda index, labels, size: average_branch_maps([upsample(m[index], size) for m in maps])


def prototype_maker(
    ctx: RunContext, models: SeedModels, name: str, split: str, multiscale: bool, log: Callable[[str], None]
) -> Callable[[Tensor, Tensor, tuple[int, int]], Tensor]:
    """LPCAM maps of the base classifier; ``_siblings`` adds the siblings of level 1 to the context.

    ``prototype_others`` adds every other class instead (hard negatives without a hierarchy);
    ``prototype_others_ensemble`` averages ``prototype_others`` over ``ensemble``'s models.
    ``prototype_routed[_shuffled]`` lets the image's classes of one group compete by their contrast
    (``routed_maps``), ``prototype_present`` all the image's classes.
    ``prototype_grouping[_shuffled]`` is ``grouping``'s Eq. 6 with each model's ``prototype_others`` maps in
    place of its Grad-CAMs: the base classifier's class maps and each level model's group maps (its own group
    prototypes), on ``group_source``'s hierarchy (or its shuffled copy, the control).

    The prototypes are clustered once per seed; the siblings' class prototypes join each class's own context
    prototypes (``PrototypeCAM(context_classes=sibling_classes(hierarchy, 1))``, without clustering again).
    """
    from hiercam.cam import prototype_cam, sibling_classes

    if multiscale:
        raise ValueError("prototype rows have no multi-scale form here")
    if name == "prototype_others_ensemble":  # each model's own prototypes; averaged as `ensemble` averages
        return averaged([others_maps(ctx, model, split, log) for model in [models.base, *models.partners]])
    if name == "prototype_others_restarts":  # one model, two K-means seeds: what the clustering adds
        seeds = (ctx.config.seed, ctx.config.seed + RESTART_SEED_OFFSET)
        return averaged([others_maps(ctx, models.base, split, log, kmeans_seed=k) for k in seeds])
    if name.startswith("prototype_grouping"):  # Eq. 6 over the level models, LPCAM in place of Grad-CAM
        key = group_source(ctx) + ("_shuffled" if name.endswith("_shuffled") else "")
        hierarchy, level_models = models.hierarchies[key], models.level_models[key]
        base = others_maps(ctx, models.base, split, log)
        levels = [
            others_maps(ctx, trained, split, log, (hierarchy, level))
            for level, trained in enumerate(level_models, start=1)
        ]

        def fused(index: Tensor, labels: Tensor, size: tuple[int, int]) -> Tensor:
            group_maps = [upsample(m[index], size) for m in levels]
            return fuse_hierarchy(
                upsample(base[index], size), group_maps, hierarchy, labels, rest_reduction="max"
            )

        return fused
    if name == "prototype_others":  # every other class's prototypes: hard negatives without a hierarchy
        maps = others_maps(ctx, models.base, split, log)
        return lambda index, labels, size: upsample(maps[index], size)
    if name.startswith(("prototype_routed", "prototype_present")):  # the hierarchy routes the decision
        others = others_maps(ctx, models.base, split, log)
        own = prototypes(ctx, models.base, log)[0]
        groups = None
        if name.startswith("prototype_routed"):
            key = group_source(ctx) + ("_shuffled" if name.endswith("_shuffled") else "")
            groups = models.hierarchies[key].assignments(1)
        features, present = base_features(ctx, models.base, split), ctx.data(split).labels
        maps = torch.cat(
            [
                routed_maps(feature[None].float(), other[None].float(), own, image_labels[None], groups)
                for feature, other, image_labels in zip(features, others, present, strict=True)
            ]
        )
        return lambda index, labels, size: upsample(maps[index], size)
    own, context = prototypes(ctx, models.base, log)
    if name.startswith("prototype_distant"):  # every other class but the siblings: the hierarchy excludes
        source = name.removeprefix("prototype_distant").removeprefix("_") or "fc"
        near = sibling_classes(models.hierarchies[source], 1)
        siblings = [[j for j in range(len(own)) if j != k and j not in near[k]] for k in range(len(own))]
    elif name.startswith("prototype_siblings"):
        source = name.removeprefix("prototype_siblings").removeprefix("_") or "fc"
        siblings = sibling_classes(models.hierarchies[source], 1)
    features = base_features(ctx, models.base, split)
    if name.startswith("prototype_groups"):
        design, shuffled = group_map_design(name)
        source = design.hierarchy or group_source(ctx)
        hierarchy = models.hierarchies[source + ("_shuffled" if shuffled else "")]
        if design.labels_aware:  # one image at a time: its labels decide the group maps
            present = ctx.data(split).labels
            maps = torch.cat(
                [
                    group_prototype_maps(
                        feature[None].float(), own, context, hierarchy, labels[None], design.fusion
                    )
                    for feature, labels in zip(features, present, strict=True)
                ]
            )
        else:
            maps = torch.cat(
                [group_prototype_maps(chunk.float(), own, context, hierarchy) for chunk in features.split(64)]
            )
        return lambda index, labels, size: upsample(maps[index], size)
    if name != "prototype":
        context = [torch.cat([context[k], *(own[j] for j in siblings[k])]) for k in range(len(own))]
    maps = torch.cat(
        [prototype_cam(chunk.float(), own, context, normalize=None) for chunk in features.split(64)]
    )
    return lambda index, labels, size: upsample(maps[index], size)


def others_maps(
    ctx: RunContext,
    trained: TrainedModel,
    split: str,
    log: Callable[[str], None],
    level: tuple[ClassHierarchy, int] | None = None,
    kmeans_seed: int | None = None,
) -> Tensor:
    """``prototype_others``' maps ``(N, K, h, w)`` of ``trained`` on ``split``, from its own prototypes.

    ``level=(hierarchy, i)`` for a classifier of the groups of level ``i``: maps ``(N, N_i, h, w)`` of its
    groups, each against its own context and every other group's prototypes.
    """
    from hiercam.cam import prototype_cam

    own, context = prototypes(ctx, trained, log, level, kmeans_seed)
    context = [torch.cat([context[k], *(own[j] for j in range(len(own)) if j != k)]) for k in range(len(own))]
    return torch.cat(
        [
            prototype_cam(chunk.float(), own, context, normalize=None)
            for chunk in base_features(ctx, trained, split).split(64)
        ]
    )


def routed_maps(
    features: Tensor, others: Tensor, own: Sequence[Tensor], labels: Tensor, groups: Tensor | None
) -> Tensor:
    """The hierarchy routes the decision: groups by ``prototype_others``, siblings against each other.

    For one image (``features (1, C, h, w)``, ``prototype_others``' maps ``others (1, K, h, w)``, its labels
    ``(1, K)``), ``P`` the max-normalised ``others``. Its classes are split by their level-1 group
    (``groups (K,)``; ``None``: one group of every class in the image, the control without a hierarchy).
    A class alone in its group keeps ``P_k``. In a group ``m`` of two or more of the image's classes, the
    group's evidence is ``G = max_{j in m} P_j`` and the classes compete by their sibling contrast
    ``D_k = ReLU(cos(x, u_k - mean_{j in m, j != k} u_j))`` (``u``: the mean unit class prototype),
    max-normalised: ``M_k = G * (D_k + e) / (max_{j in m} D_j + e)``, ``e = 1e-6``, so the group's best
    sibling at a pixel carries the group's evidence there. Absent classes get zero maps. Fixed, with its
    rule, before any figure of it was seen.
    """
    eps = 1e-6
    unit = F.normalize(features, dim=1)
    directions = torch.stack([F.normalize(p.float(), dim=1).mean(0) for p in own])  # (K, C)
    scaled = normalize_maps(others)
    out = torch.zeros_like(others)
    present = labels[0].nonzero().flatten().tolist()
    members: dict[int, list[int]] = {}
    for k in present:
        members.setdefault(0 if groups is None else int(groups[k]), []).append(k)
    for group in members.values():
        if len(group) == 1:
            out[:, group[0]] = scaled[:, group[0]]
            continue
        evidence = scaled[:, group].amax(dim=1)  # (1, h, w)
        contrast = torch.stack(
            [
                torch.einsum(
                    "bchw,c->bhw",
                    unit,
                    directions[k] - directions[[j for j in group if j != k]].mean(0),
                ).clamp_min(0)
                for k in group
            ],
            dim=1,
        )  # (1, m, h, w)
        contrast = normalize_maps(contrast)
        ratio = (contrast + eps) / (contrast.amax(dim=1, keepdim=True) + eps)
        out[:, group] = evidence[:, None] * ratio
    return out


def group_prototype_maps(
    features: Tensor,
    own: Sequence[Tensor],
    context: Sequence[Tensor],
    hierarchy: ClassHierarchy,
    labels: Tensor | None = None,
    fusion: str = "sum",
) -> Tensor:
    """Eq. 6 with prototype maps in place of trained classifiers: ``M_k = P_k + mean_i G_i(k)``.

    ``P_k`` is ``prototype_others``' map of class ``k`` (its class prototypes against its own context
    prototypes and every other class's class prototypes). ``G_i(k)`` is the map of ``k``'s group at level
    ``i``: the class prototypes of every class of the group against ``k``'s own context prototypes and the
    class prototypes of every class outside the group (a group-level LPCAM, the training-free counterpart of a
    level classifier's Grad-CAM). Each term is max-normalised per image and class before the sum, as Eq. 6's
    maps are. Fixed before any figure of it was seen; ``(B, C, h, w)`` features give ``(B, K, h, w)`` maps.

    With ``labels`` (``(B, K)`` 0/1, the image labels; the same for every image of the batch), a group's map
    borrows only the class prototypes of the group's classes absent from the image: a group-mate that is in
    the image joins the negatives, as every other class does in ``P_k`` (``prototype_groups_absent``, fixed
    before any figure of it was seen).

    ``fusion="uncertain"`` (labels needed) adds the group term only where the class maps leave the pixel's
    class uncertain: ``M_k = P_k + (1 - (p1 - p2)) * mean_i G_i(k)``, with ``p1 >= p2`` the two largest
    ``P_j`` over the image's classes at the pixel (``p2 = 0`` with one class): a pixel that one class owns
    keeps its class maps (``prototype_groups_uncertain``, fixed before any figure of it was seen).

    ``fusion="product"`` gates the class map by the group term instead, ``M_k = P_k * mean_i G_i(k)`` (the
    group map as a soft mask of where ``k``'s kind of object is; ``prototype_groups_gated``, labels-aware,
    fixed before any figure of it was seen); a hierarchy without group levels gives ``P_k``.
    """
    from hiercam.cam import prototype_cam

    if fusion not in ("sum", "product", "uncertain"):
        raise ValueError(f"`fusion` must be 'sum', 'product' or 'uncertain', got {fusion!r}")
    if fusion == "uncertain" and labels is None:
        raise ValueError("`fusion='uncertain'` needs `labels`")

    classes = range(len(own))
    present: set[int] = set()
    if labels is not None:
        if bool((labels != labels[:1]).any()):
            raise ValueError("`labels` must be the same for every image of the batch")
        present = {int(j) for j in labels[0].nonzero().flatten()}

    def group_map(level: int) -> Tensor:
        """Each class's group at ``level`` (level 0: the class alone, ``P_k``) against everything else."""
        groups, assigned = hierarchy.groups(level), hierarchy.assignments(level).tolist()
        members = [{j for j in groups[assigned[k]] if j == k or j not in present} for k in classes]
        positives = [torch.cat([own[j] for j in sorted(members[k])]) for k in classes]
        negatives = [
            torch.cat([context[k], *(own[j] for j in classes if j not in members[k])]) for k in classes
        ]
        return prototype_cam(features, positives, negatives)

    fused = group_map(0)
    if hierarchy.num_levels > 1:
        groups = torch.stack([group_map(level) for level in range(1, hierarchy.num_levels)]).mean(0)
        if fusion == "product":
            return fused * groups
        if fusion == "uncertain" and present:
            top = fused[:, sorted(present)].topk(min(2, len(present)), dim=1).values  # (B, 1 or 2, h, w)
            margin = top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0)
            groups = groups * (1 - margin)[:, None]
        fused = fused + groups
    return fused


def heads_maker(
    ctx: RunContext, models: SeedModels, name: str, split: str, multiscale: bool
) -> Callable[[Tensor, Tensor, tuple[int, int]], Tensor]:
    """Eq. 6 over the level heads of one backbone (``_shuffled``: trained on the shuffled hierarchy)."""
    from hiercam.cam import level_heads_maps

    if multiscale:
        raise ValueError("heads rows have no multi-scale form here")
    source = "shuffled" if name.endswith("_shuffled") else "fc"
    hierarchy, trained = models.hierarchies[source], models.heads[source]

    def compute() -> Tensor:
        pieces = []
        for _, images, *_ in ctx.data(split).batches(64):
            result = level_heads_maps(trained.model, images, hierarchy, size="feature", normalize=None)
            pieces.append(torch.cat([result.base, *result.levels], dim=1).to(torch.float16))
        return torch.cat(pieces)

    maps = cached(ctx, f"heads-{split}-{trained.content_key[:16]}", compute)
    k = hierarchy.num_classes

    def make(index: Tensor, labels: Tensor, size: tuple[int, int]) -> Tensor:
        stacked = maps[index]
        base = upsample(stacked[:, :k], size)
        levels, start = [], k
        for level in range(1, hierarchy.num_levels):
            end = start + hierarchy.num_groups(level)
            levels.append(upsample(stacked[:, start:end], size))
            start = end
        return fuse_hierarchy(base, levels, hierarchy, labels, rest_reduction="max")

    return make


def score(
    ctx: RunContext,
    makers: dict[str, Callable[[Tensor, Tensor, tuple[int, int]], Tensor]],
    split: str,
    thresholds: Sequence[float],
) -> dict[str, Tensor]:
    """Per-image confusion matrices ``(T, N, n, n)`` of every row on ``split``."""
    data = ctx.data(split)
    n = data.labels.shape[1] + 1
    out: dict[str, list[Tensor]] = {row: [] for row in makers}
    for index, images, labels, masks, _ in data.batches(32):
        size = (int(images.shape[-2]), int(images.shape[-1]))
        for row, make in makers.items():
            maps = make(index, labels, size)
            if not torch.isfinite(maps).all():
                raise ValueError(f"row {row}: non-finite maps")
            if OBJECTS_ONLY:  # the maps were made with every label; only the objects compete and score
                out[row].append(confusions(maps, *objects_only(labels, masks), thresholds, n))
            else:
                out[row].append(confusions(maps, labels, masks, thresholds, n))
    return {row: torch.cat(pieces, dim=1) for row, pieces in out.items()}


def paired_bootstrap(a: Tensor, b: Tensor, scored: Sequence[int], seed: int) -> dict[str, float]:
    """The difference of the mIoU of two rows' per-image confusions ``(N, n, n)``: value and 95 % interval."""
    generator = torch.Generator().manual_seed(seed)
    count = a.shape[0]
    draws = torch.randint(count, (BOOTSTRAP, count), generator=generator)
    weights = torch.zeros(BOOTSTRAP, count, dtype=torch.float64)
    weights.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    flat_a, flat_b = a.flatten(1).double(), b.flatten(1).double()
    side = a.shape[-1]
    delta = (
        figures((weights @ flat_a).view(BOOTSTRAP, side, side), scored)["miou"]
        - figures((weights @ flat_b).view(BOOTSTRAP, side, side), scored)["miou"]
    )
    value = figures(a.sum(0), scored)["miou"] - figures(b.sum(0), scored)["miou"]
    low, high = torch.quantile(delta, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"delta": float(value) * 100, "low": low * 100, "high": high * 100}


#: Each row's controls: the rows it must beat for the hierarchy (or design) to count.
CONTROLS = {
    "grouping": ("gradcam", "ensemble", "grouping_shuffled", "ensemble_fused"),
    "ensemble_fused": ("gradcam", "ensemble"),
    "grouping_apart": ("gradcam", "ensemble", "ensemble_fused", "grouping_apart_shuffled", "grouping"),
    "grouping_given": ("gradcam", "ensemble", "ensemble_fused", "grouping_given_shuffled", "grouping"),
    "grouping_plus": (
        "gradcam",
        "ensemble",
        "ensemble_plus",
        "ensemble_plus_fused",
        "grouping_plus_shuffled",
        "grouping",
    ),
    "ensemble_plus_fused": ("gradcam", "ensemble_plus"),
    "grouping_cooccurrence": ("gradcam", "ensemble", "grouping_shuffled"),
    "grouping_prototypes": (
        "gradcam",
        "ensemble",
        "ensemble_fused",
        "grouping_prototypes_shuffled",
        "grouping",
    ),
    "heads": ("gradcam", "heads_shuffled"),
    "prototype": ("gradcam",),
    "prototype_siblings": ("gradcam", "prototype", "prototype_siblings_shuffled", "prototype_others"),
    "prototype_siblings_cooccurrence": ("gradcam", "prototype_siblings_shuffled", "prototype_others"),
    "prototype_siblings_prototypes": ("gradcam", "prototype_siblings_shuffled", "prototype_others"),
    "prototype_others": (
        "gradcam",
        "prototype",
        "prototype_siblings",
        "prototype_siblings_shuffled",
        "ensemble",
    ),
    "prototype_others_ensemble": ("gradcam", "ensemble", "prototype_others"),
    "prototype_others_restarts": ("gradcam", "prototype_others", "prototype_others_ensemble"),
    "prototype_grouping": (
        "gradcam",
        "prototype_others",
        "prototype_others_ensemble",
        "prototype_grouping_shuffled",
    ),
    "prototype_distant": ("gradcam", "prototype_others", "prototype_distant_shuffled"),
    "prototype_distant_prototypes": ("gradcam", "prototype_others", "prototype_distant_shuffled"),
    "prototype_groups": ("gradcam", "prototype_others", "prototype_groups_shuffled", "ensemble"),
    **{  # each later design against the labels-aware form it builds on, which is against prototype_groups
        group_map_row(kind): (
            "gradcam",
            "prototype_others",
            group_map_row(kind, shuffled=True),
            group_map_row("" if kind == "absent" else "absent"),
            "ensemble",
        )
        for kind in GROUP_MAP_DESIGNS
        if kind
    },
    "prototype_present": ("gradcam", "prototype_others"),
    "prototype_routed": ("gradcam", "prototype_others", "prototype_present", "prototype_routed_shuffled"),
    "subcategory": ("gradcam", "ensemble", "subcategory_shuffled", "prototype_others"),
    "recam": ("gradcam", "ensemble"),
    "recam_plain": ("gradcam", "ensemble", "finetune", "recam"),
    "recam_siblings_plain": (
        "gradcam",
        "ensemble",
        "finetune",
        "recam_plain",
        "recam_siblings_shuffled_plain",
    ),
    "recam_siblings": ("gradcam", "ensemble", "recam", "recam_siblings_shuffled"),
}


def run_seed(
    ctx: RunContext,
    models: SeedModels,
    rows: Sequence[str],
    log: Callable[[str], None],
    path: Path,
    rescore: bool = False,
    validation_only: bool = False,
) -> dict[str, Any]:
    """Score every row on val (choose t*) then test, with paired bootstrap intervals; write the record.

    ``validation_only``: score the validation split alone (a choice among settings, made before the test split
    is read for the chosen one); the record holds each row's ``val_*`` figures and no ``test_*`` ones.
    """
    if path.is_file():
        record: dict[str, Any] = json.loads(path.read_text())
        if not rescore and set(rows) <= set(record["rows"]):
            log(f"{path} has every row: skipped")
            return record
        dropped = [row for row in record["rows"] if row not in rows]
        if dropped:
            # A record is scored in one go (the same models, the same bootstrap resamples): rows of an earlier
            # record cannot be merged into a new one, so a run that names fewer rows would lose them.
            raise SystemExit(f"{path} holds rows this run would drop: {dropped}; add them to --rows")
    start = time.perf_counter()
    val = score(ctx, row_makers(ctx, models, rows, "val", log), "val", THRESHOLDS)
    scored = scored_labels(ctx, "val")
    result: dict[str, Any] = {}
    chosen: dict[str, float] = {}
    for row, confusion in val.items():
        curve = figures(confusion.sum(1), scored)
        best = int(torch.nan_to_num(curve["miou"], nan=-1.0).argmax())
        chosen[row] = THRESHOLDS[best]
        if best in (0, len(THRESHOLDS) - 1):
            warnings.warn(
                f"{row}: the validation-chosen threshold {THRESHOLDS[best]} is at the grid's edge",
                stacklevel=2,
            )
        result[row] = {
            "val_miou_curve": [float(v) * 100 for v in curve["miou"]],
            "t_star": THRESHOLDS[best],
            "t_star_at_edge": best in (0, len(THRESHOLDS) - 1),
        }
    log(f"val scored in {time.perf_counter() - start:.0f}s; t*: {chosen}")
    paper = THRESHOLDS.index(PAPER_THRESHOLD)
    for row, confusion in val.items():
        for tag, t in (("paper", paper), ("t_star", THRESHOLDS.index(chosen[row]))):
            for metric, value in figures(confusion[t].sum(0), scored).items():
                result[row][f"val_{metric}_{tag}"] = float(value) * 100
    if validation_only:
        return _write_record(path, ctx, rows, result, start, split="val", val_map=final_val_map(models))
    test = score(ctx, row_makers(ctx, models, rows, "test", log), "test", THRESHOLDS)
    for row, confusion in test.items():
        for tag, t in (("paper", paper), ("t_star", THRESHOLDS.index(chosen[row]))):
            for metric, value in figures(confusion[t].sum(0), scored).items():
                result[row][f"test_{metric}_{tag}"] = float(value) * 100
    comparisons: dict[str, dict[str, Any]] = {}
    for row in rows:
        others = ["gradcam", *CONTROLS.get(row.removesuffix("_ms"), ())]
        if row.endswith("_ms"):
            others += [o + "_ms" for o in others]
        for other in dict.fromkeys(others):
            if other == row or other not in test:
                continue
            entry = {}
            for tag in ("paper", "t_star"):
                ta = paper if tag == "paper" else THRESHOLDS.index(chosen[row])
                tb = paper if tag == "paper" else THRESHOLDS.index(chosen[other])
                entry[tag] = paired_bootstrap(test[row][ta], test[other][tb], scored, seed=ctx.config.seed)
            comparisons[f"{row} - {other}"] = entry
    hierarchies = {name: h.to_dict() for name, h in models.hierarchies.items()}
    return _write_record(
        path,
        ctx,
        rows,
        result,
        start,
        split="test",
        comparisons=comparisons,
        hierarchies=hierarchies,
        val_map=final_val_map(models),
    )


def _write_record(
    path: Path,
    ctx: RunContext,
    rows: Sequence[str],
    result: dict[str, Any],
    start: float,
    split: str,
    **extra: Any,
) -> dict[str, Any]:
    """Write a seed's record atomically (a temporary file, then a rename); ``split``: the last scored."""
    record = {
        "dataset": ctx.config.data.dataset,
        "seed": ctx.config.seed,
        "split": split,
        "rows": list(rows),
        "subcategory_weight": ctx.config.method.subcategory_weight,
        "prototype_seed": kmeans_seed_of(ctx),
        "prototype_n_init": PROTOTYPE_OPTIONS.get("n_init", 1),
        "objects_only": OBJECTS_ONLY,
        "background_classes": list(ctx.config.data.background_classes),
        "thresholds": list(THRESHOLDS),
        "results": result,
        **extra,
        "timings": dict(ctx.timings),
        "seconds": time.perf_counter() - start,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "summary": {row: round(result[row][f"{split}_miou_paper"], 2) for row in rows},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return record


#: The rows that train and run as many models as ``ensemble``.
ENSEMBLE_COST_ROWS = (
    "ensemble",
    "ensemble_fused",
    "grouping",
    "grouping_shuffled",
    "grouping_cooccurrence",
    "grouping_prototypes",
    "grouping_prototypes_shuffled",
    "grouping_apart",
    "grouping_apart_shuffled",
    "grouping_given",
    "grouping_given_shuffled",
    "prototype_others_ensemble",
    "prototype_grouping",
    "prototype_grouping_shuffled",
)


def cost(row: str, levels: int) -> tuple[int, int]:
    """(models trained, forward + backward passes per image at inference) of a row, ``levels`` group levels.

    The prototype rows add, once, the base classifier's Grad-CAMs and features of the training split and a
    K-means per class (the record's ``prototypes`` timing); at inference they need one forward pass. The
    sub-category rows train one net (on FashionScenes their K-means runs on the base classifier's features,
    which adds its training); the ReCAM rows fine-tune the base classifier for as many epochs (two).
    """
    name = row.removesuffix("_ms")
    scale = 4 if row.endswith("_ms") else 1  # IRN's four scales
    if name in ENSEMBLE_COST_ROWS:
        return 1 + levels, (1 + levels) * scale
    if name in PLUS_ROWS:  # the ensemble's 1 + levels models and one more per level
        return 1 + 2 * levels, (1 + 2 * levels) * scale
    if name.startswith("recam") or name == "finetune":  # the base classifier, then a fine-tuning as long
        return 2, scale
    return 1, scale


def _spread(values: Sequence[float], sign: str = "") -> str:
    """``mean ± std [min, max]`` (the mean alone for one value); ``sign="+"`` signs the figures."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:{sign}.2f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:{sign}.2f} ± {std:.2f} [{min(values):{sign}.2f}, {max(values):{sign}.2f}]"


#: The rows that are methods (candidates for `recommended`), not controls.
METHOD_ROWS = (
    "grouping",
    "grouping_cooccurrence",
    "grouping_prototypes",
    "grouping_apart",
    "grouping_given",
    "grouping_plus",
    "heads",
    "prototype",
    "prototype_siblings",
    "prototype_siblings_cooccurrence",
    "prototype_siblings_prototypes",
    "prototype_others",
    "prototype_others_ensemble",
    "prototype_grouping",
    "prototype_distant",
    "prototype_distant_prototypes",
    "prototype_groups",
    "prototype_groups_absent",
    "prototype_groups_gated",
    "prototype_groups_apart",
    "prototype_groups_uncertain",
    "prototype_present",
    "prototype_routed",
    "subcategory",
    "recam",
    "recam_siblings",
    "recam_plain",
    "recam_siblings_plain",
)


def choose_recommended(records: Sequence[dict[str, Any]], rows: Sequence[str]) -> str:
    """The rule of docs/benchmarks.md, on validation figures only.

    The method row with the best mean validation mIoU@0.15 among those that gain over Grad-CAM on every seed's
    validation split; else Grad-CAM.
    """
    qualified = {}
    for row in rows:
        if row not in METHOD_ROWS:
            continue
        gains = [
            r["results"][row]["val_miou_paper"] - r["results"]["gradcam"]["val_miou_paper"] for r in records
        ]
        if all(g > 0 for g in gains):
            qualified[row] = sum(r["results"][row]["val_miou_paper"] for r in records) / len(records)
    if not qualified:
        return "Chosen on validation: no method row gains on every seed: Grad-CAM."
    best = max(qualified, key=qualified.__getitem__)
    shown = ", ".join(f"{row} {value:.2f}" for row, value in sorted(qualified.items(), key=lambda kv: -kv[1]))
    return (
        f"Chosen on validation: **{best}** (mean validation mIoU@0.15 of the rows that gain on every seed: "
        f"{shown})."
    )


def print_tables(folder: Path, only_seeds: Sequence[int] | None = None, compare: Sequence[str] = ()) -> None:
    """The evidence tables (Markdown) from the committed seed records, one section per dataset.

    A row is shown over the seeds whose records hold it (the seeds are named); its difference to Grad-CAM is
    paired by seed. ``only_seeds``: only the records of these seeds (default: every record). ``compare``
    (``"row:other"`` pairs): each dataset's section ends with their test mIoU@0.15 differences paired by
    seed, as ``--validation-table`` prints them on validation, then their test mIoU@t* differences (each
    row at its own threshold chosen on the seed's validation split).
    """
    from hiercam.grouping import hierarchy_agreement

    for dataset_folder in sorted(p for p in folder.iterdir() if p.is_dir()):
        records = [json.loads(p.read_text()) for p in in_seed_order(dataset_folder.glob("seed_*.json"))]
        records = [r for r in records if only_seeds is None or r["seed"] in only_seeds]
        if not records:
            continue
        seeds = [r["seed"] for r in records]
        print(f"\n### {dataset_folder.name} (seeds {', '.join(map(str, seeds))})\n")
        print(
            "| row | seeds | test mIoU@0.15 | Δ vs gradcam | test mIoU@t* | t* | precision / recall @0.15 | "
            "val mIoU@0.15 | models trained / passes |"
        )
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        levels = len(records[0]["hierarchies"]["fc"]["assignments"])
        for row in ROWS_ORDER:
            have = [r for r in records if row in r["results"]]
            if not have:
                continue
            test = [r["results"][row]["test_miou_paper"] for r in have]
            star = [r["results"][row]["test_miou_t_star"] for r in have]
            reference = [r["results"]["gradcam"]["test_miou_paper"] for r in have]
            deltas = [value - base for value, base in zip(test, reference, strict=True)]
            apart = len(have) > 1 and (min(test) > max(reference) or max(test) < min(reference))
            t_star = ", ".join(f"{r['results'][row]['t_star']:g}" for r in have)
            precision = sum(r["results"][row]["test_precision_paper"] for r in have) / len(have)
            recall = sum(r["results"][row]["test_recall_paper"] for r in have) / len(have)
            val = [r["results"][row]["val_miou_paper"] for r in have]
            delta = "" if row == "gradcam" else f"{_spread(deltas, '+')}{' apart' if apart else ''}"
            print(
                f"| {row} | {', '.join(str(r['seed']) for r in have)} | {_spread(test)} | {delta} | "
                f"{_spread(star)} | {t_star} | {precision:.1f} / {recall:.1f} | {_spread(val)} | "
                f"{'{} / {}'.format(*cost(row, levels))} |"
            )
        print("\nPaired bootstrap (test images, 95 % interval of the mIoU@0.15 difference; per seed):\n")
        print("| comparison | " + " | ".join(f"seed {s}" for s in seeds) + " |")
        print("| --- |" + " ---: |" * len(seeds))
        names = list(dict.fromkeys(name for r in records for name in r["comparisons"]))
        for name in names:
            cells = []
            for r in records:
                b = r["comparisons"].get(name, {}).get("paper")
                cells.append("" if b is None else f"{b['delta']:+.2f} [{b['low']:+.2f}, {b['high']:+.2f}]")
            print(f"| {name} | " + " | ".join(cells) + " |")
        common = [row for row in ROWS_ORDER if all(row in r["results"] for r in records)]
        print("\n" + choose_recommended(records, common))
        clustering = [r["timings"]["prototypes"] for r in records if "prototypes" in r["timings"]]
        if clustering:
            print(f"\nLPCAM's clustering of the training split: {_spread(clustering)} s per seed.")
        sources = list(dict.fromkeys(source for r in records for source in r["hierarchies"]))
        if len(records) > 1 and sources:
            print(
                "\nAgreement of the level-1 groups between seeds (adjusted Rand index of each pair, "
                "classes kept out of the grouping left out):\n"
            )
            for source in sources:
                trees = [
                    ClassHierarchy.from_dict(r["hierarchies"][source])
                    for r in records
                    if source in r["hierarchies"]
                ]
                pairs = [
                    hierarchy_agreement(trees[i], trees[j], 1)
                    for i in range(len(trees))
                    for j in range(i + 1, len(trees))
                ]
                if len(pairs) > 10:  # e.g. 45 pairs of 10 seeds: their spread
                    print(f"- {source} ({len(trees)} seeds, {len(pairs)} pairs): {_spread(pairs)}")
                elif pairs:
                    print(f"- {source} ({len(trees)} seeds): " + ", ".join(f"{v:.2f}" for v in pairs))
        print_comparisons([(dataset_folder.name, records)], compare, "test")
        print_comparisons([(dataset_folder.name, records)], compare, "test", at="t_star")


def group_mates(hierarchy: ClassHierarchy, labels: Tensor, level: int = 1) -> tuple[float, float]:
    """What the labels-aware group maps see: per (image, present class) pair of ``labels`` ``(N, K)``.

    Returns the mean number of the class's group-mates at ``level`` that are absent from the image (the
    class prototypes its group map borrows) and the percentage of pairs with a group-mate in the image.
    """
    groups, assigned = hierarchy.groups(level), hierarchy.assignments(level).tolist()
    borrowed = together = pairs = 0
    for row in labels.bool():
        here = set(row.nonzero().flatten().tolist())
        for k in here:
            mates = [j for j in groups[assigned[k]] if j != k]
            borrowed += sum(j not in here for j in mates)
            together += any(j in here for j in mates)
            pairs += 1
    return borrowed / max(pairs, 1), 100 * together / max(pairs, 1)


def in_seed_order(paths: Iterable[Path]) -> list[Path]:
    """Seed records (``seed_7.json``, ``validation_seed_12.json``) by their seed's number, not by name."""
    return sorted(paths, key=lambda path: int(path.stem.rsplit("_", 1)[1]))


def print_group_mates(folder: Path, dataset: str, cache: Path) -> None:
    """Each record's hierarchies against the test labels of its seed (``group_mates``), one line each."""
    print("| seed | hierarchy | mates borrowed per (image, class) | pairs with a mate in the image |")
    print("| ---: | --- | ---: | ---: |")
    for path in in_seed_order((folder / "hierarchy" / dataset).glob("seed_*.json")):
        record = json.loads(path.read_text())
        labels = context(dataset, record["seed"], cache, lambda line: None).data("test").labels
        for name, stored in record.get("hierarchies", {}).items():
            hierarchy = ClassHierarchy.from_dict(stored)
            if hierarchy.num_levels < 2:
                continue
            borrowed, together = group_mates(hierarchy, labels)
            print(f"| {record['seed']} | {name} | {borrowed:.2f} | {together:.1f} % |")


def print_error_pairs(dataset: str, seeds: Sequence[int], cache: Path) -> None:
    """Where the errors are, against each hierarchy: validation split and training features only.

    Under this benchmark's protocol a pixel takes one of its image's classes, so every class-to-class error
    is between two classes of the same image. Per seed: the share of ``gradcam``'s and ``prototype_others``'
    class-to-class error pixels at 0.15 whose (truth, prediction) pair are siblings at level 1 of each
    hierarchy (a hierarchy can only act on those). Then LPCAM's class-score filter on the training split:
    the foreground centres it keeps (``p_k > 0.9``), and of those it rejects, the share whose best other
    class shares images with ``k`` (``APART_RATE``) or is a sibling in each hierarchy.
    """
    from hiercam.cam import PrototypeCAM

    step = list(THRESHOLDS).index(0.15)
    names = {"fc": "FC-weight", "shuffled": "FC-weight, shuffled", "cooccurrence": "co-occurrence"}
    rows = ["gradcam", "prototype_others", "prototype_siblings_shuffled", "prototype_siblings_cooccurrence"]
    if config_for(dataset, seeds[0], None).model.weights is not None:
        rows += [group_map_row(kind, shuffled) for kind in ("", "apart") for shuffled in (False, True)]
        names.update(
            {
                "prototypes": "backbone prototypes",
                "prototypes_shuffled": "backbone prototypes, shuffled",
                "apart": "apart",
                "apart_shuffled": "apart, shuffled",
            }
        )
    print("| seed | row | class-to-class errors | " + " | ".join(names.values()) + " |")
    print("| ---: | --- | ---: | " + " | ".join("---:" for _ in names) + " |")
    lines = []
    for seed in seeds:
        ctx = context(dataset, seed, cache, lambda line: None)
        models = train_models(ctx, rows, lambda line: None)
        siblings = {}
        for name in names:
            groups = models.hierarchies[name].assignments(1)
            siblings[name] = (groups[:, None] == groups[None, :]).fill_diagonal_(False)
        makers = row_makers(ctx, models, rows[:2], "val", lambda line: None)
        for row, confusion in score(ctx, makers, "val", THRESHOLDS).items():
            matrix = confusion[step].sum(0).double()[1:, 1:]
            wrong = matrix.clone().fill_diagonal_(0)
            shares = [100 * float(wrong[siblings[name]].sum() / wrong.sum()) for name in names]
            print(
                f"| {seed} | {row} | {100 * float(wrong.sum() / matrix.sum()):.1f} % | "
                + " | ".join(f"{share:.0f} %" for share in shares)
                + " |"
            )
        base = models.base
        weight, bias = base.model.classifier.weight.detach(), base.model.classifier.bias.detach()
        cam = PrototypeCAM(weight, classifier_bias=bias, seed=kmeans_seed_of(ctx), **PROTOTYPE_OPTIONS)
        labels = ctx.data("train").labels
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a class without foreground is reported by the rows' own runs
            cam.fit(
                base_features(ctx, base, "train").float(),
                normalize_maps(gradcam_maps(ctx, base, "train", None).float()),
                labels,
            )
        present = labels.double()
        share = (present.T @ present) / present.sum(0).clamp_min(1)[:, None]
        together = (share >= APART_RATE) | (share >= APART_RATE).T
        kept = rejected = 0
        counts = dict.fromkeys(["together", *names], 0)
        for cls, centres in enumerate(cam.foreground_centers_ or []):
            if centres.shape[0] == 0:
                continue
            centres = centres.double()
            probability = torch.softmax(centres @ weight.double().T + bias.double(), dim=1)
            out = probability[:, cls] <= cam.class_score
            kept += int((~out).sum())
            rejected += int(out.sum())
            others = probability[out].clone()
            others[:, cls] = -1.0
            best = others.argmax(dim=1)
            counts["together"] += int(together[cls, best].sum())
            for name in names:
                counts[name] += int(siblings[name][cls, best].sum())
        lines.append(
            f"| {seed} | {kept} | {rejected} | "
            + " | ".join(f"{100 * counts[key] / max(rejected, 1):.0f} %" for key in counts)
            + " |"
        )
    print(
        "\n| seed | centres kept | rejected | best other class shares images | "
        + " | ".join(names.values())
        + " |"
    )
    print("| ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in names) + " |")
    print("\n".join(lines))


def print_clustering_spread(folders: Sequence[Path], dataset: str) -> None:
    """How much LPCAM's K-means seed moves each row on validation, the trained models fixed.

    Each folder is a ``--results`` root of ``--validation-only`` records made with another
    ``--prototype-seed`` on the same training seeds (the same cached models). Per training seed and row: the
    validation mIoU@0.15 over the folders (``mean ± std [min, max]``); then, per training seed, in how many
    of the folders each pair of rows is ordered one way (the every-seed rules' comparisons).
    """
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for folder in folders:
        for path in in_seed_order((folder / "hierarchy" / dataset).glob("validation_seed_*.json")):
            record = json.loads(path.read_text())
            by_seed.setdefault(record["seed"], []).append(record)
    rows = [row for row in ROWS_ORDER if any(row in r["results"] for rs in by_seed.values() for r in rs)]
    print("| training seed | K-means seeds | " + " | ".join(rows) + " |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in rows) + " |")
    for seed, records in sorted(by_seed.items()):
        cells = [_spread([r["results"][row]["val_miou_paper"] for r in records]) for row in rows]
        print(f"| {seed} | {len(records)} | " + " | ".join(cells) + " |")
    pairs = [
        (a, b) for i, a in enumerate(rows) for b in rows[:i] if a.startswith("prototype") and b != "gradcam"
    ]
    if not pairs:
        return
    print("\n| training seed | " + " | ".join(f"{a} > {b}" for a, b in pairs) + " |")
    print("| ---: | " + " | ".join("---:" for _ in pairs) + " |")
    for seed, records in sorted(by_seed.items()):
        wins = [
            sum(r["results"][a]["val_miou_paper"] > r["results"][b]["val_miou_paper"] for r in records)
            for a, b in pairs
        ]
        print(f"| {seed} | " + " | ".join(f"{w} of {len(records)}" for w in wins) + " |")


def print_validation(folders: Sequence[Path], dataset: str, compare: Sequence[str] = ()) -> None:
    """A choice among settings, on validation alone: each folder's rows, validation mIoU@0.15 per seed.

    Each folder is a ``--results`` root whose ``hierarchy/<dataset>`` holds ``validation_seed_<n>.json``
    (``--validation-only``) or full ``seed_<n>.json`` records (their validation figures are read, nothing
    else). The difference to Grad-CAM is paired by seed (each record's own base classifier). The SC-CAM
    weight column is shown when a record holds a sub-category row. ``compare`` (``"row:other"`` pairs, a
    rule's comparisons) adds a table of each pair's difference paired by seed: its mean, on how many seeds
    it is positive, and its values.
    """
    sets = []
    for folder in folders:
        where = folder / "hierarchy" / dataset
        paths = in_seed_order(where.glob("validation_seed_*.json"))
        paths = paths or in_seed_order(where.glob("seed_*.json"))
        records = [json.loads(path.read_text()) for path in paths]
        if records:
            sets.append((folder, records))
    weighted = any(row.startswith("subcategory") for _, records in sets for r in records for row in r["rows"])
    weight_head, weight_rule = ("SC-CAM weight | ", "---: | ") if weighted else ("", "")
    print(
        f"| records | {weight_head}row | seeds | val mIoU@0.15 | Δ vs gradcam per seed | "
        "precision / recall @0.15 |"
    )
    print(f"| --- | {weight_rule}--- | --- | ---: | --- | ---: |")
    for folder, records in sets:
        weight = f"{records[0].get('subcategory_weight', 5.0):g} | " if weighted else ""
        for row in ROWS_ORDER:
            have = [r for r in records if row in r["results"]]
            if not have:
                continue
            val = [r["results"][row]["val_miou_paper"] for r in have]
            deltas = [v - r["results"]["gradcam"]["val_miou_paper"] for v, r in zip(val, have, strict=True)]
            precision = sum(r["results"][row]["val_precision_paper"] for r in have) / len(have)
            recall = sum(r["results"][row]["val_recall_paper"] for r in have) / len(have)
            shown = "" if row == "gradcam" else ", ".join(f"{d:+.2f}" for d in deltas)
            print(
                f"| {folder.name} | {weight}{row} | {', '.join(str(r['seed']) for r in have)} | "
                f"{_spread(val)} | {shown} | {precision:.1f} / {recall:.1f} |"
            )
    print_comparisons([(folder.name, records) for folder, records in sets], compare, "val")


def print_comparisons(
    sets: Sequence[tuple[str, Sequence[dict[str, Any]]]],
    compare: Sequence[str],
    split: str,
    at: str = "paper",
) -> None:
    """A rule's comparisons: each ``"row:other"`` pair's mIoU difference on ``split``, paired by seed.

    For each named set of records that holds both rows: the mean difference, on how many seeds it is
    positive, and its values in the records' order. ``at``: ``"paper"`` (mIoU@0.15) or ``"t_star"`` (each
    row at its own validation-chosen threshold).
    """
    pairs = []
    for pair in compare:
        row, _, other = pair.partition(":")
        if not row or not other:
            raise SystemExit(f"--compare takes ROW:OTHER pairs, got {pair!r}")
        pairs.append((row, other))
    if not pairs:
        return
    name = {"val": "validation", "test": "test"}[split]
    threshold = {"paper": "0.15", "t_star": "t*"}[at]
    print(f"\n| records | comparison ({name} mIoU@{threshold}) | mean | above on | per seed |")
    print("| --- | --- | ---: | ---: | --- |")
    key = f"{split}_miou_{at}"
    for row, other in pairs:
        for label, records in sets:
            have = [r for r in records if row in r["results"] and other in r["results"]]
            if not have:
                continue
            deltas = [r["results"][row][key] - r["results"][other][key] for r in have]
            print(
                f"| {label} | {row} - {other} | {sum(deltas) / len(deltas):+.2f} | "
                f"{sum(d > 0 for d in deltas)} of {len(deltas)} | {', '.join(f'{d:+.2f}' for d in deltas)} |"
            )


def context(
    dataset: str, seed: int, cache: Path, log: Callable[[str], None], subcategory_weight: float | None = None
) -> RunContext:
    """A pipeline run context of the seed, with the shared model cache."""
    config = config_for(dataset, seed, subcategory_weight)
    out = cache / "runs" / dataset / f"seed_{seed}"
    out.mkdir(parents=True, exist_ok=True)
    return RunContext(config, out, progress=False, log=log, cache=cache)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(CONFIGS), default="msrc21")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=None, help="rows to run (default: all)")
    parser.add_argument("--stage", choices=["train", "all"], default="all")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "evidence-cache")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rescore", action="store_true", help="score again even if a record has every row")
    parser.add_argument("--table", action="store_true", help="print the tables from the committed records")
    parser.add_argument(
        "--table-seeds", type=int, nargs="+", default=None, help="with --table: only these seeds' records"
    )
    parser.add_argument(
        "--validation-table",
        type=Path,
        nargs="+",
        default=None,
        help="print the validation figures of these --results roots (a choice among settings) and stop",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        default=(),
        metavar="ROW:OTHER",
        help="with --validation-table (validation) or --table (test): each pair's mIoU@0.15 difference "
        "paired by seed (mean, above on, per seed)",
    )
    parser.add_argument(
        "--subcategory-weight", type=float, default=None, help="SC-CAM's auxiliary weight (default: its 5)"
    )
    parser.add_argument(
        "--clustering-spread",
        type=Path,
        nargs="+",
        default=None,
        help="print how LPCAM's K-means seed moves the rows of these --validation-only roots and stop",
    )
    parser.add_argument(
        "--prototype-seed",
        type=int,
        default=None,
        help="LPCAM's K-means seed (default: the training seed); the models stay those of --seeds",
    )
    parser.add_argument(
        "--prototype-n-init",
        type=int,
        default=1,
        help="LPCAM's K-means restarts (scikit-learn keeps the lowest-inertia one; default: 1, as published)",
    )
    parser.add_argument(
        "--objects-only",
        action="store_true",
        help="MSRC-21: score the object classes against a background of the stuff classes (a diagnostic)",
    )
    parser.add_argument(
        "--validation-only",
        action="store_true",
        help="score the validation split alone (records validation_seed_<n>.json): a choice among settings",
    )
    parser.add_argument(
        "--error-pairs",
        action="store_true",
        help="print, per --seeds, between which class pairs the validation errors fall, per hierarchy",
    )
    parser.add_argument(
        "--group-mates",
        action="store_true",
        help="print, per record of --results, what its hierarchies' labels-aware group maps see on test",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global PROTOTYPE_SEED, OBJECTS_ONLY
    PROTOTYPE_SEED = args.prototype_seed
    if args.objects_only and args.dataset != "msrc21":
        raise SystemExit("--objects-only needs --dataset msrc21 (its stuff classes become the background)")
    OBJECTS_ONLY = args.objects_only
    if args.prototype_n_init != 1:  # only then in the options: the cache keys of n_init=1 stay as they were
        PROTOTYPE_OPTIONS["n_init"] = args.prototype_n_init
    if args.error_pairs:
        print_error_pairs(args.dataset, args.seeds, args.cache)
        return
    if args.group_mates:
        print_group_mates(args.results, args.dataset, args.cache)
        return
    if args.table:
        print_tables(args.results / "hierarchy", args.table_seeds, args.compare)
        return
    if args.clustering_spread:
        print_clustering_spread(args.clustering_spread, args.dataset)
        return
    if args.validation_table:
        print_validation(args.validation_table, args.dataset, args.compare)
        return
    rows = args.rows or list(ROWS)
    for seed in args.seeds:
        start = time.perf_counter()

        def log(line: str, seed: int = seed, start: float = start) -> None:
            print(
                f"[{args.dataset} seed {seed} {time.perf_counter() - start:7.1f}s] {line.strip()}", flush=True
            )

        ctx = context(args.dataset, seed, args.cache, log, args.subcategory_weight)
        models = train_models(ctx, rows, log)
        if args.stage == "train":
            continue
        stem = "validation_seed" if args.validation_only else "seed"
        path = args.results / "hierarchy" / args.dataset / f"{stem}_{seed}.json"
        record = run_seed(ctx, models, rows, log, path, args.rescore, args.validation_only)
        log(f"written {path}: {json.dumps(record['summary'])}")


if __name__ == "__main__":
    main()
