"""``knn``: do an item's nearest neighbours share its labels? (Visual4Rec Table 1.)

The reference protocol: the queries are the test-split items of the role (content covers on
homestead; every item on datasets without roles); their neighbours come from every item of that
role, all splits, the query itself excluded (Euclidean, FAISS exact search, k = 10). For each
label column the dataset has (style and scene on homestead, category on digits or a folder) the
task reports the mean share of a query's neighbours carrying its label, with each query's share
as evidence for the interval, and the chance level beside it. ``neighbours=test`` searches among
the test items only (the protocol before it was aligned with the reference study).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.data import Dataset
from bench.embeddings import Embeddings
from bench.metric_info import MetricInfo, chance
from bench.metrics import knn_agreement, knn_chance
from bench.stats import mean_evidence
from bench.tasks import TaskContext, task

LABELS = ("style", "scene", "category")
NEIGHBOURS = ("all", "test")


def population(dataset: Dataset) -> np.ndarray:
    """Every item of the role knn evaluates: content covers, or all items without roles."""
    content = dataset.rows(role="content")
    return content if len(content) else np.arange(len(dataset))


class KnnConsistency:
    name = "knn"
    main_score = "style_consistency"
    metrics = (MetricInfo("*_consistency", unit="query"), chance("*_chance"))
    needs = ("vectors", "one of: style, scene, category")
    seeded = False
    variants = ("raw", "w")
    whitening_labels = LABELS  # what k=auto agrees with (bench/variants.py)
    # whitening_sweep: also score +w at every whitening dimension k (the report's sweep plot)
    defaults = {profile: dict(k=10, neighbours="all", whitening_sweep=True)
                for profile in ("quick", "default", "full")}

    def population(self, dataset: Dataset) -> np.ndarray:
        return population(dataset)

    def labels(self, dataset: Dataset, rows_: np.ndarray) -> list[str]:
        table = dataset.table.iloc[rows_]
        return [c for c in LABELS if c in table.columns and table[c].notna().sum() > 1]

    def skip_reason(self, dataset: Dataset) -> str | None:
        items = population(dataset)
        queries = items[dataset.table["split"].iloc[items].to_numpy() == "test"]
        if not len(queries) or not self.labels(dataset, queries):
            return f"no test items with any of the label columns {LABELS}"
        return None

    def evaluate(self, embeddings: Embeddings, dataset: Dataset,
                 ctx: TaskContext) -> list[dict[str, Any]]:
        k = int(ctx.options.get("k", 10))
        neighbours = str(ctx.options.get("neighbours", "all"))
        if neighbours not in NEIGHBOURS:
            raise ValueError(f"knn: neighbours must be one of {NEIGHBOURS}, got {neighbours!r}")
        items = population(dataset)
        is_test = dataset.table["split"].iloc[items].to_numpy() == "test"
        database = items if neighbours == "all" else items[is_test]
        out: list[dict[str, Any]] = []
        for column in self.labels(dataset, items[is_test]):
            labelled = database[dataset.table[column].iloc[database].notna().to_numpy()]
            labels = dataset.table[column].iloc[labelled].astype(str).to_numpy()
            queries = np.flatnonzero(dataset.table["split"].iloc[labelled].to_numpy() == "test")
            if len(queries) == 0 or len(labelled) < 2:
                continue
            agreement = knn_agreement(embeddings.take(labelled), labels,
                                      k=min(k, len(labelled) - 1), queries=queries)
            out.append({"metric": f"{column}_consistency", "value": float(agreement.mean()),
                        "evidence": mean_evidence("query", dataset.ids[labelled[queries]],
                                                  agreement)})
            out.append({"metric": f"{column}_chance",
                        "value": knn_chance(labels, queries=queries)})
        return out


@task("knn")
def make_knn() -> KnnConsistency:
    return KnnConsistency()
