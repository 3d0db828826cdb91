"""The AMS path: sharding and accounting units, then real launches of 2 servers and 2 workers
(CPU, loopback) through ``bench ams``: the three modes with their bytes checked against an
independent count, one iteration equal to the in-process model, and a killed server.

The launches run in subprocesses with timeouts, so a hang fails the test instead of blocking.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.core.cache import load_npz
from bench.tasks.ctr.ams.accounting import Meter, nbytes, summarize
from bench.tasks.ctr.ams.features import lift, shard_of
from bench.tasks.ctr.ams.launch import AmsOptions, make_job
from bench.tasks.ctr.model import loss
from bench.tasks.ctr.synthetic import make_log
from bench.tasks.ctr.train import CtrConfig, build_model, prepare

REPO = Path(__file__).resolve().parent.parent
DIM = 128
TIMEOUTS = ["--rpc-timeout", "20", "--sync-timeout", "20"]


# ---------------------------------------------------------------- units (no processes)


def test_shard_of_is_crc32_modulo_servers():
    keys = [f"c{i:05d}" for i in range(200)]
    owner = shard_of(keys, 3)
    assert owner.tolist() == [zlib.crc32(k.encode()) % 3 for k in keys]
    assert np.bincount(owner, minlength=3).min() > 40  # no server left empty
    with pytest.raises(ValueError):
        shard_of(keys, 0)


def test_lift_keeps_same_dim_and_is_seeded():
    x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    assert np.array_equal(lift(x, 8), x)
    assert np.array_equal(lift(x, None), x)
    y = lift(x, 64, seed=1)
    assert y.shape == (500, 64) and y.dtype == np.float32 and (y >= 0).all()
    assert np.array_equal(y, lift(x, 64, seed=1)) and not np.array_equal(y, lift(x, 64, seed=2))
    design = np.c_[y, np.ones(len(y))]  # the lift keeps x: a linear read-out recovers it
    coef, *_ = np.linalg.lstsq(design, x, rcond=None)
    residual = ((x - design @ coef) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert residual < 0.05


def test_nbytes_and_meter():
    a, b = torch.zeros(3, 4), torch.zeros(5, dtype=torch.int64)
    assert nbytes((a, [b, {"x": a}], "text")) == 48 + 40 + 48
    meter = Meter()
    meter.add("image", a)
    meter.add("key", b)
    meter.add("key", b)
    assert meter.take() == {"image_bytes": 48, "image_grad_bytes": 0, "key_bytes": 80,
                            "model_bytes": 0}
    assert meter.take()["key_bytes"] == 0
    with pytest.raises(KeyError):
        meter.add("other", a)


def test_summarize_totals_over_ranks_and_skips_warmup():
    def it(i, image, seconds):
        return {"iteration": i, "loss": 1.0, "seconds": seconds, "image_bytes": image,
                "image_grad_bytes": 0, "key_bytes": 8, "model_bytes": 100}

    workers = [{"name": f"worker{w}", "role": "worker", "mode": "ams",
                "iterations": [it(0, 10, 9.0), it(1, 20 + w, 1.0 + w), it(2, 30, 2.0)],
                "memory": {"peak_rss_mb": 5.0 + w, "held_mb": 1.0}} for w in range(2)]
    servers = [{"name": "server0", "role": "server", "mode": "ams",
                "iterations": [{"sync_bytes": 7}] * 3,
                "memory": {"peak_rss_mb": 3.0, "held_mb": 2.0}}]
    out = summarize(workers + servers, "ams")
    assert [r["image_bytes"] for r in out["iterations"]] == [20, 41, 60]
    assert out["iterations"][1]["model_bytes"] == 207 and out["iterations"][1]["seconds"] == 2.0
    s = out["summary"]
    assert s["image_bytes_per_iter"] == pytest.approx((41 + 60) / 2)
    assert s["iter_s"] == pytest.approx(2.0) and s["worker_peak_rss_mb"] == 6.0
    assert s["server_held_mb"] == 2.0 and s["boundary_bytes_per_iter"] == pytest.approx(66.5)


def test_options_and_job_are_validated():
    assert AmsOptions(modes="all").modes == ("store-in-worker", "store-in-server", "ams")
    assert AmsOptions.from_dict({"mode": "ams", "servers": 3, "bogus": 1}).servers == 3
    with pytest.raises(ValueError, match="unknown AMS mode"):
        AmsOptions(modes="in-the-cloud")
    with pytest.raises(ValueError, match="at least one server"):
        AmsOptions(servers=0)
    dataset, embeddings = make_log(n_users=10, n_items=20, n_days=2, per_day=3)
    data = prepare(dataset.logs["impressions"], dataset.table, dataset.ids, 5)
    with pytest.raises(ValueError, match="nothing for AMS to serve"):
        make_job(data, embeddings.take(data.item_rows), CtrConfig(feature_set="none"), 0,
                 AmsOptions())


def test_ctr_task_backend_ams_calls_the_ams_path(monkeypatch):
    import bench.tasks.ctr as ctr
    import bench.tasks.ctr.ams as ams

    calls = []

    def fake(data, vectors, config, seed, options, keys=None):
        calls.append({"options": options, "keys": keys, "n": len(vectors), "seed": seed})
        return {"ctr_auc": 0.75}, {}

    monkeypatch.setattr(ams, "train_and_evaluate", fake)
    dataset, embeddings = make_log(n_users=10, n_items=20, n_days=2, per_day=3)
    options = {**ctr.CtrTask.defaults["quick"], "backend": "ams",
               "ams": {"servers": 1, "workers": 2}}
    data = ctr.load(dataset, options)
    vectors = embeddings.take(data.item_rows)
    assert ctr.cached_score(data, vectors, dataset, options, "dicm", "mqap", 3, None) == \
        ({"ctr_auc": 0.75}, None)  # the AMS path keeps its predictions remote
    assert len(calls) == 1 and calls[0]["options"] == {"servers": 1, "workers": 2}
    assert calls[0]["seed"] == 3 and calls[0]["n"] == len(vectors)
    assert calls[0]["keys"].tolist() == dataset.ids[data.item_rows].tolist()
    baseline, predictions = ctr.cached_score(data, None, dataset, options, "none", "mqap", 0,
                                             None)
    assert len(calls) == 1 and "ctr_auc" in baseline  # ids only: trained in process
    assert len(predictions["ctr"]) == len(data.test)


# ---------------------------------------------------------------- launches


def _inputs(folder: Path) -> dict[str, Path]:
    """A tiny impressions log, item table and 16-d embeddings, as a user would give them."""
    dataset, embeddings = make_log(n_users=40, n_items=80, n_days=3, per_day=5, seed=0)
    paths = {"log": folder / "log.csv", "items": folder / "items.csv",
             "features": folder / "features.npz"}
    dataset.logs["impressions"].to_csv(paths["log"], index=False)
    dataset.table.to_csv(paths["items"], index=False)
    embeddings.save(paths["features"])
    return paths


def _command(paths: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench", "ams", "--log", str(paths["log"]),
            "--features", str(paths["features"]), "--items", str(paths["items"]),
            "--dim", str(DIM), "--hidden", "32,16", "--profile", "quick", "--batch-size", "128",
            "--out", str(out), "--run-id", "run", *TIMEOUTS, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}


def _reference(paths: dict[str, Path], result: dict) -> tuple:
    """The in-process model on the same data, seed and settings: (model, data, config)."""
    from bench.embed.embeddings import Embeddings

    log, table = pd.read_csv(paths["log"]), pd.read_csv(paths["items"])
    embeddings = Embeddings.load(paths["features"])
    data = prepare(log, table, embeddings.ids, result["history_length"],
                   tuple(result["item_fields"]))
    config = CtrConfig.from_options(result["config"])
    raw = lift(embeddings.take(data.item_rows), DIM, 0)
    return build_model(data, raw, config, result["seed"]), data, config


def _global_batches(data, config, seed: int, n: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.as_tensor(data.train, dtype=torch.long)
    return list(rows[torch.randperm(len(rows), generator=generator)].split(config.batch_size))[:n]


@pytest.fixture(scope="module")
def three_modes(tmp_path_factory):
    """One launch running store-in-worker, store-in-server and ams in turn (2 iterations)."""
    folder = tmp_path_factory.mktemp("ams")
    paths = _inputs(folder)
    done = subprocess.run(_command(paths, folder / "out", "--mode", "all", "--epochs", "2",
                                   "--iterations", "2", "--record-gradients"),
                          capture_output=True, text=True, timeout=240, cwd=folder, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    run = folder / "out" / "run"
    return paths, run, json.loads((run / "ams.json").read_text()), done.stdout


def test_three_modes_report_bytes_that_match_an_independent_count(three_modes):
    paths, run, result, stdout = three_modes
    assert result["status"] == "ok" and not result["errors"]
    assert all(p["exitcode"] == 0 for p in result["processes"])
    model, data, config = _reference(paths, result)
    sub = sum(p.numel() for p in model.image_tower.projection.parameters())
    dense = sum(p.numel() for p in model.parameters()) - sub
    for i, batch in enumerate(_global_batches(data, config, result["seed"], 2)):
        distinct = 0  # images each worker's share touches (ad and history, padding as item 0)
        for part in batch.tensor_split(2):
            b = data.batch(part)
            distinct += len(torch.unique(torch.cat([b["item"], b["history"].flatten()])))
        expected = {"store-in-worker": (0, 0, 0), "store-in-server": (DIM * 4, 0, 8),
                    "ams": (12 * 4, 12 * 4, 8)}
        for mode, (image, grad, key) in expected.items():
            row = result["modes"][mode]["iterations"][i]
            assert row["image_bytes"] == distinct * image, mode
            assert row["image_grad_bytes"] == distinct * grad, mode
            assert row["key_bytes"] == distinct * key, mode
            assert row["model_bytes"] == 2 * 4 * (dense + sub), mode  # 2 workers / 2 servers
    # the servers' own count of what they sent equals the workers' count of what they got
    for mode in ("store-in-server", "ams"):
        served = [0, 0]
        for name in ("server0", "server1"):
            record = json.loads((run / "ranks" / f"{name}.json").read_text())
            steps = next(m for m in record["modes"] if m["mode"] == mode)["iterations"]
            for step in steps[:2]:
                served[step["iteration"]] += step["served_image_bytes"]
        assert served == [r["image_bytes"] for r in result["modes"][mode]["iterations"]]
    ams, raw = (result["modes"][m]["summary"] for m in ("ams", "store-in-server"))
    assert raw["image_bytes_per_iter"] / ams["image_bytes_per_iter"] == pytest.approx(DIM / 12)
    assert "store-in-server / ams" in stdout
    rows = pd.read_csv(run / "results.csv")
    costs = rows[rows["task"] == "ams"]
    assert set(costs["variant"]) == {"store-in-worker", "store-in-server", "ams"}
    assert {"image_bytes_per_iter", "iter_s", "worker_peak_rss_mb",
            "server_held_mb"} <= set(costs["metric"])
    assert (rows[rows["task"] == "ctr"]["metric"] == "ctr_auc").sum() == 3
    assert (run / "ams_iterations.csv").exists() and (run / "summary.md").exists()


def test_ams_run_folder_has_the_shape_of_a_bench_run_folder(three_modes, tmp_path, capsys):
    """``bench ams`` and ``bench run`` write their folders through one writer: the same
    results.csv columns and the same run.json provenance keys, metric meaning included."""
    from bench.cli.main import main
    from bench.run.folder import PROVENANCE_KEYS, RESULT_COLUMNS

    _, ams_run, _, _ = three_modes
    assert main(["run", "--profile", "quick", "--dataset", "digits", "--extractors", "pixels",
                 "--tasks", "knn", "--out", str(tmp_path), "--run-id", "r", "--no-report",
                 "--cache", str(tmp_path / "cache")]) == 0
    bench_run = tmp_path / "r"
    for folder in (ams_run, bench_run):
        assert list(pd.read_csv(folder / "results.csv").columns) == RESULT_COLUMNS
    ams_info, run_info = (json.loads((f / "run.json").read_text()) for f in (ams_run, bench_run))
    for info in (ams_info, run_info):
        assert set(PROVENANCE_KEYS) <= set(info), set(PROVENANCE_KEYS) - set(info)
        assert info["status"] == "complete" and not info["errors"]
    assert ams_info["environment"].keys() == run_info["environment"].keys()
    assert ams_info["environment"]["git_revision"] == run_info["environment"]["git_revision"]
    assert ams_info["command"]["command"] == "ams" and ams_info["command"]["dim"] == DIM
    metrics = ams_info["metrics"]
    assert set(metrics) == set(pd.read_csv(ams_run / "results.csv")["metric"])
    assert metrics["image_bytes_per_iter"]["direction"] == "lower"
    assert metrics["ctr_auc"] == {"direction": "higher", "kind": "score", "unit": "user",
                                  "tasks": ["ctr"]}
    assert not any(record.get("undeclared") for record in metrics.values())


def test_nothing_under_tasks_reaches_up_to_the_registry_config_or_report():
    """Tasks see vectors, never the run, the profile or the report; only the task contract
    (bench/tasks/__init__.py) touches the registry, to register the tasks it checked."""
    import ast

    up = ("bench.core.registry", "bench.core.config", "bench.report", "bench.run", "bench.cli")
    contract = REPO / "bench" / "tasks" / "__init__.py"
    for path in (REPO / "bench" / "tasks").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if path == contract and name == "bench.core.registry":
                    continue
                assert not name.startswith(up), f"{path.relative_to(REPO)} imports {name}"


def test_one_iteration_equals_the_in_process_model(three_modes):
    paths, run, result, _ = three_modes
    model, data, config = _reference(paths, result)
    batch = _global_batches(data, config, result["seed"], 1)[0]
    value = loss(model(data.batch(batch)), data.labels[batch])
    value.backward()
    reference = {name: p.grad.numpy() for name, p in model.named_parameters()}
    sub_names = [f"image_tower.projection.{n}" for n, _ in
                 model.image_tower.projection.named_parameters()]
    for mode in ("store-in-worker", "store-in-server", "ams"):
        assert result["modes"][mode]["iterations"][0]["loss"] == pytest.approx(
            float(value.detach()), abs=1e-5), mode
        worker = load_npz(run / "ranks" / f"worker0-{mode}-gradients.npz")
        for name, grad in reference.items():
            if mode == "ams" and name in sub_names:
                assert name not in worker  # the sub-model is not on the workers
                continue
            np.testing.assert_allclose(worker[name], grad, atol=1e-5, err_msg=f"{mode} {name}")
    for server in ("server0", "server1"):  # every replica holds the whole model's gradient
        grads = load_npz(run / "ranks" / f"{server}-ams-gradients.npz")
        assert len(grads) == len(sub_names)
        for name in sub_names:
            short = "submodel." + name.removeprefix("image_tower.projection.")
            np.testing.assert_allclose(grads[short], reference[name], atol=1e-5,
                                       err_msg=f"{server} {name}")
            assert np.abs(reference[name]).max() > 0  # a gradient that can disagree


def _reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def test_killed_server_stops_the_workers_with_its_name(tmp_path):
    """Kill server1 (SIGKILL) during the ams mode, after the other modes finished: workers
    stop within a bounded time naming server1, nothing hangs, the finished modes are kept."""
    paths = _inputs(tmp_path)
    process = subprocess.Popen(
        _command(paths, tmp_path / "out", "--mode", "all", "--epochs", "400",
                 "--iterations", "60", "--no-eval"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=_env())
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(process.stderr, lines), daemon=True).start()
    pids, killed, seen = {}, None, []
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            seen.append(line)
            found = re.match(r"\[ams\] (server\d|worker\d) pid (\d+)", line)
            if found:
                pids[found.group(1)] = int(found.group(2))
            if killed is None and re.search(r"worker\d ams: iteration 1/", line):
                os.kill(pids["server1"], signal.SIGKILL)
                killed = time.monotonic()
        assert killed is not None, "".join(seen[-30:])
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stopped = time.monotonic() - killed
    assert code == 1
    assert stopped < 60, f"took {stopped:.0f} s to stop after the kill"
    text = "".join(seen)
    assert re.search(r"AMS server server1 \(rank 1\) is unreachable; worker\d stopped in mode "
                     r"ams", text), text[-3000:]
    result = json.loads((tmp_path / "out" / "run" / "ams.json").read_text())
    assert result["status"] == "failed"
    assert "server1 (rank 1) is unreachable" in result["errors"][0]["error"]
    assert any("killed by SIGKILL" in e["error"] for e in result["errors"])
    assert result["modes"]["store-in-worker"]["status"] == "ok"
    assert result["modes"]["store-in-server"]["status"] == "ok"
    assert result["modes"]["store-in-server"]["summary"]["iterations"] == 60
    assert result["modes"]["ams"]["status"] == "failed"
    assert result["modes"]["ams"]["summary"]["iterations"] >= 1  # what it did is kept
    rows = pd.read_csv(tmp_path / "out" / "run" / "results.csv")
    assert {"store-in-worker", "store-in-server"} <= set(rows["variant"])
    for pid in pids.values():  # every process is gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
def test_full_run_auc_agrees_with_the_in_process_harness():
    """A whole training run (2 epochs, 3 seeds): AMS and in-process AUCs agree within the
    seed noise (the two differ only by float summation order)."""
    from bench.tasks.ctr.ams import train_and_evaluate as on_ams
    from bench.tasks.ctr.train import train_and_evaluate as in_process

    dataset, embeddings = make_log(seed=0)
    data = prepare(dataset.logs["impressions"], dataset.table, dataset.ids, 10)
    vectors = embeddings.take(data.item_rows)
    config = CtrConfig(epochs=2, batch_size=512, image_hidden=(32,))
    local, remote = [], []
    for seed in range(3):
        local.append(in_process(data, vectors, config, seed)[0]["ctr_auc"])
        remote.append(on_ams(data, vectors, config, seed, {"mode": "ams"},
                             dataset.ids[data.item_rows])[0]["ctr_auc"])
    noise = np.std(local, ddof=1)
    print(f"ctr_auc in process {np.mean(local):.4f} +- {noise:.4f} {local}; "
          f"ams {np.mean(remote):.4f} +- {np.std(remote, ddof=1):.4f} {remote}")
    assert abs(np.mean(local) - np.mean(remote)) <= max(2 * noise, 1e-3), (local, remote)
