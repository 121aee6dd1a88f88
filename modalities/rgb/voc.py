"""The rgb modality's ``voc`` format: a Pascal VOC devkit tree
``root/<year>/{Annotations,JPEGImages,ImageSets/Main}``.

The XML itself is read by the project's one VOC parser, :mod:`modalities.formats.voc`, whose
names this module re-exports (``modalities.rgb.voc.parse_voc_xml`` etc. stay importable).
What is the rgb adapter's own is here: :func:`discover` (its units: one image per id of the
image lists named by the ``train_sets``/``val_sets``/``test_sets`` params) and :func:`claims`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from dsod_core.errors import DataError
from modalities.base import SampleRef
from modalities.formats.voc import (
    VOC_CLASSES,
    find_image,
    is_voc_xml,
    parse_voc_xml,
    read_image_set,
    select_objects,
    voc_xml,
)
from modalities.rgb.params import SPLIT_PARAM

if TYPE_CHECKING:
    from modalities.rgb.adapter import RGBAdapter

__all__ = [
    "VOC_CLASSES",
    "claims",
    "discover",
    "is_voc_xml",
    "parse_voc_xml",
    "read_image_set",
    "select_objects",
    "voc_xml",
]


def claims(path: Path) -> bool:
    """A VOC annotation XML (root ``<annotation>``), or a VOC year folder (``Annotations/``
    beside ``JPEGImages/``)."""
    path = Path(path)
    if path.is_dir():
        return (path / "Annotations").is_dir() and (path / "JPEGImages").is_dir()
    return is_voc_xml(path)


def discover(adapter: RGBAdapter) -> list[SampleRef]:
    """One ref per image id of the image lists of every ``years`` folder, with the split its
    list gives. A problem of one image (its XML, its image file, a path escaping the root)
    goes through ``adapter.log.guard`` (``unit="image"``); a missing year folder or image
    list, or an id listed for two splits, raises."""
    from modalities.rgb.adapter import _with_sample

    p = adapter.params
    refs: list[SampleRef] = []
    tally: Counter = Counter()  # objects without a box, background images
    root_file = adapter.root  # blamed when a configured (not annotated) path escapes
    for year in p.years:
        year_dir = adapter.resolve_inside_root(year, root_file)
        if not year_dir.is_dir():
            raise DataError("VOC folder listed in 'years' does not exist", path=year_dir)
        split_of: dict[str, tuple[str, Path]] = {}
        for split, key in SPLIT_PARAM.items():
            for entry in getattr(p, key):
                entry_year, _, name = entry.rpartition("/")
                if entry_year and entry_year != year:
                    continue
                list_path = adapter.resolve_inside_root(
                    Path(year) / "ImageSets" / "Main" / f"{name}.txt", root_file
                )
                shown = adapter._display(list_path)
                for image_id in read_image_set(list_path, shown=shown):
                    seen = split_of.get(image_id)
                    if seen is not None and seen[0] != split:
                        raise DataError(
                            f"image {image_id!r} is listed for split {split!r} here and "
                            f"for {seen[0]!r} in {adapter._display(seen[1])}",
                            path=shown,
                        )
                    split_of[image_id] = (split, list_path)
        for image_id, (split, list_path) in split_of.items():
            xml_rel = Path(year) / "Annotations" / f"{image_id}.xml"
            sample_id = image_id if year == "." else f"{year}/{image_id}"
            with adapter.log.guard(adapter.root / xml_rel, unit="image"):
                try:
                    xml_path = adapter.resolve_inside_root(xml_rel, adapter._display(list_path))
                    refs.append(_ref(adapter, year, image_id, sample_id, split, xml_path, tally))
                except DataError as exc:
                    raise _with_sample(exc, sample_id) from None
    _summarise(adapter, tally)
    return refs


def _summarise(adapter: RGBAdapter, tally: Counter) -> None:
    """One report line per quirk met while listing, with its count."""
    if tally["no_box"]:
        adapter.log.warn(
            f"{tally['no_box']} VOC object(s) without a <bndbox> ignored (no box: not objects)"
        )
    if tally["background"]:  # ordinary negatives: counted (the report's counts), not warned
        adapter.log.counts["background_kept"] = (
            adapter.log.counts.get("background_kept", 0) + tally["background"]
        )


def _ref(
    adapter: RGBAdapter,
    year: str,
    image_id: str,
    sample_id: str,
    split: str,
    xml_path: Path,
    tally: Counter,
) -> SampleRef:
    """One image's ref: its XML parsed, its image file found, its objects kept as the params
    say (``class_names``, ``unknown_class``, ``keep_difficult``)."""
    p = adapter.params
    shown = adapter._display(xml_path)
    ann = parse_voc_xml(xml_path, shown=shown)

    filename = ann["filename"] or f"{image_id}.jpg"
    image_path = adapter.resolve_inside_root(Path(year) / "JPEGImages" / filename, shown)
    if not image_path.is_file():
        # The devkit itself loads JPEGImages/<id>.jpg; tools such as labelImg write
        # <filename> without its extension, with another one, or the name of the file before
        # it was renamed: resolved by stem (the <filename>'s, then the id's).
        found = find_image(image_path.parent, None, [Path(filename).stem, image_id])
        if found is None:
            raise DataError(f"image {adapter._display(image_path)} not found", path=shown)
        image_path, filename = found, found.name
    tally["no_box"] += len(ann["no_box"])

    class_names = adapter.class_names
    kept, unknown = select_objects(ann["objects"], class_names, keep_difficult=p.keep_difficult)
    if unknown and p.unknown_class == "error":
        raise DataError(
            f"unknown class {next(iter(unknown))!r} (class_names: {class_names})", path=shown
        )
    if unknown:
        adapter.log.warn(
            f"{sum(unknown.values())} object(s) of unknown class {sorted(unknown)} skipped "
            "(unknown_class: skip)",
            shown,
            sample_id,
        )
    index = {name: i + 1 for i, name in enumerate(class_names)}
    tally["background"] += not kept
    return SampleRef(
        ref_id=sample_id,
        split=split,
        paths={"image": image_path, "annotation": xml_path},
        meta={
            "image_id": image_id,
            "year": year,
            "file_name": filename,
            "declared_size": ann["size"],
            "boxes": [obj["box"] for obj in kept],
            "labels": [index[obj["name"]] for obj in kept],
            "difficult": [obj["difficult"] for obj in kept],
            "skipped_unknown": sum(unknown.values()),
        },
    )
