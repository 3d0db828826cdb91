"""Report: tables (and, as tasks land, plots and HTML) built from a run folder's files alone."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.cache import write_text
from bench.report.tables import summary_markdown


def build_report(run_dir: str | Path) -> Path:
    """Rebuild ``summary.md`` (and the rest of the report) from ``results.csv``."""
    run_dir = Path(run_dir)
    results_path = run_dir / "results.csv"
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path}: no results file; is {run_dir} a run folder?")
    results = pd.read_csv(results_path)
    run_info = {}
    if (run_dir / "run.json").is_file():
        run_info = json.loads((run_dir / "run.json").read_text())
    title = f"Run {run_info.get('run', run_dir.name)}"
    text = summary_markdown(results, title)
    skipped = run_info.get("skipped", [])
    if skipped:
        text += "\n## Skipped tasks\n\n" + "\n".join(
            f"- {s['task']}: {s['reason']}" for s in skipped) + "\n"
    return write_text(run_dir / "summary.md", text)
