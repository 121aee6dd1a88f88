"""``dsod detect`` on depth frames and RGB images with tiny trained demo models: the distance of
each detection measured from the file, the camera-frame centre, backends agreeing, COCO
results whose ids follow the labels, and clear refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsod_core.metrics.coco import evaluate_coco_files
from modalities.rgb import voc
from pipelines import detect
from tests.detect_helpers import train_demo_model
from tests.test_depth import write_nyu


@pytest.fixture(scope="module")
def depth_model(tmp_path_factory):
    return train_demo_model(
        "depth", tmp_path_factory.mktemp("depth"), num_images=40, image_size=48, epochs=2
    )


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    return train_demo_model(
        "rgb", tmp_path_factory.mktemp("rgb"), num_images=40, image_size=48, epochs=2
    )


def run_cli(model, out: Path, *inputs, extra=()) -> int:
    argv = ["--model", str(model), "--out", str(out), "--score-threshold", "0.01"]
    argv += ["--no-progress", *extra, *(str(i) for i in inputs)]
    with pytest.raises(SystemExit) as exc:
        detect.main(argv)
    return exc.value.code


def measured(png: Path) -> tuple[np.ndarray, np.ndarray]:
    """The demo PNG's depth (m: 16-bit mm, depth_scale 1) and its valid mask (0.1-10 m)."""
    raw = np.asarray(Image.open(png), dtype=np.float64)
    metres = raw * 0.001
    return metres, (metres >= 0.1) & (metres <= 10.0)


# --- depth -----------------------------------------------------------------------------------
def test_depth_distances_and_centres_from_the_file(depth_model, tmp_path):
    png = depth_model.root / "depth" / "scene_00000.png"
    assert run_cli(depth_model.model, tmp_path, png) == 0
    doc = json.loads((tmp_path / "scene_00000.json").read_text())
    k = json.loads((depth_model.root / "intrinsics.json").read_text())  # found above depth/
    assert doc["units"] == "m" and doc["camera_frame"] == "x right, y down, z forward"
    assert doc["intrinsics"] == pytest.approx(k) and doc["model"]["backend"] == "eager"
    dets = doc["detections"]
    assert dets and all(d["score"] >= 0.01 for d in dets)
    metres, valid = measured(png)
    centres = np.arange(48) + 0.5
    checked = 0
    for d in dets:
        x1, y1, x2, y2 = d["box_xyxy_px"]
        assert d["class"] == ["box", "cylinder", "sphere"][d["label"] - 1]
        inside = ((centres >= y1) & (centres < y2))[:, None] & ((centres >= x1) & (centres < x2))[
            None, :
        ]
        if (inside & valid).any():
            assert d["depth_measured"] is True  # the adapter's filled map is float32
            assert d["median_depth_m"] == pytest.approx(np.median(metres[inside & valid]), abs=1e-6)
            checked += 1
        z = d["median_depth_m"]
        u, v = (x1 + x2) / 2 - 0.5, (y1 + y2) / 2 - 0.5
        expected = [(u - k["cx"]) * z / k["fx"], (v - k["cy"]) * z / k["fy"], z]
        assert d["centre_camera_m"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert checked >= 1


def test_depth_eager_and_onnx_agree(depth_model, tmp_path):
    png = depth_model.root / "depth" / "scene_00003.png"
    out = {}
    for backend in ("eager", "onnx"):
        code = run_cli(depth_model.model, tmp_path / backend, png, extra=("--backend", backend))
        assert code == 0
        out[backend] = json.loads((tmp_path / backend / "scene_00003.json").read_text())
    assert out["onnx"]["model"]["backend"] == "onnx"
    a, b = out["eager"]["detections"], out["onnx"]["detections"]
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(
        [d["box_xyxy_px"] for d in a], [d["box_xyxy_px"] for d in b], atol=1e-3
    )
    np.testing.assert_allclose([d["score"] for d in a], [d["score"] for d in b], atol=1e-4)


def test_depth_folder_with_labels_scored(depth_model, tmp_path):
    # A folder named like the layout's depth_dir: intrinsics.json is found in the root above.
    data = tmp_path / "data"
    (data / "depth").mkdir(parents=True)
    (data / "xml").mkdir()
    shutil.copy(depth_model.root / "intrinsics.json", data)
    stems = ["scene_00001", "scene_00002", "scene_00004"]
    for s in stems:
        shutil.copy(depth_model.root / "depth" / f"{s}.png", data / "depth")
        shutil.copy(depth_model.root / "Annotations" / f"{s}.xml", data / "xml")
    lamp = "<object><name>lamp</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax>"
    xml = data / "xml" / f"{stems[0]}.xml"  # a class the model does not know: left out
    xml.write_text(xml.read_text().replace("</annotation>", lamp + "<ymax>9</ymax></bndbox>"
                                           "</object></annotation>"))  # fmt: skip
    out = tmp_path / "out"
    extra = ("--labels", str(data / "xml"), "--batch-size", "2")
    code = run_cli(depth_model.model, out, data / "depth", extra=extra)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.json" for s in stems] + ["depth.eval.json", "detect_summary.json"]
    )
    ev = json.loads((out / "depth.eval.json").read_text())
    n_gt = sum(len(voc.parse_voc_xml(data / "xml" / f"{s}.xml")["objects"]) for s in stems)
    assert ev["num_images"] == 3 and ev["num_ground_truth"] == n_gt - 1
    assert ev["left_out_objects"] == {"lamp": 1}
    assert 0.0 <= ev["map50"] <= 1.0 and 0.0 <= ev["coco_ap"] <= 1.0


def test_depth_nyu_mat_every_frame(depth_model, tmp_path):
    rng = np.random.default_rng(0)
    n, h, w = 2, 40, 48
    depths = rng.uniform(1.0, 4.0, (n, h, w))
    labels = np.zeros((n, h, w), np.int64)
    inst = np.zeros((n, h, w), np.int64)
    labels[:, 10:25, 8:30], inst[:, 10:25, 8:30] = 1, 1  # one "box" per frame
    mat = tmp_path / "nyu.mat"
    write_nyu(mat, depths, labels, inst, ["box"])
    over = tmp_path / "nyu.yaml"  # the demo model reads mm; NYU stores metres
    over.write_text("depth_unit: m\n")
    out = tmp_path / "out"
    extra = ("--labels", str(mat), "--adapter-params", str(over))
    assert run_cli(depth_model.model, out, mat, extra=extra) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "detect_summary.json",
        "nyu.eval.json",
        "nyu_0000.json",
        "nyu_0001.json",
    ]
    doc = json.loads((out / "nyu_0001.json").read_text())
    assert doc["frame"] == 1 and doc["intrinsics"]["fx"] == pytest.approx(518.8579)
    assert json.loads((out / "nyu.eval.json").read_text())["num_ground_truth"] == 2


def test_depth_refuses_an_rgb_png_and_missing_intrinsics(depth_model, tmp_path, capsys):
    colour = tmp_path / "in" / "photo.png"
    colour.parent.mkdir()
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(colour)
    for bad in (colour, colour.parent):  # the file (the CLI's check), a folder (the reader)
        out = tmp_path / f"out_{bad.name}"
        assert run_cli(depth_model.model, out, bad) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "photo.png" in err, err
        assert not list(out.glob("*.json"))
    lone = tmp_path / "lone" / "scene_00000.png"  # hha needs intrinsics: none beside it
    lone.parent.mkdir()
    shutil.copy(depth_model.root / "depth" / "scene_00000.png", lone)
    assert run_cli(depth_model.model, tmp_path / "out_lone", lone) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "intrinsics" in err and "scene_00000.png" in err
    assert not list((tmp_path / "out_lone").glob("*.json"))


# --- rgb -------------------------------------------------------------------------------------
def rgb_inputs(rgb_model, tmp_path, ids=("000003", "000001", "000007", "000010")) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in ids:
        shutil.copy(rgb_model.root / "JPEGImages" / f"{i}.jpg", folder)
    return folder


def check_results(rows, image_ids, k=3):
    assert isinstance(rows, list) and rows
    for r in rows:
        assert set(r) == {"image_id", "category_id", "bbox", "score"}
        assert r["image_id"] in image_ids and 1 <= r["category_id"] <= k
        assert len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0
        assert 0.01 <= r["score"] <= 1.0


def test_rgb_folder_without_labels(rgb_model, tmp_path):
    folder = rgb_inputs(rgb_model, tmp_path)
    out = tmp_path / "out"
    assert run_cli(rgb_model.model, out, folder) == 0
    index = json.loads((out / "images.images.json").read_text())
    files = {im["id"]: im["file_name"] for im in index["images"]}
    assert files == {1: "000001.jpg", 2: "000003.jpg", 3: "000007.jpg", 4: "000010.jpg"}
    assert [c["name"] for c in index["categories"]] == ["circle", "square", "triangle"]
    check_results(json.loads((out / "images.json").read_text()), set(files))
    assert not (out / "images.eval.json").exists()


def test_rgb_coco_labels_ids_and_ap(rgb_model, tmp_path):
    folder = rgb_inputs(rgb_model, tmp_path)
    names = ["circle", "square", "triangle"]
    gt = {"images": [], "annotations": [], "categories": []}
    gt["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    for j, f in enumerate(sorted(folder.iterdir())):
        image_id = 500 - 7 * j  # ids unrelated to the file order
        gt["images"].append({"id": image_id, "file_name": f.name, "width": 48, "height": 48})
        for o in voc.parse_voc_xml(rgb_model.root / "Annotations" / f"{f.stem}.xml")["objects"]:
            x1, y1, x2, y2 = o["box"]
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": names.index(o["name"]) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    labels = tmp_path / "instances.json"
    labels.write_text(json.dumps(gt))
    out = tmp_path / "out"
    assert run_cli(rgb_model.model, out, folder, extra=("--labels", str(labels))) == 0
    rows = json.loads((out / "images.json").read_text())
    by_name = {im["file_name"]: im["id"] for im in gt["images"]}
    index = json.loads((out / "images.images.json").read_text())
    assert {im["file_name"]: im["id"] for im in index["images"]} == by_name
    check_results(rows, set(by_name.values()))
    ev = json.loads((out / "images.eval.json").read_text())
    assert 0.0 <= ev["coco_ap"] <= 1.0 and 0.0 <= ev["map50"] <= 1.0
    assert ev["num_images"] == 4 and ev["num_ground_truth"] == len(gt["annotations"])
    # Categories that are not the VOC model's labels 1..K: refused, nothing new written.
    gt["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(reversed(names))]
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(gt))
    assert run_cli(rgb_model.model, tmp_path / "out2", folder, extra=("--labels", str(wrong))) == 1
    assert not list((tmp_path / "out2").glob("*"))
    # The same AP as the project's evaluation of the written files.
    ref = evaluate_coco_files(labels, out / "images.json")
    assert ev["coco_ap"] == pytest.approx(ref["ap"]) and ev["coco_ap50"] == pytest.approx(
        ref["ap50"]
    )


def test_rgb_coco_trained_model_writes_original_category_ids(rgb_model, tmp_path):
    # A model read with format: coco gets its ids from the categories sorted by id.
    from dsod_core.detection import DetectRun as DetectOptions
    from dsod_core.inference import Predictor
    from modalities.rgb.adapter import RGBAdapter
    from modalities.rgb.detect import detect_inputs

    folder = rgb_inputs(rgb_model, tmp_path, ids=("000002", "000004"))
    cats = [{"id": 9, "name": "triangle"}, {"id": 3, "name": "circle"}]
    cats.append({"id": 7, "name": "square"})
    images = [{"id": 40 + j, "file_name": f.name} for j, f in enumerate(sorted(folder.iterdir()))]
    labels = tmp_path / "instances.json"
    labels.write_text(json.dumps({"images": images, "annotations": [], "categories": cats}))
    adapter = RGBAdapter(folder, {"format": "coco", "train_json": "none.json"})
    predictor = Predictor(rgb_model.model, score_threshold=0.01)
    options = DetectOptions(out_dir=tmp_path / "out", labels=labels, progress=False)
    options.out_dir.mkdir()
    (result,) = detect_inputs(adapter, folder, predictor, options)
    rows = json.loads((tmp_path / "out" / "images.json").read_text())
    assert result.detections == len(rows) > 0 and result.units == 2
    assert {r["category_id"] for r in rows} <= {3, 7, 9}
    assert {r["image_id"] for r in rows} <= {40, 41}
    index = json.loads((tmp_path / "out" / "images.images.json").read_text())
    assert index["categories"] == sorted(cats, key=lambda c: c["id"])


def test_rgb_voc_labels_single_image(rgb_model, tmp_path):
    image = rgb_model.root / "JPEGImages" / "000005.jpg"
    xml = rgb_model.root / "Annotations" / "000005.xml"
    assert run_cli(rgb_model.model, tmp_path, image, extra=("--labels", str(xml))) == 0
    check_results(json.loads((tmp_path / "000005.json").read_text()), {"000005"})
    ev = json.loads((tmp_path / "000005.eval.json").read_text())
    assert 0.0 <= ev["coco_ap"] <= 1.0
    assert ev["num_ground_truth"] == len(voc.parse_voc_xml(xml)["objects"])


def test_rgb_refuses_a_depth_png(rgb_model, depth_model, tmp_path, capsys):
    png = depth_model.root / "depth" / "scene_00000.png"
    assert run_cli(rgb_model.model, tmp_path, png) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scene_00000.png" in err and "depth" in err
    assert not list(tmp_path.glob("*.json"))


def test_depth_rgbd_needs_colour_and_channels_checked(depth_model, tmp_path, capsys):
    frame = tmp_path / "in" / "depth" / "scene_00000.png"
    frame.parent.mkdir(parents=True)
    shutil.copy(depth_model.root / "depth" / "scene_00000.png", frame)
    over = tmp_path / "rgbd.yaml"
    over.write_text("encoding: rgbd\n")
    extra = ("--adapter-params", str(over))
    assert run_cli(depth_model.model, tmp_path / "out", frame, extra=extra) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "colour image" in err, err
    # With the aligned colour image in <root>/rgb/ the frame reads, as 5 channels (r, g, b,
    # depth, valid) for a 4-channel model: refused by the channel check.
    (tmp_path / "in" / "rgb").mkdir()
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(tmp_path / "in" / "rgb" / frame.name)
    assert run_cli(depth_model.model, tmp_path / "out", frame, extra=extra) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gives 5 channel(s), the model takes 4" in err, err
    assert not list((tmp_path / "out").glob("*"))
