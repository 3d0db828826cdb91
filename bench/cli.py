"""``bench`` command line: run, validate, list, report, compare, perf, ams.

``run`` and ``list`` live here; the other commands live beside the code they drive and are
imported only when used (each module offers ``add_arguments(parser)`` and ``main(args)``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from bench import registry
from bench.cache import Cache
from bench.config import LADDER, PROFILES, get_profile

LAZY_COMMANDS = {
    "report": ("bench.report.cli", "rebuild tables, plots and report.html of a run folder"),
    "compare": ("bench.report.compare", "per metric change between two runs vs seed noise"),
    "perf": ("bench.perf", "print speed figures (embed, knn, ctr, ams)"),
    "ams": ("bench.tasks.ctr.ams_cli", "run the AMS parameter-server path on 127.0.0.1"),
}


def _csv(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(p.strip() for p in text.split(",") if p.strip())


def _specs(text: str | None) -> tuple[str, ...] | None:
    """Split extractor specs on commas, keeping ``name:a=1,b=2`` together: a part that is a
    bare ``key=value`` continues the spec before it."""
    parts = _csv(text)
    if parts is None:
        return None
    specs: list[str] = []
    for part in parts:
        if specs and "=" in part and ":" not in part.split("=", 1)[0]:
            specs[-1] += "," + part
        else:
            specs.append(part)
    return tuple(specs)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None,
                        help="quick | default | full (default: full with CUDA, else default)")
    parser.add_argument("--dataset", default="homestead",
                        help="homestead | digits | folder:PATH | a plugin dataset")
    parser.add_argument("--extractors", help="comma-separated specs, e.g. pixels,random,"
                        "precomputed:vecs.npz (default: the profile's)")
    parser.add_argument("--tasks", help="comma-separated: knn,retrieval,classify,ctr")
    parser.add_argument("--seeds", type=int, help="number of seeds for seeded tasks")
    parser.add_argument("--out", default="results", help="folder for run outputs")
    parser.add_argument("--run-id", help="name of the run folder (default: time-profile-dataset)")
    parser.add_argument("--plugin", action="append", default=[], help="extra plugin file")
    parser.add_argument("--cache", help="cache folder (default: $BENCH_CACHE_DIR or ./.cache/bench)")
    parser.add_argument("--no-report", action="store_true", help="skip plots and HTML")
    parser.add_argument("--reference", help="extractor every row is tested against (default: "
                        "'none (ids only)' for ctr, 'random' elsewhere)")
    parser.add_argument("--whiten-k", help="whitening dimension k of the w variant: auto "
                        "(chosen on train rows, the default), full, or a number")
    parser.add_argument("--ctr-backend", choices=("local", "ams"),
                        help="train the ctr task in this process (local) or on the AMS "
                             "parameter-server path (ams, docs/ams.md)")


def run_spec(args: argparse.Namespace, extractors: tuple[str, ...] | None = None) -> Any:
    """The RunSpec the run arguments describe (``extractors`` replaces the profile's list)."""
    from bench.runner import RunSpec

    profile = get_profile(args.profile)
    if getattr(args, "ctr_backend", None):
        profile.task_options.setdefault("ctr", {})["backend"] = args.ctr_backend
    if getattr(args, "whiten_k", None):
        profile.whitening["k"] = args.whiten_k
    dataset_name, dataset_args = registry.parse_spec(args.dataset)
    options = profile.dataset_options(dataset_name)
    if "arg" in dataset_args:
        options["root"] = dataset_args.pop("arg")
    options.update(dataset_args)
    return RunSpec(profile=profile, dataset=args.dataset, dataset_options=options,
                   extractors=extractors or _specs(args.extractors) or profile.extractors,
                   tasks=_csv(args.tasks) or profile.tasks,
                   seeds=args.seeds or profile.seeds, out_root=Path(args.out),
                   run_id=args.run_id, plugins=tuple(args.plugin), report=not args.no_report,
                   reference=getattr(args, "reference", None))


def command_run(args: argparse.Namespace) -> int:
    from bench.runner import run_benchmark

    run = run_benchmark(run_spec(args), Cache(args.cache))
    print(f"results: {run.dir}")
    if (run.dir / "summary.md").exists():
        print((run.dir / "summary.md").read_text())
    return 1 if run.errors and not run.rows else 0


def command_validate(args: argparse.Namespace) -> int:
    """Every task on the known-answer ladder only; exit 1 when a task's main score puts the
    rungs out of order (the run cannot tell better from worse there)."""
    import pandas as pd

    from bench.report.tables import main_validity, validity_markdown
    from bench.runner import run_benchmark

    run = run_benchmark(run_spec(args, extractors=LADDER), Cache(args.cache))
    print(f"results: {run.dir}")
    info = json.loads((run.dir / "run.json").read_text())
    path = run.dir / "validity.csv"
    validity = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["task", "metric"])
    print(validity_markdown(validity, info))
    checked = main_validity(validity, info)
    return 1 if (checked["verdict"] == "out of order").any() else 0


def command_list(args: argparse.Namespace) -> int:
    from bench.tasks import BUILTIN_TASKS

    registry.load_plugins(tuple(args.plugin))
    print("extractors:", ", ".join(sorted(registry.EXTRACTORS)))
    print("datasets:  ", ", ".join(sorted(registry.DATASETS)))
    print("tasks:     ", ", ".join(BUILTIN_TASKS))
    print("profiles:  ", ", ".join(PROFILES))
    for problem in registry.load_errors:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


_LAZY_PARSERS: dict[str, argparse.ArgumentParser] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
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
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
