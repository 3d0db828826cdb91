"""An AMS worker: trains the DICM dense part on its shard of each mini-batch (data parallel,
gradients all-reduced among workers) and gets image vectors the way its mode says.

The worker runs the CTR harness's own model (:class:`bench.tasks.ctr.model.DICM`) with its
image tower replaced by :class:`RemoteTower`, so the forward pass, the losses and the metrics
are those of the in-process harness:

- ``store-in-worker``: the tower holds the whole raw table and the sub-model; nothing crosses
  to the servers;
- ``store-in-server``: the tower fetches raw D-float rows from the servers and runs the
  sub-model locally (its gradients are all-reduced among workers with the dense part);
- ``ams``: the tower asks the servers for compressed vectors and, after the backward pass,
  sends their gradients back; the sub-model lives on the servers.

Global batch ``b`` of an epoch is the ``b``-th slice of the same shuffled order the in-process
loop uses; worker ``w`` takes the ``w``-th part. Each worker scales its mean loss by its share
of the batch, so the summed gradients are those of the whole batch's mean loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc

from bench.tasks.ctr import data as ctr_data
from bench.tasks.ctr.ams import server as ams_server
from bench.tasks.ctr.ams.accounting import Meter, held_mb, peak_rss_mb
from bench.tasks.ctr.ams.server import AmsError
from bench.tasks.ctr.model import DICM, loss


class RemoteTower(torch.nn.Module):
    """Item indices -> projected image vectors, wherever the table and sub-model live."""

    def __init__(self, *, mode: str, dim: int, raw_dim: int, owner: torch.Tensor,
                 servers: list[str], worker: int, meter: Meter, timeout: float,
                 projection: torch.nn.Module | None = None, table: torch.Tensor | None = None):
        super().__init__()
        self.mode, self.dim, self.raw_dim = mode, dim, raw_dim
        self.owner, self.servers, self.worker = owner, servers, worker
        self.meter, self.timeout = meter, timeout
        self.projection = projection  # None in ams: the sub-model is on the servers
        self.table = table  # the whole raw table in store-in-worker only
        self.iteration = 0  # the sub-model version the next training request is for
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (index, vectors)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        if self.mode == "store-in-worker":
            return self.projection(self.table[index])
        train = self.training and torch.is_grad_enabled()
        if self.mode == "store-in-server":
            raw = self.gather(ams_server.rpc_lookup, index, self.raw_dim, everyone=False,
                              extra=(train,))
            return self.projection(raw)
        out = self.gather(ams_server.rpc_compress, index, self.dim, everyone=train,
                          extra=(train,))
        if train:
            if self.pending is not None:
                raise AmsError(f"worker{self.worker}: two training forwards in iteration "
                               f"{self.iteration}")
            self.pending = (index, out.requires_grad_())
        return out

    def gather(self, function: Callable, index: torch.Tensor, width: int, everyone: bool,
               extra: tuple = ()) -> torch.Tensor:
        """Ask each server for the rows of ``index`` it holds (all servers when ``everyone``,
        so each one sees every worker in every training iteration)."""
        owner = self.owner[index]
        calls = []
        for s, server in enumerate(self.servers):
            mask = owner == s
            if not everyone and not bool(mask.any()):
                continue
            ids = index[mask]  # a fresh tensor: RPC sends whole storages, never send views
            self.meter.add("key", ids)
            future = rpc.rpc_async(server, function, timeout=self.timeout,
                                   args=(self.mode, self.worker, self.iteration, ids, *extra))
            calls.append((server, mask, future))
        out = torch.zeros((len(index), width))
        for server, mask, future in calls:
            part = wait(future, server, f"{function.__name__[4:]} of {int(mask.sum())} images")
            self.meter.add("image", part)
            out[mask] = part
        return out

    def push(self) -> None:
        """``ams``: send the gradients of this iteration's vectors to their servers."""
        if self.mode != "ams":
            return
        if self.pending is None:
            raise AmsError(f"worker{self.worker}: no training forward in iteration "
                           f"{self.iteration}")
        (index, out), self.pending = self.pending, None
        grad = torch.zeros_like(out) if out.grad is None else out.grad
        owner = self.owner[index]
        calls = []
        for s, server in enumerate(self.servers):  # all sends first, then all waits
            part = grad[owner == s]
            self.meter.add("image_grad", part)
            calls.append((server, rpc.rpc_async(server, ams_server.rpc_backward,
                                                timeout=self.timeout,
                                                args=(self.mode, self.worker, self.iteration,
                                                      part))))
        for server, future in calls:
            wait(future, server, "backward")


def wait(future: Any, server: str, what: str) -> Any:
    """The RPC's answer, or an AmsError naming the server."""
    try:
        return future.wait()
    except Exception as error:
        raise AmsError(f"call to {server} ({what}) failed: {brief(error)}") from error


def brief(error: BaseException, limit: int = 400) -> str:
    """The first line of an error; for a remote one, its message without the traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith("):") and "WorkerInfo" in lines[0]:
        lines = lines[1:]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


class Worker:
    """One data-parallel worker for one mode."""

    def __init__(self, *, rank: int, workers: int, model: DICM, tower: RemoteTower,
                 data: ctr_data.CtrData, config: Any, seed: int, group: Any,
                 max_iterations: int | None, record_gradients: bool, log: Callable[[str], None]):
        self.rank, self.workers, self.model, self.tower = rank, workers, model, tower
        self.data, self.config, self.seed, self.group = data, config, seed, group
        self.max_iterations, self.record_gradients, self.log = (max_iterations,
                                                                record_gradients, log)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr,
                                          weight_decay=config.weight_decay)
        self.iterations: list[dict[str, Any]] = []
        self.recorded: dict[str, torch.Tensor] = {}

    def batches(self) -> list[torch.Tensor]:
        """Global mini-batches in the in-process loop's order (same generator, same seed)."""
        generator = torch.Generator().manual_seed(self.seed)
        rows = torch.as_tensor(self.data.train, dtype=torch.long)
        out = []
        for _ in range(self.config.epochs):
            out += list(rows[torch.randperm(len(rows), generator=generator)]
                        .split(self.config.batch_size))
        return out[:self.max_iterations] if self.max_iterations is not None else out

    def train(self) -> dict[str, float]:
        """Train; returns seconds, samples/s (this worker's share) and the last loss."""
        self.model.train()
        batches = self.batches()
        start, seen = time.perf_counter(), 0
        for i, batch in enumerate(batches):
            self.tower.iteration = i
            value = self.step(batch.tensor_split(self.workers)[self.rank], len(batch), i)
            seen += len(batch)
            if i == 0 or (i + 1) % 20 == 0 or i + 1 == len(batches):
                self.log(f"iteration {i + 1}/{len(batches)} loss {value:.4f} "
                         f"{self.iterations[-1]['seconds']:.3f}s")
        self.tower.iteration = len(batches)
        seconds = time.perf_counter() - start
        last = self.iterations[-1]["loss"] if self.iterations else float("nan")
        return {"train_s": seconds, "samples_per_s": seen / max(seconds, 1e-9),
                "train_loss": last, "iterations": len(batches)}

    def step(self, rows: torch.Tensor, batch_size: int, iteration: int) -> float:
        """One data-parallel iteration; returns the whole batch's loss."""
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        if len(rows):
            logits = self.model(self.data.batch(rows))
            value = loss(logits, self.data.labels[rows]) * (len(rows) / batch_size)
            value.backward()
        else:  # an empty share still takes part in every exchange
            self.tower(torch.zeros(0, dtype=torch.long))
            value = torch.zeros(())
        self.tower.push()
        flat = torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1)
                          for p in self.params] + [value.detach().reshape(1)])
        self.tower.meter.add("model", flat[:-1])
        if self.workers > 1:
            dist.all_reduce(flat, group=self.group)
        offset = 0
        for p in self.params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        if self.record_gradients and iteration == 0:
            self.recorded = {name: p.grad.clone() for name, p in self.model.named_parameters()
                             if p.requires_grad}
        self.optimizer.step()
        record = {"iteration": iteration, "loss": float(flat[-1]), "rows": len(rows),
                  **self.tower.meter.take(), "seconds": time.perf_counter() - start}
        self.iterations.append(record)
        return record["loss"]

    def report(self, mode: str, name: str) -> dict[str, Any]:
        table = self.tower.table
        return {"name": name, "role": "worker", "mode": mode, "iterations": self.iterations,
                "memory": {"peak_rss_mb": peak_rss_mb(),
                           "held_mb": held_mb(self.model, self.optimizer, table)}}


def explain(error: BaseException, name: str, mode: str, iteration: int, servers: list[str],
            ranks: dict[str, int], timeout: float) -> AmsError:
    """The error a worker stops with: which servers are gone, and what failed."""
    dead = ams_server.probe(servers, timeout)
    where = f"{name} stopped in mode {mode} at iteration {iteration}"
    if dead:
        gone = ", ".join(f"{s} (rank {ranks[s]})" for s in dead)
        verb = "is" if len(dead) == 1 else "are"
        return AmsError(f"AMS server {gone} {verb} unreachable; {where}: {brief(error)}")
    return AmsError(f"{where}: {brief(error)}")
