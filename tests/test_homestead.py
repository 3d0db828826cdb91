"""The homestead dataset: determinism, balance, splits, images, cache and the behaviour log."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from bench.core import registry
from bench.core.cache import Cache
from bench.core.data import DatasetError

SMALL = dict(image_size=32, n_products=120, n_covers=160, n_queries=40, n_users=20, n_days=3,
             impressions_per_user_day=8, seed=0)
STYLES = {"nordic", "industrial", "vintage", "modern", "rustic", "boho"}
SCENES = {"living_room", "bedroom", "dining_room", "study", "kitchen", "balcony"}
COARSE = {"sofa", "chair", "table", "bed", "lamp", "cabinet"}


@pytest.fixture(scope="module")
def factory():
    registry.load_plugins()
    return registry.DATASETS["homestead"]


@pytest.fixture(scope="module")
def world_cache(tmp_path_factory) -> Cache:
    return Cache(tmp_path_factory.mktemp("homestead"))


@pytest.fixture(scope="module")
def world(factory, world_cache):
    return factory(world_cache, **SMALL)


def _by_role(world, role: str) -> pd.DataFrame:
    return world.table[world.table["role"] == role]


def test_options_are_checked(factory, tmp_path):
    with pytest.raises(DatasetError, match="unknown options"):
        factory(Cache(tmp_path), n_sofas=3)
    with pytest.raises(DatasetError, match="image_size"):
        factory(Cache(tmp_path), **{**SMALL, "image_size": 4})


def test_same_seed_same_world_and_another_seed_differs(factory, world, tmp_path):
    again = factory(Cache(tmp_path / "a"), **SMALL)
    assert again.fingerprint == world.fingerprint
    assert np.array_equal(again.images(), world.images())
    pd.testing.assert_frame_equal(again.table, world.table)
    for name, frame in world.logs.items():
        pd.testing.assert_frame_equal(again.logs[name], frame)
    other = factory(Cache(tmp_path / "b"), **{**SMALL, "seed": 1})
    assert other.fingerprint != world.fingerprint
    assert not np.array_equal(other.images(), world.images())
    assert not other.table["title"].equals(world.table["title"])
    assert not other.logs["impressions"]["click"].equals(world.logs["impressions"]["click"])


def test_ids_unique_and_roles_counted(world):
    table = world.table
    assert table["id"].is_unique
    counts = table["role"].value_counts().to_dict()
    assert counts == {"product": 120, "content": 160, "query": 40}
    for role, prefix in (("product", "p"), ("content", "c"), ("query", "q")):
        assert _by_role(world, role)["id"].str.startswith(prefix).all()
    assert len(world.images()) == len(table)


def test_columns_are_filled_by_role(world):
    products, contents, queries = (_by_role(world, r) for r in ("product", "content", "query"))
    assert (contents["title"].str.len() > 0).all()
    assert (products["title"] == "").all() and (queries["title"] == "").all()
    assert contents["scene"].notna().all() and contents["publish_day"].notna().all()
    assert products["scene"].isna().all() and queries["publish_day"].isna().all()
    for frame in (products, queries):
        assert frame[["category", "coarse_category", "identity", "style"]].notna().all().all()
    assert contents[["category", "identity"]].isna().all().all()
    assert (products["identity"] == products["id"]).all()


def test_labels_are_balanced(world):
    products, contents = _by_role(world, "product"), _by_role(world, "content")
    assert set(products["coarse_category"]) == COARSE
    assert products["category"].nunique() >= 30
    shares = [
        products["coarse_category"].value_counts(normalize=True),
        products["style"].value_counts(normalize=True),
        contents["style"].value_counts(normalize=True),
        contents["scene"].value_counts(normalize=True),
    ]
    for share in shares:
        assert len(share) == 6
        assert share.min() > 0.08 and share.max() < 0.3, share.to_dict()
    assert set(contents["style"]) == STYLES and set(contents["scene"]) == SCENES


def test_label_noise_is_a_few_percent(world):
    contents = _by_role(world, "content").set_index("id")
    latent = world.logs["item_latents"].set_index("item_id").loc[contents.index]
    agree = np.concatenate([contents["style"].to_numpy() == latent["true_style"].to_numpy(),
                            contents["scene"].to_numpy() == latent["true_scene"].to_numpy()])
    assert 0.85 < agree.mean() < 1.0


def test_splits_are_disjoint_and_queries_match_their_gallery(world):
    table = world.table
    products = _by_role(world, "product")
    share = (products["split"] == "pretrain").mean()
    assert 0.2 < share < 0.4
    pretrain = set(products.loc[products["split"] == "pretrain", "identity"])
    rest = table[table["split"].isin(["train", "test"])]
    assert pretrain.isdisjoint(set(rest["identity"].dropna()))
    assert set(_by_role(world, "content")["split"]) == {"train", "test"}
    queries = _by_role(world, "query")
    assert set(queries["split"]) <= {"train", "test"} and len(set(queries["split"])) == 2
    gallery = products.set_index("identity")["split"]
    assert queries["identity"].isin(gallery.index).all()
    assert (gallery.loc[queries["identity"]].to_numpy() == queries["split"].to_numpy()).all()


def test_images_are_uint8_squares_at_two_sizes(factory, world, tmp_path):
    images = world.images()
    assert images.dtype == np.uint8 and images.shape == (320, 32, 32, 3)
    assert world.image_size == 32
    tiny = dict(SMALL, image_size=48, n_products=36, n_covers=12, n_queries=6, n_users=3,
                n_days=2, impressions_per_user_day=4)
    big = factory(Cache(tmp_path), **tiny)
    assert big.images().dtype == np.uint8 and big.images().shape == (54, 48, 48, 3)
    assert big.images(np.array([0, 5])).shape == (2, 48, 48, 3)
    assert big.images().std() > 10  # not blank


def test_product_shots_sit_on_a_light_background_without_the_backgrounds_factor(factory,
                                                                                tmp_path):
    bare = factory(Cache(tmp_path), **{**SMALL, "backgrounds": 0, "camera": 0})
    corners = bare.images(bare.rows(role="product"))[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.mean() > 200


def test_cache_hit_returns_the_same_data_without_generating(factory, world, world_cache,
                                                           monkeypatch):
    folder = world_cache.root / "datasets" / f"homestead-{world.fingerprint}"
    assert {p.name for p in folder.iterdir()} >= {"images.npz", "items.parquet", "meta.json"}

    def boom(params):
        raise AssertionError("regenerated despite a cache entry")

    monkeypatch.setattr(sys.modules[factory.__module__], "generate", boom)
    again = factory(world_cache, **SMALL)
    assert np.array_equal(world.images(), again.images())
    pd.testing.assert_frame_equal(world.table, again.table)
    for name, frame in world.logs.items():
        pd.testing.assert_frame_equal(frame, again.logs[name])
    assert again.info == world.info


def test_behaviour_log_columns_and_ranges(world):
    imp = world.logs["impressions"]
    assert list(imp.columns) == ["user_id", "item_id", "day", "click", "detail", "conversion"]
    assert len(imp) == SMALL["n_users"] * SMALL["n_days"] * SMALL["impressions_per_user_day"]
    assert imp.groupby(["user_id", "day"]).size().eq(SMALL["impressions_per_user_day"]).all()
    assert imp["day"].between(0, SMALL["n_days"] - 1).all()
    for column in ("click", "detail", "conversion"):
        assert set(imp[column].unique()) <= {0, 1}
    contents = _by_role(world, "content")
    assert imp["item_id"].isin(contents["id"]).all()
    users = world.logs["users"]
    assert users["user_id"].is_unique and imp["user_id"].isin(users["user_id"]).all()
    assert 0.05 < imp["click"].mean() < 0.3


def test_detail_and_conversion_imply_click(world):
    imp = world.logs["impressions"]
    assert (imp["detail"] <= imp["click"]).all()
    assert (imp["conversion"] <= imp["click"]).all()
    assert imp["detail"].sum() > 0 and imp["conversion"].sum() > 0


def test_cold_start_items_appear_only_on_the_last_day(world):
    last = SMALL["n_days"] - 1
    imp = world.logs["impressions"]
    published = _by_role(world, "content").set_index("id")["publish_day"]
    cold = set(published[published == last].index)
    assert cold, "no cold-start items"
    assert (imp.loc[imp["item_id"].isin(cold), "day"] == last).all()
    assert imp["item_id"].isin(cold).any()
    assert (imp["day"].to_numpy() >= published.loc[imp["item_id"]].to_numpy()).all()


def test_visual_preference_is_in_the_pixels_not_the_labels(world):
    """Light warmth drives clicks and tints the cover, and no label column carries it."""
    rows = world.rows(role="content")
    images = world.images(rows).astype(np.float64)
    red_minus_blue = images[..., 0].mean(axis=(1, 2)) - images[..., 2].mean(axis=(1, 2))
    latent = world.logs["item_latents"].set_index("item_id")
    warmth = latent.loc[world.table["id"].iloc[rows], "warmth"].to_numpy()
    assert np.corrcoef(warmth, red_minus_blue)[0, 1] > 0.3
    assert "warmth" not in world.table.columns
