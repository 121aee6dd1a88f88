"""Formats: one VOC and one COCO parser for every modality, one split hash, and the format
table of each modality (``modalities/<name>/formats.py``: ``FORMATS``, ``discover``, ``claims``).

Every file here is written by the format's own tool (Pillow, nibabel, SimpleITK, pydicom,
rasterio, h5py, NumPy) or by hand where the format is text, then read back.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import typing
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import rasterio
import SimpleITK as sitk
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import from_origin

from dsod_core.errors import DataError
from modalities.base import PrepareLog, assign_split, split_hash
from modalities.depth import DepthAdapter
from modalities.depth import formats as depth_formats
from modalities.depth.params import DepthParams
from modalities.formats import voc as shared_voc
from modalities.medical import formats as medical_formats
from modalities.multispectral import formats as multispectral_formats
from modalities.multispectral.params import MultispectralParams
from modalities.rgb import RGBAdapter
from modalities.rgb import formats as rgb_formats
from modalities.rgb.params import RGBParams
from tests.test_medical_formats import write_slice

TABLES = {
    "rgb": rgb_formats,
    "depth": depth_formats,
    "medical": medical_formats,
    "multispectral": multispectral_formats,
}


# --- writers -----------------------------------------------------------------------------------
def voc_text(filename: str, objects: list[tuple[str, list[str], int]], size=(32, 24)) -> str:
    """A VOC annotation; coordinates are strings so that ``nan``/``inf`` can be written."""
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return (
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>"
    )


def rgb_voc_tree(root: Path, xml: str, stem: str = "im1") -> None:
    """``root`` as one VOC year folder (``years: ['.']``): one JPEG, its XML, a train list."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    Image.new("RGB", (32, 24), (90, 120, 40)).save(root / "JPEGImages" / f"{stem}.jpg")
    (root / "Annotations" / f"{stem}.xml").write_text(xml)
    (root / "ImageSets" / "Main" / "train.txt").write_text(f"{stem}\n")


RGB_VOC = {"years": ["."], "train_sets": ["train"], "test_sets": [], "class_names": ["chair"]}


def depth_voc_tree(root: Path, xml: str, stem: str = "im1") -> None:
    """A depth VOC layout: ``Annotations/<stem>.xml`` and a 16-bit mm PNG ``depth/<stem>.png``."""
    (root / "Annotations").mkdir(parents=True)
    (root / "depth").mkdir()
    Image.fromarray(np.full((24, 32), 1500, np.uint16)).save(root / "depth" / f"{stem}.png")
    (root / "Annotations" / f"{stem}.xml").write_text(xml)


def coco_doc(bbox: list) -> dict:
    return {
        "images": [{"id": 1, "file_name": "im1.png", "width": 32, "height": 24}],
        "categories": [{"id": 1, "name": "chair"}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": bbox}],
    }


# --- one VOC parser: nan / inf refused the same way by every adapter ------------------------
@pytest.mark.parametrize(
    "coords, tag, value",
    [
        (["nan", "4", "3", "inf"], "xmin", "nan"),
        (["2", "4", "inf", "9"], "xmax", "inf"),
        (["2", "-inf", "8", "9"], "ymin", "-inf"),
    ],
)
def test_nan_or_inf_voc_box_refused_identically_by_depth_and_rgb(tmp_path, coords, tag, value):
    xml = voc_text("im1.png", [("chair", coords, 0)])
    depth_root, rgb_root = tmp_path / "depth_set", tmp_path / "rgb_set"
    depth_voc_tree(depth_root, xml)
    rgb_voc_tree(rgb_root, xml)

    with pytest.raises(DataError) as depth_err:
        DepthAdapter(depth_root, {}).discover()
    with pytest.raises(DataError) as rgb_err:
        RGBAdapter(rgb_root, RGB_VOC).discover()

    expected = f"<bndbox><{tag}> is {value!r}, not a number"
    assert depth_err.value.reason == rgb_err.value.reason == expected
    assert Path(depth_err.value.path) == depth_root / "Annotations" / "im1.xml"
    assert Path(rgb_err.value.path) == rgb_root / "Annotations" / "im1.xml"
    assert str(depth_err.value).startswith(f"{depth_root / 'Annotations' / 'im1.xml'}: ")

    # In skip mode the frame is left out, recorded with the same reason.
    log = PrepareLog(on_error="skip")
    assert DepthAdapter(depth_root, {}, log=log).discover() == []
    (skip,) = log.skipped
    assert skip["reason"].endswith(expected) and skip["file"].endswith("im1.xml")


def test_malformed_voc_and_coco_messages_are_shared(tmp_path):
    """A truncated XML and a COCO bbox that is not four numbers: the depth adapter names the
    file with the reason the rgb adapter gives."""
    depth_root, rgb_root = tmp_path / "d", tmp_path / "r"
    depth_voc_tree(depth_root, "<annotation><object><name>chair")
    rgb_voc_tree(rgb_root, "<annotation><object><name>chair")
    with pytest.raises(DataError) as d:
        DepthAdapter(depth_root, {}).discover()
    with pytest.raises(DataError) as r:
        RGBAdapter(rgb_root, RGB_VOC).discover()
    assert d.value.reason == r.value.reason and d.value.reason.startswith("malformed VOC XML")

    doc = coco_doc([1, 2, "wide", 5])
    (depth_root / "c.json").write_text(json.dumps(doc))
    (rgb_root / "ann").mkdir()
    (rgb_root / "ann" / "c.json").write_text(json.dumps(doc))
    (rgb_root / "img").mkdir()
    Image.new("RGB", (32, 24)).save(rgb_root / "img" / "im1.png")
    with pytest.raises(DataError) as d:
        DepthAdapter(depth_root, {"layout": "coco", "coco_file": "c.json"}).discover()
    rgb_params = {
        "format": "coco",
        "train_json": "ann/c.json",
        "test_json": None,
        "image_dirs": {"train": "img"},
    }
    with pytest.raises(DataError) as r:
        RGBAdapter(rgb_root, rgb_params).discover()
    assert d.value.reason == r.value.reason == "annotation 7: bbox must be [x, y, w, h]"
    assert d.value.path.endswith("c.json") and r.value.path.endswith("c.json")
    assert d.value.sample == "im1"  # the depth frame's id


def test_valid_voc_and_coco_read_as_before(tmp_path):
    """Boxes of valid files: VOC 1-based inclusive -> continuous, COCO xywh -> xyxy; a
    difficult object kept and flagged, a COCO crowd region flagged crowd."""
    root = tmp_path / "d"
    xml = voc_text(
        "im1.png", [("chair", ["3", "4", "10", "12"], 0), ("chair", ["1", "1", "5", "5"], 1)]
    )
    depth_voc_tree(root, xml)
    a = DepthAdapter(root, {})
    (s,) = a.read(a.discover()[0])
    np.testing.assert_array_equal(s.boxes, [[2, 3, 10, 12], [0, 0, 5, 5]])
    assert s.difficult.tolist() == [False, True]

    doc = coco_doc([2.5, 3, 7, 8.5])
    doc["annotations"].append(
        {"id": 8, "image_id": 1, "category_id": 1, "bbox": [10, 10, 8, 8], "iscrowd": 1}
    )
    doc["annotations"].append({"id": 9, "image_id": 1, "category_id": 1, "bbox": [4, 4, 0, 3]})
    (root / "c.json").write_text(json.dumps(doc))
    a = DepthAdapter(root, {"layout": "coco", "coco_file": "c.json"})
    (s,) = a.read(a.discover()[0])
    np.testing.assert_array_equal(s.boxes, [[2.5, 3, 9.5, 11.5], [10, 10, 18, 18]])
    assert s.crowd.tolist() == [False, True]
    # the zero-width box is dropped, with a warning naming the frame
    (w,) = a.warnings
    assert w["sample"] == "im1" and "1 zero-width or zero-height box" in w["reason"]


def test_select_objects_honours_keep_difficult_and_counts_unknown_names():
    objs = [
        {"name": "chair", "box": [0, 0, 1, 1], "difficult": True},
        {"name": "lamp", "box": [0, 0, 1, 1], "difficult": True},
        {"name": "chair", "box": [0, 0, 2, 2], "difficult": False},
        {"name": "lamp", "box": [0, 0, 2, 2], "difficult": False},
        {"name": "bed", "box": [0, 0, 2, 2], "difficult": False},
    ]
    kept, unknown = shared_voc.select_objects(objs, ["chair"], keep_difficult=False)
    assert kept == [objs[2]]
    assert list(unknown.items()) == [("lamp", 2), ("bed", 1)]  # file order, difficult counted
    kept, unknown = shared_voc.select_objects(objs, None)
    assert kept == objs and not unknown


def test_keep_difficult_false_drops_difficult_voc_objects_in_rgb(tmp_path):
    xml = voc_text(
        "im1.jpg", [("chair", ["3", "4", "10", "12"], 0), ("chair", ["1", "1", "5", "5"], 1)]
    )
    rgb_voc_tree(tmp_path, xml)
    (ref,) = RGBAdapter(tmp_path, {**RGB_VOC, "keep_difficult": False}).discover()
    assert ref.meta["boxes"] == [[2.0, 3.0, 10.0, 12.0]] and ref.meta["difficult"] == [False]
    (ref,) = RGBAdapter(tmp_path, RGB_VOC).discover()
    assert ref.meta["difficult"] == [False, True]


# --- one split hash ----------------------------------------------------------------------------
def _sha_unit(text: str) -> float:
    """The first 8 bytes of sha256(text), big-endian, / 2**64: the formula each modality
    wrote for itself before ``split_hash``."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


KEYS = ["2007_000027", "coco/391895", "scene_07.tif@256,0", "lung_03", "nyu_0001", "ü/ß"]


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_split_hash_keeps_every_former_formula(seed):
    for key in KEYS:
        u = split_hash(key, seed)
        assert 0.0 <= u < 1.0
        # modalities.base.assign_split: sha256(f"{seed}:{key}")
        assert u == _sha_unit(f"{seed}:{key}")
        # medical negative slices: _unit_hash(f"{seed}:{ref_id}:{k}")
        assert split_hash(f"{key}:{3}", seed) == _sha_unit(f"{seed}:{key}:3")
        # multispectral empty chips: _unit_hash(f"empty:{key}", seed)
        assert split_hash(f"empty:{key}", seed) == _sha_unit(f"{seed}:empty:{key}")


def test_assign_split_thresholds_of_split_hash():
    for key in KEYS:
        u = split_hash(key, 7)
        expected = "test" if u < 0.2 else "val" if u < 0.5 else "train"
        assert assign_split(key, 0.3, 0.2, seed=7) == expected
    # known values, fixed forever (splits of existing data must not move)
    assert round(split_hash("2007_000027", 0), 12) == round(_sha_unit("0:2007_000027"), 12)
    assert [assign_split(f"f{i}", 0.15, 0.15) for i in range(6)] == [
        "test" if _sha_unit(f"0:f{i}") < 0.15 else "val" if _sha_unit(f"0:f{i}") < 0.3 else "train"
        for i in range(6)
    ]


# --- the format tables --------------------------------------------------------------------------
def _choices(params_cls, name: str) -> set[str]:
    return set(typing.get_args(typing.get_type_hints(params_cls)[name]))


def test_every_format_module_has_claims_and_layouts_have_discover():
    for name, table in TABLES.items():
        assert table.FORMATS, name
        for fmt, module in table.FORMATS.items():
            assert callable(module.claims), (name, fmt)
        layouts = getattr(table, "LAYOUTS", None) or table.RASTER_FORMATS
        for fmt in layouts:
            assert callable(table.FORMATS[fmt].discover), (name, fmt)
    assert _choices(RGBParams, "format") == set(rgb_formats.LAYOUTS)
    assert _choices(DepthParams, "layout") - {"auto"} == set(depth_formats.LAYOUTS)
    assert _choices(MultispectralParams, "label_format") == set(multispectral_formats.LABEL_FORMATS)
    for fmt in multispectral_formats.PER_FILE_LABEL_FORMATS:
        assert callable(multispectral_formats.FORMATS[fmt].read_labels)
    from modalities.multispectral import coco as ms_coco
    from modalities.multispectral import yolo as ms_yolo

    assert set(multispectral_formats.LABEL_FORMATS) == {
        *multispectral_formats.PER_FILE_LABEL_FORMATS, "coco", "yolo"
    }  # fmt: skip
    assert callable(ms_coco.read_coco) and callable(ms_yolo.read_yolo)


def test_adapters_discover_through_their_table(tmp_path):
    """``discover`` of the table's module gives what the adapter's ``discover`` gives."""
    for name, cls, table_key in (
        ("rgb", RGBAdapter, "voc"),
        ("depth", DepthAdapter, "voc"),
    ):
        root = tmp_path / name
        params = cls.write_demo(root, num_images=6, image_size=32, seed=0)
        a, b = cls(root, params), cls(root, params)
        if name == "depth":
            b._layout = b._resolve_layout()
        refs = a.discover()
        direct = TABLES[name].FORMATS[table_key].discover(b)
        if name == "rgb":  # the adapter adds the val_fraction split on top
            assert [r.ref_id for r in refs] == [r.ref_id for r in direct]
        else:
            assert [(r.ref_id, r.split) for r in refs] == [(r.ref_id, r.split) for r in direct]
        assert a.class_names == b.class_names


# --- claims on real files -----------------------------------------------------------------------
def _claimed_by(path: Path) -> set[str]:
    return {name for name, table in TABLES.items() if table.claims(path)}


def _formats_claiming(path: Path) -> set[str]:
    return {
        f"{name}.{fmt}"
        for name, table in TABLES.items()
        for fmt, module in table.FORMATS.items()
        if module.claims(path)
    }


UTM = CRS.from_epsg(32633)


def _geotiff(path: Path, count: int = 3, dtype="uint16") -> Path:
    with rasterio.open(
        path, "w", driver="GTiff", width=16, height=12, count=count, dtype=dtype, crs=UTM,
        transform=from_origin(500000, 4000000, 10, 10),
    ) as dst:  # fmt: skip
        dst.write(np.ones((count, 12, 16), dtype=dtype))
    return path


def test_claims_of_image_and_raster_files(tmp_path):
    jpg = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 6), (1, 2, 3)).save(jpg)
    png8 = tmp_path / "photo.png"
    Image.new("RGB", (8, 6), (1, 2, 3)).save(png8)
    grey8 = tmp_path / "grey.png"
    Image.new("L", (8, 6), 7).save(grey8)
    png16 = tmp_path / "depth.png"
    Image.fromarray(np.full((6, 8), 1234, np.uint16)).save(png16)
    tif16 = tmp_path / "depth16.tif"
    Image.fromarray(np.full((6, 8), 1234, np.uint16)).save(tif16)
    tiff_f = tmp_path / "depth_m.tiff"
    Image.fromarray(np.full((6, 8), 1.5, np.float32)).save(tiff_f)
    npy = tmp_path / "depth.npy"
    np.save(npy, np.ones((6, 8), np.float32))
    geo = _geotiff(tmp_path / "scene.tif")
    geo1 = _geotiff(tmp_path / "band.tif", count=1)

    assert _formats_claiming(jpg) == {"rgb.image"}
    assert _formats_claiming(png8) == {"rgb.image"}
    assert _formats_claiming(grey8) == {"rgb.image"}
    assert _formats_claiming(png16) == {"depth.png"}
    assert _formats_claiming(npy) == {"depth.npy"}
    assert _formats_claiming(geo) == {"multispectral.geotiff"}
    # a single-band 16-bit GeoTIFF carries georeferencing tags: a map raster, not a depth map
    assert _formats_claiming(geo1) == {"multispectral.geotiff"}
    # a plain 16-bit / float TIFF is a depth map the depth adapter reads; GDAL opens it too
    assert "depth.png" in _formats_claiming(tif16)
    assert "depth.png" in _formats_claiming(tiff_f)

    # the suffix alone does not claim: the header must agree
    fake_jpg = tmp_path / "fake.jpg"
    fake_jpg.write_bytes(b"not a jpeg at all")
    fake_npy = tmp_path / "fake.npy"
    fake_npy.write_text("1 2 3")
    fake_tif = tmp_path / "fake.tif"
    fake_tif.write_text("text")
    for path in (fake_jpg, fake_npy, fake_tif, tmp_path / "missing.png", tmp_path / "x.bmp"):
        assert _claimed_by(path) == set(), path


def test_claims_of_medical_volumes(tmp_path):
    data = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    nii = tmp_path / "ct.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), nii)
    niigz = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), niigz)
    nii2 = tmp_path / "ct2.nii"
    nib.save(nib.Nifti2Image(data, np.eye(4)), nii2)
    mha = tmp_path / "ct.mha"
    sitk.WriteImage(sitk.GetImageFromArray(data), str(mha))
    mhd = tmp_path / "ct.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(data), str(mhd))
    series = tmp_path / "series"
    (series / "sub").mkdir(parents=True)
    uid = "1.2.826.0.1.3680043.8.498.10"
    write_slice(
        series / "sub" / "IM0001", np.zeros((4, 5), np.uint16), series=uid, position=(0, 0, 0)
    )
    dcm = series / "sub" / "IM0001"

    for path in (nii, niigz, nii2):
        assert _formats_claiming(path) == {"medical.nifti"}, path
    for path in (mha, mhd):
        assert _formats_claiming(path) == {"medical.metaimage"}, path
    assert _formats_claiming(dcm) == {"medical.dicom"}  # no suffix: the DICM preamble
    assert _formats_claiming(series) == {"medical.dicom"}  # a folder holding a DICOM file
    assert _claimed_by(Path(f"{series}#{uid}")) == {"medical"}  # folder#<SeriesInstanceUID>

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here\n")
    bad_nii = tmp_path / "bad.nii"
    bad_nii.write_bytes(b"\0" * 400)
    bad_gz = tmp_path / "bad.nii.gz"
    bad_gz.write_bytes(gzip.compress(b"\1\2\3\4" * 100))
    bad_mhd = tmp_path / "bad.mhd"
    bad_mhd.write_text("just some text\n")
    not_dicom = tmp_path / "x.dcm"
    not_dicom.write_bytes(b"\0" * 200)
    for path in (empty, bad_nii, bad_gz, bad_mhd, not_dicom):
        assert _claimed_by(path) == set(), path


def test_claims_of_annotation_and_label_files(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text(voc_text("a.jpg", [("chair", ["1", "2", "3", "4"], 0)]))
    other_xml = tmp_path / "b.xml"
    other_xml.write_text("<config><item/></config>")
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps(coco_doc([1, 1, 2, 2])))
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": "a.nii.gz", "box": [], "label": []}]}))
    csv_file = tmp_path / "annotations.csv"
    csv_file.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,1,2,3,4\n")
    other_csv = tmp_path / "table.csv"
    other_csv.write_text("a,b,c\n1,2,3\n")
    geo = tmp_path / "labels.geojson"
    geo.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    xview = tmp_path / "xview.geojson"
    feature = {
        "type": "Feature",
        "geometry": None,
        "properties": {"bounds_imcoords": "1,2,3,4", "type_id": 73, "image_id": "1.tif"},
    }
    xview.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    dota = tmp_path / "P0001.txt"
    dota.write_text("imagesource:GoogleEarth\ngsd:0.15\n1 1 9 1 9 5 1 5 plane 0\n")
    dota_empty = tmp_path / "P0002.txt"
    dota_empty.write_text("imagesource:GoogleEarth\ngsd:null\n")
    prose = tmp_path / "readme.txt"
    prose.write_text("a text file\nwith words\n")
    big_coco = tmp_path / "big.json"  # larger than what claims parses whole
    doc = coco_doc([1, 1, 2, 2])
    doc["images"] = [{"id": i, "file_name": f"{i:08d}.jpg"} for i in range(60000)]
    big_coco.write_text(json.dumps(doc))

    assert _formats_claiming(xml) == {"rgb.voc", "depth.voc"}
    assert _formats_claiming(coco) == {"rgb.coco", "depth.coco"}
    assert _formats_claiming(big_coco) == {"rgb.coco", "depth.coco"}
    assert _formats_claiming(datalist) == {"medical.datalist"}
    assert _formats_claiming(csv_file) == {"medical.csv"}
    assert _formats_claiming(geo) == {"multispectral.geojson"}
    assert _formats_claiming(xview) == {"multispectral.geojson", "multispectral.xview"}
    assert _formats_claiming(dota) == {"multispectral.dota"}
    assert _formats_claiming(dota_empty) == {"multispectral.dota"}
    for path in (other_xml, other_csv, prose):
        assert _claimed_by(path) == set(), path


def test_claims_of_dataset_folders(tmp_path):
    # NYU Depth v2 labelled file, as h5py writes MATLAB v7.3's HDF5
    mat = tmp_path / "nyu_depth_v2_labeled.mat"
    with h5py.File(mat, "w") as f:
        f["depths"] = np.ones((1, 4, 3), np.float32)
    assert _formats_claiming(mat) == {"depth.nyu"}
    # a SUN RGB-D scene folder and its annotation
    scene = tmp_path / "NYU0001"
    (scene / "depth").mkdir(parents=True)
    (scene / "annotation2Dfinal").mkdir()
    (scene / "intrinsics.txt").write_text("1 0 0\n0 1 0\n0 0 1\n")
    (scene / "annotation2Dfinal" / "index.json").write_text(json.dumps({"frames": []}))
    assert _formats_claiming(scene) == {"depth.sunrgbd"}
    assert _formats_claiming(scene / "annotation2Dfinal" / "index.json") == {"depth.sunrgbd"}
    # VOC trees: the rgb one holds JPEGImages/, the depth one depth/
    rgb_tree, depth_tree = tmp_path / "VOC2007", tmp_path / "depth_voc"
    rgb_voc_tree(rgb_tree, voc_text("im1.jpg", []))
    depth_voc_tree(depth_tree, voc_text("im1.png", []))
    assert _formats_claiming(rgb_tree) == {"rgb.voc"}
    assert _formats_claiming(depth_tree) == {"depth.voc"}
    # a Sentinel-2 band file (by its name) and the folder holding it
    granule = tmp_path / "S2" / "IMG_DATA" / "R10m"
    granule.mkdir(parents=True)
    band = _geotiff(granule / "T33TWM_20230101T100021_B02_10m.tif", count=1)
    assert _formats_claiming(band) == {"multispectral.geotiff", "multispectral.bandstack"}
    assert _formats_claiming(tmp_path / "S2") == {"multispectral.bandstack"}
    assert multispectral_formats.claims_raster(band)
    assert not multispectral_formats.claims_raster(tmp_path / "NYU0001")
