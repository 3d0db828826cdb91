"""The user model (homestead's simulator) and the simulated online A/B (bench/tasks/online.py).

Each test fails on a planted bug (noted in its docstring); none renders pictures: the worlds are
drawn from a synthetic cover table through homestead's own ``behaviour_log``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from bench.core.cache import Cache
from bench.core.data import Dataset
from bench.embed.embeddings import Embeddings
from bench.tasks import TaskContext, get_task, online
from bench.tasks import ctr as ctr_task
from datasets.homestead.behaviour import UserModel, behaviour_log
from datasets.homestead.vocabulary import COARSE, SCENES, STYLES

pytestmark = pytest.mark.usefixtures("one_thread")


def covers(n: int, n_days: int, seed: int = 5) -> pd.DataFrame:
    """A cover table as homestead's world hands it to ``behaviour_log``."""
    g = np.random.default_rng(seed)
    mix = g.dirichlet(np.ones(len(COARSE)), n)
    return pd.DataFrame({
        "item_id": [f"c{j:05d}" for j in range(n)],
        "true_style": np.array(STYLES)[g.integers(0, len(STYLES), n)],
        "true_scene": np.array(SCENES)[g.integers(0, len(SCENES), n)],
        "publish_day": np.where(g.random(n) < 0.15, n_days - 1, g.integers(0, n_days - 1, n)),
        "warmth": g.uniform(-1, 1, n).round(4),
        **{f"mix_{c}": mix[:, k] for k, c in enumerate(COARSE)}})


@pytest.fixture(scope="module")
def world_log():
    items = covers(600, 6)
    logs = behaviour_log(items, 600, 6, 20, np.random.default_rng(1))
    return items, logs, UserModel.from_tables(logs["users"], logs["item_latents"])


def mini_dataset(n_items: int = 240, n_users: int = 150, n_days: int = 4) -> Dataset:
    items = covers(n_items, n_days)
    logs = behaviour_log(items, n_users, n_days, 10, np.random.default_rng(3))
    table = pd.DataFrame({"id": items["item_id"], "split": "train",
                          "style": items["true_style"], "scene": items["true_scene"],
                          "publish_day": items["publish_day"]})
    images = np.zeros((n_items, 8, 8, 3), dtype=np.uint8)
    return Dataset(name="mini", table=table, image_source=lambda rows: images[rows],
                   image_size=8, fingerprint="mini-online", logs=logs,
                   simulator=UserModel.from_tables(logs["users"], logs["item_latents"]))


def test_user_model_round_trips_and_reproduces_the_logged_rates(world_log):
    """The true probabilities of the logged impressions average to the logged click, detail
    and conversion rates, within the 95% interval of a rate over ~72k impressions (planted: the
    noise left out of the true probability, or the detail bias dropped: both fail)."""
    _, logs, model = world_log
    imp = logs["impressions"]
    users = np.searchsorted(model.user_ids, imp["user_id"].to_numpy())
    items = pd.Index(model.item_ids).get_indexer(imp["item_id"])
    p = model.probabilities(users, items)
    for name in ("click", "detail", "conversion"):
        logged = imp[name].to_numpy(float)
        se = np.sqrt(p[name].mean() * (1 - p[name].mean()) / len(logged))
        assert abs(p[name].mean() - logged.mean()) < 1.96 * se, name
    again = UserModel.from_tables(*model.to_tables().values())
    np.testing.assert_array_equal(again.score(users, items), model.score(users, items))


def test_quadrature_matches_monte_carlo(world_log):
    """Gauss-Hermite integration of the logit noise equals the mean of many draws of the
    log's own rule (planted: a noise scale of 0.3 in the quadrature fails)."""
    _, _, model = world_log
    users, items = np.array([0, 5, 9]), np.array([3, 40, 77])
    exact = model.probabilities(users, items)
    g = np.random.default_rng(0)
    n = 200_000
    drawn = model.draw(np.repeat(users, n).reshape(3, n), np.repeat(items, n).reshape(3, n), g)
    for name in ("click", "detail", "conversion"):
        mc = drawn[name].mean(1)
        se = np.sqrt(exact[name] * (1 - exact[name]) / n)
        assert np.all(np.abs(mc - exact[name]) < 4 * se), (name, mc, exact[name])


def test_exact_expected_clicks_equal_monte_carlo(world_log):
    """A fixed ranking's exact expected clicks (the examination curve times the true
    probabilities) equal the mean of its drawn clicks over independent online worlds (planted:
    the examination curve left out of the expectation fails)."""
    _, _, model = world_log
    eligible = np.arange(model.n_items)
    gaps = []
    for seed in range(40):
        world = online.online_world(model, eligible, 5, 1, 20, 5, seed=seed)
        totals = online.serve(world, -np.arange(20.0)[None, :].repeat(len(world.user), 0))
        gaps.append((totals["click"] - totals["click_exp"]).sum())
    gaps = np.array(gaps)
    assert abs(gaps.mean()) < 4 * gaps.std(ddof=1) / np.sqrt(len(gaps))
    assert abs(gaps.mean()) < 0.02 * totals["click_exp"].sum()


def test_no_permutation_beats_the_oracle(world_log):
    """On a small case every ordering of the candidates has at most the oracle's expected
    clicks (planted: an examination curve that rises with the slot fails)."""
    _, _, model = world_log
    sub = UserModel(**{**vars(model), "user_ids": model.user_ids[:2],
                       **{k: getattr(model, k)[:2] for k in (
                           "taste_style", "taste_scene", "taste_coarse", "warmth_pref",
                           "activity", "favourites")}})
    world = online.online_world(sub, np.arange(model.n_items), 5, 1, 6, 3, seed=2)
    oracle = online.serve(world, world.true["click"])["click_exp"]
    best = np.zeros(2)
    for order in itertools.permutations(range(6)):
        scores = np.tile(-np.argsort(order).astype(float), (len(world.user), 1))
        best = np.maximum(best, online.serve(world, scores)["click_exp"])
    np.testing.assert_allclose(best, oracle, rtol=1e-12)


def test_an_arm_against_itself_shows_exactly_zero_lift(world_log):
    """Common random numbers: two serves of one ranking are identical, so every lift and its
    evidence are exactly 0 (planted: fresh draws inside ``serve`` fail)."""
    _, _, model = world_log
    world = online.online_world(model, np.arange(model.n_items), 5, 2, 20, 5)
    g = np.random.default_rng(4)
    scores = g.random(world.candidates.shape)
    a, b = online.serve(world, scores), online.serve(world, scores.copy())
    rows = online.arm_rows(world, model.user_ids, a, b)
    lifts = [r for r in rows if "_lift" in r["metric"] or "_diff" in r["metric"]]
    assert len(lifts) == 8
    for row in lifts:
        assert row["value"] == 0.0, row["metric"]
        assert np.all(row["evidence"].values == 0.0), row["metric"]
    other = online.arm_rows(world, model.user_ids, online.serve(world, world.true["click"]), b)
    assert next(r for r in other if r["metric"] == "online_ctr_lift")["value"] > 0


def test_lift_evidence_is_its_value_and_users_needed_follows_the_formula():
    """The lift's linearised evidence averages to the lift; users per arm is the normal
    two-sample formula (checked against statsmodels-free arithmetic)."""
    g = np.random.default_rng(0)
    a, b = g.poisson(3.0, 500).astype(float), g.poisson(2.7, 500).astype(float)
    ones = np.ones(500)
    evidence = online.lift_evidence(np.arange(500), (a, ones), (b, ones))
    assert evidence.value() == pytest.approx(online.lift((a, ones), (b, ones)), abs=1e-9)
    n = online.users_needed(a, b, 0.3)
    z = 1.959963984540054 + 0.8416212335729143
    assert n == np.ceil(z ** 2 * (a.var(ddof=1) + b.var(ddof=1)) / 0.09)


def test_a_dataset_without_simulator_is_skipped_with_its_reason():
    """Real data has no true user model: the task says so instead of running."""
    dataset = mini_dataset()
    task = get_task("online")
    assert task.skip_reason(dataset) is None
    dataset.simulator = None
    reason = task.skip_reason(dataset)
    assert reason is not None and "no simulator" in reason


@pytest.mark.parametrize("behaviour_dims", [0, 4])
def test_the_online_task_serves_the_ctr_models_from_the_cache(tmp_path, monkeypatch,
                                                             behaviour_dims):
    """The ctr task trains each model once; the online task reads it from the cache and the
    restored model predicts what the ctr task predicted, on the same image table (with
    ``behaviour_dims``: the co-click subspace) (planted: no weights in the cache entry, a
    second training, or the raw vectors under a reduced model, all fail)."""
    dataset = mini_dataset()
    calls = []
    real = ctr_task.train_model

    def counting(*args, **kwargs):
        calls.append(args[2].feature_set)
        return real(*args, **kwargs)

    monkeypatch.setattr(ctr_task, "train_model", counting)
    cache = Cache(tmp_path)
    options = {**ctr_task._COMMON, "epochs": 1, "batch_size": 256, "history_length": 5,
               "behaviour_dims": behaviour_dims, "choose_table": False}
    vectors = Embeddings(dataset.ids, np.random.default_rng(0).normal(size=(len(dataset), 8)))
    ctx = TaskContext(seed=0, options=options, cache=cache)
    ctr = get_task("ctr")
    ctr.evaluate(vectors, dataset, ctx)
    reference = ctr.references([], dataset, options)[0]
    ctr.evaluate_reference(reference, None, dataset, ctx)
    assert calls == ["dicm", "none"]
    task = get_task("online")
    octx = TaskContext(seed=0, options={"days": 2, "candidates": 20, "slots": 5,
                                        "ctr": options}, cache=cache)
    rows = task.evaluate(vectors, dataset, octx)
    rows += task.evaluate_reference(reference, None, dataset, octx)
    assert calls == ["dicm", "none"]  # nothing trained again
    metrics = {r["metric"] for r in rows}
    assert {"online_ctr_lift", "online_pctcvr_lift_sampled", "online_ipv_users"} <= metrics
    data = ctr_task.load(dataset, options)
    model, view = ctr_task.trained_model(data, vectors.take(data.item_rows), dataset, options,
                                         "dicm", "mqap", 0, cache)
    _, cached_predictions = ctr_task.cached_score(data, vectors.take(data.item_rows), dataset,
                                                  options, "dicm", "mqap", 0, cache)
    again = ctr_task.predict(model, view, data.test)
    np.testing.assert_allclose(again["ctr"], cached_predictions["ctr"], atol=1e-6)
    assert calls == ["dicm", "none"]
    # a re-run reads the candidates' scores: no model is rebuilt, the rows are the same
    monkeypatch.setattr(online.Serving, "model_scores",
                        lambda *a, **k: pytest.fail("the candidates were predicted again"))
    online._SERVING.clear()
    rerun = task.evaluate(vectors, dataset, octx)
    np.testing.assert_array_equal([r["value"] for r in rerun],
                                  [r["value"] for r in rows[:len(rerun)]])


def synthetic_verdicts() -> pd.DataFrame:
    """verdicts.csv rows of five extractor arms and the references, ctr and online."""
    rows = []
    arms = {"a": (0.030, 12.0), "b": (0.020, 9.0), "c": (0.010, 1.0), "d": (0.002, 0.5),
            "ladder:clean": (0.050, 30.0)}
    for arm, (auc_gain, lift) in arms.items():
        for task, metric, value, diff, half in (("ctr", "ctr_auc", 0.6 + auc_gain, auc_gain, 0.004),
                                                ("ctr", "ctr_gauc", 0.6 + auc_gain, auc_gain, 0.004),
                                                ("online", "online_ctr_lift", lift, lift, 0.8)):
            rows.append(dict(task=task, extractor=arm, variant="raw", metric=metric,
                             value=value, ci_low=value - half, ci_high=value + half,
                             reference="none (ids only)", diff=diff, diff_low=diff - half,
                             diff_high=diff + half, p_value=0.01))
    for arm, lift in (("none (ids only)", 0.0), ("oracle", 80.0), ("random order", -20.0)):
        rows.append(dict(task="online", extractor=arm, variant="raw", metric="online_ctr_lift",
                         value=lift, ci_low=lift - 1, ci_high=lift + 1,
                         reference="none (ids only)", diff=lift, diff_low=lift - 1,
                         diff_high=lift + 1, p_value=0.01))
    return pd.DataFrame(rows)


def test_report_section_reads_the_known_answers_and_the_agreement():
    """The online section: the known answers hold, tau is scipy's on the extractor arms (no
    reference, no policy), and the smallest offline gain with a detectable lift is arm c's
    (planted: taking the largest gain instead, or keeping the references among the arms,
    fails)."""
    import scipy.stats

    from bench.report import online as section

    verdicts = synthetic_verdicts()
    frame = section.offline_online(verdicts)
    assert sorted(frame.index) == ["a", "b", "c", "d", "ladder:clean"]
    taus = {k.offline: k for k in section.agreement(frame)}
    expected = scipy.stats.kendalltau(frame["ctr_auc"], frame["online"]).statistic
    assert taus["ctr_auc"].tau == pytest.approx(expected)
    assert taus["ctr_auc"].low <= taus["ctr_auc"].tau <= taus["ctr_auc"].high
    assert section.smallest_detectable(frame) == ("c", pytest.approx(0.010))
    text = section.online_markdown(verdicts, None, {"dataset_options": {"n_users": 600}})
    assert "oracle >= every arm" in text and "holds" in text and "FAILS" not in text
    assert "random order <= IDs only" in text
    assert "What this means" in text
    figure = section.offline_online_figure(verdicts)
    assert len([ax for ax in figure.axes if ax.get_visible()]) == 2
