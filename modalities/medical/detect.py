"""``dsod detect`` for the ``medical`` modality: CT/MRI volumes -> 3D lesion candidates.

Inputs (``INPUT`` of ``dsod detect``): a volume file (``.nii``, ``.nii.gz``, ``.mhd``, ``.mha``,
``.nrrd``, ``.nhdr``), a DICOM series folder (a tree holding one series, or
``folder#<SeriesInstanceUID>`` as a datalist writes it), or a folder holding volume files (each is
one input). A folder in which ``.dcm`` files lie (anywhere below it) is one DICOM series; a folder
with neither ``.dcm`` nor volume files directly in it is tried as a DICOM series too (DICOM files
need not end in ``.dcm``).

Each volume is read by the adapter's own path, as the prepare stage reads a test volume with
``test_all_slices``: :func:`modalities.medical.volumes.locate_volume` (the header and the
declared size checked against ``max_voxels``), then :meth:`MedicalAdapter.read`, which checks
the whole file first and yields every axial slice with its 2.5D context, intensity-mapped by
the model's adapter params (``--adapter-params`` overrides them). The slices go through the
predictor in batches and their detections are linked into 3D candidates by
:meth:`MedicalAdapter.merge` (the evaluate stage's rule, with the adapter's ``link_*``
params), so a volume gives the same candidates here as in the evaluate stage for the same
model and post-processing settings.

Outputs in ``--out`` (all written atomically), named after the input
(:meth:`MedicalAdapter.output_stem`; ``folder#uid`` gives ``folder__uid``):

``<stem>.json``: a MONAI-style detection datalist::

    {"box_mode": "cccwhd", "units": "mm", "world_frame": "LPS" | "RAS",
     "model": {...Predictor.describe()...}, "slices": <axial slices run>,
     "test": [{"image": "<the input as given>",
               "box": [[cx, cy, cz, w, h, d], ...],   # world mm, axis-aligned in world_frame
               "label": [0-based class, ...], "score": [...]}]}

  Candidates are sorted by decreasing score. ``world_frame`` is the adapter's (``world_frame``
  param: the frame its annotations use; LPS for LUNA16/ITK/MONAI datalists, RAS for
  nibabel/Slicer), so the file can be scored against a datalist of the same dataset.

``<stem>.candidates.nii.gz`` (``--volume-mask``): an int16 label volume (int32 when there are
more than 32767 candidates). Voxel value = the candidate's rank (1 = highest score) for voxels
whose centre lies inside the candidate's world box (the box itself, not its inscribed
ellipsoid), 0 elsewhere; where boxes overlap the higher-ranked candidate wins, so a candidate
covered by better ones may not appear. The grid: for a NIfTI input the input file's own shape
and affine (it overlays the input in ITK-SNAP or 3D Slicer); for DICOM, MetaImage and NRRD
inputs the reader's canonical RAS grid (voxel axes towards Right, Anterior, Superior) and its
affine.

``<stem>.eval.json`` (``--labels DATALIST``): the FROC of the candidates against the entry of
that datalist (the adapter's datalist format and ``world_frame``; any of its keys) whose
``image`` has the input's file name (and series UID, when both name one):
:func:`dsod_core.metrics.froc.froc_from_datalists` (LUNA16 hit rule). Holds ``froc_cpm``,
``froc_sensitivities`` (at the LUNA16 FP rates per scan), ``num_lesions``, ``num_detected``,
``num_false_positives``; also returned as ``DetectResult.evaluation``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from dsod_core.detection import (
    DetectResult,
    DetectRun,
    PredictorLike,
    batched,
    progress_bar,
    tiled,
)
from dsod_core.errors import DataError
from dsod_core.io import atomic_path, write_json
from modalities.base import SampleRef
from modalities.medical import datalist as dl
from modalities.medical import dicom
from modalities.medical.linking import apply_affine, lps_ras_flip

#: Files that are one volume each (a ``.mhd`` names its ``.raw`` data file itself).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr")


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def expand_inputs(path: Path) -> list[Path]:
    """The volumes of one ``INPUT``: itself, or the volume files directly in a folder that
    holds no ``.dcm`` file (a folder with ``.dcm`` files, or with no volume files, is one
    DICOM series)."""
    spec = str(path)
    if dicom.split_spec(spec)[1] is not None or not path.is_dir():
        return [path]
    if any(p.suffix.lower() == ".dcm" for p in path.rglob("*") if p.is_file()):
        return [path]
    files = sorted(p for p in path.iterdir() if _is_volume_file(p))
    return files or [path]


def _stem(adapter, path: Path) -> str:
    folder, uid = dicom.split_spec(str(path))
    if uid is not None:
        return f"{adapter.output_stem(os.path.abspath(folder))}__{uid}"
    return adapter.output_stem(os.path.abspath(path))


def _adapter_for(adapter, path: Path, class_names: list[str]):
    """A copy of ``adapter`` rooted at the input's folder, reading every slice of a test
    volume; class names from the model where the params leave them to the data."""
    folder, _ = dicom.split_spec(str(path))
    root = Path(os.path.abspath(folder)).parent
    changes: dict[str, Any] = {"test_all_slices": True}
    if adapter.params.class_names is None:
        changes["class_names"] = list(class_names)
    return type(adapter)(root, adapter.params.replace(**changes)), root


def sample_ref(adapter, path: Path) -> SampleRef:
    """The test-split :class:`SampleRef` of one input volume (no annotations), located with
    the adapter's checks (header, declared size) relative to ``adapter.root``."""
    folder, uid = dicom.split_spec(str(path))
    spec = Path(os.path.abspath(folder)).name + (f"#{uid}" if uid else "")
    image, fmt = adapter.locate_volume(spec, path, "volume not found")
    meta = {"image": str(path), "boxes": [], "labels": [], **fmt}
    return SampleRef(dl.volume_id(spec), "test", {"image": image, "annotation": path}, meta)


def _predict_slices(
    adapter, ref: SampleRef, path: Path, predictor: PredictorLike, run: DetectRun
) -> list[dict[str, Any]]:
    """The per-slice items of :meth:`MedicalAdapter.merge` (detections in stored-slice
    pixels), the slices streamed in batches of ``run.batch_size``."""
    items: list[dict[str, Any]] = []
    bar = progress_bar(None, f"detect {path.name}", "slice", run)
    try:
        for batch in batched(adapter.read(ref), run.batch_size):
            if not items:
                bar.total = int(batch[0].meta["num_slices"])
                bar.refresh()
                try:
                    predictor.check_channels(int(batch[0].image.shape[0]), path)
                except DataError as exc:
                    raise DataError(
                        f"{exc.reason}; the adapter params (slice_context, windows, intensity) "
                        "must be those the model was trained with",
                        path=path,
                    ) from None
            for sample, det in zip(batch, predictor([s.image for s in batch])):
                items.append(
                    {
                        "sample_id": sample.sample_id,
                        "source": sample.source,
                        "meta": sample.meta,
                        "affine": sample.affine,
                        "detections": det,
                    }
                )
            bar.update(len(batch))
    finally:
        bar.close()
    return items


def link_candidates(adapter, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The 3D candidates of one volume's slice detections, by the evaluate stage's rule
    (:meth:`MedicalAdapter.merge`): ``{"box", "label", "score"}`` lists, boxes cccwhd mm in
    the adapter's ``world_frame``."""
    merged = adapter.merge(items)
    if not merged:
        return {"box": [], "label": [], "score": []}
    (unit,) = merged
    return dict(unit["detections"])


def mask_grid(adapter, ref: SampleRef) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(shape, voxel -> RAS mm affine)`` of the volume mask (see the module docstring)."""
    image = Path(ref.paths["image"])
    if ref.meta.get("format", "nifti") == "nifti":
        img = nib.load(str(image))
        return tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)
    reader = adapter.open_volume(ref)
    try:
        return tuple(int(s) for s in reader.shape), np.asarray(reader.affine, dtype=np.float64)
    finally:
        reader.close()


def candidate_mask(
    shape: tuple[int, int, int], affine: np.ndarray, boxes_ras: np.ndarray
) -> np.ndarray:
    """Label volume of ``shape``: rank (1-based, in the order given) of the first box holding
    each voxel centre (``affine``: voxel -> RAS mm; boxes cccwhd RAS mm), 0 elsewhere."""
    boxes_ras = np.asarray(boxes_ras, dtype=np.float64).reshape(-1, 6)
    dtype = np.int16 if len(boxes_ras) <= np.iinfo(np.int16).max else np.int32
    mask = np.zeros(shape, dtype=dtype)
    inv = np.linalg.inv(affine)
    dims = np.array(shape)
    for rank, box in enumerate(boxes_ras, start=1):
        lo, hi = box[:3] - box[3:] / 2, box[:3] + box[3:] / 2
        corners = np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]]
                            for a in (0, 1) for b in (0, 1) for c in (0, 1)])  # fmt: skip
        vox = apply_affine(inv, corners)
        first = np.clip(np.floor(vox.min(axis=0)).astype(int), 0, dims)
        last = np.clip(np.ceil(vox.max(axis=0)).astype(int) + 1, 0, dims)
        if (last <= first).any():
            continue
        idx = np.stack(
            np.meshgrid(*[np.arange(a, b) for a, b in zip(first, last)], indexing="ij"), -1
        )
        world = apply_affine(affine, idx.reshape(-1, 3)).reshape(idx.shape)
        inside = ((world >= lo) & (world <= hi)).all(axis=-1)
        block = mask[first[0] : last[0], first[1] : last[1], first[2] : last[2]]
        block[inside & (block == 0)] = rank
    return mask


def write_mask(path: Path, mask: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(mask, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, str(tmp))


def reference_entry(labels: Path, path: Path) -> dict[str, Any]:
    """The entry of the datalist ``labels`` for the input ``path``: its ``image`` has the
    input's file name (and series UID, when both name one)."""
    folder, uid = dicom.split_spec(str(path))
    name = Path(os.path.abspath(folder)).name
    raw_entries, _ = dl.read_datalist(labels)
    found = []
    for where, _split, raw in raw_entries:
        entry = dl.parse_entry(raw, where, labels)
        e_folder, e_uid = dicom.split_spec(entry.image)
        if Path(e_folder).name == name and (uid is None or e_uid is None or uid == e_uid):
            found.append(entry)
    if not found:
        raise DataError(f"no entry whose image is named {name!r} (the input {path})", path=labels)
    if len(found) > 1:
        listed = ", ".join(f"{e.where} {e.image!r}" for e in found)
        raise DataError(f"several entries match the input {path}: {listed}", path=labels)
    e = found[0]
    return {"image": e.image, "box": e.boxes, "label": e.labels}


def evaluate(
    candidates: dict[str, Any], ref: dict[str, Any], labels: Path, path: Path
) -> dict[str, Any]:
    """FROC of one volume's candidates against ``ref``, its entry of the datalist ``labels``
    (:func:`reference_entry`)."""
    from dsod_core.metrics.froc import froc_from_datalists

    preds = {"test": [{"image": ref["image"], **candidates}]}
    result = froc_from_datalists(preds, {"test": [ref]}, key="test")
    return {
        "input": str(path),
        "labels": str(labels),
        "image": ref["image"],
        "froc_cpm": float(result["cpm"]),
        "froc_sensitivities": {
            str(r): float(s) for r, s in zip(result["fp_rates"], result["sensitivities"])
        },
        "num_lesions": int(result["num_lesions"]),
        "num_detected": int(result["num_detected"]),
        "num_false_positives": int(result["num_false_positives"]),
        "num_candidates": len(candidates["score"]),
    }


def detect_volume(adapter, path: Path, predictor: PredictorLike, run: DetectRun) -> DetectResult:
    """One volume: slices -> detections -> 3D candidates -> the output files."""
    adapter, _ = _adapter_for(adapter, path, predictor.class_names)
    ref = sample_ref(adapter, path)
    labels = Path(run.labels) if run.labels else None
    truth = reference_entry(labels, path) if labels else None  # a bad file fails first
    items = _predict_slices(adapter, ref, path, predictor, run)
    candidates = link_candidates(adapter, items)
    stem = _stem(adapter, path)
    out_dir = Path(run.out_dir)
    evaluation = None
    if labels is not None and truth is not None:
        evaluation = evaluate(candidates, truth, labels, path)
    doc = {
        "box_mode": "cccwhd",
        "units": "mm",
        "world_frame": adapter.params.frame,
        "model": predictor.describe(),
        "slices": len(items),
        "test": [{"image": str(path), **candidates}],
    }
    outputs = [write_json(out_dir / f"{stem}.json", doc, indent=1)]
    if run.modality.volume_mask:
        boxes = np.asarray(candidates["box"], dtype=np.float64).reshape(-1, 6)
        if adapter.params.frame == "LPS":
            boxes = lps_ras_flip(boxes)
        shape, affine = mask_grid(adapter, ref)
        mask_path = out_dir / f"{stem}.candidates.nii.gz"
        write_mask(mask_path, candidate_mask(shape, affine, boxes), affine)
        outputs.append(mask_path)
    if evaluation is not None:
        outputs.append(write_json(out_dir / f"{stem}.eval.json", evaluation, indent=1))
    return DetectResult(
        input=path,
        outputs=outputs,
        detections=len(candidates["score"]),
        units=len(items),
        evaluation=evaluation,
        extra={"slices": len(items)},
    )


def detect_inputs(
    adapter, path: Path, predictor: PredictorLike, run: DetectRun
) -> list[DetectResult]:
    """``dsod detect`` on one ``INPUT`` (see the module docstring): one result per volume.
    A model trained on tiles has each slice cut and merged (:func:`tiled`)."""
    predictor = tiled(predictor, run.batch_size)
    return [detect_volume(adapter, p, predictor, run) for p in expand_inputs(Path(path))]
