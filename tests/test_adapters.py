"""Third-party models through the specs a user types: tiny random models of each kind, saved
the way each library saves them, run by ``bench run`` on an exported folder; and the errors
for missing weights, missing libraries and unknown options."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.adapters.shared import AdapterError, require
from bench.cli.args import specs as _specs
from bench.cli.main import main
from bench.core import registry
from bench.core.config import get_profile
from bench.core.registry import SpecError


def test_every_adapter_runs_knn_and_retrieval_on_an_exported_folder(
        exported_folder, tiny_specs, tmp_path, plugins):
    specs = ",".join(tiny_specs.values())
    assert len(_specs(specs)) == len(tiny_specs)  # the comma-joined list keeps each spec whole
    status = main(["run", "--profile", "quick", "--dataset", f"folder:{exported_folder}",
                   "--extractors", specs, "--tasks", "knn,retrieval,finetune_retrieval",
                   "--out", str(tmp_path),
                   "--run-id", "models", "--no-report", "--cache", str(tmp_path / "cache")])
    assert status == 0
    info = json.loads((tmp_path / "models" / "run.json").read_text())
    assert not info["errors"], info["errors"]
    results = pd.read_csv(tmp_path / "models" / "results.csv")
    names = {"timm:test_vit:test_vit", "hf:hf-vit", "hf:hf-clip", "hf:hf-clip:fused",
             "open_clip:TinyCLIP:tinyclip", "torchscript:tiny"}
    for task, metric in (("knn", "style_consistency"), ("retrieval", "recall@1")):
        rows = results[(results["task"] == task) & (results["metric"] == metric)
                       & (results["variant"] == "raw")]
        assert names <= set(rows["extractor"]), (task, set(rows["extractor"]))
    # fine-tuned rows for the adapters that expose backbone(); torchscript is skipped, saying so
    tuned = set(results.query("variant == 'ft'")["extractor"])
    assert "timm:test_vit:test_vit" in tuned and "torchscript:tiny" not in tuned
    assert {(s["task"], s["extractor"]) for s in info["skipped"]} >= {
        ("finetune_retrieval", "torchscript:tiny")}
    configs = info["extractor_configs"]
    weights = Path(tiny_specs["timm"].split("weights=")[1])
    assert configs["timm:test_vit:test_vit"]["weights_sha256"] == hashlib.sha256(
        weights.read_bytes()).hexdigest()
    assert set(configs["hf:hf-clip"]["weights_sha256"]) == {"model.safetensors"}
    assert configs["hf:hf-clip:fused"]["mode"] == "fused"
    assert configs["open_clip:TinyCLIP:tinyclip"]["weights_sha256"]
    keys = info["embeddings_fingerprints"]  # provenance: which cached vectors each row used
    assert set(keys) == set(configs) and all(isinstance(k, str) and k for k in keys.values())
    assert all(Path(f).name.endswith(f"{keys[n]}.npz") for n, f in info["embeddings"].items())


def test_clip_modes_read_titles(exported_folder, tiny_specs, plugins, cache):
    profile = get_profile("quick")
    data = registry.build_dataset("folder", cache, root=str(exported_folder), workers=0)
    rows = data.rows(role="content")[:6]
    image = registry.build_extractor(tiny_specs["hf_clip"], profile)
    text = registry.build_extractor(tiny_specs["hf_clip"] + ":mode=text", profile)
    fused = registry.build_extractor(tiny_specs["hf_clip_fused"], profile)
    assert image.modalities == ("image",) and fused.modalities == ("image", "text")
    v_image, v_text, v_fused = (e.embed(data, rows) for e in (image, text, fused))
    unit = v_image / np.linalg.norm(v_image, axis=1, keepdims=True)
    expected = unit + v_text  # text vectors are unit already
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(v_fused, expected, atol=1e-5)
    products = data.rows(role="product")[:3]  # no title: the image vector alone
    np.testing.assert_allclose(
        fused.embed(data, products),
        image.embed(data, products) / np.linalg.norm(image.embed(data, products), axis=1,
                                                     keepdims=True), atol=1e-5)
    oc = registry.build_extractor(tiny_specs["open_clip"] + ":mode=fused", profile)
    assert oc.embed(data, rows).shape == (6, 16)


def test_adapters_match_a_direct_forward(exported_folder, tiny_specs, plugins, cache):
    """The streamed path gives what the library gives on the same image."""
    import timm
    from PIL import Image

    data = registry.build_dataset("folder", cache, root=str(exported_folder), workers=2)
    extractor = registry.build_extractor(tiny_specs["timm"], get_profile("quick"))
    vectors = extractor.embed(data, np.arange(5))
    model = timm.create_model("test_vit", pretrained=False, num_classes=0)
    timm.models.load_checkpoint(model, tiny_specs["timm"].split("weights=")[1], strict=False)
    model.eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    manifest = pd.read_csv(exported_folder / "manifest.csv")
    with torch.no_grad():
        direct = torch.stack([transform(Image.open(exported_folder / p).convert("RGB"))
                              for p in manifest["path"][:5]])
        np.testing.assert_allclose(vectors, model(direct).numpy(), atol=1e-5)


def test_missing_weights_say_where_to_put_them(tmp_path, plugins):
    profile = get_profile("quick")
    with pytest.raises(AdapterError) as info:
        registry.build_extractor(f"timm:test_vit:weights={tmp_path / 'nope.pth'}", profile)
    assert str(info.value) == (
        f"timm:test_vit: weights file {tmp_path / 'nope.pth'} does not exist; put a state dict "
        f"of the model (torch.save or .safetensors) at that path (nothing is downloaded at run "
        f"time)")
    with pytest.raises(AdapterError, match=r"open_clip:ViT-B-32:.*nope.bin does not exist; put "
                                           r"the OpenCLIP checkpoint \(ViT-B-32\) at that path"):
        registry.build_extractor(f"open_clip:ViT-B-32:{tmp_path / 'nope.bin'}", profile)
    with pytest.raises(AdapterError, match="no model folder at .*; save one there with "
                                           r"model.save_pretrained\(PATH\)"):
        registry.build_extractor(f"hf:{tmp_path / 'missing-model'}", profile)
    with pytest.raises(AdapterError, match="'org/not-cached' is neither a folder nor in the local "
                                           "Hugging Face hub cache"):
        registry.build_extractor("hf:org/not-cached", profile)
    with pytest.raises(AdapterError, match="timm:resnet18: no local pretrained weights for "
                                           "'resnet18' .*nothing is downloaded at run time"):
        registry.build_extractor("timm:resnet18", profile)
    with pytest.raises(AdapterError, match=r"torchscript:.*tiny.txt is not a TorchScript file"):
        (tmp_path / "tiny.txt").write_text("hello")
        registry.build_extractor(f"torchscript:{tmp_path / 'tiny.txt'}", profile)


def test_weights_that_do_not_fit_and_unknown_options_are_refused(tiny_specs, plugins):
    profile = get_profile("quick")
    weights = tiny_specs["timm"].split("weights=")[1]
    with pytest.raises(AdapterError, match=r"timm:test_resnet: weights file .* does not fit the "
                                           r"model: \d+ missing keys"):
        registry.build_extractor(f"timm:test_resnet:weights={weights}", profile)
    with pytest.raises(SpecError, match=r"timm:test_vit: unknown option 'wieghts'; known: "):
        registry.build_extractor(f"timm:test_vit:wieghts={weights}", profile)
    with pytest.raises(AdapterError, match="mode=fused needs a CLIP-style model"):
        registry.build_extractor(tiny_specs["hf_vit"] + ":mode=fused", profile)
    random = registry.build_extractor("timm:test_vit:weights=random", profile)
    assert random.name == "timm:test_vit:random" and random.config()["weights"] == "random"


def test_a_missing_library_names_the_extra(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *args):
        if name == "open_clip":
            raise ImportError("No module named 'open_clip'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(AdapterError) as info:
        require("open_clip", "open_clip:ViT-B-32:w.bin", "open_clip_torch")
    assert str(info.value) == (
        "open_clip:ViT-B-32:w.bin: needs the open_clip_torch package, which is not installed "
        "(No module named 'open_clip'); install the models extra: pip install -e '.[models]'")


def test_offline_switches_are_on_unless_the_user_set_them(monkeypatch):
    import importlib
    import os

    import bench

    for name in bench.OFFLINE_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user's choice is kept
    importlib.reload(bench)
    assert [os.environ[n] for n in bench.OFFLINE_SWITCHES] == ["0", "1", "1"]


def test_a_model_that_returns_one_row_per_batch_is_refused_not_broadcast():
    """A TorchScript-like model answering [1, d] for a batch of n: numpy would broadcast it
    into n identical rows; the batch is refused with the extractor, the rows and the shape."""
    from torchvision import transforms

    from bench.adapters.shared import StreamedModel
    from bench.embed.embeddings import EmbeddingError
    from tests.conftest import tiny_dataset

    def first_only(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))[:1]  # [1, 3] whatever the batch

    model = StreamedModel("torchscript:first", {}, transforms.ToTensor(), first_only,
                          image_size=16, mean=(0, 0, 0), std=(1, 1, 1), batch_size=8,
                          device="cpu")
    assert model.dim == 3
    data = tiny_dataset(20)
    data.info["workers"] = 0
    with pytest.raises(EmbeddingError, match=r"torchscript:first: returned shape \[1, 3\] for "
                                             r"the 8 images at dataset rows 0-7; .*\[8, 3\]"):
        model.embed(data, np.arange(20))

    def nan_model(x: torch.Tensor) -> torch.Tensor:
        out = x.mean(dim=(2, 3))
        out[-1, 0] = float("nan")
        return out

    model = StreamedModel("torchscript:nan", {}, transforms.ToTensor(), nan_model,
                          image_size=16, mean=(0, 0, 0), std=(1, 1, 1), batch_size=8,
                          device="cpu")
    with pytest.raises(EmbeddingError, match=r"NaN or Inf, e.g. dataset row 7"):
        model.embed(data, np.arange(20))


class _Payload:
    """Unpickling it would call os.getcwd: the kind of object a weights file must not hold."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


@pytest.mark.parametrize("content", [b"\x80\x02" + bytes(range(256)) * 8, b"PK\x03\x04" + b"x" * 900,
                                     bytes(range(256)) * 4])
def test_random_bytes_as_timm_weights_are_not_a_trust_question(tmp_path, plugins, content):
    path = tmp_path / "random.pth"
    path.write_bytes(content)
    with pytest.raises(AdapterError) as info:
        registry.build_extractor(f"timm:test_vit:weights={path}", get_profile("quick"))
    message = str(info.value)
    assert message.startswith(f"timm:test_vit: {path} is not a state dict the tool can read (")
    assert "\n" not in message and "weights_only" not in message and "trust" not in message


def test_an_hf_folder_whose_bin_is_a_pickle_payload_is_one_line(tiny_specs, plugins, tmp_path):
    import shutil

    folder = tmp_path / "hf-pickle"
    shutil.copytree(tiny_specs["hf_vit"].split(":", 1)[1], folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    torch.save({"x": _Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(AdapterError) as info:
        registry.build_extractor(f"hf:{folder}", get_profile("quick"))
    assert str(info.value) == (
        f"hf:{folder}: {folder / 'pytorch_model.bin'} is not a state dict the tool can read (it "
        f"holds pickled Python objects besides tensors, e.g. posix.getcwd, and files are never "
        f"unpickled); save the weights as .safetensors, or with torch.save(model.state_dict(), "
        f"PATH)")


def test_pretrained_weights_with_a_pickle_payload_never_invite_unpickling(tmp_path, plugins):
    path = tmp_path / "payload.pth"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(ValueError) as info:
        registry.build_extractor(f"pretrained:weights={path}", get_profile("quick"))
    message = str(info.value)
    assert message == (f"pretrained: cannot read weights file {path} as a torch state dict (it "
                       f"holds pickled Python objects besides tensors, e.g. posix.getcwd, and "
                       f"files are never unpickled)")
