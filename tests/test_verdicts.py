"""verdicts.csv and validity.csv from a run folder's evidence; the report shows them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.core.metric_info import MetricBook
from bench.report import build_report
from bench.scoring import stats, verdicts

QUERIES = np.array([f"q{i:03d}" for i in range(300)])


def hits(rate: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((300, 10)) < rate).mean(1)


def write_run(run: Path) -> None:
    cells = {("random", "raw"): 0.20, ("pixels", "raw"): 0.30, ("swav", "raw"): 0.205,
             ("ladder:clean", "raw"): 0.90, ("ladder:noise=0.15", "raw"): 0.60,
             ("ladder:noise=0.3", "raw"): 0.35, ("ladder:random", "raw"): 0.17}
    rows = []
    for i, ((extractor, variant), rate) in enumerate(cells.items()):
        values = hits(rate, i)
        evidence = stats.mean_evidence("query", QUERIES, values)
        verdicts.save_evidence(run, "knn", extractor, variant, 0, {"style_consistency": evidence})
        rows.append({"run": "r", "dataset": "d", "extractor": extractor, "variant": variant,
                     "task": "knn", "metric": "style_consistency", "seed": 0,
                     "value": values.mean()})
    for seed in range(2):  # a fine-tuned row and its scratch baseline, two seeds
        for extractor, rate in (("swav", 0.5), ("scratch:resnet18-w32", 0.3)):
            values = hits(rate, 100 + seed + (extractor == "swav") * 10)
            verdicts.save_evidence(run, "classify", extractor, "ft", seed,
                                   {"finetune_top1": stats.mean_evidence("item", QUERIES,
                                                                         values)})
            rows.append({"run": "r", "dataset": "d", "extractor": extractor, "variant": "ft",
                         "task": "classify", "metric": "finetune_top1", "seed": seed,
                         "value": values.mean()})
    pd.DataFrame(rows).to_csv(run / "results.csv", index=False)
    (run / "run.json").write_text('{"run": "r", "tasks": ["knn", "classify"], "main_scores": '
                                  '{"knn": "style_consistency", "classify": "probe_top1"}}')


def test_verdicts_intervals_references_and_validity(tmp_path: Path) -> None:
    write_run(tmp_path)
    table, validity = verdicts.compute(tmp_path, {"knn": "random"}, MetricBook().lower_is_better,
                                       n_resamples=300)
    on_disk = pd.read_csv(tmp_path / "verdicts.csv")
    assert list(on_disk.columns) == verdicts.VERDICT_COLUMNS and len(on_disk) == len(table)
    row = table.set_index(["task", "extractor", "variant"]).loc[("knn", "pixels", "raw")]
    assert row["reference"] == "random" and row["verdict"] == "better"
    assert row["ci_low"] < row["value"] < row["ci_high"] and row["n_units"] == 300
    assert row["diff_low"] > 0 and row["test"].startswith("paired bootstrap over queries")
    close = table.set_index(["task", "extractor", "variant"]).loc[("knn", "swav", "raw")]
    assert close["verdict"] == "same"  # 0.205 vs 0.20 on 300 queries: within noise
    reference = table[(table["extractor"] == "random")].iloc[0]
    assert pd.isna(reference["verdict"])  # the reference is not tested against itself
    ft = table[(table["task"] == "classify") & (table["extractor"] == "swav")].iloc[0]
    assert ft["reference"] == "scratch:resnet18-w32" and ft["n_seeds"] == 2
    assert ft["verdict"] == "better" and "+ spread of 2 seeds" in ft["test"]
    ladder = validity.set_index("task").loc["knn"]
    assert bool(ladder["in_order"]) and ladder["verdict"] == "resolves"
    assert ladder["adjacent_separated"] == ladder["adjacent_pairs"] == 3
    assert ladder["floor"] == pytest.approx(hits(0.17, 6).mean())
    assert ladder["gap_se"] > 20


def test_ladder_out_of_order_is_reported(tmp_path: Path) -> None:
    for name, rate in (("ladder:clean", 0.3), ("ladder:noise=0.3", 0.6),
                       ("ladder:random", 0.1)):
        verdicts.save_evidence(tmp_path, "knn", name, "raw", 0, {"m": stats.mean_evidence(
            "query", QUERIES, hits(rate, len(name)))})
    _, validity = verdicts.compute(tmp_path, {}, n_resamples=200)
    assert validity.iloc[0]["verdict"] == "out of order" and not validity.iloc[0]["in_order"]


def test_ladder_rungs_within_noise_are_tied_not_out_of_order(tmp_path: Path) -> None:
    """A lower rung whose mean is a hair above the one above it, within noise, is a tie: the
    ladder is in order with one pair not separated; a reversal beyond noise is out of order."""
    for name, rate, seed in (("ladder:clean", 0.60, 21), ("ladder:noise=0.15", 0.60, 22),
                             ("ladder:noise=0.3", 0.35, 3), ("ladder:random", 0.1, 4)):
        verdicts.save_evidence(tmp_path, "knn", name, "raw", 0, {"m": stats.mean_evidence(
            "query", QUERIES, hits(rate, seed))})  # seeds 21, 22: means 0.593 < 0.602
    _, validity = verdicts.compute(tmp_path, {}, n_resamples=200)
    row = validity.iloc[0]
    assert row["in_order"] and row["verdict"] == "in order"
    assert row["adjacent_separated"] == 2 and row["adjacent_pairs"] == 3


def test_report_shows_intervals_marks_and_the_validity_table(tmp_path: Path) -> None:
    write_run(tmp_path)
    verdicts.compute(tmp_path, {"knn": "random"}, MetricBook().lower_is_better, n_resamples=300)
    build_report(tmp_path, html=False)
    summary = (tmp_path / "summary.md").read_text()
    assert "## Validity: the known-answer ladder" in summary
    assert "| knn | style_consistency | raw |" in summary and "resolves" in summary
    assert "Reference: `random`; test: paired bootstrap over queries" in summary
    line = next(x for x in summary.splitlines() if x.startswith("| pixels |"))
    assert "[" in line and "▲" in line
    line = next(x for x in summary.splitlines() if x.startswith("| swav |"))
    assert "▲" not in line and "▼" not in line
    table = pd.read_csv(tmp_path / "tables" / "knn.csv")
    assert {"style_consistency raw low", "style_consistency raw high"} <= set(table.columns)


def test_bootstrap_draws_are_cached_by_the_evidence(tmp_path, monkeypatch):
    from bench.core.cache import Cache

    ids = np.array([f"q{i}" for i in range(300)])
    cells = [stats.Cell((name, "raw"), [stats.mean_evidence("query", ids, hits(rate, 0))])
             for name, rate in (("a", 0.3), ("random", 0.1))]
    first = verdicts.cached_resample(cells, 50, Cache(tmp_path))
    assert np.array_equal(first, stats.resample(cells, 50))
    monkeypatch.setattr(stats, "resample", lambda *a, **k: pytest.fail("resampled again"))
    assert np.array_equal(verdicts.cached_resample(cells, 50, Cache(tmp_path)), first)
    other = [stats.Cell(("a", "raw"), [stats.mean_evidence("query", ids, hits(0.5, 1))])]
    with pytest.raises(pytest.fail.Exception):  # other evidence: a miss
        verdicts.cached_resample(other, 50, Cache(tmp_path))


def test_each_fine_tuned_backbone_is_tested_against_the_scratch_row_of_its_architecture():
    cells = {(name, "ft"): None for name in ("scratch:resnet18-w16", "scratch:tower-w8",
                                             "moco_v2", "m6_moe")}
    paired = {"finetune_classify": {"moco_v2": "scratch:resnet18-w16",
                                    "m6_moe": "scratch:tower-w8"}}
    assert verdicts.reference_for("finetune_classify", "m6_moe", "ft", cells, {},
                                  paired) == ("scratch:tower-w8", "ft")
    assert verdicts.reference_for("finetune_classify", "moco_v2", "ft", cells, {},
                                  paired) == ("scratch:resnet18-w16", "ft")
    assert verdicts.reference_for("finetune_classify", "scratch:tower-w8", "ft", cells, {},
                                  paired) is None  # a reference row is not tested
