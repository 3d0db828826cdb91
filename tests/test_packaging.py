"""The built-in plugins are packaged: a non-editable install runs without the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_in_the_wheel():
    config = setuptools_config()
    listed, mapped = set(config["packages"]), config["package-dir"]
    on_disk = {".".join(path.parent.relative_to(ROOT).parts)
               for path in (ROOT / "bench").rglob("*.py") if "__pycache__" not in path.parts}
    assert on_disk <= listed, sorted(on_disk - listed)
    for package, folder in mapped.items():
        assert package in listed and (ROOT / folder).is_dir(), package
        assert any((ROOT / folder).glob("*.py")), folder
    plugin_packages = {f"bench.plugins.datasets.{p.parent.name}"
                       for p in (ROOT / "datasets").glob("*/__init__.py")}
    assert plugin_packages <= set(mapped), sorted(plugin_packages - set(mapped))


def test_a_wheel_installed_into_a_fresh_venv_runs_knn(tmp_path):
    """Build the wheel with this environment's setuptools, install it (no deps: the fresh venv
    sees this environment's packages through a .pth file, but not its editable ``bench``), then
    run from a folder outside the checkout."""
    source = tmp_path / "source"  # a copy: the build leaves build/ and egg-info behind
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", "results", "build", "__pycache__", "*.egg-info"))
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "-w", str(wheels), str(source)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True).stdout.strip()
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("embedding_bench-*.whl"))
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                                "-q", "--no-deps", str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": ""}
    where = subprocess.run([str(python), "-c", "import bench; print(bench.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(purelib), where.stdout + where.stderr
    listed = subprocess.run([str(env_dir / "bin" / "bench"), "list"], cwd=work, env=env,
                            capture_output=True, text=True)
    assert "homestead" in listed.stdout and "moco_v2" in listed.stdout, listed.stderr
    run = subprocess.run([str(env_dir / "bin" / "bench"), "run", "--profile", "quick",
                          "--tasks", "knn", "--extractors", "pixels,moco_v2", "--no-report",
                          "--out", str(work / "results"), "--run-id", "wheel"],
                         cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    results = (work / "results" / "wheel" / "results.csv").read_text()
    assert "moco_v2" in results and "style_consistency" in results
