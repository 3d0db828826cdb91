"""The report's plots (matplotlib, PNG), each drawn from the run folder's files alone.

Every plot is optional: a task, metric or artifact file the run does not have gives a
:class:`PlotResult` with a "not run" note instead of a picture, and an unexpected failure in one plot
is caught and noted, so the rest of the report is still built. Figures are made with
``matplotlib.figure.Figure`` (no pyplot state, Agg canvas when saved as PNG).

Why one module of about 660 lines: every figure is one short function over the same
``PlotContext``, palette and "not run" notes, and ``make_plots`` lists them in page order;
split by figure, each part would import the same shared pieces back.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bench.core.metric_info import MetricBook
from bench.report import artifacts
from bench.report.tables import MARKS, VARIANT_LABELS

COLORS = {"raw": "#4C72B0", "w": "#DD8452", "ft": "#8172B3", "other": "#55A868"}
PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3",
           "#8C8C8C", "#CCB974", "#64B5CD"]
DPI = 100


class NotRun(Exception):
    """The run has nothing to draw for this plot; the message says what is missing."""


@dataclass
class PlotContext:
    run_dir: Path
    stats: pd.DataFrame  # tables.aggregate output
    run_info: dict[str, Any] = field(default_factory=dict)
    tsne: bool = False


@dataclass
class PlotResult:
    key: str
    title: str
    caption: str
    path: Path | None = None
    note: str | None = None  # why there is no picture
    seconds: float = 0.0


# ---------------------------------------------------------------- shared drawing helpers


def _task(ctx: PlotContext, task: str) -> pd.DataFrame:
    part = ctx.stats[ctx.stats["task"] == task]
    if part.empty:
        raise NotRun(f"task {task!r} is not in results.csv")
    return part


def _hue(variant: str) -> str:
    return variant if variant in VARIANT_LABELS else "other"


def _grid(n: int, ncols: int = 3, width: float = 4.2, height: float = 3.4) -> tuple[Figure, list]:
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(max(7.0, width * ncols), height * nrows), dpi=DPI,
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def metric_bars(ax: Any, part: pd.DataFrame, metric: str, *, log: bool = False,
                zoom: bool = False, label_bars: bool = True) -> None:
    """Bars per table row that has the metric, ``raw`` and ``+w`` side by side, the 95% interval
    as error bars (seed std when the run has no verdicts), hatched ``scratch`` rows (rows
    without the metric read "not run" in the table)."""
    data = part[part["metric"] == metric]
    rows = list(dict.fromkeys(data["row"]))
    hues = [h for h in COLORS if (data["variant"].map(_hue) == h).any()]
    width = 0.8 / max(1, len(hues))
    lows, highs = [], []
    for j, hue in enumerate(hues):
        sub = data[data["variant"].map(_hue) == hue].set_index("row")
        xs, means, below, above, marks = [], [], [], [], []
        for i, row in enumerate(rows):
            if row in sub.index:
                item = sub.loc[row]
                mean = float(item["mean"])
                xs.append(i + (j - (len(hues) - 1) / 2) * width)
                means.append(mean)
                verdict = item.get("verdict")
                marks.append(MARKS.get(verdict, "") if isinstance(verdict, str) else "")
                low, high = (float(item.get("ci_low", np.nan)), float(item.get("ci_high", np.nan)))
                if np.isfinite(low) and np.isfinite(high):
                    below.append(max(mean - low, 0.0))
                    above.append(max(high - mean, 0.0))
                else:
                    spread = float(item["std"]) if int(item["n"]) > 1 else 0.0
                    below.append(spread)
                    above.append(spread)
        errs = [below, above]
        if not xs:
            continue
        if log:  # a zero cost (nothing sent) has no place on a log axis: say so instead
            for x, m in zip(xs, means):
                if m <= 0:
                    ax.text(x, 0.02, f"{m:g}\n(none)", transform=ax.get_xaxis_transform(),
                            ha="center", fontsize=8)
            means = [m if m > 0 else np.nan for m in means]
        bars = ax.bar(xs, means, width * 0.95, yerr=errs if any(below + above) else None,
                      capsize=3, color=COLORS[hue], label=VARIANT_LABELS.get(hue, "value"))
        for bar, x in zip(bars, xs):
            if rows[round(x)].startswith("scratch"):
                bar.set_hatch("//")
                bar.set_edgecolor("white")
        if label_bars and len(rows) * len(hues) <= 16:
            ax.bar_label(bars, labels=[f"{m:.3g}{k}" if np.isfinite(m) else ""
                                       for m, k in zip(means, marks)], fontsize=7, padding=2)
        lows += [m - e for m, e in zip(means, below) if np.isfinite(m)]
        highs += [m + e for m, e in zip(means, above) if np.isfinite(m)]
    tilt = len(rows) > 3 or max(map(len, rows), default=0) > 12
    ax.set_xticks(range(len(rows)), rows, rotation=30 if tilt else 0,
                  ha="right" if tilt else "center", fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    if log:
        ax.set_yscale("log")
        if lows:  # start below the smallest bar so that every bar is visible
            ax.set_ylim(min(v for v in lows if v > 0) / 3 if any(v > 0 for v in lows)
                        else None, max(highs) * 3)
    elif zoom and lows:
        span = max(highs) - min(lows)
        margin = max(span * 0.25, 0.005)
        ax.set_ylim(max(0.0, min(lows) - margin), min(1.0, max(highs) + margin * 2))
    ax.grid(axis="y", alpha=0.3)
    if len(hues) > 1:
        ax.legend(fontsize=8, loc="best")


def _metrics(part: pd.DataFrame, pattern: str) -> list[str]:
    return [m for m in dict.fromkeys(part["metric"]) if re.search(pattern, m)]


def _unit(metric: str) -> str:
    name = metric.lower()
    if "bytes" in name:
        return "bytes per iteration (log scale)"
    if "time" in name or name.endswith("_s"):
        return "seconds per iteration (log scale)"
    if "mem" in name:
        return "bytes (log scale)"
    return "value (log scale)"


# ---------------------------------------------------------------- the plots


def knn_consistency(ctx: PlotContext) -> Figure:
    part = _task(ctx, "knn")
    book = MetricBook.from_run_info(ctx.run_info)
    metrics = _metrics(part, r"_consistency$") or [m for m in dict.fromkeys(part["metric"])
                                                   if not book.is_chance(m)]
    k = ctx.run_info.get("config", {}).get("task_options", {}).get("knn", {}).get("k", 10)
    fig, axes = _grid(len(metrics))
    for ax, metric in zip(axes, metrics):
        metric_bars(ax, part, metric)
        chance = part[part["metric"] == metric.replace("_consistency", "_chance")]["mean"]
        if len(chance):
            ax.axhline(float(chance.mean()), color="black", linestyle="--", linewidth=1,
                       label=f"chance {float(chance.mean()):.3f}")
            ax.legend(fontsize=8, loc="upper left", ncol=3)  # in the headroom above the bars
        ax.set_ylim(0, 1.25)
        ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_title(metric.replace("_", " "), fontsize=10)
        ax.set_ylabel(f"share of top-{k} neighbours\nwith the same label (0-1)")
    fig.suptitle("KNN consistency per extractor, raw vs +w (dashed: chance)", fontsize=11)
    return fig


def whitening_sweep(ctx: PlotContext) -> Figure:
    """Score against the whitening dimension k (at the shrinkage the run chose), one line per
    extractor, the k the run chose (on train rows) circled; raw as a dashed line of the same
    colour."""
    path = ctx.run_dir / "whitening_sweep.csv"
    if not path.is_file():
        raise NotRun("the run has no whitening_sweep.csv (task option whitening_sweep)")
    sweep = pd.read_csv(path)
    chosen = ctx.run_info.get("whitening", {})
    panels = list(dict.fromkeys(zip(sweep["task"], sweep["metric"])))
    fig, axes = _grid(len(panels), ncols=2, width=5.0, height=3.6)
    for ax, (task, metric) in zip(axes, panels):
        part = sweep[(sweep["task"] == task) & (sweep["metric"] == metric)]
        for i, (name, line) in enumerate(part.groupby("extractor", sort=False)):
            color = PALETTE[i % len(PALETTE)]
            ax.plot(line["k"], line["value"], marker=".", color=color, label=name, linewidth=1.2)
            k = chosen.get(name, {}).get(task, {}).get("k")
            hit = line[line["k_kept"] == k] if k is not None else line.iloc[:0]
            if len(hit):
                ax.scatter(hit["k"].iloc[:1], hit["value"].iloc[:1], s=80, facecolors="none",
                           edgecolors=color, linewidths=1.5)
            raw = ctx.stats[(ctx.stats["task"] == task) & (ctx.stats["metric"] == metric)
                            & (ctx.stats["extractor"] == name) & (ctx.stats["variant"] == "raw")]
            if len(raw):
                ax.axhline(float(raw["mean"].iloc[0]), color=color, linestyle="--",
                           linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("whitening dimension k (log 2)")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(f"{task}: {metric}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("+w against its dimension k at the chosen shrinkage (circle: the k chosen on "
                 "train rows; dashed: raw)", fontsize=11)
    return fig


def recall_curves(ctx: PlotContext) -> Figure:
    pattern = re.compile(r"^(.*?)[_ /]?recall@(\d+)$")
    found = ctx.stats[ctx.stats["metric"].str.match(pattern)
                      & ~ctx.stats["metric"].map(MetricBook.from_run_info(ctx.run_info).is_check)
                      .astype(bool)]
    if found.empty:
        raise NotRun("no recall@N metrics in results.csv (tasks 'retrieval' and "
                     "'finetune_retrieval' not run)")
    found = found.assign(prefix=[pattern.match(m).group(1) for m in found["metric"]],
                         N=[int(pattern.match(m).group(2)) for m in found["metric"]])
    groups = list(dict.fromkeys(zip(found["task"], found["prefix"])))
    fig, axes = _grid(len(groups), ncols=2, width=5.5, height=4.0)
    rows = list(dict.fromkeys(found["row"]))
    for ax, (task, prefix) in zip(axes, groups):
        part = found[(found["task"] == task) & (found["prefix"] == prefix)]
        for (row, variant), line in part.groupby(["row", "variant"], sort=False):
            line = line.sort_values("N")
            style = {"raw": "-", "w": "--"}.get(variant, ":")
            errs = np.where(line["n"] > 1, line["std"], 0.0)
            ax.errorbar(line["N"], line["mean"], yerr=errs if errs.any() else None, capsize=2,
                        linestyle=style, marker="o", markersize=4,
                        color=PALETTE[rows.index(row) % len(PALETTE)],
                        label=f"{row} {VARIANT_LABELS.get(variant, variant)}")
        ax.set_xlim(0.5, 20.5)
        ax.set_xticks([1, 5, 10, 15, 20])
        ax.set_xlabel("N (gallery items returned per query)")
        ax.set_ylabel("Recall@N (share of queries\nwith a hit in the top N)")
        ax.set_title(f"{task}{' ' + prefix if prefix else ''}: Identity Recall@N", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Recall@N curves per extractor (solid raw, dashed +w)", fontsize=11)
    return fig


def classification_topk(ctx: PlotContext) -> Figure:
    found = ctx.stats[ctx.stats["metric"].str.contains(r"top-?\d+", regex=True)]
    if found.empty:
        raise NotRun("no top-1/top-5 metrics in results.csv (tasks 'classify' and "
                     "'finetune_classify' not run)")
    panels = list(dict.fromkeys(zip(found["task"], found["metric"])))
    fig, axes = _grid(len(panels), ncols=2, width=5.0, height=3.6)
    percent = float(found["mean"].max()) > 1.0
    for ax, (task, metric) in zip(axes, panels):
        metric_bars(ax, found[found["task"] == task], metric)
        ax.set_title(f"{task}: {metric}", fontsize=10)
        ax.set_ylabel("accuracy (%)" if percent else "accuracy (share of test items)")
        ax.set_ylim(0, 100 if percent else 1.0)
    fig.suptitle("Classification top-1 / top-5: pretrained backbones vs scratch (hatched)",
                 fontsize=11)
    return fig


def _auc_panels(ctx: PlotContext, cold: bool) -> Figure:
    part = _task(ctx, "ctr")
    metrics = [m for m in _metrics(part, r"auc") if m.startswith("cold") == cold]
    if not metrics:
        raise NotRun("task 'ctr' has no cold_* AUC metrics" if cold else
                     "task 'ctr' has no AUC metrics")
    first = ["ctr_auc", "ctcvr_auc", "detail_auc"]
    metrics = sorted(metrics, key=lambda m: (first.index(m.removeprefix("cold_"))
                                             if m.removeprefix("cold_") in first else 9))[:6]
    fig, axes = _grid(len(metrics))
    for ax, metric in zip(axes, metrics):
        metric_bars(ax, part, metric, zoom=True, label_bars=False)
        ax.set_title(metric, fontsize=10)
        ax.set_ylabel("AUC (mean ± seed std)")
    fig.suptitle("Cold start: AUC on items first published on the test day" if cold else
                 "CTR model AUC per task with each extractor's image features", fontsize=11)
    return fig


def ctr_auc(ctx: PlotContext) -> Figure:
    return _auc_panels(ctx, cold=False)


def ctr_cold_start(ctx: PlotContext) -> Figure:
    return _auc_panels(ctx, cold=True)


def ams_costs(ctx: PlotContext) -> Figure:
    part = _task(ctx, "ams")
    book = MetricBook.from_run_info(ctx.run_info)
    metrics = [m for m in dict.fromkeys(part["metric"]) if book.lower_is_better(m)] or \
        list(dict.fromkeys(part["metric"]))
    fig, axes = _grid(len(metrics))
    for ax, metric in zip(axes, metrics):
        metric_bars(ax, part, metric, log=True)
        ax.set_title(metric, fontsize=10)
        ax.set_ylabel(_unit(metric))
    fig.suptitle("AMS: communication and time per iteration per mode (log scale)", fontsize=11)
    return fig


def _train_logs(run_dir: Path) -> dict[str, dict[str, Any]]:
    logs = {}
    for path in sorted((run_dir / "artifacts").glob("*/train_log.json")):
        try:
            logs[path.parent.name] = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            logs[path.parent.name] = {"error": f"{path}: {error}"}
    return logs


def _losses(log: dict[str, Any]) -> list[float]:
    values = log.get("loss", [])
    return [float(v["loss"] if isinstance(v, dict) else v) for v in values
            if v is not None and (not isinstance(v, dict) or "loss" in v)]


def training_loss(ctx: PlotContext) -> Figure:
    logs = {name: log for name, log in _train_logs(ctx.run_dir).items() if _losses(log)}
    if not logs:
        raise NotRun("no artifacts/<extractor>/train_log.json with a 'loss' list in the run "
                     "folder (no learned extractor was trained in this run; weights loaded "
                     "from the cache write no log)")
    fig, axes = _grid(len(logs), ncols=3, width=4.0, height=3.0)
    for i, (ax, (name, log)) in enumerate(zip(axes, logs.items())):
        losses = _losses(log)
        ax.plot(range(1, len(losses) + 1), losses, marker="o", markersize=3,
                color=PALETTE[i % len(PALETTE)])
        ax.set_title(f"{name} ({len(losses)} epoch{'s' if len(losses) > 1 else ''})",
                     fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (method's own units)")
        ax.grid(alpha=0.3)
    fig.suptitle("Training loss of the learned extractors", fontsize=11)
    return fig


def moe_expert_load(ctx: PlotContext) -> Figure:
    logs = {n: log for n, log in _train_logs(ctx.run_dir).items() if log.get("expert_load")}
    if not logs:
        raise NotRun("no train_log.json with 'expert_load' (the MoE extractor was not trained "
                     "in this run)")
    fig, axes = _grid(len(logs), ncols=2, width=5.5, height=3.4)
    for ax, (name, log) in zip(axes, logs.items()):
        load = np.atleast_2d(np.asarray(log["expert_load"], dtype=float))
        share = 100 * load / load.sum(axis=1, keepdims=True)
        n_layers, n_experts = share.shape
        width = 0.8 / n_layers
        for layer in range(n_layers):
            xs = np.arange(n_experts) + (layer - (n_layers - 1) / 2) * width
            ax.bar(xs, share[layer], width * 0.95, color=PALETTE[layer % len(PALETTE)],
                   label=f"layer {layer}" if n_layers > 1 else None)
        ax.axhline(100 / n_experts, color="black", linestyle="--", linewidth=1,
                   label="uniform share")
        ax.set_xticks(range(n_experts))
        ax.set_xlabel("expert")
        ax.set_ylabel("share of routed tokens (%)")
        dropped = log.get("dropped_share")
        extra = f", dropped {100 * float(np.mean(dropped)):.1f}% of tokens" \
            if dropped is not None else ""
        ax.set_title(f"{name}: tokens per expert{extra}", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Mixture-of-experts load at the end of training", fontsize=11)
    return fig


def _project(vectors: np.ndarray, tsne: bool) -> np.ndarray:
    if not tsne:  # stored vectors are already principal components, in order
        return vectors[:, :2] if vectors.shape[1] >= 2 else np.c_[vectors, np.zeros(len(vectors))]
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, len(vectors) // 4)))
    return TSNE(n_components=2, init="pca", random_state=0, perplexity=perplexity).fit_transform(
        vectors)


def _label_colors(values: list[str]) -> list[Any]:
    import matplotlib

    if len(values) <= len(PALETTE):
        return PALETTE[: len(values)]
    cmap = matplotlib.colormaps["tab20" if len(values) <= 20 else "hsv"]
    return [cmap(i % 20 if len(values) <= 20 else i / len(values)) for i in range(len(values))]


def embedding_map(ctx: PlotContext) -> Figure:
    from matplotlib.lines import Line2D

    sample = artifacts.load_sample(ctx.run_dir)
    if sample is None:
        raise NotRun(f"no artifacts/{artifacts.SAMPLE_FILE} in the run folder (written by "
                     "`bench run`; runs made before it existed have none)")
    names = [str(n) for n in sample["extractors"]]
    columns = [k.removeprefix("label__") for k in sample if k.startswith("label__")] or [None]
    fig = Figure(figsize=(max(8.0, 4.2 * len(columns) + 1.8), 3.4 * len(names)), dpi=DPI,
                 layout="constrained")
    axes = fig.subplots(len(names), len(columns), squeeze=False)
    method = "t-SNE" if ctx.tsne else "PC"
    for i, name in enumerate(names):
        xy = _project(sample[f"vectors_{i}"], ctx.tsne)
        for j, column in enumerate(columns):
            ax = axes[i, j]
            labels = sample[f"label__{column}"] if column else np.zeros(len(xy), dtype=str)
            values, codes = np.unique(labels, return_inverse=True)
            colors = _label_colors(values.tolist())
            ax.scatter(xy[:, 0], xy[:, 1], s=4 if len(xy) > 800 else 12, alpha=0.7, linewidths=0,
                       c=[colors[k] for k in codes])  # one call per panel: fast
            ax.set_title(f"{name}, coloured by {column}" if column else name, fontsize=10)
            ax.set_xlabel(f"{method} 1")
            ax.set_ylabel(f"{method} 2")
            ax.set_xticks([])  # map coordinates carry no unit; ticks would only cost time
            ax.set_yticks([])
            if i == 0 and column and len(values) <= 24:
                handles = [Line2D([], [], marker="o", linestyle="", color=colors[k],
                                  markersize=5, label=str(v)) for k, v in enumerate(values)]
                ax.legend(handles=handles, fontsize=7, loc="upper left",
                          bbox_to_anchor=(1.0, 1.0), frameon=False,
                          ncol=1 if len(values) <= 12 else 2)
    how = "t-SNE" if ctx.tsne else "the first two principal components"
    fig.suptitle(f"Embeddings of {len(sample['ids'])} test contents ({how}, raw vectors)",
                 fontsize=11)
    return fig


def _tile(image: np.ndarray, scale: int, color: tuple[int, int, int] | None,
          border: int) -> np.ndarray:
    big = image.repeat(scale, axis=0).repeat(scale, axis=1)
    h, w = big.shape[:2]
    out = np.full((h + 2 * border, w + 2 * border, 3), 255, dtype=np.uint8)
    if color is not None:
        out[:] = color
    out[border:border + h, border:border + w] = big
    return out


def knn_grid(ctx: PlotContext) -> Figure:
    grid = artifacts.load_grid(ctx.run_dir)
    if grid is None:
        raise NotRun(f"no artifacts/{artifacts.GRID_FILE} in the run folder (written by "
                     "`bench run`)")
    names = [str(n) for n in grid["extractors"]]
    queries = grid["query_images"]
    column = str(grid["label_column"])
    n_q, size = len(queries), queries.shape[1]
    k = grid["neighbor_images_0"].shape[1]
    scale, border, pad, header, margin = max(1, 64 // size), 3, 6, 26, 170
    cell = size * scale + 2 * border + pad
    width = margin + (k + 1) * cell + pad * 3
    block = header + len(names) * cell + pad
    canvas = np.full((n_q * block, width, 3), 255, dtype=np.uint8)
    texts = []
    green, red = (46, 160, 67), (214, 39, 40)
    for q in range(n_q):
        top = q * block
        query_label = str(grid["query_labels"][q])
        texts.append((4, top + header - 8, f"query {grid['query_ids'][q]}"
                      + (f" ({column}: {query_label})" if column else ""), "bold"))
        texts.append((margin + cell + pad * 3, top + header - 8,
                      f"top-{k} neighbours, nearest first", "normal-top"))
        for e, _name in enumerate(names):
            y = top + header + e * cell
            if e == 0:
                tile = _tile(queries[q], scale, (40, 40, 40), border)
                canvas[y:y + tile.shape[0], margin:margin + tile.shape[1]] = tile
            texts.append((4, y + cell // 2, names[e], "normal"))
            for j in range(k):
                label = str(grid[f"neighbor_labels_{e}"][q, j])
                color = None if not column else (green if label == query_label else red)
                tile = _tile(grid[f"neighbor_images_{e}"][q, j], scale, color, border)
                x = margin + (j + 1) * cell + pad * 3
                canvas[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    fig = Figure(figsize=(width / DPI, canvas.shape[0] / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest")
    for x, y, text, weight in texts:
        ax.text(x, y, text, fontsize=9, va="center" if weight == "normal" else "baseline",
                weight="bold" if weight == "bold" else "normal",
                color="#57606a" if weight == "normal-top" else "black")
    ax.set_axis_off()
    return fig


def online_offline(ctx: PlotContext) -> Figure:
    from bench.report.online import offline_online_figure

    path = ctx.run_dir / "verdicts.csv"
    if not path.is_file():
        raise NotRun("the run has no verdicts.csv (no intervals to draw)")
    return offline_online_figure(pd.read_csv(path))


PLOTS: list[tuple[str, str, str, Callable[[PlotContext], Figure]]] = [
    ("knn_consistency", "KNN consistency",
     "Share of each test content's nearest neighbours that share its label, per extractor, raw "
     "and whitened (+w); the dashed line is the chance level.", knn_consistency),
    ("recall_at_n", "Identity Recall@N",
     "Share of image-search queries whose product appears in the top N results.", recall_curves),
    ("classification_topk", "Classification top-1 / top-5",
     "Leaf-category accuracy of each backbone (linear probe, fine-tune) against a backbone "
     "trained from scratch with the same budget.", classification_topk),
    ("ctr_auc", "CTR AUC",
     "Ranking AUC of the CTR model with each extractor's image features; error bars are the "
     "seed standard deviation.", ctr_auc),
    ("ctr_cold_start", "CTR cold start",
     "The same AUCs on items first published on the evaluation day.", ctr_cold_start),
    ("ams_costs", "AMS communication and time",
     "Bytes sent between workers and servers and time per iteration, per mode (log scale).",
     ams_costs),
    ("training_loss", "Training loss",
     "Loss per epoch of the extractors trained in this run.", training_loss),
    ("moe_expert_load", "MoE expert load",
     "Share of tokens routed to each expert at the end of training; dashed: a uniform router.",
     moe_expert_load),
    ("embedding_map", "Embedding map",
     "A 2-D map of each extractor's raw embeddings of test contents, coloured by label.",
     embedding_map),
    ("whitening_sweep", "Whitening dimension sweep",
     "Each extractor's +w score for every whitening dimension k of the grid, on the test "
     "queries (a picture, not a choice: the run picks k on train rows, circled).",
     whitening_sweep),
    ("knn_grid", "KNN picture grid",
     "For a few seed contents, the query (dark frame) and its top-5 neighbours per extractor; "
     "green frame: same label as the query, red: different.", knn_grid),
]


# Tasks the plots above draw; every other task gets ``task_scores`` (no report edit needed).
DRAWN_TASKS = ("knn", "retrieval", "classify", "finetune_classify", "finetune_retrieval", "ctr",
               "online", "candidate_recall",
               "ams")


def task_scores(ctx: PlotContext, task: str) -> Figure:
    """Any task's ranked metrics (run.json ``metrics``), one panel each, rows best first."""
    part = _task(ctx, task)
    book = MetricBook.from_run_info(ctx.run_info)
    metrics = [m for m in dict.fromkeys(part["metric"]) if book.is_ranked(m)]
    if not metrics:
        raise NotRun(f"task {task!r} has no ranked metric")
    fig, axes = _grid(len(metrics))
    for ax, metric in zip(axes, metrics):
        data = part[part["metric"] == metric]
        order = data.groupby("row", sort=False)["mean"].max().sort_values(
            ascending=book.lower_is_better(metric)).index
        rank = {row: i for i, row in enumerate(order)}
        metric_bars(ax, data.sort_values("row", key=lambda rows: rows.map(rank)), metric)
        direction = "lower" if book.lower_is_better(metric) else "higher"
        ax.set_title(f"{metric} ({direction} is better)", fontsize=10)
    fig.suptitle(f"{task}: each extractor, best first", fontsize=11)
    return fig


# plots drawn only when their task is in the run (the fixture runs of the plot tests have none)
TASK_PLOTS: dict[str, tuple[str, str, str, Callable[[PlotContext], Figure]]] = {
    "online": ("online_offline", "Offline against online",
               "Each extractor arm's offline figure (ctr_auc and ctr_gauc over IDs only, knn "
               "style consistency, retrieval Recall@10) against its simulated online CTR lift "
               "over IDs only, both with 95% intervals; the title gives Kendall's tau between "
               "the two orderings with a bootstrap interval over arms (docs/online.md).",
               online_offline),
}


def recall_curves(ctx: PlotContext) -> Figure:
    from bench.report.recall import recall_figure

    return recall_figure(_task(ctx, "candidate_recall"))


TASK_PLOTS["candidate_recall"] = (
    "recall_curves", "Recall@K against K",
    "Each recall model's Recall@K for K = 50, 100, 200, with 95% intervals over users: the "
    "expected click recall (true click probabilities) on a world with a simulator, else the "
    "recall of the evaluation day's clicks. The extractors' Pre-Rank two-tower rows (left) and "
    "their i2i rows (right); popularity, random and (with a simulator) the oracle dashed in "
    "both (docs/recall.md).", recall_curves)


def default_plots(ctx: PlotContext) -> list[tuple[str, str, str, Callable[[PlotContext], Figure]]]:
    """The ``TASK_PLOTS`` of the run's tasks, then one ``task_scores`` plot for each task in
    the results that no plot above draws."""
    present = list(dict.fromkeys(map(str, ctx.stats["task"])))
    tasks = [t for t in present if t not in DRAWN_TASKS]
    return [TASK_PLOTS[t] for t in present if t in TASK_PLOTS] + [
        (f"task_{t}", f"Task {t}", f"Every ranked metric of task {t}, rows best first; "
         "error bars are the 95% interval.", lambda c, t=t: task_scores(c, t)) for t in tasks]


def _draw(key: str, title: str, caption: str, path: Path, draw: Callable[[], Figure],
          log: Callable[[str], None]) -> PlotResult:
    start = time.perf_counter()
    result = PlotResult(key, title, caption)
    try:
        fig = draw()
        fig.savefig(path, dpi=DPI, facecolor="white")
        result.path = path
    except NotRun as reason:
        result.note = f"not run: {reason}"
    except Exception as error:  # noqa: BLE001 - one broken plot must not sink the report
        result.note = f"could not be drawn: {type(error).__name__}: {error}"
        log(f"plot {key}: {result.note}")
    if result.path is None:
        path.unlink(missing_ok=True)
    result.seconds = time.perf_counter() - start
    return result


def make_glance(run_dir: Path, found: list[Any],
                log: Callable[[str], None] = lambda _: None) -> PlotResult:
    """``plots/glance.png``: :func:`glance_figure` of the answers, shown atop the page."""
    folder = Path(run_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    return _draw("glance", "Extractors by stage", GLANCE_CAPTION, folder / "glance.png",
                 lambda: glance_figure(found), log)


def make_plots(ctx: PlotContext, log: Callable[[str], None] = lambda _: None) -> list[PlotResult]:
    """Draw every plot into ``run_dir/plots/<key>.png``; stale PNGs of plots not drawn now are
    removed so the folder always matches the page."""
    folder = ctx.run_dir / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for key, title, caption, draw in [*PLOTS, *default_plots(ctx)]:
        results.append(_draw(key, title, caption, folder / f"{key}.png",
                             lambda draw=draw: draw(ctx), log))
    return results


GLANCE_CAPTION = ("Each task's main score per deployable extractor (dot) with its 95% interval "
                  "(the seed std where the run has no intervals); shaded: the tie group, the "
                  "best and every extractor it does not beat at 95% (paired test, Holm); grey "
                  "squares: reference rows, never ranked.")


def glance_figure(found: list[Any]) -> Figure:
    """The "At a glance" comparison: one panel per answer (``glance.Answer``), grouped by
    stage, rows best first, the tie group shaded, references in grey below."""
    if not found:
        raise NotRun("no task has a main score with a deployable extractor")
    ncols = min(3, len(found))  # three panels a row: titles and labels stay inside at 1400 px
    nrows = math.ceil(len(found) / ncols)
    heights = [max(len(a.rows) + len(a.references) for a in found[r * ncols:(r + 1) * ncols])
               for r in range(nrows)]
    fig = Figure(figsize=(13.5, sum(1.0 + 0.28 * h for h in heights)), dpi=DPI,
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax in axes.ravel()[len(found):]:
        ax.set_visible(False)
    for ax, answer in zip(axes.ravel(), found):
        sign = 1 if answer.lower_is_better else -1
        rows = sorted(answer.rows, key=lambda r: sign * answer.rows[r].mean)
        refs = sorted(answer.references, key=lambda r: sign * answer.references[r].mean)
        labels = rows + refs
        for y, row in enumerate(labels):
            cell = answer.rows.get(row) or answer.references[row]
            reference = row in answer.references
            if math.isfinite(cell.low) and math.isfinite(cell.high):
                err = [[max(cell.mean - cell.low, 0.0)], [max(cell.high - cell.mean, 0.0)]]
            else:
                err = [[cell.std], [cell.std]] if cell.n > 1 else None
            tied = row in answer.group.tied
            if tied:
                ax.axhspan(y - 0.45, y + 0.45, color="#DDEBF7", zorder=0)
            ax.errorbar([cell.mean], [y], xerr=err, fmt="s" if reference else "o",
                        color="#8C8C8C" if reference else ("#1F4E79" if tied else "#4C72B0"),
                        ms=5, capsize=2, lw=1.2)
        ax.set_yticks(range(len(labels)), [("★ " if r == answer.group.best else "") + r
                                           for r in labels], fontsize=8)
        for tick, row in zip(ax.get_yticklabels(), labels):
            if row in answer.references:
                tick.set_color("#6E7781")
            elif row in answer.group.tied:
                tick.set_fontweight("bold")
        if refs:
            ax.axhline(len(rows) - 0.5, color="#BBBBBB", lw=0.8, ls="--")
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.tick_params(axis="x", labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.grid(axis="x", alpha=0.3)
        arrow = " ↓" if answer.lower_is_better else ""
        detail = answer.where.removeprefix(answer.task).strip()  # the metric (variant)
        ax.set_title(f"{answer.stage}: {answer.task}\n{detail}{arrow}", fontsize=9)
    return fig
