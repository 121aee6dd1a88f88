"""Independence units wider than one file: ``group_by`` (a patient, a scene, a video sequence).

Frames of one video sequence, slices of one patient's several series and chips of one place
seen on several dates are not independent: one of them in training and another in test lets a
model recognise the place instead of detecting the object. An adapter therefore names, for each
unit it lists, the *group* it belongs to (``dsod_core.data.Sample.group``); splits are drawn by
group, training subsets and the study's bootstrap keep groups whole, and the prepare stage
refuses a store whose groups straddle splits (``prepare.straddle``).

Adapters that know the group from their format use it directly (NYU v2's ``scenes``, DICOM's
PatientID). For everything else the ``group_by`` param says how to read it from the unit's path
relative to the dataset root (POSIX separators):

* ``null`` — every unit is its own group (the default);
* ``"folder"`` — the unit's parent folder (``seq_03/000120.png`` -> ``seq_03``);
* ``"folder:N"`` — the first ``N`` folder levels (``folder:1`` on ``patient_7/visit_2/ct.nii.gz``
  -> ``patient_7``);
* any other string — a regular expression searched in the path; its first capture group (or the
  whole match when it has none) is the group: ``"^(\\w+?)_\\d+\\.png$"`` on ``kitchen_0003.png``
  -> ``kitchen``. A path it does not match is refused, naming the file and the pattern.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from dsod_core.errors import DataError

#: The one-line doc every adapter's ``group_by`` param uses.
GROUP_BY_DOC = (
    "the independence unit of a file (a sequence, scene, patient): null = the file itself, "
    "'folder' = its parent folder, 'folder:N' = its first N folder levels, else a regex on its "
    "path under root (first capture group); splits, subsets and intervals keep it whole"
)

_FOLDER = re.compile(r"^folder(?::(\d+))?$")


def check_group_by(spec: str | None) -> str | None:
    """The reason ``spec`` is not a valid ``group_by`` (None when it is)."""
    if spec is None:
        return None
    if not isinstance(spec, str) or not spec.strip():
        return "must be null, 'folder', 'folder:N' or a regular expression"
    m = _FOLDER.match(spec)
    if m:
        if m.group(1) is not None and int(m.group(1)) < 1:
            return "folder:N needs N >= 1"
        return None
    try:
        re.compile(spec)
    except re.error as exc:
        return f"is not a valid regular expression ({exc})"
    return None


def group_of(relative: str, spec: str | None, path: str | None = None) -> str | None:
    """The group of the unit at ``relative`` (its path under the root, any separators) by
    ``spec`` (see the module docs); None when ``spec`` is None. ``path`` names the file in the
    error when the path has no such group."""
    if spec is None:
        return None
    rel = PurePosixPath(str(relative).replace("\\", "/"))
    m = _FOLDER.match(spec)
    if m:
        parts = rel.parts[:-1]
        if not parts:
            raise DataError(
                f"group_by {spec!r}: the file lies directly under the root, in no folder",
                path=path or str(relative),
            )
        if m.group(1) is None:
            return "/".join(parts)
        n = int(m.group(1))
        if len(parts) < n:
            raise DataError(
                f"group_by {spec!r}: the file lies only {len(parts)} folder level(s) deep",
                path=path or str(relative),
            )
        return "/".join(parts[:n])
    found = re.search(spec, rel.as_posix())
    if found is None:
        raise DataError(
            f"group_by {spec!r} does not match the path {rel.as_posix()!r}",
            path=path or str(relative),
        )
    key = found.group(1) if found.re.groups else found.group(0)
    if not key:
        raise DataError(
            f"group_by {spec!r} matches the path {rel.as_posix()!r} with an empty group",
            path=path or str(relative),
        )
    return key
