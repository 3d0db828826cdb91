"""Report artifacts (embedding sample, KNN grid) against scikit-learn, and every plot drawn from
the fixture run; a broken plot becomes a note, not a crash."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from bench.core.data import Dataset, array_image_source
from bench.embed.embeddings import Embeddings
from bench.report import artifacts, build_report, plots
from bench.report.plots import PlotContext, make_plots
from bench.report.tables import aggregate
from bench.run import pictures

FIXTURES = Path(__file__).parent / "fixtures"


def synthetic_dataset(n: int = 240, size: int = 16, seed: int = 0) -> Dataset:
    """Content covers (test and train) with style/scene labels, and a few products."""
    rng = np.random.default_rng(seed)
    styles = np.array(["modern", "rustic", "nordic", "boho"])[rng.integers(0, 4, n)]
    scenes = np.array(["living", "bedroom", "kitchen"])[rng.integers(0, 3, n)]
    table = pd.DataFrame({
        "id": [f"c{i:04d}" for i in range(n)],
        "split": np.where(np.arange(n) % 3 == 0, "train", "test"),
        "role": np.where(np.arange(n) < n - 20, "content", "product"),
        "style": styles, "scene": scenes,
    })
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    return Dataset("synthetic", table, array_image_source(images), size, "fp-synthetic")


def synthetic_embeddings(dataset: Dataset, dim: int, seed: int) -> Embeddings:
    rng = np.random.default_rng(seed)
    centers = {s: rng.standard_normal(dim) * 3 for s in sorted(set(dataset.table["style"]))}
    vectors = np.stack([centers[s] for s in dataset.table["style"]])
    vectors = vectors + rng.standard_normal((len(dataset), dim))
    return Embeddings(dataset.ids, vectors.astype(np.float32))


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return synthetic_dataset()


@pytest.fixture(scope="module")
def embeddings(dataset: Dataset) -> dict[str, Embeddings]:
    return {"small": synthetic_embeddings(dataset, 8, 1),
            "wide": synthetic_embeddings(dataset, 96, 2)}


def test_artifacts_match_sklearn(tmp_path: Path, dataset: Dataset,
                                 embeddings: dict[str, Embeddings]) -> None:
    written = pictures.save_run_artifacts(tmp_path, dataset, embeddings)
    assert sorted(p.name for p in written) == sorted([artifacts.SAMPLE_FILE, artifacts.GRID_FILE])
    pool = dataset.rows(role="content", split="test")
    sample = artifacts.load_sample(tmp_path)
    assert sample["ids"].tolist() == dataset.ids[pool].tolist()  # fewer than 2000: all of them
    assert sample["label__style"].tolist() == dataset.table["style"].iloc[pool].tolist()
    assert sample["extractors"].tolist() == ["small", "wide"]
    for i, emb in enumerate(embeddings.values()):
        reference = PCA(n_components=2).fit_transform(emb.take(pool))
        got = sample[f"vectors_{i}"][:, :2]
        assert sample[f"vectors_{i}"].shape == (len(pool), min(50, emb.dim))
        for j in range(2):  # principal components are defined up to sign
            corr = np.corrcoef(got[:, j], reference[:, j])[0, 1]
            assert abs(corr) > 0.999

    grid = artifacts.load_grid(tmp_path)
    query_ids = grid["query_ids"].tolist()
    assert 1 <= len(query_ids) <= pictures.N_QUERIES
    assert len(set(grid["query_labels"].tolist())) == len(query_ids)  # one per style
    position = {item: i for i, item in enumerate(dataset.ids)}
    for i, emb in enumerate(embeddings.values()):
        vectors = emb.take(pool)
        nn = NearestNeighbors(n_neighbors=pictures.TOP_K + 1).fit(vectors)
        queries = [int(np.flatnonzero(dataset.ids[pool] == q)[0]) for q in query_ids]
        _, reference = nn.kneighbors(vectors[queries])
        expected = [[dataset.ids[pool][j] for j in row if j != q][: pictures.TOP_K]
                    for row, q in zip(reference, queries)]
        assert grid[f"neighbor_ids_{i}"].tolist() == expected
        rows = [[position[item] for item in row] for row in expected]
        assert np.array_equal(grid[f"neighbor_images_{i}"], dataset.images(np.array(rows).ravel())
                              .reshape(len(rows), pictures.TOP_K, 16, 16, 3))
        assert grid[f"neighbor_labels_{i}"].tolist() == [
            dataset.table["style"].iloc[r].tolist() for r in rows]


def test_sample_is_capped_and_errors_are_collected(dataset: Dataset,
                                                   embeddings: dict[str, Embeddings]) -> None:
    collector = pictures.RunArtifacts(dataset, max_sample=50)
    assert len(collector.sample) == 50
    broken = Embeddings(dataset.ids[:10], np.zeros((10, 4), dtype=np.float32))
    collector.add("broken", broken)  # too few rows for the pool: recorded, not raised
    collector.add("small", embeddings["small"])
    assert collector.names == ["small"]
    assert len(collector.errors) == 1 and "broken" in collector.errors[0]["where"]


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_every_plot_is_drawn_from_the_fixture_run(tmp_path: Path, dataset: Dataset,
                                                  embeddings: dict[str, Embeddings]) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "report_run_a", run)
    pictures.save_run_artifacts(run, dataset, embeddings)
    results = pd.read_csv(run / "results.csv")
    drawn = make_plots(PlotContext(run, aggregate(results)))
    assert [p.key for p in drawn] == [key for key, *_ in plots.PLOTS]
    for plot in drawn:
        assert plot.note is None, (plot.key, plot.note)
        width, height = _png_size(plot.path)
        assert width >= 600 and height >= 250, plot.key


def test_broken_plot_becomes_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(FIXTURES / "report_run_a", tmp_path / "run")
    (tmp_path / "run" / "plots").mkdir()
    (tmp_path / "run" / "plots" / "boom.png").write_bytes(b"stale")

    def boom(ctx: PlotContext) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(plots, "PLOTS", [("boom", "Boom", "caption", boom),
                                          plots.PLOTS[0]])
    report = build_report(tmp_path / "run")
    assert report.plots[0].note == "could not be drawn: RuntimeError: kaboom"
    assert not (tmp_path / "run" / "plots" / "boom.png").exists()  # stale file removed
    assert report.plots[1].path is not None
    assert "plot boom: could not be drawn" in report.html.read_text()


def test_tsne_option_draws_the_map(tmp_path: Path, dataset: Dataset,
                                   embeddings: dict[str, Embeddings]) -> None:
    collector = pictures.RunArtifacts(dataset, max_sample=40)  # t-SNE is slow: few points
    collector.add("small", embeddings["small"])
    collector.save(tmp_path)
    ctx = PlotContext(tmp_path, aggregate(pd.DataFrame(
        columns=["dataset", "task", "extractor", "variant", "metric", "value"])), tsne=True)
    fig = plots.embedding_map(ctx)
    assert "t-SNE" in fig.axes[0].get_xlabel()
