"""The medical adapter on real public files (tests/data/medical_real: pydicom's CT_small.dcm and
MR_small.dcm, pynrrd's BallBinary30x30x30 NRRD files) and on data as it ships: NRRD in LPS and
RAS, MetaImage data sizes both ways, stray files in DICOM folders, LUNA16 subsets, explicit
split files, background counts, nothing printed by the libraries."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dsod_core.data.sample import pixel_to_world
from dsod_core.errors import DataError
from modalities.base import PrepareLog
from modalities.medical import MedicalAdapter, formats, itkio

DATA = Path(__file__).parent / "data" / "medical_real"
LPS = np.diag([-1.0, -1.0, 1.0])
RAW = {"windows": [[0, 257]], "slice_context": 0, "negative_slice_rate": 1.0}
NO_SPLIT = {"val_fraction": 0.0, "test_fraction": 0.0}


def _build_example(out: Path) -> None:
    spec = importlib.util.spec_from_file_location("build_example", DATA / "build_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    module.build(out)


def _datalist(root: Path, *images: str) -> None:
    doc = {"training": [{"image": im, "box": [], "label": []} for im in images]}
    (root / "datalist.json").write_text(json.dumps(doc))


def _adapter(root: Path, log: PrepareLog | None = None, **extra) -> MedicalAdapter:
    params = {"datalist": "datalist.json", "world_frame": "LPS", **RAW, **NO_SPLIT, **extra}
    return MedicalAdapter(root, params, log=log)


def _read_all(ad: MedicalAdapter):
    return [s for ref in ad.discover() for s in ad.read(ref)]


# --- NRRD ------------------------------------------------------------------------------------
def test_nrrd_attached_and_detached_read_like_itk(tmp_path: Path) -> None:
    for name in ("BallBinary30x30x30_gz.nrrd", "BallBinary30x30x30.nhdr", "BallBinary30x30x30.raw"):
        shutil.copy(DATA / name, tmp_path / name)
    assert formats.claims(tmp_path / "BallBinary30x30x30.nhdr")
    assert MedicalAdapter.claims(tmp_path / "BallBinary30x30x30_gz.nrrd")
    assert not formats.claims(tmp_path / "BallBinary30x30x30.raw")
    assert MedicalAdapter.output_stem(tmp_path / "BallBinary30x30x30.nhdr") == "BallBinary30x30x30"
    _datalist(tmp_path, "BallBinary30x30x30_gz.nrrd", "BallBinary30x30x30.nhdr")
    samples = _read_all(_adapter(tmp_path))
    assert len(samples) == 60 and {s.meta["format"] for s in samples} == {"nrrd"}
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "BallBinary30x30x30_gz.nrrd")))
    for s in samples:
        k = s.meta["slice_index"]
        # identity LPS geometry: canonical RAS flips x and y, so stored pixel (x, y) of slice
        # k is ITK index (29 - x, 29 - y, k); values 0 / 257 -> 0 / 1
        np.testing.assert_allclose(s.image[0] * 257, truth[k, ::-1, ::-1], atol=1e-3)
        world = LPS @ pixel_to_world(s.affine, np.array([[0.5, 0.5]]))[0]
        np.testing.assert_allclose(world, [29.0, 29.0, float(k)], atol=1e-6)


def _ras_variant(src: Path, dst: Path, origin_lps: tuple[float, float, float]) -> None:
    """The same volume written with ``space: right-anterior-superior`` (3D Slicer's)."""
    data = src.read_bytes()
    head, sep, body = data.partition(b"\n\n")
    text = head.decode()
    text = text.replace("left-posterior-superior", "right-anterior-superior")
    text = text.replace("(1,0,0) (0,1,0) (0,0,1)", "(-1,0,0) (0,-1,0) (0,0,1)")
    x, y, z = origin_lps
    text = text.replace("space origin: (0,0,0)", f"space origin: ({-x},{-y},{z})")
    dst.write_bytes(text.encode() + sep + body)


def test_nrrd_ras_and_lps_spaces_give_one_world(tmp_path: Path) -> None:
    src = DATA / "BallBinary30x30x30_gz.nrrd"
    lps = src.read_bytes().replace(b"space origin: (0,0,0)", b"space origin: (10,-20,30)")
    (tmp_path / "lps.nrrd").write_bytes(lps)
    _ras_variant(src, tmp_path / "ras.nrrd", (10.0, -20.0, 30.0))
    assert b"right-anterior-superior" in (tmp_path / "ras.nrrd").read_bytes()
    _datalist(tmp_path, "lps.nrrd", "ras.nrrd")
    samples = _read_all(_adapter(tmp_path))
    by_volume: dict[str, list] = {}
    for s in samples:
        by_volume.setdefault(s.meta["volume_id"], []).append(s)
    for a, b in zip(by_volume["lps"], by_volume["ras"]):
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-9)
        np.testing.assert_array_equal(a.image, b.image)
    first = by_volume["lps"][0]
    np.testing.assert_allclose(
        LPS @ pixel_to_world(first.affine, np.array([[29.5, 29.5]]))[0], [10, -20, 30], atol=1e-6
    )


@pytest.mark.parametrize("delta", [-30, 30])
def test_nhdr_data_size_checked_both_ways(tmp_path: Path, delta: int) -> None:
    shutil.copy(DATA / "BallBinary30x30x30.nhdr", tmp_path / "b.nhdr")
    raw = (DATA / "BallBinary30x30x30.raw").read_bytes()
    raw = raw[:delta] if delta < 0 else raw + b"\0" * delta
    (tmp_path / "BallBinary30x30x30.raw").write_bytes(raw)
    _datalist(tmp_path, "b.nhdr")
    word = "shorter" if delta < 0 else "longer"
    with pytest.raises(
        DataError,
        match=rf"BallBinary30x30x30\.raw: sample b: holds {54000 + delta:,} bytes .*"
        rf"declares sizes 30 x 30 x 30 of type short = 54,000 bytes; {word}",
    ):
        _adapter(tmp_path).discover()


# --- MetaImage ---------------------------------------------------------------------------------
def _mhd(path: Path, compress: bool = False) -> None:
    vol = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)  # [z, y, x]
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(path), compress)


@pytest.mark.parametrize(("dims", "word"), [("4 4 6", "longer"), ("4 6 6", "shorter")])
def test_metaimage_dimsize_against_raw_both_ways(
    tmp_path: Path, dims: str, word: str, capfd
) -> None:
    _mhd(tmp_path / "v.mhd")
    text = (tmp_path / "v.mhd").read_text()
    (tmp_path / "v.mhd").write_text(text.replace("DimSize = 4 5 6", f"DimSize = {dims}"))
    _datalist(tmp_path, "v.mhd")
    with pytest.raises(
        DataError,
        match=rf"v\.raw: sample v: holds 240 bytes .*DimSize {dims.replace(' ', ' x ')}"
        rf" x 1 channel\(s\) of MET_SHORT = .* bytes; {word} than declared",
    ):
        _adapter(tmp_path).discover()
    assert capfd.readouterr() == ("", "")


def test_metaimage_compressed_length_checked_when_read(tmp_path: Path, capfd) -> None:
    _mhd(tmp_path / "z.mhd", compress=True)
    text = (tmp_path / "z.mhd").read_text()
    (tmp_path / "z.mhd").write_text(text.replace("DimSize = 4 5 6", "DimSize = 4 4 6"))
    _datalist(tmp_path, "z.mhd")
    ad = _adapter(tmp_path)
    (ref,) = ad.discover()
    with pytest.raises(DataError, match=r"z\.zraw: sample z: decompresses to 240 bytes .*longer"):
        list(ad.read(ref))
    assert capfd.readouterr() == ("", "")
    assert zlib.decompress((tmp_path / "z.zraw").read_bytes())  # a valid stream, only longer


def test_itk_lines_are_captured_into_the_message(tmp_path: Path, capfd) -> None:
    _mhd(tmp_path / "v.mhd")
    text = (tmp_path / "v.mhd").read_text()
    (tmp_path / "v.mhd").write_text(text.replace("DimSize = 4 5 6", "DimSize = 4 6 6"))
    # MetaIO prints "data not read completely" itself: it lands in our one-line message
    with pytest.raises(DataError, match=r"v\.mhd: cannot read the MetaImage voxels.*\[.*"):
        itkio.load_array(tmp_path / "v.mhd", "MetaImageIO", "MetaImage")
    (tmp_path / "bad.mhd").write_text("NDims = 3\nDimSize = a b\nElementDataFile = v.raw\n")
    _datalist(tmp_path, "bad.mhd")
    with pytest.raises(DataError, match=r"bad\.mhd: sample bad: "):
        _adapter(tmp_path).discover()
    assert capfd.readouterr() == ("", "")


# --- DICOM -------------------------------------------------------------------------------------
def test_real_ct_series_stray_file_and_other_modality_are_named(tmp_path: Path, capfd) -> None:
    _build_example(tmp_path)
    _datalist(tmp_path, "ct")
    params = {"windows": [[-1024, 3072]], "slice_context": 0, "negative_slice_rate": 1.0}
    samples = _read_all(
        MedicalAdapter(
            tmp_path, {"datalist": "datalist.json", "world_frame": "LPS", **params, **NO_SPLIT}
        )
    )
    ds = pydicom.dcmread(DATA / "CT_small.dcm")
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert len(samples) == 5
    # canonical RAS flips DICOM's row and column directions (LPS), as for every format
    np.testing.assert_allclose(samples[2].image[0] * 4096 - 1024, hu[::-1, ::-1], atol=0.05)
    z = [LPS @ pixel_to_world(s.affine, np.array([[0.5, 0.5]]))[0] for s in samples]
    np.testing.assert_allclose([w[2] for w in z], -75.7 + 5.0 * np.arange(5), atol=1e-4)
    # a damaged slice (its DICM prefix gone) is named, never reported as a gap
    path = tmp_path / "ct" / "IM0003.dcm"
    path.write_bytes(b"\0" * 200 + path.read_bytes()[200:])
    ad = MedicalAdapter(tmp_path, {"datalist": "datalist.json", "world_frame": "LPS", **params})
    with pytest.raises(DataError, match=r"ct/IM0003\.dcm: sample ct: not a DICOM file") as err:
        ad.discover()
    assert "gap" not in str(err.value)
    path.unlink()
    shutil.copy(DATA / "MR_small.dcm", tmp_path / "ct" / "MR_small.dcm")
    with pytest.raises(
        DataError,
        match=r"holds 2 DICOM series: .*\(CT, 4 file\(s\), e\.g\. IM0001\.dcm\); "
        r".*\(MR, 1 file\(s\), e\.g\. MR_small\.dcm\)",
    ):
        MedicalAdapter(tmp_path, {"datalist": "datalist.json", "world_frame": "LPS"}).discover()
    mr = pydicom.dcmread(tmp_path / "ct" / "MR_small.dcm")
    mr.SeriesInstanceUID = pydicom.dcmread(tmp_path / "ct" / "IM0001.dcm").SeriesInstanceUID
    mr.save_as(tmp_path / "ct" / "MR_small.dcm")
    with pytest.raises(DataError, match=r"MR_small\.dcm: sample ct: .*Modality MR differs from CT"):
        MedicalAdapter(tmp_path, {"datalist": "datalist.json", "world_frame": "LPS"}).discover()
    assert capfd.readouterr() == ("", "")


# --- LUNA16 layout as documented ----------------------------------------------------------------
def _docs_luna16_params() -> dict:
    doc = (Path(__file__).parents[1] / "docs" / "modalities" / "medical.md").read_text()
    block = re.search(r"  luna16: .*?adapter:\n(.*?)\n  \w", doc, re.S)
    assert block is not None
    import yaml

    return yaml.safe_load(block.group(1).replace("\n      ", "\n").strip())


def test_luna16_docs_example_counts_series_of_other_subsets(tmp_path: Path) -> None:
    params = _docs_luna16_params()
    assert params == {"annotations_csv": "annotations.csv", "series_map": "subset0/{seriesuid}.mhd"}
    (tmp_path / "subset0").mkdir()
    for uid in ("1.3.6.1.1", "1.3.6.1.2"):
        vol = np.full((6, 8, 8), -800, np.int16)
        img = sitk.GetImageFromArray(vol)
        img.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(img, str(tmp_path / "subset0" / f"{uid}.mhd"))
    rows = ["seriesuid,coordX,coordY,coordZ,diameter_mm", "1.3.6.1.1,4.0,4.0,4.0,3.0"]
    rows += [f"1.3.6.9.{n},1.0,2.0,3.0,5.0" for n in range(4)]  # series of other subsets
    (tmp_path / "annotations.csv").write_text("\n".join(rows) + "\n")
    log = PrepareLog(on_error="error")
    ad = MedicalAdapter(tmp_path, {**params, **NO_SPLIT}, log=log)
    refs = ad.discover()
    assert sorted(r.meta["seriesuid"] for r in refs) == ["1.3.6.1.1"]
    (warning,) = log.warnings
    assert warning["reason"].startswith("4 series (4 lesion row(s)) have no volume")
    assert "1.3.6.9.0, 1.3.6.9.1, 1.3.6.9.2, ..." in warning["reason"]
    assert ad.counts["missing_series"] == 4
    assert len(list(ad.read(refs[0]))) > 0
    # with a mapping, lesion-free series are read too: one background volume counted
    mapping = {uid: f"subset0/{uid}.mhd" for uid in ("1.3.6.1.1", "1.3.6.1.2")}
    ad = MedicalAdapter(tmp_path, {**params, "series_map": mapping, **NO_SPLIT}, log=PrepareLog())
    assert len(ad.discover()) == 2 and ad.counts["background_volumes"] == 1
    with pytest.raises(DataError, match=r"annotations\.csv: 4 series .*missing_series: error"):
        MedicalAdapter(tmp_path, {**params, "missing_series": "error"}).discover()


# --- split files, background counts, the worked example ---------------------------------------
def test_split_files_by_patient_and_name(tmp_path: Path) -> None:
    _build_example(tmp_path)
    log = PrepareLog()
    splits = {"train": "splits/train.txt", "test": "splits/test.txt"}
    ad = MedicalAdapter(
        tmp_path,
        {"datalist": "datalist.json", "world_frame": "LPS", "split_files": splits},
        log=log,
    )
    assert {r.ref_id: r.split for r in ad.discover()} == {
        "ct": "train", "ball": "train", "mr": "test"
    }  # fmt: skip
    assert ad.counts == {"volumes": 3, "background_volumes": 1}
    (tmp_path / "splits" / "test.txt").write_text("4MR1\nct\nnot_there\n")
    with pytest.raises(DataError, match=r"volume ct is listed for several splits"):
        MedicalAdapter(tmp_path, ad.params).discover()
    (tmp_path / "splits" / "test.txt").write_text("not_there\n")
    log = PrepareLog()
    refs = MedicalAdapter(tmp_path, ad.params, log=log).discover()
    assert [r.ref_id for r in refs] == ["ct", "ball"]
    reasons = [w["reason"] for w in log.warnings]
    assert reasons == [
        "1 volume(s) listed in no split file (split_files) left out: mr",
        "1 name(s) of the split files match no volume found: not_there",
    ]


def test_worked_example_counts_as_documented(tmp_path: Path) -> None:
    _build_example(tmp_path)
    params = {
        "datalist": "datalist.json",
        "world_frame": "LPS",
        "intensity": "mri_percentile",
        "negative_slice_rate": 1.0,
        "split_files": {"train": "splits/train.txt", "test": "splits/test.txt"},
    }
    log = PrepareLog()
    ad = MedicalAdapter(tmp_path, params, log=log)
    per_split: dict[str, list[int]] = {}
    for ref in ad.discover():
        for s in ad.read(ref):
            per_split.setdefault(s.split, [0, 0])[bool(len(s.boxes))] += 1
    # the figures quoted in docs/modalities/medical.md ("Your own data")
    assert per_split == {"train": [2, 33], "test": [4, 0]}
    assert ad.counts == {
        "volumes": 3, "background_volumes": 1, "background_slices": 6, "lesion_slices": 33
    }  # fmt: skip
    assert log.warnings == [] and log.skipped == []


def test_detect_reads_nrrd_inputs(tmp_path: Path) -> None:
    from modalities.medical import detect

    for name in ("BallBinary30x30x30_gz.nrrd", "BallBinary30x30x30.nhdr", "BallBinary30x30x30.raw"):
        shutil.copy(DATA / name, tmp_path / name)
    inputs = detect.expand_inputs(tmp_path)
    assert [p.name for p in inputs] == ["BallBinary30x30x30.nhdr", "BallBinary30x30x30_gz.nrrd"]
    model_params = MedicalAdapter(tmp_path, {"datalist": "x.json", "world_frame": "LPS", **RAW})
    for path in inputs:
        ad, _ = detect._adapter_for(model_params, path, ["ball"])
        ref = detect.sample_ref(ad, path)
        assert ref.meta["format"] == "nrrd" and ref.split == "test"
        samples = list(ad.read(ref))
        assert len(samples) == 30 and samples[15].image.max() == pytest.approx(1.0)
