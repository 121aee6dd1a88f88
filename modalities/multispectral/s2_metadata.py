"""Sentinel-2 product metadata of a band stack (``MTD_MSIL2A.xml``): radiometry and no-data.

Radiometry (processing baseline 04.00 and later): reflectance = (DN + BOA_ADD_OFFSET) /
BOA_QUANTIFICATION_VALUE, from ``General_Info/Product_Image_Characteristics``:
``QUANTIFICATION_VALUES_LIST/BOA_QUANTIFICATION_VALUE`` and
``BOA_ADD_OFFSET_VALUES_LIST/BOA_ADD_OFFSET[@band_id]``, band ids numbered by
``Spectral_Information_List/Spectral_Information[@bandId, @physicalBand]``. It is applied as
the bands' scale (1/Q) and offset (BOA_ADD_OFFSET/Q) (:func:`radiometry`).

No-data: ESA's JPEG 2000 band files carry no nodata tag; the product says it in
``Product_Image_Characteristics/Special_Values`` (``NODATA`` 0, ``SATURATED`` 65535). The NODATA
value is applied to every spectral band without a tag of its own (:func:`scene_nodata`), so DN 0
is no-data (``Sample.valid`` False, left out of the statistics), never reflectance -0.1; the
``nodata`` param does the same for any stack.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dsod_core.errors import DataError

if TYPE_CHECKING:
    from modalities.multispectral.bandstack import Scene

# Band ids of MTD_MSIL2A.xml when it has no Spectral_Information_List (the published order).
S2_BAND_IDS = [
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"
]  # fmt: skip
MTD_NAME = "MTD_MSIL2A.xml"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _s2_name(physical: str) -> str:
    """``B1`` (metadata) -> ``B01`` (file names); ``B8A`` unchanged."""
    m = re.fullmatch(r"B(\d)", physical.strip().upper())
    return f"B0{m[1]}" if m else physical.strip().upper()


def read_s2_special_values(path: Path) -> dict[str, float]:
    """``Special_Values`` of an ``MTD_MSIL2A.xml``: text -> value (``{"NODATA": 0.0,
    "SATURATED": 65535.0}``); empty when the file has none."""
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError) as exc:
        raise DataError(f"cannot read Sentinel-2 metadata ({exc})", path=path) from exc
    out: dict[str, float] = {}
    for el in tree.getroot().iter():
        if _local(el.tag) != "Special_Values":
            continue
        kids = {_local(k.tag): (k.text or "").strip() for k in el}
        try:
            out[kids["SPECIAL_VALUE_TEXT"].upper()] = float(kids["SPECIAL_VALUE_INDEX"])
        except (KeyError, ValueError) as exc:
            raise DataError(f"malformed Special_Values element ({exc})", path=path) from exc
    return out


def scene_nodata(
    root: Path, scene: Scene, bands: Sequence[str], nodata: float | None
) -> dict[str, float]:
    """Band -> the no-data value for bands that have no nodata tag: a Sentinel-2 scene's
    spectral bands take ``NODATA`` from the product's ``MTD_MSIL2A.xml`` (in the scene folder,
    above it, or beside the band files), every other band the ``nodata`` param (when set)."""
    out = {b: float(nodata) for b in bands} if nodata is not None else {}
    if scene.kind != "sentinel2":
        return out
    mtd = find_mtd(root, root / scene.folder)
    for rel in scene.files.values() if mtd is None else ():
        beside = root / Path(rel).parent / MTD_NAME
        if beside.is_file():
            mtd = beside
            break
    special = read_s2_special_values(mtd) if mtd is not None else {}
    if "NODATA" in special:
        out.update({b: special["NODATA"] for b in bands if b in S2_BAND_IDS})
    return out


def read_s2_radiometry(path: Path) -> tuple[float, dict[str, float]]:
    """(BOA_QUANTIFICATION_VALUE, band name -> BOA_ADD_OFFSET) of an ``MTD_MSIL2A.xml``.

    Products before processing baseline 04.00 have no offsets list: every offset is 0.
    Elements are matched by local name, so the product's namespace does not matter.
    """
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError) as exc:
        raise DataError(f"cannot read Sentinel-2 metadata ({exc})", path=path) from exc
    quant = None
    ids = dict(enumerate(S2_BAND_IDS))
    offsets_by_id: dict[int, float] = {}
    try:
        for el in tree.getroot().iter():
            name = _local(el.tag)
            if name == "BOA_QUANTIFICATION_VALUE":
                quant = float(el.text or "")
            elif name == "Spectral_Information" and "bandId" in el.attrib:
                ids[int(el.attrib["bandId"])] = _s2_name(el.attrib.get("physicalBand", ""))
            elif name == "BOA_ADD_OFFSET":
                offsets_by_id[int(el.attrib["band_id"])] = float(el.text or "")
    except (KeyError, ValueError) as exc:
        raise DataError(f"malformed BOA radiometry element ({exc})", path=path) from exc
    if quant is None or not np.isfinite(quant) or quant <= 0:
        raise DataError("no positive BOA_QUANTIFICATION_VALUE", path=path)
    return quant, {ids[i]: off for i, off in offsets_by_id.items() if i in ids}


def find_mtd(root: Path, folder: Path) -> Path | None:
    """The nearest ``MTD_MSIL2A.xml`` in ``folder`` or its ancestors up to ``root`` (a SAFE
    product keeps it two levels above the granule: ``<SAFE>/GRANULE/<id>``)."""
    root = root.resolve()
    here = folder.resolve()
    while True:
        cand = here / MTD_NAME
        if cand.is_file():
            return cand
        if here == root or root not in here.parents:
            return None
        here = here.parent


def radiometry(
    root: Path,
    scene: Scene,
    bands: Sequence[str],
    offset: float | None,
    quantification: float | None,
) -> dict[str, tuple[float, float]] | None:
    """Per band ``(scale, offset)`` replacing the files' own, or None (use the files').

    Sentinel-2: the 13 spectral bands get 1/Q and BOA_ADD_OFFSET/Q from the product metadata,
    else from the ``boa_add_offset``/``boa_quantification`` params; neither -> DataError.
    Other bands (SCL, AOT, WVP, TCI) keep scale 1, offset 0. Other stacks: None.
    """
    if scene.kind != "sentinel2":
        return None
    folder = root / scene.folder
    mtd = find_mtd(root, folder)
    if mtd is not None:
        quant, offsets = read_s2_radiometry(mtd)
    elif quantification is not None and offset is not None:
        quant, offsets = quantification, dict.fromkeys(S2_BAND_IDS, offset)
    else:
        raise DataError(
            f"Sentinel-2 scene {scene.scene_id}: no {MTD_NAME} in its folder or above it; set "
            "the adapter params boa_add_offset and boa_quantification (e.g. -1000 and 10000 "
            "since processing baseline 04.00) to read it",
            path=folder,
        )
    out = {}
    for b in bands:
        out[b] = (1.0 / quant, offsets.get(b, 0.0) / quant) if b in S2_BAND_IDS else (1.0, 0.0)
    return out
