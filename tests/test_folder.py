"""The folder dataset: paths not pixels, streamed decoding, its impressions log, and one-line
errors that name the file, id, column and count for every bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.core import registry
from bench.core.data import DatasetError
from bench.core.registry import SpecError
from bench.embed.streaming import SquareUint8, stream, to_rgb


def _folder(root, n=6, rows=(), ids=None):
    root.mkdir(parents=True, exist_ok=True)
    table = []
    for i in range(n):
        Image.new("RGB", (20 + i, 12), (40 * i, 10, 200)).save(root / f"img{i}.png")
        table.append({"id": ids[i] if ids else f"x{i}", "path": f"img{i}.png",
                      "category": "ab"[i % 2], "split": "train" if i < 4 else "test"})
    table.extend(rows)
    pd.DataFrame(table).to_csv(root / "manifest.csv", index=False)
    return root


def _load(plugins, cache, root, **options):
    return plugins.DATASETS["folder"](cache, root=str(root), **options)


def test_folder_keeps_paths_and_decodes_on_demand(plugins, cache, tmp_path):
    root = _folder(tmp_path / "imgs")
    data = _load(plugins, cache, root, image_size=8, workers=0)
    assert data.reader is not None and "path" not in data.table.columns
    images = data.images()
    assert images.shape == (6, 8, 8, 3) and images.dtype == np.uint8
    assert abs(int(images[3, 4, 4, 0]) - 120) <= 1  # centre crop of the 23x12 image, red 120
    again = _load(plugins, cache, root / "manifest.csv", image_size=8, workers=2)
    assert again.fingerprint == data.fingerprint
    assert np.array_equal(again.images(np.array([5, 0])), images[[5, 0]])
    with data.reader.open(2) as full:  # extractors read the original resolution
        assert full.size == (22, 12)


def test_zero_padded_ids_stay_text(plugins, cache, tmp_path):
    root = _folder(tmp_path / "zeros", ids=["000", "001", "010", "0100", "7", "007"])
    data = _load(plugins, cache, root, image_size=4, workers=0)
    assert data.ids.tolist() == ["000", "001", "010", "0100", "7", "007"]
    # vectors keyed by the same ids in a CSV are matched as text, not as integers
    csv = tmp_path / "vectors.csv"
    pd.DataFrame({"id": data.ids, "a": np.arange(6.0), "b": 1.0}).to_csv(csv, index=False)
    from bench.core.config import get_profile

    vectors = plugins.build_extractor(f"precomputed:{csv}", get_profile("quick"))
    assert vectors.embed(data, np.arange(6))[:, 0].tolist() == [0, 1, 2, 3, 4, 5]


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.full((10, 10), 30000, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as image:
        assert image.mode.startswith("I")
        rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (10, 10, 3) and np.all(rgb == round(30000 * 255 / 65535))  # 117
    with Image.open(tmp_path / "g16.png") as image:
        assert int(SquareUint8(4)(image)[0, 0, 0]) == 117


def test_manifest_errors_are_one_line_and_name_the_problem(plugins, cache, tmp_path):
    def refused(folder, text, **options):
        with pytest.raises(DatasetError) as info:
            _load(plugins, cache, folder, **options)
        message = str(info.value)
        assert "\n" not in message
        assert message == text.format(m=folder / "manifest.csv"), message

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "manifest.csv").write_text("")
    refused(tmp_path / "empty", "{m}: the file is empty; it needs a header with id,path and "
                                "one row per image")
    (tmp_path / "header").mkdir()
    (tmp_path / "header" / "manifest.csv").write_text("id,path,category\n")
    refused(tmp_path / "header", "{m}: no items (a header but no rows)")
    (tmp_path / "nopath").mkdir()
    pd.DataFrame({"id": ["a"], "file": ["a.png"]}).to_csv(tmp_path / "nopath" / "manifest.csv",
                                                         index=False)
    refused(tmp_path / "nopath", "{m}: missing required column(s) ['path']; has ['id', 'file']")
    dup = _folder(tmp_path / "dup", rows=[{"id": "x1", "path": "img2.png", "split": "test"},
                                         {"id": "x3", "path": "img3.png", "split": "test"},
                                         {"id": "x1", "path": "img4.png", "split": "test"}])
    refused(dup, "{m}: 2 duplicate ids (5 rows), e.g. 'x1' at line 3, 8, 10")
    missing = _folder(tmp_path / "missing", rows=[{"id": "x9", "path": "missing.png",
                                                   "split": "test"},
                                                  {"id": "x10", "path": "gone.png",
                                                   "split": "test"}])
    refused(missing, "{m}: 2 image files are missing, e.g. id 'x9' path 'missing.png'")
    days = _folder(tmp_path / "days", rows=[{"id": "x9", "path": "img0.png", "split": "test",
                                            "publish_day": "soon"}])
    refused(days, "{m}: column 'publish_day' must hold integers; 1 other values, e.g. 'soon' "
                  "at line 8")
    split = _folder(tmp_path / "split", rows=[{"id": "x8", "path": "img0.png"},
                                             {"id": "x9", "path": "img1.png", "split": "val"}])
    refused(split, "{m}: column 'split' must be one of pretrain, train, test; 2 other values, "
                   "e.g. an empty cell at line 8, 9")
    with pytest.raises(DatasetError, match="no manifest at"):
        _load(plugins, cache, tmp_path / "nowhere")
    with pytest.raises(SpecError, match=r"dataset folder: unknown option 'colour'; known: "
                                        r"image_size, impressions, root, workers"):
        registry.build_dataset("folder", cache, root=str(dup), colour="red")


def test_unreadable_images_are_counted_with_an_example(plugins, cache, tmp_path):
    root = _folder(tmp_path / "corrupt", rows=[{"id": "bad1", "path": "bad1.png", "split": "test"},
                                              {"id": "bad2", "path": "bad2.jpg", "split": "test"}])
    (root / "bad1.png").write_bytes(b"not an image at all")
    good = root / "good.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    (root / "bad2.jpg").write_bytes(good.read_bytes()[:200])  # truncated JPEG
    data = _load(plugins, cache, root, image_size=8, workers=0)
    with pytest.raises(DatasetError) as info:
        data.images()
    message = str(info.value)
    assert message.startswith(f"{root / 'manifest.csv'}: 2 images cannot be read, e.g. id "
                              f"'bad1' path 'bad1.png' (UnidentifiedImageError: "), message
    assert "\n" not in message
    # the same through DataLoader workers, at an extractor's own resolution
    with pytest.raises(DatasetError, match=r"2 images cannot be read, e.g. id 'bad1'"):
        list(stream(data.reader, np.arange(len(data)), SquareUint8(16), batch_size=3, workers=2))


def _log(items, days=(0, 1, 2), unknown=()):
    rows = [{"user_id": f"u{u}", "item_id": item, "day": d, "click": (u + d) % 2,
             "detail": 0, "conversion": 0}
            for d in days for u in range(3) for item in items]
    rows += [{"user_id": "u0", "item_id": item, "day": 1, "click": 0, "detail": 0,
              "conversion": 0} for item in unknown]
    return pd.DataFrame(rows)


def test_impressions_log_beside_the_manifest(plugins, cache, tmp_path):
    root = _folder(tmp_path / "log", ids=["000", "x1", "x2", "x3", "x4", "x5"])
    _log(["000", "x1", "x4"]).to_csv(root / "impressions.csv", index=False)
    data = _load(plugins, cache, root, image_size=4, workers=0)
    log = data.logs["impressions"]
    assert len(log) == 27 and set(log["item_id"]) == {"000", "x1", "x4"}  # '000' kept as text
    ignored = _load(plugins, cache, root, image_size=4, impressions="none")
    assert "impressions" not in ignored.logs and ignored.fingerprint != data.fingerprint
    _log(["x1"]).to_parquet(root / "impressions.parquet", index=False)
    with pytest.raises(DatasetError, match="both impressions.parquet and impressions.csv"):
        _load(plugins, cache, root, image_size=4)


def test_log_with_unknown_item_ids_is_refused_with_count_and_example(plugins, cache, tmp_path):
    root = _folder(tmp_path / "badlog")
    _log(["x0", "x1"], unknown=["sku-991", "sku-992", "sku-991"]).to_parquet(
        root / "impressions.parquet", index=False)
    with pytest.raises(DatasetError) as info:
        _load(plugins, cache, root, image_size=4)
    assert str(info.value) == (
        f"{root / 'impressions.parquet'}: 2 item ids (3 rows) are not ids of the embeddings, "
        "e.g. 'sku-991'; item_id must match the dataset's id column")
    _log(["x0"]).drop(columns=["click"]).to_csv(root / "elsewhere.csv", index=False)
    with pytest.raises(DatasetError, match=r"elsewhere.csv: missing column\(s\) \['click'\]"):
        _load(plugins, cache, root, image_size=4, impressions=str(root / "elsewhere.csv"))


def test_thirty_two_bit_integers_above_sixteen_bits_are_scaled_by_their_type(tmp_path):
    values = np.full((6, 6), 2**30, dtype=np.int32)  # half of int32's range: mid grey
    values[0, 0] = 2**31 - 1  # white
    Image.fromarray(values, mode="I").save(tmp_path / "i32.tif")
    with Image.open(tmp_path / "i32.tif") as image:
        assert image.mode == "I"
        rgb = np.asarray(to_rgb(image))
    assert rgb[0, 0, 0] == 255 and rgb[3, 3, 0] == 128  # was 255 everywhere (clipped)


def test_an_id_with_a_line_break_is_refused_with_file_id_and_row(plugins, cache, tmp_path):
    """A newline is legal in a quoted CSV cell; in an id it would shift every later line of
    export-vectors' .ids.txt."""
    root = _folder(tmp_path / "newline", ids=["x0", "x1", "two\nlines", "x3", "x4", "x5"])
    assert '"two\nlines"' in (root / "manifest.csv").read_text()
    with pytest.raises(DatasetError) as info:
        _load(plugins, cache, root, image_size=4, workers=0)
    assert str(info.value).startswith(
        f"{root / 'manifest.csv'}: 1 ids contain a line break or another control character, "
        f"e.g. 'two\\nlines' in data row 3; ")
    tab = _folder(tmp_path / "tab", ids=["x0", "x1", "x2", "x3", "x4", "t\tb"])
    with pytest.raises(DatasetError, match=r"'t\\tb' in data row 6"):
        _load(plugins, cache, tab, image_size=4, workers=0)


def test_paths_outside_the_folder_are_allowed_and_empty_images_refused(plugins, cache, tmp_path):
    """Documented choice: absolute paths and ``../`` paths are read as written; an empty image
    file is refused at load (its size is known then), naming id and path."""
    shared = tmp_path / "shared"
    shared.mkdir()
    Image.new("RGB", (9, 9), (250, 0, 0)).save(shared / "red.png")
    root = _folder(tmp_path / "out", rows=[
        {"id": "up", "path": "../shared/red.png", "split": "test"},
        {"id": "abs", "path": str(shared / "red.png"), "split": "test"}])
    data = _load(plugins, cache, root, image_size=4, workers=0)
    assert data.images(np.array([6, 7]))[:, 0, 0, 0].tolist() == [250, 250]
    (root / "img5.png").write_bytes(b"")
    with pytest.raises(DatasetError) as info:
        _load(plugins, cache, root, image_size=4, workers=0)
    assert str(info.value) == (f"{root / 'manifest.csv'}: 1 image files are empty (0 bytes), "
                               f"e.g. id 'x5' path 'img5.png'")
