"""Synthetic chest-CT-like demo data for the ``medical`` adapter, written as real NIfTI.

Each volume (HU, int16, ``image_size x image_size x 16`` voxels of 0.8 x 0.8 x 2.5 mm) has
air outside an elliptic body (soft tissue ~20 HU), two lungs (~ -850 HU) tapering towards the
ends, a spine (~600 HU), thin vessels running through the lungs (~40 HU) and Gaussian noise
(sigma 15 HU). The affine flips x and y (``diag(-0.8, -0.8, 2.5)``), as DICOM-to-NIfTI
converters write LPS-ordered scans, so the reader's reorientation to RAS is exercised.

Lesions, 2-3 per volume at staggered heights, inside the lungs:

* class 0 ``solid_nodule``: a sphere, sharp edge, +40 HU;
* class 1 ``ground_glass``: an ellipsoid elongated ~1.4x in-plane, soft (sigmoid) edge,
  -500 HU at the core; its box is the half-maximum surface.

Radii are 6.25-15 % of ``image_size`` in-plane (6-14 px at 96). ``datalist.json`` holds
``training``/``validation``/``test`` entries with boxes cccwhd in LPS world mm and 0-based
labels (the MONAI LUNA16 convention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from dsod_core.io import atomic_path, write_json
from modalities.medical.linking import apply_affine, lps_ras_flip

DEMO_CLASSES = ["solid_nodule", "ground_glass"]
_DEPTH = 16
_SPACING = (0.8, 0.8, 2.5)
_SPLIT_CYCLE = ["train", "val", "test", "train", "train", "train", "train"]
_KEYS = {"train": "training", "val": "validation", "test": "test"}
_NEGATIVE_RATE = 0.25


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def _volume(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One volume ``[size, size, D]`` (HU, float) and its lesions in voxel units."""
    d = _DEPTH
    i, j, k = np.meshgrid(
        np.arange(size, dtype=np.float32),
        np.arange(size, dtype=np.float32),
        np.arange(d, dtype=np.float32),
        indexing="ij",
    )
    c = (size - 1) / 2.0
    vol = np.full((size, size, d), -1000.0, dtype=np.float32)
    body = ((i - c) / (0.47 * size)) ** 2 + ((j - c) / (0.40 * size)) ** 2 <= 1
    vol[body] = 20.0
    taper = 0.8 + 0.2 * np.sin(np.pi * (k + 0.5) / d)
    lungs = []
    lung_mask = np.zeros_like(body)
    for side in (-1, 1):
        lx, ly = c + side * 0.21 * size, c - 0.03 * size
        ax, ay = 0.17 * size, 0.27 * size
        lungs.append((lx, ly, ax, ay))
        lung_mask |= ((i - lx) / (ax * taper)) ** 2 + ((j - ly) / (ay * taper)) ** 2 <= 1
    vol[lung_mask] = -850.0
    spine = (i - c) ** 2 + (j - (c + 0.29 * size)) ** 2 <= (0.07 * size) ** 2
    vol[spine] = 600.0
    for lx, ly, ax, ay in lungs:
        for _ in range(3):
            x0 = lx + rng.uniform(-0.6, 0.6) * ax
            y0 = ly + rng.uniform(-0.6, 0.6) * ay
            sx, sy = rng.uniform(-0.4, 0.4, size=2)
            rad = rng.uniform(0.010, 0.018) * size
            dist = np.hypot(i - (x0 + sx * (k - d / 2)), j - (y0 + sy * (k - d / 2)))
            vessel = _sigmoid((rad - dist) / 0.4) * lung_mask
            vol += vessel * (40.0 - vol)
    lesions = []
    n = int(rng.integers(2, 4))
    heights = np.linspace(0.2, 0.8, n) * d + rng.uniform(-1.0, 1.0, size=n)
    first_class = int(rng.integers(0, 2))
    first_side = int(rng.integers(0, 2))
    for m in range(n):
        cls = (first_class + m) % 2
        lx, ly, ax, ay = lungs[(first_side + m) % 2]
        r_px = rng.uniform(0.0625, 0.15) * size
        r_mm = r_px * _SPACING[0]
        semi = np.array([r_px, r_px, r_mm / _SPACING[2]])
        if cls == 1:
            stretch = rng.uniform(1.3, 1.5)
            semi[int(rng.integers(0, 2))] *= stretch
            semi[:2] = np.minimum(semi[:2], [0.9 * ax, 0.9 * ay])
        room = np.maximum(np.array([ax, ay]) * 0.85 - semi[:2], 0.0)
        centre = np.array(
            [
                lx + rng.uniform(-0.5, 0.5) * room[0],
                ly + rng.uniform(-0.5, 0.5) * room[1],
                heights[m],
            ]
        )
        rr = np.sqrt(
            ((i - centre[0]) / semi[0]) ** 2
            + ((j - centre[1]) / semi[1]) ** 2
            + ((k - centre[2]) / semi[2]) ** 2
        )
        if cls == 0:
            weight = _sigmoid((1.0 - rr) / 0.03)
            vol += weight * (40.0 - vol)
        else:
            weight = _sigmoid((1.0 - rr) / 0.12)
            vol += weight * (-500.0 - vol)
        lesions.append({"centre": centre, "semi": semi, "label": cls})
    vol += rng.normal(0.0, 15.0, size=vol.shape).astype(np.float32)
    return vol, lesions


def write_medical_demo(
    out_dir: str | Path,
    *,
    num_images: int,
    image_size: int,
    seed: int,
) -> dict[str, Any]:
    """Write volumes until they give about ``num_images`` stored slices; return the params."""
    if image_size < 16:
        raise ValueError("image_size must be >= 16 for the medical demo")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = np.diag([-_SPACING[0], -_SPACING[1], _SPACING[2], 1.0])
    # Origin chosen so the scan is roughly centred on the world origin, plus an offset.
    affine[:3, 3] = [
        _SPACING[0] * (image_size - 1) / 2 + 3.2,
        _SPACING[1] * (image_size - 1) / 2 - 12.4,
        -_SPACING[2] * (_DEPTH - 1) / 2 - 150.0,
    ]
    doc: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    expected = 0.0
    n = 0
    while expected < num_images or n < len(set(_SPLIT_CYCLE)):
        split = _SPLIT_CYCLE[n % len(_SPLIT_CYCLE)]
        vol, lesions = _volume(rng, image_size)
        rel = f"images/ct_{n:03d}.nii.gz"
        img = nib.Nifti1Image(np.round(vol).astype(np.int16), affine)
        img.header.set_xyzt_units("mm")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        with atomic_path(out / rel, suffix=".nii.gz") as tmp:
            nib.save(img, str(tmp))
        boxes, labels = [], []
        positive: set[int] = set()
        for les in lesions:
            centre_ras = apply_affine(affine, les["centre"][None])[0]
            size_mm = 2.0 * les["semi"] * np.array(_SPACING)
            boxes.append(lps_ras_flip(np.concatenate([centre_ras, size_mm])[None])[0])
            labels.append(les["label"])
            cz, hz = les["centre"][2], les["semi"][2]
            positive |= {k for k in range(_DEPTH) if abs(k - cz) < hz}
        doc[_KEYS[split]].append(
            {"image": rel, "box": np.round(boxes, 4).tolist(), "label": labels}
        )
        if split == "test":
            expected += _DEPTH
        else:
            expected += len(positive) + _NEGATIVE_RATE * (_DEPTH - len(positive))
        n += 1
    write_json(out / "datalist.json", doc, indent=1)
    params = {
        "datalist": "datalist.json",
        "world_frame": "LPS",
        "class_names": list(DEMO_CLASSES),
        "intensity": "ct",
        "windows": ["lung", "mediastinum"],
        "slice_context": 1,
        "negative_slice_rate": _NEGATIVE_RATE,
        "min_cross_section": 0.2,
    }
    return params
