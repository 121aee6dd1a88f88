"""The ``medical`` adapter: CT/MRI volumes -> axial 2.5D slices; 3D lesions in world mm.

Conventions (``docs/modalities/medical.md`` has the long form):

* Volumes are NIfTI, MetaImage ``.mhd``/``.mha``, NRRD ``.nrrd``/``.nhdr`` or DICOM series (a
  folder tree or ``folder#<SeriesInstanceUID>``), opened by :mod:`modalities.medical.volumes`.
  All are reoriented to RAS the same way. The 2D samples are the axial slices: canonical voxel axis
  ``k`` (towards Superior). A stored slice image is ``[C, H, W]`` with ``H`` along canonical voxel
  axis ``j`` (towards Anterior) and ``W`` along ``i`` (towards Right): pixel ``(x, y)``
  (continuous, pixel centre at +0.5) is voxel ``(i, j) = (x - 0.5, y - 0.5)``.
* ``Sample.affine`` = ``A_ras @ S @ T``: ``A_ras`` the canonical voxel->RAS mm affine, ``S``
  the in-plane resampling scale (identity without resampling), ``T`` the shift
  ``(-0.5, -0.5, k)``; its third column is the slice step, so it is invertible.
* ``discover`` reads the annotations and each volume's header only (declared size checked
  against ``max_voxels``); ``read`` first checks the whole volume (``verify``: for NIfTI the
  gzip stream, data length and finite voxels, streaming; DICOM and MetaImage are decoded
  whole), then yields slices.
* Annotations are world boxes ``cccwhd`` (centre, size; mm) in ``world_frame`` (stated for a
  MONAI datalist; LPS, fixed, for LUNA16-style CSV rows) (:mod:`modalities.medical.datalist`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dsod_core.data.sample import Sample
from dsod_core.errors import ConfigError, DataError
from dsod_core.io import write_json
from modalities.base import (
    AdapterParams,
    ModalityAdapter,
    PrepareLog,
    SampleRef,
    assign_split,
)
from modalities.medical import datalist as dl
from modalities.medical import formats, slices, split_files, units, volumes
from modalities.medical.linking import (
    link_volume,
    lps_ras_flip,
    slice_to_volume_affine,
)
from modalities.medical.nifti import ArrayVolumeReader, SliceReader
from modalities.medical.params import MedicalDetectParams, MedicalParams, parse_windows


@contextmanager
def _naming(sample: str | None) -> Iterator[None]:
    """Name the volume (``sample``) in a :class:`DataError` that does not name one yet."""
    try:
        yield
    except DataError as exc:
        if exc.sample is None and sample:
            raise DataError(exc.reason, path=exc.path, sample=sample) from exc
        raise


class MedicalAdapter(ModalityAdapter):
    """CT/MRI volumes (NIfTI, MetaImage, NRRD, DICOM) with world-mm lesion boxes -> axial 2.5D
    slice samples.

    Params: :class:`modalities.medical.params.MedicalParams` (``datalist`` or
    ``annotations_csv`` + ``series_map``; ``world_frame``; CT ``windows`` or MRI percentiles;
    ``slice_context``; ``target_spacing``; ``min_cross_section`` / ``small_section``;
    ``negative_slice_rate``; splits and the patient of each volume (``group_by``,
    ``patient_key``, ``patients_csv``: :mod:`modalities.medical.units`); ``max_voxels``;
    ``link_*`` for the 3D linking of predictions,
    :func:`modalities.medical.linking.link_volume`).
    """

    name = "medical"
    Params = MedicalParams
    world_units = "mm"
    detect_module = "modalities.medical.detect"
    DetectParams = MedicalDetectParams
    output_suffixes = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr")
    params: MedicalParams

    def __init__(
        self,
        root: str | Path,
        params: Mapping[str, Any] | AdapterParams | None = None,
        *,
        log: PrepareLog | None = None,
    ):
        super().__init__(root, params, log=log)
        p = self.params
        self._windows = parse_windows(p.windows) if p.intensity == "ct" else []
        self._class_names: list[str] | None = None
        # DICOM folder -> its series (headers only): a tree is walked once (volumes.py).
        self._dicom_index: volumes.DicomIndex = {}
        #: What was found and kept (volumes, lesion-free volumes, slices by kind), mirrored
        #: into ``log.counts`` when the prepare log has one (the prepare report).
        self.counts: dict[str, int] = {}

    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n
        shared = getattr(self.log, "counts", None)
        if isinstance(shared, dict):
            shared[key] = shared.get(key, 0) + n

    @property
    def _policy(self) -> volumes.Policy:
        return volumes.Policy(self.params.dicom_stray_files, self.log.warn)

    # --- what the data looks like -----------------------------------------------------------
    @property
    def _offsets(self) -> list[int]:
        k = self.params.slice_context
        return list(range(-k, k + 1))

    @property
    def channel_names(self) -> list[str]:
        """``<window>@<offset>``, window-major: ``lung@-1, lung@0, lung@+1, mediastinum@-1..``
        (``mri@..`` in MRI mode)."""
        groups = [w[0] for w in self._windows] if self._windows else ["mri"]
        return [f"{g}@{o:+d}" if o else f"{g}@0" for g in groups for o in self._offsets]

    @property
    def class_names(self) -> list[str]:
        if self.params.class_names is not None:
            return list(self.params.class_names)
        if self._class_names is None:
            raise ConfigError("medical adapter: class_names are known after discover()")
        return list(self._class_names)

    # --- discovery --------------------------------------------------------------------------
    def discover(self) -> list[SampleRef]:
        """Parse the annotations (datalist or CSV: ``discover`` of
        :data:`modalities.medical.formats.FORMATS`), read each volume's header (declared size,
        dimensions, affine) and assign splits; no voxels are read. A bad entry or volume goes
        through ``self.log.guard`` (the prepare stage's ``on_error`` decides)."""
        refs = formats.FORMATS[formats.layout_of(self.params)].discover(self)
        units.report(self, refs)
        if self.params.split_files:
            listed = split_files.read_split_files(
                self.root, self.params.split_files, self.resolve_inside_root
            )
            refs = split_files.apply_split_files(
                refs, listed, lambda why: self.log.warn(why, self.root)
            )
        self._count("volumes", len(refs))
        self._count("background_volumes", sum(not r.meta["boxes"] for r in refs))
        if self.params.class_names is None:
            if self.params.datalist is None:
                self._class_names = [self.params.csv_class]
            else:
                top = max((max(r.meta["labels"], default=-1) for r in refs), default=-1)
                self._class_names = [f"lesion_{i}" for i in range(max(top + 1, 1))]
        return refs

    def _check_size(self, path: Path, shape: tuple[int, ...]) -> None:
        self.check_declared_size(
            path,
            math.prod(shape),
            self.params.max_voxels,
            " x ".join(str(s) for s in shape) + " voxels",
            "max_voxels",
        )

    def _locate_volume(
        self, spec: str, referenced_from: Path, not_found: str
    ) -> tuple[Path, dict[str, Any]]:
        """Resolve a volume and check its header (no voxels):
        :func:`modalities.medical.volumes.locate_volume`."""
        return volumes.locate_volume(
            spec,
            referenced_from,
            not_found,
            resolve=self.resolve_inside_root,
            check_size=self._check_size,
            index=self._dicom_index,
            policy=self._policy,
        )

    def _check_labels(self, labels: list[int], where: str, path: Path) -> None:
        names = self.params.class_names
        if names is not None and any(lab >= len(names) for lab in labels):
            raise DataError(
                f"{where}: label {max(labels)} exceeds the {len(names)} class_names "
                f"(labels are 0-based)",
                path=path,
            )

    def _split(self, key: str) -> str:
        """The split of a volume or series by the stable hash of ``key``."""
        p = self.params
        return assign_split(key, p.val_fraction, p.test_fraction, p.seed)

    # --- reading ----------------------------------------------------------------------------
    def read(self, ref: SampleRef) -> Iterator[Sample]:
        """Yield the kept axial slices of one volume as samples (see module docstring).

        The whole file is checked first (:meth:`SliceReader.verify`: gzip stream, data length,
        finite voxels), so a volume damaged anywhere raises :class:`DataError` naming the file
        before any of its samples is yielded."""
        with _naming(ref.ref_id):
            reader = self._open_volume(ref)
            kinds = [0, 0]  # lesion-free slices, slices with a box
            try:
                reader.verify()
                for sample in self._read_slices(ref, reader):
                    kinds[bool(len(sample.boxes))] += 1
                    yield sample
            finally:
                reader.close()
            self._count("background_slices", kinds[0])
            self._count("lesion_slices", kinds[1])

    def _open_volume(self, ref: SampleRef) -> SliceReader | ArrayVolumeReader:
        return volumes.open_volume(
            Path(ref.paths["image"]),
            ref.meta,
            index=self._dicom_index,
            check_size=self._check_size,
            policy=self._policy,
        )

    def _read_slices(
        self, ref: SampleRef, reader: SliceReader | ArrayVolumeReader
    ) -> Iterator[Sample]:
        p = self.params
        _, _, n_k = reader.shape
        out_ij, scale, volume_affine = volumes.slice_grid(reader, p.target_spacing)
        cuts = slices.lesion_cuts(ref, reader, volume_affine, scale, p.frame)
        # Slices whose every lesion section is dropped as too small are ambiguous (lesion
        # tissue without a box): kept neither as positives nor as negatives.
        small_dropped = p.small_section == "drop"
        positive = {
            k
            for k, c in cuts.items()
            if not small_dropped or any(f >= p.min_cross_section for _, _, f in c)
        }
        keep = slices.slices_to_keep(ref, n_k, positive, set(cuts), p)
        if not keep:
            return
        mri_range = (
            volumes.mri_range(reader, p.mri_percentiles)
            if p.intensity == "mri_percentile"
            else None
        )
        ctx = p.slice_context
        cache: dict[int, np.ndarray] = {}
        order = reader.order()
        step = 1 if order[0] == 0 else -1
        w_out, h_out = int(out_ij[0]), int(out_ij[1])
        for k in order:
            if k not in keep:
                continue
            # Drop slices behind the context window (file order only moves forward).
            for old in [j for j in cache if (j - k) * step < -ctx]:
                del cache[old]
            needed = [min(max(k + o, 0), n_k - 1) for o in self._offsets]
            for j in sorted(set(needed), key=lambda j: j * step):
                if j not in cache:
                    cache[j] = volumes.prepare_slice(reader.slice(j), out_ij)
            channels = []
            for lo, hi in [(w[1], w[2]) for w in self._windows] or [mri_range]:
                for j in needed:
                    channels.append(np.clip((cache[j] - lo) / (hi - lo), 0.0, 1.0))
            image = np.stack(channels).astype(np.float32)
            boxes, labels, difficult = slices.slice_targets(cuts.get(k, []), w_out, h_out, p)
            meta = slices.slice_meta(ref, reader, int(k), scale, mri_range, p)
            yield Sample(
                image=image,
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                labels=np.asarray(labels, dtype=np.int64),
                difficult=np.asarray(difficult, dtype=bool),
                sample_id=f"{ref.ref_id}_k{k:04d}",
                source=str(ref.paths["image"]),
                split=ref.split,
                group=ref.meta.get("group"),
                affine=volume_affine @ slices.translate_z(k),
                meta=meta,
                native=volumes.native_slices([cache[j] for j in needed], self._windows, mri_range),
            )

    # --- the file-level API (dsod detect reads volumes through it) --------------------------
    def locate_volume(
        self, spec: str, referenced_from: Path, not_found: str = "volume not found"
    ) -> tuple[Path, dict[str, Any]]:
        """A volume named by ``spec`` (a file, a DICOM folder or ``folder#<SeriesUID>``,
        relative to ``root``), resolved and its header checked (``max_voxels``); no voxels."""
        return self._locate_volume(spec, referenced_from, not_found)

    def open_volume(self, ref: SampleRef) -> SliceReader | ArrayVolumeReader:
        """The reader of one located volume (its canonical RAS grid: ``shape``, ``affine``)."""
        return self._open_volume(ref)

    # --- back to the world ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"class_names": self.class_names}

    def restore(self, state: Mapping[str, Any]) -> None:
        if self.params.class_names is None:
            self._class_names = list(state["class_names"])

    def unit_record(self, ref: SampleRef) -> dict[str, Any] | None:
        """The volume's lesions for FROC: datalist ``key``, ``image``, cccwhd ``box`` mm in
        ``world_frame``, 0-based ``label`` and the volume's ``split``."""
        return {
            "split": ref.split,
            "image": ref.meta["image"],
            "box": [list(map(float, b)) for b in ref.meta["boxes"]],
            "label": [int(v) for v in ref.meta["labels"]],
        }

    def merge(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per-slice detections -> the 3D candidates of each volume
        (:func:`modalities.medical.linking.link_volume` with the ``link_*`` params), the rule
        the evaluate stage and ``dsod detect`` share. One entry per volume: ``unit`` (the
        volume id), ``image``, ``key`` (datalist key), ``slices`` and ``detections`` =
        ``{"box": cccwhd mm in world_frame, "label": 0-based, "score"}``, best first."""
        p = self.params
        volumes_: dict[str, dict[str, Any]] = {}
        for item in items:
            meta = item["meta"]
            k = int(meta["slice_index"])
            vol = volumes_.setdefault(
                meta["volume_id"],
                {
                    "image": meta["image"],
                    "key": meta.get("datalist_key", "test"),
                    "affine": slice_to_volume_affine(np.asarray(item["affine"]), k),
                    "dets": {},
                },
            )
            det = item["detections"]
            vol["dets"][k] = {key: np.asarray(det[key]) for key in ("boxes", "scores", "labels")}
        merged = []
        for vid in sorted(volumes_):
            vol = volumes_[vid]
            lesions = link_volume(
                vol["dets"],
                vol["affine"],
                p.link_iou,
                p.link_gap,
                p.link_score,
                p.link_extent,
                p.link_min_slices,
                p.link_overlap,
            )
            boxes = np.array([les.box for les in lesions]).reshape(-1, 6)
            if p.frame == "LPS":
                boxes = lps_ras_flip(boxes)
            merged.append(
                {
                    "unit": vid,
                    "image": vol["image"],
                    "key": vol["key"],
                    "slices": len(vol["dets"]),
                    "detections": {
                        "box": boxes.round(4).tolist(),
                        "label": [les.label - 1 for les in lesions],
                        "score": [round(les.score, 6) for les in lesions],
                    },
                }
            )
        return merged

    def export_predictions(
        self, items: list[dict[str, Any]], out_dir: Path, merged: list | None = None
    ) -> list[Path]:
        """``predictions_3d.json`` (the candidates of :meth:`merge` in the datalist
        convention: ``{key: [{"image", "box" cccwhd mm in world_frame, "label" 0-based,
        "score"}]}``), plus the per-slice world boxes of the base class
        (``predictions_world.json``)."""
        out_dir = Path(out_dir)
        paths = super().export_predictions(items, out_dir)
        doc: dict[str, list[dict[str, Any]]] = {}
        for unit in merged if merged is not None else self.merge(items):
            doc.setdefault(unit["key"], []).append({"image": unit["image"], **unit["detections"]})
        path = out_dir / "predictions_3d.json"
        write_json(path, doc, indent=1)
        return [*paths, path]

    def extra_metrics(
        self, merged: list[dict[str, Any]], units: Mapping[str, Any], split: str
    ) -> dict[str, Any]:
        """FROC of the linked 3D lesions (LUNA16 rules; ``dsod_core.metrics.froc``) against
        the stored lesions of the split's volumes (:meth:`reference_datalist`)."""
        from dsod_core.metrics.froc import froc_from_datalists

        reference = self.reference_datalist(units, split)
        (key,) = reference
        preds = {key: [{"image": u["image"], **u["detections"]} for u in merged]}
        result = froc_from_datalists(preds, reference, key=key)
        return {
            "froc_cpm": float(result["cpm"]),
            "froc_sensitivities": {
                str(k): float(v) for k, v in zip(result["fp_rates"], result["sensitivities"])
            },
        }

    @staticmethod
    def reference_datalist(
        units: Mapping[str, Any], split: str = "test"
    ) -> dict[str, list[dict[str, Any]]]:
        """The lesions of one split's volumes (unit records, :meth:`unit_record`, as a store
        holds them) in the datalist convention of :meth:`export_predictions` (key, ``image``,
        cccwhd ``box`` in ``world_frame``, 0-based ``label``)."""
        if split not in dl.SPLIT_KEYS:
            raise ConfigError(f"split must be one of {sorted(dl.SPLIT_KEYS)}, got {split!r}")
        entries = [
            {"image": r["image"], "box": r["box"], "label": r["label"]}
            for r in units.values()
            if r and r.get("split") == split
        ]
        return {dl.SPLIT_KEYS[split]: entries}

    def render(self, image: np.ndarray) -> np.ndarray:
        """Grey uint8 ``[H, W, 3]`` of the first window's centre slice (values in [0, 1])."""
        ch = np.asarray(image[self.params.slice_context], dtype=np.float64)
        g = np.clip(ch, 0.0, 1.0)
        return np.repeat((g * 255).round().astype(np.uint8)[..., None], 3, axis=2)

    # --- demo -------------------------------------------------------------------------------
    @classmethod
    def write_demo(
        cls, out_dir: str | Path, *, num_images: int = 240, image_size: int = 96, seed: int = 0
    ) -> dict[str, Any]:
        """Synthetic chest-CT-like volumes (HU, int16 ``.nii.gz``, 0.6 x 0.6 x 2.5 mm, LPS-like
        affine with flipped x/y): 3-10 mm solid nodules and ground-glass opacities beside
        vessels of the same density, partial-volume blur and correlated noise, plus
        ``datalist.json`` (cccwhd, LPS world mm). See :mod:`modalities.medical.demo`."""
        from modalities.medical.demo import write_medical_demo

        return write_medical_demo(out_dir, num_images=num_images, image_size=image_size, seed=seed)
