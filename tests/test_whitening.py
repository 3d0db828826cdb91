"""The w variant: BERT-whitening with a dimension k, fitted on a task's train population."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.core.data import Dataset, array_image_source
from bench.embed.embeddings import Embeddings
from bench.tasks import Task
from bench.vectors.variants import for_task, train_rows
from bench.vectors.whitening import SHRINKAGE_GRID, candidate_name, choose, fit_whitening, k_grid


def test_whitening_with_k_keeps_the_top_k_train_covariance_directions():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    scales = np.array([9.0, 7.0, 5.0, 3.0, 1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    train = (rng.normal(size=(4000, 12)) * scales) @ basis.T
    w = fit_whitening(train, k=3)
    assert w.k == 3 and w.record["k"] == 3
    # the kept directions span the top-3 eigenvectors of the train covariance
    eigvals, eigvecs = np.linalg.eigh(np.cov(train, rowvar=False))
    top = eigvecs[:, np.argsort(eigvals)[::-1][:3]]
    kept, _ = np.linalg.qr(w.transform.astype(np.float64))
    assert np.allclose(np.abs(np.linalg.svd(top.T @ kept)[1]), 1.0, atol=1e-4)
    # and whiten them: identity covariance on the train vectors
    out = w.apply(train)
    assert np.allclose(np.cov(out, rowvar=False), np.eye(3), atol=1e-3)
    assert w.record["variance_kept"] == pytest.approx((scales[:3] ** 2).sum()
                                                      / (scales ** 2).sum(), abs=0.02)


def test_shrinkage_softens_the_small_directions():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(2000, 4)) * np.array([4.0, 2.0, 1.0, 0.1])
    plain = np.cov(fit_whitening(train).apply(train), rowvar=False)
    shrunk = np.cov(fit_whitening(train, shrinkage=1.0).apply(train), rowvar=False)
    assert np.allclose(np.diag(plain), 1.0, atol=1e-3)
    d = np.diag(shrunk)
    assert d[0] > d[1] > d[2] > d[3] and d[3] < 0.01  # noise is no longer blown up
    with pytest.raises(ValueError, match="shrinkage"):
        fit_whitening(train, shrinkage=-1)


def test_the_choice_keeps_the_signal_directions_of_noise_padded_vectors():
    """Labels live in 4 directions of variance 1; 60 more hold noise of variance 0.5: full
    whitening would weigh the noise as much as the signal; the train labels choose a small k."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 1200)
    signal = np.eye(4)[labels] * 2.0 + rng.normal(0, 0.3, (1200, 4))
    vectors = np.concatenate([signal, rng.normal(0, 0.7, (1200, 60))], axis=1)
    (k, shrinkage), scores = choose(vectors, {"label": labels.astype(object)}, (0.0,))
    assert list(scores) == [candidate_name(k_, 0.0) for k_ in k_grid(64)] and k <= 8
    assert scores[candidate_name(k, 0.0)] > scores[candidate_name(64, 0.0)] + 0.2
    assert choose(vectors, {})[0] == (32, 0.0)  # no labels: the documented default


def test_choose_scores_match_an_independent_leave_one_out_computation():
    """Each candidate's score is the mean over label columns of leave-one-out KNN agreement of
    the whitened train rows, checked with scikit-learn's exact neighbours."""
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 300)
    vectors = np.concatenate([np.eye(3)[labels] + rng.normal(0, 0.8, (300, 3)),
                              rng.normal(0, 2.0, (300, 5))], axis=1)
    other = np.where(rng.random(300) < 0.7, labels, rng.integers(0, 3, 300)).astype(object)
    other[:20] = None  # a column with missing labels is scored on its own rows
    columns = {"a": labels.astype(object), "b": other}
    chosen, scores = choose(vectors, columns, (0.0, 3.0), [2, 8])
    assert set(scores) == {candidate_name(k, s) for k in (2, 8) for s in (0.0, 3.0)}
    for k in (2, 8):
        for s in (0.0, 3.0):
            w = fit_whitening(vectors, k, s).apply(vectors)
            parts = []
            for values in columns.values():
                rows = np.array([v is not None for v in values])
                x, y = w[rows], values[rows].astype(str)
                idx = NearestNeighbors(n_neighbors=11).fit(x).kneighbors(x)[1][:, 1:]
                parts.append(np.mean(y[idx] == y[:, None]))
            assert scores[candidate_name(k, s)] == pytest.approx(np.mean(parts), abs=1e-9)
    best = max(scores.values())
    assert scores[candidate_name(*chosen)] == best


def test_shrinkage_chosen_on_train_rows_rescues_whitening_of_anisotropic_signal():
    """The labels live in the 2 largest directions; 30 weak directions hold noise. Plain
    whitening at k = dim blows the noise up; the choice over shrinkage (k fixed at dim) picks a
    shrinkage > 0 and keeps most of raw's agreement."""
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 4, 800)
    signal = np.stack([np.cos(labels * np.pi / 2), np.sin(labels * np.pi / 2)], 1) * 3.0
    vectors = np.concatenate([signal + rng.normal(0, 0.5, (800, 2)),
                              rng.normal(0, 0.3, (800, 30))], axis=1)
    (k, shrinkage), scores = choose(vectors, {"y": labels.astype(object)}, SHRINKAGE_GRID, [32])
    assert k == 32 and shrinkage > 0
    assert scores[candidate_name(32, shrinkage)] > scores[candidate_name(32, 0.0)] + 0.2


def dataset_with_roles() -> Dataset:
    roles = ["content"] * 60 + ["product"] * 40
    split = (["train"] * 40 + ["test"] * 20) + (["train"] * 30 + ["test"] * 10)
    table = pd.DataFrame({"id": [f"i{i}" for i in range(100)], "role": roles, "split": split,
                          "style": [["a", "b"][i % 2] for i in range(100)]})
    images = np.zeros((100, 4, 4, 3), dtype=np.uint8)
    return Dataset("roles", table, array_image_source(images), 4, "fp")


class ContentTask(Task):
    name, variants = "contentish", ("raw", "w")

    def population(self, dataset: Dataset) -> np.ndarray:
        return dataset.rows(role="content")


def test_whitening_is_fitted_on_the_train_split_of_the_task_population():
    dataset = dataset_with_roles()
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(100, 6)).astype(np.float32)
    vectors[60:] += 50.0  # products far away: they must not shift the content whitening
    embeddings = Embeddings(dataset.ids, vectors)
    task = ContentTask()
    assert train_rows(task, dataset).tolist() == list(range(40))
    out, record = for_task(embeddings, dataset, task, {"k": "full", "shrinkage": 0})
    expected = fit_whitening(vectors[:40])
    assert np.allclose(out["w"].vectors, expected.apply(vectors), atol=1e-5)
    assert record["n_fit"] == 40 and record["k"] == 6 and record["k_option"] == "full"
    out, record = for_task(embeddings, dataset, task, {"k": 2})
    assert out["w"].dim == 2 and record["k"] == 2
    auto = for_task(embeddings, dataset, task)[1]
    assert auto["k_option"] == auto["shrinkage_option"] == "auto"
    assert set(auto["selection_scores"]) == {candidate_name(k, s) for k in (4, 6)
                                             for s in SHRINKAGE_GRID}
    fixed = for_task(embeddings, dataset, task, {"k": "auto", "shrinkage": 0.0})[1]
    assert set(fixed["selection_scores"]) == {candidate_name(k, 0.0) for k in (4, 6)}


def test_knn_task_queries_test_items_against_every_item_of_the_role():
    """The reference protocol, checked against a brute-force numpy computation: test covers
    query, neighbours from all covers (train and test) but the query, products never."""
    from bench.tasks import TaskContext, get_task

    dataset = dataset_with_roles()
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(100, 5)).astype(np.float32)
    labels = dataset.table["style"].to_numpy()
    task = get_task("knn")
    rows = task.evaluate(Embeddings(dataset.ids, vectors), dataset, TaskContext(options={"k": 5}))
    got = {r["metric"]: r for r in rows}
    content = np.arange(60)
    expected = []
    for q in range(40, 60):  # the test covers
        d = ((vectors[content] - vectors[q]) ** 2).sum(1)
        d[q] = np.inf
        nearest = np.argsort(d, kind="stable")[:5]
        expected.append((labels[nearest] == labels[q]).mean())
    assert got["style_consistency"]["value"] == pytest.approx(np.mean(expected))
    evidence = got["style_consistency"]["evidence"]
    assert evidence.units.tolist() == dataset.ids[40:60].tolist()
    assert np.allclose(evidence.values, expected)
    # the earlier protocol: neighbours among the test covers only
    old = task.evaluate(Embeddings(dataset.ids, vectors), dataset,
                        TaskContext(options={"k": 5, "neighbours": "test"}))
    test_only = []
    for q in range(40, 60):
        d = ((vectors[40:60] - vectors[q]) ** 2).sum(1)
        d[q - 40] = np.inf
        test_only.append((labels[40:60][np.argsort(d, kind="stable")[:5]] == labels[q]).mean())
    assert old[0]["value"] == pytest.approx(np.mean(test_only))


def test_the_choice_of_k_is_cached_by_its_inputs(tmp_path, monkeypatch):
    from bench.core.cache import Cache
    from bench.vectors import variants

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 8))
    labels = {"style": np.array(["a", "b", "c"] * 20, dtype=object)}
    ks = k_grid(8)
    first = variants.cached_choice(Cache(tmp_path), vectors, labels, ks, SHRINKAGE_GRID)
    assert first == choose(vectors, labels, SHRINKAGE_GRID, ks)
    monkeypatch.setattr(variants, "choose", lambda *a, **k: pytest.fail("chosen again"))
    assert variants.cached_choice(Cache(tmp_path), vectors, labels, ks, SHRINKAGE_GRID) == first
    with pytest.raises(pytest.fail.Exception):  # other vectors: a miss
        variants.cached_choice(Cache(tmp_path), vectors * 2, labels, ks, SHRINKAGE_GRID)
    with pytest.raises(pytest.fail.Exception):  # other candidates: a miss
        variants.cached_choice(Cache(tmp_path), vectors, labels, ks, (0.0,))


def test_the_sweep_uses_the_chosen_shrinkage_and_is_cached(tmp_path):
    from bench.core.cache import Cache
    from bench.tasks import TaskContext, get_task
    from bench.vectors import variants

    dataset = dataset_with_roles()
    rng = np.random.default_rng(7)
    embeddings = Embeddings(dataset.ids, rng.normal(size=(100, 6)).astype(np.float32))
    task = get_task("knn")
    ctx = TaskContext(options={"k": 5}, cache=Cache(tmp_path))
    chosen = variants.fit_for_task(embeddings, dataset, task, None, ctx.cache).record
    rows = variants.sweep(embeddings, dataset, task, ctx, chosen["shrinkage"])
    assert [r["k"] for r in rows if r["metric"] == "style_consistency"] == k_grid(6)
    assert {r["shrinkage"] for r in rows} == {chosen["shrinkage"]}

    class Refuses(Task):
        name, variants, population = "knn", ("raw", "w"), task.population
        whitening_labels = task.whitening_labels

        def evaluate(self, *args):
            raise AssertionError("the sweep was computed again")

    Refuses.__module__ = type(task).__module__  # the same source files: the same cache key
    assert variants.sweep(embeddings, dataset, Refuses(), ctx, chosen["shrinkage"]) == rows


def test_a_task_option_narrows_the_variants_a_task_runs():
    from bench.vectors import variants

    task = ContentTask()
    assert variants.scheduled(task, {}) == ("raw", "w")
    assert variants.scheduled(task, {"variants": ["raw"]}) == ("raw",)
    assert variants.scheduled(task, {"variants": "w, raw"}) == ("raw", "w")  # declared order
    with pytest.raises(ValueError, match=r"variants=ft: choose among its variants raw, w"):
        variants.scheduled(task, {"variants": "ft"})
    dataset = dataset_with_roles()
    embeddings = Embeddings(dataset.ids, np.random.default_rng(8).normal(size=(100, 4)))
    out, record = for_task(embeddings, dataset, task, wanted=("raw",))
    assert set(out) == {"raw"} and record is None  # nothing fitted for a variant not run
    assert variants.available(task, dataset, {"variants": ["raw"]}) == ("raw",)
