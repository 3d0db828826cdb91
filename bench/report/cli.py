"""``bench report RUN_DIR``: rebuild the report from the run folder's ``results.csv``."""

from __future__ import annotations

import argparse

from bench.report import build_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a results/<run-id> folder")


def main(args: argparse.Namespace) -> int:
    path = build_report(args.run_dir)
    print(f"wrote {path}")
    return 0
