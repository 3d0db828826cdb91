"""``bench report RUN_DIR``: rebuild the tables, plots and report.html of a run folder from its
``results.csv`` (plus ``run.json`` and ``artifacts/`` when present)."""

from __future__ import annotations

import argparse

from bench.report import build_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a results/<run-id> folder")
    parser.add_argument("--tsne", action="store_true",
                        help="draw the embedding map with t-SNE instead of PCA (slower)")
    parser.add_argument("--no-html", action="store_true",
                        help="only summary.md and tables/, no plots or report.html")


def main(args: argparse.Namespace) -> int:
    report = build_report(args.run_dir, html=not args.no_html, tsne=args.tsne)
    for plot in report.plots:
        if plot.path is None:
            print(f"  {plot.key}: {plot.note}")
    target = report.html or report.summary
    size = f", {target.stat().st_size / 1e6:.2f} MB" if report.html else ""
    print(f"wrote {target} ({report.seconds:.1f} s{size})")
    return 0
