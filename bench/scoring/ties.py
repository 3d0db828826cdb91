"""Tie groups: which rows the best row of a column does not beat at 95%.

At run time :func:`bench.scoring.verdicts.compute` writes ``ties.csv`` beside ``verdicts.csv``:
for every (task, metric, variant), every pair of rows scored on the same units, the paired test
of :func:`bench.scoring.stats.compare` on the same bootstrap draws as the intervals (difference
``extractor - other``, its 95% interval, standard error and two-sided p-value).

The rule (:func:`tie_group`, the one function the report's tables, its "At a glance" section and
``bench compare`` call): among the candidate rows (deployable extractors only), the best is the
one with the best mean (lowest for costs). Every other candidate is compared with the best by
that paired test; Holm's step-down correction over those m comparisons keeps the chance of
wrongly calling any of them beaten at or below 5%: sort the p-values, p_(1) <= ... <= p_(m),
and reject while p_(i) < 0.05 / (m - i + 1). The candidates not rejected are tied with the best
("best: {a, b} (tied at 95%)"); a candidate without a stored pair (no evidence) is "not
compared", never silently in or out of the group.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.scoring import stats

TIES_FILE = "ties.csv"
TIES_COLUMNS = ["task", "metric", "variant", "extractor", "other", "diff", "diff_low",
                "diff_high", "se", "p_value", "test"]
ALPHA = 1 - stats.CONFIDENCE
CORRECTION = "Holm over the comparisons with the best"
RULE = (f"tied: not beaten by the best at 95% in the paired test (bootstrap over the task's "
        f"units plus the seed spread), {CORRECTION}")


def pair_rows(task: str, metric: str, by_key: dict[tuple[str, str], tuple]) -> list[dict]:
    """``ties.csv`` rows of one (task, metric): each pair of rows of the same variant, tested
    on the shared draws (``by_key``: (extractor, variant) -> (stats.Cell, draws))."""
    keys = list(by_key)
    out = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if a[1] != b[1]:
                continue
            test = stats.compare(*by_key[a], *by_key[b])
            out.append({"task": task, "metric": metric, "variant": a[1], "extractor": a[0],
                        "other": b[0], "diff": test.diff, "diff_low": test.low,
                        "diff_high": test.high, "se": test.se, "p_value": test.p_value,
                        "test": test.test})
    return out


def read(run_dir: str | Path) -> pd.DataFrame | None:
    """A run folder's ``ties.csv`` (None when the run has none or it cannot be read)."""
    path = Path(run_dir) / TIES_FILE
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype={"task": str, "metric": str, "variant": str,
                                         "extractor": str, "other": str})
    except (OSError, ValueError):
        return None
    return frame if set(TIES_COLUMNS) <= set(frame.columns) else None


@dataclass
class Pair:
    """The paired test of ``a`` against ``b`` (``diff`` = a - b)."""

    a: str
    b: str
    diff: float
    low: float
    high: float
    p_value: float
    test: str = ""


class PairBook:
    """Look-up of ``ties.csv`` rows of one (task, metric, variant), in either order."""

    def __init__(self, ties: pd.DataFrame | None, task: str, metric: str, variant: str):
        self.pairs: dict[tuple[str, str], Pair] = {}
        if ties is None or ties.empty:
            return
        part = ties[(ties["task"] == task) & (ties["metric"] == metric)
                    & (ties["variant"] == variant)]
        for r in part.itertuples(index=False):
            a, b = str(r.extractor), str(r.other)
            self.pairs[(a, b)] = Pair(a, b, r.diff, r.diff_low, r.diff_high, r.p_value,
                                      str(r.test))
            self.pairs[(b, a)] = Pair(b, a, -r.diff, -r.diff_high, -r.diff_low, r.p_value,
                                      str(r.test))

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def __call__(self, a: str, b: str) -> Pair | None:
        return self.pairs.get((a, b))


def holm(p_values: dict[str, float], alpha: float = ALPHA) -> dict[str, float]:
    """Holm-adjusted p-values: ``max_{j <= i} min(1, (m - j + 1) p_(j))``; a comparison is
    rejected (beaten) when its adjusted p-value is below ``alpha``."""
    ordered = sorted(p_values.items(), key=lambda kv: kv[1])
    m, running, out = len(ordered), 0.0, {}
    for i, (name, p) in enumerate(ordered):
        running = max(running, min(1.0, (m - i) * p))
        out[name] = running
    return out


@dataclass
class TieGroup:
    """The outcome of :func:`tie_group` on one column."""

    best: str
    tied: list[str]  # the best first, then the rows it does not beat, best mean first
    beaten: list[str] = field(default_factory=list)
    untested: list[str] = field(default_factory=list)  # no stored pair with the best
    adjusted: dict[str, float] = field(default_factory=dict)  # Holm-adjusted p vs the best
    tested: bool = True  # False: no pairs at all (a run without ties.csv)

    def text(self) -> str:
        names = ", ".join(self.tied)
        if len(self.tied) > 1:
            return f"best: {{{names}}} (tied at 95%)" if self.tested else \
                f"best: {{{names}}} (equal values; no paired test)"
        if not self.tested:
            return f"best: {names} (best value; no paired test in this run)"
        return f"best: {names} (ahead of every other extractor at 95%)" if self.beaten else \
            f"best: {names}"


def tie_group(means: dict[str, float], lower_is_better: bool,
              pair: Callable[[str, str], Pair | None] | None = None,
              alpha: float = ALPHA) -> TieGroup | None:
    """The best of ``means`` (candidates only: references never enter) and the rows it does not
    beat at ``1 - alpha`` (see the module doc); None without a finite mean. Without ``pair``
    evidence the group is the rows whose mean equals the best's (pass values rounded as shown)."""
    finite = {k: v for k, v in means.items() if isinstance(v, int | float) and math.isfinite(v)}
    if not finite:
        return None
    ordered = sorted(finite, key=lambda k: finite[k], reverse=not lower_is_better)
    best, others = ordered[0], ordered[1:]
    found = {o: p for o in others if pair is not None and (p := pair(best, o)) is not None
             and math.isfinite(p.p_value)}
    if not found:
        return TieGroup(best, [best, *[o for o in others if finite[o] == finite[best]]],
                        tested=False, untested=list(others))
    adjusted = holm({o: p.p_value for o, p in found.items()}, alpha)
    tied = [best, *[o for o in others if o in adjusted and adjusted[o] >= alpha]]
    beaten = [o for o in others if o in adjusted and adjusted[o] < alpha]
    return TieGroup(best, tied, beaten, [o for o in others if o not in found], adjusted)

