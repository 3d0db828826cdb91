"""``candidate_recall``: which covers does a user's history recall from the whole catalogue?

The first stage a user meets (docs/recall.md). On the impressions log the ctr task reads
(``bench.tasks.ctr.load``: the same validated index tensors), every user with a click on the
evaluation day (the last) gets K candidates from the *pool*, the covers available that day
(published by then; every cover of the log when the table has no ``publish_day``), and is scored
on the covers it clicked that day:

- ``hitrate@K``: 1 when any of the user's evaluation-day clicks is among its K candidates;
- ``click_recall@K``: the share of them that is; both averaged over users, with intervals over
  users, and ``cold_*`` the same on the clicks of covers first published that day;
- ``prerank_auc`` and ``prerank_gauc`` (and ``cold_*``): the two-tower model's inner product as
  a score of the evaluation day's impressions, as the DICM paper scores its Pre-Rank model;
- with a simulator (homestead), ``expected_click_recall@K`` (and ``cold_*``): the share of the
  user's true click probability mass that its K candidates hold, no click drawn; it is then the
  main score (``main_score_for``), and the funnel's online rows are added (below).

Targets and candidates leave out the covers the user clicked before the evaluation day (no recall
model re-recommends them, so none is credited with them). A user with no click before that day
is kept: its two-tower vector is its user ID (or the unseen slot) and an empty history, and its
i2i list, which has nothing to start from, is the popularity list.

Rows (docs/recall.md):

- each extractor: the **Pre-Rank two-tower DICM** (:class:`TwoTower`: user tower = user ID,
  the pooled ID embeddings and the pooled image projections of the clicked covers; item tower =
  the cover's ID and its image projection; score = their inner product), trained with a
  click log loss on the impressions before the evaluation day and served through a FAISS
  inner-product index over the pool's item-tower vectors;
- references: ``<extractor> [i2i]`` (each extractor's item-to-item recall: FAISS cosine
  neighbours of the user's last clicks, merged by the largest similarity), ``none (ids only)``
  (the two-tower model without images: what every row is tested against), ``popularity recall``
  (the most clicked covers of the last training day), ``random recall`` and, with a
  simulator, ``oracle recall (true clicks)`` (the ceiling).

Both rows exist per variant (``raw``, ``w``); the default and quick profiles run ``raw`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.core.cache import NPZ, array_digest, cached, fingerprint
from bench.core.data import Dataset
from bench.core.metric_info import MetricInfo, count
from bench.embed.embeddings import Embeddings
from bench.scoring.metrics import auc, gauc
from bench.scoring.stats import Evidence, mean_evidence
from bench.search import index as faiss_index
from bench.tasks import Reference, Task, TaskContext, get_task, task
from bench.tasks import ctr as ctr_task
from bench.tasks.ctr import data as ctr_data
from bench.tasks.ctr.model import ImageTower, mlp
from bench.tasks.ctr.train import image_vectors, torch_threads

RECALL_VERSION = "1"  # bump when the towers, their training or the metrics change meaning
BASELINE = ctr_task.BASELINE
POPULARITY, RANDOM = "popularity recall", "random recall"
ORACLE = "oracle recall (true clicks)"  # only with a simulator: the recall ceiling
SIMULATED_MAIN_SCORE = "expected_click_recall@100"  # the main score with a simulator
I2I = "i2i"
KS = (50, 100, 200)
_COMMON = dict(ks=list(KS), funnel=True, funnel_k=100, dim=16, hidden=64, epochs=3, batch_size=1024, lr=4e-3,
               weight_decay=1e-6, history_length=20, item_fields=list(
                   ctr_data.DEFAULT_ITEM_FIELDS))
# the whitened variant's towers would double the task's training (about +50 s on the default
# run, whose bar for this task is 60 s); `full` runs both, and any run can ask with
# --task-option candidate_recall.variants=raw,w
_RAW_ONLY = dict(variants=["raw"])


@dataclass
class RecallData:
    """The evaluation day as recall sees it, built once per dataset and settings.

    Users are the evaluated users (a click on the evaluation day); items are positions into
    ``data.item_rows`` (the ctr task's item index)."""

    data: ctr_data.CtrData
    pool: np.ndarray  # [P] item indices available on the evaluation day
    cold: np.ndarray  # [n_items] bool: first published on the evaluation day
    user_code: np.ndarray  # [E] the log's user codes (``data.groups``)
    user_vocab: np.ndarray  # [E] user ID-embedding index (0: unseen in training)
    history: np.ndarray  # [E, L] item indices clicked before the evaluation day, -1 padding
    target_user: np.ndarray  # [T] evaluated-user position of each (user, clicked item) target
    target_item: np.ndarray  # [T] its item index
    popular: np.ndarray  # [P] pool items, most clicked on the last training day first
    truth: np.ndarray | None = None  # [E, n_items] true click probability (:func:`true_clicks`)

    @property
    def units(self) -> np.ndarray:
        return self.user_code.astype(str)

    @property
    def n_users(self) -> int:
        return len(self.user_code)


def recall_data(data: ctr_data.CtrData, table: Any) -> RecallData:
    """The evaluated users, their histories and targets, the pool and the popularity order."""
    test = data.test
    n_items = len(data.item_rows)
    is_train = np.zeros(len(data.groups), dtype=bool)
    is_train[data.train] = True
    cold = ctr_data.cold_items(table, data.item_rows, data.item.cpu().numpy(), is_train,
                               data.eval_day)
    published = np.ones(n_items, dtype=bool)  # no publish day: every cover of the log
    if "publish_day" in table.columns:
        day = pd.to_numeric(table["publish_day"].iloc[data.item_rows], errors="coerce")
        published = ~(day > data.eval_day).to_numpy()
    pool = np.flatnonzero(published)
    labels = data.labels.cpu().numpy()
    items = data.item.cpu().numpy()
    clicked = test[labels[test, 0] > 0]
    user_code, first = np.unique(data.groups[clicked], return_index=True)
    rows = clicked[first]  # one evaluation-day impression per user: its history and ID
    history = data.history.cpu().numpy()[data.history_key.cpu().numpy()[rows]]
    user_vocab = data.user.cpu().numpy()[rows]
    position = np.searchsorted(user_code, data.groups[clicked])
    key = np.unique(position.astype(np.int64) * n_items + items[clicked])
    target_user, target_item = key // n_items, key % n_items
    seen = np.zeros(len(key), dtype=bool)  # clicked again: already in the history
    for column in history.T:
        seen |= column[target_user] == target_item
    last = data.train[data.day[data.train] == data.day[data.train].max()] \
        if len(data.train) else data.train
    recent = np.bincount(items[last], weights=labels[last, 0], minlength=n_items)
    total = np.bincount(items[data.train], weights=labels[data.train, 0], minlength=n_items)
    popular = pool[np.lexsort((pool, -total[pool], -recent[pool]))]
    return RecallData(data, pool, cold, user_code, user_vocab, history,
                      target_user[~seen], target_item[~seen], popular)


def without_history(candidates: np.ndarray, history: np.ndarray, k: int) -> np.ndarray:
    """[E, k] the first ``k`` candidates of each row that are not in the row's history (-1
    where fewer remain), order kept."""
    keep = candidates >= 0
    for column in history.T:
        keep &= candidates != column[:, None]
    rank = np.cumsum(keep, axis=1)
    out = np.full((len(candidates), k), -1, dtype=np.int64)
    row, col = np.nonzero(keep & (rank <= k))
    out[row, rank[row, col] - 1] = candidates[row, col]
    return out


def fill(candidates: np.ndarray, fallback: np.ndarray, history: np.ndarray) -> np.ndarray:
    """Rows with fewer than k candidates (-1 slots) completed from ``fallback`` (one ordered
    list), skipping what the row has or the user clicked before."""
    k = candidates.shape[1]
    short = np.flatnonzero((candidates < 0).any(1))
    if not len(short):
        return candidates
    out = candidates.copy()
    extra = without_history(np.broadcast_to(fallback, (len(short), len(fallback))),
                            np.concatenate([history[short], candidates[short]], axis=1), k)
    for row, more in zip(short, extra):
        have = out[row][out[row] >= 0]
        out[row] = np.concatenate([have, more[:k - len(have)]])
    return out


def hits(rd: RecallData, candidates: np.ndarray, cold_only: bool = False
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(evaluated users, their targets' count, [users, K] 1 where slot k holds a target):
    the material of HitRate@K and Recall@K (of cold targets only with ``cold_only``)."""
    n_items = len(rd.data.item_rows)
    keep = rd.cold[rd.target_item] if cold_only else np.ones(len(rd.target_item), dtype=bool)
    targets = rd.target_user[keep].astype(np.int64) * n_items + rd.target_item[keep]
    users = np.unique(rd.target_user[keep])
    n_targets = np.bincount(rd.target_user[keep], minlength=rd.n_users)[users]
    slots = users[:, None].astype(np.int64) * n_items + candidates[users]
    found = np.isin(slots, targets) & (candidates[users] >= 0)
    return users, n_targets, found


def recall_metrics(rd: RecallData, candidates: np.ndarray, ks: list[int]
                   ) -> list[dict[str, Any]]:
    """HitRate@K and Recall@K of ``candidates`` [E, max K], and of the cold targets, as rows
    with per-user evidence."""
    out: list[dict[str, Any]] = []
    for prefix, cold_only in (("", False), ("cold_", True)):
        users, n_targets, found = hits(rd, candidates, cold_only)
        if not len(users):
            continue
        units = rd.units[users]
        within = np.cumsum(found, axis=1)
        for k in ks:
            caught = within[:, min(k, within.shape[1]) - 1]
            for name, values in ((f"{prefix}hitrate@{k}", (caught > 0).astype(np.float64)),
                                 (f"{prefix}click_recall@{k}", caught / n_targets)):
                out.append({"metric": name, "value": float(values.mean()),
                            "evidence": mean_evidence("user", units, values)})
        out.append({"metric": f"{prefix}recall_users", "value": float(len(users))})
    return out


def true_clicks(dataset: Dataset, rd: RecallData) -> np.ndarray | None:
    """[E, n_items] each evaluated user's true click probability of each cover (the world's
    user model, ``simulator.probabilities``: the noise integrated out, no draw); 0 outside the
    pool and on the user's history covers, the exclusions of the targets. None without a
    simulator (a folder's log)."""
    from bench.tasks import online

    sim = dataset.simulator
    if sim is None:
        return None
    n_items = len(rd.data.item_rows)
    item_index, user_code = online.simulator_items(dataset, rd.data), online.simulator_users(dataset)
    sim_of_item = np.full(n_items, -1, dtype=np.int64)
    sim_of_item[item_index[item_index >= 0]] = np.flatnonzero(item_index >= 0)
    sim_of_code = np.full(int(rd.data.groups.max()) + 1, -1, dtype=np.int64)
    sim_of_code[user_code[user_code >= 0]] = np.flatnonzero(user_code >= 0)
    sim_user = sim_of_code[rd.user_code]
    if (sim_user < 0).any():
        missing = np.unique(dataset.logs["impressions"]["user_id"].astype(str).to_numpy())[
            rd.user_code[sim_user < 0]]
        raise ValueError(f"dataset {dataset.name!r}: {len(missing)} evaluated users of the log "
                         f"are not users of its simulator, e.g. {missing[0]!r}")
    items = rd.pool[sim_of_item[rd.pool] >= 0]
    eligible = np.sort(sim_of_item[items])  # the funnel's pool: one grid serves both
    grid = click_grid(sim, eligible)
    out = np.zeros((rd.n_users, n_items))
    out[:, items] = grid[sim_user][:, np.searchsorted(eligible, sim_of_item[items])]
    user, slot = np.nonzero(rd.history >= 0)
    out[user, rd.history[user, slot]] = 0.0
    return out


_CLICK_GRID: dict[str, Any] = {}


def click_grid(sim: Any, items: np.ndarray) -> np.ndarray:
    """[every simulator user, items] the true click probability (``sim.probabilities``),
    computed once per process: the expected recall and the funnel's global oracle read the same
    grid (600 users x 2,400 covers x 24 quadrature nodes, about 0.8 s on the default world)."""
    key = fingerprint(id(sim), array_digest(np.asarray(items, dtype=np.int64)))
    if _CLICK_GRID.get("key") != key:
        out = np.empty((len(sim.user_ids), len(items)))
        for start in range(0, len(out), 64):  # [64, covers, nodes] at a time
            users = np.arange(start, min(start + 64, len(out)))
            out[users] = sim.probabilities(users[:, None], items[None, :])["click"]
        _CLICK_GRID.clear()
        _CLICK_GRID.update(key=key, value=out, sim=sim)  # holding sim keeps its id from reuse
    return _CLICK_GRID["value"]


def expected_metrics(rd: RecallData, candidates: np.ndarray, ks: list[int]
                     ) -> list[dict[str, Any]]:
    """``expected_click_recall@K`` (and ``cold_*``): per evaluated user the share of its true
    click probability mass over the pool (history covers left out) that its first K candidates
    hold, averaged over users, with per-user evidence; none without ``rd.truth``. The
    expectation of the click recall had the user been shown every pool cover: no click draw,
    so two rows differ only by what they recall (docs/metrics.md)."""
    if rd.truth is None:
        return []
    out: list[dict[str, Any]] = []
    rows = np.arange(rd.n_users)[:, None]
    valid = candidates >= 0
    for prefix, keep in (("", np.ones(rd.truth.shape[1], dtype=bool)), ("cold_", rd.cold)):
        truth = rd.truth * keep
        total = truth.sum(1)
        users = np.flatnonzero(total > 0)
        if not len(users):
            continue
        within = np.cumsum(np.where(valid, truth[rows, np.maximum(candidates, 0)], 0.0), axis=1)
        for k in ks:
            values = within[users, min(k, within.shape[1]) - 1] / total[users]
            out.append({"metric": f"{prefix}expected_click_recall@{k}",
                        "value": float(values.mean()),
                        "evidence": mean_evidence("user", rd.units[users], values)})
    return out


def oracle_candidates(rd: RecallData, k: int) -> np.ndarray:
    """The recall ceiling: each user's K pool covers of highest true click probability (ties:
    the cover order), history covers left out (their probability is 0 in ``rd.truth``)."""
    score = np.where(rd.truth > 0, rd.truth, -1.0)  # 0: outside the pool, or in the history
    order = np.argsort(-score, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(score, order, 1) > 0, order, -1)


def popularity_candidates(rd: RecallData, k: int) -> np.ndarray:
    """The same list for every user: the pool's most clicked covers of the last training day
    (ties: of every training day, then the pool order), the user's earlier clicks left out."""
    head = rd.popular[:k + rd.history.shape[1]]
    return without_history(np.broadcast_to(head, (rd.n_users, len(head))), rd.history, k)


def random_candidates(rd: RecallData, k: int, seed: int) -> np.ndarray:
    g = np.random.default_rng([seed, len(rd.pool), rd.n_users])
    order = np.argsort(g.random((rd.n_users, len(rd.pool))), axis=1)[:, :k + rd.history.shape[1]]
    return without_history(rd.pool[order], rd.history, k)


def i2i_candidates(rd: RecallData, vectors: np.ndarray, k: int) -> np.ndarray:
    """Item-to-item recall: each of the user's last clicks (its history) queries the pool's
    ``k + L`` nearest covers by cosine (FAISS); a cover's score is its largest similarity to any
    of them (ties: the pool order), the best ``k`` not clicked before are kept, and a user with
    fewer (no history) is completed with the popularity list."""
    pool_vectors = vectors[rd.pool]
    n = min(k + rd.history.shape[1], len(rd.pool))
    user, slot = np.nonzero(rd.history >= 0)
    out = np.full((rd.n_users, k), -1, dtype=np.int64)
    if len(user):
        index = faiss_index.build_index(pool_vectors, metric="cosine")
        similarity, found = faiss_index.search(index, vectors[rd.history[user, slot]], n)
        owner = np.repeat(user, n)
        item, score = rd.pool[found.ravel()], similarity.ravel()
        order = np.lexsort((item, -score, owner))  # per user: best first
        owner, item = owner[order], item[order]
        pair = owner.astype(np.int64) * len(rd.data.item_rows) + item
        _, first = np.unique(pair, return_index=True)  # each cover once: its best similarity
        first = np.sort(first)
        owner, item = owner[first], item[first]
        start = np.searchsorted(owner, np.arange(rd.n_users))
        ranked = np.full((rd.n_users, n * rd.history.shape[1]), -1, dtype=np.int64)
        ranked[owner, np.arange(len(owner)) - start[owner]] = item
        out = without_history(ranked, rd.history, k)
    return fill(out, rd.popular, rd.history)


class TwoTower(nn.Module):
    """The Pre-Rank DICM: a user tower and an item tower whose inner product is the click
    logit. User: [user ID, mean ID of the clicked covers, mean image projection of the clicked
    covers] -> MLP -> d; item: [item ID, image projection] -> MLP -> d, plus one item bias
    (ID and image), served as the extra coordinate ``[u, 1] . [v, b]``. Without images (the
    ID-only model) the image parts are absent."""

    def __init__(self, n_users: int, item_vocab: torch.Tensor, vectors: np.ndarray | None,
                 dim: int = 16, hidden: int = 64):
        super().__init__()
        self.register_buffer("item_vocab", item_vocab.long(), persistent=False)
        n_ids = int(item_vocab.max()) + 1
        self.user_id = nn.Embedding(n_users, dim)
        self.item_id = nn.Embedding(n_ids, dim)
        self.bias = nn.Embedding(n_ids, 1)
        self.image = None if vectors is None else ImageTower(image_vectors(vectors), dim)
        width = dim * (2 if self.image is None else 3)
        self.user_mlp = mlp([width, hidden, dim])
        self.item_mlp = mlp([dim * (1 if self.image is None else 2), hidden, dim])
        self.image_bias = None if self.image is None else nn.Linear(dim, 1, bias=False)
        self.offset = nn.Parameter(torch.zeros(()))
        for embedding in (self.user_id, self.item_id):
            nn.init.normal_(embedding.weight, std=0.05)
        nn.init.zeros_(self.bias.weight)

    def projected(self) -> torch.Tensor | None:
        """[n_items, d] every cover's image projection, computed once per batch: cheaper than
        projecting the batch's B x L history rows one by one."""
        return None if self.image is None else self.image.projection(self.image.table)

    def users(self, user: torch.Tensor, history: torch.Tensor,
              projected: torch.Tensor | None = None) -> torch.Tensor:
        """[B, d + 1] user vectors: the tower's output and a 1 for the item bias."""
        mask = (history >= 0).unsqueeze(-1).float()
        h = history.clamp(min=0)
        norm = mask.sum(1).clamp(min=1)
        parts = [self.user_id(user),
                 (self.item_id(self.item_vocab[h]) * mask).sum(1) / norm]
        if self.image is not None:
            projected = self.projected() if projected is None else projected
            parts.append((projected[h] * mask).sum(1) / norm)
        u = self.user_mlp(torch.cat(parts, 1))
        return torch.cat([u, torch.ones_like(u[:, :1])], 1)

    def items(self, item: torch.Tensor, projected: torch.Tensor | None = None) -> torch.Tensor:
        """[B, d + 1] item vectors: the tower's output and the item's bias."""
        ids = self.item_vocab[item]
        parts, bias = [self.item_id(ids)], self.bias(ids)
        if self.image is not None:
            projected = (self.projected() if projected is None else projected)[item]
            parts.append(projected)
            bias = bias + self.image_bias(projected)
        return torch.cat([self.item_mlp(torch.cat(parts, 1)), bias], 1)

    def forward(self, user: torch.Tensor, history: torch.Tensor, item: torch.Tensor
                ) -> torch.Tensor:
        projected = self.projected()
        return (self.users(user, history, projected) * self.items(item, projected)).sum(1) \
            + self.offset


def train_two_tower(data: ctr_data.CtrData, vectors: np.ndarray | None,
                    options: dict[str, Any], seed: int) -> TwoTower:
    """Fit the towers with a click log loss on the impressions before the evaluation day
    (Adam, ``epochs`` shuffled passes): the DICM paper's Pre-Rank objective."""
    torch.manual_seed(seed)
    model = build_two_tower(data, vectors, options)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(options["lr"]),
                                 weight_decay=float(options["weight_decay"]))
    generator = torch.Generator().manual_seed(seed)
    rows = torch.as_tensor(data.train, dtype=torch.long)
    history = data.history.cpu()
    key, user, item = data.history_key.cpu(), data.user.cpu(), data.item.cpu()
    click = data.labels[:, 0].cpu()
    model.train()
    with torch_threads(1):
        for _ in range(int(options["epochs"])):
            for batch in rows[torch.randperm(len(rows), generator=generator)].split(
                    int(options["batch_size"])):
                logit = model(user[batch], history[key[batch]], item[batch])
                value = F.binary_cross_entropy_with_logits(logit, click[batch])
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
    return model.eval()


def build_two_tower(data: ctr_data.CtrData, vectors: np.ndarray | None,
                    options: dict[str, Any]) -> TwoTower:
    return TwoTower(data.n_users, data.item_vocab.cpu(), vectors, int(options["dim"]),
                    int(options["hidden"]))


def cached_two_tower(data: ctr_data.CtrData, vectors: np.ndarray | None, dataset: Dataset,
                     options: dict[str, Any], seed: int, cache: Any) -> TwoTower:
    """The trained towers, their weights read from ``cache`` (trained on a miss)."""
    settings = {k: options[k] for k in ("dim", "hidden", "epochs", "batch_size", "lr",
                                        "weight_decay", "history_length", "item_fields")}
    vector_hash = None if vectors is None else array_digest(
        np.ascontiguousarray(vectors, dtype=np.float32))
    key = fingerprint("candidate_recall", RECALL_VERSION, dataset.fingerprint, settings,
                      vector_hash, seed)

    def compute() -> dict[str, np.ndarray]:
        model = train_two_tower(data, vectors, options, seed)
        return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}

    weights = cached(cache, "candidate_recall", key, compute, codec=NPZ)
    model = build_two_tower(data, vectors, options)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    return model.eval()


@torch.inference_mode()
def tower_vectors(model: TwoTower, user_vocab: np.ndarray, history: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors [U, d + 1] of these users (ID-embedding index, history), item vectors
    [n_items, d + 1] of every cover)."""
    with torch_threads(1):
        users = model.users(torch.from_numpy(user_vocab), torch.from_numpy(history)).numpy()
        items = model.items(torch.arange(len(model.item_vocab))).numpy()
    return users.astype(np.float32), items.astype(np.float32)


def two_tower_candidates(pool: np.ndarray, history: np.ndarray, users: np.ndarray,
                         items: np.ndarray, k: int) -> np.ndarray:
    """The top ``k`` ``pool`` covers of each user by inner product, served through a FAISS
    inner-product index over the pool's item vectors, the user's ``history`` left out."""
    index = faiss_index.build_index(items[pool], metric="ip")
    n = min(k + history.shape[1], len(pool))
    _, found = faiss_index.search(index, users, n)
    return without_history(pool[found], history, k)


@torch.inference_mode()
def prerank_rows(model: TwoTower, rd: RecallData) -> list[dict[str, Any]]:
    """``prerank_auc`` and ``prerank_gauc`` of the towers' logit on the evaluation day's
    impressions (and ``cold_*`` on the cold covers' impressions), evidence by user."""
    data, test = rd.data, rd.data.test
    with torch_threads(1):
        rows = torch.as_tensor(test, dtype=torch.long)
        score = torch.cat([model(data.user.cpu()[b], data.history.cpu()[
            data.history_key.cpu()[b]], data.item.cpu()[b]) for b in rows.split(8192)])
    score = score.double().numpy()
    label = data.labels[:, 0].cpu().numpy()[test].astype(np.float64)
    units = data.groups[test].astype(str)
    out: list[dict[str, Any]] = []
    for prefix, keep in (("", np.ones(len(test), dtype=bool)), ("cold_", data.cold[test])):
        y, p, u = label[keep], score[keep], units[keep]
        if not 0 < y.sum() < len(y):
            continue
        out.append({"metric": f"{prefix}prerank_auc", "value": auc(y, p),
                    "evidence": Evidence("auc", "user", u, p, y)})
        try:
            out.append({"metric": f"{prefix}prerank_gauc", "value": gauc(y, p, u),
                        "evidence": Evidence("gauc", "user", u, p, y)})
        except ValueError:  # no user with both classes among these impressions
            pass
    return out


class CandidateRecall(Task):
    name = "candidate_recall"
    description = ("Candidate recall (the first stage): each user's K candidates from the day's "
                   "covers by the Pre-Rank two-tower DICM (and, as reference rows, i2i "
                   "neighbours of the user's clicks, popularity, random, IDs only): HitRate@K "
                   "and Recall@K of the evaluation day's clicks, and the two-tower's GAUC. "
                   "Main score: the expected click recall@100 where the world has a simulator, "
                   "else click_recall@100.")
    stage = "recall"
    main_score = "click_recall@100"  # any log; with a simulator see main_score_for
    metrics = (MetricInfo("*hitrate@*", unit="user"), MetricInfo("*click_recall@*", unit="user"),
               MetricInfo("*prerank_*auc", unit="user"), count("*recall_users"),
               MetricInfo("funnel_*_loss", "lower", unit="user"),
               MetricInfo("funnel_*_lift*", unit="user"),
               MetricInfo("funnel_*_diff*", unit="user"),
               MetricInfo("funnel_*_users", "none", "count"),
               MetricInfo("funnel_*", unit="user"))
    reference = BASELINE
    needs = ("vectors", "logs['impressions'] (the ctr task's log)")
    seeded = True
    variants = ("raw", "w")  # the default and quick profiles run raw only (cost): _RAW_ONLY
    whitening_labels = ("style", "scene")
    defaults = {"quick": {**_COMMON, **_RAW_ONLY, "history_length": 10},
                "default": {**_COMMON, **_RAW_ONLY}, "full": dict(_COMMON)}

    def main_score_for(self, dataset: Dataset) -> str:
        """``expected_click_recall@100`` where the dataset has a simulator (homestead): the
        logged ``click_recall@100`` of ~3 clicks per user is mostly click-draw noise and left
        the ladder's middle rungs tied; the expected recall has no draw. A folder's log has no
        true click model, so there it is ``click_recall@100`` (docs/recall.md)."""
        return SIMULATED_MAIN_SCORE if dataset.simulator is not None else self.main_score

    def population(self, dataset: Dataset) -> np.ndarray:
        return get_task("ctr").population(dataset)

    def skip_reason(self, dataset: Dataset) -> str | None:
        return get_task("ctr").skip_reason(dataset)

    def evaluate(self, embeddings: Embeddings, dataset: Dataset,
                 ctx: TaskContext) -> list[dict[str, Any]]:
        return self.two_tower(embeddings, dataset, ctx)

    def two_tower(self, embeddings: Embeddings | None, dataset: Dataset,
                  ctx: TaskContext) -> list[dict[str, Any]]:
        """The Pre-Rank rows of the towers with ``embeddings`` (None: IDs only), and with a
        simulator the funnel's online rows."""
        options = {**_COMMON, **ctx.options}
        rd = prepared(dataset, options)
        vectors = None if embeddings is None else embeddings.take(rd.data.item_rows)
        model = cached_two_tower(rd.data, vectors, dataset, options, ctx.seed, ctx.cache)
        users, items = tower_vectors(model, rd.user_vocab, rd.history)
        ks = sorted(int(k) for k in options["ks"])
        candidates = two_tower_candidates(rd.pool, rd.history, users, items, max(ks))
        out = recall_metrics(rd, candidates, ks) + expected_metrics(rd, candidates, ks) + \
            prerank_rows(model, rd)
        if dataset.simulator is not None and options.get("funnel", True):
            funnel = funnel_of(dataset, ctx, options)
            feature_set = "none" if embeddings is None else \
                funnel.serving.ctr_options["feature_set"]
            out += funnel.rows(model, embeddings, feature_set, ctx)
        return out

    def references(self, extractors: list[tuple[str, Any]], dataset: Dataset,
                   options: dict[str, Any]) -> list[Reference]:
        """IDs only, popularity and random, with a simulator the oracle, and each extractor's
        i2i recall."""
        labels = (BASELINE, POPULARITY, RANDOM) + ((ORACLE,) if dataset.simulator is not None
                                                    else ())
        out = [Reference(label, None, self.variants) for label in labels]
        out += [Reference(f"{getattr(extractor, 'name', spec)} [{I2I}]", spec, self.variants,
                          uses_vectors=True, settings=(("model", I2I),))
                for spec, extractor in extractors]
        return out

    def evaluate_reference(self, reference: Reference, embeddings: Embeddings | None,
                           dataset: Dataset, ctx: TaskContext) -> list[dict[str, Any]]:
        if reference.label == BASELINE:
            return self.two_tower(None, dataset, ctx)
        options = {**_COMMON, **ctx.options}
        rd = prepared(dataset, options)
        ks = sorted(int(k) for k in options["ks"])
        if reference.label == POPULARITY:
            candidates = popularity_candidates(rd, max(ks))
        elif reference.label == RANDOM:
            candidates = random_candidates(rd, max(ks), ctx.seed)
        elif reference.label == ORACLE:
            candidates = oracle_candidates(rd, max(ks))
        else:
            candidates = cached_i2i(rd, embeddings.take(rd.data.item_rows), max(ks),
                                    ctx.cache)
        return recall_metrics(rd, candidates, ks) + expected_metrics(rd, candidates, ks)


def cached_i2i(rd: RecallData, vectors: np.ndarray, k: int, cache: Any) -> np.ndarray:
    """:func:`i2i_candidates`, kept in ``cache``: the lists do not depend on the seed, so the
    runner's second seed and a cached re-run read them (the merge of ~2.6M neighbour pairs is
    most of an i2i row's second on the default world)."""
    key = fingerprint("candidate_recall_i2i", RECALL_VERSION,
                      array_digest(vectors, rd.pool, rd.history, rd.popular, k))
    found = cached(cache, "candidate_recall", key,
                   lambda: {"candidates": i2i_candidates(rd, vectors, k)}, codec=NPZ)
    return np.asarray(found["candidates"])


_PREPARED: dict[str, RecallData] = {}


def prepared(dataset: Dataset, options: dict[str, Any]) -> RecallData:
    """The dataset's :class:`RecallData` on ctr's index tensors (with a simulator, the true
    click probabilities of :func:`true_clicks`), built once per process."""
    ctr_options = {"history_length": options["history_length"],
                   "item_fields": options["item_fields"]}
    key = fingerprint(dataset.fingerprint, ctr_options)
    if key not in _PREPARED:
        _PREPARED.clear()
        rd = recall_data(ctr_task.load(dataset, ctr_options), dataset.table)
        rd.truth = true_clicks(dataset, rd)
        _PREPARED[key] = rd
    return _PREPARED[key]


@task("candidate_recall")
def make_candidate_recall() -> CandidateRecall:
    return CandidateRecall()


# --- the funnel: recall K, rank with the ctr task's DICM model, show S slots (docs/recall.md)

FUNNEL_SEED = 20240612  # the funnel's draws: fixed, shared by every arm and seed
GRID_LIMIT = 4_000_000  # users x covers up to which the draws are kept in memory (4 x 8 bytes each)
_FUNNEL: dict[str, Any] = {}
_DRAWS: dict[tuple, list[np.ndarray]] = {}  # funnel_draws' per-chunk draws, kept for the next arm


def funnel_draws(simulator: Any, candidates: np.ndarray, seed: int = FUNNEL_SEED
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The noisy logit and three uniforms of each (user, candidate cover) [U, K], drawn per
    (user, cover) from a fixed stream: the same cover of the same user gets the same draws
    whichever arm recalled it (common random numbers across arms with different recalled
    sets). Users are drawn in chunks of 256, so memory stays at 256 x covers; on a world of at
    most ``GRID_LIMIT`` (user, cover) pairs the draws are kept for the next arm."""
    n_items = len(simulator.item_ids)
    keep = len(candidates) * n_items <= GRID_LIMIT
    noise, uniforms = np.empty(candidates.shape), [np.empty(candidates.shape) for _ in range(3)]
    for start in range(0, len(candidates), 256):
        rows = slice(start, start + 256)
        key = ("grid", id(simulator), seed, start, n_items, simulator.noise_sd)
        grid = _DRAWS.get(key)
        if grid is None:
            g = np.random.default_rng([seed, start])
            size = (len(candidates[rows]), n_items)
            grid = [g.normal(0, simulator.noise_sd, size), g.random(size), g.random(size),
                    g.random(size)]
            if keep:
                _DRAWS[key] = grid
        noise[rows] = np.take_along_axis(grid[0], candidates[rows], 1)
        for u, drawn in zip(uniforms, grid[1:]):
            u[rows] = np.take_along_axis(drawn, candidates[rows], 1)
    users = np.arange(len(candidates))
    return simulator.score(users[:, None], candidates) + noise, tuple(uniforms)



def funnel_world(serving: Any, candidates: np.ndarray) -> Any:
    """An :class:`bench.tasks.online.OnlineWorld` of one online day whose candidates are each
    user's recalled covers (simulator positions [U, K])."""
    from bench.tasks import online

    sim = serving.world.simulator
    users = np.arange(len(candidates))
    noisy, uniforms = funnel_draws(sim, candidates)
    slots = serving.world.slots
    exam = np.random.default_rng([FUNNEL_SEED, slots]).random((len(users), slots))
    true = sim.probabilities(users[:, None], candidates)
    new = sim.publish_day[candidates] >= serving.data.eval_day
    return online.OnlineWorld(users, candidates, noisy, uniforms, exam, true, new, {}, 1, slots,
                              sim)


class Funnel:
    """One dataset's funnel state, built once per process: the online task's ``Serving`` (the
    ctr data and models, each simulator user's final history), the pool in simulator and ctr
    positions, and the global oracle's expected clicks per user."""

    def __init__(self, dataset: Dataset, ctx: TaskContext, options: dict[str, Any]):
        from bench.tasks import online

        online_options = get_task("online").options(ctx.profile) if ctx.profile is not None \
            else {}
        online_ctx = TaskContext(seed=ctx.seed, options={**online_options,
                                                         **options.get("online", {})},
                                 profile=ctx.profile, cache=ctx.cache, device=ctx.device)
        self.serving = online.Serving.of(dataset, online_ctx)
        s, sim = self.serving, self.serving.world.simulator
        self.k = int(options["funnel_k"])
        eligible = np.flatnonzero((s.item_index >= 0) & (sim.publish_day <= s.data.eval_day))
        self.pool_sim = eligible
        self.sim_of_item = np.full(len(s.data.item_rows), -1, dtype=np.int64)
        self.sim_of_item[s.item_index[eligible]] = eligible
        vocab_of_code = np.zeros(int(s.data.groups.max()) + 2, dtype=np.int64)
        vocab_of_code[s.data.groups] = s.data.user.cpu().numpy()
        self.user_vocab = vocab_of_code[s.user_code]  # the unknown code (-1): the 0 slot
        self.global_clicks = self.oracle_clicks(sim, eligible, s.world.slots)

    @staticmethod
    def oracle_clicks(sim: Any, eligible: np.ndarray, slots: int) -> np.ndarray:
        """[U] expected clicks of the global oracle: the S covers of highest true click
        probability among all available ones, shown best first (examination-weighted)."""
        from bench.tasks import online

        curve = online.examination(slots)
        top = -np.sort(-click_grid(sim, eligible), axis=1)[:, :slots]
        return top @ curve

    def served(self, model: TwoTower, embeddings: Embeddings | None, feature_set: str,
               ctx: TaskContext) -> tuple[Any, np.ndarray | None]:
        """One arm's funnel day: each simulator user's K covers recalled by ``model`` (its
        FAISS top K over the pool) and the ctr task's DICM scores of them (``feature_set``)."""
        s = self.serving
        users, items = tower_vectors(model, self.user_vocab, s.history)
        found = two_tower_candidates(s.item_index[self.pool_sim], s.history, users, items,
                                     self.k)
        world = funnel_world(s, self.sim_of_item[found])
        return world, self.ranking(world, embeddings, feature_set, ctx)

    def rows(self, model: TwoTower, embeddings: Embeddings | None, feature_set: str,
             ctx: TaskContext) -> list[dict[str, Any]]:
        """The funnel's online rows of one arm (this two-tower model's recall, ranked by the
        ctr task's DICM model of ``feature_set``), against the ID-only funnel."""
        from bench.tasks import online

        world, scores = self.served(model, embeddings, feature_set, ctx)
        if scores is None:
            return []
        totals = online.serve(world, scores)
        ceiling = online.serve(world, world.true["click"])
        users = np.asarray(world.simulator.user_ids)
        base = self.baseline(ctx)
        out = [{**m, "metric": m["metric"].replace("online_", "funnel_", 1)}
               for m in online.arm_rows(world, users, totals, base)]
        scale = 100.0 / self.global_clicks.mean()
        parts = {"funnel_recall_loss": self.global_clicks - ceiling["click_exp"],
                 "funnel_ranking_loss": ceiling["click_exp"] - totals["click_exp"]}
        for name, per_user in parts.items():  # % of the global oracle's expected clicks
            out.append({"metric": name, "value": float(per_user.mean() * scale),
                        "evidence": mean_evidence("user", users, per_user * scale)})
        return out

    def ranking(self, world: Any, embeddings: Embeddings | None, feature_set: str,
                ctx: TaskContext) -> np.ndarray | None:
        """The ctr task's DICM click probabilities of the recalled covers [U, K]: the online
        task's cached scores (:meth:`online.Serving.cached_scores`, keyed by the ctr model's
        settings, the vectors and the recalled covers) over the funnel's world."""
        return replace_world(self.serving, world).cached_scores(embeddings, feature_set, ctx)

    def baseline(self, ctx: TaskContext) -> dict[str, np.ndarray]:
        """The ID-only funnel's per-user totals (the ID-only towers and the ID-only DICM)."""
        key = ("baseline", ctx.seed)
        if key not in _FUNNEL:
            from bench.tasks import online

            options = {**_COMMON, **ctx.options}
            model = cached_two_tower(self.serving.data, None, self.serving.dataset, options,
                                     ctx.seed, ctx.cache)
            _FUNNEL[key] = online.serve(*self.served(model, None, "none", ctx))
        return _FUNNEL[key]


def replace_world(serving: Any, world: Any) -> Any:
    """The online task's ``Serving`` with another world (its ``model_scores`` predicts the
    world's candidates)."""
    from dataclasses import replace

    return replace(serving, world=world)


def funnel_of(dataset: Dataset, ctx: TaskContext, options: dict[str, Any]) -> Funnel:
    key = fingerprint(dataset.fingerprint, options.get("online", {}), options["funnel_k"],
                      options["history_length"], ctx.profile.name if ctx.profile else None)
    if _FUNNEL.get("key") != key:
        _FUNNEL.clear()
        _DRAWS.clear()
        _FUNNEL["key"] = key
        _FUNNEL["value"] = Funnel(dataset, ctx, options)
    return _FUNNEL["value"]
