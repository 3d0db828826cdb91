"""The training precision: ``auto`` resolves to bf16 only where it is native, the resolved value
keys every cached training and embedding, training runs under it, and a run at ``auto`` is
repeatable."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch
from torch import nn

from bench.cli.main import main
from bench.core.config import get_profile
from bench.embed.key import embeddings_key
from bench.tasks import TaskContext
from bench.tasks.finetune import FinetuneClassify
from bench.train import precision as prec
from bench.train.loop import Plan, fit_loop, one_stream
from tests.conftest import tiny_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def no_bf16(monkeypatch):
    """A CPU without native bf16 (oneDNN's check says no)."""
    monkeypatch.setattr(prec, "cpu_has_bf16", lambda: False)


@pytest.fixture()
def has_bf16(monkeypatch):
    monkeypatch.setattr(prec, "cpu_has_bf16", lambda: True)


def test_auto_is_fp32_where_bf16_is_not_native(no_bf16, plugins):
    assert prec.resolve_precision("auto", "cpu") == "fp32"
    assert prec.resolve_precision(None, "cpu") == "fp32"
    assert prec.resolve_precision("bf16", "cpu") == "bf16"  # asked for: kept
    assert "is not native" in prec.describe("auto", "fp32", "cpu")
    for name in ("moco_v2", "swav", "pretrained", "m6_moe"):
        extractor = plugins.build_extractor(name, get_profile("quick"))
        assert extractor.config()["precision"] == "fp32", name


def test_auto_is_bf16_where_native(has_bf16, plugins):
    assert prec.resolve_precision("auto", "cpu") == "bf16"
    assert prec.resolve_precision("fp32", "cpu") == "fp32"
    moco = plugins.build_extractor("moco_v2", get_profile("quick"))
    assert moco.config()["precision"] == "bf16"
    assert "auto: bf16 is native on cpu" in prec.describe("auto", "bf16", "cpu")


def test_a_precision_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="precision 'half'"):
        prec.resolve_precision("half", "cpu")
    with pytest.raises(ValueError, match="CUDA only"):
        prec.resolve_precision("fp16", "cpu")


def test_the_precision_is_part_of_the_embeddings_key(plugins):
    dataset = tiny_dataset()
    for name in ("moco_v2", "swav", "pretrained", "m6_moe"):
        built = {p: plugins.build_extractor(name, replace(get_profile("quick"), precision=p))
                 for p in ("fp32", "bf16")}
        assert embeddings_key(built["fp32"], dataset) != embeddings_key(built["bf16"], dataset)
        spec = plugins.build_extractor(f"{name}:precision=fp32", get_profile("quick"))
        assert spec.config() == built["fp32"].config(), name  # a spec option names it too


def test_the_precision_is_part_of_the_fine_tuning_result_key(plugins):
    dataset = tiny_dataset()
    task = FinetuneClassify()
    options = task.options(get_profile("quick"))
    keys = {p: task.result_key(dataset, TaskContext(
        options=options, profile=replace(get_profile("quick"), precision=p), device="cpu"))
        for p in ("fp32", "bf16")}
    assert keys["fp32"] != keys["bf16"]
    assert keys["bf16"][-1] == "bf16"


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16),
                                              ("fp32", torch.float32)])
def test_training_runs_under_the_resolved_precision(precision, dtype):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    data = torch.randn(8, 4)
    seen = []

    def step_loss(idx, info):
        out = model(data[idx])
        seen.append(out.dtype)
        return out.float().pow(2).mean()

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fit_loop(model, optimizer, step_loss, Plan(1, 2, 4), name="t", device="cpu",
             lr_at=lambda step: 0.1, shuffle=one_stream(8, torch.Generator().manual_seed(0)),
             progress=False, precision=precision)
    assert seen == [dtype, dtype]
    assert model.weight.dtype == torch.float32  # master weights stay fp32


def test_two_runs_at_auto_give_identical_rows(tmp_path):
    """A tiny quick-size run twice, each with its own empty cache (so both train): the same
    rows, and run.json records the resolved precision."""
    rows = []
    for index in (1, 2):
        args = ["run", "--profile", "quick", "--extractors", "moco_v2", "--tasks", "knn",
                "--out", str(tmp_path), "--run-id", f"auto{index}", "--cache",
                str(tmp_path / f"cache{index}"), "--no-report", "--precision", "auto"]
        assert main(args) == 0
        run_dir = tmp_path / f"auto{index}"
        info = json.loads((run_dir / "run.json").read_text())
        assert info["precision"] == prec.resolve_precision("auto", "cpu")
        assert info["run_config"]["profile"]["precision"] == info["precision"]
        assert info["command"]["precision"] == "auto"
        rows.append(pd.read_csv(run_dir / "results.csv").drop(columns=["run"], errors="ignore"))
    assert len(rows[0]) > 0
    pd.testing.assert_frame_equal(rows[0], rows[1])
