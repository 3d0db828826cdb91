"""The floor extractors (pixels, random) and the precomputed loader's errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.core.config import get_profile
from bench.embed.embeddings import EmbeddingError
from tests.conftest import tiny_dataset


def test_pixels_and_random_shapes(plugins):
    data = tiny_dataset()
    profile = get_profile("quick")
    for name in ("pixels", "random"):
        extractor = plugins.build_extractor(name, profile)
        vectors = extractor.embed(data, np.arange(10))
        assert vectors.shape == (10, extractor.dim) and vectors.dtype == np.float32
        assert np.isfinite(vectors).all()
    pixels = plugins.build_extractor("pixels:size=4", profile)
    assert pixels.embed(data, np.arange(2)).shape == (2, 48)


def test_random_backbone_is_deterministic(plugins):
    data = tiny_dataset()
    a = plugins.build_extractor("random", get_profile("quick")).embed(data, np.arange(5))
    b = plugins.build_extractor("random", get_profile("quick")).embed(data, np.arange(5))
    assert np.allclose(a, b)


def test_precomputed_npz_parquet_and_csv(plugins, tmp_path):
    data = tiny_dataset(n=6)
    ids = data.ids[::-1]
    vectors = np.arange(12, dtype=np.float32).reshape(6, 2)
    np.savez(tmp_path / "v.npz", ids=ids, vectors=vectors)
    frame = pd.DataFrame({"id": ids, "a": vectors[:, 0], "b": vectors[:, 1]})
    frame.to_csv(tmp_path / "v.csv", index=False)
    pd.DataFrame({"id": ids, "vector": list(vectors)}).to_parquet(tmp_path / "v.parquet")
    for name in ("v.npz", "v.csv", "v.parquet"):
        extractor = plugins.build_extractor(f"precomputed:{tmp_path / name}", get_profile("quick"))
        out = extractor.embed(data, np.arange(6))
        assert np.array_equal(out, vectors[::-1]), name


def test_precomputed_reports_missing_extra_and_duplicate_ids(plugins, tmp_path):
    data = tiny_dataset(n=6)
    profile = get_profile("quick")
    np.savez(tmp_path / "short.npz", ids=np.array(list(data.ids[:4]) + ["zzz"]),
             vectors=np.zeros((5, 2), dtype=np.float32))
    extractor = plugins.build_extractor(f"precomputed:{tmp_path / 'short.npz'}", profile)
    with pytest.raises(EmbeddingError, match=r"2 dataset ids have no vector .*1 ids are not in"):
        extractor.embed(data, np.arange(6))
    np.savez(tmp_path / "dup.npz", ids=np.array(["a", "a"]), vectors=np.zeros((2, 2)))
    with pytest.raises(EmbeddingError, match="1 duplicate ids"):
        plugins.build_extractor(f"precomputed:{tmp_path / 'dup.npz'}", profile)
    np.savez(tmp_path / "nan.npz", ids=np.array(["a", "b"]),
             vectors=np.array([[np.inf, 0], [0, 0]]))
    with pytest.raises(EmbeddingError, match="1 vectors contain NaN or Inf, e.g. id 'a'"):
        plugins.build_extractor(f"precomputed:{tmp_path / 'nan.npz'}", profile)
    with pytest.raises(EmbeddingError, match="no such file"):
        plugins.build_extractor(f"precomputed:{tmp_path / 'none.npz'}", profile)
    np.savez(tmp_path / "noids.npz", vectors=np.zeros((2, 2)))
    with pytest.raises(EmbeddingError, match=r"missing arrays \['ids'\]"):
        plugins.build_extractor(f"precomputed:{tmp_path / 'noids.npz'}", profile)


def test_precomputed_object_ids_get_the_hint_the_user_has_not_followed_yet(plugins, tmp_path):
    """``ids=frame["id"].values`` is an object array: np.savez pickles it, and the old hint
    (``np.savez(path, ids=..., vectors=...)``) was what the user had already done."""
    from extractors.precomputed import read_vectors

    path = tmp_path / "objects.npz"
    np.savez(path, ids=pd.Series(["a", "b"]).to_numpy(dtype=object),
             vectors=np.eye(2, dtype=np.float32))
    with pytest.raises(EmbeddingError) as info:
        read_vectors(path)
    message = str(info.value)
    assert "array(s) ['ids'] have dtype object" in message
    assert "ids=ids.astype(str)" in message and "\n" not in message
    np.savez(path, ids=pd.Series(["a", "b"]).to_numpy(dtype=object).astype(str),
             vectors=np.eye(2, dtype=np.float32))
    assert read_vectors(path).ids.tolist() == ["a", "b"]  # the hint works
