"""Ignite training: learning, determinism, kill-and-resume, distributed equivalence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dsod_core.engine import TrainConfig, load_trained_model, train
from dsod_core.engine.checkpoint import checkpoint_files, load_checkpoint
from dsod_core.engine.sampler import StepBatchSampler
from dsod_core.model import build_model
from tests.synthetic import write_synthetic_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_store(tmp_path_factory.mktemp("engine") / "s.h5", n=64, size=48)


def _cfg(store, out, **kw):
    base = dict(
        store=str(store),
        out_dir=str(out),
        variant="dsod_tiny",
        input_size=48,
        batch_size=8,
        epochs=2,
        lr=0.05,
        warmup_steps=4,
        progress=False,
        dvclive=False,
        eval_every=0,
        augmentation={"zoom_out": False, "crop": False},
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(path):
    return load_checkpoint(path)["model"]


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sampler_same_micro_batches_for_any_world_size():
    one = StepBatchSampler(50, 4, accumulate=2, world_size=1, seed=3)
    r0 = StepBatchSampler(50, 4, accumulate=1, world_size=2, rank=0, seed=3)
    r1 = StepBatchSampler(50, 4, accumulate=1, world_size=2, rank=1, seed=3)
    for s in (one, r0, r1):
        s.set_epoch(5)
    singles = list(one)
    assert len(singles) == 12 and len(one) == 12 and len(list(r0)) == 6
    assert singles[0::2] == list(r0) and singles[1::2] == list(r1)
    one.set_epoch(6)
    assert list(one) != singles


def test_same_seed_same_weights(store, tmp_path):
    train(_cfg(store, tmp_path / "a", epochs=1))
    train(_cfg(store, tmp_path / "b", epochs=1))
    _assert_identical(_weights(tmp_path / "a/model.pt"), _weights(tmp_path / "b/model.pt"))
    train(_cfg(store, tmp_path / "c", epochs=1, seed=1))
    c = _weights(tmp_path / "c/model.pt")
    a = _weights(tmp_path / "a/model.pt")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_checkpoints_plain_and_two_kept(store, tmp_path):
    train(_cfg(store, tmp_path / "r", epochs=3))
    files = checkpoint_files(tmp_path / "r/checkpoints")
    assert [f.name for f in files] == ["ckpt_epoch0002.pt", "ckpt_epoch0003.pt"]
    state = torch.load(files[-1], weights_only=True)  # plain dict: loads with weights_only
    assert set(state) == {"model", "optimizer", "scheduler", "scaler", "trainer", "run"}
    assert set(state["run"]) >= {"history", "torch_rng", "train_seconds", "config"}
    assert [h["epoch"] for h in state["run"]["history"]] == [1, 2, 3]
    model, meta = load_trained_model(tmp_path / "r/model.pt")
    assert meta["class_names"] == ["square", "disc"] and meta["in_channels"] == 2
    assert model.default_boxes.shape[1] == 4


def _launch(config: TrainConfig, cfg_path: Path, *extra: str) -> subprocess.Popen:
    cfg_path.write_text(yaml.safe_dump(config.to_dict()))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "dsod_core.engine", str(cfg_path), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_sigkill_and_resume_bitwise_identical(store, tmp_path):
    cfg = _cfg(store, tmp_path / "ref", epochs=4)
    train(cfg)
    ref = _weights(tmp_path / "ref/model.pt")

    killed = _cfg(store, tmp_path / "killed", epochs=4)
    proc = _launch(killed, tmp_path / "k.yaml")
    ckpt_dir = tmp_path / "killed/checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpt_dir / "ckpt_epoch0002.pt").exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed/model.pt").exists()

    resumed = _launch(killed, tmp_path / "k.yaml", "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    _assert_identical(ref, _weights(tmp_path / "killed/model.pt"))
    hist = json.loads((tmp_path / "killed/history.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]


def test_two_gloo_processes_match_one_process(store, tmp_path):
    one = _cfg(store, tmp_path / "one", epochs=1, batch_size=4, accumulate=2)
    two = _cfg(
        store,
        tmp_path / "two",
        epochs=1,
        batch_size=4,
        accumulate=1,
        backend="gloo",
        nproc_per_node=2,
    )
    train(one)
    train(two)
    a = load_checkpoint(tmp_path / "one/model.pt")["model"]
    b = load_checkpoint(tmp_path / "two/model.pt")["model"]
    # Learnable weights agree; BN running statistics are per process (rank 0's are saved).
    model, _ = load_trained_model(tmp_path / "one/model.pt")
    learnable = {n for n, _ in model.named_parameters()}
    for k in learnable:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    # and training really moved them away from the (seeded, shared) initialisation
    torch.manual_seed(0)
    init = build_model("dsod_tiny", in_channels=2, num_classes=2, input_size=48).state_dict()
    assert any(not torch.allclose(a[k], init[k]) for k in learnable)


def test_training_learns(tmp_path):
    store = write_synthetic_store(
        tmp_path / "learn.h5",
        n=160,
        size=48,
        seed=1,
        splits=(0.75, 0.25),
        object_scale=(0.45, 0.6),
    )
    hist = train(
        _cfg(
            store,
            tmp_path / "learn",
            epochs=25,
            batch_size=8,
            lr=0.05,
            warmup_steps=10,
            eval_every=25,
            dvclive=True,
            augmentation={"zoom_out": False, "crop": False, "flip": True},
        )
    )
    losses = [h["loss"] for h in hist["history"]]
    assert losses[-1] < 0.6 * losses[0]
    assert hist["history"][-1]["val_map50"] > 0.5, hist["history"][-1]
    assert (tmp_path / "learn/dvclive/metrics.json").exists()


def test_iterations_stop_exactly(store, tmp_path):
    """``iterations`` optimiser steps, not the epoch count rounded up: 7 steps of batch 8 with
    accumulate 2 on a store whose epoch holds fewer, ending inside an epoch."""
    config = _cfg(store, tmp_path / "it", iterations=7, accumulate=2, batch_size=4)
    result = train(config)
    assert result["steps"] == 7
    state = load_checkpoint(checkpoint_files(tmp_path / "it/checkpoints")[-1])
    assert state["trainer"]["iteration"] == 7 * 2  # engine iterations = micro-batches
    assert state["scheduler"]["last_epoch"] == 7  # optimiser steps taken
    history = result["history"]
    assert history and "val_map50" in history[-1]  # the partial last epoch was closed
