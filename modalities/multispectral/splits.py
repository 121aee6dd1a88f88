"""Explicit split files for rasters and band-stack scenes (the ``split_files`` param).

A dataset's published splits (``train.txt``, ``val.txt``: one raster or scene a line, by file
name, stem or path under root) replace the split hash. The lists are read by the project's
one reader (:func:`modalities.formats.splits.read_split_files`) and matched to the units by
:func:`modalities.formats.splits.assign_splits`; a unit is known by its path under root (with
and without suffix), its file name and its stem, and a scene also by its scene id and its
folder's name (a SAFE product's ``S2A_MSIL2A_...SAFE``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from modalities.formats.splits import assign_splits, read_split_files, unit_aliases

if TYPE_CHECKING:
    from modalities.multispectral.adapter import MultispectralAdapter
    from modalities.multispectral.geotiff import RasterInfo


def aliases(info: RasterInfo) -> list[str]:
    """The names a raster or scene may be listed by."""
    names = unit_aliases(info.rel)
    if info.stack:
        folder = PurePosixPath(info.stack["folder"])
        names += [info.stack["scene_id"], folder.name, folder.as_posix()]
        names += [folder.name.removesuffix(".SAFE")] if folder.name.endswith(".SAFE") else []
    return [n for n in dict.fromkeys(names) if n and n != "."]


def listed_splits(adapter: MultispectralAdapter, infos: Iterable[RasterInfo]) -> dict[str, str]:
    """Unit id (``info.rel``) -> split, from the ``split_files`` lists; units in no list are
    left out (one warning with their count), as are listed names matching no unit (one
    warning with their count and the first)."""
    p = adapter.params
    root = adapter.root
    files = {split: adapter.resolve_inside_root(rel, root) for split, rel in p.split_files.items()}
    listed = read_split_files(files, shown=files)
    infos = list(infos)
    result = assign_splits({i.rel: aliases(i) for i in infos}, listed, unlisted="drop")
    if result.unlisted:
        adapter.log.warn(
            f"split_files: {len(result.unlisted)} of {len(infos)} rasters/scenes are in no "
            f"split list and are left out (first: {result.unlisted[0]})",
            adapter.root,
        )
    if result.not_found:
        entry, where = result.not_found[0]
        adapter.log.warn(
            f"split_files: {len(result.not_found)} listed name(s) match no raster or scene "
            f"(first: {entry!r} in {where.name})",
            where,
        )
    return result.split
