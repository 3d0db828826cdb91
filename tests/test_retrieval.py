"""The ``retrieval`` task: frozen Identity Recall@N / MAP@R and the fine-tune mode."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bench.core.data import Dataset, array_image_source
from bench.embed.embeddings import Embeddings
from bench.scoring.metrics import map_at_r, recall_at_n
from bench.tasks import TaskContext, get_task
from bench.tasks.finetune import PairSampler, retrieval_scores, training_groups
from bench.tasks.retrieval import query_and_gallery
from bench.train import finetune as ft
from bench.train.backbones import embed_images
from tests.test_finetune import TinyExtractor, same_state, state

METRICS = {"recall@1", "recall@5", "recall@10", "recall@15", "recall@20", "map@r"}
FT_METRICS = {f"finetune_{m}" for m in METRICS} | {"finetune_s", "finetune_steps"}


def search_dataset(n_train: int = 24, n_test: int = 8, seed: int = 0) -> Dataset:
    """Each identity is a random 4x4 colour pattern with one product shot; a query is the
    pattern under a strong random colour cast plus noise (a nuisance that dominates frozen
    random features). Train identities have two train queries and one held-out test query;
    test identities (new patterns) one test query."""
    rng = np.random.default_rng(seed)
    n_id = n_train + n_test
    patterns = rng.integers(60, 196, size=(n_id, 4, 4, 3)).repeat(4, axis=1).repeat(4, axis=2)
    images, records = [], []
    for i in range(n_id):
        split = "train" if i < n_train else "test"
        images.append(patterns[i])
        records.append((f"p{i}", "product", split, f"id{i}"))
        query_splits = ["train", "train", "test"] if split == "train" else ["test"]
        for q, query_split in enumerate(query_splits):
            cast = rng.uniform(-60, 60, size=3)
            images.append(np.clip(patterns[i] + cast + rng.normal(0, 8, size=(16, 16, 3)), 0, 255))
            records.append((f"q{i}-{q}", "query", query_split, f"id{i}"))
    table = pd.DataFrame(records, columns=["id", "role", "split", "identity"])
    return Dataset("search", table, array_image_source(np.stack(images).astype(np.uint8)), 16,
                   f"search-{n_train}-{n_test}-{seed}")


def embeddings_of(data: Dataset, extractor: TinyExtractor, fingerprint: str) -> Embeddings:
    vectors = embed_images(extractor.model, [data.images()], 16)
    return Embeddings(data.ids, vectors, {"fingerprint": fingerprint})


def test_frozen_metrics_match_the_references_and_the_task_is_seedless():
    data = search_dataset()
    rng = np.random.default_rng(0)
    emb = Embeddings(data.ids, rng.normal(size=(len(data), 8)).astype(np.float32))
    task = get_task("retrieval")
    assert not task.seeded  # fixed vectors, exact search: nothing to repeat
    out = task.evaluate(emb, data, TaskContext(seed=0))
    got = {r["metric"]: r["value"] for r in out}
    queries, gallery = query_and_gallery(data)
    ids = data.table["identity"].to_numpy()
    expected = recall_at_n(emb.take(queries), ids[queries], emb.take(gallery), ids[gallery])
    assert set(got) == METRICS
    for n, value in expected.items():
        assert got[f"recall@{n}"] == pytest.approx(value)
    assert got["map@r"] == pytest.approx(map_at_r(emb.take(queries), ids[queries],
                                                  emb.take(gallery), ids[gallery]))
    again = task.evaluate(emb, data, TaskContext(seed=0, extractor=object()))  # vectors only
    assert {r["metric"]: r["value"] for r in again} == got


def test_training_groups_pair_train_queries_with_train_products():
    data = search_dataset(n_train=5, n_test=3)
    groups = training_groups(data)
    table = data.table
    assert len(groups) == 5
    for anchors, positives in groups:
        assert set(table["role"].iloc[anchors]) == {"query"}
        assert set(table["role"].iloc[positives]) == {"product"}
        assert set(table["split"].iloc[np.concatenate([anchors, positives])]) == {"train"}
        assert table["identity"].iloc[np.concatenate([anchors, positives])].nunique() == 1
    sampler = PairSampler(groups, seed=0)
    import torch

    a, p = sampler(torch.arange(5))
    identity = table["identity"].to_numpy()[sampler.rows]
    assert (identity[a] == identity[p]).all() and (a != p).all()


def test_training_groups_without_roles_need_two_items():
    table = pd.DataFrame({"id": list("abcde"), "split": ["train"] * 4 + ["test"],
                          "identity": ["x", "x", "y", "z", "z"]})
    images = np.zeros((5, 4, 4, 3), dtype=np.uint8)
    data = Dataset("plain", table, array_image_source(images), 4, "plain")
    groups = training_groups(data)
    assert [sorted(a.tolist()) for a, _ in groups] == [[0, 1]]  # y alone; z's partner is test
    sampler = PairSampler(groups, seed=0)
    import torch

    for _ in range(5):
        a, p = sampler(torch.tensor([0]))
        assert a[0] != p[0]


# no random crop: at 16 px a 2 px shift of 4 px blocks is too hard for 48 steps of a width-8 net
OPTIONS = dict(epochs=16, batch_size=8, lr=0.05, temperature=0.1, max_seconds=0, crop_padding=0)


def test_finetune_retrieval_reports_all_metrics_improves_and_keeps_backbone(cache):
    data = search_dataset()
    extractor = TinyExtractor("tiny")
    before = state(extractor.model)
    emb = embeddings_of(data, extractor, "tiny-fp")
    task, frozen = get_task("finetune_retrieval"), get_task("retrieval")
    assert task.variants == ("ft",) and task.seeded
    ctx = TaskContext(seed=0, variant="ft", options=OPTIONS, extractor=extractor, cache=cache)
    raw = {r["metric"]: r["value"] for r in frozen.evaluate(emb, data, ctx)}
    tuned = {r["metric"]: r["value"] for r in task.evaluate(emb, data, ctx)}
    [reference] = task.references([("tiny", extractor)], data, OPTIONS)
    assert (reference.label, reference.source) == ("scratch:resnet18-w8-small", "tiny")
    scratch = {r["metric"]: r["value"]
               for r in task.evaluate_reference(reference, None, data, ctx)}
    assert set(raw) == METRICS
    assert set(tuned) == set(scratch) == FT_METRICS
    assert tuned["finetune_steps"] == scratch["finetune_steps"] == 48
    assert same_state(before, state(extractor.model))
    # the same run with lr = 0 only adapts BatchNorm statistics: the gain is the metric learning
    still = retrieval_scores(ft.finetune_copy(extractor.model), data, training_groups(data),
                             ft.Budget.from_options(OPTIONS | {"lr": 0.0}), 0,
                             ft.standard_transform(16), 0.1, 256,
                             torch.device("cpu"))["metrics"]
    assert tuned["finetune_map@r"] > still["finetune_map@r"] + 0.15
    assert tuned["finetune_map@r"] > raw["map@r"] + 0.1
    assert tuned["finetune_recall@5"] > raw["recall@5"]
