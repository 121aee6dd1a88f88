"""`dvc repro` with an ImageNet checkpoint source beside a project source.

docs/compare_imagenet.md.

A temporary git + DVC repository with the shipped dvc.yaml: the medical demo (1 channel) is
the target, the RGB demo a project source and ``imagenet`` a torchvision-layout VGG16 file
written by the test with random weights, outside the repository. The model is the dense
SSD300 VGG16 variant at 32 px (the plain one needs >= 268 px). Checks that the checkpoint's
fine-tuned arm trains from the file (the transfer report in model.pt), is charged the
declared image passes and is compared with scratch (no matched arm) in the same report as the
project source, and that a new checkpoint file re-runs its stages.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.test_checkpoint_sources import IMAGENET_PASSES, write_imagenet
from tests.test_pipeline import ROOT, _run, pipeline_repo

pytestmark = pytest.mark.slow
TARGET = "medical_demo"
RUN = f"models/{TARGET}/finetuned-imagenet-f1.0"


def mixed_params(checkpoint: Path) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"].update(image_size=48, num_images=24, modalities=["rgb", "medical"])
    params["datasets"] = {k: v for k, v in params["datasets"].items() if k in ("rgb_demo", TARGET)}
    params.update(targets=[TARGET], sources=["rgb_demo"], seeds=[0, 1], source_seeds=[0])
    params["train_fractions"] = [1.0]
    params["checkpoints"] = {
        "imagenet": {
            "path": str(checkpoint),  # absolute, outside the repository
            "format": "torchvision",
            "image_passes": IMAGENET_PASSES,
            "note": "random weights written by the test",
        }
    }
    tiny = dict(epochs=1, batch_size=4, eval_every=1, progress=False, warmup_steps=2)
    params["train"].update(tiny)
    params["pretrain"]["train"].update(tiny)
    params["model"].update(variant="ssd300_vgg16_dense", input_size=32)
    params["evaluate"]["pictures"] = 1
    params["comparison"]["primary"] = {
        "target": TARGET, "source": "imagenet", "fraction": 1.0, "against": "scratch"
    }  # fmt: skip
    return params


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    checkpoint = write_imagenet(tmp_path_factory.mktemp("weights") / "vgg16-397923af.pth")
    repo = tmp_path_factory.mktemp("pipeline_checkpoint")
    first = pipeline_repo(repo, mixed_params(checkpoint), "mixed sources")
    return repo, first, checkpoint


def test_checkpoint_arm_trains_from_the_file(repo):
    repo, first, checkpoint = repo
    stages = ("pretrain_checkpoint@imagenet", f"train_finetuned_checkpoint@{TARGET}-imagenet-1.0")
    for stage in stages:
        assert f"Running stage '{stage}'" in first.stdout, stage
    assert "train_matched@medical_demo-imagenet" not in first.stdout  # no matched arm for it
    ref = json.loads((repo / "models/pretrain/imagenet/checkpoint.json").read_text())
    assert ref["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert ref["image_passes"] == IMAGENET_PASSES
    for seed in (0, 1):
        run = repo / RUN / f"seed-{seed}"
        saved = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
        transfer = saved["transfer"]
        # 1-channel target: the first conv adapted, the other 12 convs copied, fc6/fc7 decimated
        assert "backbone.features.0.weight" in transfer["adapted"]
        assert {"backbone.fc6.weight", "backbone.fc7.weight"} <= set(transfer["adapted"])
        assert "backbone.features.28.weight" in transfer["copied"]
        assert len(transfer["copied"]) + len(transfer["adapted"]) == 30
        assert transfer["unused"] == ["classifier.6.bias", "classifier.6.weight"]
        assert any(k.startswith("head.") for k in transfer["reinitialised"])
        budget = json.loads((run / "config.json").read_text())["budget"]
        assert budget["source_kind"] == "checkpoint"
        assert (budget["source_image_passes"], budget["source_sha256"]) == (
            IMAGENET_PASSES,
            ref["sha256"],
        )


def test_one_report_holds_both_kinds_of_source_with_their_budgets(repo):
    repo, _, _ = repo
    report = json.loads((repo / "reports/compare.json").read_text())
    assert set(report) == {"runs", "aggregates", "differences", "primary", "sources"}
    keys = [(d["source"], d["against"]) for d in report["differences"]]
    assert keys == [
        ("rgb_demo", "scratch"),
        ("rgb_demo", "matched"),
        ("imagenet", "scratch"),
    ], keys
    by_key = {(d["source"], d["against"]): d for d in report["differences"]}
    primary = by_key[("imagenet", "scratch")]
    assert primary["primary"] and not by_key[("rgb_demo", "matched")]["primary"]
    runs = [r for r in report["runs"] if r["source"] == "imagenet"]
    assert len(runs) == 2
    for r in runs:
        assert r["source_image_passes"] == IMAGENET_PASSES
        assert r["total_image_passes"] == IMAGENET_PASSES + r["image_passes"]
    own = sum(r["image_passes"] for r in runs) / 2
    assert primary["budget"]["finetuned"] == pytest.approx(IMAGENET_PASSES + own)
    assert primary["budget"]["source_kind"] == "checkpoint"
    assert by_key[("rgb_demo", "scratch")]["budget"]["source_kind"] == "model"
    assert [s["dataset"] for s in report["sources"]] == ["rgb_demo"]  # project models only
    md = (repo / "reports/compare.md").read_text()
    assert "## ImageNet checkpoint sources" in md
    assert f"(checkpoint, declared {IMAGENET_PASSES:,} + own" in md
    assert "| target \\ source | rgb_demo | imagenet |" in md
    assert "(vs scratch)" in md  # the checkpoint's cell: no matched arm
    summary = json.loads((repo / "results/summary.json").read_text())[TARGET]
    assert {"finetuned_from_imagenet", "difference_from_imagenet", "primary"} <= set(summary)


def test_a_new_checkpoint_file_reruns_its_stages(repo):
    repo, _, checkpoint = repo
    assert _run(["dvc", "status"], repo).stdout.strip().endswith("up to date.")
    write_imagenet(checkpoint, seed=7)
    status = _run(["dvc", "status"], repo).stdout
    assert "pretrain_checkpoint@imagenet" in status and str(checkpoint) in status
    _run(["dvc", "repro", "pretrain_checkpoint@imagenet"], repo)
    status = _run(["dvc", "status"], repo).stdout
    assert f"train_finetuned_checkpoint@{TARGET}-imagenet-1.0" in status, status
    assert "train_scratch" not in status and "pretrain@rgb_demo" not in status, status
