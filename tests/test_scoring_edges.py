"""Edges of the scoring core that ``make mutation`` found untested: input refusals, boundaries
(one query, k = C, n = 2), approximate-index gaps, several seeds, zero standard errors. Each
expected value is computed by hand, with numpy or with scikit-learn."""

from __future__ import annotations

import math
from types import SimpleNamespace

import faiss
import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from bench.scoring import metrics, stats, verdicts
from bench.tasks.ctr.train import evidence, scored
from bench.vectors.whitening import candidate_name, choose, fit_whitening, label_groups

# ------------------------------------------------------------------ metric refusals


@pytest.mark.parametrize("labels", [np.zeros((2, 3)), np.zeros(0)])
def test_binary_labels_must_be_a_non_empty_vector(labels):
    with pytest.raises(ValueError, match="labels: expected a non-empty 1-D array"):
        metrics.auc(labels, np.zeros(2))


def test_one_impression_is_a_valid_input_for_the_log_loss():
    assert metrics.logloss([1], [0.25]) == pytest.approx(-math.log(0.25))


def test_object_labels_refuse_none_and_nan_but_keep_ordinary_floats():
    x = np.random.default_rng(0).normal(size=(6, 2))
    ok = np.array([1.5, 2.5, 1.5, "a", "a", 2.5], dtype=object)
    assert 0 <= metrics.knn_consistency(x, ok, k=2) <= 1
    for bad in (None, float("nan")):
        labels = ok.copy()
        labels[2] = bad
        with pytest.raises(ValueError, match="1 missing values"):
            metrics.knn_consistency(x, labels, k=2)


@pytest.mark.parametrize("eps, refused", [(0.0, True), (0.5, True), (0.7, True), (0.4, False)])
def test_logloss_eps_must_lie_strictly_between_0_and_half(eps, refused):
    if refused:
        with pytest.raises(ValueError, match="eps must be in"):
            metrics.logloss([0, 1], [0.3, 0.6], eps=eps)
    else:
        assert metrics.logloss([0, 1], [0.3, 0.6], eps=eps) == pytest.approx(
            -(math.log(0.6) + math.log(0.6)) / 2)


@pytest.mark.parametrize("probs", [[0.5, 1.2], [-0.1, 0.5]])
def test_logloss_refuses_a_single_probability_outside_0_1(probs):
    with pytest.raises(ValueError, match=r"probs: expected values in \[0, 1\]"):
        metrics.logloss([0, 1], probs)


def test_knn_chance_of_two_items():
    # chance = sum_c p_c (n_c - 1) / (n - 1): 0 for two labels, 1 for one
    assert metrics.knn_chance(["a", "b"]) == 0.0
    assert metrics.knn_chance(["a", "a"]) == 1.0
    with pytest.raises(ValueError, match="need at least 2 items"):
        metrics.knn_chance(["a"])


@pytest.mark.parametrize("ns", [(), (0, 5)])
def test_recall_needs_positive_ns(ns):
    x = np.eye(3)
    with pytest.raises(ValueError, match="ns: expected positive integers"):
        metrics.recall_at_n(x, [0, 1, 2], x, [0, 1, 2], ns=ns)


def test_skip_missing_keeps_a_single_present_query_and_refuses_none():
    g = np.eye(3)
    got = metrics.recall_at_n(g[:2], ["x", "b"], g, ["a", "b", "c"], ns=(1,), skip_missing=True)
    assert got == {1: 1.0}
    with pytest.raises(ValueError, match="no query has its identity"):
        metrics.recall_at_n(g[:1], ["x"], g, ["a", "b", "c"], ns=(1,), skip_missing=True)


def test_topk_accuracy_boundaries_and_refusals():
    scores = np.array([[0.1, 0.7, 0.2]])
    assert metrics.topk_accuracy(scores, np.array([0]), k=3) == 1.0  # k = C is allowed
    assert metrics.topk_accuracy(scores, np.array([0]), k=2) == 0.0  # one sample is enough
    with pytest.raises(ValueError, match="scores: expected a numeric 2-D array"):
        metrics.topk_accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int), 1)
    with pytest.raises(ValueError, match="labels: expected 1 integer labels"):
        metrics.topk_accuracy(scores, np.array([0.0]), 1)
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 3\)"):
        metrics.topk_accuracy(np.r_[scores, scores], np.array([-1, 0]), 1)
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 3\)"):
        metrics.topk_accuracy(np.r_[scores, scores], np.array([0, 3]), 1)


# ------------------------------------------------------------------ gaps of approximate indexes


def _two_cell_index():
    """Gallery: two items near the origin (ids a, b), four far away (id z); an IVF index of
    two cells probing one, so a query at the origin gets two hits and two empty slots (-1)."""
    gallery = np.array([[0, 0], [0.1, 0], [50, 50], [50.1, 50], [50, 50.1], [50.1, 50.1]],
                       dtype=np.float32)
    ids = np.array(["a", "b", "z", "z", "z", "z"])
    quantizer = faiss.IndexFlatL2(2)
    index = faiss.IndexIVFFlat(quantizer, 2, 2)
    index.cp.min_points_per_centroid = 1
    index.train(gallery)
    index.add(gallery)
    index.nprobe = 1
    return gallery, ids, index


def test_empty_slots_of_an_approximate_index_never_match_the_last_gallery_item():
    gallery, ids, index = _two_cell_index()
    query = np.zeros((1, 2), dtype=np.float32)
    _, found = index.search(query, 4)
    assert (found[0, 2:] == -1).all()  # the premise: two empty slots
    # the query's identity z lives only in the unprobed cell: no hit, AP@R = 0
    hits = metrics.recall_hits(query, ["z"], gallery, ids, ns=(1, 4), index=index)
    assert hits.tolist() == [[False, False]]
    ap = metrics.average_precision_at_r(query, ["z"], gallery, ids, index=index)
    assert ap.tolist() == [0.0]


# ------------------------------------------------------------------ evidence and statistics


def test_evidence_refuses_mismatched_units_and_round_trips_through_json():
    with pytest.raises(ValueError, match="3 units for"):
        stats.Evidence("mean", "query", ["a", "b", "c"], [0.1, 0.2])
    with pytest.raises(ValueError, match="units for"):
        stats.Evidence("mean", "query", np.array([["a", "b"]]), np.array([[0.1, 0.2]]))
    for item in (stats.mean_evidence("query", ["a", "b"], [0.1, 0.2]),
                 stats.Evidence("auc", "user", ["a", "b"], [0.1, 0.2], [0, 1])):
        data = item.to_json()
        assert ("labels" in data) == (item.labels is not None)
        back = stats.Evidence.from_json(data)
        assert back.value() == item.value() and back.kind == item.kind


def _seeds(kind, n_seeds=3, n=300, seed=0):
    rng = np.random.default_rng(seed)
    units = rng.integers(0, 30, n).astype(str)
    labels = (rng.random(n) < 0.4).astype(float)
    labels[:2] = [0, 1]
    out = []
    for _ in range(n_seeds):
        values = rng.random(n) + 0.5 * labels * rng.random()
        out.append(stats.Evidence(kind, "user", units, values, None if kind == "mean" else
                                  labels))
    return units, labels, out


def _gauc_by_hand(y, p, users):
    parts = [(roc_auc_score(y[users == u], p[users == u]), (users == u).sum())
             for u in np.unique(users) if 0 < y[users == u].sum() < (users == u).sum()]
    return np.average([a for a, _ in parts], weights=[w for _, w in parts])


@pytest.mark.parametrize("kind", ["mean", "auc", "gauc"])
def test_resample_statistic_on_the_full_sample_is_the_seed_mean(kind):
    """Every unit drawn once: the statistic is the mean over seeds of each seed's metric
    (seeds share the observations), computed here by numpy and scikit-learn."""
    units, labels, seeds = _seeds(kind)
    per_seed = {"mean": lambda e: e.values.mean(),
                "auc": lambda e: roc_auc_score(labels, e.values),
                "gauc": lambda e: _gauc_by_hand(labels, e.values, units)}[kind]
    universe = np.unique(units)
    statistic = stats._Statistic(seeds, universe)
    got = statistic(np.ones((1, len(universe))))
    assert got[0] == pytest.approx(np.mean([per_seed(e) for e in seeds]), abs=1e-12)
    # a unit drawn twice weighs twice: the same as duplicating its observations
    counts = np.ones((1, len(universe)))
    counts[0, 0] = 2
    twice = np.concatenate([np.arange(len(units)), np.flatnonzero(units == universe[0])])
    if kind == "mean":
        expected = np.mean([e.values[twice].mean() for e in seeds])
    elif kind == "auc":
        expected = np.mean([roc_auc_score(labels[twice], e.values[twice]) for e in seeds])
    else:  # GAUC: the unit's AUC counted with twice its impressions
        expected = []
        for e in seeds:
            parts = [(roc_auc_score(labels[units == u], e.values[units == u]),
                      (units == u).sum() * (2 if u == universe[0] else 1))
                     for u in universe if 0 < labels[units == u].sum() < (units == u).sum()]
            expected.append(np.average([a for a, _ in parts], weights=[w for _, w in parts]))
        expected = np.mean(expected)
    assert statistic(counts)[0] == pytest.approx(expected, abs=1e-12)


def test_auc_seeds_scored_on_different_labels_are_refused():
    units, labels, seeds = _seeds("auc", n_seeds=2)
    other = stats.Evidence("auc", "user", units, seeds[1].values, 1 - labels)
    with pytest.raises(ValueError, match="different labels"):
        stats._Statistic([seeds[0], other], np.unique(units))
    # the same positives, one more negative: still different labels
    extra = stats.Evidence("auc", "user", np.r_[units, units[:1]], np.r_[seeds[1].values, 0.5],
                           np.r_[labels, 0.0])
    with pytest.raises(ValueError, match="different labels"):
        stats._Statistic([seeds[0], extra], np.unique(units))


def test_auc_pair_matrix_limit_counts_units(monkeypatch):
    monkeypatch.setattr(stats, "PAIR_MATRIX_UNITS", 3)
    make = lambda n: stats.Evidence("auc", "user", np.arange(n), np.arange(n), np.arange(n) % 2)  # noqa: E731
    got = stats._Statistic([make(3)], np.arange(3).astype(str))(np.ones((1, 3)))[0]
    assert got == roc_auc_score(np.arange(3) % 2, np.arange(3))  # 3 units: allowed
    with pytest.raises(ValueError, match="at most 3 units"):
        stats._Statistic([make(4)], np.arange(4).astype(str))


def test_units_outside_the_universe_are_refused():
    assert stats._codes(np.array(["a", "a"]), np.array(["a"])).tolist() == [0, 0]
    for units in (["z"], ["0"], ["b", "c"]):
        with pytest.raises(ValueError, match="not in the shared unit universe"):
            stats._codes(np.array(units), np.array(["a", "b"]))


def test_a_zero_standard_error_gives_p_one_for_no_difference_and_zero_otherwise():
    flat, high = np.full(20, 0.5), np.full(20, 0.75)  # exact in binary: differences exactly 0
    same = stats.compare(_cell([0.5]), flat, _cell([0.5]), flat)
    assert (same.se, same.p_value, same.verdict) == (0.0, 1.0, "same")
    up = stats.compare(_cell([0.6]), high, _cell([0.5]), flat)
    assert (up.se, up.p_value, up.verdict) == (0.0, 0.0, "better")
    assert stats.compare(_cell([0.6]), high, _cell([0.5]), flat,
                         lower_is_better=True).verdict == "worse"


def _cell(seed_means, n=20):
    return stats.Cell(("x",), [stats.mean_evidence("query", np.arange(n), np.r_[
        np.zeros(n - round(m * n)), np.ones(round(m * n))]) for m in seed_means])


@pytest.mark.parametrize("finite", [0, 1, 2, 5])
def test_undefined_resamples_are_left_out_of_the_bootstrap_part(finite):
    """A resample where the metric is undefined (NaN) is left out; with fewer than two
    defined ones the bootstrap part is unknown and counted as 0."""
    draws = np.full(10, np.nan)
    draws[:finite] = np.linspace(0.4, 0.6, finite)
    boot = np.std(draws[:finite], ddof=1) if finite > 1 else 0.0
    iv = stats.interval(_cell([0.5]), draws)
    assert iv.se == pytest.approx(boot, abs=1e-15)
    test = stats.compare(_cell([0.5]), draws, _cell([0.5]), np.zeros(10))
    assert test.se == pytest.approx(boot, abs=1e-15)


def test_seed_text_names_the_larger_seed_count():
    three, two = _cell([0.5, 0.6, 0.55]), _cell([0.4, 0.45])
    flat = np.zeros(10)
    assert "+ spread of 3 seeds" in stats.compare(two, flat, three, flat).test
    assert "+ spread of 3 seeds" in stats.compare(three, flat, two, flat).test
    assert "seeds" not in stats.compare(_cell([0.5]), flat, _cell([0.4]), flat).test
    one = _cell([0.5])  # one seed against three: the three seeds' spread still counts
    assert "+ spread of 3 seeds" in stats.compare(one, flat, three, flat).test
    assert "+ spread of 3 seeds" in stats.compare(three, flat, one, flat).test
    # unpaired: each side's seed variance over its own count (numpy by hand)
    se = math.sqrt(np.var([0.4, 0.45], ddof=1) / 2 + np.var([0.5, 0.6, 0.55], ddof=1) / 3)
    got = stats.compare(two, flat, three, flat)
    assert got.se == pytest.approx(se, rel=1e-9)
    assert got.diff == pytest.approx(0.425 - 0.55)
    assert got.p_value == pytest.approx(2 * scipy.stats.norm.sf(0.125 / se))


# ------------------------------------------------------------------ ladder edges


def _rungs(levels, n_seeds=1, spread=0.02):
    rng = np.random.default_rng(0)
    units = np.arange(300)
    cells = []
    for name, mean in levels.items():
        seeds = [stats.mean_evidence("query", units, rng.normal(mean + spread * s, 0.05, 300))
                 for s in range(n_seeds)]
        cells.append(stats.Cell((name, "raw"), seeds))
    draws = stats.resample(cells, n_resamples=200)
    return {c.key: (c, d) for c, d in zip(cells, draws)}, cells


def test_rungs_are_ordered_by_noise_level_not_by_name():
    # by name "noise=10" would come before "noise=2"
    by_key, _ = _rungs({"ladder:random": 0.1, "ladder:noise=10": 0.3,
                        "ladder:noise=2": 0.6, "ladder:clean": 0.9})
    (row,) = verdicts.ladder_validity("knn", "m", by_key, False)
    assert row["rungs"] == "ladder:clean > ladder:noise=2 > ladder:noise=10 > ladder:random"
    assert row["verdict"] == "resolves" and row["adjacent_pairs"] == 3


def test_a_two_rung_ladder_with_seeds_uses_the_seed_means():
    by_key, cells = _rungs({"ladder:clean": 0.8, "ladder:random": 0.2}, n_seeds=3, spread=0.05)
    (row,) = verdicts.ladder_validity("knn", "m", by_key, False)
    assert row["adjacent_pairs"] == 1 and row["verdict"] == "resolves"
    assert row["ceiling"] == pytest.approx(np.mean([e.values.mean() for e in cells[0].seeds]))
    assert row["floor"] == pytest.approx(np.mean([e.values.mean() for e in cells[1].seeds]))
    # no ceiling and floor, no row
    partial = {k: v for k, v in by_key.items() if k[0] == "ladder:clean"}
    assert verdicts.ladder_validity("knn", "m", partial, False) == []


def test_a_noiseless_ladder_has_an_infinite_gap():
    units = np.arange(50)
    cells = [stats.Cell((name, "raw"), [stats.mean_evidence("query", units, np.full(50, v))])
             for name, v in (("ladder:clean", 0.75), ("ladder:random", 0.25))]
    by_key = {c.key: (c, np.full(20, c.seeds[0].values[0])) for c in cells}
    (row,) = verdicts.ladder_validity("knn", "m", by_key, False)
    assert row["gap_se"] == math.inf and row["verdict"] == "resolves"


def test_compute_without_references_uses_random(tmp_path):
    units = np.array([f"q{i}" for i in range(100)])
    rng = np.random.default_rng(0)
    for name, rate in (("random", 0.2), ("pixels", 0.5)):
        verdicts.save_evidence(tmp_path, "knn", name, "raw", 0, {"m": stats.mean_evidence(
            "query", units, (rng.random(100) < rate).astype(float))})
    table, _ = verdicts.compute(tmp_path, None, n_resamples=50)
    assert table.set_index("extractor").loc["pixels", "reference"] == "random"


# ------------------------------------------------------------------ ctr evidence edges


def _ctr(labels, users, predictions, cold=None, test=None):
    n = len(labels)
    return SimpleNamespace(labels=torch.as_tensor(np.asarray(labels, dtype=np.int8)),
                           groups=np.asarray(users), test=np.arange(n) if test is None else test,
                           cold=np.zeros(n, bool) if cold is None else cold), predictions


def test_ctr_auc_needs_both_classes_and_one_positive_is_enough():
    y = np.array([[1, 1, 1], [0, 1, 0], [0, 1, 0], [0, 1, 0]])  # detail: all clicks
    users = np.array(["u1", "u1", "u2", "u2"])
    p = {h: np.array([0.9, 0.2, 0.4, 0.1]) for h in ("ctr", "detail", "ctcvr")}
    data, p = _ctr(y, users, p)
    found = evidence(data, p)
    assert {"ctr_auc", "ctcvr_auc", "ctr_gauc"} <= set(found)  # a single positive
    assert "detail_auc" not in found and "detail_gauc" not in found  # no negative
    assert found["ctr_auc"].value() == roc_auc_score(y[:, 0], p["ctr"]) == 1.0
    assert set(scored(data, p)) - {"ctr_gauc", "ctcvr_gauc"} == set(found) - {
        "ctr_gauc", "ctcvr_gauc"}


def test_ctr_log_loss_evidence_clips_certain_mistakes_to_minus_log_eps():
    y = np.array([[0, 0, 0], [1, 1, 1]])
    p = {h: np.array([1.0, 0.0]) for h in ("ctr", "detail", "ctcvr")}  # both wrong, certain
    data, p = _ctr(y, ["u1", "u2"], p)
    found = evidence(data, p)
    assert found["ctr_logloss"].values == pytest.approx([-math.log(1e-7)] * 2, rel=1e-6)
    assert scored(data, p)["ctr_logloss"] == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_ctr_scored_uses_the_rows_it_is_given():
    rng = np.random.default_rng(4)
    y = (rng.random((60, 3)) < 0.4).astype(int)
    y[:4, :] = [[0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1]]
    users = np.array([f"u{i % 7}" for i in range(60)])
    data, _ = _ctr(y, users, None, test=np.arange(30, 60))
    rows = np.arange(0, 30)
    p = {h: rng.random(30) for h in ("ctr", "detail", "ctcvr")}
    got = scored(data, p, rows)
    assert got["ctr_auc"] == pytest.approx(roc_auc_score(y[rows, 0], p["ctr"]), abs=1e-12)
    assert evidence(data, p, rows)["ctr_auc"].value() == pytest.approx(got["ctr_auc"])
    one = scored(data, {h: v[:1] for h, v in p.items()}, rows[:1])  # one impression
    assert one == {f"{h}_logloss": pytest.approx(-math.log(1 - p[h][0])) for h in
                   ("ctr", "detail", "ctcvr")}


# ------------------------------------------------------------------ whitening edges


def test_whitening_k_of_one_and_refusals():
    x = np.random.default_rng(0).normal(size=(20, 4))
    assert fit_whitening(x, k=1).k == 1
    with pytest.raises(ValueError, match="at least 1"):
        fit_whitening(x, k=0)
    with pytest.raises(ValueError, match="at least 2 train vectors"):
        fit_whitening(x[:1])
    with pytest.raises(ValueError, match="at least 2 train vectors"):
        fit_whitening(x[:, 0])
    assert fit_whitening(x[:2]).k == 1  # two vectors: one direction


def test_directions_under_a_millionth_of_the_top_variance_are_dropped():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 3)) * np.array([10.0, 1.0, 3e-3])  # variances 100, 1, 9e-6
    w = fit_whitening(x)
    assert w.k == 2  # 9e-6 / 100 < 1e-6: dropped; 1 / 100: kept
    s = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    assert w.record["variance_kept"] == pytest.approx(s[:2].sum() / s.sum(), rel=1e-9)


def test_constant_vectors_keep_no_direction():
    w = fit_whitening(np.ones((10, 3)))
    assert w.k == 0 and w.record["variance_kept"] == 0.0


def test_label_groups_need_three_labelled_rows_and_two_values():
    groups = label_groups({"two_rows": np.array(["a", "b", None, None]),
                           "three_rows": np.array(["a", "b", "a", None]),
                           "one_value": np.array(["a", "a", "a", "a"])})
    assert len(groups) == 1
    rows, columns = groups[0]
    assert rows.tolist() == [0, 1, 2] and [c.tolist() for c in columns] == [["a", "b", "a"]]


def test_choose_without_labels_keeps_at_most_the_dimension():
    x = np.random.default_rng(2).normal(size=(40, 6))
    assert choose(x, {}) == ((6, 0.0), {})
    assert choose(np.random.default_rng(2).normal(size=(40, 50)), {}) == ((32, 0.0), {})


def test_choose_on_few_labelled_rows_uses_all_other_rows_as_neighbours():
    """Eight labelled rows: each row's leave-one-out neighbours are the seven others
    (scikit-learn's exact search on the whitened rows)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 3))
    labels = np.array(["a", "a", "a", "b", "b", "b", "a", "b"], dtype=object)
    (k, shrinkage), scores = choose(x, {"c": labels}, (0.0,), [2, 3])
    for kk in (2, 3):
        w = fit_whitening(x, kk).apply(x)
        idx = NearestNeighbors(n_neighbors=8).fit(w).kneighbors(w)[1][:, 1:]
        expected = np.mean(labels[idx] == labels[:, None])
        assert scores[candidate_name(kk, 0.0)] == pytest.approx(expected, abs=1e-12)


def test_choose_breaks_ties_towards_the_smaller_k_and_shrinkage():
    rng = np.random.default_rng(4)
    labels = np.repeat(["a", "b"], 20).astype(object)
    x = np.concatenate([rng.normal(0, 0.1, (20, 3)), rng.normal(100, 0.1, (20, 3))])
    chosen, scores = choose(x, {"c": labels}, (0.0, 1.0), [1, 2, 3])
    best = [(k, s) for k in (1, 2, 3) for s in (0.0, 1.0) if scores[candidate_name(k, s)] == 1.0]
    assert len(best) >= 3  # several candidates separate the two clusters perfectly
    assert chosen == min(best) == (1, 0.0)


def test_on_near_constant_vectors_a_variance_under_eps_squared_counts_as_zero():
    """Below eps the threshold stops being relative: with a top variance of 1e-8 a direction
    of 1e-13 is noise (under 1e-12) and dropped, while one of 1e-8 is kept."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2000, 3)) * np.array([1e-4, 1e-4, 3e-7])
    s = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    assert s[1] > 1e-12 > s[2] > 1e-6 * s[0]  # the premise: only the absolute floor drops it
    assert fit_whitening(x).k == 2
