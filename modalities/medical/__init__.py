"""Medical modality: CT/MRI volumes (NIfTI, DICOM series, MetaImage, NRRD) -> axial 2.5D slices;
linked 3D lesions in world mm.

Modules: :mod:`~modalities.medical.adapter` (the adapter), :mod:`~modalities.medical.params`
(its params and the CT window presets), :mod:`~modalities.medical.nifti` (NIfTI reading and
the RAS reorientation every format shares), :mod:`~modalities.medical.dicom` (DICOM series,
pydicom), :mod:`~modalities.medical.metaimage` (``.mhd``/``.mha``, SimpleITK),
:mod:`~modalities.medical.nrrd` (``.nrrd``/``.nhdr``, SimpleITK), :mod:`~modalities.medical.itkio`
(SimpleITK reading shared by both, library output captured), :mod:`~modalities.medical.volumes`
(which reader opens a volume; slice grids), :mod:`~modalities.medical.split_files` (explicit
splits),
:mod:`~modalities.medical.datalist` (MONAI datalist / LUNA16 CSV annotations),
:mod:`~modalities.medical.linking` (3D geometry and linking), :mod:`~modalities.medical.demo`
(synthetic CT). See ``docs/modalities/medical.md``.
"""

from modalities.medical.adapter import MedicalAdapter
from modalities.medical.datalist import DATALIST_KEYS, SPLIT_KEYS
from modalities.medical.linking import (
    Lesion3D,
    SliceCut,
    cuts_to_detections,
    ellipsoid_slice_cuts,
    link_detections,
    link_volume,
    lps_ras_flip,
    slice_to_volume_affine,
    volume_to_slice_affine,
)
from modalities.medical.nifti import SliceReader
from modalities.medical.params import CT_WINDOWS, DEFAULT_MAX_VOXELS, MedicalParams

__all__ = [
    "CT_WINDOWS",
    "DATALIST_KEYS",
    "DEFAULT_MAX_VOXELS",
    "Lesion3D",
    "MedicalAdapter",
    "MedicalParams",
    "SPLIT_KEYS",
    "SliceCut",
    "SliceReader",
    "cuts_to_detections",
    "ellipsoid_slice_cuts",
    "link_detections",
    "link_volume",
    "lps_ras_flip",
    "slice_to_volume_affine",
    "volume_to_slice_affine",
]
