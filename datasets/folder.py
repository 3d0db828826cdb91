"""``folder``: your own images, listed in ``manifest.csv``.

Required columns: ``id,path`` (path relative to the manifest). Optional: ``split`` (pretrain,
train, test; a stable hash of the id assigns 70/30 train/test when absent), ``role`` (content,
product, query), ``title``, ``style``, ``scene``, ``category``, ``coarse_category``,
``identity``. Images are loaded with PIL, centre-cropped to a square and resized once, then
cached under a fingerprint of the manifest and image files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench.cache import Cache, fingerprint, load_npz, save_npz
from bench.data import OPTIONAL_COLUMNS, Dataset, DatasetError, array_image_source
from bench.registry import dataset


def _square(image: Image.Image, size: int) -> np.ndarray:
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def read_manifest(manifest: Path) -> pd.DataFrame:
    if not manifest.is_file():
        raise DatasetError(f"folder dataset: no manifest at {manifest}")
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False, na_values=[""])
    missing = [c for c in ("id", "path") if c not in table.columns]
    if missing:
        raise DatasetError(f"{manifest}: missing required columns {missing}; has {list(table.columns)}")
    for column in ("id", "path"):
        empty = table[column].isna()
        if empty.any():
            raise DatasetError(f"{manifest}: {int(empty.sum())} rows with empty {column!r}, "
                               f"first at line {int(np.flatnonzero(empty)[0]) + 2}")
    duplicated = table["id"][table["id"].duplicated()]
    if len(duplicated):
        raise DatasetError(f"{manifest}: {len(duplicated)} duplicate ids, e.g. {duplicated.iloc[0]!r}")
    if "split" not in table.columns:
        buckets = [int(hashlib.sha1(i.encode()).hexdigest(), 16) % 10 for i in table["id"]]
        table["split"] = ["test" if b >= 7 else "train" for b in buckets]
    keep = ["id", "path"] + [c for c in OPTIONAL_COLUMNS if c in table.columns]
    return table[keep]


def _load_images(table: pd.DataFrame, root: Path, size: int, manifest: Path) -> np.ndarray:
    images = np.empty((len(table), size, size, 3), dtype=np.uint8)
    missing = []
    for i, (item, rel) in enumerate(zip(table["id"], table["path"])):
        path = root / rel
        try:
            with Image.open(path) as image:
                images[i] = _square(image, size)
        except (OSError, ValueError) as error:
            missing.append((item, rel, error))
    if missing:
        item, rel, error = missing[0]
        raise DatasetError(f"{manifest}: {len(missing)} images cannot be read, "
                           f"e.g. id {item!r} path {rel!r} ({type(error).__name__})")
    return images


@dataset("folder")
def load_folder(cache: Cache, root: str | None = None, image_size: int = 32,
                **_: object) -> Dataset:
    if root is None:
        raise DatasetError("folder dataset needs a root: --dataset folder:PATH "
                           "(a folder holding manifest.csv)")
    root = Path(root)
    manifest = root / "manifest.csv" if root.is_dir() else root
    root = manifest.parent
    table = read_manifest(manifest)
    stats = [manifest.stat().st_mtime_ns] + [
        (root / p).stat().st_mtime_ns if (root / p).exists() else 0 for p in table["path"]]
    key = fingerprint("folder", str(manifest.resolve()), image_size, stats)
    path = cache.path("datasets", f"folder-{key}", ".npz")
    if path.exists():
        images = load_npz(path)["images"]
    else:
        images = _load_images(table, root, image_size, manifest)
        save_npz(path, images=images)
    return Dataset(f"folder:{root.name}", table.drop(columns=["path"]), array_image_source(images),
                   image_size, key, info={"root": str(root)})
