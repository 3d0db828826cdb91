"""``bench export-vectors RUN EXTRACTOR``: a run's vectors, in layouts other tools read.

Why: a team that picked an embedding here feeds it to its own ranking stack. Written to
``--out`` (default ``RUN/vectors/``), for the extractor's cached embeddings (``raw``) or the
whitened variant (``--variant w``: the whitening the run fitted for ``--task``, on that task's
train rows with the run's k setting):

- ``<name>.fuxictr.npz`` and ``<name>.fuxictr.parquet``: FuxiCTR's ``pretrained_emb`` layout,
  arrays ``key`` (the item ids, as text) and ``value`` (float32 [n, dim]; a list column in the
  parquet file);
- ``<name>.npy`` (float32 [n, dim]) with ``<name>.ids.txt`` (one id per line, same order).

The run folder's ``run.json`` says which cached file holds each extractor's embeddings.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core.cache import atomic_path, write_text
from bench.embed.embeddings import Embeddings

FORMATS = ("fuxictr-npz", "fuxictr-parquet", "npy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run folder, or a run id under --results")
    parser.add_argument("extractor", help="the extractor's row label, as in results.csv")
    parser.add_argument("--results", default="results", help="where run ids are looked up")
    parser.add_argument("--variant", choices=("raw", "w"), default="raw")
    parser.add_argument("--task", default="ctr",
                        help="with --variant w: the task whose whitening to apply (fitted on "
                             "that task's train rows with the run's k setting; default ctr)")
    parser.add_argument("--format", default=",".join(FORMATS),
                        help=f"comma-separated, from {', '.join(FORMATS)}")
    parser.add_argument("--out", help="output folder (default: RUN/vectors)")


def main(args: argparse.Namespace) -> int:
    try:
        written = export(Path(args.run), args.extractor, results=Path(args.results),
                         variant=args.variant, task=args.task,
                         formats=tuple(args.format.split(",")),
                         out=Path(args.out) if args.out else None)
    except (FileNotFoundError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def run_folder(run: Path, results: Path) -> Path:
    for candidate in (run, results / run):
        if (candidate / "run.json").is_file():
            return candidate
    raise FileNotFoundError(f"no run folder with a run.json at {run} or {results / run}")


def load_vectors(folder: Path, extractor: str, variant: str, task: str = "ctr") -> Embeddings:
    info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    files = info.get("embeddings", {})
    if extractor not in files:
        known = ", ".join(sorted(files)) or "none"
        raise KeyError(f"{folder / 'run.json'}: no embeddings of extractor {extractor!r}; "
                       f"known: {known}")
    path = Path(files[extractor])
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the cached embeddings of {extractor!r} are gone "
                                f"(cache cleared?); re-run the benchmark to rebuild them")
    embeddings = Embeddings.load(path)
    if variant == "raw":
        return embeddings
    from bench.core import registry
    from bench.core.cache import Cache
    from bench.vectors import variants

    registry.load_plugins(info.get("plugins", []))
    options = dict(info.get("dataset_options", {}))
    dataset = registry.build_dataset(info["dataset"].split(":")[0], Cache(info.get("cache")),
                                     **options)
    whitening = (info.get("run_config") or {}).get("profile", {}).get("whitening")
    by_variant, _ = variants.for_task(embeddings, dataset, registry.find_task(task), whitening)
    if variant not in by_variant:
        raise ValueError(f"{folder}: no {variant!r} variant for task {task!r} (too few train "
                         "rows, or the task has no whitened variant)")
    return by_variant[variant]


def check_line_ids(ids: np.ndarray, source: Path) -> None:
    """``.ids.txt`` holds one id per line: an id with a line break (or another control
    character) would shift every later id; refused, naming it, before anything is written."""
    bad = [i for i, item in enumerate(ids) if re.search(r"[\x00-\x1f\x7f]", item)]
    if bad:
        raise ValueError(f"{source}: {len(bad)} ids contain a line break or another control "
                         f"character, e.g. {str(ids[bad[0]])!r} (row {bad[0]}); the .ids.txt of "
                         f"--format npy cannot hold them; the fuxictr-npz and fuxictr-parquet "
                         f"formats keep such ids intact")


def export(run: Path, extractor: str, results: Path = Path("results"), variant: str = "raw",
           task: str = "ctr",
           formats: tuple[str, ...] = FORMATS, out: Path | None = None) -> list[Path]:
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)}")
    folder = run_folder(run, results)
    embeddings = load_vectors(folder, extractor, variant, task)
    out = out or folder / "vectors"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", extractor) + ("" if variant == "raw" else "+w")
    keys = embeddings.ids.astype(str)
    if "npy" in formats:
        check_line_ids(keys, folder / "run.json")
    written = []
    if "fuxictr-npz" in formats:
        path = out / f"{stem}.fuxictr.npz"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, key=keys, value=embeddings.vectors)
        written.append(path)
    if "fuxictr-parquet" in formats:
        path = out / f"{stem}.fuxictr.parquet"
        frame = pd.DataFrame({"key": keys, "value": list(embeddings.vectors)})
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False)
        written.append(path)
    if "npy" in formats:
        path = out / f"{stem}.npy"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, embeddings.vectors)
        written += [path, write_text(out / f"{stem}.ids.txt", "\n".join(keys) + "\n")]
    return written
