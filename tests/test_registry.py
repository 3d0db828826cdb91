"""Plugin discovery: drop-in files and packages, --plugin files and packages, broken plugins,
spec parsing."""

from __future__ import annotations

import textwrap

import pytest

from bench.core import registry
from bench.core.config import get_profile


def test_builtin_plugins_are_found(plugins):
    assert {"pixels", "random", "precomputed"} <= set(plugins.EXTRACTORS)
    assert {"digits", "folder"} <= set(plugins.DATASETS)
    assert "datasets" not in __import__("sys").modules or not hasattr(
        __import__("sys").modules["datasets"], "load_homestead")


def test_plugin_file_registers_and_broken_plugin_is_reported(tmp_path, plugins):
    good = tmp_path / "mean_colour.py"
    good.write_text(textwrap.dedent("""
        import numpy as np
        from bench.core.registry import extractor

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


def _write_package(folder, files: dict[str, str]):
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


TWO_MODULE_EXTRACTOR = {
    "__init__.py": """
        from bench.core.registry import extractor

        from .model import MeanRows

        @extractor("pkg_mean_rows")
        def make(options, profile):
            return MeanRows()
    """,
    "model.py": """
        from .helpers import row_means

        class MeanRows:
            name, dim, modalities = "pkg_mean_rows", 4, ("image",)
            def config(self): return {}
            def fit(self, dataset, ctx): pass
            def embed(self, dataset, rows):
                return row_means(dataset.images(rows), self.dim)
    """,
    "helpers.py": """
        import numpy as np

        def row_means(images, dim):
            means = images.astype("float32").mean(axis=(2, 3))
            return np.ascontiguousarray(means[:, :dim])
    """,
}


def test_plugin_package_with_relative_imports_registers(tmp_path, plugins):
    package = _write_package(tmp_path / "mean_rows_pkg", TWO_MODULE_EXTRACTOR)
    errors = registry.load_plugins([str(package)])
    assert not [e for e in errors if "mean_rows_pkg" in e.source]
    built = registry.build_extractor("pkg_mean_rows", get_profile("quick"))
    assert built.dim == 4
    module = type(built).__module__  # a submodule of the package, under bench_plugins
    assert module.startswith("bench_plugins.") and module.endswith(".mean_rows_pkg.model")


def test_plugin_folder_loads_packages_beside_files(tmp_path, monkeypatch):
    folder = tmp_path / "datasets"
    _write_package(folder / "toy_world", {
        "__init__.py": """
            from bench.core.registry import dataset

            from .build import make_toy

            @dataset("toy_world_pkg")
            def load(cache=None, n: int = 4):
                return make_toy(n)
        """,
        "build.py": """
            import numpy as np
            import pandas as pd

            from bench.core.data import Dataset, array_image_source

            def make_toy(n):
                table = pd.DataFrame({"id": [f"t{i}" for i in range(n)], "split": "test"})
                images = np.zeros((n, 16, 16, 3), dtype=np.uint8)
                return Dataset("toy_world_pkg", table, array_image_source(images), 16, f"toy-{n}")
        """,
    })
    (folder / "_private").mkdir()
    (folder / "_private" / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    (folder / "notes").mkdir()  # a folder without __init__.py is not a plugin: skipped
    monkeypatch.setattr(registry, "PLUGIN_FOLDERS", {"datasets": folder})
    errors = registry.load_plugins()
    assert not [e for e in errors if str(folder) in e.source]
    assert len(registry.build_dataset("toy_world_pkg", None, n=3)) == 3


def test_broken_plugin_package_is_one_line_and_leaves_no_half_module(tmp_path, plugins):
    package = _write_package(tmp_path / "broken_pkg", {
        "__init__.py": "from .inner import VALUE\n",
        "inner.py": "VALUE = 1\nraise ValueError('bad\\nconfig in inner')\n",
    })
    not_a_package = tmp_path / "just_a_folder"
    not_a_package.mkdir()
    errors = registry.load_plugins([str(package), str(not_a_package)])
    [broken] = [str(e) for e in errors if e.source == str(package.resolve())]
    assert "\n" not in broken
    assert "ValueError: bad config in inner" in broken
    assert f"{package.resolve() / 'inner.py'}:2" in broken
    assert not [m for m in __import__("sys").modules if ".broken_pkg" in m]
    [folder_error] = [str(e) for e in errors if e.source == str(not_a_package)]
    assert "without __init__.py" in folder_error


def test_package_plugin_digest_covers_its_helper_modules(tmp_path, plugins):
    from bench.core.code import source_digest
    from bench.embed.key import code_digest

    package = _write_package(tmp_path / "digest_pkg", {
        **TWO_MODULE_EXTRACTOR,
        "__init__.py": TWO_MODULE_EXTRACTOR["__init__.py"].replace("pkg_mean_rows",
                                                                   "pkg_digest_rows"),
    })
    registry.load_plugins([str(package)])
    built = registry.build_extractor("pkg_digest_rows", get_profile("quick"))
    before = (code_digest(built), source_digest(type(built)))
    helpers = package / "helpers.py"
    helpers.write_text(helpers.read_text() + "\n# an edit in a helper module\n")
    after = (code_digest(built), source_digest(type(built)))
    assert before[0] != after[0] and before[1] != after[1]
