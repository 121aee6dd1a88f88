"""Explicit split files: ``split -> text file`` listing the units of that split.

Datasets ship their splits as lists (``train.txt``, ``val.txt``; VOC ``ImageSets``, SIRST's
``idx_427/trainval.txt``, an Ultralytics ``autosplit_train.txt``). One list is a text file with
one unit a line: a file name (``a.jpg``), a stem (``a``) or a path relative to the dataset
root or to the image folder (``images/train/a.jpg``, ``./train/a``); ``#`` starts a comment,
blank lines are ignored, backslashes count as ``/``.

* :func:`read_split_list` reads one list; :func:`read_split_files` reads them all and refuses
  a unit listed for two splits, naming both files.
* :func:`unit_aliases` gives the names a unit is known by, :func:`assign_splits` matches the
  lists to the units: a listed entry that matches no unit is counted (the caller warns), a
  unit in no list is dropped or drawn by the split hash (``unlisted``).

Nothing here knows about adapters: the collection layer (:mod:`modalities.formats.collection`)
uses it for images, and any modality may use it for its own units (multispectral scenes,
medical volumes): build the aliases of each unit, call :func:`read_split_files` then
:func:`assign_splits`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from dsod_core.errors import DataError
from modalities.base import assign_split

SPLITS = ("train", "val", "test")


def normalise_entry(text: str) -> str:
    """An entry as it is compared: ``/`` separators, no leading ``./``, no trailing ``/``."""
    entry = text.strip().replace("\\", "/")
    while entry.startswith("./"):
        entry = entry[2:]
    return entry.rstrip("/")


def read_split_list(
    path: str | os.PathLike, *, shown: str | os.PathLike | None = None
) -> list[str]:
    """The entries of one split list in order, duplicates removed (see the module doc).
    Raises :class:`DataError` naming ``shown`` when it is missing or unreadable."""
    shown = path if shown is None else shown
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError("split list not found", path=shown) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"split list unreadable: {exc}", path=shown) from None
    entries = []
    for line in text.splitlines():
        entry = normalise_entry(line.split("#", 1)[0])
        if entry:
            entries.append(entry)
    return list(dict.fromkeys(entries))


def read_split_files(
    files: Mapping[str, str | os.PathLike], *, shown: Mapping[str, str | os.PathLike] | None = None
) -> dict[str, tuple[str, Path]]:
    """``split -> list file`` read into ``entry -> (split, file)``.

    An entry listed for two different splits is refused (:class:`DataError` naming both
    files); listed twice for the same split it is one entry."""
    shown = shown or {}
    owner: dict[str, tuple[str, Path]] = {}
    for split, path in files.items():
        shown_path = Path(shown.get(split, path))
        for entry in read_split_list(path, shown=shown_path):
            seen = owner.get(entry)
            if seen is not None and seen[0] != split:
                raise DataError(
                    f"{entry!r} is listed for split {split!r} here and for {seen[0]!r} in "
                    f"{seen[1]}",
                    path=shown_path,
                )
            owner[entry] = (split, shown_path)
    return owner


def unit_aliases(relative: str | os.PathLike, *prefixes: str) -> list[str]:
    """The names a unit at ``relative`` (a path relative to its folder, with its suffix) is
    listed by: that path with and without its suffix, its file name and its stem, and each
    of those paths under every ``prefixes`` folder (e.g. the image folder relative to root)."""
    rel = PurePosixPath(normalise_entry(str(relative)))
    bare = rel.with_suffix("") if rel.suffix else rel
    names = [str(rel), str(bare), rel.name, bare.name]
    for prefix in prefixes:
        prefix = normalise_entry(prefix)
        if prefix and prefix != ".":
            names += [f"{prefix}/{rel}", f"{prefix}/{bare}"]
    return list(dict.fromkeys(names))


@dataclass
class SplitAssignment:
    """What :func:`assign_splits` decided: ``split`` per unit (units dropped are absent),
    the listed entries that matched no unit, and the units in no list (dropped or hashed)."""

    split: dict[str, str] = field(default_factory=dict)
    not_found: list[tuple[str, Path]] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)


def assign_splits(
    units: Mapping[str, Iterable[str]],
    listed: Mapping[str, tuple[str, Path]],
    *,
    unlisted: Literal["drop", "hash"] = "drop",
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 0,
    keys: Mapping[str, str] | None = None,
) -> SplitAssignment:
    """Match split lists to units.

    Args:
        units: unit id -> its aliases (:func:`unit_aliases`).
        listed: entry -> (split, file) from :func:`read_split_files`.
        unlisted: a unit no entry names is dropped (``"drop"``) or gets a split from the
            stable hash of its id (``"hash"``, :func:`modalities.base.assign_split`).
        keys: unit id -> the key its hash is drawn from (its group, so the unlisted units
            of one group share a split; :mod:`modalities.formats.unit_groups`); default:
            the unit id.

    An entry naming several units (a stem shared by two folders) gives all of them its
    split; a unit named by entries of two splits is refused (:class:`DataError` naming both
    files)."""
    result = SplitAssignment()
    by_alias: dict[str, list[str]] = {}
    for unit, aliases in units.items():
        for alias in dict.fromkeys(aliases):
            by_alias.setdefault(alias, []).append(unit)
    source: dict[str, tuple[str, Path]] = {}
    for entry, (split, path) in listed.items():
        matched = by_alias.get(entry)
        if not matched:
            result.not_found.append((entry, path))
            continue
        for unit in matched:
            seen = source.get(unit)
            if seen is not None and seen[0] != split:
                raise DataError(
                    f"unit {unit!r} is listed for split {split!r} here (as {entry!r}) and "
                    f"for {seen[0]!r} in {seen[1]}",
                    path=path,
                )
            source[unit] = (split, path)
    for unit in units:
        if unit in source:
            result.split[unit] = source[unit][0]
        else:
            result.unlisted.append(unit)
            if unlisted == "hash":
                key = unit if keys is None else keys.get(unit, unit)
                result.split[unit] = assign_split(key, val_fraction, test_fraction, seed)
    return result
