"""The Results section of the study page (docs/study.md) from the study's variants: each
variant's run record (``run.json``: settings, seconds, date, machine) and comparison report
(``compare.json``, :mod:`dsod_core.report.compare`). :func:`results_section` writes the
Markdown between the markers :data:`BEGIN` and :data:`END`; :func:`splice_section` puts it
into a page's text in place of the previous one."""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from dsod_core.report.compare import fmt_mean_std, group_key, transfer_matrix

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
    lines += [
        "",
        f"### Fine-tuned − scratch ({first})",
        "",
        "mAP@0.5 difference, mean over seeds, with the 95% paired cluster-bootstrap interval "
        "over test units and seeds.",
        "",
        "| dataset | source | train fraction | train images | seeds | test units "
        "| scratch | fine-tuned | difference | 95% CI |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    agg = {group_key(a): a for a in rep["aggregates"]}
    for d in rep["differences"]:
        s = agg.get((d["dataset"], "scratch", None, d["train_fraction"]), {})
        f = agg.get((d["dataset"], "finetuned", d["source"], d["train_fraction"]), {})
        low, high = d["ci95"]
        lines.append(
            f"| {d['dataset']} | {d['source']}{' (self)' if d['self_transfer'] else ''} "
            f"| {d['train_fraction']:g} | {s.get('train_images', 0):.0f} | {d['n_seeds']} "
            f"| {d['n_units']} | {fmt_mean_std(s.get('map50_mean'), s.get('map50_std'))} "
            f"| {fmt_mean_std(f.get('map50_mean'), f.get('map50_std'))} | {d['diff_mean']:+.3f} "
            f"| [{low:+.3f}, {high:+.3f}] |"
        )
    lines += [""] + [
        f"- {d['dataset']} from {d['source']}, fraction {d['train_fraction']:g}: {d['statement']}"
        for d in rep["differences"]
    ]
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


def splice_section(text: str, section: str) -> str:
    """``text`` with the part between the markers (both included) replaced by ``section``;
    ``section`` appended when the markers are not both there."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        return head + section + tail
    return text.rstrip("\n") + "\n\n" + section + "\n"
