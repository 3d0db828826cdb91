"""The digits and folder dataset plugins, and the Dataset contract's checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.core.data import Dataset, DatasetError, array_image_source


def test_digits_is_real_and_split(plugins, cache):
    data = plugins.DATASETS["digits"](cache, image_size=16)
    assert len(data) == 1797 and data.images(np.arange(3)).shape == (3, 16, 16, 3)
    assert set(data.table["split"]) == {"pretrain", "train", "test"}
    assert data.table["category"].nunique() == 10
    assert not data.has("identity")


def _write_folder(root, n=6, extra_rows=()):
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (20 + i, 12), (40 * i, 10, 200)).save(root / f"img{i}.png")
        rows.append({"id": f"x{i}", "path": f"img{i}.png", "category": "ab"[i % 2],
                     "split": "train" if i < 4 else "test"})
    rows.extend(extra_rows)
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def test_folder_loads_manifest_and_caches(plugins, cache, tmp_path):
    root = _write_folder(tmp_path / "imgs")
    data = plugins.DATASETS["folder"](cache, root=str(root), image_size=8)
    assert data.images().shape == (6, 8, 8, 3)
    assert data.table["category"].tolist()[:2] == ["a", "b"]
    again = plugins.DATASETS["folder"](cache, root=str(root / "manifest.csv"), image_size=8)
    assert again.fingerprint == data.fingerprint
    assert np.array_equal(again.images(), data.images())


def test_dataset_contract_refuses_duplicates_and_bad_splits():
    images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(DatasetError, match="1 duplicate ids, e.g. 'a'"):
        Dataset("d", pd.DataFrame({"id": ["a", "a"]}), array_image_source(images), 4, "f")
    with pytest.raises(DatasetError, match="unknown split values"):
        Dataset("d", pd.DataFrame({"id": ["a", "b"], "split": ["train", "val"]}),
                array_image_source(images), 4, "f")
    data = Dataset("d", pd.DataFrame({"id": ["a", "b"], "split": ["train", "test"]}),
                   array_image_source(images), 4, "f")
    assert data.rows(split="test").tolist() == [1]
    with pytest.raises(DatasetError, match="1 unknown ids, e.g. 'zz'"):
        data.positions(["a", "zz"])
