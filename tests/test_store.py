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

from dsod_core.data.store import FORMAT_VERSION, StoreReader, StoreWriter
from dsod_core.errors import DataError
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
