"""The arguments ``bench run``, ``validate``, ``embed`` and ``ams`` share, and the run request.

Why one place: the commands that build a dataset and extractors from a profile must accept the
same ``--profile`` (one of the profiles, or the one ``bench run`` picks), ``--dataset``,
``--extractors``, ``--plugin`` and ``--cache``, and read them the same way (``run_spec``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.core import registry
from bench.core.config import PROFILES, get_profile
from bench.core.registry import SpecError

if TYPE_CHECKING:
    from bench.run import RunSpec


def add_source_arguments(parser: argparse.ArgumentParser, extractors_help: str) -> None:
    """``--profile``, ``--dataset``, ``--extractors``, ``--plugin`` and ``--cache``."""
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None,
                        help="quick | default | full (default: full with CUDA, else default)")
    parser.add_argument("--dataset", default=None,
                        help="homestead (default) | digits | folder:PATH | a plugin dataset")
    parser.add_argument("--extractors", help=extractors_help)
    parser.add_argument("--plugin", action="append", default=None,
                        help="extra plugin: a .py file or a package folder")
    parser.add_argument("--cache", help="cache folder (default: $BENCH_CACHE_DIR or "
                        "./.cache/bench)")


def csv_list(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(p.strip() for p in text.split(",") if p.strip())


def specs(text: str | None) -> tuple[str, ...] | None:
    """Split extractor specs on commas, keeping ``name:a=1,b=2`` together: a part that is a
    bare ``key=value`` continues the spec before it."""
    parts = csv_list(text)
    if parts is None:
        return None
    out: list[str] = []
    for part in parts:
        if out and "=" in part and ":" not in part.split("=", 1)[0]:
            out[-1] += "," + part
        else:
            out.append(part)
    return tuple(out)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, "comma-separated specs, e.g. pixels,random,precomputed:vecs.npz "
                                 "(default: the profile's)")
    parser.add_argument("--tasks", help="comma-separated task names (default: the profile's; "
                        "bench list names every task, plugins' too)")
    parser.add_argument("--seeds", type=int, help="number of seeds for seeded tasks (>= 1)")
    parser.add_argument("--out", default="results", help="folder for run outputs")
    parser.add_argument("--run-id", help="name of the run folder (default: time-profile-dataset); "
                        "an existing one is resumed: its rows are kept, missing cells computed")
    parser.add_argument("--resume", metavar="RUN_ID",
                        help="finish an interrupted run with the settings it was started with")
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
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                        help="training precision (default: the profile's, auto: bf16 where "
                             "the CPU or GPU has it natively, else fp32; docs/performance.md)")
    parser.add_argument("--ctr-backend", choices=("local", "ams"),
                        help="train the ctr task in this process (local) or on the AMS "
                             "parameter-server path (ams, docs/ams.md)")


def run_request(args: argparse.Namespace) -> dict[str, Any]:
    """What this ``bench run`` asks for; with ``--resume ID``, the request stored in that run's
    ``run.json``, overridden by whatever this command line gives."""
    given = {"profile": args.profile, "dataset": args.dataset,
             "extractors": None if args.extractors is None else list(specs(args.extractors)),
             "tasks": None if args.tasks is None else list(csv_list(args.tasks)),
             "seeds": args.seeds, "plugin": args.plugin, "ctr_backend": args.ctr_backend,
             "no_report": args.no_report, "reference": args.reference,
             "whiten_k": args.whiten_k, "whiten_shrinkage": args.whiten_shrinkage,
             "task_options": args.task_option, "precision": args.precision}
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
    if request.get("precision"):
        profile = replace(profile, precision=request["precision"])
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
               "task_options": list(request.get("task_options") or []),
               "precision": request.get("precision")}
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
