"""``ctr``: does an embedding help a ranking model predict clicks, detail views and conversions?

The DICM harness (Ge et al., CIKM 2018; Visual4Rec Tables 2 to 4): an Embedding&MLP model over
ID features plus the ad's image and the user's clicked images (this extractor's vectors, raw or
whitened), trained on every day of the impressions log but the last and scored on the last day
(AUC, GAUC, logloss for ctr, detail and ESMM ctcvr; the same on cold-start items as ``cold_*``).

Rows per extractor, variant and seed: the main configuration (``feature_set`` ``dicm`` with the
``mqap`` aggregator by default). Once per seed and variant in a run, the ID-only baseline as
extractor ``none (ids only)``. For one extractor (``ablation_extractor``; ``auto`` = the first
one the run evaluates), the feature-set and aggregator ablations as extractors such as
``pixels [ad]`` or ``pixels [dicm, sum]``. Every trained model's metrics are cached under
``ctx.cache`` (keyed by the log, the vectors, the settings and the seed). See docs/ctr.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bench.cache import Cache, atomic_path, fingerprint, load_npz, save_npz
from bench.data import Dataset
from bench.embeddings import Embeddings
from bench.metric_info import MetricInfo
from bench.tasks import TaskContext, task
from bench.tasks.ctr import data as ctr_data
from bench.tasks.ctr.model import AGGREGATORS, FEATURE_SETS
from bench.tasks.ctr.train import CtrConfig, evidence, prepare, scored, train_and_predict

CTR_VERSION = "2"  # bump when the model, features or metrics change meaning (2: similarity)
BASELINE = "none (ids only)"
log = logging.getLogger(__name__)

_COMMON = dict(feature_set="dicm", aggregator="mqap", history_length=20, id_dim=12,
               image_dim=12, hidden=[200, 80], batch_size=1024, lr=4e-3,
               item_fields=list(ctr_data.DEFAULT_ITEM_FIELDS), baseline=True, backend="local",
               ablation_extractor="auto", ablation_variants=["raw"])


class CtrTask:
    name = "ctr"
    main_score = "ctr_auc"
    metrics = (MetricInfo("*_gauc", unit="user"), MetricInfo("*_auc", unit="user"),
               MetricInfo("*_logloss", "lower", unit="user"))
    reference = BASELINE  # rows are tested against the ID-only ranker
    needs = ("vectors", "logs['impressions'] (user_id, item_id, day, click, detail, conversion)")
    seeded = True
    variants = ("raw", "w")
    whitening_labels = ("style", "scene")  # what k=auto agrees with (bench/variants.py)
    defaults = {
        "quick": {**_COMMON, "epochs": 2, "batch_size": 256, "history_length": 10,
                  "feature_sets": [], "aggregators": []},
        "default": {**_COMMON, "epochs": 2, "feature_sets": ["ad", "behavior"],
                    "aggregators": ["concat", "sum", "max", "attentive"]},
        "full": {**_COMMON, "epochs": 3, "feature_sets": ["ad", "behavior"],
                 "aggregators": ["concat", "sum", "max", "attentive"]},
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
        options = {**_COMMON, **ctx.options}
        data = load(dataset, options)
        vectors = embeddings.take(data.item_rows)
        extractor = _extractor_name(embeddings, ctx)
        out: list[dict[str, Any]] = []
        for label, feature_set, aggregator in self.configurations(extractor, ctx, options):
            use = None if feature_set == "none" else vectors
            result, predictions = cached_score(data, use, dataset, options, feature_set,
                                               aggregator, ctx.seed, ctx.cache, ctx.device)
            if label == BASELINE:  # claimed once computed, so a failure leaves it to the next
                _claim(ctx, _baseline_key(ctx))
            extra = {} if label is None else {"extractor": label}
            out += scored_rows(data, result, predictions, **extra)
        return out

    def configurations(self, extractor: str, ctx: TaskContext, options: dict[str, Any]
                       ) -> list[tuple[str | None, str, str]]:
        """(row label or None for this extractor's own rows, feature set, aggregator)."""
        main_set, main_agg = options["feature_set"], options["aggregator"]
        configs: list[tuple[str | None, str, str]] = [(None, main_set, main_agg)]
        if options.get("baseline", True) and not _claimed(ctx, _baseline_key(ctx)):
            configs.append((BASELINE, "none", main_agg))
        if ctx.variant in options.get("ablation_variants", ["raw"]) and _ablates(extractor, ctx,
                                                                                   options):
            for feature_set in options.get("feature_sets", []):
                if feature_set not in ("none", main_set):
                    configs.append((f"{extractor} [{_label(feature_set, main_agg)}]",
                                    feature_set, main_agg))
            for aggregator in options.get("aggregators", []):
                if aggregator != main_agg:
                    configs.append((f"{extractor} [{main_set}, {aggregator}]", main_set,
                                    aggregator))
        return configs


def _label(feature_set: str, aggregator: str) -> str:
    return feature_set if feature_set in ("none", "ad") else f"{feature_set}, {aggregator}"


def _extractor_name(embeddings: Embeddings, ctx: TaskContext) -> str:
    if ctx.extractor is not None and getattr(ctx.extractor, "name", None):
        return str(ctx.extractor.name)
    return str(embeddings.meta.get("extractor", embeddings.meta.get("source", "embeddings")))


def _baseline_key(ctx: TaskContext) -> str:
    return f"baseline-{ctx.seed}-{ctx.variant}"


def _marker(ctx: TaskContext, key: str) -> Path | None:
    """A file under the run's artifacts that records ``key`` as done in this run (None outside
    a run: then nothing is shared between calls)."""
    return None if ctx.artifacts_dir is None else Path(ctx.artifacts_dir) / "ctr" / f"{key}.done"


def _claimed(ctx: TaskContext, key: str) -> bool:
    marker = _marker(ctx, key)
    return marker is not None and marker.exists()


def _claim(ctx: TaskContext, key: str) -> None:
    marker = _marker(ctx, key)
    if marker is not None:
        with atomic_path(marker) as tmp:
            tmp.write_text("1")


def _ablates(extractor: str, ctx: TaskContext, options: dict[str, Any]) -> bool:
    """Whether this extractor gets the ablation rows: the named one, or with ``auto`` the first
    extractor evaluated in the run (recorded under the run's artifacts)."""
    wanted = options.get("ablation_extractor", "auto")
    if not wanted or not (options.get("feature_sets") or options.get("aggregators")):
        return False
    if wanted != "auto":
        return extractor in ([wanted] if isinstance(wanted, str) else list(wanted))
    if ctx.artifacts_dir is None:
        return True
    path = Path(ctx.artifacts_dir) / "ctr" / "ablation-extractor.txt"
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_text(extractor)
    return path.read_text().strip() == extractor


_LOADED: dict[str, ctr_data.CtrData] = {}


def load(dataset: Dataset, options: dict[str, Any]) -> ctr_data.CtrData:
    """The dataset's index tensors (validated log), built once per process and settings."""
    key = fingerprint(dataset.fingerprint, options["history_length"], options["item_fields"])
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = prepare(dataset.logs["impressions"], dataset.table, dataset.ids,
                               int(options["history_length"]), options["item_fields"])
    return _LOADED[key]


def cached_score(data: ctr_data.CtrData, vectors: np.ndarray | None, dataset: Dataset,
                 options: dict[str, Any], feature_set: str, aggregator: str, seed: int,
                 cache: Cache | None, device: str = "cpu"
                 ) -> tuple[dict[str, float], dict[str, np.ndarray] | None]:
    """Train and evaluate one configuration, or read it from ``cache``: (metrics, predictions
    per head on the evaluation day; None on the AMS backend, which keeps them remote)."""
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
    key = fingerprint("ctr", CTR_VERSION, dataset.fingerprint, options["history_length"],
                      options["item_fields"], settings, vector_hash, seed)
    path = cache.path("ctr", key, ".json") if cache is not None else None
    if path is not None and path.exists():
        try:
            saved = json.loads(path.read_text())
            metrics = {k: float(v) for k, v in saved["metrics"].items()}
            predictions = load_npz(path.with_suffix(".npz")) if saved.get("predictions") else None
            return metrics, predictions
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("ctr: discarding unreadable cached result %s (%s)", path, error)
    predictions = None
    if ams:  # backend "ams": trained by parameter servers and workers (bench/tasks/ctr/ams)
        from bench.tasks.ctr.ams import train_and_evaluate as train_on_ams

        metrics, stats = train_on_ams(data, vectors, config, seed, options.get("ams"),
                                      keys=dataset.ids[data.item_rows])
    else:
        predictions, stats = train_and_predict(data, vectors, config, seed)
        metrics = scored(data, predictions)
    if path is not None:
        if predictions is not None:  # first: the JSON marks a complete entry
            save_npz(path.with_suffix(".npz"),
                     **{h: p.astype(np.float32) for h, p in predictions.items()})
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"metrics": metrics, "stats": stats,
                                       "settings": settings, "seed": seed,
                                       "predictions": predictions is not None}, indent=1))
    return metrics, predictions


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
