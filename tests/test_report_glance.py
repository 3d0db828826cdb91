""""At a glance" as a decision: tie groups at 95% (paired test, Holm) from ties.csv, references
never named best, one answer per stage, and ``bench compare`` on the same rule as the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli.main import main as bench_main
from bench.core.metric_info import MetricBook
from bench.report import build_report, glance, kinds
from bench.scoring import stats, ties, verdicts
from tests.test_verdicts import QUERIES, hits

ABLATION = "a [ad]"
OWN = "ids only"  # a task's own reference row (ctr's "none (ids only)")


def write_run(run: Path, rates: dict[str, float], same: tuple[str, str] | None = None,
              row_kinds: bool = True) -> None:
    """A knn run (one seed, 300 queries) with evidence, verdicts.csv and ties.csv; ``same``:
    two extractors given identical per-query values (a planted tie). Without ``row_kinds`` (an
    older run folder) the task declares a reference row of its own, as ctr does, so that the
    fallback can tell its rows (the ablation) from the extractors'."""
    run.mkdir(parents=True, exist_ok=True)
    reference = "random" if row_kinds else OWN
    if not row_kinds:
        rates = {OWN: 0.15, **rates}
    rows, made = [], {}
    for i, (extractor, rate) in enumerate(rates.items()):
        values = made[same[0]] if same and extractor == same[1] else hits(rate, i)
        made[extractor] = values
        verdicts.save_evidence(run, "knn", extractor, "raw", 0,
                               {"style_consistency": stats.mean_evidence("query", QUERIES,
                                                                         values)})
        rows.append({"run": run.name, "dataset": "d", "extractor": extractor, "variant": "raw",
                     "task": "knn", "metric": "style_consistency", "seed": 0,
                     "value": values.mean()})
    pd.DataFrame(rows).to_csv(run / "results.csv", index=False)
    info = {"run": run.name, "tasks": ["knn"],
            "extractors": [e for e in rates if e not in (ABLATION, OWN)],
            "main_scores": {"knn": "style_consistency"}, "references": {"knn": reference}}
    if row_kinds:
        info["row_kinds"] = {e: "reference" if e == ABLATION else "extractor" for e in rates}
    (run / "run.json").write_text(json.dumps(info))
    verdicts.compute(run, {"knn": reference}, MetricBook().lower_is_better, n_resamples=300)


TIE = {"random": 0.20, "a": 0.50, "b": 0.50, "c": 0.30, ABLATION: 0.90}
CLEAR = {"random": 0.20, "a": 0.60, "b": 0.45, "c": 0.30, ABLATION: 0.90}


def test_ties_csv_holds_every_pair_of_a_column(tmp_path: Path) -> None:
    write_run(tmp_path, TIE, same=("a", "b"))
    pairs = ties.read(tmp_path)
    assert list(pairs.columns) == ties.TIES_COLUMNS and len(pairs) == 10  # 5 rows: 10 pairs
    book = ties.PairBook(pairs, "knn", "style_consistency", "raw")
    same = book("a", "b")
    assert same.diff == 0 and same.p_value == 1.0
    assert book("c", "a").diff == pytest.approx(-book("a", "c").diff)


def test_planted_tie_is_reported_as_a_tie(tmp_path: Path) -> None:
    write_run(tmp_path, TIE, same=("a", "b"))
    report = build_report(tmp_path)
    [answer] = glance.run_answers(tmp_path)
    assert answer.stage == "recall" and sorted(answer.group.tied) == ["a", "b"]
    assert answer.group.beaten == ["c", "random"]
    assert answer.group_text() in ("best: {a, b} (tied at 95%)", "best: {b, a} (tied at 95%)")
    page = report.html.read_text()
    assert answer.group_text() in page and "(tied at 95%)" in page
    assert answer.group_text() in (tmp_path / "summary.md").read_text()
    table = (tmp_path / "tables" / "knn.md").read_text()
    bold = [line.split(" | ")[0].strip("| ") for line in table.splitlines() if "**" in line]
    assert sorted(bold) == ["a", "b"]  # the tables mark the same group


def test_planted_clear_winner_is_reported_alone(tmp_path: Path) -> None:
    write_run(tmp_path, CLEAR)
    [answer] = glance.run_answers(tmp_path)
    assert answer.group.tied == ["a"] and answer.group.beaten == ["b", "c", "random"]
    assert answer.group_text() == "best: a (ahead of every other extractor at 95%)"
    assert answer.sentence().startswith("For recall, pick a: on knn style_consistency (raw)")
    assert answer.reference == "random" and answer.lead.low > 0
    assert answer.lead.diff == pytest.approx(hits(0.6, 1).mean() - hits(0.2, 0).mean())


@pytest.mark.parametrize("declared", [True, False], ids=["row_kinds", "fallback"])
def test_an_ablation_with_the_highest_score_is_never_named_best(tmp_path: Path,
                                                                declared: bool) -> None:
    write_run(tmp_path, CLEAR, row_kinds=declared)
    build_report(tmp_path)
    [answer] = glance.run_answers(tmp_path)
    assert answer.group.best == "a" and ABLATION not in answer.group.tied
    assert ABLATION in answer.references and ABLATION not in answer.rows
    assert answer.reference == ("random" if declared else OWN) and answer.lead.low > 0
    assert "above the best extractor but is not deployable" in answer.reference_note()
    cell = answer.references[ABLATION]  # every number on the page carries its interval
    assert cell.interval and f"{ABLATION} {cell.mean:.4f}{cell.interval}" in answer.reference_note()
    table = json.loads((tmp_path / "tables" / "knn.json").read_text())
    ranks = {r["extractor"]: r["cells"]["style_consistency raw"]["rank"] for r in table["rows"]}
    assert ranks[ABLATION] is None and ranks["a"] == 1
    page = (tmp_path / "report.html").read_text()
    assert f"best: {ABLATION}" not in page and f"pick {ABLATION}" not in page


def test_compare_and_the_report_agree_on_the_same_pair(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    tie, clear = tmp_path / "tie", tmp_path / "clear"
    write_run(tie, TIE, same=("a", "b"))
    write_run(clear, CLEAR)
    pages = {run: build_report(run).html.read_text() for run in (tie, clear)}
    assert bench_main(["compare", str(tie), str(clear), "--out", str(tmp_path / "c.csv")]) == 0
    printed = capsys.readouterr().out
    for name, run in (("A", tie), ("B", clear)):
        [answer] = glance.run_answers(run)
        line = next(x for x in printed.splitlines()
                    if x.startswith(f"  {name} knn style_consistency (raw): "))
        assert line.split(": ", 1)[1].startswith(answer.group_text())
        assert answer.group_text() in pages[run]
    assert "{a, b} (tied at 95%)" in printed or "{b, a} (tied at 95%)" in printed
    assert "  B knn style_consistency (raw): best: a (ahead of every" in printed


def test_holm_correction_keeps_a_borderline_pair_tied() -> None:
    """Two comparisons at p = 0.03 and 0.04: each alone is below 0.05, Holm's adjusted values
    (0.06, 0.06) are not, so both stay tied with the best; at 0.001 and 0.04 (adjusted 0.002,
    0.04) both are beaten."""
    assert ties.holm({"x": 0.03, "y": 0.04}) == pytest.approx({"x": 0.06, "y": 0.06})
    means = {"best": 0.7, "x": 0.6, "y": 0.5}

    def lookup(p: dict[str, float]):
        return lambda a, b: ties.Pair(a, b, means[a] - means[b], np.nan, np.nan, p[b])

    group = ties.tie_group(means, False, lookup({"x": 0.03, "y": 0.04}))
    assert group.tied == ["best", "x", "y"] and group.beaten == []
    group = ties.tie_group(means, False, lookup({"x": 0.001, "y": 0.04}))
    assert group.tied == ["best"] and group.beaten == ["x", "y"]
    lower = ties.tie_group(means, True, lookup({"x": 0.5, "y": 0.5, "best": 0.5}))
    assert lower.best == "y"  # lower is better: the smallest mean leads
    untested = ties.tie_group({"a": 0.5, "b": 0.5, "c": 0.4}, False)
    assert not untested.tested and untested.tied == ["a", "b"]


def test_row_kinds_main_path_and_fallback() -> None:
    info = {"row_kinds": {"m6_moe": "reference", "pixels [ad]": "extractor"}}
    assert kinds.is_reference("m6_moe", "knn", info)  # what run.json says, whatever the name
    assert not kinds.is_reference("pixels [ad]", "ctr", info)
    old = {"extractors": ["pixels", "m6_moe", "random"], "references": {"ctr": "none (ids only)",
                                                              "knn": "random"},
           "paired_references": {"finetune_classify": {"m6_moe": "scratch:tower-w8"}}}
    assert kinds.is_reference("none (ids only)", "ctr", old)
    assert kinds.is_reference("pixels [behavior, mqap]", "ctr", old)
    assert not kinds.is_reference("pixels", "ctr", old)
    assert kinds.is_reference("scratch:tower-w8", "finetune_classify", old)
    assert kinds.is_reference("ladder:noise=0.3", "knn", old)
    assert not kinds.is_reference("random", "knn", old)
    assert not kinds.is_reference("pixels [ad]", "knn", {})  # nothing recorded: not guessed


def test_fixture_run_answers_by_stage() -> None:
    found = glance.run_answers(Path(__file__).parent / "fixtures" / "report_run_a")
    assert [(a.stage, a.task) for a in found] == [("recall", "knn"), ("ranking", "ctr"),
                                                 ("image search", "retrieval"),
                                                 ("transfer", "classify")]
    ctr = found[1]
    assert ctr.group_text() == "best: {m6_moe, moco_v2} (tied at 95%)"
    assert ctr.reference == "none (ids only)" and "none (ids only)" in ctr.references
    assert set(glance.STAGES.values()) == {"recall", "ranking", "image search", "transfer"}
