"""How sure is each number: bootstrap over the unit of evaluation, the seed spread, paired tests.

A task hands back, beside each metric value, its :class:`Evidence`: what the value was computed
from, per observation (a query's neighbour agreement, a test item's correctness, an impression's
score and click), tagged with the unit that is resampled (query, item, user). From that:

- ``interval``: the metric's standard error is ``sqrt(se_boot^2 + s_seed^2 / S)``, where
  ``se_boot`` is the bootstrap standard error of the seed-mean over resamples of the units
  (``scipy.stats.bootstrap``, one resample shared by every seed) and ``s_seed`` the sample
  standard deviation of the S per-seed values (training noise; 0 for a seedless task, unknown
  and left out with one seed). The 95% interval is the value +- 1.96 standard errors.
- ``compare``: a paired test against a reference row evaluated on the same units: the difference
  of the two seed-means on each shared resample gives ``se_boot`` of the difference, the per-seed
  differences its seed part; ``z = diff / se`` and a two-sided normal p-value
  (``scipy.stats.norm``). A row is ``better`` or ``worse`` than the reference at 95% when p < 0.05.

Resampling units, not observations, keeps the interval honest when a unit holds many
observations (a user's impressions are correlated). AUC on a resample is the weighted
Mann-Whitney statistic with each impression weighted by how often its user was drawn (equal to
scikit-learn's ``roc_auc_score`` with ``sample_weight``; tested against it).

Scale: up to ``EXACT_UNITS`` (5,000) shared units the draws are that exact bootstrap. Above it
(a real log has millions of users) an exact resample costs ``units x resamples`` and, for
AUC, a dense [units, units] pair matrix; instead each cell's statistic is linearised in the
unit draw counts, ``theta(c) ~ theta + sum_u (c_u - 1) phi_u``, with the per-unit influence
``phi_u`` computed in one sort: ``(S_u - theta N_u) / N`` for means and GAUC, and for AUC the
clustered DeLong (Obuchowski) components ``(sum of the unit's positives' shares of negatives
below them) / P + (sum of its negatives' shares of positives above them) / N
- theta (p_u / P + n_u / N)``. The draws are then a Gaussian multiplier bootstrap of that
linear statistic, drawn in closed form from the cells' K x K covariance ``Phi^T Phi`` (centred),
which is what the multinomial bootstrap's variance tends to: memory O(observations + units x
cells), time O(observations log observations), and the pairing between cells is kept
(``compare`` still differences shared draws). ``benchmarks/interval_scale.py`` measures it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from bench.scoring.metrics import _group_auc, auc, gauc

CONFIDENCE = 0.95
N_RESAMPLES = 500  # standard errors to about 3% (1 / sqrt(2 B))
BOOTSTRAP_SEED = 20240611  # fixed: the same inputs give the same intervals
KINDS = ("mean", "auc", "gauc")
Z = float(scipy.stats.norm.ppf(0.5 + CONFIDENCE / 2))
TEST_NAME = "paired bootstrap over {units}{seeds}, two-sided z-test at 95%"
PLURAL = {"query": "queries"}


@dataclass
class Evidence:
    """Per-observation material of one metric value (one cell, one seed).

    ``kind``: ``mean`` (the metric is the mean of ``values``), ``auc`` (ROC AUC of ``values`` as
    scores against 0/1 ``labels``) or ``gauc`` (impression-weighted mean of per-unit AUC, units
    being the groups). ``units`` names each observation's unit (query id, item id, user id);
    observations of one unit are resampled together.
    """

    kind: str
    unit: str
    units: np.ndarray
    values: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"evidence kind must be one of {KINDS}, got {self.kind!r}")
        self.units = np.asarray(self.units).astype(str)
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.float64)
        if self.units.shape != self.values.shape or self.values.ndim != 1:
            raise ValueError(f"evidence: {len(self.units)} units for {self.values.shape} values")
        if self.kind != "mean" and (self.labels is None or self.labels.shape != self.values.shape):
            raise ValueError(f"evidence of kind {self.kind!r} needs one 0/1 label per value")

    def value(self) -> float:
        """The metric on the full sample (every unit once), by the metric functions."""
        if self.kind == "mean":
            return float(self.values.mean())
        if self.kind == "auc":
            return auc(self.labels, self.values)
        return gauc(self.labels, self.values, self.units)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}units": self.units, f"{prefix}values": self.values.astype(np.float32),
               f"{prefix}meta": np.array(f"{self.kind}|{self.unit}")}
        if self.labels is not None:
            out[f"{prefix}labels"] = self.labels.astype(np.int8)
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form, for caches that store results as JSON."""
        out = {"kind": self.kind, "unit": self.unit, "units": self.units.tolist(),
               "values": self.values.tolist()}
        if self.labels is not None:
            out["labels"] = self.labels.astype(int).tolist()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evidence:
        return cls(data["kind"], data["unit"], data["units"], data["values"], data.get("labels"))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> Evidence:
        kind, unit = str(arrays[f"{prefix}meta"]).split("|")
        labels = arrays.get(f"{prefix}labels")
        return cls(kind, unit, arrays[f"{prefix}units"], arrays[f"{prefix}values"],
                   None if labels is None else labels)


def mean_evidence(unit: str, units: Any, values: Any) -> Evidence:
    return Evidence("mean", unit, units, values)


class _Statistic:
    """The seed-mean of one cell's metric as a function of unit draw counts [B, U].

    Every kind is a ratio of two forms in the counts c: ``(c . S) / (c . N)`` for means (S, N:
    per-unit sums and observation counts) and GAUC (per-user n_g AUC_g and n_g), and for AUC
    ``c^T M c / ((c . P)(c . N))`` with M the (positive, negative) pairs ordered correctly
    between units. Seeds share the observations, so their S (or M) are averaged first and a
    resample costs one form per cell, whatever the number of seeds."""

    def __init__(self, seeds: Sequence[Evidence], universe: np.ndarray):
        kinds = {e.kind for e in seeds}
        if len(kinds) != 1:
            raise ValueError(f"one cell mixes evidence kinds {sorted(kinds)}")
        self.kind, n_units = kinds.pop(), len(universe)
        codes = [_codes(e.units, universe) for e in seeds]
        self.pairs = None
        if self.kind == "mean":
            self.sums = np.mean([np.bincount(c, e.values, minlength=n_units)
                                 for c, e in zip(codes, seeds)], axis=0)
            self.counts = np.mean([np.bincount(c, minlength=n_units) for c in codes], axis=0)
        elif self.kind == "gauc":
            parts = [_gauc_parts(c, e, n_units) for c, e in zip(codes, seeds)]
            self.sums = np.mean([p[0] for p in parts], axis=0)
            self.counts = np.mean([p[1] for p in parts], axis=0)
        else:
            parts = [_auc_parts(c, e, n_units) for c, e in zip(codes, seeds)]
            self.n_pos, self.n_neg = parts[0][1], parts[0][2]
            if any(not np.array_equal(p[1], self.n_pos) or not np.array_equal(p[2], self.n_neg)
                   for p in parts):
                raise ValueError("the seeds of one AUC cell were scored on different labels")
            self.pairs = np.mean([p[0] for p in parts], axis=0)

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.pairs is None:
                return (counts @ self.sums) / (counts @ self.counts)
            won = np.einsum("bu,bu->b", counts @ self.pairs, counts)
            return won / ((counts @ self.n_pos) * (counts @ self.n_neg))


def _codes(units: np.ndarray, universe: np.ndarray) -> np.ndarray:
    codes = np.searchsorted(universe, units)
    if len(universe) == 0 or not np.array_equal(universe[np.minimum(codes, len(universe) - 1)],
                                                units):
        raise ValueError("evidence units are not in the shared unit universe")
    return codes


def _gauc_parts(codes: np.ndarray, evidence: Evidence, n_units: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per unit n_g * AUC_g and n_g (zero for a unit with one class only)."""
    present, dense = np.unique(codes, return_inverse=True)
    auc_g, _, n_g = _group_auc(evidence.labels, evidence.values, dense.reshape(-1),
                               len(present))
    valid = ~np.isnan(auc_g)
    sums, counts = np.zeros(n_units), np.zeros(n_units)
    sums[present[valid]] = (n_g * auc_g)[valid]
    counts[present[valid]] = n_g[valid]
    return sums, counts


def _auc_parts(codes: np.ndarray, evidence: Evidence, n_units: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M, positives per unit, negatives per unit): M[u, v] counts the pairs (a positive of
    unit u, a negative of unit v) with the positive scored higher, ties counting 1/2."""
    if n_units > PAIR_MATRIX_UNITS:
        raise ValueError(f"AUC intervals resample at most {PAIR_MATRIX_UNITS} units (users), "
                         f"got {n_units}")
    positive = evidence.labels == 1
    pos_scores, pos_codes = evidence.values[positive], codes[positive]
    order = np.lexsort((evidence.values[~positive], codes[~positive]))
    neg_scores, neg_codes = evidence.values[~positive][order], codes[~positive][order]
    bounds = np.searchsorted(neg_codes, np.arange(n_units + 1))
    pairs = np.zeros((n_units, n_units))
    for v in np.flatnonzero(np.diff(bounds)):  # units with negatives
        scores = neg_scores[bounds[v]:bounds[v + 1]]
        below = np.searchsorted(scores, pos_scores, "left")
        ties = np.searchsorted(scores, pos_scores, "right") - below
        pairs[:, v] = np.bincount(pos_codes, below + 0.5 * ties, minlength=n_units)
    n_pos = np.bincount(pos_codes, minlength=n_units).astype(np.float64)
    n_neg = np.diff(bounds).astype(np.float64)
    return pairs, n_pos, n_neg


PAIR_MATRIX_UNITS = 5000  # the dense [U, U] pair matrix of AUC: 200 MB at this size
EXACT_UNITS = PAIR_MATRIX_UNITS  # above it, the linearised draws of ``_linear_draws``


def _influence(seeds: Sequence[Evidence], codes: Sequence[np.ndarray], n_units: int
               ) -> tuple[float, np.ndarray]:
    """(theta, phi [U]): a cell's seed-mean statistic at every unit drawn once and its
    influence per unit (the derivative of ``_Statistic`` in the draw counts at c = 1, see the
    module doc); never builds a [U, U] matrix."""
    kinds = {e.kind for e in seeds}
    if len(kinds) != 1:
        raise ValueError(f"one cell mixes evidence kinds {sorted(kinds)}")
    kind = kinds.pop()
    if kind != "auc":
        if kind == "mean":
            sums = np.mean([np.bincount(c, e.values, minlength=n_units)
                            for c, e in zip(codes, seeds)], axis=0)
            counts = np.mean([np.bincount(c, minlength=n_units) for c in codes], axis=0)
        else:
            parts = [_gauc_parts(c, e, n_units) for c, e in zip(codes, seeds)]
            sums = np.mean([p[0] for p in parts], axis=0)
            counts = np.mean([p[1] for p in parts], axis=0)
        total = counts.sum()
        if total <= 0:
            return math.nan, np.zeros(n_units)
        theta = float(sums.sum() / total)
        return theta, (sums - theta * counts) / total
    rows, cols, n_pos, n_neg = [], [], None, None
    for c, e in zip(codes, seeds):
        positive = e.labels == 1
        pos = np.bincount(c[positive], minlength=n_units).astype(np.float64)
        neg = np.bincount(c[~positive], minlength=n_units).astype(np.float64)
        if n_pos is None:
            n_pos, n_neg = pos, neg
        elif not (np.array_equal(pos, n_pos) and np.array_equal(neg, n_neg)):
            raise ValueError("the seeds of one AUC cell were scored on different labels")
        # both sides sorted once: the searches run in order, and bincount needs no unsorting
        order = np.argsort(e.values[positive], kind="stable")
        pos_scores, pos_codes = e.values[positive][order], c[positive][order]
        order = np.argsort(e.values[~positive], kind="stable")
        neg_scores, neg_codes = e.values[~positive][order], c[~positive][order]
        below = (np.searchsorted(neg_scores, pos_scores, "left")
                 + np.searchsorted(neg_scores, pos_scores, "right")) / 2
        above = len(pos_scores) - (np.searchsorted(pos_scores, neg_scores, "left")
                                   + np.searchsorted(pos_scores, neg_scores, "right")) / 2
        rows.append(np.bincount(pos_codes, below, minlength=n_units))  # sum_v M[u, v]
        cols.append(np.bincount(neg_codes, above, minlength=n_units))  # sum_v M[v, u]
    assert n_pos is not None and n_neg is not None
    total_pos, total_neg = n_pos.sum(), n_neg.sum()
    if total_pos == 0 or total_neg == 0:
        return math.nan, np.zeros(n_units)
    row, col = np.mean(rows, axis=0), np.mean(cols, axis=0)
    pairs = total_pos * total_neg
    theta = float(row.sum() / pairs)
    return theta, (row + col) / pairs - theta * (n_pos / total_pos + n_neg / total_neg)


def _linear_draws(cells: Sequence[Cell], codes: Sequence[Sequence[np.ndarray]], n_units: int,
                  n_resamples: int, seed: int) -> np.ndarray:
    """[n_cells, n_resamples] draws of the linearised statistics (module doc): Gaussian with
    the cells' covariance ``Phi_c^T Phi_c`` over units, so pairs of cells stay paired."""
    found = [_influence(c.seeds, cell_codes, n_units) for c, cell_codes in zip(cells, codes)]
    theta = np.array([t for t, _ in found])
    phi = np.stack([p for _, p in found], axis=1)  # [U, K]
    phi -= phi.mean(axis=0)  # the multinomial bootstrap's variance: centred per unit
    covariance = phi.T @ phi
    values, vectors = np.linalg.eigh(covariance)
    root = vectors * np.sqrt(np.clip(values, 0, None))  # covariance = root @ root.T
    normal = np.random.default_rng(seed).standard_normal((len(cells), n_resamples))
    draws = theta[:, None] + root @ normal
    draws[~np.isfinite(theta)] = np.nan
    return draws


@dataclass
class Cell:
    """The evidence of one table cell: a metric of one (extractor, variant), one per seed."""

    key: tuple
    seeds: list[Evidence] = field(default_factory=list)
    _values: np.ndarray | None = field(default=None, repr=False)
    _n_units: int | None = field(default=None, repr=False)  # set by ``resample``

    @property
    def unit(self) -> str:
        return self.seeds[0].unit

    def seed_values(self) -> np.ndarray:
        if self._values is None:
            self._values = np.array([e.value() for e in self.seeds])
        return self._values


def _distinct(arrays: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """The distinct arrays among ``arrays`` (the cells of one task usually share their units
    array) and, per array, the index of its distinct one: string work is done once each."""
    found: list[np.ndarray] = []
    index = []
    for array in arrays:
        for i, seen in enumerate(found):
            if seen is array or (seen.shape == array.shape and np.array_equal(seen, array)):
                index.append(i)
                break
        else:
            index.append(len(found))
            found.append(array)
    return found, index


def _universe(cells: Sequence[Cell]) -> np.ndarray:
    """The sorted distinct units of the cells (hashing each distinct units array once, then
    sorting only the distinct values)."""
    distinct, _ = _distinct([e.units for c in cells for e in c.seeds])
    return np.unique(np.concatenate([pd.unique(units) for units in distinct]))


def _encode(cells: Sequence[Cell]) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """(universe, codes per cell per seed): ``_universe`` and ``_codes`` in one pass over the
    strings, by hashing (``searchsorted`` on millions of strings takes minutes)."""
    evidence = [e for c in cells for e in c.seeds]
    distinct, index = _distinct([e.units for e in evidence])
    factorised = [pd.factorize(units) for units in distinct]
    universe, inverse = np.unique(np.concatenate([u for _, u in factorised]),
                                  return_inverse=True)
    offsets = np.cumsum([0] + [len(u) for _, u in factorised])
    codes = [inverse.reshape(-1)[offsets[i] + c] for i, (c, _) in enumerate(factorised)]
    flat = iter(codes[i] for i in index)
    return universe, [[next(flat) for _ in c.seeds] for c in cells]


def resample(cells: Sequence[Cell], n_resamples: int = N_RESAMPLES,
             seed: int = BOOTSTRAP_SEED, exact_units: int | None = None) -> np.ndarray:
    """Seed-mean of every cell on the same ``n_resamples`` bootstrap draws of the shared units:
    [n_cells, n_resamples]. Units a cell lacks simply weigh nothing in it. Above
    ``exact_units`` shared units the draws are the linearised ones (module doc)."""
    universe, codes = _encode(cells)
    for cell, cell_codes in zip(cells, codes):  # for ``interval``
        cell._n_units = int(np.count_nonzero(np.bincount(np.concatenate(cell_codes),
                                                         minlength=len(universe))))
    exact_units = EXACT_UNITS if exact_units is None else exact_units
    if len(universe) > exact_units:
        return _linear_draws(cells, codes, len(universe), n_resamples, seed)
    statistics = [_Statistic(c.seeds, universe) for c in cells]
    n_units = len(universe)

    def seed_means(draws: np.ndarray, axis: int = -1) -> np.ndarray:
        if draws.ndim == 1:  # scipy also asks for the statistic on the original sample
            return seed_means(draws[None, :])[:, 0]
        batch = draws.shape[0]
        offsets = (np.arange(batch) * n_units)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=batch * n_units)
        counts = counts.reshape(batch, n_units).astype(np.float64)
        return np.stack([statistic(counts) for statistic in statistics])

    with warnings.catch_warnings():  # only the draws are used, never scipy's own interval
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        result = scipy.stats.bootstrap(
            (np.arange(n_units),), seed_means, n_resamples=n_resamples,
            batch=max(1, min(n_resamples, 2_000_000 // max(n_units, 1))), vectorized=True,
            method="percentile", random_state=np.random.default_rng(seed))
    return np.atleast_2d(result.bootstrap_distribution)


@dataclass
class Interval:
    value: float  # mean over seeds of the full-sample values
    se: float
    n_seeds: int
    n_units: int
    unit: str
    support: tuple[float, float] = (-math.inf, math.inf)  # where the metric can lie

    @property
    def low(self) -> float:
        return max(self.value - Z * self.se, self.support[0])

    @property
    def high(self) -> float:
        return min(self.value + Z * self.se, self.support[1])


@dataclass
class Comparison:
    reference: tuple
    diff: float
    se: float
    p_value: float
    verdict: str  # "better", "worse" or "same" (direction already applied)
    test: str

    @property
    def low(self) -> float:
        return self.diff - Z * self.se

    @property
    def high(self) -> float:
        return self.diff + Z * self.se


def _seed_var(values: np.ndarray) -> float:
    return float(np.var(values, ddof=1)) if len(values) > 1 else 0.0


def interval(cell: Cell, draws: np.ndarray) -> Interval:
    """The cell's value with its standard error (bootstrap part from ``draws``, a row of
    :func:`resample`, and the seed part)."""
    values = cell.seed_values()
    boot = float(np.nanstd(draws, ddof=1)) if np.isfinite(draws).sum() > 1 else 0.0
    se = math.sqrt(boot ** 2 + _seed_var(values) / len(values))
    n_units = cell._n_units if cell._n_units is not None else len(_universe([cell]))
    return Interval(float(values.mean()), se, len(values), n_units, cell.unit, support(cell))


def support(cell: Cell) -> tuple[float, float]:
    """Where the metric can lie, to clip a normal interval near a bound: [0, 1] for AUC, the
    smallest and largest per-observation value for a mean (a share of 0 stays >= 0)."""
    if cell.seeds[0].kind != "mean":
        return 0.0, 1.0
    values = np.concatenate([e.values for e in cell.seeds])
    return float(values.min()), float(values.max())


def compare(cell: Cell, draws: np.ndarray, reference: Cell, reference_draws: np.ndarray,
            lower_is_better: bool = False) -> Comparison:
    """Paired test of ``cell`` against ``reference`` on the same resamples (see module doc).
    Seeds are paired by position when both have the same number, else independent."""
    a, b = cell.seed_values(), reference.seed_values()
    diff = float(a.mean() - b.mean())
    delta = draws - reference_draws
    boot = float(np.nanstd(delta, ddof=1)) if np.isfinite(delta).sum() > 1 else 0.0
    if len(a) == len(b):
        seed_part = _seed_var(a - b) / len(a)
    else:
        seed_part = _seed_var(a) / len(a) + _seed_var(b) / len(b)
    se = math.sqrt(boot ** 2 + seed_part)
    if se > 0:
        p_value = float(2 * scipy.stats.norm.sf(abs(diff) / se))
    else:
        p_value = 1.0 if diff == 0 else 0.0
    verdict = "same"
    if p_value < 1 - CONFIDENCE:
        verdict = "better" if (diff < 0) == lower_is_better else "worse"
    seeds = f" + spread of {max(len(a), len(b))} seeds" if max(len(a), len(b)) > 1 else ""
    return Comparison(reference.key, diff, se, p_value, verdict,
                      TEST_NAME.format(units=PLURAL.get(cell.unit, f"{cell.unit}s"), seeds=seeds))
