"""``dsod detect`` for RGB photographs: COCO results files.

Inputs: an image (``.jpg``, ``.jpeg``, ``.png``) or a folder of them (directly inside it,
sorted by name), each decoded by the adapter's own :meth:`RGBAdapter.read` (8-bit RGB in
``[0, 1]``, size checked from the header, truncated files refused). One output set per INPUT:

* ``OUT/<stem>.json``: a COCO results list ``[{"image_id", "category_id", "bbox": [x, y, w,
  h], "score"}]`` (:func:`.coco.to_coco_results`; continuous 0-based pixels of the image);
* ``OUT/<stem>.images.json``: ``{"images": [{"id", "file_name", "width", "height"}],
  "categories": [{"id", "name"}]}``, which file each ``image_id`` is (``file_name`` relative
  to the input folder) and what each ``category_id`` names, so the results are usable without
  labels (this is also the skeleton ``COCO.loadRes`` needs);
* with ``--labels``, ``OUT/<stem>.eval.json``: COCO AP/AP50/AP75/AR100 and VOC mAP@0.5.

Category ids: the adapter's :attr:`RGBAdapter.label_to_category_id`: the label itself (1..K)
for a VOC-trained model; for a COCO-trained one the original ids, from the categories of the
``--labels`` COCO JSON, else of the model's ``val_json``/``test_json``/``train_json`` found
under the input folder or the folder above it (the layout's ``<image_dir>/`` under the COCO
root); the categories must be the model's classes, sorted by id. Without any, the label is
written and ``images.json`` says so (``"category_ids": "labels"``).

Image ids: with ``--labels`` a COCO instances JSON, each image's ``id`` there, matched by
``file_name`` (the path relative to the input folder, else the file name alone); with a VOC
XML (one image) or a folder of ``<id>.xml`` (``Annotations/``), the VOC image id (the XML's
stem, as the adapter's own results use), matched by the XML's ``<filename>``, else its stem;
without labels, ``1..N`` in sorted file order. Every input image must have labels when
``--labels`` is given; labelled images not among the inputs are not scored.
"""

from __future__ import annotations

import math
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
from dsod_core.metrics.coco import evaluate_coco_dicts
from dsod_core.metrics.scoring import score_detections
from modalities.base import SampleRef
from modalities.formats.coco import predict_images
from modalities.rgb import coco, voc
from modalities.rgb.adapter import RGBAdapter

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def detect_inputs(
    adapter: RGBAdapter, path: Path, predictor: PredictorLike, run: DetectRun
) -> list[DetectResult]:
    """Detect every image of ``path`` (an image or a folder of images): one results file."""
    predictor = tiled(predictor, run.batch_size)  # a model trained on tiles: merged per image
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    files = _image_files(path)
    labels = run.labels
    coco_labels = labels is not None and labels.is_file() and labels.suffix.lower() == ".json"
    source = _categories(adapter, predictor, folder, labels if coco_labels else None)
    names = [f.relative_to(folder).as_posix() for f in files]
    if labels is None:
        refs = [_ref(f, n, i + 1) for i, (f, n) in enumerate(zip(files, names))]
    elif coco_labels:
        refs = _coco_refs(adapter, files, names, labels)
    else:
        refs = _voc_refs(adapter, files, names, labels)

    mapping = adapter.label_to_category_id
    rows, images, targets, predictions = _predict(adapter, refs, predictor, run, path.name)
    stem = adapter.output_stem(path)
    out = write_json(run.out_dir / f"{stem}.json", rows, indent=None)
    cats = [{"id": mapping[i + 1], "name": n} for i, n in enumerate(adapter.class_names)]
    index = {"images": images, "categories": cats, "category_ids": source}
    outputs = [out, write_json(run.out_dir / f"{stem}.images.json", index, indent=1)]
    evaluation = None
    if labels is not None:
        evaluation, _ = score_detections(
            targets, predictions, adapter.class_names, with_coco=not coco_labels
        )
        if coco_labels:  # COCO AP of the written results against the file's own annotations
            evaluation.update(_coco_file_ap(labels, rows, {im["id"] for im in images}, cats))
        evaluation = {"input": str(path), "labels": str(labels), **evaluation}
        evaluation["num_ground_truth"] = int(sum(len(t["labels"]) for t in targets))
        outputs.append(write_json(run.out_dir / f"{stem}.eval.json", evaluation, indent=1))
    return [DetectResult(path, outputs, len(rows), len(refs), evaluation=evaluation)]


def _predict(adapter: RGBAdapter, refs, predictor: PredictorLike, run: DetectRun, name: str):
    """Every image through the model in batches (:func:`modalities.formats.coco.predict_images`):
    COCO result rows, image entries, targets and detections, in input order."""
    mapping = adapter.label_to_category_id
    return predict_images(adapter, refs, predictor, run, name, mapping)


def _image_files(path: Path) -> list[Path]:
    """The images of one input: itself, or the images directly in a folder (sorted)."""
    return input_files(path, IMAGE_EXTENSIONS, "rgb", "images")


def _ref(file: Path, name: str, image_id: Any, annotation: Path | None = None, **gt: Any):
    """An image's :class:`SampleRef` as the adapter's ``discover`` builds it (``gt``: its
    ``boxes``, ``labels``, ``difficult``, ``crowd``, ``declared_size``; none without labels)."""
    meta: dict[str, Any] = {
        "image_id": image_id,
        "file_name": name,
        "declared_size": None,
        "boxes": [],
        "labels": [],
        "difficult": [],
        **gt,
    }
    paths = {"image": file, "annotation": annotation or file}
    return SampleRef(f"detect/{name}", "test", paths, meta)


def _categories(
    adapter: RGBAdapter, predictor: PredictorLike, folder: Path, labels: Path | None
) -> str:
    """Give the adapter the model's classes and their category ids; returns where the ids
    come from (``labels`` / a COCO JSON path / ``"labels"`` meaning the 1-based label)."""
    names = list(predictor.class_names)
    if adapter.params.format == "voc":
        if adapter.class_names != names:
            raise ConfigError(
                f"adapter class_names {adapter.class_names} differ from the model's {names}",
                path=predictor.path,
            )
        if labels is not None:  # a COCO file scoring a VOC model: its ids must be the labels
            _, cats = coco.load_coco_json(labels)
            if cats != [(i + 1, n) for i, n in enumerate(names)]:
                raise ConfigError(
                    f"categories {cats} are not the model's labels 1..K {names} (a VOC-trained "
                    "model writes its labels as category ids)",
                    path=labels,
                )
        return "labels"
    candidates = [labels] if labels is not None else []
    for root in (folder, folder.parent):
        for key in ("val_json", "test_json", "train_json"):
            rel = getattr(adapter.params, key)
            if rel:
                candidates.append(root / rel)
    for json_path in candidates:
        if json_path.is_file():
            _, cats = coco.load_coco_json(json_path)
            if [n for _, n in cats] != names:
                raise ConfigError(
                    f"categories sorted by id {[n for _, n in cats]} differ from the model's "
                    f"classes {names}",
                    path=json_path,
                )
            adapter.use_categories(cats, json_path)
            return str(json_path)
    # No categories file: the model's labels stand for the ids.
    adapter.restore({"class_names": names})
    return "labels"


def _coco_refs(
    adapter: RGBAdapter, files: list[Path], names: list[str], labels: Path
) -> list[SampleRef]:
    """Refs whose ids and ground truth come from a COCO instances JSON, by ``file_name``."""
    data, _ = coco.load_coco_json(labels)
    entries = [coco.parse_image_entry(img, labels) for img in data["images"]]
    by_name = {e["file_name"]: e for e in entries}
    by_base: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_base.setdefault(Path(e["file_name"]).name, []).append(e)
    label_of = {cid: lab for lab, cid in adapter.label_to_category_id.items()}
    matched = []
    for file, name in zip(files, names):
        entry = by_name.get(name)
        if entry is None:
            found = by_base.get(file.name, [])
            if len(found) != 1:
                why = "no image entry" if not found else f"{len(found)} image entries"
                raise DataError(f"{why} with file_name {file.name!r}", path=labels)
            entry = found[0]
        matched.append((file, name, entry))
    gt = {e["id"]: {"boxes": [], "labels": [], "difficult": [], "crowd": []} for *_, e in matched}
    for ann in data["annotations"]:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id not in gt:
            continue
        parsed = coco.parse_annotation(ann, labels)
        label = label_of.get(parsed["category_id"])
        if label is None:
            raise DataError(
                f"annotation {ann.get('id')} has unknown category id {parsed['category_id']}",
                path=labels,
            )
        if parsed["box"] is not None:
            g = gt[image_id]
            g["boxes"].append(parsed["box"])
            g["labels"].append(label)
            g["difficult"].append(False)
            g["crowd"].append(parsed["crowd"])
    return [
        _ref(f, n, e["id"], declared_size=e["declared_size"], annotation=labels, **gt[e["id"]])
        for f, n, e in matched
    ]


def _voc_refs(
    adapter: RGBAdapter, files: list[Path], names: list[str], labels: Path
) -> list[SampleRef]:
    """Refs whose ids (the VOC image id) and ground truth come from VOC XML files."""
    if not labels.exists():
        raise DataError("labels not found", path=labels)
    if labels.is_file():
        if len(files) != 1:
            raise ConfigError(
                f"one VOC XML labels one image, but the input has {len(files)}: give a "
                "folder of <id>.xml",
                path=labels,
            )
        xmls = [labels]
    else:
        folder = labels / "Annotations" if (labels / "Annotations").is_dir() else labels
        xmls = sorted(folder.glob("*.xml"))
    by_file: dict[str, tuple[Path, dict[str, Any]]] = {}
    for xml in xmls:
        ann = voc.parse_voc_xml(xml)
        for key in {ann["filename"] or f"{xml.stem}.jpg", xml.stem}:
            by_file.setdefault(key, (xml, ann))
    index = {n: i + 1 for i, n in enumerate(adapter.class_names)}
    refs = []
    for file, name in zip(files, names):
        hit = by_file.get(file.name) or by_file.get(file.stem)
        if hit is None and labels.is_file():
            hit = (xmls[0], voc.parse_voc_xml(xmls[0]))
        if hit is None:
            raise DataError(f"no VOC XML for image {file.name!r}", path=labels)
        xml, ann = hit
        # The one VOC object rule of the house (unknown classes, keep_difficult).
        kept, unknown = voc.select_objects(
            ann["objects"], adapter.class_names, keep_difficult=adapter.params.keep_difficult
        )
        if unknown and adapter.params.unknown_class == "error":
            name = next(iter(unknown))
            raise DataError(
                f"unknown class {name!r} (the model's: {adapter.class_names})", path=xml
            )
        gt = {
            "boxes": [obj["box"] for obj in kept],
            "labels": [index[obj["name"]] for obj in kept],
            "difficult": [obj["difficult"] for obj in kept],
        }
        refs.append(_ref(file, name, xml.stem, declared_size=ann["size"], annotation=xml, **gt))
    return refs


def _coco_file_ap(
    labels: Path, rows: list[dict[str, Any]], image_ids: set[Any], cats: list[dict[str, Any]]
) -> dict[str, Any]:
    """COCO AP of the results against the labels file, restricted to the input's images
    (:func:`evaluate_coco_dicts`: the file's own areas and crowd flags; zero-size boxes are
    left out, as the adapter drops them)."""
    data, _ = coco.load_coco_json(labels)
    anns = []
    for ann in data["annotations"]:
        if ann.get("image_id") in image_ids and coco.parse_annotation(ann, labels)["box"]:
            anns.append({**ann, "id": ann.get("id", len(anns) + 1)})
    sub = {
        "images": [im for im in data["images"] if im.get("id") in image_ids],
        "categories": data["categories"],
        "annotations": anns,
    }
    ev = evaluate_coco_dicts(sub, rows)
    name_of = {c["id"]: c["name"] for c in cats}

    def num(v: float) -> float | None:
        return None if math.isnan(v) else float(v)

    return {
        "coco_ap": num(ev["ap"]),
        "coco_ap50": num(ev["ap50"]),
        "coco_ap75": num(ev["ap75"]),
        "coco_ar100": num(ev["ar100"]),
        "per_class_coco_ap": {
            name_of.get(c, str(c)): num(a) for c, a in zip(ev["category_ids"], ev["per_class_ap"])
        },
    }
