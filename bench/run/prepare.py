"""Before anything runs: every check a user can fail, as one line.

``prepare_run`` checks seeds, names, options, the dataset, the run folder and an earlier
session's settings, and raises ``RunRefused`` with one line (recorded in the run folder's
``run.json``), so a typo in the last extractor spec costs nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.core import registry
from bench.core.cache import (
    Busy,
    Cache,
    DamagedFileError,
    exclusive,
    quarantine,
    write_json,
)
from bench.core.config import Profile
from bench.core.data import Dataset
from bench.run.resume import (
    Previous,
    ResumeError,
    load_previous,
    run_config,
)
from bench.vectors import variants

log = logging.getLogger(__name__).info


@dataclass
class RunSpec:
    profile: Profile
    dataset: str = "homestead"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    extractors: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    seeds: int = 1
    out_root: Path = Path("results")
    run_id: str | None = None
    plugins: tuple[str, ...] = ()
    report: bool = True
    command: dict[str, Any] = field(default_factory=dict)  # the CLI request, for --resume
    reference: str | None = None  # the row every other is tested against (default per task)


class RunRefused(ValueError):
    """Bad input found before anything ran: one line for the user (exit status 2). The run
    folder records it when it could be written (``run_dir``)."""

    def __init__(self, message: str, run_dir: Path | None = None):
        super().__init__(message)
        self.run_dir = run_dir


# What bad input raises while a run is prepared (DatasetError, EmbeddingError, SpecError and
# ResumeError are ValueErrors; a missing file or an unwritable folder an OSError).
USER_ERRORS = (ValueError, OSError, KeyError)


@dataclass
class Prepared:
    """A run that passed every check: its folder, settings, earlier session, data, extractors
    (spec text, extractor) and tasks (name, task)."""

    spec: RunSpec
    run_id: str
    dir: Path
    cache: Cache
    config: dict[str, Any]
    previous: Previous | None
    dataset: Dataset
    extractors: list[tuple[str, Any]]
    tasks: list[tuple[str, Any]]
    # the run folder's lock (``LOCK_FILE``), held from the checks to the session's end
    hold: ExitStack = field(default_factory=ExitStack)


LOCK_FILE = ".lock"  # one session per run folder at a time (cache.exclusive)


def prepare_run(spec: RunSpec, cache: Cache | None = None) -> Prepared:
    """Check the request before anything runs. Bad input raises ``RunRefused`` (one line,
    recorded in the run folder's ``run.json`` when the folder can be written)."""
    cache = cache or Cache()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id = spec.run_id or f"{stamp}-{spec.profile.name}-{spec.dataset.split(':')[0]}"
    run_dir = Path(spec.out_root) / run_id
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as error:
        raise RunRefused(f"cannot write the run folder {run_dir}: "
                         f"{error.strerror or error}") from None
    hold = ExitStack()
    try:  # refused, not recorded: run.json belongs to the session that holds the folder
        hold.enter_context(exclusive(run_dir / LOCK_FILE, wait=False))
    except Busy as busy:
        raise RunRefused(f"run {run_id} is in use by another session ({busy.holder}); wait "
                         "for it to finish, or give another --run-id") from None
    try:
        prepared = _prepare(spec, cache, run_id, run_dir)
    except USER_ERRORS as error:
        message = describe_error(error)
        record_refusal(run_dir, spec, run_id, message)
        hold.close()
        raise RunRefused(message, run_dir) from error
    except Exception as error:  # a bug, not bad input: keep its traceback in the run folder
        record_refusal(run_dir, spec, run_id, describe_error(error), status="crashed",
                       trace=traceback.format_exc())
        hold.close()
        raise
    prepared.hold = hold
    return prepared


def _prepare(spec: RunSpec, cache: Cache, run_id: str, run_dir: Path) -> Prepared:
    if int(spec.seeds) < 1:
        raise registry.SpecError(f"--seeds must be at least 1, got {spec.seeds}")
    registry.load_plugins(spec.plugins)
    for problem in registry.load_errors:
        log(str(problem))
    precision = resolve_run_precision(spec)
    config = run_config(spec.profile, spec.dataset, spec.dataset_options)
    previous = load_previous(run_dir, config)
    tasks = [(name, registry.find_task(name)) for name in dict.fromkeys(spec.tasks)]
    try:  # bad whitening or ``variants`` options are refused before anything runs
        variants.check_options(spec.profile.whitening)
        for _, task in tasks:
            variants.scheduled(task, task.options(spec.profile))
    except ValueError as error:
        raise registry.SpecError(str(error)) from None
    extractors = [(text, registry.build_extractor(text, spec.profile))
                  for text in dict.fromkeys(spec.extractors)]
    names = [extractor.name for _, extractor in extractors]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise registry.SpecError(f"extractor {twice[0]!r} is requested twice (its rows would "
                                 "mix); give each spec once")
    dataset = build_dataset(spec, cache)
    if previous is not None:
        same_content(previous.info, dataset, run_id)
    for _, extractor in extractors:
        validate = getattr(extractor, "validate", None)
        if callable(validate):
            validate(dataset)
    log(precision)  # once every check passed: a refused run prints its one line only
    return Prepared(spec, run_id, run_dir, cache, config, previous, dataset, extractors, tasks)


def resolve_run_precision(spec: RunSpec) -> str:
    """Resolve the profile's training precision once for the run's device (``auto``: bf16
    where native, else fp32): every extractor and task of the run then reads the resolved
    value, and run.json records it (``profile.precision``). Returns the log line that says
    which and why."""
    from bench.run.session import run_device
    from bench.train.precision import describe, resolve_precision

    device = run_device(spec.profile)
    requested = spec.profile.precision
    resolved = resolve_precision(requested, device)
    spec.profile = replace(spec.profile, precision=resolved)
    return describe(requested, resolved, device)


def same_content(earlier: dict[str, Any], dataset: Dataset, run_id: str) -> None:
    """Refuse to add rows on a dataset whose content changed since the run began (its
    fingerprint differs), naming the parts that changed when the dataset describes them
    (``info["content"]``: a folder's manifest, images and impressions log)."""
    before = earlier.get("dataset_fingerprint")
    if before is None or before == dataset.fingerprint:
        return
    old, new = earlier.get("dataset_content") or {}, dataset.info.get("content") or {}
    changed = [part for part in new if part in old and old[part] != new[part]]
    what = ", ".join(changed) if changed else f"fingerprint {before} -> {dataset.fingerprint}"
    raise ResumeError(f"run {run_id} was computed on other content of dataset {dataset.name} "
                      f"(changed: {what}); its rows would mix old and new data, so start a new "
                      "--run-id")


def build_dataset(spec: RunSpec, cache: Cache) -> Dataset:
    """The run's dataset. A damaged file in the cache that a dataset plugin reads with
    ``load_npz`` is moved aside and the dataset built again, once."""
    name = spec.dataset.split(":")[0]
    try:
        return registry.build_dataset(name, cache, **spec.dataset_options)
    except DamagedFileError as error:
        path = error.path
        if path is None or not path.resolve().is_relative_to(Path(cache.root).resolve()):
            raise
        quarantine(path, error)
        return registry.build_dataset(name, cache, **spec.dataset_options)


def describe_error(error: BaseException) -> str:
    """One line: our errors' own messages, others prefixed with their type."""
    from bench.core.data import DatasetError
    from bench.embed.embeddings import EmbeddingError
    from bench.run.resume import ResumeError

    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    text = " ".join(text.split())
    if isinstance(error, DatasetError | EmbeddingError | ResumeError | registry.SpecError):
        return text
    return f"{type(error).__name__}: {text}"


def record_refusal(run_dir: Path, spec: RunSpec, run_id: str, message: str,
                   status: str = "invalid", trace: str | None = None) -> None:
    """Write why a run was refused into its folder: a new ``run.json`` with ``status``, or,
    beside an earlier session's record, one more entry in its ``refusals``."""
    entry = {"time": dt.datetime.now().isoformat(timespec="seconds"), "error": message,
             "command": spec.command, **({"traceback": trace} if trace else {})}
    path = run_dir / "run.json"
    try:
        import json

        info = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict) and info.get("run_config") is not None:
        info.setdefault("refusals", []).append(entry)
    else:
        info = {"run": run_id, "status": status, "error": message, "command": spec.command,
                "profile": spec.profile.name, "dataset": spec.dataset,
                "extractors": list(spec.extractors), "tasks": list(spec.tasks),
                "refusals": [entry]}
    try:
        write_json(path, info)
    except OSError:
        pass  # the message on stderr is all there is
