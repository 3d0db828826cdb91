"""Whitening, embeddings validation, caching and the torchvision shim."""

from __future__ import annotations

import numpy as np
import pytest

from bench.core.cache import atomic_path, fingerprint, load_npz, save_npz
from bench.embed.embeddings import EmbeddingError, Embeddings, align
from bench.vectors.whitening import fit_whitening


def test_whitening_makes_train_covariance_identity():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(8, 8))
    train = rng.normal(size=(500, 8)) @ mixing + 3.0
    whitening = fit_whitening(train)
    out = whitening.apply(train.astype(np.float32))
    assert np.allclose(out.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(np.cov(out, rowvar=False), np.eye(8), atol=1e-3)


def test_whitening_output_dimension_and_degenerate_directions():
    rng = np.random.default_rng(1)
    train = np.concatenate([rng.normal(size=(200, 5)), np.zeros((200, 3))], axis=1)
    assert fit_whitening(train).transform.shape == (8, 5)  # constant columns dropped
    assert fit_whitening(train, k=2).apply(train.astype(np.float32)).shape == (200, 2)
    with pytest.raises(ValueError, match="at least 2"):
        fit_whitening(train[:1])


def test_embeddings_refuse_nan_duplicates_and_shape():
    with pytest.raises(EmbeddingError, match="1 vectors contain NaN"):
        Embeddings(["a", "b"], np.array([[0.0, np.nan], [1, 2]]))
    with pytest.raises(EmbeddingError, match="1 duplicate ids, e.g. 'a'"):
        Embeddings(["a", "a"], np.zeros((2, 3)))
    with pytest.raises(EmbeddingError, match="2-D"):
        Embeddings(["a"], np.zeros(3))
    with pytest.raises(EmbeddingError, match="2 ids but 3 vectors"):
        Embeddings(["a", "b"], np.zeros((3, 2)))


def test_embeddings_round_trip_without_pickle(tmp_path):
    emb = Embeddings(["x", "y"], np.arange(6).reshape(2, 3), {"extractor": "e"})
    path = emb.save(tmp_path / "e.npz")
    loaded = Embeddings.load(path)
    assert loaded.ids.tolist() == ["x", "y"] and loaded.meta["extractor"] == "e"
    assert np.array_equal(loaded.vectors, emb.vectors) and loaded.vectors.dtype == np.float32
    with np.load(path, allow_pickle=False) as data:
        assert data["ids"].dtype.kind == "U"


def test_align_reorders_and_reports_missing_and_extra():
    emb = Embeddings(["b", "a", "c"], np.array([[2.0], [1.0], [3.0]]))
    assert align(emb, np.array(["a", "b", "c"])).vectors.ravel().tolist() == [1, 2, 3]
    with pytest.raises(EmbeddingError, match=r"1 dataset ids have no vector \(e.g. 'z'\)"):
        align(emb, np.array(["a", "b", "z"]))
    with pytest.raises(EmbeddingError, match="1 ids are not in the dataset"):
        align(emb, np.array(["a", "b"]))


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_npz_refuses_object_arrays_and_fingerprint_is_stable(tmp_path):
    with pytest.raises(TypeError, match="dtype object"):
        save_npz(tmp_path / "x.npz", a=np.array([{"x": 1}], dtype=object))
    save_npz(tmp_path / "y.npz", a=np.arange(3))
    assert load_npz(tmp_path / "y.npz")["a"].tolist() == [0, 1, 2]
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_torchvision_imports_and_models_build():
    import torchvision

    import bench._torchvision_compat as compat

    assert torchvision.models.resnet18() is not None
    assert isinstance(compat.PATCHED, bool)
