"""``dsod detect`` on multispectral scenes: sliding windows over the whole raster, read window by
window, detections merged in scene pixels and written as GeoJSON in the raster's CRS.

The scene is never in memory whole. Per scene:

1. The header is read (size, CRS, geotransform, bands) as the adapter reads it; the per-band
   clip range comes from the same decimated read the prepare stage uses
   (:func:`geotiff.raster_stats`, at most ``stats_size`` px a side), so a window is scaled
   exactly as a training chip of that scene would have been.
2. Windows of ``chip_size`` px (default: the model's training chip) step by ``chip_size -
   overlap`` (default overlap: half a window), the last one aligned to the edge
   (:func:`tiling.chip_windows`). They are read one by one through rasterio in row-major
   order, with GDAL's block cache capped (``GDAL_CACHEMAX`` = 128 MB), and a window whose
   pixels are all no-data is skipped without running the network. Batches of
   ``--batch-size`` windows go through the model.
3. Merging: a window keeps only the detections whose box centre lies in its *core*, the part
   of the window nearer to its centre than to any neighbour's (the cores of all windows tile
   the scene exactly; a scene edge belongs to the window at it). An object no larger than the
   overlap lies whole in the window whose core holds its centre, and the truncated copies
   that neighbouring windows see have their centres outside their own cores, so each object is
   reported once, from a window that saw it whole, wherever the window grid falls. Then
   class-wise greedy NMS at the adapter's ``merge_iou`` over the scene (box-local: only boxes
   within one window side of each other are compared) removes what is left, duplicates of
   objects larger than the overlap. Weighted box fusion is not used: it moves boxes of
   separate adjacent objects towards each other.

Outputs, written atomically: ``<stem>.geojson``, a FeatureCollection of Polygons in the
raster's CRS (named by the legacy ``crs`` member, as GDAL and QGIS read it; none for a WGS84
raster), properties ``class``, ``label``, ``score``; with ``--wgs84`` also
``<stem>.wgs84.geojson`` (RFC 7946: WGS84 longitude/latitude, no ``crs`` member). With
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

from dsod_core.errors import DataError
from dsod_core.inference import (
    DetectOptions,
    DetectResult,
    Predictor,
    batched,
    output_stem,
    progress_bar,
)
from dsod_core.io import write_json
from modalities.multispectral import bandstack, geojson, geotiff
from modalities.multispectral import labels as label_files
from modalities.multispectral.tiling import boxes_in_chip, chip_starts, chip_windows

GDAL_CACHE_MB = 128  # rasterio takes GDAL_CACHEMAX in bytes
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")


def core_bounds(length: int, chip_size: int, overlap: int) -> tuple[list[int], np.ndarray]:
    """Window starts along one axis and the core limits ``[n + 1]``: window ``i`` owns
    ``[limits[i], limits[i + 1])``, the midpoints of the overlaps with its neighbours; the
    first and last limits are -inf and +inf (the scene edges belong to the edge windows)."""
    starts = chip_starts(length, chip_size, overlap)
    mids = [(starts[i + 1] + starts[i] + chip_size) / 2.0 for i in range(len(starts) - 1)]
    return starts, np.array([-np.inf, *mids, np.inf])


def local_nms(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float, cell: float
) -> np.ndarray:
    """Class-wise greedy NMS (suppress IoU > ``iou``), exact, for many boxes none wider than
    ``cell``: boxes are hashed into ``cell``-sized grid squares and each is compared with the
    kept boxes of its 3 x 3 neighbourhood only (memory linear in the boxes, not quadratic).
    Returns the kept indices by decreasing score (ties: lower index first)."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(n), -scores))
    cx = np.floor((boxes[:, 0] + boxes[:, 2]) / 2.0 / cell).astype(np.int64)
    cy = np.floor((boxes[:, 1] + boxes[:, 3]) / 2.0 / cell).astype(np.int64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    grid: dict[tuple[int, int, int], list[int]] = {}
    kept = []
    for i in order:
        b = boxes[i]
        lab = int(labels[i])
        suppressed = False
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in grid.get((lab, cx[i] + dx, cy[i] + dy), ()):
                    o = boxes[j]
                    w = min(b[2], o[2]) - max(b[0], o[0])
                    h = min(b[3], o[3]) - max(b[1], o[1])
                    if w <= 0 or h <= 0:
                        continue
                    inter = w * h
                    if inter / (area[i] + area[j] - inter) > iou:
                        suppressed = True
                        break
                if suppressed:
                    break
            if suppressed:
                break
        if not suppressed:
            kept.append(int(i))
            grid.setdefault((lab, cx[i], cy[i]), []).append(int(i))
    return np.asarray(kept, dtype=np.int64)


def _units(adapter, path: Path) -> list[tuple[Path, str, Any]]:
    """(path, name, band-stack scene or None) of the rasters of one input."""
    p = adapter.params
    if p.stack != "none":
        if not path.is_dir():
            raise DataError(
                f"the model reads band stacks (stack: {p.stack}): give the scene's folder",
                path=path,
            )
        return adapter._units()
    if path.is_file():
        return [(path, path.name, None)]
    found = sorted(q for q in path.glob(p.raster_glob) if q.is_file())
    found = [q for q in found if q.suffix.lower() in RASTER_SUFFIXES]
    if not found:
        raise DataError(f"no rasters match {p.raster_glob!r}", path=path)
    return [(q, q.relative_to(path).as_posix(), None) for q in found]


def detect_inputs(
    adapter, path: Path, predictor: Predictor, options: DetectOptions
) -> Iterator[DetectResult]:
    """One :class:`DetectResult` per raster (or band-stack scene) of ``path``."""
    for raster, rel, scene in _units(adapter, Path(path)):
        yield detect_scene(adapter, raster, rel, scene, predictor, options)


def _labels_of(adapter, info, lpath: Path, class_names: list[str]) -> dict[str, np.ndarray]:
    """The scene's labels in raster pixels (boxes, labels 1..K, difficult); classes the model
    does not know are left out."""
    if not lpath.is_file():
        raise DataError("labels file not found", path=lpath)
    crs, entries = adapter._parse_labels(lpath)
    if adapter.params.shared_labels or adapter.params.image_key:
        groups = label_files.by_image(entries)
        stem = info.stack["scene_id"] if info.stack else Path(info.rel).stem
        mine = label_files.entries_of_image(groups, info.rel, stem)
        entries = mine or entries
    kept = [(cls, geom, diff) for _, _, cls, geom, diff in entries if cls in class_names]
    boxes = label_files.pixel_boxes([g for _, g, _ in kept], crs, info.crs, info.transform, lpath)
    inside = label_files.inside_raster(boxes, info.width, info.height)
    return {
        "boxes": boxes[inside].astype(np.float64),
        "labels": np.array([class_names.index(c) + 1 for c, _, _ in kept], dtype=np.int64)[inside],
        "difficult": np.array([d for _, _, d in kept], dtype=bool)[inside],
    }


def _precision_recall(target, pred, iou: float = 0.5) -> dict[str, Any]:
    """Greedy one-to-one matching (by score, same class, IoU >= ``iou``) of the scene's
    detections to its labels: true/false positives, misses, precision, recall."""
    from dsod_core.boxes import box_iou

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
    from dsod_core.metrics.scoring import score_detections

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


def detect_scene(
    adapter, path: Path, rel: str, scene, predictor: Predictor, options: DetectOptions
) -> DetectResult:
    """Sliding-window detection over one raster; see the module docstring."""
    p = adapter.params
    started = time.perf_counter()
    if scene is None:
        info = adapter._open_info(path, rel)
    else:
        info = adapter._open_info(
            path, rel, bandstack.scene_stack(scene, adapter._stack_bands(), path)
        )
    predictor.check_channels(len(info.channel_names), info.path)
    chip = int(options.chip_size or p.chip_size)
    overlap = int(options.overlap if options.overlap is not None else chip // 2)
    if not 0 <= overlap < chip:
        raise DataError(f"--overlap must be in [0, {chip}), got {overlap}", path=info.path)
    col_starts, col_core = core_bounds(info.width, chip, overlap)
    row_starts, row_core = core_bounds(info.height, chip, overlap)
    windows = chip_windows(info.width, info.height, chip, overlap)
    class_names = predictor.class_names
    target = None
    if options.labels is not None:
        target = _labels_of(adapter, info, Path(options.labels), class_names)
    boxes, scores, labels = [], [], []
    chips: list[tuple[dict, dict]] = []
    skipped = 0
    stem = output_stem(path if scene is None else Path(rel))
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB << 20),
        adapter._open_source(info.path, info.stack) as ds,
    ):
        stats = geotiff.raster_stats(ds, info, p.derived, p.stats_size, p.clip_percentiles)

        def read(win: Window):
            image, valid = adapter._read_chip(ds, info, win, stats)
            return (win, image) if valid.any() else None

        if predictor.needs_calibration:  # int8: ranges from windows over the whole scene
            spread = np.linspace(0, len(windows) - 1, min(len(windows), 64)).round()
            picked = (read(windows[int(i)]) for i in dict.fromkeys(spread))
            calib = [g[1] for g in picked if g is not None][: predictor.calibration_count]
            predictor.calibrate(calib)
        bar = progress_bar(len(windows), f"detect {stem}", "window", options)
        for group in batched((read(w) for w in windows), options.batch_size):
            kept = [g for g in group if g is not None]
            skipped += len(group) - len(kept)
            bar.update(len(group))
            if not kept:
                continue
            for (win, _), det in zip(kept, predictor([im for _, im in kept])):
                col, row = int(win.col_off), int(win.row_off)
                b = det["boxes"].astype(np.float64) + [col, row, col, row]
                ci, ri = col_starts.index(col), row_starts.index(row)
                cx, cy = (b[:, 0] + b[:, 2]) / 2.0, (b[:, 1] + b[:, 3]) / 2.0
                core = (
                    (cx >= col_core[ci])
                    & (cx < col_core[ci + 1])
                    & (cy >= row_core[ri])
                    & (cy < row_core[ri + 1])
                )
                boxes.append(b[core])
                scores.append(det["scores"][core].astype(np.float64))
                labels.append(det["labels"][core])
                if target is not None:
                    truth, idx = boxes_in_chip(
                        target["boxes"], np.arange(len(target["labels"])), win,
                        (info.width, info.height), p.min_visible,
                    )  # fmt: skip
                    chips.append(
                        (
                            {
                                "boxes": truth,
                                "labels": target["labels"][idx],
                                "difficult": target["difficult"][idx],
                            },
                            det,
                        )
                    )
        bar.close()
    b = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    s = np.concatenate(scores) if scores else np.zeros(0)
    lab = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    keep = local_nms(b, s, lab, p.merge_iou, float(chip))
    b, s, lab = b[keep], s[keep], lab[keep]
    features = [
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [geojson.box_polygon(box, info.transform)],
            },
            "properties": {
                "class": class_names[int(k) - 1],
                "label": int(k),
                "score": round(float(sc), 6),
            },
        }
        for box, sc, k in zip(b, s, lab)
    ]
    out_dir = Path(options.out_dir)
    outputs = [
        geojson.write_feature_collection(out_dir / f"{stem}.geojson", features, info.crs, stem)
    ]
    if options.wgs84:
        outputs.append(
            geojson.write_feature_collection(
                out_dir / f"{stem}.wgs84.geojson",
                geojson.to_wgs84(features, info.crs),
                geojson.WGS84,
                stem,
            )
        )
    evaluation = None
    if target is not None:
        scene_pred = {"boxes": b, "scores": s, "labels": lab}
        evaluation = _evaluate(
            target, scene_pred, chips, class_names, predictor.post["score_threshold"]
        )
        evaluation.update(input=str(path), labels=str(options.labels), model=predictor.describe())
        outputs.append(write_json(out_dir / f"{stem}.eval.json", evaluation, indent=1))
    return DetectResult(
        input=Path(path),
        outputs=outputs,
        detections=len(features),
        units=len(windows) - skipped,
        skipped=skipped,
        seconds=time.perf_counter() - started,
        evaluation=evaluation,
        extra={
            "crs": info.crs.to_string(),
            "size": [info.width, info.height],
            "chip_size": chip,
            "overlap": overlap,
            "transform": list(Affine(*list(info.transform)[:6]))[:6],
        },
    )
