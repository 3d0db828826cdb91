"""Report: tables, plots and a self-contained HTML page built from a run folder's files alone.

``results.csv`` is the only required input; ``run.json`` adds config, versions, hardware, errors,
skipped tasks and which rows are references (``row_kinds``); ``verdicts.csv`` intervals and
``ties.csv`` the paired tests behind the tie groups of "At a glance" (``glance``); ``artifacts/``
adds training logs, the embedding map and the KNN picture grid.
Whatever is missing becomes a "not run" note, never a crash. Results a time cap cut short
(``run.json`` ``time_capped``) keep their numbers, but their extractor is marked ``CUT_MARK``
in that task's tables and plots, with the reason under the summary.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.cache import atomic_path, write_json, write_text
from bench.core.metric_info import MetricBook
from bench.report.tables import (
    aggregate,
    all_tables,
    summary_markdown,
    task_order,
)
from bench.scoring import ties


@dataclass
class Report:
    """What :func:`build_report` wrote, and how long it took."""

    run_dir: Path
    html: Path | None
    summary: Path
    tables: list[Path] = field(default_factory=list)
    plots: list[Any] = field(default_factory=list)
    seconds: float = 0.0
    glance: Any = None  # the "At a glance" figure (a plots.PlotResult)


def _log(message: str) -> None:
    print(f"[bench report] {message}", file=sys.stderr, flush=True)


TEXT_COLUMNS = ("run", "dataset", "extractor", "variant", "task", "metric")
NUMBER_COLUMNS = ("value", "seed")


def read_results(path: Path) -> pd.DataFrame:
    """A ``results.csv`` with its label columns as text and ``value`` / ``seed`` as numbers,
    or a ValueError naming the file, the line, the row and the column of the first value
    that is not a number (a hand-edited file); an empty cell stays a missing value."""
    path = Path(path)
    try:
        results = pd.read_csv(path, dtype={c: str for c in (*TEXT_COLUMNS, *NUMBER_COLUMNS)})
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(f"{path}: not a readable CSV ({first})") from None
    for column in NUMBER_COLUMNS:
        if column not in results.columns:
            continue
        text = results[column]
        numbers = pd.to_numeric(text.str.strip(), errors="coerce")
        bad = (text.notna() & numbers.isna()).to_numpy()
        if bad.any():
            row = int(bad.nonzero()[0][0])
            raise ValueError(f"{path}: column {column!r} must hold numbers; {int(bad.sum())} "
                             f"other values, e.g. {text.iloc[row]!r} at line {row + 2} (data "
                             f"row {row + 1})")
        results[column] = numbers
    return results


def read_run(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    results_path = run_dir / "results.csv"
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path}: no results file; is {run_dir} a run folder?")
    results = read_results(results_path)
    missing = {"extractor", "variant", "task", "metric", "value"} - set(results.columns)
    if missing:
        raise ValueError(f"{results_path}: missing columns {sorted(missing)}")
    for column, default in (("dataset", ""), ("seed", 0), ("run", run_dir.name)):
        if column not in results.columns:
            results[column] = default
    run_info: dict[str, Any] = {}
    info_path = run_dir / "run.json"
    if info_path.is_file():
        try:
            run_info = json.loads(info_path.read_text())
        except ValueError as error:
            _log(f"ignoring unreadable {info_path}: {error}")
    return results, run_info


def read_verdicts(run_dir: Path) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """``verdicts.csv`` and ``validity.csv`` (None where the run has none)."""
    found = []
    for name in ("verdicts.csv", "validity.csv"):
        path = run_dir / name
        try:
            found.append(pd.read_csv(path) if path.is_file() else None)
        except (OSError, ValueError) as error:
            _log(f"ignoring unreadable {path}: {error}")
            found.append(None)
    return found[0], found[1]


CUT_MARK = " \u2020"  # a dagger after the extractor's name


def mark_time_capped(results: pd.DataFrame, run_info: dict[str, Any]) -> pd.DataFrame:
    """Results with ``CUT_MARK`` after the extractor of every (extractor, task) that has a row
    its time cap cut short, so no table shows such a number as if it were the full budget."""
    cut = {(str(c.get("extractor")), str(c.get("task"))) for c in run_info.get("time_capped", [])}
    if not cut or results.empty:
        return results
    marked = results.copy()
    hit = [(e, t) in cut for e, t in zip(marked["extractor"].astype(str),
                                          marked["task"].astype(str))]
    marked.loc[hit, "extractor"] = marked.loc[hit, "extractor"].astype(str) + CUT_MARK
    return marked


def time_cap_notes(run_info: dict[str, Any]) -> list[str]:
    """Summary lines explaining each mark: what was cut, where, and why."""
    notes: dict[str, list[str]] = {}
    for cut in run_info.get("time_capped", []):
        where = f"{cut.get('task')} {cut.get('variant')} seed {cut.get('seed')}"
        notes.setdefault(f"{cut.get('extractor')}{CUT_MARK}: {cut.get('reason')}", []).append(where)
    if not notes:
        return []
    lines = ["## Cut by a time cap", "",
             f"Rows marked{CUT_MARK} come from a training its `max_seconds` safety stop ended "
             "before its budget, so they depend on the machine's load; run again to finish "
             "them (the training resumes).", ""]
    return lines + [f"- {note} ({', '.join(places)})" for note, places in notes.items()] + [""]


def summary_text(results: pd.DataFrame, run_info: dict[str, Any], title: str,
                 verdicts: pd.DataFrame | None = None,
                 validity: pd.DataFrame | None = None,
                 pairs: pd.DataFrame | None = None) -> str:
    """``summary.md``: the answers at a glance, the tables, then the time-cap notes when a row
    was cut short."""
    from bench.report import glance

    found = glance.answers(all_tables(results, run_info, verdicts, pairs), run_info, pairs,
                           verdicts)
    text = summary_markdown(results, title, run_info, verdicts, validity, pairs,
                            glance.markdown(found))
    notes = time_cap_notes(run_info)
    return text if not notes else text.rstrip("\n") + "\n\n" + "\n".join(notes)


def build_report(run_dir: str | Path, *, html: bool = True, tsne: bool = False) -> Report:
    """Rebuild ``summary.md``, ``tables/<task>.{md,csv,json}`` and, with ``html``, ``plots/*.png``
    and ``report.html`` from the run folder."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    results, run_info = read_run(run_dir)
    verdicts, validity = read_verdicts(run_dir)
    pairs = ties.read(run_dir)
    results = mark_time_capped(results, run_info)
    if verdicts is not None:  # so their rows still meet the marked results rows
        verdicts = mark_time_capped(verdicts, run_info)
    title = f"Run {run_info.get('run', run_dir.name)}"
    summary = write_text(run_dir / "summary.md",
                         summary_text(results, run_info, title, verdicts, validity, pairs))
    tables = all_tables(results, run_info, verdicts, pairs)
    written = []
    for task, table in tables.items():
        written.append(write_text(run_dir / "tables" / f"{task}.md",
                                  table.to_markdown_parts() + "\n"))
        with atomic_path(run_dir / "tables" / f"{task}.csv") as tmp:
            table.to_frame().to_csv(tmp, index=False)
        written += [run_dir / "tables" / f"{task}.csv",
                    write_json(run_dir / "tables" / f"{task}.json", table.to_json())]
    for stale in (run_dir / "tables").glob("*.*"):
        if stale not in written and stale.suffix in (".md", ".csv", ".json"):
            stale.unlink()
    report = Report(run_dir, None, summary, written)
    if html:
        from bench.report import glance
        from bench.report import html as html_page
        from bench.report.plots import PlotContext, make_glance, make_plots

        book = MetricBook.from_run_info(run_info)
        ctx = PlotContext(run_dir, aggregate(results, verdicts, book), run_info, tsne=tsne)
        report.plots = make_plots(ctx, log=_log)
        found = glance.answers(tables, run_info, pairs, verdicts)
        report.glance = make_glance(run_dir, found, log=_log)
        tasks = task_order(results, run_info.get("tasks", ()))
        page = html_page.render(run_dir, run_info, tables, tasks, report.plots,
                                time.perf_counter() - start, verdicts, validity,
                                glance=found, glance_plot=report.glance)
        report.html = write_text(run_dir / "report.html", page)
    report.seconds = time.perf_counter() - start
    return report
