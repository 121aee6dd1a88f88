"""Synthetic chest-CT-like demo data for the ``medical`` adapter, written as real NIfTI.

Each volume (HU, int16, ``image_size x image_size x 8`` voxels of 0.6 x 0.6 x 2.5 mm: a
38 x 38 x 20 mm patch at 64 px) has air outside an elliptic body (soft tissue ~40 HU), two
lungs (~ -860 HU, with a smooth parenchymal texture, sigma 20 HU), a spine (~500 HU) and
vessels: 2-3 tubes per lung, 1-2.6 mm across, with the density excess of the solid nodules;
most run through the axial plane (a slice cuts them as round spots, like a small nodule), one
per lung obliquely (a streak). The affine flips x and y (``diag(-0.6, -0.6, 2.5)``), as
DICOM-to-NIfTI converters write LPS-ordered scans, so the reader's reorientation to RAS is
exercised.

Lesions, 3-4 per volume at staggered heights inside the lungs (fewer where one does not fit
clear of the others), 3-10 mm across, about a third of them moved to touch a vessel
(juxtavascular):

* class 0 ``solid_nodule``: a sphere, sharp edge, +500..+800 HU over the lung;
* class 1 ``ground_glass``: an ellipsoid elongated 1.2-1.4x in-plane, soft (sigmoid) edge,
  +350..+500 HU at the core; its box is the half-maximum surface.

Then the whole volume is blurred (Gaussian, sigma 1 voxel in-plane, 0.4 slice through-plane:
partial volume) and correlated noise (sigma 40 HU) is added. A single slice does not tell a
small nodule from a vessel cut across; the neighbouring slices (``slice_context``: a vessel
goes on, a nodule shrinks and ends) and the shape do.

``datalist.json`` holds ``training``/``validation``/``test`` entries with boxes cccwhd in LPS
world mm and 0-based labels (the MONAI LUNA16 convention). Volumes go to the splits in a fixed
cycle of 10 (5 train, 1 validation, 4 test) until the train and validation volumes give about
``num_images`` stored slices and there are at least ``num_images / 12`` test volumes; the test
split keeps every slice of its volumes (the full-scan FROC), so the total is larger than
``num_images`` (about 480 slices, 30 test volumes at ``num_images=240``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

from dsod_core.io import atomic_path, write_json
from modalities.medical.linking import apply_affine, lps_ras_flip

DEMO_CLASSES = ["solid_nodule", "ground_glass"]
DEPTH = 8
_SPACING = (0.6, 0.6, 2.5)
_SPLIT_CYCLE = ["train", "test", "train", "val", "train", "test", "train", "test", "train", "test"]
_KEYS = {"train": "training", "val": "validation", "test": "test"}
_NEGATIVE_RATE = 0.25
_TRAIN_VAL_SHARE = 1.0  # of num_images: the train + validation slices aimed for
_TEST_VOLUMES_PER_IMAGE = 1 / 12  # at least this many test volumes per num_images
_LUNG_HU = -860.0
_BLUR = (1.0, 1.0, 0.4)  # partial-volume blur, voxels
_NOISE_HU = 40.0
_TEXTURE_HU = 20.0
_SOLID_HU = (500.0, 800.0)  # density excess over the lung: solid nodules and vessels
_GGO_HU = (350.0, 500.0)
_VESSELS_PER_LUNG = (2, 4)  # integers low (inclusive) .. high (exclusive)
_VESSEL_RADIUS_MM = (0.5, 1.3)
_LESION_RADIUS_MM = (1.5, 5.0)
_MIN_CROSS_SECTION = 0.2  # smaller lesion sections are difficult (the adapter param)
_JUXTAVASCULAR = 0.35  # share of lesions moved beside a vessel
_LESIONS_PER_VOLUME = (3, 5)  # integers low (inclusive) .. high (exclusive)
# Lesion boxes lie this far apart (voxels) along some axis: in-plane, or 2.5 slices in z so
# that two lesions above each other are not one track for the 3D linking (link_gap 1).
_LESION_GAP = np.array([1.0, 1.0, 2.5])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _vessels(
    rng: np.random.Generator,
    pts: np.ndarray,
    lungs: list[tuple[float, float, float, float]],
) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray, float]]]:
    """Density excess (HU over the lung) of the vessels and their axes ``(lung, point mm,
    unit direction, radius mm)``; ``pts`` are the voxel centres in mm."""
    excess = np.zeros(pts.shape[:-1], dtype=np.float32)
    axes = []
    zc = (DEPTH - 1) / 2 * _SPACING[2]
    for side, (lx, ly, ax, ay) in enumerate(lungs):
        for v in range(int(rng.integers(*_VESSELS_PER_LUNG))):
            centre = np.array(
                [
                    (lx + rng.uniform(-0.8, 0.8) * ax) * _SPACING[0],
                    (ly + rng.uniform(-0.8, 0.8) * ay) * _SPACING[1],
                    zc,
                ]
            )
            if v == 0:  # oblique to in-plane: an elongated streak in a slice
                tilt = rng.uniform(0.9, 1.5)
            else:  # through-plane: a round spot, drifting a little from slice to slice
                tilt = rng.uniform(0.0, 0.45)
            azimuth = rng.uniform(0, 2 * np.pi)
            direction = _unit(
                np.array(
                    [np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth), np.cos(tilt)]
                )
            )
            radius = rng.uniform(*_VESSEL_RADIUS_MM)
            d = pts - centre
            along = d @ direction
            dist = np.linalg.norm(d - along[..., None] * direction, axis=-1)
            hu = rng.uniform(*_SOLID_HU)
            excess = np.maximum(excess, hu * _sigmoid((radius - dist) / 0.25))
            axes.append((side, centre, direction, radius))
    return excess, axes


def _beside_vessel(
    rng: np.random.Generator,
    centre: np.ndarray,
    r_mm: float,
    vessels: list[tuple[np.ndarray, np.ndarray, float]],
) -> np.ndarray | None:
    """``centre`` (voxels) moved in-plane to touch the nearest of ``vessels`` (a
    juxtavascular nodule), at the same height; None when that vessel point lies above or
    below the volume."""
    here = centre * np.array(_SPACING)

    def distance(v: tuple[np.ndarray, np.ndarray, float]) -> float:
        d = here - v[0]
        return float(np.linalg.norm(d - (d @ v[1]) * v[1]))

    p, u, rv = min(vessels, key=distance)
    foot = p + ((here - p) @ u) * u  # the closest point of the vessel's axis
    away = here - foot
    away[2] = 0.0
    if np.linalg.norm(away) < 1e-6:
        away = np.array([1.0, 0.0, 0.0])
    moved = (foot + _unit(away) * (r_mm + rv + rng.uniform(-0.3, 1.0))) / np.array(_SPACING)
    if not 0 <= moved[2] <= DEPTH - 1:
        return None
    return np.array([moved[0], moved[1], centre[2]])


def _place_lesion(
    rng: np.random.Generator,
    lung: tuple[float, float, float, float],
    semi: np.ndarray,
    r_mm: float,
    height: float,
    vessels: list[tuple[np.ndarray, np.ndarray, float]],
    placed: list[dict[str, Any]],
) -> np.ndarray | None:
    """A centre (voxels) for a lesion of semi-axes ``semi`` at ``height`` in ``lung``: random
    in the lung, moved beside a vessel for a share of lesions, its box clear of the boxes of
    the lesions ``placed`` (``_LESION_GAP`` apart along some axis); None after 20 tries."""
    lx, ly, ax, ay = lung
    room = np.maximum(np.array([ax, ay]) * 0.8 - semi[:2], 0.0)
    for _ in range(20):
        centre = np.array(
            [
                lx + rng.uniform(-0.5, 0.5) * room[0],
                ly + rng.uniform(-0.5, 0.5) * room[1],
                height,
            ]
        )
        if vessels and rng.uniform() < _JUXTAVASCULAR:
            moved = _beside_vessel(rng, centre, r_mm, vessels)
            if (
                moved is not None
                and ((moved[0] - lx) / ax) ** 2 + ((moved[1] - ly) / ay) ** 2 <= 0.6
            ):
                centre = moved
        if all(
            (np.abs(centre - o["centre"]) >= semi + o["semi"] + _LESION_GAP).any() for o in placed
        ):
            return centre
    return None


def _volume(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One volume ``[size, size, D]`` (HU, float) and its lesions in voxel units."""
    d = DEPTH
    i, j, k = np.meshgrid(
        np.arange(size, dtype=np.float32),
        np.arange(size, dtype=np.float32),
        np.arange(d, dtype=np.float32),
        indexing="ij",
    )
    pts = np.stack([i * _SPACING[0], j * _SPACING[1], k * _SPACING[2]], axis=-1)
    vol, lungs, lung_mask = _anatomy(rng, i, j, k, size)
    excess, vessels = _vessels(rng, pts, lungs)
    excess, lesions = _add_lesions(rng, (i, j, k), lungs, vessels, excess)
    vol += excess * lung_mask
    vol = gaussian_filter(vol, _BLUR, mode="nearest")
    noise = gaussian_filter(rng.normal(size=vol.shape).astype(np.float32), (0.6, 0.6, 0.0))
    vol += noise * (_NOISE_HU / max(float(noise.std()), 1e-6))
    return vol, lesions


def _anatomy(
    rng: np.random.Generator, i: np.ndarray, j: np.ndarray, k: np.ndarray, size: int
) -> tuple[np.ndarray, list[tuple[float, float, float, float]], np.ndarray]:
    """The background volume (air, soft-tissue body, textured lungs, spine) on the voxel grid
    ``i, j, k``, the two lungs' ``(cx, cy, semi_x, semi_y)`` and the lung mask."""
    d = DEPTH
    c = (size - 1) / 2.0
    vol = np.full((size, size, d), -1000.0, dtype=np.float32)
    body = ((i - c) / (0.47 * size)) ** 2 + ((j - c) / (0.40 * size)) ** 2 <= 1
    vol[body] = 40.0
    taper = 0.9 + 0.1 * np.sin(np.pi * (k + 0.5) / d)
    lungs = []
    lung_mask = np.zeros_like(body)
    for side in (-1, 1):
        lx, ly = c + side * 0.21 * size, c - 0.03 * size
        ax, ay = 0.17 * size, 0.27 * size
        lungs.append((lx, ly, ax, ay))
        lung_mask |= ((i - lx) / (ax * taper)) ** 2 + ((j - ly) / (ay * taper)) ** 2 <= 1
    texture = gaussian_filter(rng.normal(size=vol.shape).astype(np.float32), (3.0, 3.0, 1.0))
    texture *= _TEXTURE_HU / max(float(texture.std()), 1e-6)
    vol[lung_mask] = _LUNG_HU + texture[lung_mask]
    spine = (i - c) ** 2 + (j - (c + 0.29 * size)) ** 2 <= (0.07 * size) ** 2
    vol[spine] = 500.0
    return vol, lungs, lung_mask


def _add_lesions(
    rng: np.random.Generator,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    lungs: list[tuple[float, float, float, float]],
    vessels: list[tuple[int, np.ndarray, np.ndarray, float]],
    excess: np.ndarray,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Place solid nodules and ground-glass opacities (alternating class and lung) in
    ``excess`` (HU above background); return it and the lesions placed, in voxel units."""
    i, j, k = grid
    d = DEPTH
    lesions: list[dict[str, Any]] = []
    n = int(rng.integers(*_LESIONS_PER_VOLUME))
    heights = np.linspace(0.25, 0.75, n) * (d - 1) + rng.uniform(-0.6, 0.6, size=n)
    first_class = int(rng.integers(0, 2))
    first_side = int(rng.integers(0, 2))
    vessels_of = [[v[1:] for v in vessels if v[0] == side] for side in (0, 1)]
    for m in range(n):
        cls = (first_class + m) % 2
        side = (first_side + m) % 2
        r_mm = rng.uniform(*_LESION_RADIUS_MM)
        semi = np.array([r_mm / _SPACING[0], r_mm / _SPACING[1], r_mm / _SPACING[2]])
        if cls == 1:
            semi[int(rng.integers(0, 2))] *= rng.uniform(1.2, 1.4)
        centre = _place_lesion(rng, lungs[side], semi, r_mm, heights[m], vessels_of[side], lesions)
        if centre is None:
            continue  # no room left beside the lesions already placed
        rr = np.sqrt(
            ((i - centre[0]) / semi[0]) ** 2
            + ((j - centre[1]) / semi[1]) ** 2
            + ((k - centre[2]) / semi[2]) ** 2
        )
        if cls == 0:
            hu = rng.uniform(*_SOLID_HU)
            weight = _sigmoid((1.0 - rr) / 0.04)
        else:
            hu = rng.uniform(*_GGO_HU)
            weight = _sigmoid((1.0 - rr) / 0.12)
        excess = np.maximum(excess, hu * weight)
        lesions.append({"centre": centre, "semi": semi, "label": cls})
    return excess, lesions


def _demo_affine(image_size: int) -> np.ndarray:
    """The demo's voxel -> world affine: LPS-like (x and y flipped), the scan roughly centred on
    the world origin plus an offset."""
    affine = np.diag([-_SPACING[0], -_SPACING[1], _SPACING[2], 1.0])
    # Origin chosen so the scan is roughly centred on the world origin, plus an offset.
    affine[:3, 3] = [
        _SPACING[0] * (image_size - 1) / 2 + 3.2,
        _SPACING[1] * (image_size - 1) / 2 - 12.4,
        -_SPACING[2] * (DEPTH - 1) / 2 - 150.0,
    ]
    return affine


def _save_volume(path: Path, vol: np.ndarray, affine: np.ndarray) -> None:
    """Write ``vol`` rounded to int16 as NIfTI (mm units, qform and sform code 1)."""
    img = nib.Nifti1Image(np.round(vol).astype(np.int16), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, str(tmp))


def _lesion_boxes(
    lesions: list[dict[str, Any]], affine: np.ndarray
) -> tuple[list[np.ndarray], list[int], set[int]]:
    """The lesions' boxes (cccwhd, LPS world mm), labels, and the slice indices they touch."""
    boxes, labels = [], []
    positive: set[int] = set()
    for les in lesions:
        centre_ras = apply_affine(affine, les["centre"][None])[0]
        size_mm = 2.0 * les["semi"] * np.array(_SPACING)
        boxes.append(lps_ras_flip(np.concatenate([centre_ras, size_mm])[None])[0])
        labels.append(les["label"])
        cz, hz = les["centre"][2], les["semi"][2]
        positive |= {k for k in range(DEPTH) if abs(k - cz) < hz}
    return boxes, labels, positive


def write_medical_demo(
    out_dir: str | Path,
    *,
    num_images: int,
    image_size: int,
    seed: int,
) -> dict[str, Any]:
    """Write volumes until the train and validation ones give about ``num_images`` stored
    slices (and there are ``num_images / 12`` test volumes); return the params."""
    if image_size < 16:
        raise ValueError("image_size must be >= 16 for the medical demo")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = _demo_affine(image_size)
    doc: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    expected = 0.0
    min_test = math.ceil(num_images * _TEST_VOLUMES_PER_IMAGE)
    n = 0
    while (
        expected < _TRAIN_VAL_SHARE * num_images
        or len(doc["test"]) < min_test
        or n < len(_SPLIT_CYCLE) // 2
    ):
        split = _SPLIT_CYCLE[n % len(_SPLIT_CYCLE)]
        vol, lesions = _volume(rng, image_size)
        rel = f"images/ct_{n:03d}.nii.gz"
        _save_volume(out / rel, vol, affine)
        boxes, labels, positive = _lesion_boxes(lesions, affine)
        doc[_KEYS[split]].append(
            {"image": rel, "box": np.round(boxes, 4).tolist(), "label": labels}
        )
        if split != "test":
            expected += len(positive) + _NEGATIVE_RATE * (DEPTH - len(positive))
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
        "min_cross_section": _MIN_CROSS_SECTION,
    }
    return params
