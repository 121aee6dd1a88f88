"""The ``group_by`` param applied to the units an adapter lists from files: images of a
labelled-image collection (:mod:`.collection`), VOC devkit and COCO images of the rgb
modality, rasters and band-stack scenes of the multispectral modality.

The rule itself (``null``, ``"folder"``, ``"folder:N"``, a regular expression) is
:func:`modalities.formats.groups.group_of`, applied here to a unit's path relative to the
dataset root (POSIX separators, e.g. ``images/seq01/frame_0001.png``). What this module adds:

* :func:`relative_path` — a path under the root as ``group_by`` sees it;
* :func:`group_for` — one unit's group (None with ``group_by: null``); a path the rule does not
  match is a :class:`~dsod_core.errors.DataError` naming the file;
* :func:`set_groups` — the group of every listed item (``item.group`` from ``item.image``),
  each under the adapter's ``log.guard``, so ``prepare.on_error`` decides whether an image
  whose path has no group stops the run or is skipped;
* :func:`hash_key` — the key a split hash is drawn from: the group when there is one, so
  every unit of one group gets the same split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from modalities.formats.groups import group_of

T = TypeVar("T")


def relative_path(root: str | os.PathLike, path: str | os.PathLike) -> str:
    """``path`` relative to ``root`` (POSIX), both made absolute lexically (no symlinks
    followed); a path outside the root is given whole."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return Path(path).as_posix()


def group_for(
    root: str | os.PathLike,
    path: str | os.PathLike,
    spec: str | None,
    shown: str | os.PathLike | None = None,
) -> str | None:
    """The group of the unit at ``path`` by ``group_by`` ``spec`` on its path under ``root``;
    None when ``spec`` is None. DataError naming ``shown`` (else ``path``) when the path has
    no such group."""
    if spec is None:
        return None
    return group_of(relative_path(root, path), spec, path=str(shown if shown else path))


def set_groups(
    adapter: Any,
    items: Iterable[T],
    spec: str | None,
    shown: Callable[[Path], Any],
    unit: str = "image",
) -> list[T]:
    """Set ``item.group`` of every item (from ``item.image`` under ``adapter.root``) and
    return the items kept: one whose path ``spec`` does not match is refused through
    ``adapter.log.guard(shown(item.image), unit=unit)`` (an error, or skipped and recorded)."""
    items = list(items)
    if spec is None:
        return items
    kept = []
    for item in items:
        where = shown(item.image)
        with adapter.log.guard(where, unit=unit):
            item.group = group_for(adapter.root, item.image, spec, where)
            kept.append(item)
    return kept


def hash_key(unit_id: str, group: str | None) -> str:
    """The key a unit's split hash is drawn from: its group when set, else its own id."""
    return unit_id if group is None else group
