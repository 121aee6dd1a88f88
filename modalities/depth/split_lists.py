"""Splits of depth frames, every layout alike: the split lists (``split_files``, else
``<split_dir>/{train,val,test}.txt``) read by the shared :mod:`modalities.formats.splits`,
else a stable hash of the frame's id (``val_fraction``, ``test_fraction``, ``seed``).

The adapter's ``_split_files`` and ``_splits`` (the names the layout modules call) delegate
here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from dsod_core.data.sample import SPLITS
from modalities.base import assign_split
from modalities.formats import splits as split_format

if TYPE_CHECKING:
    from modalities.depth.adapter import DepthAdapter


def split_files(adapter: DepthAdapter) -> dict[str, Path]:
    """Split -> list file: ``split_files`` (relative to root) when given, else the
    ``<split_dir>/{train,val,test}.txt`` that exist; empty when there are none."""
    p, root = adapter.params, adapter.root
    if p.split_files:
        return {s: adapter.resolve_inside_root(f, root) for s, f in p.split_files.items()}
    split_dir = adapter.resolve_inside_root(p.split_dir, root)
    return {s: split_dir / f"{s}.txt" for s in SPLITS if (split_dir / f"{s}.txt").is_file()}


def hash_split(adapter: DepthAdapter, key: str) -> str:
    """The split of a frame by the stable hash of ``key`` (:func:`assign_split`)."""
    p = adapter.params
    return assign_split(key, p.val_fraction, p.test_fraction, p.seed)


def splits(adapter: DepthAdapter, units: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """Unit id -> split, for units given as id -> the names a list may use for it
    (:func:`modalities.formats.splits.unit_aliases`). With split lists
    (:func:`split_files`): the list naming the unit (a unit listed for two splits is
    refused naming both files); entries matching no unit and units in no list are counted
    (one warning each) and the latter left out (``unlisted: drop``) or hash-split. Without
    lists: the stable hash of the id."""
    p = adapter.params
    files = split_files(adapter)
    if not files:
        return {unit: hash_split(adapter, unit) for unit in units}
    listed = split_format.read_split_files(files)
    result = split_format.assign_splits(
        units,
        listed,
        unlisted=p.unlisted,
        val_fraction=p.val_fraction,
        test_fraction=p.test_fraction,
        seed=p.seed,
    )
    if result.not_found:
        first = [entry for entry, _ in result.not_found[:5]]
        adapter.log.warn(
            f"{len(result.not_found)} listed unit(s) match no frame (first: {first}); "
            "they are ignored",
            result.not_found[0][1],
        )
    dropped = [u for u in result.unlisted if u not in result.split]
    if dropped:
        adapter.log.counts["split_unlisted_dropped"] = len(dropped)
        adapter.log.warn(
            f"{len(dropped)} frame(s) in no split list left out (unlisted: drop; first: "
            f"{dropped[:5]})",
            next(iter(files.values())),
        )
    return result.split
