"""Time and peak memory of the CTR intervals (``bench.scoring.stats.resample``) at log scale.

A synthetic evaluation day: ``--per-user`` impressions per user in time order (a user effect
shared by its impressions, 25% clicks), two extractors' scores, and the three CTR evidence kinds (AUC, GAUC,
per-impression logloss as a mean), resampled together as ``bench.scoring.verdicts`` does for one
metric: 2 cells per kind, ``N_RESAMPLES`` draws. Each size runs in a fresh process so the peak
resident memory (``ru_maxrss``) is that size's own; "evidence" is the resident memory once the
evidence is built, so the interval's own cost is the difference.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/interval_scale.py            # 20k, 200k, 2M
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/interval_scale.py --users 20000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's bench


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one(n_users: int, per_user: int) -> dict:
    from bench.scoring import stats

    rng = np.random.default_rng(0)
    order = rng.permutation(n_users * per_user)  # a day's log is in time order, not by user
    users = np.repeat(np.arange(n_users), per_user)[order].astype(str)
    effect = np.repeat(rng.normal(0, 1, n_users), per_user)[order]
    labels = (rng.random(len(users)) < 0.25).astype(np.int8)
    results = {"users": n_users, "impressions": len(users)}
    for kind in ("auc", "gauc", "mean"):
        cells = []
        for name in ("a", "b"):
            scores = 0.5 * labels + effect + rng.normal(0, 1, len(users))
            if kind == "mean":
                evidence = stats.mean_evidence("user", users, scores)
            else:
                evidence = stats.Evidence(kind, "user", users, scores, labels)
            cells.append(stats.Cell((name, "raw"), [evidence]))
        before = rss_mb()
        start = time.perf_counter()
        draws = stats.resample(cells, stats.N_RESAMPLES)
        seconds = time.perf_counter() - start
        iv = stats.interval(cells[0], draws[0])
        seconds_interval = time.perf_counter() - start - seconds
        results[kind] = {"seconds": round(seconds, 2),
                         "interval_seconds": round(seconds_interval, 2), "evidence_rss_mb": round(before),
                         "peak_rss_mb": round(rss_mb()), "value": round(iv.value, 4),
                         "se": float(f"{iv.se:.3g}")}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, action="append")
    parser.add_argument("--per-user", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = args.users or [20_000, 200_000, 2_000_000]
    if args.child:
        print(json.dumps(one(sizes[0], args.per_user)))
        return 0
    print("users,impressions,kind,resample_s,interval_s,evidence_rss_mb,peak_rss_mb,value,se")
    for n in sizes:  # a fresh process per size: its own peak memory
        out = subprocess.run([sys.executable, __file__, "--child", "--users", str(n),
                              "--per-user", str(args.per_user)],
                             capture_output=True, text=True)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        found = json.loads(out.stdout.strip().splitlines()[-1])
        for kind in ("auc", "gauc", "mean"):
            r = found[kind]
            print(f"{n},{found['impressions']},{kind},{r['seconds']},{r['interval_seconds']},{r['evidence_rss_mb']},"
                  f"{r['peak_rss_mb']},{r['value']},{r['se']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
