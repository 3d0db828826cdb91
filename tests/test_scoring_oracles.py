"""The scoring core against independent computations (numpy by hand, scipy, scikit-learn).

Each test here kills a planted bug that escaped the older tests (issue #30, found by
``make mutation``): it checks the function's documented contract against a value computed
another way, never against the function's own output.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics import log_loss, roc_auc_score

from bench.scoring import metrics, stats, verdicts
from bench.search.index import normalize
from bench.tasks.ctr import scored_rows
from bench.tasks.ctr.train import evidence, scored
from bench.vectors.whitening import fit_whitening, principal_axes, whitening_from

Z95 = scipy.stats.norm.ppf(0.975)

# ------------------------------------------------------------------ neighbour agreement


def test_empty_neighbour_slots_count_as_disagreements_not_as_the_last_row():
    # the last row's label is every query's label: a -1 slot read as y[-1] would "agree"
    labels = np.array(["a", "b", "a", "b", "a"])
    neighbours = np.array([[2, -1, -1],   # query 0 (a): one match of 3 slots
                           [3, 0, -1],    # query 1 (b): one match
                           [-1, -1, -1],  # query 2 (a): nothing found
                           [1, 4, 0],     # query 3 (b): one match
                           [0, 2, -1]])   # query 4 (a): two matches
    expected = []
    for q, row in enumerate(neighbours):
        expected.append(sum(j >= 0 and labels[j] == labels[q] for j in row) / len(row))
    got = metrics.neighbour_agreement(neighbours, labels)
    assert got == pytest.approx(expected, abs=0)
    # with query positions: the rows of ``neighbours`` belong to queries 4 and 0
    got = metrics.neighbour_agreement(neighbours[[4, 0]], labels, queries=np.array([4, 0]))
    assert got == pytest.approx([expected[4], expected[0]], abs=0)


def test_knn_agreement_counts_neighbours_by_hand():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    y = rng.integers(0, 3, 30)
    k = 4
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    nearest = np.argsort(dist, axis=1)[:, :k]
    expected = (y[nearest] == y[:, None]).mean(1)
    assert metrics.knn_agreement(x, y, k) == pytest.approx(expected, abs=1e-12)
    assert metrics.knn_consistency(x, y, k) == pytest.approx(expected.mean(), abs=1e-12)


# ------------------------------------------------------------------ intervals


def test_an_interval_near_a_bound_is_clipped_to_the_metric_support():
    near_zero = stats.Interval(0.02, 0.05, 1, 100, "query", support=(0.0, 1.0))
    assert near_zero.low == 0.0  # 0.02 - 1.96 * 0.05 < 0
    assert near_zero.high == pytest.approx(0.02 + Z95 * 0.05, abs=1e-12)
    near_one = stats.Interval(0.99, 0.02, 1, 100, "user", support=(0.0, 1.0))
    assert near_one.high == 1.0
    assert near_one.low == pytest.approx(0.99 - Z95 * 0.02, abs=1e-12)
    inside = stats.Interval(0.5, 0.1, 1, 100, "query", support=(0.0, 1.0))
    assert (inside.low, inside.high) == pytest.approx((0.5 - Z95 * 0.1, 0.5 + Z95 * 0.1))


def test_a_rare_hit_rate_interval_starts_at_zero_not_below():
    """Three hits among 200 queries: the normal interval would reach below 0."""
    values = np.zeros(200)
    values[[3, 70, 150]] = 1.0
    cell = stats.Cell(("x", "raw"), [stats.mean_evidence("query", np.arange(200), values)])
    draws = stats.resample([cell], n_resamples=400)[0]
    iv = stats.interval(cell, draws)
    se = np.std(draws, ddof=1)  # one seed: the bootstrap part only
    assert iv.value == pytest.approx(0.015) and iv.se == pytest.approx(se, rel=1e-12)
    assert 0.015 - Z95 * se < 0 and iv.low == 0.0
    assert iv.high == pytest.approx(0.015 + Z95 * se, rel=1e-12)
    assert stats.support(cell) == (0.0, 1.0)


def test_auc_interval_support_is_the_unit_interval():
    labels = np.array([0, 1, 0, 1, 1, 0])
    cell = stats.Cell(("x",), [stats.Evidence("auc", "user", np.arange(6), np.arange(6.0),
                                              labels)])
    assert stats.support(cell) == (0.0, 1.0)


# ------------------------------------------------------------------ paired comparison


def _cell(key, per_seed_values):
    units = np.arange(len(per_seed_values[0]))
    return stats.Cell(key, [stats.mean_evidence("query", units, v) for v in per_seed_values])


def test_compare_p_value_is_two_sided_normal():
    rng = np.random.default_rng(3)
    a = _cell(("a",), [rng.random(50) + 0.03])
    b = _cell(("b",), [rng.random(50)])
    draws_a, draws_b = rng.normal(0.5, 0.04, 300), rng.normal(0.5, 0.03, 300)
    diff = a.seeds[0].values.mean() - b.seeds[0].values.mean()
    se = np.std(draws_a - draws_b, ddof=1)
    for first, second, first_draws, second_draws, sign in (
            (a, b, draws_a, draws_b, 1), (b, a, draws_b, draws_a, -1)):
        test = stats.compare(first, first_draws, second, second_draws)
        assert test.diff == pytest.approx(sign * diff, abs=1e-12)
        assert test.se == pytest.approx(se, rel=1e-12)
        p = 2 * scipy.stats.norm.sf(abs(diff) / se)
        assert test.p_value == pytest.approx(p, rel=1e-9)
        assert 0.05 < p < 1  # neither one-sided p (p / 2 or 1 - p / 2) is this value
        assert test.verdict == "same"
        assert (test.low, test.high) == pytest.approx((sign * diff - Z95 * se,
                                                       sign * diff + Z95 * se))


def test_compare_verdict_follows_the_direction_of_the_metric():
    a = _cell(("a",), [np.full(10, 0.6)])
    b = _cell(("b",), [np.full(10, 0.4)])
    draws_a = np.linspace(-0.01, 0.01, 50) + 0.6
    draws_b = np.linspace(0.01, -0.01, 50) + 0.4
    se = np.std(draws_a - draws_b, ddof=1)
    higher = stats.compare(a, draws_a, b, draws_b)
    assert higher.p_value == pytest.approx(2 * scipy.stats.norm.sf(0.2 / se))
    assert higher.verdict == "better"
    assert stats.compare(a, draws_a, b, draws_b, lower_is_better=True).verdict == "worse"
    assert stats.compare(b, draws_b, a, draws_a).verdict == "worse"
    assert stats.compare(b, draws_b, a, draws_a, lower_is_better=True).verdict == "better"


def test_compare_pairs_seeds_by_position():
    """Seed i of the row and of the reference share training noise (the same seed): the
    differences' spread counts, not each side's spread."""
    base = np.array([0.1, 0.5, 0.9])  # a large spread across seeds ...
    shift = np.array([0.05, 0.06, 0.04])  # ... and a steady gain per seed
    row = _cell(("a",), [np.full(20, v) for v in base + shift])
    ref = _cell(("b",), [np.full(20, v) for v in base])
    flat = np.zeros(40)  # no bootstrap part: the seed part alone
    test = stats.compare(row, flat, ref, flat)
    paired_se = math.sqrt(np.var(shift, ddof=1) / 3)
    assert test.diff == pytest.approx(shift.mean(), abs=1e-12)
    assert test.se == pytest.approx(paired_se, rel=1e-9)
    assert test.p_value == pytest.approx(2 * scipy.stats.norm.sf(shift.mean() / paired_se))
    assert test.verdict == "better"
    # different seed counts cannot be paired: each side's spread
    ref2 = _cell(("b",), [np.full(20, v) for v in base[:2]])
    unpaired = stats.compare(row, flat, ref2, flat)
    unpaired_se = math.sqrt(np.var(base + shift, ddof=1) / 3 + np.var(base[:2], ddof=1) / 2)
    assert unpaired.se == pytest.approx(unpaired_se, rel=1e-9)
    assert "+ spread of 3 seeds" in unpaired.test


def test_interval_adds_the_seed_spread_to_the_bootstrap_part():
    values = [np.r_[np.zeros(30 - hits), np.ones(hits)] for hits in (6, 9, 21)]
    cell = _cell(("a",), values)  # per-seed means 0.2, 0.3, 0.7; support [0, 1]
    draws = np.linspace(0.3, 0.5, 60)
    iv = stats.interval(cell, draws)
    seeds = np.array([0.2, 0.3, 0.7])
    se = math.sqrt(np.var(draws, ddof=1) + np.var(seeds, ddof=1) / 3)
    assert (iv.value, iv.se, iv.n_seeds, iv.n_units) == pytest.approx((0.4, se, 3, 30))
    assert (iv.low, iv.high) == pytest.approx((0.4 - Z95 * se, 0.4 + Z95 * se))


# ------------------------------------------------------------------ ladder validity


def _ladder(means, n=400, seed=0):
    rng = np.random.default_rng(seed)
    units = np.arange(n)
    cells = [stats.Cell((name, "raw"), [stats.mean_evidence(
        "query", units, np.clip(rng.normal(mean, 0.1, n), 0, None))])
        for name, mean in means.items()]
    draws = stats.resample(cells, n_resamples=300)
    return {c.key: (c, d) for c, d in zip(cells, draws)}, cells, draws


@pytest.mark.parametrize("lower", [False, True])
def test_ladder_in_the_metric_direction_resolves_with_a_positive_gap(lower):
    # clean is best: highest for a higher-is-better metric, lowest for a log loss
    means = {"ladder:clean": 0.9, "ladder:noise=0.3": 0.6, "ladder:random": 0.3}
    if lower:
        means = {k: 1.2 - v for k, v in means.items()}
    by_key, cells, draws = _ladder(means)
    (row,) = verdicts.ladder_validity("knn", "m", by_key, lower)
    clean, random_ = cells[0].seed_values()[0], cells[2].seed_values()[0]
    span_se = np.std(draws[0] - draws[2], ddof=1)
    assert row["ceiling"] == pytest.approx(clean) and row["floor"] == pytest.approx(random_)
    assert row["gap_se"] == pytest.approx(abs(clean - random_) / span_se, rel=1e-9)
    assert row["gap_se"] > 10
    assert row["in_order"] and row["verdict"] == "resolves"
    assert row["adjacent_separated"] == row["adjacent_pairs"] == 2
    assert row["rungs"] == "ladder:clean > ladder:noise=0.3 > ladder:random"


def test_a_lower_is_better_ladder_read_as_higher_is_better_is_out_of_order():
    means = {"ladder:clean": 0.3, "ladder:noise=0.3": 0.6, "ladder:random": 0.9}
    by_key, *_ = _ladder(means, seed=1)
    (as_lower,) = verdicts.ladder_validity("ctr", "ctr_logloss", by_key, True)
    (as_higher,) = verdicts.ladder_validity("ctr", "ctr_logloss", by_key, False)
    assert as_lower["verdict"] == "resolves" and as_lower["gap_se"] > 0
    assert as_higher["verdict"] == "out of order" and as_higher["gap_se"] < 0
    assert as_higher["adjacent_separated"] == 0


# ------------------------------------------------------------------ whitening


def _anisotropic(n=400, d=6, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.2])[:, None]
    return rng.normal(size=(n, d)) @ mix + np.arange(1.0, d + 1) * 10  # far from the origin


def test_whitened_train_vectors_have_zero_mean_and_identity_covariance():
    x = _anisotropic()
    white = fit_whitening(x).apply(x).astype(np.float64)
    assert np.abs(white.mean(axis=0)).max() < 1e-4
    assert np.cov(white, rowvar=False) == pytest.approx(np.eye(x.shape[1]), abs=1e-4)
    # new vectors are centred with the train mean, not their own
    shifted = fit_whitening(x).apply(x[:50] + 1.0).astype(np.float64)
    own = fit_whitening(x).apply(x[:50]).astype(np.float64)
    assert np.abs(shifted - own).max() > 0.1


@pytest.mark.parametrize("shrinkage", [0.3, 1.0, 3.0])
def test_shrinkage_adds_a_share_of_the_mean_eigenvalue(shrinkage):
    """The whitened train covariance has eigenvalues s / (s + shrinkage * mean(s)), s the
    train covariance's eigenvalues (numpy's eigvalsh)."""
    x = _anisotropic(seed=1)
    s = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    expected = s / (s + shrinkage * s.mean())
    white = whitening_from(principal_axes(x), None, shrinkage).apply(x).astype(np.float64)
    got = np.sort(np.linalg.eigvalsh(np.cov(white, rowvar=False)))[::-1]
    assert got == pytest.approx(expected, abs=2e-5)
    # the top k directions only: their own mean eigenvalue
    k = 3
    white = whitening_from(principal_axes(x), k, shrinkage).apply(x).astype(np.float64)
    got = np.sort(np.linalg.eigvalsh(np.cov(white, rowvar=False)))[::-1]
    assert got == pytest.approx(s[:k] / (s[:k] + shrinkage * s[:k].mean()), abs=2e-5)


def test_whitening_records_what_was_kept():
    x = _anisotropic(seed=2)
    s = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    w = fit_whitening(x, k=2)
    assert w.k == 2 and w.record["k"] == 2 and w.record["requested_k"] == 2
    assert w.record["n_fit"] == 400 and w.record["dim"] == 6
    assert w.record["variance_kept"] == pytest.approx(s[:2].sum() / s.sum(), rel=1e-9)
    assert w.mean == pytest.approx(x.mean(0), rel=1e-6)


# ------------------------------------------------------------------ normalize


def test_normalize_keeps_a_zero_row_zero_and_scales_the_rest_to_unit_length():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0], [1e-20, 0.0]])
    got = normalize(x)
    assert got.dtype == np.float32
    assert np.array_equal(got[1], [0.0, 0.0])
    for i in (0, 2, 3):
        assert got[i] == pytest.approx(x[i] / math.hypot(*x[i]), abs=1e-7)
    assert np.linalg.norm(got[[0, 2, 3]], axis=1) == pytest.approx(1.0, abs=1e-6)
    assert np.array_equal(x[0], [3.0, 4.0])  # a new array: the input is left alone


# ------------------------------------------------------------------ ctr evidence


def _ctr_data(seed=0, n=240, one_class_head=None):
    rng = np.random.default_rng(seed)
    users = np.array([f"u{u:02d}" for u in rng.integers(0, 25, n)])
    labels = (rng.random((n, 3)) < [0.3, 0.2, 0.1]).astype(np.int8)
    labels[:6] = [[1, 1, 1], [0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1], [0, 0, 0]]
    if one_class_head is not None:
        labels[:, one_class_head] = 0
    data = SimpleNamespace(labels=torch.as_tensor(labels), groups=users,
                           cold=rng.random(n) < 0.3, test=np.arange(40, n))
    predictions = {h: np.clip(rng.random(n - 40) * 0.6 + 0.3 * labels[40:, c], 0.01, 0.99)
                   for h, c in (("ctr", 0), ("detail", 1), ("ctcvr", 2))}
    return data, predictions, labels[40:].astype(float), users[40:]


def _gauc_by_hand(y, p, users):
    per_user, weights = [], []
    for u in np.unique(users):
        at = users == u
        if 0 < y[at].sum() < at.sum():
            per_user.append(roc_auc_score(y[at], p[at]))
            weights.append(at.sum())
    return np.average(per_user, weights=weights)


def test_ctr_evidence_recomputes_each_metric_with_sklearn():
    data, predictions, labels, users = _ctr_data()
    cold = data.cold[data.test]
    found = evidence(data, predictions)
    values = scored(data, predictions)
    expected_names = {f"{prefix}{head}_{m}" for prefix in ("", "cold_")
                      for head in ("ctr", "detail", "ctcvr") for m in ("auc", "gauc", "logloss")}
    assert set(found) == set(values) == expected_names
    for prefix, keep in (("", np.ones(len(users), bool)), ("cold_", cold)):
        for head, column in (("ctr", 0), ("detail", 1), ("ctcvr", 2)):
            y, p, u = labels[keep, column], predictions[head][keep], users[keep]
            auc_ev = found[f"{prefix}{head}_auc"]
            assert auc_ev.kind == "auc" and auc_ev.unit == "user"
            assert np.array_equal(auc_ev.units, u) and np.array_equal(auc_ev.labels, y)
            assert auc_ev.value() == pytest.approx(roc_auc_score(y, p), abs=1e-12)
            assert values[f"{prefix}{head}_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
            gauc_ev = found[f"{prefix}{head}_gauc"]
            assert gauc_ev.kind == "gauc" and np.array_equal(gauc_ev.units, u)
            assert gauc_ev.value() == pytest.approx(_gauc_by_hand(y, p, u), abs=1e-12)
            assert values[f"{prefix}{head}_gauc"] == pytest.approx(_gauc_by_hand(y, p, u),
                                                                   abs=1e-12)
            ll = found[f"{prefix}{head}_logloss"]
            assert ll.kind == "mean" and np.array_equal(ll.units, u)
            assert ll.value() == pytest.approx(log_loss(y, p), abs=1e-12)
            assert values[f"{prefix}{head}_logloss"] == pytest.approx(log_loss(y, p), abs=1e-12)


def test_ctr_metrics_undefined_on_one_class_keep_only_the_log_loss():
    data, predictions, labels, users = _ctr_data(seed=1, one_class_head=2)
    found = evidence(data, predictions)
    values = scored(data, predictions)
    assert "ctcvr_auc" not in found and "ctcvr_gauc" not in found
    assert "ctcvr_auc" not in values and "ctcvr_gauc" not in values
    assert found["ctcvr_logloss"].value() == pytest.approx(
        log_loss(labels[:, 2], predictions["ctcvr"], labels=[0, 1]), abs=1e-12)
    assert values["ctcvr_logloss"] == pytest.approx(found["ctcvr_logloss"].value(), abs=1e-12)
    # no cold rows: no cold_ metric and no cold_ evidence
    data.cold = np.zeros_like(data.cold)
    assert not any(k.startswith("cold_") for k in evidence(data, predictions))
    assert not any(k.startswith("cold_") for k in scored(data, predictions))


def test_ctr_rows_carry_their_evidence_when_predictions_are_known():
    data, predictions, labels, _ = _ctr_data(seed=2)
    values = scored(data, predictions)
    rows = scored_rows(data, values, predictions, seed=0)
    assert {r["metric"] for r in rows} == set(values)
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["ctr_auc"]["evidence"].value() == pytest.approx(
        roc_auc_score(labels[:, 0], predictions["ctr"]), abs=1e-12)
    assert by_metric["ctr_auc"]["seed"] == 0
    assert all(r["evidence"] is None for r in scored_rows(data, values, None))
