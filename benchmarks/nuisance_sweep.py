"""Which homestead nuisance factor removes which shortcut? (issue #25)

Builds the world of a profile once per setting: every factor off (``nuisance=0``, the old
homestead-1.1 world), each factor alone at its default, and all of them at their defaults (the
new default world). On each it runs raw pixels and one trained extractor (``--extractor``,
trained afresh on that world) through ``knn`` and ``retrieval`` with one seed, and prints one
row per setting and extractor: knn style and scene consistency and retrieval recall@10 with
their 95% intervals (the run's own bootstrap tables), and how far the setting moved the pixels
from the bare world (mean absolute difference, 0-255).

    BENCH_CACHE_DIR=/tmp/bench-cache .venv/bin/python benchmarks/nuisance_sweep.py \\
        --profile quick --extractor moco_v2:epochs=6 --out /tmp/sweep.csv

``--settings`` picks a subset (``off``, a factor name, ``all``); ``--option KEY=VALUE`` changes
the world of every setting (e.g. ``n_queries=600`` for tighter recall intervals);
``--defaults KEY=VALUE`` tries another default strength for a factor (tuning).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.core import registry  # noqa: E402
from bench.core.cache import Cache  # noqa: E402
from bench.core.config import get_profile  # noqa: E402
from bench.run import RunSpec, run_benchmark  # noqa: E402

METRICS = (("knn", "style_consistency"), ("knn", "scene_consistency"), ("retrieval", "recall@10"))


def settings(factors: tuple[str, ...], defaults: dict[str, int]) -> dict[str, dict[str, int]]:
    """Setting name -> homestead options over the profile's."""
    out = {"off": {"nuisance": 0}}
    out.update({f: {"nuisance": 0, f: defaults[f]} for f in factors})
    out["all"] = dict(defaults)
    return out


def read_row(run_dir: Path, extractor: str) -> dict[str, float]:
    """The raw value and 95% interval of each metric for one extractor, from the run's tables."""
    row: dict[str, float] = {}
    for task, metric in METRICS:
        table = pd.read_csv(run_dir / "tables" / f"{task}.csv").set_index("extractor")
        for suffix, key in (("", metric), (" low", f"{metric} low"), (" high", f"{metric} high")):
            row[key] = float(table.loc[extractor, f"{metric} raw{suffix}"])
    return row


def pixel_change(world, bare) -> float:
    """Mean absolute difference of the images from the bare world's, 0-255."""
    return float(np.abs(world.images().astype(np.int16) - bare.images()).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--extractor", default="moco_v2:epochs=6")
    parser.add_argument("--settings", default=None, help="comma-separated subset")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--defaults", action="append", default=[], metavar="FACTOR=VALUE")
    parser.add_argument("--cache", default=None)
    parser.add_argument("--out", type=Path, help="write the rows here as CSV")
    parser.add_argument("--runs", type=Path, help="keep the run folders here (default: none)")
    args = parser.parse_args(argv)
    errors = registry.load_plugins()
    if errors:
        raise SystemExit("; ".join(map(str, errors)))
    from bench_plugins.datasets.homestead.nuisance import DEFAULTS, FACTORS

    defaults = {**DEFAULTS, **{k: int(v) for k, v in (d.split("=") for d in args.defaults)}}
    profile = get_profile(args.profile)
    base = {**profile.dataset_options("homestead"),
            **{k: int(v) for k, v in (o.split("=") for o in args.option)}}
    chosen = settings(FACTORS, defaults)
    if args.settings:
        chosen = {k: v for k, v in chosen.items() if k in args.settings.split(",")}
    cache = Cache(args.cache)
    bare = registry.build_dataset("homestead", cache, **{**base, "nuisance": 0})
    rows = []
    with tempfile.TemporaryDirectory(prefix="nuisance-sweep-") as scratch:
        folder = args.runs or Path(scratch)
        for name, options in chosen.items():
            start = time.perf_counter()
            world_options = {**base, **options}
            world = registry.build_dataset("homestead", cache, **world_options)
            spec = RunSpec(profile=profile, dataset_options=world_options,
                           extractors=("pixels", args.extractor), tasks=("knn", "retrieval"),
                           seeds=1, out_root=folder, run_id=f"sweep-{name}", report=False)
            run = run_benchmark(spec, cache)
            for extractor in ("pixels", args.extractor):
                rows.append({"setting": name, "extractor": extractor,
                             "pixel_change": round(pixel_change(world, bare), 2),
                             **read_row(run.dir, extractor.split(":")[0])})
            print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    frame = pd.DataFrame(rows)
    if args.out:
        frame.to_csv(args.out, index=False)
    print(markdown(frame))
    return 0


def markdown(frame: pd.DataFrame) -> str:
    """One line per setting and extractor, each metric as value [low, high]."""
    lines = ["| setting | extractor | mean abs pixel change | knn style | knn scene | "
             "retrieval R@10 |", "|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        cells = [f"{r[m]:.3f} [{r[f'{m} low']:.3f}, {r[f'{m} high']:.3f}]" for _, m in METRICS]
        lines.append(f"| {r['setting']} | {r['extractor']} | {r['pixel_change']:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
