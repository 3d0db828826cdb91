"""Reference rows (ctr's ID-only ranker and ablations, fine-tuning's scratch backbone) are
declared by their tasks and scheduled once by the runner: the same rows and values whatever
order the extractors come in, and no marker files under the run's artifacts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bench.core import registry
from bench.core.cache import Cache
from bench.core.config import get_profile
from bench.run import RunSpec, run_benchmark
from bench.run.schedule import reference_order
from bench.tasks.ctr import BASELINE
from bench.tasks.ctr.synthetic import make_log
from tests.test_finetune import TinyExtractor

pytestmark = pytest.mark.usefixtures("one_thread")

EXTRACTORS = ("tiny_b", "pixels", "tiny_a")
SCRATCH = "scratch:resnet18-w8-small"


@pytest.fixture()
def world(plugins):
    """120 items with categories (train and test split, no roles) and an impressions log, and
    two tiny backbone extractors of one architecture (different weights)."""
    dataset, _ = make_log(n_users=60, n_items=120, n_days=3, per_day=8, seed=3)
    table = dataset.table.drop(columns="role")
    table["split"] = np.where(np.arange(len(table)) % 3 == 0, "test", "train")
    table["category"] = [f"cat{(i // 3) % 3}" for i in range(len(table))]
    dataset.table = table
    registry.DATASETS["refs-17"] = lambda cache, **_: dataset
    registry.EXTRACTORS["tiny_a"] = lambda options, profile: TinyExtractor("tiny_a", seed=1)
    registry.EXTRACTORS["tiny_b"] = lambda options, profile: TinyExtractor("tiny_b", seed=2)
    yield "refs-17"
    for name in ("tiny_a", "tiny_b"):
        registry.EXTRACTORS.pop(name, None)


def run(tmp_path, dataset: str, extractors: tuple[str, ...], run_id: str,
        computed: int | None = None) -> pd.DataFrame:
    profile = get_profile("quick")
    profile.task_options["ctr"] = {"feature_sets": ["ad"], "aggregators": ["sum"],
                                   "history_length": 6}
    profile.task_options["finetune_classify"] = {"max_steps": 2, "batch_size": 16}
    profile.whitening["k"] = 8  # no k search: not what this test is about
    spec = RunSpec(profile=profile, dataset=dataset, extractors=extractors,
                   tasks=("classify", "finetune_classify", "ctr"), seeds=1, out_root=tmp_path,
                   run_id=run_id, report=False)
    result = run_benchmark(spec, Cache(tmp_path / f"cache-{run_id}"))  # nothing shared
    assert not result.errors, result.errors
    assert computed is None or result.computed == computed
    artifacts = result.dir / "artifacts"
    assert not [p for p in artifacts.rglob("*") if p.suffix in (".done", ".txt")
                or p.name.startswith("scratch-")]  # no marker files
    info = json.loads((result.dir / "run.json").read_text())
    skipped = {(s["task"], s["extractor"]) for s in info["skipped"]}
    assert skipped == {("finetune_classify", "pixels")}  # no backbone()
    # both tiny backbones are tested against the scratch row of their architecture
    assert info["paired_references"] == {"finetune_classify": {"tiny_a": SCRATCH,
                                                               "tiny_b": SCRATCH}}
    tested = pd.read_csv(result.dir / "verdicts.csv").query("task == 'finetune_classify'")
    assert set(tested.loc[tested["extractor"].str.startswith("tiny"), "reference"]) == {SCRATCH}
    rows = pd.read_csv(result.dir / "results.csv")
    rows = rows[~rows["metric"].str.endswith("_s")]  # timings differ
    return rows.drop(columns="run").sort_values(["extractor", "variant", "task", "metric",
                                                 "seed"]).reset_index(drop=True)


def test_reversed_extractor_order_gives_the_same_rows_and_values(tmp_path, world):
    forward = run(tmp_path, world, EXTRACTORS, "forward")
    backward = run(tmp_path, world, tuple(reversed(EXTRACTORS)), "backward")
    pd.testing.assert_frame_equal(forward, backward)
    # a second session of a finished run computes nothing, references included
    pd.testing.assert_frame_equal(run(tmp_path, world, EXTRACTORS, "forward", computed=0),
                                  forward)
    by_task = {task: set(part["extractor"]) for task, part in forward.groupby("task")}
    # ablations of the first extractor in the profile's list (pixels), whatever the order
    assert by_task["ctr"] == {*EXTRACTORS, BASELINE, "pixels [ad]", "pixels [dicm, sum]"}
    assert by_task["finetune_classify"] == {"tiny_a", "tiny_b", SCRATCH}  # one scratch row
    assert set(forward.loc[forward["task"] == "finetune_classify", "variant"]) == {"ft"}
    assert by_task["classify"] == set(EXTRACTORS)
    baseline = forward[(forward["extractor"] == BASELINE) & (forward["metric"] == "ctr_auc")]
    assert sorted(baseline["variant"]) == ["raw", "w"]  # once per variant, not per extractor


def test_reference_order_is_the_profiles_list_then_names():
    profile = get_profile("quick")
    named = [(spec, type("E", (), {"name": spec})()) for spec in
             ("zeta", "random", "alpha", "pixels")]
    assert [spec for spec, _ in reference_order(named, profile)] == [
        "pixels", "random", "alpha", "zeta"]
    assert reference_order(named[::-1], profile) == reference_order(named, profile)


def test_a_task_option_caps_the_seeds_of_one_task(tmp_path, world):
    profile = get_profile("quick")
    profile.task_options["ctr"] = {"feature_sets": [], "aggregators": [], "history_length": 6,
                                   "max_seeds": 1, "variants": ["raw"]}
    profile.whitening["k"] = 8
    spec = RunSpec(profile=profile, dataset=world, extractors=("pixels",),
                   tasks=("classify", "ctr"), seeds=2, out_root=tmp_path, run_id="capped",
                   report=False)
    result = run_benchmark(spec, Cache(tmp_path / "cache"))
    assert not result.errors, result.errors
    rows = pd.read_csv(result.dir / "results.csv")
    seeds = {task: sorted(set(part["seed"])) for task, part in rows.groupby("task")}
    assert seeds == {"classify": [0, 1], "ctr": [0]}
    assert set(rows.loc[rows["task"] == "ctr", "variant"]) == {"raw"}
