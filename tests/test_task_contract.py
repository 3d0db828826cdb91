"""The task contract: declarations are checked when a task registers, and a task from one
plugin file is listed, runs and gets its table, plot and description with no other edit."""

from __future__ import annotations

import json

import pytest

from bench.cli.main import main
from bench.core import registry
from bench.core.cache import Cache
from bench.core.config import get_profile
from bench.core.metric_info import MetricInfo
from bench.report import build_report
from bench.run import RunSpec, run_benchmark
from bench.tasks import STAGES, Task, TaskDeclarationError, check_task
from tests.test_metric_info import TOY_TASK


def test_every_builtin_task_declares_the_contract():
    names = registry.task_names()
    assert {"knn", "retrieval", "classify", "ctr", "finetune_classify",
            "finetune_retrieval"} <= set(names)
    for name in names:
        task = registry.find_task(name)
        check_task(task, name)
        assert task.stage in STAGES and task.description


def bad(**fields):
    class Bad(Task):
        name, description = "bad", "A task."
        metrics = (MetricInfo("hits", unit="item"),)
        main_score = "hits"

        def evaluate(self, embeddings, dataset, ctx):
            return []

    for key, value in fields.items():
        setattr(Bad, key, value)
    return Bad()


@pytest.mark.parametrize(("fields", "message"), [
    ({}, None),
    ({"main_score": "misses"}, "main_score 'misses' is not covered"),
    ({"description": ""}, "no description"),
    ({"stage": "ranking-ish"}, "stage 'ranking-ish'"),
    ({"variants": ("raw", "x")}, "variants"),
    ({"defaults": {"nightly": {}}}, "unknown: \\['nightly'\\]"),
    ({"metrics": ()}, "metrics must be"),
    ({"seeded": 1}, "seeded must be"),
    ({"extractor_protocol": dict}, "runtime-checkable"),
    ({"references": lambda self, e, d, o: []}, "not evaluate_reference"),
])
def test_a_declaration_that_breaks_the_contract_is_refused(fields, message):
    if message is None:
        check_task(bad(), "bad")
        return
    with pytest.raises(TaskDeclarationError, match=message):
        check_task(bad(**fields), "bad")
    with pytest.raises(TaskDeclarationError, match="registered as 'other'"):
        check_task(bad(), "other")


def test_a_broken_plugin_task_is_one_plugin_error_line(tmp_path, capsys):
    plugin = tmp_path / "broken_task.py"
    plugin.write_text(TOY_TASK.replace('name, main_score, seeded, variants = "toy", "hits"',
                                       'name, main_score, seeded, variants = "toy2", "nope"')
                      .replace('@task("toy")', '@task("toy2")'))
    assert main(["list", "--plugin", str(plugin)]) == 0
    out = capsys.readouterr()
    assert "toy2" not in out.out.split("profiles:")[0]
    assert "task 'toy2': main_score 'nope'" in out.err and "broken_task.py" in out.err


def test_a_plugin_task_is_listed_runs_and_reaches_the_report(tmp_path, capsys):
    plugin = tmp_path / "toy_task.py"
    plugin.write_text(TOY_TASK)
    assert main(["list", "--plugin", str(plugin)]) == 0
    listed = capsys.readouterr().out
    assert "toy" in listed.split("tasks:")[1].split("\n")[0]
    assert "toy (other; main score hits): Counts toy hits and misses." in listed
    spec = RunSpec(profile=get_profile("quick"), dataset="digits", extractors=("pixels",),
                   tasks=("toy",), out_root=tmp_path / "out", run_id="toy",
                   plugins=(str(plugin),))
    run = run_benchmark(spec, Cache(tmp_path / "cache"))
    assert not run.errors, run.errors
    info = json.loads((run.dir / "run.json").read_text())
    assert info["task_info"]["toy"]["description"] == "Counts toy hits and misses."
    page = build_report(run.dir).html.read_text()
    assert 'id="table-toy"' in page and "task_toy.png" in page
    assert "Counts toy hits and misses." in page


def test_run_json_records_row_kinds(tmp_path):
    spec = RunSpec(profile=get_profile("quick"), dataset="digits",
                   extractors=("pixels", "ladder:clean"), tasks=("knn",),
                   out_root=tmp_path / "out", run_id="kinds")
    run = run_benchmark(spec, Cache(tmp_path / "cache"))
    info = json.loads((run.dir / "run.json").read_text())
    assert info["row_kinds"].get("pixels") == "extractor"
    # digits has no latents: the ladder is skipped, so it is never recorded as a row
    assert "ladder:clean" not in info["row_kinds"]


def test_the_glance_takes_a_task_stage_from_its_declaration():
    from bench.report.glance import OTHER_STAGE, stage_of

    info = {"task_info": {"toy": {"stage": "ranking"}, "knn": {"stage": "other"}}}
    assert stage_of("toy", info) == "ranking"  # declared, though no table names it
    assert stage_of("knn", info) == OTHER_STAGE  # the declaration wins over the old table
    assert stage_of("knn", {}) == "recall"  # a run folder written before task_info
