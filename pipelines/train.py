"""Stage `pretrain` and `train@<dataset>-<init>`: train a detector on a prepared store.

``python -m pipelines.train pretrain --store S --out-dir models/pretrain`` trains the RGB
source model (``pretrain.dataset``). ``python -m pipelines.train DATASET --init scratch|finetuned
--store S --out-dir models/DATASET-INIT [--init-weights models/pretrain/model.pt]`` trains a
target run; ``finetuned`` starts from the source weights with the first conv adapted to the
dataset's channels and a new class head when classes differ (``dsod_core.transfer``) and
applies the ``finetune`` overrides (e.g. a lower lr). Paths come from ``dvc.yaml``.

The whole params file, the store and the source weights are checked before the previous run
in ``--out-dir`` is removed, so a typo never destroys a trained model.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from dsod_core.data.store import StoreReader
from dsod_core.engine import train
from dsod_core.engine.weights import load_weights
from dsod_core.errors import ConfigError
from pipelines._common import load_params, stage_main, write_json
from pipelines.params import build_config, validate_params


@stage_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", help="a dataset name, or 'pretrain'")
    parser.add_argument("--init", default="scratch", choices=["scratch", "finetuned"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--store", required=True, help="the prepared store (.h5)")
    parser.add_argument("--out-dir", required=True, help="the run folder (models/<run>)")
    parser.add_argument("--init-weights", help="source model.pt (init = finetuned)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    validate_params(params, args.params, datasets=[])
    if args.dataset == "pretrain":
        dataset, init = params["pretrain"]["dataset"], "pretrain"
    else:
        dataset, init = args.dataset, args.init
        if init == "finetuned" and not args.init_weights:
            raise ConfigError("init 'finetuned' needs --init-weights", path=args.params)
    out_dir = Path(args.out_dir)
    config = build_config(
        params, dataset, init, out_dir, args.store, args.init_weights, source=args.params
    )
    config.resume = args.resume
    # Inputs known good before anything in out_dir is touched.
    StoreReader(config.store).require_training(config.train_split)
    if config.init_weights:
        load_weights(config.init_weights)
    if not args.resume:
        shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", {**config.to_dict(), "dataset": dataset, "init": init})
    result = train(config)
    print(f"trained {out_dir}: {result['epochs']} epochs in {result['train_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    main()
