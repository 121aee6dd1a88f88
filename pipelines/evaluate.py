"""Stages `evaluate_source@<source>` and `evaluate@<dataset>`: score trained runs on a split.

``python -m pipelines.evaluate --run-dir models/RUN --store data/prepared/DATASET.h5 --out
reports/runs/RUN --metrics results/runs/RUN.json --pr-curves results/plots/pr_curves/RUN.png``
(paths come from ``dvc.yaml``). A ``--run-dir`` without ``config.json`` is a folder of runs
(``models/<dataset>``: every run and seed below it, e.g. ``scratch-f0.5/seed-1``): each is
scored into the same relative folder under ``--out``, ``--metrics`` holds one entry per run
(keyed by that relative path) and ``--pr-curves`` is a folder of images; with ``--study``
only the run folders the params' study calls for are scored (one left by earlier
``train_fractions`` or ``sources`` is named and skipped). ``--metrics`` is the run's small
flat metrics file, kept in git
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

The adapter is rebuilt from the store (its recorded params and what the adapter learnt from
the data when it was prepared, ``/adapter_state`` and ``/units`` in docs/store.md): the raw
dataset is never listed again, so a store prepared with ``prepare.on_error: skip`` evaluates
exactly the units it holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dsod_core.data.store import StoreReader
from dsod_core.diagnostics import run_diagnostics
from dsod_core.engine.evaluator import select_device
from dsod_core.engine.provenance import RunProvenance
from dsod_core.engine.weights import load_trained_model
from dsod_core.errors import CheckpointError
from dsod_core.evaluation import (
    HEADLINE,
    frame_level,
    headline,
    predict_split,
    sample_items,
    write_coco_results,
    write_matches,
    write_pictures,
)
from dsod_core.metrics import plot_pr_curves, score_detections
from dsod_core.operating_point import measured_at
from modalities.registry import adapter_from_store
from pipelines._common import load_params, stage_main, write_json
from pipelines.params import arms, evaluate_section, run_name, study_axes, validate_params

__all__ = ["HEADLINE", "evaluate_run", "main"]


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
    ``out/pr_curves.png``). ``dataset`` names the store's dataset in the report (default:
    the store's own); the model's own normalisation is used, so an evaluation-only store
    scores a model trained elsewhere. The adapter is rebuilt from the store
    (:func:`modalities.registry.adapter_from_store`): the raw data is never listed."""
    if not (run_dir / "config.json").is_file() or not (run_dir / "model.pt").is_file():
        raise CheckpointError("run has not been trained (no config.json / model.pt)", path=run_dir)
    provenance = RunProvenance.read(run_dir)
    sec = evaluate_section(params, source)
    reader = StoreReader(store)
    dataset = dataset or reader.params.get("dataset") or provenance.dataset
    device = select_device(sec.get("device", "auto"), "evaluate.device")
    model, meta = load_trained_model(run_dir / "model.pt", device)
    if meta["in_channels"] != reader.num_channels or meta["class_names"] != reader.class_names:
        raise CheckpointError(
            f"model expects {meta['in_channels']} channels / classes {meta['class_names']}, "
            f"store {reader.path} has {reader.num_channels} / {reader.class_names}",
            path=run_dir / "model.pt",
        )
    adapter = adapter_from_store(reader)
    split = sec.get("split", "test")
    post = {k: sec[k] for k in ("score_threshold", "nms_iou", "max_detections") if k in sec}
    predictions, targets = predict_split(
        model, meta, reader, split, post, device, int(sec.get("batch_size", 16))
    )
    # A tiled store is scored by whole frames: the tiles' detections merged per frame.
    frames = frame_level(predictions, targets, reader, split, int(sec.get("max_detections", 200)))
    scored = frames or (predictions, targets)
    scores, voc07 = score_detections(scored[1], scored[0], reader.class_names)
    metrics = {
        "run": run_dir.name,
        "dataset": dataset,
        "modality": reader.modality,
        **provenance_fields(provenance),
        "split": split,
        "device": device.type,
        **scores,
        **model_fields(model, meta),
        "channels": reader.channel_names,
        **({"tiling": reader.params["tiling"], "tiles": len(predictions)} if frames else {}),
        "operating_point": measured_at(meta, scored[0], scored[1], len(reader.class_names)),
    }
    metrics.update(run_diagnostics(meta, predictions, scores["map50"]))  # collapsed, stopping
    run = (predictions, targets, voc07, meta, scored)
    _write_outputs(out, metrics, run, reader, adapter, sec, pr_curves)
    metrics_path = metrics_path or out / "metrics.json"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(metrics_path, headline(metrics))
    return metrics


def _write_outputs(out, metrics, run, reader, adapter, sec, pr_curves) -> None:
    """The run's report folder: PR curves, COCO results, the modality's world outputs from
    the per-unit merged detections (the rule `dsod detect` uses) and its own metrics (added
    to ``metrics``), pictures, history, the match table and ``detail.json``. ``run``:
    ``(predictions, targets, voc07, model meta, (predictions, targets) scored)``: the
    scored ones are a tiled store's whole frames (:func:`frame_level`), from which the world
    outputs and the match table come; COCO results and pictures stay those of the stored
    samples (tiles)."""
    predictions, targets, voc07, meta, (scored, truth) = run
    out.mkdir(parents=True, exist_ok=True)
    pr_curves = pr_curves or out / "pr_curves.png"
    pr_curves.parent.mkdir(parents=True, exist_ok=True)
    plot_pr_curves(voc07, reader.class_names, pr_curves)
    write_coco_results(out / "predictions_coco.json", predictions)
    items = sample_items(scored, truth)
    merged = adapter.merge(items)
    world = adapter.export_predictions(items, out / "world", merged=merged)
    metrics["world_outputs"] = [str(w) for w in world]
    metrics.update(adapter.extra_metrics(merged, reader.units, metrics["split"]))
    pictures = int(sec.get("pictures", 4))
    write_pictures(out / "pictures", reader, predictions, targets, adapter.render, pictures)
    write_json(out / "history.json", meta.get("history", []))
    write_matches(out / "matches.npz", scored, truth, len(reader.class_names))
    write_json(out / "detail.json", metrics)


def provenance_fields(provenance: RunProvenance) -> dict[str, Any]:
    """What a run's report says of how it was trained (its config.json)."""
    return {
        "init": provenance.init,
        "source": provenance.source,
        "seed": provenance.seed,
        "train_fraction": provenance.train_fraction,
        "train_images": provenance.train_images,
        "train_units": provenance.train_units,
        "budget": provenance.budget,
    }


def model_fields(model: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """What a run's report says of its model (from model.pt)."""
    return {
        "params": sum(v.numel() for v in model.parameters() if v.requires_grad),
        "train_seconds": float(meta.get("train_seconds", 0.0)),
        "epochs": len(meta.get("history", [])),
        "variant": meta["variant"],
        "image_passes": (meta.get("budget") or {}).get("image_passes"),
        "global_batch": (meta.get("budget") or {}).get("global_batch"),
        "input_size": meta["input_size"],
    }


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
    parser.add_argument(
        "--study",
        action="store_true",
        help="--run-dir is models/<target>: score only the run folders the params' study calls "
        "for; any other (left by an earlier train_fractions or sources) is named and skipped",
    )
    args = parser.parse_args(argv)
    params = load_params(args.params)
    validate_params(params, args.params, datasets=[])
    root = Path(args.run_dir)
    runs = run_dirs(root)
    if args.study and runs != [root]:
        runs = study_runs(root, runs, params)
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


def study_runs(root: Path, runs: list[Path], params: dict[str, Any]) -> list[Path]:
    """The runs under ``root`` (models/<target>) whose folder is one the study calls for
    (``pipelines.params.arms``); a stale one is named on stderr and skipped, as the compare
    stage would not read it."""
    wanted = {run_name(*arm) for arm in arms(params, study_axes(params))}
    keep, stale = [], {}
    for run in runs:
        top = run.relative_to(root).parts[0]
        (keep if top in wanted else stale.setdefault(top, [])).append(run)
    for top, found in stale.items():
        print(
            f"evaluate: skipped {(root / top).as_posix()} ({len(found)} run(s)): not a run of "
            "the params' study (left by earlier params; delete it to silence this)",
            file=sys.stderr,
        )
    if not keep:
        raise CheckpointError("none of the study's runs is here", path=root)
    return keep


def _say(name: str, m: dict[str, Any]) -> None:
    ap = m["coco_ap"]
    print(f"evaluate {name}: mAP@0.5 {m['map50'] or 0:.3f}  COCO AP {ap or 0:.3f}")
    if m.get("collapsed"):
        print(f"evaluate {name}: the model did not learn: {m['collapse']['summary']}")


if __name__ == "__main__":
    main()
