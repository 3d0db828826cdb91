"""Which cells run, in which order: extractors, their tasks' variants and seeds, then references.

``execute_run`` evaluates the (extractor, variant, task, seed) cells an earlier session has not
finished: every extractor embedded through ``bench.embed.ranks``, each task on the variants it
declares, then the tasks' declared reference rows (in reference order), all through one cell
loop (``evaluate_cells``); then the verdicts and the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core import registry
from bench.core.cache import (
    Cache,
    atomic_path,
    read_cached,
)
from bench.core.config import Profile
from bench.core.data import Dataset
from bench.core.extractor import FitContext
from bench.core.metric_info import MetricBook
from bench.embed.embeddings import Embeddings
from bench.embed.key import embeddings_path
from bench.embed.ranks import embed_dataset
from bench.run.folder import NO_SPACE, no_space
from bench.run.pictures import RunArtifacts
from bench.run.prepare import Prepared, RunSpec, prepare_run
from bench.run.resume import (
    Cell,
)
from bench.run.session import Run, RunInterrupted, protocol_gap
from bench.scoring import verdicts
from bench.tasks import Reference, TaskContext
from bench.vectors import variants

log = logging.getLogger(__name__).info


ROW_OWNER = {"extractor", "variant", "seed"}  # the cell's, never a task row's


def cell_rows(task_name: str, task_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task's rows, checked: a row belongs to its cell and never names its own extractor,
    variant or seed (rows of no extractor are the task's declared ``references``)."""
    for row in task_rows:
        claimed = sorted(ROW_OWNER & set(row))
        if claimed:
            raise ValueError(f"task {task_name!r} returned a row naming its own "
                             f"{', '.join(claimed)}; a row belongs to its cell (declare "
                             "reference rows with the task's references())")
    return task_rows


def run_benchmark(spec: RunSpec, cache: Cache | None = None) -> Run:
    """Prepare (``RunRefused`` on bad input) and execute a run."""
    return execute_run(prepare_run(spec, cache))


def execute_run(prepared: Prepared) -> Run:
    """Evaluate every cell not done yet, extractor by extractor; ``RunInterrupted`` after
    recording ``status: interrupted`` when the user stops it."""
    spec = prepared.spec
    run = Run(prepared)
    resumed = f", resuming ({resume_summary(run)})" if run.previous else ""
    log(f"run {run.run_id}: profile {spec.profile.name}, dataset {spec.dataset}, "
        f"extractors {','.join(spec.extractors)}, tasks {','.join(spec.tasks)}{resumed}")
    try:
        run.save()
        pictures = RunArtifacts(run.dataset)  # embedding-map sample and KNN grid for the report
        for spec_text, extractor in prepared.extractors:
            run_extractor(run, spec_text, extractor, pictures, prepared.cache)
        evaluate_references(run, prepared.cache)
        pictures.save(run.dir)
        run.errors += pictures.errors
        write_verdicts(run)
        run.finish()
        write_outputs(run, full=spec.report)
    except KeyboardInterrupt as interrupt:
        if run.status == "running":
            run.finish("interrupted")
            write_outputs(run, full=False)
        raise RunInterrupted(run) from interrupt
    except OSError as error:  # a full disk: record the failed session where it still fits
        if error.errno not in NO_SPACE:
            raise
        storage = no_space(error, run.dir)
        run.errors.append({"where": "run folder", "error": storage.strerror})
        try:
            run.finish("failed")
        except OSError:
            try:  # run.json is small: it may fit where results.csv did not
                run.save(results=False)
            except OSError:
                pass
        raise storage from None
    finally:
        prepared.hold.close()  # the run folder's lock
    return run


def resume_summary(run: Run) -> str:
    """What a resumed session has left: the cells planned but not done, and the extractors
    with cells still to compute (one a SIGKILL stopped before it began has no cells yet)."""
    todo = [spec for spec, extractor in run.prepared.extractors
            if not run.extractor_done(spec, extractor)]
    return (f"{len(run.missing())} planned cells not done, {len(todo)} of "
            f"{len(run.prepared.extractors)} extractors with cells to compute")


def run_extractor(run: Run, spec_text: str, extractor: Any, pictures: RunArtifacts,
                  cache: Cache) -> None:
    """Fit, embed and evaluate one extractor's missing cells; an earlier session's finished
    extractor only lends its cached embeddings to the pictures."""
    reason = unservable(extractor, run.dataset)
    if reason:
        run.not_started.remove(spec_text)
        run.skipped.append({"extractor": extractor.name, "reason": reason})
        run.info["validity_note"] = reason
        log(f"skipping extractor {extractor.name}: {reason}")
        return
    if run.extractor_done(spec_text, extractor):
        run.not_started.remove(spec_text)
        log(f"{extractor.name}: every cell done in an earlier session")
        path = embeddings_path(extractor, run.dataset, cache)
        cached = read_cached(path, Embeddings.load)
        if cached is not None:
            pictures.add(extractor.name, cached)
            run.sources[spec_text] = (extractor, path)  # fitted only if a reference needs it
        return
    try:
        embedded = embed_dataset(extractor, run.dataset, cache,
                                 run.dir / "artifacts" / extractor.name)
        embeddings = embedded.embeddings
        run.timings[extractor.name] = embedded.timings
        # what was loaded: weights' sha256 or the model's revision for third-party models
        run.info.setdefault("extractor_configs", {})[extractor.name] = extractor.config()
        run.info.setdefault("embeddings", {})[extractor.name] = embeddings.meta.get("cache_file")
        run.info.setdefault("embeddings_fingerprints", {})[extractor.name] = embeddings.meta.get(
            "fingerprint")  # None: a cut training's vectors, never cached
    except Exception as error:  # noqa: BLE001
        run.not_started.remove(spec_text)
        run.error(f"extractor {spec_text}", error)
        run.save()
        return
    run.not_started.remove(spec_text)
    run.info.setdefault("row_kinds", {})[extractor.name] = row_kind(extractor)
    evaluate_tasks(run, spec_text, extractor, embeddings, cache)
    pictures.add(extractor.name, embeddings)
    cache_file = embeddings.meta.get("cache_file")  # read back for references, not kept
    run.sources[spec_text] = (extractor, Path(cache_file) if cache_file else embeddings)
    run.fitted.add(spec_text)
    run.save()


def evaluate_tasks(run: Run, spec_text: str, extractor: Any, embeddings: Embeddings,
                   cache: Cache) -> None:
    """Every cell of this extractor that is not done yet: (variant, task, seed). Each task sees
    its own variants (whitening fitted on the train rows of the task's population); a task
    whose ``extractor_protocol`` the extractor does not satisfy is skipped with that reason."""
    fit_cut = getattr(extractor, "fit_cut", None)
    for name, task in run.active:
        if protocol_gap(task, extractor):
            continue  # said once, when the run began (Run.__init__)
        options = task.options(run.spec.profile)
        wanted = variants.scheduled(task, options)
        cells = [Cell(spec_text, variant, name, seed) for variant in wanted
                 for seed in run.seeds_of(task)]
        for cell in cells:
            run.plan(cell, extractor.name)
        todo = [cell for cell in cells if not run.is_done(cell)]
        if not todo:
            continue
        start = time.perf_counter()
        by_variant = task_variants(run, extractor, embeddings, task, wanted)
        evaluate_cells(run, name, extractor.name, f"on {extractor.name}", todo, by_variant,
                       lambda vectors, ctx, task=task: task.evaluate(vectors, run.dataset, ctx),
                       TaskContext(options=options, extractor=extractor,
                                   profile=run.spec.profile, cache=cache, device=run.device),
                       fit_cut)
        if options.get("whitening_sweep") and "w" in by_variant:
            add_sweep(run, extractor, embeddings, task, options, cache)
        run.spend(extractor.name, f"{name}_s", start)


def evaluate_cells(run: Run, name: str, label: str, what: str, todo: list[Cell],
                   by_variant: dict[str, Embeddings] | None,
                   evaluate: Callable[[Embeddings | None, TaskContext], list[dict[str, Any]]],
                   context: TaskContext, fit_cut: str | None) -> None:
    """Evaluate each cell under ``label`` (an extractor's name or a reference's) with the
    ``context`` set to the cell's seed and variant; a failed cell is an error that leaves the
    others running. ``by_variant`` None: the rows read no vectors (all variants allowed);
    else a cell whose variant it lacks is dropped (e.g. no ``w`` with too few train rows)."""
    for cell in todo:
        if by_variant is not None and cell.variant not in by_variant:
            run.cells.pop(cell, None)
            continue
        ctx = replace(context, seed=cell.seed, variant=cell.variant)
        try:
            rows = cell_rows(name, evaluate((by_variant or {}).get(cell.variant), ctx))
        except Exception as error:  # noqa: BLE001
            run.error(f"task {name} {what}/{cell.variant} seed {cell.seed}", error)
            run.cell_failed(cell, label)
            continue
        run.add_cell(cell, label, run.dataset.name, rows, fit_cut)


def task_variants(run: Run, extractor: Any, embeddings: Embeddings, task: Any,
                  wanted: tuple[str, ...]) -> dict[str, Embeddings]:
    """The ``wanted`` variants (``raw``, ``w``) for one task; a whitening that cannot be
    fitted is an error and leaves ``raw`` alone."""
    try:
        by_variant, fitted = variants.for_task(embeddings, run.dataset, task,
                                               run.spec.profile.whitening, run.prepared.cache,
                                               wanted)
    except Exception as error:  # noqa: BLE001
        run.error(f"whitening for task {task.name} on {extractor.name}", error)
        return {"raw": embeddings}
    if fitted is not None:
        run.info.setdefault("whitening", {}).setdefault(extractor.name, {})[task.name] = fitted
    return by_variant


def add_sweep(run: Run, extractor: Any, embeddings: Embeddings, task: Any,
              options: dict[str, Any], cache: Cache) -> None:
    """The task's scores over whitening dimensions k, for the report's sweep plot
    (``whitening_sweep.csv``; an earlier session's rows of other extractors are kept)."""
    fitted = run.info.get("whitening", {}).get(extractor.name, {}).get(task.name)
    if fitted is None:
        return  # the ``w`` variant was not fitted (its error is recorded)
    ctx = TaskContext(seed=0, variant="w", options=options, extractor=extractor,
                      profile=run.spec.profile, cache=cache, device=run.device)
    try:
        rows = variants.sweep(embeddings, run.dataset, task, ctx, float(fitted["shrinkage"]))
    except Exception as error:  # noqa: BLE001
        run.error(f"whitening sweep of task {task.name} on {extractor.name}", error)
        return
    path = run.dir / "whitening_sweep.csv"
    frame = pd.DataFrame([{"extractor": extractor.name, "task": task.name, **row}
                          for row in rows])
    if path.is_file():
        old = pd.read_csv(path)
        keep = ~((old["extractor"] == extractor.name) & (old["task"] == task.name))
        frame = pd.concat([old[keep], frame], ignore_index=True)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def reference_order(extractors: list[tuple[str, Any]], profile: Profile
                    ) -> list[tuple[str, Any]]:
    """The order reference rows draw their sources from: the profile's ``extractors`` list
    first (matched by spec or name), then the rest by name; never the order the extractors
    were given or ran in, so a reordered run declares the same references."""
    listed = list(profile.extractors)

    def rank(item: tuple[str, Any]) -> tuple[int, str, str]:
        spec, extractor = item
        name = str(getattr(extractor, "name", spec))
        position = next((i for i, text in enumerate(listed) if text in (spec, name)),
                        len(listed))
        return position, name, spec

    return sorted(extractors, key=rank)


def reference_sources(run: Run, task: Any, cache: Cache) -> list[tuple[str, Any]]:
    """The extractors a task's ``references`` may draw on, in reference order: every one this
    run embedded; with an ``extractor_protocol``, only those satisfying it, fitted (one an
    earlier session finished is fitted here from its caches: the task may read its model)."""
    protocol = task.extractor_protocol
    out = []
    for spec, (extractor, _) in run.sources.items():
        if protocol is None:
            out.append((spec, extractor))
        elif isinstance(extractor, protocol):
            if spec not in run.fitted:
                start = time.perf_counter()
                extractor.fit(run.dataset, FitContext(cache=cache, seed=0,
                                                      log_dir=run.dir / "artifacts" /
                                                      extractor.name))
                run.fitted.add(spec)
                run.spend(extractor.name, "fit_s", start)
            out.append((spec, extractor))
    return reference_order(out, run.spec.profile)


def evaluate_references(run: Run, cache: Cache) -> None:
    """Every task's declared reference rows (ctr's ID-only ranker and ablations, the
    fine-tuning tasks' scratch backbones), after every extractor's own cells: each reference
    once per variant and seed, under its label, its cells not done yet."""
    for name, task in run.active:
        options = task.options(run.spec.profile)
        try:
            references = task.references(reference_sources(run, task, cache), run.dataset,
                                         options)
        except Exception as error:  # noqa: BLE001
            run.error(f"references of task {name}", error)
            continue
        for reference in references:
            run.info.setdefault("row_kinds", {})[reference.label] = "reference"
            for member in reference.reference_of:
                run.info.setdefault("paired_references", {}).setdefault(name, {})[member] = \
                    reference.label
            start = time.perf_counter()
            evaluate_reference(run, name, task, reference, options, cache)
            run.spend(reference.label, f"{name}_s", start)
        run.save()


def evaluate_reference(run: Run, name: str, task: Any, reference: Reference,
                       options: dict[str, Any], cache: Cache) -> None:
    """The cells of one reference (its variants x the task's seeds) not done yet. A reference
    made from its source's vectors sees the source's variants, and its rows are cut when the
    source's training was."""
    allowed = variants.available(task, run.dataset, options)
    cells = [Cell(reference.label, variant, name, seed) for variant in reference.variants
             if variant in allowed for seed in run.seeds_of(task)]
    for cell in cells:
        run.plan(cell, reference.label)
    todo = [cell for cell in cells if not run.is_done(cell)]
    if not todo:
        return
    extractor, by_variant, fit_cut = None, None, None
    if reference.source is not None:
        extractor, held = run.sources[reference.source]
        if reference.uses_vectors:
            embeddings = Embeddings.load(held) if isinstance(held, Path) else held
            by_variant = task_variants(run, extractor, embeddings, task,
                                       variants.scheduled(task, options))
            fit_cut = getattr(extractor, "fit_cut", None)
    evaluate_cells(run, name, reference.label, f"reference {reference.label}", todo, by_variant,
                   lambda vectors, ctx: task.evaluate_reference(reference, vectors, run.dataset,
                                                                ctx),
                   TaskContext(options=options, extractor=extractor, profile=run.spec.profile,
                               cache=cache, device=run.device),
                   fit_cut)


def task_references(tasks: list[str], reference: str | None) -> dict[str, str]:
    """Per task, the row every other row is tested against: ``--reference``, else the task's
    declared ``reference`` (IDs only for ctr, ``random`` by default)."""
    out = {}
    for name in tasks:
        try:
            declared = registry.find_task(name).reference
        except (KeyError, registry.SpecError):
            continue
        out[name] = reference or declared
    return out


def write_verdicts(run: Run) -> None:
    """``verdicts.csv`` and ``validity.csv`` from the evidence the tasks left (every session's)."""
    start = time.perf_counter()
    try:
        references = task_references(run.tasks, run.spec.reference)
        run.info["references"] = references
        run.info["main_scores"] = {name: registry.find_task(name).main_score_for(run.dataset)
                                   for name in references}
        verdicts.compute(run.dir, references,
                         MetricBook(run.info.get("metrics")).lower_is_better,
                         cache=run.prepared.cache, paired=run.info.get("paired_references"))
    except Exception as error:  # noqa: BLE001
        run.error("verdicts", error)
    run.timings.setdefault("verdicts", {})["compute_s"] = time.perf_counter() - start


def unservable(extractor: Any, dataset: Dataset) -> str | None:
    """Why the dataset cannot feed the extractor (None when it can): a reference extractor
    built from ground truth (modality ``latents``, the ladder) needs a dataset that has it."""
    if "latents" in getattr(extractor, "modalities", ()) and dataset.latents is None:
        return (f"dataset {dataset.name!r} has no ground-truth latents, so the known-answer "
                "ladder (and its validity check) cannot run on it")
    return None


def row_kind(extractor: Any) -> str:
    """``reference`` for an extractor that declares it is one (the known-answer ladder: made
    from the dataset's ground truth, never deployable), else ``extractor``."""
    return "reference" if getattr(extractor, "kind", "extractor") == "reference" else "extractor"


def write_outputs(run: Run, full: bool = True) -> None:
    """``summary.md`` always; plots and HTML when ``full``. Failures never lose results.csv."""
    try:
        from bench.report import build_report

        build_report(run.dir, html=full)
    except Exception as error:  # noqa: BLE001
        run.error("report", error)
        if run.status == "complete":
            run.status = "failed"
            if run.sessions:
                run.sessions[-1]["status"] = run.status
        run.save()
