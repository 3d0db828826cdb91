"""pretrained, moco_v2 and swav on tiny data: one training step of each method, fit and embed
through the registry, the weight cache, falling losses where training is stable, and loading
torchvision weights from a local file."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch

from bench.core import registry
from bench.core.cache import Cache
from bench.core.config import get_profile
from bench.core.data import Dataset, array_image_source
from bench.core.extractor import FitContext
from bench.train.augment import ViewSpec
from bench.train.loop import StepInfo
from bench.train.ssl import TrainConfig, train

TINY = "arch=resnet18,width=8,image_size=16,batch_size=8,epochs=1,max_seconds=0"
NAMES = ("pretrained", "moco_v2", "swav")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def plugins():
    registry.load_plugins()
    missing = [n for n in NAMES if n not in registry.EXTRACTORS]
    assert not missing, f"plugins failed to load: {registry.load_errors}"


def tiny_dataset(n: int = 48, columns: tuple[str, ...] = ("coarse_category",)) -> Dataset:
    """Coloured squares on noise; the class is the square's colour."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 80, (n, 16, 16, 3), dtype=np.uint8)
    classes = np.arange(n) % 3
    for i, c in enumerate(classes):
        images[i, 4:12, 4:12, c] = 255
    split = np.array(["pretrain", "train", "test"])[np.arange(n) // (n // 3) % 3]
    table = pd.DataFrame({"id": [f"t{i}" for i in range(n)], "split": split,
                          "role": np.where(np.arange(n) % 4 == 0, "content", "product")})
    for column in columns:
        table[column] = [f"c{c}" for c in classes]
    return Dataset("tiny", table, array_image_source(images), 16,
                   f"tiny-{n}-{'-'.join(columns)}")


def plugin(name: str):
    return sys.modules[f"bench_plugins.extractors.{name}"]


def build(spec: str, profile: str = "quick"):
    return registry.build_extractor(spec, get_profile(profile))


def ctx(tmp_path) -> FitContext:
    return FitContext(cache=Cache(tmp_path / "cache"), log_dir=tmp_path / "log", progress=False)


def _params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def one_step(method, images: np.ndarray, targets=None, step: int = 0) -> torch.Tensor:
    """One SGD step the way the loop does it; returns the loss."""
    optimizer = torch.optim.SGD(method.model.parameters(), lr=0.1, momentum=0.9)
    info = StepInfo(step, 10, 0, 10, torch.Generator().manual_seed(0))
    labels = None if targets is None else torch.as_tensor(targets)
    loss = method.loss(torch.from_numpy(images), labels, info)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


@pytest.mark.parametrize("name", NAMES)
def test_profiles_define_budgets(name):
    assert set(plugin(name).DEFAULTS) == {"quick", "default", "full"}
    for profile in ("quick", "default", "full"):
        extractor = build(name, profile)
        assert extractor.config()["epochs"] >= 1
        # a safety stop, not a budget: none in quick (tests and CI get the same numbers on
        # any machine), generous elsewhere, and never part of a cache key
        cap = extractor.options["max_seconds"]
        assert cap == 0 if profile == "quick" else cap > 0
        assert "max_seconds" not in extractor.config()


def test_one_moco_step_trains_the_query_and_moves_the_key_encoder():
    data = tiny_dataset()
    extractor = build(f"moco_v2:{TINY},memory_bank=16")
    method = extractor.method(16)
    query0, key0 = _params(method.model.backbone), _params(method.model.backbone_momentum)
    images = data.images(np.arange(8))
    loss = one_step(method, images)
    assert torch.isfinite(loss) and loss.ndim == 0
    query1 = _params(method.model.backbone)
    assert not torch.equal(query0, query1)
    assert extractor.backbone() is method.model.backbone  # the embedding trains in place
    one_step(method, images, step=1)  # the key encoder follows by EMA, not by gradient
    key2 = _params(method.model.backbone_momentum)
    assert not torch.equal(key0, key2)
    assert all(not p.requires_grad for p in method.model.backbone_momentum.parameters())


@pytest.mark.parametrize("queue", [0, 16])
def test_one_swav_step_with_frozen_prototypes(queue):
    data = tiny_dataset()
    extractor = build(f"swav:{TINY},freeze_epochs=1,n_prototypes=6,queue={queue}")
    method = extractor.method(80)  # 10 steps per epoch: prototypes frozen for 10 steps
    images = data.images(np.arange(8))
    backbone0 = _params(method.model.backbone)
    prototypes0 = method.model.prototypes.heads[0].weight.detach().clone()
    loss = one_step(method, images, step=0)
    assert torch.isfinite(loss) and loss.ndim == 0
    assert not torch.equal(backbone0, _params(method.model.backbone))
    normalised = prototypes0 / prototypes0.norm(dim=1, keepdim=True)
    assert torch.allclose(method.model.prototypes.heads[0].weight, normalised, atol=1e-6)
    if queue:
        assert len(method.model.queues) == 2  # one per global crop
        assert int(method.model.queues[0].bank_ptr) == 8
    one_step(method, images, step=11)  # unfrozen after the first epoch
    assert not torch.allclose(method.model.prototypes.heads[0].weight, normalised, atol=1e-4)


@pytest.mark.parametrize("profile, local", [("default", 24), ("full", 32)])
def test_swav_local_crops_follow_the_size_ratio(profile, local):
    """Local crops are ``local_size_ratio`` of the image side; both crop kinds share the jitter
    and grayscale options, and the local ones cover less of the image."""
    method = build("swav:random_gray_scale=0.05,cj_strength=0.5", profile).method(100)
    image_size = build("swav", profile).options["image_size"]
    assert method.global_view.size == image_size and method.local_view.size == local
    assert method.global_view.gray == method.local_view.gray == 0.05
    assert method.global_view.brightness == method.local_view.brightness > 0
    assert method.local_view.max_scale < method.global_view.min_scale


def test_swav_default_learns_at_the_rate_per_image_of_its_tuning_record():
    """The tuning record's batch 128 at lr 0.15, moved to batch 64 at the same rate per image:
    ``train`` scales ``lr`` (per 128 images) with the batch, so the option must not be
    pre-scaled too (until issue #26 it was: half the rate, and a probe at random's level)."""
    options = build("swav", "default").options
    config = TrainConfig.from_options(options)
    assert config.batch_size == 64
    sgd_lr = config.lr * config.batch_size / 128  # what ``train`` gives the optimizer
    assert sgd_lr == pytest.approx(0.15 * 64 / 128)


@pytest.mark.parametrize("name", ["moco_v2", "swav"])
def test_perf_hotspots_time_every_view_a_real_step_draws(name, monkeypatch):
    """``bench perf train --hotspots`` times the augmentations of a step apart from the step:
    it must draw the same views, in the same order, as the method's own loss."""
    from bench.perf.train import method_views

    method = build(f"{name}:{TINY}").method(16)
    module = sys.modules[type(method).__module__]
    drawn = []
    real = module.augment

    def counting(x, view, g):
        drawn.append(view)
        return real(x, view, g)

    monkeypatch.setattr(module, "augment", counting)
    one_step(method, tiny_dataset().images(np.arange(8)))
    assert drawn == method_views(name, method)


def test_one_supervised_step():
    data = tiny_dataset()
    extractor = build(f"pretrained:{TINY}")
    method = extractor.method(3)
    rows = np.arange(8)
    targets = np.arange(8) % 3
    before = _params(method.model.backbone)
    loss = one_step(method, data.images(rows), targets)
    assert torch.isfinite(loss) and not torch.equal(before, _params(method.model.backbone))


def test_supervised_losses_fall_on_tiny_data(tmp_path):
    extractor = build(f"pretrained:{TINY},epochs=6,lr=0.05")
    extractor.fit(tiny_dataset(96), ctx(tmp_path))
    losses = extractor.training_result.losses
    assert len(losses) == 6 and losses[-1] < losses[0], losses


@pytest.mark.parametrize("spec", ["moco_v2:memory_bank=0", "swav:n_prototypes=8,freeze_epochs=0"])
def test_ssl_losses_fall_on_a_fixed_batch(spec):
    """Self-supervised losses are noisy on tiny data; on one repeated batch with mild views
    (crop and flip only) they must still go down."""
    extractor = build(f"{spec},{TINY},batch_size=16")
    method = extractor.method(160)
    mild = ViewSpec(16, min_scale=0.6, cj_prob=0.0, gray=0.0)
    if hasattr(method, "view"):
        method.view = mild
    else:
        method.global_view = mild
        method.local_view = ViewSpec(8, min_scale=0.3, max_scale=0.6, cj_prob=0.0, gray=0.0)
    images = torch.from_numpy(tiny_dataset().images(np.arange(16)))
    optimizer = torch.optim.SGD(method.model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step in range(30):
        loss = method.loss(images, None, StepInfo(step, 30, 0, 30, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2, losses


@pytest.mark.parametrize("name", NAMES)
def test_fit_embed_and_cache_hit(tmp_path, name):
    data = tiny_dataset()
    extractor = build(f"{name}:{TINY}")
    initial = _params(extractor.backbone())
    extractor.fit(data, ctx(tmp_path))
    assert not extractor.training_result.cached
    assert (tmp_path / "log" / "train_log.json").exists()
    vectors = extractor.embed(data, np.arange(len(data)))
    assert vectors.shape == (len(data), extractor.dim) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    assert not torch.equal(initial, _params(extractor.backbone()))  # trained weights
    x = extractor.preprocess(data.images(np.arange(3)))
    assert tuple(x.shape) == (3, 3, extractor.image_size, extractor.image_size)

    again = build(f"{name}:{TINY}")
    again.fit(data, ctx(tmp_path))
    assert again.training_result.cached
    np.testing.assert_array_equal(again.embed(data, np.arange(len(data))), vectors)
    other = build(f"{name}:{TINY},lr=0.01")  # another config is another checkpoint
    other.fit(data, ctx(tmp_path))
    assert not other.training_result.cached


def test_pretrained_trains_on_pretrain_product_shots(tmp_path, monkeypatch):
    data = tiny_dataset()
    seen = {}

    def spy(method, images, targets, config, **kw):
        seen.update(n=len(images), classes=set(targets.tolist()))
        return train(method, images, targets, config, **kw)

    monkeypatch.setattr(plugin("pretrained"), "train", spy)
    extractor = build(f"pretrained:{TINY}")
    extractor.fit(data, ctx(tmp_path))
    expected = data.rows(role="product", split="pretrain")
    assert seen["n"] == len(expected) and seen["classes"] == {0, 1, 2}
    assert extractor.label_column == "coarse_category"


def test_pretrained_falls_back_to_category_or_says_why(tmp_path):
    extractor = build(f"pretrained:{TINY}")
    extractor.fit(tiny_dataset(columns=("category",)), ctx(tmp_path))
    assert extractor.label_column == "category"
    with pytest.raises(ValueError, match="no 'pretrain' split items labelled"):
        build(f"pretrained:{TINY}").fit(tiny_dataset(columns=()), ctx(tmp_path))


def test_ssl_methods_train_on_their_train_role(tmp_path, monkeypatch, capsys):
    """Both learn from every train image unless ``train_role`` names a role (``content``: the
    covers); a dataset without train items of that role, or without roles, lends them all."""
    data = tiny_dataset()
    sizes = []

    def spy(method, images, targets, config, **kw):
        sizes.append((len(images), targets))
        return train(method, images, targets, config, **kw)

    import bench.train.ssl

    monkeypatch.setattr(bench.train.ssl, "train", spy)  # the shared self-supervised fit calls it
    every, covers = len(data.rows(split="train")), len(data.rows(role="content", split="train"))
    assert 2 <= covers < every
    for name, role in (("moco_v2", ""), ("swav", ""), ("moco_v2", ",train_role=content"),
                       ("swav", ",train_role=content")):
        build(f"{name}:{TINY}{role}").fit(data, ctx(tmp_path))
    assert sizes == [(every, None), (every, None), (covers, None), (covers, None)]

    no_covers = tiny_dataset()
    no_covers.table["role"] = "product"
    no_roles = tiny_dataset()
    no_roles.table = no_roles.table.drop(columns="role")
    sizes.clear()
    for dataset in (no_covers, no_roles):
        build(f"swav:{TINY},train_role=content").fit(dataset, ctx(tmp_path))
    assert sizes == [(every, None)] * 2
    assert "no train items of role 'content'" in capsys.readouterr().err


@pytest.mark.parametrize("name", NAMES)
def test_config_carries_the_training_version(name, monkeypatch):
    """The runner keys cached embeddings by ``config()``: a change to the shared training loop
    (a ``TRAINING_VERSION`` bump) must retire the embeddings its old weights gave."""
    import bench.train.checkpoint
    import bench.train.ssl

    before = build(f"{name}:{TINY}").config()
    assert before["training_version"] == bench.train.checkpoint.TRAINING_VERSION
    assert "device" not in before and "weights" not in before
    monkeypatch.setattr(bench.train.ssl, "TRAINING_VERSION", "test")
    assert build(f"{name}:{TINY}").config() != before


def test_pretrained_loads_torchvision_weights(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    reference = resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    extractor = build(f"pretrained:weights={path},image_size=32")
    assert extractor.config()["arch"] == "resnet18" and extractor.dim == 512
    data = tiny_dataset(8)
    extractor.fit(data, ctx(tmp_path))  # nothing to train
    assert extractor.training_result is None
    vectors = extractor.embed(data, np.arange(8))
    reference.fc = torch.nn.Identity()
    reference.eval()
    with torch.no_grad():
        expected = reference(extractor.preprocess(data.images(np.arange(8)))).numpy()
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-4)


def test_pretrained_refuses_weights_that_do_not_fit(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), path)
    with pytest.raises(ValueError, match="does not fit torchvision resnet50"):
        build(f"pretrained:weights={path},arch=resnet50")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read weights file"):
        build(f"pretrained:weights={bad}")
    with pytest.raises(FileNotFoundError):
        build(f"pretrained:weights={tmp_path / 'missing.pth'}")


def test_unknown_option_is_refused():
    with pytest.raises(ValueError, match="unknown option 'epoch'"):
        build("moco_v2:epoch=3")


def test_train_config_reads_the_budget():
    extractor = build(f"swav:{TINY},lr=0.2")
    config = TrainConfig.from_options(extractor.options)
    assert (config.lr, config.batch_size, config.epochs) == (0.2, 8, 1)


def test_ssl_without_a_train_split_learns_from_every_image(tmp_path, capsys):
    data = tiny_dataset(16)
    data.table["split"] = "test"
    extractor = build(f"moco_v2:{TINY}")
    extractor.fit(data, ctx(tmp_path))
    assert extractor.training_result.images_seen == 16
    assert "no train split" in capsys.readouterr().err
