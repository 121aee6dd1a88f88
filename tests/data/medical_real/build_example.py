"""Build the medical "your own data" example (docs/modalities/medical.md) from the real public
files in this folder: ``python tests/data/medical_real/build_example.py OUT_DIR``.

* ``OUT_DIR/ct/``: a 5-slice CT series made from pydicom's ``CT_small.dcm`` (one real 128 x 128
  CT slice): copies at ``ImagePositionPatient`` z = -75.7 + 5 s mm (its ``SliceThickness``),
  each with its own ``SOPInstanceUID`` and ``InstanceNumber``; pixels and every other tag as
  in the file.
* ``OUT_DIR/mr/``: a 4-slice MR series made the same way from ``MR_small.dcm`` (64 x 64,
  0.8 mm slices).
* ``OUT_DIR/ball.nrrd``: pynrrd's ``BallBinary30x30x30_gz.nrrd`` as it is (a 30^3 binary
  ball, values 0 / 257, ``space: left-posterior-superior``, gzip encoding).
* ``OUT_DIR/datalist.json``: one lesion box (LPS mm, cccwhd) in the CT series, the ball as a
  lesion of the NRRD volume, the MR series without lesions (a lesion-free volume).
* ``OUT_DIR/splits/{train,test}.txt``: explicit splits (by PatientID for the DICOM series).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

HERE = Path(__file__).resolve().parent


def dicom_series(source: Path, folder: Path, slices: int, step: float) -> list[Path]:
    """``slices`` copies of one real DICOM slice stacked along its slice normal (z)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid(entropy_srcs=[source.name, "series"])
    paths = []
    for s in range(slices):
        ds = pydicom.dcmread(source)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x:.6f}", f"{y:.6f}", f"{z + step * s:.6f}"]
        ds.InstanceNumber = s + 1
        ds.SeriesInstanceUID = series_uid
        uid = generate_uid(entropy_srcs=[source.name, str(s)])
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        path = folder / f"IM{s + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def build(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    dicom_series(HERE / "CT_small.dcm", out / "ct", 5, 5.0)
    dicom_series(HERE / "MR_small.dcm", out / "mr", 4, 0.8)
    shutil.copyfile(HERE / "BallBinary30x30x30_gz.nrrd", out / "ball.nrrd")
    datalist = {
        "training": [
            # CT: a 20 mm box centred in the series' middle slice (LPS mm)
            {"image": "ct", "box": [[-116.0, -137.0, -65.7, 20.0, 20.0, 12.0]], "label": [0]},
            # NRRD: the ball (voxels 0..29, 1 mm, origin 0, LPS) as one lesion
            {"image": "ball.nrrd", "box": [[14.5, 14.5, 14.5, 30.0, 30.0, 30.0]], "label": [0]},
        ],
        "test": [{"image": "mr", "box": [], "label": []}],
    }
    (out / "datalist.json").write_text(json.dumps(datalist, indent=1) + "\n")
    (out / "splits").mkdir(exist_ok=True)
    # PatientID of CT_small.dcm is 1CT1, of MR_small.dcm 4MR1
    (out / "splits" / "train.txt").write_text("# one volume a line\n1CT1\nball\n")
    (out / "splits" / "test.txt").write_text("4MR1\n")
    return datalist


if __name__ == "__main__":
    build(Path(sys.argv[1]))
    print(f"wrote {sys.argv[1]}")
