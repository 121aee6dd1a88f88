"""The paper presets (docs/presets/*.yaml), merged into the shipped params.yaml as their header
says, give the paper's recipe (docs/dsod.md §6) and nothing of the CPU demo recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.params import build_config, validate_params

ROOT = Path(__file__).resolve().parents[1]

# docs/dsod.md §6, written out: VOC 07+12 and COCO.
PAPER = {
    "voc0712": {"iterations": 100_000, "lr_drops_at": [20_000, 40_000, 60_000, 80_000]},
    "coco": {"iterations": 320_000, "lr_drops_at": [80_000, 140_000, 200_000, 260_000]},
}
AUGMENTATION = {  # SSD's: photometric (RGB), zoom-out up to 4x at p 0.5, min-IoU crop, flip
    "photometric": True,
    "zoom_out": 0.5,
    "max_zoom": 4.0,
    "crop": True,
    "flip": True,
    "intensity_scale": None,
    "intensity_shift": None,
    "noise_std": 0.0,
}


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Nested mappings merge key by key; lists and values replace."""
    out = dict(base)
    for k, v in patch.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_gives_the_paper_recipe(name: str) -> None:
    params = merge(
        yaml.safe_load((ROOT / "params.yaml").read_text()),
        yaml.safe_load((ROOT / f"docs/presets/{name}.yaml").read_text()),
    )
    assert params["sources"] == [name]
    dataset = name
    validate_params(params, f"docs/presets/{name}.yaml", datasets=[])
    paper = PAPER[name]
    for init in ("pretrain", "scratch"):
        c = build_config(params, dataset, init, Path("models/x"), "store.h5")
        assert c.batch_size * c.accumulate * c.nproc_per_node == 128
        assert c.iterations == paper["iterations"]
        assert (c.lr, c.momentum, c.weight_decay, c.lr_gamma) == (0.1, 0.9, 0.0005, 0.1)
        assert c.schedule == "multistep" and c.warmup_steps == 0
        drops = [round(f * c.iterations) for f in c.lr_steps]
        assert drops == paper["lr_drops_at"]
        assert c.grad_clip is None and c.threads is None
        assert {**AUGMENTATION, **c.augmentation} == AUGMENTATION
        assert set(c.augmentation) == set(AUGMENTATION)  # every augmentation key set
        assert (c.variant, c.input_size) == ("dsod300", 300)
    tuned = build_config(params, dataset, "finetuned", Path("models/x"), "store.h5")
    assert tuned.lr == 0.001  # the paper's fine-tuning lr
    assert tuned.iterations == paper["iterations"]
