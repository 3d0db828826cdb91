"""Embeddings written shard by shard, so a stopped run resumes at the next unfinished shard.

Why: embedding a catalogue of 100k photos at 224 px takes hours on a CPU; a Ctrl-C, a crash or
a killed machine must cost at most one shard. The dataset's rows are cut into shards of
``shard_size`` consecutive rows. Each finished shard is one file, written atomically:

```
<cache>/embeddings/<dataset>-<key>.shards/
    plan.json          n items, shard size, a hash of the ids (a changed plan starts afresh)
    shard-00000.npz    ids [m] (str), rows [m] (int64), vectors [m, dim] (float32)
    shard-00001.npz    ...
```

A shard file's presence is the record that it is finished. ``merge`` puts every shard's vectors
in dataset row order by id, checks that every id is present exactly once, and the usual cached
``Embeddings`` file replaces the folder. Extraction is a function of (dataset, extractor, shard
list): ``embed_shards(extractor, dataset, folder, plan, shards)``; a process that owns every
``world_size``-th shard (torchrun) calls it with its own list, and one process merges.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.core.cache import load_npz, save_npz, write_json
from bench.core.data import Dataset
from bench.embed import streaming
from bench.embed.embeddings import EmbeddingError, Embeddings, check_batch

DEFAULT_SHARD_SIZE = 1024  # 4 KiB-aligned float32 rows; about 30 s of a ResNet-18 at 224 px on CPU
PLAN_VERSION = 1


log = logging.getLogger(__name__).info


def shard_size_setting() -> int:
    """``$BENCH_SHARD_SIZE`` or ``DEFAULT_SHARD_SIZE``: rows per shard."""
    text = os.environ.get("BENCH_SHARD_SIZE", "")
    try:
        size = int(text) if text else DEFAULT_SHARD_SIZE
    except ValueError:
        raise ValueError(f"BENCH_SHARD_SIZE={text!r} is not an integer") from None
    if size < 1:
        raise ValueError(f"BENCH_SHARD_SIZE={size} must be >= 1")
    return size


@dataclass(frozen=True)
class ShardPlan:
    """How ``n`` dataset rows are cut into shards; ``ids_sha`` ties the plan to the ids."""

    n: int
    shard_size: int
    ids_sha: str
    version: int = PLAN_VERSION

    @classmethod
    def for_dataset(cls, dataset: Dataset, shard_size: int | None = None) -> ShardPlan:
        digest = hashlib.sha256("\n".join(dataset.ids.tolist()).encode()).hexdigest()[:16]
        return cls(len(dataset), shard_size or shard_size_setting(), digest)

    @property
    def n_shards(self) -> int:
        return max(1, -(-self.n // self.shard_size))

    def rows(self, shard: int) -> np.ndarray:
        start = shard * self.shard_size
        return np.arange(start, min(start + self.shard_size, self.n), dtype=np.int64)


def shard_folder(embeddings_path: Path) -> Path:
    return Path(embeddings_path).with_suffix(".shards")


def shard_path(folder: Path, shard: int) -> Path:
    return Path(folder) / f"shard-{shard:05d}.npz"


def prepare(folder: Path, plan: ShardPlan) -> None:
    """Create the shard folder for ``plan``; a folder left by another plan is cleared."""
    folder = Path(folder)
    plan_file = folder / "plan.json"
    if plan_file.is_file():
        try:
            old = json.loads(plan_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old == asdict(plan):
            return
        log(f"{folder.name}: shards of another plan ({old}); starting afresh")
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(plan_file, asdict(plan))


def read_shard(folder: Path, shard: int, plan: ShardPlan) -> dict[str, np.ndarray] | None:
    """A finished shard's arrays, or None when it is missing; a damaged file is moved aside
    to ``*.corrupt`` (named in the log) and counts as unfinished."""
    path = shard_path(folder, shard)
    if not path.is_file():
        return None
    try:
        data = load_npz(path)
        rows, ids, vectors = data["rows"], data["ids"], data["vectors"]
        if (not np.array_equal(rows, plan.rows(shard)) or vectors.ndim != 2
                or len(ids) != len(rows) or len(vectors) != len(rows)):
            raise ValueError("rows, ids or vectors do not match the shard plan")
        return data
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        os.replace(path, path.with_suffix(".npz.corrupt"))
        log(f"{path}: unreadable shard ({type(error).__name__}: {error}); moved aside to "
            f"{path.name}.corrupt, it will be embedded again")
        return None


def finished(folder: Path, plan: ShardPlan) -> list[int]:
    return [s for s in range(plan.n_shards) if shard_path(folder, s).is_file()]


def embed_shards(extractor: Any, dataset: Dataset, folder: Path, plan: ShardPlan,
                 shards: list[int] | None = None, progress: bool = True) -> list[int]:
    """Embed the unfinished shards among ``shards`` (all when None), one file each; returns
    the shards embedded now. Progress: a bar in images/s with an ETA, and one log line per
    shard."""
    from tqdm.auto import tqdm

    shards = list(range(plan.n_shards)) if shards is None else list(shards)
    todo = [s for s in shards if read_shard(folder, s, plan) is None]
    total = sum(len(plan.rows(s)) for s in shards)
    remaining = sum(len(plan.rows(s)) for s in todo)
    if len(todo) < len(shards):
        log(f"{extractor.name}: {len(shards) - len(todo)} of {len(shards)} shards already "
            f"embedded; resuming at shard {todo[0] if todo else '-'}")
    bar = tqdm(total=total, initial=total - remaining, desc=f"embed {extractor.name}",
               unit="img", disable=None if progress else True, leave=False,
               mininterval=1.0, file=sys.stderr)
    started, done_rows = time.perf_counter(), 0
    try:
        for shard in todo:
            rows = plan.rows(shard)
            before = bar.n
            with streaming.progress(bar):
                vectors = extractor.embed(dataset, rows)
            bar.update(len(rows) - (bar.n - before))  # extractors that do not stream
            # exact shape and finite values, before the shard is written (nothing bad cached)
            vectors = check_batch(vectors, rows, f"{extractor.name} (shard {shard})")
            save_npz(shard_path(folder, shard), ids=dataset.ids[rows], rows=rows,
                     vectors=vectors)
            done_rows += len(rows)
            rate = done_rows / max(time.perf_counter() - started, 1e-9)
            left = remaining - done_rows
            log(f"{extractor.name}: shard {shard + 1}/{plan.n_shards} done "
                f"({total - left}/{total} images, {rate:.1f} img/s, ETA {left / rate:.0f} s)")
    finally:
        bar.close()
    return todo


def merge(folder: Path, dataset: Dataset, plan: ShardPlan, meta: dict[str, Any]) -> Embeddings:
    """Every shard's vectors in dataset row order by id; refuses missing or repeated ids."""
    vectors: np.ndarray | None = None
    seen = np.zeros(plan.n, dtype=np.int32)
    missing_shards = []
    for shard in range(plan.n_shards):
        data = read_shard(folder, shard, plan)
        if data is None:
            missing_shards.append(shard)
            continue
        positions = dataset.positions(data["ids"])
        if vectors is None:
            vectors = np.empty((plan.n, data["vectors"].shape[1]), dtype=np.float32)
        if data["vectors"].shape[1] != vectors.shape[1]:
            raise EmbeddingError(f"{shard_path(folder, shard)}: dimension "
                                 f"{data['vectors'].shape[1]}, other shards {vectors.shape[1]}")
        vectors[positions] = data["vectors"]
        np.add.at(seen, positions, 1)
    if missing_shards:
        raise EmbeddingError(f"{folder}: {len(missing_shards)} shards are not finished, e.g. "
                             f"shard {missing_shards[0]}")
    if (seen != 1).any():
        bad = np.flatnonzero(seen != 1)
        raise EmbeddingError(f"{folder}: {len(bad)} ids are not present exactly once, e.g. "
                             f"{dataset.ids[bad[0]]!r} ({int(seen[bad[0]])} times)")
    assert vectors is not None
    return Embeddings(dataset.ids, vectors, meta)
