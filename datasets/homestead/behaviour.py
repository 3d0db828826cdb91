"""The behaviour log and the user model it is drawn from.

Why its own module: the CTR task's ground truth is a model of users, not of pictures. Users
favour styles, scene types, coarse categories and a cover's light warmth (a purely visual trait
no label carries); outcomes follow that taste score plus popularity, calibrated to the target
rates (``TARGET_*``); covers first published on the last day are the cold start.

``UserModel`` holds every drawn parameter (tastes, warmth preference, activity, popularity, the
calibrated biases, the noise scale) and is what the logged impressions are drawn from; it is
stored in the world's ``users`` and ``item_latents`` tables, so the dataset can give it back as a
simulator (``UserModel.from_tables``): true probabilities of click, detail view and conversion
for any users and items, and outcome draws, for the simulated online A/B (docs/online.md).

An impression's logit is ``score(u, i) + eps`` with a per-impression noise ``eps ~ N(0, 0.6^2)``
(what the user's mood and the context add). The *true probability* of an outcome integrates that
noise out (logistic-normal): ``P(click) = E_eps[sigmoid(score + eps + b_click)]``, and detail and
conversion, which see the same ``eps``, are the expectation of the product of their gates
(``P(detail) = E[sigmoid(s+eps+b_c) sigmoid(0.6 (s+eps) + b_d)]``), computed by Gauss-Hermite
quadrature with ``QUADRATURE_NODES`` nodes (tests/test_online.py checks it against Monte Carlo).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .vocabulary import COARSE, SCENES, STYLES, balanced

TARGET_CTR, TARGET_DETAIL, TARGET_CONVERSION = 0.15, 0.40, 0.10  # the last two: share of clicks
NOISE_SD = 0.6  # per-impression noise on the logit
DETAIL_SLOPE = 0.6  # detail and conversion follow 0.6 x the (noisy) score
QUADRATURE_NODES = 24
# in the dataset fingerprint (datasets/homestead/__init__.py), beside GENERATOR_VERSION: the
# world's tables changed meaning. 1: the user model's parameters are stored in ``users``
# (taste_*, exact warmth_pref and activity, the biases) and ``item_latents`` (mix_*,
# publish_day, exact popularity); the impressions are bit-identical to before.
BEHAVIOUR_VERSION = "1"
_BIASES = ("bias_click", "bias_detail", "bias_conversion")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _calibrate(logits: np.ndarray, target: float) -> float:
    """The bias b with mean(sigmoid(logits + b)) == target (bisection; deterministic)."""
    if not len(logits):
        return 0.0
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(logits + mid).mean() < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class UserModel:
    """The true user model of a homestead world: users' tastes and items' latent traits.

    Users and items are addressed by position (``user_ids``, ``item_ids``: the covers). Tastes
    do not change over days; a day only decides which covers are published
    (``publish_day <= day``)."""

    user_ids: np.ndarray  # [U] str
    taste_style: np.ndarray  # [U, len(STYLES)]
    taste_scene: np.ndarray  # [U, len(SCENES)]
    taste_coarse: np.ndarray  # [U, len(COARSE)]
    warmth_pref: np.ndarray  # [U]
    activity: np.ndarray  # [U]
    item_ids: np.ndarray  # [I] str
    item_style: np.ndarray  # [I] index into STYLES
    item_scene: np.ndarray  # [I] index into SCENES
    mix: np.ndarray  # [I, len(COARSE)] share of the cover's products per coarse category
    warmth: np.ndarray  # [I] light warmth in [-1, 1]
    popularity: np.ndarray  # [I]
    publish_day: np.ndarray  # [I]
    favourites: np.ndarray  # [U, 3] the drawn favourite style, scene and coarse category
    bias_click: float = 0.0
    bias_detail: float = 0.0
    bias_conversion: float = 0.0
    noise_sd: float = NOISE_SD
    detail_slope: float = DETAIL_SLOPE

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The noise-free logit (taste score + popularity + activity) of user and item
        positions, broadcast against each other (``users[:, None]`` and ``items[None, :]`` for
        a grid). The sum's order is the log's, so the log's scores are bit-identical."""
        u, i = np.broadcast_arrays(np.asarray(users), np.asarray(items))
        coarse = np.einsum("...c,...c->...", self.taste_coarse[u], self.mix[i]) if u.ndim > 1 \
            else (self.taste_coarse[u] * self.mix[i]).sum(1)
        return (self.taste_style[u, self.item_style[i]] + self.taste_scene[u, self.item_scene[i]]
                + coarse + 1.0 * self.warmth_pref[u] * self.warmth[i]
                + self.popularity[i] + self.activity[u])

    def outcomes(self, noisy_score: np.ndarray, uniforms: tuple[np.ndarray, np.ndarray,
                 np.ndarray]) -> dict[str, np.ndarray]:
        """Click, detail and conversion (bool) of impressions with logit ``noisy_score`` (the
        score plus its noise draw) and three uniforms each: the log's and the online draws'
        one rule."""
        u_click, u_detail, u_conversion = uniforms
        click = u_click < _sigmoid(noisy_score + self.bias_click)
        s2 = self.detail_slope * noisy_score
        detail = click & (u_detail < _sigmoid(s2 + self.bias_detail))
        conversion = detail & (u_conversion < _sigmoid(s2 + self.bias_conversion))
        return {"click": click, "detail": detail, "conversion": conversion}

    def probabilities(self, users: np.ndarray, items: np.ndarray, day: int | None = None,
                      nodes: int = QUADRATURE_NODES) -> dict[str, np.ndarray]:
        """True probabilities of click, detail view and conversion per impression (the noise
        integrated out by Gauss-Hermite quadrature), for broadcast user and item positions;
        0 for an item not yet published on ``day`` (None: every item)."""
        score = self.score(users, items)
        x, w = np.polynomial.hermite.hermgauss(nodes)
        noisy = score[..., None] + np.sqrt(2.0) * self.noise_sd * x
        weights = w / np.sqrt(np.pi)
        click = _sigmoid(noisy + self.bias_click)
        s2 = self.detail_slope * noisy
        detail = click * _sigmoid(s2 + self.bias_detail)
        conversion = detail * _sigmoid(s2 + self.bias_conversion)
        out = {name: gate @ weights for name, gate in
               (("click", click), ("detail", detail), ("conversion", conversion))}
        if day is not None:
            _, i = np.broadcast_arrays(np.asarray(users), np.asarray(items))
            published = self.publish_day[i] <= day
            out = {name: np.where(published, p, 0.0) for name, p in out.items()}
        return out

    def draw(self, users: np.ndarray, items: np.ndarray, g: np.random.Generator
             ) -> dict[str, np.ndarray]:
        """Outcomes of impressions (user and item positions, broadcast), drawn as the log's."""
        score = self.score(users, items)
        noisy = score + g.normal(0, self.noise_sd, score.shape)
        return self.outcomes(noisy, (g.random(score.shape), g.random(score.shape),
                                     g.random(score.shape)))

    def exposure_logits(self, items: np.ndarray, day: int) -> np.ndarray:
        """The logging policy's log-weights: 0.4 x popularity, doubled odds on the day a cover
        is first published; it shows a user k covers drawn without replacement (Gumbel top-k)."""
        items = np.asarray(items)
        return 0.4 * self.popularity[items] + np.log(2.0) * (self.publish_day[items] == day)

    def to_tables(self) -> dict[str, pd.DataFrame]:
        """The parameters as columns of the world's ``users`` and ``item_latents`` tables."""
        users = pd.DataFrame({
            "user_id": self.user_ids,
            "fav_style": np.array(STYLES)[self.favourites[:, 0]],
            "fav_scene": np.array(SCENES)[self.favourites[:, 1]],
            "fav_coarse": np.array(COARSE)[self.favourites[:, 2]],
            "warmth_pref": self.warmth_pref, "activity": self.activity,
            **{f"taste_style_{k}": self.taste_style[:, j] for j, k in enumerate(STYLES)},
            **{f"taste_scene_{k}": self.taste_scene[:, j] for j, k in enumerate(SCENES)},
            **{f"taste_coarse_{k}": self.taste_coarse[:, j] for j, k in enumerate(COARSE)},
            **{name: float(getattr(self, name)) for name in (*_BIASES, "noise_sd",
                                                              "detail_slope")}})
        items = pd.DataFrame({
            "item_id": self.item_ids, "true_style": np.array(STYLES)[self.item_style],
            "true_scene": np.array(SCENES)[self.item_scene], "warmth": self.warmth,
            "popularity": self.popularity, "publish_day": self.publish_day.astype(np.int64),
            **{f"mix_{c}": self.mix[:, k] for k, c in enumerate(COARSE)}})
        return {"users": users, "item_latents": items}

    @classmethod
    def from_tables(cls, users: pd.DataFrame, items: pd.DataFrame) -> UserModel | None:
        """The model stored by :meth:`to_tables`; None when the tables do not hold it."""
        needed = [f"taste_style_{k}" for k in STYLES] + [f"mix_{c}" for c in COARSE]
        if not set(needed) <= set(users.columns) | set(items.columns) or not len(users):
            return None
        first = users.iloc[0]
        return cls(
            user_ids=users["user_id"].astype(str).to_numpy(),
            taste_style=users[[f"taste_style_{k}" for k in STYLES]].to_numpy(np.float64),
            taste_scene=users[[f"taste_scene_{k}" for k in SCENES]].to_numpy(np.float64),
            taste_coarse=users[[f"taste_coarse_{k}" for k in COARSE]].to_numpy(np.float64),
            warmth_pref=users["warmth_pref"].to_numpy(np.float64),
            activity=users["activity"].to_numpy(np.float64),
            item_ids=items["item_id"].astype(str).to_numpy(),
            item_style=items["true_style"].map(STYLES.index).to_numpy(np.int64),
            item_scene=items["true_scene"].map(SCENES.index).to_numpy(np.int64),
            mix=items[[f"mix_{c}" for c in COARSE]].to_numpy(np.float64),
            warmth=items["warmth"].to_numpy(np.float64),
            popularity=items["popularity"].to_numpy(np.float64),
            publish_day=items["publish_day"].to_numpy(np.int64),
            favourites=np.stack([users["fav_style"].map(STYLES.index), users["fav_scene"].map(
                SCENES.index), users["fav_coarse"].map(COARSE.index)], 1).astype(np.int64),
            **{name: float(first[name]) for name in (*_BIASES, "noise_sd", "detail_slope")})


def draw_user_model(items: pd.DataFrame, n_users: int, g: np.random.Generator) -> UserModel:
    """Users' tastes and items' popularity, drawn from ``g`` in the log's order (biases 0 until
    the log calibrates them)."""
    vocab = {"style": STYLES, "scene": SCENES, "coarse": COARSE}
    fav = {k: balanced(g, n_users, len(v)) for k, v in vocab.items()}
    taste = {}
    for k, boost in (("style", 1.5), ("scene", 0.9), ("coarse", 0.7)):
        taste[k] = g.normal(0, 0.4, (n_users, len(vocab[k])))
        taste[k][np.arange(n_users), fav[k]] += boost
    warm_pref = g.normal(0, 1.0, n_users)
    activity = g.normal(0, 0.3, n_users)
    pop = g.normal(0, 0.5, len(items))
    return UserModel(
        user_ids=np.array([f"u{i:05d}" for i in range(n_users)]),
        taste_style=taste["style"], taste_scene=taste["scene"], taste_coarse=taste["coarse"],
        warmth_pref=warm_pref, activity=activity,
        item_ids=items["item_id"].astype(str).to_numpy(),
        item_style=items["true_style"].map(STYLES.index).to_numpy(),
        item_scene=items["true_scene"].map(SCENES.index).to_numpy(),
        mix=items[[f"mix_{c}" for c in COARSE]].to_numpy(),
        warmth=items["warmth"].to_numpy(), popularity=pop,
        publish_day=items["publish_day"].to_numpy(),
        favourites=np.stack([fav["style"], fav["scene"], fav["coarse"]], 1))


def behaviour_log(items: pd.DataFrame, n_users: int, n_days: int, per_day: int,
                  g: np.random.Generator) -> dict[str, pd.DataFrame]:
    """Users with latent tastes see covers that are published by that day (the logging
    policy: popularity-weighted draws, ``UserModel.exposure_logits``); click, detail and
    conversion follow the user model, whose biases calibrate the log to the target rates."""
    model = draw_user_model(items, n_users, g)
    publish = model.publish_day
    users, chosen, days = [], [], []
    for day in range(n_days):
        avail = np.flatnonzero(publish <= day)
        k = min(per_day, len(avail))
        if k == 0:
            continue
        logw = model.exposure_logits(avail, day)
        for start in range(0, n_users, 1024):
            stop = min(start + 1024, n_users)
            keys = logw + g.gumbel(size=(stop - start, len(avail)))
            top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(keys, top, 1), axis=1, kind="stable")
            chosen.append(avail[np.take_along_axis(top, order, 1)].ravel())
            users.append(np.repeat(np.arange(start, stop), k))
            days.append(np.full((stop - start) * k, day))
    u, i, d = np.concatenate(users), np.concatenate(chosen), np.concatenate(days)
    score = model.score(u, i) + g.normal(0, model.noise_sd, len(u))
    uniforms = (g.random(len(u)), g.random(len(u)), g.random(len(u)))
    # the biases calibrate the log's rates; each needs the outcomes of the one before
    model = replace(model, bias_click=_calibrate(score, TARGET_CTR))
    click = model.outcomes(score, uniforms)["click"]
    s2 = model.detail_slope * score
    model = replace(model, bias_detail=_calibrate(s2[click], TARGET_DETAIL))
    detail = model.outcomes(score, uniforms)["detail"]
    model = replace(model, bias_conversion=_calibrate(s2[detail],
                                                      TARGET_CONVERSION / TARGET_DETAIL))
    outcome = model.outcomes(score, uniforms)
    impressions = pd.DataFrame({
        "user_id": model.user_ids[u], "item_id": model.item_ids[i], "day": d.astype(np.int64),
        **{name: outcome[name].astype(np.int64) for name in ("click", "detail", "conversion")}})
    return {"impressions": impressions, **model.to_tables()}
