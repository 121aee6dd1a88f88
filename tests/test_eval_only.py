"""A dataset with only a test split: prepared into an evaluation-only store, refused for
training, and scored with the trained model's own normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dsod_core.data.store import StoreReader
from dsod_core.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from dsod_core.engine import TrainConfig, train
    from modalities.rgb.demo import write_demo
    from pipelines.prepare import prepare

    tmp = tmp_path_factory.mktemp("eval_only")
    root = tmp / "voc"
    demo = write_demo(root, num_images=30, image_size=48, seed=1)
    code = str(ROOT / "modalities/rgb")
    full = {"modality": "rgb", "root": str(root), "code": code, "adapter": demo}
    new = {
        "modality": "rgb",
        "root": str(root),
        "code": code,
        "adapter": {**demo, "train_sets": [], "val_sets": [], "test_sets": ["test"]},
    }
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {"full": full, "new": new}
    params["sources"] = ["full"]
    params["targets"] = ["full"]
    params["comparison"]["primary"].update(target="full", source="full")
    prepare("full", full, tmp / "full.h5", tmp / "full.report.json")
    report = prepare("new", new, tmp / "new.h5", tmp / "new.report.json")
    run = tmp / "models/full-scratch"
    train(
        TrainConfig(
            store=str(tmp / "full.h5"),
            out_dir=str(run),
            variant="dsod_tiny",
            input_size=48,
            epochs=2,
            batch_size=4,
            progress=False,
            dvclive=False,
            eval_every=0,
        )
    )
    (run / "config.json").write_text(json.dumps({"dataset": "full", "init": "scratch"}))
    return tmp, params, report, run


def test_test_only_dataset_is_prepared_with_a_warning(trained):
    tmp, _, report, _ = trained
    assert report["status"] == "ok"
    assert report["samples"]["train"] == 0 and report["samples"]["test"] > 0
    assert any("evaluation-only store" in w["reason"] for w in report["warnings"])
    reader = StoreReader(tmp / "new.h5")
    # no statistics without a train split: mean 0, std 1 (a model brings its own)
    assert (reader.mean == 0).all() and (reader.std == 1).all()
    assert not (StoreReader(tmp / "full.h5").mean == 0).all()
    assert len(reader.split_indices("test")) == report["samples"]["test"]


def test_training_on_it_is_refused(trained, tmp_path):
    from dsod_core.engine import TrainConfig, train

    tmp, _, _, _ = trained
    with pytest.raises(DataError, match="no 'train' samples \\(an evaluation-only store\\)"):
        train(TrainConfig(store=str(tmp / "new.h5"), out_dir=str(tmp_path / "r"), epochs=1))
    assert not (tmp_path / "r" / "model.pt").exists()


def test_scored_like_the_runs_own_test_split(trained, monkeypatch):
    """The same test images in the run's own store and in the evaluation-only store (whose
    statistics are 0 / 1) give the same scores: the model's normalisation is used."""
    from pipelines.evaluate import evaluate_run

    tmp, params, _, run = trained
    monkeypatch.chdir(tmp)
    own = evaluate_run(run, tmp / "full.h5", tmp / "reports/own", params)
    new = evaluate_run(run, tmp / "new.h5", tmp / "reports/new", params, dataset="new")
    assert new["dataset"] == "new" and own["dataset"] == "full"
    assert new["num_images"] == own["num_images"] > 0
    for key in ("map50", "map50_area", "coco_ap"):
        assert new[key] == pytest.approx(own[key], abs=1e-9), key
    a = json.loads((tmp / "reports/own/predictions_coco.json").read_text())
    b = json.loads((tmp / "reports/new/predictions_coco.json").read_text())
    # scores that normalisation would change (a 2-epoch model's mAP may be 0 on some CPUs,
    # but it always predicts boxes above the 0.01 score threshold)
    assert len(a) == len(b) > 10
    assert [d["score"] for d in a] == pytest.approx([d["score"] for d in b], abs=1e-6)


@pytest.mark.parametrize("modality", ["depth", "medical", "multispectral"])
def test_hash_split_adapters_accept_an_evaluation_only_split(modality: str) -> None:
    from dsod_core.errors import ConfigError
    from modalities import get_adapter

    params = get_adapter(modality).Params
    base = {"annotations_csv": "annotations.csv"} if modality == "medical" else {}
    p = params.parse({**base, "val_fraction": 0.0, "test_fraction": 1.0}, cross_check=False)
    assert p.test_fraction == 1.0
    p.check()  # all to test: an evaluation-only dataset
    with pytest.raises(ConfigError, match="val_fraction"):
        params.parse({**base, "val_fraction": 0.5, "test_fraction": 0.6}, cross_check=False).check()
