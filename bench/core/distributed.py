"""torchrun's process group for the commands that run over ranks (``bench embed``, sharded search).

Why: one place reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT`` set by its rendezvous) and joins the default process group, so a
command is the same code with world size 1 when started without torchrun. The backend is gloo
on every machine: the ranks exchange only small objects (shard lists, top-k lists, barriers),
and gloo needs no GPU; the heavy work stays on each rank's own device.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist

# fitting an extractor on rank 0 while the others wait at a barrier may take long
BARRIER_TIMEOUT = dt.timedelta(hours=6)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self) -> torch.device:
        """cuda:LOCAL_RANK when CUDA is present, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def gather_to_main(self, value: Any) -> list[Any]:
        """Every rank's ``value`` in rank order on rank 0; an empty list on the others."""
        if not self.distributed:
            return [value]
        out: list[Any] | None = [None] * self.size if self.is_main else None
        dist.gather_object(value, out, dst=0)
        return out if out is not None else []


def from_env() -> World:
    """The world torchrun describes in the environment; world size 1 without it."""
    def number(name: str, default: int) -> int:
        text = os.environ.get(name, "")
        try:
            return int(text) if text else default
        except ValueError:
            raise ValueError(f"{name}={text!r} is not an integer (torchrun sets it)") from None

    world = World(number("RANK", 0), number("WORLD_SIZE", 1), number("LOCAL_RANK", 0))
    if not 0 <= world.rank < world.size:
        raise ValueError(f"RANK={world.rank} is not below WORLD_SIZE={world.size}")
    return world


def current() -> World:
    """The world of the process group already joined (world size 1 when none is)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


@contextmanager
def joined(world: World | None = None) -> Iterator[World]:
    """Join the default process group (gloo, torchrun's rendezvous from the environment) for
    the duration; nothing is joined with world size 1. Sets the rank's CUDA device."""
    world = world or from_env()
    if world.device().type == "cuda":
        torch.cuda.set_device(world.device())
    if not world.distributed or dist.is_initialized():
        yield world
        return
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"WORLD_SIZE={world.size} but {name} is not set: start the "
                             "command with torchrun (docs/scale.md)")
    dist.init_process_group("gloo", rank=world.rank, world_size=world.size,
                            timeout=BARRIER_TIMEOUT)
    completed = False
    try:
        yield world
        completed = True
    finally:
        leave_group(completed)


def leave_group(completed: bool) -> None:
    """Destroy the default process group; after a clean finish every rank first meets at a
    barrier.

    Why: a rank that tears down its gloo pairs while a peer still has traffic in flight to it
    aborts the peer's process ("terminate called without an active exception", SIGABRT; seen
    once in CI after rank 0 wrote its file). After a failure the barrier is skipped, since the
    failed peer may never reach it."""
    if not dist.is_initialized():
        return
    if completed:
        dist.barrier()
    dist.destroy_process_group()


def leave_process(code: int = 0) -> NoReturn:
    """End a rank's process now, without the interpreter's finalisation; call it after the
    rank's results are written and the group is left.

    Why: gloo's worker thread drops its last collectives (and the tensors Python made for
    them) a moment after the caller's ``wait`` returns. When that happens during
    ``Py_Finalize`` the thread cannot take the GIL and the process aborts (SIGABRT,
    "terminate called without an active exception"). A core dump from CI's flake shows it:
    ``ProcessGroupGloo::runLoop`` -> ``~AsyncBarrierWork`` -> ``~AsyncAllgatherWork`` ->
    ``decref`` -> ``take_gil`` -> ``pthread_exit`` -> ``std::terminate``, after the rank had
    written its file, met the barrier and destroyed the group. PyTorch tried an ``atexit``
    fix upstream (pytorch#179291) and dropped it, so a rank skips finalisation instead."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
