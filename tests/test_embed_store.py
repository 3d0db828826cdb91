"""Embeddings written shard by shard: a stopped run resumes at the next unfinished shard, a
damaged shard is redone, and the merge puts every id in place exactly once."""

from __future__ import annotations

import numpy as np
import pytest

from bench.embed import store as embed_store
from bench.embed.embeddings import EmbeddingError
from bench.embed.key import embeddings_path
from bench.embed.ranks import embed_dataset
from bench.embed.store import ShardPlan, embed_shards, merge, prepare
from tests.conftest import tiny_dataset


class CountingExtractor:
    """Mean colour per row; records the rows of every call; can stop like a Ctrl-C."""

    name, dim, modalities = "counting", 3, ("image",)

    def __init__(self, stop_at_call: int | None = None):
        self.calls: list[list[int]] = []
        self.stop_at_call = stop_at_call

    def config(self):
        return {}

    def fit(self, dataset, ctx):
        pass

    def embed(self, dataset, rows):
        if self.stop_at_call is not None and len(self.calls) == self.stop_at_call:
            raise KeyboardInterrupt
        self.calls.append(list(rows))
        return dataset.images(rows).mean(axis=(1, 2)).astype(np.float32)


def test_an_interrupted_run_resumes_at_the_next_unfinished_shard(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_SHARD_SIZE", "16")
    data = tiny_dataset(60)  # 4 shards: 16, 16, 16, 12 rows
    stopped = CountingExtractor(stop_at_call=2)
    with pytest.raises(KeyboardInterrupt):
        embed_dataset(stopped, data, cache, tmp_path / "log")
    assert [c[0] for c in stopped.calls] == [0, 16]  # shards 0 and 1 were written
    resumed = CountingExtractor()
    embeddings = embed_dataset(resumed, data, cache, tmp_path / "log").embeddings
    assert [(c[0], len(c)) for c in resumed.calls] == [(32, 16), (48, 12)]  # only 2 and 3
    expected = data.images().mean(axis=(1, 2)).astype(np.float32)
    np.testing.assert_array_equal(embeddings.vectors, expected)
    assert embeddings.ids.tolist() == data.ids.tolist()
    assert not list((cache.root / "embeddings").glob("*.shards"))  # merged and cleaned up
    again = CountingExtractor()
    embed_dataset(again, data, cache, tmp_path / "log")
    assert again.calls == []  # a cache hit


def test_shards_of_a_rank_and_the_merge_by_id(cache, tmp_path):
    data = tiny_dataset(50)
    plan = ShardPlan.for_dataset(data, shard_size=8)  # 7 shards
    folder = tmp_path / "shards"
    prepare(folder, plan)
    world = 2
    for rank in range(world):  # as torchrun ranks would: every world_size-th shard
        done = embed_shards(CountingExtractor(), data, folder, plan,
                            shards=list(range(plan.n_shards))[rank::world], progress=False)
        assert done == list(range(plan.n_shards))[rank::world]
    merged = merge(folder, data, plan, {"source": "test"})
    np.testing.assert_array_equal(merged.vectors,
                                  data.images().mean(axis=(1, 2)).astype(np.float32))


def test_a_damaged_shard_is_moved_aside_and_redone(cache, tmp_path, capsys):
    data = tiny_dataset(40)
    plan = ShardPlan.for_dataset(data, shard_size=16)
    folder = tmp_path / "shards"
    prepare(folder, plan)
    embed_shards(CountingExtractor(), data, folder, plan, progress=False)
    damaged = embed_store.shard_path(folder, 1)
    damaged.write_bytes(damaged.read_bytes()[:100])
    redo = CountingExtractor()
    embed_shards(redo, data, folder, plan, progress=False)
    assert [c[0] for c in redo.calls] == [16]
    assert damaged.with_suffix(".npz.corrupt").is_file()
    assert "unreadable shard" in capsys.readouterr().err
    # a missing shard is refused at the merge, by count and example
    embed_store.shard_path(folder, 2).unlink()
    with pytest.raises(EmbeddingError, match=r"1 shards are not finished, e.g. shard 2"):
        merge(folder, data, plan, {})


def test_another_plan_starts_afresh(cache, tmp_path):
    data = tiny_dataset(40)
    path = embeddings_path(CountingExtractor(), data, cache)
    folder = embed_store.shard_folder(path)
    plan = ShardPlan.for_dataset(data, shard_size=16)
    prepare(folder, plan)
    embed_shards(CountingExtractor(stop_at_call=None), data, folder, plan, shards=[0],
                 progress=False)
    other = CountingExtractor()
    embed_dataset(other, data, cache, tmp_path / "log", shard_size=10, progress=False)
    assert len(other.calls) == 4  # the 16-row shard of the old plan was not reused


def test_embed_returning_the_wrong_shape_is_refused(cache, tmp_path):
    class Broken(CountingExtractor):
        def embed(self, dataset, rows):
            return np.zeros((len(rows) - 1, 3), dtype=np.float32)

    data = tiny_dataset(20)
    with pytest.raises(EmbeddingError, match=r"counting \(shard 0\): returned shape \[15, 3\] "
                                             r"for the 16 images at dataset rows 0-15"):
        embed_dataset(Broken(), data, cache, tmp_path / "log", shard_size=16, progress=False)


@pytest.mark.parametrize("bad", ["broadcast", "nan", "1-d"])
def test_a_shard_of_one_repeated_row_or_nan_is_refused_and_nothing_is_cached(tmp_path, bad):
    """A model that returns [1, d] for a batch of n, NaN vectors, or a 1-D output: refused
    with the extractor, the rows and the shape, before the shard file is written."""
    class Broken(CountingExtractor):
        def embed(self, dataset, rows):
            good = super().embed(dataset, rows)
            if bad == "broadcast":
                return good[:1]
            if bad == "1-d":
                return good[0]
            if rows[0] == 16:  # the second shard only: the first is fine and kept
                good[3, 1] = np.nan
            return good

    data = tiny_dataset(40)
    plan = ShardPlan.for_dataset(data, shard_size=16)
    folder = tmp_path / "shards"
    prepare(folder, plan)
    expected = {"broadcast": r"counting \(shard 0\): returned shape \[1, 3\] for the 16 "
                             r"images at dataset rows 0-15; .*\[16, dim\]; nothing was cached",
                "1-d": r"returned shape \[3\] for the 16 images",
                "nan": r"counting \(shard 1\): 1 of the vectors for the 16 images at dataset "
                       r"rows 16-31 contain NaN or Inf, e.g. dataset row 19"}[bad]
    with pytest.raises(EmbeddingError, match=expected):
        embed_shards(Broken(), data, folder, plan, progress=False)
    assert embed_store.finished(folder, plan) == ([0] if bad == "nan" else [])
