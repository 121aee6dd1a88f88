"""The training budget: ``train.patience`` stops a real Ignite run on a validation plateau,
``train.keep_best`` writes the best evaluation's weights into model.pt, and with both off the
run is the one without them (same weights, same checkpoint contents)."""

from __future__ import annotations

import pytest
import torch

from dsod_core.engine import trainer as trainer_module
from dsod_core.engine.checkpoint import checkpoint_files, load_checkpoint
from dsod_core.engine.config import TrainConfig
from dsod_core.engine.trainer import train
from dsod_core.errors import ConfigError
from tests.synthetic import write_synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_store(
        tmp_path_factory.mktemp("budget") / "s.h5", n=24, size=32, splits=(0.67, 0.33)
    )


def _cfg(store, out, **kw):
    base = dict(
        store=str(store),
        out_dir=str(out),
        variant="dsod_tiny",
        input_size=32,
        batch_size=8,
        epochs=6,
        lr=0.05,
        warmup_steps=2,
        progress=False,
        dvclive=False,
        eval_every=1,
        threads=1,
        keep_checkpoints=10,
        augmentation={"zoom_out": False, "crop": False},
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def scripted_val(monkeypatch):
    """Validation mAP@0.5 per evaluation from a script (the rest of the run is real): the
    plateau is then known, not left to a tiny model's noise."""
    script: list[float] = []
    calls = []

    def fake(config, model, reader, device, split):
        calls.append(split)
        value = script[min(len(calls), len(script)) - 1]
        return {"map50": value, "coco_ap": value / 2}

    monkeypatch.setattr(trainer_module, "evaluate_split", fake)
    return script


def _weights(path):
    return load_checkpoint(path)["model"]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stops_on_plateau_and_keeps_best(store, tmp_path, scripted_val):
    scripted_val[:] = [0.1, 0.3, 0.2, 0.3, 0.9, 0.9]  # best at epoch 2; 3 and 4 no better
    out = tmp_path / "r"
    result = train(_cfg(store, out, patience=2, keep_best=True))
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3, 4]  # never reached 0.9
    stop = result["stopping"]
    assert stop["reason"] == "patience" and stop["epochs_run"] == 4 and stop["epochs_planned"] == 6
    assert stop["best_epoch"] == 2 and stop["best_val_map50"] == 0.3 and stop["weights"] == "best"
    assert "epoch 2" in stop["why"] and "after epoch 4 of 6" in stop["why"]
    final = _weights(out / "model.pt")
    by_epoch = {int(p.stem[-4:]): p for p in checkpoint_files(out / "checkpoints")}
    assert _same(final, _weights(by_epoch[2]))  # the best evaluation's weights
    assert not _same(final, _weights(by_epoch[4]))  # not the last epoch's
    assert [p.name for p in (out / "checkpoints/best").iterdir()] == ["best_epoch0002.pt"]
    state = torch.load(by_epoch[4], weights_only=True)
    assert state["stopper"]["counter"] == 2 and state["stopper"]["best_score"] == 0.3
    assert load_checkpoint(out / "model.pt")["stopping"]["best_epoch"] == 2


def test_improving_run_is_not_stopped(store, tmp_path, scripted_val):
    scripted_val[:] = [0.1, 0.2, 0.2, 0.3]  # one tie: below patience 2
    result = train(_cfg(store, tmp_path / "r", epochs=4, patience=2))
    stop = result["stopping"]
    assert len(result["history"]) == 4 and stop["reason"] == "end" and stop["weights"] == "last"
    assert stop["best_epoch"] == 4


def test_default_path_unchanged(store, tmp_path):
    """Off (the default), the run is the run without the budget; a patience that never
    triggers leaves the weights and the loss curve bitwise the same."""
    plain = train(_cfg(store, tmp_path / "a", epochs=2))
    assert plain["stopping"]["reason"] == "end" and plain["stopping"]["weights"] == "last"
    state = torch.load(checkpoint_files(tmp_path / "a/checkpoints")[-1], weights_only=True)
    assert set(state) == {"model", "optimizer", "scheduler", "scaler", "trainer", "run"}
    assert not (tmp_path / "a/checkpoints/best").exists()
    patient = train(_cfg(store, tmp_path / "b", epochs=2, patience=50))
    assert _same(_weights(tmp_path / "a/model.pt"), _weights(tmp_path / "b/model.pt"))
    assert [h["loss"] for h in plain["history"]] == [h["loss"] for h in patient["history"]]


def test_patience_needs_evaluations(store, tmp_path):
    with pytest.raises(ConfigError, match="patience"):
        TrainConfig.from_dict(
            {"store": str(store), "out_dir": str(tmp_path), "patience": 3, "eval_every": 0}
        )
    with pytest.raises(ConfigError, match="patience"):
        TrainConfig.from_dict({"store": str(store), "out_dir": str(tmp_path), "patience": 0})
