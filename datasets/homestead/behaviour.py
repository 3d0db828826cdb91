"""The behaviour log: users with latent tastes, impressions over days, click, detail, conversion.

Why its own module: the CTR task's ground truth is a model of users, not of pictures. Users
favour styles, scene types, coarse categories and a cover's light warmth (a purely visual trait
no label carries); outcomes follow that taste score plus popularity, calibrated to the target
rates (``TARGET_*``); covers first published on the last day are the cold start.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .vocabulary import COARSE, SCENES, STYLES, balanced

TARGET_CTR, TARGET_DETAIL, TARGET_CONVERSION = 0.15, 0.40, 0.10  # the last two: share of clicks


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


def behaviour_log(items: pd.DataFrame, n_users: int, n_days: int, per_day: int,
                  g: np.random.Generator) -> dict[str, pd.DataFrame]:
    """Users with latent tastes see covers that are published by that day; click, detail and
    conversion follow a taste score (style, scene, category mix, light warmth) + popularity."""
    u_ids = np.array([f"u{i:05d}" for i in range(n_users)])
    vocab = {"style": STYLES, "scene": SCENES, "coarse": COARSE}
    fav = {k: balanced(g, n_users, len(v)) for k, v in vocab.items()}
    taste = {}
    for k, boost in (("style", 1.5), ("scene", 0.9), ("coarse", 0.7)):
        taste[k] = g.normal(0, 0.4, (n_users, len(vocab[k])))
        taste[k][np.arange(n_users), fav[k]] += boost
    warm_pref = g.normal(0, 1.0, n_users)
    activity = g.normal(0, 0.3, n_users)
    pop = g.normal(0, 0.5, len(items))
    publish = items["publish_day"].to_numpy()
    style_i = items["true_style"].map(STYLES.index).to_numpy()
    scene_i = items["true_scene"].map(SCENES.index).to_numpy()
    mix = items[[f"mix_{c}" for c in COARSE]].to_numpy()
    warmth = items["warmth"].to_numpy()

    users, chosen, days = [], [], []
    for day in range(n_days):
        avail = np.flatnonzero(publish <= day)
        k = min(per_day, len(avail))
        if k == 0:
            continue
        logw = 0.4 * pop[avail] + np.log(2.0) * (publish[avail] == day)
        for start in range(0, n_users, 1024):
            stop = min(start + 1024, n_users)
            keys = logw + g.gumbel(size=(stop - start, len(avail)))
            top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(keys, top, 1), axis=1, kind="stable")
            chosen.append(avail[np.take_along_axis(top, order, 1)].ravel())
            users.append(np.repeat(np.arange(start, stop), k))
            days.append(np.full((stop - start) * k, day))
    u, i, d = np.concatenate(users), np.concatenate(chosen), np.concatenate(days)
    score = (taste["style"][u, style_i[i]] + taste["scene"][u, scene_i[i]]
             + (taste["coarse"][u] * mix[i]).sum(1) + 1.0 * warm_pref[u] * warmth[i]
             + pop[i] + activity[u] + g.normal(0, 0.6, len(u)))
    click = g.random(len(u)) < _sigmoid(score + _calibrate(score, TARGET_CTR))
    s2 = 0.6 * score
    detail = click & (g.random(len(u)) < _sigmoid(s2 + _calibrate(s2[click], TARGET_DETAIL)))
    conv_rate = TARGET_CONVERSION / TARGET_DETAIL
    conversion = detail & (g.random(len(u)) < _sigmoid(s2 + _calibrate(s2[detail], conv_rate)))
    impressions = pd.DataFrame({
        "user_id": u_ids[u], "item_id": items["item_id"].to_numpy()[i], "day": d.astype(np.int64),
        "click": click.astype(np.int64), "detail": detail.astype(np.int64),
        "conversion": conversion.astype(np.int64)})
    users_table = pd.DataFrame({
        "user_id": u_ids, "fav_style": np.array(STYLES)[fav["style"]],
        "fav_scene": np.array(SCENES)[fav["scene"]], "fav_coarse": np.array(COARSE)[fav["coarse"]],
        "warmth_pref": warm_pref.round(4), "activity": activity.round(4)})
    latents = items[["item_id", "true_style", "true_scene", "warmth"]].copy()
    latents["popularity"] = pop.round(4)
    return {"impressions": impressions, "users": users_table, "item_latents": latents}


