"""Cache keys follow the code that computes what they key, and nothing else; one cache helper
handles damaged entries for every cached result."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bench.core.code
from bench.core.cache import NPZ, Cache, cached
from bench.core.config import get_profile
from bench.embed.key import code_files, embeddings_key
from tests.conftest import tiny_dataset

BENCH = bench.core.code.Path(bench.core.code.__file__).resolve().parents[1]


def edited(monkeypatch, path):
    """Pretend ``path``'s content changed: its digest differs from now on."""
    real = bench.core.code._file_digest

    def digest(name, mtime_ns, size):
        value = real(name, mtime_ns, size)
        return value + "-edited" if bench.core.code.Path(name) == path else value

    monkeypatch.setattr(bench.core.code, "_file_digest", digest)


def test_a_timm_key_follows_its_plugin_the_adapters_and_streaming(plugins, tiny_specs,
                                                                   monkeypatch):
    dataset = tiny_dataset()
    timm = plugins.build_extractor(tiny_specs["timm"], get_profile("quick"))
    files = set(code_files(timm, dataset))
    plugin = BENCH.parent / "extractors" / "timm_models.py"
    for needed in (plugin, BENCH / "adapters" / "shared.py", BENCH / "embed" / "streaming.py"):
        assert needed in files, needed
        before = embeddings_key(timm, dataset)
        with monkeypatch.context() as patch:
            edited(patch, needed)
            assert embeddings_key(timm, dataset) != before, needed


def test_a_pixels_key_ignores_the_training_code(plugins, monkeypatch):
    dataset = tiny_dataset()
    pixels = plugins.build_extractor("pixels", get_profile("quick"))
    files = set(code_files(pixels, dataset))
    assert BENCH.parent / "extractors" / "pixels.py" in files
    before = embeddings_key(pixels, dataset)
    for unused in ("loop.py", "options.py", "ssl.py", "augment.py", "checkpoint.py"):
        path = BENCH / "train" / unused
        assert path not in files, unused
        with monkeypatch.context() as patch:
            edited(patch, path)
            assert embeddings_key(pixels, dataset) == before, unused
    with monkeypatch.context() as patch:  # its own file does count
        edited(patch, BENCH.parent / "extractors" / "pixels.py")
        assert embeddings_key(pixels, dataset) != before


def test_a_learned_extractor_key_covers_the_training_it_inherits(plugins):
    moco = plugins.build_extractor("moco_v2", get_profile("quick"))
    files = set(code_files(moco))
    assert {BENCH / "train" / "ssl.py", BENCH / "train" / "loop.py"} <= files


def test_cached_computes_once_and_moves_a_damaged_entry_aside(tmp_path):
    cache, calls = Cache(tmp_path), []

    def compute():
        calls.append(1)
        return {"x": np.arange(3.0)}

    first = cached(cache, "k", "abc", compute, codec=NPZ)
    again = cached(cache, "k", "abc", compute, codec=NPZ)
    assert len(calls) == 1 and np.array_equal(first["x"], again["x"])
    path = cache.path("k", "abc", ".npz")
    path.write_bytes(b"not a zip file")
    cached(cache, "k", "abc", compute, codec=NPZ)
    assert len(calls) == 2 and path.with_name(path.name + ".corrupt").is_file()
    assert cached(cache, "k", "abc", compute, codec=NPZ)["x"].tolist() == [0.0, 1.0, 2.0]
    assert len(calls) == 2


def test_cached_refuses_unexpected_content_and_keeps_what_keep_refuses(tmp_path):
    cache = Cache(tmp_path)
    path = cache.path("j", "key", ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([1, 2]))
    out = cached(cache, "j", "key", lambda: {"ok": 1}, valid=lambda v: isinstance(v, dict))
    assert out == {"ok": 1} and path.with_name(path.name + ".corrupt").is_file()
    capped = cached(cache, "j", "cut", lambda: {"capped": True}, keep=lambda v: not v["capped"])
    assert capped == {"capped": True} and not cache.path("j", "cut", ".json").exists()


@pytest.mark.parametrize("damage", [b"{not json", b""])
def test_a_damaged_ctr_result_is_moved_aside_and_recomputed(tmp_path, damage):
    from bench.tasks.ctr import RESULT

    cache, calls = Cache(tmp_path), []

    def compute():
        calls.append(1)
        return {"metrics": {"ctr_auc": 0.6}, "predictions": {"ctr": np.ones(3)}}

    cached(cache, "ctr", "k1", compute, codec=RESULT)
    path = cache.path("ctr", "k1", ".json")
    assert cached(cache, "ctr", "k1", compute, codec=RESULT)["predictions"]["ctr"].shape == (3,)
    path.write_bytes(damage)
    out = cached(cache, "ctr", "k1", compute, codec=RESULT)
    assert len(calls) == 2 and out["metrics"] == {"ctr_auc": 0.6}
    assert path.with_name(path.name + ".corrupt").is_file()
