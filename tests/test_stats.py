"""bench.scoring.stats: bootstrap intervals over units, seed spread, paired tests (known answers)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bench.scoring import stats
from bench.scoring.metrics import auc, gauc, logloss


def test_resampled_auc_equals_sklearn_with_sample_weights_and_ties():
    rng = np.random.default_rng(0)
    n = 3000
    users = rng.integers(0, 150, n)
    labels = (rng.random(n) < 0.2).astype(int)
    scores = np.round(rng.normal(size=n) + 0.6 * labels, 1)  # rounding makes many ties
    evidence = stats.Evidence("auc", "user", users, scores, labels)
    assert evidence.value() == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    universe = np.unique(users.astype(str))
    codes = np.searchsorted(universe, users.astype(str))
    counts = rng.integers(0, 3, (4, len(universe))).astype(float)
    expected = [roc_auc_score(labels, scores, sample_weight=counts[i, codes]) for i in range(4)]
    assert stats._Statistic([evidence], universe)(counts) == pytest.approx(expected, abs=1e-12)


def test_full_sample_values_equal_the_metric_functions():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 40, 800)
    labels = (rng.random(800) < 0.3).astype(int)
    probs = np.clip(rng.random(800) * 0.5 + 0.3 * labels, 0.01, 0.99)
    assert stats.Evidence("gauc", "user", users, probs, labels).value() == pytest.approx(
        gauc(labels, probs, users))
    per_impression = -(labels * np.log(probs) + (1 - labels) * np.log(1 - probs))
    assert stats.mean_evidence("user", users, per_impression).value() == pytest.approx(
        logloss(labels, probs))
    assert stats.Evidence("auc", "user", users, probs, labels).value() == pytest.approx(
        auc(labels, probs))


def test_intervals_cover_the_true_value_at_about_the_nominal_rate():
    """Per-query hits ~ Bernoulli(0.3) with a per-query rate drawn around it (so queries
    differ): the 95% interval of the mean should hold 0.3 in about 95% of 300 replications."""
    rng = np.random.default_rng(2)
    covered = 0
    replications = 300
    for _ in range(replications):
        rates = rng.beta(3, 7, size=200)  # mean 0.3
        hits = rng.random((200, 10)) < rates[:, None]
        cell = stats.Cell(("x",), [stats.mean_evidence("query", np.arange(200),
                                                       hits.mean(1))])
        draws = stats.resample([cell], n_resamples=300, seed=int(rng.integers(1 << 30)))
        iv = stats.interval(cell, draws[0])
        covered += iv.low <= 0.3 <= iv.high
    assert 0.91 <= covered / replications <= 0.98


def test_clustered_auc_intervals_cover_at_about_the_nominal_rate():
    """Impressions of a user share a user effect: resampling users (not impressions) keeps
    the 95% interval honest. The true AUC is estimated from one very large sample."""
    rng = np.random.default_rng(3)

    def sample(n_users: int, per_user: int = 20):
        users = np.repeat(np.arange(n_users), per_user)
        effect = rng.normal(0, 1.0, n_users)[users]
        labels = (rng.random(len(users)) < 0.25).astype(int)
        scores = 0.5 * labels + effect + rng.normal(0, 1, len(users))
        return users, scores, labels

    truth = auc(*sample(100_000)[:0:-1])
    covered, replications = 0, 120
    for _ in range(replications):
        users, scores, labels = sample(150)
        cell = stats.Cell(("x",), [stats.Evidence("auc", "user", users, scores, labels)])
        draws = stats.resample([cell], n_resamples=300, seed=int(rng.integers(1 << 30)))
        iv = stats.interval(cell, draws[0])
        covered += iv.low <= truth <= iv.high
    assert 0.88 <= covered / replications <= 0.99


def test_paired_test_finds_a_planted_difference_and_not_a_null_one():
    rng = np.random.default_rng(4)
    queries = np.arange(400)
    rates = rng.beta(2, 3, 400)
    base = (rng.random((400, 10)) < rates[:, None]).mean(1)
    better = np.clip(base + 0.04 + rng.normal(0, 0.05, 400), 0, 1)  # planted: +0.04
    a = stats.Cell(("a",), [stats.mean_evidence("query", queries, better)])
    ref = stats.Cell(("ref",), [stats.mean_evidence("query", queries, base)])
    draws = stats.resample([a, ref], n_resamples=500)
    result = stats.compare(a, draws[0], ref, draws[1])
    assert result.verdict == "better" and result.p_value < 1e-3
    assert result.low < 0.04 < result.high
    assert result.test == "paired bootstrap over queries, two-sided z-test at 95%"
    # lower is better flips the verdict
    assert stats.compare(a, draws[0], ref, draws[1], lower_is_better=True).verdict == "worse"

    false_alarms = 0
    for _ in range(100):  # null: two measurements of the same per-query rates
        x = (rng.random((400, 10)) < rates[:, None]).mean(1)
        y = (rng.random((400, 10)) < rates[:, None]).mean(1)
        cx = stats.Cell(("x",), [stats.mean_evidence("query", queries, x)])
        cy = stats.Cell(("y",), [stats.mean_evidence("query", queries, y)])
        d = stats.resample([cx, cy], n_resamples=200, seed=int(rng.integers(1 << 30)))
        false_alarms += stats.compare(cx, d[0], cy, d[1]).verdict != "same"
    assert false_alarms <= 10


def test_seed_spread_widens_the_interval_and_pairs_seeds():
    queries = np.arange(300)
    rng = np.random.default_rng(5)
    base = rng.random(300)
    one = stats.Cell(("a",), [stats.mean_evidence("query", queries, base)])
    three = stats.Cell(("a",), [stats.mean_evidence("query", queries, base + shift)
                                for shift in (-0.05, 0.0, 0.05)])
    d = stats.resample([one, three], n_resamples=300)
    narrow, wide = stats.interval(one, d[0]), stats.interval(three, d[1])
    assert narrow.n_seeds == 1 and wide.n_seeds == 3
    assert wide.value == pytest.approx(narrow.value)
    assert wide.se ** 2 == pytest.approx(narrow.se ** 2 + 0.05 ** 2 / 3, rel=0.05)


def test_evidence_round_trips_through_arrays_and_refuses_bad_input():
    e = stats.Evidence("auc", "user", ["u1", "u2", "u1"], [0.1, 0.5, 0.9], [0, 1, 1])
    back = stats.Evidence.from_arrays(e.to_arrays("m/"), "m/")
    assert back.kind == "auc" and back.unit == "user" and back.value() == e.value()
    with pytest.raises(ValueError, match="kind"):
        stats.Evidence("median", "query", [1], [1.0])
    with pytest.raises(ValueError, match="label"):
        stats.Evidence("auc", "user", [1, 2], [0.1, 0.2])


def _clustered(rng, n_users: int, per_user: int = 20, lift: float = 0.5):
    users = np.repeat(np.arange(n_users), per_user)
    effect = rng.normal(0, 1.0, n_users)[users]
    labels = (rng.random(len(users)) < 0.25).astype(int)
    scores = lift * labels + effect + rng.normal(0, 1, len(users))
    return users, scores, labels


def test_a_log_of_20000_users_gets_auc_intervals():
    """A real log's size: the exact bootstrap refused more than 5,000 users for AUC; above
    ``EXACT_UNITS`` the linearised draws take over, without a [U, U] matrix."""
    rng = np.random.default_rng(6)
    users, scores, labels = _clustered(rng, 20_000, per_user=3)
    cells = [stats.Cell((kind,), [stats.Evidence(kind, "user", users, scores, labels)])
             for kind in ("auc", "gauc")]
    cells.append(stats.Cell(("mean",), [stats.mean_evidence("user", users, scores)]))
    draws = stats.resample(cells, n_resamples=200)
    assert draws.shape == (3, 200) and np.isfinite(draws).all()
    iv = stats.interval(cells[0], draws[0])
    assert iv.n_units == 20_000 and 0.001 < iv.se < 0.01
    assert iv.value == pytest.approx(auc(labels, scores))


@pytest.mark.parametrize("kind", ["auc", "gauc", "mean"])
def test_linearised_draws_match_the_exact_bootstrap(kind):
    """Same standard errors (of a cell, and of a paired difference) as the exact bootstrap,
    within the resampling noise of 2,000 draws, on a universe both can handle."""
    rng = np.random.default_rng(7)
    users, scores, labels = _clustered(rng, 300)
    other = scores + rng.normal(0, 0.8, len(scores))

    def cell(name, values):
        if kind == "mean":
            return stats.Cell((name,), [stats.mean_evidence("user", users, values)])
        return stats.Cell((name,), [stats.Evidence(kind, "user", users, values, labels)])

    cells = [cell("a", scores), cell("b", other)]
    exact = stats.resample(cells, n_resamples=2000)
    linear = stats.resample(cells, n_resamples=2000, exact_units=0)
    assert linear[:, 0] != pytest.approx(exact[:, 0])  # really the other method
    for e, lin in ((exact[0], linear[0]), (exact[1], linear[1]),
                   (exact[0] - exact[1], linear[0] - linear[1])):
        assert np.nanstd(lin) == pytest.approx(np.nanstd(e), rel=0.1)
    assert stats.interval(cells[0], linear[0]).value == pytest.approx(
        stats.interval(cells[0], exact[0]).value)


def test_linearised_clustered_auc_intervals_cover_at_about_the_nominal_rate():
    """The coverage simulation of the exact bootstrap, on the linearised draws."""
    rng = np.random.default_rng(3)
    truth = auc(*_clustered(rng, 100_000)[:0:-1])
    covered, replications = 0, 200
    for _ in range(replications):
        users, scores, labels = _clustered(rng, 150)
        cell = stats.Cell(("x",), [stats.Evidence("auc", "user", users, scores, labels)])
        draws = stats.resample([cell], n_resamples=300, seed=int(rng.integers(1 << 30)),
                               exact_units=0)
        iv = stats.interval(cell, draws[0])
        covered += iv.low <= truth <= iv.high
    assert 0.9 <= covered / replications <= 0.99
