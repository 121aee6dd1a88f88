"""The axial slices of one volume as the medical adapter samples them: which slices are kept
(lesion sections; lesion-free ones at ``negative_slice_rate`` by a stable hash; every slice of
a test volume with ``test_all_slices``), each lesion's box on each slice it crosses (an
ellipsoid cut, :func:`modalities.medical.linking.ellipsoid_slice_cuts`), a slice's boxes,
labels and difficult flags, and its :class:`~dsod_core.data.sample.Sample` meta."""

from __future__ import annotations

from typing import Any

import numpy as np

from dsod_core.errors import DataError
from modalities.base import SampleRef, split_hash
from modalities.medical import datalist as dl
from modalities.medical.linking import apply_affine, ellipsoid_slice_cuts, lps_ras_flip
from modalities.medical.nifti import ArrayVolumeReader, SliceReader
from modalities.medical.params import MedicalParams

Cut = tuple[np.ndarray, int, float]  # (box xyxy px in the stored image, label 1..K, fraction)


def translate_z(k: int) -> np.ndarray:
    """The 4x4 shift to slice ``k`` along the third voxel axis."""
    t = np.eye(4)
    t[2, 3] = float(k)
    return t


def lesion_cuts(
    ref: SampleRef,
    reader: SliceReader | ArrayVolumeReader,
    volume_affine: np.ndarray,
    scale: np.ndarray,
    frame: str,
) -> dict[int, list[Cut]]:
    """Per slice: list of (box xyxy px in the stored image, label 1..K, fraction) of the
    volume's lesions (world boxes in ``frame``); a box centred outside the volume ->
    :class:`DataError` naming the annotation file."""
    boxes = np.asarray(ref.meta["boxes"], dtype=np.float64).reshape(-1, 6)
    if frame == "LPS":
        boxes = lps_ras_flip(boxes)
    n_i, n_j, n_k = reader.shape
    inv = np.linalg.inv(volume_affine)
    per_slice: dict[int, list[Cut]] = {}
    for box, lab in zip(boxes, ref.meta["labels"]):
        c = apply_affine(inv, box[:3][None])[0]  # (x, y, z) volume pixels
        limits = np.array([n_i, n_j]) / scale  # stored image size (W, H)
        if not (0 <= c[0] <= limits[0] and 0 <= c[1] <= limits[1] and -0.5 <= c[2] <= n_k - 0.5):
            as_given = box[:3] if frame == "RAS" else lps_ras_flip(box[:3])
            raise DataError(
                f"box centred at {as_given.round(2).tolist()} mm ({frame}) lies outside "
                f"the volume {ref.meta['image']!r}",
                path=ref.paths["annotation"],
            )
        for cut in ellipsoid_slice_cuts(volume_affine, box, n_k):
            per_slice.setdefault(cut.slice_index, []).append((cut.box, int(lab) + 1, cut.fraction))
    return per_slice


def slice_targets(
    slice_cuts: list[Cut], w_out: int, h_out: int, p: MedicalParams
) -> tuple[list[np.ndarray], list[int], list[bool]]:
    """The boxes (clipped to the stored slice), labels and difficult flags of one slice's
    lesion sections; slivers and, with ``small_section: drop``, small sections left out."""
    small_dropped = p.small_section == "drop"
    boxes, labels, difficult = [], [], []
    for box, lab, frac in slice_cuts:
        # cuts are already in stored pixels (volume_affine includes the resampling)
        b = np.clip(box, 0, [w_out, h_out, w_out, h_out])
        if b[2] - b[0] < 0.5 or b[3] - b[1] < 0.5:
            continue  # a sliver left after clipping at the image border
        small = frac < p.min_cross_section
        if small and small_dropped:
            continue
        boxes.append(b)
        labels.append(lab)
        difficult.append(small)
    return boxes, labels, difficult


def slice_meta(
    ref: SampleRef,
    reader: SliceReader | ArrayVolumeReader,
    k: int,
    scale: np.ndarray,
    mri_range: tuple[float, float] | None,
    p: MedicalParams,
) -> dict[str, Any]:
    """The :class:`Sample` meta of slice ``k`` of the volume ``ref``."""
    n_i, n_j, n_k = reader.shape
    meta = {
        "units": "mm",
        "world_frame": "RAS",
        "annotation_world_frame": p.frame,
        "format": ref.meta.get("format", "nifti"),
        "volume_id": ref.ref_id,
        "image": ref.meta["image"],
        "slice_index": int(k),
        "num_slices": int(n_k),
        "volume_shape": [int(n_i), int(n_j), int(n_k)],
        "spacing_mm": [float(s) for s in reader.spacing],
        "pixel_spacing_mm": [
            float(reader.spacing[0] * scale[0]),
            float(reader.spacing[1] * scale[1]),
        ],
        "intensity": p.intensity,
        "split": ref.split,
        "datalist_key": dl.SPLIT_KEYS[ref.split],
    }
    if "dicom_series" in ref.meta:
        meta["dicom_series"] = ref.meta["dicom_series"]
    if mri_range is not None:
        meta["mri_range"] = [float(mri_range[0]), float(mri_range[1])]
    return meta


def slices_to_keep(
    ref: SampleRef, n_k: int, positive: set[int], crossing: set[int], p: MedicalParams
) -> set[int]:
    """The slices sampled: every one of a test volume with ``test_all_slices``, else the
    ``positive`` ones plus, at ``negative_slice_rate`` by a stable hash, those no lesion
    crosses (``crossing``)."""
    if ref.split == "test" and p.test_all_slices:
        return set(range(n_k))
    keep = set(positive)
    for k in range(n_k):
        if k not in crossing and split_hash(f"{ref.ref_id}:{k}", p.seed) < (p.negative_slice_rate):
            keep.add(k)
    return keep
