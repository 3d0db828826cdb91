"""``bench export homestead --image-size 224 --out DIR``: the generated world as a folder dataset.

Why: the user's path (JPEG files, ``manifest.csv``, ``impressions.parquet``, streamed at the
model's resolution) needs a realistic catalogue to test and benchmark end to end, with no
download. The world comes from homestead's public loader (the same items, labels and log as
``--dataset homestead`` with the same options); this module only writes it out:

```
DIR/images/<role>/<id>.jpg     one JPEG per item (product shots, content covers, queries)
DIR/manifest.csv               id,path,split,role,title,style,scene,category,...
DIR/impressions.parquet        user_id,item_id,day,click,detail,conversion (docs/ctr.md)
DIR/export.json                the homestead options and what was written
```

``manifest.csv`` is written last, so a folder without it is an interrupted export. The world is
rendered in memory (about 3 GB for 20k images at 224 px) under a temporary cache in DIR that
is removed afterwards, unless ``--cache`` names one to keep it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench.core import registry
from bench.core.cache import Cache, atomic_path, write_json

MANIFEST_COLUMNS = ("id", "path", "split", "role", "title", "style", "scene", "category",
                    "coarse_category", "identity", "publish_day")
HOMESTEAD_OPTIONS = ("n_products", "n_covers", "n_queries", "n_users", "n_days",
                     "impressions_per_user_day", "seed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["homestead"], help="what to export")
    parser.add_argument("--out", required=True, help="folder to write (must be empty or new)")
    parser.add_argument("--image-size", type=int, default=224, help="pixels per side")
    for name in HOMESTEAD_OPTIONS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"homestead option {name} (default: homestead's)")
    parser.add_argument("--quality", type=int, default=92, help="JPEG quality")
    parser.add_argument("--cache", default=None,
                        help="keep the rendered world in this cache (default: a temporary one)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"error: {out} is not empty; choose a new folder or pass --force", file=sys.stderr)
        return 2
    options = {"image_size": args.image_size}
    options |= {name: getattr(args, name) for name in HOMESTEAD_OPTIONS
                if getattr(args, name) is not None}
    summary = export_homestead(out, options, quality=args.quality, cache_root=args.cache)
    print(json.dumps(summary, indent=2))
    return 0


def export_homestead(out: Path, options: dict[str, int], quality: int = 92,
                     cache_root: str | None = None) -> dict:
    """Render the homestead world with ``options`` and write it as a folder dataset."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    temporary = cache_root is None
    cache = Cache(out / ".homestead-cache" if temporary else cache_root)
    registry.load_plugins()
    start = time.perf_counter()
    try:
        world = registry.build_dataset("homestead", cache, **options)
        rendered = time.perf_counter() - start
        table = world.table.copy()
        table["path"] = [f"images/{role}/{item}.jpg"
                         for role, item in zip(table["role"], table["id"])]
        write_images(out, world, table["path"].tolist(), quality)
        with atomic_path(out / "impressions.parquet") as tmp:
            world.logs["impressions"].to_parquet(tmp, index=False)
        summary = {"generator": "homestead", "options": world.info | {"cache_dir": None},
                   "items": len(table), "impressions": len(world.logs["impressions"]),
                   "render_s": round(rendered, 1),
                   "total_s": round(time.perf_counter() - start, 1), "jpeg_quality": quality}
        write_json(out / "export.json", summary)
        columns = [c for c in MANIFEST_COLUMNS if c in table.columns]
        with atomic_path(out / "manifest.csv") as tmp:  # last: marks a complete export
            table[columns].to_csv(tmp, index=False)
    finally:
        if temporary:
            shutil.rmtree(out / ".homestead-cache", ignore_errors=True)
    return summary


def write_images(out: Path, world, paths: list[str], quality: int, chunk: int = 512) -> None:
    """Every item's image as a JPEG, a chunk of rows at a time, on two threads."""
    for folder in {Path(p).parent for p in paths}:
        (out / folder).mkdir(parents=True, exist_ok=True)

    def save(item: tuple[np.ndarray, str]) -> None:
        image, rel = item
        with atomic_path(out / rel) as tmp:
            Image.fromarray(image).save(tmp, format="JPEG", quality=quality)

    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(paths), chunk):
            rows = np.arange(start, min(start + chunk, len(paths)))
            list(pool.map(save, zip(world.images(rows), paths[start:start + len(rows)])))


def subset(source: Path, out: Path, n: int) -> Path:
    """A folder whose manifest lists ``n`` items of ``source`` (absolute paths into ``source``;
    no image is copied), with the impressions of those items: the first ``n`` items, or, when
    ``n`` exceeds the folder, its rows repeated with ids suffixed ``~1``, ``~2``, ... (the same
    image files, no impressions). A catalogue of any size from the images rendered once, for
    comparing memory and speed at several sizes (rendering at 224 px costs 0.25-0.5 s per
    image on this machine)."""
    table = pd.read_csv(Path(source) / "manifest.csv", dtype=str, keep_default_na=False,
                        na_values=[""])
    table["path"] = [str((Path(source) / p).resolve()) for p in table["path"]]
    copies = []
    for k in range(-(-n // len(table))):
        copy = table.copy()
        if k:
            copy["id"] = copy["id"] + f"~{k}"
        copies.append(copy)
    table = pd.concat(copies, ignore_index=True).iloc[:n]
    Path(out).mkdir(parents=True, exist_ok=True)
    log_path = Path(source) / "impressions.parquet"
    if log_path.is_file():
        log = pd.read_parquet(log_path)
        log = log[log["item_id"].astype(str).isin(set(table["id"]))]
        if len(log):  # a folder whose items were never shown has no log
            log.to_parquet(Path(out) / "impressions.parquet", index=False)
    table.to_csv(Path(out) / "manifest.csv", index=False)
    return Path(out)
