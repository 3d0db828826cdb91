"""Train DICM on the days before the last and score it on the last day (AUC, GAUC, logloss).

The loop is plain PyTorch over precomputed index tensors: one shuffled permutation per epoch,
slices of it as batches, a few gathers per batch. ``score`` is the one call a user needs:
embeddings + dataset (or an impressions log) + feature set + aggregator + seed -> metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.scoring.metrics import auc, gauc, logloss
from bench.scoring.stats import Cell, Evidence, compare, mean_evidence, resample
from bench.tasks.ctr import data as ctr_data
from bench.tasks.ctr.model import DICM, HEADS, ImageTower, loss, probabilities

LABEL_OF_HEAD = {"ctr": 0, "detail": 1, "ctcvr": 2}  # column of CtrData.labels
log = logging.getLogger(__name__)


TABLES = ("full", "co_click")  # the image tables a model can be built on (model_vectors)


@dataclass
class CtrConfig:
    """Model and training settings (the task's per-profile ``defaults`` fill these)."""

    feature_set: str = "dicm"
    aggregator: str = "mqap"
    id_dim: int = 12
    image_dim: int = 12
    image_hidden: tuple[int, ...] = ()
    hidden: tuple[int, ...] = (200, 80)
    similarity: bool = True  # cosine of the ad image and the clicked-image profile (model.py)
    user_ad: bool = True  # with the ad image: the bilinear user x ad-image input (model.py)
    epochs: int = 2
    batch_size: int = 1024
    lr: float = 4e-3
    weight_decay: float = 0.0
    image_lr: float | None = None  # the image tower's learning rate (None: lr)
    image_weight_decay: float | None = None  # the image tower's L2 (None: weight_decay)
    id_lr: float | None = None  # the ID embeddings' learning rate (None: lr)
    id_weight_decay: float | None = None  # the ID embeddings' L2 (None: weight_decay)
    validation_days: int = 0  # > 0: the last training day(s) validate; early stopping on them
    patience: int = 1  # epochs without a lower validation loss before training stops
    refit: bool = False  # after early stopping: retrain on every training day, best epochs
    behaviour_dims: int = 0  # > 0: the image table reduced to its co-click directions (docs/ctr.md)
    choose_table: bool = False  # with behaviour_dims: full or reduced table, on a held-out day
    threads: int = 1  # intra-op threads while training: ops here are too small to split
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(cls, options: dict[str, Any], **overrides: Any) -> CtrConfig:
        known = {k: v for k, v in {**options, **overrides}.items()
                 if k in cls.__dataclass_fields__ and k != "extra"}
        for name in ("image_hidden", "hidden"):
            if name in known:
                known[name] = tuple(int(v) for v in known[name])
        return cls(**known)


def image_vectors(vectors: np.ndarray) -> torch.Tensor:
    """Centred and divided by one global scale, so every extractor's vectors enter the
    projection at unit average variance while their geometry (and whitening) is untouched."""
    x = torch.from_numpy(np.asarray(vectors, dtype=np.float32))
    x = x - x.mean(0, keepdim=True)
    return x / x.pow(2).mean().sqrt().clamp(min=1e-12)


def co_click_directions(x: np.ndarray, data: ctr_data.CtrData, rows: np.ndarray,
                        most: int, seed: int = 0) -> np.ndarray:
    """[D, k] directions along which two items clicked by the same user agree more than two
    clicks paired at random do: the generalised eigenvectors M v = l C v with M the sum over
    users of x_i x_j^T over pairs i != j of their clicks (``rows`` only) and C the
    click-weighted covariance, kept while l exceeds the largest eigenvalue of the same M with
    the clicks' users shuffled (each user's and each item's click count kept); at most
    ``most``, at least one.

    Why: the image projection sees every item's vector; where most dimensions carry no taste
    (the 13 true click latents padded with 243 noise dimensions), it fits the items' click
    noise before the shared signal (docs/ctr.md). Pairs of a user's clicks share taste traits
    and not noise, so these directions keep the first and drop most of the second. Fitted on
    the training days' clicks alone: no evaluation-day outcome enters."""
    import scipy.linalg
    import scipy.sparse

    clicked = rows[data.labels[rows, 0].cpu().numpy() > 0]
    users = np.asarray(data.groups)[clicked]
    items = data.item[clicked].cpu().numpy()
    weight = np.bincount(items, minlength=len(x)).astype(np.float64)
    xc = x - (weight @ x) / max(weight.sum(), 1.0)
    spread = (xc * weight[:, None]).T @ xc
    spread += np.eye(len(spread)) * 1e-6 * max(np.trace(spread) / len(spread), 1e-12)

    def pairs(owners: np.ndarray) -> np.ndarray:
        counts = scipy.sparse.csr_matrix((np.ones(len(owners)), (owners, items)),
                                         shape=(int(owners.max(initial=0)) + 1, len(x)))
        counts.sum_duplicates()
        sums = counts @ xc
        squares = np.asarray(counts.multiply(counts).sum(0)).ravel()
        m = sums.T @ sums - (xc * squares[:, None]).T @ xc
        return (m + m.T) / 2

    shuffled = np.random.default_rng(seed).permutation(users)
    observed, chance = pairs(users), pairs(shuffled)
    found = []
    for metric in (None, spread):  # the vectors' own geometry, and the whitened one
        values, vectors = scipy.linalg.eigh(observed, metric)
        top_chance = scipy.linalg.eigh(chance, metric, eigvals_only=True)[-1]
        keep = int(np.clip((values > top_chance).sum(), 1, most))
        found.append(vectors[:, ::-1][:, :keep])
    basis, singular, _ = np.linalg.svd(np.concatenate(found, axis=1), full_matrices=False)
    rank = int((singular > 1e-8 * singular[0]).sum())
    return basis[:, :min(rank, most)]


def build_model(data: ctr_data.CtrData, vectors: np.ndarray | None, config: CtrConfig,
                seed: int) -> DICM:
    torch.manual_seed(seed)
    tower = None
    if config.feature_set != "none":
        if vectors is None:
            raise ValueError(f"feature set {config.feature_set!r} needs image vectors")
        tower = ImageTower(image_vectors(vectors), config.image_dim, config.image_hidden)
    return DICM(n_users=data.n_users, item_vocab=data.item_vocab, item_fields=data.item_fields,
                field_sizes=data.field_sizes, history_length=data.history_length,
                image_tower=tower, feature_set=config.feature_set,
                aggregator=config.aggregator, id_dim=config.id_dim,
                hidden=config.hidden, similarity=config.similarity,
                user_ad=config.user_ad).to(config.device)


def parameter_groups(model: DICM, config: CtrConfig) -> list[dict[str, Any]]:
    """Adam's parameter groups: the ID embeddings, the image tower, and the rest (attention,
    MLP, heads), each with its own learning rate and L2 where the config sets one."""
    ids = [*model.user_embedding.parameters(), *model.item_embedding.parameters(),
           *model.field_embeddings.parameters()]
    image = [] if model.image_tower is None else list(model.image_tower.parameters())
    taken = {id(p) for p in ids + image}
    rest = [p for p in model.parameters() if id(p) not in taken]
    wd = config.weight_decay
    groups = [
        {"name": "ids", "params": ids, "lr": config.lr if config.id_lr is None else config.id_lr,
         "weight_decay": wd if config.id_weight_decay is None else config.id_weight_decay},
        {"name": "image", "params": image,
         "lr": config.lr if config.image_lr is None else config.image_lr,
         "weight_decay": wd if config.image_weight_decay is None else config.image_weight_decay},
        {"name": "dense", "params": rest, "lr": config.lr, "weight_decay": wd},
    ]
    return [g for g in groups if any(p.requires_grad for p in g["params"])]


def fit(model: DICM, data: ctr_data.CtrData, rows: np.ndarray, config: CtrConfig,
        seed: int, validation: np.ndarray | None = None) -> dict[str, Any]:
    """Train with Adam on ``rows`` for ``config.epochs`` epochs; returns seconds, samples/s and
    the last epoch's mean loss. With ``validation`` rows: after each epoch their mean loss;
    training stops after ``config.patience`` epochs without a lower one, and the model is left
    with the weights of the best epoch (``epoch``, 1-based; ``val_losses`` per epoch)."""
    optimizer = torch.optim.Adam(parameter_groups(model, config), lr=config.lr)
    generator = torch.Generator().manual_seed(seed)
    rows_t = torch.as_tensor(rows, dtype=torch.long)
    model.train()
    start, seen, epoch_loss = time.perf_counter(), 0, float("nan")
    val_losses: list[float] = []
    best_state: dict[str, torch.Tensor] | None = None
    with torch_threads(config.threads):
        for _ in range(config.epochs):
            epoch_loss = _epoch(model, optimizer, data, rows_t, config, generator)
            seen += len(rows_t)
            if validation is None:
                continue
            val_losses.append(validation_loss(model, data, validation))
            model.train()
            best = int(np.argmin(val_losses))
            if best == len(val_losses) - 1:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif len(val_losses) - 1 - best >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    seconds = time.perf_counter() - start
    stats: dict[str, Any] = {"train_s": seconds, "samples_per_s": seen / max(seconds, 1e-9),
                             "train_loss": epoch_loss, "epochs_run": seen // max(len(rows), 1)}
    if val_losses:
        stats |= {"epoch": int(np.argmin(val_losses)) + 1, "val_loss": min(val_losses),
                  "val_losses": [round(v, 6) for v in val_losses]}
    return stats


@torch.inference_mode()
def validation_loss(model: DICM, data: ctr_data.CtrData, rows: np.ndarray,
                    batch_size: int = 8192) -> float:
    """The training objective (the three heads' losses), averaged over ``rows``."""
    model.eval()
    total, device = 0.0, data.labels.device
    for batch_rows in torch.as_tensor(rows, dtype=torch.long).split(batch_size):
        batch_rows = batch_rows.to(device)
        total += float(loss(model(data.batch(batch_rows)), data.labels[batch_rows])) * len(
            batch_rows)
    return total / max(len(rows), 1)


def _epoch(model: DICM, optimizer: torch.optim.Optimizer, data: ctr_data.CtrData,
           rows: torch.Tensor, config: CtrConfig, generator: torch.Generator) -> float:
    """One shuffled pass over ``rows``; returns the mean loss."""
    order = rows[torch.randperm(len(rows), generator=generator)].to(config.device)
    total = torch.zeros((), device=config.device)
    for batch_rows in order.split(config.batch_size):
        value = loss(model(data.batch(batch_rows)), data.labels[batch_rows])
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        total += value.detach() * len(batch_rows)
    return float(total) / max(len(rows), 1)


@torch.inference_mode()
def predict(model: DICM, data: ctr_data.CtrData, rows: np.ndarray,
            batch_size: int = 8192, threads: int = 1) -> dict[str, np.ndarray]:
    """Probabilities per head (ctr, detail, ctcvr) for impression ``rows``."""
    with torch_threads(threads):
        return _predict(model, data, rows, batch_size)


def _predict(model: DICM, data: ctr_data.CtrData, rows: np.ndarray,
             batch_size: int) -> dict[str, np.ndarray]:
    model.eval()
    device = data.labels.device
    parts: dict[str, list[np.ndarray]] = {head: [] for head in HEADS}
    for batch_rows in torch.as_tensor(rows, dtype=torch.long).split(batch_size):
        probs = probabilities(model(data.batch(batch_rows.to(device))))
        for head in HEADS:
            parts[head].append(probs[head].double().cpu().numpy())
    return {head: np.concatenate(chunks) if chunks else np.zeros(0)
            for head, chunks in parts.items()}


def metrics(labels: np.ndarray, predictions: dict[str, np.ndarray], groups: np.ndarray,
            prefix: str = "") -> dict[str, float]:
    """``{head}_auc``, ``{head}_gauc`` (by user) and ``{head}_logloss`` for each head. A metric
    that is undefined on these rows (one class only) is left out and logged."""
    out: dict[str, float] = {}
    for head in HEADS:
        y, p = labels[:, LABEL_OF_HEAD[head]], predictions[head]
        if len(y) == 0:
            continue
        out[f"{prefix}{head}_logloss"] = logloss(y, p)
        for name in ("auc", "gauc"):
            try:
                value = auc(y, p) if name == "auc" else gauc(y, p, groups)
            except ValueError as error:
                log.info("ctr: %s%s_%s undefined (%s)", prefix, head, name, error)
                continue
            out[f"{prefix}{head}_{name}"] = value
    return out


def evaluate(model: DICM, data: ctr_data.CtrData, rows: np.ndarray | None = None
             ) -> dict[str, float]:
    """Metrics on ``rows`` (default: the evaluation day) and on their cold-start subset."""
    rows = data.test if rows is None else np.asarray(rows)
    return scored(data, predict(model, data, rows), rows)


def scored(data: ctr_data.CtrData, predictions: dict[str, np.ndarray],
           rows: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of ``predictions`` (per head, for ``rows``: default the evaluation day), and
    the same on the rows' cold-start subset with the prefix ``cold_``."""
    rows = data.test if rows is None else np.asarray(rows)
    labels = data.labels.cpu().numpy()[rows].astype(np.float64)
    groups = data.groups[rows]
    out = metrics(labels, predictions, groups)
    cold = data.cold[rows]
    if cold.any():
        out |= metrics(labels[cold], {h: p[cold] for h, p in predictions.items()},
                       groups[cold], prefix="cold_")
    return out


def evidence(data: ctr_data.CtrData, predictions: dict[str, np.ndarray],
             rows: np.ndarray | None = None) -> dict[str, Evidence]:
    """Per metric of :func:`scored`, what it was computed from, resampled by user: each
    impression's prediction and label (AUC, GAUC) or its log loss."""
    rows = data.test if rows is None else np.asarray(rows)
    labels = data.labels.cpu().numpy()[rows].astype(np.float64)
    users = data.groups[rows]
    subsets = {"": np.ones(len(rows), dtype=bool), "cold_": data.cold[rows]}
    out: dict[str, Evidence] = {}
    for prefix, keep in subsets.items():
        if not keep.any():
            continue
        for head in HEADS:
            y, p = labels[keep, LABEL_OF_HEAD[head]], predictions[head][keep]
            if 0 < y.sum() < len(y):
                out[f"{prefix}{head}_auc"] = Evidence("auc", "user", users[keep], p, y)
                out[f"{prefix}{head}_gauc"] = Evidence("gauc", "user", users[keep], p, y)
            q = np.clip(p, 1e-7, 1 - 1e-7)
            out[f"{prefix}{head}_logloss"] = mean_evidence(
                "user", users[keep], -(y * np.log(q) + (1 - y) * np.log1p(-q)))
    return out


def prepare(log_frame: pd.DataFrame, table: pd.DataFrame, known_ids: Sequence[str],
            history_length: int = 20,
            item_fields: Sequence[str] = ctr_data.DEFAULT_ITEM_FIELDS) -> ctr_data.CtrData:
    """Validate an impressions log against the embedding ids and build its index tensors."""
    clean = ctr_data.validate_log(log_frame, known_ids)
    return ctr_data.build(clean, table, history_length, item_fields)


def train_and_evaluate(data: ctr_data.CtrData, vectors: np.ndarray | None, config: CtrConfig,
                       seed: int) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, training stats) of one model; ``vectors`` are the image vectors of
    ``data.item_rows`` (None for the ID-only ``none`` feature set)."""
    predictions, stats = train_and_predict(data, vectors, config, seed)
    return scored(data, predictions), stats


def train_and_predict(data: ctr_data.CtrData, vectors: np.ndarray | None, config: CtrConfig,
                      seed: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """(predictions per head on the evaluation day, training stats) of one model."""
    model, view, stats = train_model(data, vectors, config, seed)
    return predict(model, view, data.test), stats


def serving_view(data: ctr_data.CtrData, config: CtrConfig) -> ctr_data.CtrData:
    """The data a trained model predicts with: ``data`` itself, or, for a model fitted with
    validation days and no refit, ``data`` with the validation-day newcomers unseen."""
    if config.validation_days <= 0 or config.refit:
        return data
    fit_rows, _ = ctr_data.validation_split(data, config.validation_days)
    return ctr_data.seen_only_in(data, fit_rows)


def model_vectors(data: ctr_data.CtrData, vectors: np.ndarray | None, config: CtrConfig,
                  table: str | None, fit_rows: np.ndarray | None = None) -> np.ndarray | None:
    """The image table the model is built on: ``vectors`` (``table`` "full" or None), or their
    co-click subspace ("co_click"; fitted on ``fit_rows``' clicks, by default the rows the
    model fits on; deterministic, so a model rebuilt from cached weights gets the same table)."""
    if vectors is None or table != "co_click":
        return vectors
    if fit_rows is None:
        fit_rows = (data.train if config.validation_days <= 0
                    else ctr_data.validation_split(data, config.validation_days)[0])
    x = image_vectors(vectors).numpy().astype(np.float64)
    # the subspace, in the vectors' own geometry (orthonormal basis: no whitening)
    return x @ co_click_directions(x, data, fit_rows, max(config.behaviour_dims, 1))


def table_for(data: ctr_data.CtrData, vectors: np.ndarray | None, config: CtrConfig
              ) -> tuple[str | None, dict[str, float]]:
    """(the image table of ``config`` for these vectors, the evidence of a choice): None without
    vectors, "full" without ``behaviour_dims``, "co_click" with it, and with ``choose_table``
    too whichever :func:`choose_table` finds: the one place the rule lives."""
    if vectors is None:
        return None, {}
    if config.behaviour_dims <= 0:
        return "full", {}
    if not config.choose_table:
        return "co_click", {}
    return choose_table(data, vectors, config)


def choose_table(data: ctr_data.CtrData, vectors: np.ndarray, config: CtrConfig,
                 seed: int = 0) -> tuple[str, dict[str, float]]:
    """("full" or "co_click", the evidence): "co_click" only when its model ranks the last
    training day's clicks better than the full table's at 95% (paired bootstrap over users,
    the suite's own test), both fitted on the training days before it (``validation_days``,
    at least 1) with the configured feature set and epochs; "full" otherwise, and for a log
    with a single training day. The evidence: each table's validation click AUC and the
    difference's 95% interval. The trial's co-click directions are fitted on the trial's own
    days, so no validation-day click enters them, and the evaluation day is never looked at.

    Why: the reduction lifts vectors whose taste sits in a few directions among many noisy
    ones (docs/ctr.md's padded probe, 0.584 -> 0.617) and costs vectors that spread it over
    many weak directions (pixels -0.012); which kind a table is, only held-out clicks tell.
    The click AUC (the task's main score), not the loss: the loss (three heads) preferred the
    reduction for swav, moco_v2 and the random backbone, whose evaluation-day AUC it lowers;
    and only at 95%, so that one day's noise never swaps the extractor's own vectors for a
    reduction of them (docs/ctr.md)."""
    days = max(config.validation_days, 1)
    if data.day is None or len(np.unique(data.day[data.train])) <= days:
        return "full", {}  # no day to hold out: the table as the extractor gave it
    fit_rows, validation = ctr_data.validation_split(data, days)
    seen = ctr_data.seen_only_in(data, fit_rows)
    trial = replace(config, validation_days=0, choose_table=False)
    labels = seen.labels[validation, 0].cpu().numpy()
    users = np.asarray(seen.groups)[validation]
    cells = []
    for table in TABLES:
        model = build_model(seen, model_vectors(seen, vectors, trial, table, fit_rows), trial,
                            seed)
        fit(model, seen, fit_rows, trial, seed)
        scores = predict(model, seen, validation)["ctr"]
        cells.append(Cell((table,), [Evidence("auc", "user", users, scores, labels)]))
    draws = resample(cells)
    reduced = compare(cells[1], draws[1], cells[0], draws[0])
    evidence = {"full": float(cells[0].seed_values()[0]),
                "co_click": float(cells[1].seed_values()[0]),
                "diff_low": reduced.low, "diff_high": reduced.high}
    return ("co_click" if reduced.verdict == "better" else "full"), evidence


def train_model(data: ctr_data.CtrData, vectors: np.ndarray | None, config: CtrConfig,
                seed: int, table: str | None = None
                ) -> tuple[DICM, ctr_data.CtrData, dict[str, Any]]:
    """(the trained model, the data it predicts with (:func:`serving_view`), training stats);
    the weights are what the ctr cache keeps for the online task. ``table`` ("full" or
    "co_click", see :func:`model_vectors`) overrides :func:`table_for`'s (a choice runs with
    seed 0). ``stats["image_table"]`` names the table: rebuild the model with it."""
    data.to(config.device)
    evidence: dict[str, float] = {}
    if table is None:
        table, evidence = table_for(data, vectors, config)
    model, view, stats = _train_with_table(data, model_vectors(data, vectors, config, table),
                                           config, seed)
    if evidence:
        stats["table_evidence"] = {k: round(v, 6) for k, v in evidence.items()}
    return model, view, stats | {"image_table": table}


def _train_with_table(data: ctr_data.CtrData, vectors: np.ndarray | None, config: CtrConfig,
                      seed: int) -> tuple[DICM, ctr_data.CtrData, dict[str, Any]]:
    if config.validation_days <= 0:
        model = build_model(data, vectors, config, seed)
        return model, data, fit(model, data, data.train, config, seed)
    fit_rows, validation = ctr_data.validation_split(data, config.validation_days)
    seen = ctr_data.seen_only_in(data, fit_rows)  # validation-day newcomers are unseen IDs
    model = build_model(seen, vectors, config, seed)
    stats = fit(model, seen, fit_rows, config, seed, validation)
    if not config.refit:
        return model, seen, stats
    # the chosen number of epochs, on every training day
    model = build_model(data, vectors, config, seed)
    refit = fit(model, data, data.train, replace(config, epochs=stats["epoch"]), seed)
    stats |= {"validation_train_s": stats["train_s"], "train_s": stats["train_s"]
              + refit["train_s"], "train_loss": refit["train_loss"]}
    return model, data, stats


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (0 = leave torch's setting), then restore it.

    Why: a batch's ops are small (1024 x a few hundred floats), so splitting them costs more
    than it saves, and on a shared or loaded CPU extra threads spin and slow training 5-10x."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def score(vectors: np.ndarray | None, ids: Sequence[str], log_frame: pd.DataFrame,
          table: pd.DataFrame | None = None, *, seed: int = 0, feature_set: str = "dicm",
          aggregator: str = "mqap", history_length: int = 20, **options: Any
          ) -> dict[str, float]:
    """Score embeddings on an impressions log without the runner.

    ``vectors`` [n, D] with their ``ids`` (the log's item ids must be among them); ``table`` may
    add item columns (``category``, ``coarse_category``, ``publish_day``) keyed by ``id``.
    """
    ids = np.asarray(ids).astype(str)
    table = pd.DataFrame({"id": ids}) if table is None else table
    known = np.intersect1d(ids, table["id"].astype(str).to_numpy())
    data = prepare(log_frame, table, known, history_length,
                   options.pop("item_fields", ctr_data.DEFAULT_ITEM_FIELDS))
    position = pd.Index(ids).get_indexer(table["id"].astype(str).to_numpy()[data.item_rows])
    item_vectors = None if vectors is None else np.asarray(vectors)[position]
    config = CtrConfig.from_options(options, feature_set=feature_set, aggregator=aggregator)
    return train_and_evaluate(data, item_vectors, config, seed)[0]
