"""``folder``: your own catalogue, listed in ``manifest.csv``, streamed from disk.

Required columns: ``id,path`` (path relative to the manifest's folder; an absolute path or
one leading out of the folder, ``../shared/x.png``, is allowed and read as written, so images
can stay where they are; the fingerprint covers each file's size and mtime wherever it is).
Ids must not contain line breaks or other control characters (refused, with the row). Optional: ``split`` (pretrain,
train, test; a stable hash of the id assigns 70/30 train/test when absent), ``role`` (content,
product, query), ``title``, ``style``, ``scene``, ``category``, ``coarse_category``,
``identity``, ``publish_day``. Every value is read as text, so ids such as ``000`` stay as
written.

The dataset keeps paths, never pixels: extractors read images through ``dataset.reader`` in
DataLoader workers at their own resolution and preprocessing (``bench/embed/streaming.py``), and the
suite's own small extractors get centre-cropped squares of ``image_size`` decoded on demand.

An impressions log beside the manifest (``impressions.parquet`` or ``impressions.csv``, the
format of docs/ctr.md) becomes ``logs["impressions"]`` for the ``ctr`` task; it is checked when
the dataset loads, so a bad log is refused before anything is computed.

Images: a missing or empty (0-byte) file is refused when the dataset loads (the files are
stat-ed there anyway); a corrupt or truncated one is found when it is first decoded, at embed
time, and refused in one line naming the id, the path and the count. Decoding every file at
load (PIL ``verify``) would read the whole catalogue once more before any work, hours for
millions of images on a network disk.

Options: ``image_size`` (the suite's own extractors, default from the profile), ``workers``
(DataLoader processes, default ``$BENCH_WORKERS`` or 2), ``impressions`` (a log file elsewhere,
or ``none`` to ignore the one beside the manifest).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from bench.core.cache import Cache, fingerprint
from bench.core.data import OPTIONAL_COLUMNS, SPLITS, Dataset, DatasetError
from bench.core.registry import dataset
from bench.embed.streaming import uint8_batches

LOG_NAMES = ("impressions.parquet", "impressions.csv")
CONTROL = r"[\x00-\x1f\x7f]"  # a newline is legal in a quoted CSV cell, never in an id


def _lines(mask: np.ndarray) -> str:
    """CSV line numbers (the header is line 1) of the first few rows in ``mask``."""
    lines = [str(int(i) + 2) for i in np.flatnonzero(mask)[:3]]
    return ", ".join(lines) + (", ..." if int(mask.sum()) > 3 else "")


def read_manifest(manifest: Path) -> pd.DataFrame:
    """The item table of ``manifest.csv``, every value as text, or a one-line DatasetError."""
    if not manifest.is_file():
        raise DatasetError(f"folder dataset: no manifest at {manifest} (a CSV with columns "
                           f"id,path and optional labels)")
    try:
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{manifest}: the file is empty; it needs a header with id,path "
                           f"and one row per image") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        first = str(error).strip().splitlines()[0]
        raise DatasetError(f"{manifest}: not a readable CSV ({first})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("id", "path") if c not in table.columns]
    if missing:
        raise DatasetError(f"{manifest}: missing required column(s) {missing}; "
                           f"has {list(table.columns)}")
    if len(table) == 0:
        raise DatasetError(f"{manifest}: no items (a header but no rows)")
    for column in ("id", "path"):
        empty = table[column].isna().to_numpy()
        if empty.any():
            raise DatasetError(f"{manifest}: {int(empty.sum())} rows with an empty {column!r}, "
                               f"at line {_lines(empty)}")
    control = table["id"].str.contains(CONTROL, regex=True).to_numpy()
    if control.any():
        row = int(np.flatnonzero(control)[0])
        raise DatasetError(f"{manifest}: {int(control.sum())} ids contain a line break or "
                           f"another control character, e.g. {table['id'].iloc[row]!r} in "
                           f"data row {row + 1}; ids are written one per line "
                           f"(export-vectors' .ids.txt), so such an id would shift every later "
                           f"one: remove it from the id")
    repeated = table["id"].duplicated(keep=False).to_numpy()
    if repeated.any():
        first = table["id"][repeated].iloc[0]
        count = int(table["id"][repeated].nunique())
        raise DatasetError(f"{manifest}: {count} duplicate ids ({int(repeated.sum())} rows), "
                           f"e.g. {first!r} at line {_lines((table['id'] == first).to_numpy())}")
    if "split" not in table.columns:
        buckets = [int(hashlib.sha1(i.encode()).hexdigest(), 16) % 10 for i in table["id"]]
        table["split"] = ["test" if b >= 7 else "train" for b in buckets]
    bad = ~table["split"].isin(SPLITS).to_numpy()
    if bad.any():
        example = table["split"][bad].iloc[0]
        raise DatasetError(f"{manifest}: column 'split' must be one of {', '.join(SPLITS)}; "
                           f"{int(bad.sum())} other values, e.g. "
                           f"{'an empty cell' if pd.isna(example) else repr(example)} "
                           f"at line {_lines(bad)}")
    if "publish_day" in table.columns:
        table["publish_day"] = _integer_column(table["publish_day"], "publish_day", manifest)
    keep = ["id", "path"] + [c for c in OPTIONAL_COLUMNS if c in table.columns]
    return table[keep]


def _integer_column(column: pd.Series, name: str, source: Path) -> pd.Series:
    numbers = pd.to_numeric(column, errors="coerce")
    bad = (column.notna() & (numbers.isna() | (numbers != numbers.round()))).to_numpy()
    if bad.any():
        raise DatasetError(f"{source}: column {name!r} must hold integers; {int(bad.sum())} "
                           f"other values, e.g. {column[bad].iloc[0]!r} at line {_lines(bad)}")
    return numbers.astype("Int64")


class FolderReader:
    """Opens a manifest row's image file (a DataLoader worker calls it; holds paths only)."""

    def __init__(self, manifest: Path, ids: np.ndarray, paths: np.ndarray):
        self.source = str(manifest)
        self.root = manifest.parent
        self.ids, self.paths = ids, paths

    def open(self, row: int) -> Image.Image:
        return Image.open(self.root / self.paths[row])

    def label(self, row: int) -> str:
        return f"id {str(self.ids[row])!r} path {str(self.paths[row])!r}"


def _file_stats(table: pd.DataFrame, root: Path, manifest: Path) -> list[tuple[int, int]]:
    """(size, mtime) of every image, for the fingerprint; missing files are refused here."""
    stats, missing, empty = [], [], []
    for item, rel in zip(table["id"], table["path"]):
        try:
            stat = (root / rel).stat()
            stats.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            missing.append((item, rel))
            continue
        if stat.st_size == 0:
            empty.append((item, rel))
    if missing:
        item, rel = missing[0]
        noun = "image file is" if len(missing) == 1 else "image files are"
        raise DatasetError(f"{manifest}: {len(missing)} {noun} missing, e.g. id {item!r} "
                           f"path {rel!r}")
    if empty:  # free here (the size is known); other damage is found when decoded
        item, rel = empty[0]
        raise DatasetError(f"{manifest}: {len(empty)} image files are empty (0 bytes), e.g. "
                           f"id {item!r} path {rel!r}")
    return stats


def find_log(root: Path, option: str | None) -> Path | None:
    """The impressions log: the ``impressions`` option (``none``: no log), else one beside the
    manifest."""
    if option is not None:
        if str(option).lower() == "none":
            return None
        path = Path(option)
        if not path.is_file():
            raise DatasetError(f"folder dataset: impressions={option}: no such file")
        return path
    found = [root / name for name in LOG_NAMES if (root / name).is_file()]
    if len(found) > 1:
        raise DatasetError(f"{root}: both {found[0].name} and {found[1].name}; keep one "
                           f"(or choose with impressions=PATH)")
    return found[0] if found else None


def read_log(path: Path, ids: np.ndarray) -> pd.DataFrame:
    """The impressions log with ids as text, checked as the ctr task checks it (columns, 0/1
    labels, integer days, item ids of the manifest, two days at least)."""
    from bench.tasks.ctr.data import CtrDataError, validate_log

    try:
        if path.suffix.lower() == ".parquet":
            log = pd.read_parquet(path)
        else:
            log = pd.read_csv(path, dtype={"user_id": str, "item_id": str},
                              keep_default_na=False, na_values=[""])
    except Exception as error:  # noqa: BLE001 - any reader failure is a bad file
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise DatasetError(f"{path}: cannot read the impressions log "
                           f"({type(error).__name__}: {first})") from None
    try:
        return validate_log(log, ids, source=str(path))
    except CtrDataError as error:
        raise DatasetError(str(error)) from None


@dataset("folder")
def load_folder(cache: Cache, root: str | None = None, image_size: Any = 32,
                workers: Any = None, impressions: str | None = None) -> Dataset:
    # unknown options are refused by the registry, which checks them against these parameters
    if root is None:
        raise DatasetError("folder dataset needs a root: --dataset folder:PATH "
                           "(a folder holding manifest.csv)")
    size = _positive(image_size, "image_size")
    workers = None if workers is None else _positive(workers, "workers", minimum=0)
    root = Path(root)
    manifest = root / "manifest.csv" if root.is_dir() else root
    root = manifest.parent
    table = read_manifest(manifest)
    stats = _file_stats(table, root, manifest)
    log_path = find_log(root, impressions)
    logs = {} if log_path is None else {"impressions": read_log(log_path, table["id"].to_numpy())}
    log_stat = None if log_path is None else (str(log_path.resolve()), log_path.stat().st_size,
                                              log_path.stat().st_mtime_ns)
    manifest_sha = hashlib.sha256(manifest.read_bytes()).hexdigest()
    key = fingerprint("folder", str(manifest.resolve()), manifest_sha, size, stats, log_stat)
    content = {"manifest.csv": manifest_sha[:16],  # the parts of the key a resumed run names
               "images (size and time of each file)": fingerprint(stats),
               "impressions log": fingerprint(log_stat)}
    reader = FolderReader(manifest, table["id"].to_numpy(dtype=str),
                          table["path"].to_numpy(dtype=str))
    holder: dict[str, Dataset] = {}

    def image_source(rows: np.ndarray) -> np.ndarray:
        batches = list(uint8_batches(holder["dataset"], rows, 256, workers))
        return (np.concatenate(batches) if batches
                else np.zeros((0, size, size, 3), dtype=np.uint8))

    data = Dataset(f"folder:{root.name}", table.drop(columns=["path"]), image_source, size, key,
                   logs=logs, info={"root": str(root), "manifest": str(manifest),
                                    "impressions": None if log_path is None else str(log_path),
                                    "workers": workers, "content": content},
                   reader=reader)
    holder["dataset"] = data
    return data


def _positive(value: Any, name: str, minimum: int = 1) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise DatasetError(f"folder dataset: option {name}={value!r} is not an integer") from None
    if number < minimum:
        raise DatasetError(f"folder dataset: option {name}={number} must be >= {minimum}")
    return number
