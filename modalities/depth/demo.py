"""Synthetic indoor depth scenes, ray cast in numpy, written in the native depth format.

World frame: X right, Y up, Z forward (horizontal), metres; the floor is ``Y = 0``. A pinhole
camera at height 1.0-1.5 m, pitched down 8-22 degrees, looks along +Z into a room with a
back wall and two side walls. Each scene holds 1-3 objects standing on the floor, one of three
classes that differ in 3D shape: ``box`` (a yawed cuboid), ``sphere`` and ``cylinder`` (upright,
tall and thin). Each object's size is drawn proportional to its distance, and every class
uses the same distance range, so depth alone does not tell the classes apart; shape does.

Per pixel the renderer intersects the camera ray with every primitive analytically (all pixels
at once) and keeps the nearest hit (a z-buffer over primitives). Stored depth is the camera
``z`` (as Kinect-style sensors report), with Gaussian noise whose sigma grows with the square
of the distance, quantised to millimetres, dropout holes at depth edges (p = 0.6 within one
pixel of a discontinuity) and a sprinkling of random missing pixels; 0 = no reading.

The room also holds 1-3 unlabelled fixtures (clutter): wall cabinets, shelves sticking out of
the side walls and tables on four legs near the back wall, so that not every surface that
stands out is an object.

Boxes are the tight boxes of each object's *visible* pixels; scenes where an object is more
than 40% occluded or cut by the image border are redrawn, so every labelled object is clearly
visible.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from dsod_core.io import write_atomic, write_json

CLASSES = ("box", "cylinder", "sphere")
_MAX_DEPTH_MM = 10_000


def _camera(size: int) -> dict[str, float]:
    f = 0.9 * size  # ~58 degree field of view, like a Kinect
    c = (size - 1) / 2.0
    return {"fx": f, "fy": f, "cx": c, "cy": c}


def _rays(size: int, k: dict[str, float], pitch: float) -> np.ndarray:
    """World-frame ray directions ``[H, W, 3]`` whose camera-z component is 1 (so the ray
    parameter t of a hit *is* the camera depth)."""
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    cam = np.stack([(u - k["cx"]) / k["fx"], (v - k["cy"]) / k["fy"], np.ones_like(u)], -1)
    s, c = np.sin(pitch), np.cos(pitch)
    # Columns: camera x (right), y (down), z (forward) expressed in world (X, Y up, Z).
    rot = np.array([[1.0, 0.0, 0.0], [0.0, -c, -s], [0.0, -s, c]]).T
    return cam @ rot.T


def _plane(o: np.ndarray, d: np.ndarray, axis: int, value: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (value - o[axis]) / d[..., axis]
    return np.where(t > 1e-6, t, np.inf)


def _sphere(o, d, centre, r) -> np.ndarray:
    oc = o - centre
    a = (d * d).sum(-1)
    b = 2 * (d @ oc)
    c = oc @ oc - r * r
    disc = b * b - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    return np.where((disc >= 0) & (t > 1e-6), t, np.inf)


def _cylinder(o, d, x, z, r, height) -> np.ndarray:
    ox, oz = o[0] - x, o[2] - z
    a = d[..., 0] ** 2 + d[..., 2] ** 2
    b = 2 * (d[..., 0] * ox + d[..., 2] * oz)
    c = ox * ox + oz * oz - r * r
    disc = b * b - 4 * a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    y = o[1] + t_side * d[..., 1]
    t_side = np.where((disc >= 0) & (t_side > 1e-6) & (y >= 0) & (y <= height), t_side, np.inf)
    t_cap = _plane(o, d, 1, height)
    px = o[0] + t_cap * d[..., 0] - x
    pz = o[2] + t_cap * d[..., 2] - z
    with np.errstate(invalid="ignore"):
        t_cap = np.where(px * px + pz * pz <= r * r, t_cap, np.inf)
    return np.minimum(t_side, t_cap)


def _cuboid(o, d, centre, half, yaw) -> np.ndarray:
    cy, sy = np.cos(yaw), np.sin(yaw)
    # World -> box frame: rotate about the vertical axis by -yaw.
    rot = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    ol = rot @ (o - centre)
    dl = d @ rot.T
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - ol) / dl
        t2 = (half - ol) / dl
    t1 = np.nan_to_num(t1, nan=-np.inf)
    t2 = np.nan_to_num(t2, nan=np.inf)
    tmin = np.minimum(t1, t2).max(-1)
    tmax = np.maximum(t1, t2).min(-1)
    return np.where((tmax >= tmin) & (tmin > 1e-6), tmin, np.inf)


def _draw_objects(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    tries = 0
    # Classes are drawn first and kept while positions are redrawn, so big-footprint boxes
    # are not under-represented by the collision rejection.
    wanted = [CLASSES[int(c)] for c in rng.integers(len(CLASSES), size=n)]
    while len(objs) < n and tries < 50:
        tries += 1
        dist = rng.uniform(1.8, 4.2)  # same range for every class
        x = rng.uniform(-0.33, 0.33) * dist
        size = dist * rng.uniform(0.26, 0.46)  # projected height ~ 0.23-0.41 of the image
        cls = wanted[len(objs)]
        if cls == "sphere":
            shape = {"r": 0.45 * size}
            foot = shape["r"]
        elif cls == "cylinder":
            shape = {"r": 0.2 * size, "h": size}
            foot = shape["r"]
        else:
            w, dd, h = size * rng.uniform(0.7, 1.0, 3)
            shape = {"half": np.array([w / 2, h / 2, dd / 2]), "yaw": rng.uniform(0, np.pi / 2)}
            foot = float(np.hypot(w, dd) / 2)
        if any(np.hypot(x - p["x"], dist - p["z"]) < foot + p["foot"] + 0.05 for p in objs):
            continue  # no interpenetrating objects
        objs.append({"cls": cls, "x": x, "z": dist, "foot": foot, **shape})
    return objs


def _draw_clutter(rng: np.random.Generator, room_x: float, room_z: float) -> list[dict]:
    """1-3 unlabelled fixtures, as a room holds besides the objects: wall cabinets on the back
    wall, shelves sticking out of a side wall (both off the floor) and tables (a thin top on
    four legs) near the back wall; cuboids, returned as parts."""
    parts = []

    def part(centre, half):
        parts.append({"cls": None, "centre": np.array(centre), "half": np.array(half)})

    for _ in range(int(rng.integers(1, 4))):
        kind = rng.choice(["cabinet", "shelf", "table"])
        if kind == "cabinet":
            hx, hy, hz = rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.3)
            part([rng.uniform(-1.5, 1.5), rng.uniform(0.9, 1.9), room_z - hz], [hx, hy, hz])
        elif kind == "shelf":
            side = 1.0 if rng.random() < 0.5 else -1.0
            hx, hy, hz = rng.uniform(0.2, 0.45), rng.uniform(0.02, 0.05), rng.uniform(0.3, 0.7)
            z = rng.uniform(3.0, room_z - 0.5)
            part([side * (room_x - hx), rng.uniform(0.4, 1.7), z], [hx, hy, hz])
        else:
            hx, hz, top = rng.uniform(0.35, 0.7), rng.uniform(0.25, 0.45), rng.uniform(0.65, 0.8)
            x, z = rng.uniform(-1.2, 1.2), room_z - hz - rng.uniform(0.0, 0.8)
            part([x, top, z], [hx, 0.025, hz])
            for sx in (-1, 1):
                for sz in (-1, 1):
                    leg = [x + sx * (hx - 0.03), top / 2, z + sz * (hz - 0.03)]
                    part(leg, [0.025, top / 2, 0.025])
    return parts


def _hit(o: np.ndarray, d: np.ndarray, obj: dict[str, Any]) -> np.ndarray:
    if obj["cls"] is None:  # clutter
        return _cuboid(o, d, obj["centre"], obj["half"], 0.0)
    if obj["cls"] == "sphere":
        return _sphere(o, d, np.array([obj["x"], obj["r"], obj["z"]]), obj["r"])
    if obj["cls"] == "cylinder":
        return _cylinder(o, d, obj["x"], obj["z"], obj["r"], obj["h"])
    centre = np.array([obj["x"], obj["half"][1], obj["z"]])
    return _cuboid(o, d, centre, obj["half"], obj["yaw"])


def render_scene(
    rng: np.random.Generator, size: int
) -> tuple[np.ndarray, list[tuple[str, list[int]]], dict[str, float]] | None:
    """Render one scene: camera depth ``[H, W]`` (m, noise-free), ``[(class, [x1, y1, x2, y2])]``
    integer pixel boxes of the visible objects, and the intrinsics. ``None`` if the draw fails
    the visibility rules (the caller redraws)."""
    k = _camera(size)
    pitch = np.deg2rad(rng.uniform(8, 22))
    o = np.array([0.0, rng.uniform(1.0, 1.5), 0.0])
    d = _rays(size, k, pitch)
    room_z, room_x = rng.uniform(5.0, 7.0), rng.uniform(2.5, 3.5)
    depth = np.minimum.reduce(
        [
            _plane(o, d, 1, 0.0),
            _plane(o, d, 2, room_z),
            _plane(o, d, 0, room_x),
            _plane(o, d, 0, -room_x),
        ]
    )
    objs = _draw_objects(rng, int(rng.integers(1, 4)))
    ids = np.full(depth.shape, -1)
    for fixture in _draw_clutter(rng, room_x, room_z):
        depth = np.minimum(depth, _hit(o, d, fixture))  # id -1: background, never labelled
    alone = []
    for i, obj in enumerate(objs):
        t = _hit(o, d, obj)
        alone.append(np.isfinite(t))
        closer = t < depth
        depth = np.where(closer, t, depth)
        ids[closer] = i
    boxes = []
    for i, obj in enumerate(objs):
        full = alone[i]
        vis = ids == i
        if full.sum() < 40 or vis.sum() < 0.6 * full.sum():
            return None
        rows, cols = np.nonzero(full)
        if rows.min() == 0 or cols.min() == 0 or rows.max() == size - 1 or cols.max() == size - 1:
            return None  # cut by the border: redraw rather than label a fragment
        rows, cols = np.nonzero(vis)
        boxes.append(
            (
                obj["cls"],
                [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1],
            )
        )
    if not np.isfinite(depth).all():
        return None
    return depth, boxes, k


def sensor_model(rng: np.random.Generator, depth_m: np.ndarray) -> np.ndarray:
    """Noise-free depth (m) -> uint16 mm like a structured-light sensor (0 = no reading)."""
    sigma = 0.001 + 0.0015 * depth_m**2
    noisy = depth_m + rng.normal(size=depth_m.shape) * sigma
    # Holes at depth edges: relative jump to any 4-neighbour above 5%, widened by one pixel.
    jump = np.zeros(depth_m.shape, dtype=bool)
    dy = np.abs(np.diff(depth_m, axis=0)) > 0.05 * depth_m[1:]
    dx = np.abs(np.diff(depth_m, axis=1)) > 0.05 * depth_m[:, 1:]
    jump[1:] |= dy
    jump[:-1] |= dy
    jump[:, 1:] |= dx
    jump[:, :-1] |= dx
    edge = ndimage.binary_dilation(jump)
    drop = (edge & (rng.random(depth_m.shape) < 0.6)) | (rng.random(depth_m.shape) < 0.005)
    mm = np.clip(np.round(noisy * 1000.0), 0, _MAX_DEPTH_MM)
    mm[drop] = 0
    return mm.astype(np.uint16)


def _voc_xml(stem: str, size: int, boxes: list[tuple[str, list[int]]]) -> str:
    objs = "".join(
        f"  <object>\n    <name>{c}</name>\n    <difficult>0</difficult>\n    <bndbox>"
        f"<xmin>{b[0] + 1}</xmin><ymin>{b[1] + 1}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>"
        "</bndbox>\n  </object>\n"
        for c, b in boxes
    )
    return (
        f"<annotation>\n  <folder>depth</folder>\n  <filename>{stem}.png</filename>\n"
        f"  <size><width>{size}</width><height>{size}</height><depth>1</depth></size>\n"
        f"{objs}</annotation>\n"
    )


def write_demo(
    out_dir: str | Path, *, num_images: int = 240, image_size: int = 96, seed: int = 0
) -> dict[str, Any]:
    """Write ``num_images`` rendered scenes under ``out_dir`` (VOC layout: ``depth/*.png``
    16-bit mm, ``Annotations/*.xml``, ``intrinsics.json``, ``ImageSets/Main/{train,val,test}.txt``
    split 70/15/15) and return the adapter params that read them: the ``hha`` encoding plus a
    validity channel (shape shows best in surface orientation and height above the floor)."""
    out = Path(out_dir)
    for sub in ("depth", "Annotations", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k = _camera(image_size)
    stems = []
    for i in range(num_images):
        scene = None
        while scene is None:
            scene = render_scene(rng, image_size)
        depth, boxes, _ = scene
        stem = f"scene_{i:05d}"
        buf = io.BytesIO()
        Image.fromarray(sensor_model(rng, depth)).save(buf, format="PNG")
        write_atomic(out / "depth" / f"{stem}.png", buf.getvalue())
        write_atomic(out / "Annotations" / f"{stem}.xml", _voc_xml(stem, image_size, boxes))
        stems.append(stem)
    write_json(out / "intrinsics.json", k, indent=1)
    order = rng.permutation(len(stems))
    n_test = max(1, round(0.15 * len(stems))) if len(stems) >= 3 else 0
    n_val = max(1, round(0.15 * len(stems))) if len(stems) >= 3 else 0
    split_of = {}
    for rank, idx in enumerate(order):
        split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
        split_of[stems[idx]] = split
    for split in ("train", "val", "test"):
        names = [s for s in stems if split_of[s] == split]
        write_atomic(out / "ImageSets/Main" / f"{split}.txt", "".join(f"{s}\n" for s in names))
    return {
        "layout": "voc",
        "encoding": "hha",
        "validity_channel": True,
        "depth_unit": "mm",
        "min_depth_m": 0.1,
        "max_depth_m": 10.0,
        "class_names": list(CLASSES),
    }
