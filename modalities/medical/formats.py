"""The medical modality's formats: format name -> the module that reads it.

Annotation formats, each with ``discover(adapter)`` (the adapter dispatches through this
table: ``datalist`` when the ``datalist`` param is set, else ``csv``) and ``claims(path)``:

* ``datalist``: a MONAI detection datalist JSON (:mod:`.datalist`);
* ``csv``: a LUNA16-style lesion CSV with ``series_map`` (:mod:`.lesion_csv`).

Volume formats, opened by :mod:`.volumes` as the annotations name them; here for ``claims``:

* ``nifti``: ``.nii`` / ``.nii.gz`` (:mod:`.nifti`);
* ``metaimage``: ``.mhd`` / ``.mha`` (:mod:`.metaimage`);
* ``nrrd``: ``.nrrd`` / detached ``.nhdr`` header (:mod:`.nrrd`; 3D Slicer's format);
* ``dicom``: a DICOM file, a folder tree of them or ``folder#<SeriesInstanceUID>``
  (:mod:`.dicom`).

:func:`claims` answers for the whole modality (``dsod detect`` uses it to name the modality of
an input).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from modalities.medical import datalist, dicom, lesion_csv, metaimage, nifti, nrrd

FORMATS: dict[str, ModuleType] = {
    "datalist": datalist,
    "csv": lesion_csv,
    "nifti": nifti,
    "metaimage": metaimage,
    "nrrd": nrrd,
    "dicom": dicom,
}
#: The formats with a ``discover``: annotation files that list the volumes.
LAYOUTS = ("datalist", "csv")
#: The volume formats (``claims`` only; read through :mod:`.volumes`).
VOLUME_FORMATS = ("nifti", "metaimage", "nrrd", "dicom")


def layout_of(params) -> str:
    """The annotation format of a :class:`MedicalParams`: ``datalist`` when it names one,
    else ``csv`` (``annotations_csv``; the params check that one of the two is set)."""
    return "datalist" if params.datalist is not None else "csv"


def claims(path: Path) -> bool:
    """Whether one of the medical formats claims ``path`` (a file, a folder, or
    ``folder#<SeriesInstanceUID>``)."""
    return any(module.claims(Path(path)) for module in FORMATS.values())
