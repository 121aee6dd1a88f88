"""Stage `pretrain` and `train@<dataset>-<init>`: train a detector on a prepared store.

``python -m pipelines.train pretrain`` trains the RGB source model (``pretrain.dataset``) into
``models/pretrain``. ``python -m pipelines.train <dataset> --init scratch|finetuned`` trains
into ``models/<dataset>-<init>``; ``finetuned`` starts from ``models/pretrain/model.pt`` with the
first conv adapted to the dataset's channels and a new class head when classes differ
(``dsod_core.transfer``) and applies the ``finetune`` overrides (e.g. a lower lr).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from dsod_core.engine import TrainConfig, train
from dsod_core.errors import ConfigError
from pipelines._common import load_params, stage_main, write_json

PRETRAIN_WEIGHTS = Path("models/pretrain/model.pt")


def build_config(
    params: dict[str, Any], dataset: str, init: str, out_dir: Path, source: str = "params.yaml"
) -> TrainConfig:
    model = params.get("model") or {}
    unknown = sorted(set(model) - {"variant", "input_size", "overrides"})
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in 'model'", path=source)
    train_params = dict(params.get("train") or {})
    if init == "finetuned":
        train_params.update(params.get("finetune") or {})
    elif init == "pretrain":
        train_params.update((params.get("pretrain") or {}).get("train") or {})
    elif init != "scratch":
        raise ConfigError(f"init must be 'scratch' or 'finetuned', got {init!r}", path=source)
    overlap = {"store", "out_dir", "variant", "input_size", "init"} & set(train_params)
    if overlap:
        raise ConfigError(f"train keys {sorted(overlap)} are set by the pipeline", path=source)
    return TrainConfig.from_dict(
        {
            **train_params,
            "store": f"data/prepared/{dataset}.h5",
            "out_dir": str(out_dir),
            "variant": model.get("variant", "dsod_tiny"),
            "input_size": int(model.get("input_size", 64)),
            "model_overrides": dict(model.get("overrides") or {}),
            "init": str(PRETRAIN_WEIGHTS) if init == "finetuned" else "scratch",
            "seed": int(params.get("seed", 0)),
        },
        source=source,
    )


@stage_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", help="a dataset name, or 'pretrain'")
    parser.add_argument("--init", default="scratch", choices=["scratch", "finetuned"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.dataset == "pretrain":
        pre = params.get("pretrain") or {}
        if not isinstance(pre.get("dataset"), str):
            raise ConfigError("pretrain.dataset must name a dataset", path=args.params)
        dataset, init, out_dir = pre["dataset"], "pretrain", Path("models/pretrain")
    else:
        dataset, init = args.dataset, args.init
        out_dir = Path("models") / f"{dataset}-{init}"
    config = build_config(params, dataset, init, out_dir, args.params)
    config.resume = args.resume
    if not args.resume:
        shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    # "init" names the initialisation (scratch / finetuned / pretrain); the TrainConfig field
    # of the same name (a weights path) is kept as "init_weights".
    record = {**config.to_dict(), "init_weights": config.init, "dataset": dataset, "init": init}
    write_json(out_dir / "config.json", record)
    result = train(config)
    print(f"trained {out_dir}: {result['epochs']} epochs in {result['train_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    main()
