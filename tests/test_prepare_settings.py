"""The check stage's per-dataset prepare settings (data/prepare_settings/<dataset>.json): what
prepare reads besides its DVC params, so DVC re-runs exactly the prepare whose tiling or
coverage settings changed (dvc.yaml lists the file as that stage's dependency)."""

from __future__ import annotations

import json

import yaml

from pipelines.check import write_settings
from pipelines.params import prepare_settings


def test_settings_per_dataset_follow_tiling_and_model_not_training(tmp_path):
    params = yaml.safe_load(open("params.yaml"))
    folder = tmp_path / "settings"
    (folder).mkdir()
    (folder / "gone.json").write_text("{}")  # a dataset no longer in params.yaml
    write_settings(params, folder)
    names = sorted(p.stem for p in folder.glob("*.json"))
    assert names == sorted(params["datasets"])
    before = {n: (folder / f"{n}.json").read_text() for n in names}
    rgb = json.loads(before["rgb_demo"])
    assert rgb["tiling"] is None and rgb["coverage"]["input_size"] == params["model"]["input_size"]

    # a dataset's training override changes nothing; its tiling changes its file only
    params["datasets"]["thermal_demo"]["train"] = {"lr": 0.01}
    params["datasets"]["thermal_demo"]["tiling"] = {"tile_size": 32, "overlap": 8}
    write_settings(params, folder)
    after = {n: (folder / f"{n}.json").read_text() for n in names}
    assert [n for n in names if after[n] != before[n]] == ["thermal_demo"]
    tiling = json.loads(after["thermal_demo"])["tiling"]
    assert tiling["tile_size"] == 32 and tiling["overlap"] == 8 and "keep_empty" in tiling
    # the model (coverage settings) concerns every dataset
    params["model"]["prior_fit"] = True
    assert prepare_settings(params, "rgb_demo")["coverage"]["prior_fit"] is True
