"""``knn``: do an item's nearest neighbours share its labels? (Visual4Rec Table 1.)

The reference protocol: the queries are the test-split items of the role (content covers on
homestead; every item on datasets without roles); their neighbours come from every item of that
role, all splits, the query itself excluded (Euclidean, FAISS exact search, k = 10). For each
label column the dataset has (style and scene on homestead, category on digits or a folder) the
task reports the mean share of a query's neighbours carrying its label, with each query's share
as evidence for the interval, and the chance level beside it. ``neighbours=test`` searches among
the test items only (the protocol before it was aligned with the reference study).

Large catalogues: ``index=flat|ivf|ivfpq|hnsw|auto`` (with ``nlist``, ``nprobe``, ``m``,
``auto_threshold``; ``bench.search.choice.choose``) searches with an approximate FAISS index instead;
``auto`` stays exact below ``bench.search.choice.AUTO_THRESHOLD`` items. An approximate search also
reports ``index_recall@k``: its neighbours' recall against exact search on a sample of
``recall_queries`` queries (a property of the index, not of the embedding: no interval, never
ranked). Inside a joined process group (torchrun) each rank indexes its shard of the items and
rank 0 merges the top-k lists (``bench.search.sharded.sharded_knn``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.core import distributed
from bench.core.data import Dataset
from bench.core.metric_info import MetricInfo, chance, check
from bench.embed.embeddings import Embeddings
from bench.scoring.metrics import knn_chance, neighbour_agreement
from bench.scoring.stats import mean_evidence
from bench.search import choice as index_choice
from bench.search import index as faiss_index
from bench.search import sharded
from bench.tasks import Task, TaskContext, task

LABELS = ("style", "scene", "category")
NEIGHBOURS = ("all", "test")


def population(dataset: Dataset) -> np.ndarray:
    """Every item of the role knn evaluates: content covers, or all items without roles."""
    content = dataset.rows(role="content")
    return content if len(content) else np.arange(len(dataset))


class KnnConsistency(Task):
    name = "knn"
    description = ("Do a content's 10 nearest neighbours share its labels? Mean share over test "
                   "contents (Euclidean, self excluded); the chance column is the share expected "
                   "from label frequencies alone.")
    stage = "recall"
    main_score = "style_consistency"
    metrics = (MetricInfo("*_consistency", unit="query"), chance("*_chance"),
               check("index_recall@*"))
    needs = ("vectors", "one of: style, scene, category")
    seeded = False
    variants = ("raw", "w")
    whitening_labels = LABELS  # what k=auto agrees with (bench/vectors/variants.py)
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
        columns = self.labels(dataset, queries) if len(queries) else []
        if not columns:
            return f"no test items with any of the label columns {LABELS}"
        single = {c: dataset.table[c].iloc[items].dropna().astype(str).unique() for c in columns}
        if all(len(values) < 2 for values in single.values()):
            named = ", ".join(f"{c} {str(v[0])!r}" for c, v in single.items())
            return (f"every label column has one class only among the items ({named}): a "
                    f"neighbour always agrees, consistency 1.0 against chance 1.0")
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
        searched: dict[bytes, np.ndarray] = {}  # database rows -> each query's neighbours
        world = distributed.current()
        for column in self.labels(dataset, items[is_test]):
            labelled = database[dataset.table[column].iloc[database].notna().to_numpy()]
            labels = dataset.table[column].iloc[labelled].astype(str).to_numpy()
            queries = np.flatnonzero(dataset.table["split"].iloc[labelled].to_numpy() == "test")
            if len(queries) == 0 or len(labelled) < 2 or len(np.unique(labels)) < 2:
                continue  # one class only: agreement 1.0 against chance 1.0 says nothing
            key = labelled.tobytes()  # label columns labelled alike share one search
            if key not in searched:
                kind, params = index_choice.task_choice(ctx.options, len(labelled))
                measured = any(row["metric"].startswith("index_recall@") for row in out)
                searched[key], recall = self.neighbours(embeddings.take(labelled), queries,
                                                        min(k, len(labelled) - 1), kind, params,
                                                        world, ctx, not measured)
                out += [recall] if recall else []  # once per task: the first database
            agreement = neighbour_agreement(searched[key], labels, queries)
            out.append({"metric": f"{column}_consistency", "value": float(agreement.mean()),
                        "evidence": mean_evidence("query", dataset.ids[labelled[queries]],
                                                  agreement)})
            out.append({"metric": f"{column}_chance",
                        "value": knn_chance(labels, queries=queries)})
        return out

    def neighbours(self, vectors: np.ndarray, queries: np.ndarray, k: int, kind: str,
                   params: dict[str, Any], world: distributed.World, ctx: TaskContext,
                   measure_recall: bool = True) -> tuple[np.ndarray, dict[str, Any] | None]:
        """Each query's k neighbours (self excluded; exact search unless an index is chosen,
        as ``bench.scoring.metrics.knn_agreement`` searches), over the ranks of a joined process group
        when there is one, and for an approximate index the row of its recall against exact
        search when ``measure_recall`` (else None)."""
        if world.distributed:
            found = sharded.sharded_knn(vectors, k, world, queries=queries, kind=kind,
                                            **params)
        else:
            found = faiss_index.knn(vectors, k, queries=queries, kind=kind, **params)
        if kind == "flat" or not measure_recall:
            return found, None
        sample = int(ctx.options.get("recall_queries", index_choice.RECALL_QUERIES))
        recall, _ = index_choice.recall_against_exact(vectors, vectors[queries], found, k,
                                                     self_ids=queries, sample=sample)
        return found, {"metric": f"index_recall@{k}", "value": recall}


@task("knn")
def make_knn() -> KnnConsistency:
    return KnnConsistency()
