"""``retrieval``: does image search find the same product? (Visual4Rec Table 6.)

Test-split scene-crop queries (role ``query``) search the product-shot gallery (role
``product``, train and test splits: the other products act as distractors); a hit is a gallery
item with the query's ``identity``. Reports Identity Recall@1/5/10/15/20 and MAP@R.
Datasets without roles use test items as queries against the other labelled items.

Large galleries: ``index=flat|ivf|ivfpq|hnsw|auto`` (with ``nlist``, ``nprobe``, ``m``,
``auto_threshold``; ``bench.index.choose``) searches the gallery with an approximate FAISS index
(the frozen raw and w metrics; fine-tuned features are searched exactly), and reports
``index_recall@10``, the index's recall of the exact top 10 on a sample of ``recall_queries``
queries (no interval, never ranked).

Fine-tune mode (extractors exposing ``backbone()``, once per seed on the ``raw`` pass): metric
learning on train-split identity pairs (a scene-crop query and a product shot of the same
identity; two items of one identity on datasets without roles) with lightly's NTXentLoss
(InfoNCE, other pairs in the batch as negatives), then the same queries and gallery scored
again with the fine-tuned backbone's L2-normalised features (the loss trains cosine similarity),
as variant ``ft`` with metrics ``finetune_recall@N`` and ``finetune_map@r`` (plus ``finetune_s``
and ``finetune_steps``). A re-initialised copy of the same
architecture trained with the same loop and budget is reported once per run as extractor
``scratch:<arch>``. The frozen metrics (raw, w) do not depend on the seed and are reported
for seed 0 only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from bench import finetune as ft
from bench import index as faiss_index
from bench.backbones import pick_device
from bench.data import Dataset
from bench.embeddings import Embeddings
from bench.metric_info import MetricInfo, check, cost, count
from bench.metrics import average_precision_at_r, recall_hits
from bench.stats import Evidence, mean_evidence
from bench.tasks import TaskContext, task

RECALL_NS = (1, 5, 10, 15, 20)


def query_and_gallery(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of queries and gallery; queries only for identities the gallery holds."""
    if not dataset.has("identity"):
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    if "role" in dataset.table.columns and (dataset.table["role"] == "query").any():
        queries = dataset.rows(role="query", split="test", labelled="identity")
        gallery = dataset.rows(role="product", split=("train", "test"), labelled="identity")
    else:
        queries = dataset.rows(split="test", labelled="identity")
        gallery = dataset.rows(split=("pretrain", "train"), labelled="identity")
    known = set(dataset.table["identity"].iloc[gallery])
    keep = dataset.table["identity"].iloc[queries].isin(known).to_numpy()
    return queries[keep], gallery


def training_groups(dataset: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per train identity, (anchor rows, positive rows): train queries and train product shots,
    or on datasets without roles the identity's train items on both sides (a pair then takes
    two different items). Identities that cannot form a pair are left out."""
    if not dataset.has("identity"):
        return []
    if "role" in dataset.table.columns and (dataset.table["role"] == "query").any():
        anchors = dataset.rows(role="query", split="train", labelled="identity")
        positives = dataset.rows(role="product", split="train", labelled="identity")
    else:
        anchors = positives = dataset.rows(split="train", labelled="identity")
    identity = dataset.table["identity"].astype(str).to_numpy()
    by_identity = pd.Series(positives).groupby(identity[positives]).agg(list)
    groups = []
    for key, members in pd.Series(anchors).groupby(identity[anchors]).agg(list).items():
        if key in by_identity.index:
            a, p = np.asarray(members), np.asarray(by_identity[key])
            if len(np.union1d(a, p)) >= 2:
                groups.append((a, p))
    return groups


class PairSampler:
    """One random (anchor, positive) pair per requested identity, as positions into the image
    array of ``rows``."""

    def __init__(self, groups: list[tuple[np.ndarray, np.ndarray]], seed: int):
        self.rows = np.unique(np.concatenate([np.concatenate(g) for g in groups]))
        self.groups = [(np.searchsorted(self.rows, a), np.searchsorted(self.rows, p))
                       for a, p in groups]
        self.rng = np.random.default_rng(seed)

    def __call__(self, indices: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        anchors, positives = [], []
        for i in indices.tolist():
            a_side, p_side = self.groups[i]
            anchor = a_side[self.rng.integers(len(a_side))]
            candidates = p_side[p_side != anchor]
            anchors.append(anchor)
            positives.append(candidates[self.rng.integers(len(candidates))])
        return np.asarray(anchors), np.asarray(positives)


def retrieval_metrics(query_vectors: np.ndarray, query_ids: np.ndarray,
                      gallery_vectors: np.ndarray, gallery_ids: np.ndarray,
                      query_item_ids: np.ndarray, index: Any = None
                      ) -> tuple[dict[str, float], dict[str, Evidence]]:
    """Recall@N (N up to the gallery size) and MAP@R, with each query's hit and AP as evidence
    (``query_item_ids``: the queries' own item ids, the resampling units). ``index``: a FAISS
    index over the gallery vectors to search (default: exact search)."""
    args = (query_vectors, query_ids, gallery_vectors, gallery_ids)
    ns = tuple(n for n in RECALL_NS if n <= len(gallery_ids))
    per_query = {f"recall@{n}": hits
                 for n, hits in zip(ns, recall_hits(*args, ns=ns, index=index).T)}
    per_query["map@r"] = average_precision_at_r(*args, index=index)
    metrics = {name: float(np.mean(values)) for name, values in per_query.items()}
    evidence = {name: mean_evidence("query", query_item_ids, values)
                for name, values in per_query.items()}
    return metrics, evidence


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def finetune_scores(backbone: nn.Module, dataset: Dataset, groups: list, budget: ft.Budget,
                    seed: int, to_tensor: ft.ToTensor, temperature: float,
                    eval_batch_size: int) -> dict[str, Any]:
    """Metric-learn ``backbone`` (a copy) on train pairs, then score test queries."""
    device = pick_device()
    sampler = PairSampler(groups, seed)
    model, log_ = ft.finetune_pairs(backbone, dataset.images(sampler.rows), sampler, len(groups),
                                    budget, seed, to_tensor, device, temperature)
    queries, gallery = query_and_gallery(dataset)
    identity = dataset.table["identity"].astype(str).to_numpy()

    def features(rows_: np.ndarray) -> np.ndarray:
        return l2_normalise(ft.predict(model, dataset.images(rows_), to_tensor, device,
                                       eval_batch_size))

    scores, evidence = retrieval_metrics(features(queries), identity[queries], features(gallery),
                                         identity[gallery], dataset.ids[queries])
    return log_.result({f"finetune_{name}": value for name, value in scores.items()}, budget,
                       {f"finetune_{name}": item for name, item in evidence.items()})


class IdentityRetrieval:
    name = "retrieval"
    main_score = "recall@1"
    metrics = (check("index_recall@*"), MetricInfo("recall@*", unit="query"),
               MetricInfo("map@r", unit="query"),
               MetricInfo("finetune_recall@*", unit="query"),
               MetricInfo("finetune_map@r", unit="query"), cost("finetune_s"),
               count("finetune_steps"))
    needs = ("vectors", "identity", "queries whose identity is in the gallery")
    seeded = True  # the frozen metrics are computed for seed 0 only; fine-tuning uses each seed
    variants = ("raw", "w")
    whitening_labels = ("identity",)  # what k=auto agrees with (bench/variants.py)
    defaults = {
        "quick": dict(finetune=True, epochs=1, max_steps=4, batch_size=32, lr=0.05,
                      temperature=0.1, max_seconds=0, eval_batch_size=256),
        "default": dict(finetune=True, epochs=6, max_steps=24, batch_size=32, lr=0.05,
                        temperature=0.1, max_seconds=45, eval_batch_size=256),
        "full": dict(finetune=True, epochs=40, batch_size=128, lr=0.1, temperature=0.1,
                     max_seconds=900, eval_batch_size=1024),
    }

    def population(self, dataset: Dataset) -> np.ndarray:
        """Queries and product shots with an identity, every split (all identity-labelled
        items without roles): what image search compares."""
        if not dataset.has("identity"):
            return np.array([], dtype=np.int64)
        if "role" in dataset.table.columns and (dataset.table["role"] == "query").any():
            return np.union1d(dataset.rows(role="query", labelled="identity"),
                              dataset.rows(role="product", labelled="identity"))
        return dataset.rows(labelled="identity")

    def skip_reason(self, dataset: Dataset) -> str | None:
        if not dataset.has("identity"):
            return "the dataset has no 'identity' column"
        queries, gallery = query_and_gallery(dataset)
        if len(queries) == 0 or len(gallery) == 0:
            return "no test queries whose identity appears in the gallery"
        return None

    def evaluate(self, embeddings: Embeddings, dataset: Dataset,
                 ctx: TaskContext) -> list[dict[str, Any]]:
        out = []
        if ctx.seed == 0:
            queries, gallery = query_and_gallery(dataset)
            identity = dataset.table["identity"].astype(str).to_numpy()
            query_vectors, gallery_vectors = embeddings.take(queries), embeddings.take(gallery)
            kind, params = faiss_index.task_choice(ctx.options, len(gallery))
            index = None if kind == "flat" else faiss_index.build_index(
                gallery_vectors, kind=kind, **params)
            scores, evidence = retrieval_metrics(query_vectors, identity[queries],
                                                 gallery_vectors, identity[gallery],
                                                 dataset.ids[queries], index=index)
            out += [{"metric": name, "value": value, "evidence": evidence[name]}
                    for name, value in scores.items()]
            if index is not None:
                k = min(10, len(gallery))
                _, found = faiss_index.search(index, query_vectors, k)
                sample = int(ctx.options.get("recall_queries", faiss_index.RECALL_QUERIES))
                recall, _ = faiss_index.recall_against_exact(gallery_vectors, query_vectors,
                                                             found, k, sample=sample)
                out.append({"metric": f"index_recall@{k}", "value": recall})
        backbone_of = getattr(ctx.extractor, "backbone", None)
        if ctx.variant == "raw" and ctx.options.get("finetune", True) and callable(backbone_of):
            out += self.finetune_rows(embeddings, dataset, ctx)
        return out

    def finetune_rows(self, embeddings: Embeddings, dataset: Dataset,
                      ctx: TaskContext) -> list[dict[str, Any]]:
        """Variant ``ft`` rows for the extractor, and once per run the scratch baseline's."""
        groups = training_groups(dataset)
        if len(groups) < 2:
            ft.log("retrieval: fewer than two train identities with a (query, product) pair; "
                   "no fine-tuning")
            return []
        budget = ft.Budget.from_options(ctx.options)
        temperature = float(ctx.options.get("temperature", 0.1))
        batch = int(ctx.options.get("eval_batch_size", 256))
        image_size = getattr(ctx.extractor, "image_size", dataset.image_size)
        data_key = (dataset.fingerprint, len(groups), budget.key(), temperature)
        result = ft.compare_with_scratch(
            self.name, ctx.extractor, embeddings.meta.get("fingerprint"), data_key, ctx.seed,
            ctx.cache, ctx.artifacts_dir, image_size,
            lambda model, to_tensor: finetune_scores(model, dataset, groups, budget, ctx.seed,
                                                     to_tensor, temperature, batch))
        return result.rows()


@task("retrieval")
def make_retrieval() -> IdentityRetrieval:
    return IdentityRetrieval()
