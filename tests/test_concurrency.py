"""Nothing lost when two sessions meet: one session per run folder, one process per cache
entry, ranks with the same settings; a changed dataset or a full disk is said in one line."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.cli.main import main
from bench.core.cache import Busy, exclusive
from bench.core.distributed import World
from bench.embed.embeddings import EmbeddingError
from bench.embed.ranks import embed_dataset, same_settings
from tests.conftest import tiny_dataset
from tests.test_embed_store import CountingExtractor
from tests.test_resume import NAPPER

REPO = Path(__file__).resolve().parents[1]


def test_a_second_bench_run_on_a_busy_run_id_is_refused_naming_the_holder(tmp_path):
    """Two real ``bench run`` processes on one run id: the second is refused (exit 2) with the
    first one's PID while the first waits in embed; the first then finishes with its rows."""
    plugin = tmp_path / "napper.py"
    plugin.write_text(NAPPER)
    gate = tmp_path / "gate"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", NAPPER_GATE=str(gate))
    command = [sys.executable, "-m", "bench", "run", "--profile", "quick", "--dataset", "naps",
               "--tasks", "knn", "--plugin", str(plugin), "--no-report", "--out",
               str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--run-id", "shared"]
    first = subprocess.Popen([*command, "--extractors", "napper:tag=a,gate=1"], env=env,
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    waiting = Path(str(gate) + ".waiting")
    while first.poll() is None and not waiting.exists():
        time.sleep(0.02)
    assert first.poll() is None, first.communicate()[1][-2000:]
    second = subprocess.run([*command, "--extractors", "pixels"], env=env, text=True,
                            capture_output=True, cwd=REPO, timeout=300)
    assert second.returncode == 2
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith("error: run shared is in use by another session "
                           f"(PID {first.pid}, since "), line
    gate.touch()
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    rows = pd.read_csv(tmp_path / "out" / "shared" / "results.csv")
    assert set(rows["extractor"]) == {"napper-a"}
    info = json.loads((tmp_path / "out" / "shared" / "run.json").read_text())
    assert info["status"] == "complete" and "refusals" not in info


def test_exclusive_waits_or_refuses_and_a_closed_holder_frees_the_lock(tmp_path):
    path = tmp_path / "entry.lock"
    with exclusive(path):
        with pytest.raises(Busy, match=f"PID {os.getpid()}"):
            with exclusive(path, wait=False):
                pass
    with exclusive(path, wait=False):  # released when the block ended
        pass


def _folder(root: Path) -> Path:
    root.mkdir(parents=True)
    rows = []
    for i in range(24):
        Image.new("RGB", (16, 16), (10 * i, 80 * (i % 3), 200)).save(root / f"i{i}.png")
        rows.append({"id": f"x{i}", "path": f"i{i}.png", "category": "abc"[i % 3],
                     "split": "test" if i % 4 == 0 else "train"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def test_a_run_id_refuses_a_dataset_whose_content_changed(tmp_path, capsys):
    root = _folder(tmp_path / "items")
    args = ["run", "--profile", "quick", "--dataset", f"folder:{root}", "--extractors",
            "pixels", "--tasks", "knn", "--no-report", "--out", str(tmp_path / "out"),
            "--cache", str(tmp_path / "cache"), "--run-id", "r"]
    assert main(args) == 0
    manifest = pd.read_csv(root / "manifest.csv", dtype=str)
    manifest["category"] = manifest["category"].sample(frac=1, random_state=1).to_numpy()
    manifest.to_csv(root / "manifest.csv", index=False)
    capsys.readouterr()
    assert main(args) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "run r was computed on other content of dataset folder:items (changed: " \
           "manifest.csv)" in line and "start a new --run-id" in line
    info = json.loads((tmp_path / "out" / "r" / "run.json").read_text())
    assert info["status"] == "complete" and len(info["refusals"]) == 1  # the rows stay


def test_a_full_disk_is_one_line_and_the_earlier_results_stay(tmp_path, capsys, monkeypatch):
    from bench.run import folder

    args = ["run", "--profile", "quick", "--dataset", "digits", "--extractors", "pixels,random",
            "--tasks", "knn", "--no-report", "--out", str(tmp_path / "out"), "--cache",
            str(tmp_path / "cache"), "--run-id", "full"]
    real, calls = folder.atomic_path, []

    def filling(path):
        calls.append(path)
        if len(calls) > 6 and Path(path).name == "results.csv":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path)

    monkeypatch.setattr(folder, "atomic_path", filling)
    assert main(args) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"error: cannot write {tmp_path / 'out' / 'full'}/results.csv: "
                                "No space left on device (it needs ")
    assert "MB free there); the files written before are intact" in lines[-1]
    assert "Traceback" not in "\n".join(lines)
    rows = pd.read_csv(tmp_path / "out" / "full" / "results.csv")
    assert len(rows) > 0 and set(rows["extractor"]) <= {"pixels", "random"}
    info = json.loads((tmp_path / "out" / "full" / "run.json").read_text())
    assert info["status"] == "failed" and "No space left" in info["errors"][-1]["error"]


class Gated(CountingExtractor):
    """Waits in ``fit`` until ``release`` is set (None: never waits)."""

    def __init__(self, entered=None, release=None):
        super().__init__()
        self.entered, self.release = entered, release

    def fit(self, dataset, ctx):
        if self.release is not None:
            self.entered.set()
            assert self.release.wait(60)


def test_two_sessions_sharing_a_cache_entry_embed_it_once(cache, tmp_path):
    """The first holds the entry's lock while it fits; the second waits for it, then reads the
    merged file instead of writing into the same shard folder."""
    data = tiny_dataset(40)
    entered, release = threading.Event(), threading.Event()
    holder, waiter = Gated(entered, release), Gated()
    results = {}
    first = threading.Thread(target=lambda: results.setdefault(
        "a", embed_dataset(holder, data, cache, tmp_path / "a", progress=False)))
    first.start()
    assert entered.wait(60)
    second = threading.Thread(target=lambda: results.setdefault(
        "b", embed_dataset(waiter, data, cache, tmp_path / "b", progress=False)))
    second.start()  # it blocks on the entry's lock: the first is inside it, fitting
    release.set()
    first.join(60)
    second.join(60)
    assert not results["a"].cached and results["b"].cached  # embedded once, then a hit
    assert holder.calls and waiter.calls == []
    np.testing.assert_array_equal(results["a"].embeddings.vectors,
                                  results["b"].embeddings.vectors)


def test_ranks_given_different_shard_sizes_are_refused_alike():
    extractor = CountingExtractor()
    same_settings(extractor, [{"--shard-size": 16}, {"--shard-size": 16}])
    with pytest.raises(EmbeddingError, match=r"counting: the ranks were given different "
                                             r"--shard-size \(rank 0: 16, rank 1: 32\)"):
        same_settings(extractor, [{"--shard-size": 16}, {"--shard-size": 32}])


def test_embed_dataset_gathers_the_shard_size_before_planning(cache, tmp_path, monkeypatch):
    """Every rank raises the same error before rank 0 writes a plan (a World whose gather
    returns another rank's settings stands in for torchrun)."""
    class TwoRanks(World):
        def gather(self, value):
            return [value, {**value, "--shard-size": 99}]

    data = tiny_dataset(20)
    with pytest.raises(EmbeddingError, match="different --shard-size"):
        embed_dataset(CountingExtractor(), data, cache, tmp_path / "log",
                      world=TwoRanks(0, 2, 0), shard_size=8, progress=False)
    assert not list((Path(cache.root) / "embeddings").glob("*.shards"))


def test_a_resumed_session_counts_the_extractors_that_never_started(tmp_path, caplog):
    """After a SIGKILL the stopped session has no cells for the extractors it never reached:
    the resume line counts them instead of saying nothing is left."""
    args = ["run", "--profile", "quick", "--dataset", "digits", "--tasks", "knn", "--no-report",
            "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--run-id", "k"]
    assert main([*args, "--extractors", "pixels"]) == 0
    caplog.clear()
    with caplog.at_level("INFO", logger="bench"):
        assert main([*args, "--extractors", "pixels,random"]) == 0
    assert "resuming (0 planned cells not done, 1 of 2 extractors with cells to compute)" in \
        caplog.text


def test_a_full_disk_under_any_writer_of_the_run_folder_is_one_line(tmp_path, capsys,
                                                                     monkeypatch):
    """Evidence files fill the disk first in a real run (seen on a 64 kB tmpfs): still one line
    and a failed session, never a traceback."""
    from bench.scoring import verdicts

    args = ["run", "--profile", "quick", "--dataset", "digits", "--extractors", "pixels",
            "--tasks", "knn", "--no-report", "--out", str(tmp_path / "out"), "--cache",
            str(tmp_path / "cache"), "--run-id", "ev"]
    real = verdicts.save_npz

    def full(path, **arrays):
        if "evidence" in Path(path).parts:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, **arrays)

    monkeypatch.setattr(verdicts, "save_npz", full)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        f"error: cannot write {tmp_path / 'out' / 'ev'}: No space left on device, ")
    info = json.loads((tmp_path / "out" / "ev" / "run.json").read_text())
    assert info["status"] == "failed"
