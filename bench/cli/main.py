"""``bench`` command line: run, validate, list, report, compare, perf, ams.

``run`` and ``list`` live here; the other commands live in their own modules (``bench.cli.ams``
and ``bench.cli.embed`` beside this one, ``bench.report.cli``, ``bench.perf``, ...) and are
imported only when used (each module offers ``add_arguments(parser)`` and ``main(args)``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

from bench.cli.args import add_run_arguments, run_request, run_spec
from bench.core import registry
from bench.core.cache import Cache
from bench.core.config import LADDER, PROFILES
from bench.core.registry import SpecError

if TYPE_CHECKING:
    pass

LAZY_COMMANDS = {
    "report": ("bench.report.cli", "rebuild tables, plots and report.html of a run folder"),
    "compare": ("bench.report.compare", "per metric change between two runs vs seed noise"),
    "perf": ("bench.perf", "print speed figures (embed, knn, ctr, ams)"),
    "ams": ("bench.cli.ams", "run the AMS parameter-server path on 127.0.0.1"),
    "export": ("bench.cli.export", "write the homestead world as a folder dataset (JPEGs, "
                               "manifest.csv, impressions.parquet)"),
    "embed": ("bench.cli.embed", "embed a dataset into the cache bench run reads; under "
                                 "torchrun every rank takes its share of the shards"),
    "export-vectors": ("bench.cli.export_vectors", "write a run's vectors for other tools "
                                               "(FuxiCTR pretrained_emb, .npy plus ids)"),
}








EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal








def command_run(args: argparse.Namespace) -> int:
    """Exit status: 0 everything requested ran; 1 some extractor or task failed (rows kept,
    errors listed last); 2 bad input, refused before anything ran (one line on stderr, and
    the run folder's run.json says why); 130 (Ctrl-C) or 143 (SIGTERM) interrupted, with
    ``status: interrupted`` in run.json (``bench run --resume ID`` finishes it)."""
    from bench.run import RunInterrupted, RunRefused, execute_run, prepare_run
    from bench.run.folder import StorageError

    try:
        spec = run_spec(run_request(args), args.out)
        prepared = prepare_run(spec, Cache(args.cache))
    except (RunRefused, SpecError) as error:
        return _refuse(str(error))
    except KeyboardInterrupt:
        print("interrupted before the run started; nothing was computed", file=sys.stderr)
        return EXIT_INTERRUPTED[signal.SIGINT]
    received: list[int] = []

    def on_sigterm(signum: int, frame: Any) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        run = execute_run(prepared)
    except StorageError as error:
        print(f"error: {error.strerror}", file=sys.stderr)
        return EXIT_FAILED
    except RunInterrupted as stopped:
        run = stopped.run
        done = len(run.cells) - len(run.missing())
        waiting = f", {len(run.not_started)} extractors not started" if run.not_started else ""
        print(f"interrupted: {done} of {len(run.cells)} planned cells done{waiting}; "
              f"{run.dir / 'run.json'} says status: interrupted. Finish it with: "
              f"bench run --resume {run.run_id} --out {args.out}", file=sys.stderr)
        return EXIT_INTERRUPTED[received[0] if received else signal.SIGINT]
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    print(f"results: {run.dir}")
    if (run.dir / "summary.md").exists():
        print((run.dir / "summary.md").read_text())
    cut = [c for record in run.cells.values() for c in record.get("cut", [])]
    if cut:
        print(f"warning: {len(cut)} result groups were cut short by a time cap (marked \u2020 "
              "in the tables, listed in run.json time_capped); run again to finish them",
              file=sys.stderr)
    if run.errors:
        print(f"{len(run.errors)} error(s):", file=sys.stderr)
        for error in run.errors:
            print(f"  {error['where']}: {error['error']}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def command_validate(args: argparse.Namespace) -> int:
    """Every task on the known-answer ladder only; exit 1 when a task's main score puts the
    rungs out of order (the run cannot tell better from worse there)."""
    import pandas as pd

    from bench.report.tables import main_validity, validity_markdown
    from bench.run import RunRefused, run_benchmark

    try:
        request = run_request(args)
        request["extractors"] = list(LADDER)
        run = run_benchmark(run_spec(request, args.out), Cache(args.cache))
    except (RunRefused, SpecError) as error:
        return _refuse(str(error))
    print(f"results: {run.dir}")
    info = json.loads((run.dir / "run.json").read_text())
    path = run.dir / "validity.csv"
    validity = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["task", "metric"])
    print(validity_markdown(validity, info))
    checked = main_validity(validity, info)
    return 1 if (checked["verdict"] == "out of order").any() else 0


def command_list(args: argparse.Namespace) -> int:
    """Every extractor, dataset and task the registry holds (plugins' too), and the profiles;
    then one line per task: its stage, main score and description."""
    registry.load_plugins(tuple(args.plugin))
    names = registry.task_names()
    print("extractors:", ", ".join(sorted(registry.EXTRACTORS)))
    print("datasets:  ", ", ".join(sorted(registry.DATASETS)))
    print("tasks:     ", ", ".join(names))
    print("profiles:  ", ", ".join(PROFILES))
    for name in names:
        task = registry.find_task(name)
        print(f"  {name} ({task.stage}; main score {task.main_score}): {task.description}")
    for problem in registry.load_errors:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


_LAZY_PARSERS: dict[str, argparse.ArgumentParser] = {}


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line on stderr (exit status 2), without the usage block."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the benchmark")
    add_run_arguments(run)
    run.set_defaults(handler=command_run)
    validate = commands.add_parser("validate", help="run every task on the known-answer ladder "
                                   "and print whether each task resolves it")
    add_run_arguments(validate)
    validate.set_defaults(handler=command_validate)
    listing = commands.add_parser("list", help="list extractors, datasets, tasks, profiles")
    listing.add_argument("--plugin", action="append", default=[])
    listing.set_defaults(handler=command_list)
    for name, (module_name, help_text) in LAZY_COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(handler=lambda args, m=module_name: _unavailable(m, None))
        _LAZY_PARSERS[name] = sub
    return parser


def _attach(sub: argparse.ArgumentParser, module_name: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        sub.set_defaults(handler=lambda args, e=error: _unavailable(module_name, e))
        return
    module.add_arguments(sub)
    sub.set_defaults(handler=module.main)


def _unavailable(module_name: str, error: Exception | None) -> int:
    print(f"error: this command is not available ({module_name}: {error})", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in LAZY_COMMANDS:
        module_name = LAZY_COMMANDS[argv[0]][0]
        _attach(_LAZY_PARSERS[argv[0]], module_name)
    args = parser.parse_args(argv)
    if args.handler is command_run:
        return int(command_run(args) or 0)
    try:  # report, compare, perf, ams, list: bad input is one line too
        return int(args.handler(args) or 0)
    except (ValueError, OSError, KeyError) as error:
        from bench.run.prepare import describe_error

        return _refuse(describe_error(error))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED[signal.SIGINT]


if __name__ == "__main__":
    sys.exit(main())
