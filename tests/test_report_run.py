"""``bench run`` saves the report's picture artifacts, and ``bench report RUN_DIR`` rebuilds the
whole report from the run folder alone (identical tables after deleting every output)."""

from __future__ import annotations

import shutil

from bench.cli.main import main
from bench.report import artifacts
from bench.run import pictures

PLUGIN = """
import numpy as np
import pandas as pd

from bench.core.data import Dataset, array_image_source
from bench.core.registry import dataset


@dataset("report_tiny")
def load(cache, **_):
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 3
    images = rng.integers(0, 40, size=(300, 8, 8, 3), dtype=np.uint8)
    images[..., 0] += (80 * labels).astype(np.uint8)[:, None, None]
    table = pd.DataFrame({"id": [f"i{i}" for i in range(300)],
                          "split": np.where(np.arange(300) % 2, "test", "train"),
                          "category": [f"c{v}" for v in labels]})
    return Dataset("report_tiny", table, array_image_source(images), 8, "report-tiny-1")
"""


def test_run_saves_artifacts_and_report_rebuilds_from_the_folder(tmp_path, capsys) -> None:
    plugin = tmp_path / "report_tiny.py"
    plugin.write_text(PLUGIN)
    assert main(["run", "--profile", "quick", "--dataset", "report_tiny", "--plugin", str(plugin),
                 "--extractors", "random,pixels", "--tasks", "knn", "--out", str(tmp_path),
                 "--run-id", "r",
                 "--no-report"]) == 0  # artifacts are saved even without the report
    run = tmp_path / "r"
    assert not (run / "report.html").exists()
    assert main(["report", str(run)]) == 0
    sample = artifacts.load_sample(run)
    assert sample["extractors"].tolist() == ["random", "pixels"]
    assert len(sample["ids"]) == len(sample["label__category"]) == 150
    grid = artifacts.load_grid(run)
    assert grid["neighbor_images_1"].shape == (3, pictures.TOP_K, 8, 8, 3)  # one per label
    for name in ("report.html", "plots/knn_consistency.png", "plots/embedding_map.png",
                 "plots/knn_grid.png", "tables/knn.md", "summary.md"):
        assert (run / name).is_file(), name
    table = (run / "tables" / "knn.md").read_text()

    for name in ("report.html", "summary.md"):
        (run / name).unlink()
    shutil.rmtree(run / "plots")
    shutil.rmtree(run / "tables")
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {run / 'report.html'}" in printed
    assert "ctr_auc: not run" in printed
    assert (run / "tables" / "knn.md").read_text() == table
    assert (run / "plots" / "knn_grid.png").is_file()
    # the red channel separates the labels: every query's neighbours all share its label, so
    # both rows are perfect with a zero-width interval (no query differs from another), so they
    # tie and both are bold (the tie group); chance: 3 labels of 100 items each, 99 / 299
    perfect = "**1.0000 [1.0000, 1.0000]**"
    chance = f"{99 / 299:.4f}"
    for name in ("pixels", "random"):
        assert f"| {name} | {perfect} | {perfect} | {chance} |" in table
