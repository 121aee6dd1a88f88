"""ImageNet checkpoint sources in the study (params ``checkpoints``, docs/compare_imagenet.md):
validation, the reference stage (``pipelines.train NAME --init checkpoint``), the fine-tuned
run's budget record and the report's budget text. Fast: no training (the whole path through
``dvc repro`` is tests/test_pipeline_checkpoint.py).

The checkpoint files are written here with torchvision's and timm's exact keys and shapes;
each large tensor is an expanded view of a small random one, so a full-shape VGG16 file is a
few kB on disk (``torch.save`` keeps the view).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from dsod_core.backbone_init import KEY_MAP, check_backbone_checkpoint, expected_shapes
from dsod_core.errors import CheckpointError, ConfigError
from dsod_core.report.budget import budget_words, row_budget
from dsod_core.report.compare import checkpoint_lines
from pipelines import train as train_stage
from pipelines.params import checkpoint_entry, study_axes, validate_params

ROOT = Path(__file__).resolve().parents[1]
IMAGENET_PASSES = 90 * 1_281_167  # 115,305,030: the declared budget of the docs' example


def imagenet_vgg16(fmt: str, seed: int = 0, in_channels: int = 3) -> dict[str, torch.Tensor]:
    """Random weights with the exact keys and shapes of an ImageNet VGG16 in layout ``fmt``
    (plus its 1000-class classifier); every tensor an expanded view of random values along
    its first axis."""
    g = torch.Generator().manual_seed(seed)
    shapes = dict(expected_shapes(fmt))
    first = shapes["features.0.weight"]
    shapes["features.0.weight"] = (first[0], in_channels, *first[2:])
    head = "classifier.6" if fmt == "torchvision" else "head.fc"
    shapes[f"{head}.weight"], shapes[f"{head}.bias"] = (1000, 4096), (1000,)
    state = {}
    for key, shape in shapes.items():
        base = torch.randn(shape[0], *[1] * (len(shape) - 1), generator=g) * 0.05
        state[key] = base.expand(*shape)
    return state


def write_imagenet(path: Path, fmt: str = "torchvision", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = imagenet_vgg16(fmt, seed)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def shipped() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def params(shipped, tmp_path) -> dict:
    """The shipped params with a vgg16 model and one torchvision checkpoint source."""
    p = copy.deepcopy(shipped)
    p["model"].update(variant="ssd300_vgg16_dense", input_size=32)
    p["checkpoints"] = {
        "imagenet": {
            "path": str(write_imagenet(tmp_path / "vgg16-397923af.pth")),
            "format": "torchvision",
            "image_passes": IMAGENET_PASSES,
            "note": "random weights written by the test",
        }
    }
    return p


def refused(params: dict, *needles: str) -> str:
    with pytest.raises(ConfigError) as info:
        validate_params(params, "params.yaml", datasets=[])
    message = str(info.value)
    assert "\n" not in message and message.startswith("params.yaml: "), message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def test_shipped_params_have_no_checkpoint_and_the_axes_list_them(shipped, params):
    assert shipped["checkpoints"] == {}
    validate_params(shipped, "params.yaml", datasets=[])
    assert study_axes(shipped)["checkpoints"] == []
    validate_params(params, "params.yaml", datasets=[])
    assert study_axes(params)["checkpoints"] == ["imagenet"]
    entry = checkpoint_entry(params, "imagenet")
    assert (entry.format, entry.image_passes) == ("torchvision", 115_305_030)


def test_refusals_name_the_key(params, tmp_path):
    p = copy.deepcopy(params)
    p["model"]["variant"] = "dsod_tiny"
    refused(p, "backbone vgg16", "'dsod_tiny'", "imagenet")
    p = copy.deepcopy(params)
    p["checkpoints"]["imagenet"]["path"] = str(tmp_path / "absent.pth")
    refused(p, "checkpoints.imagenet.path", "absent.pth", "docs/compare_imagenet.md")
    p = copy.deepcopy(params)
    p["checkpoints"]["imagenet"]["format"] = "caffe"
    refused(p, "checkpoints.imagenet.format", "caffe")
    p = copy.deepcopy(params)
    del p["checkpoints"]["imagenet"]["image_passes"]
    refused(p, "checkpoints.imagenet.image_passes")
    p = copy.deepcopy(params)
    p["checkpoints"]["rgb_demo"] = p["checkpoints"].pop("imagenet")
    refused(p, "checkpoints", "dataset names")
    p = copy.deepcopy(params)
    p["comparison"]["primary"].update(source="imagenet", against="matched")
    refused(p, "comparison.primary.against", "no compute-matched scratch arm")
    p["comparison"]["primary"]["against"] = "scratch"
    validate_params(p, "params.yaml", datasets=[])  # a checkpoint may be the primary source
    p["comparison"]["primary"]["source"] = "nowhere"
    refused(p, "comparison.primary.source", "'nowhere'")
    p = copy.deepcopy(params)
    p["sources"] = [{"checkpoint": p["checkpoints"]["imagenet"]["path"], "format": "torchvision"}]
    refused(p, "sources must be a list of datasets", "`checkpoints:`", "compare_imagenet.md")
    with pytest.raises(ConfigError, match=r"unknown checkpoint 'other'.*\['imagenet'\]"):
        checkpoint_entry(params, "other")


def test_sources_may_be_empty_when_a_checkpoint_is_the_source(params, shipped):
    p = copy.deepcopy(params)
    p["sources"] = []
    p["comparison"]["primary"].update(source="imagenet", against="scratch")
    validate_params(p, "params.yaml", datasets=[])
    assert study_axes(p)["sources"] == []
    p = copy.deepcopy(shipped)
    p["sources"] = []
    refused(p, "sources", "so is checkpoints")


def _reference(params: dict, tmp_path: Path, name: str = "imagenet") -> tuple[Path, int]:
    """Run the reference stage; (its out-dir, its exit status)."""
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    out = tmp_path / "models" / "pretrain" / name
    args = ["--params", str(params_path), "--init", "checkpoint", "--out-dir", str(out), name]
    with pytest.raises(SystemExit) as info:
        train_stage.main(args)
    return out, info.value.code


def test_reference_stage_records_the_file_and_its_declared_budget(params, tmp_path):
    out, code = _reference(params, tmp_path)
    assert code == 0
    ref = json.loads((out / "checkpoint.json").read_text())
    file = Path(params["checkpoints"]["imagenet"]["path"])
    assert ref["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert (ref["format"], ref["image_passes"], ref["in_channels"]) == (
        "torchvision",
        IMAGENET_PASSES,
        3,
    )
    assert ref["unused"] == ["classifier.6.bias", "classifier.6.weight"]
    assert ref["tensors"] == len(KEY_MAP["torchvision"]) + 2
    # what budgets read: history.json's image passes, as for a trained source model
    assert train_stage.image_passes(out) == IMAGENET_PASSES
    # a fine-tuned run from it is charged them and starts from the file itself
    args = SimpleNamespace(init="finetuned", init_weights=str(out), match_dir=None)
    assert json.loads((out / "history.json").read_text())["budget"]["declared"] is True
    budget = train_stage.run_budget(args, study_axes(params), seed=1)
    assert budget["source_model"] == str(file) and budget["source_seed"] is None
    assert budget["source_image_passes"] == IMAGENET_PASSES
    assert (budget["source_kind"], budget["source_format"]) == ("checkpoint", "torchvision")
    with pytest.raises(ConfigError, match="no compute-matched scratch arm"):
        train_stage.run_budget(SimpleNamespace(**{**vars(args), "init": "matched"}), {}, 0)
    # the pre-training check: the source is in the params' checkpoints (whose validation
    # requires a VGG16 trunk) and the file is unchanged
    train_stage.check_reference(ref, params, "params.yaml")
    with pytest.raises(ConfigError, match="'imagenet' is not in checkpoints"):
        train_stage.check_reference(ref, {**params, "checkpoints": {}}, "params.yaml")
    dsod = {**params, "model": {**params["model"], "variant": "dsod_tiny"}}
    with pytest.raises(ConfigError, match="backbone vgg16"):
        validate_params(dsod, "params.yaml", datasets=[])
    write_imagenet(file, seed=1)
    with pytest.raises(CheckpointError, match="changed since its reference"):
        train_stage.check_reference(ref, params, "params.yaml")


def test_reference_stage_refuses_a_file_of_the_other_layout(params, tmp_path, capsys):
    p = copy.deepcopy(params)
    p["checkpoints"]["imagenet"]["format"] = "timm"
    out, code = _reference(p, tmp_path)
    err = capsys.readouterr().err.strip()
    assert code == 1 and not out.exists()
    assert err.startswith("error: ") and "\n" not in err
    assert "not a timm ImageNet VGG16 checkpoint" in err and "set format torchvision" in err
    with pytest.raises(CheckpointError, match="the file has the torchvision layout"):
        check_backbone_checkpoint(p["checkpoints"]["imagenet"]["path"], "timm")
    timm = write_imagenet(tmp_path / "timm" / "model.safetensors", "timm")
    found = check_backbone_checkpoint(timm, "timm")
    assert found["unused"] == ["head.fc.bias", "head.fc.weight"]


def test_report_states_the_declared_budget():
    detail = {
        "image_passes": 96,
        "global_batch": 4,
        "budget": {
            "source_seed": None,
            "source_model": "/weights/vgg16-397923af.pth",
            "source_image_passes": IMAGENET_PASSES,
            "source_kind": "checkpoint",
            "source_format": "torchvision",
            "source_sha256": "ab" * 32,
            "source_note": "torchvision ImageNet VGG16",
        },
    }
    row = {"source": "imagenet", **row_budget(detail, "finetuned")}
    assert row["total_image_passes"] == IMAGENET_PASSES + 96
    assert row["source_checkpoint"]["format"] == "torchvision"
    assert "source_checkpoint" not in row_budget({**detail, "budget": {}}, "finetuned")
    contrast = {
        "against": "scratch",
        "budget": {
            "finetuned": float(IMAGENET_PASSES + 96),
            "finetuned_source": float(IMAGENET_PASSES),
            "against": 96.0,
            "source_kind": "checkpoint",
        },
    }
    assert budget_words(contrast) == (
        "fine-tuned 115,305,126 (checkpoint, declared 115,305,030 + own 96) vs scratch 96 "
        "image passes"
    )
    lines = checkpoint_lines([row, {**row, "seed": 1}, {"source": "rgb_demo"}])
    assert lines[1] == "## ImageNet checkpoint sources"
    assert lines[-1] == (
        "| imagenet | torchvision | `/weights/vgg16-397923af.pth` | abababababab "
        "| 115,305,030 | torchvision ImageNet VGG16 |"
    )
    assert checkpoint_lines([{"source": "rgb_demo"}]) == []


def test_ssd300_preset_gives_caffe_ssds_recipe_from_imagenet_and_scratch(shipped, tmp_path):
    """docs/presets/ssd300_vgg16_voc.yaml over params.yaml and the voc0712 preset."""
    from dsod_core.engine.trainer import lr_factor
    from pipelines.params import build_config
    from tests.test_presets import merge

    presets = ROOT / "docs" / "presets"
    params = merge(shipped, yaml.safe_load((presets / "voc0712.yaml").read_text()))
    params = merge(params, yaml.safe_load((presets / "ssd300_vgg16_voc.yaml").read_text()))
    entry = params["checkpoints"]["imagenet_vgg16"]
    assert (entry["format"], entry["image_passes"]) == ("torchvision", 90 * 1_281_167)
    entry["path"] = str(write_imagenet(tmp_path / "vgg16-397923af.pth"))  # not shipped
    validate_params(params, "docs/presets/ssd300_vgg16_voc.yaml", datasets=[])
    assert study_axes(params)["sources"] == [] and params["targets"] == ["voc0712"]
    for init in ("scratch", "finetuned"):
        c = build_config(params, "voc0712", init, Path("models/x"), "store.h5")
        assert (c.variant, c.input_size) == ("ssd300_vgg16", 300)
        assert c.batch_size * c.accumulate * c.nproc_per_node == 32
        assert (c.iterations, c.lr, c.momentum, c.weight_decay) == (120_000, 0.001, 0.9, 0.0005)
        factors = [lr_factor(s, c.iterations, c) for s in (79_999, 80_000, 99_999, 100_000)]
        assert factors == pytest.approx([1.0, 0.1, 0.1, 0.01])  # x0.1 at 80k and 100k
        assert c.augmentation["crop"] and c.augmentation["max_zoom"] == 4.0
