"""``bench ams``: the AMS parameter-server path on this machine (or under torchrun), with bytes
per iteration, iteration time and memory per role for each mode, written to a run folder.

    bench ams --mode all --servers 2 --workers 2 --dim 4096 --iterations 10
    bench ams --mode ams --synthetic --dim 512
    bench ams --log impressions.csv --features vectors.npz [--items items.csv]
    torchrun --nproc-per-node 4 -m bench ams --mode ams --servers 2 --workers 2 --run-id r1

Image features come from a dataset and an extractor (default: homestead at the ``quick``
profile, ``pixels``), from your files (an impressions log and an embeddings ``.npz``), or from
the harness's synthetic log. ``--dim`` lifts them to D floats (docs/ams.md).

This is a command, not part of the ctr task: it builds the dataset and extractor through the
registry and writes a run folder through ``bench.run.folder`` (the same ``results.csv`` columns
and ``run.json`` provenance as ``bench run``), then the report, so nothing under
``bench/tasks/`` reaches up to them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core.cache import Cache, atomic_path, write_json
from bench.core.config import PROFILES
from bench.core.metric_info import MetricInfo, cost, count
from bench.run.folder import declare_metrics, environment, write_results, write_run_json
from bench.tasks.ctr.ams.launch import (
    MODES,
    AmsJob,
    AmsOptions,
    collect,
    launch,
    make_job,
    run_rank,
    torchrun_rendezvous,
)
from bench.tasks.ctr.train import CtrConfig, prepare

COST_METRICS = ("image_bytes_per_iter", "image_grad_bytes_per_iter", "key_bytes_per_iter",
                "model_bytes_per_iter", "boundary_bytes_per_iter", "iter_s",
                "worker_peak_rss_mb", "server_peak_rss_mb", "worker_held_mb", "server_held_mb")


AMS_DESCRIPTION = ("Distributed CTR training with image features held by parameter servers: "
                   "bytes and time per iteration per mode.")


class AmsCosts:
    """What the rows of task ``ams`` mean (the ctr rows are the ctr task's own metrics)."""

    name = "ams"
    metrics = (cost("*_bytes_per_iter"), cost("iter_s"), cost("*_mb"),
               MetricInfo("failed", "none", "count"), count("n_iterations"))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(",") if p.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", default="all", choices=[*MODES, "all"],
                        help="which mode to run; all = the three in turn (default)")
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=4096,
                        help="raw feature dimension D (0: the extractor's own; default 4096)")
    parser.add_argument("--hidden", type=_ints, default=(256, 64),
                        help="hidden sizes of the compression sub-model (default 256,64)")
    parser.add_argument("--out-dim", type=int, default=12, help="compressed size (default 12)")
    source = parser.add_argument_group("data (default: --dataset with --extractor)")
    source.add_argument("--dataset", default=None, help="a dataset with an impressions log "
                        "(default: homestead)")
    source.add_argument("--profile", choices=sorted(PROFILES), default=None,
                        help="profile for the dataset and harness (default: the one bench run "
                             "picks: full with CUDA, else default)")
    source.add_argument("--extractor", default="pixels", help="extractor spec for the features")
    source.add_argument("--log", help="impressions file (.csv or .parquet) instead of a dataset")
    source.add_argument("--features", help="embeddings .npz (ids, vectors) for --log")
    source.add_argument("--items", help="optional item table (.csv/.parquet) with id, category...")
    source.add_argument("--synthetic", action="store_true", help="the harness's synthetic log")
    source.add_argument("--plugin", action="append", default=[],
                        help="extra plugin: a .py file or a package folder")
    source.add_argument("--cache", help="cache folder (default: $BENCH_CACHE_DIR or "
                        "./.cache/bench)")
    train = parser.add_argument_group("training (default: the ctr task's profile defaults)")
    train.add_argument("--feature-set", choices=("ad", "behavior", "dicm"))
    train.add_argument("--aggregator")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--iterations", type=int, help="stop after this many iterations")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-eval", action="store_true", help="skip scoring the last day")
    train.add_argument("--record-gradients", action="store_true",
                       help="save iteration 0's gradients under <run>/ranks (equivalence)")
    net = parser.add_argument_group("processes")
    net.add_argument("--rpc-timeout", type=float, default=60.0, help="seconds (default 60)")
    net.add_argument("--sync-timeout", type=float, default=60.0,
                     help="seconds for all-reduces and barriers (default 60)")
    net.add_argument("--timeout", type=float, help="stop the whole run after this many seconds")
    net.add_argument("--threads", type=int, default=1, help="torch threads per process")
    net.add_argument("--host", help="listen on this address (default: loopback only); an "
                     "address other than loopback also needs --allow-remote")
    net.add_argument("--port", type=int, help="rendezvous port with --host")
    net.add_argument("--allow-remote", action="store_true",
                     help="accept a non-loopback --host (or torchrun MASTER_ADDR): PyTorch RPC "
                          "unpickles what it receives, so only on a trusted network")
    parser.add_argument("--out", default="results", help="folder for run outputs")
    parser.add_argument("--run-id", help="name of the run folder")


# -- data --


def _read_table(path: str) -> pd.DataFrame:
    return pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)


def load_source(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame, Any, Any, str,
                                                   str]:
    """(log, item table, known ids, vectors_for(rows), dataset name, extractor name)."""
    from bench.embed.embeddings import Embeddings, align

    if args.synthetic:
        from bench.tasks.ctr.synthetic import make_log

        dataset, embeddings = make_log(seed=0)
        return (dataset.logs["impressions"], dataset.table, dataset.ids,
                lambda rows: embeddings.take(rows), dataset.name, "synthetic")
    if args.log or args.features:
        if not (args.log and args.features):
            raise SystemExit("error: --log and --features go together")
        embeddings = Embeddings.load(args.features)
        table = _read_table(args.items) if args.items else pd.DataFrame({"id": embeddings.ids})
        table["id"] = table["id"].astype(str)
        embeddings = align(embeddings, table["id"].to_numpy(), source=args.features)
        return (_read_table(args.log), table, embeddings.ids,
                lambda rows: embeddings.take(rows), Path(args.log).stem,
                Path(args.features).stem)
    return _from_dataset(args)


def _from_dataset(args: argparse.Namespace) -> tuple:
    from bench.cli.args import run_spec
    from bench.core import registry
    from bench.embed.ranks import embed_dataset
    from bench.run.prepare import build_dataset

    spec = run_spec({"profile": args.profile, "dataset": args.dataset,
                     "plugin": args.plugin}, "results")
    registry.load_plugins(spec.plugins)
    cache = Cache(args.cache)
    dataset = build_dataset(spec, cache)
    if "impressions" not in dataset.logs:
        raise SystemExit(f"error: dataset {spec.dataset!r} has no impressions log")
    extractor = registry.build_extractor(args.extractor, spec.profile)
    with tempfile.TemporaryDirectory(prefix="bench-ams-log-") as log_dir:
        embeddings = embed_dataset(extractor, dataset, cache, Path(log_dir)).embeddings

    def vectors_for(rows: np.ndarray) -> np.ndarray:
        return embeddings.vectors[np.asarray(rows)]

    return (dataset.logs["impressions"], dataset.table, dataset.ids, vectors_for, dataset.name,
            extractor.name)


def build_job(args: argparse.Namespace) -> tuple[AmsJob, dict[str, Any]]:
    """The job every rank runs, and what to record about its source."""
    from bench.core.config import get_profile
    from bench.tasks.ctr import CtrTask

    log, table, known_ids, vectors_for, dataset_name, extractor_name = load_source(args)
    profile = get_profile(args.profile)
    task_options = CtrTask().options(profile)
    overrides = {"image_hidden": args.hidden, "image_dim": args.out_dim}
    for key in ("feature_set", "aggregator", "epochs", "batch_size", "lr"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    config = CtrConfig.from_options(task_options, **overrides)
    data = prepare(log, table, known_ids, int(task_options.get("history_length", 20)),
                   tuple(task_options.get("item_fields", ("category", "coarse_category"))))
    vectors = vectors_for(data.item_rows)
    options = AmsOptions(modes=args.mode, servers=args.servers, workers=args.workers,
                         dim=args.dim or None, max_iterations=args.iterations,
                         evaluate=not args.no_eval, host=args.host, port=args.port,
                         rpc_timeout=args.rpc_timeout, sync_timeout=args.sync_timeout,
                         threads=args.threads, record_gradients=args.record_gradients,
                         allow_remote=args.allow_remote)
    keys = table["id"].astype(str).to_numpy()[data.item_rows]
    job = make_job(data, vectors, config, args.seed, options, keys)
    meta = {"dataset": dataset_name, "extractor": extractor_name, "profile": profile.name,
            "extractor_dim": int(vectors.shape[1]),
            "history_length": int(task_options.get("history_length", 20)),
            "item_fields": list(task_options.get("item_fields", ("category", "coarse_category")))}
    return job, meta


# -- outputs --


def result_rows(result: dict[str, Any], meta: dict[str, Any], run: str,
                seed: int) -> list[dict[str, Any]]:
    """Long-format rows: costs as task ``ams``, scores as task ``ctr``; variant = the mode. A
    mode that failed gets one ``failed`` row and the iterations it did (``n_iterations``,
    never ranked), not partial costs a table would rank against finished modes."""
    rows = []
    base = {"run": run, "dataset": meta["dataset"], "extractor": meta["extractor"],
            "seed": seed}
    for mode, outcome in result["modes"].items():
        if outcome.get("status") != "ok":
            rows += [{**base, "variant": mode, "task": "ams", "metric": "failed", "value": 1.0},
                     {**base, "variant": mode, "task": "ams", "metric": "n_iterations",
                      "value": float(outcome["summary"].get("iterations", 0))}]
            continue
        for metric in COST_METRICS:
            if metric in outcome["summary"]:
                rows.append({**base, "variant": mode, "task": "ams", "metric": metric,
                             "value": float(outcome["summary"][metric])})
        for metric, value in outcome.get("metrics", {}).items():
            rows.append({**base, "variant": mode, "task": "ctr", "metric": metric,
                         "value": float(value)})
    return rows


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A printable table per mode, plus the image-bytes ratio of store-in-server to ams."""
    header = (f"{'mode':<16}{'image B/it':>13}{'grad B/it':>12}{'key B/it':>11}"
              f"{'model B/it':>13}{'iter s':>9}{'RSS w/s MB':>15}{'held w/s MB':>16}"
              f"{'ctr_auc':>9}")
    lines = [header]
    for mode, outcome in result["modes"].items():
        s = outcome["summary"]
        if outcome.get("status") != "ok":
            lines.append(f"{mode:<16}FAILED after {s.get('iterations', 0)} iterations "
                         "(see the errors below and ams.json)")
            continue
        auc = outcome.get("metrics", {}).get("ctr_auc", float("nan"))
        lines.append(
            f"{mode:<16}{s['image_bytes_per_iter']:>13,.0f}{s['image_grad_bytes_per_iter']:>12,.0f}"
            f"{s['key_bytes_per_iter']:>11,.0f}{s['model_bytes_per_iter']:>13,.0f}"
            f"{s['iter_s']:>9.3f}"
            f"{s.get('worker_peak_rss_mb', 0):>8.0f}/{s.get('server_peak_rss_mb', 0):<6.0f}"
            f"{s.get('worker_held_mb', 0):>9.1f}/{s.get('server_held_mb', 0):<6.1f}"
            f"{auc:>9.4f}")
    modes = result["modes"]
    failed = [m for m in ("ams", "store-in-server") if m in modes
              and modes[m].get("status") != "ok"]
    if failed:
        lines.append(f"image bytes per iteration, store-in-server / ams: not computed "
                     f"({', '.join(failed)} failed)")
    elif "ams" in modes and "store-in-server" in modes:
        ams = modes["ams"]["summary"]
        raw = modes["store-in-server"]["summary"]
        if ams["image_bytes_per_iter"] > 0:
            lines.append(f"image bytes per iteration, store-in-server / ams: "
                         f"{raw['image_bytes_per_iter'] / ams['image_bytes_per_iter']:.1f}x "
                         f"(with gradients and keys: {raw['boundary_bytes_per_iter'] / max(ams['boundary_bytes_per_iter'], 1):.1f}x)")
    return lines


def write_run(run_dir: Path, result: dict[str, Any], meta: dict[str, Any], run: str,
              seed: int, command: dict[str, Any] | None = None) -> None:
    """results.csv and run.json (``bench.run.folder``, as ``bench run`` writes them),
    ams_iterations.csv, ams.json, then the report."""
    from bench.tasks.ctr import CtrTask

    rows = result_rows(result, meta, run, seed)
    write_results(run_dir, rows)
    iterations = [row for outcome in result["modes"].values() for row in outcome["iterations"]]
    with atomic_path(run_dir / "ams_iterations.csv") as tmp:
        pd.DataFrame(iterations).to_csv(tmp, index=False)
    write_json(run_dir / "ams.json", {**result, **meta})
    book: dict[str, dict[str, Any]] = {}
    errors = [{"where": e["name"], "error": e["error"]} for e in result["errors"]]
    for task in (AmsCosts, CtrTask):
        names = [row["metric"] for row in rows if row["task"] == task.name]
        for problem in declare_metrics(book, task.name, task, names):
            errors.append({"where": f"task {task.name}", "error": str(problem)})
    write_run_json(run_dir, {
        "run": run, "status": "complete" if result["status"] == "ok" else "failed",
        "command": {"command": "ams", **(command or {})}, "profile": meta["profile"],
        "dataset": meta["dataset"], "extractors": [meta["extractor"]], "tasks": ["ams", "ctr"],
        "seeds": [seed],
        "config": {"ams": result["options"], "train": result["config"],
                   "raw_dim": result["raw_dim"], "source": {
                       k: meta[k] for k in ("extractor_dim", "history_length", "item_fields")
                       if k in meta}},
        "metrics": book, "environment": environment(),
        "task_info": {"ams": {"description": AMS_DESCRIPTION},
                      "ctr": {"description": CtrTask.description}},
        "timings": {"ams": {"wall_s": result.get("wall_s", float("nan"))}},
        "errors": errors})
    try:
        from bench.report import build_report

        build_report(run_dir)
    except Exception as error:  # noqa: BLE001 - the figures are written already
        print(f"[ams] report not built: {error}", file=sys.stderr)


def command_record(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's settings, for run.json (``command``)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
            if not callable(v)}


def check_network(args: argparse.Namespace) -> str | None:
    """Why this command must not run (a non-loopback address without ``--allow-remote``), or
    None; with ``--allow-remote`` the warning of what it exposes is printed first."""
    from bench.tasks.ctr.ams.launch import is_loopback, remote_refusal, remote_warning

    host = args.host
    if host is None and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    if host is None or is_loopback(host):
        return None
    if not args.allow_remote:
        return remote_refusal(host)
    print(remote_warning(host, args.port), file=sys.stderr)
    return None


def main(args: argparse.Namespace) -> int:
    refusal = check_network(args)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    job, meta = build_job(args)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return _torchrun(job, meta, args)
    run = args.run_id or f"{dt.datetime.now():%Y%m%d-%H%M%S}-ams"
    run_dir = Path(args.out) / run
    result = launch(job, run_dir, timeout=args.timeout)
    write_run(run_dir, result, meta, run, args.seed, command_record(args))
    print("\n".join(summary_lines(result)))
    print(f"results: {run_dir}")
    for error in result["errors"]:
        print(f"error: {error['error']}", file=sys.stderr)
    return 0 if result["status"] == "ok" else 1


def _torchrun(job: AmsJob, meta: dict[str, Any], args: argparse.Namespace) -> int:
    """Under torchrun: this process is one rank; rank 0 writes the run folder."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world != job.world:
        raise SystemExit(f"error: torchrun started {world} processes but --servers "
                         f"{job.options.servers} --workers {job.options.workers} need {job.world}")
    run = args.run_id or "ams-torchrun"
    run_dir = Path(args.out) / run
    status = run_rank(rank, job, torchrun_rendezvous(), run_dir)
    if rank == 0:
        result = collect(run_dir, job)
        write_run(run_dir, result, meta, run, args.seed, command_record(args))
        print("\n".join(summary_lines(result)))
    return status
