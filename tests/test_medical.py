"""Tests of the medical adapter, its 3D linking and FROC. NIfTI files are built by hand here
(nibabel + explicit affines), independent of the demo writer."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dsod_core.data.sample import pixel_to_world, world_to_pixel
from dsod_core.errors import ConfigError, DataError
from dsod_core.metrics.froc import ScanLesions, froc, froc_from_datalists
from modalities.base import PrepareLog
from modalities.medical import (
    MedicalAdapter,
    MedicalParams,
    cuts_to_detections,
    ellipsoid_slice_cuts,
    link_volume,
    lps_ras_flip,
    slice_to_volume_affine,
)
from modalities.medical.demo import DEPTH
from modalities.registry import get_adapter


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))


def _datalist(root: Path, entries: dict[str, list[dict]]) -> None:
    (root / "datalist.json").write_text(json.dumps(entries))


def _all_samples(adapter: MedicalAdapter):
    """Discover and read every volume as the prepare stage does: in the log's skip mode a
    volume whose ``read`` raises is recorded in ``adapter.log.skipped`` and adds nothing."""
    out = []
    for ref in adapter.discover():
        try:
            out.extend(list(adapter.read(ref)))
        except DataError as exc:
            if adapter.log.on_error != "skip":
                raise
            adapter.log.record_skip(exc, ref.paths["image"], unit="volume")
    return out


# --- world <-> voxel ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "linear,perm",
    [
        (np.diag([-0.7, -0.9, 2.0]), (0, 1, 2)),  # LPS-like flips, axial storage
        (np.diag([1.1, -0.8, -1.6]), (2, 0, 1)),  # S axis first in the file, flipped
        (_rotation(0.3, -0.2, 0.25) @ np.diag([0.9, -1.2, 1.7]), (1, 2, 0)),  # oblique
    ],
)
def test_world_voxel_round_trip(tmp_path: Path, linear: np.ndarray, perm: tuple) -> None:
    rng = np.random.default_rng(1)
    shape = (7, 9, 5)
    lin = linear[:, list(perm)]  # file axis a -> column perm[a]
    affine = np.eye(4)
    affine[:3, :3] = lin
    affine[:3, 3] = rng.uniform(-50, 50, 3)
    data = rng.integers(0, 1000, size=shape).astype(np.float32)
    _save(tmp_path / "v.nii.gz", data, affine)
    affine = nib.load(str(tmp_path / "v.nii.gz")).affine  # as stored (float32 in the header)
    _datalist(tmp_path, {"training": [{"image": "v.nii.gz", "box": [], "label": []}]})
    ad = MedicalAdapter(
        tmp_path,
        {
            "datalist": "datalist.json",
            "world_frame": "RAS",
            "windows": [[0, 1000]],
            "slice_context": 0,
            "negative_slice_rate": 1.0,
            "class_names": ["x"],
        },
    )
    samples = _all_samples(ad)
    assert (
        sum(s.image.shape[1] * s.image.shape[2] for s in samples) * len(samples[0].image)
        == data.size
    )
    # Every file voxel: its world position (file affine) maps to a pixel of one stored slice
    # whose value is that voxel's value.
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    found = np.zeros(len(idx), dtype=bool)
    for s in samples:
        s.validate(num_channels=1, num_classes=1)
        pix = world_to_pixel(s.affine, world)
        on = np.abs(pix[:, 2]) < 1e-6
        assert on.sum() == s.image.shape[1] * s.image.shape[2]
        x, y = pix[on, 0], pix[on, 1]
        # voxel centres sit at pixel centres (+0.5)
        np.testing.assert_allclose(x - np.floor(x), 0.5, atol=1e-6)
        np.testing.assert_allclose(y - np.floor(y), 0.5, atol=1e-6)
        vals = s.image[0, np.floor(y).astype(int), np.floor(x).astype(int)] * 1000.0
        np.testing.assert_allclose(vals, data[tuple(idx[on].T)], atol=1e-3)
        np.testing.assert_allclose(pixel_to_world(s.affine, pix[on, :2]), world[on], atol=1e-6)
        found |= on
    assert found.all()
    # The canonical slice axis points to Superior: world z grows with the slice index.
    zs = [pixel_to_world(s.affine, [[0.5, 0.5]])[0] for s in samples]
    order = np.argsort([s.meta["slice_index"] for s in samples])
    dz = np.diff(np.array(zs)[order], axis=0)
    step = samples[0].affine[:3, 2]
    assert np.argmax(np.abs(step)) == 2 and step[2] > 0
    np.testing.assert_allclose(dz, np.tile(step, (len(dz), 1)), atol=1e-9)


# --- a lesion at known world coordinates ---------------------------------------------------------


def _sphere_volume(tmp_path: Path, centre_lps: np.ndarray, radius: float):
    # File axes: i -> -x (L->R flipped), j -> -y, k -> +z; 0.75 x 0.75 x 2 mm, as scanners
    # write LPS data to NIfTI.
    affine = np.array([[-0.75, 0, 0, 20.0], [0, -0.75, 0, 15.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])
    shape = (48, 40, 20)
    data = np.full(shape, -850.0, dtype=np.float32)
    centre_ras = centre_lps * np.array([-1, -1, 1])
    for i in range(shape[0]):
        for j in range(shape[1]):
            for k in range(shape[2]):
                w = affine[:3, :3] @ [i, j, k] + affine[:3, 3]
                if np.linalg.norm(w - centre_ras) < radius:
                    data[i, j, k] = 40.0
    _save(tmp_path / "ct.nii.gz", data.astype(np.int16), affine)
    return affine, data, centre_ras


def test_lesion_lands_in_expected_slices_and_pixels(tmp_path: Path) -> None:
    centre_lps = np.array([-3.0, -1.5, -12.0])  # LPS world mm
    radius = 6.0
    affine, data, centre_ras = _sphere_volume(tmp_path, centre_lps, radius)
    _datalist(
        tmp_path,
        {
            "training": [
                {
                    "image": "ct.nii.gz",
                    "box": [[*centre_lps, 2 * radius, 2 * radius, 2 * radius]],
                    "label": [0],
                }
            ],
            "test": [],
        },
    )
    ad = MedicalAdapter(
        tmp_path,
        {
            "datalist": "datalist.json",
            "world_frame": "LPS",
            "windows": ["lung"],
            "slice_context": 0,
            "min_cross_section": 0.0,
            "negative_slice_rate": 1.0,
        },
    )
    samples = _all_samples(ad)
    assert ad.class_names == ["lesion_0"]
    assert len(samples) == 20
    with_box = set()
    for s in samples:
        plane_z = pixel_to_world(s.affine, [[0.0, 0.0]])[0, 2]
        dz = plane_z - centre_ras[2]
        crosses = abs(dz) < radius
        assert len(s.boxes) == int(crosses), (s.sample_id, dz)
        if not crosses:
            continue
        with_box.add(s.meta["slice_index"])
        # expected box: the circle of radius sqrt(r^2 - dz^2) around the centre, in pixels
        c = world_to_pixel(s.affine, (centre_ras * [1, 1, 0] + [0, 0, plane_z])[None])[0]
        half = np.sqrt(radius**2 - dz**2) / 0.75
        np.testing.assert_allclose(
            s.boxes[0], [c[0] - half, c[1] - half, c[0] + half, c[1] + half], atol=1e-3
        )
        # painted voxels of this plane lie inside the box, and the box centre is bright
        lung = s.image[0]
        ys, xs = np.nonzero(lung > 0.8)
        if len(xs):
            assert xs.min() + 0.5 >= s.boxes[0, 0] and xs.max() + 0.5 <= s.boxes[0, 2]
            assert ys.min() + 0.5 >= s.boxes[0, 1] and ys.max() + 0.5 <= s.boxes[0, 3]
        assert s.labels.tolist() == [1]
    # independent count: file slices k whose world z is within the radius
    file_z = affine[2, 3] + 2.0 * np.arange(20)
    assert len(with_box) == int((np.abs(file_z - centre_ras[2]) < radius).sum()) == 5
    # half the 15 lesion-free slices kept, the same ones on every read, all lesion slices kept
    half = ad.params.replace(negative_slice_rate=0.5)
    kept = [
        sorted(s.meta["slice_index"] for s in _all_samples(MedicalAdapter(tmp_path, half)))
        for _ in range(2)
    ]
    assert kept[0] == kept[1] and with_box <= set(kept[0])
    assert 3 <= len(set(kept[0]) - with_box) <= 12


def test_min_cross_section_marks_difficult_or_drops(tmp_path: Path) -> None:
    centre_lps = np.array([-3.0, -1.5, -12.0])
    _sphere_volume(tmp_path, centre_lps, 6.0)
    _datalist(
        tmp_path,
        {"training": [{"image": "ct.nii.gz", "box": [[*centre_lps, 12, 12, 12]], "label": [0]}]},
    )
    base = {
        "datalist": "datalist.json",
        "world_frame": "LPS",
        "slice_context": 0,
        "negative_slice_rate": 0.0,
        "min_cross_section": 0.5,
        "windows": ["lung"],
    }
    samples = _all_samples(MedicalAdapter(tmp_path, base))
    # plane offsets from the centre are 0, +-2, +-4 mm: fraction 1 - (dz/6)^2
    fractions = {round(1 - (d / 6) ** 2, 4) for d in (0, 2, 4)}
    assert fractions == {1.0, 0.8889, 0.5556}
    assert len(samples) == 5 and all(len(s.boxes) == 1 for s in samples)
    assert not any(s.difficult.any() for s in samples)
    strict = _all_samples(MedicalAdapter(tmp_path, {**base, "min_cross_section": 0.6}))
    assert sorted(int(s.difficult[0]) for s in strict) == [0, 0, 0, 1, 1]
    dropped = _all_samples(
        MedicalAdapter(tmp_path, {**base, "min_cross_section": 0.6, "small_section": "drop"})
    )
    assert len(dropped) == 3  # negatives rate 0: slices left without boxes are not kept


def test_luna16_csv_gives_same_boxes_as_datalist(tmp_path: Path) -> None:
    centre_lps = np.array([-3.0, -1.5, -12.0])
    _sphere_volume(tmp_path, centre_lps, 6.0)
    (tmp_path / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,-3.0,-1.5,-12.0,12.0\n"
    )
    _datalist(
        tmp_path,
        {"training": [{"image": "ct.nii.gz", "box": [[*centre_lps, 12, 12, 12]], "label": [0]}]},
    )
    common = {
        "slice_context": 0,
        "negative_slice_rate": 0.0,
        "test_fraction": 0.0,
        "val_fraction": 0.0,
    }
    a = _all_samples(
        MedicalAdapter(
            tmp_path,
            {"annotations_csv": "annotations.csv", "series_map": {"1.2.3": "ct.nii.gz"}, **common},
        )
    )
    b = _all_samples(
        MedicalAdapter(tmp_path, {"datalist": "datalist.json", "world_frame": "LPS", **common})
    )
    assert len(a) == len(b) == 5
    for sa, sb in zip(a, b):
        np.testing.assert_allclose(sa.boxes, sb.boxes, atol=1e-5)


def test_context_channels_intensity_and_render(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.uniform(-1200, 400, size=(6, 5, 4)).astype(np.float32)
    _save(tmp_path / "v.nii", data, np.diag([1.0, 1.0, 3.0, 1.0]))
    _datalist(tmp_path, {"training": [{"image": "v.nii"}]})
    ad = MedicalAdapter(
        tmp_path,
        {
            "datalist": "datalist.json",
            "world_frame": "LPS",
            "windows": ["lung", [-100, 100]],
            "slice_context": 1,
            "negative_slice_rate": 1.0,
            "class_names": ["a"],
        },
    )
    samples = sorted(_all_samples(ad), key=lambda s: s.meta["slice_index"])
    assert ad.channel_names == [
        "lung@-1",
        "lung@0",
        "lung@+1",
        "w-100_100@-1",
        "w-100_100@0",
        "w-100_100@+1",
    ]
    for s in samples:
        k = s.meta["slice_index"]
        for c, (lo, hi) in enumerate([(-1350, 150), (-100, 100)]):
            for o in (-1, 0, 1):
                kk = min(max(k + o, 0), 3)  # edges replicate
                want = np.clip((data[:, :, kk].T - lo) / (hi - lo), 0, 1)
                np.testing.assert_allclose(s.image[3 * c + o + 1], want, atol=1e-6)
        pic = ad.render(s.image)
        assert pic.dtype == np.uint8 and pic.shape == (5, 6, 3)
        np.testing.assert_array_equal(pic[..., 0], np.round(s.image[1] * 255).astype(np.uint8))


def test_mri_percentile_and_resampling(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    data = rng.gamma(2.0, 100.0, size=(10, 8, 3)).astype(np.float32)
    _save(tmp_path / "mr.nii.gz", data, np.diag([0.5, 0.5, 4.0, 1.0]))
    _datalist(
        tmp_path,
        {"training": [{"image": "mr.nii.gz", "box": [[2.5, 2.0, 4.0, 2, 2, 4]], "label": [0]}]},
    )
    params = {
        "datalist": "datalist.json",
        "intensity": "mri_percentile",
        "mri_percentiles": [2.0, 98.0],
        "slice_context": 0,
        "negative_slice_rate": 1.0,
        "world_frame": "RAS",
        "min_cross_section": 0.0,
    }
    ad = MedicalAdapter(tmp_path, params)
    samples = sorted(_all_samples(ad), key=lambda s: s.meta["slice_index"])
    assert ad.channel_names == ["mri@0"]
    lo, hi = np.percentile(data, [2, 98])
    for s in samples:
        want = np.clip((data[:, :, s.meta["slice_index"]].T - lo) / (hi - lo), 0, 1)
        np.testing.assert_allclose(s.image[0], want, atol=1e-5)
    # Resampled to 1 mm in-plane: half the pixels; the box (2 mm wide, centre x=2.5 mm) is
    # 2 px wide centred at pixel x=3.0 (world x = pixel x - 0.5 voxel... in 1 mm pixels).
    rs = _all_samples(MedicalAdapter(tmp_path, {**params, "target_spacing": 1.0}))
    assert rs[0].image.shape == (1, 4, 5)
    s1 = next(s for s in rs if s.meta["slice_index"] == 1)
    np.testing.assert_allclose(pixel_to_world(s1.affine, [[0.0, 0.0]])[0], [-0.25, -0.25, 4.0])
    np.testing.assert_allclose(s1.boxes[0], [2.75 - 1, 2.25 - 1, 2.75 + 1, 2.25 + 1], atol=1e-5)
    np.testing.assert_allclose(s1.meta["pixel_spacing_mm"], [1.0, 1.0])


# --- 3D linking -----------------------------------------------------------------------------


def test_link_recovers_known_3d_boxes() -> None:
    vol_aff = np.array([[-0.8, 0, 0, 40.0], [0, -0.8, 0, 30.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]])
    # (pixel x, y) <-> world via the flipped axes; boxes cccwhd in RAS mm
    truth = {
        1: np.array([20.0, 12.0, -6.0, 14.0, 10.0, 16.0]),
        2: np.array([19.0, 11.0, 14.0, 9.0, 12.0, 11.0]),
    }  # same place, higher up
    cuts = [(lab, ellipsoid_slice_cuts(vol_aff, box, 24)) for lab, box in truth.items()]
    dets = cuts_to_detections(cuts, score=0.9)
    dets[min(c.slice_index for c in cuts[0][1]) + 2]["scores"][:] = 0.5  # not the max
    dets.pop(cuts[1][1][2].slice_index)  # a missed slice inside lesion 2: bridged by gap 1
    lesions = link_volume(dets, vol_aff, iou_threshold=0.3, max_gap=1, extent="ellipsoid")
    assert sorted(les.label for les in lesions) == [1, 2]
    for les in lesions:
        np.testing.assert_allclose(les.box, truth[les.label], atol=1e-6)
        assert les.score == 0.9
    slab = link_volume(dets, vol_aff, extent="slab")
    for les in slab:  # the slab estimate is within half a slice (1.25 mm) on each end
        np.testing.assert_allclose(les.box[:3], truth[les.label][:3], atol=1.25)
        assert abs(les.box[5] - truth[les.label][5]) <= 2.5
    no_gap = link_volume(dets, vol_aff, max_gap=0)
    assert len(no_gap) == 3  # without bridging, lesion 2 splits in two


def test_link_oblique_and_random_boxes() -> None:
    rng = np.random.default_rng(7)
    for trial in range(5):
        aff = np.eye(4)
        aff[:3, :3] = _rotation(*rng.uniform(-0.15, 0.15, 3)) @ np.diag([0.7, 0.7, 1.5])
        aff[:3, 3] = rng.uniform(-20, 20, 3)
        centre = aff[:3, :3] @ [32, 32, 20] + aff[:3, 3]
        box = np.concatenate([centre, rng.uniform(8, 20, 3)])
        # sections under 20 % of the equator are dropped, as the adapter does for training
        cuts = [c for c in ellipsoid_slice_cuts(aff, box, 40) if c.fraction >= 0.2]
        lesions = link_volume(cuts_to_detections([(1, cuts)]), aff)
        assert len(lesions) == 1
        # oblique: the world box of the fitted voxel box encloses the truth, centre matches
        np.testing.assert_allclose(lesions[0].box[:3], box[:3], atol=0.2, err_msg=str(trial))
        assert (lesions[0].box[3:] >= box[3:] - 0.3).all()


def test_export_predictions_round_trip(tmp_path: Path) -> None:
    params = MedicalAdapter.write_demo(tmp_path, num_images=20, image_size=48, seed=2)
    ad = get_adapter("medical")(
        tmp_path,
        {
            **params,
            "min_cross_section": 0.2,
            "small_section": "drop",
            "negative_slice_rate": 1.0,
            "link_overlap": "iomin",
        },
    )
    items = []
    refs = ad.discover()
    for ref in refs:
        for s in ad.read(ref):
            items.append(
                {
                    "sample_id": s.sample_id,
                    "source": s.source,
                    "meta": s.meta,
                    "affine": s.affine,
                    "detections": {
                        "boxes": s.boxes,
                        "scores": np.full(len(s.boxes), 0.7),
                        "labels": s.labels,
                    },
                }
            )
    paths = ad.export_predictions(items, tmp_path / "out")
    pred = json.loads(paths[-1].read_text())
    truth = json.loads((tmp_path / "datalist.json").read_text())
    volume_affine = {
        it["meta"]["image"]: slice_to_volume_affine(it["affine"], it["meta"]["slice_index"])
        for it in items
    }
    fitted = 0
    for key, entries in truth.items():
        by_image = {e["image"]: e for e in pred[key]}
        for e in entries:
            p = by_image[e["image"]]
            assert sorted(p["label"]) == sorted(e["label"])
            for box, lab in zip(e["box"], e["label"]):
                d = min(
                    (
                        np.abs(np.array(pb) - box)
                        for pb, pl in zip(p["box"], p["label"])
                        if pl == lab
                    ),
                    key=lambda v: v.max(),
                )
                # lesions seen on < 3 slices fall back to slab extents: half a slice each end
                assert (d[:3] <= 1.25 + 1e-6).all() and (d[3:] <= 2.5 + 1e-6).all(), (box, p)
                cuts = ellipsoid_slice_cuts(
                    volume_affine[e["image"]], lps_ras_flip(np.asarray(box)), DEPTH
                )
                if sum(c.fraction >= 0.2 for c in cuts) >= 3:
                    # the ellipsoid fit recovers the others exactly (LPS mm, 4 decimals written)
                    assert d.max() < 1e-3, (box, p)
                    fitted += 1
    assert fitted >= 3  # the exact case is exercised
    reference = ad.reference_datalist({r.ref_id: ad.unit_record(r) for r in refs}, "test")
    assert reference["test"] and [e["image"] for e in reference["test"]] == [
        e["image"] for e in truth["test"]
    ]
    res = froc_from_datalists(pred, reference, key="test")
    assert res["cpm"] == 1.0 and res["num_false_positives"] == 0
    assert res["num_lesions"] == sum(len(e["label"]) for e in truth["test"])
    # predictions shifted by three lesion widths find nothing and is all false positives
    shifted = {
        "test": [{**e, "box": [[b[0] + 3 * b[3], *b[1:]] for b in e["box"]]} for e in pred["test"]]
    }
    res = froc_from_datalists(shifted, reference, key="test")
    assert res["cpm"] == 0.0 and res["num_false_positives"] == res["num_lesions"]


# --- FROC -----------------------------------------------------------------------------------


def test_froc_hand_computed() -> None:
    scans = [
        ScanLesions(
            np.array([[1, 1, 0], [2, 0, 0], [100, 0, 0], [50, 3.9, 0]]),
            np.array([0.9, 0.3, 0.8, 0.8]),
            np.array([[0, 0, 0], [50, 0, 0]]),
            np.array([5.0, 4.0]),
        ),
        # a prediction exactly on the radius is a miss (strict <), so an FP
        ScanLesions(
            np.array([[0, 0, 3], [10, 10, 10], [0, 0, 1]]),
            np.array([0.7, 0.2, 0.1]),
            np.array([[0, 0, 0]]),
            np.array([3.0]),
        ),
        # a hit on an ignored finding counts neither way
        ScanLesions(
            np.array([[1, 0, 0], [40, 0, 0]]),
            np.array([0.95, 0.05]),
            np.zeros((0, 3)),
            np.zeros(0),
            np.array([[0, 0, 0]]),
            np.array([10.0]),
        ),
    ]
    res = froc(scans)
    # curve by hand: (0,0) (0,1/3) (1/3,2/3) (2/3,2/3) (1,2/3) (1,1) (4/3,1)
    np.testing.assert_allclose(res["curve_fps"], [0, 0, 1 / 3, 2 / 3, 1, 1, 4 / 3])
    np.testing.assert_allclose(res["curve_sensitivity"], [0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(res["sensitivities"], [11 / 24, 7 / 12, 2 / 3, 1, 1, 1, 1])
    assert res["cpm"] == pytest.approx(137 / 168)
    assert (res["num_lesions"], res["num_detected"], res["num_false_positives"]) == (3, 3, 4)


def test_froc_from_datalists_radius_is_half_mean_diameter() -> None:
    truth = {
        "test": [
            {"image": "a", "box": [[0, 0, 0, 6, 9, 12]], "label": [0]},
            {"image": "b", "box": [], "label": []},
        ]
    }
    # mean diameter 9 -> radius 4.5: a prediction 4.4 mm away hits, 4.6 mm away does not
    for dist, hit in ((4.4, True), (4.6, False)):
        pred = {
            "test": [{"image": "a", "box": [[dist, 0, 0, 5, 5, 5]], "label": [0], "score": [0.6]}]
        }
        res = froc_from_datalists(pred, truth, key="test")
        assert res["num_scans"] == 2
        assert res["num_detected"] == int(hit)
        assert res["num_false_positives"] == int(not hit)


# --- errors ---------------------------------------------------------------------------------


def _one_volume(tmp_path: Path, data: np.ndarray, name: str = "v.nii.gz", box=None) -> None:
    _save(tmp_path / name, data, np.diag([-1.0, -1.0, 2.0, 1.0]))
    _datalist(
        tmp_path, {"training": [{"image": name, "box": box or [], "label": [0] * len(box or [])}]}
    )


def _read_all(tmp_path: Path, log: PrepareLog | None = None, **extra):
    ad = MedicalAdapter(
        tmp_path,
        {"datalist": "datalist.json", "world_frame": "LPS", "negative_slice_rate": 1.0, **extra},
        log=log,
    )
    return ad, _all_samples(ad)


def test_truncated_gz_names_file_or_skips(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(32, 32, 16)).astype(np.float32)
    _one_volume(tmp_path, data)
    path = tmp_path / "v.nii.gz"
    raw = path.read_bytes()
    assert gzip.decompress(raw)  # intact before truncation
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="v.nii.gz") as err:
        _read_all(tmp_path)
    assert "truncated or corrupt gzip stream" in str(err.value)
    log = PrepareLog(on_error="skip")
    ad, samples = _read_all(tmp_path, log=log)
    assert samples == []  # nothing partial
    assert len(log.skipped) == 1 and log.skipped[0]["file"].endswith("v.nii.gz")
    assert ad.log is log


# --- whole-volume integrity: a volume damaged anywhere is refused before any slice ----------


def _early_lesion_volume(tmp_path: Path, name: str = "v.nii.gz", shape=(24, 24, 20)) -> Path:
    """Random float32 voxels, one lesion in the first slices and no negatives kept: the
    slices the adapter keeps all lie in the first quarter of the file."""
    data = np.random.default_rng(5).normal(-500, 100, size=shape).astype(np.float32)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    _save(tmp_path / name, data, affine)
    _datalist(
        tmp_path,
        {"training": [{"image": name, "box": [[12.0, 12.0, 4.0, 6.0, 6.0, 4.0]], "label": [0]}]},
    )
    return tmp_path / name


def _early_params() -> dict:
    return {
        "datalist": "datalist.json",
        "world_frame": "RAS",
        "negative_slice_rate": 0.0,
        "min_cross_section": 0.0,
        "val_fraction": 0.0,
        "test_fraction": 0.0,
    }


def test_gz_cut_after_the_kept_slices_is_refused_before_any_sample(tmp_path: Path) -> None:
    path = _early_lesion_volume(tmp_path)
    ad = MedicalAdapter(tmp_path, _early_params())
    (ref,) = ad.discover()
    kept = [s.meta["slice_index"] for s in ad.read(ref)]
    assert kept and max(kept) <= 4  # intact: a few early slices only
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * 0.7)])  # cut after its middle
    # the data of the kept slices is still there ...
    with gzip.open(path, "rb") as f:
        assert len(f.read(352 + 24 * 24 * 4 * 6)) == 352 + 24 * 24 * 4 * 6
    # ... yet the volume is refused, naming the file, before its first sample
    ad = MedicalAdapter(tmp_path, _early_params())
    (ref,) = ad.discover()  # the header is intact
    samples = ad.read(ref)
    with pytest.raises(DataError) as err:
        next(samples)
    assert str(path) in str(err.value)
    assert "truncated or corrupt gzip stream" in err.value.reason
    assert err.value.path == str(path) and err.value.sample == ref.ref_id == "v"


def test_gz_cut_with_skip_log_leaves_the_decision_to_the_prepare_stage(tmp_path: Path) -> None:
    path = _early_lesion_volume(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * 0.7)])
    log = PrepareLog(on_error="skip")
    ad = MedicalAdapter(tmp_path, _early_params(), log=log)
    (ref,) = ad.discover()  # the header is fine: nothing skipped at discovery
    assert log.skipped == []
    with pytest.raises(DataError, match="truncated or corrupt gzip stream"):
        next(iter(ad.read(ref)))  # the adapter raises; it never skips by itself
    assert log.skipped == []
    # driven like the prepare stage in skip mode, the volume is left out whole
    samples = _all_samples(MedicalAdapter(tmp_path, _early_params(), log=log))
    assert samples == []
    assert [(e["file"], e["unit"], e["stage"]) for e in log.skipped] == [
        (str(path), "volume", "read")
    ]


def test_gz_with_bad_crc_is_refused(tmp_path: Path) -> None:
    path = _early_lesion_volume(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # the CRC32 of the gzip trailer
    path.write_bytes(bytes(raw))
    ad = MedicalAdapter(tmp_path, _early_params())
    (ref,) = ad.discover()
    with pytest.raises(DataError, match="truncated or corrupt gzip stream.*CRC") as err:
        next(iter(ad.read(ref)))
    assert err.value.path == str(path)


def test_short_data_in_a_complete_gz_stream_names_the_byte_counts(tmp_path: Path) -> None:
    nii = _early_lesion_volume(tmp_path, name="v.nii")
    need = 352 + 24 * 24 * 20 * 4
    assert nii.stat().st_size == need
    short = nii.read_bytes()[: need - 24 * 24 * 4 * 5]  # the last 5 slices missing
    # a well-formed gzip stream of the cut file
    (tmp_path / "v.nii.gz").write_bytes(gzip.compress(short))
    _datalist(
        tmp_path,
        {"training": [{"image": "v.nii.gz", "box": [[12.0, 12.0, 4.0, 6, 6, 4]], "label": [0]}]},
    )
    ad = MedicalAdapter(tmp_path, _early_params())
    (ref,) = ad.discover()
    with pytest.raises(DataError, match=r"v\.nii\.gz") as err:
        next(iter(ad.read(ref)))
    assert f"data ends at byte {len(short):,}, header declares {need:,}" in err.value.reason


def test_truncated_uncompressed_nii_is_refused(tmp_path: Path) -> None:
    nii = _early_lesion_volume(tmp_path, name="v.nii")
    raw = nii.read_bytes()
    nii.write_bytes(raw[: len(raw) - 1000])
    ad = MedicalAdapter(tmp_path, _early_params())
    (ref,) = ad.discover()
    with pytest.raises(DataError, match=r"v\.nii") as err:
        next(iter(ad.read(ref)))
    assert f"data ends at byte {len(raw) - 1000:,}, header declares {len(raw):,}" in str(err.value)


def test_nan_after_the_kept_slices_is_refused_before_any_sample(tmp_path: Path) -> None:
    data = np.random.default_rng(5).normal(-500, 100, size=(24, 24, 20)).astype(np.float32)
    data[7, 9, 17] = np.nan  # far from the lesion slices that are kept
    _save(tmp_path / "v.nii.gz", data, np.diag([1.0, 1.0, 2.0, 1.0]))
    _datalist(
        tmp_path,
        {"training": [{"image": "v.nii.gz", "box": [[12.0, 12.0, 4.0, 6, 6, 4]], "label": [0]}]},
    )
    ad = MedicalAdapter(tmp_path, _early_params())
    (ref,) = ad.discover()
    with pytest.raises(DataError, match=r"v\.nii\.gz.*slice 17 holds NaN or infinite values"):
        next(iter(ad.read(ref)))


# --- header checks at discovery -------------------------------------------------------------


def _write_header_only(path: Path, dims: list[int]) -> None:
    """A NIfTI-1 file written by nibabel's header writer with the given ``dim`` field."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr["dim"] = [len(dims), *dims, *([1] * (7 - len(dims)))]
    hdr["vox_offset"] = 352
    hdr.set_sform(np.eye(4), code=1)
    with path.open("wb") as f:
        hdr.write_to(f)
        f.write(b"\0" * 4)


def test_declared_size_over_max_voxels_is_refused_from_the_header(tmp_path: Path) -> None:
    _write_header_only(tmp_path / "huge.nii", [30000, 30000, 10])
    _save(tmp_path / "ok.nii.gz", np.zeros((4, 4, 3), np.float32), np.eye(4))
    _datalist(tmp_path, {"training": [{"image": "huge.nii"}, {"image": "ok.nii.gz"}]})
    params = {"datalist": "datalist.json", "world_frame": "LPS", "class_names": ["x"]}
    with pytest.raises(DataError, match=r"huge\.nii") as err:
        MedicalAdapter(tmp_path, params).discover()
    msg = err.value.reason
    assert "30000 x 30000 x 10 voxels" in msg and "max_voxels=262,144,000" in msg
    # under the prepare stage's skip mode the volume is left out, the other one kept
    log = PrepareLog(on_error="skip")
    refs = MedicalAdapter(tmp_path, params, log=log).discover()
    assert [r.meta["image"] for r in refs] == ["ok.nii.gz"]
    assert log.skipped[0]["unit"] == "volume" and log.skipped[0]["file"].endswith("huge.nii")
    assert log.skipped[0]["stage"] == "discover" and log.skipped[0]["sample"] == "huge"
    # the default limit, documented
    assert (
        MedicalParams.parse({"datalist": "d.json", "world_frame": "LPS"}).max_voxels
        == 512 * 512 * 1000
    )


def test_max_voxels_applies_to_each_volume(tmp_path: Path) -> None:
    _save(tmp_path / "ok.nii.gz", np.zeros((4, 4, 3), np.float32), np.eye(4))
    _datalist(tmp_path, {"training": [{"image": "ok.nii.gz"}]})
    params = {
        "datalist": "datalist.json",
        "world_frame": "LPS",
        "class_names": ["x"],
        "max_voxels": 40,
    }
    with pytest.raises(DataError, match=r"ok\.nii\.gz.*4 x 4 x 3 voxels = 48.*max_voxels"):
        MedicalAdapter(tmp_path, params).discover()
    assert len(MedicalAdapter(tmp_path, {**params, "max_voxels": 48}).discover()) == 1


@pytest.mark.parametrize("dims", [[16, 0, 8], [16, -5, 8]])
def test_non_positive_dimensions_are_refused(tmp_path: Path, dims: list[int]) -> None:
    _write_header_only(tmp_path / "bad.nii", dims)
    _datalist(tmp_path, {"training": [{"image": "bad.nii"}]})
    with pytest.raises(DataError, match=r"bad\.nii.*every dimension must be >= 1") as err:
        MedicalAdapter(tmp_path, {"datalist": "datalist.json", "world_frame": "LPS"}).discover()
    assert str(dims[1]) in err.value.reason


def test_2d_image_nan_volume_and_outside_box(tmp_path: Path) -> None:
    _one_volume(tmp_path, np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(DataError, match=r"v\.nii\.gz.*expected a 3D volume"):
        _read_all(tmp_path)
    _one_volume(tmp_path, np.full((4, 4, 3), np.nan, dtype=np.float32), name="nan.nii.gz")
    with pytest.raises(DataError, match=r"nan\.nii\.gz.*NaN"):
        _read_all(tmp_path)
    log = PrepareLog(on_error="skip")
    ad, samples = _read_all(tmp_path, log=log)
    assert samples == [] and "NaN" in log.skipped[0]["reason"]
    _one_volume(
        tmp_path,
        np.zeros((4, 4, 3), dtype=np.float32),
        name="ok.nii.gz",
        box=[[500.0, 0.0, 0.0, 2, 2, 2]],
    )
    with pytest.raises(DataError, match=r"datalist\.json.*outside the volume 'ok\.nii\.gz'"):
        _read_all(tmp_path)


def test_bad_entries_go_through_the_prepare_log(tmp_path: Path) -> None:
    _save(tmp_path / "a.nii.gz", np.zeros((4, 4, 3), np.float32), np.eye(4))
    _datalist(
        tmp_path,
        {
            "training": [
                {"image": "a.nii.gz"},
                {"image": "missing.nii.gz"},
                {"image": "a2.nii.gz", "box": [[1, 1, 1, -2, 2, 2]], "label": [0]},
                {"image": "a3.nii.gz", "box": [[1, 1, 1, 2, 2, 2]], "label": [4]},
            ]
        },
    )
    params = {"datalist": "datalist.json", "world_frame": "LPS", "class_names": ["x"]}
    with pytest.raises(DataError, match=r"datalist\.json.*training\[1\].*not found"):
        MedicalAdapter(tmp_path, params).discover()
    log = PrepareLog(on_error="skip")
    ad = MedicalAdapter(tmp_path, params, log=log)
    assert [r.meta["image"] for r in ad.discover()] == ["a.nii.gz"]
    reasons = [e["reason"] for e in log.skipped]
    assert len(reasons) == 3 and all(e["unit"] == "volume" for e in log.skipped)
    assert "not found" in reasons[0]
    assert "positive sizes" in reasons[1]
    assert "label 4 exceeds the 1 class_names" in reasons[2]


def test_bad_csv_row_skips_its_series_only(tmp_path: Path) -> None:
    for uid in ("s1", "s2"):
        _save(tmp_path / f"{uid}.nii.gz", np.zeros((8, 8, 4), np.float32), np.eye(4))
    (tmp_path / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\ns1,-3.0,-3.0,2.0,2.0\ns2,abc,1,1,2\n"
    )
    params = {"annotations_csv": "annotations.csv", "val_fraction": 0.0, "test_fraction": 0.0}
    with pytest.raises(DataError, match=r"annotations\.csv.*series 's2': line 3: bad number"):
        MedicalAdapter(tmp_path, params).discover()
    log = PrepareLog(on_error="skip")
    refs = MedicalAdapter(tmp_path, params, log=log).discover()
    assert [r.meta["seriesuid"] for r in refs] == ["s1"]
    assert len(log.skipped) == 1 and "s2" in log.skipped[0]["reason"]


def test_bad_params_and_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        MedicalAdapter(tmp_path, {})
    with pytest.raises(ConfigError, match="unknown CT window"):
        MedicalAdapter(tmp_path, {"datalist": "d.json", "world_frame": "LPS", "windows": ["brain"]})
    with pytest.raises(ConfigError, match="unknown medical"):
        MedicalAdapter(tmp_path, {"datalist": "d.json", "world_frame": "LPS", "slices": 3})
    # renamed and removed params are refused by name
    with pytest.raises(ConfigError, match="unknown medical adapter param 'split_seed'.*seed"):
        MedicalAdapter(tmp_path, {"datalist": "d.json", "world_frame": "LPS", "split_seed": 3})
    with pytest.raises(ConfigError, match="unknown medical adapter param 'on_error'"):
        MedicalAdapter(tmp_path, {"datalist": "d.json", "world_frame": "LPS", "on_error": "skip"})
    with pytest.raises(ConfigError, match="max_voxels.*>= 1"):
        MedicalAdapter(tmp_path, {"datalist": "d.json", "world_frame": "LPS", "max_voxels": 0})
    with pytest.raises(ConfigError, match="series_map.*seriesuid"):
        MedicalAdapter(tmp_path, {"annotations_csv": "a.csv", "series_map": "{uid}.nii.gz"})
    assert (
        MedicalAdapter(
            tmp_path, {"datalist": "d.json", "world_frame": "LPS", "seed": 3}
        ).params.seed
        == 3
    )
    _datalist(tmp_path, {"training": [{"image": "../outside.nii.gz"}]})
    with pytest.raises(DataError, match="escapes"):
        MedicalAdapter(tmp_path, {"datalist": "datalist.json", "world_frame": "LPS"}).discover()


def test_demo_is_fast_and_valid(tmp_path: Path) -> None:
    import time

    t0 = time.perf_counter()
    params = MedicalAdapter.write_demo(tmp_path, num_images=60, image_size=48, seed=0)
    assert time.perf_counter() - t0 < 5.0
    ad = MedicalAdapter(tmp_path, params)
    samples = _all_samples(ad)
    # train + val aim at ~num_images; the test volumes (>= num_images / 12) keep every
    # slice, on top
    assert 90 <= len(samples) <= 140
    assert 0.8 * 60 <= sum(s.split != "test" for s in samples) <= 1.3 * 60
    assert {s.split for s in samples} == {"train", "val", "test"}
    test_volumes = {s.meta["volume_id"] for s in samples if s.split == "test"}
    assert len(test_volumes) >= 5
    assert sum(s.split == "test" for s in samples) == DEPTH * len(test_volumes)
    assert ad.class_names == ["solid_nodule", "ground_glass"]
    labels = np.concatenate([s.labels for s in samples])
    assert set(labels.tolist()) == {1, 2}
    for s in samples:
        s.validate(num_channels=len(ad.channel_names), num_classes=2)
        assert len(s.boxes) <= 4  # at most 4 lesions per volume
    # the file affine flips x and y, as LPS scanners write it
    aff = nib.load(str(tmp_path / "images" / "ct_000.nii.gz")).affine
    assert aff[0, 0] < 0 and aff[1, 1] < 0 and aff[2, 2] > 0
