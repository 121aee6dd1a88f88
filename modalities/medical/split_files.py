"""Explicit splits of the ``medical`` adapter (``split_files``): text files listing volumes.

``split_files: {train: splits/train.txt, test: splits/test.txt}`` (relative to the dataset
root), read by the project's shared reader (:mod:`modalities.formats.splits`: one name a line,
``#`` starts a comment, blank lines ignored; so write a selected DICOM series by its volume id
``folder__<uid>`` or its uid, not ``folder#<uid>``). A line names a
volume by any of: its volume id (the image path as the annotations write it, with ``/`` and
``#`` as ``__`` and the suffix dropped), the image path as written, the file or folder name
with or without its suffix, its series uid (the LUNA16 ``seriesuid``, the DICOM
``SeriesInstanceUID``), for DICOM its ``PatientID``, or its group (the patient of
``patient_key`` / ``patients_csv``, the key of ``group_by``): so a patient's volumes share a
split.

* A volume named in two files (directly, or through its patient and its series) is refused
  naming both files; a name listed twice in one file is harmless.
* Volumes named in no file are left out: counted, with one warning naming the first ones.
* Names that match no volume are counted in one warning (a typo, or a volume skipped).

The names of a volume are the medical adapter's own (:func:`names_of`): volumes have more
names than images (series, patients).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dsod_core.errors import DataError
from modalities.base import SampleRef
from modalities.formats.splits import read_split_files as shared_read_split_files
from modalities.medical.datalist import VOLUME_SUFFIXES

#: ``resolve(relative, referenced_from)``: the path inside the dataset root.
Resolve = Callable[[str | Path, Path], Path]


def read_split_files(
    root: Path, split_files: dict[str, str], resolve: Resolve
) -> dict[str, tuple[str, Path]]:
    """``{name: (split, file)}`` of every listed name (the shared reader,
    :func:`modalities.formats.splits.read_split_files`, on the files resolved inside the
    dataset root); raises :class:`DataError` for an unreadable file or a name listed for two
    splits."""
    files = {split: resolve(rel, root) for split, rel in sorted(split_files.items())}
    return shared_read_split_files(files)


def names_of(ref: SampleRef) -> set[str]:
    """The names a split file may use for the volume of ``ref`` (module docstring)."""
    image = str(ref.meta.get("image", "")).replace("\\", "/").rstrip("/")
    folder = image.partition("#")[0]
    base = folder.rsplit("/", 1)[-1]
    names = {ref.ref_id, image, folder, base}
    for suffix in VOLUME_SUFFIXES:
        if base.lower().endswith(suffix):
            names.add(base[: -len(suffix)])
    for key in ("seriesuid", "dicom_series", "patient_id", "group"):
        if ref.meta.get(key):
            names.add(str(ref.meta[key]))
    names.discard("")
    return names


def apply_split_files(
    refs: list[SampleRef], listed: dict[str, tuple[str, Path]], warn: Callable[..., None]
) -> list[SampleRef]:
    """The refs named in the split files, each with its listed split; one warning for the
    volumes in no file and one for the names matching no volume."""
    kept, unlisted, used = [], [], set()
    for ref in refs:
        hits = {name: listed[name] for name in names_of(ref) if name in listed}
        splits = {split for split, _ in hits.values()}
        if len(splits) > 1:
            shown = ", ".join(f"{n!r} ({s} in {f})" for n, (s, f) in sorted(hits.items()))
            raise DataError(
                f"volume {ref.ref_id} is listed for several splits: {shown}",
                path=next(iter(hits.values()))[1],
            )
        used.update(hits)
        if not splits:
            unlisted.append(ref.ref_id)
            continue
        ref.split = splits.pop()
        kept.append(ref)
    if unlisted:
        warn(
            f"{len(unlisted)} volume(s) listed in no split file (split_files) left out: "
            f"{', '.join(unlisted[:5])}{', ...' if len(unlisted) > 5 else ''}"
        )
    unused = sorted(set(listed) - used)
    if unused:
        warn(
            f"{len(unused)} name(s) of the split files match no volume found: "
            f"{', '.join(unused[:5])}{', ...' if len(unused) > 5 else ''}"
        )
    return kept
