"""``knn``: do an item's nearest neighbours share its labels? (Visual4Rec Table 1.)

For each label column the dataset has (style and scene of content covers on homestead, category
on digits or a folder), the mean share of the k nearest test-split neighbours (self excluded,
Euclidean, FAISS exact search) with the query's label, and the chance level beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.data import Dataset
from bench.embeddings import Embeddings
from bench.metrics import knn_chance, knn_consistency
from bench.tasks import TaskContext, rows, task

LABELS = ("style", "scene", "category")


def _evaluation_rows(dataset: Dataset, split: str) -> np.ndarray:
    content = dataset.rows(role="content", split=split)
    return content if len(content) else dataset.rows(split=split)


class KnnConsistency:
    name = "knn"
    main_score = "style_consistency"
    needs = ("vectors", "one of: style, scene, category")
    seeded = False
    variants = ("raw", "w")

    def labels(self, dataset: Dataset, rows_: np.ndarray) -> list[str]:
        table = dataset.table.iloc[rows_]
        return [c for c in LABELS if c in table.columns and table[c].notna().sum() > 1]

    def skip_reason(self, dataset: Dataset) -> str | None:
        if not self.labels(dataset, _evaluation_rows(dataset, "test")):
            return f"no test items with any of the label columns {LABELS}"
        return None

    def evaluate(self, embeddings: Embeddings, dataset: Dataset,
                 ctx: TaskContext) -> list[dict[str, Any]]:
        k = int(ctx.options.get("k", 10))
        items = _evaluation_rows(dataset, ctx.options.get("split", "test"))
        metrics: dict[str, float] = {}
        for column in self.labels(dataset, items):
            labelled = items[dataset.table[column].iloc[items].notna().to_numpy()]
            labels = dataset.table[column].iloc[labelled].astype(str).to_numpy()
            vectors = embeddings.take(labelled)
            metrics[f"{column}_consistency"] = knn_consistency(vectors, labels, k=min(k, len(labels) - 1))
            metrics[f"{column}_chance"] = knn_chance(labels)
        return rows(metrics)


@task("knn")
def make_knn() -> KnnConsistency:
    return KnnConsistency()
