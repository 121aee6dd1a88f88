"""Whole-scene merge: what the containment rule (``merge_containment``) removes, and what it
costs in ``dsod detect`` throughput.

``python -m benchmarks.scene_detect [--size 10000] [--model M] [--quick]``

Three tables, each with the rule off (``merge_containment: 0``: the IoU-only merge, the
behaviour before the rule existed) and on (0.7, the default):

1. Synthetic small objects: ``--objects`` boxes of 8-16 px (a third of them in touching
   pairs) on a 2048 x 2048 raster, 64-px windows with a 32-px overlap
   (:func:`dsod_core.tiling.tile_grid`). A fake predictor returns, per window, every object
   the window sees (score 0.6-0.95; a truncated view clipped to the window, its score scaled
   by the share visible) plus 0-3 fragments per object: sub-boxes of 35-80 % of its sides
   inside it, scored 0.4-0.9 of the object's score, as a real detector's partial hits. The
   windows are merged by :func:`modalities.multispectral.scene.merge_chips` (the merge of
   the evaluate stage and of ``dsod detect``).
2. The multispectral demo (``MultispectralAdapter.write_demo``, 64-px chips) through a
   trained demo model (``--model``, copied; default
   ``/work/main/models/multispectral_demo/scratch-f1.0/seed-0/model.pt``), 64-px windows,
   32-px overlap, each scene's windows run once and merged both ways.
3. Throughput: a ``--size`` squared single-band uint16 GeoTIFF (deflate, 256-px tiles) and a
   random-weight ``dsod_tiny`` (1 band, 64-px input) through ``python -m pipelines.detect``
   in a fresh process per setting (``--merge-containment 0`` / ``0.7``); Mpx/s = size^2 /
   wall time of the process (model load, statistics and GeoJSON included).

Scoring of merged detections against the truth: greedy by score, same class, IoU >= 0.5 ->
true positive; an unmatched detection with IoU >= 0.5 to a true box already matched ->
duplicate; an unmatched one lying >= 50 % (of its own area) inside a true box -> fragment;
any other -> false positive.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = Path("/work/main/models/multispectral_demo/scratch-f1.0/seed-0/model.pt")
SETTINGS = (("off (0)", 0.0), ("on (0.7)", 0.7))


def classify(pb, pl, ps, tb, tl) -> dict[str, int]:
    """True positives, duplicates, fragments, false positives and misses (module doc)."""
    from dsod_core.boxes import box_iou

    ious = box_iou(pb, tb) if len(pb) and len(tb) else np.zeros((len(pb), len(tb)))
    taken = np.zeros(len(tb), dtype=bool)
    out = {"detections": len(pb), "tp": 0, "duplicates": 0, "fragments": 0, "fp": 0}
    for i in np.argsort(-ps, kind="stable"):
        same = tl == pl[i]
        cand = np.where(same & ~taken & (ious[i] >= 0.5))[0]
        if len(cand):
            taken[cand[np.argmax(ious[i, cand])]] = True
            out["tp"] += 1
        elif (same & (ious[i] >= 0.5)).any():
            out["duplicates"] += 1
        elif len(tb) and _inside(pb[i], tb[same]) >= 0.5:
            out["fragments"] += 1
        else:
            out["fp"] += 1
    out["missed"] = int((~taken).sum())
    return out


def _inside(box, truths) -> float:
    if not len(truths):
        return 0.0
    w = np.minimum(box[2], truths[:, 2]) - np.maximum(box[0], truths[:, 0])
    h = np.minimum(box[3], truths[:, 3]) - np.maximum(box[1], truths[:, 1])
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
    return float((np.clip(w, 0, None) * np.clip(h, 0, None)).max() / area)


def synthetic_objects(rng, n: int, size: int) -> np.ndarray:
    """``n`` boxes of 8-16 px, a third of them in touching pairs, not overlapping others."""
    boxes: list[list[float]] = []
    while len(boxes) < n:
        w, h = rng.integers(8, 17, 2)
        x, y = rng.uniform(2, size - 40, 2)
        new = [[x, y, x + w, y + h]]
        if len(boxes) % 3 == 0:  # a touching neighbour of the same class
            w2 = rng.integers(8, 17)
            new.append([x + w, y, x + w + w2, y + h])
        arr = np.asarray(boxes).reshape(-1, 4)
        if all(_inside_any(b, arr) for b in new):
            boxes.extend(new)
    return np.asarray(boxes[:n], dtype=np.float64)


def _inside_any(box, arr) -> bool:
    """No overlap with (or touching of) any box of ``arr`` widened by 2 px."""
    if not len(arr):
        return True
    return not (
        (box[0] < arr[:, 2] + 2)
        & (box[2] > arr[:, 0] - 2)
        & (box[1] < arr[:, 3] + 2)
        & (box[3] > arr[:, 1] - 2)
    ).any()


def fake_window(rng, truth, base, col, row, chip) -> dict[str, np.ndarray]:
    """What a detector sees in one window: objects (clipped), fragments inside them."""
    win = np.array([col, row, col + chip, row + chip], dtype=np.float64)
    boxes, scores = [], []
    for box, s in zip(truth, base):
        clip = np.array([max(box[0], win[0]), max(box[1], win[1]),
                         min(box[2], win[2]), min(box[3], win[3])])  # fmt: skip
        if clip[2] - clip[0] < 2 or clip[3] - clip[1] < 2:
            continue
        seen = (clip[2] - clip[0]) * (clip[3] - clip[1]) / ((box[2] - box[0]) * (box[3] - box[1]))
        boxes.append(clip)
        scores.append(s * seen)
        for _ in range(rng.integers(0, 4)):
            fw, fh = (clip[2:] - clip[:2]) * rng.uniform(0.35, 0.8, 2)
            fx = rng.uniform(clip[0], clip[2] - fw)
            fy = rng.uniform(clip[1], clip[3] - fh)
            boxes.append(np.array([fx, fy, fx + fw, fy + fh]))
            scores.append(s * seen * rng.uniform(0.4, 0.9))
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) - [col, row, col, row]
    return {"boxes": b, "scores": np.asarray(scores), "labels": np.ones(len(scores), np.int64)}


def synthetic_quality(objects: int, seed: int = 0, size: int = 2048) -> list[dict]:
    from dsod_core.tiling import tile_grid
    from modalities.multispectral.scene import merge_chips

    rng = np.random.default_rng(seed)
    truth = synthetic_objects(rng, objects, size)
    base = rng.uniform(0.6, 0.95, len(truth))
    items = []
    for col, row in tile_grid(size, size, 64, 32):
        near = (truth[:, 2] > col) & (truth[:, 0] < col + 64)
        near &= (truth[:, 3] > row) & (truth[:, 1] < row + 64)
        det = fake_window(rng, truth[near], base[near], col, row, 64)
        meta = {"raster": "synthetic", "window": [col, row, 64, 64], "crs": None,
                "raster_transform": [1, 0, 0, 0, 1, 0], "raster_size": [size, size]}  # fmt: skip
        items.append({"source": "synthetic", "meta": meta, "detections": det})
    raw = sum(len(it["detections"]["scores"]) for it in items)
    rows = []
    for name, share in SETTINGS:
        started = time.perf_counter()
        (unit,) = merge_chips(items, 0.5, share)
        took = time.perf_counter() - started
        d = unit["detections"]
        counts = classify(d["boxes"], d["labels"], d["scores"], truth, np.ones(len(truth), int))
        rows.append({"containment": name, "window_boxes": raw, **counts, "merge_s": took})
    return rows


def demo_quality(model: Path, tmp: Path, threshold: float, scenes: int = 10) -> list[dict]:
    """The demo's scenes through the trained demo model, merged off and on."""
    from dsod_core.detection import DetectRun
    from dsod_core.inference import Predictor
    from modalities.multispectral.adapter import MultispectralAdapter
    from modalities.multispectral.detect import _window_items
    from modalities.multispectral.params import MultispectralDetectParams
    from modalities.multispectral.scene import merge_chips
    from pipelines.detect import build_adapter

    root = tmp / "demo"
    MultispectralAdapter.write_demo(root, num_images=4 * scenes, image_size=64, seed=7)
    copy = tmp / "model.pt"
    shutil.copyfile(model, copy)
    predictor = Predictor(copy, device="cpu", score_threshold=threshold)
    adapter = build_adapter(predictor, {}, root, "benchmark")
    adapter.restore({"class_names": list(predictor.class_names)})
    run = DetectRun(out_dir=tmp / "out", batch_size=16, modality=MultispectralDetectParams(),
                    progress=False)  # fmt: skip
    totals = {name: {} for name, _ in SETTINGS}
    for raster, rel, scene in adapter.raster_units(root):
        info = adapter.open_raster(raster, rel, scene)
        target = adapter.scene_labels(info, raster.with_suffix(".geojson"), predictor.class_names)
        wins = _windows(info, 64, 32)
        items, _, _ = _window_items(adapter, info, wins, predictor, run, rel, None)
        for name, share in SETTINGS:
            (unit,) = merge_chips(items, adapter.params.merge_iou, share)
            d = unit["detections"]
            c = classify(d["boxes"], d["labels"], d["scores"], target["boxes"], target["labels"])
            for k, v in c.items():
                totals[name][k] = totals[name].get(k, 0) + v
    return [{"containment": name, **t} for name, t in totals.items()]


def _windows(info, chip: int, overlap: int):
    from rasterio.windows import Window

    from dsod_core.tiling import tile_grid

    return [Window(c, r, chip, chip) for c, r in tile_grid(info.width, info.height, chip, overlap)]


def write_band(path: Path, size: int, seed: int = 0) -> Path:
    """A single-band uint16 GeoTIFF of ``size`` squared: noise and bright 8-16 px blobs."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint16",
        crs="EPSG:32633", transform=from_origin(5e5, 4e6, 10, 10), tiled=True,
        blockxsize=256, blockysize=256, compress="deflate",
    ) as ds:  # fmt: skip
        for row in range(0, size, 1024):
            h = min(1024, size - row)
            band = rng.normal(1000, 50, (h, size)).astype(np.uint16)
            for _ in range(size * h // 20000):
                x, y = rng.integers(0, size - 16), rng.integers(0, max(h - 16, 1))
                band[y : y + rng.integers(8, 17), x : x + rng.integers(8, 17)] = 3000
            ds.write(band[None], window=Window(0, row, size, h))
    return path


def tiny_model(path: Path) -> Path:
    """A random-weight dsod_tiny for 1-band 64-px inputs, written as a run's model.pt."""
    import torch

    from dsod_core.engine.weights import WEIGHTS_FORMAT
    from dsod_core.model import build_model
    from modalities.multispectral.params import MultispectralParams

    torch.manual_seed(0)
    model = build_model("dsod_tiny", in_channels=1, num_classes=1, input_size=64)
    adapter = {**MultispectralParams().__dict__, "chip_size": 64, "overlap": 32,
               "class_names": ["ship"], "label_format": "geojson"}  # fmt: skip
    torch.save(
        {
            "format": WEIGHTS_FORMAT,
            "version": 1,
            "model": model.state_dict(),
            "variant": "dsod_tiny",
            "input_size": 64,
            "model_overrides": {},
            "in_channels": 1,
            "num_classes": 1,
            "class_names": ["ship"],
            "channel_names": ["band_1"],
            "modality": "multispectral",
            "mean": torch.zeros(1),
            "std": torch.ones(1),
            "adapter_params": adapter,
            "dataset": "benchmark",
        },  # fmt: skip
        path,
    )
    return path


def throughput(size: int, tmp: Path, threshold: float) -> list[dict]:
    scene = write_band(tmp / f"band_{size}.tif", size)
    model = tiny_model(tmp / "tiny.pt")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows = []
    for name, share in SETTINGS:
        cmd = [sys.executable, "-m", "pipelines.detect", str(scene), "--model", str(model),
               "--out", str(tmp / f"out{share}"), "--score-threshold", str(threshold),
               "--merge-containment", str(share), "--no-progress"]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode:
            raise SystemExit(f"detect failed: {done.stderr.strip()[-2000:]}")
        line = done.stdout.strip().splitlines()[-1]
        rows.append({"containment": name, "seconds": wall, "mpx_per_s": size * size / 1e6 / wall,
                     "line": line})  # fmt: skip
    return rows


def table(rows: list[dict], keys: list[str]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=10000, help="side of the throughput scene")
    ap.add_argument("--objects", type=int, default=600, help="synthetic objects")
    ap.add_argument("--model", type=Path, default=DEMO_MODEL, help="trained demo model.pt")
    ap.add_argument("--threshold", type=float, default=0.1, help="score threshold (demo)")
    ap.add_argument("--throughput-threshold", type=float, default=0.3, help="(throughput)")
    ap.add_argument("--only", choices=("synthetic", "demo", "throughput"), action="append")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    args = ap.parse_args(argv)
    only = set(args.only or ("synthetic", "demo", "throughput"))
    size, objects = (512, 60) if args.quick else (args.size, args.objects)
    counts = ["containment", "detections", "tp", "duplicates", "fragments", "fp", "missed"]
    with tempfile.TemporaryDirectory(prefix="dsod-scene-") as tmp:
        if "synthetic" in only:
            rows = synthetic_quality(objects)
            print(f"Synthetic small objects ({objects} true, 2048 x 2048, 64/32 windows)")
            print(table(rows, ["window_boxes", *counts, "merge_s"]) + "\n")
        if "demo" in only and args.model.exists():
            rows = demo_quality(args.model, Path(tmp), args.threshold, 2 if args.quick else 10)
            print(f"Multispectral demo through {args.model} (score >= {args.threshold})")
            print(table(rows, counts) + "\n")
        elif "demo" in only:
            print(f"(no demo model at {args.model}: demo table skipped)\n")
        if "throughput" in only:
            rows = throughput(size, Path(tmp), args.throughput_threshold)
            print(f"Throughput: {size} x {size} x 1 GeoTIFF, random dsod_tiny, "
                  f"{os.cpu_count()} cores")  # fmt: skip
            print(table(rows, ["containment", "seconds", "mpx_per_s", "line"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
