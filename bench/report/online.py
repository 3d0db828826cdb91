"""The online section: lifts per arm, known answers, and offline against online.

Read from the run folder's ``verdicts.csv`` (values, intervals and paired differences against
each task's reference) and ``results.csv`` (the users-needed counts), nothing else:

- the lifts table: each arm's CTR, pCTCVR, IPV-per-user and new-cover-share lift over the ID-only
  arm in % with its 95% interval, expected (exact, from the true probabilities) and sampled
  (the drawn outcome), and the users per arm a real A/B needs for the CTR lift;
- the known answers: the oracle at least every arm, random order at most IDs only;
- offline against online: for the extractors with both, each offline difference (ctr_auc and
  ctr_gauc over IDs only; knn style consistency and retrieval Recall@10 as values) against the
  online CTR lift; Kendall's tau between the orderings (``scipy.stats.kendalltau``) with a
  bootstrap interval over arms (``scipy.stats.bootstrap``, paired); the smallest offline gain
  that came with a detectable lift; one "what this means" line (docs/online.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

KPIS = (("ctr", "CTR"), ("pctcvr", "pCTCVR"), ("ipv", "IPV per user"),
        ("new_share", "share of clicks on new covers, pp"))
POINTS = ("new_share",)  # compared in percentage points (bench/tasks/online.py)
OFFLINE = (("ctr", "ctr_auc", "diff", "ctr_auc over IDs only"),
           ("ctr", "ctr_gauc", "diff", "ctr_gauc over IDs only"),
           ("knn", "style_consistency", "value", "knn style consistency"),
           ("retrieval", "recall@10", "value", "retrieval Recall@10"))
POLICIES = ("oracle", "random order", "logging policy")
BOOTSTRAP_SEED = 20240611
N_RESAMPLES = 1000
Z = float(scipy.stats.norm.ppf(0.975))


@dataclass
class Kendall:
    offline: str
    tau: float
    low: float
    high: float
    n: int


def _part(verdicts: pd.DataFrame, task: str, metric: str) -> pd.DataFrame:
    part = verdicts[(verdicts["task"] == task) & (verdicts["metric"] == metric)
                    & (verdicts["variant"] == "raw")]
    return part.set_index("extractor")


def lifts_frame(verdicts: pd.DataFrame, results: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per arm: ``{kpi}`` and ``{kpi}_sampled`` lifts with ``_low``/``_high``, and
    ``users`` (the CTR lift's users per arm, mean over seeds)."""
    frames = {}
    for kpi, _ in KPIS:
        for suffix in ("", "_sampled"):
            kind = "diff" if kpi in POINTS else "lift"
            part = _part(verdicts, "online", f"online_{kpi}_{kind}{suffix}")
            frames[f"{kpi}{suffix}"] = part["value"]
            frames[f"{kpi}{suffix}_low"] = part["ci_low"]
            frames[f"{kpi}{suffix}_high"] = part["ci_high"]
            frames[f"{kpi}{suffix}_p"] = part["p_value"]
    out = pd.DataFrame(frames)
    if results is not None and len(results):
        users = results[(results["task"] == "online") & (results["metric"] == "online_ctr_users")]
        out["users"] = users.groupby("extractor")["value"].mean()
    return out.sort_values("ctr", ascending=False)


def _cell(row: pd.Series, key: str) -> str:
    value = row.get(key)
    if value is None or not np.isfinite(value):
        return "–"
    low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
    return f"{value:+.2f} [{low:+.2f}, {high:+.2f}]"


def lifts_markdown(lifts: pd.DataFrame) -> str:
    head = " | ".join(f"{label} (exp.) | {label} (sampled)" for _, label in KPIS)
    lines = ["Lift over the ID-only arm in % (the share of clicks on new covers: difference "
             "in percentage points), 95% interval paired over users (exp.: exact "
             "expected value from the true probabilities; sampled: the drawn outcome a real A/B "
             "sees); users: per arm, for an unpaired A/B to detect the expected CTR lift "
             "(two-sided 5%, power 80%):", "",
             f"| arm | {head} | users |", "|---" * (2 * len(KPIS) + 2) + "|"]
    for arm, row in lifts.iterrows():
        cells = " | ".join(f"{_cell(row, k)} | {_cell(row, k + '_sampled')}" for k, _ in KPIS)
        users = row.get("users", float("nan"))
        shown = "–" if not np.isfinite(users) else f"{users:,.0f}"
        lines.append(f"| {arm} | {cells} | {shown} |")
    return "\n".join(lines)


def known_answers(lifts: pd.DataFrame) -> list[str]:
    """The online known answers as lines: the oracle at least every arm, random order at most
    the ID-only arm (expected CTR lift)."""
    out = []
    if "oracle" in lifts.index:
        others = lifts.drop(index="oracle")["ctr"]
        ok = bool((lifts.loc["oracle", "ctr"] >= others).all())
        out.append(f"oracle >= every arm (expected CTR lift {lifts.loc['oracle', 'ctr']:+.2f}% "
                   f"vs the best other {others.max():+.2f}%): {'holds' if ok else 'FAILS'}")
    if "random order" in lifts.index:
        value = lifts.loc["random order", "ctr"]
        out.append(f"random order <= IDs only (expected CTR lift {value:+.2f}%): "
                   f"{'holds' if value <= 0 else 'FAILS'}")
    return out


def offline_online(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per extractor arm (no policy, no reference): the online CTR lift and each offline
    figure, each with its interval (``{name}``, ``{name}_low``, ``{name}_high``)."""
    online = _part(verdicts, "online", "online_ctr_lift")
    if online.empty:
        return pd.DataFrame()
    reference = online["reference"].dropna()
    skip = set(POLICIES) | set(reference.astype(str))
    frames = {"online": online["value"], "online_low": online["ci_low"],
              "online_high": online["ci_high"], "online_p": online["p_value"]}
    for task, metric, column, _ in OFFLINE:
        part = _part(verdicts, task, metric)
        if part.empty:
            continue
        low, high = ("diff_low", "diff_high") if column == "diff" else ("ci_low", "ci_high")
        frames[metric] = part[column]
        frames[f"{metric}_low"], frames[f"{metric}_high"] = part[low], part[high]
    out = pd.DataFrame(frames)
    keep = np.array([i not in skip for i in out.index]) & out["online"].notna().to_numpy()
    out = out[keep]
    return out


def kendall(x: np.ndarray, y: np.ndarray, offline: str, x_se: np.ndarray | None = None,
            y_se: np.ndarray | None = None) -> Kendall | None:
    """Kendall's tau-b (``scipy.stats.kendalltau``) of two orderings of the same arms, with a
    95% percentile bootstrap interval (``N_RESAMPLES``): each resample draws the arms with replacement and each
    drawn arm's two figures from normals with their standard errors (when given), so the
    interval holds both which arms were tried and how well each was measured. None below 3
    arms."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    x_se = np.zeros_like(x) if x_se is None else np.nan_to_num(np.asarray(x_se, float))
    y_se = np.zeros_like(y) if y_se is None else np.nan_to_num(np.asarray(y_se, float))
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, x_se, y_se = x[keep], y[keep], x_se[keep], y_se[keep]
    if len(x) < 3:
        return None
    tau = float(scipy.stats.kendalltau(x, y).statistic)
    g = np.random.default_rng(BOOTSTRAP_SEED)
    draws = np.empty(N_RESAMPLES)
    for b in range(N_RESAMPLES):
        pick = g.integers(0, len(x), len(x))
        xb = x[pick] + x_se[pick] * g.standard_normal(len(x))
        yb = y[pick] + y_se[pick] * g.standard_normal(len(x))
        value = scipy.stats.kendalltau(xb, yb).statistic
        draws[b] = value if np.isfinite(value) else 0.0
    low, high = np.percentile(draws, [2.5, 97.5])
    return Kendall(offline, tau, float(low), float(high), len(x))


def _se(frame: pd.DataFrame, name: str) -> np.ndarray:
    return ((frame[f"{name}_high"] - frame[f"{name}_low"]) / (2 * Z)).to_numpy(float)


_AGREEMENT: dict[str, list[Kendall]] = {}


def agreement(frame: pd.DataFrame) -> list[Kendall]:
    """Kendall's tau of each offline figure against the online CTR lift; computed once per
    frame (summary.md, the page and the plot all show it)."""
    key = frame.to_csv()
    if key not in _AGREEMENT:
        if len(_AGREEMENT) > 8:
            _AGREEMENT.clear()
        _AGREEMENT[key] = _agreement(frame)
    return _AGREEMENT[key]


def _agreement(frame: pd.DataFrame) -> list[Kendall]:
    out = []
    for _, metric, _, _ in OFFLINE:
        if metric in frame.columns:
            found = kendall(frame[metric].to_numpy(float), frame["online"].to_numpy(float),
                            metric, _se(frame, metric), _se(frame, "online"))
            if found is not None:
                out.append(found)
    return out


def deployable_only(frame: pd.DataFrame) -> pd.DataFrame:
    """The arms a team could ship: no known-answer ladder rung (built from the ground truth)."""
    return frame[[not str(i).startswith("ladder:") for i in frame.index]]


def smallest_detectable(frame: pd.DataFrame, metric: str = "ctr_auc") -> tuple[str, float] | None:
    """(arm, offline gain) of the smallest positive offline gain whose online CTR lift is
    above 0 at 95% (its interval's low end); None when no arm has one."""
    if metric not in frame.columns:
        return None
    hit = frame[(frame["online_low"] > 0) & (frame[metric] > 0)]
    if hit.empty:
        return None
    arm = hit[metric].idxmin()
    return str(arm), float(hit.loc[arm, metric])


def meaning(frame: pd.DataFrame, taus: list[Kendall],
            smallest: tuple[str, float] | None, n_users: int | None, days: int | None) -> str:
    """One line a team can paste into a decision."""
    auc = next((k for k in taus if k.offline == "ctr_auc"), None)
    if auc is None:
        return "What this means: too few arms with both offline and online figures to say."
    size = f"{n_users} users x {days} days" if n_users and days else "this size"
    if smallest is None:
        detect = "no offline gain came with a CTR lift detectable at 95%"
    else:
        detect = (f"an offline ctr_auc gain of {smallest[1]:+.4f} ({smallest[0]}) was the "
                  f"smallest that came with a CTR lift detectable at 95% ({size}, paired)")
    trust = ("orders arms as online CTR does" if auc.low > 0 else
             "does not reliably order arms as online CTR does")
    rungs = len(frame) - len(deployable_only(frame))
    shipped = next((k for k in agreement(deployable_only(frame)) if k.offline == "ctr_auc"),
                   None) if rungs else None
    among = "" if shipped is None else (
        f"; among the {shipped.n} deployable extractors alone tau is {shipped.tau:+.2f} "
        f"[{shipped.low:+.2f}, {shipped.high:+.2f}]"
        + (", so the offline table does not settle their online order" if shipped.low <= 0
           else ""))
    return (f"What this means: on this simulated world, offline ctr_auc {trust} (Kendall tau "
            f"{auc.tau:+.2f} [{auc.low:+.2f}, {auc.high:+.2f}] over {auc.n} arms"
            f"{f', {rungs} ladder rungs included' if rungs else ''}{among}); {detect}. Plan a "
            "real A/B with the users-per-arm column, not with the paired interval.")


def ladder_line(validity: pd.DataFrame | None, metric: str = "online_ctr_lift") -> str:
    """The ladder's order on the online CTR lift, from validity.csv; "" without a ladder."""
    if validity is None or "check" not in validity.columns:
        return ""
    rows = validity[(validity["task"] == "online") & (validity["check"] == "ladder")
                    & (validity["metric"].isin([metric, f"{metric}_sampled"]))]
    parts = [f"{r.metric}: {r.rungs}, {'in order' if r.in_order else 'OUT OF ORDER'}, "
             f"{r.adjacent_separated} of {r.adjacent_pairs} adjacent pairs separated at 95%"
             for r in rows.itertuples(index=False)]
    return ("Ladder online (" + "; ".join(parts) + ").") if parts else ""


def online_markdown(verdicts: pd.DataFrame | None, results: pd.DataFrame | None,
                    run_info: dict[str, Any], validity: pd.DataFrame | None = None) -> str:
    """The online section's text below its table; "" when the run has no online rows."""
    if verdicts is None or "online" not in set(verdicts["task"]):
        return ""
    lifts = lifts_frame(verdicts, results)
    if lifts.empty:
        return ""
    frame = offline_online(verdicts)
    taus = agreement(frame)
    smallest = smallest_detectable(frame)
    options = run_info.get("dataset_options", {}) or {}
    days = None
    if results is not None:
        rows = results[(results["task"] == "online") & (results["metric"] == "online_days")]
        days = int(rows["value"].max()) if len(rows) else None
    parts = [lifts_markdown(lifts), "",
             "Known answers online: " + "; ".join(known_answers(lifts)) + "."]
    ladder = ladder_line(validity)
    if ladder:
        parts += ["", ladder]
    if taus:
        deployable = {k.offline: k for k in agreement(deployable_only(frame))}
        parts += ["", "Offline against online CTR lift (Kendall tau-b, 95% bootstrap interval "
                  "over arms and their measurement error), over every extractor arm and over "
                  "the deployable ones (no ladder rung):", "",
                  "| offline figure | tau, all arms | arms | tau, deployable | arms |",
                  "|---|---|---|---|---|"]
        labels = {metric: label for _, metric, _, label in OFFLINE}
        for k in taus:
            d = deployable.get(k.offline)
            shown = "–" if d is None else f"{d.tau:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
            parts.append(f"| {labels[k.offline]} | {k.tau:+.3f} [{k.low:+.3f}, {k.high:+.3f}] "
                         f"| {k.n} | {shown} | {0 if d is None else d.n} |")
    parts += ["", meaning(frame, taus, smallest, options.get("n_users"), days)]
    return "\n".join(parts)


def offline_online_figure(verdicts: pd.DataFrame) -> Any:
    """One panel per offline figure: each extractor arm's offline figure (x) against its online
    CTR lift (y), both with their 95% intervals, and the panel's Kendall tau."""
    from matplotlib.figure import Figure

    frame = offline_online(verdicts)
    panels = [(m, label) for _, m, _, label in OFFLINE if m in frame.columns
              and frame[m].notna().sum() >= 2]
    if frame.empty or not panels:
        from bench.report.plots import NotRun

        raise NotRun("the run has no online rows beside offline ones (tasks online and ctr)")
    taus = {k.offline: k for k in agreement(frame)}
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(6.2 * ncols, 4.6 * nrows), dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax, (metric, label) in zip(axes.ravel(), panels):
        part = frame[frame[metric].notna()]
        x, y = part[metric].to_numpy(float), part["online"].to_numpy(float)
        xerr = np.abs(np.vstack([x - part[f"{metric}_low"], part[f"{metric}_high"] - x]))
        yerr = np.abs(np.vstack([y - part["online_low"], part["online_high"] - y]))
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", ms=4, capsize=2, lw=0.8)
        for name, xi, yi in zip(part.index, x, y):
            ax.annotate(str(name), (xi, yi), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.axhline(0, color="grey", lw=0.6, ls="--")
        found = taus.get(metric)
        title = label if found is None else (f"{label}\nKendall tau {found.tau:+.2f} "
                                             f"[{found.low:+.2f}, {found.high:+.2f}]")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("online CTR lift over IDs only (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    return fig
