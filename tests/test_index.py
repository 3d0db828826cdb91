"""bench.search.index against brute-force references (scikit-learn, numpy) on random data."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from bench.search import index as bi


def _data(n=600, d=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _brute(db, q, k, metric):
    """Reference neighbours by a full numpy distance / similarity matrix (float64)."""
    db, q = db.astype(np.float64), q.astype(np.float64)
    if metric == "l2":
        dist = ((q[:, None, :] - db[None, :, :]) ** 2).sum(-1)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dist, order, 1), order
    if metric == "cosine":
        db = db / np.linalg.norm(db, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    sim = q @ db.T
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, order, 1), order


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_flat_search_matches_brute_force(metric):
    db, q = _data(500), _data(40, seed=1)
    dist, idx = bi.search(db, q, 7, metric=metric)
    ref_dist, ref_idx = _brute(db, q, 7, metric)
    assert dist.shape == idx.shape == (40, 7)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-4)


def test_flat_l2_matches_sklearn_and_distances_are_squared():
    db, q = _data(400), _data(30, seed=2)
    dist, idx = bi.search(db, q, 5)
    ref_dist, ref_idx = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(db).kneighbors(q)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist**2, rtol=1e-4)


def test_default_index_is_exact_flat():
    assert isinstance(bi.build_index(_data(50)), faiss.IndexFlatL2)
    assert isinstance(bi.build_index(_data(50), metric="ip"), faiss.IndexFlatIP)
    assert isinstance(bi.build_index(_data(50), metric="cosine"), faiss.IndexFlatIP)


def test_prebuilt_cosine_index_normalises_queries():
    db, q = _data(300), _data(20, seed=3) * 5.0
    index = bi.build_index(db, metric="cosine")
    assert bi.index_metric(index) == "cosine"
    sim, idx = bi.search(index, q, 4)
    ref_sim, ref_idx = _brute(db, q, 4, "cosine")
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sim, ref_sim, atol=1e-5)
    assert sim.max() <= 1.0 + 1e-5


def test_cosine_zero_vector_stays_finite():
    db = _data(50)
    db[3] = 0.0
    sim, _ = bi.search(db, db[:5], 3, metric="cosine")
    assert np.isfinite(sim).all()


def test_metric_conflict_with_prebuilt_index():
    index = bi.build_index(_data(50))
    with pytest.raises(ValueError, match="does not match"):
        bi.search(index, _data(3), 2, metric="ip")


def test_knn_excludes_self_and_matches_sklearn():
    x = _data(500)
    nbrs = bi.knn(x, 6)
    _, ref = NearestNeighbors(n_neighbors=7, algorithm="brute").fit(x).kneighbors(x)
    np.testing.assert_array_equal(nbrs, ref[:, 1:])
    assert not (nbrs == np.arange(500)[:, None]).any()


def test_knn_query_subset_equals_rows_of_full_result():
    x = _data(300)
    pos = np.array([5, 0, 299, 17])
    np.testing.assert_array_equal(bi.knn(x, 4, queries=pos), bi.knn(x, 4)[pos])
    mask = np.zeros(300, dtype=bool)
    mask[pos] = True
    np.testing.assert_array_equal(bi.knn(x, 4, queries=mask), bi.knn(x, 4)[np.sort(pos)])


def test_knn_with_exact_duplicates_drops_only_own_row():
    base = _data(100)
    x = np.concatenate([base, base, base])  # rows i, i+100, i+200 identical
    nbrs = bi.knn(x, 2)
    rows = np.arange(300)
    assert not (nbrs == rows[:, None]).any()
    # the two neighbours are exactly the two other copies (distance 0)
    expected = np.sort(np.stack([(rows + 100) % 300, (rows + 200) % 300], 1), axis=1)
    np.testing.assert_array_equal(np.sort(nbrs, axis=1), expected)


def test_knn_more_duplicates_than_k_never_returns_self():
    x = np.zeros((8, 4), dtype=np.float32)  # 8 identical vectors: self may be crowded out
    x = np.concatenate([x, _data(20, 4) + 10])
    nbrs = bi.knn(x, 3)
    assert nbrs.shape == (28, 3)
    assert not (nbrs[:8] == np.arange(8)[:, None]).any()
    assert (nbrs[:8] < 8).all()


def test_drop_self_wherever_ranked_or_last_column():
    idx = np.array([[4, 1, 2], [0, 3, 9], [7, 8, 5]])
    dist = idx.astype(np.float32) / 10
    d, i = bi.drop_self(dist, idx, np.array([1, 0, 6]))
    np.testing.assert_array_equal(i, [[4, 2], [3, 9], [7, 8]])
    np.testing.assert_allclose(d, i / 10)


def _clustered(n, d, seed, n_centres=50):
    """Gaussian mixture: closer to real embeddings than isotropic noise (IVF's worst case)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).standard_normal((n_centres, d)) * 3
    return (centres[rng.integers(0, n_centres, n)] + rng.standard_normal((n, d))).astype("f4")


def _recall(approx, exact):
    return np.mean([len(set(a) & set(e)) / exact.shape[1] for a, e in zip(approx, exact)])


def test_ivf_recall_close_to_flat_and_exact_with_all_cells():
    x, q = _clustered(4000, 32, 0), _clustered(200, 32, 1)
    _, exact = bi.search(x, q, 10)
    _, approx = bi.search(x, q, 10, kind="ivf", nlist=32, nprobe=8)
    assert _recall(approx, exact) >= 0.98
    x, q = _data(4000, 32), _data(200, 32, seed=5)  # isotropic noise: needs most cells
    _, exact = bi.search(x, q, 10)
    _, approx = bi.search(x, q, 10, kind="ivf", nlist=16, nprobe=14)
    assert _recall(approx, exact) >= 0.97
    _, full = bi.search(x, q, 10, kind="ivf", nlist=16, nprobe=16)
    np.testing.assert_array_equal(full, exact)


def test_ivf_low_nprobe_is_really_approximate():
    x, q = _data(4000, 32), _data(200, 32, seed=5)
    _, exact = bi.search(x, q, 10)
    _, approx = bi.search(x, q, 10, kind="ivf", nlist=64, nprobe=1)
    assert _recall(approx, exact) < 0.9  # the parameters reach FAISS


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_hnsw_recall_close_to_flat(metric):
    x, q = _data(2000, 32), _data(100, 32, seed=6)
    _, exact = bi.search(x, q, 10, metric=metric)
    index = bi.build_index(x, metric=metric, kind="hnsw", M=16, efSearch=128)
    assert isinstance(index, faiss.IndexHNSWFlat) and index.hnsw.efSearch == 128
    _, approx = bi.search(index, q, 10)
    assert _recall(approx, exact) >= 0.97


def test_accepts_float64_and_non_contiguous_input():
    x64 = _data(200, 32).astype(np.float64)
    view = x64[:, ::2]
    assert not view.flags.c_contiguous
    _, idx = bi.search(view, view[:10], 3)
    _, ref = _brute(view, view[:10], 3, "l2")
    np.testing.assert_array_equal(idx, ref)


def test_nan_refused_with_count_and_argument_name():
    x = _data(50)
    x[2, 3] = np.nan
    x[7, 0] = np.nan
    x[9, 1] = np.inf
    with pytest.raises(ValueError, match=r"vectors: 2 NaN and 1 infinite .* in 3 of 50 rows"):
        bi.build_index(x)
    q = _data(5)
    q[0, 0] = np.nan
    with pytest.raises(ValueError, match="queries: 1 NaN"):
        bi.search(_data(50), q, 3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: bi.build_index(np.zeros(10, np.float32)), r"vectors: expected a 2-D .*\(10,\)"),
        (lambda: bi.build_index(np.zeros((0, 4), np.float32)), r"at least one row"),
        (lambda: bi.build_index(np.array([["a", "b"]])), r"numeric"),
        (lambda: bi.search(_data(20, 8), _data(3, 4), 2), r"queries: expected 8 columns"),
        (lambda: bi.search(_data(20), _data(3), 21), r"k must be between 1 and 20"),
        (lambda: bi.knn(_data(20), 20), r"k must be between 1 and 19"),
        (lambda: bi.search(_data(20), _data(3), 2, exclude_self=True), r"self_ids"),
        (lambda: bi.search(_data(20), _data(3), 2, self_ids=[0, 1, 2]), r"exclude_self=True"),
        (lambda: bi.build_index(_data(20), metric="dot"), r"metric must be one of"),
        (lambda: bi.build_index(_data(20), kind="lsh"), r"kind must be one of"),
        (lambda: bi.build_index(_data(20), nprobe=3), r"unknown parameter.*nprobe"),
        (lambda: bi.build_index(_data(100), kind="ivf", nlist=8, nprobe=9), r"nprobe"),
        (lambda: bi.knn(_data(20), 2, queries=[0, 20]), r"queries: positions"),
        (lambda: bi.knn(_data(20), 2, queries=np.ones(5, bool)), r"boolean mask"),
    ],
)
def test_bad_input_raises_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
