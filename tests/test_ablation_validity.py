"""validity.csv's ablation check (the DICM paper's order on ladder rungs), against values
computed by hand: floors and ceilings with numpy, verdicts from planted clear differences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.scoring import stats, verdicts

USERS = np.array([f"u{i:04d}" for i in range(400)])
IDS = "none (ids only)"


def clicks(rate: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((400, 20)) < rate).mean(1)


def write_ctr_run(run: Path, rates: dict[str, float], metric: str = "ctr_auc") -> dict:
    """Two seeds per row with different values, so a seed mean is not a max."""
    rows, means = [], {}
    for i, (label, rate) in enumerate(rates.items()):
        per_seed = []
        for seed in range(2):
            values = clicks(rate + 0.01 * seed, 10 * i + seed)
            verdicts.save_evidence(run, "ctr", label, "raw", seed,
                                   {metric: stats.mean_evidence("user", USERS, values)})
            rows.append({"run": "r", "dataset": "d", "extractor": label, "variant": "raw",
                         "task": "ctr", "metric": metric, "seed": seed, "value": values.mean()})
            per_seed.append(values.mean())
        means[label] = float(np.mean(per_seed))
    pd.DataFrame(rows).to_csv(run / "results.csv", index=False)
    return means


def ablation(run: Path, lower: bool = False) -> pd.DataFrame:
    _, validity = verdicts.compute(run, {"ctr": IDS}, lambda metric: lower, n_resamples=200)
    return validity[validity["check"] == "ablation"].set_index("rungs")


def test_the_paper_order_resolves_and_a_reversal_is_out_of_order(tmp_path):
    rates = {IDS: 0.20,
             "ladder:clean": 0.50, "ladder:clean [ad]": 0.30,
             "ladder:clean [behavior, mqap]": 0.40,  # dicm > behavior > ids, ad > ids: resolves
             "ladder:noise=0.15": 0.30, "ladder:noise=0.15 [ad]": 0.20,
             "ladder:noise=0.15 [behavior, mqap]": 0.30,  # two ties: in order, 1 of 3
             "ladder:noise=0.3": 0.25, "ladder:noise=0.3 [ad]": 0.35,
             "ladder:noise=0.3 [behavior, mqap]": 0.40,  # dicm < behavior: out of order
             "ladder:random": 0.20, "ladder:random [ad]": 0.20,
             "ladder:random [behavior, mqap]": 0.20,  # the floor: never an ablation row
             "ladder:noise=0.2 [ad]": 0.50}  # no main row and no [behavior]: skipped
    means = write_ctr_run(tmp_path, rates)
    found = ablation(tmp_path)
    assert sorted(found.index) == [f"{r}: dicm > [behavior] > IDs only; [ad] > IDs only"
                                   for r in ("ladder:clean", "ladder:noise=0.15",
                                             "ladder:noise=0.3")]
    clean = found.loc["ladder:clean: dicm > [behavior] > IDs only; [ad] > IDs only"]
    assert clean["floor"] == pytest.approx(means[IDS], abs=1e-6)
    assert clean["ceiling"] == pytest.approx(means["ladder:clean"], abs=1e-6)
    assert clean["in_order"] and clean["adjacent_separated"] == 3 and clean["adjacent_pairs"] == 3
    assert clean["verdict"] == "resolves" and clean["gap_se"] > 5 and clean["variant"] == "raw"
    tied = found.loc["ladder:noise=0.15: dicm > [behavior] > IDs only; [ad] > IDs only"]
    assert tied["in_order"] and tied["adjacent_separated"] == 1 and tied["verdict"] == "in order"
    reversed_ = found.loc["ladder:noise=0.3: dicm > [behavior] > IDs only; [ad] > IDs only"]
    assert not reversed_["in_order"] and reversed_["verdict"] == "out of order"
    assert reversed_["adjacent_separated"] == 2  # behavior > ids and ad > ids still hold
    assert set(found["task"]) == {"ctr"} and set(found["metric"]) == {"ctr_auc"}


def test_lower_is_better_turns_the_order_and_the_gap_around(tmp_path):
    rates = {IDS: 0.50, "ladder:clean": 0.20, "ladder:clean [ad]": 0.40,
             "ladder:clean [behavior, mqap]": 0.30}  # a loss: lower is better
    means = write_ctr_run(tmp_path, rates, metric="ctr_logloss")
    row = ablation(tmp_path, lower=True).iloc[0]
    assert row["verdict"] == "resolves" and row["gap_se"] > 5
    assert row["floor"] == pytest.approx(means[IDS], abs=1e-6) and row["ceiling"] == pytest.approx(
        means["ladder:clean"], abs=1e-6)
    higher = ablation(tmp_path, lower=False).iloc[0]  # read as higher-is-better: reversed
    assert higher["verdict"] == "out of order" and higher["gap_se"] < -5


def test_no_reference_row_or_an_agg_free_label_gives_no_ablation_row(tmp_path):
    write_ctr_run(tmp_path, {"ladder:clean": 0.5, "ladder:clean [ad]": 0.3,
                             "ladder:clean [behavior]": 0.4, IDS: 0.2})
    assert ablation(tmp_path).empty  # "[behavior]" without an aggregator is not an ablation
    assert not verdicts.ABLATION.match("ladder:clean [behavior]")
    match = verdicts.ABLATION.match("ladder:noise=0.15 [behavior, sum]")
    assert match["rung"] == "ladder:noise=0.15" and match["agg"] == "sum"


@pytest.mark.parametrize("lower", [False, True])
def test_the_gap_is_the_dicm_row_difference_over_its_standard_error(tmp_path, lower):
    """gap_se = (dicm - IDs only) / se, the same paired test verdicts.csv reports for the
    dicm row against the reference (its interval is diff +- 1.96 se); for a lower-is-better
    metric a dicm row below IDs only is a positive gap."""
    write_ctr_run(tmp_path, {IDS: 0.20, "ladder:clean": 0.30, "ladder:clean [ad]": 0.25,
                             "ladder:clean [behavior, mqap]": 0.28})
    table, validity = verdicts.compute(tmp_path, {"ctr": IDS}, lambda metric: lower,
                                       n_resamples=200)
    row = table.set_index("extractor").loc["ladder:clean"]
    se = (row["diff_high"] - row["diff_low"]) / (2 * 1.959963984540054)
    gap = validity[validity["check"] == "ablation"]["gap_se"].iloc[0]
    assert gap == pytest.approx((-1 if lower else 1) * row["diff"] / se, rel=1e-6)


def test_identical_dicm_and_ids_rows_give_an_infinite_gap_not_a_division_error(tmp_path):
    rows = []
    same = clicks(0.3, 0)
    for label in (IDS, "ladder:clean", "ladder:clean [ad]", "ladder:clean [behavior, mqap]"):
        values = same if label in (IDS, "ladder:clean") else clicks(0.3, 1)
        verdicts.save_evidence(tmp_path, "ctr", label, "raw", 0,
                               {"ctr_auc": stats.mean_evidence("user", USERS, values)})
        rows.append({"run": "r", "dataset": "d", "extractor": label, "variant": "raw",
                     "task": "ctr", "metric": "ctr_auc", "seed": 0, "value": values.mean()})
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    found = ablation(tmp_path)
    assert np.isinf(found["gap_se"].iloc[0])  # a zero standard error: the gap is unbounded
