"""Which training params a run gets: the source model's own section, the layers of a target run
(`train` < `finetune` < `datasets.<name>.train` < `datasets.<name>.finetune`)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dsod_core.errors import ConfigError
from pipelines.params import build_config, train_params, validate_params

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())


def params() -> dict:
    return copy.deepcopy(SHIPPED)


def test_source_model_ignores_train_and_finetune() -> None:
    p = params()
    before = train_params(p, p["sources"][0], "pretrain", "params.yaml")
    p["train"]["epochs"] = 1
    p["train"]["augmentation"]["crop"] = True
    p["finetune"]["lr"] = 0.5
    after = train_params(p, p["sources"][0], "pretrain", "params.yaml")
    assert after == before == p["pretrain"]["train"]


def test_layers_of_a_target_run() -> None:
    p = params()
    p["train"].update(lr=0.05, epochs=50)
    p["finetune"] = {"lr": 0.02}
    p["datasets"]["depth_demo"]["train"] = {"epochs": 7, "augmentation": {"crop": True}}
    p["datasets"]["depth_demo"]["finetune"] = {"lr": 0.001}
    scratch = build_config(p, "depth_demo", "scratch", Path("m"), "s.h5")
    tuned = build_config(p, "depth_demo", "finetuned", Path("m"), "s.h5")
    other = build_config(p, "medical_demo", "finetuned", Path("m"), "s.h5")
    assert (scratch.lr, scratch.epochs) == (0.05, 7)
    assert (tuned.lr, tuned.epochs) == (0.001, 7)
    assert (other.lr, other.epochs) == (0.02, 50)
    # a nested mapping merges key by key: one augmentation setting changes, the rest stays
    assert scratch.augmentation == {**p["train"]["augmentation"], "crop": True}
    assert other.augmentation == p["train"]["augmentation"]
    validate_params(p, datasets=[])


@pytest.mark.parametrize(
    "where,value,needle",
    [
        ("datasets", {"epochz": 3}, "unknown key datasets.depth_demo.train.'epochz'; did you mean"),
        ("datasets", {"seed": 3}, "datasets.depth_demo.train: keys ['seed'] are set by the"),
        ("datasets", [1], "datasets.depth_demo.train must be a mapping"),
        ("pretrain", None, "pretrain.train must be a non-empty mapping: the source model's own"),
        ("adapter", None, "datasets.depth_demo.adapter must be a mapping ({} for the adapter's"),
        ("pretrain", {"lr": -1}, "pretrain.train.lr must be a number >= 0, got -1"),
    ],
)
def test_bad_training_section_named(where: str, value, needle: str) -> None:
    p = params()
    if where == "datasets":
        p["datasets"]["depth_demo"]["train"] = value
    elif where == "adapter":
        del p["datasets"]["depth_demo"]["adapter"]
    else:
        p["pretrain"]["train"] = value
    with pytest.raises(ConfigError) as info:
        validate_params(p, datasets=[])
    assert needle in str(info.value) and str(info.value).startswith("params.yaml: ")
