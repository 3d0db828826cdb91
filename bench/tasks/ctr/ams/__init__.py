"""The AMS path of the CTR harness (the DICM paper's Advanced Model Server), on torch.distributed.

Parameter servers hold the raw image feature table (D floats per image, sharded by a hash of the
image id); workers train the harness's DICM dense part on their share of each mini-batch (data
parallel, gradients all-reduced). Three ways to get image vectors to the workers:

- ``store-in-worker``: every worker holds the whole raw table and compresses locally;
- ``store-in-server``: servers send raw D-float rows, workers compress;
- ``ams``: each server holds a replica of the compression sub-model (D-256-64-12 in the paper),
  compresses the images it holds and sends the compressed vectors; their gradients come back;
  servers all-reduce the sub-model gradients and step every iteration.

Bytes crossing the worker/server boundary, iteration time and memory per role are measured
(``accounting``). See docs/ams.md; ``bench ams`` is the command line.

Modules: ``features`` (raw D-dim features, hash sharding), ``accounting``, ``server``,
``worker``, ``launch`` (roles, rendezvous, spawn/torchrun, faults, ``train_and_evaluate`` for the
``ctr`` task's ``backend: ams``).
"""

from bench.tasks.ctr.ams.launch import (
    MODES,
    AmsJob,
    AmsOptions,
    launch,
    make_job,
    run_rank,
    train_and_evaluate,
)
from bench.tasks.ctr.ams.server import AmsError

__all__ = ["MODES", "AmsError", "AmsJob", "AmsOptions", "launch", "make_job", "run_rank",
           "train_and_evaluate"]
