"""Stage `check`: validate the whole ``params.yaml`` before any other stage runs.

``dvc repro`` removes a stage's previous outputs just before running it; every stage depends on
this one's output, so a typo (an unknown variant, a target that is not a dataset, a misspelt
adapter param, a value of the wrong type or out of range) stops the pipeline here, before any
trained model or store is removed. The output records only that the file was valid, so it is
identical from one valid params file to the next and re-runs nothing downstream by itself.

``--describe`` prints every key the file takes instead (type, default, meaning), one table per
section, from the same declarations the check uses (``pipelines/params.py``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines._common import load_params, stage_main, write_json
from pipelines.params import validate_params


def describe() -> str:
    """Markdown tables of every section of the params file (the params classes' rows)."""
    from dsod_core.data.transforms import AugmentationParams
    from dsod_core.engine.config import NOT_OVERRIDES, PostprocessParams, TrainConfig
    from dsod_core.model.config import DSODConfig
    from pipelines import params as p

    tables = [
        ("(top level)", p.ParamsFile),
        ("checkpoints.<name>", p.CheckpointEntry),
        ("demo", p.DemoSection),
        ("datasets.<name>", p.DatasetEntry),
        ("prepare", p.PrepareSection),
        ("model", p.ModelSection),
        ("model.overrides", DSODConfig),
        ("pretrain", p.PretrainSection),
        ("train, finetune, pretrain.train, datasets.<name>.train / .finetune", TrainConfig),
        ("train.augmentation", AugmentationParams),
        ("train.postprocess", PostprocessParams),
        ("evaluate", p.EvaluateSection),
    ]
    skip = {DSODConfig: set(NOT_OVERRIDES), TrainConfig: p.PIPELINE_KEYS}
    out = []
    for title, cls in tables:
        out += [f"## {title}", "", "| key | value | default | meaning |", "|---|---|---|---|"]
        for row in cls.describe():
            if row["name"] in skip.get(cls, ()):
                continue
            default = "(required)" if row["required"] else f"`{_yaml(row['default'])}`"
            cells = [f"`{row['name']}`", _cell(row["expect"]), default, _cell(row["doc"])]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _yaml(value: object) -> str:
    return "null" if value is None else json.dumps(value)


def write_settings(params: dict, folder: Path) -> None:
    """``<folder>/<dataset>.json`` = :func:`pipelines.params.prepare_settings` for every
    dataset, and nothing else in the folder (a removed dataset's file goes)."""
    from pipelines.params import prepare_settings

    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(params.get("datasets") or {})
    for stale in folder.glob("*.json"):
        if stale.stem not in names:
            stale.unlink()
    for name in names:
        write_json(folder / f"{name}.json", prepare_settings(params, name))


@stage_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", help="the marker file to write (required unless --describe)")
    parser.add_argument(
        "--settings-dir",
        help="write each dataset's prepare settings here (<dataset>.json, a dep of its prepare)",
    )
    parser.add_argument(
        "--describe", action="store_true", help="print every key of the params file and exit"
    )
    args = parser.parse_args(argv)
    if args.describe:
        print(describe())
        return 0
    if not args.out:
        parser.error("--out is required")
    params = load_params(args.params)
    validate_params(params, args.params)
    if args.settings_dir:
        write_settings(params, Path(args.settings_dir))
    write_json(args.out, {"params": "valid"})
    print(f"check: {args.params} is valid")
    return 0


if __name__ == "__main__":
    main()
