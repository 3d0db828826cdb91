""""At a glance": one answer per stage of the system, built from the run's declared tasks.

Each answer takes a task's main score (run.json ``main_scores``) in its first variant column
(``raw``, else ``ft``), and gives

- the tie group of :func:`bench.scoring.ties.tie_group` (the table's bold cells of that column):
  the best deployable extractor and every one it does not beat at 95%, Holm-corrected;
- the best row's lead over the task's reference row (``paired_references`` for that extractor,
  else run.json ``references``, else ``random``) with its 95% interval, from ``ties.csv`` (or
  ``verdicts.csv``);
- one sentence a team can paste into a decision.

Reference rows (:mod:`bench.report.kinds`) are listed with their score, never named best.
``bench compare`` prints the same answers for both runs (:func:`run_answers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.tables import VARIANT_LABELS, Cell, TaskTable, all_tables, format_number
from bench.scoring import ties
from bench.scoring.verdicts import DEFAULT_REFERENCE

# Each task declares its stage (``bench.tasks.Task.stage``, recorded in run.json ``task_info``);
# this table only serves run folders written before that, and the order of the stages.
STAGE_ORDER = ("recall", "ranking", "image search", "transfer")
STAGES = {
    "knn": "recall",
    "ctr": "ranking",
    "online": "ranking",
    "retrieval": "image search",
    "finetune_retrieval": "image search",
    "classify": "transfer",
    "finetune_classify": "transfer",
}
OTHER_STAGE = "other tasks"


@dataclass
class Answer:
    """One task's answer on its main score."""

    stage: str
    task: str
    metric: str
    variant: str
    key: str  # the table column
    lower_is_better: bool
    group: ties.TieGroup
    rows: dict[str, Cell]  # deployable rows with a value, table order
    references: dict[str, Cell] = field(default_factory=dict)  # reference rows with a value
    reference: str | None = None  # the row the lead is measured against
    lead: ties.Pair | None = None  # best - reference, direction applied (positive = better)
    others: list[tuple[str, ties.TieGroup]] = field(default_factory=list)  # +w and so on

    @property
    def where(self) -> str:
        label = VARIANT_LABELS.get(self.variant, self.variant)
        return f"{self.task} {self.metric}" + (f" ({label})" if label else "")

    def group_text(self) -> str:
        return self.group.text()

    def lead_text(self) -> str:
        if self.reference is None:
            return "no reference row for this score"
        if self.lead is None:
            return f"lead over {self.reference}: unknown (no paired test)"
        interval = (f" [{self.lead.low:+.4f}, {self.lead.high:+.4f}]"
                    if math.isfinite(self.lead.low) else " (no interval)")
        return f"lead over {self.reference}: {self.lead.diff:+.4f}{interval}"

    def sentence(self) -> str:
        best, tied = self.group.best, self.group.tied
        if not self.group.tested:
            head = (f"For {self.stage}, {best} has the highest {self.where}, but this run has no "
                    "paired tests (ties.csv), so a tie with the next extractor cannot be ruled "
                    "out")
        elif len(tied) > 1:
            head = (f"For {self.stage}, {_names(tied)} are tied on {self.where} at 95% (Holm): "
                    f"choose among them on cost; {best} is highest")
        elif self.group.beaten:
            head = (f"For {self.stage}, pick {best}: on {self.where} it beats every other "
                    "deployable extractor at 95% (Holm)")
        else:
            head = f"For {self.stage}, {best} is the only deployable extractor scored on {self.where}"
        return f"{head}{self._lead_clause()}."

    def _lead_clause(self) -> str:
        if self.reference is None or self.lead is None:
            return ""
        lead = self.lead
        interval = (f"{lead.diff:+.4f} [{lead.low:+.4f}, {lead.high:+.4f}]"
                    if math.isfinite(lead.low) else f"{lead.diff:+.4f}")
        if not math.isfinite(lead.low):
            return f", {interval} over {self.reference} (no interval)"
        if lead.low > 0:
            return f", and leads {self.reference} by {interval}"
        if lead.high < 0:
            return f", but trails {self.reference} by {interval}"
        return f", but is not ahead of {self.reference} at 95% ({interval})"

    def reference_note(self) -> str:
        """The reference rows, and a warning when one scores above the best extractor."""
        if not self.references:
            return ""
        best = self.rows[self.group.best].mean
        sign = -1 if self.lower_is_better else 1
        above = [r for r, c in self.references.items() if sign * (c.mean - best) > 0]
        listed = ", ".join(f"{r} {format_number(c.mean)}{c.interval}"
                           for r, c in self.references.items())
        note = f"references (not ranked): {listed}"
        if above:
            note += (f"; {_names(above)} score{'s' if len(above) == 1 else ''} above the best "
                     "extractor but {} not deployable".format("is" if len(above) == 1 else "are"))
        return note


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


def main_metric(table: TaskTable, main_scores: dict[str, str] | None) -> str | None:
    """The task's main score (run.json ``main_scores``), else its first ranked metric."""
    ranked = [c for c in table.columns if c.ranked and not c.chance]
    if not ranked:
        return None
    declared = (main_scores or {}).get(table.task)
    return declared if any(c.metric == declared for c in ranked) else ranked[0].metric


def _lead(table: TaskTable, task: str, metric: str, variant: str, best: str, lower: bool,
          run_info: dict[str, Any], pairs: pd.DataFrame | None,
          verdicts: pd.DataFrame | None) -> tuple[str | None, ties.Pair | None]:
    """The best row's reference row and its lead (positive = better), from ties.csv, else
    verdicts.csv; the reference is None when the table has no such row."""
    label = table.extractors.get(best, best)
    found = None
    if verdicts is not None and "reference" in verdicts.columns:
        hit = verdicts[(verdicts["task"].astype(str) == task)
                       & (verdicts["extractor"].astype(str) == label)
                       & (verdicts["variant"].astype(str) == variant)
                       & (verdicts["metric"].astype(str) == metric)
                       & verdicts["reference"].notna()]
        if len(hit):
            item = hit.iloc[0]
            found = ties.Pair(label, str(item["reference"]), float(item["diff"]),
                              float(item["diff_low"]), float(item["diff_high"]),
                              float(item["p_value"]), str(item["test"]))
    paired = (run_info.get("paired_references") or {}).get(task, {}).get(label)
    declared = (paired or (run_info.get("references") or {}).get(task)
                or (found.b if found else DEFAULT_REFERENCE))
    reference = next((r for r in table.rows if table.extractors.get(r, r) == declared), None)
    if reference is None or reference == best:
        return None, None
    pair = ties.PairBook(pairs, task, metric, variant)(label, declared)
    if pair is None and found is not None and found.b == declared:
        pair = found
    if pair is None:
        return reference, None
    if lower:  # the lead in the better direction
        pair = ties.Pair(pair.a, pair.b, -pair.diff, -pair.high, -pair.low, pair.p_value,
                         pair.test)
    return reference, pair


def answers(tables: dict[str, TaskTable], run_info: dict[str, Any],
            pairs: pd.DataFrame | None = None,
            verdicts: pd.DataFrame | None = None) -> list[Answer]:
    """One answer per task with a main score and a deployable extractor, stages in the order
    of :data:`STAGE_ORDER` (other stages last, under ``other tasks``)."""
    out = []
    mains = run_info.get("main_scores") or {}
    for task in sorted(tables, key=lambda t: _stage_rank(stage_of(t, run_info))):
        if stage_of(task, run_info) == OTHER_STAGE and task not in mains:
            continue  # a cost table (ams), not a decision
        table = tables[task]
        metric = main_metric(table, run_info.get("main_scores"))
        columns = [c for c in table.columns if c.metric == metric and c.ranked]
        found = []
        for column in columns:
            group = table.groups.get(column.key) or ties.tie_group(
                {r: _shown(table.cell(r, column.key)) for r in table.rows
                 if r not in table.references}, column.lower_is_better)
            if group is not None:
                found.append((column, group))
        if not found:
            continue
        column, group = found[0]
        rows = {r: c for r in table.rows if r not in table.references
                and (c := table.cell(r, column.key)) is not None and math.isfinite(c.mean)}
        refs = {r: c for r in table.references
                if (c := table.cell(r, column.key)) is not None and math.isfinite(c.mean)}
        variant = column.variant or ""
        reference, lead = _lead(table, task, metric, variant, group.best,
                                column.lower_is_better, run_info, pairs, verdicts)
        out.append(Answer(stage_of(task, run_info), task, metric, variant, column.key,
                          column.lower_is_better, group, rows, refs, reference, lead,
                          [(c.variant or c.key, g) for c, g in found[1:]]))
    return out


def stage_of(task: str, run_info: dict[str, Any]) -> str:
    """The stage the task declared (run.json ``task_info``), else :data:`STAGES`'s."""
    declared = (run_info.get("task_info") or {}).get(task, {}).get("stage")
    if declared in STAGE_ORDER:
        return str(declared)
    return OTHER_STAGE if declared else STAGES.get(task, OTHER_STAGE)


def _stage_rank(stage: str) -> int:
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)


def _shown(cell: Cell | None) -> float:
    """A cell's value as the table shows it (rows that read the same are equal untested)."""
    if cell is None or not math.isfinite(cell.mean):
        return math.nan
    return float(format_number(cell.mean).replace(",", ""))


def stages(found: list[Answer]) -> dict[str, list[Answer]]:
    out: dict[str, list[Answer]] = {}
    for answer in found:
        out.setdefault(answer.stage, []).append(answer)
    return out


def intro() -> str:
    return ("One answer per stage, from each task's main score. Only deployable extractors are "
            f"ranked; reference rows are listed, never named best. Rule: {ties.RULE}.")


def markdown(found: list[Answer]) -> str:
    """The answers for ``summary.md`` and the terminal."""
    if not found:
        return "No task has a main score with a deployable extractor to rank."
    lines = [intro(), ""]
    for stage, items in stages(found).items():
        lines.append(f"**{stage}**")
        for a in items:
            extra = "".join(f"; {VARIANT_LABELS.get(v, v)}: {g.text()}" for v, g in a.others)
            lines.append(f"- {a.where}: {a.group_text()}; {a.lead_text()}{extra}")
            lines.append(f"  - decision: {a.sentence()}")
            if a.references:
                lines.append(f"  - {a.reference_note()}")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def html(found: list[Answer], figure: str = "") -> str:
    """The "At a glance" section's body: the comparison figure, then the answers by stage."""
    if not found:
        return '<p class="notrun">no task has a main score with a deployable extractor</p>'
    parts = [figure, f"<p class=note>{escape(intro())}</p>"]
    for stage, items in stages(found).items():
        parts.append(f'<h3 class="stage">{escape(stage)}</h3><ul class="answers">')
        for a in items:
            extra = "".join(f"; {escape(VARIANT_LABELS.get(v, v))}: {escape(g.text())}"
                            for v, g in a.others)
            note = (f'<br><span class="refs">{escape(a.reference_note())}</span>'
                    if a.references else "")
            parts.append(f'<li><a href="#table-{escape(a.task)}">{escape(a.where)}</a>: '
                         f"<b>{escape(a.group_text())}</b>; {escape(a.lead_text())}{extra}{note}"
                         f'<blockquote class="decision">{escape(a.sentence())}</blockquote></li>')
        parts.append("</ul>")
    return "".join(parts)


def run_answers(run_dir: str | Path) -> list[Answer]:
    """The answers of a run folder, from its files alone (what the report shows)."""
    from bench.report import mark_time_capped, read_run, read_verdicts

    run_dir = Path(run_dir)
    results, run_info = read_run(run_dir)
    verdicts, _ = read_verdicts(run_dir)
    results = mark_time_capped(results, run_info)
    if verdicts is not None:
        verdicts = mark_time_capped(verdicts, run_info)
    pairs = ties.read(run_dir)
    return answers(all_tables(results, run_info, verdicts, pairs), run_info, pairs, verdicts)


def compare_lines(run_a: str | Path, run_b: str | Path, changed_only: bool = False) -> list[str]:
    """``bench compare``'s view of both runs' answers: per task, each run's tie group on its
    main score by the same rule as the report (a run folder without results: nothing); with
    ``changed_only`` only the tasks whose group differs between the runs."""
    found = {}
    for name, run in (("A", Path(run_a)), ("B", Path(run_b))):
        folder = run if run.is_dir() else run.parent
        try:
            found[name] = {a.where: a for a in run_answers(folder)}
        except (FileNotFoundError, ValueError):
            found[name] = {}
    keys = list(dict.fromkeys([*found["A"], *found["B"]]))
    if changed_only:
        keys = [k for k in keys if k not in found["A"] or k not in found["B"]
                or set(found["A"][k].group.tied) != set(found["B"][k].group.tied)]
    if not keys:
        return []
    lines = [f"Best deployable extractor per task's main score ({ties.RULE}):"]
    for key in keys:
        for name in ("A", "B"):
            answer = found[name].get(key)
            lines.append(f"  {name} {key}: " + (f"{answer.group_text()}; {answer.lead_text()}"
                                                 if answer else "not in this run"))
    return lines
