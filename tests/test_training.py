"""The shared training loop: augmentations, checkpoints (round trip, cache hit, resume,
corruption), the wall-clock budget, the loss log and batched embedding."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bench  # noqa: F401 - patches torchvision before lightly imports it
from bench.core.cache import Cache
from bench.core.config import get_profile
from bench.train.augment import ViewSpec, augment, lightly_view, to_unit
from bench.train.backbones import build_backbone, embed_images, images_to_tensor
from bench.train.checkpoint import (
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from bench.train.loop import StepInfo
from bench.train.options import resolve_options
from bench.train.ssl import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


IDENTITY = dict(min_scale=1.0, max_scale=1.0, ratio=(1.0, 1.0), hflip=0.0, cj_prob=0.0,
                gray=0.0)


def _images(n: int = 24, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return x * std + mean


# ---------------------------------------------------------------- augmentations

def test_identity_view_equals_plain_preprocessing():
    images = _images()
    out = augment(to_unit(torch.from_numpy(images)), ViewSpec(8, **IDENTITY),
                  torch.Generator().manual_seed(0))
    assert torch.allclose(out, images_to_tensor(images), atol=1e-5)


def test_flip_and_grayscale_are_applied_per_image():
    images = _images()
    x = to_unit(torch.from_numpy(images))
    g = torch.Generator().manual_seed(0)
    flipped = augment(x, ViewSpec(8, **(IDENTITY | {"hflip": 1.0})), g)
    assert torch.allclose(flipped, images_to_tensor(images).flip(-1), atol=1e-5)
    gray = _unnormalize(augment(x, ViewSpec(8, **(IDENTITY | {"gray": 1.0})), g))
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-5)
    assert torch.allclose(gray[:, 1], gray[:, 2], atol=1e-5)


def test_random_views_differ_per_image_and_repeat_with_the_seed():
    same = np.repeat(_images(1, 16), 6, axis=0)  # six copies of one image
    x = to_unit(torch.from_numpy(same))
    spec = ViewSpec(12, blur=0.5, sigmas=(0.1, 1.0))
    a = augment(x, spec, torch.Generator().manual_seed(3))
    b = augment(x, spec, torch.Generator().manual_seed(3))
    assert a.shape == (6, 3, 12, 12) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert (a[0] - a[1:]).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # parameters per image
    pixels = _unnormalize(a)
    assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4


def test_hue_jitter_keeps_gray_images_gray():
    gray = np.repeat(_images(4, 8)[..., :1], 3, axis=-1)
    spec = ViewSpec(8, **(IDENTITY | {"cj_prob": 1.0, "brightness": 0.0, "contrast": 0.0,
                                      "saturation": 0.0, "hue": 0.5}))
    out = augment(to_unit(torch.from_numpy(gray)), spec, torch.Generator().manual_seed(0))
    assert torch.allclose(out, images_to_tensor(gray), atol=1e-4)


def test_lightly_view_reads_lightly_defaults():
    from lightly.transforms import MoCoV2Transform, SwaVTransform

    d = {k: p.default for k, p in inspect.signature(MoCoV2Transform).parameters.items()}
    view = lightly_view(MoCoV2Transform, 32, blur=0.0)
    assert (view.size, view.min_scale, view.hflip, view.gray) == (
        32, d["min_scale"], d["hf_prob"], d["random_gray_scale"])
    assert (view.brightness, view.hue, view.cj_prob, view.blur) == (
        d["cj_bright"], d["cj_hue"], d["cj_prob"], 0.0)
    local = lightly_view(SwaVTransform, 16, crop=1)
    s = {k: p.default for k, p in inspect.signature(SwaVTransform).parameters.items()}
    assert (local.min_scale, local.max_scale) == (s["crop_min_scales"][1], s["crop_max_scales"][1])


# ---------------------------------------------------------------- the loop

class ToyMethod:
    """Supervised linear probe on mean colours: converges fast and deterministically."""

    def __init__(self, fail_in_epoch: int | None = None):
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
        self.calls = 0
        self.fail_in_epoch = fail_in_epoch

    def loss(self, images, targets, info: StepInfo):
        if self.fail_in_epoch is not None and info.epoch == self.fail_in_epoch:
            raise KeyboardInterrupt
        self.calls += 1
        return nn.functional.cross_entropy(self.model(to_unit(images)), targets)


def _toy_data(n: int = 32):
    images = _images(n)
    targets = np.arange(n) % 2
    images[targets == 1] //= 3  # dark images are class 1
    return images, targets


def _train(method, tmp_path, epochs=4, **kw):
    images, targets = _toy_data()
    config = TrainConfig(epochs=epochs, batch_size=8, lr=0.5, **kw)
    return train(method, images, targets, config, name="toy", key="k1",
                 cache=Cache(tmp_path / "cache"), device="cpu", log_dir=tmp_path / "log",
                 progress=False)


def test_losses_fall_and_the_log_is_written(tmp_path):
    result = _train(ToyMethod(), tmp_path, epochs=5)
    assert len(result.losses) == 5 and result.losses[-1] < result.losses[0]
    assert not result.cached and result.stopped_by == "epochs" and result.images_seen == 5 * 32
    log = json.loads((tmp_path / "log" / "train_log.json").read_text())
    assert log["extractor"] == "toy" and log["epochs"] == [1, 2, 3, 4, 5]
    assert log["loss"] == pytest.approx(result.losses) and log["images_per_s"] > 0


def test_checkpoint_round_trip(tmp_path):
    model = build_backbone("resnet18", 8, stem="strided")
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"format": 1, "key": "k", "model": model.state_dict(),
                           "optimizer": {}, "epoch": 1, "losses": [1.0], "done": True})
    state = load_checkpoint(path, "k")
    other = build_backbone("resnet18", 8, stem="strided", seed=5)
    other.load_state_dict(state["model"])
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="belongs to key"):
        load_checkpoint(path, "another-key")


def test_cache_hit_skips_training(tmp_path):
    first = ToyMethod()
    trained = _train(first, tmp_path)
    second = ToyMethod()
    again = _train(second, tmp_path)
    assert again.cached and second.calls == 0
    assert again.losses == trained.losses
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


def test_interrupted_training_resumes_from_the_last_epoch(tmp_path, capsys):
    with pytest.raises(KeyboardInterrupt):
        _train(ToyMethod(fail_in_epoch=2), tmp_path)
    state = load_checkpoint(checkpoint_path(Cache(tmp_path / "cache"), "toy", "k1"))
    assert state["epoch"] == 2 and not state["done"]
    method = ToyMethod()
    result = _train(method, tmp_path)
    assert "resuming" in capsys.readouterr().err
    assert method.calls == 2 * 4  # epochs 3 and 4 only, 4 steps each
    assert len(result.losses) == 4 and not result.cached


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupted_checkpoint_is_refused_and_retrained(tmp_path, capsys, damage):
    _train(ToyMethod(), tmp_path)
    path = checkpoint_path(Cache(tmp_path / "cache"), "toy", "k1")
    data = path.read_bytes()
    path.write_bytes(b"not a checkpoint" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=path.name):
        load_checkpoint(path)
    method = ToyMethod()
    result = _train(method, tmp_path)
    err = capsys.readouterr().err
    assert "corrupted" in err and path.name in err
    assert method.calls > 0 and not result.cached
    assert path.with_suffix(".corrupt").exists() and load_checkpoint(path)["done"]


def test_checkpoint_of_another_model_is_refused(tmp_path, capsys):
    _train(ToyMethod(), tmp_path)
    method = ToyMethod()
    method.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    _train(method, tmp_path)
    assert "does not fit the model" in capsys.readouterr().err
    assert method.calls > 0


def test_safety_stop_cuts_the_session_and_the_next_run_finishes_the_budget(tmp_path):
    """max_seconds ends this session after an epoch, says so, and leaves the checkpoint
    unfinished (never a cache hit); the next call resumes and ends with exactly the weights
    of a training that was never cut: the cap cannot change the result, only delay it."""
    cut_method = ToyMethod()
    cut = _train(cut_method, tmp_path / "cut", epochs=4, max_seconds=1e-6)
    assert cut.stopped_by == "max_seconds" and len(cut.losses) == 1 and not cut.cached
    assert cut.cut == "toy: training stopped by its max_seconds=1e-06 safety stop after 1 of " \
                      "4 epochs; the next run resumes it"
    path = checkpoint_path(Cache(tmp_path / "cut" / "cache"), "toy", "k1")
    assert not load_checkpoint(path)["done"]
    log = json.loads((tmp_path / "cut" / "log" / "train_log.json").read_text())
    assert log["cut"] == cut.cut and log["stopped_by"] == "max_seconds"
    resumed_method = ToyMethod()
    resumed = _train(resumed_method, tmp_path / "cut", epochs=4)
    assert resumed_method.calls == 3 * 4 and resumed.cut is None and len(resumed.losses) == 4
    whole_method = ToyMethod()
    whole = _train(whole_method, tmp_path / "whole", epochs=4)
    assert resumed.losses == whole.losses
    for a, b in zip(resumed_method.model.state_dict().values(),
                    whole_method.model.state_dict().values()):
        assert torch.equal(a, b)


class BankMethod(ToyMethod):
    """A method whose criterion holds a non-persistent buffer (as lightly's memory banks)."""

    def __init__(self):
        super().__init__()
        from lightly.loss import NTXentLoss

        self.criterion = NTXentLoss(memory_bank_size=(16, 2))

    def loss(self, images, targets, info: StepInfo):
        self.calls += 1
        out = self.model(to_unit(images))
        return self.criterion(out, out.flip(0))


def test_a_resumed_training_restores_the_memory_bank(tmp_path):
    first = BankMethod()
    _train(first, tmp_path / "a", epochs=3, max_seconds=1e-6)
    resumed = BankMethod()
    _train(resumed, tmp_path / "a", epochs=3)
    whole = BankMethod()
    _train(whole, tmp_path / "b", epochs=3)
    assert torch.equal(resumed.criterion.memory_bank.bank, whole.criterion.memory_bank.bank)
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- options and embedding

def test_resolve_options_casts_and_refuses_unknown_keys():
    defaults = {"quick": {"epochs": 1, "lr": 0.1, "stem": "strided", "flag": False}}
    profile = get_profile("quick")
    options = resolve_options("x", defaults, profile, {"epochs": "3", "lr": "0.5",
                                                         "flag": "true"})
    assert (options["epochs"], options["lr"], options["flag"]) == (3, 0.5, True)
    with pytest.raises(ValueError, match="unknown option 'epoch'"):
        resolve_options("x", defaults, profile, {"epoch": "3"})
    with pytest.raises(ValueError, match="expected a number"):
        resolve_options("x", defaults, profile, {"epochs": "many"})


def test_embed_images_is_a_batched_eval_forward():
    model = build_backbone("resnet18", 8, stem="strided", seed=0)
    images = _images(10, 16)
    batches = [images[:4], images[4:]]
    out = embed_images(model, batches, 16, "cpu")
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        expected = model(images_to_tensor(images, 16)).numpy()
    assert out.dtype == np.float32 and out.shape == (10, model.feature_dim)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_log_dir_is_optional(tmp_path):
    images, targets = _toy_data()
    result = train(ToyMethod(), images, targets, TrainConfig(epochs=1, batch_size=8),
                   name="toy", key="k2", cache=Cache(tmp_path), device="cpu", progress=False)
    assert Path(result.checkpoint).exists() and len(result.losses) == 1


def test_fit_loop_calls_its_hooks_and_keeps_to_max_steps():
    from bench.train.loop import Hooks, Plan, fit_loop, seeded_epochs

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls: list[tuple] = []

    def step_loss(idx, info):
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        return {"loss": loss, "half": loss / 2}

    hooks = Hooks(on_epoch_start=lambda epoch: calls.append(("start", epoch)),
                  on_epoch_end=lambda epoch, state: calls.append(("end", epoch, state.steps)),
                  on_step=lambda info, losses: calls.append(("step", info.step)))
    state = fit_loop(model, optimizer, step_loss, Plan(3, 5, 8, max_steps=12), name="toy",
                     device="cpu", lr_at=lambda step: 0.1 * (1 - step / 12),
                     shuffle=seeded_epochs(40, 0, "cpu"), hooks=hooks, progress=False)
    assert state.done and state.steps == 12 and state.epoch == 3 and state.cut is None
    assert [c for c in calls if c[0] != "step"] == [("start", 0), ("end", 0, 5), ("start", 1),
                                                    ("end", 1, 10), ("start", 2), ("end", 2, 12)]
    assert [c[1] for c in calls if c[0] == "step"] == list(range(12))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 12)  # the last step's
    np.testing.assert_allclose(state.history["half"], np.array(state.history["loss"]) / 2,
                               rtol=1e-6)
    assert state.images_seen == 12 * 8


def test_fit_loop_refuses_a_loss_that_is_not_finite():
    from bench.train.loop import Plan, fit_loop, seeded_epochs

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step_loss(idx, info):
        return model(torch.ones(len(idx), 3)).sum() * float("nan")

    with pytest.raises(FloatingPointError, match="toy: the loss became nan in epoch 1"):
        fit_loop(model, optimizer, step_loss, Plan(2, 2, 4), name="toy", device="cpu",
                 lr_at=lambda step: 0.1, shuffle=seeded_epochs(8, 0, "cpu"), progress=False)
