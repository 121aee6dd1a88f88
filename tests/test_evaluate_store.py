"""The evaluate stage reads only the store: an adapter rebuilt from it, never the raw data."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from dsod_core.data.store import StoreReader
from dsod_core.errors import CheckpointError, DataError
from pipelines.evaluate import evaluate_run
from pipelines.prepare import prepare
from tests.detect_helpers import ROOT, train_demo_model


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate_store")
    return tmp, train_demo_model("rgb", tmp, num_images=32, image_size=48, epochs=1)


def test_a_store_prepared_in_skip_mode_evaluates(rgb, tmp_path):
    tmp, dm = rgb
    data = tmp_path / "data"
    shutil.copytree(dm.root, data)
    bad = sorted((data / "Annotations").glob("*.xml"))[0]
    bad.write_text("<annotation><object><name>circle</name>")  # truncated XML
    entry = {**dm.entry, "root": str(data)}
    with pytest.raises(DataError):  # the error policy of prepare is still in force
        prepare("skipped", entry, tmp_path / "e.h5", tmp_path / "e.report.json")
    store = tmp_path / "skip.h5"
    report = prepare("skipped", entry, store, tmp_path / "skip.report.json", on_error="skip")
    assert [s["file"] for s in report["skipped"]] == [str(bad)]
    reader = StoreReader(store)
    assert reader.adapter_state["class_names"] == reader.class_names
    assert (
        bad.stem not in reader.units
        and len(reader.units) == len(list((data / "Annotations").glob("*.xml"))) - 1
    )
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["evaluate"]["split"] = "train"  # the demo's 32 images: every split holds some
    metrics = evaluate_run(dm.run, store, tmp_path / "report", params)
    assert metrics["dataset"] == "skipped" and metrics["map50"] is not None
    world = json.loads((tmp_path / "report/world/coco_results.json").read_text())
    assert isinstance(world, list)


def test_evaluate_does_not_list_the_raw_data(rgb, tmp_path):
    # The raw dataset is gone after prepare: evaluation still runs from the store alone.
    tmp, dm = rgb
    data = tmp_path / "data"
    shutil.copytree(dm.root, data)
    store = tmp_path / "s.h5"
    prepare("moved", {**dm.entry, "root": str(data)}, store, tmp_path / "s.report.json")
    shutil.rmtree(data)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    metrics = evaluate_run(dm.run, store, tmp_path / "report", params)
    assert metrics["split"] == "test" and (tmp_path / "report/matches.npz").is_file()


def test_study_flag_skips_run_folders_the_params_no_longer_call_for(tmp_path, capsys):
    """``--study``: a run folder left by an earlier ``train_fractions`` (scratch-f0.5) or
    source is named and skipped; the study's own runs are all kept."""
    from pipelines.evaluate import run_dirs, study_runs

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train_fractions"] = [1.0]
    params["sources"] = ["rgb_demo"]
    root = tmp_path / "models" / "depth_demo"
    names = ["scratch-f1.0", "finetuned-rgb_demo-f1.0", "matched-rgb_demo-f1.0"]
    for name in [*names, "scratch-f0.5", "finetuned-gone-f1.0"]:
        for seed in (0, 1):
            run = root / name / f"seed-{seed}"
            run.mkdir(parents=True)
            (run / "config.json").write_text("{}")
            (run / "model.pt").write_bytes(b"")
    kept = study_runs(root, run_dirs(root), params)
    assert sorted({p.parent.name for p in kept}) == sorted(names)
    assert len(kept) == 2 * len(names)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("not a run of the params' study" in line for line in err)
    assert "scratch-f0.5 (2 run(s))" in err[1] and "finetuned-gone-f1.0" in err[0]
    params["targets"], params["train_fractions"] = ["depth_demo"], [0.25]
    with pytest.raises(CheckpointError, match="none of the study's runs"):
        study_runs(root, run_dirs(root), params)
