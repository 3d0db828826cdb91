"""``bench`` command line: run, list, report, compare, perf, ams.

``run`` and ``list`` live here; the other commands live beside the code they drive and are
imported only when used (each module offers ``add_arguments(parser)`` and ``main(args)``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from bench import registry
from bench.cache import Cache
from bench.config import PROFILES, get_profile

LAZY_COMMANDS = {
    "report": ("bench.report.cli", "rebuild tables, plots and report.html of a run folder"),
    "compare": ("bench.report.compare", "per metric change between two runs vs seed noise"),
    "perf": ("bench.perf", "print speed figures (embed, knn, ctr, ams)"),
    "ams": ("bench.tasks.ctr.ams_cli", "run the AMS parameter-server path on 127.0.0.1"),
    "export": ("bench.export", "write the homestead world as a folder dataset (JPEGs, "
                               "manifest.csv, impressions.parquet)"),
    "export-vectors": ("bench.export_vectors", "write a run's vectors for other tools "
                                               "(FuxiCTR pretrained_emb, .npy plus ids)"),
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
    parser.add_argument("--ctr-backend", choices=("local", "ams"),
                        help="train the ctr task in this process (local) or on the AMS "
                             "parameter-server path (ams, docs/ams.md)")


def command_run(args: argparse.Namespace) -> int:
    from bench.runner import RunSpec, run_benchmark

    profile = get_profile(args.profile)
    if getattr(args, "ctr_backend", None):
        profile.task_options.setdefault("ctr", {})["backend"] = args.ctr_backend
    dataset_name, dataset_args = registry.parse_spec(args.dataset)
    options = profile.dataset_options(dataset_name)
    if "arg" in dataset_args:
        options["root"] = dataset_args.pop("arg")
    options.update(dataset_args)
    spec = RunSpec(profile=profile, dataset=args.dataset, dataset_options=options,
                   extractors=_specs(args.extractors) or profile.extractors,
                   tasks=_csv(args.tasks) or profile.tasks,
                   seeds=args.seeds or profile.seeds, out_root=Path(args.out),
                   run_id=args.run_id, plugins=tuple(args.plugin), report=not args.no_report)
    run = run_benchmark(spec, Cache(args.cache))
    print(f"results: {run.dir}")
    if (run.dir / "summary.md").exists():
        print((run.dir / "summary.md").read_text())
    return 1 if run.errors and not run.rows else 0


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
