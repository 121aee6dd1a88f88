"""Stages `pretrain@<source>`, `train_scratch@<dataset>-<fraction>` and
`train_finetuned@<dataset>-<source>-<fraction>`: train detectors on a prepared store.

``python -m pipelines.train DATASET --init pretrain --store S --out-dir models/pretrain/DATASET``
trains a source model (``pretrain.train``, the top-level ``seed``, the whole train split).

``python -m pipelines.train DATASET --init scratch|finetuned --fraction F --store S
--out-dir models/DATASET/RUN [--init-weights models/pretrain/SOURCE/model.pt --source SOURCE]``
trains one run per seed in ``seeds``, into ``RUN/seed-<s>/``, on the nested subset ``F`` of
the train split drawn by whole source units (``dsod_core.data.subsets``). The seeds of a run
train side by side, one process each (up to the CPU count): a DVC stage is one command, and on
a small CPU running the seeds concurrently is what keeps the study's wall time down.
``--seed S`` trains that seed alone into ``--out-dir`` itself. ``finetuned`` starts from the
source weights with the first conv adapted to the dataset's channels and a new class head when
classes differ (``dsod_core.transfer``) and applies the ``finetune`` overrides. Paths come
from ``dvc.yaml``. Each run folder gets its record, ``config.json``
(:mod:`dsod_core.engine.provenance`), which the evaluate stage reads.

The whole params file, the store and the source weights are checked before the previous run
in ``--out-dir`` is removed, so a typo never destroys a trained model.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from dsod_core.errors import ConfigError, ProjectError
from dsod_core.operating_point import calibrate_run, threshold_words
from pipelines._common import load_params, stage_main
from pipelines.params import build_config, evaluate_section, study_axes, validate_params


def _fit_priors(config: Any, subset: Any) -> None:
    """``model.prior_fit``: default-box sizes and aspect ratios fitted to the run's own
    training boxes (``dsod_core.boxes.coverage``), set as model overrides (so ``model.pt``
    rebuilds the same boxes)."""
    from dsod_core.model.fit import fitted_overrides, run_config

    model = run_config(subset.reader, config.variant, config.input_size, config.model_overrides)
    fitted = fitted_overrides(subset.reader, model, indices=subset.indices)
    config.model_overrides = {**config.model_overrides, **fitted}


def _train_one(job: dict[str, Any]) -> str | None:
    """Train one seed (in this process or a worker); a project error comes back as its
    one-line text (exception objects with keyword arguments do not cross processes)."""
    from dsod_core.data.dataset import DetectionDataset
    from dsod_core.engine import train
    from dsod_core.engine.provenance import RunProvenance

    try:
        params = load_params(job["params_path"])
        out_dir = Path(job["out_dir"])
        config = build_config(
            params,
            job["dataset"],
            job["init"],
            out_dir,
            job["store"],
            job["init_weights"],
            source=job["params_path"],
            seed=job["seed"],
            train_fraction=job["fraction"],
        )
        config.resume = job["resume"]
        config.progress = config.progress and job["progress"]
        subset = DetectionDataset(
            config.store, config.train_split, seed=config.seed, fraction=config.train_fraction
        )
        if (params.get("model") or {}).get("prior_fit"):
            _fit_priors(config, subset)
        if not job["resume"]:
            shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        RunProvenance.of_training(
            config,
            dataset=job["dataset"],
            init=job["init"],
            source=job["source"],
            train_images=len(subset.indices),
            train_units=len(set(subset.reader.sources(subset.indices))),
        ).write(out_dir)
        result = train(config)
        # The score threshold `dsod detect` uses, chosen on val and stored in model.pt.
        section = evaluate_section(params, job["params_path"])
        point = calibrate_run(
            out_dir / "model.pt", config.store, config.val_split, section, config.device
        )
    except ProjectError as exc:
        return " ".join(str(exc).split())
    print(f"trained {out_dir}: {result['epochs']} epochs in {result['train_seconds']:.0f} s")
    print(f"  operating point: {threshold_words(point)}")
    return None


def _coverage_warning(params: dict[str, Any], dataset: str, store: str) -> None:
    """One line on stderr, before training, when too few training boxes have a default box
    at IoU >= 0.5 (docs/small_objects.md)."""
    from dsod_core.model.fit import store_coverage
    from pipelines.params import coverage_settings

    warning = store_coverage(store, **coverage_settings(params, dataset))["warning"]
    if warning:
        print(f"train {dataset}: warning: {warning}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", help="the dataset to train on")
    parser.add_argument("--init", default="scratch", choices=["pretrain", "scratch", "finetuned"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--store", required=True, help="the prepared store (.h5)")
    parser.add_argument("--out-dir", required=True, help="the run folder")
    parser.add_argument("--init-weights", help="source model.pt (init = finetuned)")
    parser.add_argument("--source", help="the source dataset's name (init = finetuned)")
    parser.add_argument("--fraction", type=float, default=1.0, help="train fraction (0, 1]")
    parser.add_argument("--seed", type=int, help="train this seed alone, into --out-dir")
    parser.add_argument("--resume", action="store_true")
    return parser


@stage_main
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    params = load_params(args.params)
    validate_params(params, args.params, datasets=[])
    if args.init == "finetuned" and not args.init_weights:
        raise ConfigError("init 'finetuned' needs --init-weights", path=args.params)
    if args.init == "pretrain":
        seeds, nested = [int(params.get("seed", 0))], False
        if args.fraction != 1.0:
            raise ConfigError("a source model trains on its whole train split", path=args.params)
    elif args.seed is not None:
        seeds, nested = [args.seed], False
    else:
        seeds, nested = study_axes(params, args.params)["seeds"], True
    out_dir = Path(args.out_dir)
    jobs = [
        {
            "params_path": args.params,
            "dataset": args.dataset,
            "init": args.init,
            "store": args.store,
            "init_weights": args.init_weights if args.init == "finetuned" else None,
            "source": args.source if args.init == "finetuned" else None,
            "seed": seed,
            "fraction": args.fraction,
            "out_dir": str(out_dir / f"seed-{seed}" if nested else out_dir),
            "resume": args.resume,
            "progress": k == 0,  # one progress bar on the terminal, not interleaved ones
        }
        for k, seed in enumerate(seeds)
    ]
    # Inputs known good before anything in out_dir is touched.
    from dsod_core.data.store import StoreReader
    from dsod_core.engine.weights import load_weights

    first = build_config(params, args.dataset, args.init, out_dir, args.store, source=args.params)
    StoreReader(args.store).require_training(first.train_split)
    _coverage_warning(params, args.dataset, args.store)
    if jobs[0]["init_weights"]:
        load_weights(jobs[0]["init_weights"])
    if nested and not args.resume:
        shutil.rmtree(out_dir, ignore_errors=True)
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers == 1:
        errors = [_train_one(job) for job in jobs]
    else:
        spawn = multiprocessing.get_context("spawn")  # no forked torch/OpenMP state
        with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
            errors = list(pool.map(_train_one, jobs))
    failed = [f"seed {j['seed']}: {e}" for j, e in zip(jobs, errors) if e]
    if failed:
        raise ProjectError("; ".join(failed))
    return 0


if __name__ == "__main__":
    main()
