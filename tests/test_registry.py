"""Plugin discovery: drop-in files, --plugin files, broken plugins, spec parsing."""

from __future__ import annotations

import textwrap

import pytest

from bench import registry
from bench.config import get_profile


def test_builtin_plugins_are_found(plugins):
    assert {"pixels", "random", "precomputed"} <= set(plugins.EXTRACTORS)
    assert {"digits", "folder"} <= set(plugins.DATASETS)
    assert "datasets" not in __import__("sys").modules or not hasattr(
        __import__("sys").modules["datasets"], "load_homestead")


def test_plugin_file_registers_and_broken_plugin_is_reported(tmp_path, plugins):
    good = tmp_path / "mean_colour.py"
    good.write_text(textwrap.dedent("""
        import numpy as np
        from bench.registry import extractor

        class MeanColour:
            name, dim, modalities = "mean_colour", 3, ("image",)
            def config(self): return {}
            def fit(self, dataset, ctx): pass
            def embed(self, dataset, rows):
                return dataset.images(rows).mean(axis=(1, 2)).astype("float32")

        @extractor("mean_colour")
        def make(options, profile):
            return MeanColour()
    """))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom in plugin')\n")
    errors = registry.load_plugins([str(good), str(broken)])
    assert "mean_colour" in registry.EXTRACTORS
    messages = [str(e) for e in errors if "broken.py" in e.source]
    assert messages and "RuntimeError: boom in plugin" in messages[0]
    built = registry.build_extractor("mean_colour", get_profile("quick"))
    assert built.dim == 3


def test_spec_parsing():
    assert registry.parse_spec("pixels") == ("pixels", {})
    assert registry.parse_spec("precomputed:/a/b.npz") == ("precomputed", {"arg": "/a/b.npz"})
    assert registry.parse_spec("m:dim=64,image_only=1") == ("m", {"dim": "64", "image_only": "1"})
    with pytest.raises(ValueError, match="not key=value"):
        registry.parse_spec("m:dim=64,oops")


def test_spec_parsing_of_model_adapters():
    parse = registry.parse_spec
    assert parse("timm:resnet18:weights=/w/r.pth,batch_size=8") == (
        "timm", {"arg": "resnet18", "weights": "/w/r.pth", "batch_size": "8"})
    assert parse("open_clip:ViT-B-32:/w/clip.bin") == (
        "open_clip", {"arg": "ViT-B-32", "arg2": "/w/clip.bin"})
    assert parse("hf:/models/clip:mode=fused") == ("hf", {"arg": "/models/clip", "mode": "fused"})
    assert parse("hf:org/model") == ("hf", {"arg": "org/model"})
    assert parse("torchscript:m.pt:image_size=160") == (
        "torchscript", {"arg": "m.pt", "image_size": "160"})
    assert parse("timm:r18:weights=/a:b.pth") == ("timm", {"arg": "r18", "weights": "/a:b.pth"})
    assert parse("folder:items/,workers=2") == ("folder", {"arg": "items/", "workers": "2"})
    with pytest.raises(ValueError, match="empty part 1"):
        parse("timm::weights=x")


def test_unknown_names_list_the_known_ones(plugins):
    with pytest.raises(registry.SpecError, match="known: .*pixels"):
        registry.build_extractor("nope", get_profile("quick"))
    with pytest.raises(registry.SpecError, match="unknown dataset"):
        registry.build_dataset("nope", None)
