"""The Results section of the study page (docs/study.md) from the study's variants: each
variant's run record (``run.json``: settings, seconds, date, machine) and comparison report
(``compare.json``, :mod:`dsod_core.report.compare`). :func:`results_section` writes the
Markdown between the markers :data:`BEGIN` and :data:`END`; :func:`splice_section` puts it
into a page's text in place of the previous one."""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from dsod_core.report.claims import claims
from dsod_core.report.compare import (
    apply_family,
    fmt_mean_std,
    group_key,
    primary_index,
    transfer_matrix,
)

BEGIN = "<!-- study results: begin (written by python -m pipelines.study; edit study.yaml) -->"
END = "<!-- study results: end -->"


def minutes(seconds: float) -> str:
    """``12 min``: a wall time as the study page gives it."""
    return f"{seconds / 60:.0f} min"


# long: the Results section as one linear Markdown template, table by table
def results_section(
    runs: dict[str, dict[str, Any]],
    reports: dict[str, dict[str, Any]],
    pictures: list[str],
    link: str,
) -> str:
    """The Markdown of the Results section, markers included. ``runs`` and ``reports``: the
    run record and the comparison report of each variant, in the page's order (the first
    variant's report gives the tables); ``pictures``: the file names of the first variant's
    data-efficiency images; ``link``: the variants' folder relative to the page."""
    found = list(runs)
    if not found:
        raise ValueError("no variant has results")
    first = found[0]
    total = sum(r["seconds"] for r in runs.values())
    lines = [
        BEGIN,
        "",
        "## Results",
        "",
        f"Command: `make study` (`python -m pipelines.study`, settings in `study.yaml`), "
        f"run {runs[first]['date'][:10]} on {runs[first]['machine']}. Wall time "
        + ", ".join(f"{v} {minutes(runs[v]['seconds'])}" for v in found)
        + f" ({minutes(total)} in all; stages whose inputs were unchanged did not run again).",
        "",
        "| variant | params set |",
        "|---|---|",
    ]
    for v in found:
        shown = ", ".join(f"`{k}={json.dumps(x)}`" for k, x in runs[v]["settings"].items())
        lines.append(f"| {v} | {shown} |")
    rep = reports[first]
    family = study_family(reports, first)
    lines += [
        "",
        "### Every comparison (all variants, one family)",
        "",
        "mAP@0.5 difference fine-tuned − the other arm (`scratch`: the same target training; "
        "`matched`: the same total image passes, source pretraining included), mean over paired "
        "seeds, with the interval of docs/study.md. The declared primary comparison (the first "
        "variant's `comparison.primary`) keeps its own interval; every other one, in every "
        "variant, is adjusted over the whole study: Holm p and a Bonferroni interval (*).",
        "",
        "| variant | dataset | source | fraction | against | image passes (fine-tuned / other) "
        "| seeds | units | difference | interval | p | Holm p |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in family:
        low, high = d["ci95"] if d["primary"] else d["ci_adjusted"]
        b = d["budget"]
        lines.append(
            f"| {d['variant']} | {d['dataset']} | {d['source']}"
            f"{' (self)' if d['self_transfer'] else ''} | {d['train_fraction']:g} "
            f"| {d['against']} | {_n(b.get('finetuned'))} / {_n(b.get('against'))} "
            f"| {d['n_seeds']} | {d['n_units']} | {d['diff_mean']:+.3f} "
            f"| [{low:+.3f}, {high:+.3f}]{'' if d['primary'] else '*'} | {d['p']:.3f} "
            f"| {'primary' if d['primary'] else format(d['p_holm'], '.3f')} |"
        )
    lines += ["", " ".join(claims({"differences": family}))]
    full, table = transfer_matrix(rep["differences"])
    lines += ["", f"### Transfer matrix ({first}, train fraction {full:g})", "", *table]
    lines += ["", f"### Data efficiency ({first})", ""]
    for name in pictures:
        lines.append(f"![{PurePosixPath(name).stem}]({link}/{first}/data_efficiency/{name})")
    if len(found) > 1:
        keys = list(dict.fromkeys(group_key(a) for v in found for a in reports[v]["aggregates"]))
        by = {v: {group_key(a): a for a in reports[v]["aggregates"]} for v in found}
        lines += [
            "",
            "### Ablation",
            "",
            "Test mAP@0.5, mean ± std over seeds, per variant (separate experiments, so no paired "
            "interval: compare the differences with the seed spread).",
            "",
            "| dataset | init | source | train fraction | " + " | ".join(found) + " |",
            "|---|---|---|---|" + "---|" * len(found),
        ]
        for key in keys:
            cells = []
            for v in found:
                a = by[v].get(key)
                cells.append("–" if a is None else fmt_mean_std(a["map50_mean"], a["map50_std"]))
            dataset, init, source, fraction = key
            lines.append(
                f"| {dataset} | {init} | {source or '–'} | {fraction:g} | "
                + " | ".join(cells)
                + " |"
            )
    lines += [
        "",
        "Full reports: " + ", ".join(f"[{v}]({link}/{v}/report.md)" for v in found) + ".",
        "",
        END,
    ]
    return "\n".join(lines)


def _n(x: float | None) -> str:
    return "?" if x is None else f"{x:,.0f}"


def study_family(reports: dict[str, dict[str, Any]], first: str) -> list[dict[str, Any]]:
    """Every difference of every variant, as one family: the first variant's declared primary
    comparison unadjusted, all the others Holm/Bonferroni-adjusted over the whole study
    (:func:`dsod_core.metrics.bootstrap.adjust_family` on each difference's stored ``terms``)."""
    diffs = []
    for variant, rep in reports.items():
        for d in rep["differences"]:
            if "terms" not in d:
                raise ValueError(
                    f"the {variant} report predates the study's interval terms: run make study"
                )
            diffs.append({**d, "variant": variant})
    primary = primary_index(
        [d for d in diffs if d["variant"] == first], reports[first].get("primary")
    )
    level = diffs[0]["level"] if diffs else 0.95
    apply_family(diffs, [dict(d["terms"]) for d in diffs], primary, level)
    return diffs


def splice_section(text: str, section: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with the part between the markers ``begin`` and ``end`` (both included)
    replaced by ``section``; ``section`` appended when the markers are not both there."""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        return head + section + tail
    return text.rstrip("\n") + "\n\n" + section + "\n"
