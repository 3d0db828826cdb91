"""``bench compare RUN_A RUN_B``: what changed between two runs, and is it more than noise?

Per (task, extractor, variant, metric): the mean over seeds in A and in B and the change B - A.
When both runs have ``verdicts.csv`` (every run since intervals exist), the change is tested
against both runs' standard errors (bootstrap over the task's units plus the seed spread):
beyond noise when ``|change| > 1.96 sqrt(se_a^2 + se_b^2)`` (a two-sided z-test at 95%; the two
runs are treated as independent, which is conservative when they scored the same units).
Otherwise, as for old runs, against ``2 x pooled seed std`` with
``sqrt(((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2))`` (sample stds, ddof 1); a
single seed on both sides then gives ``n/a``. ``better`` / ``worse`` follow the metric's
direction (lower is better for logloss, bytes and time). Printed as a table and written as CSV,
under a header naming each run by its path and its dataset (run.json ``dataset`` and
``dataset_fingerprint``). Runs whose dataset fingerprints differ are refused (exit 2): their
changes would be dataset differences reported as model changes; ``--different-datasets``
compares them anyway, under a warning on stderr. Then each run's best deployable extractor per
task's main score with its tie group, by the report's rule
(:func:`bench.report.glance.compare_lines`, :func:`bench.scoring.ties.tie_group`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core.metric_info import MetricBook
from bench.report.tables import format_number
from bench.scoring.stats import Z

KEYS = ["task", "extractor", "variant", "metric"]
COLUMNS = [*KEYS, "mean_a", "mean_b", "change", "pooled_std", "se_a", "se_b", "noise", "n_a",
           "n_b", "beyond_noise", "direction", "test"]
Z_TEST = "z-test on the runs' standard errors (bootstrap + seeds), 95%"
SEED_TEST = "2 x pooled seed std"


def _stats(results: pd.DataFrame) -> pd.DataFrame:
    frame = results.astype({k: str for k in KEYS})
    grouped = frame.groupby(KEYS, sort=False)["value"]
    return grouped.agg(mean="mean", var=lambda v: float(np.var(v, ddof=1)) if v.count() > 1
                       else 0.0, n="count").reset_index()


def _verdict(change: float, pooled: float, df: int) -> str:
    if df <= 0 or not math.isfinite(change):
        return "n/a"
    return "yes" if abs(change) > 2 * pooled else "no"


def _direction(metric: str, change: float, book: MetricBook) -> str:
    if not book.is_ranked(metric) or not math.isfinite(change):
        return ""
    if change == 0:
        return "same"
    improved = change < 0 if book.lower_is_better(metric) else change > 0
    return "better" if improved else "worse"


def _errors(verdicts: pd.DataFrame | None) -> pd.DataFrame:
    if verdicts is None or "se" not in verdicts.columns:
        return pd.DataFrame(columns=[*KEYS, "se"])
    return verdicts.astype({k: str for k in KEYS})[[*KEYS, "se"]].drop_duplicates(KEYS)


def compare_results(results_a: pd.DataFrame, results_b: pd.DataFrame,
                    verdicts_a: pd.DataFrame | None = None,
                    verdicts_b: pd.DataFrame | None = None,
                    book: MetricBook | None = None) -> pd.DataFrame:
    """One row per metric found in either run, sorted by task, extractor, variant, metric;
    ``book`` (the runs' run.json ``metrics``) says which way each metric is better."""
    book = book or MetricBook()
    a, b = _stats(results_a), _stats(results_b)
    a = a.merge(_errors(verdicts_a), on=KEYS, how="left", sort=False)
    b = b.merge(_errors(verdicts_b), on=KEYS, how="left", sort=False)
    merged = a.merge(b, on=KEYS, how="outer", suffixes=("_a", "_b"), sort=False)
    n_a = merged["n_a"].fillna(0).astype(int)
    n_b = merged["n_b"].fillna(0).astype(int)
    df = (n_a - 1).clip(lower=0) + (n_b - 1).clip(lower=0)
    pooled_var = ((n_a - 1).clip(lower=0) * merged["var_a"].fillna(0)
                  + (n_b - 1).clip(lower=0) * merged["var_b"].fillna(0)) / df.where(df > 0)
    out = merged[KEYS].copy()
    out["mean_a"], out["mean_b"] = merged["mean_a"], merged["mean_b"]
    out["change"] = merged["mean_b"] - merged["mean_a"]
    out["pooled_std"] = np.sqrt(pooled_var)
    out["se_a"], out["se_b"] = merged["se_a"], merged["se_b"]
    out["n_a"], out["n_b"] = n_a, n_b
    verdicts, tests, noise = [], [], []
    for change, pooled, dof, na, nb, se_a, se_b in zip(out["change"], out["pooled_std"], df,
                                                        n_a, n_b, out["se_a"], out["se_b"]):
        if na == 0 or nb == 0:
            verdicts.append("only in A" if nb == 0 else "only in B")
            tests.append("")
            noise.append(np.nan)
        elif pd.notna(se_a) and pd.notna(se_b):
            width = Z * float(np.hypot(se_a, se_b))
            verdicts.append("yes" if abs(change) > width else "no")
            tests.append(Z_TEST)
            noise.append(width)
        else:
            verdicts.append(_verdict(change, pooled, int(dof)))
            tests.append(SEED_TEST)
            noise.append(2 * pooled if int(dof) > 0 else np.nan)
    out["beyond_noise"] = verdicts
    out["noise"] = noise
    out["test"] = tests
    out["direction"] = [_direction(m, c, book) for m, c in zip(out["metric"], out["change"])]
    return out[COLUMNS]


def format_table(comparison: pd.DataFrame) -> str:
    """A plain aligned text table for the terminal."""
    def num(x: float, like: float | None = None) -> str:
        return "" if pd.isna(x) else format_number(float(x), like)

    header = ["task", "extractor", "variant", "metric", "A", "B", "change", "noise",
              "beyond noise", "direction"]
    lines = [header]
    for row in comparison.itertuples(index=False):
        noise = "" if pd.isna(row.noise) else num(row.noise, row.mean_a)
        change = "" if pd.isna(row.change) else \
            f"{'+' if row.change >= 0 else ''}{num(row.change, row.mean_a)}"
        lines.append([row.task, row.extractor, row.variant, row.metric, num(row.mean_a),
                      num(row.mean_b), change, noise, row.beyond_noise, row.direction])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def _results(run: str) -> pd.DataFrame:
    from bench.report import read_results

    path = Path(run)
    path = path / "results.csv" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.csv; pass a run folder or a results file")
    return read_results(path)


def _identity(run: str) -> tuple[Path, str | None, str | None]:
    """(run folder, dataset, dataset fingerprint) from its run.json (None where unknown)."""
    path = Path(run)
    folder = path if path.is_dir() else path.parent
    try:
        info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return folder, None, None
    if not isinstance(info, dict):
        return folder, None, None
    fingerprint = info.get("dataset_fingerprint")
    return folder, info.get("dataset"), None if fingerprint is None else str(fingerprint)


def describe(run: str) -> str:
    """A run named by its path and its dataset's fingerprint: two folders both named ``base``
    are told apart."""
    folder, dataset, fingerprint = _identity(run)
    data = (f"dataset {dataset or '?'}, fingerprint {fingerprint}" if fingerprint
            else "dataset fingerprint unknown (no run.json)")
    return f"{folder} ({data})"


def check_same_data(run_a: str, run_b: str, allow: bool = False) -> str | None:
    """Refuse (ValueError) two runs whose run.json dataset fingerprints differ: their changes
    would be dataset differences reported as model changes. With ``allow``: the warning line
    to print instead. None when the fingerprints agree or one is unknown."""
    (_, data_a, key_a), (_, data_b, key_b) = _identity(run_a), _identity(run_b)
    if key_a is None or key_b is None or key_a == key_b:
        return None
    message = (f"the runs scored different data: {run_a} on {data_a} (fingerprint {key_a}), "
               f"{run_b} on {data_b} (fingerprint {key_b}); their changes would mix dataset "
               f"and model differences")
    if not allow:
        raise ValueError(f"{message}; compare runs of one dataset, or pass "
                         f"--different-datasets to compare anyway")
    return f"WARNING: {message}; every change below includes the dataset difference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", help="baseline run folder (or its results.csv)")
    parser.add_argument("run_b", help="new run folder (or its results.csv)")
    parser.add_argument("--out", help="CSV path (default: RUN_B/compare_vs_<RUN_A name>.csv)")
    parser.add_argument("--changed-only", action="store_true",
                        help="print only rows whose change is beyond the seed noise")
    parser.add_argument("--different-datasets", action="store_true",
                        help="compare runs whose dataset fingerprints differ (refused by "
                             "default), with a warning")


def _verdicts(run: str) -> pd.DataFrame | None:
    path = Path(run)
    path = (path if path.is_dir() else path.parent) / "verdicts.csv"
    return pd.read_csv(path) if path.is_file() else None


def _metric_book(*runs: str) -> MetricBook:
    """Both runs' declared metrics (run.json ``metrics``), the newer run's first."""
    records: dict[str, Any] = {}
    for run in runs:
        path = Path(run)
        path = (path if path.is_dir() else path.parent) / "run.json"
        try:
            records.update(json.loads(path.read_text(encoding="utf-8")).get("metrics") or {})
        except (OSError, ValueError, AttributeError):
            continue
    return MetricBook(records)


def main(args: argparse.Namespace) -> int:
    warning = check_same_data(args.run_a, args.run_b, args.different_datasets)
    comparison = compare_results(_results(args.run_a), _results(args.run_b),
                                 _verdicts(args.run_a), _verdicts(args.run_b),
                                 _metric_book(args.run_a, args.run_b))
    run_a, run_b = Path(args.run_a), Path(args.run_b)
    folder_b = run_b if run_b.is_dir() else run_b.parent
    folder_a = (run_a if run_a.is_dir() else run_a.parent).resolve()
    name_a = folder_a.name
    if name_a == folder_b.resolve().name:  # two folders named alike: say which A it was
        name_a = f"{folder_a.parent.name}_{name_a}"
    out = Path(args.out) if args.out else folder_b / f"compare_vs_{name_a}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    comparison.to_csv(out, index=False)
    if warning:
        print(warning, file=sys.stderr)
    print(f"A: {describe(args.run_a)}\nB: {describe(args.run_b)}\n")
    shown = comparison[comparison["beyond_noise"] == "yes"] if args.changed_only else comparison
    print(format_table(shown) if len(shown) else "no rows to show")
    counts = comparison["beyond_noise"].value_counts().to_dict()
    used = sorted({t for t in comparison["test"] if t})
    print(f"\n{len(comparison)} metrics; beyond noise: {counts.get('yes', 0)}, within: "
          f"{counts.get('no', 0)}, no noise estimate (one seed): {counts.get('n/a', 0)}, "
          f"in one run only: {counts.get('only in A', 0) + counts.get('only in B', 0)}; "
          f"noise: {' / '.join(used) or 'none'}")
    print(f"wrote {out}")
    from bench.report.glance import compare_lines  # the report's tie rule, same files

    best = compare_lines(args.run_a, args.run_b, args.changed_only)
    if best:
        print("\n" + "\n".join(best))
    return 0
