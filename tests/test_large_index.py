"""Large-catalogue search in tasks: the index option, IVFPQ, the recall of an approximate index
against exact search, and how the report treats that recall (no interval, never ranked)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.core.distributed import World
from bench.core.metric_info import MetricBook, describe
from bench.perf.scale import synthetic_catalogue
from bench.search import choice as index_choice
from bench.search import index as bi
from bench.search import sharded
from bench.tasks import TaskContext, get_task


def test_choose_auto_is_flat_below_the_threshold_and_ivf_from_it():
    assert index_choice.choose(99_999, "auto") == ("flat", {})
    kind, params = index_choice.choose(1_000_000, "auto")
    assert kind == "ivf" and params == {"nlist": 1000, "nprobe": 10}
    assert index_choice.choose(500, "auto", auto_threshold=400)[0] == "ivf"
    assert index_choice.choose(5000, "ivf", nlist=64, nprobe=100) == ("ivf", {"nlist": 64, "nprobe": 64})
    assert index_choice.choose(5000, "hnsw", m=12) == ("hnsw", {"M": 12})
    assert index_choice.choose(5000, "ivfpq", m=4)[1]["m"] == 4
    assert index_choice.task_choice({"index": None, "k": 10}, 10) == ("flat", {})
    with pytest.raises(ValueError, match="index must be one of"):
        index_choice.choose(10, "annoy")


def test_ivfpq_compresses_and_still_finds_most_neighbours():
    _, embeddings = synthetic_catalogue(6000, 32, 10, seed=2)
    x = embeddings.vectors
    index = bi.build_index(x, kind="ivfpq", nlist=32, nprobe=8, m=8)
    assert index.pq.M == 8 and index.pq.nbits == bi.default_pq_nbits(6000) == 7
    assert index.code_size < x.shape[1] * 4  # bytes per vector, compressed
    queries = np.arange(0, 6000, 30)
    _, found = bi.search(index, x[queries], 10)
    recall, n = index_choice.recall_against_exact(x, x[queries], found, 10, sample=10_000)
    assert n == len(queries) and 0.5 <= recall < 1.0
    with pytest.raises(ValueError, match="must divide the dimension"):
        bi.build_index(x, kind="ivfpq", nlist=8, m=5)


def test_recall_against_exact_counts_shared_neighbours_and_never_empty_slots():
    x = np.random.default_rng(0).standard_normal((300, 6)).astype(np.float32)
    queries = np.arange(0, 300, 3)
    _, exact = bi.search(x, x[queries], 5, exclude_self=True, self_ids=queries)
    assert index_choice.recall_against_exact(x, x[queries], exact, 5, self_ids=queries)[0] == 1.0
    half = exact.copy()
    half[:, 2:] = -1  # missing slots, as an approximate index may leave them
    assert index_choice.recall_against_exact(x, x[queries], half, 5, self_ids=queries)[0] == 0.4
    recall, n = index_choice.recall_against_exact(x, x[queries], exact, 5, self_ids=queries, sample=7)
    assert n == 7 and recall == 1.0


def test_sharded_search_in_one_process_is_plain_search():
    x = np.random.default_rng(1).standard_normal((200, 8)).astype(np.float32)
    d, i = sharded.sharded_search(x, 0, x[:20], 4, World())
    d0, i0 = bi.search(x, x[:20], 4)
    np.testing.assert_array_equal(i, i0)
    np.testing.assert_allclose(d, d0)
    assert sharded.shard_bounds(10, 0, 3) == (0, 3) and sharded.shard_bounds(10, 2, 3) == (6, 10)


def knn_rows(dataset, embeddings, **options):
    rows = get_task("knn").evaluate(embeddings, dataset, TaskContext(options={"k": 10,
                                                                              **options}))
    return {row["metric"]: row for row in rows}


def test_knn_task_with_ivf_reports_its_recall_and_stays_close_to_exact():
    dataset, embeddings = synthetic_catalogue(8000, 32, 400, seed=4)
    flat = knn_rows(dataset, embeddings)
    assert not any(m.startswith("index_") for m in flat)
    ivf = knn_rows(dataset, embeddings, index="ivf", nlist=64, nprobe=16)
    assert ivf["index_recall@10"]["value"] >= 0.95
    assert "evidence" not in ivf["index_recall@10"]  # a property of the index: no interval
    for metric in ("style_consistency", "scene_consistency"):
        assert abs(ivf[metric]["value"] - flat[metric]["value"]) < 0.01
        assert ivf[metric]["evidence"].units.tolist() == flat[metric]["evidence"].units.tolist()
    coarse = knn_rows(dataset, embeddings, index="ivf", nlist=128, nprobe=1)
    assert coarse["index_recall@10"]["value"] < ivf["index_recall@10"]["value"]
    auto = knn_rows(dataset, embeddings, index="auto")  # 8,000 < the threshold: exact
    assert set(auto) == set(flat)
    for metric, row in flat.items():
        assert auto[metric]["value"] == row["value"]


def test_retrieval_task_with_hnsw_reports_its_recall():
    dataset, embeddings = synthetic_catalogue(3000, 32, 300, seed=5)
    table = dataset.table
    table["identity"] = (np.arange(len(table)) % 500).astype(str)
    table.loc[table["split"] == "train", "split"] = np.where(
        np.arange((table["split"] == "train").sum()) % 2, "train", "pretrain")
    task = get_task("retrieval")
    ctx = TaskContext()
    flat = {r["metric"]: r["value"] for r in task.evaluate(embeddings, dataset, ctx)}
    ctx.options["index"] = "hnsw"
    hnsw = {r["metric"]: r["value"] for r in task.evaluate(embeddings, dataset, ctx)}
    assert "index_recall@10" not in flat and hnsw["index_recall@10"] >= 0.9
    assert abs(hnsw["recall@10"] - flat["recall@10"]) < 0.02


def test_index_recall_is_declared_a_check_and_never_ranked():
    for task in ("knn", "retrieval"):
        assert describe(get_task(task), "index_recall@10")["kind"] == "check"
    book = MetricBook({name: describe(get_task("retrieval"), name)
                       for name in ("index_recall@10", "recall@10")})
    assert book.is_check("index_recall@10") and not book.is_ranked("index_recall@10")
    assert book.is_ranked("recall@10") and not book.is_check("recall@10")


def test_index_recall_matches_a_scikit_learn_reference():
    from sklearn.neighbors import NearestNeighbors

    _, embeddings = synthetic_catalogue(3000, 16, 10, seed=6)
    x = embeddings.vectors
    queries = np.arange(0, 3000, 10)
    approx = bi.knn(x, 10, queries=queries, kind="ivf", nlist=50, nprobe=2)
    _, nearest = NearestNeighbors(n_neighbors=11, algorithm="brute").fit(x).kneighbors(
        x[queries])
    exact = [[j for j in row if j != q][:10] for row, q in zip(nearest, queries)]
    reference = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    recall, n = index_choice.recall_against_exact(x, x[queries], approx, 10, self_ids=queries,
                                        sample=len(queries))
    assert n == len(queries) and recall == pytest.approx(reference, abs=1e-3) and recall < 1


def test_bench_run_task_options_reach_the_profile_and_bad_ones_are_refused():
    from bench.cli.args import run_request, run_spec
    from bench.cli.main import build_parser
    from bench.core.registry import SpecError

    args = build_parser().parse_args(["run", "--profile", "quick", "--task-option",
                                      "knn.index=auto", "--task-option", "knn.nprobe=16",
                                      "--task-option", "retrieval.index=hnsw"])
    spec = run_spec(run_request(args), "results")
    assert spec.profile.task_options["knn"] == {"index": "auto", "nprobe": 16}
    assert spec.profile.task_options["retrieval"] == {"index": "hnsw"}
    assert spec.command["task_options"] == ["knn.index=auto", "knn.nprobe=16",
                                            "retrieval.index=hnsw"]
    for bad, message in (("knn.index=annoy", "choose from"), ("index=ivf", "TASK.KEY=VALUE")):
        args = build_parser().parse_args(["run", "--task-option", bad])
        with pytest.raises(SpecError, match=message):
            run_spec(run_request(args), "results")
