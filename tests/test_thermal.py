"""The thermal modality: every Pillow frame mode, colour refused, radiometric numbers, labels
through the shared layer (VOC, COCO, YOLO), background frames, claims, detect, params."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsod_core.detection import DetectRun
from dsod_core.errors import ConfigError, DataError
from modalities.base import PrepareLog
from modalities.registry import get_adapter
from modalities.thermal import formats
from modalities.thermal.adapter import ThermalAdapter
from modalities.thermal.demo import DEMO_GAIN

GREY = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5  # 0..235


def _read_one(root: Path, **params) -> np.ndarray:
    a = ThermalAdapter(root, {"labels": "none", "class_names": ["x"], **params})
    refs = a.discover()
    assert len(refs) == 1
    (sample,) = a.read(refs[0])
    return sample.image


def _frame_dir(tmp_path: Path, name: str, image: Image.Image, **save) -> Path:
    root = tmp_path / name
    (root / "images").mkdir(parents=True)
    image.save(root / "images" / name, **save)
    return root


def _grey_palette(values: np.ndarray) -> Image.Image:
    im = Image.fromarray(values, "P")
    im.putpalette([v for g in range(256) for v in (g, g, g)])
    return im


EIGHT_BIT = {
    "l.png": lambda: Image.fromarray(GREY, "L"),
    "la.png": lambda: Image.fromarray(GREY, "L").convert("LA"),
    "p.png": lambda: _grey_palette(GREY),
    "rgb.png": lambda: Image.fromarray(GREY, "L").convert("RGB"),
    "rgba.png": lambda: Image.fromarray(GREY, "L").convert("RGBA"),
    "l.tif": lambda: Image.fromarray(GREY, "L"),
}


@pytest.mark.parametrize("name", sorted(EIGHT_BIT))
def test_eight_bit_modes_read_as_one_grey_channel(tmp_path, name):
    image = EIGHT_BIT[name]()
    root = _frame_dir(tmp_path, name, image)
    with Image.open(root / "images" / name) as im:
        assert im.mode == image.mode  # the mode really written
    out = _read_one(root)
    assert out.shape == (1, 6, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], GREY / 255.0, atol=1e-6)


def test_one_bit_frame(tmp_path):
    root = _frame_dir(tmp_path, "b.png", Image.fromarray(GREY > 100))
    np.testing.assert_array_equal(_read_one(root)[0], (GREY > 100).astype(np.float32))


COUNTS = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 100 + 28000).astype(np.uint16)


def _sixteen(tmp_path: Path, name: str) -> Path:
    if name == "be.tif":  # big-endian 16-bit TIFF
        im = Image.frombytes("I;16B", (8, 6), COUNTS.astype(">u2").tobytes())
    elif name == "i32.tif":
        im = Image.fromarray(COUNTS.astype(np.int32))
    elif name == "f.tif":
        im = Image.fromarray(COUNTS.astype(np.float32))
    else:
        im = Image.fromarray(COUNTS)
    return _frame_dir(tmp_path, name, im)


@pytest.mark.parametrize("name", ["c.png", "c.tif", "be.tif", "i32.tif", "f.tif"])
def test_radiometric_counts_to_kelvin_and_celsius(tmp_path, name):
    root = _sixteen(tmp_path, name)
    kelvin = _read_one(root, intensity="temperature", radiometric_gain=0.01)
    np.testing.assert_allclose(kelvin[0], COUNTS * 0.01, rtol=1e-6)
    assert kelvin[0, 0, 0] == pytest.approx(280.0) and kelvin[0, 5, 7] == pytest.approx(327.0)
    celsius = _read_one(
        root, intensity="temperature", radiometric_gain=0.04, radiometric_offset=-100.0,
        temperature_unit="celsius",
    )  # fmt: skip
    assert celsius[0, 0, 0] == pytest.approx(28000 * 0.04 - 100.0 - 273.15, abs=1e-3)
    a = ThermalAdapter(root, {"labels": "none", "class_names": ["x"], "intensity": "temperature",
                              "temperature_unit": "celsius"})  # fmt: skip
    assert a.channel_names == ["temperature_c"]


def test_radiometric_scale_and_agc_window(tmp_path):
    root = _sixteen(tmp_path, "c.png")
    scaled = _read_one(root, intensity="scale", counts_max=32768)
    np.testing.assert_allclose(scaled[0], COUNTS / 32768.0, rtol=1e-6)
    agc = _read_one(root, intensity="agc", agc_percentiles=[0, 100])
    np.testing.assert_allclose(agc[0], (COUNTS - 28000) / 4700.0, atol=1e-6)
    assert ThermalAdapter(root, {"class_names": ["x"]}).channel_names == ["intensity"]


def test_colour_image_and_colour_palette_refused(tmp_path):
    import matplotlib

    # a false-colour (inferno) rendering of the grey frame: median channel spread >= 100
    cmap = matplotlib.colormaps["inferno"]
    rgb = (cmap(GREY / 255.0)[..., :3] * 255).astype(np.uint8)
    root = _frame_dir(tmp_path, "ironbow.png", Image.fromarray(rgb, "RGB"))
    expected = r"ironbow\.png.*colour image: thermal images must be grey; the median channel spread"
    with pytest.raises(DataError, match=expected + r" is \d+ levels \(grey_tolerance 48\)"):
        _read_one(root)
    pal = Image.fromarray(GREY, "P")
    pal.putpalette([v for g in range(256) for v in (g, 255 - g, 0)])
    root = _frame_dir(tmp_path, "pal.png", pal)
    with pytest.raises(DataError, match=r"pal\.png.*colour palette: thermal images must be grey"):
        _read_one(root)
    # channel noise as real AGC frames saved as RGB carry it: read as the channels' mean
    noisy = np.stack([GREY, GREY, GREY], axis=2).astype(np.int16)
    noisy[..., 0] = np.clip(noisy[..., 0] + 6, 0, 255)
    noisy[2, 3] = (200, 40, 40)  # one strongly coloured pixel does not make a colour frame
    root = _frame_dir(tmp_path, "noisy.png", Image.fromarray(noisy.astype(np.uint8), "RGB"))
    got = _read_one(root)
    expect = np.round(noisy.mean(axis=2)).astype(np.uint8) / 255.0
    np.testing.assert_array_equal(got[0], expect.astype(np.float32))
    with pytest.raises(DataError, match="median channel spread is 6 levels"):
        _read_one(root, grey_tolerance=5)


def test_eight_bit_frame_refused_for_temperature_and_size_limit(tmp_path):
    root = _frame_dir(tmp_path, "l.png", Image.fromarray(GREY, "L"))
    with pytest.raises(DataError, match="8-bit AGC frame holds no temperatures"):
        _read_one(root, intensity="temperature")
    with pytest.raises(DataError, match=r"l\.png.*over the limit max_pixels=40.*'max_pixels'"):
        _read_one(root, max_pixels=40)
    log = PrepareLog(on_error="skip")
    a = ThermalAdapter(root, {"labels": "none", "class_names": ["x"], "max_pixels": 40}, log=log)
    assert a.discover() == [] and len(log.skipped) == 1


# --- labels through the shared layer -------------------------------------------------------------
def _frames(root: Path, n: int = 3) -> None:
    (root / "images").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(COUNTS).save(root / "images" / f"f{i}.png")


def test_voc_coco_yolo_labels_give_the_same_boxes(tmp_path):
    from modalities.formats.voc import voc_xml

    box = [1.0, 2.0, 5.0, 6.0]
    voc = tmp_path / "voc"
    _frames(voc)
    (voc / "annotations").mkdir()
    (voc / "annotations" / "f0.xml").write_text(
        voc_xml("f0", 8, 6, [{"name": "person", "box": box}])
    )
    coco = tmp_path / "coco"
    _frames(coco)
    doc = {
        "images": [
            {"id": i + 1, "file_name": f"f{i}.png", "width": 8, "height": 6} for i in range(3)
        ],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 4, 4],
                         "area": 16, "iscrowd": 0}],
        "categories": [{"id": 7, "name": "person"}],
    }  # fmt: skip
    (coco / "instances.json").write_text(json.dumps(doc))
    yolo = tmp_path / "yolo"
    _frames(yolo)
    (yolo / "labels").mkdir()
    (yolo / "labels" / "f0.txt").write_text("0 0.375 0.666667 0.5 0.666667\n")
    (yolo / "classes.txt").write_text("person\n")
    for root, extra in ((voc, {"labels": "voc"}),
                        (coco, {"labels": "coco", "coco_json": {"all": "instances.json"}}),
                        (yolo, {"labels": "yolo"})):  # fmt: skip
        a = ThermalAdapter(root, extra)
        samples = [s for r in a.discover() for s in a.read(r)]
        assert a.class_names == ["person"], root
        by_id = {s.sample_id: s for s in samples}
        np.testing.assert_allclose(by_id["f0"].boxes, [box], atol=1e-4)
        assert [len(by_id[k].labels) for k in ("f1", "f2")] == [0, 0]  # negatives kept
        assert a.counts["background_kept"] == 2, root


def test_demo_mixes_frame_kinds_and_counts_background_frames(tmp_path):
    params = ThermalAdapter.write_demo(tmp_path, num_images=14, image_size=48)
    modes = set()
    for f in sorted((tmp_path / "images").iterdir()):
        with Image.open(f) as im:
            modes.add((im.mode, f.suffix))
    assert {("L", ".png"), ("RGB", ".png"), ("P", ".png"), ("I;16", ".png")} <= modes
    assert any(m.startswith("I;16") and s == ".tif" for m, s in modes)
    a = ThermalAdapter(tmp_path, params)
    refs = a.discover()
    samples = [s for r in refs for s in a.read(r)]
    assert len(samples) == 14 and {s.meta["bits"] for s in samples} == {8, 16}
    # frames 3 and 10 have no target (a point annotation each), frame 13 has no XML
    assert a.counts["no_box_objects"] == 2 and a.counts["no_annotation_file"] == 1
    assert a.counts["background_kept"] == sum(len(s.labels) == 0 for s in samples) == 3
    assert all(np.isfinite(s.image).all() and s.image.shape == (1, 48, 48) for s in samples)
    # the 16-bit demo frames hold kelvin / DEMO_GAIN counts: a person reads near 306 K
    kelvin = ThermalAdapter(tmp_path, {**params, "intensity": "temperature"})
    tif = next(r for r in kelvin.discover() if r.paths["image"].suffix == ".tif")
    (s,) = kelvin.read(tif)
    assert 280.0 < float(np.median(s.image)) < 300.0 and DEMO_GAIN == 0.01


def test_claims_single_channel_frames_only(tmp_path):
    paths = {}
    for name, make in (("grey.png", lambda: Image.fromarray(GREY, "L")),
                       ("grey.jpg", lambda: Image.fromarray(GREY, "L")),
                       ("pal.png", lambda: _grey_palette(GREY)),
                       ("photo.png", lambda: Image.fromarray(GREY, "L").convert("RGB")),
                       ("photo.jpg", lambda: Image.new("RGB", (8, 6), (1, 2, 3))),
                       ("c16.png", lambda: Image.fromarray(COUNTS)),
                       ("c16.tif", lambda: Image.fromarray(COUNTS))):  # fmt: skip
        paths[name] = tmp_path / name
        make().save(paths[name])
    cpal = Image.fromarray(GREY, "P")
    cpal.putpalette([v for g in range(256) for v in (g, 0, 255 - g)])
    paths["cpal.png"] = tmp_path / "cpal.png"
    cpal.save(paths["cpal.png"])
    claimed = {n for n, p in paths.items() if formats.claims(p)}
    assert claimed == {"grey.png", "grey.jpg", "pal.png", "c16.png", "c16.tif"}
    assert not formats.claims(tmp_path / "missing.png")
    (tmp_path / "fake.png").write_text("not a png")
    assert not formats.claims(tmp_path / "fake.png")
    # an RGB photograph stays the rgb modality's alone (dsod detect names rgb for it)
    rgb = get_adapter("rgb")
    assert rgb.claims(paths["photo.jpg"]) and not ThermalAdapter.claims(paths["photo.jpg"])


# --- detect --------------------------------------------------------------------------------------
class _Predictor:
    class_names = ["person", "vehicle"]
    path = Path("model.pt")

    def __init__(self):
        self.channels = []

    def check_channels(self, c, where):
        self.channels.append(c)

    def __call__(self, images):
        return [{"boxes": np.array([[1.0, 2.0, 9.0, 12.0]]), "scores": np.array([0.9]),
                 "labels": np.array([1])} for _ in images]  # fmt: skip


def test_detect_on_a_folder_writes_coco_results_and_scores_labels(tmp_path):
    ThermalAdapter.write_demo(tmp_path / "demo", num_images=6, image_size=40)
    a = ThermalAdapter(tmp_path / "demo", {"class_names": ["person", "vehicle"]})
    pred = _Predictor()
    run = DetectRun(out_dir=tmp_path / "out", progress=False, labels=tmp_path / "demo/annotations")
    (result,) = a.detect(tmp_path / "demo/images", pred, run)
    rows = json.loads((tmp_path / "out/images.json").read_text())
    index = json.loads((tmp_path / "out/images.images.json").read_text())
    assert result.units == 6 and len(rows) == 6 and pred.channels == [1] * 6
    assert rows[0] == {"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 8.0, 10.0],
                       "score": 0.9}  # fmt: skip
    assert [im["file_name"] for im in index["images"]][:2] == ["f0000.png", "f0001.png"]
    assert result.evaluation["num_ground_truth"] > 0
    assert (tmp_path / "out/images.eval.json").is_file()
    with pytest.raises(DataError, match="not a thermal input"):
        a.detect(tmp_path / "demo/annotations/f0000.xml", pred, DetectRun(out_dir=tmp_path))


# --- params ---------------------------------------------------------------------------------------
def test_params_validation():
    with pytest.raises(ConfigError, match="agc_percentiles.*low must be below high"):
        ThermalAdapter(".", {"agc_percentiles": [99, 1]})
    with pytest.raises(ConfigError, match="grey_tolerance"):
        ThermalAdapter(".", {"grey_tolerance": 300})
    with pytest.raises(ConfigError, match="intensity"):
        ThermalAdapter(".", {"intensity": "ironbow"})
    with pytest.raises(ConfigError, match="unknown thermal adapter param 'gain'"):
        ThermalAdapter(".", {"gain": 0.01})
    names = {row["name"] for row in ThermalAdapter.Params.describe()}
    assert {"labels", "image_dir", "intensity", "radiometric_gain", "max_pixels"} <= names


def test_detect_accepts_a_grey_frame_saved_as_rgb_but_not_a_colour_photo(tmp_path):
    """`dsod detect` refuses an input another modality claims unless the model's modality
    accepts it: a thermal model takes a grey frame the rgb modality claims from its header."""
    import matplotlib

    from pipelines.detect import check_input, input_kind

    grey = tmp_path / "grey.png"
    Image.fromarray(np.stack([GREY] * 3, axis=2), "RGB").save(grey)
    colour = tmp_path / "colour.png"
    rgb = (matplotlib.colormaps["jet"](GREY / 255.0)[..., :3] * 255).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(colour)
    assert input_kind(grey) == input_kind(colour) == "rgb"  # header only: RGB mode
    check_input(grey, "thermal", tmp_path / "model.pt")  # accepted: grey pixels
    with pytest.raises(DataError, match="looks like a rgb input.*thermal detector"):
        check_input(colour, "thermal", tmp_path / "model.pt")
    with pytest.raises(DataError, match="looks like a rgb input.*depth detector"):
        check_input(grey, "depth", tmp_path / "model.pt")  # depth does not widen accepts
