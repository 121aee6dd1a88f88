"""3D geometry of the ``medical`` adapter: world boxes -> per-slice boxes, detections -> lesions.

Coordinates used here
---------------------
*Volume pixel coordinates* ``(x, y, z)``: ``x, y`` are the continuous pixel coordinates of a
stored slice image (pixel centre at ``+0.5``), ``z`` the slice index with slice ``k``'s centre
plane at ``z = k`` (the slab of slice ``k`` is ``[k - 0.5, k + 0.5]``). A ``volume_affine``
(float64 ``[4, 4]``) maps ``(x, y, z, 1)`` to world millimetres (RAS); the ``Sample.affine`` of
slice ``k`` equals ``volume_affine @ translate(0, 0, k)``, see :func:`slice_to_volume_affine`.

*World boxes* are ``cccwhd``: centre ``(cx, cy, cz)`` and size ``(w, h, d)`` in mm along the
world axes (MONAI's box mode of the same name).

Lesion model: the ellipsoid inscribed in the world box. Cutting it by the centre plane of a
slice gives an ellipse, whose bounding box is the 2D box of that slice and whose area, divided
by the largest axial cross-section, is the slice's *cross-section fraction* (1 at the lesion's
equator, 0 at its poles). Linking goes the other way: per-slice detections are chained across
neighbouring slices and each chain becomes one 3D box.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dsod_core.boxes import box_iou

# --- affines ---------------------------------------------------------------------------------


def slice_to_volume_affine(slice_affine: np.ndarray, slice_index: int) -> np.ndarray:
    """The volume affine ``[4, 4]`` from the ``Sample.affine`` of slice ``slice_index``."""
    shift = np.eye(4)
    shift[2, 3] = -float(slice_index)
    return np.asarray(slice_affine, dtype=np.float64) @ shift


def volume_to_slice_affine(volume_affine: np.ndarray, slice_index: int) -> np.ndarray:
    """``Sample.affine`` ``[4, 4]`` of slice ``slice_index``: pixel ``(x, y, 0)`` -> world mm."""
    shift = np.eye(4)
    shift[2, 3] = float(slice_index)
    return np.asarray(volume_affine, dtype=np.float64) @ shift


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points ``[N, 3]`` through a ``[4, 4]`` affine; returns ``[N, 3]`` float64."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    a = np.asarray(affine, dtype=np.float64)
    return pts @ a[:3, :3].T + a[:3, 3]


def lps_ras_flip(points_or_boxes: np.ndarray) -> np.ndarray:
    """Flip x and y (LPS <-> RAS, its own inverse) of points ``[N, 3]`` or cccwhd boxes
    ``[N, 6]`` (only the centre changes sign; sizes are lengths)."""
    out = np.array(points_or_boxes, dtype=np.float64, copy=True)
    out[..., 0] *= -1.0
    out[..., 1] *= -1.0
    return out


def box_corners_to_world_cccwhd(
    volume_affine: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Axis-aligned world box (cccwhd, mm) enclosing the volume-pixel box ``[lo, hi]``
    (``lo``/``hi`` are ``(x, y, z)``); oblique affines give the enclosing box of the 8 corners."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    corners = np.array(
        [
            [(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]]
            for a in (0, 1)
            for b in (0, 1)
            for c in (0, 1)
        ]
    )
    world = apply_affine(volume_affine, corners)
    wmin, wmax = world.min(axis=0), world.max(axis=0)
    return np.concatenate([(wmin + wmax) / 2.0, wmax - wmin])


# --- 3D box -> per-slice 2D boxes ------------------------------------------------------------


@dataclass
class SliceCut:
    """The cut of one lesion by one slice: ``box`` xyxy pixels (unclipped) and the
    cross-section ``fraction`` in ``(0, 1]``."""

    slice_index: int
    box: np.ndarray
    fraction: float


def ellipsoid_slice_cuts(
    volume_affine: np.ndarray, box_cccwhd: np.ndarray, num_slices: int
) -> list[SliceCut]:
    """Cut the ellipsoid inscribed in a world box (cccwhd, mm, same frame as the affine) by the
    centre planes ``z = k`` of slices ``0 .. num_slices-1``.

    In volume-pixel coordinates the ellipsoid is ``(v - c)^T Q (v - c) <= 1`` with
    ``Q = M^T diag(1/a^2) M`` (``M`` the affine's linear part, ``a`` the semi-axes). Fixing
    ``z`` and completing the square in ``(x, y)`` gives an ellipse of "radius"
    ``r^2 = 1 - dz^2 (q - b^T A^-1 b)``, centre shifted by ``-A^-1 b dz`` (non-zero only for
    oblique affines) and half-extents ``sqrt(r^2 diag(A^-1))``. Its area is proportional to
    ``r^2``, which is therefore the cross-section fraction. Exact for oblique affines too.
    """
    box = np.asarray(box_cccwhd, dtype=np.float64).reshape(6)
    semi = box[3:] / 2.0
    if (semi <= 0).any():
        raise ValueError(f"box size must be positive, got {box[3:].tolist()}")
    aff = np.asarray(volume_affine, dtype=np.float64)
    m = aff[:3, :3]
    centre = apply_affine(np.linalg.inv(aff), box[:3][None])[0]
    q_full = m.T @ np.diag(1.0 / semi**2) @ m
    a_mat = q_full[:2, :2]
    b_vec = q_full[:2, 2]
    a_inv = np.linalg.inv(a_mat)
    curvature = float(q_full[2, 2] - b_vec @ a_inv @ b_vec)  # 1 / (z half-extent)^2
    half_z = 1.0 / np.sqrt(curvature)
    cuts = []
    k_lo = max(0, int(np.floor(centre[2] - half_z)))
    k_hi = min(num_slices - 1, int(np.ceil(centre[2] + half_z)))
    for k in range(k_lo, k_hi + 1):
        dz = k - centre[2]
        r2 = 1.0 - dz * dz * curvature
        if r2 <= 0.0:
            continue
        uc = centre[:2] - a_inv @ b_vec * dz
        half = np.sqrt(r2 * np.diag(a_inv))
        cuts.append(
            SliceCut(
                k,
                np.array([uc[0] - half[0], uc[1] - half[1], uc[0] + half[0], uc[1] + half[1]]),
                float(r2),
            )
        )
    return cuts


# --- per-slice detections -> 3D lesions ------------------------------------------------------


@dataclass
class Track:
    """A chain of per-slice detections of one class (one 3D lesion candidate)."""

    label: int
    slices: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def link_detections(
    detections: Mapping[int, Mapping[str, np.ndarray]],
    iou_threshold: float = 0.3,
    max_gap: int = 1,
    overlap: str = "iou",
) -> list[Track]:
    """Greedy linking of per-slice detections into tracks.

    Args:
        detections: ``{slice_index: {"boxes": [N,4] xyxy px, "scores": [N], "labels": [N]}}``
            for the slices of ONE volume (all slices share the in-plane pixel grid).
        iou_threshold: minimum overlap between a detection and the last box of a track.
        max_gap: slices a track may skip (1: a detection missed on one slice is bridged).
        overlap: ``"iou"`` or ``"iomin"`` (intersection over the smaller area: 1 for nested
            boxes; the sections of one lesion near its poles shrink fast on thick slices, so
            their IoU with the neighbour can be small though they are nested); computed by
            :func:`dsod_core.boxes.box_iou`.

    Slices are visited in increasing order and their detections by decreasing score; each
    detection joins the open track of the same label with the highest IoU (ties: the more
    recent track) whose last slice is within ``max_gap + 1`` slices and which has no
    detection on this slice yet, else it opens a new track.
    """
    finished: list[Track] = []
    open_tracks: list[Track] = []
    for k in sorted(detections):
        det = detections[k]
        boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(det["labels"], dtype=np.int64).reshape(-1)
        still_open = []
        for t in open_tracks:
            (still_open if k - t.slices[-1] <= max_gap + 1 else finished).append(t)
        open_tracks = still_open
        taken: set[int] = set()
        # overlaps with the tracks open before this slice (those opened here are not joinable)
        n_prev = len(open_tracks)
        last = np.array([t.boxes[-1] for t in open_tracks], dtype=np.float64).reshape(-1, 4)
        overlaps = box_iou(boxes, last, mode=overlap)
        for i in np.argsort(-scores, kind="stable"):
            candidates = []
            for ti in range(n_prev):
                t = open_tracks[ti]
                if ti in taken or t.label != labels[i] or t.slices[-1] >= k:
                    continue
                iou = float(overlaps[i, ti])
                if iou >= iou_threshold:
                    candidates.append((iou, t.slices[-1], ti))
            best = max(candidates)[2] if candidates else None
            if best is None:
                open_tracks.append(Track(int(labels[i]), [k], [boxes[i]], [float(scores[i])]))
                taken.add(len(open_tracks) - 1)
            else:
                t = open_tracks[best]
                t.slices.append(k)
                t.boxes.append(boxes[i])
                t.scores.append(float(scores[i]))
                taken.add(best)
    return finished + open_tracks


def track_extent(track: Track, mode: str = "ellipsoid") -> tuple[np.ndarray, np.ndarray]:
    """Volume-pixel box ``(lo, hi)`` (``(x, y, z)`` each) of a track.

    ``"slab"``: the union of the slice boxes in-plane and the slabs ``[k_min - 0.5,
    k_max + 0.5]`` along z. ``"ellipsoid"``: fits the lesion model of
    :func:`ellipsoid_slice_cuts` — box area ``w*h`` is quadratic in z for an ellipsoid, so a
    least-squares parabola gives the equator ``z_c``, the z half-extent and (dividing each box
    by its ``sqrt(fraction)``) the equatorial size; this recovers the poles that small
    cross-sections lose. Falls back to ``"slab"`` with fewer than 3 slices or an implausible
    fit (not concave, equator outside the track, half-extent more than 1.5 slices beyond it).
    """
    boxes = np.stack(track.boxes)
    z = np.asarray(track.slices, dtype=np.float64)
    lo = np.array([boxes[:, 0].min(), boxes[:, 1].min(), z.min() - 0.5])
    hi = np.array([boxes[:, 2].max(), boxes[:, 3].max(), z.max() + 0.5])
    if mode == "slab" or len(z) < 3:
        return lo, hi
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    gamma, beta, alpha = np.polyfit(z, w * h, 2)
    if gamma >= 0:
        return lo, hi
    zc = -beta / (2 * gamma)
    peak = alpha - beta * beta / (4 * gamma)
    if peak <= 0 or not (z.min() - 1 <= zc <= z.max() + 1):
        return lo, hi
    half_z = float(np.sqrt(-peak / gamma))
    if half_z > (z.max() - z.min()) / 2 + 2.0 or half_z < np.abs(z - zc).max():
        return lo, hi
    frac = np.clip(1.0 - ((z - zc) / half_z) ** 2, 1e-6, None)
    w0 = float(np.mean(w / np.sqrt(frac)))
    h0 = float(np.mean(h / np.sqrt(frac)))
    # Centres may drift linearly with z (oblique affines); evaluate the fit at the equator.
    cx = np.polyval(np.polyfit(z, (boxes[:, 0] + boxes[:, 2]) / 2, 1), zc)
    cy = np.polyval(np.polyfit(z, (boxes[:, 1] + boxes[:, 3]) / 2, 1), zc)
    return (
        np.array([cx - w0 / 2, cy - h0 / 2, zc - half_z]),
        np.array([cx + w0 / 2, cy + h0 / 2, zc + half_z]),
    )


@dataclass
class Lesion3D:
    """A linked 3D detection: ``box`` cccwhd in world mm (frame of the affine), score, label
    (1..K), and the slices it spans."""

    box: np.ndarray
    score: float
    label: int
    slices: list[int]


def link_volume(
    detections: Mapping[int, Mapping[str, np.ndarray]],
    volume_affine: np.ndarray,
    iou_threshold: float = 0.3,
    max_gap: int = 1,
    score_mode: str = "max",
    extent: str = "ellipsoid",
    min_slices: int = 1,
    overlap: str = "iou",
) -> list[Lesion3D]:
    """Per-slice detections of one volume -> 3D lesions in world mm, by decreasing score.

    ``score_mode``: ``"max"`` or ``"mean"`` of the track's slice scores. Tracks shorter than
    ``min_slices`` are dropped. See :func:`link_detections` and :func:`track_extent`.
    """
    if score_mode not in ("max", "mean"):
        raise ValueError(f"score_mode must be 'max' or 'mean', got {score_mode!r}")
    lesions = []
    for t in link_detections(detections, iou_threshold, max_gap, overlap):
        if len(t.slices) < min_slices:
            continue
        lo, hi = track_extent(t, extent)
        score = max(t.scores) if score_mode == "max" else float(np.mean(t.scores))
        lesions.append(
            Lesion3D(
                box_corners_to_world_cccwhd(volume_affine, lo, hi),
                float(score),
                t.label,
                list(t.slices),
            )
        )
    lesions.sort(key=lambda les: -les.score)
    return lesions


def cuts_to_detections(
    cuts_per_lesion: Sequence[tuple[int, list[SliceCut]]], score: float = 1.0
) -> dict[int, dict[str, np.ndarray]]:
    """Turn slice cuts (``[(label, cuts), ...]``) into the per-slice detection dict that
    :func:`link_volume` takes (all with the same ``score``)."""
    out: dict[int, dict[str, list]] = {}
    for label, cuts in cuts_per_lesion:
        for c in cuts:
            d = out.setdefault(c.slice_index, {"boxes": [], "scores": [], "labels": []})
            d["boxes"].append(c.box)
            d["scores"].append(score)
            d["labels"].append(label)
    return {
        k: {
            "boxes": np.array(v["boxes"]).reshape(-1, 4),
            "scores": np.array(v["scores"]),
            "labels": np.array(v["labels"], dtype=np.int64),
        }
        for k, v in out.items()
    }
