"""The command line end to end: ``bench run`` on the quick profile writes every output file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from bench.cli.main import main
from bench.run.folder import RESULT_COLUMNS


def test_run_on_digits_writes_results_summary_and_run_json(tmp_path, capsys):
    status = main(["run", "--profile", "quick", "--dataset", "digits", "--extractors",
                   "pixels", "--tasks", "knn,retrieval", "--out", str(tmp_path),
                   "--run-id", "r1", "--no-report"])
    assert status == 0
    run_dir = tmp_path / "r1"
    results = pd.read_csv(run_dir / "results.csv")
    assert list(results.columns) == RESULT_COLUMNS
    assert set(results["variant"]) == {"raw", "w"}
    consistency = results.query("metric == 'category_consistency' and variant == 'raw'")["value"]
    chance = results.query("metric == 'category_chance'")["value"].iloc[0]
    assert consistency.iloc[0] > 3 * chance  # pixels cluster digits far above chance
    info = json.loads((run_dir / "run.json").read_text())
    assert info["skipped"][0]["task"] == "retrieval" and "identity" in info["skipped"][0]["reason"]
    assert info["status"] == "complete" and not info["errors"] and info["missing"] == 0
    assert info["environment"]["packages"]["torch"].startswith("2.13")
    assert "| pixels |" in (run_dir / "summary.md").read_text()


def test_quick_profile_end_to_end_with_python_m(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, "-m", "bench", "run", "--profile", "quick",
                           "--out", str(tmp_path), "--run-id", "quick"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "quick"
    for name in ("results.csv", "summary.md", "run.json"):
        assert (run_dir / name).is_file(), name
    results = pd.read_csv(run_dir / "results.csv")
    info = json.loads((run_dir / "run.json").read_text())
    assert not info["errors"], info["errors"]
    assert {"knn", "retrieval"} <= set(results["task"])
    assert "## knn" in (run_dir / "summary.md").read_text()


def test_list_shows_plugins(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "pixels" in out and "digits" in out and "knn" in out


def test_extractor_specs_keep_their_options_together():
    from bench.cli.args import specs as _specs

    assert _specs("pixels,moco_v2:epochs=5,lr=0.1,random") == (
        "pixels", "moco_v2:epochs=5,lr=0.1", "random")
    assert _specs("precomputed:/a/b.npz,pixels:size=4") == ("precomputed:/a/b.npz", "pixels:size=4")


def test_model_adapter_specs_survive_the_comma_list():
    from bench.cli.args import specs as _specs

    text = ("timm:resnet18:weights=/w/r18.pth,batch_size=8,hf:/m/clip:mode=fused,"
            "open_clip:ViT-B-32:/w/clip.bin,torchscript:/w/m.pt,pixels")
    assert _specs(text) == ("timm:resnet18:weights=/w/r18.pth,batch_size=8",
                            "hf:/m/clip:mode=fused", "open_clip:ViT-B-32:/w/clip.bin",
                            "torchscript:/w/m.pt", "pixels")


def test_run_embed_and_ams_share_their_source_arguments():
    """One definition of --profile, --dataset, --extractors, --plugin and --cache: ``embed``
    and ``ams`` refuse an unknown profile as ``run`` does, and default to the same one."""
    from bench.cli import main as cli

    parser = cli.build_parser()
    for name in ("embed", "ams"):
        cli._attach(cli._LAZY_PARSERS[name], cli.LAZY_COMMANDS[name][0])
    for command in (["run"], ["embed"], ["ams"]):
        args = parser.parse_args([*command, "--profile", "quick"])
        assert args.profile == "quick"
        assert parser.parse_args(command).profile is None  # get_profile(None): run's choice
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--profile", "nightly"])
