"""The ctr section's known-answer ablation: the DICM paper's numbers beside this run's.

Ge et al. (CIKM 2018) report, on their data, that both image paths help and most together
(GAUC: IDs only 0.6205, ad image 0.6235, behaviour images 0.6219, both 0.6260). On a ladder rung
(images that carry what the users click on) the ctr harness must reproduce that order;
``validity.csv`` holds the paired tests (``check`` = ``ablation``,
:func:`bench.scoring.verdicts.ablation_validity`), ``verdicts.csv`` the values shown here.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

PAPER_GAUC = {"IDs only": 0.6205, "[ad]": 0.6235, "[behavior]": 0.6219, "dicm": 0.6260}


def ctr_ablation_markdown(validity: pd.DataFrame | None, verdicts: pd.DataFrame | None,
                          run_info: dict[str, Any]) -> str:
    """Per ladder rung with the ablation: the paper's GAUC and this run's ``ctr_gauc`` and main
    score per configuration, and the order's verdict; "" when the run has no such rows."""
    if validity is None or verdicts is None or "check" not in validity.columns:
        return ""
    metric = run_info.get("main_scores", {}).get("ctr", "ctr_auc")
    rows = validity[(validity["check"] == "ablation") & (validity["task"] == "ctr")
                    & (validity["metric"] == metric)]
    if rows.empty:
        return ""
    part = verdicts[verdicts["task"] == "ctr"]
    reference = part["reference"].dropna()
    ids = str(reference.iloc[0]) if len(reference) else "none (ids only)"
    lines = ["The DICM paper's ablation as a known answer (Ge et al., CIKM 2018: both image "
             "paths help, most together); paired tests at 95% in validity.csv:", "",
             f"| rung | variant | configuration | paper GAUC | ctr_gauc | {metric} |",
             "|---|---|---|---|---|---|"]
    for r in rows.itertuples(index=False):
        rung = str(r.rungs).split(": ")[0]
        names = {"IDs only": ids, "[ad]": f"{rung} [ad]", "dicm": rung,
                 "[behavior]": next((e for e in part["extractor"].unique()
                                     if str(e).startswith(f"{rung} [behavior")), "")}
        for label in ("IDs only", "[ad]", "[behavior]", "dicm"):
            values = [_value(part, names[label], r.variant, m) for m in ("ctr_gauc", metric)]
            lines.append(f"| {rung} | {r.variant} | {label} | {PAPER_GAUC[label]:.4f} | "
                         + " | ".join("–" if v is None else f"{v:.4f}" for v in values) + " |")
        lines.append(f"| {rung} | {r.variant} | order | dicm > [behavior] > IDs; [ad] > IDs | "
                     f"{r.adjacent_separated} of {r.adjacent_pairs} better at 95% | "
                     f"{r.verdict} |")
    return "\n".join(lines)


def _value(verdicts: pd.DataFrame, extractor: str, variant: str, metric: str) -> float | None:
    hit = verdicts[(verdicts["extractor"] == extractor) & (verdicts["variant"] == variant)
                   & (verdicts["metric"] == metric)]
    return None if hit.empty else float(hit["value"].iloc[0])
