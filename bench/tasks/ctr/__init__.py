"""``ctr``: does an embedding help a ranking model predict clicks, detail views and conversions?

The DICM harness (Ge et al., CIKM 2018; Visual4Rec Tables 2 to 4): an Embedding&MLP model over
ID features plus the ad's image and the user's clicked images (this extractor's vectors, raw or
whitened), trained on every day of the impressions log but the last and scored on the last day
(AUC, GAUC, logloss for ctr, detail and ESMM ctcvr; the same on cold-start items as ``cold_*``).

Rows per extractor, variant and seed: the main configuration (``feature_set`` ``dicm`` with the
``mqap`` aggregator by default). The task declares its reference rows (``references``; the
runner evaluates each once per variant and seed, after the extractors): the ID-only baseline as
extractor ``none (ids only)`` (option ``baseline``), and for one extractor
(``ablation_extractor``: a name, or ``auto`` = the first of the run's extractors in reference
order, i.e. the profile's list, then by name, or a list of these; the default and full
profiles add the ladder rungs ``ABLATION_RUNGS``, where the ablation has a known answer) the
feature-set and aggregator ablations as extractors such as ``pixels [ad]`` or ``pixels [dicm, sum]`` (variants ``ablation_variants``).
Every trained model's metrics, predictions and weights are cached under ``ctx.cache`` (keyed by
the log, the vectors, the settings and the seed); the online task serves the same models from
there (``trained_model``), never training one twice. See docs/ctr.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.core.cache import Cache, Codec, cached, fingerprint, load_npz, save_npz, write_json
from bench.core.data import Dataset
from bench.core.metric_info import MetricInfo
from bench.embed.embeddings import Embeddings
from bench.tasks import Reference, Task, TaskContext, task
from bench.tasks.ctr import data as ctr_data
from bench.tasks.ctr.model import AGGREGATORS, DICM, FEATURE_SETS
from bench.tasks.ctr.train import (
    TABLES,
    CtrConfig,
    build_model,
    evidence,
    model_vectors,
    predict,
    prepare,
    scored,
    serving_view,
    table_for,
    train_model,
)

CTR_VERSION = "5"  # bump when the model, features or metrics change meaning (2: similarity,
# 3: the user x ad-image input, validation options, 4: entries keep the trained weights,
# 5: stats name the image table the model was built on)
BASELINE = "none (ids only)"
TABLE_RULE = "co_click if better at 95%, validation click AUC"  # in the table choice's key
ABLATION_RUNGS = ("ladder:clean", "ladder:noise=0.15")  # where the paper's ablation is checked
log = logging.getLogger(__name__)

_COMMON = dict(feature_set="dicm", aggregator="mqap", history_length=20, id_dim=12,
               image_dim=12, hidden=[200, 80], batch_size=1024, lr=4e-3,
               item_fields=list(ctr_data.DEFAULT_ITEM_FIELDS), baseline=True, backend="local",
               ablation_extractor="auto", ablation_variants=["raw"],
               # the image table: full, or its co-click directions where the validation day's
               # clicks say so (issue #24, docs/ctr.md)
               behaviour_dims=64, choose_table=True)


class CtrTask(Task):
    name = "ctr"
    description = ("Ranking model (DICM harness) with each extractor's image features: AUC, GAUC "
                   "and logloss on the last day; cold_* on items first published that day.")
    stage = "ranking"
    main_score = "ctr_auc"
    metrics = (MetricInfo("*_gauc", unit="user"), MetricInfo("*_auc", unit="user"),
               MetricInfo("*_logloss", "lower", unit="user"))
    reference = BASELINE  # rows are tested against the ID-only ranker
    needs = ("vectors", "logs['impressions'] (user_id, item_id, day, click, detail, conversion)")
    seeded = True
    variants = ("raw", "w")
    whitening_labels = ("style", "scene")  # what k=auto agrees with (bench/vectors/variants.py)
    defaults = {
        "quick": {**_COMMON, "epochs": 2, "batch_size": 256, "history_length": 10,
                  "feature_sets": [], "aggregators": []},
        # raw vectors only: the ctr +w rows (a linear map the model's own projection can
        # learn) cost 2 minutes of the 15 the default run has, the aggregator ablations half a
        # minute; ``full`` keeps both
        # the feature-set ablation of the profile's first extractor and of two ladder rungs:
        # the DICM paper's known answer (validity.csv, bench/scoring/verdicts.py)
        "default": {**_COMMON, "epochs": 2, "feature_sets": ["ad", "behavior"],
                    "aggregators": [], "variants": ["raw"],
                    "ablation_extractor": ["auto", *ABLATION_RUNGS]},
        "full": {**_COMMON, "epochs": 3, "feature_sets": ["ad", "behavior"],
                 "aggregators": ["concat", "sum", "max", "attentive"],
                 "ablation_extractor": ["auto", *ABLATION_RUNGS]},
    }

    def population(self, dataset: Dataset) -> np.ndarray:
        """The items of the impressions log (whitening fits on their train-split part)."""
        if "impressions" not in dataset.logs:
            return np.array([], dtype=np.int64)
        shown = dataset.logs["impressions"]["item_id"].astype(str).unique()
        return np.flatnonzero(dataset.table["id"].isin(shown).to_numpy())

    def skip_reason(self, dataset: Dataset) -> str | None:
        if "impressions" not in dataset.logs:
            return ("the dataset has no impressions log (logs['impressions'] with user_id, "
                    "item_id, day, click, detail, conversion; see docs/ctr.md)")
        return None

    def evaluate(self, embeddings: Embeddings, dataset: Dataset,
                 ctx: TaskContext) -> list[dict[str, Any]]:
        """The extractor's rows: the main configuration with its vectors."""
        options = {**_COMMON, **ctx.options}
        return self.score(embeddings, dataset, ctx, options["feature_set"],
                          options["aggregator"])

    def score(self, embeddings: Embeddings | None, dataset: Dataset, ctx: TaskContext,
              feature_set: str, aggregator: str) -> list[dict[str, Any]]:
        options = {**_COMMON, **ctx.options}
        data = load(dataset, options)
        vectors = None if feature_set == "none" or embeddings is None else embeddings.take(
            data.item_rows)
        result, predictions = cached_score(data, vectors, dataset, options, feature_set,
                                           aggregator, ctx.seed, ctx.cache, ctx.device)
        return scored_rows(data, result, predictions)

    def references(self, extractors: list[tuple[str, Any]], dataset: Dataset,
                   options: dict[str, Any]) -> list[Reference]:
        """The ID-only ranker (every variant), and the ablations of one extractor (the one
        ``ablation_extractor`` names, or with ``auto`` the first of ``extractors``, which the
        runner passes in reference order) in the ``ablation_variants``."""
        options = {**_COMMON, **options}
        main_set, main_agg = options["feature_set"], options["aggregator"]
        out = []
        if options.get("baseline", True):
            out.append(Reference(BASELINE, None, self.variants,
                                 settings=(("feature_set", "none"), ("aggregator", main_agg))))
        variants = tuple(v for v in self.variants if v in options.get("ablation_variants",
                                                                       ["raw"]))
        for spec, name in ablation_sources(extractors, options):
            configs = [(f"{name} [{_label(f, main_agg)}]", f, main_agg)
                       for f in options.get("feature_sets", []) if f not in ("none", main_set)]
            configs += [(f"{name} [{main_set}, {a}]", main_set, a)
                        for a in options.get("aggregators", []) if a != main_agg]
            out += [Reference(label, spec, variants, uses_vectors=True,
                              settings=(("feature_set", f), ("aggregator", a)))
                    for label, f, a in configs]
        return out

    def evaluate_reference(self, reference: Reference, embeddings: Embeddings | None,
                           dataset: Dataset, ctx: TaskContext) -> list[dict[str, Any]]:
        return self.score(embeddings, dataset, ctx, reference.setting("feature_set"),
                          reference.setting("aggregator"))


def _label(feature_set: str, aggregator: str) -> str:
    return feature_set if feature_set in ("none", "ad") else f"{feature_set}, {aggregator}"


def ablation_sources(extractors: list[tuple[str, Any]], options: dict[str, Any]
                     ) -> list[tuple[str, str]]:
    """(spec, name) of the extractors whose ablation rows the run reports: those
    ``ablation_extractor`` names (a name or spec, or a list of them), with ``auto`` the first of
    ``extractors``; none when there are no ablations to run."""
    wanted = options.get("ablation_extractor", "auto")
    if not wanted or not (options.get("feature_sets") or options.get("aggregators")):
        return []
    named = [wanted] if isinstance(wanted, str) else list(wanted)
    found = [(spec, str(getattr(extractor, "name", spec))) for spec, extractor in extractors]
    first = found[:1] if "auto" in named else []
    return first + [(spec, name) for spec, name in found
                    if (spec in named or name in named) and (spec, name) not in first]


_LOADED: dict[str, ctr_data.CtrData] = {}


def load(dataset: Dataset, options: dict[str, Any]) -> ctr_data.CtrData:
    """The dataset's index tensors (validated log), built once per process and settings."""
    key = fingerprint(dataset.fingerprint, options["history_length"], options["item_fields"])
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = prepare(dataset.logs["impressions"], dataset.table, dataset.ids,
                               int(options["history_length"]), options["item_fields"])
    return _LOADED[key]


def _weights_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.weights.npz")


def _read_result(path: Path) -> dict[str, Any]:
    saved = json.loads(path.read_text(encoding="utf-8"))
    saved["predictions"] = load_npz(path.with_suffix(".npz")) if saved.get("predictions") \
        else None
    saved["weights"] = load_npz(_weights_path(path)) if saved.get("weights") else None
    return saved


def _write_result(path: Path, result: dict[str, Any]) -> None:
    predictions, weights = result["predictions"], result.get("weights")
    if predictions is not None:  # first: the JSON marks a complete entry
        save_npz(path.with_suffix(".npz"),
                 **{h: p.astype(np.float32) for h, p in predictions.items()})
    if weights is not None:
        save_npz(_weights_path(path), **weights)
    write_json(path, {**result, "predictions": predictions is not None,
                      "weights": weights is not None})


# a trained configuration: its metrics and settings as JSON, its predictions and its weights
# (the model's state_dict) in .npz files beside
RESULT = Codec(".json", _read_result, _write_result)


def cached_score(data: ctr_data.CtrData, vectors: np.ndarray | None, dataset: Dataset,
                 options: dict[str, Any], feature_set: str, aggregator: str, seed: int,
                 cache: Cache | None, device: str = "cpu"
                 ) -> tuple[dict[str, float], dict[str, np.ndarray] | None]:
    """Train and evaluate one configuration, or read it from ``cache``: (metrics, predictions
    per head on the evaluation day; None on the AMS backend, which keeps them remote)."""
    found = cached_training(data, vectors, dataset, options, feature_set, aggregator, seed,
                            cache, device)
    return {k: float(v) for k, v in found["metrics"].items()}, found["predictions"]


def trained_model(data: ctr_data.CtrData, vectors: np.ndarray | None, dataset: Dataset,
                  options: dict[str, Any], feature_set: str, aggregator: str, seed: int,
                  cache: Cache | None, device: str = "cpu"
                  ) -> tuple[DICM, ctr_data.CtrData] | None:
    """The model the ctr task trained for this configuration (read from ``cache``; trained
    and cached here only when the ctr task has not run it yet) and the data it predicts with;
    None on the AMS backend, whose weights stay on its servers."""
    found = cached_training(data, vectors, dataset, options, feature_set, aggregator, seed,
                            cache, device)
    if found.get("weights") is None:
        return None
    config = CtrConfig.from_options(options, feature_set=feature_set, aggregator=aggregator,
                                      device=device)
    view = serving_view(data.to(device), config)
    table = (found.get("stats") or {}).get("image_table")
    model = build_model(view, model_vectors(data, vectors, config, table), config, seed)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in
                           found["weights"].items()})
    return model.eval(), view


def cached_training(data: ctr_data.CtrData, vectors: np.ndarray | None, dataset: Dataset,
                    options: dict[str, Any], feature_set: str, aggregator: str, seed: int,
                    cache: Cache | None, device: str = "cpu") -> dict[str, Any]:
    """The cache entry of one trained configuration (metrics, stats, settings, predictions and
    weights), computed on a miss: the one place a ctr model is trained."""
    config = CtrConfig.from_options(options, feature_set=feature_set, aggregator=aggregator,
                                      device=device)
    settings = {k: v for k, v in vars(config).items() if k not in ("device", "extra")}
    if feature_set == "none":
        settings["aggregator"] = None
    ams = options.get("backend", "local") == "ams" and vectors is not None
    if ams:  # same model and metrics, but its own cache entry
        settings["backend"] = {"ams": options.get("ams") or {}}
    vector_hash = None if vectors is None else hashlib.sha256(
        np.ascontiguousarray(vectors, dtype=np.float32).tobytes()).hexdigest()[:16]
    # the table is part of what the model is: chosen (and cached) before the model's key
    table = image_table(data, vectors, dataset, options, vector_hash, cache, device)
    key = fingerprint("ctr", CTR_VERSION, dataset.fingerprint, options["history_length"],
                      options["item_fields"], settings, vector_hash, seed, table)

    def compute() -> dict[str, Any]:
        predictions = weights = None
        if ams:  # backend "ams": trained by parameter servers and workers (tasks/ctr/ams)
            from bench.tasks.ctr.ams import train_and_evaluate as train_on_ams

            metrics, stats = train_on_ams(data, model_vectors(data, vectors, config, table),
                                          config, seed, options.get("ams"),
                                          keys=dataset.ids[data.item_rows])
            stats["image_table"] = table
        else:
            model, view, stats = train_model(data, vectors, config, seed, table)
            predictions = predict(model, view, data.test)
            metrics = scored(data, predictions)
            weights = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        return {"metrics": metrics, "stats": stats, "settings": settings, "seed": seed,
                "predictions": predictions, "weights": weights}

    return cached(cache, "ctr", key, compute, codec=RESULT,
                  valid=lambda v: isinstance(v, dict) and "metrics" in v)


def image_table(data: ctr_data.CtrData, vectors: np.ndarray | None, dataset: Dataset,
                options: dict[str, Any], vector_hash: str | None, cache: Cache | None,
                device: str = "cpu") -> str | None:
    """The image table every model of these vectors is built on
    (:func:`~bench.tasks.ctr.train.table_for` with the main configuration: ``feature_set``,
    ``aggregator``, seed 0), cached, so all seeds and the ablation rows of an extractor use the
    same table and an ablation compares feature sets, not tables."""
    if vectors is None:
        return None
    config = CtrConfig.from_options(options, device=device)
    settings = {k: v for k, v in vars(config).items() if k not in ("device", "extra")}
    key = fingerprint("ctr-table", CTR_VERSION, TABLE_RULE, dataset.fingerprint,
                      options["history_length"], options["item_fields"], settings, vector_hash)

    def compute() -> dict[str, Any]:
        table, evidence = table_for(data, vectors, config)
        return {"table": table, "validation_ctr_auc": evidence}

    found = cached(cache, "ctr", key, compute,
                   valid=lambda v: isinstance(v, dict) and v.get("table") in TABLES)
    if found["validation_ctr_auc"]:
        log.info("ctr: image table %s (validation ctr_auc %s)", found["table"],
                 found["validation_ctr_auc"])
    return found["table"]


def scored_rows(data: ctr_data.CtrData, metrics: dict[str, float],
                predictions: dict[str, np.ndarray] | None, **extra: Any) -> list[dict[str, Any]]:
    """Task rows, each with its evidence when the predictions are known."""
    found = {} if predictions is None else evidence(
        data, {h: np.asarray(p, dtype=np.float64) for h, p in predictions.items()})
    return [{"metric": m, "value": float(v), "evidence": found.get(m), **extra}
            for m, v in metrics.items()]


def ablation(embeddings: Embeddings, dataset: Dataset, *, seeds: int = 3,
             feature_sets: tuple[str, ...] = FEATURE_SETS,
             aggregators: tuple[str, ...] = AGGREGATORS, cache: Cache | None = None,
             **options: Any) -> list[dict[str, Any]]:
    """Feature-set ablation (with the default aggregator) and aggregator ablation (with
    ``dicm``) for one embedding, over ``seeds`` seeds: rows with feature_set, aggregator, seed,
    metric, value (a DataFrame away from a table)."""
    options = {**_COMMON, **CtrTask.defaults["default"], **options}
    data = load(dataset, options)
    vectors = embeddings.take(data.item_rows)
    grid = [(f, options["aggregator"]) for f in feature_sets]
    grid += [("dicm", a) for a in aggregators if ("dicm", a) not in grid]
    out = []
    for seed in range(seeds):
        for feature_set, aggregator in grid:
            result, _ = cached_score(data, None if feature_set == "none" else vectors,
                                     dataset, options, feature_set, aggregator, seed, cache)
            out += [{"feature_set": feature_set,
                     "aggregator": None if feature_set in ("none", "ad") else aggregator,
                     "seed": seed, "metric": m, "value": v} for m, v in result.items()]
    return out


@task("ctr")
def make_ctr() -> CtrTask:
    return CtrTask()
