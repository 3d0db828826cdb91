"""Launching the AMS path: roles, rendezvous, the modes in turn, faults and clean-up.

Ranks ``0 .. S-1`` are servers (``server0`` ...), ranks ``S .. S+W-1`` workers (``worker0`` ...).
Every rank joins one gloo process group (with a sub-group per role for the all-reduces) and the
TensorPipe RPC agent (for worker <-> server requests). ``launch`` spawns all ranks on this machine
with ``torch.multiprocessing`` (spawn); under ``torchrun`` each process calls ``run_rank`` itself.

Networking: a one-machine launch rendezvous through files in a private temporary folder (c10d's
``TCPStore`` would listen on every interface) and pins gloo and TensorPipe to the loopback
interface, so nothing listens beyond 127.0.0.1. ``host`` (the CLI's ``--host``) switches to a TCP
rendezvous at that address; under torchrun, torchrun's store (``MASTER_ADDR``/``MASTER_PORT``).
PyTorch RPC unpickles what it receives, so an address other than loopback is refused unless
``allow_remote`` (the CLI's ``--allow-remote``) says the network is trusted.

Faults: every wait is bounded (RPC timeouts, gloo timeouts, servers ping silent workers), a
worker that loses a server stops with an error naming it, each rank writes its record (finished
modes and the iterations done so far) to ``<out>/ranks/<name>.json`` before it exits, and the
launcher terminates whatever is still running a grace period after the first failure.

Why one module of about 510 lines: roles, rendezvous, the modes, faults and clean-up are one
lifecycle of the same processes and share their state (the temporary folder, the stores, the
process handles); split, each part would reach into the others'.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from multiprocessing.connection import wait as wait_any
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc

from bench.core.cache import save_npz, write_json
from bench.core.distributed import leave_process
from bench.tasks.ctr import data as ctr_data
from bench.tasks.ctr.ams import server as ams_server
from bench.tasks.ctr.ams.accounting import Meter, peak_rss_mb, summarize
from bench.tasks.ctr.ams.features import lift, shard_of
from bench.tasks.ctr.ams.server import AmsError, Shard
from bench.tasks.ctr.ams.worker import RemoteTower, Worker, brief, explain, wait
from bench.tasks.ctr.train import CtrConfig, build_model, evaluate, image_vectors

MODES = ("store-in-worker", "store-in-server", "ams")


@dataclass
class AmsOptions:
    """How to run: modes (in turn, in the same processes), roles, limits and timeouts."""

    modes: tuple[str, ...] = ("ams",)
    servers: int = 2
    workers: int = 2
    dim: int | None = None  # raw feature dimension D (None: the extractor's own)
    lift_seed: int = 0
    max_iterations: int | None = None  # cap on training iterations (None: all epochs)
    evaluate: bool = True  # worker0 scores the last day with the harness's metrics
    host: str | None = None  # None: loopback only; else TCP rendezvous at this address
    port: int | None = None
    rpc_timeout: float = 60.0  # one request from a worker to a server
    sync_timeout: float = 60.0  # one all-reduce among workers or among servers
    start_timeout: float = 600.0  # every process started and joined; a mode's start barrier
    threads: int = 1  # torch threads per process
    record_gradients: bool = False  # save iteration 0's gradients (equivalence checks)
    allow_remote: bool = False  # accept a non-loopback host (RPC unpickles what it receives)

    def __post_init__(self) -> None:
        if self.host is not None and not is_loopback(self.host) and not self.allow_remote:
            raise ValueError(remote_refusal(self.host))
        self.modes = tuple(MODES if self.modes in ("all", ("all",)) else
                           ([self.modes] if isinstance(self.modes, str) else self.modes))
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ValueError(f"unknown AMS mode(s) {unknown}; choose from {MODES} or 'all'")
        if self.servers < 1 or self.workers < 1:
            raise ValueError(f"need at least one server and one worker, got {self.servers} "
                             f"servers and {self.workers} workers")

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> AmsOptions:
        """From task options: known keys only; ``mode`` is accepted for ``modes``."""
        options = dict(options or {})
        if "mode" in options:
            options["modes"] = options.pop("mode")
        return cls(**{f.name: options[f.name] for f in fields(cls) if f.name in options})


@dataclass
class AmsJob:
    """Everything every rank needs: the harness's index tensors, the raw image table (rows =
    ``data.item_rows``, already normalised as the harness does), image ids, settings."""

    data: ctr_data.CtrData
    table: torch.Tensor
    keys: np.ndarray
    config: CtrConfig
    seed: int
    options: AmsOptions = field(default_factory=AmsOptions)

    @property
    def world(self) -> int:
        return self.options.servers + self.options.workers

    def name(self, rank: int) -> str:
        servers = self.options.servers
        return f"server{rank}" if rank < servers else f"worker{rank - servers}"


def make_job(data: ctr_data.CtrData, vectors: np.ndarray, config: CtrConfig, seed: int,
             options: AmsOptions, keys: np.ndarray | None = None) -> AmsJob:
    """A job from the harness's data and the image vectors of ``data.item_rows``."""
    if config.feature_set == "none":
        raise ValueError("feature set 'none' uses no image features: nothing for AMS to serve")
    raw = lift(vectors, options.dim, options.lift_seed)
    keys = np.arange(len(raw)).astype(str) if keys is None else np.asarray(keys).astype(str)
    if len(keys) != len(raw) or len(raw) != len(data.item_rows):
        raise ValueError(f"{len(raw)} vectors and {len(keys)} ids for {len(data.item_rows)} "
                         "log items")
    return AmsJob(data, image_vectors(raw), keys, config, seed, options)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1); any other name is not."""
    import ipaddress

    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def remote_refusal(host: str) -> str:
    return (f"AMS host {host!r} is not a loopback address: PyTorch RPC unpickles what it "
            "receives, so anyone who can reach it could run code as this user; pass "
            "--allow-remote (task option ams.allow_remote) on a trusted network only")


def remote_warning(host: str, port: int | None) -> str:
    """What ``--allow-remote`` exposes, printed before anything listens."""
    where = f"{host}:{port}" if port else f"{host} (free ports)"
    return (f"warning: --allow-remote: the AMS rendezvous store, gloo and the TensorPipe RPC "
            f"agent listen on {where}; RPC unpickles every request, so any process that can "
            "reach that address can run code as this user. Use a trusted, firewalled network.")


# -- one rank --


@dataclass
class Rendezvous:
    store: str  # file://PATH, tcp://HOST:PORT or env://
    rpc: str  # file://PATH or tcp://HOST:PORT
    loopback: bool


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on ``host`` (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def local_rendezvous(folder: str, host: str | None = None, port: int | None = None
                     ) -> Rendezvous:
    if host is None:
        return Rendezvous(f"file://{folder}/c10d", f"file://{folder}/rpc", loopback=True)
    port = port or free_port(host)
    return Rendezvous(f"tcp://{host}:{port}", f"tcp://{host}:{free_port(host)}",
                      loopback=host in ("127.0.0.1", "localhost", "::1"))


def torchrun_rendezvous() -> Rendezvous:
    """Under torchrun both the process group and RPC meet at torchrun's store
    (``env://``: MASTER_ADDR, MASTER_PORT); a ``tcp://`` RPC store would wait for a server
    that torchrun's agent-store mode never starts."""
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    return Rendezvous("env://", "env://", loopback=host in ("127.0.0.1", "localhost", "::1"))


def _quiet() -> None:
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"torch\.distributed.*")


def _pin_loopback() -> None:
    names = {name for _, name in socket.if_nameindex()}
    for loopback in ("lo", "lo0"):
        if loopback in names:
            os.environ["GLOO_SOCKET_IFNAME"] = loopback
            os.environ["TP_SOCKET_IFNAME"] = loopback
            return


def _connect(job: AmsJob, rank: int, rdv: Rendezvous) -> tuple[Any, Any]:
    """Join the process group and the RPC agent; returns the (servers, workers) groups."""
    opts, world = job.options, job.world
    timeout = timedelta(seconds=opts.start_timeout)  # imports are slow on a loaded machine
    if rdv.store.startswith("file://"):
        store = dist.FileStore(rdv.store[len("file://"):], world)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                                timeout=timeout)
    else:
        dist.init_process_group("gloo", init_method=rdv.store, rank=rank, world_size=world,
                                timeout=timeout)
    sync = timedelta(seconds=opts.sync_timeout)
    servers = dist.new_group(list(range(opts.servers)), timeout=sync)
    workers = dist.new_group(list(range(opts.servers, world)), timeout=sync)
    backend = rpc.TensorPipeRpcBackendOptions(init_method=rdv.rpc, rpc_timeout=opts.rpc_timeout,
                                              num_worker_threads=max(16, 4 * opts.workers))
    rpc.init_rpc(job.name(rank), rank=rank, world_size=world, rpc_backend_options=backend)
    return servers, workers


def _model_parts(job: AmsJob) -> Any:
    """The harness's model with the harness's initialisation for this seed. The raw table only
    fills a buffer (parameters do not depend on it), so a one-row stand-in is passed."""
    stand_in = np.zeros((1, job.table.shape[1]), dtype=np.float32)
    return build_model(job.data, stand_in, job.config, job.seed)


def _serve_mode(job: AmsJob, rank: int, mode: str, group: Any, log: Any) -> dict[str, Any]:
    opts = job.options
    owner = shard_of(job.keys, opts.servers)
    items = torch.from_numpy(np.flatnonzero(owner == rank)) if mode != "store-in-worker" \
        else torch.zeros(0, dtype=torch.long)
    table = job.table[items].clone()  # this server's rows only, not a view of the whole table
    projection = optimizer = None
    if mode == "ams":
        projection = _model_parts(job).image_tower.projection
        optimizer = torch.optim.Adam(projection.parameters(), lr=job.config.lr,
                                     weight_decay=job.config.weight_decay)
    shard = Shard(name=job.name(rank), mode=mode, items=items, table=table,
                  n_items=len(job.keys), workers=opts.workers, projection=projection,
                  optimizer=optimizer, group=group, servers=opts.servers,
                  timeout=0.8 * opts.rpc_timeout, record_gradients=opts.record_gradients)
    ams_server.serve(shard)
    dist.barrier()  # every server serves this mode before any worker asks
    log(f"{mode}: serving {len(items)} images of dimension {table.shape[1]}")
    workers = [job.name(r) for r in range(opts.servers, job.world)]
    shard.wait_finished(lambda missing: _ping(job.name(rank), [workers[w] for w in missing],
                                              min(5.0, opts.rpc_timeout)))
    return {**shard.report(), "recorded": shard.recorded}


def _ping(me: str, peers: list[str], timeout: float) -> None:
    futures = [(p, rpc.rpc_async(p, ams_server.rpc_ping, timeout=timeout)) for p in peers]
    for peer, future in futures:
        try:
            future.wait()
        except Exception as error:
            raise AmsError(f"{me}: {peer} stopped answering: {brief(error)}") from error


def _work_mode(job: AmsJob, rank: int, mode: str, group: Any, current: dict[str, Any],
               log: Any) -> dict[str, Any]:
    opts = job.options
    index = rank - opts.servers
    servers = [job.name(r) for r in range(opts.servers)]
    model = _model_parts(job)
    source = model.image_tower
    meter = Meter()
    tower = RemoteTower(mode=mode, dim=source.dim, raw_dim=int(job.table.shape[1]),
                        owner=torch.from_numpy(shard_of(job.keys, opts.servers)),
                        servers=servers, worker=index, meter=meter, timeout=opts.rpc_timeout,
                        projection=None if mode == "ams" else source.projection,
                        table=job.table.clone() if mode == "store-in-worker" else None)
    model.image_tower = tower  # the harness's DICM, with the tower of this mode
    worker = Worker(rank=index, workers=opts.workers, model=model, tower=tower, data=job.data,
                    config=job.config, seed=job.seed, group=group,
                    max_iterations=opts.max_iterations,
                    record_gradients=opts.record_gradients, log=log)
    current["iterations"] = worker.iterations  # kept (as far as it got) if the mode fails
    try:
        dist.barrier()  # the servers serve this mode
        stats = worker.train()
        metrics = evaluate(model, job.data) if index == 0 and opts.evaluate else {}
        eval_bytes = meter.take()
        futures = [(s, rpc.rpc_async(s, ams_server.rpc_finish, args=(mode, index),
                                     timeout=opts.rpc_timeout)) for s in servers]
        for server, future in futures:
            wait(future, server, "finish")
    except Exception as error:
        ranks = {s: r for r, s in enumerate(servers)}
        raise explain(error, job.name(rank), mode, len(worker.iterations), servers, ranks,
                      min(5.0, opts.rpc_timeout)) from error
    return {**worker.report(mode, job.name(rank)), "train": stats, "metrics": metrics,
            "eval_bytes": eval_bytes, "recorded": worker.recorded}


def run_rank(rank: int, job: AmsJob, rdv: Rendezvous, outdir: str | os.PathLike) -> int:
    """One process: connect, play this rank's role in every mode, write its record. Returns
    the exit status (0 ok, 1 failed)."""
    _quiet()
    torch.set_num_threads(job.options.threads)
    if rdv.loopback:
        _pin_loopback()
    name = job.name(rank)
    role = "server" if rank < job.options.servers else "worker"
    folder = Path(outdir) / "ranks"
    record: dict[str, Any] = {"name": name, "rank": rank, "role": role, "pid": os.getpid(),
                              "status": "running", "modes": []}

    def log(message: str) -> None:
        print(f"[ams] {name} {message}", file=sys.stderr, flush=True)

    ok = False
    try:
        groups = _connect(job, rank, rdv)
        for mode in job.options.modes:
            current: dict[str, Any] = {"name": name, "role": role, "mode": mode,
                                       "status": "running", "iterations": []}
            record["modes"].append(current)
            if role == "server":
                result = _serve_mode(job, rank, mode, groups[0], log)
            else:
                result = _work_mode(job, rank, mode, groups[1], current,
                                    lambda m, mode=mode: log(f"{mode}: {m}"))
            _save_gradients(folder, name, mode, result.pop("recorded", {}))
            current.update(result, status="ok")
            write_json(folder / f"{name}.json", record)
        ok = True
        record["status"] = "ok"
    except BaseException as error:  # noqa: BLE001 - recorded, then the process exits
        record.update(status="failed", error=f"{type(error).__name__}: {error}")
        for mode in record["modes"]:
            if mode["status"] == "running":
                mode.update(status="failed", memory={"peak_rss_mb": peak_rss_mb()})
        log(f"failed: {error}")
        if role == "server":  # stay briefly, so workers get this error and can probe us
            time.sleep(min(5.0, job.options.rpc_timeout))
    write_json(folder / f"{name}.json", record)
    if ok and rdv.store == "env://":  # torchrun: rank 0 may not share this file system
        _gather_records(record, folder)
    _shutdown(ok, job.options.rpc_timeout)
    return 0 if ok else 1


def _save_gradients(folder: Path, name: str, mode: str,
                    recorded: dict[str, torch.Tensor]) -> None:
    if recorded:
        save_npz(folder / f"{name}-{mode}-gradients.npz",
                 **{k: v.detach().numpy() for k, v in recorded.items()})


def _gather_records(record: dict[str, Any], folder: Path) -> None:
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, record)
    if dist.get_rank() == 0:
        for other in gathered:
            write_json(folder / f"{other['name']}.json", other)


def _shutdown(ok: bool, timeout: float) -> None:
    try:
        if ok:
            rpc.shutdown(graceful=True, timeout=timeout)
            dist.destroy_process_group()
        else:
            rpc.shutdown(graceful=False)
    except Exception:  # noqa: BLE001 - nothing left to save; the process exits next
        pass


def _spawn_entry(rank: int, job: AmsJob, rdv: Rendezvous, outdir: str) -> None:
    # skip interpreter teardown: RPC threads of dead peers must not hold us, and gloo's
    # threads must not abort us (leave_process says why)
    leave_process(run_rank(rank, job, rdv, outdir))


# -- the launcher --


def launch(job: AmsJob, outdir: str | os.PathLike | None = None, timeout: float | None = None,
           log: Any = None) -> dict[str, Any]:
    """Spawn every rank on this machine, wait (bounded), clean up, and collect the records."""
    log = log or (lambda message: print(f"[ams] {message}", file=sys.stderr, flush=True))
    outdir = Path(outdir or tempfile.mkdtemp(prefix="ams-"))
    (outdir / "ranks").mkdir(parents=True, exist_ok=True)
    for stale in (outdir / "ranks").glob("*"):
        stale.unlink()
    folder = tempfile.mkdtemp(prefix="ams-rendezvous-")
    rdv = local_rendezvous(folder, job.options.host, job.options.port)
    context = torch.multiprocessing.get_context("spawn")
    processes = []
    start = time.monotonic()
    try:
        for rank in range(job.world):
            process = context.Process(target=_spawn_entry, name=job.name(rank), daemon=True,
                                      args=(rank, job, rdv, str(outdir)))
            process.start()
            processes.append(process)
            log(f"{job.name(rank)} pid {process.pid}")
        _watch(processes, job, timeout, log)
    finally:
        _terminate(processes, log)
        shutil.rmtree(folder, ignore_errors=True)
    result = collect(outdir, job, processes)
    result["wall_s"] = time.monotonic() - start
    write_json(outdir / "ams.json", result)
    return result


def _watch(processes: list[Any], job: AmsJob, timeout: float | None, log: Any) -> None:
    """Wait for the processes; after the first failure (or the last worker's exit) give the
    others a bounded grace period, then return so the leftovers get terminated."""
    grace = max(job.options.rpc_timeout, job.options.sync_timeout) + 15.0
    deadline = time.monotonic() + timeout if timeout else float("inf")
    reported: set[str] = set()
    while any(p.is_alive() for p in processes):
        wait_any([p.sentinel for p in processes if p.is_alive()], timeout=0.5)
        now = time.monotonic()
        for process in processes:
            if process.exitcode not in (None, 0) and process.name not in reported:
                reported.add(process.name)
                log(f"{process.name} exited: {describe_exit(process.exitcode)}")
                deadline = min(deadline, now + grace)
        workers = processes[job.options.servers:]
        if all(p.exitcode is not None for p in workers):
            deadline = min(deadline, now + 15.0)  # servers follow their workers
        if now > deadline:
            log("stopping the processes still running")
            return


def _terminate(processes: list[Any], log: Any) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(5)
        if process.is_alive():
            log(f"{process.name} ignored SIGTERM; killing it")
            process.kill()
            process.join(5)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def collect(outdir: Path, job: AmsJob, processes: list[Any] | None = None) -> dict[str, Any]:
    """Merge the ranks' records: per mode, the summary, per-iteration totals, metrics."""
    records = {}
    for rank in range(job.world):
        path = outdir / "ranks" / f"{job.name(rank)}.json"
        if path.exists():
            records[job.name(rank)] = json.loads(path.read_text())
    errors = [{"name": name, "error": r["error"]} for name, r in records.items()
              if r.get("status") == "failed"]
    errors.sort(key=lambda e: not e["name"].startswith("worker"))  # workers name the server
    exits = []
    for process in processes or []:
        exits.append({"name": process.name, "pid": process.pid, "exitcode": process.exitcode,
                      "exit": describe_exit(process.exitcode)})
        if process.exitcode != 0 and records.get(process.name, {}).get("status") != "failed":
            errors.append({"name": process.name,
                           "error": f"{process.name} (pid {process.pid}) "
                                    f"{describe_exit(process.exitcode)}"})
    ranks = [m for r in records.values() for m in r.get("modes", [])]
    modes = {}
    for mode in job.options.modes:
        merged = summarize(ranks, mode)
        lead = next((m for m in ranks if m["name"] == job.name(job.options.servers)
                     and m["mode"] == mode), {})
        states = [m.get("status") for m in ranks if m["mode"] == mode]
        merged.update(metrics=lead.get("metrics", {}), train=lead.get("train", {}),
                      status="ok" if len(states) == job.world and set(states) == {"ok"}
                      else "failed")
        modes[mode] = merged
    ok = not errors and len(records) == job.world and all(
        r.get("status") == "ok" for r in records.values())
    return {"status": "ok" if ok else "failed", "errors": errors, "processes": exits,
            "options": asdict(job.options), "config": asdict(job.config), "seed": job.seed,
            "raw_dim": int(job.table.shape[1]), "items": int(job.table.shape[0]),
            "train_impressions": int(len(job.data.train)), "modes": modes,
            "ranks": str(outdir / "ranks")}


def train_and_evaluate(data: ctr_data.CtrData, vectors: np.ndarray, config: CtrConfig,
                       seed: int, options: dict[str, Any] | AmsOptions | None = None,
                       keys: np.ndarray | None = None
                       ) -> tuple[dict[str, float], dict[str, float]]:
    """The harness's ``train_and_evaluate`` on the AMS path (one mode, ``ams`` by default):
    the same metrics, plus the AMS figures (``ams_*``) among the training stats."""
    opts = options if isinstance(options, AmsOptions) else AmsOptions.from_dict(options)
    if len(opts.modes) != 1:
        raise ValueError(f"the ctr backend runs one AMS mode, got {opts.modes}")
    result = launch(make_job(data, vectors, config, seed, opts, keys))
    if result["status"] != "ok":
        raise AmsError("; ".join(e["error"] for e in result["errors"]) or "AMS run failed")
    outcome = result["modes"][opts.modes[0]]
    stats = {**outcome["train"], **{f"ams_{k}": float(v)
                                    for k, v in outcome["summary"].items()}}
    return outcome["metrics"], stats
