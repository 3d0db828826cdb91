"""Runs that resume: cells, rows and settings kept across sessions (``bench.run.resume``), and a
real SIGINT followed by ``bench run --resume`` giving the rows of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.cli.main import main
from bench.core.config import get_profile
from bench.run.resume import ROW_KEY, config_changes, load_previous, merge_rows, run_config

pytestmark = pytest.mark.usefixtures("one_thread")

NAPPER = textwrap.dedent('''
    """An extractor (mean colours on a 4 x 4 grid) that, with ``gate=1``, waits in embed until
    the test opens its gate (the file named by $NAPPER_GATE; it says it waits by creating
    ``$NAPPER_GATE.waiting``), and a small dataset, as a plugin file for ``bench run --plugin``."""
    import os
    import time
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from bench.core.data import Dataset, array_image_source
    from bench.core.registry import dataset, extractor


    class Napper:
        dim, modalities = 48, ("image",)

        def __init__(self, tag, gate):
            self.name, self.gate = f"napper-{tag}", gate

        def config(self):
            return {}

        def fit(self, dataset, ctx):
            pass

        def embed(self, dataset, rows):
            gate = os.environ.get("NAPPER_GATE")
            if self.gate and gate:
                Path(gate + ".waiting").touch()
                while not Path(gate).exists():
                    time.sleep(0.02)
            images = dataset.images(rows).astype(np.float32)
            n, size = len(images), images.shape[1]
            grid = images.reshape(n, 4, size // 4, 4, size // 4, 3).mean(axis=(2, 4))
            return grid.reshape(n, 48)


    @extractor("napper")
    def make(options, profile):
        return Napper(options["tag"], options.get("gate") == "1")


    @dataset("naps")
    def naps(cache, image_size=16):
        rng = np.random.default_rng(0)
        labels = np.arange(90) % 3
        images = rng.integers(0, 80, (90, image_size, image_size, 3), dtype=np.uint8)
        images[..., 0] += (60 * labels).astype(np.uint8)[:, None, None]
        table = pd.DataFrame({"id": [f"n{i:02d}" for i in range(90)],
                              "split": np.where(np.arange(90) % 5 == 0, "test", "train"),
                              "category": labels.astype(str)})
        return Dataset("naps", table, array_image_source(images), image_size, "naps-1")
    ''')
EXTRACTORS = "pixels,napper:tag=a,napper:tag=b,gate=1,napper:tag=c"
ARGS = ["--profile", "quick", "--dataset", "naps", "--extractors", EXTRACTORS,
        "--tasks", "knn,classify", "--seeds", "2", "--no-report"]


def _rows(path: Path) -> pd.DataFrame:
    rows = pd.read_csv(path).drop(columns=["run"])
    return rows.sort_values(ROW_KEY).reset_index(drop=True)


def test_resume_after_sigint_computes_only_the_missing_cells(tmp_path, capsys):
    plugin = tmp_path / "napper.py"
    plugin.write_text(NAPPER)
    out, cache = tmp_path / "out", tmp_path / "cache"
    common = [*ARGS, "--plugin", str(plugin), "--out", str(out), "--cache", str(cache)]
    gate = tmp_path / "gate"  # napper-b waits in embed until the test creates this file
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", NAPPER_GATE=str(gate))
    command = [sys.executable, "-m", "bench", "run"]
    # Ctrl-C's default action in the child even when this test runs in a background job,
    # whose shell makes it (and so every child) ignore SIGINT
    process = subprocess.Popen([*command, *common, "--run-id", "r"], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    info_path = out / "r" / "run.json"
    waiting = Path(str(gate) + ".waiting")
    while process.poll() is None and not waiting.exists():  # pixels and napper-a are done
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()[1][-2000:]
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"interrupted: 12 of 12 planned cells done, 2 extractors not started; "
        f"{info_path} says status: interrupted. Finish it with: bench run --resume r "
        f"--out {out}")
    info = json.loads(info_path.read_text())
    assert info["status"] == "interrupted"
    assert info["not_started"] == ["napper:tag=b,gate=1", "napper:tag=c"]
    assert {c["extractor"] for c in info["cells"]} == {"pixels", "napper:tag=a"}

    gate.touch()  # the resumed session embeds napper-b without waiting
    done = subprocess.run([*command, "--resume", "r", "--out", str(out), "--cache", str(cache)],
                          env=env, text=True, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pixels: every cell done in an earlier session" in done.stderr
    assert "napper-a: every cell done in an earlier session" in done.stderr
    info = json.loads(info_path.read_text())
    assert info["status"] == "complete" and info["missing"] == 0 and not info["not_started"]
    assert [s["cells_computed"] for s in info["sessions"]] == [12, 12]  # only the missing 12

    assert main(["run", *common, "--run-id", "whole"]) == 0
    capsys.readouterr()
    resumed, whole = _rows(out / "r" / "results.csv"), _rows(out / "whole" / "results.csv")
    assert len(whole) == len(resumed) > 0
    pd.testing.assert_frame_equal(resumed, whole)


def test_merge_rows_keeps_every_column_and_the_newest_duplicate():
    old = pd.DataFrame([{"run": "r", "extractor": "a", "variant": "raw", "task": "knn",
                         "metric": "m", "seed": 0, "value": 1.0, "ci_low": 0.9}])
    new = [{"run": "r", "extractor": "a", "variant": "raw", "task": "knn", "metric": "m",
            "seed": 0, "value": 2.0},
           {"run": "r", "extractor": "b", "variant": "raw", "task": "knn", "metric": "m",
            "seed": 0, "value": 3.0}]
    rows = merge_rows(old, new, ["run", "extractor", "variant", "task", "metric", "seed",
                                 "value"])
    assert rows["value"].tolist() == [2.0, 3.0] and "ci_low" in rows.columns


def test_settings_that_change_the_numbers_are_named():
    quick = run_config(get_profile("quick"), "homestead", {"seed": 0})
    other = get_profile("quick")
    other.train["*"]["width"] = 3
    changed = run_config(other, "homestead", {"seed": 1})
    assert config_changes(quick, changed) == ["dataset_options.seed 0 -> 1",
                                              "profile.train.*.width 16 -> 3"]
    more_seeds = get_profile("quick")
    more_seeds.__dict__["seeds"] = 3  # extractors, tasks and seeds only add cells
    assert config_changes(quick, run_config(more_seeds, "homestead", {"seed": 0})) == []


def test_a_damaged_run_json_is_moved_aside(tmp_path, capsys):
    (tmp_path / "run.json").write_text('{"cells": [')
    (tmp_path / "results.csv").write_text("run,extractor\n")
    assert load_previous(tmp_path, {}) is None
    assert (tmp_path / "run.json.corrupt").exists()
    assert (tmp_path / "results.csv.corrupt").exists()
    assert "damaged cache entry" in capsys.readouterr().err


def test_resume_needs_a_recorded_run(tmp_path, capsys):
    assert main(["run", "--resume", "nope", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: nothing to resume: no run 'nope' under {tmp_path} "
        f"({tmp_path / 'nope' / 'run.json'} does not exist)")


@pytest.mark.parametrize("status", ["running", "interrupted"])
def test_a_killed_or_interrupted_session_is_resumed_not_trusted(tmp_path, capsys, plugins,
                                                               status):
    """Cells still ``pending`` (a SIGKILL leaves ``status: running``) run again."""
    args = ["run", "--profile", "quick", "--dataset", "digits", "--extractors", "pixels",
            "--tasks", "knn", "--out", str(tmp_path), "--run-id", "k", "--no-report"]
    assert main(args) == 0
    path = tmp_path / "k" / "run.json"
    info = json.loads(path.read_text())
    info["status"] = status
    info["cells"][0]["state"] = "pending"
    path.write_text(json.dumps(info))
    assert main(args) == 0
    info = json.loads(path.read_text())
    assert info["sessions"][-1]["cells_computed"] == 1 and info["status"] == "complete"
    capsys.readouterr()
