"""The ``ctr`` task: log validation, histories, attention masking, MQAP queries, metrics against
scikit-learn, overfitting a tiny log, and the task's rows (baseline once, ablation labels)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from bench.scoring import metrics as bm
from bench.tasks import TaskContext, get_task
from bench.tasks.ctr import BASELINE, CtrTask, ablation, cached_training
from bench.tasks.ctr import data as ctr_data
from bench.tasks.ctr import train as ctr_train
from bench.tasks.ctr.model import (
    AGGREGATORS,
    Aggregator,
    AttentivePooling,
    probabilities,
    profile_similarity,
)
from bench.tasks.ctr.synthetic import make_log
from bench.tasks.ctr.train import (
    CtrConfig,
    build_model,
    choose_table,
    co_click_directions,
    evaluate,
    evidence,
    fit,
    image_vectors,
    predict,
    prepare,
    score,
    train_and_evaluate,
)

SMALL = dict(n_users=80, n_items=120, n_days=3, per_day=10)


@pytest.fixture(scope="module")
def small():
    dataset, embeddings = make_log(**SMALL, seed=1)
    data = prepare(dataset.logs["impressions"], dataset.table, dataset.ids, history_length=6)
    return dataset, embeddings, data


# ------------------------------------------------------------------ log validation


def test_log_with_missing_column_is_refused_naming_it(small):
    dataset, _, _ = small
    log = dataset.logs["impressions"].drop(columns=["detail"])
    with pytest.raises(ctr_data.CtrDataError, match=r"missing column\(s\) \['detail'\]"):
        ctr_data.validate_log(log, dataset.ids)


def test_log_with_unknown_item_ids_is_refused_with_count_and_example(small):
    dataset, _, _ = small
    log = dataset.logs["impressions"].copy()
    log.loc[[3, 7, 9], "item_id"] = ["nope-1", "nope-2", "nope-1"]
    with pytest.raises(ctr_data.CtrDataError, match=r"2 item ids \(3 rows\).*'nope-1'"):
        ctr_data.validate_log(log, dataset.ids)


@pytest.mark.parametrize("column,value,pattern", [
    ("click", 2, r"'click' must be 0/1"),
    ("day", 1.5, r"'day' must hold integers"),
    ("conversion", None, r"'conversion' has 1 missing"),
])
def test_log_with_bad_values_is_refused(small, column, value, pattern):
    dataset, _, _ = small
    log = dataset.logs["impressions"].copy()
    log[column] = log[column].astype(object)
    log.loc[5, column] = value
    with pytest.raises(ctr_data.CtrDataError, match=pattern):
        ctr_data.validate_log(log, dataset.ids)


def test_single_day_log_is_refused(small):
    dataset, _, _ = small
    log = dataset.logs["impressions"]
    with pytest.raises(ctr_data.CtrDataError, match="two days"):
        ctr_data.validate_log(log[log["day"] == 0], dataset.ids)


def test_task_refuses_a_bad_log_through_evaluate(small):
    dataset, embeddings, _ = small
    broken = type(dataset)(dataset.name + "-broken", dataset.table, dataset.image_source,
                           dataset.image_size, dataset.fingerprint + "-broken",
                           logs={"impressions": dataset.logs["impressions"].drop(columns="click")})
    with pytest.raises(ctr_data.CtrDataError, match="click"):
        CtrTask().evaluate(embeddings, broken, TaskContext(options={"epochs": 1}))


def test_skip_reason_without_impressions(small):
    dataset, _, _ = small
    empty = type(dataset)("no-log", dataset.table, dataset.image_source, dataset.image_size, "x")
    assert "impressions" in get_task("ctr").skip_reason(empty)
    assert get_task("ctr").skip_reason(dataset) is None


# ------------------------------------------------------------------ features


def test_histories_are_the_last_clicks_before_the_day(small):
    dataset, _, data = small
    log = dataset.logs["impressions"]
    item_index = {row: i for i, row in enumerate(data.item_rows)}
    rows_of = dataset.positions(log["item_id"].tolist())
    checked = 0
    for n in range(0, len(log), 7):
        user, day = log["user_id"].iloc[n], log["day"].iloc[n]
        earlier = log[(log["user_id"] == user) & (log["day"] < day) & (log["click"] == 1)]
        expected = [item_index[rows_of[i]] for i in earlier.index][-data.history_length:]
        history = data.history[data.history_key[n]].numpy()
        assert history[history >= 0].tolist() == expected
        assert (history[: data.history_length - len(expected)] == -1).all()  # padding first
        checked += len(expected) > 0
    assert checked > 10


def test_cold_items_come_from_publish_day_and_unseen_ids_map_to_zero(small):
    dataset, _, data = small
    publish = dataset.table["publish_day"].to_numpy()[data.item_rows]
    item = data.item.numpy()
    assert np.array_equal(data.cold, publish[item] == data.eval_day)
    assert data.cold[data.test].any() and not data.cold[data.train].any()
    cold_items = np.unique(item[data.cold])
    assert (data.item_vocab[cold_items] == 0).all()  # never trained: out of vocabulary
    assert (data.item_vocab[np.unique(item[data.train])] > 0).all()


# ------------------------------------------------------------------ model pieces


@pytest.mark.parametrize("kind", AGGREGATORS)
def test_aggregators_ignore_padded_history(kind):
    torch.manual_seed(0)
    agg = Aggregator(kind, dim=6, length=5, id_dim=4)
    history = torch.randn(3, 5, 6)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    ad_image, ad_id = torch.randn(3, 6), torch.randn(3, 4)
    out = agg(history, mask, ad_image, ad_id)
    noisy = torch.where(mask.unsqueeze(-1), history, 100 * torch.randn(3, 5, 6))
    assert torch.allclose(out, agg(noisy, mask, ad_image, ad_id), atol=1e-6)
    assert torch.count_nonzero(out[2]) == 0  # an empty history pools to zeros
    assert torch.count_nonzero(out[0]) > 0


def test_attention_weights_are_zero_on_padding_and_sum_to_one():
    torch.manual_seed(0)
    att = AttentivePooling(6, 6)
    mask = torch.tensor([[0, 1, 1, 0, 1]], dtype=torch.bool)
    weights = att.weights(torch.randn(1, 6), torch.randn(1, 5, 6), mask)
    assert torch.all(weights[~mask] == 0)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_decomposed_attention_equals_the_concatenated_din_unit():
    torch.manual_seed(0)
    att = AttentivePooling(4, 6, hidden=8)
    query, keys = torch.randn(5, 4), torch.randn(5, 7, 6)
    mask = torch.rand(5, 7) > 0.3
    q = att.query(query).unsqueeze(1).expand_as(keys)
    hidden = torch.sigmoid(att.first(torch.cat([q, keys, q - keys, q * keys], dim=-1)))
    scores = att.second(hidden).squeeze(-1).masked_fill(~mask, -1e9)
    expected = torch.softmax(scores, dim=1) * mask
    assert torch.allclose(att.weights(query, keys, mask), expected, atol=1e-6)


def test_mqap_channels_have_their_own_weights_and_queries():
    torch.manual_seed(0)
    agg = Aggregator("mqap", dim=6, length=5, id_dim=4)
    assert agg.image_channel is not agg.id_channel
    assert not torch.equal(agg.image_channel.first.weight, agg.id_channel.first.weight)
    history, mask = torch.randn(4, 5, 6), torch.ones(4, 5, dtype=torch.bool)
    ad_image, ad_id = torch.randn(4, 6), torch.randn(4, 4)
    base = agg(history, mask, ad_image, ad_id)
    new_id = agg(history, mask, ad_image, torch.randn(4, 4))
    new_image = agg(history, mask, torch.randn(4, 6), ad_id)
    assert torch.allclose(base[:, :6], new_id[:, :6]) and not torch.allclose(base[:, 6:],
                                                                              new_id[:, 6:])
    assert torch.allclose(base[:, 6:], new_image[:, 6:]) and not torch.allclose(base[:, :6],
                                                                                new_image[:, :6])


def test_esmm_ctcvr_is_the_product_and_never_exceeds_ctr():
    logits = {"ctr": torch.randn(50), "detail": torch.randn(50), "cvr": torch.randn(50)}
    p = probabilities(logits)
    assert torch.allclose(p["ctcvr"], torch.sigmoid(logits["ctr"]) * torch.sigmoid(logits["cvr"]))
    assert torch.all(p["ctcvr"] <= p["ctr"])


def test_image_tower_is_separable_and_frozen(small):
    _, embeddings, data = small
    model = build_model(data, embeddings.take(data.item_rows), CtrConfig(), seed=0)
    assert model.image_tower.table.requires_grad is False
    assert "table" not in dict(model.named_parameters())
    batch = data.batch(torch.arange(32))
    ad, history = model.images(batch)
    assert ad.shape == (32, 12) and history.shape == (32, data.history_length, 12)
    assert torch.allclose(ad, model.image_tower(batch["item"]), atol=1e-6)
    dense = model.dense(batch, ad, history)  # what an AMS worker calls with remote features
    assert torch.allclose(dense["ctr"], model(batch)["ctr"])


# ------------------------------------------------------------------ training and metrics


def test_task_metrics_equal_bench_metrics_and_sklearn(small):
    _, embeddings, data = small
    config = CtrConfig(epochs=1)
    model = build_model(data, embeddings.take(data.item_rows), config, seed=0)
    fit(model, data, data.train, config, seed=0)
    got = evaluate(model, data)
    predictions = predict(model, data, data.test)
    labels = data.labels[data.test].numpy()
    groups = data.groups[data.test]
    for head, column in (("ctr", 0), ("detail", 1), ("ctcvr", 2)):
        y, p = labels[:, column], predictions[head]
        assert got[f"{head}_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-10)
        assert got[f"{head}_auc"] == pytest.approx(bm.auc(y, p), abs=1e-12)
        assert got[f"{head}_logloss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)),
                                                       abs=1e-9)
        per_user, weights = [], []
        for g in np.unique(groups):
            at = groups == g
            if 0 < y[at].sum() < at.sum():
                per_user.append(roc_auc_score(y[at], p[at]))
                weights.append(at.sum())
        assert got[f"{head}_gauc"] == pytest.approx(np.average(per_user, weights=weights),
                                                    abs=1e-10)
        assert got[f"{head}_gauc"] == pytest.approx(bm.gauc(y, p, groups), abs=1e-12)
    cold = data.cold[data.test]
    assert got["cold_ctr_auc"] == pytest.approx(
        roc_auc_score(labels[cold, 0], predictions["ctr"][cold]), abs=1e-10)
    # every metric's evidence recomputes it, and is resampled by user
    found = evidence(data, predictions)
    assert set(found) == set(got)
    for metric, item in found.items():
        assert item.unit == "user" and item.value() == pytest.approx(got[metric], abs=1e-9)
    assert found["ctr_auc"].kind == "auc" and found["ctr_logloss"].kind == "mean"


def test_profile_similarity_is_the_cosine_of_ad_and_mean_clicked_image():
    ad = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    history = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]],
                            [[0.0, 3.0], [0.0, 1.0], [0.0, 0.0]],
                            [[5.0, 5.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False], [True, True, False], [False, False, False]])
    got = profile_similarity(ad, history, mask).squeeze(1)
    # user 0: mean of the two valid clicks (0.5, 0.5) -> cos 45 degrees; user 1: same
    # direction -> 1; user 2: no history -> 0 (padding never counts)
    assert got.tolist() == pytest.approx([2 ** -0.5, 1.0, 0.0], abs=1e-6)


def test_model_overfits_a_tiny_log():
    dataset, embeddings = make_log(n_users=12, n_items=30, n_days=2, per_day=12, seed=3)
    data = prepare(dataset.logs["impressions"], dataset.table, dataset.ids, history_length=4)
    config = CtrConfig(epochs=150, batch_size=64, lr=1e-2)
    model = build_model(data, embeddings.take(data.item_rows), config, seed=0)
    stats = fit(model, data, data.train, config, seed=0)
    train = evaluate(model, data, data.train)
    assert train["ctr_auc"] > 0.97, (train, stats)
    assert train["detail_auc"] > 0.95


def test_images_beat_ids_on_a_visual_preference_log():
    dataset, embeddings = make_log(n_users=200, n_items=300, n_days=4, per_day=15, taste=3.0,
                                   noise=0.2, seed=2)
    kw = dict(table=dataset.table, epochs=3, history_length=10)
    none = score(None, dataset.ids, dataset.logs["impressions"], feature_set="none", **kw)
    dicm = score(embeddings.vectors, dataset.ids, dataset.logs["impressions"], **kw)
    assert dicm["ctr_auc"] > none["ctr_auc"] + 0.03, (dicm, none)
    assert dicm["cold_ctr_auc"] > none["cold_ctr_auc"] + 0.03


@pytest.fixture(scope="module")
def planted():
    """A visual-preference log whose 8 latent taste dimensions are hidden among 100 unit-noise
    dimensions by a random rotation (docs/ctr.md's padded-and-rotated probe, small)."""
    return _planted(n_users=200, per_day=15)


@pytest.fixture(scope="module")
def planted_larger():
    """The same with twice the users and more impressions: enough clicks on the validation
    day for the table choice's 95% test to resolve (200 users: 0.512 vs 0.513, tied)."""
    return _planted(n_users=400, per_day=25)


def _planted(n_users: int, per_day: int):
    dataset, embeddings = make_log(n_users=n_users, n_items=300, n_days=4, per_day=per_day,
                                   taste=3.0, noise=0.2, seed=2)
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(108, 108)))
    padded = np.concatenate([embeddings.vectors[:, :8], rng.normal(size=(300, 100))], axis=1)
    data = prepare(dataset.logs["impressions"], dataset.table, dataset.ids, history_length=10)
    x = image_vectors((padded @ rotation)[data.item_rows]).numpy().astype(np.float64)
    return data, x, rotation[:8].T  # the taste subspace, [108, 8] orthonormal


def test_co_click_directions_keep_the_taste_subspace_and_drop_most_noise(planted):
    data, x, taste = planted
    basis = co_click_directions(x, data, data.train, most=64)
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-8)
    kept = float(np.linalg.norm(basis.T @ taste) ** 2 / taste.shape[1])
    chance = basis.shape[1] / x.shape[1]  # what a random subspace of that size keeps
    assert basis.shape[1] <= 30 and kept >= max(0.45, 5 * chance), (basis.shape, kept)
    assert co_click_directions(x, data, data.train, most=3).shape[1] <= 3


def test_co_click_directions_never_read_the_evaluation_day(planted):
    data, x, _ = planted
    flipped = copy.copy(data)
    flipped.labels = data.labels.clone()
    flipped.labels[data.test, 0] = 1 - flipped.labels[data.test, 0]
    np.testing.assert_array_equal(co_click_directions(x, data, data.train, 64),
                                  co_click_directions(x, flipped, flipped.train, 64))


def test_behaviour_dims_changes_what_the_model_sees(planted):
    data, x, _ = planted
    full = train_and_evaluate(data, x, CtrConfig(epochs=1), seed=0)[0]
    reduced = train_and_evaluate(data, x, CtrConfig(epochs=1, behaviour_dims=64), seed=0)[0]
    assert full["ctr_auc"] != reduced["ctr_auc"]


def test_table_choice_takes_the_co_click_table_where_taste_hides_among_noise(planted_larger):
    data, x, _ = planted_larger
    chosen, scores = choose_table(data, x, CtrConfig(epochs=4, behaviour_dims=64))
    assert chosen == "co_click" and scores["co_click"] > scores["full"], scores


def test_table_choice_keeps_the_full_table_when_the_reduction_loses_the_taste(planted,
                                                                            monkeypatch):
    """The 8 taste coordinates alone, and a "reduction" to one of them: the choice must see
    the loss (planted: the comparison's direction reversed)."""
    data, x, taste = planted
    clean = x @ taste
    monkeypatch.setattr(ctr_train, "co_click_directions", lambda *a, **k: np.eye(8)[:, :1])
    chosen, scores = choose_table(data, clean, CtrConfig(epochs=2, behaviour_dims=64))
    assert chosen == "full" and scores["full"] > scores["co_click"], scores


def test_table_choice_never_reads_the_evaluation_day(planted):
    data, x, _ = planted
    flipped = copy.copy(data)
    flipped.labels = data.labels.clone()
    flipped.labels[data.test] = 1 - flipped.labels[data.test]
    config = CtrConfig(epochs=1, behaviour_dims=64)
    assert choose_table(data, x, config) == choose_table(flipped, x, config)


def test_a_single_training_day_keeps_the_full_table(planted):
    data, x, _ = planted
    one_day = copy.copy(data)
    one_day.train = data.train[data.day[data.train] == data.day[data.train].max()]
    assert choose_table(one_day, x, CtrConfig(epochs=1, behaviour_dims=64)) == ("full", {})


def test_the_table_is_chosen_once_for_every_seed_and_ablation_row(small, cache, monkeypatch):
    dataset, embeddings, data = small
    calls = []
    real = ctr_train.choose_table
    monkeypatch.setattr(ctr_train, "choose_table",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    options = {**CtrTask.defaults["quick"], "behaviour_dims": 8, "choose_table": True}
    vectors = embeddings.take(data.item_rows)
    tables = {cached_training(data, vectors, dataset, options, feature_set, "mqap", seed,
                              cache)["stats"]["image_table"]
              for seed in (0, 1) for feature_set in ("dicm", "ad")}
    assert len(calls) == 1 and len(tables) == 1, (calls, tables)


def test_training_is_deterministic_per_seed(small):
    _, embeddings, data = small
    vectors = embeddings.take(data.item_rows)
    config = CtrConfig(epochs=1, aggregator="attentive")
    a = train_and_evaluate(data, vectors, config, seed=4)[0]
    b = train_and_evaluate(data, vectors, config, seed=4)[0]
    c = train_and_evaluate(data, vectors, config, seed=5)[0]
    assert a == b and a != c


# ------------------------------------------------------------------ validation day, early stopping


def test_validation_day_is_the_last_training_day_never_the_evaluation_day(small):
    dataset, _, data = small
    fit_rows, validation = ctr_data.validation_split(data, 1)
    days = data.day
    assert set(days[validation]) == {data.eval_day - 1}  # the last training day
    assert days[fit_rows].max() < data.eval_day - 1
    assert not set(validation) & set(data.test) and not set(fit_rows) & set(data.test)
    assert sorted([*fit_rows, *validation]) == sorted(data.train)
    with pytest.raises(ctr_data.CtrDataError, match="at least 3 training days"):
        ctr_data.validation_split(data, 2)  # SMALL has 3 days: 2 train, 1 evaluation
    # users and items absent from the fitted rows (here: one item and one user taken out) get
    # the unseen ID, as evaluation-day newcomers do; the others keep theirs
    item, user = int(data.item[validation[0]]), int(data.user[validation[0]])
    rows = fit_rows[(data.item[fit_rows] != item).numpy() & (data.user[fit_rows] != user).numpy()]
    seen = ctr_data.seen_only_in(data, rows)
    assert int(seen.item_vocab[item]) == 0 and int(data.item_vocab[item]) > 0
    assert (seen.user[data.user == user] == 0).all() and int(data.user[validation[0]]) > 0
    kept = data.item[rows].unique()
    assert torch.equal(seen.item_vocab[kept], data.item_vocab[kept])


def test_early_stopping_keeps_the_epoch_with_the_lowest_validation_loss(small, monkeypatch):
    import bench.tasks.ctr.train as ctr_train

    _, embeddings, data = small
    fit_rows, validation = ctr_data.validation_split(data, 1)
    losses, states = iter([0.50, 0.40, 0.45, 0.47, 0.30, 0.20]), []

    def scripted(model, data_, rows):  # one loss per epoch; the weights after each epoch
        assert np.array_equal(rows, validation)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(losses)

    monkeypatch.setattr(ctr_train, "validation_loss", scripted)
    config = CtrConfig(epochs=6, patience=2, batch_size=64)
    model = build_model(data, embeddings.take(data.item_rows), config, 0)
    stats = fit(model, data, fit_rows, config, 0, validation)
    assert stats["epoch"] == 2 and stats["epochs_run"] == 4  # stopped 2 epochs after the best
    assert stats["val_losses"] == [0.5, 0.4, 0.45, 0.47] and stats["val_loss"] == 0.4
    final = model.state_dict()
    assert all(torch.equal(final[k], states[1][k]) for k in final)  # the best epoch's weights
    assert not all(torch.equal(final[k], states[3][k]) for k in final)


def test_refit_trains_the_chosen_epochs_on_every_training_day(small, monkeypatch):
    import bench.tasks.ctr.train as ctr_train

    _, embeddings, data = small
    losses = iter([0.5, 0.4, 0.6])
    monkeypatch.setattr(ctr_train, "validation_loss", lambda *a: next(losses))
    seen_rows = []
    real_fit = ctr_train.fit

    def spy(model, data_, rows, config, seed, validation=None):
        seen_rows.append((len(rows), config.epochs, validation is not None))
        return real_fit(model, data_, rows, config, seed, validation)

    monkeypatch.setattr(ctr_train, "fit", spy)
    config = CtrConfig(epochs=5, patience=1, batch_size=64, validation_days=1, refit=True)
    predictions, stats = ctr_train.train_and_predict(data, embeddings.take(data.item_rows),
                                                     config, 0)
    fit_rows, _ = ctr_data.validation_split(data, 1)
    assert seen_rows == [(len(fit_rows), 5, True), (len(data.train), 2, False)]
    assert stats["epoch"] == 2 and len(predictions["ctr"]) == len(data.test)


def test_parameter_groups_take_their_own_learning_rate_and_l2(small):
    _, embeddings, data = small
    config = CtrConfig(lr=1e-3, image_lr=5e-3, id_weight_decay=1e-4)
    model = build_model(data, embeddings.take(data.item_rows), config, 0)
    from bench.tasks.ctr.train import parameter_groups

    groups = {g["name"]: g for g in parameter_groups(model, config)}
    assert (groups["ids"]["lr"], groups["ids"]["weight_decay"]) == (1e-3, 1e-4)
    assert (groups["image"]["lr"], groups["image"]["weight_decay"]) == (5e-3, 0.0)
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    assert model.user_ad is not None  # the user x ad-image input is on by default


# ------------------------------------------------------------------ the task's rows


def test_task_rows_and_declared_references(small, cache):
    dataset, embeddings, _ = small
    task = get_task("ctr")
    options = {**CtrTask.defaults["quick"], "history_length": 6, "feature_sets": ["ad"],
               "aggregators": ["sum"], "ablation_extractor": "auto"}
    alpha, beta = (type("E", (), {"name": n})() for n in ("alpha", "beta"))
    ctx = TaskContext(seed=0, variant="raw", options=options, extractor=alpha, cache=cache)
    own = task.evaluate(embeddings, dataset, ctx)
    assert not any(set(r) & {"extractor", "variant", "seed"} for r in own)  # the cell's
    main = {r["metric"]: r["value"] for r in own}
    assert {"ctr_auc", "ctr_gauc", "ctcvr_auc", "detail_auc", "ctr_logloss",
            "cold_ctr_auc"} <= set(main)
    # declared once for the run: the ID-only ranker, and the first extractor's ablations
    refs = task.references([("a", alpha), ("b", beta)], dataset, options)
    assert [(r.label, r.source, r.variants) for r in refs] == [
        (BASELINE, None, ("raw", "w")), ("alpha [ad]", "a", ("raw",)),
        ("alpha [dicm, sum]", "a", ("raw",))]
    assert [r.label for r in task.references([("b", beta), ("a", alpha)], dataset,
                                             {**options, "ablation_extractor": "alpha"})] == [
        BASELINE, "alpha [ad]", "alpha [dicm, sum]"]
    assert [r.label for r in task.references([("a", alpha)], dataset,
                                             {**options, "baseline": False,
                                              "feature_sets": [], "aggregators": []})] == []
    baseline = task.evaluate_reference(refs[0], None, dataset, ctx)
    assert {r["metric"] for r in baseline} == set(main)
    ablated = task.evaluate_reference(refs[1], embeddings, dataset, ctx)
    assert {r["metric"]: r["value"] for r in ablated} != main  # the ad feature set only
    assert {r["metric"]: r["value"] for r in task.evaluate(embeddings, dataset, ctx)} == main


def test_ablation_function_covers_feature_sets_and_aggregators(small, cache):
    dataset, embeddings, _ = small
    out = pd.DataFrame(ablation(embeddings, dataset, seeds=1, feature_sets=("none", "behavior"),
                                aggregators=("max", "mqap"), cache=cache, epochs=1,
                                history_length=6))
    combos = set(zip(out["feature_set"], out["aggregator"].fillna("-")))
    assert combos == {("none", "-"), ("behavior", "mqap"), ("dicm", "max"), ("dicm", "mqap")}
    assert out["value"].notna().all()


# ------------------------------------------------------------------ runner and perf


def test_runner_writes_ctr_rows_with_one_baseline_per_seed(tmp_path, cache, plugins):
    from bench.core.config import get_profile
    from bench.run import RunSpec, run_benchmark

    dataset, _ = make_log(**SMALL, seed=4)
    plugins.DATASETS["ctr-synthetic-test"] = lambda cache, **_: dataset
    profile = get_profile("quick")
    spec = RunSpec(profile=profile, dataset="ctr-synthetic-test", extractors=("pixels", "random"),
                   tasks=("ctr",), seeds=2, out_root=tmp_path, run_id="ctr", report=False)
    run = run_benchmark(spec, cache)
    assert not run.errors, run.errors
    results = pd.read_csv(tmp_path / "ctr" / "results.csv")
    assert set(results["task"]) == {"ctr"}
    auc_rows = results[results["metric"] == "ctr_auc"]
    assert sorted(auc_rows["extractor"].unique()) == sorted(["pixels", "random", BASELINE])
    baseline = auc_rows[auc_rows["extractor"] == BASELINE]
    assert sorted(baseline["seed"]) == [0, 1]  # once per seed, not once per extractor


def test_perf_ctr_runs_on_the_synthetic_log(capsys):
    import argparse

    from bench.perf import ctr as perf_ctr

    parser = argparse.ArgumentParser()
    perf_ctr.add_arguments(parser)
    args = parser.parse_args(["--small", "--dataset", "synthetic", "--epochs", "1"])
    assert perf_ctr.run(args) == 0
    out = capsys.readouterr().out
    for label in ("DICM dicm/mqap", "DICM none", "DIN loop"):
        assert label in out
    speeds = [float(line.split()[-4]) for line in out.splitlines()
              if line.startswith(("DICM", "DIN loop"))]
    assert len(speeds) >= 3 and min(speeds) > 0


def test_din_reference_features_are_left_aligned_histories(small):
    from bench.perf.ctr import DinReference, reference_features

    _, _, data = small
    x, y, n_items = reference_features(data)
    n_fields = len(data.field_sizes)
    length, history = x[:, 2].astype(int), x[:, 3 + n_fields:].astype(int)
    assert np.array_equal(length, (data.history[data.history_key] >= 0).sum(1).numpy())
    filled = np.arange(history.shape[1])[None, :] < length[:, None]
    assert np.all((history > 0) == filled)  # valid ids first, zeros after
    model = DinReference(data.n_users, n_items, list(data.field_sizes))
    assert model(torch.from_numpy(x[:16])).shape == (16,)
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_a_thin_evaluation_day_is_refused_before_training_saying_what_it_needs(small):
    """5 rows from one user on the last day: scipy's bootstrap failed on it after training."""
    dataset, _, _ = small
    log = dataset.logs["impressions"].copy()
    last = log["day"].max()
    one_user = log[log["day"] == last].iloc[:5].copy()
    one_user["user_id"] = "u-only"
    one_user["click"] = [1, 0, 0, 1, 0]
    one_user["conversion"] = 0
    thin = pd.concat([log[log["day"] < last], one_user], ignore_index=True)
    with pytest.raises(ctr_data.CtrDataError,
                       match=rf"the evaluation day \(day {last}, the last\) needs impressions "
                             r"of at least 2 users with both clicks and non-clicks; it has 5 "
                             r"rows from 1 user with 2 clicks"):
        ctr_data.validate_log(thin, dataset.ids)
    no_clicks = log.copy()
    no_clicks.loc[no_clicks["day"] == last, ["click", "conversion"]] = 0
    with pytest.raises(ctr_data.CtrDataError, match=r"users with 0 clicks"):
        ctr_data.validate_log(no_clicks, dataset.ids)


def test_a_conversion_without_a_click_is_refused_with_count_and_example(small):
    dataset, _, _ = small
    log = dataset.logs["impressions"].copy()
    unclicked = np.flatnonzero(log["click"].to_numpy() == 0)[:2]
    log.loc[unclicked, "conversion"] = 1
    row = int(unclicked[0])
    with pytest.raises(ctr_data.CtrDataError,
                       match=rf"2 rows have conversion=1 with click=0, e.g. row {row} \(user "
                             rf"'{log['user_id'].iloc[row]}'.*conversion needs click=1"):
        ctr_data.validate_log(log, dataset.ids)


def test_a_bad_label_is_named_as_a_plain_number(small):
    dataset, _, _ = small
    log = dataset.logs["impressions"].copy()
    log.loc[5, "click"] = 2
    with pytest.raises(ctr_data.CtrDataError, match=r"e.g. 2$"):
        ctr_data.validate_log(log, dataset.ids)

    days = dataset.logs["impressions"].copy()
    days["day"] = days["day"].astype(float)
    days.loc[5, "day"] = 1.5
    with pytest.raises(ctr_data.CtrDataError, match=r"'day' must hold integers; 1 other values, "
                                                    r"e.g. 1.5$"):
        ctr_data.validate_log(days, dataset.ids)
