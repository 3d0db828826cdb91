"""``bench export homestead`` writes a folder dataset the user's path reads back whole (ctr
included), and ``bench export-vectors`` writes FuxiCTR's and plain numpy layouts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.cli.main import main
from bench.core import registry


def test_exported_world_is_the_homestead_world(exported_folder, plugins, cache):
    manifest = pd.read_csv(exported_folder / "manifest.csv", dtype=str)
    world = registry.build_dataset("homestead", cache, image_size=32, n_products=60,
                                   n_covers=30, n_queries=40, n_users=12, n_days=3)
    assert manifest["id"].tolist() == world.ids.tolist()
    assert set(manifest["role"]) == {"product", "content", "query"}
    with Image.open(exported_folder / manifest["path"].iloc[70]) as image:
        assert image.format == "JPEG" and image.size == (32, 32)
        decoded = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert np.abs(decoded - world.images(np.array([70]))[0]).mean() < 10  # JPEG loss at 32 px
    log = pd.read_parquet(exported_folder / "impressions.parquet")
    pd.testing.assert_frame_equal(log.reset_index(drop=True),
                                  world.logs["impressions"].reset_index(drop=True))
    folder = registry.build_dataset("folder", cache, root=str(exported_folder), image_size=32)
    pd.testing.assert_frame_equal(folder.table[["id", "split", "role", "category"]],
                                  world.table[["id", "split", "role", "category"]])
    assert json.loads((exported_folder / "export.json").read_text())["items"] == len(world)


def test_export_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("mine")
    assert main(["export", "homestead", "--out", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_ctr_runs_on_the_exported_log_and_vectors_export(exported_folder, tmp_path, capsys):
    status = main(["run", "--profile", "quick", "--dataset", f"folder:{exported_folder}",
                   "--extractors", "pixels", "--tasks", "ctr,knn", "--out", str(tmp_path),
                   "--run-id", "ctr", "--no-report", "--cache", str(tmp_path / "cache")])
    assert status == 0
    results = pd.read_csv(tmp_path / "ctr" / "results.csv")
    auc = results.query("task == 'ctr' and metric == 'ctr_auc'")
    assert {"pixels", "none (ids only)"} <= set(auc["extractor"]) and auc["value"].between(0, 1).all()
    capsys.readouterr()
    assert main(["export-vectors", "ctr", "pixels", "--results", str(tmp_path)]) == 0
    out = tmp_path / "ctr" / "vectors"
    ids = pd.read_csv(exported_folder / "manifest.csv", dtype=str)["id"].tolist()
    with np.load(out / "pixels.fuxictr.npz") as data:
        assert data["key"].tolist() == ids and data["value"].shape == (len(ids), 192)
        vectors = data["value"]
    frame = pd.read_parquet(out / "pixels.fuxictr.parquet")
    np.testing.assert_array_equal(np.array(frame["value"].tolist()), vectors)
    np.testing.assert_array_equal(np.load(out / "pixels.npy"), vectors)
    assert (out / "pixels.ids.txt").read_text().split() == ids
    assert main(["export-vectors", str(tmp_path / "ctr"), "pixels", "--variant", "w",
                 "--format", "npy"]) == 0
    whitened = np.load(out / "pixels+w.npy")
    assert len(whitened) == len(vectors) and whitened.shape[1] <= vectors.shape[1]  # rank of train
    assert main(["export-vectors", str(tmp_path / "ctr"), "nope"]) == 2
    assert "no embeddings of extractor 'nope'; known: pixels" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["sku-991"])
def test_ctr_refuses_a_log_with_unknown_items_before_anything_runs(exported_folder, tmp_path,
                                                                   bad, plugins, cache):
    import shutil

    from bench.core.data import DatasetError

    copy = tmp_path / "copy"
    shutil.copytree(exported_folder, copy)
    log = pd.read_parquet(copy / "impressions.parquet")
    log.loc[log.index[:4], "item_id"] = bad
    log.to_parquet(copy / "impressions.parquet", index=False)
    with pytest.raises(DatasetError) as info:
        registry.build_dataset("folder", cache, root=str(copy))
    assert str(info.value) == (f"{copy / 'impressions.parquet'}: 1 item ids (4 rows) are not ids "
                               f"of the embeddings, e.g. '{bad}'; item_id must match the "
                               f"dataset's id column")


def test_perf_stream_small_prints_the_ratio_and_rss(exported_folder, tiny_specs, capsys):
    status = main(["perf", "stream", "--small", "--folder", str(exported_folder),
                   "--extractor", tiny_specs["timm"], "--n", "64", "--workers", "1"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "whole path, 64 images" in out and "ratio whole/bare at 64 images" in out
    assert "peak RSS" in out


def test_subset_repeats_rows_with_new_ids_past_the_folder(exported_folder, tmp_path, plugins,
                                                          cache):
    from bench.cli.export import subset

    n = len(pd.read_csv(exported_folder / "manifest.csv"))
    small = registry.build_dataset("folder", cache, root=str(subset(exported_folder,
                                                                    tmp_path / "s", 20)))
    assert len(small) == 20 and "impressions" not in small.logs  # product shots: never shown
    covers = registry.build_dataset("folder", cache, root=str(subset(exported_folder,
                                                                     tmp_path / "c", 100)))
    assert set(covers.logs["impressions"]["item_id"]) <= set(covers.ids)
    big = registry.build_dataset("folder", cache, root=str(
        subset(exported_folder, tmp_path / "b", 2 * n + 5)), impressions="none")
    assert len(big) == 2 * n + 5 and big.ids[n] == f"{big.ids[0]}~1"
    assert np.array_equal(big.images(np.array([n + 3])), big.images(np.array([3])))


def test_ids_with_a_line_break_never_shift_the_ids_file(tmp_path, capsys):
    """Vectors whose ids hold a newline (a precomputed file, an old cache): the one-id-per-line
    .ids.txt is refused before anything is written; the npz and parquet layouts keep them."""
    import json

    from bench.embed.embeddings import Embeddings

    ids = ["a", "b\nc", "d"]
    cached = Embeddings(np.array(ids), np.eye(3, dtype=np.float32)).save(tmp_path / "e.npz")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"embeddings": {"x": str(cached)}}))
    assert main(["export-vectors", str(run), "x"]) == 2
    err = capsys.readouterr().err
    assert "1 ids contain a line break or another control character, e.g. 'b\\nc' (row 1)" in err
    assert not (run / "vectors").exists()
    assert main(["export-vectors", str(run), "x", "--format", "fuxictr-npz"]) == 0
    with np.load(run / "vectors" / "x.fuxictr.npz") as data:
        assert data["key"].tolist() == ids
