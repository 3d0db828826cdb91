"""Writes ``tests/fixtures/report_run_a/ties.csv``: the fixture run has no evidence to bootstrap,
so its paired tests are made from its per-seed values with a fixed bootstrap part: for each
pair of rows of a task's main score and variant, ``se = sqrt(0.01^2 + seed part)`` (the seed
part as in ``bench.scoring.stats.compare``), a two-sided normal p-value. Run from the repository
root: ``python -m tests.fixture_ties``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats

from bench.scoring import stats, ties

RUN_A = Path(__file__).parent / "fixtures" / "report_run_a"
BOOTSTRAP_SE = 0.01


def fixture_ties(run: Path = RUN_A) -> pd.DataFrame:
    results = pd.read_csv(run / "results.csv")
    mains = json.loads((run / "run.json").read_text())["main_scores"]
    rows = []
    for task, metric in mains.items():
        part = results[(results["task"] == task) & (results["metric"] == metric)]
        for variant, block in part.groupby("variant", sort=False):
            seeds = {e: g.sort_values("seed")["value"].to_numpy()
                     for e, g in block.groupby("extractor", sort=False)}
            names = list(seeds)
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    x, y = seeds[a], seeds[b]
                    if len(x) == len(y):
                        seed_part = (np.var(x - y, ddof=1) / len(x)) if len(x) > 1 else 0.0
                    else:
                        seed_part = sum(np.var(v, ddof=1) / len(v) for v in (x, y) if len(v) > 1)
                    se = math.sqrt(BOOTSTRAP_SE ** 2 + seed_part)
                    diff = float(x.mean() - y.mean())
                    rows.append({"task": task, "metric": metric, "variant": variant,
                                 "extractor": a, "other": b, "diff": diff,
                                 "diff_low": diff - stats.Z * se, "diff_high": diff + stats.Z * se,
                                 "se": se, "p_value": float(2 * scipy.stats.norm.sf(abs(diff) / se)),
                                 "test": f"fixture: bootstrap part {BOOTSTRAP_SE} + seed spread, "
                                         "two-sided z-test at 95%"})
    return pd.DataFrame(rows, columns=ties.TIES_COLUMNS)


if __name__ == "__main__":
    fixture_ties().to_csv(RUN_A / ties.TIES_FILE, index=False)
