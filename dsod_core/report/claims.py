"""What a comparison may claim, in words generated from its report (README's Results).

The README's Results section is written from the committed ``results/comparison.json`` (the
compare stage's compact report) by ``python -m pipelines.docs_results``, between the markers
:data:`BEGIN` and :data:`END`; ``tests/test_docs_results.py`` fails when the two disagree, so
no figure in it is copied by hand. :func:`claims` gives the three sentences: the primary
comparison, the adjusted others, and what the study cannot show at its seeds and units.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsod_core.report.budget import budget_words

BEGIN = "<!-- results: begin (written by python -m pipelines.docs_results; do not edit) -->"
END = "<!-- results: end -->"


def _verdict(low: float, high: float) -> str:
    if low <= 0.0 <= high:
        return "the interval contains 0, so no difference is shown"
    return "fine-tuned is better" if low > 0 else "scratch is better"


def _against(d: dict[str, Any]) -> str:
    return "compute-matched scratch" if d["against"] == "matched" else "scratch"


def _where(d: dict[str, Any]) -> str:
    variant = f" (variant {d['variant']})" if d.get("variant") else ""
    return (
        f"{d['dataset']} from {d['source']} at train fraction {d['train_fraction']:g} against "
        f"{_against(d)}{variant}"
    )


def claims(report: dict[str, Any]) -> list[str]:
    """Three sentences: the primary comparison's result with its budget; how many of the other
    comparisons exclude 0 after the Holm/Bonferroni adjustment (named); the resolution the
    seeds and test units allow (the median half-width of the intervals) and what the data are."""
    diffs = report["differences"]
    primary = next((d for d in diffs if d.get("primary")), None)
    pct = round(diffs[0]["level"] * 100) if diffs else 95
    if primary is None:
        first = (
            "No primary comparison was declared (`comparison.primary`), so every interval is "
            "adjusted."
        )
    else:
        low, high = primary["ci95"]
        first = (
            f"The declared primary comparison, fine-tuned from {primary['source']} against "
            f"{_against(primary)} on {primary['dataset']} at train fraction "
            f"{primary['train_fraction']:g} ({budget_words(primary)}), gives "
            f"{primary['diff_mean']:+.3f} mAP@0.5 ({pct}% CI {low:+.3f} to {high:+.3f}, "
            f"{primary['n_seeds']} seeds, {primary['n_units']} test units): {_verdict(low, high)}."
        )
    others = [d for d in diffs if not d.get("primary")]
    clear = [d for d in others if not (d["ci_adjusted"][0] <= 0.0 <= d["ci_adjusted"][1])]
    if not others:
        second = "There is no other comparison."
    elif not clear:
        second = (
            f"None of the other {len(others)} comparisons excludes 0 once adjusted for "
            "multiplicity (Holm p, Bonferroni intervals)."
        )
    else:
        named = "; ".join(
            f"{_where(d)} ({d['diff_mean']:+.3f}, {_verdict(*d['ci_adjusted'])})" for d in clear
        )
        second = (
            f"Of the other {len(others)} comparisons, {len(clear)} "
            f"{'excludes' if len(clear) == 1 else 'exclude'} 0 once adjusted for "
            f"multiplicity (Holm p, Bonferroni intervals): {named}."
        )
    half = [(d["ci95"][1] - d["ci95"][0]) / 2 for d in diffs]
    seeds = sorted({d["n_seeds"] for d in diffs})
    units = sorted({d["n_units"] for d in diffs})
    third = (
        f"With {'/'.join(map(str, seeds))} seeds and {min(units)}–{max(units)} test units the "
        f"unadjusted {pct}% intervals have a median half-width of "
        f"{float(np.median(half)) if half else float('nan'):.3f} mAP@0.5, so smaller differences "
        "are neither shown nor ruled out; these are the project's synthetic demo sets, not "
        "evidence about real depth, CT or satellite data."
    )
    return [first, second, third]


def _cell(agg: dict[tuple, dict], key: tuple) -> str:
    a = agg.get(key)
    if a is None or a.get("map50_mean") is None:
        return "–"
    std = a.get("map50_std")
    return f"{a['map50_mean']:.3f}" + ("" if std is None else f" ± {std:.3f}")


def _diff_cell(d: dict[str, Any] | None) -> str:
    if d is None:
        return "–"
    low, high = d["ci95"] if d.get("primary") else d["ci_adjusted"]
    mark = " (primary)" if d.get("primary") else "*"
    return f"{d['diff_mean']:+.3f} [{low:+.3f}, {high:+.3f}]{mark}"


def _arm_cell(agg: dict[tuple, dict], key: tuple) -> str:
    """``0.630 ± 0.029 (2,688)``: an arm's mean ± std test mAP@0.5 and its image passes."""
    cell = _cell(agg, key)
    n = (agg.get(key) or {}).get("image_passes_mean")
    return cell if n is None or cell == "–" else f"{cell} ({n:,.0f})"


def results_table(report: dict[str, Any]) -> list[str]:
    """One row per target, source and train fraction: train images, each arm's mean ± std
    test mAP@0.5 with its image passes, and both differences with their intervals."""
    agg = {
        (a["dataset"], a["init"], a["source"], a["train_fraction"]): a for a in report["aggregates"]
    }
    by = {
        (d["dataset"], d["source"], d["train_fraction"], d["against"]): d
        for d in report["differences"]
    }
    lines = [
        "| dataset | channels | source | fraction | train images | scratch | matched scratch "
        "| fine-tuned | fine-tuned − matched | fine-tuned − scratch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in dict.fromkeys((d["dataset"], d["source"], d["train_fraction"]) for d in by.values()):
        dataset, source, fraction = key
        s = agg.get((dataset, "scratch", None, fraction), {})
        cells = [
            _arm_cell(agg, (dataset, "scratch", None, fraction)),
            _arm_cell(agg, (dataset, "matched", source, fraction)),
            _arm_cell(agg, (dataset, "finetuned", source, fraction)),
            _diff_cell(by.get((*key, "matched"))),
            _diff_cell(by.get((*key, "scratch"))),
        ]
        lines.append(
            f"| {dataset} | {s.get('channels', '–')} | {source} | {fraction:g} "
            f"| {s.get('train_images', 0):.0f} | " + " | ".join(cells) + " |"
        )
    return lines


def readme_section(report: dict[str, Any]) -> str:
    """The README's generated block: the table, a legend and the three sentences."""
    pct = round(report["differences"][0]["level"] * 100) if report["differences"] else 95
    lines = [
        BEGIN,
        "",
        *results_table(report),
        "",
        f"Test mAP@0.5 (VOC07 11-point), mean ± std over seeds, with each arm's image passes "
        "(optimiser steps × global batch; a fine-tuned run's include its source model's) in "
        f"brackets. Differences: mean over paired seeds with the {pct}% interval of "
        "[the study](docs/study.md) — the primary comparison's own interval, every other one "
        "Bonferroni-adjusted (*). Generated from `results/comparison.json`.",
        "",
        " ".join(claims(report)),
        "",
        END,
    ]
    return "\n".join(lines)
