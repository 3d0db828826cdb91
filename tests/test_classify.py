"""The ``classify`` task: linear probe (against scikit-learn), splits, fine-tune and scratch rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import top_k_accuracy_score

from bench.core.data import Dataset, array_image_source
from bench.embed.embeddings import Embeddings
from bench.tasks import TaskContext, get_task
from bench.tasks.classify import accuracy_metrics, linear_probe, make_split
from tests.test_finetune import TinyExtractor, colour_images, same_state, state


def blobs(n: int, d: int, c: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) * 4.0
    y = rng.integers(0, c, size=n)
    return (centres[y] + rng.normal(size=(n, d)) * spread).astype(np.float32), y


def probe(train_x, train_y, test_x, c, val_fraction=0.2, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_x))
    cut = int(val_fraction * len(train_x))
    return linear_probe(train_x, train_y, test_x, c, np.sort(order[cut:]), np.sort(order[:cut]),
                        **kwargs)


# --------------------------------------------------------------------------- linear probe


def accuracy(scores: np.ndarray, labels: np.ndarray, prefix: str) -> dict[str, float]:
    return accuracy_metrics(scores, labels, prefix, np.arange(len(labels)))[0]


def test_probe_is_near_perfect_on_linearly_separable_data():
    x, y = blobs(600, 16, 8, spread=0.5)
    scores, _ = probe(x[:400], y[:400], x[400:], 8)
    metrics = accuracy(scores, y[400:], "probe")
    assert metrics["probe_top1"] >= 0.99 and metrics["probe_top5"] == 1.0


def test_probe_is_at_chance_on_shuffled_labels():
    x, y = blobs(3000, 16, 10, spread=0.5)
    shuffled = np.random.default_rng(1).permutation(y)
    scores, _ = probe(x[:1500], shuffled[:1500], x[1500:], 10)
    metrics = accuracy(scores, shuffled[1500:], "probe")
    assert abs(metrics["probe_top1"] - 0.1) < 0.04
    assert abs(metrics["probe_top5"] - 0.5) < 0.06


def test_probe_matches_scikit_learn_logistic_regression():
    """Same objective: mean CE + wd/2 ||W||^2 equals scikit-learn's with C = 1 / (wd * n)."""
    x, y = blobs(700, 12, 5, spread=3.0, seed=2)
    train_x, train_y, test_x, test_y = x[:500], y[:500], x[500:], y[500:]
    wd = 1e-2
    scores, chosen = linear_probe(train_x, train_y, test_x, 5, np.arange(500), np.array([]),
                                  weight_decays=(wd,), max_iter=500)
    assert chosen == wd
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    reference = LogisticRegression(C=1.0 / (wd * 500), max_iter=5000, tol=1e-8)
    reference.fit((train_x - mean) / std, train_y)
    ref_scores = reference.decision_function((test_x - mean) / std)
    assert (scores.argmax(1) == ref_scores.argmax(1)).mean() > 0.97
    ours = accuracy(scores, test_y, "probe")
    assert ours["probe_top1"] == pytest.approx(reference.score((test_x - mean) / std, test_y),
                                                 abs=0.02)
    # softmax probabilities agree closely (the optimum is unique)
    p_ours = torch.softmax(torch.as_tensor(scores), 1).numpy()
    assert np.abs(p_ours - reference.predict_proba((test_x - mean) / std)).max() < 0.05


def test_probe_chooses_weight_decay_on_validation():
    # few samples, many noisy dimensions: strong regularisation must win over none
    x, y = blobs(400, 200, 4, spread=6.0, seed=3)
    _, chosen = probe(x[:120], y[:120], x[120:], 4, val_fraction=0.4,
                      weight_decays=(1e-6, 1e-1))
    assert chosen == 1e-1


def test_accuracy_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=(300, 7)), rng.integers(0, 7, size=300)
    metrics, evidence = accuracy_metrics(scores, labels, "x", np.arange(300))
    assert metrics["x_top1"] == pytest.approx(top_k_accuracy_score(labels, scores, k=1))
    assert metrics["x_top5"] == pytest.approx(
        top_k_accuracy_score(labels, scores, k=5, labels=np.arange(7)))
    assert all(evidence[m].value() == pytest.approx(v) for m, v in metrics.items())
    assert evidence["x_top1"].unit == "item" and len(evidence["x_top1"].units) == 300
    assert set(accuracy(scores[:, :5], labels % 5, "x")) == {"x_top1"}


# --------------------------------------------------------------------------- data


def product_dataset(n_per_class: int = 16, n_classes: int = 4, seed: int = 0) -> Dataset:
    """Product shots (colour classes) plus content items and a test-only class to be dropped."""
    n = n_per_class * n_classes
    images, labels = colour_images(n + 8, n_classes, seed)
    labels[n:] = 99
    split = np.where((np.arange(n + 8) // 4) % 4 == 0, "test", "train")
    split[n:] = "test"
    table = pd.DataFrame({
        "id": [f"p{i:03d}" for i in range(n + 8)], "split": split,
        "role": ["product"] * n + ["content"] * 4 + ["product"] * 4,
        "category": [f"c{v}" for v in labels],
        "identity": [f"i{i}" for i in range(n + 8)],
    })
    table.loc[n:n + 3, "category"] = "c0"  # content covers labelled c0: never used
    return Dataset("products", table, array_image_source(images), 16, f"products-{n}-{seed}")


def test_make_split_uses_product_train_and_test_and_stratifies_validation():
    data = product_dataset()
    split = make_split(data, seed=0, val_fraction=0.25)
    table = data.table
    assert set(table["role"].iloc[split.train]) == {"product"}
    assert set(table["split"].iloc[split.train]) == {"train"}
    assert set(table["split"].iloc[split.test]) == {"test"}
    assert set(table["role"].iloc[split.test]) == {"product"}  # covers never used
    assert list(split.classes) == ["c0", "c1", "c2", "c3"]  # class 99 (test only) dropped
    assert np.array_equal(np.sort(np.concatenate([split.fit, split.val])), np.arange(48))
    assert np.bincount(split.train_y[split.val]).tolist() == [3, 3, 3, 3]
    other = make_split(data, seed=1, val_fraction=0.25)
    assert not np.array_equal(split.val, other.val)


def test_skip_reason():
    task = get_task("classify")
    assert task.skip_reason(product_dataset()) is None
    data = product_dataset()
    data.table["category"] = "same"
    assert "fewer than two" in task.skip_reason(data)
    data.table = data.table.drop(columns="category")
    assert "no 'category'" in task.skip_reason(data)


# --------------------------------------------------------------------------- the task


def embeddings_of(data: Dataset, extractor: TinyExtractor, fingerprint: str) -> Embeddings:
    from bench.train.backbones import embed_images

    vectors = embed_images(extractor.model, [data.images()], 16)
    return Embeddings(data.ids, vectors, {"fingerprint": fingerprint})


OPTIONS = dict(epochs=2, batch_size=16, lr=0.05, max_seconds=0, val_fraction=0.25,
               probe_max_iter=50)


def test_probe_finetune_and_scratch_rows(cache):
    data = product_dataset()
    task, tune = get_task("classify"), get_task("finetune_classify")
    extractor = TinyExtractor("tiny")
    before = state(extractor.model)
    emb = embeddings_of(data, extractor, "tiny-fp")
    ctx = TaskContext(seed=0, variant="raw", options=OPTIONS, extractor=extractor, cache=cache)
    probe = {r["metric"]: r["value"] for r in task.evaluate(emb, data, ctx)}
    assert set(probe) == {"probe_top1"}  # 4 classes: no top-5
    assert probe["probe_top1"] > 0.9  # colour classes are easy
    ft_ctx = TaskContext(seed=0, variant="ft", options=OPTIONS, extractor=extractor, cache=cache)
    own = {r["metric"]: r["value"] for r in tune.evaluate(emb, data, ft_ctx)}
    twin = TinyExtractor("twin", seed=4)
    # one scratch reference per architecture, drawn from the first extractor of it
    [reference] = tune.references([("tiny", extractor), ("twin", twin), ("none", object())],
                                  data, OPTIONS)
    assert (reference.label, reference.source, reference.variants) == (
        "scratch:resnet18-w8-small", "tiny", ("ft",))
    scratch = {r["metric"]: r["value"]
               for r in tune.evaluate_reference(reference, None, data, ft_ctx)}
    assert set(own) == set(scratch) == {"finetune_top1", "finetune_s", "finetune_steps"}
    assert own["finetune_steps"] == scratch["finetune_steps"] == 6  # the same budget
    assert same_state(before, state(extractor.model))  # neither probe nor fine-tune touched it
    # the twin lends the same architecture: the same (cached) scratch result
    twin_ctx = TaskContext(seed=0, variant="ft", options=OPTIONS, extractor=twin, cache=cache)
    assert {r["metric"]: r["value"] for r in tune.evaluate_reference(reference, None, data,
                                                                      twin_ctx)} == scratch


def test_frozen_probe_ignores_the_extractor(cache):
    data = product_dataset()
    extractor = TinyExtractor()
    emb = embeddings_of(data, extractor, "fp")
    task = get_task("classify")
    with_backbone = task.evaluate(emb, data, TaskContext(options=OPTIONS, extractor=extractor,
                                                         cache=cache))
    plain = task.evaluate(emb, data, TaskContext(options=OPTIONS, extractor=object(), cache=cache))
    assert [r["metric"] for r in with_backbone] == [r["metric"] for r in plain] == ["probe_top1"]
    assert with_backbone[0]["value"] == plain[0]["value"]


def test_probe_scores_are_cached_by_their_inputs(tmp_path, monkeypatch):
    from bench.core.cache import Cache
    from bench.tasks import classify as module

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2
    args = (x[:30], y[:30], x[30:], 2, np.arange(20), np.arange(20, 30), (1e-3, 1e-2), 20)
    first = module.cached_probe(Cache(tmp_path), *args)
    monkeypatch.setattr(module, "linear_probe", lambda *a, **k: pytest.fail("refitted"))
    assert np.array_equal(module.cached_probe(Cache(tmp_path), *args), first)
    with pytest.raises(pytest.fail.Exception):  # other vectors (a whitened variant): a miss
        module.cached_probe(Cache(tmp_path), x[:30] * 2, *args[1:])
