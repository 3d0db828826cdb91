"""``bench compare`` on two fixture runs: changes, pooled seed noise (checked by hand with numpy),
one-seed "n/a", metrics present in one run only, direction of costs, the CLI's CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli.main import main as bench_main
from bench.report.compare import compare_results

FIXTURES = Path(__file__).parent / "fixtures"
RUN_A, RUN_B = FIXTURES / "report_run_a", FIXTURES / "report_run_b"


@pytest.fixture(scope="module")
def comparison() -> pd.DataFrame:
    return compare_results(pd.read_csv(RUN_A / "results.csv"), pd.read_csv(RUN_B / "results.csv"))


def _row(frame: pd.DataFrame, task: str, extractor: str, variant: str, metric: str) -> pd.Series:
    hit = frame[(frame["task"] == task) & (frame["extractor"] == extractor)
                & (frame["variant"] == variant) & (frame["metric"] == metric)]
    assert len(hit) == 1
    return hit.iloc[0]


def _values(run: Path, extractor: str, variant: str, metric: str) -> np.ndarray:
    frame = pd.read_csv(run / "results.csv")
    return frame[(frame["extractor"] == extractor) & (frame["variant"] == variant)
                 & (frame["metric"] == metric)]["value"].to_numpy()


@pytest.mark.parametrize("extractor,expected", [("moco_v2", "yes"), ("m6_moe", "no")])
def test_change_against_pooled_seed_noise(comparison: pd.DataFrame, extractor: str,
                                          expected: str) -> None:
    a = _values(RUN_A, extractor, "raw", "ctr_auc")
    b = _values(RUN_B, extractor, "raw", "ctr_auc")
    pooled = np.sqrt((np.var(a, ddof=1) * (len(a) - 1) + np.var(b, ddof=1) * (len(b) - 1))
                     / (len(a) + len(b) - 2))
    row = _row(comparison, "ctr", extractor, "raw", "ctr_auc")
    assert row["mean_a"] == pytest.approx(a.mean()) and row["mean_b"] == pytest.approx(b.mean())
    assert row["change"] == pytest.approx(b.mean() - a.mean())
    assert row["pooled_std"] == pytest.approx(pooled)
    assert row["n_a"] == row["n_b"] == 3
    assert row["beyond_noise"] == expected
    assert (abs(b.mean() - a.mean()) > 2 * pooled) == (expected == "yes")


def test_one_seed_only_and_directions(comparison: pd.DataFrame) -> None:
    swav = _row(comparison, "knn", "swav", "raw", "style_consistency")
    assert swav["beyond_noise"] == "n/a" and swav["change"] == pytest.approx(0.05)
    assert swav["direction"] == "better"
    assert _row(comparison, "retrieval", "swav", "raw", "map@r")["beyond_noise"] == "only in A"
    assert _row(comparison, "knn", "pixels", "raw",
                "category_consistency")["beyond_noise"] == "only in B"
    logloss = _row(comparison, "ctr", "moco_v2", "raw", "ctr_logloss")
    assert logloss["change"] < 0 and logloss["direction"] == "better"  # lower is better
    assert _row(comparison, "knn", "swav", "raw", "style_chance")["direction"] == ""


def test_cli_prints_and_writes_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cmp.csv"
    assert bench_main(["compare", str(RUN_A), str(RUN_B), "--out", str(out),
                       "--changed-only"]) == 0
    printed = capsys.readouterr().out
    written = pd.read_csv(out)
    assert len(written) == len(pd.read_csv(RUN_A / "results.csv").groupby(
        ["task", "extractor", "variant", "metric"])) + 1  # plus the metric only in B
    assert (written["beyond_noise"] == "yes").sum() == 10  # moco_v2's ctr metrics, raw and +w
    assert "ctr_auc" in printed and "style_consistency" not in printed
    assert "beyond noise: 10" in printed and f"wrote {out}" in printed
    assert "noise: 2 x pooled seed std" in printed  # fixture runs without verdicts.csv


def test_runs_with_verdicts_are_compared_on_their_standard_errors() -> None:
    results_a = pd.DataFrame({"task": "knn", "extractor": ["x", "y"], "variant": "raw",
                              "metric": "style_consistency", "seed": 0, "value": [0.60, 0.60]})
    results_b = results_a.assign(value=[0.65, 0.61])
    errors = pd.DataFrame({"task": "knn", "extractor": ["x", "y"], "variant": "raw",
                           "metric": "style_consistency", "se": [0.01, 0.01]})
    out = compare_results(results_a, results_b, errors, errors)
    x, y = _row(out, "knn", "x", "raw", "style_consistency"), _row(out, "knn", "y", "raw",
                                                                   "style_consistency")
    width = 1.959964 * np.hypot(0.01, 0.01)  # 0.0277
    assert x["noise"] == pytest.approx(width, rel=1e-4) and x["beyond_noise"] == "yes"
    assert y["beyond_noise"] == "no" and y["test"].startswith("z-test")


def _run_folder(parent: Path, source: Path, fingerprint: str | None,
                dataset: str = "homestead") -> Path:
    import json
    import shutil

    folder = parent / "base"
    folder.mkdir(parents=True)
    shutil.copy(source / "results.csv", folder / "results.csv")
    if fingerprint is not None:
        (folder / "run.json").write_text(json.dumps(
            {"run": "base", "dataset": dataset, "dataset_fingerprint": fingerprint}))
    return folder


def test_runs_on_different_datasets_are_refused_and_named_by_path_and_fingerprint(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _run_folder(tmp_path / "monday", RUN_A, "aaaa1111")
    b = _run_folder(tmp_path / "tuesday", RUN_B, "bbbb2222", dataset="folder:shop")
    assert bench_main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different data" in err
    assert "fingerprint aaaa1111" in err and "folder:shop (fingerprint bbbb2222)" in err
    assert "--different-datasets" in err and not (b / "compare_vs_base.csv").exists()

    assert bench_main(["compare", str(a), str(b), "--different-datasets"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("WARNING: the runs scored different data")
    assert f"A: {a} (dataset homestead, fingerprint aaaa1111)" in captured.out
    assert f"B: {b} (dataset folder:shop, fingerprint bbbb2222)" in captured.out
    assert (b / "compare_vs_monday_base.csv").is_file()  # not "compare_vs_base"


def test_same_dataset_compares_and_unknown_fingerprints_say_so(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _run_folder(tmp_path / "monday", RUN_A, "same")
    b = _run_folder(tmp_path / "tuesday", RUN_B, "same")
    assert bench_main(["compare", str(a), str(b)]) == 0
    assert "fingerprint same" in capsys.readouterr().out
    c = _run_folder(tmp_path / "old", RUN_B, None)
    assert bench_main(["compare", str(a), str(c)]) == 0
    assert f"B: {c} (dataset fingerprint unknown (no run.json))" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["compare", "report"])
def test_a_hand_edited_value_names_the_file_line_and_column(
        tmp_path: Path, capsys: pytest.CaptureFixture, command: str) -> None:
    folder = _run_folder(tmp_path / "edited", RUN_A, "x")
    path = folder / "results.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[3].split(",")
    cells[header.index("value")] = "0.5 (checked)"
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    argv = ["compare", str(folder), str(RUN_B)] if command == "compare" else \
        ["report", str(folder), "--no-html"]
    assert bench_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (f"{path}: column 'value' must hold numbers; 1 other values, e.g. '0.5 (checked)' "
            f"at line 4 (data row 3)") in err
