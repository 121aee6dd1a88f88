"""Stage `compare`: scratch vs fine-tuned per dataset, beside the RGB baseline.

Writes ``reports/compare.json`` (a list of rows, one per evaluated run), ``reports/compare.md``
and ``reports/compare.png`` (final mAP@0.5 / COCO AP bars and validation mAP-vs-epoch curves).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dsod_core.errors import DataError
from dsod_core.metrics.plots import plot_comparison
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
        path = runs_dir / run / "metrics.json"
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
            }
        )
    return rows


def _fmt(x: Any, digits: int = 3) -> str:
    return "–" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def markdown(rows: list[dict[str, Any]]) -> str:
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
    lines += ["", "![comparison](compare.png)", ""]
    return "\n".join(lines)


@stage_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--runs-dir", required=True, help="reports/runs (one folder per run)")
    parser.add_argument("--out", required=True, help="output prefix, e.g. reports/compare")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    validate_params(params, args.params, datasets=[])
    targets, inits = params["targets"], params["inits"]
    runs = ["pretrain"] + [f"{d}-{i}" for d in targets for i in inits]
    rows = collect(runs, Path(args.runs_dir))
    write_json(f"{args.out}.json", rows)
    write_atomic(f"{args.out}.md", markdown(rows))
    plot_comparison(rows, Path(f"{args.out}.png"))
    print(markdown(rows).split("\n## ")[0])
    return 0


if __name__ == "__main__":
    main()
