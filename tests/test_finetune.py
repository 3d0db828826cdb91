"""bench.train.finetune: scratch copies, augmentation, the budgeted loop, caches, scratch sharing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from bench.train import finetune as ft
from bench.train.augment import CropFlip, augment
from bench.train.backbones import build_backbone


def tiny_backbone(stem: str = "small", seed: int = 0) -> nn.Module:
    return build_backbone("resnet18", 8, stem=stem, seed=seed)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class TinyExtractor:
    """A backbone extractor without ``preprocess`` (the task falls back to the standard one)."""

    modalities = ("image",)

    def __init__(self, name: str = "tiny", stem: str = "small", seed: int = 0):
        self.name, self.arch, self.width, self.image_size = name, "resnet18", 8, 16
        self.model = tiny_backbone(stem, seed)
        self.dim = self.model.feature_dim

    def fit(self, dataset, ctx) -> None:
        """Random weights: nothing to learn."""

    def embed(self, dataset, rows: np.ndarray) -> np.ndarray:
        from bench.train.backbones import embed_images

        return embed_images(self.model, iter([dataset.images(rows)]), self.image_size)

    def config(self) -> dict:
        return {"arch": self.arch, "width": self.width, "name": self.name}

    def backbone(self) -> nn.Module:
        return self.model


def colour_images(n: int, n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is a colour (up to seven: the non-empty sets of RGB channels lit), on
    noise: an easy problem for any network."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    images = rng.integers(0, 40, size=(n, 16, 16, 3), dtype=np.uint8)
    lit = (((labels % 7 + 1)[:, None] >> np.arange(3)) & 1).astype(np.uint8)  # [n, 3] bits
    images += (lit * 200)[:, None, None, :]
    return images, labels


# --------------------------------------------------------------------------- backbones


def test_scratch_copy_same_architecture_fresh_weights_original_untouched():
    original = tiny_backbone()
    with torch.no_grad():  # make running stats differ from a fresh BatchNorm's
        original.bn1.running_mean.fill_(3.0)
    before = state(original)
    scratch = ft.scratch_copy(original, seed=1)
    assert same_state(before, state(original))
    assert ft.architecture_key(scratch) == ft.architecture_key(original)
    assert {k: v.shape for k, v in scratch.state_dict().items()} == \
        {k: v.shape for k, v in before.items()}
    for name, p in scratch.named_parameters():
        if p.ndim > 1:  # every weight matrix / kernel re-drawn
            assert not torch.equal(p, before[name]), name
    assert torch.equal(scratch.bn1.running_mean, torch.zeros_like(scratch.bn1.running_mean))
    again = ft.scratch_copy(original, seed=1)
    other = ft.scratch_copy(original, seed=2)
    assert same_state(state(scratch), state(again))
    assert not same_state(state(scratch), state(other))


def test_scratch_copy_resets_parameters_of_modules_without_reset():
    class WithToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.full((4,), 5.0))
            self.linear = nn.Linear(4, 2)

    scratch = ft.scratch_copy(WithToken(), seed=0)
    assert scratch.token.abs().max() < 1.0


def test_architecture_key_and_label_tell_stems_apart():
    small, strided = tiny_backbone("small"), tiny_backbone("strided")
    assert ft.architecture_key(small) != ft.architecture_key(strided)
    assert ft.architecture_key(small) == ft.architecture_key(tiny_backbone("small", seed=5))
    assert ft.architecture_label(TinyExtractor(), small) == "resnet18-w8-small"
    assert ft.architecture_label(TinyExtractor(stem="strided"), strided) == "resnet18-w8-strided"

    class Options:  # settings in an ``options`` dict, as the SSL extractors keep them
        options = {"arch": "resnet50", "width": 64}

    assert ft.architecture_label(Options(), nn.Linear(2, 2)) == "resnet50-w64"
    assert ft.architecture_label(object(), nn.Linear(2, 2)).startswith("Linear-")


def test_image_transform_prefers_the_extractor_preprocess():
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)

    class WithPreprocess:
        def preprocess(self, x):
            return torch.ones(len(x), 3, 4, 4)

    assert ft.image_transform(WithPreprocess())(images).shape == (2, 3, 4, 4)
    fallback = ft.image_transform(TinyExtractor())(images)  # standard, resized to 16
    assert fallback.shape == (2, 3, 16, 16)


# --------------------------------------------------------------------------- training


def test_augment_flips_and_crops_without_changing_shape():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    flipped_or_not = augment(x, CropFlip(0.0), g)
    for i in range(2):
        assert torch.equal(flipped_or_not[i], x[i]) or torch.equal(flipped_or_not[i], x[i].flip(2))
    crops = augment(x.repeat(16, 1, 1, 1), CropFlip(0.25), g)
    assert crops.shape == (32, 3, 8, 8)
    padded = torch.nn.functional.pad(x[:1].repeat(1, 1, 1, 1), (2, 2, 2, 2), mode="reflect")[0]
    windows = {(dy, dx): padded[:, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)}
    for i in range(0, 32, 2):  # even rows are copies of x[0]: each is one shifted window
        crop = crops[i]
        assert any(torch.equal(crop, w) or torch.equal(crop, w.flip(2)) for w in windows.values())
    assert len({tuple(c.flatten()[:20].tolist()) for c in crops[::2]}) > 1


def test_warmup_cosine_schedule():
    factors = [ft.warmup_cosine(s, 100, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1)
    assert max(factors) == pytest.approx(1.0)
    assert factors[-1] < 0.01
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_budget_from_options_casts_and_ignores_other_keys():
    budget = ft.Budget.from_options({"epochs": "3", "lr": "0.5", "max_steps": 7, "k": 10})
    assert budget.epochs == 3 and budget.lr == 0.5 and budget.max_steps == 7
    assert isinstance(budget.epochs, int) and budget.as_dict()["batch_size"] == 64


def test_train_respects_max_steps_and_max_seconds():
    model = nn.Linear(3, 2)
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))

    def loss_fn(idx):
        return nn.functional.cross_entropy(model(x[idx]), y[idx])

    g = torch.Generator().manual_seed(0)
    cpu = torch.device("cpu")
    log = ft.train(model, 40, loss_fn, ft.Budget(epochs=5, batch_size=8, max_steps=7), g, cpu)
    assert (log.steps, log.planned_steps, log.capped) == (7, 7, False)
    log = ft.train(model, 40, loss_fn, ft.Budget(epochs=2, batch_size=8), g, cpu)
    assert log.steps == log.planned_steps == 10 and len(log.epoch_losses) == 2
    log = ft.train(model, 40, loss_fn, ft.Budget(epochs=2, batch_size=8, max_seconds=1e-9), g, cpu)
    assert log.steps == 0 and log.capped
    log = ft.train(model, 40, loss_fn, ft.Budget(epochs=2, batch_size=8, max_seconds=0.0), g, cpu)
    assert log.steps == 10 and not log.capped  # 0: no cap at all


def test_finetune_classifier_learns_and_leaves_the_original_untouched():
    images, labels = colour_images(48, 3)
    original = tiny_backbone()
    before = state(original)
    copy = ft.finetune_copy(original)
    # 12 epochs: after 18 steps BatchNorm's running statistics still lag the trained weights
    # (eval-mode accuracy 0.67 on some CPUs although the training loss is 0.007)
    budget = ft.Budget(epochs=12, batch_size=16, lr=0.05)
    model, log = ft.finetune_classifier(copy, images, labels, 3, budget, 0,
                                        ft.standard_transform(16), torch.device("cpu"))
    assert same_state(before, state(original))  # the extractor's backbone is not modified
    assert not same_state(before, state(copy))  # ... but the fine-tuned copy is
    assert model[0] is copy and log.steps == 36
    assert log.epoch_losses[-1] < log.epoch_losses[0]
    logits = ft.predict(model, images, ft.standard_transform(16), torch.device("cpu"))
    assert logits.shape == (48, 3) and (logits.argmax(1) == labels).mean() > 0.8


def test_finetune_pairs_runs_with_lightly_ntxent():
    images, _ = colour_images(20, 10)

    def pairs(groups):
        idx = groups.numpy()
        return idx, idx + 10  # image i and i + 10 share an identity

    original = tiny_backbone()
    model, log = ft.finetune_pairs(ft.finetune_copy(original), images, pairs, 10,
                                   ft.Budget(epochs=2, batch_size=5), 0,
                                   ft.standard_transform(16), torch.device("cpu"))
    assert log.steps == 4 and all(np.isfinite(log.epoch_losses))
    assert not same_state(state(original), state(model))


# --------------------------------------------------------------------------- caching


def test_cached_result_computes_once_and_recovers_from_corruption(cache):
    calls = []

    def compute():
        calls.append(1)
        return {"metrics": {"a": 1.0}}

    assert ft.cached_result(cache, "finetune", "k1", compute) == {"metrics": {"a": 1.0}}
    assert ft.cached_result(cache, "finetune", "k1", compute) == {"metrics": {"a": 1.0}}
    assert len(calls) == 1
    cache.path("finetune", "k1", ".json").write_text("{not json")
    assert ft.cached_result(cache, "finetune", "k1", compute)["metrics"]["a"] == 1.0
    assert len(calls) == 2
    assert json.loads(cache.path("finetune", "k1", ".json").read_text())["metrics"]["a"] == 1.0
    ft.cached_result(None, "finetune", "k1", compute)
    ft.cached_result(cache, "finetune", None, compute)
    assert len(calls) == 4


def test_capped_results_are_not_cached(cache):
    calls = []

    def capped():
        calls.append(1)
        return {"metrics": {}, "capped": True}

    ft.cached_result(cache, "finetune", "k2", capped)
    ft.cached_result(cache, "finetune", "k2", capped)
    assert len(calls) == 2 and not cache.path("finetune", "k2", ".json").exists()
    assert "max_seconds" not in ft.Budget(max_seconds=5).key()
    assert ft.Budget(max_seconds=5).key() == ft.Budget(max_seconds=50).key()


def test_own_and_scratch_results_are_copies_and_the_scratch_depends_on_architecture(cache):
    from bench.core.extractor import BackboneExtractor

    trained = []

    def train_and_score(model, to_tensor):
        trained.append(model)
        return {"metrics": {"acc": float(len(trained))}, "budget": {"epochs": 1}}

    a, b = TinyExtractor("a"), TinyExtractor("b", seed=3)
    assert isinstance(a, BackboneExtractor)
    own = ft.own_result("classify", a, "fa", ("data",), 0, cache, train_and_score)
    scratch = ft.scratch_result("classify", a, 16, ("data",), 0, cache, train_and_score)
    assert own["metrics"]["acc"] == 1.0 and scratch["metrics"]["acc"] == 2.0
    assert trained[0] is not a.model and trained[1] is not a.model  # copies, never the original
    # b has the same architecture: the same scratch result (cached), whoever lends it
    assert ft.scratch_result("classify", b, 16, ("data",), 0, cache, train_and_score) == scratch
    assert len(trained) == 2
    ft.scratch_result("classify", b, 16, ("data",), 1, cache, train_and_score)
    assert len(trained) == 3  # another seed: its own baseline
    key_a, label_a = ft.scratch_architecture(a, 16)
    assert (key_a, label_a) == ft.scratch_architecture(b, 16)
    assert label_a == "resnet18-w8-small"
    key_c, label_c = ft.scratch_architecture(TinyExtractor("c", stem="strided"), 16)
    assert key_c != key_a and label_c.endswith("strided")
    assert ft.scratch_architecture(a, 32)[0] != key_a  # another input size
