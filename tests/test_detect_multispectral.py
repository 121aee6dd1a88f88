"""``dsod detect`` on multispectral scenes: windows, merging, GeoJSON out, backends, errors.

Two detectors are used. The window geometry (an object across a window border reported once,
detections independent of where the window grid falls) is checked exactly with a detector of
known answers: every bright blob of the window is one detection, its box truncated at the
window edge as a network sees a cut object. The same properties, the GeoJSON written, the
backends and the errors are then checked with a DSOD trained on easy scenes. (A trained
network is not exactly shift-equivariant: with the demo model, a grid shifted by (3, 5) px
gives boxes of median IoU 0.76 with the unshifted ones, docs/detect.md.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin
from scipy import ndimage

from dsod_core.detection import DetectRun
from dsod_core.tiling import core_limits, local_nms, tile_starts
from modalities.multispectral.adapter import MultispectralAdapter
from modalities.multispectral.detect import detect_scene
from modalities.multispectral.geojson import WGS84, parse_crs_member, read_label_features
from modalities.multispectral.params import MultispectralDetectParams
from pipelines.detect import main as detect_main
from tests.detect_helpers import train_demo_model

pytestmark = [
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript:DeprecationWarning"),
]

UTM = CRS.from_epsg(32633)


def write_raster(path: Path, data: np.ndarray, transform: Affine, crs=UTM, nodata=None) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        tiled=True,
        blockxsize=32,
        blockysize=32,
    ) as ds:
        ds.write(data)
    return path


class BlobDetector:
    """Known answers: each 8-connected blob of channel 0 above 0.5 is one detection (score
    0.9, class 1), its box the blob's pixel extent within the window."""

    class_names = ["blob"]
    post = {"score_threshold": 0.5}
    needs_calibration = False  # a Predictor's int8 backend asks for calibration images

    def __init__(self, channels: int = 8):
        self.in_channels = channels

    def check_channels(self, channels, where):
        assert channels == self.in_channels, where

    def describe(self):
        return {"model": "blob detector"}

    def __call__(self, images):
        out = []
        for im in images:
            lab, _ = ndimage.label(im[0] > 0.5, structure=np.ones((3, 3)))
            boxes = [
                [s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(lab)
            ]
            n = len(boxes)
            out.append(
                {
                    "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                    "scores": np.full(n, 0.9, dtype=np.float32),
                    "labels": np.ones(n, dtype=np.int64),
                }
            )
        return out


def blob_scene(size: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    data = np.full((8, size, size), 100, dtype=np.uint16)
    for x0, y0, x1, y1 in boxes:
        data[:, y0:y1, x0:x1] = 1000
    return data


def run_blobs(tmp: Path, path: Path, chip=64, overlap=32, labels=None):
    adapter = MultispectralAdapter(
        path.parent,
        {"chip_size": chip, "overlap": 0, "class_names": ["blob"], "clip_percentiles": None},
    )
    options = DetectRun(
        out_dir=tmp / "out",
        progress=False,
        labels=labels,
        modality=MultispectralDetectParams(chip_size=chip, overlap=overlap),
    )
    result = detect_scene(adapter, path, path.name, None, BlobDetector(), options)
    doc = json.loads(result.outputs[0].read_text())
    return result, doc


def world_boxes(doc) -> np.ndarray:
    rings = [np.asarray(f["geometry"]["coordinates"][0]) for f in doc["features"]]
    out = [[r[:, 0].min(), r[:, 1].min(), r[:, 0].max(), r[:, 1].max()] for r in rings]
    return np.asarray(sorted(out), dtype=np.float64).reshape(-1, 4)


def test_core_bounds_tile_the_axis():
    starts = tile_starts(200, 64, 32)
    limits = core_limits(starts, 64)
    assert starts == [0, 32, 64, 96, 128, 136]
    assert limits[0] == -np.inf and limits[-1] == np.inf
    assert np.all(np.diff(limits) > 0)
    # An inner core limit lies mid-way in the overlap of its two windows.
    for i in range(len(starts) - 1):
        overlap = starts[i] + 64 - starts[i + 1]
        assert limits[i + 1] - starts[i + 1] == starts[i] + 64 - limits[i + 1] == overlap / 2


def test_local_nms_matches_the_quadratic_reference():
    from dsod_core.boxes import batched_nms

    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 300, (400, 2))
    wh = rng.uniform(4, 30, (400, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.uniform(0, 1, 400)
    labels = rng.integers(1, 3, 400)
    import torch

    ref = batched_nms(
        torch.as_tensor(boxes), torch.as_tensor(scores), torch.as_tensor(labels), 0.3
    ).numpy()
    got = local_nms(boxes, scores, labels, 0.3, 32.0)
    np.testing.assert_array_equal(got, ref)


def test_an_object_across_window_borders_is_reported_once(tmp_path):
    # Windows start at 0, 32, 64, ...: this 24-px object crosses the borders of 3 x 3 windows,
    # most of which see only a part of it.
    box = (52, 54, 76, 78)
    path = write_raster(tmp_path / "one.tif", blob_scene(200, [box]), from_origin(5e5, 4e6, 10, 10))
    result, doc = run_blobs(tmp_path, path)
    assert len(doc["features"]) == 1
    expected = np.array([[5e5 + 520, 4e6 - 780, 5e5 + 760, 4e6 - 540]])
    np.testing.assert_allclose(world_boxes(doc), expected, atol=1e-6)
    assert result.units == 36 and result.skipped == 0


def test_detections_do_not_depend_on_where_the_window_grid_falls(tmp_path):
    rng = np.random.default_rng(0)
    boxes = []
    for gx in range(6):
        for gy in range(6):  # one object per 50-px cell, 8-30 px, anywhere in the cell
            w, h = rng.integers(8, 31, 2)  # (but clear of the 3 x 5 px the shift cuts away)
            x0, y0 = gx * 50 + rng.integers(6, 51 - w), gy * 50 + rng.integers(6, 51 - h)
            boxes.append((x0, y0, x0 + w, y0 + h))
    data = blob_scene(300, boxes)
    t = from_origin(5e5, 4e6, 10, 10)
    a = write_raster(tmp_path / "a.tif", data, t)
    # The same ground, its grid starting 3 columns and 5 rows later.
    b = write_raster(tmp_path / "b.tif", data[:, 5:, 3:].copy(), t @ Affine.translation(3, 5))
    _, doc_a = run_blobs(tmp_path, a)
    _, doc_b = run_blobs(tmp_path, b)
    wa, wb = world_boxes(doc_a), world_boxes(doc_b)
    assert len(wa) == len(boxes) == len(wb)
    np.testing.assert_allclose(wa, wb, atol=1e-6)


def test_all_no_data_windows_are_skipped(tmp_path):
    data = blob_scene(256, [(140, 140, 160, 160)])
    data[:, :128, :] = 0  # the top half is no-data
    path = write_raster(tmp_path / "nd.tif", data, from_origin(5e5, 4e6, 10, 10), nodata=0)
    result, doc = run_blobs(tmp_path, path, chip=64, overlap=0)
    assert result.skipped == 8 and result.units == 8  # 4 x 4 windows, two rows no-data
    assert len(doc["features"]) == 1


# --- a trained DSOD ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("detect_ms")
    # Easy scenes (bright squares, one class) so that a few hundred steps give a detector
    # whose confident detections mean something.
    return train_demo_model("blobs", tmp, image_size=48, epochs=40, warmup_steps=20)


def _detect(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        detect_main(args)
    return int(exc.value.code)


def test_geojson_reads_back_in_the_raster_crs_inside_its_bounds(trained, tmp_path):
    scene = trained.root / "scene_00.tif"
    labels = trained.root / "scene_00.geojson"
    out = tmp_path / "out"
    code = _detect(
        [
            "--model", str(trained.model), "--out", str(out), str(scene), "--wgs84",
            "--labels", str(labels), "--no-progress", "--score-threshold", "0.2",
        ]
    )  # fmt: skip
    assert code == 0
    doc = json.loads((out / "scene_00.geojson").read_text())
    with rasterio.open(scene) as ds:
        crs, bounds = ds.crs, ds.bounds
    assert parse_crs_member(doc.get("crs"), out / "scene_00.geojson") == crs
    read_crs, feats = read_label_features(out / "scene_00.geojson", "class")
    assert read_crs == crs and len(feats) == len(doc["features"]) > 0
    wb = world_boxes(doc)
    assert (wb[:, 0] >= bounds.left - 1e-6).all() and (wb[:, 2] <= bounds.right + 1e-6).all()
    assert (wb[:, 1] >= bounds.bottom - 1e-6).all() and (wb[:, 3] <= bounds.top + 1e-6).all()
    for f in doc["features"]:
        assert f["properties"]["class"] == "blob" and f["properties"]["label"] == 1
        assert 0.2 <= f["properties"]["score"] <= 1.0
    wgs = json.loads((out / "scene_00.wgs84.geojson").read_text())
    assert "crs" not in wgs and len(wgs["features"]) == len(doc["features"])
    assert parse_crs_member(wgs.get("crs"), out) == WGS84
    lon = np.concatenate(
        [np.asarray(f["geometry"]["coordinates"][0])[:, 0] for f in wgs["features"]]
    )
    assert ((lon > 10) & (lon < 20)).all()  # UTM 33N lies between 12 E +- 6
    ev = json.loads((out / "scene_00.eval.json").read_text())
    assert ev["objects"] > 0 and 0 <= ev["scene_map50"] <= 1 and 0 <= ev["chip_map50"] <= 1
    assert ev["true_positives"] + ev["missed"] == ev["objects"]


def test_backends_agree(trained, tmp_path):
    scene = trained.root / "scene_01.tif"
    got = {}
    for backend in ("eager", "onnx", "int8"):
        out = tmp_path / backend
        args = [
            "--model", str(trained.model), "--out", str(out), str(scene),
            "--backend", backend, "--no-progress", "--score-threshold", "0.3",
        ]  # fmt: skip
        assert _detect(args) == 0
        doc = json.loads((out / "scene_01.geojson").read_text())
        got[backend] = (world_boxes(doc), sorted(f["properties"]["score"] for f in doc["features"]))
    ea, es = got["eager"]
    oa, os_ = got["onnx"]
    assert len(ea) > 0 and len(ea) == len(oa)
    np.testing.assert_allclose(oa, ea, atol=0.05)  # metres: 1/200 of a 10 m pixel
    np.testing.assert_allclose(os_, es, atol=1e-3)
    from dsod_core.boxes import box_iou

    ia, _ = got["int8"]
    assert len(ia) > 0
    assert (box_iou(ea, ia).max(axis=1) >= 0.5).mean() >= 0.8


def test_errors_are_one_line_and_write_nothing(trained, tmp_path, capsys):
    out = tmp_path / "out"
    model = str(trained.model)
    with rasterio.open(trained.root / "scene_00.tif") as ds:
        data, t = ds.read(), ds.transform
    four = write_raster(tmp_path / "two.tif", data[:2], t)
    assert _detect(["--model", model, "--out", str(out), str(four), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "two.tif" in err and "2 channel(s), the model takes 4" in err and "\n" not in err

    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(
        nocrs, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint16"
    ) as ds:
        ds.write(data[:, :64, :64])
    assert _detect(["--model", model, "--out", str(out), str(nocrs), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "nocrs.tif" in err and "no CRS" in err

    nii = tmp_path / "ct.nii.gz"
    nii.write_bytes(b"\x1f\x8b not really")
    assert _detect(["--model", model, "--out", str(out), str(nii)]) == 1
    err = capsys.readouterr().err.strip()
    assert "ct.nii.gz" in err and "medical input" in err and "multispectral detector" in err

    assert _detect(["--model", model, "--out", str(out), str(four), "--device", "cpu",
                    "--amp"]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "--amp" in err and "CUDA" in err and "\n" not in err

    fake = tmp_path / "model.pt"
    fake.write_bytes(b"not a model")
    assert _detect(["--model", str(fake), "--out", str(out), str(four)]) == 1
    err = capsys.readouterr().err.strip()
    assert "model.pt" in err and "checkpoint" in err
    assert not out.exists() or not any(out.iterdir())


def test_the_installed_dsod_command(tmp_path):
    """The ``dsod`` console script of ``[project.scripts]`` is installed and dispatches."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("dsod") or str(Path(sys.executable).with_name("dsod"))
    assert Path(exe).exists(), "the dsod console script is not installed"
    top = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and "dsod detect" in top.stdout
    bad = subprocess.run([exe, "train"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown subcommand 'train'" in bad.stderr
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"not a model")
    run = subprocess.run(
        [exe, "detect", "--model", str(fake), "--out", str(tmp_path / "o"), str(fake)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0 and "model.pt" in run.stderr


def test_evaluate_and_detect_merge_one_scene_alike(trained, tmp_path):
    # One scene through both paths: the evaluate stage scores a store holding every chip of
    # it (merged by MultispectralAdapter.merge), `dsod detect` slides the same windows over
    # the file. Both must report the same merged detections.
    import yaml

    from pipelines.evaluate import evaluate_run
    from pipelines.prepare import prepare
    from tests.detect_helpers import ROOT

    entry = {
        **trained.entry,
        "adapter": {
            **trained.entry["adapter"],
            "split_by": "raster",
            "val_fraction": 0.0,
            "test_fraction": 1.0,
            "empty_chip_rate": 1.0,
        },
    }
    store = tmp_path / "all_test.h5"
    prepare("blobs_eval", entry, store, tmp_path / "all_test.report.json")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["evaluate"].update(score_threshold=0.05, nms_iou=0.45, max_detections=200)
    evaluate_run(trained.run, store, tmp_path / "reports", params)
    evaluated = json.loads((tmp_path / "reports/world/scene_00.geojson").read_text())
    out = tmp_path / "out"
    code = _detect(
        [
            "--model", str(trained.model), "--out", str(out), str(trained.root / "scene_00.tif"),
            "--chip-size", "48", "--overlap", "16", "--score-threshold", "0.05",
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    detected = json.loads((out / "scene_00.geojson").read_text())

    def rows(doc):  # sorted by class and position (not by score: near-ties could swap)
        found = [(f["properties"]["label"], *world_box(f), f["properties"]["score"])
                 for f in doc["features"]]  # fmt: skip
        return sorted(found, key=lambda r: (r[0], round(r[1]), round(r[2])))

    got, want = rows(detected), rows(evaluated)
    assert len(want) > 0 and len(got) == len(want)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-3)
    keys = {k for f in evaluated["features"] for k in f["properties"]}
    assert keys == {k for f in detected["features"] for k in f["properties"]}


def world_box(feature) -> list[float]:
    ring = np.asarray(feature["geometry"]["coordinates"][0])
    return [ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max()]
