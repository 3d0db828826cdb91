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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.core import registry
from bench.core.cache import Cache
from bench.core.config import LADDER, PROFILES, get_profile
from bench.core.registry import SpecError

if TYPE_CHECKING:
    from bench.run import RunSpec

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
    parser.add_argument("--dataset", default=None,
                        help="homestead (default) | digits | folder:PATH | a plugin dataset")
    parser.add_argument("--extractors", help="comma-separated specs, e.g. pixels,random,"
                        "precomputed:vecs.npz (default: the profile's)")
    parser.add_argument("--tasks", help="comma-separated task names (default: the profile's; "
                        "bench list names every task, plugins' too)")
    parser.add_argument("--seeds", type=int, help="number of seeds for seeded tasks (>= 1)")
    parser.add_argument("--out", default="results", help="folder for run outputs")
    parser.add_argument("--run-id", help="name of the run folder (default: time-profile-dataset); "
                        "an existing one is resumed: its rows are kept, missing cells computed")
    parser.add_argument("--resume", metavar="RUN_ID",
                        help="finish an interrupted run with the settings it was started with")
    parser.add_argument("--plugin", action="append", default=None,
                        help="extra plugin: a .py file or a package folder")
    parser.add_argument("--cache", help="cache folder (default: $BENCH_CACHE_DIR or ./.cache/bench)")
    parser.add_argument("--no-report", action="store_true", default=None,
                        help="skip plots and HTML")
    parser.add_argument("--reference", help="extractor every row is tested against (default: "
                        "'none (ids only)' for ctr, 'random' elsewhere)")
    parser.add_argument("--whiten-k", help="whitening dimension k of the w variant: auto "
                        "(chosen on train rows, the default), full, or a number")
    parser.add_argument("--whiten-shrinkage", help="whitening shrinkage of the w variant: auto "
                        "(chosen with k on train rows, the default) or a number >= 0")
    parser.add_argument("--task-option", action="append", default=None,
                        metavar="TASK.KEY=VALUE",
                        help="a task option over the profile's, e.g. knn.index=auto or "
                             "retrieval.nprobe=16 (repeatable; docs/scale.md)")
    parser.add_argument("--ctr-backend", choices=("local", "ams"),
                        help="train the ctr task in this process (local) or on the AMS "
                             "parameter-server path (ams, docs/ams.md)")


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal


def run_request(args: argparse.Namespace) -> dict[str, Any]:
    """What this ``bench run`` asks for; with ``--resume ID``, the request stored in that run's
    ``run.json``, overridden by whatever this command line gives."""
    given = {"profile": args.profile, "dataset": args.dataset,
             "extractors": None if args.extractors is None else list(_specs(args.extractors)),
             "tasks": None if args.tasks is None else list(_csv(args.tasks)),
             "seeds": args.seeds, "plugin": args.plugin, "ctr_backend": args.ctr_backend,
             "no_report": args.no_report, "reference": args.reference,
             "whiten_k": args.whiten_k, "whiten_shrinkage": args.whiten_shrinkage,
             "task_options": args.task_option}
    stored: dict[str, Any] = {}
    if args.resume:
        if args.run_id and args.run_id != args.resume:
            raise SpecError(f"--resume {args.resume} and --run-id {args.run_id} name different "
                            "runs")
        path = Path(args.out) / args.resume / "run.json"
        try:
            stored = json.loads(path.read_text(encoding="utf-8")).get("command") or {}
        except FileNotFoundError:
            raise SpecError(f"nothing to resume: no run {args.resume!r} under {args.out} "
                            f"({path} does not exist)") from None
        except (OSError, ValueError, AttributeError) as error:
            raise SpecError(f"cannot resume {args.resume!r}: {path} is unreadable ({error})"
                            ) from None
        if not stored:
            raise SpecError(f"cannot resume {args.resume!r}: {path} does not record the "
                            "command that started it")
    request = {k: v if v is not None else stored.get(k) for k, v in given.items()}
    request["run_id"] = args.resume or args.run_id
    return request


def run_spec(request: dict[str, Any], out: str) -> RunSpec:
    from bench.run import RunSpec

    profile = get_profile(request["profile"])
    if request.get("ctr_backend"):
        profile.task_options.setdefault("ctr", {})["backend"] = request["ctr_backend"]
    if request.get("whiten_k"):
        profile.whitening["k"] = request["whiten_k"]
    if request.get("whiten_shrinkage"):
        profile.whitening["shrinkage"] = request["whiten_shrinkage"]
    for task, key, value in map(task_option, request.get("task_options") or ()):
        if key == "index":
            from bench.search.index import KINDS

            if value not in (*KINDS, "auto"):
                raise SpecError(f"--task-option {task}.index={value}: choose from "
                                f"{', '.join((*KINDS, 'auto'))}")
        profile.task_options.setdefault(task, {})[key] = value
    dataset = request.get("dataset") or "homestead"
    dataset_name, dataset_args = registry.parse_spec(dataset)
    options = profile.dataset_options(dataset_name)
    if "arg" in dataset_args:
        options["root"] = dataset_args.pop("arg")
    options.update(dataset_args)
    extractors = tuple(request.get("extractors") or ()) or profile.extractors
    tasks = tuple(request.get("tasks") or ()) or profile.tasks
    seeds = profile.seeds if request.get("seeds") is None else int(request["seeds"])
    command = {"profile": profile.name, "dataset": dataset, "extractors": list(extractors),
               "tasks": list(tasks), "seeds": seeds, "plugin": list(request.get("plugin") or []),
               "ctr_backend": request.get("ctr_backend"),
               "no_report": bool(request.get("no_report")),
               "reference": request.get("reference"), "whiten_k": request.get("whiten_k"),
               "whiten_shrinkage": request.get("whiten_shrinkage"),
               "task_options": list(request.get("task_options") or [])}
    return RunSpec(profile=profile, dataset=dataset, dataset_options=options,
                   extractors=extractors, tasks=tasks, seeds=seeds, out_root=Path(out),
                   run_id=request.get("run_id"), plugins=tuple(request.get("plugin") or ()),
                   report=not request.get("no_report"), command=command,
                   reference=request.get("reference"))


def task_option(text: str) -> tuple[str, str, Any]:
    """``TASK.KEY=VALUE`` -> (task, key, value); the value as an int, a float, true/false or
    none when it reads as one, else text."""
    target, sep, raw = text.partition("=")
    task, dot, key = target.partition(".")
    if not sep or not dot or not task or not key:
        raise SpecError(f"--task-option {text!r}: expected TASK.KEY=VALUE, e.g. knn.index=auto")
    value: Any = raw
    lowered = raw.lower()
    if lowered in ("true", "false"):
        value = lowered == "true"
    elif lowered == "none":
        value = None
    else:
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
    return task.strip(), key.strip(), value


def command_run(args: argparse.Namespace) -> int:
    """Exit status: 0 everything requested ran; 1 some extractor or task failed (rows kept,
    errors listed last); 2 bad input, refused before anything ran (one line on stderr, and
    the run folder's run.json says why); 130 (Ctrl-C) or 143 (SIGTERM) interrupted, with
    ``status: interrupted`` in run.json (``bench run --resume ID`` finishes it)."""
    from bench.run import RunInterrupted, RunRefused, execute_run, prepare_run

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
