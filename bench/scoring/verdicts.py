"""A run's intervals, paired verdicts and ladder validity, from the evidence it kept.

The runner stores each task row's :class:`bench.scoring.stats.Evidence` under
``evidence/<task>/<extractor>/<variant>-seed<N>.npz``. After the run (and on ``bench report``),
:func:`compute` groups the evidence by (task, metric): all cells of one group were scored on
the same units, so one set of bootstrap draws serves every cell's interval and every paired
comparison. It writes

- ``verdicts.csv``: per (task, extractor, variant, metric) the value, standard error, 95%
  interval, seeds and units, and against the task's reference row (IDs only for ctr, ``random``
  elsewhere, the scratch backbone for fine-tuned rows, or the one the user names) the paired
  difference, its interval, p-value, verdict (better / worse / same) and the test's name;
- ``validity.csv``: per task and metric, the known-answer ladder (``ladder:clean``, its noise
  rungs, ``ladder:random``): the floor-to-ceiling gap in standard errors, whether the rungs
  come out in order, and how many adjacent pairs are separated at 95% (``check`` ``ladder``);
  and where a ladder rung has feature-set ablation rows (ctr), the DICM paper's ablation order
  on it (``check`` ``ablation``, :func:`ablation_validity`);
- ``ties.csv``: per (task, metric, variant) every pair of rows, the same paired test on the same
  draws (:mod:`bench.scoring.ties`), from which the report and ``bench compare`` find the rows
  the best does not beat at 95% (Holm-corrected).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core.cache import NPZ, Cache, array_digest, atomic_path, cached, load_npz, save_npz
from bench.scoring import stats, ties

VERDICT_COLUMNS = ["task", "extractor", "variant", "metric", "value", "se", "ci_low",
                   "ci_high", "n_seeds", "unit", "n_units", "reference", "diff", "diff_low",
                   "diff_high", "p_value", "verdict", "test"]
VALIDITY_COLUMNS = ["task", "variant", "metric", "rungs", "floor", "ceiling", "gap_se",
                    "in_order", "adjacent_separated", "adjacent_pairs", "verdict", "check"]
DEFAULT_REFERENCE = "random"
LADDER = re.compile(r"^ladder:(?:(clean)|(random)|noise=([0-9.]+))$")
SEP = "::"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_") or "_"


def save_evidence(run_dir: Path, task: str, extractor: str, variant: str, seed: int,
                  evidence: dict[str, stats.Evidence]) -> Path:
    """One npz per (task, extractor, variant, seed): every metric's evidence, and the cell."""
    path = Path(run_dir) / "evidence" / task / slug(extractor) / f"{slug(variant)}-seed{seed}.npz"
    arrays: dict[str, np.ndarray] = {"cell": np.array(json.dumps(
        {"task": task, "extractor": extractor, "variant": variant, "seed": seed,
         "metrics": sorted(evidence)}))}
    for metric, item in evidence.items():
        arrays.update(item.to_arrays(f"{metric}{SEP}"))
    return save_npz(path, **arrays)


def load_cells(run_dir: Path) -> dict[tuple[str, str], list[stats.Cell]]:
    """(task, metric) -> cells keyed (extractor, variant), seeds in seed order."""
    found: dict[tuple[str, str, str, str], dict[int, stats.Evidence]] = {}
    for path in sorted((Path(run_dir) / "evidence").glob("*/*/*.npz")):
        arrays = load_npz(path)
        cell = json.loads(str(arrays["cell"]))
        for metric in cell["metrics"]:
            key = (cell["task"], metric, cell["extractor"], cell["variant"])
            found.setdefault(key, {})[int(cell["seed"])] = stats.Evidence.from_arrays(
                arrays, f"{metric}{SEP}")
    groups: dict[tuple[str, str], list[stats.Cell]] = {}
    for (task, metric, extractor, variant), seeds in found.items():
        groups.setdefault((task, metric), []).append(
            stats.Cell((extractor, variant), [seeds[s] for s in sorted(seeds)]))
    return groups


def ladder_level(extractor: str) -> float | None:
    """A ladder rung's noise: 0 for ``ladder:clean``, inf for ``ladder:random``, else None."""
    match = LADDER.match(extractor)
    if match is None:
        return None
    if match.group(1):
        return 0.0
    return math.inf if match.group(2) else float(match.group(3))


def reference_for(task: str, extractor: str, variant: str, cells: dict[tuple[str, str], Any],
                  references: dict[str, str],
                  paired: dict[str, dict[str, str]] | None = None) -> tuple[str, str] | None:
    """The row a cell is compared with: the reference the task paired with this extractor
    (``paired``: task -> extractor -> reference row, e.g. each fine-tuned backbone with the
    scratch baseline of its own architecture; a fine-tuned row of an older run folder without
    that record: the one scratch row, if there is only one), else the task's reference extractor
    in the same variant (None when absent)."""
    own = (paired or {}).get(task, {}).get(extractor)
    scratch = [k for k in cells if k[0].startswith("scratch:") and k[1] == variant]
    if own is None and variant == "ft" and len(scratch) == 1:
        own = scratch[0][0]  # a run folder from before the pairing was recorded
    key = (own, variant) if own is not None else (references.get(task, DEFAULT_REFERENCE),
                                                  variant)
    if key not in cells or key == (extractor, variant):
        return None
    return key


def cached_resample(cells: list[stats.Cell], n_resamples: int,
                    cache: Cache | None = None) -> np.ndarray:
    """``stats.resample``, cached under a hash of every cell's key and evidence: a re-run whose
    tasks left the same evidence (warm caches) reuses the bootstrap draws."""
    if cache is None:
        return stats.resample(cells, n_resamples)
    parts: list[Any] = [n_resamples, stats.BOOTSTRAP_SEED]
    for cell in cells:
        parts.append(list(cell.key))
        for i, evidence in enumerate(cell.seeds):
            for name, array in sorted(evidence.to_arrays(f"s{i}").items()):
                parts += [name, np.asarray(array)]
    return cached(cache, "bootstrap", array_digest(*parts),
                  lambda: {"draws": stats.resample(cells, n_resamples)}, codec=NPZ,
                  valid=lambda v: "draws" in v)["draws"]


def compute(run_dir: Path, references: dict[str, str] | None = None,
            lower_is_better: Callable[[str], bool] = lambda metric: False,
            n_resamples: int = stats.N_RESAMPLES,
            cache: Cache | None = None,
            paired: dict[str, dict[str, str]] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``verdicts.csv`` and ``validity.csv`` of a run folder (written, and returned; ``ties.csv``
    is written beside them, see :mod:`bench.scoring.ties`); with a
    ``cache`` the bootstrap draws of unchanged evidence are reused; ``paired``: per task, the
    reference row of particular extractors (see :func:`reference_for`)."""
    references = references or {}
    rows, validity, pairs = [], [], []
    for (task, metric), cells in load_cells(run_dir).items():
        draws = cached_resample(cells, n_resamples, cache)
        by_key = {c.key: (c, d) for c, d in zip(cells, draws)}
        lower = lower_is_better(metric)
        for cell, cell_draws in zip(cells, draws):
            iv = stats.interval(cell, cell_draws)
            row = {"task": task, "extractor": cell.key[0], "variant": cell.key[1],
                   "metric": metric, "value": iv.value, "se": iv.se, "ci_low": iv.low,
                   "ci_high": iv.high, "n_seeds": iv.n_seeds, "unit": iv.unit,
                   "n_units": iv.n_units}
            ref = reference_for(task, *cell.key, by_key, references, paired)
            if ref is not None:
                test = stats.compare(cell, cell_draws, *by_key[ref], lower_is_better=lower)
                row |= {"reference": ref[0], "diff": test.diff, "diff_low": test.low,
                        "diff_high": test.high, "p_value": test.p_value,
                        "verdict": test.verdict, "test": test.test}
            rows.append(row)
        validity += ladder_validity(task, metric, by_key, lower)
        validity += ablation_validity(task, metric, by_key, lower, references.get(task))
        pairs += ties.pair_rows(task, metric, by_key)
    verdicts = pd.DataFrame(rows, columns=VERDICT_COLUMNS)
    checks = pd.DataFrame(validity, columns=VALIDITY_COLUMNS)
    tied = pd.DataFrame(pairs, columns=ties.TIES_COLUMNS)
    for name, frame in (("verdicts.csv", verdicts), ("validity.csv", checks),
                        (ties.TIES_FILE, tied)):
        with atomic_path(Path(run_dir) / name) as tmp:
            frame.to_csv(tmp, index=False)
    return verdicts, checks


def ladder_validity(task: str, metric: str, by_key: dict[tuple[str, str], tuple],
                    lower: bool) -> list[dict[str, Any]]:
    """Per variant with at least a ceiling and a floor: the ladder's order and separation."""
    out = []
    for variant in sorted({k[1] for k in by_key}):
        rungs = sorted(((level, key) for key in by_key if key[1] == variant
                        and (level := ladder_level(key[0])) is not None), key=lambda t: t[0])
        if len(rungs) < 2 or rungs[0][0] != 0 or not math.isinf(rungs[-1][0]):
            continue
        values = [by_key[key][0].seed_values().mean() for _, key in rungs]
        sign = -1 if lower else 1  # rungs go from best (clean) to worst (random)
        # in order: no rung beats the one above it at 95% (two rungs within each other's noise
        # are tied, whichever mean happens to be higher); resolves: every pair separated too
        separated = reversed_pairs = 0
        for (_, better), (_, worse) in zip(rungs, rungs[1:]):
            test = stats.compare(*by_key[better], *by_key[worse], lower_is_better=lower)
            separated += test.verdict == "better"
            reversed_pairs += test.verdict == "worse"
        in_order = reversed_pairs == 0
        span = stats.compare(*by_key[rungs[0][1]], *by_key[rungs[-1][1]], lower_is_better=lower)
        gap_se = span.diff / span.se if span.se > 0 else math.inf
        pairs = len(rungs) - 1
        out.append({"task": task, "variant": variant, "metric": metric,
                    "rungs": " > ".join(k[0] for _, k in rungs), "floor": values[-1],
                    "ceiling": values[0], "gap_se": sign * gap_se, "in_order": in_order,
                    "adjacent_separated": separated, "adjacent_pairs": pairs,
                    "verdict": "resolves" if in_order and separated == pairs else
                    "in order" if in_order else "out of order", "check": "ladder"})
    return out


ABLATION = re.compile(r"^(?P<rung>.+) \[(?P<set>ad|behavior, (?P<agg>[a-z]+))\]$")


def ablation_rows(by_key: dict[tuple[str, str], Any], reference: str | None
                  ) -> list[tuple[str, str, dict[str, tuple[str, str]]]]:
    """(rung, variant, {"dicm", "behavior", "ad", "ids": key}) for every ladder rung (not the
    floor) whose main row, ``[ad]`` and ``[behavior, agg]`` rows and the ID-only ``reference``
    are all in ``by_key``."""
    found: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}
    for key in by_key:
        match = ABLATION.match(key[0])
        if match is None:
            continue
        name = "ad" if match.group("set") == "ad" else "behavior"
        found.setdefault((match.group("rung"), key[1]), {})[name] = key
    out = []
    for (rung, variant), keys in sorted(found.items()):
        level = ladder_level(rung)
        keys |= {"dicm": (rung, variant), "ids": (str(reference), variant)}
        if level is None or math.isinf(level) or not all(k in by_key for k in keys.values()):
            continue
        if len(keys) == 4:
            out.append((rung, variant, keys))
    return out


def ablation_validity(task: str, metric: str, by_key: dict[tuple[str, str], tuple],
                      lower: bool, reference: str | None) -> list[dict[str, Any]]:
    """The DICM paper's ablation (Ge et al., CIKM 2018: IDs only < ad image, behaviour images
    < both) as a known answer on ladder rungs, whose images carry what users click on: per rung
    with the three ablation rows, the paired tests dicm vs [behavior], [behavior] vs IDs only
    and [ad] vs IDs only. ``in_order``: none reversed at 95%; ``resolves``: all three better."""
    out = []
    for rung, variant, keys in ablation_rows(by_key, reference):
        pairs = [("dicm", "behavior"), ("behavior", "ids"), ("ad", "ids")]
        tests = [stats.compare(*by_key[keys[a]], *by_key[keys[b]], lower_is_better=lower)
                 for a, b in pairs]
        better = sum(t.verdict == "better" for t in tests)
        in_order = not any(t.verdict == "worse" for t in tests)
        span = stats.compare(*by_key[keys["dicm"]], *by_key[keys["ids"]], lower_is_better=lower)
        sign = -1 if lower else 1
        out.append({"task": task, "variant": variant, "metric": metric,
                    "rungs": f"{rung}: dicm > [behavior] > IDs only; [ad] > IDs only",
                    "floor": by_key[keys["ids"]][0].seed_values().mean(),
                    "ceiling": by_key[keys["dicm"]][0].seed_values().mean(),
                    "gap_se": sign * (span.diff / span.se if span.se > 0 else math.inf),
                    "in_order": in_order, "adjacent_separated": better,
                    "adjacent_pairs": len(pairs),
                    "verdict": "resolves" if better == len(pairs) else
                    "in order" if in_order else "out of order", "check": "ablation"})
    return out
