"""The ``knn`` task's skip rule: a label column with one class says nothing (#23)."""

from __future__ import annotations

import numpy as np

from bench.core.data import Dataset
from bench.embed.embeddings import Embeddings
from bench.tasks import TaskContext, get_task
from tests.conftest import tiny_dataset


def _single_class(data: Dataset, column: str = "category") -> Dataset:
    table = data.table.copy()
    table[column] = "red"
    return Dataset(data.name + "-one", table, data.image_source, data.image_size,
                   data.fingerprint + "-one")


def test_knn_with_a_single_class_is_skipped_with_the_reason_and_never_scored_one():
    task = get_task("knn")
    data = tiny_dataset(30)
    assert task.skip_reason(data) is None
    one = _single_class(data)
    assert task.skip_reason(one) == (
        "every label column has one class only among the items (category 'red'): a neighbour "
        "always agrees, consistency 1.0 against chance 1.0")
    vectors = np.random.default_rng(0).normal(size=(len(one), 4)).astype(np.float32)
    rows = task.evaluate(Embeddings(one.ids, vectors), one, TaskContext(options={"k": 3}))
    assert not [r for r in rows if r["metric"].startswith("category_")]
    two = task.evaluate(Embeddings(data.ids, vectors), data, TaskContext(options={"k": 3}))
    assert {r["metric"] for r in two} >= {"category_consistency", "category_chance"}
