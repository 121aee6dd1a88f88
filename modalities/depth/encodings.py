"""Depth-map encodings: metres -> the channels the detector sees.

Camera frame (everywhere in this package): x to the right, y down, z forward (along the
optical axis), in metres. Pixel ``(row v, col u)`` has its centre at the OpenCV pixel index
``(u, v)``; a pixel at depth ``z`` back-projects to ``((u - cx) z / fx, (v - cy) z / fy, z)``.

Every function takes an already *filled* depth map (no holes, all values > 0) plus the mask
of pixels that held a real reading; nothing here can produce NaN or inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

ENCODING_CHANNELS: dict[str, list[str]] = {
    "depth": ["depth_m"],
    "disparity": ["disparity_per_m"],
    "normals": ["normal_x", "normal_y", "normal_z"],
    "hha": ["hha_disparity_per_m", "hha_height_m", "hha_angle_deg"],
    "rgbd": ["red", "green", "blue", "depth_m"],
}
VALIDITY_CHANNEL = "depth_valid"
NEEDS_INTRINSICS = frozenset({"normals", "hha"})


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels (OpenCV convention: pixel index = pixel centre)."""

    fx: float
    fy: float
    cx: float
    cy: float

    def as_dict(self) -> dict[str, float]:
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy}


def fill_missing(depth_m: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill pixels without a reading with the depth of the nearest valid pixel.

    Args:
        depth_m: float ``[H, W]`` metres; values where ``valid`` is False are ignored.
        valid: bool ``[H, W]``; at least one True.
    Returns:
        float32 ``[H, W]`` metres, equal to ``depth_m`` on valid pixels.
    """
    if valid.all():
        return depth_m.astype(np.float32, copy=True)
    # The Euclidean distance transform with indices gives, for every hole, the coordinates of
    # the nearest valid pixel: a nearest-neighbour fill in one vectorised call.
    _, (iy, ix) = ndimage.distance_transform_edt(~valid, return_indices=True)
    return depth_m[iy, ix].astype(np.float32)


def backproject(depth_m: np.ndarray, k: Intrinsics) -> np.ndarray:
    """Camera-frame points ``[H, W, 3]`` (metres) of a depth map ``[H, W]`` (metres)."""
    h, w = depth_m.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    z = depth_m.astype(np.float64)
    return np.stack([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z], axis=-1)


def surface_normals(depth_m: np.ndarray, k: Intrinsics, smoothing_px: float = 1.0) -> np.ndarray:
    """Unit surface normals ``[H, W, 3]`` in the camera frame, facing the camera.

    Convention: a normal points out of the surface towards the camera, so ``n . P <= 0``; a
    wall facing the camera has ``n = (0, 0, -1)`` and a floor seen by a level camera
    ``n = (0, -1, 0)`` (y is down). Computed from the cross product of the image-space
    tangents of the back-projected points, after a Gaussian smoothing of the depth
    (``smoothing_px``; 0 turns it off) to tame sensor noise.
    """
    z = depth_m.astype(np.float64)
    if smoothing_px > 0:
        z = ndimage.gaussian_filter(z, smoothing_px, mode="nearest")
    pts = backproject(z, k)
    d_dv, d_du = np.gradient(pts, axis=(0, 1))
    # (dP/dv) x (dP/du) faces the camera for a surface seen from the front (-z for a wall).
    n = np.cross(d_dv, d_du)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    degenerate = norm[..., 0] < 1e-12
    n = np.where(norm > 1e-12, n / np.maximum(norm, 1e-12), 0.0)
    n[degenerate] = (0.0, 0.0, -1.0)
    # At depth discontinuities the tangents mix two surfaces; flip any normal that ended up
    # facing away so the convention holds everywhere.
    facing_away = (n * pts).sum(-1) > 0
    n[facing_away] *= -1.0
    return n


def estimate_up(
    normals: np.ndarray, valid: np.ndarray, iterations: tuple[float, ...] = (45.0, 15.0)
) -> np.ndarray:  # noqa: E501
    """Estimate the "up" direction (opposite to gravity) in the camera frame, unit ``[3]``.

    Gupta et al. (ECCV 2014) style, simplified: start from the camera's -y axis (the camera
    assumed roughly level, y down). At each iteration with threshold ``t`` degrees, take the
    valid normals within ``t`` of the current up/down axis (floors, table tops, ceilings) and
    those within ``t`` of perpendicular to it (walls, object sides); the new up is the
    direction most aligned with the first set and most perpendicular to the second: the
    eigenvector of the smallest eigenvalue of ``sum_perp n n^T - sum_par n n^T``, signed to
    agree with the previous estimate. Without enough horizontal surfaces (< 1% of valid pixels)
    the estimate is kept, so a view of a bare wall stays at the camera's -y.
    """
    up = np.array([0.0, -1.0, 0.0])
    n = normals[valid].reshape(-1, 3)
    if len(n) == 0:
        return up
    for thr in iterations:
        cos_a = n @ up
        par = np.abs(cos_a) > np.cos(np.deg2rad(thr))
        perp = np.abs(cos_a) < np.sin(np.deg2rad(thr))
        if par.sum() < max(10, 0.01 * len(n)):
            break
        m = n[perp].T @ n[perp] - n[par].T @ n[par]
        _, vecs = np.linalg.eigh(m)
        new_up = vecs[:, 0]
        if new_up @ up < 0:
            new_up = -new_up
        up = new_up / np.linalg.norm(new_up)
    return up


def hha(
    depth_m: np.ndarray, valid: np.ndarray, k: Intrinsics, smoothing_px: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """HHA encoding ``[3, H, W]`` float32 and the estimated up vector ``[3]``.

    Channels (physical units; the store normalises them):
        0. horizontal disparity ``1 / depth`` (1/m);
        1. height above the estimated ground (m): ``P . up`` minus its 1st percentile over
           valid pixels (the floor, or the lowest surface seen);
        2. angle (degrees, 0..180) between the surface normal and the estimated up direction
           (the opposite of gravity): 0 for floors and table tops, 90 for walls.
    """
    pts = backproject(depth_m, k)
    normals = surface_normals(depth_m, k, smoothing_px)
    up = estimate_up(normals, valid)
    h = pts @ up
    ground = np.percentile(h[valid], 1.0) if valid.any() else float(h.min())
    angle = np.rad2deg(np.arccos(np.clip(normals @ up, -1.0, 1.0)))
    out = np.stack([1.0 / depth_m, h - ground, angle]).astype(np.float32)
    return out, up


def encode(
    encoding: str,
    depth_m: np.ndarray,
    valid: np.ndarray,
    k: Intrinsics | None,
    rgb: np.ndarray | None = None,
    *,
    validity_channel: bool = False,
    smoothing_px: float = 1.0,
) -> tuple[np.ndarray, dict]:
    """Encode a filled depth map.

    Args:
        encoding: one of :data:`ENCODING_CHANNELS`.
        depth_m: float ``[H, W]`` metres, filled, all > 0.
        valid: bool ``[H, W]``, True where the sensor gave a reading.
        k: intrinsics (required by ``normals`` and ``hha``).
        rgb: uint8 ``[H, W, 3]`` aligned colour image (required by ``rgbd``).
        validity_channel: append ``valid`` as a 0/1 channel.
    Returns:
        float32 ``[C, H, W]`` with ``C = len(ENCODING_CHANNELS[encoding]) (+1)``, and extra
        JSON-serialisable metadata (the gravity estimate for ``hha``).
    """
    extra: dict = {}
    if encoding == "depth":
        img = depth_m[None]
    elif encoding == "disparity":
        img = (1.0 / depth_m)[None]
    elif encoding == "normals":
        img = surface_normals(depth_m, k, smoothing_px).transpose(2, 0, 1)
    elif encoding == "hha":
        img, up = hha(depth_m, valid, k, smoothing_px)
        extra["up_camera_frame"] = [float(x) for x in up]
    elif encoding == "rgbd":
        img = np.concatenate([rgb.transpose(2, 0, 1).astype(np.float32) / 255.0, depth_m[None]])
    else:  # guarded by the adapter's param check
        raise ValueError(f"unknown encoding {encoding!r}")
    if validity_channel:
        img = np.concatenate([img, valid[None].astype(np.float32)])
    return np.ascontiguousarray(img, dtype=np.float32), extra
