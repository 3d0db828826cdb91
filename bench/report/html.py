"""``report.html``: one self-contained page a team can read offline, opened straight from disk.

Inline CSS, plots embedded as base64 ``data:`` URIs, no external script or style sheet. The page
holds the run's config, versions and hardware (from ``run.json``), every table and plot (or why it
is missing), errors and skipped tasks, and relative links to the raw files beside it. A small
inline script marks ``<body data-images-ok="true">`` once every image has decoded, and records
the page's scroll width beside the window's (``data-page-width``, ``data-view-width``: no
horizontal scroll when equal) and how many table boxes scroll sideways (``data-wide-boxes``),
which the browser test reads back.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.online import online_markdown
from bench.report.plots import PlotResult
from bench.report.tables import (
    NOT_RUN,
    RANK_NOTE,
    VARIANT_LABELS,
    TaskTable,
    differences_markdown,
    format_number,
    not_run_reason,
    reference_note,
    validity_markdown,
)


def task_note(task: str, run_info: dict[str, Any]) -> str:
    """The task's own description, as its declaration recorded it in run.json ``task_info``."""
    return str(run_info.get("task_info", {}).get(task, {}).get("description", ""))

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;
 color:#1f2328;background:#f6f8fa;line-height:1.45}
header{background:#24292f;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#c9d1d9;font-size:14px}
nav{padding:8px 32px;background:#fff;border-bottom:1px solid #d0d7de;font-size:14px}
nav a{margin-right:14px;color:#0969da;text-decoration:none}
main{padding:8px 32px 40px;max-width:1280px}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:12px 20px;margin:16px 0}
h2{font-size:19px;border-bottom:1px solid #d8dee4;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 4px}
p.note{color:#57606a;font-size:13px;margin:2px 0 8px}
.notrun{color:#8c959f;font-style:italic}
.box{border-left:4px solid #bf8700;background:#fff8c5;padding:6px 12px;margin:6px 0;font-size:14px}
.box.error{border-color:#cf222e;background:#ffebe9}
table{border-collapse:collapse;font-size:12px;margin:6px 0 4px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:3px 5px;text-align:right;white-space:nowrap}
th{background:#f6f8fa}
td:first-child,th:first-child{text-align:left}
td.chance{color:#57606a;background:#fafbfc}
p.part{font-weight:600;font-size:14px;margin:12px 0 2px}
.scroll{overflow-x:auto;max-width:100%}
span.ci{display:block;font-size:11px;color:#57606a;font-weight:normal;white-space:normal}
ul.answers{padding-left:20px;font-size:14px}
ul.answers li{margin:4px 0 10px}
blockquote.decision{margin:4px 0;padding:4px 10px;border-left:4px solid #1f6feb;
 background:#f1f8ff;font-size:14px}
span.refs{color:#57606a;font-size:13px}
h3.stage{text-transform:capitalize;margin:14px 0 2px}
figure{margin:12px 0 20px}
figure img{max-width:100%;height:auto;border:1px solid #d8dee4}
figcaption{font-size:13px;color:#57606a}
pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:12px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;font-size:14px}
dt{font-weight:600}
a{color:#0969da}
"""

SCRIPT = """
(function(){
 function check(){
  var imgs=document.images,ok=true;
  for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0){ok=false;}}
  document.body.setAttribute('data-images-ok',ok?'true':'false');
  document.body.setAttribute('data-images',String(imgs.length));
 var root=document.documentElement;
 document.body.setAttribute('data-page-width',String(root.scrollWidth));
 document.body.setAttribute('data-view-width',String(root.clientWidth));
 var boxes=document.querySelectorAll('.scroll'),wide=0;
 for(var j=0;j<boxes.length;j++){if(boxes[j].scrollWidth>boxes[j].clientWidth+1){wide++;}}
 document.body.setAttribute('data-wide-boxes',String(wide));
 }
 window.addEventListener('load',check);
})();
"""


def _sub_label(column: Any) -> str:
    if column.chance:
        return "chance"
    label = VARIANT_LABELS.get(column.variant, "") if column.variant else ""
    return label + (" ↓" if column.lower_is_better and label else "")


def tables_html(table: TaskTable) -> str:
    """The task's table, in titled parts when it is wide (see ``TaskTable.parts``)."""
    parts = table.parts()
    if len(parts) == 1:
        return table_html(table, table.columns)
    return "".join(f'<p class="part">{escape(table.task)}: {escape(title)}</p>'
                   f"{table_html(table, columns)}" for title, columns in parts)


def table_html(table: TaskTable, columns: list[Any]) -> str:
    """Two header rows: the metric spanning its ``raw``/``+w`` columns, then the variant (a
    column without variants spans both rows); ↓ marks costs, where lower is better. A cell's
    interval (or seed std) goes on a second line, so that wide tables fit the page."""
    groups: list[tuple[str, list[Any]]] = []
    for column in columns:
        if groups and groups[-1][0] == column.metric and not column.chance:
            groups[-1][1].append(column)
        else:
            groups.append((column.metric, [column]))
    top, sub = [], []
    for metric, group in groups:
        labels = [_sub_label(c) for c in group]
        arrow = " ↓" if group[0].lower_is_better else ""
        if len(group) == 1 and not labels[0]:
            top.append(f'<th rowspan="2">{escape(metric)}{arrow}</th>')
            continue
        top.append(f'<th colspan="{len(group)}">{escape(metric)}</th>')
        sub += [f"<th>{escape(label)}</th>" for label in labels]
    body = []
    for row in table.rows:
        cells = []
        for column in columns:
            text = table.text(row, column.key, "html")
            cell = table.cell(row, column.key)
            rest = cell.text[len(head):] if cell is not None and cell.text.startswith(
                head := format_number(cell.mean)) else ""
            if rest.strip():  # the interval or seed std on a line of its own
                text = text.replace(escape(rest), f'<span class="ci">{escape(rest)}</span>', 1)
            klass = "notrun" if text == NOT_RUN else ("chance" if column.chance else "")
            cells.append(f'<td class="{klass}">{text}</td>' if klass else f"<td>{text}</td>")
        body.append(f"<tr><td>{escape(row)}</td>{''.join(cells)}</tr>")
    head = f'<tr><th rowspan="2">extractor</th>{"".join(top)}</tr><tr>{"".join(sub)}</tr>'
    if not sub:  # no variants at all: one header row
        head = f"<tr><th>extractor</th>{''.join(top)}</tr>".replace(' rowspan="2"', "")
    return (f'<div class="scroll"><table><thead>{head}</thead><tbody>{"".join(body)}</tbody>'
            "</table></div>")


def glance_html(found: list[Any], plot: PlotResult | None = None) -> str:
    """The "At a glance" section: the comparison figure, then one answer per stage."""
    from bench.report import glance

    figure = ""
    if plot is not None and plot.path is not None:
        figure = (f'<figure id="plot-glance"><img src="{_image(plot.path)}" '
                  f'alt="{escape(plot.title)}"><figcaption>{escape(plot.caption)} '
                  f'<a href="plots/{escape(plot.path.name)}">PNG</a></figcaption></figure>')
    elif plot is not None and plot.note:
        figure = f'<p class="notrun">comparison figure {escape(plot.note)}</p>'
    return glance.html(found, figure)


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _plot_html(plot: PlotResult) -> str:
    if plot.path is None:
        return (f'<h3 id="plot-{plot.key}">{escape(plot.title)}</h3>'
                f'<p class="notrun">{escape(plot.note or NOT_RUN)}</p>')
    return (f'<figure id="plot-{plot.key}"><h3>{escape(plot.title)}</h3>'
            f'<img src="{_image(plot.path)}" alt="{escape(plot.title)}">'
            f'<figcaption>{escape(plot.caption)} '
            f'<a href="plots/{escape(plot.path.name)}">PNG</a></figcaption></figure>')


def _dl(items: dict[str, Any]) -> str:
    rows = "".join(f"<dt>{escape(str(k))}</dt><dd>{escape(str(v))}</dd>" for k, v in items.items())
    return f"<dl>{rows}</dl>"


def _timings_html(timings: dict[str, dict[str, float]]) -> str:
    keys = list(dict.fromkeys(k for per in timings.values() for k in per))
    if not keys:
        return '<p class="notrun">no timings recorded</p>'
    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    rows = "".join(
        f"<tr><td>{escape(name)}</td>" + "".join(
            f"<td>{per[k]:.2f}</td>" if isinstance(per.get(k), int | float) else "<td></td>"
            for k in keys) + "</tr>" for name, per in timings.items())
    return f'<div class="scroll"><table><tr><th>step</th>{head}</tr>{rows}</table></div>'


def _problems_html(run_info: dict[str, Any], plots: list[PlotResult]) -> tuple[str, int]:
    """Skipped tasks, run errors (with tracebacks), results cut by a time cap, plugin errors
    and plots that failed."""
    parts = []
    for skipped in run_info.get("skipped", []):
        kind = "extractor" if "extractor" in skipped else "task"
        parts.append(f'<div class="box">skipped {kind} <b>{escape(str(skipped.get(kind)))}</b>: '
                     f'{escape(str(skipped.get("reason")))}</div>')
    for error in run_info.get("errors", []):
        trace = error.get("traceback")
        details = f"<details><summary>traceback</summary><pre>{escape(trace)}</pre></details>" \
            if trace else ""
        parts.append(f'<div class="box error"><b>{escape(str(error.get("where")))}</b>: '
                     f'{escape(str(error.get("error")))}{details}</div>')
    for cut in run_info.get("time_capped", []):
        parts.append(f'<div class="box error">cut by a time cap (marked &dagger;): '
                     f'<b>{escape(str(cut.get("extractor")))}</b> {escape(str(cut.get("task")))} '
                     f'{escape(str(cut.get("variant")))} seed {escape(str(cut.get("seed")))}: '
                     f'{escape(str(cut.get("reason")))}</div>')
    for problem in run_info.get("plugin_errors", []):
        parts.append(f'<div class="box">plugin: {escape(str(problem))}</div>')
    for plot in plots:
        if plot.note and not plot.note.startswith("not run"):
            parts.append(f'<div class="box error">plot {escape(plot.key)}: {escape(plot.note)}'
                         "</div>")
    return "".join(parts) or "<p>No errors; no task was skipped.</p>", len(parts)


def _raw_files(run_dir: Path, tables: dict[str, TaskTable], plots: list[PlotResult]) -> str:
    names = ["results.csv", "run.json", "summary.md"]
    for task in tables:
        names += [f"tables/{task}.md", f"tables/{task}.csv", f"tables/{task}.json"]
    names += [f"plots/{p.path.name}" for p in plots if p.path is not None]
    names += sorted(str(p.relative_to(run_dir)) for p in (run_dir / "artifacts").glob("**/*")
                    if p.is_file()) if (run_dir / "artifacts").is_dir() else []
    items = "".join(f'<li><a href="{escape(n)}">{escape(n)}</a></li>' for n in names
                    if (run_dir / n).is_file())
    return f"<ul>{items}</ul>"


def _subtitle(run_info: dict[str, Any]) -> str:
    env = run_info.get("environment", {})
    return " · ".join(str(x) for x in [
        f"profile {run_info['profile']}" if run_info.get("profile") else None,
        f"dataset {run_info['dataset']}" if run_info.get("dataset") else None,
        f"{run_info['dataset_size']} items" if run_info.get("dataset_size") else None,
        f"{len(run_info['seeds'])} seed(s)" if run_info.get("seeds") else None,
        f"run took {run_info['total_s']:.0f} s" if run_info.get("total_s") else None,
        f"git {str(env['git_revision'])[:10]}" if env.get("git_revision") else None,
    ] if x)


def _tables_section(tables: dict[str, TaskTable], tasks: list[str],
                    run_info: dict[str, Any], verdicts: pd.DataFrame | None = None,
                    results: pd.DataFrame | None = None,
                    validity: pd.DataFrame | None = None) -> str:
    if verdicts is not None and len(verdicts):
        legend = ("Mean over seeds with its 95% interval [low, high] (bootstrap over the task's "
                  "units plus the seed spread); ▲ / ▼: better / worse than the task's reference "
                  "row at 95% (paired test).")
    else:
        legend = "Mean over seeds (± sample std with several seeds)."
    parts = [
        f"<p class=note>{legend} Per column <b>bold</b> is the best and <u>underlined</u> the "
        "second; ↓ marks columns where lower is better. Chance columns are not ranked. "
        f"{escape(RANK_NOTE.replace('**bold**', 'bold').replace('`', ''))}</p>"]
    for task in tasks:
        links = " · ".join(f'<a href="tables/{escape(task)}.{ext}">{ext.upper()}</a>'
                           for ext in ("csv", "json", "md")) if task in tables else ""
        reference = reference_note(task, verdicts).strip()
        parts.append(f'<h3 id="table-{escape(task)}">{escape(task)}</h3>'
                     f'<p class="note">{escape(task_note(task, run_info))} {links}</p>'
                     + (f'<p class="note">{escape(reference)}</p>' if reference else ""))
        parts.append(tables_html(tables[task]) if task in tables else
                     f'<p class="notrun">{NOT_RUN}: {escape(not_run_reason(task, run_info))}</p>')
        against = differences_markdown(task, verdicts, run_info)
        if against:
            title, _, table = against.partition("\n\n")
            parts.append(f'<p class="note">{escape(title)}</p>' + markdown_table_html(table))
        if task == "online" and results is not None:
            parts.append(markdown_blocks_html(online_markdown(verdicts, results, run_info,
                                                                 validity)))
    return "".join(parts)


def markdown_blocks_html(text: str) -> str:
    """Paragraphs and pipe tables separated by blank lines, as HTML."""
    out = []
    for block in text.split("\n\n"):
        block = block.strip()
        if block:
            out.append(markdown_table_html(block) if block.startswith("|") else
                       f'<p class="note">{escape(block)}</p>')
    return "".join(out)


def _run_section(run_info: dict[str, Any]) -> str:
    if not run_info:
        return ('<p class="notrun">no run.json in the run folder: config, versions and hardware '
                "unknown</p>")
    env = run_info.get("environment", {})
    config = {k: run_info.get(k) for k in ("profile", "dataset", "dataset_options", "extractors",
                                           "tasks", "seeds", "config") if k in run_info}
    facts = {**env.get("hardware", {}), "python": env.get("python", "?"),
             "platform": env.get("platform", "?"), "git revision": env.get("git_revision", "?"),
             "dataset fingerprint": run_info.get("dataset_fingerprint", "?")}
    return ("<h3>Hardware and software</h3>" + _dl(facts)
            + "<h3>Package versions</h3>" + _dl(env.get("packages", {}))
            + "<h3>Timings (seconds)</h3>" + _timings_html(run_info.get("timings", {}))
            + "<h3>Configuration</h3><pre>"
            + escape(json.dumps(config, indent=2, sort_keys=True, default=str)) + "</pre>")


def validity_html(validity: pd.DataFrame | None, run_info: dict[str, Any]) -> str:
    """The known-answer ladder per task: can this run resolve differences at all?"""
    intro = ("<p class=note>Reference embeddings built from the data's ground truth "
             "(<code>ladder:clean</code>, noisier rungs, <code>ladder:random</code>) must come "
             "out in that order on every task, each adjacent pair separated at 95%; the gap "
             "between floor and ceiling in standard errors says how much the run can resolve "
             "(docs/metrics.md).</p>")
    if validity is None:
        return intro + '<p class="notrun">not run: the run has no validity.csv</p>'
    return intro + markdown_table_html(validity_markdown(validity, run_info))


def markdown_table_html(text: str) -> str:
    """A pipe table (and the paragraphs after it) from :mod:`tables` as HTML."""
    lines = text.strip().splitlines()
    if not lines or not lines[0].startswith("|"):
        return f"<p>{escape(text)}</p>"
    rows = [[escape(c.strip()) for c in line.strip("|").split("|")]
            for line in lines if line.startswith("|") and not line.startswith("|---")]
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[1:])
    rest = " ".join(line for line in lines if not line.startswith("|"))
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            f"</table></div>" + (f'<p class="note">{escape(rest)}</p>' if rest else ""))


def _results(run_dir: Path) -> pd.DataFrame | None:
    path = run_dir / "results.csv"
    try:
        return pd.read_csv(path) if path.is_file() else None
    except (OSError, ValueError):
        return None


def render(run_dir: Path, run_info: dict[str, Any], tables: dict[str, TaskTable],
           tasks: list[str], plots: list[PlotResult], build_seconds: float,
           verdicts: pd.DataFrame | None = None, validity: pd.DataFrame | None = None,
           glance: list[Any] | None = None, glance_plot: PlotResult | None = None) -> str:
    """The whole page as a string; ``glance``: the answers of :mod:`bench.report.glance`."""
    run_id = escape(str(run_info.get("run", run_dir.name)))
    problems, n_problems = _problems_html(run_info, plots)
    sections = [
        ("glance", "At a glance", glance_html(glance or [], glance_plot)),
        ("validity", "Validity: the known-answer ladder", validity_html(validity, run_info)),
        ("tables", "Tables", _tables_section(tables, tasks, run_info, verdicts,
                                             _results(run_dir), validity)),
        ("plots", "Plots", "".join(_plot_html(p) for p in plots)),
        ("problems", f"Errors and skipped tasks ({n_problems})", problems),
        ("run", "Run configuration, versions and hardware", _run_section(run_info)),
        ("files", "Raw files", _raw_files(run_dir, tables, plots)),
    ]
    nav = "".join(f'<a href="#{key}">{escape(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{escape(title)}</h2>{content}</section>'
                   for key, title, content in sections)
    built = dt.datetime.now().isoformat(timespec="seconds")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Embedding benchmark · {run_id}</title><style>{CSS}</style></head>"
        f"<body><header><h1>Embedding benchmark: {run_id}</h1>"
        f"<p>{escape(_subtitle(run_info))}</p></header><nav>{nav}</nav><main>{body}"
        f'<p class="note">Built {built} by <code>bench report</code> in {build_seconds:.1f} s '
        f"from the files in this folder.</p></main><script>{SCRIPT}</script></body></html>\n"
    )
