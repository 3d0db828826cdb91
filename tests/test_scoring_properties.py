"""Properties of the scoring core over generated inputs (hypothesis): bounds, invariance under
relabelling, AUC of reversed scores, whitening twice. Few examples, derandomised (the same
examples every run, so CI and ``make mutation`` are deterministic), no deadline."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from bench.scoring import metrics
from bench.vectors.whitening import fit_whitening

FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None)

# (label, score) pairs with small integer scores, so ties are common; both classes present
scored_labels = st.lists(st.tuples(st.integers(0, 1), st.integers(-3, 3)), min_size=2,
                         max_size=40).filter(lambda pairs: len({y for y, _ in pairs}) == 2)


def _arrays(pairs):
    return (np.array([y for y, _ in pairs]), np.array([s for _, s in pairs], dtype=float))


@FAST
@given(scored_labels)
def test_auc_is_bounded_matches_sklearn_and_reversing_scores_gives_one_minus_auc(pairs):
    y, s = _arrays(pairs)
    value = metrics.auc(y, s)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics.auc(y, -s) == pytest.approx(1.0 - value, abs=1e-12)
    assert metrics.auc(1 - y, s) == pytest.approx(1.0 - value, abs=1e-12)


@FAST
@given(scored_labels, st.lists(st.integers(0, 3), min_size=40, max_size=40),
       st.permutations(["u0", "u1", "u2", "u3"]))
def test_gauc_is_bounded_and_does_not_depend_on_the_group_names(pairs, group_codes, names):
    y, s = _arrays(pairs)
    groups = np.array(group_codes[: len(y)])
    renamed = np.array(names)[groups]
    try:
        value = metrics.gauc(y, s, groups)
    except ValueError:  # no group with both classes
        with pytest.raises(ValueError):
            metrics.gauc(y, s, renamed)
        return
    assert 0.0 <= value <= 1.0
    assert metrics.gauc(y, s, renamed) == pytest.approx(value, abs=1e-12)
    assert metrics.gauc(y, -s, groups) == pytest.approx(1.0 - value, abs=1e-12)


@FAST
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1)), min_size=1, max_size=30))
def test_logloss_is_non_negative_and_at_most_minus_log_eps(pairs):
    y = np.array([a for a, _ in pairs])
    p = np.array([b for _, b in pairs])
    value = metrics.logloss(y, p)
    assert 0.0 <= value <= -np.log(1e-7) + 1e-9


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(2, 5))
def test_topk_accuracy_is_bounded_and_grows_with_k(seed, k, n_classes):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, (20, n_classes)).astype(float)  # many ties
    labels = rng.integers(0, n_classes, 20)
    k = min(k, n_classes)
    values = [metrics.topk_accuracy(scores, labels, j) for j in range(1, n_classes + 1)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(a <= b + 1e-12 for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(1.0)
    # relabelling the classes (permuting score columns with the labels) changes nothing
    perm = rng.permutation(n_classes)
    moved = np.empty_like(scores)
    moved[:, perm] = scores
    assert metrics.topk_accuracy(moved, perm[labels], k) == pytest.approx(values[k - 1])


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(2, 4))
def test_knn_consistency_is_bounded_and_invariant_under_relabelling(seed, k, n_labels):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(25, 3))
    labels = rng.integers(0, n_labels, 25)
    value = metrics.knn_consistency(x, labels, k)
    chance = metrics.knn_chance(labels)
    assert 0.0 <= value <= 1.0 and 0.0 <= chance <= 1.0
    names = np.array([f"class-{i}" for i in rng.permutation(n_labels)])
    assert metrics.knn_consistency(x, names[labels], k) == pytest.approx(value, abs=1e-12)
    assert metrics.knn_chance(names[labels]) == pytest.approx(chance, abs=1e-12)
    # one label for all: every neighbour agrees
    assert metrics.knn_consistency(x, np.zeros(25, int), k) == 1.0


@FAST
@given(st.integers(0, 2**32 - 1))
def test_retrieval_metrics_are_bounded_and_invariant_under_relabelling(seed):
    rng = np.random.default_rng(seed)
    gallery_ids = rng.integers(0, 5, 30)
    gallery = rng.normal(size=(30, 4))
    query_ids = rng.choice(gallery_ids, 12)
    queries = rng.normal(size=(12, 4))
    recall = metrics.recall_at_n(queries, query_ids, gallery, gallery_ids, ns=(1, 5, 30))
    assert all(0.0 <= v <= 1.0 for v in recall.values())
    assert recall[1] <= recall[5] <= recall[30] == 1.0
    value = metrics.map_at_r(queries, query_ids, gallery, gallery_ids)
    assert 0.0 <= value <= 1.0
    names = np.array(["x", "y", "z", "w", "v"])
    assert metrics.map_at_r(queries, names[query_ids], gallery, names[gallery_ids]) == \
        pytest.approx(value, abs=1e-12)
    assert metrics.recall_at_n(queries, names[query_ids], gallery, names[gallery_ids],
                               ns=(1, 5, 30)) == pytest.approx(recall)


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(2, 6))
def test_whitening_whitened_data_again_changes_nothing_but_the_basis(seed, dim):
    """Whitened train vectors have zero mean and identity covariance, so whitening them again
    is the identity up to the choice of orthonormal basis: distances and inner products stay."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, dim)) @ rng.normal(size=(dim, dim)) + rng.normal(size=dim) * 5
    once = fit_whitening(x).apply(x).astype(np.float64)
    twice_fit = fit_whitening(once)
    twice = twice_fit.apply(once).astype(np.float64)
    assert twice_fit.k == dim
    transform = twice_fit.transform.astype(np.float64)
    np.testing.assert_allclose(transform.T @ transform, np.eye(dim), atol=1e-3)  # a rotation
    np.testing.assert_allclose(twice @ twice.T, once @ once.T, atol=1e-3)
    np.testing.assert_allclose(np.cov(twice, rowvar=False), np.eye(dim), atol=1e-3)
