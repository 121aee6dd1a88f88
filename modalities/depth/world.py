"""Depth detections back in the camera's world: per detection the median measured depth inside
its box and, with intrinsics, its 3D centre in the camera frame (:func:`world_rows`, behind
:meth:`DepthAdapter.world_rows`); and the sample ``ref`` meta (:func:`ref_meta`) from which the
depth map is re-read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modalities.base import SampleRef
from modalities.depth.encodings import fill_missing

if TYPE_CHECKING:
    from modalities.depth.adapter import DepthAdapter


def ref_meta(ref: SampleRef) -> dict[str, Any]:
    """The sample's ``ref`` meta: the id, the paths (as strings), the NYU index and the depth
    codec."""
    return {
        "ref_id": ref.ref_id,
        "paths": {a: str(b) for a, b in ref.paths.items()},
        "index": ref.meta.get("index"),
        "depth_codec": ref.meta.get("depth_codec"),
    }


def world_rows(adapter: DepthAdapter, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per image, per detection: the box (px), score, class, the median measured depth
    inside the box (m; the filled depth when the box holds no reading, flagged
    ``depth_measured: false``) and, when intrinsics are known, the 3D centre ``[X, Y, Z]``
    in the camera frame (m; x right, y down, z forward): the box centre back-projected at
    the median depth. The depth is re-read from the sample's source file (``meta["ref"]``),
    so the figures come from measurements, not from the encoding."""
    rows = []
    for item in items:
        meta = item["meta"]
        r = meta["ref"]
        ref = SampleRef(
            r["ref_id"],
            "test",
            {a: Path(b) for a, b in r["paths"].items()},
            {"index": r.get("index"), "depth_codec": r.get("depth_codec")},
        )
        depth, valid, _ = adapter.load_depth(ref)
        filled = fill_missing(depth, valid) if valid.any() else depth
        det = item["detections"]
        boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
        out = [
            world_detection(adapter, filled, valid, box, score, label, meta.get("intrinsics"))
            for box, score, label in zip(boxes, det["scores"], det["labels"])
        ]
        rows.append(
            {
                "sample_id": item["sample_id"],
                "source": item["source"],
                "units": "m",
                "camera_frame": "x right, y down, z forward",
                "detections": out,
            }
        )
    return rows


def world_detection(adapter: DepthAdapter, filled, valid, box, score, label, k) -> dict[str, Any]:
    """One detection's row: box, score, label and class, median depth, camera-frame centre."""
    z, measured = median_depth(filled, valid, box)
    row = {
        "box_xyxy_px": [float(v) for v in box],
        "score": float(score),
        "label": int(label),
        "class": adapter.class_names[int(label) - 1],
        "median_depth_m": z,
        "depth_measured": measured,
    }
    if k is not None and z is not None:
        # Continuous box centre -> OpenCV pixel index (centre of pixel i is i + 0.5).
        u = 0.5 * (box[0] + box[2]) - 0.5
        v = 0.5 * (box[1] + box[3]) - 0.5
        row["centre_camera_m"] = [(u - k["cx"]) * z / k["fx"], (v - k["cy"]) * z / k["fy"], z]
    return row


def median_depth(
    filled: np.ndarray, valid: np.ndarray, box: np.ndarray
) -> tuple[float | None, bool]:
    """Median depth (m) of the pixels whose centres lie in ``box`` (xyxy continuous px)."""
    h, w = filled.shape
    c0 = int(np.clip(np.ceil(box[0] - 0.5), 0, w))
    c1 = int(np.clip(np.ceil(box[2] - 0.5), 0, w))
    r0 = int(np.clip(np.ceil(box[1] - 0.5), 0, h))
    r1 = int(np.clip(np.ceil(box[3] - 0.5), 0, h))
    if c1 <= c0 or r1 <= r0:  # a box thinner than a pixel: take the pixel under its centre
        cx = int(np.clip((box[0] + box[2]) / 2, 0, w - 1))
        cy = int(np.clip((box[1] + box[3]) / 2, 0, h - 1))
        c0, c1, r0, r1 = cx, cx + 1, cy, cy + 1
    d, m = filled[r0:r1, c0:c1], valid[r0:r1, c0:c1]
    if m.any():
        return float(np.median(d[m])), True
    return (float(np.median(d)), False) if d.size and valid.any() else (None, False)
