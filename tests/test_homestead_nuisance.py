"""The homestead nuisance factors: each one changes pixels and its own latents, nothing else;
the old world (homestead-1.1) stays reachable byte for byte."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.core import registry
from bench.core.cache import Cache
from bench.core.data import DatasetError
from benchmarks.homestead_digest import array_digest, frame_digest

# A tiny world: every role, a few users; building one takes about a second.
TINY = dict(image_size=32, n_products=36, n_covers=12, n_queries=12, n_users=3, n_days=2,
            impressions_per_user_day=4, seed=5, nuisance=1)
# Which ``nuisance_*`` latents each factor draws.
COLUMNS = {"colourways": ["colourway"], "backgrounds": ["backdrop"],
           "camera": ["zoom", "shift_x", "shift_y", "tilt"],
           "light": ["brightness", "contrast", "cast"], "clutter": ["clutter"],
           "noise": ["noise"], "jpeg": ["jpeg"], "materials": ["material"],
           "mirror": ["mirror"], "height": ["height"]}
# homestead-1.1 (main at ae19acc, before the nuisance factors), built at these options: sha256
# as in benchmarks/homestead_digest.py. The logs are left out: behaviour.py is not this
# generator's to freeze. Float rendering may differ on another CPU's numpy; then rebuild the
# digest from the tagged old tree and say so.
OLD_OPTIONS = dict(image_size=32, n_products=72, n_covers=24, n_queries=30, n_users=8, n_days=3,
                   impressions_per_user_day=4, seed=3)
OLD_DIGESTS = {
    "images": "dab7e8334ceb3eb1f8272f4f22dc9606b3d48bda78a125503a7d6e3ecd59084a",
    "items": "a8ea351ec257f3a42e5b928d25bab96cc71a75b8a1edf0edf0f6073d04ce9c43",
    "latents": "51c64ba12579c39e49ac4cfd40381adfb3e0d4fa4b5f0e4166b25e48fda8f5d4",
}


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    registry.load_plugins()
    factory = registry.DATASETS["homestead"]
    cache = Cache(tmp_path_factory.mktemp("nuisance"))
    return lambda **options: factory(cache, **{**TINY, **options})


@pytest.fixture(scope="module")
def bare(build):
    return build(nuisance=0)


def _content_latents(world) -> pd.DataFrame:
    return world.latents[[c for c in world.latents.columns if not c.startswith("nuisance_")]]


def _nuisance(world, factor: str) -> pd.DataFrame:
    return world.latents[[f"nuisance_{c}" for c in COLUMNS[factor]]]


def test_nuisance_zero_is_homestead_1_1_byte_for_byte(build):
    from bench_plugins.datasets.homestead import nuisance

    world = build(**{**OLD_OPTIONS, "nuisance": 0})
    got = {"images": array_digest(world.images()), "items": frame_digest(world.table),
           "latents": frame_digest(_content_latents(world))}
    assert got == OLD_DIGESTS
    for factor in nuisance.FACTORS:  # every factor off, and recorded so
        values = _nuisance(world, factor).to_numpy(dtype=float)
        neutral = {"zoom": 1.0, "brightness": 1.0, "contrast": 1.0, "colourway": -1.0,
                   "backdrop": -1.0, "material": -1.0}
        for k, column in enumerate(COLUMNS[factor]):
            column_values = values[:, k][~np.isnan(values[:, k])]
            assert (column_values == neutral.get(column, 0.0)).all(), column


@pytest.mark.parametrize("factor", list(COLUMNS))
def test_each_factor_changes_pixels_and_its_own_latents_only(build, bare, factor):
    from bench_plugins.datasets.homestead.nuisance import DEFAULTS

    alone = build(nuisance=0, **{factor: DEFAULTS[factor]})
    assert alone.fingerprint != bare.fingerprint
    changed = np.any(alone.images() != bare.images(), axis=(1, 2, 3))
    # mirror: half the pictures; height: the covers only
    assert changed.mean() > {"mirror": 0.3, "height": 0.1}.get(factor, 0.5), f"{factor} changed only {changed.mean():.0%} of the images"
    pd.testing.assert_frame_equal(alone.table, bare.table)
    for name, frame in bare.logs.items():
        pd.testing.assert_frame_equal(alone.logs[name], frame)
    pd.testing.assert_frame_equal(_content_latents(alone), _content_latents(bare))
    for other in COLUMNS:
        same = _nuisance(alone, other).equals(_nuisance(bare, other))
        assert same == (other != factor), f"{factor} alone moved the latents of {other}"


def test_every_factor_draws_the_same_values_alone_and_together(build, bare):
    """Each factor has its own random stream per item: what it draws does not depend on which
    other factors are on (so the sweep's one-factor worlds are slices of the full one)."""
    from bench_plugins.datasets.homestead.nuisance import DEFAULTS

    together = build()
    assert {k: together.info[k] for k in DEFAULTS} == DEFAULTS
    pd.testing.assert_frame_equal(together.table, bare.table)
    pd.testing.assert_frame_equal(_content_latents(together), _content_latents(bare))
    for factor in COLUMNS:
        alone = build(nuisance=0, **{factor: DEFAULTS[factor]})
        pd.testing.assert_frame_equal(_nuisance(together, factor), _nuisance(alone, factor))


def test_the_generator_stays_deterministic_for_a_seed(tmp_path):
    registry.load_plugins()
    factory = registry.DATASETS["homestead"]
    a = factory(Cache(tmp_path / "a"), **TINY)
    b = factory(Cache(tmp_path / "b"), **TINY)
    assert np.array_equal(a.images(), b.images())
    pd.testing.assert_frame_equal(a.latents, b.latents)
    c = factory(Cache(tmp_path / "c"), **{**TINY, "seed": 6})
    assert not _nuisance(c, "camera").equals(_nuisance(a, "camera"))


def test_a_query_differs_from_its_catalogue_shot_in_backdrop_and_camera(build):
    world = build()
    lat = world.latents.set_index("id")
    queries = world.table[world.table["role"] == "query"]
    q, p = lat.loc[queries["id"]], lat.loc[queries["identity"]]
    assert (q["nuisance_colourway"].to_numpy() == p["nuisance_colourway"].to_numpy()).all()
    assert (q["nuisance_tilt"].to_numpy() != p["nuisance_tilt"].to_numpy()).all()
    assert (q["nuisance_backdrop"].to_numpy() != p["nuisance_backdrop"].to_numpy()).mean() > 0.7


def test_mirror_flips_exactly_the_pictures_it_records(build, bare):
    """``mirror``: the flagged pictures are the bare world's mirrored left to right, the rest
    untouched; every role gets some, and a query is mirrored apart from its catalogue shot."""
    world = build(nuisance=0, mirror=50)
    flags = world.latents["nuisance_mirror"].to_numpy()
    assert set(np.unique(flags)) == {0, 1}
    on = flags == 1
    np.testing.assert_array_equal(world.images()[on], bare.images()[on][:, :, ::-1])
    np.testing.assert_array_equal(world.images()[~on], bare.images()[~on])
    roles = world.table["role"].to_numpy()
    assert all(on[roles == r].any() for r in ("product", "content", "query"))
    lat = world.latents.set_index("id")
    queries = world.table[world.table["role"] == "query"]
    assert (lat.loc[queries["id"], "nuisance_mirror"].to_numpy()
            != lat.loc[queries["identity"], "nuisance_mirror"].to_numpy()).any()


def test_camera_height_moves_the_room_photos_only(build, bare):
    """``height``: every cover is shot from a camera height of its own (recorded, up to
    ``HEIGHT`` of the view), and only covers: product shots and query crops stay as they were."""
    from bench_plugins.datasets.homestead.nuisance import HEIGHT

    world = build(nuisance=0, height=100)
    lift = world.latents["nuisance_height"].to_numpy()
    cover = (world.table["role"] == "content").to_numpy()
    assert (lift[~cover] == 0).all() and (lift[cover] != 0).all()
    assert np.abs(lift).max() <= HEIGHT
    changed = np.any(world.images() != bare.images(), axis=(1, 2, 3))
    np.testing.assert_array_equal(changed, cover)


def test_colour_cast_stays_apart_from_warmth():
    """The cast moves green against red and blue together: a cover's red/blue ratio, where
    warmth lives, and its mean brightness stay as they were."""
    from bench_plugins.datasets.homestead.nuisance import lit

    warm = (1.1, 1.01, 0.9)
    for brightness, cast in ((1.0, 0.12), (1.3, -0.12), (0.7, 0.05)):
        r, g, b = lit(warm, brightness, cast)
        assert r / b == pytest.approx(warm[0] / warm[2])
        assert g / r != pytest.approx(warm[1] / warm[0])
    r, g, b = lit((1.0, 1.0, 1.0), 1.0, 0.1)
    assert (r + g + b) / 3 == pytest.approx(1.0)


@pytest.mark.parametrize("option", [dict(nuisance=2), dict(clutter=6), dict(jpeg=96),
                                    dict(colourways=101), dict(noise=-1), dict(materials=101),
                                    dict(mirror=101), dict(height=201)])
def test_factor_options_are_checked(build, option):
    with pytest.raises(DatasetError, match=f"{next(iter(option))}=.* is outside"):
        build(**option)


def test_camera_tilt_is_a_rigid_rotation_of_the_scene():
    """A quarter turn about the view's centre draws the picture turned by a quarter: centres
    move about the pivot and every shape turns with them (a trapezoid's wide side turns from
    the bottom to the left)."""
    registry.load_plugins()
    from bench_plugins.datasets.homestead.nuisance import apply_camera
    from bench_plugins.datasets.homestead.render import Shot, render
    from bench_plugins.datasets.homestead.shapes import shape

    prims = np.asarray([shape(-1, -1, 2, 2, (0.9, 0.9, 0.9)),
                        shape(0.55, 0.2, 0.75, 0.5, (0.8, 0.1, 0.1), tap=0.9),
                        shape(0.2, 0.7, 0.3, 0.75, (0.1, 0.1, 0.8))], np.float32)
    view = (0.0, 0.0, 1.0)
    turned, turned_view = apply_camera(prims, view, (1.0, 0.0, 0.0, 90.0))
    assert turned_view == pytest.approx(view)
    still = render([Shot(prims, view, (1, 1, 1), 1.0, 0.0)], 32, 0)[0].astype(int)
    tilted = render([Shot(turned, turned_view, (1, 1, 1), 1.0, 0.0)], 32, 0)[0].astype(int)
    assert np.abs(tilted - still).max() > 100  # it moved
    assert np.abs(tilted - np.rot90(still, k=-1)).max() <= 2  # clockwise on screen (y down)


def _sweep_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "nuisance_sweep.py"
    spec = importlib.util.spec_from_file_location("nuisance_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sweep_builds_each_factor_alone_and_all_together(tmp_path):
    sweep = _sweep_module()
    defaults = {f: 10 + k for k, f in enumerate(COLUMNS)}
    settings = sweep.settings(tuple(COLUMNS), defaults)
    assert list(settings) == ["off", *COLUMNS, "all"]
    assert settings["off"] == {"nuisance": 0}
    assert settings["camera"] == {"nuisance": 0, "camera": defaults["camera"]}
    assert settings["all"] == defaults
    tables = tmp_path / "tables"
    tables.mkdir()
    for task, metric in sweep.METRICS:
        frame = pd.DataFrame({"extractor": ["pixels", "moco_v2"]})
        for k, suffix in enumerate(("", " low", " high")):
            frame[f"{metric} raw{suffix}"] = [0.1 * (k + 1), 0.5]
        if (tables / f"{task}.csv").exists():
            frame = pd.read_csv(tables / f"{task}.csv").merge(frame, on="extractor")
        frame.to_csv(tables / f"{task}.csv", index=False)
    row = sweep.read_row(tmp_path, "pixels")
    assert row["style_consistency"] == pytest.approx(0.1)
    assert row["recall@10 high"] == pytest.approx(0.3)


def test_the_factors_are_off_unless_asked_for():
    registry.load_plugins()
    from bench_plugins.datasets.homestead import _params
    from bench_plugins.datasets.homestead.nuisance import DEFAULTS

    assert all(_params({})[factor] == 0 for factor in DEFAULTS)
    assert _params({"nuisance": 1}) == {**_params({}), "nuisance": 1, **DEFAULTS}
    assert _params({"camera": 50})["camera"] == 50 and _params({"camera": 50})["light"] == 0


def test_materials_are_the_style_s_own_and_recorded(build):
    """``materials``: a product's or a cover's signature material is its own style's, and the
    latents table says which items carry one (the style's index) and which do not (-1)."""
    from bench_plugins.datasets.homestead import STYLES

    world = build(nuisance=0, materials=100)
    lat = world.latents
    mat = lat["nuisance_material"].to_numpy()
    assert (mat >= 0).all()  # at 100 every product, cover and query scene carries one
    own = lat["id"].str.startswith(("p", "c")).to_numpy()
    assert (np.array(STYLES)[mat[own].astype(int)] == lat["style"].to_numpy()[own]).all()
    some = build(nuisance=0, materials=50).latents["nuisance_material"].to_numpy()
    assert 0.2 < (some >= 0).mean() < 0.8
    assert set(np.unique(some[some < 0])) <= {-1}


def test_signature_materials_keep_the_mean_and_vanish_at_8x8():
    """Each style's material is a pattern a 32-px picture shows and an 8x8 average does not:
    the mean of a patterned wall stays the plain wall's, and average pooling to 8x8 (what the
    ``pixels`` extractor computes) keeps little of its contrast, while the 32-px image keeps
    most of it. A material with a brightness offset, or one drawn at a scale 8x8 resolves,
    fails here."""
    registry.load_plugins()
    from bench_plugins.datasets.homestead.materials import ROOM_FREQ, SIGNATURE, signature
    from bench_plugins.datasets.homestead.render import Shot, render
    from bench_plugins.datasets.homestead.shapes import shape

    g = np.random.default_rng(0)
    grey = (0.5, 0.5, 0.5)
    plain = render([Shot(np.asarray([shape(-1, -1, 2, 2, grey)], np.float32), (0, 0, 1),
                         (1, 1, 1), 1.0, 0.0)], 32, 0)[0].astype(float)
    for style in SIGNATURE:
        shots = [Shot(np.asarray([shape(-1, -1, 2, 2, grey, signature(style, ROOM_FREQ, g))],
                                 np.float32), (0, 0, 1), (1, 1, 1), 1.0, 0.0) for _ in range(8)]
        images = render(shots, 32, 0).astype(float)
        assert abs(images.mean() - plain.mean()) < 3, style
        if style == "modern":  # smooth: no pattern at all
            assert images.std() < 1
            continue
        pooled = images.reshape(8, 8, 4, 8, 4, 3).mean(axis=(2, 4))
        assert images.std() > 20, style
        assert pooled.std() < 0.6 * images.std(), style
