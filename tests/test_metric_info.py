"""Metrics declare themselves: a task's ``metrics`` list reaches run.json, and the report ranks
and plots a new plugin task from it, with no edit under bench/report/."""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest

from bench.core.cache import Cache
from bench.core.config import get_profile
from bench.core.metric_info import MetricBook, MetricInfo, UndeclaredMetric, cost, describe
from bench.report import build_report, read_run
from bench.report.tables import all_tables
from bench.run import RunSpec, run_benchmark

TOY_TASK = textwrap.dedent('''
    import numpy as np
    from bench.core.metric_info import MetricInfo
    from bench.tasks import Task, task

    class Toy(Task):
        """Two metrics whose names say nothing about their direction."""
        name, main_score, seeded, variants = "toy", "hits", False, ("raw",)
        description = "Counts toy hits and misses."
        metrics = (MetricInfo("hits", "higher", "score", "item"),
                   MetricInfo("misses", "lower", "score", "item"))

        def skip_reason(self, dataset):
            return None

        def evaluate(self, embeddings, dataset, ctx):
            spread = float(np.abs(embeddings.vectors).mean())
            return [{"metric": "hits", "value": spread},
                    {"metric": "misses", "value": spread}]

    @task("toy")
    def make_toy():
        return Toy()
''')


def test_describe_takes_the_first_declared_pattern_and_refuses_the_rest():
    class Declared:
        name = "t"
        metrics = (MetricInfo("finetune_s", "lower", "cost"), MetricInfo("*_s", "none", "count"))

    assert describe(Declared(), "finetune_s") == {"direction": "lower", "kind": "cost",
                                                  "unit": None}
    assert describe(Declared(), "epoch_s")["kind"] == "count"
    with pytest.raises(UndeclaredMetric, match="'auc'.*declared: finetune_s, \\*_s"):
        describe(Declared(), "auc")
    with pytest.raises(ValueError, match="direction 'up'"):
        MetricInfo("x", "up")


def test_metric_book_reads_declared_records_before_guessing_from_names():
    book = MetricBook({"misses": cost("misses").record(), "loss_ratio": MetricInfo(
        "loss_ratio").record()})
    assert book.lower_is_better("misses") and book.is_ranked("misses")
    assert not book.lower_is_better("loss_ratio")  # declared higher, though named "loss"
    assert book.lower_is_better("ctr_logloss")  # an old run folder: from the name
    assert book.is_chance("style_chance") and not book.is_ranked("style_chance")
    assert not book.is_ranked("finetune_steps")


def test_a_plugin_task_gets_a_ranked_table_and_a_plot(tmp_path):
    plugin = tmp_path / "toy_task.py"
    plugin.write_text(TOY_TASK)
    spec = RunSpec(profile=get_profile("quick"), dataset="digits",
                   extractors=("pixels", "random"), tasks=("toy",), out_root=tmp_path / "out",
                   run_id="toy", plugins=(str(plugin),))
    run = run_benchmark(spec, Cache(tmp_path / "cache"))
    assert not run.errors, run.errors
    info = json.loads((run.dir / "run.json").read_text())
    assert info["metrics"]["misses"] == {"direction": "lower", "kind": "score", "unit": "item",
                                         "tasks": ["toy"]}
    report = build_report(run.dir)
    table = all_tables(*read_run(run.dir))["toy"]  # what the report wrote to tables/toy.md
    assert table.to_markdown() in (run.dir / "tables" / "toy.md").read_text()
    values = pd.read_csv(run.dir / "results.csv").set_index(["extractor", "metric"])["value"]
    low = min(("pixels", "random"), key=lambda e: values[(e, "misses")])
    high = max(("pixels", "random"), key=lambda e: values[(e, "hits")])
    assert table.cell(low, "misses raw").rank == 1  # lower is better: the smaller value leads
    assert table.cell(high, "hits raw").rank == 1
    plot = next(p for p in report.plots if p.key == "task_toy")
    assert plot.path is not None and plot.path.stat().st_size > 0, plot.note
    assert "task_toy.png" in report.html.read_text()
