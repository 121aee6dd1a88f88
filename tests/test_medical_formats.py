"""DICOM series (written with pydicom) and MetaImage (written with SimpleITK) through the
``medical`` adapter; the world frame must be stated for a datalist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from dsod_core.data.sample import pixel_to_world
from dsod_core.errors import ConfigError, DataError
from modalities.medical import MedicalAdapter

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# windows [-1024, 3072] HU, one slice: stored channel = (HU + 1024) / 4096
WIDE = {"windows": [[-1024, 3072]], "slice_context": 0, "val_fraction": 0.0, "test_fraction": 0.0}
LPS = np.diag([-1.0, -1.0, 1.0])


def _ds_str(v: float) -> str:
    return f"{v:.6f}".rstrip("0").rstrip(".")


def write_slice(
    path: Path,
    stored: np.ndarray,
    *,
    series: str,
    position,
    orientation=AXIAL,
    spacing=(0.7, 0.9),
    slope: float = 2.0,
    intercept: float = -1024.0,
    instance: int = 1,
    rle: bool = False,
    patient: str | None = "anon",
    study: str | None = "1.2.826.0.1.3680043.8.498.1",
) -> None:
    """One CT Image Storage file, explicit VR little endian (RLE Lossless if ``rle``);
    ``patient`` / ``study`` None leave PatientID / StudyInstanceUID out."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    if patient is not None:
        ds.PatientID = patient
    if study is not None:
        ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.ImageOrientationPatient = [_ds_str(v) for v in orientation]
    ds.ImagePositionPatient = [_ds_str(v) for v in position]
    ds.PixelSpacing = [_ds_str(v) for v in spacing]
    ds.RescaleSlope = _ds_str(slope)
    ds.RescaleIntercept = _ds_str(intercept)
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    if rle:
        ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)


def write_series(
    folder: Path,
    volume: np.ndarray,
    positions: np.ndarray,
    *,
    series: str = "1.2.826.0.1.3680043.8.498.10",
    orientation=AXIAL,
    spacing=(0.7, 0.9),
    seed: int = 0,
    rle: bool = False,
) -> None:
    """``volume[s]`` (rows x cols, stored values) at ``positions[s]``; files are named in a
    shuffled order and InstanceNumber is a different shuffle, both unrelated to position."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = rng.permutation(len(volume))
    instances = rng.permutation(len(volume)) + 1
    for s in range(len(volume)):
        write_slice(
            folder / f"IM{names[s]:04d}_{series[-2:]}",
            volume[s],
            series=series,
            position=positions[s],
            orientation=orientation,
            spacing=spacing,
            instance=int(instances[s]),
            rle=rle,
        )


def _datalist(root: Path, image: str, boxes=()) -> None:
    entry = {"image": image, "box": [list(b) for b in boxes], "label": [0] * len(boxes)}
    (root / "datalist.json").write_text(json.dumps({"training": [entry]}))


def _samples(ad: MedicalAdapter):
    return [s for ref in ad.discover() for s in ad.read(ref)]


def _hu(sample) -> np.ndarray:
    return sample.image[0].astype(np.float64) * 4096.0 - 1024.0


def _world_lps(sample, x: float, y: float) -> np.ndarray:
    return LPS @ pixel_to_world(sample.affine, np.array([[x, y]]))[0]


# --- DICOM ----------------------------------------------------------------------------------
def _axial_volume(n: int = 7, rows: int = 6, cols: int = 5) -> np.ndarray:
    vol = np.zeros((n, rows, cols), np.uint16)
    for s in range(n):
        vol[s] = 600 + 10 * s  # HU = 2 * stored - 1024 = 176 + 20 s
    vol[3, 4, 1] = 1500  # marker: slice 3, row 4, column 1
    return vol


def test_dicom_series_order_rescale_and_geometry(tmp_path: Path) -> None:
    vol = _axial_volume()
    origin = np.array([-10.0, 20.0, -50.0])
    positions = [origin + [0, 0, 2.5 * s] for s in range(len(vol))]
    write_series(tmp_path / "ct", vol, np.array(positions))
    (tmp_path / "ct" / "README.txt").write_text("not a DICOM file\n")
    (tmp_path / "ct" / "junk.dcm").write_bytes(np.random.default_rng(1).bytes(300))
    _datalist(tmp_path, "ct")
    params = {"datalist": "datalist.json", "world_frame": "LPS", "negative_slice_rate": 1.0}
    # the files that are not DICOM are named (default), or left out with one warning (skip)
    with pytest.raises(DataError, match=r"ct/README\.txt: sample ct: not a DICOM file"):
        MedicalAdapter(tmp_path, {**params, **WIDE}).discover()
    ad = MedicalAdapter(tmp_path, {**params, **WIDE, "dicom_stray_files": "skip"})
    samples = _samples(ad)
    (warning,) = ad.warnings
    assert warning["reason"].startswith("2 file(s) that are not DICOM left out")
    assert "README.txt" in warning["reason"] and "junk.dcm" in warning["reason"]
    assert len(samples) == 7 and samples[0].image.shape == (1, 6, 5)
    assert samples[0].meta["format"] == "dicom"
    for sample in samples:
        # slice s from its world z (never from file name or InstanceNumber)
        s = (_world_lps(sample, 0.5, 0.5)[2] - origin[2]) / 2.5
        assert abs(s - round(s)) < 1e-6
        hu = _hu(sample)
        expected = 176 + 20 * round(s)
        if round(s) == 3:
            y, x = np.unravel_index(np.argmax(hu), hu.shape)
            assert hu[y, x] == pytest.approx(2 * 1500 - 1024, abs=0.5)
            # PixelSpacing[0] = 0.7 between rows, [1] = 0.9 between columns
            truth = origin + [1 * 0.9, 4 * 0.7, 3 * 2.5]
            np.testing.assert_allclose(_world_lps(sample, x + 0.5, y + 0.5), truth, atol=1e-4)
            hu[y, x] = expected
        np.testing.assert_allclose(hu, expected, atol=0.5)


def test_dicom_oblique_non_axial_series(tmp_path: Path) -> None:
    a = np.radians(20.0)
    row_cos = np.array([1.0, 0.0, 0.0])
    col_cos = np.array([0.0, np.sin(a), -np.cos(a)])  # a coronal plane tilted by 20 degrees
    normal = np.cross(row_cos, col_cos)
    spacing, step = (0.8, 0.6), 1.5
    origin = np.array([5.0, -30.0, 40.0])
    vol = np.full((6, 8, 7), 500, np.uint16)
    r, c, s = 5, 2, 4
    vol[s, r, c] = 2000
    positions = np.array([origin + k * step * normal for k in range(len(vol))])
    write_series(
        tmp_path / "obl", vol, positions, orientation=(*row_cos, *col_cos), spacing=spacing
    )
    _datalist(tmp_path, "obl")
    ad = MedicalAdapter(
        tmp_path,
        {"datalist": "datalist.json", "world_frame": "RAS", "negative_slice_rate": 1.0, **WIDE},
    )
    samples = _samples(ad)
    # coronal-like: the canonical axial slices run along the DICOM rows (8 of them)
    assert len(samples) == 8
    best = max(samples, key=lambda sm: _hu(sm).max())
    hu = _hu(best)
    y, x = np.unravel_index(np.argmax(hu), hu.shape)
    assert hu[y, x] == pytest.approx(2 * 2000 - 1024, abs=0.5)
    truth = origin + row_cos * c * spacing[1] + col_cos * r * spacing[0] + normal * s * step
    np.testing.assert_allclose(_world_lps(best, x + 0.5, y + 0.5), truth, atol=1e-3)
    assert np.count_nonzero(np.concatenate([_hu(sm).ravel() for sm in samples]) > 1000) == 1


@pytest.mark.parametrize(
    ("positions", "message"),
    [
        ([[0, 0.3 * k, 2.5 * k] for k in range(5)], r"gantry tilt of about 6\.8 degrees"),
        ([[0, 0, z] for z in (0, 2.5, 5, 8, 10.5)], r"irregular slice spacing: 3\.000 mm"),
        ([[0, 0, z] for z in (0, 2.5, 5, 10, 12.5)], r"missing slices: a gap of 5\.000 mm"),
    ],
)
def test_dicom_bad_geometry_is_refused_naming_the_folder(
    tmp_path: Path, positions, message: str
) -> None:
    vol = np.full((5, 4, 4), 700, np.uint16)
    write_series(tmp_path / "bad_series", vol, np.array(positions, dtype=float))
    _datalist(tmp_path, "bad_series")
    ad = MedicalAdapter(tmp_path, {"datalist": "datalist.json", "world_frame": "LPS", **WIDE})
    with pytest.raises(DataError, match=r"bad_series: .*DICOM series .*" + message) as err:
        ad.discover()
    assert "\n" not in str(err.value) and "not resampled" in str(err.value)


def test_dicom_rle_decodes_like_uncompressed_and_undecodable_syntax_is_named(
    tmp_path: Path,
) -> None:
    vol = _axial_volume()
    positions = np.array([[0.0, 0.0, 2.5 * s] for s in range(len(vol))])
    write_series(tmp_path / "raw", vol, positions, series="1.2.3.41")
    write_series(tmp_path / "rle", vol, positions, series="1.2.3.42", rle=True)
    params = {"datalist": "datalist.json", "world_frame": "LPS", "negative_slice_rate": 1.0}
    images = {}
    for name in ("raw", "rle"):
        _datalist(tmp_path, name)
        images[name] = np.stack(
            [s.image for s in _samples(MedicalAdapter(tmp_path, {**params, **WIDE}))]
        )
    np.testing.assert_array_equal(images["raw"], images["rle"])
    # JPEG-LS: no decoder plugin installed here (a garbage stream would fail any decoder too)
    victim = sorted((tmp_path / "raw").iterdir())[2]
    from pydicom import dcmread

    ds = dcmread(victim)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7not-a-jpeg-ls-stream\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(victim, enforce_file_format=True)
    _datalist(tmp_path, "raw")
    ad = MedicalAdapter(tmp_path, {**params, **WIDE})
    (ref,) = ad.discover()
    with pytest.raises(
        DataError, match=rf"{victim.name}: .*transfer syntax 1\.2\.840\.10008\.1\.2\.4\.80"
    ):
        list(ad.read(ref))


def test_luna16_csv_maps_seriesuid_to_one_series_of_a_dicom_tree(tmp_path: Path) -> None:
    vol = np.full((9, 16, 12), 500, np.uint16)
    origin = np.array([-4.0, 7.0, -20.0])
    positions = np.array([origin + [0, 0, 2.0 * s] for s in range(len(vol))])
    uid_a, uid_b = "1.3.6.1.4.1.14519.5.2.1.7", "1.3.6.1.4.1.14519.5.2.1.8"
    write_series(tmp_path / "dicom" / "p1", vol, positions, series=uid_a, spacing=(0.75, 0.6))
    write_series(tmp_path / "dicom" / "p2", vol, positions + 100, series=uid_b)
    # truth: a sphere of 5 mm diameter at continuous voxel (column 5.2, row 8.3, slice 4.1)
    c, r, s, diameter = 5.2, 8.3, 4.1, 5.0
    centre = origin + [c * 0.6, r * 0.75, s * 2.0]
    (tmp_path / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        f"{uid_a},{centre[0]},{centre[1]},{centre[2]},{diameter}\n"
    )
    params = {
        "annotations_csv": "annotations.csv",
        "series_map": "dicom#{seriesuid}",
        "negative_slice_rate": 0.0,
        "min_cross_section": 0.0,
        **WIDE,
    }
    samples = _samples(MedicalAdapter(tmp_path, params))
    rad = diameter / 2
    planes = [k for k in range(9) if abs(k - s) * 2.0 < rad]
    assert sorted(sm.meta["slice_index"] for sm in samples) == planes
    for sm in samples:
        assert sm.meta["dicom_series"] == uid_a
        (box,) = sm.boxes
        lo, hi = _world_lps(sm, box[0], box[1]), _world_lps(sm, box[2], box[3])
        dz = sm.meta["slice_index"] - s
        half = np.sqrt(rad**2 - (dz * 2.0) ** 2)
        # continuous voxel (column: 0.6 mm along x, row: 0.75 mm along y) of both corners
        vox = (np.array([lo[:2], hi[:2]]) - origin[:2]) / [0.6, 0.75]
        got = np.concatenate([vox.min(axis=0), vox.max(axis=0)])
        want = [c - half / 0.6, r - half / 0.75, c + half / 0.6, r + half / 0.75]
        assert np.abs(got - np.array(want)).max() <= 0.5
    # without a selection, a folder holding two series is refused naming both choices
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": "dicom"}]}))
    with pytest.raises(DataError, match=r"dicom: .*holds 2 DICOM series.*#<SeriesInstanceUID>"):
        MedicalAdapter(tmp_path, {"datalist": "datalist.json", "world_frame": "LPS"}).discover()


# --- MetaImage ------------------------------------------------------------------------------
def _mhd(path: Path, compress: bool) -> sitk.Image:
    rng = np.random.default_rng(3)
    arr = rng.integers(-900, 400, size=(10, 24, 20)).astype(np.int16)  # [z, y, x]
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.9, 2.0))
    img.SetOrigin((-100.5, 20.25, -300.0))
    img.SetDirection((-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))  # coronal, flipped
    sitk.WriteImage(img, str(path), useCompression=compress)
    return img


@pytest.mark.parametrize("compress", [False, True])
def test_metaimage_luna16_boxes_within_half_a_voxel(tmp_path: Path, compress: bool) -> None:
    uid = "1.3.6.1.4.1.14519.5.2.1.6279.6001.1"
    img = _mhd(tmp_path / f"{uid}.mhd", compress)
    assert (tmp_path / f"{uid}.{'zraw' if compress else 'raw'}").is_file()
    c_idx = np.array([9.3, 11.6, 4.4])  # continuous ITK index (x, y, z)
    diameter = 7.0
    world = img.TransformContinuousIndexToPhysicalPoint(c_idx.tolist())
    (tmp_path / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        f"{uid},{world[0]!r},{world[1]!r},{world[2]!r},{diameter}\n"
    )
    params = {
        "annotations_csv": "annotations.csv",
        "series_map": "{seriesuid}.mhd",
        "negative_slice_rate": 0.0,
        "min_cross_section": 0.0,
        **WIDE,
    }
    samples = _samples(MedicalAdapter(tmp_path, params))
    arr = sitk.GetArrayFromImage(img)
    spacing = np.array(img.GetSpacing())
    rad = diameter / 2
    seen = set()
    for sm in samples:
        assert sm.meta["format"] == "metaimage"
        (box,) = sm.boxes
        corners = [
            np.array(img.TransformPhysicalPointToContinuousIndex(_world_lps(sm, x, y).tolist()))
            for x, y in ((box[0], box[1]), (box[2], box[3]))
        ]
        axis = int(np.argmin(np.abs(corners[0] - corners[1])))  # the slice axis: constant
        t = corners[0][axis]
        assert abs(t - round(t)) < 1e-6
        seen.add(round(t))
        dz = (round(t) - c_idx[axis]) * spacing[axis]
        for b in {0, 1, 2} - {axis}:
            half = np.sqrt(rad**2 - dz**2) / spacing[b]
            got = sorted([corners[0][b], corners[1][b]])
            assert abs(got[0] - (c_idx[b] - half)) <= 0.5
            assert abs(got[1] - (c_idx[b] + half)) <= 0.5
        # every pixel is the voxel the affine says it is
        hu = _hu(sm)
        for y in range(0, hu.shape[0], 3):
            for x in range(0, hu.shape[1], 3):
                p = _world_lps(sm, x + 0.5, y + 0.5).tolist()
                i, j, k = np.round(img.TransformPhysicalPointToContinuousIndex(p)).astype(int)
                assert hu[y, x] == pytest.approx(arr[k, j, i], abs=0.5)
    assert seen == {t for t in range(24) if abs(t - c_idx[1]) * spacing[1] < rad}


def test_candidates_csv_needs_a_diameter_and_csv_frame_is_lps(tmp_path: Path) -> None:
    uid = "1.2.840.113654.2.55.1"
    img = _mhd(tmp_path / f"{uid}.mhd", False)
    w = img.TransformContinuousIndexToPhysicalPoint((9.0, 12.0, 5.0))
    (tmp_path / "candidates.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,class\n"
        f"{uid},{w[0]},{w[1]},{w[2]},1\n{uid},{w[0] + 5},{w[1]},{w[2]},0\n"
    )
    (tmp_path / "annotations.csv").write_text(
        f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{uid},{w[0]},{w[1]},{w[2]},6.0\n"
    )
    base = {"series_map": "{seriesuid}.mhd", "negative_slice_rate": 0.0, **WIDE}
    with pytest.raises(DataError, match=r"candidates\.csv.*candidate_diameter_mm"):
        MedicalAdapter(tmp_path, {"annotations_csv": "candidates.csv", **base}).discover()
    cand = _samples(
        MedicalAdapter(
            tmp_path, {"annotations_csv": "candidates.csv", "candidate_diameter_mm": 6.0, **base}
        )
    )
    ann = _samples(MedicalAdapter(tmp_path, {"annotations_csv": "annotations.csv", **base}))
    assert len(cand) == len(ann) >= 3  # the class-0 row adds no box
    for a, b in zip(cand, ann):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-5)
    with pytest.raises(ConfigError, match=r"world_frame.*LPS .*by definition"):
        MedicalAdapter(tmp_path, {"annotations_csv": "annotations.csv", "world_frame": "RAS"})


def test_truncated_raw_is_refused_naming_the_file(tmp_path: Path) -> None:
    _mhd(tmp_path / "t.mhd", False)
    with (tmp_path / "t.raw").open("r+b") as f:
        f.truncate(1000)
    _datalist(tmp_path, "t.mhd")
    ad = MedicalAdapter(tmp_path, {"datalist": "datalist.json", "world_frame": "LPS", **WIDE})
    # the data file's size is checked against the header at discovery (no voxels read)
    with pytest.raises(
        DataError, match=r"t\.raw: sample t: holds 1,000 bytes of voxel data .* shorter"
    ):
        ad.discover()


def test_datalist_without_world_frame_explains_both_conventions(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        MedicalAdapter(tmp_path, {"datalist": "datalist.json"})
    text = str(err.value)
    assert "world_frame" in text and "\n" not in text
    for part in (
        "LPS (ITK, DICOM",
        "LUNA16",
        "left",
        "posterior",
        "RAS (NIfTI/nibabel",
        "anterior",
    ):
        assert part in text
