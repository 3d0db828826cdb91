"""``retrieval``: does image search find the same product? (Visual4Rec Table 6.)

Test-split scene-crop queries (role ``query``) search the product-shot gallery (role
``product``, train and test splits: the other products act as distractors); a hit is a gallery
item with the query's ``identity``. Reports Identity Recall@1/5/10/15/20 and MAP@R.
Datasets without roles use test items as queries against the other labelled items.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.data import Dataset
from bench.embeddings import Embeddings
from bench.metrics import map_at_r, recall_at_n
from bench.tasks import TaskContext, rows, task

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


class IdentityRetrieval:
    name = "retrieval"
    main_score = "recall@1"
    needs = ("vectors", "identity", "queries whose identity is in the gallery")
    seeded = False
    variants = ("raw", "w")

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
        args = (embeddings.take(queries), identity[queries],
                embeddings.take(gallery), identity[gallery])
        ns = tuple(n for n in RECALL_NS if n <= len(gallery))
        metrics = {f"recall@{n}": value for n, value in recall_at_n(*args, ns=ns).items()}
        metrics["map@r"] = map_at_r(*args)
        return rows(metrics)


@task("retrieval")
def make_retrieval() -> IdentityRetrieval:
    return IdentityRetrieval()
