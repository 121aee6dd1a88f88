"""``dsod detect`` for thermal frames: COCO results files, as the rgb modality writes them.

Inputs: a frame (``.png``, ``.jpg``, ``.jpeg``, ``.tif``, ``.tiff``) or a folder of them
(directly inside it, sorted by name), each decoded by the adapter's own
:meth:`ThermalAdapter.read` (size checked from the header, 8-bit grey or 16-bit counts made
the channel the model was trained on, colour images refused). The world is the frame's
pixels. One output set per INPUT:

* ``OUT/<stem>.json``: a COCO results list ``[{"image_id", "category_id", "bbox": [x, y, w,
  h], "score"}]`` (continuous 0-based pixels; ``category_id`` is the label 1..K);
* ``OUT/<stem>.images.json``: ``{"images": [{"id", "file_name", "width", "height"}],
  "categories": [{"id", "name"}]}`` (``id`` 1..N in sorted file order, ``file_name`` relative
  to the input folder);
* with ``--labels``, ``OUT/<stem>.eval.json``: VOC mAP@0.5 and COCO AP of the detections.
  ``--labels`` is a VOC XML (one frame), a folder of VOC XML files (matched by the stem of
  ``<filename>``, else of the XML), or a COCO instances JSON (matched by the stem of
  ``file_name``; categories by name). A frame without labels is a background frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsod_core.detection import (
    DetectResult,
    DetectRun,
    PredictorLike,
    input_files,
    tiled,
)
from dsod_core.errors import ConfigError, DataError
from dsod_core.io import write_json
from dsod_core.metrics.scoring import score_detections
from modalities.base import SampleRef
from modalities.formats import coco, voc
from modalities.thermal.adapter import ThermalAdapter
from modalities.thermal.formats import IMAGE_SUFFIXES


def detect_inputs(
    adapter: ThermalAdapter, path: Path, predictor: PredictorLike, run: DetectRun
) -> list[DetectResult]:
    """Detect every frame of ``path`` (a frame or a folder of frames): one results file."""
    predictor = tiled(predictor, run.batch_size)  # a model trained on tiles: merged per frame
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    names = list(predictor.class_names)
    adapter.restore({"class_names": names})
    files = image_files(path)
    gt = read_labels(run.labels, names, adapter) if run.labels is not None else None
    refs = []
    for i, file in enumerate(files):
        rel = file.relative_to(folder).as_posix()
        objects = (gt or {}).get(file.stem, {"boxes": [], "labels": [], "difficult": []})
        meta = {"image_id": i + 1, "file_name": rel, "declared_size": None, **objects}
        refs.append(SampleRef(f"detect/{rel}", "test", {"image": file, "annotation": file}, meta))
    rows, images, targets, predictions = _predict(adapter, refs, predictor, run, path.name)
    stem = adapter.output_stem(path)
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    outputs = [
        write_json(run.out_dir / f"{stem}.json", rows, indent=None),
        write_json(run.out_dir / f"{stem}.images.json", {"images": images, "categories": cats}),
    ]
    evaluation = None
    if gt is not None:
        evaluation, _ = score_detections(targets, predictions, names)
        evaluation = {"input": str(path), "labels": str(run.labels), **evaluation}
        evaluation["num_ground_truth"] = int(sum(len(t["labels"]) for t in targets))
        outputs.append(write_json(run.out_dir / f"{stem}.eval.json", evaluation, indent=1))
    return [DetectResult(path, outputs, len(rows), len(refs), evaluation=evaluation)]


def _predict(adapter: ThermalAdapter, refs, predictor: PredictorLike, run: DetectRun, name: str):
    """Every image through the model in batches (:func:`modalities.formats.coco.predict_images`):
    COCO result rows, image entries, targets and detections, in input order."""
    mapping = {i + 1: i + 1 for i in range(len(adapter.class_names))}
    return coco.predict_images(adapter, refs, predictor, run, name, mapping)


def image_files(path: Path) -> list[Path]:
    """The frames of one input: itself, or the frames directly in a folder (sorted)."""
    return input_files(path, IMAGE_SUFFIXES, "thermal", "frames")


def read_labels(labels: Path, names: list[str], adapter: ThermalAdapter) -> dict[str, dict]:
    """Ground truth by image stem from a VOC XML, a folder of them, or a COCO JSON."""
    if not labels.exists():
        raise DataError("labels not found", path=labels)
    index = {n: i + 1 for i, n in enumerate(names)}
    out: dict[str, dict] = {}
    if labels.is_file() and labels.suffix.lower() == ".json":
        data, cats = coco.load_coco_json(labels)
        cat_name = dict(cats)
        stem_of = {}
        for img in data["images"]:
            entry = coco.parse_image_entry(img, labels)
            stem_of[entry["id"]] = Path(entry["file_name"]).stem
            out[stem_of[entry["id"]]] = {"boxes": [], "labels": [], "difficult": []}
        for ann in data["annotations"]:
            parsed = coco.parse_annotation(ann, labels)
            stem = stem_of.get(ann.get("image_id"))
            if stem is None or parsed["box"] is None or parsed["crowd"]:
                continue
            _add(
                out[stem], cat_name.get(parsed["category_id"]), parsed["box"], False, index, labels
            )
        return out
    xmls = [labels] if labels.is_file() else sorted(labels.rglob("*.xml"))
    if not xmls:
        raise ConfigError("--labels: no VOC XML files (nor a COCO JSON) found", path=labels)
    for xml in xmls:
        ann = voc.parse_voc_xml(xml)
        filename = (ann["filename"] or "").replace("\\", "/").rsplit("/", 1)[-1]
        suffix = Path(filename).suffix.lower()
        stem = Path(filename).stem if suffix in IMAGE_SUFFIXES else filename or xml.stem
        target = out.setdefault(stem, {"boxes": [], "labels": [], "difficult": []})
        for obj in ann["objects"]:
            if obj["difficult"] and not adapter.params.keep_difficult:
                continue
            _add(target, obj["name"], obj["box"], obj["difficult"], index, xml)
    return out


def _add(target: dict, name: Any, box, difficult: bool, index: dict, where: Path) -> None:
    if name not in index:
        raise DataError(f"class {name!r} is not one of the model's {list(index)}", path=where)
    target["boxes"].append(list(box))
    target["labels"].append(index[name])
    target["difficult"].append(bool(difficult))
