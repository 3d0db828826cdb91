"""The known-answer ladder: rungs from ground truth, in order on every task at the quick size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.core import registry
from bench.core.cache import Cache
from bench.core.config import LADDER, get_profile
from bench.core.data import Dataset, array_image_source
from bench.run import RunSpec, run_benchmark
from bench.scoring.verdicts import ladder_level

QUICK_WORLD = get_profile("quick").dataset_options("homestead")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Cache]:
    registry.load_plugins()
    cache = Cache(tmp_path_factory.mktemp("cache"))
    return registry.build_dataset("homestead", cache, **QUICK_WORLD), cache


def rung(spec: str):
    registry.load_plugins()
    return registry.build_extractor(spec, get_profile("quick"))


def test_clean_rung_is_the_latents_rotated(world: tuple[Dataset, Cache]) -> None:
    """Distances between clean vectors equal distances between the latent blocks: a rotation
    hides where the information sits, and nothing else."""
    dataset, _ = world
    from bench_plugins.extractors.ladder import latent_vectors

    clean = rung("ladder:clean").embed(dataset, np.arange(len(dataset)))
    latent = latent_vectors(dataset.latents, np.random.default_rng(0))
    rows = np.arange(0, len(dataset), 37)
    d_clean = np.linalg.norm(clean[rows, None] - clean[None, rows], axis=-1)
    d_latent = np.linalg.norm(latent[rows, None] - latent[None, rows], axis=-1)
    assert clean.shape == (len(dataset), 256) and clean.dtype == np.float32
    assert np.abs(d_clean - d_latent).max() < 1e-4
    # each latent block has unit root-mean-square norm where it applies
    covers = dataset.rows(role="content")
    assert latent.shape[1] < 256 and 2.5 < (latent[covers] ** 2).sum(1).mean() < 3.5


def test_nuisance_latents_are_no_part_of_the_ladder(world: tuple[Dataset, Cache]) -> None:
    """The camera, light, backdrop... an image was drawn with are recorded as ``nuisance_*``
    latents; the rungs are built from what the tasks ask for only."""
    dataset, _ = world
    from bench_plugins.extractors.ladder import latent_vectors

    nuisance = [c for c in dataset.latents.columns if c.startswith("nuisance_")]
    assert len(nuisance) >= 7
    full = latent_vectors(dataset.latents, np.random.default_rng(0))
    bare = latent_vectors(dataset.latents.drop(columns=nuisance), np.random.default_rng(0))
    assert np.array_equal(full, bare)


def test_rungs_are_deterministic_and_named_by_noise(world: tuple[Dataset, Cache]) -> None:
    dataset, _ = world
    rows = np.arange(10)
    a = rung("ladder:noise=0.3").embed(dataset, rows)
    assert np.array_equal(a, rung("ladder:noise=0.3").embed(dataset, rows))
    assert not np.allclose(a, rung("ladder:noise=0.3,seed=1").embed(dataset, rows))
    assert [rung(s).name for s in LADDER] == list(LADDER)
    assert [ladder_level(s) for s in LADDER] == [0.0, 0.15, 0.3, np.inf]
    with pytest.raises(ValueError, match="unknown option"):
        rung("ladder:sigma=1")


def test_dataset_without_latents_is_skipped_with_the_reason(tmp_path: Path) -> None:
    registry.load_plugins()

    @registry.dataset("tiny_unlabelled")
    def tiny(cache, **_):
        images = np.random.default_rng(0).integers(0, 255, (20, 8, 8, 3), dtype=np.uint8)
        table = pd.DataFrame({"id": [f"i{i}" for i in range(20)],
                              "split": ["train"] * 10 + ["test"] * 10,
                              "category": ["a", "b"] * 10})
        return Dataset("tiny_unlabelled", table, array_image_source(images), 8, "tiny")

    spec = RunSpec(profile=get_profile("quick"), dataset="tiny_unlabelled",
                   extractors=("ladder:clean", "pixels"), tasks=("knn",), out_root=tmp_path,
                   run_id="r", report=False)
    run = run_benchmark(spec, Cache(tmp_path / "cache"))
    info = json.loads((run.dir / "run.json").read_text())
    assert info["errors"] == []
    assert [s["extractor"] for s in info["skipped"]] == ["ladder:clean"]
    assert "no ground-truth latents" in info["validity_note"]
    assert "No validity check: dataset 'tiny_unlabelled' has no ground-truth latents" in \
        (run.dir / "summary.md").read_text()


def test_ladder_comes_out_in_order_on_every_task_at_the_quick_size(
        world: tuple[Dataset, Cache], tmp_path: Path) -> None:
    _, cache = world
    profile = get_profile("quick")
    spec = RunSpec(profile=profile, dataset="homestead",
                   dataset_options=profile.dataset_options("homestead"), extractors=LADDER,
                   tasks=("knn", "retrieval", "classify", "ctr"), seeds=1, out_root=tmp_path,
                   run_id="ladder", report=False)
    run = run_benchmark(spec, cache)
    validity = pd.read_csv(run.dir / "validity.csv")
    info = json.loads((run.dir / "run.json").read_text())
    main = validity[[info["main_scores"][t] == m
                     for t, m in zip(validity["task"], validity["metric"])]]
    raw = main[main["variant"] == "raw"].set_index("task")
    assert sorted(raw.index) == ["classify", "ctr", "knn", "retrieval"]
    assert raw["in_order"].all(), raw[["floor", "ceiling", "in_order"]]
    assert (raw["gap_se"] > 3).all()  # floor and ceiling far apart even on the tiny world
    summary = (run.dir / "summary.md").read_text()
    assert "## Validity: the known-answer ladder" in summary and "| ctr | ctr_auc | raw |" in summary


def test_ctr_ablation_follows_the_dicm_paper_on_the_ladder_at_the_quick_size(
        world: tuple[Dataset, Cache], tmp_path: Path) -> None:
    """The DICM paper's ablation as a known answer: on a rung whose images carry the click
    latents, adding the ad image or the behaviour images to the IDs helps, and both together
    are not worse than the behaviour images alone (validity.csv, check = ablation)."""
    _, cache = world
    profile = get_profile("quick")
    profile.task_options["ctr"] = {"feature_sets": ["ad", "behavior"],
                                   "ablation_extractor": ["ladder:clean"]}
    spec = RunSpec(profile=profile, dataset="homestead",
                   dataset_options=profile.dataset_options("homestead"),
                   extractors=("ladder:clean",), tasks=("ctr",), seeds=1, out_root=tmp_path,
                   run_id="ablation", report=False)
    run = run_benchmark(spec, cache)
    validity = pd.read_csv(run.dir / "validity.csv")
    ablation = validity[(validity["check"] == "ablation") & (validity["metric"] == "ctr_auc")]
    assert len(ablation) == 1 and ablation["rungs"].iloc[0].startswith("ladder:clean: dicm")
    row = ablation.iloc[0]
    assert row["in_order"], row.to_dict()  # no pair reversed at 95%
    verdicts = pd.read_csv(run.dir / "verdicts.csv").query("metric == 'ctr_auc'")
    against_ids = verdicts.set_index("extractor")["verdict"]
    assert against_ids["ladder:clean [ad]"] == "better"
    assert against_ids["ladder:clean [behavior, mqap]"] == "better"
    assert "The DICM paper's ablation" in (run.dir / "summary.md").read_text()
