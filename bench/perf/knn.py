"""``bench perf knn``: runs benchmarks/knn_perf.py (bare FAISS vs knn_consistency vs sklearn,
and 1M items with IVF); ``--small`` runs a 20k x 64 version in seconds."""

from __future__ import annotations

import argparse
import importlib.util

from bench.core.registry import builtin_folder

SCRIPT = builtin_folder("benchmarks") / "knn_perf.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small", action="store_true")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="options for knn_perf.py")


def run(args: argparse.Namespace) -> int:
    spec = importlib.util.spec_from_file_location("knn_perf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    small = ["--n", "20000", "--queries", "2000", "--dim", "64", "--ivf-n", "100000"]
    module.main((small if args.small else []) + list(args.args or []))
    return 0
