"""Past one process: ``bench embed`` under torchrun equals one process and resumes a dead
rank's shards only; a sharded search over two loopback ranks finds the same neighbours as one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.cli.main import main as bench_main
from bench.core import registry
from bench.core.cache import Cache
from bench.core.config import get_profile
from bench.core.registry import REPO_ROOT
from bench.embed.embeddings import Embeddings
from bench.embed.key import embeddings_path
from bench.embed.ranks import embed_dataset

PLUGIN = Path(__file__).parent / "fixtures" / "plugins" / "dying_extractor.py"


def bench_embed(folder: Path, cache: Path, extractors: str, ranks: int = 1,
                env: dict[str, str] | None = None, plugin: bool = False
                ) -> subprocess.CompletedProcess:
    args = ["-m", "bench", "embed", "--profile", "quick", "--dataset", f"folder:{folder}",
            "--extractors", extractors, "--cache", str(cache), "--shard-size", "16",
            "--summary", str(cache / "summary.json"), "--no-progress",
            *(["--plugin", str(PLUGIN)] if plugin else [])]
    launcher = [] if ranks == 1 else ["-m", "torch.distributed.run", "--standalone",
                                      f"--nproc-per-node={ranks}"]
    return subprocess.run([sys.executable, *launcher, *args], cwd=REPO_ROOT, text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def summary(cache: Path) -> dict:
    return json.loads((cache / "summary.json").read_text())["extractors"][0]


def test_torchrun_embed_equals_one_process_and_bench_run_hits_its_cache(exported_folder,
                                                                        tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert bench_main(["embed", "--profile", "quick", "--dataset", f"folder:{exported_folder}",
                       "--extractors", "pixels", "--cache", str(one), "--shard-size", "16",
                       "--summary", str(one / "summary.json"), "--no-progress"]) == 0
    done = bench_embed(exported_folder, two, "pixels", ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    single, merged = summary(one), summary(two)
    assert merged["world_size"] == 2 and single["world_size"] == 1
    ranks = merged["shards"]  # every world_size-th shard of the plan, per rank
    assert ranks == [list(range(merged["n_shards"]))[r::2] for r in range(2)]
    a, b = Embeddings.load(single["path"]), Embeddings.load(merged["path"])
    assert a.ids.tolist() == b.ids.tolist()
    assert float(np.abs(a.vectors - b.vectors).max()) == 0.0
    assert Path(merged["path"]).name == Path(single["path"]).name  # the same cache key
    assert not list((two / "embeddings").glob("*.shards"))  # merged and cleaned up

    # bench run's own lookup finds the merged file: a cache hit, nothing embedded
    registry.load_plugins()
    profile = get_profile("quick")
    dataset = registry.build_dataset("folder", Cache(two), root=str(exported_folder),
                                     **profile.dataset_options("folder"))
    extractor = registry.build_extractor("pixels", profile)
    assert embeddings_path(extractor, dataset, Cache(two)) == Path(merged["path"])
    embedded = embed_dataset(extractor, dataset, Cache(two), tmp_path / "log")
    assert embedded.cached and embedded.timings.get("cached") == 1.0
    np.testing.assert_array_equal(embedded.embeddings.vectors, b.vectors)


def test_a_dead_rank_leaves_its_shards_unfinished_and_a_rerun_embeds_only_those(
        exported_folder, tmp_path):
    cache = tmp_path / "cache"
    died = bench_embed(exported_folder, cache, "dying", ranks=2, plugin=True,
                       env={"BENCH_TEST_DIE_RANK": "1", "BENCH_TEST_DIE_AT_CALL": "2"})
    assert died.returncode != 0
    folders = list((cache / "embeddings").glob("*.shards"))
    assert len(folders) == 1
    plan = json.loads((folders[0] / "plan.json").read_text())
    n_shards = -(-plan["n"] // plan["shard_size"])
    finished = {int(p.stem.split("-")[1]) for p in folders[0].glob("shard-*.npz")}
    rank1 = list(range(n_shards))[1::2]
    assert rank1[0] in finished and not set(rank1[1:]) & finished  # rank 1 died on its 2nd

    again = bench_embed(exported_folder, cache, "dying", ranks=2, plugin=True)
    assert again.returncode == 0, again.stderr[-3000:]
    redone = summary(cache)["shards"]
    assert sorted(s for rank in redone for s in rank) == sorted(set(range(n_shards)) - finished)
    merged = Embeddings.load(summary(cache)["path"])
    registry.load_plugins()
    dataset = registry.build_dataset("folder", Cache(cache), root=str(exported_folder),
                                     **get_profile("quick").dataset_options("folder"))
    expected = dataset.images(np.arange(len(dataset))).mean(axis=(1, 2)).astype(np.float32)
    assert merged.ids.tolist() == dataset.ids.tolist()
    np.testing.assert_allclose(merged.vectors, expected, rtol=1e-6)


@pytest.mark.parametrize("world_size", [2])
def test_two_rank_sharded_search_finds_the_neighbours_of_one(world_size):
    from bench.perf.scale import sharded_neighbours
    from bench.search import index as faiss_index

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((301, 8)).astype(np.float32)  # no ties among distances
    queries = np.arange(0, 301, 7)
    merged = sharded_neighbours(vectors, queries, 5, world_size)
    single = faiss_index.knn(vectors, 5, queries=queries)
    np.testing.assert_array_equal(merged, single)
    assert not (merged == queries[:, None]).any()  # each query's own row is excluded


def knn_task_rank(rank: int, world_size: int, port: int, out: str) -> None:
    """One rank of the knn task inside a joined process group (gloo, loopback)."""
    import torch.distributed as dist

    from bench.core.distributed import leave_group, leave_process
    from bench.tasks import TaskContext, get_task
    from tests.test_whitening import dataset_with_roles

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    completed = False
    try:
        dataset = dataset_with_roles()
        vectors = np.random.default_rng(4).normal(size=(100, 5)).astype(np.float32)
        rows = get_task("knn").evaluate(Embeddings(dataset.ids, vectors), dataset,
                                        TaskContext(options={"k": 5}))
        if rank == 0:
            np.save(out, np.array([[r["value"] for r in rows]]))
            np.save(out.replace(".npy", "-evidence.npy"), rows[0]["evidence"].values)
        completed = True
    finally:
        leave_group(completed)
    leave_process(0)  # finalisation could abort in gloo's thread after the file is written


def test_the_knn_task_over_two_ranks_scores_what_one_process_scores(tmp_path):
    import torch.multiprocessing as mp

    from bench.perf.scale import free_port
    from bench.tasks import TaskContext, get_task
    from tests.test_whitening import dataset_with_roles

    out = str(tmp_path / "rows.npy")
    mp.spawn(knn_task_rank, args=(2, free_port(), out), nprocs=2, join=True)
    dataset = dataset_with_roles()
    vectors = np.random.default_rng(4).normal(size=(100, 5)).astype(np.float32)
    rows = get_task("knn").evaluate(Embeddings(dataset.ids, vectors), dataset,
                                    TaskContext(options={"k": 5}))
    np.testing.assert_array_equal(np.load(out)[0], [r["value"] for r in rows])
    np.testing.assert_array_equal(np.load(out.replace(".npy", "-evidence.npy")),
                                  rows[0]["evidence"].values)
