"""Splits of depth frames, every layout alike: the split lists (``split_files``, else
``<split_dir>/{train,val,test}.txt``) read by the shared :mod:`modalities.formats.splits`,
else a stable hash of the frame's group (``val_fraction``, ``test_fraction``, ``seed``).

A frame's *group* is its independence unit (an NYU room, a SUN RGB-D recording, what
``group_by`` reads from its path; :func:`path_groups`); the hash is drawn on the group, so
all frames of a group share a split. Split lists stay authoritative: a list that puts two
frames of one group in different splits is kept as it is, and the prepare stage's straddle
check refuses it (``prepare.straddle``).

The adapter's ``_split_files`` and ``_splits`` (the names the layout modules call) delegate
here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from dsod_core.data.sample import SPLITS
from modalities.base import assign_split
from modalities.formats import splits as split_format
from modalities.formats.groups import group_of

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


def path_groups(
    adapter: DepthAdapter, units: Mapping[str, tuple[str, str | os.PathLike]], unit: str
) -> dict[str, str | None]:
    """Unit id -> its group by the ``group_by`` param, for units given as id ->
    ``(path under root, file named in errors)``; every group None when ``group_by`` is null.
    A path the rule does not match is refused through ``adapter.log.guard`` (``unit``): an
    error, or the unit is skipped, recorded and absent from the result."""
    spec = adapter.params.group_by
    if spec is None:
        return dict.fromkeys(units)
    out: dict[str, str | None] = {}
    for ref_id, (relative, shown) in units.items():
        with adapter.log.guard(shown, unit=unit):
            out[ref_id] = group_of(relative, spec, path=str(shown))
    return out


def _hash_unlisted(
    adapter: DepthAdapter, result: split_format.SplitAssignment, groups: Mapping[str, str | None]
) -> None:
    """Hash-split units in no list (``unlisted: hash``) by their group: a unit of a group
    whose listed frames all lie in one split joins it, any other draws the group's hash."""
    listed: dict[str, set[str]] = {}
    for u, split in result.split.items():
        if u not in result.unlisted and groups.get(u) is not None:
            listed.setdefault(groups[u], set()).add(split)
    for u in result.unlisted:
        if u in result.split:
            key = groups.get(u) or u
            known = listed.get(key, set())
            result.split[u] = next(iter(known)) if len(known) == 1 else hash_split(adapter, key)


def splits(
    adapter: DepthAdapter,
    units: Mapping[str, Iterable[str]],
    groups: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """Unit id -> split, for units given as id -> the names a list may use for it
    (:func:`modalities.formats.splits.unit_aliases`), ``groups`` their groups (unit id ->
    group, None: the unit alone). With split lists (:func:`split_files`): the list naming
    the unit (a unit listed for two splits is refused naming both files); entries matching
    no unit and units in no list are counted (one warning each) and the latter left out
    (``unlisted: drop``) or hash-split by group (:func:`_hash_unlisted`). Without lists: the
    stable hash of the group (of the id when it has none)."""
    p = adapter.params
    groups = groups or {}
    files = split_files(adapter)
    if not files:
        return {unit: hash_split(adapter, groups.get(unit) or unit) for unit in units}
    listed = split_format.read_split_files(files)
    result = split_format.assign_splits(
        units,
        listed,
        unlisted=p.unlisted,
        val_fraction=p.val_fraction,
        test_fraction=p.test_fraction,
        seed=p.seed,
    )
    _hash_unlisted(adapter, result, groups)
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
