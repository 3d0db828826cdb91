"""One benchmark run: prepare (refuse bad input), then schedule the cells a session computes.

``prepare`` checks, ``session`` records, ``schedule`` decides which cells run; ``folder``
writes the run folder, ``resume`` reads an earlier session's, ``pictures`` draws the run-time
pictures the report shows.
"""

from bench.run.prepare import Prepared, RunRefused, RunSpec, prepare_run
from bench.run.schedule import execute_run, run_benchmark
from bench.run.session import Run, RunInterrupted

__all__ = ["Prepared", "Run", "RunInterrupted", "RunRefused", "RunSpec", "execute_run",
           "prepare_run", "run_benchmark"]
