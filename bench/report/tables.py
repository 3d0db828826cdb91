"""Comparison tables from long-format results, shaped like the reference study's tables.

Extractors are rows; each metric has ``raw`` and ``+w`` columns side by side; cells are the mean
over seeds. With the run's ``verdicts.csv`` a cell shows its 95% interval, ``[low, high]``, and
a mark against the task's reference row: ``▲`` better, ``▼`` worse at 95% (paired test named
in the table's note), nothing when the difference is within noise; without it, ``± std`` over
seeds when there are several. Per column the best value is marked bold and the second
underlined (metrics whose direction is ``lower``, such as logloss and time, rank the other
way); chance columns appear once per task and are never ranked, nor are counts. What each metric
means comes from run.json's ``metrics`` (declared by its task, ``bench.core.metric_info``). A row or
column the run did not produce reads "not run". Reads only the run folder's files, never the
tasks.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench.core.metric_info import MetricBook
from bench.report import kinds
from bench.report.ctr_ablation import ctr_ablation_markdown
from bench.report.online import online_markdown
from bench.scoring import ties

VARIANT_LABELS = {"raw": "raw", "w": "+w", "ft": "fine-tuned"}
# Variants that are columns of an extractor's row (``ft``: the metric name already says
# "finetune"); any other variant (an AMS mode, say) becomes a row of its own.
COLUMN_SUFFIX = {"raw": "raw", "w": "+w", "ft": ""}
NOT_RUN = "not run"
MAX_COLUMNS = 12  # wider tables are shown in parts (Markdown, HTML); CSV and JSON stay whole
MARKS = {"better": " ▲", "worse": " ▼"}
RANK_NOTE = ("Only deployable extractors are ranked: reference rows (the known-answer ladder, "
             "ablations, scratch backbones, IDs only; run.json `row_kinds`) are never bold or "
             "underlined. Where the run has paired tests (ties.csv) **bold** is the tie group: "
             "the best and every extractor it does not beat at 95% (paired bootstrap test, Holm "
             "over the comparisons with the best).")


def row_label(extractor: str, variant: str) -> str:
    """Rows are extractors; a variant other than raw/w/ft (an AMS mode, say) is its own row."""
    return extractor if variant in COLUMN_SUFFIX else f"{extractor} ({variant})"


def column_label(metric: str, variant: str, book: MetricBook | None = None) -> str:
    if (book or MetricBook()).is_chance(metric):
        return metric
    return f"{metric} {COLUMN_SUFFIX.get(variant, '')}".strip()


def aggregate(results: pd.DataFrame, verdicts: pd.DataFrame | None = None,
              book: MetricBook | None = None) -> pd.DataFrame:
    """Mean, sample std (ddof 1, 0 with one seed) and seed count per (dataset, task, extractor,
    variant, metric), in order of first appearance, with the table's ``row`` and ``column``;
    with ``verdicts`` (verdicts.csv) also the 95% interval, the verdict and the reference."""
    keys = ["dataset", "task", "extractor", "variant", "metric"]
    extra = ["ci_low", "ci_high", "verdict", "reference"]
    if results.empty:
        return pd.DataFrame(columns=[*keys, "mean", "std", "n", "row", "column", *extra])
    frame = results.astype({k: str for k in keys})
    grouped = frame.groupby(keys, sort=False)["value"]
    out = grouped.agg(mean="mean", std=lambda v: float(v.std(ddof=1)) if v.count() > 1 else 0.0,
                      n="count").reset_index()
    out["row"] = [row_label(e, v) for e, v in zip(out["extractor"], out["variant"])]
    if out["dataset"].nunique() > 1:  # several datasets in one file: keep their rows apart
        out["row"] = out["dataset"] + ": " + out["row"]
    out["column"] = [column_label(m, v, book) for m, v in zip(out["metric"], out["variant"])]
    if verdicts is not None and len(verdicts):
        join = ["task", "extractor", "variant", "metric"]
        found = verdicts.astype({k: str for k in join})[[*join, *extra]]
        out = out.merge(found.drop_duplicates(join), on=join, how="left", sort=False)
    for column in extra:
        if column not in out.columns:
            out[column] = np.nan
    return out


def format_number(x: float, like: float | None = None) -> str:
    """Four decimals for scores; thousands and scientific notation for bytes, counts and times.
    ``like``: format in the style chosen for that value (a std beside its mean)."""
    if x is None or not math.isfinite(x):
        return "n/a"
    size = abs(x if like is None or not math.isfinite(like) else like)
    if size == 0 or 1e-3 <= size < 1e3:
        return f"{x:.4f}"
    if 1e3 <= size < 1e5:
        return f"{x:,.1f}"
    return f"{x:.3e}"


@dataclass
class Column:
    key: str
    metric: str
    variant: str | None  # None for chance columns (variants pooled)
    lower_is_better: bool
    chance: bool
    ranked: bool = True  # False for chance levels and counts (shown, never ranked)


@dataclass
class Cell:
    mean: float
    std: float
    n: int
    rank: int = 0  # 1 best, 2 second, 0 unranked
    low: float = math.nan  # 95% interval (verdicts.csv), NaN when unknown
    high: float = math.nan
    verdict: str = ""  # better / worse / same against the reference row

    @property
    def interval(self) -> str:
        """`` [low, high]`` as :attr:`text` shows it ("" without an interval)."""
        if math.isfinite(self.low) and math.isfinite(self.high) and math.isfinite(self.mean):
            return (f" [{format_number(self.low, like=self.mean)}, "
                    f"{format_number(self.high, like=self.mean)}]")
        return ""

    @property
    def text(self) -> str:
        if self.interval:
            return format_number(self.mean) + self.interval + MARKS.get(self.verdict, "")
        if self.n > 1 and math.isfinite(self.mean):
            return f"{format_number(self.mean)} ± {format_number(self.std, like=self.mean)}"
        return format_number(self.mean)


@dataclass
class TaskTable:
    task: str
    rows: list[str]
    columns: list[Column]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    extractors: dict[str, str] = field(default_factory=dict)  # row -> results.csv label
    references: list[str] = field(default_factory=list)  # rows shown, never ranked
    groups: dict[str, ties.TieGroup] = field(default_factory=dict)  # column key -> tie group

    def cell(self, row: str, key: str) -> Cell | None:
        return self.cells.get((row, key))

    def text(self, row: str, key: str, markup: str = "plain") -> str:
        """Cell text; ``markup`` "markdown" (``**x**``, ``<u>x</u>``), "html" or "plain"."""
        cell = self.cell(row, key)
        if cell is None:
            return NOT_RUN
        text = cell.text if markup != "html" else html.escape(cell.text)
        if markup == "plain" or cell.rank == 0:
            return text
        if cell.rank == 1:
            return f"**{text}**" if markup == "markdown" else f"<b>{text}</b>"
        return f"<u>{text}</u>"

    def parts(self, max_columns: int = MAX_COLUMNS) -> list[tuple[str, list[Column]]]:
        """Column groups to show: all in one when narrow enough, else split by cold-start
        prefix and metric kind (the name's last word, e.g. auc, gauc, logloss), scores
        before costs, each group titled ("" for a single part)."""
        if len(self.columns) <= max_columns:
            return [("", self.columns)]
        groups: dict[tuple[bool, bool, str], list[Column]] = {}
        for column in self.columns:
            cold = column.metric.startswith("cold_")
            kind = column.metric.rsplit("_", 1)[-1] if "_" in column.metric else column.metric
            groups.setdefault((cold, column.lower_is_better, kind), []).append(column)
        order = sorted(groups, key=lambda g: (g[0], g[1]))  # stable: first appearance next
        return [(f"{'cold start, ' if cold else ''}{kind}", groups[(cold, lower, kind)])
                for cold, lower, kind in order]

    def to_markdown(self, columns: list[Column] | None = None) -> str:
        columns = self.columns if columns is None else columns
        header = ["extractor", *(c.key for c in columns)]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows:
            cells = [self.text(row, c.key, "markdown") for c in columns]
            lines.append("| " + " | ".join([row, *cells]) + " |")
        return "\n".join(lines)

    def to_markdown_parts(self) -> str:
        """The table in parts (see :meth:`parts`), each under a bold title when split."""
        parts = self.parts()
        if len(parts) == 1:
            return self.to_markdown()
        return "\n\n".join(f"**{self.task}: {title}**\n\n{self.to_markdown(columns)}"
                            for title, columns in parts)

    def to_frame(self) -> pd.DataFrame:
        """Numbers for spreadsheets: ``<column>`` is the mean, ``<column> std`` the seed std
        (empty with one seed), ``<column> low`` / ``high`` its 95% interval when the run has
        verdicts; a cell that was not run is empty."""
        records = []
        for row in self.rows:
            record: dict[str, Any] = {"extractor": row}
            for column in self.columns:
                cell = self.cell(row, column.key)
                record[column.key] = cell.mean if cell else np.nan
                if not column.chance:
                    record[f"{column.key} std"] = cell.std if cell and cell.n > 1 else np.nan
                    if cell and math.isfinite(cell.low):
                        record[f"{column.key} low"] = cell.low
                        record[f"{column.key} high"] = cell.high
            records.append(record)
        return pd.DataFrame.from_records(records)

    def to_json(self) -> dict[str, Any]:
        def cell_json(row: str, key: str) -> dict[str, Any] | None:
            cell = self.cell(row, key)
            if cell is None:
                return None
            mean = cell.mean if math.isfinite(cell.mean) else None
            out = {"mean": mean, "std": cell.std if cell.n > 1 else None, "n": cell.n,
                   "rank": cell.rank or None, "text": cell.text}
            if math.isfinite(cell.low):
                out |= {"low": cell.low, "high": cell.high, "verdict": cell.verdict or None}
            return out

        return {
            "task": self.task,
            "columns": [{"key": c.key, "metric": c.metric, "variant": c.variant,
                         "lower_is_better": c.lower_is_better, "chance": c.chance}
                        for c in self.columns],
            "rows": [{"extractor": row, "cells": {c.key: cell_json(row, c.key)
                                                  for c in self.columns}}
                     for row in self.rows],
        }


def _ranked_value(cell: Cell) -> float:
    """The value as displayed, so that cells which read the same rank the same."""
    return float(format_number(cell.mean).replace(",", "")) if math.isfinite(cell.mean) else math.nan


def _rank(table: TaskTable, contenders: list[str],
          pairs: Callable[[Column], Callable[[str, str], ties.Pair | None] | None]) -> None:
    """Per ranked column, bold the best and underline the second. Only ``contenders`` (the
    deployable extractors, :mod:`bench.report.kinds`) are ranked: references (the known-answer
    ladder, ablations, scratch and ID-only rows) are never bold or underlined. With the run's
    paired tests (``ties.csv``; ``pairs(column)`` looks them up) bold is the tie group of
    :func:`bench.scoring.ties.tie_group` (the best and every extractor it does not beat at 95%,
    Holm-corrected), kept in ``table.groups``, and underlined the best value outside it; without
    them bold is the best value as shown and underlined the second distinct one. A column needs
    two filled cells for a best and three for a second."""
    for column in table.columns:
        if not column.ranked:
            continue
        cells = {r: c for r in contenders if (c := table.cell(r, column.key)) is not None}
        filled = sum(math.isfinite(_ranked_value(c)) for c in cells.values())
        lookup = pairs(column)
        group = ties.tie_group({r: c.mean for r, c in cells.items()}, column.lower_is_better,
                               lookup) if lookup is not None and filled >= 2 else None
        if group is not None and group.tested:
            table.groups[column.key] = group
            for row in group.tied:
                cells[row].rank = 1
            rest = {r: _ranked_value(c) for r, c in cells.items() if r not in group.tied}
            values = sorted({v for v in rest.values() if math.isfinite(v)},
                            reverse=not column.lower_is_better)
            if filled >= 3 and values:
                for row, value in rest.items():
                    cells[row].rank = 2 if value == values[0] else cells[row].rank
            continue
        values = sorted({v for c in cells.values() if math.isfinite(v := _ranked_value(c))},
                        reverse=not column.lower_is_better)
        if len(values) < 2:  # all equal (or empty): nothing stands out
            continue
        for cell in cells.values():
            value = _ranked_value(cell)
            if filled >= 2 and value == values[0]:
                cell.rank = 1
            elif filled >= 3 and value == values[1]:
                cell.rank = 2


def task_table(stats: pd.DataFrame, task: str, extra_rows: tuple[str, ...] = (),
               book: MetricBook | None = None, run_info: dict[str, Any] | None = None,
               pairs: pd.DataFrame | None = None) -> TaskTable:
    """One task's table from :func:`aggregate` output (all of it, or this task's part);
    ``extra_rows`` (extractors that failed) appear with "not run" cells; ``book`` says what
    each metric means (run.json ``metrics``); ``run_info`` which rows are references
    (``row_kinds``, :mod:`bench.report.kinds`); ``pairs`` the run's ``ties.csv``."""
    book = book or MetricBook()
    part = stats[stats["task"] == task]
    columns: dict[str, Column] = {}
    variant_order = {v: i for i, v in enumerate(COLUMN_SUFFIX)}
    metric_order = list(dict.fromkeys(part["metric"]))
    keyed = sorted(zip(part["metric"], part["variant"], part["column"]),
                   key=lambda t: (metric_order.index(t[0]), variant_order.get(t[1], -1)))
    for metric, variant, key in keyed:
        if key not in columns:
            chance = book.is_chance(metric)
            columns[key] = Column(key, metric,
                                  variant if variant in COLUMN_SUFFIX and not chance else None,
                                  book.lower_is_better(metric), chance, book.is_ranked(metric))
    rows = list(dict.fromkeys([*part["row"], *extra_rows]))
    table = TaskTable(task, rows, list(columns.values()))
    table.extractors = {**{r: r for r in extra_rows},
                        **{r: kinds.base_label(e) for r, e in zip(part["row"], part["extractor"])}}
    for (row, key), group in part.groupby(["row", "column"], sort=False):
        if len(group) == 1:
            item = group.iloc[0]
            table.cells[(row, key)] = Cell(
                float(item["mean"]), float(item["std"]), int(item["n"]),
                low=_number(item.get("ci_low")), high=_number(item.get("ci_high")),
                verdict=item.get("verdict") if isinstance(item.get("verdict"), str) else "")
        else:  # a chance column pools its variants: one value per row
            table.cells[(row, key)] = Cell(float(group["mean"].mean()), 0.0, int(group["n"].max()))
    contenders = [r for r in rows if not kinds.is_reference(table.extractors[r], task, run_info)]
    table.references = [r for r in rows if r not in contenders]

    def lookup(column: Column) -> Callable[[str, str], ties.Pair | None] | None:
        book = ties.PairBook(pairs, task, column.metric, column.variant or "")
        if not book:
            return None
        return lambda a, b: book(table.extractors[a], table.extractors[b])

    _rank(table, contenders, lookup)
    return table


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def task_order(results: pd.DataFrame, requested: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Tasks the run asked for first (in that order), then any other task found in the results."""
    return list(dict.fromkeys([*requested, *map(str, results["task"].unique())]))


def failed_extractors(run_info: dict[str, Any]) -> tuple[str, ...]:
    """Extractors the runner could not build or embed with (``errors`` in run.json)."""
    return tuple(dict.fromkeys(e["where"].removeprefix("extractor ")
                               for e in run_info.get("errors", [])
                               if str(e.get("where", "")).startswith("extractor ")))


def all_tables(results: pd.DataFrame, run_info: dict[str, Any] | None = None,
               verdicts: pd.DataFrame | None = None,
               pairs: pd.DataFrame | None = None) -> dict[str, TaskTable]:
    """Every task's table; ``pairs``: the run's ``ties.csv`` (tie groups in bold)."""
    book = MetricBook.from_run_info(run_info)
    stats = aggregate(results, verdicts, book)
    failed = failed_extractors(run_info or {})
    return {task: task_table(stats, task, failed, book, run_info, pairs)
            for task in dict.fromkeys(stats["task"])}


def summary_markdown(results: pd.DataFrame, title: str = "Summary",
                     run_info: dict[str, Any] | None = None,
                     verdicts: pd.DataFrame | None = None,
                     validity: pd.DataFrame | None = None,
                     pairs: pd.DataFrame | None = None, glance: str = "") -> str:
    """``summary.md``: the "At a glance" answers (``glance``), the validity table, one table per
    task, then what did not run and why."""
    run_info = run_info or {}
    tables = all_tables(results, run_info, verdicts, pairs)
    with_intervals = verdicts is not None and len(verdicts) > 0
    lines = [f"# {title}", ""]
    facts = [f"{k}: {run_info[k]}" for k in ("profile", "dataset") if run_info.get(k)]
    if run_info.get("seeds"):
        facts.append(f"seeds: {len(run_info['seeds'])}")
    if facts:
        lines += [" · ".join(facts), ""]
    if glance:
        lines += ["## At a glance", "", glance, ""]
    if with_intervals:
        lines += ["Cells are the mean over seeds with its 95% interval [low, high] (bootstrap over "
                  "the task's units plus the seed spread, docs/metrics.md); ▲ / ▼: better / worse "
                  "than the task's reference row at 95% (paired test); per column **bold** is "
                  "best and <u>underlined</u> second (lowest first for logloss, bytes and time); "
                  "chance columns are not ranked.", ""]
    else:
        lines += ["Cells are the mean over seeds (± sample std when there are several); per "
                  "column **bold** is best and <u>underlined</u> second (lowest first for "
                  "logloss, bytes and time); chance columns are not ranked.", ""]
    lines += [RANK_NOTE, ""]
    if validity is not None:
        lines += ["## Validity: the known-answer ladder", "", validity_markdown(validity, run_info),
                  ""]
    for task in task_order(results, run_info.get("tasks", ())):
        lines += [f"## {task}", ""]
        if task in tables:
            lines += [reference_note(task, verdicts), tables[task].to_markdown_parts(), ""]
            against = differences_markdown(task, verdicts, run_info)
            if against:
                lines += [against, ""]
            known = ctr_ablation_markdown(validity, verdicts, run_info) if task == "ctr" else ""
            if task == "online":
                known = online_markdown(verdicts, results, run_info, validity)
            if known:
                lines += [known, ""]
        else:
            lines += [f"{NOT_RUN}: {not_run_reason(task, run_info)}", ""]
    problems = run_problems(run_info)
    if problems:
        lines += ["## Errors", "", *(f"- {p}" for p in problems), ""]
    return "\n".join(lines)


def not_run_reason(task: str, run_info: dict[str, Any]) -> str:
    """Why a task has no rows: the run's skip reason or error, else that it was not asked for."""
    for skipped in run_info.get("skipped", []):
        if skipped.get("task") == task:
            return f"skipped: {skipped.get('reason', 'no reason given')}"
    errors = [e for e in run_info.get("errors", []) if f"task {task}" in e.get("where", "")]
    if errors:
        return f"{len(errors)} error(s), first: {errors[0].get('error', '')}"
    if task in run_info.get("tasks", ()):
        return "the task produced no rows"
    return "the run did not include this task"


def run_problems(run_info: dict[str, Any]) -> list[str]:
    return [f"{e.get('where', '?')}: {e.get('error', '')}" for e in run_info.get("errors", [])]


def reference_note(task: str, verdicts: pd.DataFrame | None) -> str:
    """The line under a task's heading that names the reference row and the test."""
    if verdicts is None or not len(verdicts):
        return ""
    part = verdicts[(verdicts["task"] == task) & verdicts["reference"].notna()]
    if part.empty:
        return "No reference row in this run: cells carry intervals, no verdict.\n"
    refs = ", ".join(f"`{r}`" for r in dict.fromkeys(part["reference"]))
    return f"Reference: {refs}; test: {part['test'].iloc[0]}.\n"


def main_validity(validity: pd.DataFrame, run_info: dict[str, Any]) -> pd.DataFrame:
    """The validity rows of each task's main score (all rows when the run does not say)."""
    if "check" in validity.columns:  # the ladder's rows; ctr's ablation rows have their section
        validity = validity[validity["check"].fillna("ladder") == "ladder"]
    mains = run_info.get("main_scores", {})
    if not mains:
        return validity
    keep = [mains.get(t) == m for t, m in zip(validity["task"], validity["metric"])]
    return validity[keep]


def validity_markdown(validity: pd.DataFrame, run_info: dict[str, Any]) -> str:
    """Per task (main score, each variant): floor, ceiling, their gap in standard errors,
    whether the rungs come out in order, adjacent pairs separated at 95%."""
    rows = main_validity(validity, run_info)
    if rows.empty:
        reason = run_info.get("validity_note") or ("the run has no ladder rows "
                                                   "(ladder:clean ... ladder:random)")
        return f"No validity check: {reason}."
    lines = ["| task | metric | variant | floor (random) | ceiling (clean) | gap / SE | in order "
             "| adjacent pairs separated | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows.itertuples(index=False):
        lines.append(f"| {r.task} | {r.metric} | {VARIANT_LABELS.get(r.variant, r.variant)} | "
                     f"{format_number(r.floor)} | {format_number(r.ceiling)} | {r.gap_se:.1f} | "
                     f"{'yes' if r.in_order else 'no'} | {r.adjacent_separated} of "
                     f"{r.adjacent_pairs} | {r.verdict} |")
    rungs = rows["rungs"].iloc[0]
    return "\n".join(lines) + f"\n\nRungs, best to worst: {rungs}; every metric in validity.csv."


def differences_markdown(task: str, verdicts: pd.DataFrame | None,
                         run_info: dict[str, Any]) -> str:
    """The task's main score against its reference row: paired difference, its 95% interval,
    p-value and verdict, one line per (extractor, variant)."""
    metric = run_info.get("main_scores", {}).get(task)
    if verdicts is None or metric is None:
        return ""
    part = verdicts[(verdicts["task"] == task) & (verdicts["metric"] == metric)
                    & verdicts["reference"].notna()]
    if part.empty:
        return ""
    lines = [f"{task}, `{metric}` against the reference (paired difference and its 95% "
             "interval):", "", "| extractor | variant | reference | difference | p | verdict |",
             "|---|---|---|---|---|---|"]
    for r in part.itertuples(index=False):
        lines.append(f"| {r.extractor} | {VARIANT_LABELS.get(r.variant, r.variant)} | "
                     f"{r.reference} | {r.diff:+.4f} [{r.diff_low:+.4f}, {r.diff_high:+.4f}] | "
                     f"{r.p_value:.2g} | {r.verdict} |")
    return "\n".join(lines)
