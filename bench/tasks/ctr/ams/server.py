"""An AMS parameter server: a shard of the raw image table and, in ``ams`` mode, a replica of
the compression sub-model (the DICM image projection, e.g. D-256-64-12) that it trains together
with the other servers.

Workers reach a server through the ``rpc_*`` functions at the bottom; each runs in an RPC thread
of the server process against the one ``Shard`` that process serves.

The ``ams`` protocol for training iteration ``v``: every worker calls ``compress(v, ids,
train=True)`` once on every server (possibly with no ids), then ``backward(v, grad)`` once,
sending the gradients of the vectors it received. When all workers' gradients for ``v`` are in,
the server sums them in worker order, all-reduces the sum among the servers (every replica then
holds the gradient of the whole model), steps its optimizer and moves to ``v + 1``. A request
for ``v + 1`` waits for that step, so every forward on every server uses parameters of the
same version: the training is the one-process training, only placed elsewhere.
Workers must send ``backward`` to all servers before waiting for any answer: a server's step
waits for its peers' steps, which wait for the other ``backward`` calls.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc

from bench.tasks.ctr.ams.accounting import held_mb, nbytes, peak_rss_mb


class AmsError(RuntimeError):
    """A failure of the AMS path; the message names the server or worker concerned."""


class Shard:
    """What one server holds for one mode: table rows of its images, the sub-model replica."""

    def __init__(self, *, name: str, mode: str, items: torch.Tensor, table: torch.Tensor,
                 n_items: int, workers: int, projection: torch.nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None, group: Any = None,
                 servers: int = 1, timeout: float = 60.0, record_gradients: bool = False):
        self.name, self.mode, self.workers, self.servers = name, mode, workers, servers
        self.table = table
        self.local = torch.full((n_items,), -1, dtype=torch.long)
        self.local[items] = torch.arange(len(items))
        self.projection, self.optimizer, self.group = projection, optimizer, group
        self.timeout, self.record_gradients = timeout, record_gradients
        self.cond = threading.Condition()
        self.version = 0
        self.graphs: dict[int, torch.Tensor] = {}
        self.grads: dict[int, list[torch.Tensor]] = {}
        self.finished: set[int] = set()
        self.failure: str | None = None
        self.traffic: dict[int, Counter[str]] = defaultdict(Counter)
        self.steps: list[dict[str, Any]] = []
        self.recorded: dict[str, torch.Tensor] = {}

    # -- requests from workers (RPC threads) --

    def lookup(self, worker: int, iteration: int, ids: torch.Tensor,
               train: bool) -> torch.Tensor:
        """Raw D-float rows (``store-in-server``); traffic outside training counts as -1."""
        out = self.table[self.rows(ids)]
        self.count(iteration if train else -1, key=ids, image=out)
        return out

    def compress(self, worker: int, iteration: int, ids: torch.Tensor,
                 train: bool) -> torch.Tensor:
        """Compressed vectors of ``ids`` at parameter version ``iteration`` (``ams``); with
        ``train`` the graph is kept for this worker's ``backward``."""
        self.wait_for_version(iteration, f"compress from worker{worker}")
        x = self.table[self.rows(ids)]
        if not train:
            with torch.no_grad():
                out = self.projection(x)
            self.count(-1, key=ids, image=out)
            return out
        with torch.enable_grad():
            out = self.projection(x)
        with self.cond:
            if worker in self.graphs or worker in self.grads:
                raise AmsError(f"{self.name}: two training requests from worker{worker} in "
                               f"iteration {iteration}")
            self.graphs[worker] = out
        self.count(iteration, key=ids, image=out)
        return out.detach()

    def backward(self, worker: int, iteration: int, grad: torch.Tensor) -> None:
        """Gradients of this worker's vectors; the last worker's call steps the sub-model."""
        with self.cond:
            self.check(iteration, f"backward from worker{worker}")
            out = self.graphs.pop(worker, None)
        if out is None:
            raise AmsError(f"{self.name}: backward from worker{worker} without a compress in "
                           f"iteration {iteration}")
        self.count(iteration, image_grad=grad)
        params = list(self.projection.parameters())
        grads = torch.autograd.grad(out, params, grad, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        with self.cond:
            self.grads[worker] = grads
            if len(self.grads) == self.workers:
                self.step(iteration)

    def finish(self, worker: int) -> None:
        with self.cond:
            self.finished.add(worker)
            self.cond.notify_all()

    # -- internals --

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        local = self.local[ids]
        if (local < 0).any():
            missing = ids[local < 0]
            raise AmsError(f"{self.name}: {len(missing)} image ids are not on this server, "
                           f"e.g. item {int(missing[0])}; workers and servers disagree on "
                           "the sharding")
        return local

    def count(self, iteration: int, **tensors: torch.Tensor) -> None:
        with self.cond:
            for category, tensor in tensors.items():
                self.traffic[iteration][category] += nbytes(tensor)

    def check(self, iteration: int, what: str) -> None:
        if self.failure is not None:
            raise AmsError(self.failure)
        if iteration != self.version:
            raise AmsError(f"{self.name}: {what} for iteration {iteration}, but the sub-model "
                           f"is at iteration {self.version}")

    def wait_for_version(self, iteration: int, what: str) -> None:
        """Block until the sub-model has finished iteration ``iteration - 1`` (bounded)."""
        with self.cond:
            ready = self.cond.wait_for(
                lambda: self.failure is not None or self.version >= iteration, self.timeout)
            if not ready:
                waiting = sorted(set(range(self.workers)) - set(self.grads))
                raise AmsError(f"{self.name}: {what} waited {self.timeout:.0f}s for iteration "
                               f"{iteration - 1} to finish; no gradients from worker(s) "
                               f"{waiting}")
            self.check(iteration, what)

    def step(self, iteration: int) -> None:
        """Sum the workers' gradients, all-reduce among servers, optimizer step (lock held)."""
        start = time.perf_counter()
        params = list(self.projection.parameters())
        summed = [sum(self.grads[w][i] for w in sorted(self.grads)) for i in range(len(params))]
        flat = torch.cat([g.reshape(-1) for g in summed])
        if self.servers > 1:
            try:
                dist.all_reduce(flat, group=self.group)
            except Exception as error:  # a peer server is gone or stuck
                silent = self.silent_peers()
                self.failure = (f"{self.name}: sub-model all-reduce among servers failed in "
                                f"iteration {iteration}"
                                + (f" ({', '.join(silent)} not answering)" if silent else "")
                                + f": {error}")
                self.cond.notify_all()
                raise AmsError(self.failure) from error
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        if self.record_gradients and iteration == 0:
            self.recorded = {f"submodel.{n}": p.grad.clone()
                             for n, p in self.projection.named_parameters()}
        self.optimizer.step()
        self.steps.append({"iteration": iteration, "sync_bytes": nbytes(flat),
                           "step_s": time.perf_counter() - start})
        self.grads.clear()
        self.version = iteration + 1
        self.cond.notify_all()

    def silent_peers(self, timeout: float = 3.0) -> list[str]:
        """Other servers that do not answer a ping (to name the one that is gone)."""
        peers = [f"server{s}" for s in range(self.servers) if f"server{s}" != self.name]
        return probe(peers, timeout)

    def wait_finished(self, ping: Any, poll: float = 2.0) -> None:
        """Block until every worker said ``finish``; fail when a worker stops answering."""
        with self.cond:
            while len(self.finished) < self.workers and self.failure is None:
                if self.cond.wait(poll):
                    continue
                missing = sorted(set(range(self.workers)) - self.finished)
                self.cond.release()
                try:
                    ping(missing)
                finally:
                    self.cond.acquire()
            if self.failure is not None:
                raise AmsError(self.failure)

    def report(self) -> dict[str, Any]:
        """This server's record for the mode: per-iteration sync and served bytes, memory."""
        iterations = []
        for step in self.steps:
            served = self.traffic.get(step["iteration"], Counter())
            iterations.append({**step, **{f"served_{k}_bytes": int(v)
                                          for k, v in served.items()}})
        if self.mode == "store-in-server":  # no steps: one row per iteration with traffic
            iterations = [{"iteration": i, "sync_bytes": 0,
                           **{f"served_{k}_bytes": int(v) for k, v in self.traffic[i].items()}}
                          for i in sorted(k for k in self.traffic if k >= 0)]
        return {"name": self.name, "role": "server", "mode": self.mode,
                "images": int((self.local >= 0).sum()), "iterations": iterations,
                "memory": {"peak_rss_mb": peak_rss_mb(),
                           "held_mb": held_mb(self.table, self.projection, self.optimizer)}}


_SHARD: Shard | None = None


def serve(shard: Shard | None) -> None:
    """Make ``shard`` the one this process answers for (None: answer nothing)."""
    global _SHARD
    _SHARD = shard


def _serving(mode: str) -> Shard:
    shard = _SHARD
    if shard is None or shard.mode != mode:
        name = rpc.get_worker_info().name
        raise AmsError(f"{name}: not serving mode {mode!r} now")
    return shard


def rpc_lookup(mode: str, worker: int, iteration: int, ids: torch.Tensor,
               train: bool) -> torch.Tensor:
    return _serving(mode).lookup(worker, iteration, ids, train)


def rpc_compress(mode: str, worker: int, iteration: int, ids: torch.Tensor,
                 train: bool) -> torch.Tensor:
    return _serving(mode).compress(worker, iteration, ids, train)


def rpc_backward(mode: str, worker: int, iteration: int, grad: torch.Tensor) -> None:
    _serving(mode).backward(worker, iteration, grad)


def rpc_finish(mode: str, worker: int) -> None:
    _serving(mode).finish(worker)


def rpc_ping() -> str:
    """Liveness probe; answers with this process's RPC name."""
    return rpc.get_worker_info().name


def probe(peers: list[str], timeout: float) -> list[str]:
    """Peers that do not answer a ping within ``timeout`` seconds."""
    futures = [(p, rpc.rpc_async(p, rpc_ping, timeout=timeout)) for p in peers]
    silent = []
    for peer, future in futures:
        try:
            future.wait()
        except Exception:  # noqa: BLE001 - any failure to answer counts
            silent.append(peer)
    return silent
