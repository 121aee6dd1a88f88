"""Stage `compare`: scratch vs fine-tuned per dataset, beside the RGB baseline.

``python -m pipelines.compare --runs-dir reports/runs --out reports/compare --summary
results/summary.json --plots results/plots`` (paths from ``dvc.yaml``). Writes
``reports/compare.json`` (a list of rows, one per evaluated run) and ``reports/compare.md``;
the summary metric file (``<dataset>.scratch.map50``, ``<dataset>.finetuned.map50``,
``<dataset>.finetuned_minus_scratch.map50``, the same for ``coco_ap``, and
``<source dataset>.source.*`` for the RGB source model), small enough for ``dvc exp show``;
and the images under ``--plots``: ``compare.png`` (test bars and validation curves of all
runs), ``val_map50/<dataset>.png`` and ``train_loss/<dataset>.png`` (the runs of one dataset
overlaid, against epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from dsod_core.errors import DataError
from dsod_core.metrics.plots import plot_comparison, plot_curves
from pipelines._common import load_params, stage_main, write_atomic, write_json
from pipelines.params import validate_params


def epochs_to_fraction(history: list[dict[str, Any]], fraction: float = 0.9) -> int | None:
    """First epoch whose validation mAP@0.5 reaches ``fraction`` of the final one."""
    curve = [(h["epoch"], h["val_map50"]) for h in history if h.get("val_map50") is not None]
    if not curve:
        return None
    final = curve[-1][1]
    return next(e for e, m in curve if m >= fraction * final)


def collect(runs: list[str], runs_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        path = runs_dir / run / "detail.json"
        if not path.is_file():
            raise DataError("metrics of run missing (did evaluate run?)", path=path)
        m = json.loads(path.read_text())
        history = json.loads((path.parent / "history.json").read_text())
        rows.append(
            {
                "run": run,
                "dataset": m["dataset"],
                "modality": m["modality"],
                "init": "scratch" if m["init"] in ("scratch", "pretrain") else m["init"],
                "role": "rgb_baseline" if run == "pretrain" else "target",
                "map50": m["map50"],
                "map50_area": m["map50_area"],
                "coco_ap": m["coco_ap"],
                "coco_ap50": m["coco_ap50"],
                "per_class_ap50": m["per_class_ap50"],
                "params": m["params"],
                "train_seconds": round(m["train_seconds"], 1),
                "epochs": m["epochs"],
                "epochs_to_90pct": epochs_to_fraction(history),
                "channels": len(m["channels"]),
                "curve": [[h["epoch"], h.get("val_map50")] for h in history],
                "loss": [[h["epoch"], h.get("loss")] for h in history],
            }
        )
    return rows


def _fmt(x: Any, digits: int = 3) -> str:
    return "–" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def markdown(rows: list[dict[str, Any]], picture: str = "compare.png") -> str:
    lines = [
        "# Scratch vs fine-tuned",
        "",
        "VOC07 11-point mAP at IoU 0.5 and COCO AP@[.5:.95] on each dataset's test split. "
        "`finetuned` starts from the RGB source model (first conv adapted to the channel "
        "count); the RGB baseline is the source model itself, trained from scratch.",
        "",
        "| dataset | modality | init | channels | mAP@0.5 | VOC area mAP | COCO AP | COCO AP50 "
        "| params | train s | epochs | epochs to 90% |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = f"{r['dataset']} (RGB baseline)" if r["role"] == "rgb_baseline" else r["dataset"]
        lines.append(
            f"| {name} | {r['modality']} | {r['init']} | {r['channels']} | {_fmt(r['map50'])} "
            f"| {_fmt(r['map50_area'])} | {_fmt(r['coco_ap'])} | {_fmt(r['coco_ap50'])} "
            f"| {r['params']:,} | {_fmt(r['train_seconds'], 0)} | {r['epochs']} "
            f"| {_fmt(r['epochs_to_90pct'])} |"
        )
    lines += ["", "## Per-class AP@0.5", ""]
    for r in rows:
        per = ", ".join(f"{k}: {_fmt(v)}" for k, v in r["per_class_ap50"].items())
        lines.append(f"- {r['run']}: {per}")
    lines += ["", f"![comparison]({picture})", ""]
    return "\n".join(lines)


def _metric(x: Any) -> float | None:
    return None if x is None else round(float(x), 4)


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """The flat summary metrics: per dataset, each init's map50 / coco_ap and, where both
    inits ran, ``finetuned_minus_scratch`` (the answer to "did fine-tuning help?")."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for r in rows:
        out.setdefault(r["dataset"], {})[_role(r)] = {
            "map50": _metric(r["map50"]),
            "coco_ap": _metric(r["coco_ap"]),
        }
    for per in out.values():
        if "scratch" in per and "finetuned" in per:
            per["finetuned_minus_scratch"] = {
                k: None
                if per["finetuned"][k] is None or per["scratch"][k] is None
                else round(per["finetuned"][k] - per["scratch"][k], 4)
                for k in ("map50", "coco_ap")
            }
    return out


_STYLE = {"scratch": "-", "finetuned": "--", "source": ":"}


def _role(row: dict[str, Any]) -> str:
    """``source`` for the RGB source model's row, else the run's init."""
    return "source" if row["role"] == "rgb_baseline" else row["init"]


def _series(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        role = _role(r)
        label = "source (RGB baseline)" if role == "source" else role
        out.append({"label": label, "points": r[key], "style": _STYLE[role]})
    return out


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
            path = plots / folder / f"{dataset}.png"
            written.append(
                plot_curves(
                    _series(mine, key), path, title=f"{dataset}: {title}", ylabel=ylabel, ylim=ylim
                )
            )
    return written


@stage_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--runs-dir", required=True, help="reports/runs (one folder per run)")
    parser.add_argument("--out", required=True, help="output prefix, e.g. reports/compare")
    parser.add_argument("--summary", help="the summary metric file (results/summary.json)")
    parser.add_argument("--plots", help="folder of the overlaid images (results/plots)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    validate_params(params, args.params, datasets=[])
    targets, inits = params["targets"], params["inits"]
    runs = ["pretrain"] + [f"{d}-{i}" for d in targets for i in inits]
    rows = collect(runs, Path(args.runs_dir))
    out = Path(args.out)
    plots = Path(args.plots) if args.plots else out.parent / "plots"
    for sub in ("val_map50", "train_loss"):  # no charts left from datasets no longer compared
        shutil.rmtree(plots / sub, ignore_errors=True)
    picture = plot_comparison(rows, plots / "compare.png")
    plot_dataset_curves(rows, plots)
    write_json(f"{out}.json", rows)
    md = markdown(rows, Path(os.path.relpath(picture, out.parent)).as_posix())
    write_atomic(f"{out}.md", md)
    write_json(args.summary or f"{out}.summary.json", summary(rows))
    print(md.split("\n## ")[0])
    return 0


if __name__ == "__main__":
    main()
