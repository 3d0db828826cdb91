"""Comparison tables from long-format results: extractors as rows, ``raw`` and ``+w`` side by side,
mean ± std over seeds. Reads only ``results.csv`` data, never the tasks that produced it."""

from __future__ import annotations

import numpy as np
import pandas as pd

VARIANT_LABELS = {"raw": "raw", "w": "+w"}


def aggregate(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and seed count per (dataset, task, extractor, variant, metric)."""
    keys = ["dataset", "task", "extractor", "variant", "metric"]
    grouped = results.groupby(keys, sort=False)["value"]
    out = grouped.agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                      n="count").reset_index()
    return out


def task_table(results: pd.DataFrame, task: str) -> pd.DataFrame:
    """One task's table: rows extractors, columns ``metric raw`` / ``metric +w``, text cells."""
    stats = aggregate(results[results["task"] == task])
    if stats.empty:
        return pd.DataFrame()
    stats["column"] = stats["metric"] + " " + stats["variant"].map(VARIANT_LABELS).fillna(
        stats["variant"])
    stats["cell"] = [
        f"{m:.4f} ± {s:.4f}" if n > 1 else f"{m:.4f}"
        for m, s, n in zip(stats["mean"], stats["std"], stats["n"])
    ]
    table = stats.pivot_table(index="extractor", columns="column", values="cell",
                              aggfunc="first", sort=False)
    return table.fillna("not run")


def summary_markdown(results: pd.DataFrame, title: str = "Summary") -> str:
    lines = [f"# {title}", ""]
    for task in dict.fromkeys(results["task"]):
        table = task_table(results, task)
        if table.empty:
            continue
        lines += [f"## {task}", "", to_markdown(table), ""]
    return "\n".join(lines)


def to_markdown(table: pd.DataFrame) -> str:
    header = ["extractor", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table.iterrows():
        lines.append("| " + " | ".join([str(name), *map(str, row.tolist())]) + " |")
    return "\n".join(lines)
