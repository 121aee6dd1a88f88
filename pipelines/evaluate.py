"""Stages `evaluate_source@<source>` and `evaluate@<dataset>`: score trained runs on a split.

``python -m pipelines.evaluate --run-dir models/RUN --store data/prepared/DATASET.h5 --out
reports/runs/RUN --metrics results/runs/RUN.json --pr-curves results/plots/pr_curves/RUN.png``
(paths come from ``dvc.yaml``). A ``--run-dir`` without ``config.json`` is a folder of runs
(``models/<dataset>``: every run and seed below it, e.g. ``scratch-f0.5/seed-1``): each is
scored into the same relative folder under ``--out``, ``--metrics`` holds one entry per run
(keyed by that relative path) and ``--pr-curves`` is a folder of images. ``--metrics`` is
the run's small flat metrics file, kept in git
(:data:`HEADLINE`: VOC07 11-point mAP@0.5, VOC area mAP, COCO AP/AP50/AP75, training seconds,
parameters); ``--pr-curves`` its precision-recall image. Writes into ``--out``:
``detail.json`` (everything: per-class AP, AR, the modality's own metrics, world outputs, ...),
``predictions_coco.json`` (COCO results in stored-image pixels;
``image_id`` = store index + 1, the convention of :mod:`dsod_core.metrics.coco`), the
modality's world predictions under ``world/`` (GeoJSON in the raster CRS, millimetres for
NIfTI, ...), ``pictures/`` (predicted boxes red, true boxes green), ``history.json`` and
``matches.npz``: the VOC match table of the predictions (ranked ``label``, ``image``, ``tp``,
``fp``; ``gt_count`` per image and class) with each test image's source ``unit`` and store
``index``, from which the compare stage bootstraps intervals without the store.

The adapter is built as the prepare stage built it and ``discover()`` is run, so adapters
whose class names come from the data know them; they must equal the store's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsod_core.data.store import StoreReader
from dsod_core.engine.evaluator import create_evaluator, eval_loader, select_device
from dsod_core.engine.weights import load_trained_model
from dsod_core.errors import CheckpointError, DataError
from dsod_core.io import atomic_path
from dsod_core.metrics import (
    build_coco_results,
    draw_detections,
    plot_pr_curves,
    save_picture,
    score_detections,
)
from dsod_core.metrics.scoring import voc_matches
from pipelines._common import load_params, stage_main, write_json
from pipelines.params import check_dataset, dataset_entry, evaluate_section, validate_params
from pipelines.prepare import adapter_for

# The run's metrics file: few, flat, numeric (what `dvc exp show` and `dvc metrics diff` list).
HEADLINE = ("map50", "map50_area", "coco_ap", "coco_ap50", "coco_ap75", "train_seconds", "params")


def headline(metrics: dict[str, Any]) -> dict[str, float | int | None]:
    """The :data:`HEADLINE` entries of a run's detail metrics, rounded for tables."""
    out: dict[str, float | int | None] = {}
    for key in HEADLINE:
        v = metrics.get(key)
        if isinstance(v, float):
            v = round(v, 1 if key == "train_seconds" else 4)
        out[key] = v
    return out


def evaluate_run(
    run_dir: Path,
    store: Path,
    out: Path,
    params: dict[str, Any],
    source: str = "params.yaml",
    metrics_path: Path | None = None,
    pr_curves: Path | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Score one run; write ``out/`` (detail, predictions, world outputs, pictures, history),
    the flat metrics file (default ``out/metrics.json``) and the PR image (default
    ``out/pr_curves.png``). ``dataset``: the params dataset the store was prepared from
    (default: the run's own); another one scores the model on new data, e.g. an
    evaluation-only (test-split only) store. The model's own normalisation is used."""
    if not (run_dir / "config.json").is_file() or not (run_dir / "model.pt").is_file():
        raise CheckpointError("run has not been trained (no config.json / model.pt)", path=run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    dataset = dataset or config["dataset"]
    sec = evaluate_section(params, source)
    reader = StoreReader(store)
    device = select_device(sec.get("device", "auto"), "evaluate.device")
    model, meta = load_trained_model(run_dir / "model.pt", device)
    if meta["in_channels"] != reader.num_channels or meta["class_names"] != reader.class_names:
        raise CheckpointError(
            f"model expects {meta['in_channels']} channels / classes {meta['class_names']}, "
            f"store {reader.path} has {reader.num_channels} / {reader.class_names}",
            path=run_dir / "model.pt",
        )
    # The adapter as prepare built it, with what it learns while listing the data.
    entry = dataset_entry(params, dataset, source)
    check_dataset(dataset, entry, source)
    adapter, _ = adapter_for(entry, source)
    adapter.discover()
    if list(adapter.class_names) != list(reader.class_names):
        raise DataError(
            f"the data now has classes {adapter.class_names}, the store {reader.class_names}: "
            "re-run prepare",
            path=adapter.root,
        )

    split = sec.get("split", "test")
    post = {k: sec[k] for k in ("score_threshold", "nms_iou", "max_detections") if k in sec}
    with torch.no_grad():
        evaluator = create_evaluator(model, device, post)
        evaluator.run(
            eval_loader(
                reader,
                split,
                int(meta["input_size"]),
                int(sec.get("batch_size", 16)),
                normalisation=(meta["mean"].numpy(), meta["std"].numpy()),
            )
        )
    predictions = sorted(evaluator.state.predictions, key=lambda p: p["index"])
    targets = [reader.read_targets(p["index"]) for p in predictions]  # once per image
    scores, voc07 = score_detections(targets, predictions, reader.class_names)
    metrics = {
        "run": run_dir.name,
        "dataset": dataset,
        "modality": reader.modality,
        "init": config["init"],
        "source": config.get("source"),
        "seed": config.get("seed"),
        "train_fraction": config.get("train_fraction", 1.0),
        "train_images": config.get("train_images"),
        "train_units": config.get("train_units"),
        "split": split,
        "device": device.type,
        **scores,
        "params": sum(v.numel() for v in model.parameters() if v.requires_grad),
        "train_seconds": float(meta.get("train_seconds", 0.0)),
        "epochs": len(meta.get("history", [])),
        "variant": meta["variant"],
        "input_size": meta["input_size"],
        "channels": reader.channel_names,
    }
    out.mkdir(parents=True, exist_ok=True)
    pr_curves = pr_curves or out / "pr_curves.png"
    pr_curves.parent.mkdir(parents=True, exist_ok=True)
    plot_pr_curves(voc07, reader.class_names, pr_curves)
    coco_results = build_coco_results(predictions, indices=[p["index"] for p in predictions])
    write_json(out / "predictions_coco.json", coco_results)

    items = [
        {
            "sample_id": t["sample_id"],
            "source": t["source"],
            "meta": t["meta"],
            "affine": t["affine"],
            "detections": p,
        }
        for p, t in zip(predictions, targets)
    ]
    world = adapter.export_predictions(items, out / "world")
    metrics["world_outputs"] = [str(w) for w in world]
    metrics.update(adapter.extra_metrics(world, split))

    pic_dir = out / "pictures"
    pic_dir.mkdir(exist_ok=True)
    with_objects = [(p, t) for p, t in zip(predictions, targets) if len(t["labels"])]
    for p, t in with_objects[: int(sec.get("pictures", 4))]:
        rgb = adapter.render(reader.read_image(p["index"]))
        save_picture(
            draw_detections(rgb, p, t, reader.class_names), pic_dir / f"{p['index']:06d}.png"
        )
    write_json(out / "history.json", meta.get("history", []))
    table = voc_matches(targets, predictions, len(reader.class_names))
    with atomic_path(out / "matches.npz", suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                **{k: v for k, v in table.items() if k != "num_classes"},
                unit=np.asarray([t["source"] for t in targets], dtype=str),
                index=np.asarray([p["index"] for p in predictions], dtype=np.int64),
            )
    write_json(out / "detail.json", metrics)
    metrics_path = metrics_path or out / "metrics.json"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(metrics_path, headline(metrics))
    return metrics


def run_dirs(root: Path) -> list[Path]:
    """``root`` when it is one run, else every run folder below it (sorted)."""
    if (root / "config.json").is_file():
        return [root]
    found = sorted(p.parent for p in root.rglob("config.json") if (p.parent / "model.pt").exists())
    if not found:
        raise CheckpointError("no trained run here (no config.json / model.pt)", path=root)
    return found


@stage_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", required=True, help="models/<run> (model.pt, config.json)")
    parser.add_argument("--store", required=True, help="the run's prepared store (.h5)")
    parser.add_argument("--out", required=True, help="reports/runs/<run> (detail, predictions)")
    parser.add_argument("--metrics", help="the flat metrics file (results/runs/<run>.json)")
    parser.add_argument("--pr-curves", help="the PR-curve image (results/plots/pr_curves/...)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--dataset", help="the store's dataset in params (default: the run's own dataset)"
    )
    args = parser.parse_args(argv)
    params = load_params(args.params)
    validate_params(params, args.params, datasets=[])
    root = Path(args.run_dir)
    runs = run_dirs(root)
    if runs == [root]:
        m = evaluate_run(
            root,
            Path(args.store),
            Path(args.out),
            params,
            args.params,
            metrics_path=Path(args.metrics) if args.metrics else None,
            pr_curves=Path(args.pr_curves) if args.pr_curves else None,
            dataset=args.dataset,
        )
        _say(root.name, m)
        return 0
    table = {}
    for run in runs:
        rel = run.relative_to(root).as_posix()
        m = evaluate_run(
            run,
            Path(args.store),
            Path(args.out) / rel,
            params,
            args.params,
            pr_curves=Path(args.pr_curves) / f"{rel.replace('/', '_')}.png"
            if args.pr_curves
            else None,
            dataset=args.dataset,
        )
        table[rel] = headline(m)
        _say(f"{root.name}/{rel}", m)
    if args.metrics:
        write_json(args.metrics, table)
    return 0


def _say(name: str, m: dict[str, Any]) -> None:
    ap = m["coco_ap"]
    print(f"evaluate {name}: mAP@0.5 {m['map50'] or 0:.3f}  COCO AP {ap or 0:.3f}")


if __name__ == "__main__":
    main()
