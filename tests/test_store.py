"""The HDF5 store: round trips, workers, statistics, atomicity, versioning, plain-h5py reading."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from dsod_core.boxes import default_boxes
from dsod_core.data.collate import detection_collate
from dsod_core.data.dataset import DetectionDataset
from dsod_core.data.store import FORMAT_VERSION, StoreReader, StoreWriter
from dsod_core.data.transforms import Compose, HorizontalFlip, Resize, build_train_transform
from dsod_core.engine.evaluator import eval_loader, score_predictions
from dsod_core.errors import DataError
from dsod_core.loss import CROWD_LABEL, MultiBoxLoss
from dsod_core.metrics.scoring import score_detections
from tests.conftest import make_sample

CLASSES = ["a", "b", "c"]


def _write(path, samples, channels):
    with StoreWriter(
        path,
        modality="test",
        class_names=CLASSES,
        channel_names=[f"ch{i}" for i in range(channels)],
        params={"k": 1},
    ) as w:
        for s in samples:
            w.add(s)
    return path


@pytest.mark.parametrize("channels", [1, 4, 13])
def test_round_trip_channels(tmp_path, channels):
    samples = [
        make_sample(i, channels, split=["train", "val", "test"][i % 3], size=(16 + i, 20 + 2 * i))
        for i in range(6)
    ]
    samples.append(make_sample(6, channels, n_boxes=0))  # an image with no boxes
    path = _write(tmp_path / "s.h5", samples, channels)
    r = StoreReader(path)
    assert len(r) == 7 and r.num_channels == channels and r.class_names == CLASSES
    assert r.params == {"k": 1}
    for i, s in enumerate(samples):
        got = r.get(i)
        np.testing.assert_array_equal(got.image, s.image)
        np.testing.assert_array_equal(got.boxes, s.boxes)
        np.testing.assert_array_equal(got.labels, s.labels)
        np.testing.assert_array_equal(got.difficult, s.difficult)
        np.testing.assert_array_equal(got.affine, s.affine)
        assert (got.sample_id, got.source, got.split, got.meta) == (
            s.sample_id,
            s.source,
            s.split,
            s.meta,
        )
    assert r.get(6).boxes.shape == (0, 4) and r.get(6).labels.dtype == np.int64
    assert list(r.split_indices("val")) == [1, 4]


def test_statistics_from_train_only(tmp_path):
    rng = np.random.default_rng(0)
    samples = [make_sample(i, 2, split="train" if i < 3 else "test", rng=rng) for i in range(6)]
    samples[4].image += 1000.0  # a wild test image must not move the statistics
    # a no-data region must not enter the statistics either
    samples[0].valid = np.ones(samples[0].image.shape[1:], bool)
    samples[0].valid[:5] = False
    samples[0].image[:, :5] = 1e6
    r = StoreReader(_write(tmp_path / "s.h5", samples, 2))
    train = np.concatenate(
        [
            s.image.reshape(2, -1)[:, (s.valid.reshape(-1) if s.valid is not None else slice(None))]
            for s in samples[:3]
        ],
        axis=1,
    ).astype(np.float64)
    np.testing.assert_allclose(r.mean, train.mean(1), rtol=1e-5)
    np.testing.assert_allclose(r.std, train.std(1), rtol=1e-5)


def test_constant_channel_std_is_one(tmp_path):
    s = make_sample(0, 2)
    s.image[1] = 1.0
    r = StoreReader(_write(tmp_path / "s.h5", [s], 2))
    assert r.std[1] == 1.0 and r.mean[1] == 1.0


class _StoreDataset(Dataset):
    def __init__(self, reader):
        self.reader = reader

    def __len__(self):
        return len(self.reader)

    def __getitem__(self, i):
        return torch.from_numpy(self.reader.read_image(i)).double().sum(), os.getpid()


def test_several_worker_processes(tmp_path):
    samples = [make_sample(i, 3) for i in range(12)]
    r = StoreReader(_write(tmp_path / "s.h5", samples, 3))
    r.read_image(0)  # a handle opened in the parent must not leak into workers
    loader = DataLoader(
        _StoreDataset(r), batch_size=1, num_workers=2, multiprocessing_context="fork"
    )
    sums, pids = [], set()
    for total, pid in loader:
        sums.append(float(total))
        pids.add(int(pid))
    assert len(pids) == 2 and os.getpid() not in pids
    expected = [float(s.image.astype(np.float64).sum()) for s in samples]
    np.testing.assert_allclose(sums, expected, rtol=1e-9)


def test_exception_during_write_leaves_nothing(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError):
        with StoreWriter(path, modality="t", class_names=CLASSES, channel_names=["x"]) as w:
            w.add(make_sample(0, 1))
            raise RuntimeError("boom")
    assert not path.exists() and not (tmp_path / "s.h5.partial").exists()


def test_killed_write_leaves_no_complete_looking_file(tmp_path):
    path = tmp_path / "s.h5"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(os.getcwd())!r})
        from dsod_core.data.store import StoreWriter
        from tests.conftest import make_sample
        w = StoreWriter({str(path)!r}, modality="t", class_names=["a","b","c"],
                        channel_names=["x"])
        for i in range(5):
            w.add(make_sample(i, 1))
        w._file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not path.exists()
    partial = tmp_path / "s.h5.partial"
    assert partial.exists()
    with pytest.raises(DataError, match="incomplete|cannot read"):
        StoreReader(partial)


def test_unknown_version_refused(tmp_path):
    path = _write(tmp_path / "s.h5", [make_sample(0, 1)], 1)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(DataError, match=r"s\.h5.*format version"):
        StoreReader(path)


def test_not_a_store_refused(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = 1
    with pytest.raises(DataError, match="other.h5: not a dsod-store"):
        StoreReader(path)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="garbage.h5"):
        StoreReader(garbage)


def test_invalid_samples_refused(tmp_path):
    bad = make_sample(0, 2)
    bad.boxes[0] = [5, 5, 4, 9]  # inverted
    with pytest.raises(DataError, match="s0.png.*inverted"):
        with StoreWriter(
            tmp_path / "s.h5", modality="t", class_names=CLASSES, channel_names=["a", "b"]
        ) as w:
            w.add(bad)
    with pytest.raises(DataError, match="expected 3 channels"):
        with StoreWriter(
            tmp_path / "s.h5", modality="t", class_names=CLASSES, channel_names=["a", "b", "c"]
        ) as w:
            w.add(make_sample(0, 2))
    with pytest.raises(DataError, match="duplicate sample id"):
        with StoreWriter(
            tmp_path / "s.h5", modality="t", class_names=CLASSES, channel_names=["a", "b"]
        ) as w:
            w.add(make_sample(0, 2))
            w.add(make_sample(0, 2))
    assert not (tmp_path / "s.h5").exists()


def test_read_with_plain_h5py_from_the_doc(tmp_path):
    """Follows docs/store.md only: no project code used to read."""
    samples = [make_sample(i, 4, split="test" if i % 2 else "train") for i in range(4)]
    path = _write(tmp_path / "s.h5", samples, 4)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "dsod-store" and f.attrs["format_version"] == 1
        assert f.attrs["complete"] == 1 and f.attrs["num_samples"] == 4
        classes = json.loads(f.attrs["class_names"])
        assert json.loads(f.attrs["channel_names"]) == ["ch0", "ch1", "ch2", "ch3"]
        mean, std = f["stats/mean"][()], f["stats/std"][()]
        assert mean.shape == (4,) and f["stats/pixel_count"][()].shape == (4,)
        for i in f["splits/test"][()]:
            g = f[f"samples/{i:07d}"]
            image = (g["image"][()] - mean[:, None, None]) / std[:, None, None]
            s = samples[i]
            np.testing.assert_allclose(
                image * std[:, None, None] + mean[:, None, None], s.image, rtol=1e-5, atol=1e-4
            )
            np.testing.assert_array_equal(g["boxes"][()], s.boxes)
            assert [classes[lab - 1] for lab in g["labels"][()]] == [
                CLASSES[lab - 1] for lab in s.labels
            ]
            assert g.attrs["split"] == "test" and json.loads(g.attrs["meta"]) == s.meta
            np.testing.assert_array_equal(g.attrs["affine"], s.affine)


# --- crowd regions ----------------------------------------------------------------------------


def _with_crowd(samples):
    """Mark the last box of every sample that has two or more boxes crowd."""
    for s in samples:
        s.crowd = np.zeros(len(s.labels), bool)
        if len(s.labels) >= 2:
            s.crowd[-1] = True
    return samples


def test_crowd_flags_round_trip(tmp_path):
    samples = _with_crowd([make_sample(i, 2, n_boxes=[3, 2, 0, 1][i]) for i in range(4)])
    r = StoreReader(_write(tmp_path / "s.h5", samples, 2))
    for i, s in enumerate(samples):
        got, t = r.get(i), r.read_targets(i)
        np.testing.assert_array_equal(got.crowd, s.crowd)
        np.testing.assert_array_equal(t["crowd"], s.crowd)
        assert t["crowd"].dtype == bool and t["crowd"].shape == (len(s.labels),)
        np.testing.assert_array_equal(got.labels, s.labels)  # real labels kept in the store
        np.testing.assert_array_equal(got.difficult, s.difficult)
    assert r.get(0).crowd.tolist() == [False, False, True]
    with h5py.File(r.path, "r") as f:  # the layout docs/store.md describes
        assert f["samples/0000000/crowd"].dtype == bool
        assert f["samples/0000000/crowd"][()].tolist() == [False, False, True]


def test_store_without_crowd_dataset_reads_all_false(tmp_path):
    """A store written before the crowd dataset existed (same format version) still reads."""
    samples = _with_crowd([make_sample(i, 1, n_boxes=[3, 0][i]) for i in range(2)])
    path = _write(tmp_path / "s.h5", samples, 1)
    with h5py.File(path, "a") as f:
        for i in range(2):
            del f[f"samples/{i:07d}/crowd"]
        assert f.attrs["format_version"] == 1  # float32-only stores keep the version 1 layout
    r = StoreReader(path)
    for i, s in enumerate(samples):
        t = r.read_targets(i)
        assert t["crowd"].dtype == bool and t["crowd"].shape == (len(s.labels),)
        assert not t["crowd"].any() and not r.get(i).crowd.any()
        np.testing.assert_array_equal(t["labels"], s.labels)
    r.get(0).validate(num_channels=1, num_classes=3)
    item = DetectionDataset(r, "train")[0]
    np.testing.assert_array_equal(item["labels"], samples[0].labels)  # no -1 without flags


def test_crowd_flag_length_is_validated(tmp_path):
    s = make_sample(0, 1, n_boxes=2)
    s.crowd = np.array([True])
    with pytest.raises(DataError, match="2 boxes.*1 crowd"):
        s.validate()


def test_dataset_relabels_crowd_boxes_through_transforms_collate_and_loss(tmp_path):
    rng = np.random.default_rng(5)
    s = make_sample(0, 3, n_boxes=3, size=(40, 48), rng=rng)
    s.crowd = np.array([False, True, False])
    r = StoreReader(_write(tmp_path / "s.h5", [s], 3))
    flip = Compose([HorizontalFlip(p=1.0), Resize(32)])
    ds = DetectionDataset(r, "train", flip)
    item = ds[0]
    np.testing.assert_array_equal(item["labels"], [s.labels[0], CROWD_LABEL, s.labels[2]])
    expect = s.boxes.copy()
    expect[:, [0, 2]] = 48 - s.boxes[:, [2, 0]]  # the crowd box moved like the others
    np.testing.assert_allclose(item["boxes"], expect * [32 / 48, 32 / 40, 32 / 48, 32 / 40], 1e-5)
    plain = DetectionDataset(r, "train", flip, crowd_label=None)[0]
    np.testing.assert_array_equal(plain["labels"], s.labels)
    # the eval loader keeps the real labels: eval never sees -1
    eval_batch = next(iter(eval_loader(r, "train", 32, 1)))
    np.testing.assert_array_equal(eval_batch["targets"][0]["labels"].numpy(), s.labels)

    batch = detection_collate([item, item])
    assert batch["targets"][0]["labels"].tolist() == item["labels"].tolist()
    priors = default_boxes([4, 2, 1], 32, "generic")
    loc = torch.zeros(2, len(priors), 4)
    conf = torch.zeros(2, len(priors), 4)
    out = MultiBoxLoss(priors)(loc, conf, batch["targets"], (32, 32))
    assert torch.isfinite(out["loss"])

    # the full training pipeline keeps label -1 with its (moved, cropped) box
    train = DetectionDataset(r, "train", build_train_transform(32))
    seen = []
    for epoch in range(30):
        train.set_epoch(epoch)
        labels = train[0]["labels"]
        assert set(labels.tolist()) <= {CROWD_LABEL, 1, 2, 3}
        seen.extend(labels.tolist())
    assert CROWD_LABEL in seen and (np.array(seen) > 0).any()


def test_scoring_ignores_detections_on_crowd_regions(tmp_path):
    """VOC and COCO: a detection on a crowd region is neither TP nor FP; the crowd box is not
    a ground truth to find."""
    s = make_sample(0, 1, n_boxes=2, size=(40, 60))
    s.boxes = np.array([[2, 2, 20, 20], [32, 10, 56, 36]], np.float32)  # disjoint
    s.labels = np.array([1, 1])
    s.difficult = np.zeros(2, bool)
    s.crowd = np.array([False, True])
    r = StoreReader(_write(tmp_path / "s.h5", [s], 1))
    pred = {
        "index": 0,
        "boxes": np.array([[32, 10, 56, 36], [2, 2, 20, 20]], np.float32),  # crowd first
        "scores": np.array([0.95, 0.9], np.float32),
        "labels": np.array([1, 1]),
    }
    scores = score_predictions(r, [pred])
    assert scores["_voc07"]["num_gt"][0] == 1  # the crowd box is not counted
    assert scores["map50"] == pytest.approx(1.0) and scores["map50_area"] == pytest.approx(1.0)
    assert scores["coco_ap"] == pytest.approx(1.0) and scores["coco_ap50"] == pytest.approx(1.0)
    # contrast: as a false positive (no crowd box at all) the top-scored detection costs AP
    t = r.read_targets(0)
    dropped = {k: t[k][:1] for k in ("boxes", "labels", "difficult", "crowd")}
    worse, _ = score_detections([dropped], [pred], CLASSES)
    assert worse["map50"] < 0.9 and worse["coco_ap50"] < 0.9
    # and a crowd box without a detection costs no recall either
    only_real = {**pred, "boxes": pred["boxes"][1:], "scores": pred["scores"][1:]}
    only_real["labels"] = pred["labels"][1:]
    same, _ = score_detections([t], [only_real], CLASSES)
    assert same["map50"] == pytest.approx(1.0) and same["coco_ap"] == pytest.approx(1.0)
