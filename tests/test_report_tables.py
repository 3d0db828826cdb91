"""Report tables from a fixed results file: stored expectation, ranking rules checked against
pandas, "not run" cells, and ``bench report`` on runs that lack tasks, run.json or rows."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.core.metric_info import MetricBook
from bench.report import build_report, plots
from bench.report.html import tables_html
from bench.report.tables import (
    aggregate,
    all_tables,
    format_number,
    summary_markdown,
)

FIXTURES = Path(__file__).parent / "fixtures"
RUN_A = FIXTURES / "report_run_a"
EXPECTED = FIXTURES / "report_expected"
TASKS = ("knn", "retrieval", "classify", "ctr", "ams")


@pytest.fixture
def run_a(tmp_path: Path) -> Path:
    target = tmp_path / "run_a"
    shutil.copytree(RUN_A, target)
    return target


def _results() -> pd.DataFrame:
    return pd.read_csv(RUN_A / "results.csv")


def _info() -> dict:
    return json.loads((RUN_A / "run.json").read_text())


@pytest.mark.parametrize("task", TASKS)
def test_tables_match_stored_expectation(run_a: Path, task: str) -> None:
    build_report(run_a, html=False)
    written = run_a / "tables"
    assert (written / f"{task}.md").read_text() == (EXPECTED / f"{task}.md").read_text()
    pd.testing.assert_frame_equal(pd.read_csv(written / f"{task}.csv"),
                                  pd.read_csv(EXPECTED / f"{task}.csv"), rtol=1e-9)
    got = json.loads((written / f"{task}.json").read_text())
    want = json.loads((EXPECTED / f"{task}.json").read_text())
    assert got["columns"] == want["columns"]
    assert [r["extractor"] for r in got["rows"]] == [r["extractor"] for r in want["rows"]]
    for got_row, want_row in zip(got["rows"], want["rows"]):
        for key, cell in want_row["cells"].items():
            if cell is None:
                assert got_row["cells"][key] is None
            else:
                assert got_row["cells"][key]["text"] == cell["text"]
                assert got_row["cells"][key]["rank"] == cell["rank"]
                assert got_row["cells"][key]["mean"] == pytest.approx(cell["mean"], rel=1e-9)


def test_bold_and_underline_agree_with_pandas_ranking() -> None:
    """Best/second per column from an independent pandas computation on the raw rows."""
    results = _results()
    table = all_tables(results)["ctr"]
    for column in table.columns:
        metric, variant = column.metric, column.variant
        part = results[(results["task"] == "ctr") & (results["metric"] == metric)
                       & (results["variant"] == variant)]
        means = part.groupby("extractor")["value"].mean()
        ordered = means.sort_values(ascending=MetricBook().lower_is_better(metric)).index.tolist()
        bold = [r for r in table.rows if (c := table.cell(r, column.key)) and c.rank == 1]
        under = [r for r in table.rows if (c := table.cell(r, column.key)) and c.rank == 2]
        assert bold == [ordered[0]], column.key
        assert under == ([ordered[1]] if len(ordered) >= 3 else []), column.key
        std = part.groupby("extractor")["value"].std(ddof=1)
        for row in means.index:
            assert table.cell(row, column.key).std == pytest.approx(std[row])


def test_lower_is_better_ranks_costs_upwards() -> None:
    table = all_tables(_results())["ams"]
    assert table.cell("pretrained (store-in-worker)", "total_bytes_per_iter").rank == 1
    assert table.cell("pretrained (ams)", "total_bytes_per_iter").rank == 2
    assert table.cell("pretrained (store-in-server)", "iter_time_s").rank == 0
    book = MetricBook()
    assert book.lower_is_better("ctr_logloss") and book.lower_is_better("iter_time_s")
    assert not book.lower_is_better("ctr_auc") and not book.lower_is_better("recall@5")


def test_chance_columns_once_and_unranked() -> None:
    table = all_tables(_results())["knn"]
    keys = [c.key for c in table.columns]
    assert keys == ["style_consistency raw", "style_consistency +w", "style_chance",
                    "scene_consistency raw", "scene_consistency +w", "scene_chance"]
    assert all(table.cell(r, "style_chance").rank == 0 for r in table.rows if table.cell(r, "style_chance"))
    assert "**0.1667**" not in table.to_markdown()


def test_mean_and_std_over_seeds_and_not_run_cells() -> None:
    results, info = _results(), _info()
    tables = all_tables(results, info)
    classify = tables["classify"]
    values = results[(results["extractor"] == "swav") & (results["metric"] == "probe_top1")
                      & (results["variant"] == "raw")]["value"].to_numpy()
    cell = classify.cell("swav", "probe_top1 raw")
    assert cell.n == 3 and cell.mean == pytest.approx(values.mean())
    assert cell.std == pytest.approx(np.std(values, ddof=1))
    assert cell.text == f"{values.mean():.4f} ± {np.std(values, ddof=1):.4f}"
    assert classify.text("scratch:resnet18", "probe_top1 raw") == "not run"  # no probe
    assert classify.text("precomputed:missing.npz", "finetune_top1") == "not run"
    # the fine-tune variant is a column of the extractor's row, beside the probe
    assert [c.key for c in classify.columns][-2:] == ["finetune_top1", "finetune_top5"]
    assert classify.cell("scratch:resnet18", "finetune_top1").n == 3
    assert tables["knn"].cell("pixels", "style_consistency raw").text == "0.3000"  # one seed


def test_format_number() -> None:
    assert format_number(0.71234) == "0.7123"
    assert format_number(0) == "0.0000"
    assert format_number(1234.5) == "1,234.5"
    assert format_number(6.4e7) == "6.400e+07"
    assert format_number(float("nan")) == "n/a"
    assert format_number(0.0004, like=0.65) == "0.0004"


def test_report_with_missing_tasks_still_builds(run_a: Path) -> None:
    results = pd.read_csv(run_a / "results.csv")
    results[results["task"] == "knn"].to_csv(run_a / "results.csv", index=False)
    for stale in ("run.json",):
        (run_a / stale).unlink()
    shutil.rmtree(run_a / "artifacts")
    report = build_report(run_a)
    page = report.html.read_text()
    assert (run_a / "plots" / "knn_consistency.png").is_file()
    notes = {p.key: p.note for p in report.plots}
    for key in ("recall_at_n", "classification_topk", "ctr_auc", "ams_costs", "training_loss",
                "embedding_map", "knn_grid"):
        assert notes[key].startswith("not run"), key
        assert not (run_a / "plots" / f"{key}.png").exists()
    assert "no run.json" in page and "not run" in page
    assert sorted(p.name for p in (run_a / "tables").iterdir()) == ["knn.csv", "knn.json",
                                                                    "knn.md"]


def test_report_on_requested_but_missing_tasks(run_a: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plots, "PLOTS", plots.PLOTS[:1])  # tables and notes are the point here
    results = pd.read_csv(run_a / "results.csv")
    results[results["task"].isin(["knn", "ams"])].to_csv(run_a / "results.csv", index=False)
    info = json.loads((run_a / "run.json").read_text())
    info["skipped"] = [{"task": "retrieval", "reason": "the dataset has no 'identity' column"}]
    (run_a / "run.json").write_text(json.dumps(info))
    text = summary_markdown(pd.read_csv(run_a / "results.csv"), "t", info)
    assert "## retrieval\n\nnot run: skipped: the dataset has no 'identity' column" in text
    assert "## classify\n\nnot run: the task produced no rows" in text
    page = build_report(run_a).html.read_text()
    assert "skipped task <b>retrieval</b>" in page


def test_report_on_empty_results(tmp_path: Path) -> None:
    pd.DataFrame(columns=["run", "dataset", "extractor", "variant", "task", "metric", "seed",
                          "value"]).to_csv(tmp_path / "results.csv", index=False)
    report = build_report(tmp_path)
    assert report.html.is_file()
    assert all(p.path is None for p in report.plots)
    assert aggregate(pd.read_csv(tmp_path / "results.csv")).empty


def test_report_refuses_a_folder_without_results(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="results.csv"):
        build_report(tmp_path)


class _Cells(HTMLParser):
    """Text of every body row's cells in an HTML fragment."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.in_body = self.in_cell = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.in_body |= tag == "tbody"
        if self.in_body and tag == "tr":
            self.rows.append([])
        if self.in_body and tag == "td":
            self.in_cell = True
            self.rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        self.in_cell &= tag != "td"
        self.in_body &= tag != "tbody"

    def handle_data(self, data: str) -> None:
        if self.in_cell:
            self.rows[-1][-1] += data


@pytest.mark.parametrize("task", TASKS)
def test_html_tables_hold_every_cell(task: str) -> None:
    table = all_tables(_results(), _info())[task]
    parser = _Cells()
    parser.feed(tables_html(table))
    shown = [c for _, columns in table.parts() for c in columns]
    assert sorted(c.key for c in shown) == sorted(c.key for c in table.columns)
    per_part = len(table.rows)
    assert len(parser.rows) == per_part * len(table.parts())
    for i, (_, columns) in enumerate(table.parts()):
        for row, cells in zip(table.rows, parser.rows[i * per_part:(i + 1) * per_part]):
            assert cells == [row, *(table.text(row, c.key) for c in columns)]
    html = tables_html(table)
    for row in table.rows:
        for column in table.columns:
            cell = table.cell(row, column.key)
            if cell is not None and cell.rank == 1:  # the seed std / interval wraps below
                rest = cell.text.removeprefix(format_number(cell.mean))
                spread = f'<span class="ci">{rest}</span>' if rest else ""
                assert f"<b>{format_number(cell.mean)}{spread}</b>" in html


def test_wide_tables_are_split_by_kind_scores_first() -> None:
    results = _results()
    extra = results[results["task"] == "ctr"].copy()
    extra["metric"] = extra["metric"].str.replace("auc", "gauc")
    table = all_tables(pd.concat([results, extra]))["ctr"]
    assert len(table.columns) == 18 and len(table.parts(max_columns=24)) == 1
    assert len(table.parts()) > 1  # more than 12 columns: by kind (18 were 1937 px at 1400)
    assert "**ctr: auc**" in table.to_markdown_parts()
    narrow = all_tables(results)["ctr"]
    assert len(narrow.columns) <= 12 and "**ctr:" not in narrow.to_markdown_parts()
    parts = table.parts(max_columns=12)
    titles = [title for title, _ in parts]
    assert titles == ["auc", "gauc", "logloss", "cold start, auc", "cold start, gauc"]
    assert [c.key for c in parts[0][1]] == ["ctr_auc raw", "ctr_auc +w", "ctcvr_auc raw",
                                            "ctcvr_auc +w", "detail_auc raw", "detail_auc +w"]
    wider = pd.concat([extra.assign(metric=extra["metric"] + f"_{i}") for i in range(3)])
    assert "**ctr: logloss**" in all_tables(pd.concat([results, wider]))["ctr"].to_markdown_parts()


def test_all_equal_column_is_not_bolded() -> None:
    results = _results()
    results = results[results["task"] == "knn"].copy()
    results.loc[results["metric"] == "style_consistency", "value"] = 0.5
    table = all_tables(results)["knn"]
    assert all(table.cell(r, "style_consistency raw").rank == 0 for r in table.rows)


def test_ladder_rows_are_shown_but_never_ranked() -> None:
    rows = [("ladder:clean", 0.95), ("ladder:noise=0.3", 0.5), ("swav", 0.7), ("pixels", 0.6),
            ("random", 0.3)]
    results = pd.DataFrame([{"run": "r", "dataset": "homestead", "extractor": e, "variant": "raw",
                             "task": "knn", "metric": "style_consistency", "seed": 0, "value": v}
                            for e, v in rows])
    table = all_tables(results)["knn"]
    ranks = {row: table.cell(row, "style_consistency raw").rank for row, _ in rows}
    assert ranks == {"ladder:clean": 0, "ladder:noise=0.3": 0, "swav": 1, "pixels": 2, "random": 0}


def _by_hand(task: str, extractor: str, metric: str, variant: str) -> tuple[float, float, int]:
    """Mean, sample std and seed count of one cell, straight from the fixture's results.csv."""
    rows = [r for r in (RUN_A / "results.csv").read_text().splitlines()[1:]
            if r.split(",")[2:6] == [extractor, variant, task, metric]]
    values = np.array([float(r.split(",")[-1]) for r in rows])
    if len(values) == 0:
        return np.nan, np.nan, 0
    return values.mean(), (values.std(ddof=1) if len(values) > 1 else np.nan), len(values)


@pytest.mark.parametrize("task, extractor, metric, variant, column", [
    ("classify", "pretrained", "probe_top1", "raw", "probe_top1 raw"),
    ("classify", "moco_v2", "probe_top5", "w", "probe_top5 +w"),
    ("classify", "scratch:resnet18", "finetune_top1", "ft", "finetune_top1"),
    ("ctr", "moco_v2", "ctr_auc", "w", "ctr_auc +w"),
    ("ctr", "moco_v2", "ctr_logloss", "raw", "ctr_logloss raw"),
    ("knn", "pixels", "style_consistency", "w", "style_consistency +w"),
    ("retrieval", "swav", "map@r", "raw", "map@r raw"),
])
def test_table_cells_equal_mean_and_std_computed_from_results_csv(
        run_a: Path, task: str, extractor: str, metric: str, variant: str, column: str) -> None:
    """A second oracle beside the stored expectation: a few cells recomputed by hand (numpy,
    from the raw rows of results.csv) in the written csv and markdown tables."""
    mean, std, n = _by_hand(task, extractor, metric, variant)
    assert n >= 1
    build_report(run_a, html=False)
    table = pd.read_csv(run_a / "tables" / f"{task}.csv").set_index("extractor")
    assert table.loc[extractor, column] == pytest.approx(mean, rel=1e-12)
    if n > 1:
        assert table.loc[extractor, f"{column} std"] == pytest.approx(std, rel=1e-9)
        text = f"{mean:.4f} ± {std:.4f}"
    else:
        assert np.isnan(table.loc[extractor, f"{column} std"])
        text = f"{mean:.4f}"
    markdown = (run_a / "tables" / f"{task}.md").read_text().splitlines()
    header = [c.strip() for c in markdown[0].strip("|").split("|")]
    line = next(x for x in markdown if x.startswith(f"| {extractor} |"))
    cell = [c.strip() for c in line.strip("|").split("|")][header.index(column)]
    assert cell.replace("**", "").replace("<u>", "").replace("</u>", "") == text


def test_best_cell_of_a_column_is_the_best_mean_by_hand(run_a: Path) -> None:
    """Bold marks the best mean of a column (the highest AUC, the lowest log loss) and the rows
    tied with it (tests/test_report_glance.py checks the tie rule); never a reference row."""
    build_report(run_a, html=False)
    markdown = (run_a / "tables" / "ctr.md").read_text().splitlines()
    header = [c.strip() for c in markdown[0].strip("|").split("|")]
    for metric, pick in (("ctr_auc", max), ("ctr_logloss", min)):
        means = {}
        for extractor in {r.split(",")[2] for r in
                          (RUN_A / "results.csv").read_text().splitlines()[1:]}:
            mean, _, n = _by_hand("ctr", extractor, metric, "raw")
            if n and not extractor.startswith("ladder:"):
                means[extractor] = mean
        best = pick(means, key=means.get)
        bold = [x.split("|")[1].strip() for x in markdown[2:]
                if "**" in x.split("|")[1 + header.index(f"{metric} raw")]]
        assert best in bold and "none (ids only)" not in bold, (metric, means, bold)
