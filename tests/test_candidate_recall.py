"""The recall stage (bench/tasks/candidate_recall.py): its metrics against an independent
computation, FAISS serving against exact inner products, the no-history rule, and a user's
folder. Each test names the bug it fails on."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from bench.core.cache import Cache
from bench.embed.embeddings import Embeddings
from bench.tasks import TaskContext, get_task
from bench.tasks import candidate_recall as cr
from bench.tasks import ctr as ctr_task
from tests.test_online import mini_dataset

pytestmark = pytest.mark.usefixtures("one_thread")
OPTIONS = {**cr._COMMON, "epochs": 1, "batch_size": 256, "history_length": 5, "ks": [5, 20]}


@pytest.fixture(scope="module")
def setting():
    dataset = mini_dataset()
    vectors = Embeddings(dataset.ids, np.random.default_rng(0).normal(size=(len(dataset), 8)))
    return dataset, vectors, cr.prepared(dataset, OPTIONS)


def reference_rates(rd: cr.RecallData, candidates: np.ndarray, k: int, cold: bool = False
                    ) -> tuple[float, float, int]:
    """HitRate@k and Recall@k with Python sets from the raw log (independent of ``hits``):
    per user with an evaluation-day click on a cover not clicked before."""
    data = rd.data
    labels = data.labels.numpy()
    items = data.item.numpy()
    hit, recall = [], []
    for e, code in enumerate(rd.user_code):
        earlier = np.flatnonzero((data.groups == code) & (data.day < data.eval_day)
                                 & (labels[:, 0] > 0))
        earlier = earlier[np.argsort(data.day[earlier], kind="stable")]
        before = {int(i) for i in items[earlier[-rd.history.shape[1]:]]}  # the last L clicks
        clicked = {int(i) for i in items[(data.groups == code) & (data.day == data.eval_day)
                                         & (labels[:, 0] > 0)]} - before
        if cold:
            clicked = {i for i in clicked if rd.cold[i]}
        if not clicked:
            continue
        top = {int(i) for i in candidates[e, :k] if i >= 0}
        hit.append(float(bool(clicked & top)))
        recall.append(len(clicked & top) / len(clicked))
    return float(np.mean(hit)), float(np.mean(recall)), len(hit)


def test_hitrate_and_recall_equal_a_set_computation(setting):
    """Planted: counting a user's repeated clicks twice, dividing by K instead of the
    targets, or scoring -1 padding as a hit all fail."""
    _, _, rd = setting
    g = np.random.default_rng(4)
    candidates = np.stack([g.permutation(rd.pool)[:20] for _ in range(rd.n_users)])
    candidates[::7, 15:] = -1  # short lists
    rows = {r["metric"]: r for r in cr.recall_metrics(rd, candidates, [5, 20])}
    for prefix, cold in (("", False), ("cold_", True)):
        if f"{prefix}recall_users" not in rows:
            continue
        for k in (5, 20):
            hit, recall, users = reference_rates(rd, candidates, k, cold)
            assert rows[f"{prefix}hitrate@{k}"]["value"] == pytest.approx(hit)
            assert rows[f"{prefix}click_recall@{k}"]["value"] == pytest.approx(recall)
            assert rows[f"{prefix}recall_users"]["value"] == users
            assert len(rows[f"{prefix}hitrate@{k}"]["evidence"].values) == users
    assert "cold_recall_users" in rows


def test_two_tower_served_through_faiss_equals_exact_inner_products(setting):
    """The FAISS inner-product index returns, per user, the K pool covers of largest exact
    inner product (numpy brute force; history covers excluded). Planted: serving the item
    vectors without their bias coordinate, or from the whole catalogue instead of the pool,
    fails."""
    dataset, vectors, rd = setting
    model = cr.cached_two_tower(rd.data, vectors.take(rd.data.item_rows), dataset, OPTIONS, 0,
                                None)
    users, items = cr.tower_vectors(model, rd.user_vocab, rd.history)
    k = 20
    served = cr.two_tower_candidates(rd.pool, rd.history, users, items, k)
    exact = users.astype(np.float64) @ items[rd.pool].astype(np.float64).T
    for e in range(rd.n_users):
        allowed = ~np.isin(rd.pool, rd.history[e])
        order = np.argsort(-exact[e][allowed], kind="stable")[:k]
        want = exact[e][allowed][order]
        got = exact[e][np.searchsorted(rd.pool, served[e])]
        np.testing.assert_allclose(np.sort(got)[::-1], want, rtol=1e-4, atol=1e-5)
        assert set(served[e]) <= set(rd.pool[allowed])
    # the served score is the model's click logit up to its constant offset
    with torch.inference_mode():
        logit = model(torch.from_numpy(rd.user_vocab[:3]), torch.from_numpy(rd.history[:3]),
                      torch.from_numpy(served[:3, 0])).numpy()
    np.testing.assert_allclose(logit - model.offset.item(), exact[:3][np.arange(3),
                               np.searchsorted(rd.pool, served[:3, 0])], rtol=1e-4, atol=1e-5)


def test_i2i_merges_by_the_largest_cosine_and_a_user_without_history_gets_popularity(setting):
    """i2i's list is the pool ordered by the largest cosine similarity to any earlier click
    (brute force), and a user with no click before the evaluation day gets the popularity list
    (docs/recall.md). Planted: summing similarities, or an empty list for a history-less user,
    fails."""
    _, vectors, rd = setting
    x = vectors.take(rd.data.item_rows)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    k = 10
    got = cr.i2i_candidates(rd, x, k)
    empty = np.flatnonzero((rd.history < 0).all(1))
    assert len(empty), "the mini world should have a user without history"
    popular = cr.popularity_candidates(rd, k)
    np.testing.assert_array_equal(got[empty], popular[empty])
    assert (got >= 0).all()
    for e in np.flatnonzero((rd.history >= 0).any(1))[:20]:
        h = rd.history[e][rd.history[e] >= 0]
        score = (unit[rd.pool] @ unit[h].T).max(1)
        allowed = ~np.isin(rd.pool, h)
        best = np.sort(score[allowed])[::-1][:k]
        np.testing.assert_allclose(np.sort(score[np.searchsorted(rd.pool, got[e])])[::-1],
                                   best, atol=1e-5)


def test_the_task_runs_every_row_and_caches_the_towers(setting, tmp_path, monkeypatch):
    """Every reference row runs; a second evaluation reads the towers' weights from the cache
    (planted: no cache, i.e. training twice, fails)."""
    dataset, vectors, _ = setting
    task = get_task("candidate_recall")
    cache = Cache(tmp_path)
    ctx = TaskContext(seed=0, options=OPTIONS, cache=cache)
    first = task.evaluate(vectors, dataset, ctx)
    calls = []
    real = cr.train_two_tower
    monkeypatch.setattr(cr, "train_two_tower", lambda *a: calls.append(1) or real(*a))
    again = task.evaluate(vectors, dataset, ctx)
    assert calls == []
    assert [r["value"] for r in first] == [r["value"] for r in again]
    labels = set()
    for reference in task.references([("pixels", None)], dataset, OPTIONS):
        rows = task.evaluate_reference(reference, vectors, dataset, ctx)
        labels.add(reference.label)
        assert {"hitrate@5", "click_recall@20"} <= {r["metric"] for r in rows}
    assert labels == {cr.BASELINE, cr.POPULARITY, cr.RANDOM, cr.ORACLE, "pixels [i2i]"}
    metrics = {r["metric"] for r in first}
    assert {"prerank_auc", "prerank_gauc", "hitrate@20", "expected_click_recall@20",
            "cold_expected_click_recall@5"} <= metrics


def reference_expected(dataset, rd: cr.RecallData, candidates: np.ndarray, k: int,
                       cold: bool = False) -> np.ndarray:
    """Per evaluated user, expected_click_recall@k from the raw log and the user model, one
    (user, cover) pair at a time: the pool from the table's publish days, the history from the
    user's clicks before the evaluation day (its last L), users and covers matched by id."""
    log = dataset.logs["impressions"]
    sim = dataset.simulator
    eval_day = int(log["day"].max())
    ids = dataset.table["id"].astype(str).to_numpy()[rd.data.item_rows]  # ctr index -> id
    users = np.unique(log["user_id"].to_numpy())[rd.user_code]
    published = dict(zip(dataset.table["id"].astype(str), dataset.table["publish_day"]))
    pool = [i for i in sorted(set(log["item_id"].astype(str))) if published[i] <= eval_day]
    if cold:
        pool = [i for i in pool if published[i] >= eval_day]
    sim_item = {str(i): j for j, i in enumerate(sim.item_ids)}
    sim_user = {str(u): j for j, u in enumerate(sim.user_ids)}
    out = []
    for e, user in enumerate(users):
        mine = log[(log["user_id"] == user) & (log["day"] < eval_day) & (log["click"] > 0)]
        before = set(mine.sort_values("day", kind="stable")["item_id"].astype(str)
                     .to_numpy()[-rd.history.shape[1]:])
        allowed = [i for i in pool if i not in before]
        p = dict(zip(allowed, sim.probabilities(sim_user[str(user)], np.array(
            [sim_item[i] for i in allowed], dtype=np.int64))["click"].tolist()))
        top = {ids[c] for c in candidates[e, :k] if c >= 0}
        total = sum(p.values())
        out.append(sum(p.get(i, 0.0) for i in top) / total if total > 0 else np.nan)
    return np.array(out)


def reordered(sim):
    """The same user model with its users and its covers listed backwards."""
    users = ("user_ids", "taste_style", "taste_scene", "taste_coarse", "warmth_pref",
             "activity", "favourites")
    items = ("item_ids", "item_style", "item_scene", "mix", "warmth", "popularity",
             "publish_day")
    return dataclasses.replace(sim, **{f: getattr(sim, f)[::-1].copy() for f in users + items})


def test_expected_click_recall_equals_a_pair_by_pair_computation(setting):
    """expected_click_recall@K (and its cold form) equal a dictionary computation over the raw
    log and the user model, whatever order the simulator lists its users and covers in, and
    the oracle row holds each user's largest possible mass. Planted: the history covers left in
    the denominator, the users matched by position instead of id, or the cold share divided by
    every cover's mass, all fail."""
    dataset, _, rd = setting
    backwards = dataclasses.replace(dataset, simulator=reordered(dataset.simulator))
    np.testing.assert_allclose(cr.true_clicks(backwards, rd), rd.truth, rtol=1e-12)
    g = np.random.default_rng(5)
    candidates = np.stack([g.permutation(rd.pool)[:20] for _ in range(rd.n_users)])
    candidates[::5, 12:] = -1
    candidates = cr.without_history(np.concatenate([candidates, np.full_like(
        candidates, -1)], 1), rd.history, 20)
    rows = {r["metric"]: r for r in cr.expected_metrics(rd, candidates, [5, 20])}
    for prefix, cold in (("", False), ("cold_", True)):
        for k in (5, 20):
            want = reference_expected(dataset, rd, candidates, k, cold)
            row = rows[f"{prefix}expected_click_recall@{k}"]
            np.testing.assert_allclose(row["evidence"].values, want[~np.isnan(want)],
                                       rtol=1e-9)
            assert row["value"] == pytest.approx(np.nanmean(want), rel=1e-9)
    oracle = cr.oracle_candidates(rd, 20)
    best = {r["metric"]: r for r in cr.expected_metrics(rd, oracle, [5, 20])}
    for k in (5, 20):
        mass = np.sort(rd.truth, axis=1)[:, ::-1][:, :k].sum(1) / rd.truth.sum(1)
        np.testing.assert_allclose(best[f"expected_click_recall@{k}"]["evidence"].values,
                                   mass, rtol=1e-9)
        assert (best[f"expected_click_recall@{k}"]["evidence"].values
                >= rows[f"expected_click_recall@{k}"]["evidence"].values - 1e-12).all()
    for e in range(rd.n_users):
        assert not set(oracle[e]) & set(rd.history[e][rd.history[e] >= 0])
        assert set(oracle[e][oracle[e] >= 0]) <= set(rd.pool)


def test_the_main_score_is_the_expected_recall_with_a_simulator_else_the_logged_one(
        setting, exported_folder, plugins, tmp_path):
    """A world with a simulator ranks and checks the ladder on expected_click_recall@100; a
    user's folder (no simulator) keeps click_recall@100, and its rows have no expected recall
    (planted: the expected score for every dataset fails on the folder)."""
    from bench.run.session import declared
    from bench.tasks import check_task

    dataset, _, _ = setting
    task = get_task("candidate_recall")
    check_task(task, "candidate_recall")
    assert task.main_score_for(dataset) == "expected_click_recall@100"
    assert declared(task, dataset)["main_score"] == "expected_click_recall@100"
    folder = plugins.DATASETS["folder"](Cache(tmp_path / "c"), root=str(exported_folder),
                                        image_size=8, workers=0)
    assert task.main_score_for(folder) == "click_recall@100" == declared(task, folder)[
        "main_score"]
    assert cr.ORACLE not in {r.label for r in task.references([], folder, OPTIONS)}
    vectors = Embeddings(folder.ids, np.random.default_rng(1).normal(size=(len(folder), 6)))
    rows = task.evaluate(vectors, folder, TaskContext(seed=0, options={**OPTIONS,
                                                                        "ks": [3, 100]}))
    metrics = {r["metric"] for r in rows}
    assert "click_recall@100" in metrics
    assert not any("expected" in m for m in metrics)
    assert get_task("ctr").main_score_for(dataset) == get_task("ctr").main_score


def test_a_folder_with_a_log_runs_the_offline_part(exported_folder, plugins, tmp_path):
    """A user's folder (manifest, images, impressions.csv; no simulator) runs the task."""
    dataset = plugins.DATASETS["folder"](Cache(tmp_path / "c"), root=str(exported_folder),
                                         image_size=8, workers=0)
    assert dataset.simulator is None and "impressions" in dataset.logs
    task = get_task("candidate_recall")
    assert task.skip_reason(dataset) is None
    vectors = Embeddings(dataset.ids, np.random.default_rng(1).normal(size=(len(dataset), 6)))
    options = {**OPTIONS, "ks": [3, 5]}
    rows = task.evaluate(vectors, dataset, TaskContext(seed=0, options=options))
    values = {r["metric"]: r["value"] for r in rows}
    assert 0 <= values["hitrate@5"] <= 1 and values["recall_users"] >= 1


def test_funnel_draws_are_common_to_every_recalled_set(setting):
    """The same (user, cover) gets the same noise and uniforms whatever else was recalled
    (planted: drawing per candidate slot instead of per cover fails)."""
    dataset, _, _ = setting
    sim = dataset.simulator
    g = np.random.default_rng(2)
    a = np.stack([g.permutation(len(sim.item_ids))[:6] for _ in range(len(sim.user_ids))])
    b = a[:, ::-1].copy()
    b[:, :2] = (b[:, :2] + 1) % len(sim.item_ids)
    noisy_a, uniforms_a = cr.funnel_draws(sim, a)
    noisy_b, uniforms_b = cr.funnel_draws(sim, b)
    np.testing.assert_array_equal(noisy_a[:, :4], noisy_b[:, ::-1][:, :4])
    for ua, ub in zip(uniforms_a, uniforms_b):
        np.testing.assert_array_equal(ua[:, :4], ub[:, ::-1][:, :4])


def test_funnel_splits_the_gap_and_ids_only_shows_zero_lift(setting, tmp_path):
    """With a simulator, every two-tower row serves the funnel: the ID-only funnel against
    itself shows a lift of exactly 0; the losses at recall and at ranking are non-negative and
    add up to the gap between the global oracle and the funnel (planted: the oracle over the
    recalled set ranked by the model's scores, or the ceiling taken over the whole pool, fail)."""
    dataset, vectors, _ = setting
    ctr_options = {**cr.ctr_task._COMMON, "epochs": 1, "batch_size": 256, "history_length": 5}
    options = {**OPTIONS, "funnel_k": 20,
               "online": {"days": 1, "candidates": 20, "slots": 5, "ctr": ctr_options}}
    ctx = TaskContext(seed=0, options=options, cache=Cache(tmp_path))
    task = get_task("candidate_recall")
    base = {r["metric"]: r for r in task.evaluate_reference(
        task.references([], dataset, options)[0], None, dataset, ctx)}
    assert base["funnel_ctr_lift"]["value"] == 0 and base["funnel_pctcvr_lift"]["value"] == 0
    rows = {r["metric"]: r for r in task.evaluate(vectors, dataset, ctx)}
    recall_loss, ranking_loss = rows["funnel_recall_loss"], rows["funnel_ranking_loss"]
    assert (recall_loss["evidence"].values >= -1e-9).all()
    assert (ranking_loss["evidence"].values >= -1e-9).all()
    assert ranking_loss["value"] > 0.5  # a one-epoch model is no oracle over the recalled set
    funnel = cr.funnel_of(dataset, ctx, options)
    gap = 100 * (1 - rows["funnel_ctr"]["value"] * 5 / funnel.global_clicks.mean())
    assert recall_loss["value"] + ranking_loss["value"] == pytest.approx(gap, rel=1e-6)
    assert {"funnel_ctr_sampled", "funnel_ipv_lift", "funnel_new_share_diff"} <= set(rows)


def test_the_report_plot_draws_recall_against_k_with_intervals():
    """One line per row and panel, at K = 50, 100, 200, with the interval as error bars
    (planted: reading hitrate instead of click_recall, or dropping the i2i panel, fails)."""
    from bench.report.recall import curves, recall_figure

    rows = []
    for extractor in ("pixels", "pixels [i2i]", "none (ids only)", "popularity recall"):
        for k in (50, 100, 200):
            for metric, value in ((f"click_recall@{k}", k / 1000), (f"hitrate@{k}", 0.9)):
                rows.append({"task": "candidate_recall", "variant": "raw", "metric": metric,
                             "extractor": extractor, "mean": value, "ci_low": value - 0.01,
                             "ci_high": value + 0.01})
    stats = pd.DataFrame(rows)
    data = curves(stats)
    assert sorted(data["k"].unique()) == [50, 100, 200]
    assert data["mean"].max() == pytest.approx(0.2)
    fig = recall_figure(stats)
    left, right = fig.axes[:2]
    assert len(left.containers) == 3 and len(right.containers) == 2  # errorbar containers
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["pixels",
                                                                      "popularity recall"]
    expected = pd.DataFrame([{**r, "metric": f"expected_{r['metric']}", "mean": 0.5,
                              "ci_low": 0.49, "ci_high": 0.51}
                             for r in rows if r["metric"].startswith("click_recall")])
    both = pd.concat([stats, expected])
    assert (curves(both)["mean"] == 0.5).all()  # the main score's family where it exists
    assert "expected" in recall_figure(both).axes[0].get_ylabel()


def test_the_run_records_the_main_score_the_task_names_for_its_dataset(setting, tmp_path):
    """run.json ``main_scores`` (what the report ranks by and ``bench validate`` checks) takes
    ``main_score_for(dataset)`` (planted: the class's ``main_score`` fails)."""
    from types import SimpleNamespace

    from bench.run.schedule import write_verdicts

    dataset, _, _ = setting
    errors: list = []
    run = SimpleNamespace(tasks=["candidate_recall", "ctr"], spec=SimpleNamespace(reference=None),
                          info={}, dir=tmp_path, prepared=SimpleNamespace(cache=None),
                          dataset=dataset, timings={}, error=lambda *a: errors.append(a))
    write_verdicts(run)
    assert errors == []
    assert run.info["main_scores"] == {"candidate_recall": "expected_click_recall@100",
                                       "ctr": "ctr_auc"}


def test_the_whitened_variant_trains_its_own_towers_and_only_full_schedules_it(
        setting, tmp_path, monkeypatch):
    """``w`` is a variant of the task (its own two-tower model and i2i lists on the whitened
    vectors); the default and quick profiles run raw only, ``full`` both (planted: the task
    without ``w``, or the default profile scheduling it, fails)."""
    from bench.core.config import get_profile
    from bench.vectors import variants

    task = get_task("candidate_recall")
    assert variants.scheduled(task, task.options(get_profile("default"))) == ("raw",)
    assert variants.scheduled(task, task.options(get_profile("quick"))) == ("raw",)
    assert variants.scheduled(task, task.options(get_profile("full"))) == ("raw", "w")
    dataset, vectors, _ = setting
    by_variant, fitted = variants.for_task(vectors, dataset, task, {"k": "full"},
                                           wanted=("raw", "w"))
    assert fitted is not None and set(by_variant) == {"raw", "w"}
    ctx = TaskContext(seed=0, options=OPTIONS, cache=Cache(tmp_path))
    trained = []
    real = cr.train_two_tower
    monkeypatch.setattr(cr, "train_two_tower",
                        lambda *a: trained.append(a[1] is not None) or real(*a))
    raw = {r["metric"]: r["value"] for r in task.evaluate(by_variant["raw"], dataset, ctx)}
    whitened = {r["metric"]: r["value"] for r in task.evaluate(by_variant["w"], dataset, ctx)}
    assert sum(trained) == 2  # one image model per variant (besides the funnel's IDs-only one)
    assert raw.keys() == whitened.keys() and raw != whitened
    i2i = next(r for r in task.references([("pixels", None)], dataset, OPTIONS)
               if r.label == "pixels [i2i]")
    assert "w" in i2i.variants
    assert task.evaluate_reference(i2i, by_variant["w"], dataset, ctx)


def test_expected_recall_matches_users_by_id_when_the_ids_are_numbers(setting):
    """A log and a simulator whose user ids are integers (text order 10 < 9, not numeric)
    give every user the same true-click row as the text ids (planted: the log's ids sorted as
    numbers, not as the ctr task's text codes, matches users to the wrong rows and fails)."""
    dataset, _, rd = setting
    ids = np.sort(np.asarray(dataset.simulator.user_ids).astype(str))
    number = {u: 9 + i for i, u in enumerate(np.random.default_rng(1).permutation(ids))}
    logs = {**dataset.logs, "impressions": dataset.logs["impressions"].assign(
        user_id=lambda f: f["user_id"].astype(str).map(number))}
    sim = dataclasses.replace(dataset.simulator, user_ids=np.array(
        [number[u] for u in np.asarray(dataset.simulator.user_ids).astype(str)]))
    numeric = dataclasses.replace(dataset, logs=logs, simulator=sim,
                                  fingerprint=dataset.fingerprint + "-numeric-ids")
    other = cr.recall_data(ctr_task.load(numeric, OPTIONS), numeric.table)
    truth = cr.true_clicks(numeric, other)
    of_code = np.unique(logs["impressions"]["user_id"].astype(str).to_numpy())
    back = {str(v): u for u, v in number.items()}
    text_codes = np.unique(dataset.logs["impressions"]["user_id"].astype(str).to_numpy())
    row_of = {u: e for e, u in enumerate(text_codes[rd.user_code])}
    assert other.n_users == rd.n_users
    for e, code in enumerate(other.user_code):
        np.testing.assert_allclose(truth[e], rd.truth[row_of[back[of_code[code]]]], rtol=1e-12)
