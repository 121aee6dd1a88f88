"""``dsod detect`` on CT volumes (modalities/medical/detect.py) with a tiny trained demo model:
the 3D candidates equal the evaluate stage's, the candidate mask, FROC against labels, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from dsod_core.errors import DataError
from dsod_core.metrics.froc import froc_from_datalists
from modalities.medical.demo import DEPTH
from modalities.medical.linking import apply_affine, lps_ras_flip
from tests.detect_helpers import ROOT, train_demo_model


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from pipelines.evaluate import evaluate_run

    tmp = tmp_path_factory.mktemp("detect_medical")
    dm = train_demo_model("medical", tmp, num_images=40, image_size=48, epochs=2)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {"medical": dm.entry}
    evaluate_run(dm.run, dm.store, tmp / "reports", params)
    evaluated = json.loads((tmp / "reports/world/predictions_3d.json").read_text())
    datalist = json.loads((dm.root / "datalist.json").read_text())
    return dm, tmp, evaluated, datalist


def detect(args: list[str]) -> int:
    from pipelines.detect import main

    with pytest.raises(SystemExit) as exc:
        main([*args, "--no-progress"])
    return exc.value.code


def test_candidates_equal_the_evaluate_stage(demo):
    dm, tmp, evaluated, datalist = demo
    out = tmp / "out_a"
    for entry in datalist["test"]:
        volume = dm.root / entry["image"]
        code = detect([str(volume), "--model", str(dm.model), "--out", str(out),
                       "--score-threshold", "0.01"])  # fmt: skip
        assert code == 0
        doc = json.loads((out / f"{volume.name[: -len('.nii.gz')]}.json").read_text())
        assert doc["box_mode"] == "cccwhd" and doc["units"] == "mm"
        assert doc["world_frame"] == "LPS" and doc["slices"] == DEPTH
        assert doc["model"]["score_threshold"] == 0.01
        (got,) = doc["test"]
        assert got["image"] == str(volume)
        (want,) = [e for e in evaluated["test"] if e["image"] == entry["image"]]
        assert len(want["score"]) > 0  # the comparison could fail
        assert got["label"] == want["label"]
        np.testing.assert_allclose(got["score"], want["score"], atol=1e-5)
        np.testing.assert_allclose(got["box"], want["box"], atol=1e-3)
        assert got["score"] == sorted(got["score"], reverse=True)


def test_volume_mask_overlays_the_input(demo):
    dm, tmp, _, datalist = demo
    volume = dm.root / datalist["test"][0]["image"]
    out = tmp / "out_b"
    assert detect([str(volume), "--model", str(dm.model), "--out", str(out),
                   "--score-threshold", "0.01", "--volume-mask"]) == 0  # fmt: skip
    stem = volume.name[: -len(".nii.gz")]
    boxes = np.asarray(json.loads((out / f"{stem}.json").read_text())["test"][0]["box"])
    assert len(boxes) > 0
    src = nib.load(str(volume))
    img = nib.load(str(out / f"{stem}.candidates.nii.gz"))
    mask = np.asarray(img.dataobj)
    assert mask.shape == src.shape and mask.dtype == np.int16
    np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
    # Expected on the whole grid: the best rank among boxes holding the voxel centre.
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in src.shape], indexing="ij"), -1)
    world = lps_ras_flip(apply_affine(src.affine, ijk.reshape(-1, 3)))  # LPS like the boxes
    expected = np.zeros(len(world), dtype=np.int64)
    for rank in range(len(boxes), 0, -1):
        c, s = boxes[rank - 1, :3], boxes[rank - 1, 3:]
        inside = (np.abs(world - c) <= s / 2 + 1e-6).all(axis=1)
        expected[inside] = rank
    np.testing.assert_array_equal(mask.reshape(-1), expected)
    shown = set(np.unique(mask)) - {0}
    assert 0 < len(shown) <= len(boxes) and 1 in shown


def test_labels_give_froc(demo):
    dm, tmp, evaluated, datalist = demo
    entry = datalist["test"][0]
    out = tmp / "out_c"
    labels = dm.root / "datalist.json"
    assert detect([str(dm.root / entry["image"]), "--model", str(dm.model), "--out", str(out),
                   "--score-threshold", "0.01", "--labels", str(labels)]) == 0  # fmt: skip
    ev = json.loads((out / f"{Path(entry['image']).name[:-7]}.eval.json").read_text())
    assert 0.0 <= ev["froc_cpm"] <= 1.0
    assert ev["num_lesions"] == len(entry["box"]) > 0
    assert set(ev["froc_sensitivities"]) == {"0.125", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0"}
    assert ev["image"] == entry["image"]
    # The same FROC as the evaluate stage's 3D candidates of this volume give.
    (mine,) = [e for e in evaluated["test"] if e["image"] == entry["image"]]
    want = froc_from_datalists({"test": [mine]}, {"test": [entry]}, key="test")
    assert ev["froc_cpm"] == pytest.approx(want["cpm"], abs=1e-9)
    assert ev["froc_sensitivities"] == pytest.approx(
        {str(k): v for k, v in zip(want["fp_rates"], want["sensitivities"])}, abs=1e-9
    )
    if len(datalist["test"]) == 1:  # then also the evaluate stage's own FROC
        detail = json.loads((tmp / "reports/detail.json").read_text())
        assert ev["froc_cpm"] == pytest.approx(detail["froc_cpm"], abs=1e-9)


def test_a_folder_of_volumes_is_one_input_each(demo):
    dm, tmp, _, datalist = demo
    folder = tmp / "folder_in"
    folder.mkdir()
    for entry in datalist["test"][:2] + datalist["validation"][:1]:
        shutil.copy(dm.root / entry["image"], folder)
    out = tmp / "out_folder"
    assert detect([str(folder), "--model", str(dm.model), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.json") if p.name != "detect_summary.json")
    assert names == sorted(f"{p.name[:-7]}.json" for p in folder.glob("*.nii.gz"))
    assert (out / "detect_summary.json").is_file()
    assert len(names) == min(2, len(datalist["test"])) + 1


def test_errors_are_one_line(demo, capsys):
    from pipelines.detect import build_parser, run

    dm, tmp, _, datalist = demo
    volume = dm.root / datalist["test"][0]["image"]
    other = tmp / "context2.yaml"
    other.write_text("slice_context: 2\n")
    out = tmp / "out_d"
    capsys.readouterr()
    assert detect([str(volume), "--model", str(dm.model), "--out", str(out),
                   "--adapter-params", str(other)]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(volume) in err and "10 channel(s)" in err, err
    assert not list(out.glob("*.json"))

    broken = tmp / "broken" / "ct_cut.nii.gz"
    broken.parent.mkdir()
    data = volume.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    assert detect([str(broken), "--model", str(dm.model), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(broken) in err, err
    unlisted = tmp / "broken" / "unlisted.nii.gz"
    shutil.copy(volume, unlisted)
    labels = dm.root / "datalist.json"
    assert detect([str(unlisted), "--model", str(dm.model), "--out", str(out),
                   "--labels", str(labels)]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(labels) in err and "unlisted.nii.gz" in err, err
    with pytest.raises(DataError, match="truncated|corrupt"):
        run(build_parser().parse_args([str(broken), "--model", str(dm.model), "--out",
                                       str(out), "--no-progress"]))  # fmt: skip
    assert list(out.iterdir()) == []


def test_metaimage_and_dicom_copies_give_the_same_candidates(demo):
    """The test volume written as MetaImage (.mha) and as a DICOM series (same voxels and
    geometry) gives the NIfTI input's candidates; their masks are on the canonical RAS grid."""
    import pydicom
    import SimpleITK as sitk

    from tests.test_medical_formats import write_series

    dm, tmp, _, datalist = demo
    volume = dm.root / datalist["test"][0]["image"]
    src = nib.load(str(volume))
    data = np.asarray(src.dataobj).astype(np.int16)  # [i, j, k], HU
    a = src.affine  # diag(-sx, -sy, sz): LPS-ordered voxels
    sx, sy, sz = (float(v) for v in np.abs(np.diag(a)[:3]))
    origin_lps = [-a[0, 3], -a[1, 3], a[2, 3]]
    assert np.allclose(a[:3, :3], np.diag([-sx, -sy, sz]))
    img = sitk.GetImageFromArray(data.transpose(2, 1, 0))
    img.SetSpacing((sx, sy, sz))
    img.SetOrigin(origin_lps)
    fmt = tmp / "formats"
    fmt.mkdir()
    sitk.WriteImage(img, str(fmt / "ct_copy.mha"))
    dcm = fmt / "ct_dicom"
    positions = np.array([[origin_lps[0], origin_lps[1], origin_lps[2] + sz * k]
                          for k in range(data.shape[2])])  # fmt: skip
    write_series(dcm, (data.transpose(2, 1, 0) + 2048).astype(np.uint16), positions,
                 spacing=(sx, sy))  # fmt: skip
    for f in dcm.iterdir():  # intercept -2048, slope 1 (write_series writes 2 / -1024)
        ds = pydicom.dcmread(f)
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-2048"
        ds.save_as(f)
    out = tmp / "out_formats"
    for given in (volume, fmt / "ct_copy.mha", dcm):
        assert detect([str(given), "--model", str(dm.model), "--out", str(out),
                       "--score-threshold", "0.01", "--volume-mask"]) == 0  # fmt: skip
    stem = volume.name[: -len(".nii.gz")]
    docs = {s: json.loads((out / f"{s}.json").read_text())["test"][0]
            for s in (stem, "ct_copy", "ct_dicom")}  # fmt: skip
    ref = docs[stem]
    assert len(ref["score"]) > 0
    for name in ("ct_copy", "ct_dicom"):
        assert docs[name]["label"] == ref["label"]
        np.testing.assert_allclose(docs[name]["score"], ref["score"], atol=1e-6)
        np.testing.assert_allclose(docs[name]["box"], ref["box"], atol=1e-3)
        # canonical RAS grid: axes i, j flipped relative to the LPS-ordered NIfTI file
        mask = nib.load(str(out / f"{name}.candidates.nii.gz"))
        canon = np.diag([sx, sy, sz, 1.0])
        canon[:3, 3] = apply_affine(a, np.array([[data.shape[0] - 1, data.shape[1] - 1, 0]]))
        np.testing.assert_allclose(mask.affine, canon, atol=1e-4)
        nifti_mask = np.asarray(nib.load(str(out / f"{stem}.candidates.nii.gz")).dataobj)
        np.testing.assert_array_equal(np.asarray(mask.dataobj), nifti_mask[::-1, ::-1, :])
