"""extractors/m6_moe.py: gate, capacity, auxiliary loss, tokenizer, training step, checkpoint cache.

Runs on a tiny synthetic dataset (coloured 32 px images whose title names their colour class), so
it needs no other dataset plugin and stays fast on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.core import registry
from bench.core.cache import Cache
from bench.core.config import get_profile
from bench.core.data import Dataset, array_image_source
from bench.core.extractor import FitContext
from bench.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

registry.load_file(registry.REPO_ROOT / "extractors" / "m6_moe.py")
m6 = sys.modules["bench_plugins.extractors.m6_moe"]

TINY = dict(m6._COMMON, width=4, image_size=32, d_model=16, heads=2, layers=2,
            experts=4, top_k=2, expert_hidden=16, epochs=2, batch_size=16, lr=3e-3,
            max_seconds=0, max_words=6, dim=8)
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200),
           "yellow": (220, 200, 40)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny kernels on a shared 2-core machine run far faster on one thread (no spin-waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_dataset(n: int = 48, seed: int = 0) -> Dataset:
    """Content covers tinted by a colour class whose name (or a synonym) is in the title."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    labels = [names[i % len(names)] for i in range(n)]
    images = rng.integers(0, 60, size=(n, 32, 32, 3)).astype(np.int16)
    images += np.array([COLOURS[c] for c in labels], dtype=np.int16)[:, None, None, :] // 2
    titles = [f"A {c.upper()} room, with {rng.choice(['lamp', 'sofa', 'rug'])}!" for c in labels]
    titles[-1] = ""  # a test item without a title
    table = pd.DataFrame({"id": [f"c{i}" for i in range(n)], "role": "content",
                          "split": ["train" if i < 2 * n // 3 else "test" for i in range(n)],
                          "style": labels, "title": titles})
    return Dataset("tiny", table, array_image_source(images.clip(0, 255).astype(np.uint8)),
                   image_size=32, fingerprint=f"tiny-{n}-{seed}")


def make_moe(n_experts=4, top_k=2, capacity_factor=None, d=8, seed=0):
    torch.manual_seed(seed)
    return m6.SparseMoE(d, 16, n_experts, top_k, capacity_factor)


# --------------------------------------------------------------------------- gate and experts


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_gate_picks_exactly_k_distinct_experts_with_weights_summing_to_one(top_k):
    moe = make_moe(n_experts=5, top_k=top_k)
    x = torch.randn(64, 8)
    routing = moe.route(x)
    assert routing.experts.shape == (64, top_k)
    assert all(len(set(row.tolist())) == top_k for row in routing.experts)
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(64))
    assert (routing.weights > 0).all()
    # the kept experts are the k largest gate values, and the weights are their softmax
    logits = moe.gate(x)
    reference = torch.sort(logits, dim=-1, descending=True)
    torch.testing.assert_close(routing.experts, reference.indices[:, :top_k])
    torch.testing.assert_close(routing.weights, reference.values[:, :top_k].softmax(-1))


def test_output_is_the_weighted_sum_of_the_selected_experts():
    moe = make_moe(top_k=2)
    x = torch.randn(10, 8)
    y, _ = moe(x)
    routing = moe.route(x)
    for t in range(len(x)):
        expected = sum(routing.weights[t, j] * moe.experts[int(routing.experts[t, j])](x[t:t + 1])[0]
                       for j in range(2))
        torch.testing.assert_close(y[t], expected)


def test_unselected_experts_receive_no_gradient_from_a_token():
    moe = make_moe(n_experts=6, top_k=2)
    x = torch.randn(1, 8)
    y, _ = moe(x)
    y.sum().backward()
    chosen = set(moe.route(x).experts[0].tolist())
    for index, expert in enumerate(moe.experts):
        grads = [p.grad for p in expert.parameters()]
        if index in chosen:
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        else:  # never even ran: only the selected experts compute for a token
            assert all(g is None for g in grads)


def test_unselected_experts_get_zero_gradient_from_one_token_in_a_batch():
    moe = make_moe(n_experts=4, top_k=1)
    x = torch.randn(40, 8)
    y, _ = moe(x)
    chosen = int(moe.route(x).experts[0, 0])
    params = [p for expert in moe.experts for p in expert.parameters()]
    grads = torch.autograd.grad(y[0].sum(), params, allow_unused=True)
    per_expert = len(params) // 4
    for index in range(4):
        g = grads[index * per_expert:(index + 1) * per_expert]
        total = sum(float(t.abs().sum()) for t in g if t is not None)
        assert (total > 0) == (index == chosen)


# --------------------------------------------------------------------------- auxiliary loss


def reference_aux(probs: np.ndarray, experts: np.ndarray) -> float:
    """Switch/GShard auxiliary loss by explicit loops (float64)."""
    n_tokens, n = probs.shape
    total = 0.0
    for i in range(n):
        f_i = sum(int(e == i) for row in experts for e in row) / experts.size
        p_i = sum(probs[t, i] for t in range(n_tokens)) / n_tokens
        total += f_i * p_i
    return n * total


def test_auxiliary_loss_matches_a_loop_reference():
    moe = make_moe(n_experts=5, top_k=2)
    routing = moe.route(torch.randn(30, 8) * 3)
    value = m6.load_balancing_loss(routing.probs, routing.experts)
    expected = reference_aux(routing.probs.detach().double().numpy(), routing.experts.numpy())
    assert float(value.detach()) == pytest.approx(expected, rel=1e-5)


def test_auxiliary_loss_is_minimal_for_a_uniform_router():
    n = 4
    moe = make_moe(n_experts=n, top_k=1)
    x = torch.randn(256, 8)
    direction = torch.zeros(n, 8)
    direction[0] = 1.0  # expert 0's gate logit grows with the (positive) inputs
    values = []
    for scale in (0.0, 0.02, 0.1, 0.3, 50.0):  # uniform router -> one expert takes everything
        with torch.no_grad():
            moe.gate.weight.copy_(direction * scale)
        routing = moe.route(x.abs())  # positive inputs: expert 0 always scores highest
        values.append(float(m6.load_balancing_loss(routing.probs, routing.experts).detach()))
    assert values[0] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(n, rel=1e-3)
    # random routers on random tokens are never below the uniform one
    for seed in range(5):
        routing = make_moe(n_experts=n, top_k=1, seed=seed).route(torch.randn(256, 8) * 4)
        assert float(m6.load_balancing_loss(routing.probs, routing.experts).detach()) >= 1 - 1e-6


# --------------------------------------------------------------------------- capacity


def test_capacity_drops_overflow_and_serves_first_choices_first():
    experts = torch.tensor([[0, 1], [0, 1], [0, 2], [1, 0]])
    keep = m6.capacity_mask(experts, 3, capacity=2)
    # expert 0: first choices of tokens 0,1 fill it; token 2's first choice and token 3's second
    # choice overflow. expert 1: token 3's first choice, then token 0's second; token 1's dropped.
    expected = torch.tensor([[True, True], [True, False], [False, True], [True, False]])
    assert torch.equal(keep, expected)


def test_tokens_over_capacity_pass_through_and_are_counted():
    moe = make_moe(n_experts=4, top_k=1, capacity_factor=0.5)
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.weight[2, 0] = 1.0  # every positive token prefers expert 2
    x = torch.randn(32, 8).abs()
    moe.train()
    y, _ = moe(x)
    capacity = math.ceil(0.5 * 32 * 1 / 4)
    assert int(moe.load[2]) == capacity and int(moe.load.sum()) == capacity
    assert (y.abs().sum(1) == 0).sum() == 32 - capacity  # dropped tokens: zero MoE output
    assert int(moe.dropped) == 32 - capacity and int(moe.routed) == 32
    moe.eval()  # no capacity limit at inference
    y_eval, _ = moe(x)
    assert (y_eval.abs().sum(1) > 0).all()


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_handles_unseen_words_and_empty_titles():
    tokenizer = m6.Tokenizer.build(["A Red sofa!", "blue RUG, red lamp"])
    assert tokenizer.vocab[:4] == list(m6.SPECIALS)
    assert set(tokenizer.vocab[4:]) == {"a", "red", "sofa", "blue", "rug", "lamp"}
    ids = tokenizer.encode(["red zebra", "", "   ", "a red sofa blue rug lamp red"], max_words=4)
    assert ids.shape == (4, 4)
    assert ids[0].tolist() == [tokenizer.index["red"], m6.UNK, m6.PAD, m6.PAD]
    assert (ids[1] == m6.PAD).all() and (ids[2] == m6.PAD).all()
    assert ids[3].tolist() == [tokenizer.index[w] for w in ("a", "red", "sofa", "blue")]


def test_model_embeds_empty_titles_like_image_only():
    torch.manual_seed(0)
    model = m6.M6MoE(10, TINY).eval()
    images = torch.randn(3, 3, 32, 32)
    ids = torch.full((3, TINY["max_words"]), m6.PAD)
    with torch.no_grad():
        with_empty = model.embed(images, ids)
        image_only = model.embed(images, None)
    assert torch.isfinite(with_empty).all()
    torch.testing.assert_close(with_empty, image_only)
    torch.testing.assert_close(with_empty.norm(dim=1), torch.ones(3))


# --------------------------------------------------------------------------- training


def test_info_nce_matches_a_numpy_reference():
    a = torch.nn.functional.normalize(torch.randn(6, 5), dim=1)
    b = torch.nn.functional.normalize(torch.randn(6, 5), dim=1)
    logits = (a @ b.T).double().numpy() / 0.1

    def cross_entropy(m):
        return float(np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(m)]))

    expected = 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))
    assert float(m6.info_nce(a, b, 0.1)) == pytest.approx(expected, rel=1e-5)


def test_word_augmentations_only_touch_real_words():
    ids = torch.tensor([[5, 6, 7, 8, m6.PAD, m6.PAD]] * 200)
    generator = torch.Generator().manual_seed(0)
    masked, targets = m6.mask_words(ids, 0.3, generator)
    chosen = masked == m6.MASK
    assert not chosen[:, 4:].any() and 0.2 < chosen[:, :4].float().mean() < 0.4
    assert torch.equal(targets[chosen], ids[chosen]) and (targets[~chosen] == -100).all()
    dropped = m6.drop_words(ids, 0.5, generator)
    assert ((dropped == ids) | (dropped == m6.PAD)).all()
    assert 0.4 < (dropped[:, :4] == m6.PAD).float().mean() < 0.6
    assert torch.equal(m6.drop_words(ids, 0.0, generator), ids)


def test_masked_word_head_is_tied_to_the_word_embeddings():
    torch.manual_seed(0)
    model = m6.M6MoE(12, TINY)
    states = torch.randn(2, 3, TINY["d_model"])
    before = model.word_logits(states)
    with torch.no_grad():
        model.words.weight[7] += 1.0
    after = model.word_logits(states)
    changed = (after - before).abs().sum((0, 1)) > 0
    assert changed.tolist() == [i == 7 for i in range(12)]


def test_one_training_step_on_tiny_data():
    dataset = tiny_dataset()
    rows = m6.training_rows(dataset)
    titles = dataset.titles(rows)
    tokenizer = m6.Tokenizer.build(titles)
    torch.manual_seed(0)
    model = m6.M6MoE(len(tokenizer), TINY).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = m6.images_to_tensor(dataset.images(rows[:16]), 32)
    ids = tokenizer.encode(titles[:16], TINY["max_words"])
    losses = m6.training_losses(model, images, ids, TINY, torch.Generator().manual_seed(0))
    assert set(losses) == {"loss", "itc", "mlm", "aux"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["itc"].detach()) > 0 and float(losses["aux"].detach()) >= 0.5
    losses["loss"].backward()
    assert model.words.weight.grad is not None and model.image.proj.weight.grad is not None
    assert model.image.backbone.conv1.weight.grad is not None
    optimizer.step()
    after = model.state_dict()
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert not torch.equal(before["image.backbone.conv1.weight"],
                           after["image.backbone.conv1.weight"])
    assert int(sum(layer.load.sum() for layer in model.moe_layers())) > 0


def fit(dataset, cache_root: Path, log_dir: Path, image_only=False, **overrides):
    extractor = m6.M6MoEExtractor({**TINY, **overrides}, image_only=image_only,
                                  name="m6_moe_image_only" if image_only else "m6_moe")
    ctx = FitContext(cache=Cache(cache_root), log_dir=log_dir, progress=False)
    extractor.fit(dataset, ctx)
    return extractor


def test_fit_logs_caches_and_embeds(tmp_path, monkeypatch):
    dataset = tiny_dataset()
    first = fit(dataset, tmp_path / "cache", tmp_path / "a")
    train_log = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert train_log["extractor"] == "m6_moe" and train_log["cached"] is False
    assert len(train_log["loss"]) == TINY["epochs"] and train_log["wall_s"] > 0
    assert np.asarray(train_log["expert_load"]).shape == (TINY["layers"], TINY["experts"])
    assert 0.0 <= train_log["dropped_share"] < 1.0
    assert len(train_log["largest_expert_share"]) == TINY["layers"]
    vectors = first.embed(dataset, np.arange(len(dataset)))
    assert vectors.shape == (len(dataset), 8) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    # batch independence: an item embedded alone gets the same vector
    np.testing.assert_allclose(first.embed(dataset, np.array([5])), vectors[5:6], atol=1e-5)

    # the image-only variant shares the cached weights: a cache hit, no training
    monkeypatch.setattr(m6, "train", lambda *a, **k: pytest.fail("trained despite the cache"))
    second = fit(dataset, tmp_path / "cache", tmp_path / "b", image_only=True)
    assert json.loads((tmp_path / "b" / "train_log.json").read_text())["cached"] is True
    image_only = second.embed(dataset, np.arange(len(dataset)))
    assert second.modalities == ("image",) and second.train_config() == first.train_config()
    last = len(dataset) - 1  # the untitled item: fused and image-only agree
    np.testing.assert_allclose(image_only[last], vectors[last], atol=1e-5)
    assert not np.allclose(image_only[:last], vectors[:last], atol=1e-3)
    assert first.backbone() is first.model.image.backbone  # the image tower only
    pooled = first.backbone()(first.preprocess(dataset.images(np.arange(2))))
    assert pooled.shape == (2, first.model.image.backbone.feature_dim)


def test_corrupted_checkpoint_is_refused_and_retrained(tmp_path, capsys):
    dataset = tiny_dataset(n=24)
    extractor = fit(dataset, tmp_path / "cache", None, epochs=1)
    path, key = extractor.checkpoint_path(dataset, FitContext(cache=Cache(tmp_path / "cache")))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path, key)
    capsys.readouterr()
    fit(dataset, tmp_path / "cache", None, epochs=1)
    message = capsys.readouterr().err
    assert str(path) in message and "training from scratch" in message
    assert path.with_suffix(".corrupt").read_bytes() == b"not a checkpoint"
    assert load_checkpoint(path, key)["done"]  # replaced by a good one


def test_an_interrupted_training_resumes_after_its_last_epoch(tmp_path, capsys):
    dataset = tiny_dataset(n=24)
    extractor = fit(dataset, tmp_path / "cache", None, epochs=2)
    path, key = extractor.checkpoint_path(dataset, FitContext(cache=Cache(tmp_path / "cache")))
    state = load_checkpoint(path, key)
    first_loss = state["log"]["loss"][0]
    # pretend the run stopped after epoch 1
    state["done"], state["epoch"] = False, 1
    state["log"] = {**state["log"], **{k: state["log"][k][:1] for k in m6.HISTORY}}
    save_checkpoint(path, state)
    capsys.readouterr()
    resumed = fit(dataset, tmp_path / "cache", None, epochs=2)
    assert "resuming" in capsys.readouterr().err
    assert len(resumed.train_log["loss"]) == 2 and resumed.train_log["loss"][0] == first_loss
    assert load_checkpoint(path, key)["done"]


def test_fit_refuses_a_dataset_without_titles(tmp_path):
    dataset = tiny_dataset(n=24)
    dataset.table["title"] = None
    with pytest.raises(ValueError, match="titled content covers"):
        fit(dataset, tmp_path, None)


# --------------------------------------------------------------------------- registry


def test_registered_names_options_and_profile_budgets():
    quick = get_profile("quick")
    fused = registry.build_extractor("m6_moe", quick)
    image_only = registry.build_extractor("m6_moe_image_only", quick)
    option = registry.build_extractor("m6_moe:image_only=1,dim=64", quick)
    assert (fused.name, fused.dim) == ("m6_moe", 32)
    assert image_only.name == "m6_moe_image_only" and image_only.image_only
    assert option.image_only and option.dim == 64 and option.name == "m6_moe_image_only:dim=64"
    assert callable(fused.backbone) and not callable(getattr(image_only, "backbone", None))
    assert image_only.modalities == ("image",) and fused.modalities == ("image", "text")
    assert fused.train_config() == image_only.train_config()  # one shared checkpoint
    assert fused.config() != image_only.config()  # but separate embeddings
    assert fused.options["max_seconds"] == m6.DEFAULTS["quick"]["max_seconds"]
    budget = get_profile("default").budget("m6_moe", m6.DEFAULTS)
    assert {k: budget[k] for k in m6.DEFAULTS["default"]} == m6.DEFAULTS["default"]
    with pytest.raises(ValueError, match="unknown option"):
        registry.build_extractor("m6_moe:colour=red", quick)
