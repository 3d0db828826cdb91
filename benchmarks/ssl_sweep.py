"""knn and classify for extractor specs on a homestead world, one run per spec (issue #26).

``bench run --extractors`` splits on commas, so a spec with several options
(``swav:lr=0.15,freeze_epochs=0``) goes through ``bench.run.RunSpec`` here. Each spec is one
run ``<run-id>-<i>`` under ``--out``; the printed table is raw style / scene consistency and
probe top-1 (intervals: each run's summary.md). ``--world 1`` is the validation world the SSL
settings are chosen on (docs/learned-extractors.md); the default run's world is 0.

    flock /tmp/cpu-heavy.lock .venv/bin/python benchmarks/ssl_sweep.py sw1 --world 1 \\
        random swav swav:lr=0.3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's bench

from bench.core.cache import Cache  # noqa: E402
from bench.core.config import get_profile  # noqa: E402
from bench.run import RunSpec, run_benchmark  # noqa: E402

METRICS = ["style_consistency", "scene_consistency", "probe_top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_id")
    parser.add_argument("specs", nargs="+", help="extractor specs, options with commas allowed")
    parser.add_argument("--world", type=int, default=0, help="homestead seed (1: validation)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds of the seeded tasks")
    parser.add_argument("--out", default="results")
    args = parser.parse_args()
    profile = get_profile("default")
    options = profile.dataset_options("homestead") | {"seed": args.world}
    frames = []
    for i, one in enumerate(args.specs):
        spec = RunSpec(profile=profile, dataset="homestead", dataset_options=options,
                       extractors=(one,), tasks=("knn", "classify"), seeds=args.seeds,
                       out_root=Path(args.out), run_id=f"{args.run_id}-{i}", report=False)
        run = run_benchmark(spec, Cache())
        rows = pd.read_csv(run.dir / "results.csv")
        rows = rows[(rows.variant == "raw") & rows.metric.isin(METRICS)].assign(extractor=one)
        frames.append(rows)
    table = pd.concat(frames).pivot_table(index="extractor", columns="metric", values="value",
                                          sort=False)
    print(table[METRICS].round(3).to_string())


if __name__ == "__main__":
    main()
