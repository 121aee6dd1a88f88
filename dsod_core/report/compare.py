"""The scratch-vs-fine-tuned comparison of evaluated runs (the format of docs/study.md).

A run row (:func:`load_run_row`) is what the evaluate stage wrote into a run's folder
(``detail.json``, ``history.json``) plus the keys that identify it (``init``, ``source``,
``seed``, ``train_fraction``). From the rows of every run and seed :func:`build_report`
makes the report object: ``runs``, ``aggregates`` (mean and std over seeds per dataset, init,
source and fraction), ``differences`` (fine-tuned − scratch per dataset, source and fraction:
the mean over seeds and a 95% paired cluster-bootstrap interval over the test set's source
units and the seeds, from each run's ``matches.npz``, :mod:`dsod_core.metrics.bootstrap`) and
``sources`` (the source models on their own test sets). :func:`markdown` renders it as
tables with the target x source matrix (:func:`transfer_matrix`), :func:`summary` flattens
it into the small metric file and :func:`plot_report` draws its images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dsod_core.diagnostics import collapse_check
from dsod_core.errors import DataError
from dsod_core.metrics.bootstrap import adjust_family, seed_test_interval
from dsod_core.metrics.plots import plot_comparison, plot_curves
from dsod_core.metrics.voc import ResampledVOC
from dsod_core.report.budget import (
    ARMS,
    arm_label,
    budget_curve,
    budget_words,
    mean_budget,
    plot_budget,
    row_budget,
)

REPLICATES = 1000  # bootstrap replicates per difference
TERMS = ("diff", "test_se", "test_df", "seed_se", "seed_df")  # an interval's parts

# The chart folders under the plots folder that hold one image per dataset.
PLOT_FOLDERS = ("val_map50", "train_loss", "data_efficiency", "budget")
RUNS_PICTURE = "runs (first seed, all data)"  # the comparison chart's name in the report


def epochs_to_fraction(history: list[dict[str, Any]], fraction: float = 0.9) -> int | None:
    """First epoch whose validation mAP@0.5 reaches ``fraction`` of the final one."""
    curve = [(h["epoch"], h["val_map50"]) for h in history if h.get("val_map50") is not None]
    if not curve:
        return None
    final = curve[-1][1]
    return next(e for e, m in curve if m >= fraction * final)


def load_run_row(folder: Path, **keys: Any) -> dict[str, Any]:
    """One report row of the evaluated run in ``folder`` (its ``detail.json`` and
    ``history.json``), ``keys`` first; ``folder`` is kept for its match table."""
    path = folder / "detail.json"
    if not path.is_file():
        raise DataError("metrics of run missing (did evaluate run?)", path=path)
    m = json.loads(path.read_text())
    history = json.loads((folder / "history.json").read_text())
    budget = row_budget(m, keys.get("init", ""))
    return {
        **keys,
        "dataset": m["dataset"],
        "modality": m["modality"],
        "train_images": m.get("train_images"),
        "map50": m["map50"],
        "coco_ap": m["coco_ap"],
        "map50_area": m["map50_area"],
        "coco_ap50": m["coco_ap50"],
        "per_class_ap50": m["per_class_ap50"],
        "params": m["params"],
        "train_seconds": round(m["train_seconds"], 1),
        "epochs": m["epochs"],
        "epochs_to_90pct": epochs_to_fraction(history),
        "channels": len(m["channels"]),
        "curve": [[h["epoch"], h.get("val_map50")] for h in history],
        "loss": [[h["epoch"], h.get("loss")] for h in history],
        # the evaluate stage's check (test predictions included); older runs: from the history
        "collapse": m.get("collapse") or collapse_check(history, map50=m["map50"]),
        **budget,
        "budget_curve": budget_curve(history, budget),
        "folder": folder.as_posix(),
    }


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the report shows it (without its folder)."""
    return {k: v for k, v in row.items() if k != "folder"}


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    if len(vals) == 1:
        return round(vals[0], 4), None  # one seed: no spread to report (not a spread of 0)
    return round(float(np.mean(vals)), 4), round(float(np.std(vals, ddof=1)), 4)


def group_key(row: dict[str, Any]) -> tuple:
    """What the seeds of one run share (a run row's or an aggregate row's identity): dataset,
    init, source, train fraction."""
    return row["dataset"], row["init"], row["source"], row["train_fraction"]


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(group_key(r), []).append(r)
    return out


def aggregate(rows: list[dict]) -> list[dict[str, Any]]:
    """Mean and std (over seeds, ddof 1) per dataset, init, source and train fraction."""
    out = []
    for (dataset, init, source, fraction), runs in _groups(rows).items():
        m_mean, m_std = _mean_std([r["map50"] for r in runs])
        c_mean, c_std = _mean_std([r["coco_ap"] for r in runs])
        out.append(
            {
                "dataset": dataset,
                "modality": runs[0]["modality"],
                "init": init,
                "source": source,
                "train_fraction": fraction,
                "train_images": _mean_std([r["train_images"] for r in runs])[0],
                "n_seeds": len(runs),
                "channels": runs[0].get("channels"),
                "map50_mean": m_mean,
                "map50_std": m_std,
                "coco_ap_mean": c_mean,
                "coco_ap_std": c_std,
                "image_passes_mean": mean_budget(runs),
            }
        )
    return out


def _collapsed(row: dict[str, Any]) -> bool:
    return bool((row.get("collapse") or {}).get("collapsed"))


def did_not_learn(arm: str, runs: list[dict[str, Any]]) -> str | None:
    """``scratch did not learn: mAP@0.5 0.000, scores constant (0.124 ± 0.000), loss 5.1 ->
    5.0`` for an arm with a collapsed seed (the seeds named when not all of them); None when
    every seed learnt (:func:`dsod_core.diagnostics.collapse_check`)."""
    bad = [r for r in runs if _collapsed(r)]
    if not bad:
        return None
    seeds = (
        ""
        if len(bad) == len(runs) == 1
        else (f" (seed {', '.join(str(r['seed']) for r in bad)} of {len(runs)})")
    )
    return f"{arm} did not learn{seeds}: {bad[0]['collapse']['summary']}"


def collapse_statement(
    scratch: list[dict[str, Any]],
    tuned: list[dict[str, Any]],
    source: str,
    scratch_name: str = "scratch",
) -> tuple[list[str], str | None]:
    """(the arms that did not learn, the report's sentence for them): a difference with a
    collapsed arm compares a model that learnt nothing, so its interval says nothing about
    the initialisations and is not phrased as one."""
    arms = [(scratch_name, scratch), (f"fine-tuned from {source}", tuned)]
    found = [(name, did_not_learn(name, runs)) for name, runs in arms]
    found = [(name, text) for name, text in found if text]
    if not found:
        return [], None
    sentence = "; ".join(text for _, text in found) + (
        " — not a comparison of the initialisations (fix the run first: docs/training.md)"
    )
    return [name for name, _ in found], sentence


def load_matches(folder: str | Path) -> dict[str, np.ndarray]:
    """The VOC match table the evaluate stage saved in a run's folder (``matches.npz``)."""
    path = Path(folder) / "matches.npz"
    if not path.is_file():
        raise DataError("match table missing (re-run the evaluate stage)", path=path)
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _metric(table: ResampledVOC):
    n = table.num_images
    return lambda positions: table.map(np.bincount(positions, minlength=n))


def _paired_tables(
    arm_a: dict[int, dict], arm_b: dict[int, dict]
) -> tuple[list[int], list, list, np.ndarray]:
    """(the seeds both arms ran, arm a's and arm b's metric per seed, the test units): the
    runs' match tables, checked to score the same test images."""
    seeds = [s for s in arm_b if s in arm_a]
    tables_a, tables_b, units, index = [], [], None, None
    for s in seeds:
        for row, sink in ((arm_a[s], tables_a), (arm_b[s], tables_b)):
            m = load_matches(row["folder"])
            if units is None:
                units, index = m["unit"], m["index"]
            elif not (np.array_equal(m["index"], index) and np.array_equal(m["unit"], units)):
                raise DataError(
                    "runs were scored on different test images; re-run evaluate",
                    path=Path(row["folder"]) / "matches.npz",
                )
            sink.append(_metric(ResampledVOC.from_matches(m)))
    return seeds, tables_a, tables_b, units


def contrast(
    tuned: dict[int, dict],
    other: dict[int, dict],
    against: str,
    key: tuple,
    replicates: int,
    level: float,
) -> dict[str, Any]:
    """Fine-tuned − ``against`` (``scratch``: the same target training; ``matched``: the same
    total image passes) for one (dataset, source, fraction): the mean over paired seeds, its
    interval (test units and seeds, :func:`dsod_core.metrics.bootstrap.seed_test_interval`)
    and each arm's budget."""
    dataset, source, fraction = key
    seeds, tables_a, tables_b, units = _paired_tables(other, tuned)
    result = seed_test_interval(
        [str(u) for u in units], tables_a, tables_b, replicates=replicates, seed=0, level=level
    )
    name = "scratch" if against == "scratch" else "matched scratch"
    failed, sentence = collapse_statement(
        [other[s] for s in seeds], [tuned[s] for s in seeds], source, name
    )
    tuned_runs = [tuned[s] for s in seeds]
    return {
        "dataset": dataset,
        "source": source,
        "train_fraction": fraction,
        "against": against,
        "self_transfer": source == dataset,
        "n_seeds": result["n_seeds"],
        "n_units": result["n_units"],
        "n_images": int(len(units)),
        "diff_mean": round(result["diff"], 4),
        "ci95": clipped(result["ci"]),
        "level": result["level"],
        "se": round(result["se"], 5),
        "df": round(result["df"], 2),
        "contains_zero": result["contains_zero"],
        "seed_diffs": [round(v, 4) for v in result["seed_diffs"]],
        "method": result["method"],
        "note": result.get("note"),
        # what the interval is made of, so a report of several experiments can adjust them
        # as one family again (dsod_core.report.study)
        "terms": {k: result[k] for k in TERMS},
        "budget": {
            "finetuned": mean_budget(tuned_runs),
            "finetuned_source": mean_budget(
                [{"total_image_passes": r.get("source_image_passes")} for r in tuned_runs]
            ),
            "against": mean_budget([other[s] for s in seeds]),
            "source_kind": "checkpoint" if tuned_runs[0].get("source_checkpoint") else "model",
        },
        "did_not_learn": failed,
        "_result": result,
        "_sentence": sentence,
    }


def differences(
    rows: list[dict],
    replicates: int = REPLICATES,
    primary: dict[str, Any] | None = None,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Fine-tuned − scratch and, where the matched arm ran, fine-tuned − matched scratch
    mAP@0.5 per dataset, source and train fraction (:func:`contrast`); then the family
    adjustment: ``primary`` (``target``, ``source``, ``fraction``, ``against``) is reported as
    it is, every other comparison with a Holm-adjusted p and a Bonferroni interval
    (:func:`dsod_core.metrics.bootstrap.adjust_family`)."""
    groups = _groups(rows)
    out = []
    for (dataset, init, source, fraction), runs in groups.items():
        if init != "finetuned":
            continue
        tuned = {r["seed"]: r for r in runs}
        for against, other_key in (
            ("scratch", (dataset, "scratch", None, fraction)),
            ("matched", (dataset, "matched", source, fraction)),
        ):
            if other_key in groups:
                other = {r["seed"]: r for r in groups[other_key]}
                key = (dataset, source, fraction)
                out.append(contrast(tuned, other, against, key, replicates, level))
    index = primary_index(out, primary)
    apply_family(out, [d.pop("_result") for d in out], index, level)
    for d in out:
        what = f"fine-tuned from {d['source']} − {against_name(d)} mAP@0.5"
        d["statement"] = d.pop("_sentence") or family_words(d, what)
    return out


def clipped(interval: list[float]) -> list[float]:
    """An interval of a difference of two mAPs, intersected with ``[-1, 1]`` (the range the
    difference can take, so the intersection covers the truth exactly as often) and rounded
    to 4 decimals: with one degree of freedom in the seed term a raw interval can run past
    ±1, which says only that nothing is shown."""
    low, high = interval
    return [round(max(-1.0, float(low)), 4), round(min(1.0, float(high)), 4)]


def primary_index(diffs: list[dict[str, Any]], primary: dict[str, Any] | None) -> int | None:
    """The position of the declared primary comparison (``target``, ``source``, ``fraction``,
    ``against``) among ``diffs``; None when none is declared or it was not run."""
    if primary is None:
        return None
    want = (primary["target"], primary["source"], float(primary["fraction"]), primary["against"])
    for i, d in enumerate(diffs):
        if (d["dataset"], d["source"], float(d["train_fraction"]), d["against"]) == want:
            return i
    return None


def apply_family(
    diffs: list[dict[str, Any]],
    results: list[dict[str, Any]],
    index: int | None,
    level: float,
) -> None:
    """Set each difference's ``primary``, ``p``, ``p_holm``, ``ci_adjusted`` and
    ``adjustment`` from :func:`adjust_family` over ``results`` (one per difference)."""
    adjusted = adjust_family(results, index, level=level)
    for i, (d, adj) in enumerate(zip(diffs, adjusted)):
        d["primary"] = i == index
        d["p"] = _round(adj["p"])
        d["p_holm"] = _round(adj["p_holm"])
        d["ci_adjusted"] = clipped(adj["ci_adjusted"])
        d["adjustment"] = adj["adjustment"]


def family_words(d: dict[str, Any], what: str) -> str:
    """The report's sentence of one comparison: the difference, its interval (the adjusted
    one for a non-primary comparison), the p value and what they allow to say."""
    low, high = d["ci95"] if d["primary"] else d["ci_adjusted"]
    kind = "primary" if d["primary"] else f"adjusted: {d['adjustment']}"
    pct = round(d["level"] * 100)
    p = d["p"] if d["primary"] else d["p_holm"]
    text = (
        f"{what}: {d['diff_mean']:+.3f} ({pct}% CI {low:+.3f} to {high:+.3f}, {kind}; "
        f"p {p:.3f}; {d['n_units']} units, {d['n_seeds']} seeds)"
    )
    if d["n_units"] < 5:
        return text + "; too few test units for the interval to mean much."
    if low <= 0.0 <= high:
        return text + "; the interval contains 0: no difference is shown."
    return text + ("; fine-tuned is better." if low > 0 else "; scratch is better.")


def build_report(
    sources: list[dict],
    rows: list[dict],
    replicates: int = REPLICATES,
    primary: dict[str, Any] | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """The report object (``runs``, ``aggregates``, ``differences``, ``primary``,
    ``sources``) of the source models' rows and the target runs' rows (one per seed)."""
    diffs = differences(rows, replicates, primary, level)
    return {
        "runs": [public_row(r) for r in rows],
        "aggregates": aggregate(rows),
        "differences": diffs,
        "primary": primary,
        "sources": [public_row(r) for r in sources],
    }


def results_file(report: dict[str, Any]) -> dict[str, Any]:
    """The compact, git-tracked copy of a report (``results/comparison.json``) that the
    README's Results are generated from (``python -m pipelines.docs_results``): the primary
    comparison, the aggregates, every difference and the source models, without the per-run
    curves."""
    keep = ("dataset", "seed", "modality", "map50", "coco_ap", "image_passes", "train_seconds")
    return {
        "primary": report.get("primary"),
        "aggregates": report["aggregates"],
        "differences": report["differences"],
        "sources": [{k: r.get(k) for k in keep} for r in report["sources"]],
    }


def _fmt(x: Any, digits: int = 3) -> str:
    return "–" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def fmt_mean_std(mean: float | None, std: float | None) -> str:
    """``0.512 ± 0.034``; the mean alone for one seed (std None), ``–`` without a mean."""
    if mean is None:
        return "–"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def transfer_matrix(differences: list[dict[str, Any]]) -> tuple[float | None, list[str]]:
    """The target x source table (Markdown lines) of the differences at the largest train
    fraction (per cell against the matched arm where it ran, else scratch, marked ``(vs
    scratch)`` in a matrix of matched comparisons: an ImageNet checkpoint source has no
    matched arm): mean difference and interval per cell (the adjusted one unless primary),
    self-transfer marked; and that fraction."""
    full = max((d["train_fraction"] for d in differences), default=None)
    at_full = [d for d in differences if d["train_fraction"] == full]
    against = "matched" if any(d["against"] == "matched" for d in at_full) else "scratch"
    sources = list(dict.fromkeys(d["source"] for d in differences))
    cell: dict[tuple, dict[str, Any]] = {}
    for d in at_full:
        key = (d["dataset"], d["source"])
        if key not in cell or d["against"] == against:
            cell[key] = d
    lines = ["| target \\ source | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for dataset in dict.fromkeys(d["dataset"] for d in differences):
        cells = []
        for source in sources:
            d = cell.get((dataset, source))
            cells.append(
                "–"
                if d is None
                else f"{d['diff_mean']:+.3f} {_interval_text(d)}"
                + (" (self)" if d["self_transfer"] else "")
                + (" (vs scratch)" if d["against"] != against else "")
                + (
                    f" (did not learn: {', '.join(d['did_not_learn'])})"
                    if d.get("did_not_learn")
                    else ""
                )
            )
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    return full, lines


def collapsed_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Below the runs table: one line per run that learnt nothing (none: no lines)."""
    out = []
    for r in runs:
        if _collapsed(r):
            name = label(r)
            out.append(
                f"- **{r['dataset']}, {name}, fraction {r['train_fraction']:g}, seed "
                f"{r['seed']} did not learn**: {r['collapse']['summary']} "
                f"({'; '.join(r['collapse']['reasons'])})"
            )
    return [""] + out if out else []


def _interval_text(d: dict[str, Any]) -> str:
    """``[low, high]`` (primary: its own interval) or ``[low, high]*`` (adjusted)."""
    low, high = d["ci95"] if d.get("primary") else d.get("ci_adjusted", d["ci95"])
    return f"[{low:+.3f}, {high:+.3f}]" + ("" if d.get("primary") else "*")


def against_name(d: dict[str, Any]) -> str:
    return "scratch" if d["against"] == "scratch" else "matched scratch"


def primary_lines(report: dict[str, Any]) -> list[str]:
    """The declared primary comparison (params ``comparison.primary``) and its result."""
    p = report.get("primary")
    if not p:
        return [
            "",
            "No primary comparison is declared (`comparison.primary`): every "
            "interval below is adjusted.",
        ]
    found = [d for d in report["differences"] if d.get("primary")]
    head = (
        f"Declared in params before the runs: fine-tuned from {p['source']} against "
        f"{'compute-matched scratch' if p['against'] == 'matched' else 'scratch'} on "
        f"{p['target']} at train fraction {float(p['fraction']):g}."
    )
    if not found:
        return ["", "## Primary comparison", "", head, "", "It was not run (no such runs)."]
    d = found[0]
    return [
        "",
        "## Primary comparison",
        "",
        head,
        "",
        f"- {d['statement']}",
        f"- Budget: {budget_words(d)}.",
    ]


def difference_lines(report: dict[str, Any]) -> list[str]:
    """The table of every comparison with each arm's budget, p values and both intervals,
    then one sentence each."""
    pct = round(report["differences"][0]["level"] * 100) if report["differences"] else 95
    lines = [
        "",
        "## Fine-tuned − scratch arms (mAP@0.5)",
        "",
        "`against`: `scratch` trains the target as long as fine-tuning does (fine-tuned also "
        "had the source's compute); `matched scratch` gets the same total image passes, source "
        "pretraining included. Every comparison but the primary is adjusted for multiplicity: "
        f"Holm p and a Bonferroni {pct}% interval (marked *).",
        "",
        "| dataset | source | fraction | against | image passes (fine-tuned / other) | seeds "
        f"| units | difference | {pct}% CI | p | Holm p | adjusted CI |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in report["differences"]:
        low, high = d["ci95"]
        b = d["budget"]
        alow, ahigh = d["ci_adjusted"]
        adjusted = "primary" if d["primary"] else f"[{alow:+.3f}, {ahigh:+.3f}]*"
        lines.append(
            f"| {d['dataset']} | {d['source']} | {d['train_fraction']:g} | {against_name(d)} "
            f"| {_fmt(b['finetuned'], 0)} / {_fmt(b['against'], 0)} | {d['n_seeds']} "
            f"| {d['n_units']} | {d['diff_mean']:+.3f} | [{low:+.3f}, {high:+.3f}] "
            f"| {_fmt(d['p'])} | {_fmt(d['p_holm'])} | {adjusted} |"
        )
    lines += [""] + [
        f"- {d['dataset']}, fraction {d['train_fraction']:g}, against {against_name(d)}: "
        f"{d['statement']}"
        for d in report["differences"]
    ]
    return lines


# long: the report page as one linear Markdown template, section by section
def markdown(report: dict[str, Any], pictures: dict[str, str]) -> str:
    """The report as a Markdown page; ``pictures``: image name -> link, in page order."""
    lines = [
        "# Scratch vs fine-tuned",
        "",
        "VOC07 11-point mAP@0.5 and COCO AP@[.5:.95] on each target's test split, mean ± std "
        "over the training seeds. `finetuned` starts from a source model (first conv adapted to "
        "the channel count, new class head); `train fraction` is a nested subset of the train "
        "split drawn by whole independence units; `matched` is scratch trained for the image "
        "passes of source pretraining + fine-tuning. Intervals: a paired cluster bootstrap "
        "over the test set's independence units combined with a t term over the seeds "
        "(docs/study.md).",
        *primary_lines(report),
        "",
        "## Runs (mean over seeds)",
        "",
        "| dataset | init | source | train fraction | train images | image passes | seeds "
        "| mAP@0.5 | COCO AP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a in report["aggregates"]:
        lines.append(
            f"| {a['dataset']} | {a['init']} | {a['source'] or '–'} | {a['train_fraction']:g} "
            f"| {_fmt(a['train_images'], 0)} | {_fmt(a.get('image_passes_mean'), 0)} "
            f"| {a['n_seeds']} "
            f"| {fmt_mean_std(a['map50_mean'], a['map50_std'])} "
            f"| {fmt_mean_std(a['coco_ap_mean'], a['coco_ap_std'])} |"
        )
    lines += collapsed_lines(report.get("runs", []))
    lines += difference_lines(report)
    full, table = transfer_matrix(report["differences"])
    at_full = [d for d in report["differences"] if d["train_fraction"] == full]
    matched = any(d["against"] == "matched" for d in at_full)
    matrix_against = "matched scratch" if matched else "scratch"
    if full is not None:
        lines += [
            "",
            f"## Transfer matrix (train fraction {full:g}; fine-tuned − {matrix_against} "
            "mAP@0.5; * adjusted)",
            "",
            *table,
        ]
    lines += [
        "",
        "## Source models on their own test sets",
        "",
        "| dataset | source seed | modality | mAP@0.5 | COCO AP | image passes | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["sources"]:
        lines.append(
            f"| {r['dataset']} | {r.get('seed', '–')} | {r['modality']} | {_fmt(r['map50'])} "
            f"| {_fmt(r['coco_ap'])} | {_fmt(r.get('image_passes'), 0)} "
            f"| {_fmt(r['train_seconds'], 0)} |"
        )
    lines += checkpoint_lines(report.get("runs", []))
    lines += ["", "## Data efficiency and compute", ""]
    lines += [f"![{name}]({rel})" for name, rel in pictures.items()]
    lines.append("")
    return "\n".join(lines)


def checkpoint_lines(runs: list[dict[str, Any]]) -> list[str]:
    """The ImageNet checkpoint sources of the fine-tuned runs (params ``checkpoints``): file,
    format, sha256 and the image passes charged to their arm as declared (none: no lines)."""
    seen: dict[str, dict[str, Any]] = {}
    for r in runs:
        if r.get("source_checkpoint"):
            seen.setdefault(r["source"], {**r["source_checkpoint"], "n": r["source_image_passes"]})
    if not seen:
        return []
    lines = [
        "",
        "## ImageNet checkpoint sources",
        "",
        "Their fine-tuned arms are charged the image passes declared in params (the ImageNet "
        "training that made the file, not measured here) and are compared with scratch only: "
        "no compute-matched scratch arm is trained for them (docs/compare_imagenet.md).",
        "",
        "| source | format | file | sha256 | declared image passes | note |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in seen.items():
        lines.append(
            f"| {name} | {c['format']} | `{c['file']}` | {str(c['sha256'])[:12]} "
            f"| {'–' if c['n'] is None else format(c['n'], ',')} | {c.get('note') or '–'} |"
        )
    return lines


def summary(report: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """The flat summary metrics at the largest train fraction: per target ``scratch``,
    ``matched_<source>``, ``finetuned_from_<source>`` (means over seeds, with mean image
    passes), ``difference_from_<source>`` (against scratch) and ``difference_matched_<source>``
    (against the matched arm): mean, ``ci_low``/``ci_high``, ``p`` and, unless primary, the
    Holm ``p_holm`` and adjusted ``ci_low_adjusted``/``ci_high_adjusted``; ``primary`` (the
    declared comparison, also under its own key); per source dataset ``source`` (the source
    models, mean over source seeds)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in report["sources"]):
        mine = [r for r in report["sources"] if r["dataset"] == dataset]
        out.setdefault(dataset, {})["source"] = {
            "map50": _mean_std([r["map50"] for r in mine])[0],
            "coco_ap": _mean_std([r["coco_ap"] for r in mine])[0],
            "source_seeds": len(mine),
        }
    full = max((a["train_fraction"] for a in report["aggregates"]), default=None)
    for a in report["aggregates"]:
        if a["train_fraction"] != full:
            continue
        key = {"scratch": "scratch", "matched": f"matched_{a['source']}"}.get(
            a["init"], f"finetuned_from_{a['source']}"
        )
        out.setdefault(a["dataset"], {})[key] = {
            "map50": a["map50_mean"],
            "map50_std": a["map50_std"],
            "coco_ap": a["coco_ap_mean"],
            "image_passes": a.get("image_passes_mean"),
        }
        collapsed = sum(
            1 for r in report.get("runs", []) if _collapsed(r) and group_key(r) == group_key(a)
        )
        if collapsed:  # seeds that learnt nothing (absent when none)
            out[a["dataset"]][key]["collapsed_seeds"] = collapsed
    for d in report["differences"]:
        if d["train_fraction"] != full and not d.get("primary"):
            continue
        values = {"map50": d["diff_mean"], "ci_low": d["ci95"][0], "ci_high": d["ci95"][1]}
        values["p"] = d.get("p")
        if not d.get("primary"):
            values.update(
                p_holm=d.get("p_holm"),
                ci_low_adjusted=d["ci_adjusted"][0],
                ci_high_adjusted=d["ci_adjusted"][1],
            )
        else:
            out[d["dataset"]]["primary"] = dict(values)
        if d["train_fraction"] == full:
            kind = "difference_from" if d["against"] == "scratch" else "difference_matched"
            out[d["dataset"]][f"{kind}_{d['source']}"] = values
    return out


def _round(x: Any) -> float | None:
    return None if x is None else round(float(x), 4)


_STYLE = ARMS  # chart style per arm (dsod_core.report.budget)
label = arm_label  # a run's name in charts and tables


def plot_data_efficiency(aggregates: list[dict], plots: Path) -> dict[str, Path]:
    """Per target: mAP@0.5 against training images, one line per init/source (± std)."""
    written = {}
    for dataset in dict.fromkeys(a["dataset"] for a in aggregates):
        lines: dict[tuple, list[dict]] = {}
        for a in aggregates:
            if a["dataset"] == dataset:
                lines.setdefault((a["init"], a["source"]), []).append(a)
        series = []
        for (init, source), pts in lines.items():
            pts = sorted(pts, key=lambda a: a["train_fraction"])
            series.append(
                {
                    "label": label({"init": init, "source": source, "dataset": dataset}),
                    "points": [(a["train_images"], a["map50_mean"]) for a in pts],
                    "spread": [a["map50_std"] for a in pts],
                    "style": _STYLE[init],
                }
            )
        written[dataset] = plot_curves(
            series,
            plots / "data_efficiency" / f"{dataset}.png",
            title=f"{dataset}: test mAP@0.5 against training data",
            ylabel="test mAP@0.5 (mean ± std over seeds)",
            xlabel="training images",
            ylim=(0.0, 1.0),
        )
    return written


def plot_dataset_curves(rows: list[dict[str, Any]], plots: Path) -> list[Path]:
    """One chart per dataset and quantity: validation mAP@0.5 and training loss against epoch,
    its runs overlaid (scratch solid, fine-tuned dashed, the source model dotted)."""
    charts = (  # (history key, folder, title, y label, y range)
        ("curve", "val_map50", "validation mAP@0.5", "val mAP@0.5", (0.0, 1.0)),
        ("loss", "train_loss", "training loss", "multibox loss", None),
    )
    written = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        for key, folder, title, ylabel, ylim in charts:
            series = [
                {"label": label(r), "points": r[key], "style": _STYLE[r["init"]]} for r in mine
            ]
            path = plots / folder / f"{dataset}.png"
            written.append(
                plot_curves(series, path, title=f"{dataset}: {title}", ylabel=ylabel, ylim=ylim)
            )
    return written


def plot_report(
    report: dict[str, Any],
    sources: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    plots: Path,
    seed: int,
) -> dict[str, Path]:
    """Every image of the report under ``plots`` (the per-dataset chart folders of earlier
    reports removed first): ``compare.png`` and the epoch charts of the source models and of
    seed ``seed``'s runs at the largest train fraction, and the data-efficiency charts of the
    report's aggregates. Returns the report's pictures: the data-efficiency chart per dataset,
    then the runs chart (:data:`RUNS_PICTURE`)."""
    for sub in PLOT_FOLDERS:  # no charts of old datasets
        shutil.rmtree(plots / sub, ignore_errors=True)
    full = max(r["train_fraction"] for r in rows)
    shown = sources + [r for r in rows if r["seed"] == seed and r["train_fraction"] == full]
    picture = plot_comparison(
        [{**r, "init": label(r).replace("fine-tuned from ", "ft:")} for r in shown],
        plots / "compare.png",
    )
    plot_dataset_curves(shown, plots)
    curves = plot_data_efficiency(report["aggregates"], plots)
    budget = plot_budget(rows, plots, seed)
    return {
        **curves,
        **{f"{name}: mAP against compute": path for name, path in budget.items()},
        RUNS_PICTURE: picture,
    }
