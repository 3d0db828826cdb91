"""The linearised bootstrap of bench.scoring.stats against independent computations.

Above ``EXACT_UNITS`` units ``resample`` draws from a Gaussian with the covariance of the
per-unit influence values (module doc of ``bench.scoring.stats``). Here, on tiny examples:

- the influence of a unit is the derivative of the weighted metric in that unit's weight at
  weights 1, taken by central differences of numpy's weighted mean, scikit-learn's
  ``roc_auc_score(sample_weight=...)`` and a per-user scikit-learn GAUC;
- the draws' covariance is that of the multinomial bootstrap of the linear statistic,
  ``sum_u (phi_u - mean phi)^2`` (for a pair of cells, the cross products), from those
  derivatives;
- up to the threshold the draws are the exact bootstrap: a mean of 0/1 values over n units
  drawn with replacement is a multiple of 1/n, a Gaussian draw is not;
- the unit coding shared by the cells is ``np.unique`` + ``np.searchsorted`` of the strings.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bench.scoring import stats

H = 1e-5  # step of the central differences; the metrics are smooth ratios in the weights


def _derivative(statistic, n_units: int) -> np.ndarray:
    """d statistic(w) / d w_u at w = 1, by central differences."""
    out = np.zeros(n_units)
    for u in range(n_units):
        up, down = np.ones(n_units), np.ones(n_units)
        up[u] += H
        down[u] -= H
        out[u] = (statistic(up) - statistic(down)) / (2 * H)
    return out


def _weighted(kind, codes, values, labels):
    """The metric with each observation weighted by its unit's weight (independent code)."""
    if kind == "mean":
        return lambda w: np.average(values, weights=w[codes])
    if kind == "auc":
        return lambda w: roc_auc_score(labels, values, sample_weight=w[codes])

    def gauc(w):  # impression-weighted mean of per-user AUC, users with both classes
        num = den = 0.0
        for u in np.unique(codes):
            mine = codes == u
            if len(set(labels[mine])) == 2:
                num += w[u] * mine.sum() * roc_auc_score(labels[mine], values[mine])
                den += w[u] * mine.sum()
        return num / den
    return gauc


def _seed_mean(kind, codes, per_seed_values, labels):
    parts = [_weighted(kind, codes, v, labels) for v in per_seed_values]
    return lambda w: float(np.mean([p(w) for p in parts]))


def _tiny(kind, n_seeds=2, seed=0):
    """7 users of the 8 in the universe (user 7 has no observation), ties between positives
    and negatives (scores rounded), a user with negatives only; seeds share labels and users
    and differ in scores."""
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(7), [3, 4, 2, 5, 3, 4, 3])
    labels = (rng.random(len(codes)) < 0.4).astype(float)
    labels[codes == 0] = [1, 0, 0]
    labels[codes == 1] = [0, 1, 1, 0]
    labels[codes == 2] = 0  # negatives only: no AUC of its own (GAUC leaves it out)
    per_seed = [np.round(rng.normal(size=len(codes)) + labels, 1) for _ in range(n_seeds)]
    if kind == "mean":
        per_seed = [np.abs(v) for v in per_seed]
    return codes, labels, per_seed


def _evidence(kind, codes, values, labels, names=None):
    names = np.array([f"u{c}" for c in range(8)]) if names is None else names
    if kind == "mean":
        return stats.mean_evidence("user", names[codes], values)
    return stats.Evidence(kind, "user", names[codes], values, labels)


@pytest.mark.parametrize("kind", ["mean", "auc", "gauc"])
def test_influence_is_the_derivative_of_the_seed_mean_metric_in_the_unit_weights(kind):
    codes, labels, per_seed = _tiny(kind)
    seeds = [_evidence(kind, codes, v, labels) for v in per_seed]
    statistic = _seed_mean(kind, codes, per_seed, labels)
    theta, phi = stats._influence(seeds, [codes] * len(seeds), 8)
    assert theta == pytest.approx(statistic(np.ones(8)), abs=1e-12)
    expected = _derivative(statistic, 8)
    assert expected[7] == 0 and np.abs(expected).max() > 0.01
    assert phi == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("one", ["positive", "negative"])
def test_influence_of_an_auc_with_a_single_positive_or_negative(one):
    codes = np.array([0, 0, 1, 1, 2, 2, 3])
    labels = np.array([0, 0, 0, 1, 0, 0, 0], dtype=float)
    values = np.array([0.1, 0.7, 0.3, 0.5, 0.5, 0.9, 0.2])
    if one == "negative":
        labels, values = 1 - labels, -values
    statistic = _weighted("auc", codes, values, labels)
    theta, phi = stats._influence([_evidence("auc", codes, values, labels)], [codes], 4)
    assert theta == pytest.approx(roc_auc_score(labels, values), abs=1e-12)
    assert phi == pytest.approx(_derivative(statistic, 4), abs=1e-8)


def test_influence_of_a_single_observation_mean():
    theta, phi = stats._influence([stats.mean_evidence("q", ["a"], [0.25])],
                                  [np.array([0])], 3)
    assert theta == 0.25 and np.array_equal(phi, np.zeros(3))


@pytest.mark.parametrize("case", ["no positive", "no negative", "gauc of one-class users"])
def test_an_undefined_cell_has_no_influence(case):
    codes = np.array([0, 0, 1, 1, 1])
    labels = np.zeros(5) if case == "no positive" else np.ones(5)
    kind = "gauc" if case.startswith("gauc") else "auc"
    if kind == "gauc":
        labels = np.array([0, 0, 1, 1, 1], dtype=float)  # each user one class only
    values = np.array([0.2, 0.4, 0.1, 0.3, 0.5])
    with np.errstate(all="ignore"):
        theta, phi = stats._influence([_evidence(kind, codes, values, labels)], [codes], 3)
    assert np.isnan(theta) and np.array_equal(phi, np.zeros(3))


def test_auc_seeds_that_differ_only_in_negatives_are_refused_by_the_linear_draws():
    codes, labels, (a, b) = _tiny("auc")
    first = _evidence("auc", codes, a, labels)
    # the same impressions plus one more negative of user 3: positives per user unchanged
    codes2 = np.append(codes, 3)
    second = _evidence("auc", codes2, np.append(b, 0.0), np.append(labels, 0.0))
    with pytest.raises(ValueError, match="different labels"):
        stats._influence([first, second], [codes, codes2], 8)
    # and the other way round: one more positive
    third = _evidence("auc", codes2, np.append(b, 0.0), np.append(labels, 1.0))
    with pytest.raises(ValueError, match="different labels"):
        stats._influence([first, third], [codes, codes2], 8)


def test_linear_draws_have_the_covariance_of_the_multinomial_bootstrap_of_the_influence():
    """Four cells on different users of one universe (so the shared coding matters), one of
    them undefined: the draws of the others have covariance sum_u (phi_u - mean)(psi_u - mean)
    over the universe's units, phi and psi the derivatives by central differences."""
    names = np.array([f"user{c:02d}" for c in range(12)])
    codes, labels, per_seed = _tiny("auc")
    shifted = codes + 4  # users 4..10: overlaps the first cells' 0..6
    mean_values = np.abs(per_seed[0])
    cells = [
        stats.Cell(("auc",), [_evidence("auc", codes, v, labels, names) for v in per_seed]),
        stats.Cell(("mean",), [_evidence("mean", shifted, mean_values, None, names)]),
        stats.Cell(("gauc",), [_evidence("gauc", shifted, v, labels, names)
                               for v in per_seed]),
        stats.Cell(("none",), [_evidence("auc", codes, per_seed[0], np.zeros(len(codes)),
                                         names)]),
    ]
    universe = np.arange(11)  # users 0..10 appear; user 11 is nobody's
    statistics = [_seed_mean("auc", codes, per_seed, labels),
                  _seed_mean("mean", shifted, [mean_values], None),
                  _seed_mean("gauc", shifted, per_seed, labels)]
    phi = np.stack([_derivative(s, len(universe)) for s in statistics], axis=1)
    phi -= phi.mean(axis=0)
    expected = phi.T @ phi
    theta = np.array([s(np.ones(len(universe))) for s in statistics])

    with np.errstate(all="ignore"):
        draws = stats.resample(cells, n_resamples=200_000, exact_units=0)
    assert draws.shape == (4, 200_000)
    assert np.isnan(draws[3]).all() and np.isfinite(draws[:3]).all()
    assert [c._n_units for c in cells] == [7, 7, 7, 7]
    se = np.sqrt(np.diag(expected))
    assert draws[:3].mean(axis=1) == pytest.approx(theta, abs=0.02 * se.min())
    found = np.cov(draws[:3])
    assert np.sqrt(np.diag(found)) == pytest.approx(se, rel=0.01)
    correlation = expected / np.outer(se, se)
    assert abs(correlation[0, 1]) > 0.2 and abs(correlation[1, 2]) > 0.2  # really paired
    assert found / np.outer(se, se) == pytest.approx(correlation, abs=0.01)


def test_distinct_finds_each_distinct_array_once():
    a = np.array(["x", "y", "x"])
    same = a.copy()  # equal content, another object
    other = np.array(["x", "y", "z"])  # same shape, other content
    longer = np.array(["x", "y", "x", "w"])
    found, index = stats._distinct([a, same, other, longer, a, other.copy()])
    assert index == [0, 0, 1, 2, 0, 1]
    assert len(found) == 3 and found[0] is a and found[1] is other and found[2] is longer


def test_units_are_coded_as_in_the_sorted_union_of_every_cells_units():
    names = [np.array(["u3", "u1", "u2", "u1"]), np.array(["u3", "u9", "u2", "u0"]),
             np.array(["u5", "u1"]), np.array(["u3", "u1", "u2", "u1"])]
    e = [stats.mean_evidence("user", n, np.arange(len(n), dtype=float)) for n in names]
    cells = [stats.Cell(("a",), [e[0], e[1]]), stats.Cell(("b",), [e[2], e[3], e[0]]),
             stats.Cell(("c",), [e[1]])]
    universe, codes = stats._encode(cells)
    expected = np.unique(np.concatenate(names))
    assert universe.tolist() == expected.tolist()
    assert np.array_equal(stats._universe(cells), expected)
    for cell, cell_codes in zip(cells, codes):
        assert len(cell_codes) == len(cell.seeds)
        for evidence, c in zip(cell.seeds, cell_codes):
            assert c.tolist() == np.searchsorted(expected, evidence.units).tolist()


def _binary_mean_cell(n_units: int) -> stats.Cell:
    values = (np.arange(n_units) % 3 == 0).astype(float)
    return stats.Cell(("x",), [stats.mean_evidence("q", np.arange(n_units), values)])


def _exact(draws: np.ndarray, n_units: int) -> bool:
    """Every draw a mean of n 0/1 values: a multiple of 1/n."""
    scaled = draws * n_units
    return bool(np.allclose(scaled, np.round(scaled), rtol=0, atol=1e-6))


@pytest.mark.parametrize("n_units, exact", [(12, True), (13, False)])
def test_the_exact_bootstrap_runs_up_to_the_threshold_inclusive(n_units, exact, monkeypatch):
    draws = stats.resample([_binary_mean_cell(n_units)], n_resamples=200, exact_units=12)
    assert _exact(draws[0], n_units) is exact
    monkeypatch.setattr(stats, "EXACT_UNITS", 12)  # the default threshold is read at call time
    assert _exact(stats.resample([_binary_mean_cell(n_units)], n_resamples=200)[0],
                  n_units) is exact


def test_the_exact_bootstrap_of_4500_units_runs_in_batches():
    """500 resamples of 4,500 units go to scipy in batches of 2,000,000 // 4,500 = 444: an
    integer batch size (scipy refuses 444.4). The bootstrap standard error of a mean of one
    observation per unit is sd(values) / sqrt(n) (ddof 0), to the resampling noise of 500."""
    cell = _binary_mean_cell(4500)
    draws = stats.resample([cell], n_resamples=500)
    assert _exact(draws[0], 4500)
    values = cell.seeds[0].values
    assert np.std(draws[0], ddof=1) == pytest.approx(values.std() / np.sqrt(4500), rel=0.1)
