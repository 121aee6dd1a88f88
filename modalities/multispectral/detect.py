"""``dsod detect`` on multispectral scenes: sliding windows over the whole raster, read window by
window, detections merged in scene pixels and written as GeoJSON in the raster's CRS.

The scene is never in memory whole. Per scene:

1. The header is read (size, CRS, geotransform, bands) as the adapter reads it; the per-band
   clip range comes from the same decimated read the prepare stage uses
   (:func:`geotiff.raster_stats`, at most ``stats_size`` px a side), so a window is scaled
   exactly as a training chip of that scene would have been.
2. Windows of ``chip_size`` px (default: the model's training chip) step by ``chip_size -
   overlap`` (default overlap: half a window), the last one aligned to the edge
   (:func:`dsod_core.tiling.tile_grid`). They are read one by one through rasterio in row-major
   order, with GDAL's block cache capped (``GDAL_CACHEMAX`` = 128 MB), and a window whose
   pixels are all no-data is skipped without running the network. Batches of
   ``--batch-size`` windows go through the model.
3. Merging: :func:`scene.merge_chips`, the rule :meth:`MultispectralAdapter.merge` applies to
   a store's chips in the evaluate stage too (:func:`dsod_core.tiling.merge_tiles`: each
   window keeps the detections centred in its core, then class-wise NMS at the adapter's
   ``merge_iou`` with its containment rule at ``merge_containment``: a fragment lying that
   share inside a larger, higher-scored box of its class is dropped), so one scene gives
   the same merged detections through both. ``--merge-containment`` overrides the share for
   one run (0: off, the IoU-only merge).

Outputs, written atomically: ``<stem>.geojson``, a FeatureCollection of Polygons in the
raster's CRS (named by the legacy ``crs`` member, as GDAL and QGIS read it; none for a WGS84
raster), properties ``class``, ``label``, ``score``, ``source``, ``raster``
(:meth:`MultispectralAdapter.write_scene`, as the evaluate stage writes); with ``--wgs84`` also
``<stem>.wgs84.geojson`` (RFC 7946: WGS84 longitude/latitude, no ``crs`` member). A
pixel-only raster (no CRS; read when the model's labels were in pixels) gives pixel
coordinates instead: no ``crs`` member, ``"units": "pixel"`` on the collection and on every
feature, and no WGS84 copy. With
``--labels`` (a label file in the adapter's ``label_format``), ``<stem>.eval.json``: the
merged scene detections scored against the scene's labels (VOC mAP@0.5 over the scene as one
image, precision/recall at the score threshold) beside the chip-level mAP of the same windows
(each window scored against the labels it sees, as the evaluate stage scores chips).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import Affine
from rasterio.windows import Window

from dsod_core.boxes import box_iou
from dsod_core.detection import DetectResult, DetectRun, PredictorLike, batched, progress_bar
from dsod_core.errors import DataError
from dsod_core.io import write_json
from dsod_core.metrics.scoring import score_detections
from dsod_core.tiling import tile_grid
from modalities.multispectral.scene import merge_chips
from modalities.multispectral.tiling import boxes_in_chip

GDAL_CACHE_MB = 128  # rasterio takes GDAL_CACHEMAX in bytes


def detect_inputs(
    adapter, path: Path, predictor: PredictorLike, run: DetectRun
) -> Iterator[DetectResult]:
    """One :class:`DetectResult` per raster (or band-stack scene) of ``path``; classes
    are the model's."""
    adapter.restore({"class_names": list(predictor.class_names)})
    for raster, rel, scene in adapter.raster_units(Path(path)):
        yield detect_scene(adapter, raster, rel, scene, predictor, run)


def _precision_recall(target, pred, iou: float = 0.5) -> dict[str, Any]:
    """Greedy one-to-one matching (by score, same class, IoU >= ``iou``) of the scene's
    detections to its labels: true/false positives, misses, precision, recall."""
    tb, tl = target["boxes"], target["labels"]
    pb, pl, ps = pred["boxes"], pred["labels"], pred["scores"]
    taken = np.zeros(len(tb), dtype=bool)
    tp = 0
    ious = box_iou(pb, tb) if len(pb) and len(tb) else np.zeros((len(pb), len(tb)))
    for i in np.argsort(-ps, kind="stable"):
        cand = np.where((tl == pl[i]) & ~taken & (ious[i] >= iou))[0]
        if len(cand):
            taken[cand[np.argmax(ious[i, cand])]] = True
            tp += 1
    fp, fn = len(pb) - tp, len(tb) - tp
    return {
        "true_positives": tp,
        "false_positives": fp,
        "missed": fn,
        "precision": tp / len(pb) if len(pb) else None,
        "recall": tp / len(tb) if len(tb) else None,
    }


def _evaluate(target, scene_pred, chips, class_names, threshold) -> dict[str, Any]:
    scene, _ = score_detections([target], [scene_pred], class_names, with_coco=False)
    out: dict[str, Any] = {
        "scene_map50": scene["map50"],
        "scene_map50_area": scene["map50_area"],
        "scene_per_class_ap50": scene["per_class_ap50"],
        "objects": int(len(target["labels"])),
        "score_threshold": threshold,
        **_precision_recall(target, scene_pred),
    }
    if chips:
        targets = [t for t, _ in chips]
        preds = [p for _, p in chips]
        chip, _ = score_detections(targets, preds, class_names, with_coco=False)
        out["chip_map50"] = chip["map50"]
        out["chips"] = len(chips)
    return out


def _chip_target(target, win: Window, info, min_visible: float) -> dict[str, np.ndarray]:
    """The labels one window sees, in window pixels (as the prepare stage cuts chips)."""
    truth, idx = boxes_in_chip(
        target["boxes"], np.arange(len(target["labels"])), win,
        (info.width, info.height), min_visible,
    )  # fmt: skip
    return {"boxes": truth, "labels": target["labels"][idx], "difficult": target["difficult"][idx]}


def _window_items(adapter, info, windows, predictor, run, stem, target):
    """Run the windows of one raster through the model: the per-window items of
    :meth:`MultispectralAdapter.merge`, the (truth, detections) pairs of the windows (with
    labels) and the number of all-no-data windows skipped."""
    items: list[dict[str, Any]] = []
    chips: list[tuple[dict, dict]] = []
    skipped = 0
    meta = {
        "raster": info.rel,
        "crs": info.crs_name,
        "raster_transform": list(info.transform)[:6],
        "raster_size": [info.width, info.height],
    }
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB << 20), adapter.open_pixels(info) as ds:
        stats = adapter.scene_stats(ds, info)

        def read(win: Window):
            image, valid = adapter.read_window(ds, info, win, stats)
            return (win, image) if valid.any() else None

        if predictor.needs_calibration:  # int8: ranges from windows over the whole scene
            spread = np.linspace(0, len(windows) - 1, min(len(windows), 64)).round()
            picked = (read(windows[int(i)]) for i in dict.fromkeys(spread))
            calib = [g[1] for g in picked if g is not None][: predictor.calibration_count]
            predictor.calibrate(calib)
        bar = progress_bar(len(windows), f"detect {stem}", "window", run)
        for group in batched((read(w) for w in windows), run.batch_size):
            kept = [g for g in group if g is not None]
            skipped += len(group) - len(kept)
            bar.update(len(group))
            for (win, _), det in zip(kept, predictor([im for _, im in kept]) if kept else []):
                window = [int(win.col_off), int(win.row_off), int(win.width), int(win.height)]
                items.append(
                    {
                        "source": str(info.path),
                        "meta": {**meta, "window": window},
                        "detections": det,
                    }
                )
                if target is not None:
                    chips.append((_chip_target(target, win, info, adapter.params.min_visible), det))
        bar.close()
    return items, chips, skipped


def _empty_unit(info) -> dict[str, Any]:
    """The merged detections of a scene whose windows were all no-data: none."""
    return {
        "unit": info.rel,
        "source": str(info.path),
        "crs": info.crs_name,
        "transform": list(info.transform)[:6],
        "size": [info.width, info.height],
        "detections": {
            "boxes": np.zeros((0, 4)),
            "scores": np.zeros(0),
            "labels": np.zeros(0, dtype=np.int64),
        },
    }


def merge_containment(adapter, opts) -> float | None:
    """The containment share of the scene merge: ``--merge-containment`` when given, else the
    adapter's ``merge_containment`` (the value the model's store was prepared with)."""
    given = getattr(opts, "merge_containment", None)
    return given if given is not None else adapter.params.merge_containment


def detect_scene(
    adapter, path: Path, rel: str, scene, predictor: PredictorLike, run: DetectRun
) -> DetectResult:
    """Sliding-window detection over one raster; see the module docstring."""
    started = time.perf_counter()
    opts = run.modality
    info = adapter.open_raster(path, rel, scene)
    predictor.check_channels(len(info.channel_names), info.path)
    chip = int(opts.chip_size or adapter.params.chip_size)
    overlap = int(opts.overlap if opts.overlap is not None else chip // 2)
    if not 0 <= overlap < chip:
        raise DataError(f"--overlap must be in [0, {chip}), got {overlap}", path=info.path)
    windows = [
        Window(c, r, chip, chip) for c, r in tile_grid(info.width, info.height, chip, overlap)
    ]
    class_names = predictor.class_names
    target = None
    if run.labels is not None:
        target = adapter.scene_labels(info, Path(run.labels), class_names)
    stem = adapter.output_stem(path if scene is None else Path(rel))
    items, chips, skipped = _window_items(adapter, info, windows, predictor, run, stem, target)
    merged = merge_chips(items, adapter.params.merge_iou, merge_containment(adapter, opts))
    if not merged:  # every window all no-data: an empty scene
        merged = [_empty_unit(info)]
    (unit,) = merged
    out_dir = Path(run.out_dir)
    outputs = adapter.write_scene(unit, out_dir, stem, opts.wgs84)
    evaluation = None
    if target is not None:
        evaluation = _evaluate(
            target, unit["detections"], chips, class_names, predictor.post["score_threshold"]
        )
        evaluation.update(input=str(path), labels=str(run.labels), model=predictor.describe())
        outputs.append(write_json(out_dir / f"{stem}.eval.json", evaluation, indent=1))
    return DetectResult(
        input=Path(path),
        outputs=outputs,
        detections=len(unit["detections"]["scores"]),
        units=len(windows) - skipped,
        skipped=skipped,
        seconds=time.perf_counter() - started,
        evaluation=evaluation,
        extra={
            "crs": info.crs_name,
            "size": [info.width, info.height],
            "chip_size": chip,
            "overlap": overlap,
            "merge_containment": merge_containment(adapter, opts),
            "transform": list(Affine(*list(info.transform)[:6]))[:6],
        },
    )
