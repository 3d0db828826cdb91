"""``online``: a simulated online A/B. Does an offline win become an online lift?

A dataset with a ``simulator`` (the true user model its log was drawn from: homestead's
``UserModel``) lets each ranking policy (an *arm*) serve N online days after the logged ones,
with outcomes drawn from the user model. The protocol (docs/online.md):

- every user of the world arrives once per online day and gets ``candidates`` covers, drawn
  without replacement by the logging policy's popularity weights (Gumbel top-k); the covers first
  published on the last logged day are new: no ranking model has seen them in training (cold
  start), and they keep their "new" boost;
- each arm ranks the candidates and the top ``slots`` are shown; slot k is examined with
  probability ``1 / log2(k + 1)`` (the DCG position-bias curve), and an examined cover is clicked,
  viewed in detail and bought as the user model says;
- every arm sees the same users, candidates and random numbers (common random numbers): one
  noise draw and three uniforms per (user, day, candidate) and one examination uniform per
  (user, day, slot). An arm compared with itself therefore shows a lift of exactly 0.

Arms: each extractor's DICM model, the very model the ctr task trained (read from its cache,
``bench.tasks.ctr.trained_model``), ranking by its predicted click probability; the references
``none (ids only)`` (the ID-only DICM, what every lift is relative to), ``oracle`` (the true click
probability: the ceiling), ``random`` (a random order: the floor) and ``logging policy`` (the
popularity-weighted draw that made the log). The ladder rungs are extractors of the profile.

Metrics per arm (docs/metrics.md): ``online_ctr`` (clicks per impression), ``online_pctcvr``
(conversions per impression), ``online_ipv`` (detail views per user over the N days),
``online_new_share`` (the share of clicks that go to new covers), each exact (expected, from the
true probabilities) and ``*_sampled`` (the drawn outcome a real A/B would see); ``*_lift``: the
relative lift over the ID-only arm in %, paired over users (for the new-cover share
``online_new_share_diff``, the difference in percentage points: ``POINTS``); ``*_users``: users
per arm a real, unpaired A/B needs to detect that difference (two-sided 95%, power 80%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats
import torch

from bench.core.cache import NPZ, array_digest, cached, fingerprint
from bench.core.data import Dataset
from bench.core.metric_info import MetricInfo, count
from bench.embed.embeddings import Embeddings
from bench.scoring.stats import Evidence, mean_evidence
from bench.tasks import Reference, Task, TaskContext, get_task, task
from bench.tasks import ctr as ctr_task
from bench.tasks.ctr import data as ctr_data
from bench.tasks.ctr.model import probabilities
from bench.tasks.ctr.train import torch_threads

BASELINE = ctr_task.BASELINE
ORACLE, RANDOM, LOGGING = "oracle", "random order", "logging policy"
POLICIES = (ORACLE, RANDOM, LOGGING)
KPIS = ("ctr", "pctcvr", "ipv", "new_share")  # docs/online.md
# shares compared in percentage points, not in %: the ID-only arm's share of clicks on new
# covers is near 0 on some seeds (its unseen-item slot is never trained), where a relative lift
# explodes (+300% [-260, +930] on the default run)
POINTS = ("new_share",)
ALPHA, POWER = 0.05, 0.80
ONLINE_SEED = 20240611  # the online world's draws: fixed, so arms and seeds share them
_COMMON = dict(days=7, candidates=40, slots=10)


def examination(slots: int) -> np.ndarray:
    """P(slot k is examined), k = 1..slots: 1 / log2(k + 1), the DCG discount (1, 0.63, 0.5...)."""
    return 1.0 / np.log2(np.arange(2, slots + 2))


@dataclass
class OnlineWorld:
    """The online days' users, candidates and draws, shared by every arm (common random
    numbers). Rows are (user, day) visits; candidates are item positions of the simulator."""

    user: np.ndarray  # [V] simulator user position of each visit
    candidates: np.ndarray  # [V, M] simulator item positions
    noisy_score: np.ndarray  # [V, M] the user model's logit plus this impression's noise draw
    uniforms: tuple[np.ndarray, np.ndarray, np.ndarray]  # [V, M] click, detail, conversion
    exam_uniform: np.ndarray  # [V, S] examination draw per slot
    true: dict[str, np.ndarray]  # [V, M] true click, detail, conversion probabilities
    new: np.ndarray  # [V, M] bool: a cover first published on the last logged day
    order_keys: dict[str, np.ndarray]  # [V, M] the random and logging arms' sort keys
    days: int
    slots: int
    simulator: Any  # the user model (``Dataset.simulator``)

    @property
    def n_users(self) -> int:
        return int(self.user.max()) + 1


def online_world(simulator: Any, eligible: np.ndarray, eval_day: int, days: int,
                 candidates: int, slots: int, seed: int = ONLINE_SEED) -> OnlineWorld:
    """Draw the online days: every user once a day, ``candidates`` of the ``eligible`` covers
    each by the logging policy's weights, and every random number the arms share."""
    g = np.random.default_rng([seed, eval_day, days, candidates, slots])
    n_users = len(simulator.user_ids)
    m = min(candidates, len(eligible))
    if m < slots:
        raise ValueError(f"online: {len(eligible)} eligible covers, fewer than {slots} slots")
    weights = simulator.exposure_logits(eligible, eval_day)
    user = np.tile(np.arange(n_users), days)
    drawn = []
    for start in range(0, len(user), 1024):  # [1024, covers] keys at a time: bounded memory
        keys = weights + g.gumbel(size=(min(1024, len(user) - start), len(eligible)))
        drawn.append(np.argpartition(-keys, m - 1, axis=1)[:, :m])
    cand = eligible[np.sort(np.concatenate(drawn), axis=1)]  # candidate order says nothing
    shape = cand.shape
    noisy = simulator.score(user[:, None], cand) + g.normal(0, simulator.noise_sd, shape)
    uniforms = (g.random(shape), g.random(shape), g.random(shape))
    exam = g.random((len(user), slots))
    order_keys = {RANDOM: g.random(shape),
                  LOGGING: simulator.exposure_logits(cand, eval_day) + g.gumbel(size=shape)}
    true = simulator.probabilities(user[:, None], cand)
    new = simulator.publish_day[cand] >= eval_day
    return OnlineWorld(user, cand, noisy, uniforms, exam, true, new, order_keys, days, slots,
                       simulator)


def top_slots(scores: np.ndarray, slots: int) -> np.ndarray:
    """[V, S] candidate columns shown, best first; ties keep the candidate order (stable)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :slots]


def serve(world: OnlineWorld, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Per user, over the online days: expected (``*_exp``) and drawn clicks, detail views,
    conversions and clicks on new covers, and impressions, of the arm that ranks by ``scores``."""
    shown = top_slots(scores, world.slots)
    visit = np.arange(len(shown))[:, None]
    curve = examination(world.slots)[None, :]
    examined = world.exam_uniform < curve
    outcome = world.simulator.outcomes(world.noisy_score[visit, shown],
                                       tuple(u[visit, shown] for u in world.uniforms))
    new = world.new[visit, shown]
    per_visit = {"impressions": np.full(len(shown), float(world.slots))}
    for name in ("click", "detail", "conversion"):
        per_visit[f"{name}_exp"] = (curve * world.true[name][visit, shown]).sum(1)
        per_visit[name] = (examined & outcome[name]).sum(1).astype(np.float64)
    per_visit["new_click_exp"] = (curve * world.true["click"][visit, shown] * new).sum(1)
    per_visit["new_click"] = (examined & outcome["click"] & new).sum(1).astype(np.float64)
    n = world.n_users
    return {k: np.bincount(world.user, weights=v, minlength=n) for k, v in per_visit.items()}


def kpi_parts(totals: dict[str, np.ndarray], kpi: str, sampled: bool
              ) -> tuple[np.ndarray, np.ndarray]:
    """(numerator, denominator) per user of a KPI, a ratio of sums over users."""
    s = "" if sampled else "_exp"
    if kpi == "ctr":
        return totals[f"click{s}"], totals["impressions"]
    if kpi == "pctcvr":
        return totals[f"conversion{s}"], totals["impressions"]
    if kpi == "ipv":
        return totals[f"detail{s}"], np.ones_like(totals["impressions"])
    return totals[f"new_click{s}"], totals[f"click{s}"]


def ratio(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.sum() / b.sum()) if b.sum() > 0 else float("nan")


def level_evidence(users: np.ndarray, a: np.ndarray, b: np.ndarray) -> Evidence:
    """The ratio of sums sum(a) / sum(b) as a mean over users of its linearisation
    ``R + (a_u - R b_u) / mean(b)``, so the bootstrap over users gives its delta-method
    interval (exactly the mean of a_u / b_u when every b_u is equal)."""
    r = ratio(a, b)
    return mean_evidence("user", users, r + (a - r * b) / max(b.mean(), 1e-300))


def lift(arm: tuple[np.ndarray, np.ndarray], base: tuple[np.ndarray, np.ndarray]) -> float:
    """100 x (R_arm / R_base - 1), R a ratio of sums over users."""
    return 100.0 * (ratio(*arm) / ratio(*base) - 1.0)


def lift_evidence(users: np.ndarray, arm: tuple[np.ndarray, np.ndarray],
                  base: tuple[np.ndarray, np.ndarray]) -> Evidence:
    """The lift as a mean over users of its linearisation (influence of log R_arm - log R_base,
    times 100 R_arm / R_base): paired, since both arms' terms are the same users'. An arm
    against itself has every term exactly 0."""
    value = lift(arm, base)  # an arm against itself: value and every term are exactly 0

    def influence(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a / max(a.mean(), 1e-300) - b / max(b.mean(), 1e-300)

    terms = (100.0 + value) * (influence(*arm) - influence(*base))
    return mean_evidence("user", users, value + terms)


def users_needed(arm: np.ndarray, base: np.ndarray, diff: float) -> float:
    """Users per arm a two-arm (unpaired) A/B needs to detect a difference ``diff`` of means of
    per-user values at two-sided 5% with 80% power: ``(z_0.975 + z_0.8)^2 (var_a + var_b) /
    diff^2`` (the normal two-sample formula); inf when there is no difference to detect."""
    if not np.isfinite(diff) or diff == 0:
        return float("inf")
    z = scipy.stats.norm.ppf(1 - ALPHA / 2) + scipy.stats.norm.ppf(POWER)
    return float(math.ceil(z ** 2 * (np.var(arm, ddof=1) + np.var(base, ddof=1)) / diff ** 2))


def per_user_values(totals: dict[str, np.ndarray], kpi: str) -> np.ndarray:
    """What one user contributes to a KPI in a real A/B (sampled): its linearised ratio."""
    a, b = kpi_parts(totals, kpi, sampled=True)
    r = ratio(a, b)
    return r + (a - r * b) / max(b.mean(), 1e-300)


def arm_rows(world: OnlineWorld, users: np.ndarray, totals: dict[str, np.ndarray],
             base: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Every metric row of one arm against the ID-only arm ``base`` (both from :func:`serve`)."""
    out: list[dict[str, Any]] = []
    for kpi in KPIS:
        for sampled in (False, True):
            suffix = "_sampled" if sampled else ""
            arm, ref = kpi_parts(totals, kpi, sampled), kpi_parts(base, kpi, sampled)
            out.append({"metric": f"online_{kpi}{suffix}", "value": ratio(*arm),
                        "evidence": level_evidence(users, *arm)})
            if kpi in POINTS:  # a share: the difference in percentage points
                mine, theirs = level_evidence(users, *arm), level_evidence(users, *ref)
                out.append({"metric": f"online_{kpi}_diff{suffix}",
                            "value": 100.0 * (ratio(*arm) - ratio(*ref)),
                            "evidence": mean_evidence("user", users, 100.0 * (
                                mine.values - theirs.values))})
                continue
            out.append({"metric": f"online_{kpi}_lift{suffix}", "value": lift(arm, ref),
                        "evidence": lift_evidence(users, arm, ref)})
        arm_v, base_v = per_user_values(totals, kpi), per_user_values(base, kpi)
        expected = ratio(*kpi_parts(totals, kpi, False)) - ratio(*kpi_parts(base, kpi, False))
        needed = users_needed(arm_v, base_v, expected)
        if np.isfinite(needed):  # no row where there is no difference to detect (IDs only)
            out.append({"metric": f"online_{kpi}_users", "value": needed})
    return out


class OnlineTask(Task):
    name = "online"
    description = ("Simulated online A/B on the true user model: each arm (the ctr task's DICM "
                   "model per extractor, oracle, random, logging policy) ranks N online days; "
                   "CTR, pCTCVR, IPV per user and the share of clicks on new covers, and their "
                   "lift in % over the ID-only model, paired over users.")
    stage = "ranking"
    main_score = "online_ctr_lift"
    metrics = (MetricInfo("online_*_lift*", unit="user"), MetricInfo("online_*_diff*", unit="user"),
               MetricInfo("online_*_users", "none", "count"),
               MetricInfo("online_*", unit="user"), count("online_days"))
    reference = BASELINE
    needs = ("a simulator (the true user model of the impressions log)",
             "logs['impressions'] (the ctr task's log)")
    seeded = True
    variants = ("raw",)
    whitening_labels = ("style", "scene")
    # 7 days: the study's own A/B ran a week, the unit a real A/B is planned in; the ladder's
    # adjacent rungs separate at 95% from 3 days on at 600 users (docs/online.md); 40
    # candidates, 10 shown
    defaults = {"quick": {**_COMMON, "days": 3}, "default": dict(_COMMON),
                "full": dict(_COMMON)}

    def population(self, dataset: Dataset) -> np.ndarray:
        return get_task("ctr").population(dataset)

    def skip_reason(self, dataset: Dataset) -> str | None:
        if dataset.simulator is None:
            return ("the dataset has no simulator (the true user model behind its log; real "
                    "logs have none), so there is nothing to draw online outcomes from")
        return get_task("ctr").skip_reason(dataset)

    def evaluate(self, embeddings: Embeddings, dataset: Dataset,
                 ctx: TaskContext) -> list[dict[str, Any]]:
        serving = Serving.of(dataset, ctx)
        scores = serving.cached_scores(embeddings, "dicm", ctx)
        if scores is None:
            return [{"metric": "online_days", "value": float(serving.world.days)}]
        return serving.rows(scores, ctx)

    def references(self, extractors: list[tuple[str, Any]], dataset: Dataset,
                   options: dict[str, Any]) -> list[Reference]:
        return [Reference(label, None, self.variants) for label in (BASELINE, *POLICIES)]

    def evaluate_reference(self, reference: Reference, embeddings: Embeddings | None,
                           dataset: Dataset, ctx: TaskContext) -> list[dict[str, Any]]:
        serving = Serving.of(dataset, ctx)
        if reference.label == BASELINE:
            return serving.rows(serving.baseline(ctx), ctx)
        world = serving.world
        scores = world.true["click"] if reference.label == ORACLE else \
            world.order_keys[reference.label]
        return serving.rows(scores, ctx)


@dataclass
class Serving:
    """One dataset's online world and the ctr task's data and options, built once per process
    (every arm of a run shares them)."""

    world: OnlineWorld
    data: ctr_data.CtrData
    ctr_options: dict[str, Any]
    dataset: Dataset
    item_index: np.ndarray  # [I] simulator item -> ctr item index (-1: not in the log)
    user_code: np.ndarray  # [U] simulator user -> the log's user code (-1: not in the log)
    history: np.ndarray  # [U, L] ctr item indices of the user's last clicks, -1 = padding
    _baseline: dict[int, np.ndarray]

    @classmethod
    def of(cls, dataset: Dataset, ctx: TaskContext) -> Serving:
        options = {**_COMMON, **ctx.options}
        ctr_options = {**ctr_task._COMMON, **(get_task("ctr").options(ctx.profile)
                                              if ctx.profile is not None else {}),
                       **options.get("ctr", {})}
        key = fingerprint(dataset.fingerprint, options, ctr_options)
        if _SERVING.get("key") != key:
            _SERVING.clear()
            _SERVING["key"] = key
            _SERVING["value"] = cls.build(dataset, options, ctr_options)
        return _SERVING["value"]

    @classmethod
    def build(cls, dataset: Dataset, options: dict[str, Any],
              ctr_options: dict[str, Any]) -> Serving:
        sim = dataset.simulator
        data = ctr_task.load(dataset, ctr_options)
        item_index = simulator_items(dataset, data)
        eligible = np.flatnonzero((item_index >= 0) & (sim.publish_day <= data.eval_day))
        world = online_world(sim, eligible, data.eval_day, int(options["days"]),
                             int(options["candidates"]), int(options["slots"]))
        user_code = simulator_users(dataset)
        history = final_histories(data, np.maximum(user_code, 0), user_code >= 0)
        return cls(world, data, ctr_options, dataset, item_index, user_code, history, {})

    def model_scores(self, embeddings: Embeddings | None, feature_set: str,
                     ctx: TaskContext) -> np.ndarray | None:
        """The ctr model's predicted click probability of every candidate, or None when the
        model's weights are not at hand (the AMS backend keeps them remote)."""
        vectors = None if embeddings is None else embeddings.take(self.data.item_rows)
        found = ctr_task.trained_model(self.data, vectors, self.dataset, self.ctr_options,
                                       feature_set, self.ctr_options["aggregator"], ctx.seed,
                                       ctx.cache, ctx.device)
        if found is None:
            return None
        model, view = found
        return predict_candidates(model, self, view)

    def cached_scores(self, embeddings: Embeddings | None, feature_set: str,
                      ctx: TaskContext) -> np.ndarray | None:
        """:meth:`model_scores`, kept in ``ctx.cache`` (keyed by the ctr model's settings, the
        vectors and the world's visits and candidates): rebuilding each model and predicting
        its candidates was most of a cached re-run's online time (about 1.8 s per arm)."""
        vectors = None if embeddings is None else embeddings.take(self.data.item_rows)
        arrays = (self.world.user, self.world.candidates, self.history, self.user_code,
                  self.item_index)
        if vectors is not None:
            arrays += (np.ascontiguousarray(vectors, np.float32),)
        key = fingerprint("online_scores", ctr_task.CTR_VERSION, ctr_task.TABLE_RULE,
                          self.dataset.fingerprint, self.ctr_options, feature_set, ctx.seed,
                          array_digest(*arrays))
        found = cached(ctx.cache, "online", key,
                       lambda: {"scores": self.model_scores(embeddings, feature_set, ctx)},
                       codec=NPZ, keep=lambda v: v["scores"] is not None)
        return found["scores"]

    def baseline(self, ctx: TaskContext) -> np.ndarray:
        if ctx.seed not in self._baseline:
            self._baseline[ctx.seed] = self.cached_scores(None, "none", ctx)
        return self._baseline[ctx.seed]

    def rows(self, scores: np.ndarray, ctx: TaskContext) -> list[dict[str, Any]]:
        users = np.asarray(self.dataset.simulator.user_ids)
        base = serve(self.world, self.baseline(ctx))
        totals = serve(self.world, scores)
        return [*arm_rows(self.world, users, totals, base),
                {"metric": "online_days", "value": float(self.world.days)}]


_SERVING: dict[str, Any] = {}


def simulator_items(dataset: Dataset, data: ctr_data.CtrData) -> np.ndarray:
    """[I] each simulator cover's ctr item index (``data.item_rows`` position; -1: not in the
    log): the one map between the user model's covers and the ctr task's, shared by the online
    task and candidate_recall's expected recall."""
    item_rows = dataset.positions(dataset.simulator.item_ids)
    found = np.clip(np.searchsorted(data.item_rows, item_rows), 0, len(data.item_rows) - 1)
    return np.where(data.item_rows[found] == item_rows, found, -1)


def simulator_users(dataset: Dataset) -> np.ndarray:
    """[U] each simulator user's code in the log (the ctr task's ``groups``: the rank of its id
    among the log's ids as text; -1: not in the log)."""
    log_users = np.unique(dataset.logs["impressions"]["user_id"].astype(str).to_numpy())
    ids = np.asarray(dataset.simulator.user_ids).astype(str)
    code = np.clip(np.searchsorted(log_users, ids), 0, len(log_users) - 1)
    return np.where(log_users[code] == ids, code, -1)


def final_histories(data: ctr_data.CtrData, code: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Per simulator user, the last ``history_length`` clicked items of the whole log (the state
    the online days start from, frozen: no arm's online clicks feed back)."""
    n_codes = int(data.groups.max()) + 1
    day = np.concatenate([data.day, np.full(n_codes, data.day.max() + 1)])
    user = np.concatenate([data.groups, np.arange(n_codes)])
    item = np.concatenate([data.item.cpu().numpy(), np.zeros(n_codes, dtype=np.int64)])
    click = np.concatenate([data.labels[:, 0].cpu().numpy(), np.zeros(n_codes)])
    key, history = ctr_data._histories(user, day, item, click, data.history_length)
    last = history[key[-n_codes:]]
    return np.where(known[:, None], last[code], -1)


@torch.inference_mode()
def predict_candidates(model: Any, serving: Serving, view: ctr_data.CtrData,
                       batch_size: int = 8192) -> np.ndarray:
    """[V, M] the model's click probability of each visit's candidates."""
    world = serving.world
    device = view.labels.device
    vocab_of_code = np.zeros(int(view.groups.max()) + 2, dtype=np.int64)  # last: unknown
    vocab_of_code[view.groups] = view.user.cpu().numpy()  # the view's: 0 for users unseen
    user = np.repeat(vocab_of_code[serving.user_code[world.user]], world.candidates.shape[1])
    item = serving.item_index[world.candidates].ravel()
    visit_user = np.repeat(world.user, world.candidates.shape[1])
    history = torch.from_numpy(serving.history)
    out = []
    with torch_threads(1):
        model.eval()
        for start in range(0, len(user), batch_size):
            sl = slice(start, start + batch_size)
            h = history[visit_user[sl]].to(device)
            batch = {"user": torch.from_numpy(user[sl]).to(device),
                     "item": torch.from_numpy(item[sl]).to(device),
                     "history": h.clamp(min=0), "mask": h >= 0}
            out.append(probabilities(model(batch))["ctr"].double().cpu().numpy())
    return np.concatenate(out).reshape(world.candidates.shape)


@task("online")
def make_online() -> OnlineTask:
    return OnlineTask()
