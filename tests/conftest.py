"""Shared fixtures: an isolated cache per test session and a tiny in-memory dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bench  # noqa: F401  (patches torchvision before anything imports it)
from bench.core import registry
from bench.core.cache import Cache
from bench.core.data import Dataset, array_image_source


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch_session=None):
    import os

    root = tmp_path_factory.mktemp("bench-cache")
    old = os.environ.get("BENCH_CACHE_DIR")
    os.environ["BENCH_CACHE_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("BENCH_CACHE_DIR", None)
    else:
        os.environ["BENCH_CACHE_DIR"] = old


@pytest.fixture()
def one_thread():
    """Tiny tensors gain nothing from threads, and a busy machine makes threads wait (modules
    that train use it: ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def cache(tmp_path) -> Cache:
    return Cache(tmp_path / "cache")


@pytest.fixture(scope="session")
def plugins():
    registry.load_plugins()
    return registry


def tiny_dataset(n: int = 60, size: int = 16, seed: int = 0) -> Dataset:
    """Two colour classes, split train/test, with identities and titles."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, size=(n, size, size, 3), dtype=np.uint8)
    images[labels == 1, ..., 0] += 150
    table = pd.DataFrame({
        "id": [f"t{i:03d}" for i in range(n)],
        "split": np.where(np.arange(n) % 3 == 0, "test", "train"),
        "category": np.where(labels == 1, "red", "dark"),
        "title": np.where(labels == 1, "a red sofa", "a dark chair"),
    })
    return Dataset("tiny", table, array_image_source(images), size, f"tiny-{n}-{size}-{seed}")


@pytest.fixture(scope="session")
def exported_folder(tmp_path_factory):
    """A small homestead world written as a folder dataset (JPEGs, manifest, impressions)."""
    from bench.cli.export import export_homestead

    root = tmp_path_factory.mktemp("exported") / "homestead-32"
    export_homestead(root, dict(image_size=32, n_products=60, n_covers=30, n_queries=40,
                                n_users=12, n_days=3))
    return root


@pytest.fixture(scope="session")
def tiny_specs(tmp_path_factory):
    """Specs of tiny random models of every adapter kind, saved locally (tests/tiny_models)."""
    from tests.tiny_models import build

    return build(tmp_path_factory.mktemp("tiny-models"))
