"""``classify``: does the embedding (or the backbone) transfer to leaf-category classification?
(Visual4Rec Table 5.)

Product shots (role ``product``; every item on datasets without roles) with a ``category``:
trained on split ``train``, scored on split ``test`` (test classes unseen in train are left out).

- Linear probe, raw and +w: features standardised with train statistics, a multinomial
  logistic-regression head trained full-batch with L-BFGS in torch; its L2 weight decay is
  chosen from a small grid on a stratified validation part of ``train`` (as CLIP_benchmark and
  dinov2 do), then the head is refitted on all of ``train``. Metrics ``probe_top1``,
  ``probe_top5``.

The task sees vectors only; fine-tuning the backbone on the same split is its own task,
``finetune_classify`` (bench/tasks/finetune.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.cache import NPZ, Cache, array_digest, cached
from bench.core.data import Dataset
from bench.core.metric_info import MetricInfo
from bench.embed.embeddings import Embeddings
from bench.scoring.metrics import topk_accuracy, topk_hits
from bench.scoring.stats import Evidence, mean_evidence
from bench.tasks import Task, TaskContext, task

WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
TOP5 = 5
PROBE_VERSION = "1"  # bump when linear_probe changes what a cached score means


@dataclass
class Split:
    """Row positions and integer labels of train (fit + validation parts) and test."""

    classes: np.ndarray
    train: np.ndarray
    train_y: np.ndarray
    fit: np.ndarray  # positions into ``train`` (not dataset rows)
    val: np.ndarray
    test: np.ndarray
    test_y: np.ndarray


def labelled_rows(dataset: Dataset, split: str) -> np.ndarray:
    return dataset.rows(role="product", split=split, labelled="category")


def make_split(dataset: Dataset, seed: int, val_fraction: float) -> Split:
    """Encode train classes, drop test items of unseen classes, and hold out a stratified
    ``val_fraction`` of each train class (classes with one item stay whole in the fit part)."""
    category = dataset.table["category"].astype(str).to_numpy()
    train, test = labelled_rows(dataset, "train"), labelled_rows(dataset, "test")
    classes = np.unique(category[train])
    test = test[np.isin(category[test], classes)]
    train_y = np.searchsorted(classes, category[train])
    test_y = np.searchsorted(classes, category[test])
    rng = np.random.default_rng(seed)
    val = []
    for label in range(len(classes)):
        members = rng.permutation(np.flatnonzero(train_y == label))
        val.extend(members[: int(val_fraction * len(members))])
    val = np.sort(np.asarray(val, dtype=np.int64))
    fit = np.setdiff1d(np.arange(len(train)), val)
    return Split(classes, train, train_y, fit, val, test, test_y)


# --------------------------------------------------------------------------- linear probe


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float,
                 max_iter: int = 200) -> nn.Linear:
    """Multinomial logistic regression: mean cross-entropy + weight_decay/2 * ||W||^2 (bias
    not penalised), full-batch L-BFGS with a strong-Wolfe line search from zero weights."""
    head = nn.Linear(x.shape[1], n_classes).to(x.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(x), y) + 0.5 * weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int,
                 fit: np.ndarray, val: np.ndarray, weight_decays=WEIGHT_DECAYS,
                 max_iter: int = 200, device: torch.device | str = "cpu"
                 ) -> tuple[np.ndarray, float]:
    """Test-set scores [n_test, n_classes] and the weight decay chosen by validation top-1.

    Features are standardised with the train set's mean and std. Each weight decay is fitted on
    ``fit`` and scored on ``val`` (positions into train); the best (the larger on ties: the
    simpler model) is refitted on all of train. Without a validation part the middle of the
    grid is used."""
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0) + 1e-6
    xt = torch.as_tensor((train_x - mean) / std, dtype=torch.float32, device=device)
    xs = torch.as_tensor((test_x - mean) / std, dtype=torch.float32, device=device)
    yt = torch.as_tensor(train_y, dtype=torch.long, device=device)
    grid = sorted(float(w) for w in weight_decays)
    best = grid[len(grid) // 2]
    if len(val) and len(fit):
        fit_t, val_t = torch.as_tensor(fit, device=device), torch.as_tensor(val, device=device)
        scores = []
        for wd in grid:
            head = fit_logistic(xt[fit_t], yt[fit_t], n_classes, wd, max_iter)
            with torch.no_grad():
                scores.append((head(xt[val_t]).argmax(1) == yt[val_t]).float().mean().item())
        best = max(zip(scores, grid))[1]
    head = fit_logistic(xt, yt, n_classes, best, max_iter)
    with torch.no_grad():
        return head(xs).cpu().numpy(), best


def cached_probe(cache: Cache | None, train_x: np.ndarray, train_y: np.ndarray,
                 test_x: np.ndarray, n_classes: int, fit: np.ndarray, val: np.ndarray,
                 weight_decays: Any, max_iter: int, device: str = "cpu") -> np.ndarray:
    """``linear_probe``'s test scores, cached under a hash of every input (the vectors
    themselves, so a whitened variant or new embeddings never hit an old entry): a re-run
    with warm caches does not refit the probes."""
    key = array_digest("probe", PROBE_VERSION, *map(np.asarray, (train_x, train_y, test_x, fit,
                                                                 val)),
                       n_classes, sorted(float(w) for w in weight_decays), max_iter)

    def compute() -> dict[str, np.ndarray]:
        scores, best = linear_probe(train_x, train_y, test_x, n_classes, fit, val,
                                    weight_decays, max_iter, device)
        return {"scores": scores, "weight_decay": np.float64(best)}

    return cached(cache, "probes", key, compute, codec=NPZ,
                  valid=lambda v: "scores" in v)["scores"]


def accuracy_metrics(scores: np.ndarray, labels: np.ndarray, prefix: str, item_ids: np.ndarray
                     ) -> tuple[dict[str, float], dict[str, Evidence]]:
    """Top-1 and, when there are more than five classes, top-5, with each test item's hit as
    evidence (``item_ids``: the resampling units)."""
    ks = [1, TOP5] if scores.shape[1] > TOP5 else [1]
    metrics = {f"{prefix}_top{k}": topk_accuracy(scores, labels, k) for k in ks}
    evidence = {f"{prefix}_top{k}": mean_evidence("item", item_ids, topk_hits(scores, labels, k))
                for k in ks}
    return metrics, evidence


def scored_rows(metrics: dict[str, float], evidence: dict[str, Evidence]) -> list[dict[str, Any]]:
    return [{"metric": m, "value": v, "evidence": evidence.get(m)} for m, v in metrics.items()]



class Classify(Task):
    name = "classify"
    description = "Leaf-category classification: linear probe on frozen embeddings."
    stage = "transfer"
    main_score = "probe_top1"
    metrics = (MetricInfo("probe_top*", unit="item"),)
    needs = ("vectors", "category on train and test product shots")
    seeded = True
    variants = ("raw", "w")
    whitening_labels = ("category",)  # what k=auto agrees with (bench/vectors/variants.py)
    defaults = {
        "quick": dict(val_fraction=0.2, probe_max_iter=100),
        "default": dict(val_fraction=0.2, probe_max_iter=200),
        "full": dict(val_fraction=0.2, probe_max_iter=500),
    }

    def population(self, dataset: Dataset) -> np.ndarray:
        """The product shots with a category, every split (whitening fits on their train part)."""
        return dataset.rows(role="product", labelled="category")

    def skip_reason(self, dataset: Dataset) -> str | None:
        if not dataset.has("category"):
            return "the dataset has no 'category' column"
        category = dataset.table["category"]
        train = category.iloc[labelled_rows(dataset, "train")].astype(str)
        test = category.iloc[labelled_rows(dataset, "test")].astype(str)
        if train.nunique() < 2:
            return "fewer than two categories among train product shots"
        if not test.isin(set(train)).any():
            return "no test product shot whose category appears in train"
        return None

    def evaluate(self, embeddings: Embeddings, dataset: Dataset,
                 ctx: TaskContext) -> list[dict[str, Any]]:
        options = ctx.options
        split = make_split(dataset, ctx.seed, float(options.get("val_fraction", 0.2)))
        scores = cached_probe(ctx.cache, embeddings.take(split.train), split.train_y,
                              embeddings.take(split.test), len(split.classes), split.fit,
                              split.val, options.get("weight_decays", WEIGHT_DECAYS),
                              int(options.get("probe_max_iter", 200)), ctx.device)
        return scored_rows(*accuracy_metrics(scores, split.test_y, "probe",
                                             dataset.ids[split.test]))


@task("classify")
def make_classify() -> Classify:
    return Classify()
