"""``dsod detect`` for depth frames: each object's box, class, distance and 3D centre.

Inputs (``INPUT`` of ``dsod detect``):

* a depth file as the adapter reads it (16-bit PNG/TIFF in mm, float TIFF or ``.npy`` in m,
  :mod:`.png`, :mod:`.npy`): one frame, written to ``OUT/<stem>.json``;
* a folder: every depth file directly inside it (``.png``, ``.npy``, ``.tif``, ``.tiff``,
  sorted by name), each one frame with its own ``OUT/<stem>.json``;
* an NYU Depth v2 labelled ``.mat`` (:mod:`.nyu`): every frame, frame ``i`` (0-based, the
  file's order) written to ``OUT/<stem>_<iiii>.json`` (4-digit zero-padded index, as the
  adapter's ``nyu_<iiii>`` sample ids).

Each frame is read by the adapter's own :meth:`DepthAdapter.read` (units, valid range, filling,
encoding exactly as the store was prepared; the params recorded in ``model.pt``), so the
network sees the stored encoding. Beside a file, as the adapter's layout has them, are looked
for: camera intrinsics ``<intrinsics_dir>/<stem>.{json,txt}``, then ``intrinsics.{json,txt}``
(params ``fx, fy, cx, cy`` override both; NYU frames use the toolbox's), and the aligned colour
image ``<rgb_dir>/<stem>.{png,jpg,jpeg}`` of the ``rgbd`` encoding; "beside" is the file's
folder and, when that folder is the layout's ``depth_dir`` (``depth/``), the dataset root above
it. An encoding that needs intrinsics or colour without them is the adapter's clear error.

Output per frame: ``{"image", "units": "m", "camera_frame": "x right, y down, z forward",
"intrinsics", "model", "detections": [{"box_xyxy_px", "score", "label", "class",
"median_depth_m", "depth_measured", "centre_camera_m"}]}``; the per-detection figures are
those of :meth:`DepthAdapter.export_predictions` (median *measured* depth of the pixels whose
centres lie in the box, re-read from the file; ``centre_camera_m`` only with intrinsics).

``--labels``: a VOC XML of the frame (:func:`.annotations.parse_voc`), a folder of
``<stem>.xml`` (one per frame of a folder input), or, for an NYU ``.mat``, the same file (its
instance boxes). The frames' detections are scored together (:func:`score_detections`: VOC
mAP@0.5, COCO AP) into ``OUT/<input stem>.eval.json``, attached to the input's last result.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from dsod_core.detection import (
    DetectResult,
    DetectRun,
    PredictorLike,
    batched,
    progress_bar,
    tiled,
)
from dsod_core.errors import ConfigError, DataError
from dsod_core.io import write_json
from dsod_core.metrics.scoring import score_detections
from modalities.base import SampleRef
from modalities.depth import annotations, intrinsics, nyu, png
from modalities.depth.adapter import DEPTH_EXTENSIONS, DepthAdapter
from modalities.formats.voc import select_objects


def detect_inputs(
    adapter: DepthAdapter, path: Path, predictor: PredictorLike, run: DetectRun
) -> list[DetectResult]:
    """Detect every frame of ``path`` (a depth file, a folder of them or an NYU ``.mat``);
    the adapter reads with the model's classes (labels 1..K of its detections)."""
    predictor = tiled(predictor, run.batch_size)  # a model trained on tiles: merged per frame
    path = Path(path)
    try:
        adapter.restore({"class_names": list(predictor.class_names)})
    except ConfigError as exc:
        raise ConfigError(exc.reason, path=predictor.path) from None
    output_stem = adapter.output_stem
    frames = _frames(adapter, path)
    left_out = _attach_labels(adapter, path, frames, run.labels) if run.labels else {}

    results: list[DetectResult] = []
    targets, predictions = [], []
    bar = progress_bar(len(frames), f"detect {path.name}", "image", run)
    try:
        for batch in batched(frames, run.batch_size):
            samples = [next(iter(adapter.read(ref))) for ref, _ in batch]
            for sample in samples:
                predictor.check_channels(int(sample.image.shape[0]), sample.source)
            dets = predictor([s.image for s in samples])
            rows = _export(adapter, samples, dets)
            for (ref, stem), sample, det, row in zip(batch, samples, dets, rows):
                doc = {
                    "image": sample.source,
                    **({"frame": ref.meta["index"]} if "nyu" in ref.paths else {}),
                    "units": "m",
                    "camera_frame": "x right, y down, z forward",
                    "intrinsics": sample.meta.get("intrinsics"),
                    "model": predictor.describe(),
                    "detections": row["detections"],
                }
                out = write_json(run.out_dir / f"{stem}.json", doc, indent=1)
                results.append(DetectResult(Path(sample.source), [out], len(det["scores"]), 1))
                if run.labels is not None:
                    targets.append(_target(sample))
                    predictions.append(det)
            bar.update(len(batch))
    finally:
        bar.close()
    if run.labels is not None:
        summary, _ = score_detections(targets, predictions, adapter.class_names)
        summary = {"input": str(path), "labels": str(run.labels), **summary}
        summary["num_ground_truth"] = int(sum(len(t["labels"]) for t in targets))
        summary["left_out_objects"] = left_out  # labelled classes the model does not know
        ev = write_json(run.out_dir / f"{output_stem(path)}.eval.json", summary, indent=1)
        results[-1].outputs.append(ev)
        results[-1].evaluation = summary
    return results


def _frames(adapter: DepthAdapter, path: Path) -> list[tuple[SampleRef, str]]:
    """``(ref, output stem)`` of every frame of one input: a depth file, a folder of them or
    an NYU ``.mat``."""
    output_stem = adapter.output_stem
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in DEPTH_EXTENSIONS
        )
        if not files:
            raise DataError(
                f"no depth files ({', '.join(DEPTH_EXTENSIONS)}) in this folder", path=path
            )
        stems = [output_stem(f) for f in files]
        twice = sorted({s for s in stems if stems.count(s) > 1})
        if twice:
            raise DataError(f"two depth files share the name {twice[0]!r}", path=path)
        frames = [(_file_ref(adapter, f), s) for f, s in zip(files, stems)]
    elif path.suffix.lower() == ".mat":
        frames = _nyu_refs(adapter, path)
    elif path.suffix.lower() in DEPTH_EXTENSIONS:
        frames = [(_file_ref(adapter, path), output_stem(path))]
    else:
        raise DataError(
            f"not a depth input: expected {', '.join(DEPTH_EXTENSIONS)}, .mat or a folder",
            path=path,
        )
    return frames


def _bases(adapter: DepthAdapter, file: Path) -> list[Path]:
    """Where a file's companions may be: its folder, and the dataset root above the layout's
    ``depth_dir`` when the file lies in such a folder."""
    folder = file.parent
    bases = [folder]
    if folder.name == Path(adapter.params.depth_dir).name:
        bases.append(folder.parent)
    return bases


def _first(candidates: list[Path]) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def _file_ref(adapter: DepthAdapter, file: Path) -> SampleRef:
    """A frame's :class:`SampleRef` as the adapter's ``discover`` builds it, objects empty."""
    p = adapter.params
    stem = file.stem
    bases = _bases(adapter, file)
    paths: dict[str, Path] = {"depth": file, "annotation": file}
    intr = _first(
        [b / p.intrinsics_dir / f"{stem}{e}" for b in bases for e in intrinsics.EXTENSIONS]
        + [b / f"intrinsics{e}" for b in bases for e in intrinsics.EXTENSIONS]
    )
    if intr is not None:
        paths["intrinsics"] = intr
    rgb = _first([b / p.rgb_dir / f"{stem}{e}" for b in bases for e in png.RGB_EXTENSIONS])
    if rgb is not None:
        paths["rgb"] = rgb
    sun = p.layout == "sunrgbd" and p.sunrgbd_unshift and file.suffix.lower() == ".png"
    meta: dict[str, Any] = {"objects": [], "depth_codec": "sunrgbd" if sun else None}
    return SampleRef(stem, "test", paths, meta)


def _nyu_refs(adapter: DepthAdapter, path: Path) -> list[tuple[SampleRef, str]]:
    """Every frame of an NYU Depth v2 labelled file, as the adapter's nyu layout lists them."""
    p = adapter.params
    need = (*nyu.REQUIRED, p.nyu_depth_key, *(("images",) if p.encoding == "rgbd" else ()))
    with nyu.open_labelled(path, tuple(dict.fromkeys(need))) as f:
        file_names = nyu.class_names(f, path)
        n, w, h = nyu.frame_count_and_size(f, p.nyu_depth_key, path, with_rgb=p.encoding == "rgbd")
    adapter.check_declared_size(path, w * h, p.max_pixels, f"{w} x {h} px frames", "max_pixels")
    stem = adapter.output_stem(path)
    meta = {"file_names": file_names}
    return [
        (SampleRef(f"nyu_{i:04d}", "test", {"nyu": path}, {"index": i, **meta}), f"{stem}_{i:04d}")
        for i in range(n)
    ]


def _attach_labels(
    adapter: DepthAdapter, path: Path, frames: list[tuple[SampleRef, str]], labels: Path
) -> dict[str, int]:
    """Put each frame's VOC objects into its ref, so ``read`` builds its targets exactly as
    for training (boxes clipped to the frame); returns the count of objects left out, by
    class name (classes the model does not know)."""
    if path.suffix.lower() == ".mat":
        if labels.resolve() != path.resolve():
            raise ConfigError(
                "an NYU .mat carries its own labels: give the same file as --labels", path=labels
            )
        return {}  # read() builds the targets from the file's instance masks
    if not labels.exists():
        raise DataError("labels not found", path=labels)
    if labels.is_file() and len(frames) != 1:
        raise ConfigError(
            f"one VOC XML labels one frame, but the input has {len(frames)}: give a folder of "
            "<stem>.xml",
            path=labels,
        )
    left_out: Counter = Counter()
    for ref, _ in frames:
        xml = labels if labels.is_file() else labels / f"{ref.ref_id}.xml"
        if not xml.is_file():
            raise DataError(f"no labels for frame {ref.ref_id!r} ({xml.name})", path=labels)
        ann = annotations.parse_voc(xml)
        if ann["filename"] and Path(ann["filename"]).stem != ref.ref_id and labels.is_dir():
            raise DataError(f"labels name frame {ann['filename']!r}, not {ref.ref_id!r}", path=xml)
        objects, unknown = select_objects(
            ann["objects"], adapter.class_names, keep_difficult=adapter.params.keep_difficult
        )
        left_out.update(unknown)
        ref.meta["objects"] = objects
        ref.paths["annotation"] = xml
    return dict(sorted(left_out.items()))


def _export(adapter: DepthAdapter, samples, dets) -> list[dict[str, Any]]:
    """The rows of :meth:`DepthAdapter.world_rows` (one per sample, in order), as the
    evaluate stage writes them."""
    items = [
        {"sample_id": s.sample_id, "source": s.source, "meta": s.meta, "detections": d}
        for s, d in zip(samples, dets)
    ]
    return adapter.world_rows(items)


def _target(sample) -> dict[str, Any]:
    """A sample's ground truth as :func:`score_detections` takes it."""
    keys = ("boxes", "labels", "difficult", "crowd")
    return {k: getattr(sample, k) for k in keys}
