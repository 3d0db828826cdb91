"""Digests of every part of a built homestead world: proof that a refactor left the data alone.

Builds the world of a profile (``quick`` or ``default``) through the registry into a fresh
cache folder and prints one sha256 per part: the fingerprint, the images, the item table, each
log table, the latents and the dataset's info (without the cache folder and the generation
time). It reads only the registry and the ``Dataset`` contract, so it runs on any version of
the code: run it against the old tree and the new one and compare the two JSON files::

    .venv/bin/python benchmarks/homestead_digest.py --profile quick --out /tmp/after.json
    PYTHONPATH=/path/to/old/tree .venv/bin/python benchmarks/homestead_digest.py \\
        --profile quick --out /tmp/before.json
    .venv/bin/python benchmarks/homestead_digest.py --compare /tmp/before.json /tmp/after.json

Tables are hashed by their columns, dtypes and ``pandas.util.hash_pandas_object`` values
(index included), images by dtype, shape and bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def array_digest(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def frame_digest(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256(json.dumps([list(map(str, frame.columns)),
                                        [str(t) for t in frame.dtypes]]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    return digest.hexdigest()


def world_digests(world: Any) -> dict[str, str]:
    """One digest per part of a built ``Dataset``."""
    info = {k: v for k, v in world.info.items() if k not in ("cache_dir", "generated_seconds")}
    parts = {"fingerprint": hashlib.sha256(world.fingerprint.encode()).hexdigest(),
             "images": array_digest(world.images()),
             "items": frame_digest(world.table),
             "info": hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()}
    for name, frame in sorted(world.logs.items()):
        parts[f"logs.{name}"] = frame_digest(frame)
    if world.latents is not None:
        parts["latents"] = frame_digest(world.latents)
    return parts


def build(profile_name: str) -> dict[str, Any]:
    from bench.core import registry
    from bench.core.cache import Cache
    from bench.core.config import get_profile

    errors = registry.load_plugins()
    if errors:
        raise SystemExit("; ".join(map(str, errors)))
    options = get_profile(profile_name).dataset_options("homestead")
    with tempfile.TemporaryDirectory(prefix="homestead-digest-") as folder:
        start = time.perf_counter()
        world = registry.build_dataset("homestead", Cache(Path(folder)), **options)
        seconds = time.perf_counter() - start
        parts = world_digests(world)
    import bench

    return {"profile": profile_name, "options": options, "code": str(Path(bench.__file__).parent),
            "rows": len(world), "build_seconds": round(seconds, 1), "digests": parts}


def compare(before: Path, after: Path) -> int:
    a = json.loads(before.read_text())["digests"]
    b = json.loads(after.read_text())["digests"]
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    for key in sorted(set(a) | set(b)):
        print(f"{key:22s} {'same' if key not in differ else 'DIFFERS'}")
    print(f"{len(set(a) | set(b)) - len(differ)} parts identical, {len(differ)} differ")
    return 1 if differ else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", help="whose homestead options to build")
    parser.add_argument("--out", type=Path, help="write the digests here as JSON")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"),
                        help="compare two digest files instead of building")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    result = build(args.profile)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
