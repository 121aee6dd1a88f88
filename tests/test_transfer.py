"""Initialising a model from a source checkpoint: first conv adapted, class head only for the
same class names (dsod_core/transfer.py), and the record of it in model.pt."""

from __future__ import annotations

import torch

from dsod_core.engine import TrainConfig, train
from dsod_core.engine.checkpoint import load_checkpoint
from dsod_core.model import build_model
from dsod_core.transfer import CLASS_HEAD_PREFIX, adapt_input_conv, load_transferred
from tests.synthetic import write_synthetic_store


def _models(seed_src: int = 1, seed_dst: int = 2, c_src: int = 3, c_dst: int = 2, k: int = 2):
    torch.manual_seed(seed_src)
    src = build_model("dsod_tiny", in_channels=c_src, num_classes=k, input_size=48)
    torch.manual_seed(seed_dst)
    dst = build_model("dsod_tiny", in_channels=c_dst, num_classes=k, input_size=48)
    return src, dst


def test_equal_class_count_other_names_reinitialises_the_class_head():
    src, dst = _models()
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    report = load_transferred(dst, src.state_dict(), same_classes=False)
    head = [k for k in fresh if k.startswith(CLASS_HEAD_PREFIX)]
    assert head and set(head) <= set(report["reinitialised"])
    state = dst.state_dict()
    for k in head:
        assert torch.equal(state[k], fresh[k]), k  # the fresh initialisation stays
        assert k not in report["copied"]
    # the rest of the network did come from the source
    assert report["adapted"] == ["backbone.stem.0.weight"]  # first conv: 3 -> 2 channels
    assert len(report["copied"]) > len(head)
    for k in report["copied"]:
        assert torch.equal(state[k], src.state_dict()[k].to(state[k].dtype)), k


def test_same_class_names_copy_the_class_head():
    src, dst = _models()
    report = load_transferred(dst, src.state_dict(), same_classes=True)
    head = [k for k in dst.state_dict() if k.startswith(CLASS_HEAD_PREFIX)]
    assert set(head) <= set(report["copied"])
    first = report["adapted"][0]
    expected = adapt_input_conv(src.state_dict()[first], 2)
    assert torch.equal(dst.state_dict()[first], expected)


def test_finetuned_run_records_the_transfer(tmp_path):
    src_store = write_synthetic_store(tmp_path / "src.h5", n=24, channels=3)
    common = dict(
        variant="dsod_tiny", input_size=48, batch_size=8, epochs=1, progress=False,
        dvclive=False, eval_every=0, augmentation={"zoom_out": False, "crop": False},
    )  # fmt: skip
    train(TrainConfig(store=str(src_store), out_dir=str(tmp_path / "src"), **common))
    # same class names ("square", "disc") in the target: the head is copied
    dst_store = write_synthetic_store(tmp_path / "dst.h5", n=24, channels=2, seed=1)
    init = str(tmp_path / "src/model.pt")
    train(TrainConfig(store=str(dst_store), out_dir=str(tmp_path / "dst"), init_weights=init,
                      **common))  # fmt: skip
    record = load_checkpoint(tmp_path / "dst/model.pt")["transfer"]
    assert any(k.startswith(CLASS_HEAD_PREFIX) for k in record["copied"])
    assert record["adapted"] == ["backbone.stem.0.weight"]
