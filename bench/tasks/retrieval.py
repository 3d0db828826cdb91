"""``retrieval``: does image search find the same product? (Visual4Rec Table 6.)

Test-split scene-crop queries (role ``query``) search the product-shot gallery (role
``product``, train and test splits: the other products act as distractors); a hit is a gallery
item with the query's ``identity``. Reports Identity Recall@1/5/10/15/20 and MAP@R.
Datasets without roles use test items as queries against the other labelled items.

Large galleries: ``index=flat|ivf|ivfpq|hnsw|auto`` (with ``nlist``, ``nprobe``, ``m``,
``auto_threshold``; ``bench.search.choice.choose``) searches the gallery with an approximate FAISS index
(the frozen raw and w metrics; fine-tuned features are searched exactly), and reports
``index_recall@10``, the index's recall of the exact top 10 on a sample of ``recall_queries``
queries (no interval, never ranked).

The frozen metrics do not depend on a seed: the task is seedless (one seed-0 row per metric).
It sees vectors only; metric-learning the backbone on identity pairs is its own task,
``finetune_retrieval`` (bench/tasks/finetune.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.core.data import Dataset
from bench.core.metric_info import MetricInfo, check
from bench.embed.embeddings import Embeddings
from bench.scoring.metrics import average_precision_at_r, recall_hits
from bench.scoring.stats import Evidence, mean_evidence
from bench.search import choice as index_choice
from bench.search import index as faiss_index
from bench.tasks import Task, TaskContext, task

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



class IdentityRetrieval(Task):
    name = "retrieval"
    description = ("Image search: does a scene-crop query find the same product among the "
                   "product shots? Identity Recall@N and MAP@R.")
    stage = "image search"
    main_score = "recall@1"
    metrics = (check("index_recall@*"), MetricInfo("recall@*", unit="query"),
               MetricInfo("map@r", unit="query"))
    needs = ("vectors", "identity", "queries whose identity is in the gallery")
    seeded = False  # exact or index search of fixed vectors: no randomness to repeat
    variants = ("raw", "w")
    whitening_labels = ("identity",)  # what k=auto agrees with (bench/vectors/variants.py)
    defaults: dict[str, dict[str, Any]] = {}  # index options only (``index``, ``nlist``, ...)

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
        queries, gallery = query_and_gallery(dataset)
        identity = dataset.table["identity"].astype(str).to_numpy()
        query_vectors, gallery_vectors = embeddings.take(queries), embeddings.take(gallery)
        kind, params = index_choice.task_choice(ctx.options, len(gallery))
        index = None if kind == "flat" else faiss_index.build_index(
            gallery_vectors, kind=kind, **params)
        scores, evidence = retrieval_metrics(query_vectors, identity[queries],
                                             gallery_vectors, identity[gallery],
                                             dataset.ids[queries], index=index)
        out = [{"metric": name, "value": value, "evidence": evidence[name]}
               for name, value in scores.items()]
        if index is not None:
            k = min(10, len(gallery))
            _, found = faiss_index.search(index, query_vectors, k)
            sample = int(ctx.options.get("recall_queries", index_choice.RECALL_QUERIES))
            recall, _ = index_choice.recall_against_exact(gallery_vectors, query_vectors,
                                                         found, k, sample=sample)
            out.append({"metric": f"index_recall@{k}", "value": recall})
        return out


@task("retrieval")
def make_retrieval() -> IdentityRetrieval:
    return IdentityRetrieval()
