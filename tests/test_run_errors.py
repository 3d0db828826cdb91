"""Issue #18, point by point: each case with its exact message and exit status.

Exit status: 0 everything requested ran, 1 some extractor or task failed (rows kept, errors
listed last), 2 bad input refused before anything ran (one line on stderr, recorded in the run
folder). Runs use tiny in-memory datasets, so each case takes a second or two.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli.main import main
from bench.core import registry
from tests.conftest import tiny_dataset

TINY_MOCO = "moco_v2:arch=resnet18,width=8,image_size=16,batch_size=8,epochs=2"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def tiny(plugins):
    """A 60-item dataset registered as ``tiny-18``, and a run helper returning
    (exit status, stdout, stderr lines) of ``bench run`` in this process."""
    registry.DATASETS["tiny-18"] = lambda cache, **_: tiny_dataset()
    return "tiny-18"


def bench_run(capsys, out: Path, *args: str) -> tuple[int, str, list[str]]:
    """``bench run`` in this process: (exit status, stdout, stderr lines). Warnings about
    broken plugin files other tests of this session registered are left out."""
    status = main(["run", "--profile", "quick", "--out", str(out), "--cache",
                   str(out / "cache"), "--no-report", *args])
    captured = capsys.readouterr()
    return status, captured.out, [line for line in captured.err.splitlines()
                                  if line.strip() and not line.startswith("[bench] plugin ")]


def run_info(out: Path, run_id: str) -> dict:
    return json.loads((out / run_id / "run.json").read_text())


# ---------------------------------------------------------------- 1. time caps


def test_a_cut_training_is_marked_never_cached_and_the_next_run_finishes_it(tmp_path, capsys,
                                                                          tiny):
    args = ("--dataset", tiny, "--extractors", f"{TINY_MOCO},max_seconds=1e-9",
            "--tasks", "knn,classify,finetune_classify", "--run-id", "cut")
    status, out, err = bench_run(capsys, tmp_path, *args)
    assert status == 0
    assert any("moco_v2: training stopped by its max_seconds=1e-09 safety stop after 1 of 2 "
               "epochs; the next run resumes it" in line for line in err)
    assert err[-1].startswith("warning: 5 result groups were cut short by a time cap")
    info = run_info(tmp_path, "cut")
    assert {(c["extractor"], c["task"], c["variant"]) for c in info["time_capped"]} == {
        ("moco_v2", "knn", "raw"), ("moco_v2", "knn", "w"), ("moco_v2", "classify", "raw"),
        ("moco_v2", "classify", "w"), ("moco_v2", "finetune_classify", "ft")}
    states = {(c["name"], c["state"]) for c in info["cells"]}
    assert states == {("moco_v2", "cut"), ("scratch:resnet18-w8-strided", "done")}
    summary = (tmp_path / "cut" / "summary.md").read_text()
    assert "| moco_v2 \u2020 |" in summary and "## Cut by a time cap" in summary
    assert "| scratch:resnet18-w8-strided |" in summary  # not made from the cut training
    assert not list((tmp_path / "cache" / "embeddings").glob("*.npz"))  # never cached
    assert len(list((tmp_path / "cache" / "finetune").glob("*.json"))) == 1  # scratch only

    status, out, err = bench_run(capsys, tmp_path, *args)  # the training resumes and ends
    assert status == 0 and any("resuming" in line for line in err)
    info = run_info(tmp_path, "cut")
    assert info["time_capped"] == [] and {c["state"] for c in info["cells"]} == {"done"}
    assert "\u2020" not in (tmp_path / "cut" / "summary.md").read_text()
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npz"))) == 1
    assert len(list((tmp_path / "cache" / "finetune").glob("*.json"))) == 2


def test_capped_fine_tuning_rows_carry_the_reason():
    from bench.train.finetune import result_rows

    capped = {"metrics": {"finetune_top1": 0.5, "finetune_steps": 3.0}, "capped": True,
              "planned_steps": 10, "budget": {"max_seconds": 5.0}}
    rows = result_rows(capped)
    assert {row["cut"] for row in rows} == {
        "fine-tuning stopped by its max_seconds=5.0 safety stop after 3 of 10 steps"}
    assert all("cut" not in row for row in result_rows({**capped, "capped": False}))


# ---------------------------------------------------------------- 2. reusing a run id


@pytest.fixture()
def ctr_world(plugins):
    from bench.tasks.ctr.synthetic import make_log

    dataset, _ = make_log(n_users=80, n_items=120, n_days=3, per_day=10, seed=4)
    registry.DATASETS["ctr-18"] = lambda cache, **_: dataset
    return "ctr-18"


def test_reusing_a_run_id_keeps_earlier_rows_and_computes_the_baseline(tmp_path, capsys,
                                                                       ctr_world):
    from bench.tasks.ctr import BASELINE

    base = ("--dataset", ctr_world, "--tasks", "ctr", "--run-id", "X")
    assert bench_run(capsys, tmp_path, *base, "--extractors", "pixels")[0] == 0
    # an interrupted session that never saved the baseline's rows (nor its cell)
    results = pd.read_csv(tmp_path / "X" / "results.csv")
    results[results["extractor"] != BASELINE].to_csv(tmp_path / "X" / "results.csv",
                                                     index=False)
    info = run_info(tmp_path, "X")
    info["cells"] = [c for c in info["cells"] if c["extractor"] != BASELINE]
    (tmp_path / "X" / "run.json").write_text(json.dumps(info))
    assert not list((tmp_path / "X" / "artifacts").rglob("*.done"))  # no marker files
    status, _, err = bench_run(capsys, tmp_path, *base, "--extractors", "random")
    assert status == 0
    results = pd.read_csv(tmp_path / "X" / "results.csv")
    auc = results[results["metric"] == "ctr_auc"]
    assert sorted(set(auc["extractor"])) == sorted({"pixels", "random", BASELINE})
    assert len(auc) == 3  # one each (this log has no train split, so no +w); no duplicates
    assert run_info(tmp_path, "X")["extractors"] == ["pixels", "random"]


def test_other_settings_under_the_same_run_id_are_refused(tmp_path, capsys, ctr_world):
    base = ("--tasks", "ctr", "--run-id", "X", "--extractors", "pixels")
    assert bench_run(capsys, tmp_path, "--dataset", ctr_world, *base)[0] == 0
    before = (tmp_path / "X" / "results.csv").read_text()
    status, _, err = bench_run(capsys, tmp_path, "--dataset", "digits", *base)
    assert status == 2
    assert err == ["error: run 'X' was made with other settings (dataset 'ctr-18' -> 'digits';"
                   " dataset_options.image_size None -> 32); resume it with the same ones or "
                   "choose another --run-id"]
    assert (tmp_path / "X" / "results.csv").read_text() == before
    info = run_info(tmp_path, "X")
    assert info["status"] == "complete" and info["refusals"][0]["error"] == err[0][7:]


# ---------------------------------------------------------------- 3. wrong arguments


@pytest.mark.parametrize(("args", "message"), [
    (("--seeds", "-1"), "error: --seeds must be at least 1, got -1"),
    (("--seeds", "0"), "error: --seeds must be at least 1, got 0"),
    (("--dataset", "folder:root=.,colour=red"),
     "error: dataset folder: unknown option 'colour'; known: "),
    (("--extractors", "pixels:sise=4"), "error: pixels: unknown option 'sise'; known: size"),
    (("--extractors", "pixels,nope"), "error: unknown extractor 'nope'; known: "),
    (("--tasks", "knn,nope"), "error: unknown task 'nope'; known: candidate_recall, classify, "
                              "ctr, finetune_classify, finetune_retrieval, knn, online, "
                              "retrieval"),
    (("--tasks", "knn", "--task-option", "knn.variants=raw,ft"),
     "error: task knn option variants=raw,ft: choose among its variants raw, w"),
    (("--whiten-shrinkage", "-1"), "error: --whiten-shrinkage -1: choose auto or a number >= 0"),
    (("--whiten-k", "big"), "error: --whiten-k big: choose auto, full or a number >= 1"),
])
def test_wrong_arguments_are_refused_with_status_2(tmp_path, capsys, tiny, args, message):
    status, out, err = bench_run(capsys, tmp_path, "--run-id", "bad", *args)
    assert status == 2 and len(err) == 1 and err[0].startswith(message), err
    info = run_info(tmp_path, "bad")
    assert info["status"] == "invalid" and info["error"] == err[0][len("error: "):]
    assert not (tmp_path / "bad" / "results.csv").exists()


def test_a_bad_argument_value_is_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "--seeds", "many"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: bench run: argument --seeds: invalid int value: 'many' (see bench run --help)")


# ---------------------------------------------------------------- 4. code in the cache key


def test_editing_a_plugin_invalidates_its_cached_embeddings(tmp_path, capsys, tiny):
    """The key holds the digest of the plugin's source file: the same code is a cache hit,
    an edited ``embed`` (same name, same ``config()``) is computed again. Each version is its
    own file here, as this process imports a plugin file once."""
    source = textwrap.dedent('''
        import numpy as np
        from bench.core.registry import extractor

        class Plugged:
            name, dim, modalities = "plugged", 3, ("image",)

            def config(self):
                return {"v": 1}

            def fit(self, dataset, ctx):
                pass

            def embed(self, dataset, rows):
                return dataset.images(rows).mean(axis=(1, 2)).astype(np.float32) * SCALE

        @extractor("plugged")
        def make(options, profile):
            return Plugged()
        ''')
    logs = []
    for version, scale in (("v1", 1.0), ("v1_again", 1.0), ("v2", -1.0)):
        plugin = tmp_path / f"plugged_{version}.py"
        plugin.write_text(f"SCALE = {scale}\n" + source)
        status, _, err = bench_run(capsys, tmp_path, "--dataset", tiny, "--extractors",
                                   "plugged", "--tasks", "knn", "--plugin", str(plugin),
                                   "--run-id", version)
        assert status == 0, err
        logs.append(err)
    assert "[bench] plugged: fit and embed 60 items" in logs[0]
    assert any(line.startswith("[bench] plugged: embeddings from cache") for line in logs[1])
    assert "[bench] plugged: fit and embed 60 items" in logs[2]  # edited: computed again
    assert len(list((tmp_path / "cache" / "embeddings").glob("tiny-*.npz"))) == 2


# ---------------------------------------------------------------- 5. a failed AMS mode


def test_a_failed_ams_mode_is_a_failed_row_never_a_best(tmp_path):
    from bench.cli.ams import result_rows, summary_lines, write_run

    def summary(image: float) -> dict:
        return {"iterations": 3, "image_bytes_per_iter": image,
                "image_grad_bytes_per_iter": 0.0, "key_bytes_per_iter": 10.0,
                "model_bytes_per_iter": 5.0, "boundary_bytes_per_iter": image + 10.0,
                "iter_s": 0.1}

    result = {"status": "failed", "errors": [{"name": "worker0", "error": "AmsError: gone"}],
              "options": {}, "config": {}, "raw_dim": 64, "seed": 0,
              "modes": {"store-in-server": {"status": "ok", "summary": summary(4096.0),
                                            "iterations": [], "metrics": {"ctr_auc": 0.6}},
                        "ams": {"status": "failed", "summary": summary(12.0),
                                "iterations": [], "metrics": {}}}}
    meta = {"dataset": "d", "extractor": "pixels", "profile": "quick"}
    rows = pd.DataFrame(result_rows(result, meta, "r", 0))
    ams = rows[rows["variant"] == "ams"]
    assert sorted(ams["metric"]) == ["failed", "n_iterations"] and set(ams["task"]) == {"ams"}
    lines = summary_lines(result)
    assert lines[2] == "ams             FAILED after 3 iterations (see the errors below and ams.json)"
    assert lines[-1] == ("image bytes per iteration, store-in-server / ams: not computed "
                         "(ams failed)")
    write_run(tmp_path, result, meta, "r", 0)
    table = (tmp_path / "summary.md").read_text().split("## ams", 1)[1].split("##", 1)[0]
    failed_row = next(line for line in table.splitlines() if line.startswith("| pixels (ams)"))
    assert "**" not in failed_row and "<u>" not in failed_row


# ---------------------------------------------------------------- 6. damaged cache files


def test_a_truncated_embeddings_file_is_moved_aside_and_recomputed(tmp_path, capsys, tiny):
    args = ("--dataset", tiny, "--extractors", "pixels", "--tasks", "knn")
    assert bench_run(capsys, tmp_path, *args, "--run-id", "a")[0] == 0
    [cached] = (tmp_path / "cache" / "embeddings").glob("*.npz")
    cached.write_bytes(cached.read_bytes()[:100])
    status, _, err = bench_run(capsys, tmp_path, *args, "--run-id", "b")
    assert status == 0
    assert any(line.startswith(f"[bench] damaged cache entry {cached} ({cached}: cannot be read "
                               "(BadZipFile: File is not a zip file)); moved it to") and line.endswith(
        f"moved it to {cached.name}.corrupt, recomputing") for line in err), err
    assert cached.exists() and cached.with_name(cached.name + ".corrupt").exists()
    a, b = (pd.read_csv(tmp_path / r / "results.csv") for r in "ab")
    assert a["value"].tolist() == b["value"].tolist()


def test_a_truncated_dataset_cache_is_regenerated(tmp_path, capsys, plugins):
    from bench.core.cache import Cache

    cache = Cache(tmp_path / "cache")
    options = dict(image_size=16, n_products=40, n_covers=12, n_queries=4, n_users=5,
                   n_days=2, impressions_per_user_day=2)
    first = registry.build_dataset("homestead", cache, **options)
    [folder] = (tmp_path / "cache" / "datasets").glob("homestead-*")
    images = folder / "images.npz"
    images.write_bytes(images.read_bytes()[:64])
    again = registry.build_dataset("homestead", cache, **options)
    assert np.array_equal(first.images(), again.images())
    err = capsys.readouterr().err
    assert f"damaged cache entry {folder} ({images}: cannot be read" in err
    assert folder.with_name(folder.name + ".corrupt").is_dir()


# ---------------------------------------------------------------- 7. user mistakes


@pytest.mark.parametrize(("args", "message"), [
    (("--dataset", "nope"), "error: unknown dataset 'nope'; known: "),
    (("--dataset", "homestead:n_covers=abc"),
     "error: homestead: option n_covers='abc' is not an integer"),
    (("--dataset", "broken-18"), "error: broken-18: manifest.csv has no 'path' column"),
])
def test_user_mistakes_are_one_line_with_a_run_record(tmp_path, capsys, plugins, args,
                                                      message):
    from bench.core.data import DatasetError

    def broken(cache, **_):
        raise DatasetError("broken-18: manifest.csv has no 'path' column")

    registry.DATASETS["broken-18"] = broken
    status, out, err = bench_run(capsys, tmp_path, "--run-id", "bad", *args)
    assert status == 2 and len(err) == 1 and err[0].startswith(message), err
    assert run_info(tmp_path, "bad")["error"] == err[0][len("error: "):]


def test_an_out_folder_that_is_a_file_or_read_only_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    status, _, err = bench_run(capsys, tmp_path / "file", "--run-id", "r")
    assert status == 2
    assert err == [f"error: cannot write the run folder {tmp_path / 'file' / 'r'}: "
                   "Not a directory"]

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("bench.run.prepare.tempfile.TemporaryFile", read_only)
    status, _, err = bench_run(capsys, tmp_path / "ro", "--run-id", "r")
    assert status == 2
    assert err == [f"error: cannot write the run folder {tmp_path / 'ro' / 'r'}: "
                   "Permission denied"]


# ---------------------------------------------------------------- 8. status 1 on failures


def test_a_failed_extractor_gives_status_1_and_keeps_the_other_rows(tmp_path, capsys, tiny):
    class Boom:
        name, dim, modalities = "boom", 2, ("image",)

        def config(self):
            return {}

        def fit(self, dataset, ctx):
            raise RuntimeError("boom in fit")

        def embed(self, dataset, rows):
            return np.zeros((len(rows), 2), np.float32)

    registry.EXTRACTORS["boom"] = lambda options, profile: Boom()
    status, out, err = bench_run(capsys, tmp_path, "--dataset", tiny, "--extractors",
                                 "pixels,boom", "--tasks", "knn", "--run-id", "r")
    assert status == 1
    assert err[-2:] == ["1 error(s):", "  extractor boom: RuntimeError: boom in fit"]
    assert set(pd.read_csv(tmp_path / "r" / "results.csv")["extractor"]) == {"pixels"}
    assert run_info(tmp_path, "r")["status"] == "failed"


# ---------------------------------------------------------------- 9. smaller points


def test_an_empty_npz_and_zero_padded_csv_ids(tmp_path, capsys, tiny, plugins):
    from bench.core.data import Dataset, array_image_source
    from bench.embed.embeddings import EmbeddingError

    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    status, _, err = bench_run(capsys, tmp_path, "--dataset", tiny, "--extractors",
                               f"precomputed:{empty}", "--tasks", "knn", "--run-id", "e")
    assert status == 2
    assert err == [f"error: precomputed embeddings {empty}: the file is empty; expected an "
                   ".npz written by np.savez(path, ids=..., vectors=...)"]

    csv = tmp_path / "padded.csv"
    csv.write_text("id,a,b\n000,1.0,2.0\n001,3.0,4.0\n")
    vectors = plugins.EXTRACTORS["precomputed"]({"arg": str(csv)}, None)
    assert vectors._embeddings.ids.tolist() == ["000", "001"]
    padded = Dataset("padded", pd.DataFrame({"id": ["001", "000"]}),
                     array_image_source(np.zeros((2, 4, 4, 3), np.uint8)), 4, "padded")
    vectors.validate(padded)  # '000' is '000', not 0
    assert vectors.embed(padded, np.arange(2)).tolist() == [[3.0, 4.0], [1.0, 2.0]]
    with pytest.raises(EmbeddingError, match=r"60 dataset ids have no vector \(e.g. 't000'\); "
                                             r"2 ids are not in the dataset \(e.g. '000'\)"):
        vectors.validate(tiny_dataset())  # checked before the run starts


# ---------------------------------------------------------------- 10. AMS and the network


def test_ams_refuses_a_remote_host_without_allow_remote(capsys):
    import argparse

    from bench.cli.ams import check_network
    from bench.tasks.ctr.ams.launch import AmsOptions

    assert main(["ams", "--synthetic", "--host", "0.0.0.0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: AMS host '0.0.0.0' is not a loopback address: PyTorch RPC unpickles what it "
        "receives, so anyone who can reach it could run code as this user; pass "
        "--allow-remote (task option ams.allow_remote) on a trusted network only")
    with pytest.raises(ValueError, match="not a loopback address"):
        AmsOptions(host="10.1.2.3")
    assert AmsOptions(host="127.0.0.1").host == "127.0.0.1"
    assert AmsOptions(host="10.1.2.3", allow_remote=True).allow_remote
    args = argparse.Namespace(host="10.1.2.3", port=29500, allow_remote=True)
    assert check_network(args) is None
    assert capsys.readouterr().err.strip() == (
        "warning: --allow-remote: the AMS rendezvous store, gloo and the TensorPipe RPC agent "
        "listen on 10.1.2.3:29500; RPC unpickles every request, so any process that can reach "
        "that address can run code as this user. Use a trusted, firewalled network.")


def test_other_commands_report_bad_input_in_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: FileNotFoundError: {tmp_path / 'nowhere' / 'results.csv'}: no results file; "
        f"is {tmp_path / 'nowhere'} a run folder?")
    assert main(["ams", "--dataset", "nope"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown dataset 'nope'; known: ")
