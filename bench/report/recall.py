"""The recall section's plot: Recall@K against K per extractor (docs/recall.md).

Read from the aggregated results (``tables.aggregate``: mean over seeds and the 95% interval
from verdicts.csv), nothing else: one panel for the Pre-Rank two-tower rows (each extractor, IDs
only) and one for the i2i rows, popularity, random and (with a simulator) the oracle drawn in
both as the references. The recall drawn is the task's main-score family: the expected click
recall where the run has it (a world with a simulator), else the logged clicks' recall.
"""

from __future__ import annotations

import re

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

TASK = "candidate_recall"
METRIC = re.compile(r"^click_recall@(\d+)$")
EXPECTED = re.compile(r"^expected_click_recall@(\d+)$")
REFERENCES = ("popularity recall", "random recall", "oracle recall (true clicks)")
GREYS = {"popularity recall": "0.45", "random recall": "0.45",
         "oracle recall (true clicks)": "0.1"}  # the references' lines


def family(stats: pd.DataFrame) -> re.Pattern[str]:
    """``expected_click_recall@K`` when the run has it (a simulator), else ``click_recall@K``."""
    part = stats[stats["task"] == TASK]
    return EXPECTED if part["metric"].map(lambda m: bool(EXPECTED.match(m))).any() else METRIC


def curves(stats: pd.DataFrame) -> pd.DataFrame:
    """Rows: extractor, k, mean, low, high of the recall :func:`family` (raw variant)."""
    part = stats[(stats["task"] == TASK) & (stats["variant"] == "raw")].reset_index(drop=True)
    pattern = family(stats)
    k = part["metric"].map(lambda m: int(match.group(1)) if (match := pattern.match(m))
                           else None)
    part = part.assign(k=k).dropna(subset=["k"])
    low = part["ci_low"] if "ci_low" in part else part["mean"]
    high = part["ci_high"] if "ci_high" in part else part["mean"]
    return pd.DataFrame({"extractor": part["extractor"], "k": part["k"].astype(int),
                         "mean": part["mean"], "low": low.fillna(part["mean"]),
                         "high": high.fillna(part["mean"])}).sort_values(["extractor", "k"])


def recall_figure(stats: pd.DataFrame) -> Figure:
    """Two panels (two-tower, i2i) of Recall@K against K with 95% interval bars."""
    data = curves(stats)
    if data.empty:
        raise ValueError(f"no {TASK} click_recall@K rows")
    fig = Figure(figsize=(11.0, 4.4), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    names = list(dict.fromkeys(data["extractor"]))
    panels = (("Pre-Rank two-tower (and IDs only)", [n for n in names if not n.endswith(
        " [i2i]") and n not in REFERENCES]), ("i2i (FAISS neighbours of the history)",
                                             [n for n in names if n.endswith(" [i2i]")]))
    palette = matplotlib.colormaps["tab20"]  # more lines than the default cycle's 10 colours
    colour = {name.removesuffix(" [i2i]"): palette(i % 20) for i, name in enumerate(
        dict.fromkeys(n.removesuffix(" [i2i]") for n in names))}
    for ax, (title, rows) in zip(axes, panels):
        for name in [*rows, *REFERENCES]:
            line = data[data["extractor"] == name]
            if line.empty:
                continue
            reference = name in REFERENCES or name == "none (ids only)"
            ax.errorbar(line["k"], line["mean"], yerr=[line["mean"] - line["low"],
                                                       line["high"] - line["mean"]],
                        marker="o", ms=3, capsize=2, lw=1.2,
                        ls="--" if reference else "-",
                        color=GREYS.get(name) or colour[name.removesuffix(" [i2i]")],
                        label=name.removesuffix(" [i2i]"))
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(data["k"].unique()), [str(k) for k in sorted(data["k"].unique())])
        ax.set_xlabel("K (candidates per user)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    axes[0].set_ylabel("expected Recall@K (true click probabilities)" if family(stats)
                       is EXPECTED else "Recall@K of the evaluation day's clicks")
    return fig
