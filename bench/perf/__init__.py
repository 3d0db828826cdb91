"""``bench perf NAME``: speed figures printed as ratios measured in one run, never timed tests.

Each figure lives in ``bench/perf/<name>.py`` with ``add_arguments(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import importlib

FIGURES = {
    "embed": "bench.perf.embed",
    "knn": "bench.perf.knn",
    "train": "bench.perf.train",
    "ctr": "bench.perf.ctr",
    "ams": "bench.perf.ams",
    "stream": "bench.perf.stream",
    "scale": "bench.perf.scale",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("figure", choices=[*FIGURES, "all"], help="which figure to measure")
    parser.add_argument("--small", action="store_true", help="a small, fast configuration")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="options for the figure")


def main(args: argparse.Namespace) -> int:
    names = list(FIGURES) if args.figure == "all" else [args.figure]
    status = 0
    for name in names:
        try:
            module = importlib.import_module(FIGURES[name])
        except ModuleNotFoundError as error:
            print(f"perf {name}: not available ({error})")
            status = 1
            continue
        sub = argparse.ArgumentParser(prog=f"bench perf {name}")
        module.add_arguments(sub)
        sub_args = sub.parse_args((["--small"] if args.small else []) + list(args.rest or []))
        print(f"== perf {name}")
        status = max(status, int(module.run(sub_args) or 0))
    return status
