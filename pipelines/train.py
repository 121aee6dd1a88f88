"""Stages `pretrain@<source>`, `train_scratch@<dataset>-<fraction>`,
`train_finetuned@<dataset>-<source>-<fraction>` and `train_matched@<dataset>-<source>-<fraction>`:
train detectors on a prepared store.

``python -m pipelines.train DATASET --init pretrain --store S --out-dir models/pretrain/DATASET``
trains the source models (``pretrain.train``, the whole train split), one per seed in
``source_seeds``, into ``models/pretrain/DATASET/seed-<k>/``.

``python -m pipelines.train NAME --init checkpoint --out-dir models/pretrain/NAME`` trains
nothing: it checks the ImageNet VGG16 file of ``checkpoints.NAME`` (every mapped key and
shape, :mod:`dsod_core.backbone_init`) and writes its reference, ``checkpoint.json`` (path,
format, sha256, the declared ``image_passes``, note) and a ``history.json`` whose budget is
those declared image passes, so fine-tuned runs from it are charged them
(docs/compare_imagenet.md). A fine-tuned run whose ``--init-weights`` is such a folder starts
from the file (checked to still have the recorded sha256) through
:func:`dsod_core.backbone_init.load_backbone_checkpoint`; there is no matched arm for it.

``python -m pipelines.train DATASET --init scratch|finetuned --fraction F --store S
--out-dir models/DATASET/RUN [--init-weights models/pretrain/SOURCE --source SOURCE]``
trains one run per seed in ``seeds``, into ``RUN/seed-<s>/``, on the nested subset ``F`` of
the train split drawn by whole independence units (``dsod_core.data.subsets``). A fine-tuned
run of the ``i``-th seed starts from source seed ``source_seeds[i % len(source_seeds)]``
(``--init-weights`` may also name one ``model.pt``).

``--init matched --source SOURCE --init-weights models/pretrain/SOURCE --match-dir
models/DATASET/finetuned-SOURCE-fF`` trains the compute-matched scratch arm: scratch params,
run for the optimiser steps whose image passes equal the paired fine-tuned run's plus its
source model's (``train.iterations``; docs/study.md, "Equal budget"). The seeds of a run
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
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from dsod_core.errors import CheckpointError, ConfigError, ProjectError
from dsod_core.operating_point import calibrate_run, threshold_words
from pipelines._common import load_params, stage_main, write_json
from pipelines.params import (
    build_config,
    checkpoint_entry,
    evaluate_section,
    source_seed_for,
    study_axes,
    validate_params,
)


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
        config.init_format = job.get("init_format") or "project"
        config.progress = config.progress and job["progress"]
        if job.get("iterations"):  # the matched arm: its length is its budget
            config.iterations = job["iterations"]
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
            train_units=len(set(subset.reader.unit_keys(subset.indices))),
            budget=job.get("budget"),
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
    parser.add_argument(
        "--init",
        default="scratch",
        choices=["pretrain", "scratch", "finetuned", "matched", "checkpoint"],
        help="checkpoint: write the reference of checkpoints.<dataset> (no training)",
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--store", help="the prepared store (.h5; every init but checkpoint)")
    parser.add_argument("--out-dir", required=True, help="the run folder")
    parser.add_argument(
        "--init-weights",
        help="the source models' folder (one seed-<k>/ per source seed) or one model.pt "
        "(init = finetuned, matched)",
    )
    parser.add_argument("--source", help="the source dataset's name (init = finetuned, matched)")
    parser.add_argument(
        "--match-dir", help="the fine-tuned run whose budget a matched run gets (init = matched)"
    )
    parser.add_argument("--fraction", type=float, default=1.0, help="train fraction (0, 1]")
    parser.add_argument("--seed", type=int, help="train this seed alone, into --out-dir")
    parser.add_argument("--resume", action="store_true")
    return parser


def source_model(init_weights: str, axes: dict[str, list], seed: int) -> tuple[Path, int | None]:
    """(the source ``model.pt`` training seed ``seed`` starts from, its source seed): in a
    folder of source seeds the paired one (:func:`pipelines.params.source_seed_for`), else the
    file itself (seed unknown)."""
    path = Path(init_weights)
    if not path.is_dir():
        return path, None
    k = source_seed_for(axes, seed)
    model = path / f"seed-{k}" / "model.pt"
    if not model.is_file():
        raise ConfigError(
            f"no source model of source seed {k} (seed {seed} is paired with it; source_seeds "
            f"{axes['source_seeds']}): re-run its pretrain stage",
            path=model,
        )
    return model, k


REFERENCE = "checkpoint.json"  # in models/pretrain/<name>/ of a checkpoint source


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checkpoint_reference(init_weights: str | None) -> dict[str, Any] | None:
    """The reference a checkpoint source's folder holds (:func:`write_reference`), None for
    a folder of project source models or a model.pt."""
    path = Path(init_weights or "") / REFERENCE
    return json.loads(path.read_text()) if init_weights and path.is_file() else None


def write_reference(args: argparse.Namespace, params: dict[str, Any]) -> None:
    """``--init checkpoint``: check ``checkpoints.<name>``'s file and write its reference into
    ``--out-dir`` (``checkpoint.json`` and a ``history.json`` with the declared budget)."""
    from dsod_core.backbone_init import check_backbone_checkpoint

    entry = checkpoint_entry(params, args.dataset, args.params)
    path = Path(entry.path)
    found = check_backbone_checkpoint(path, entry.format)  # refuses a file that does not fit
    reference = {
        "name": args.dataset,
        "path": entry.path,
        "format": entry.format,
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "image_passes": entry.image_passes,
        "note": entry.note,
        **found,
    }
    out_dir = Path(args.out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    write_json(out_dir / REFERENCE, reference)
    budget = {"image_passes": entry.image_passes, "declared": True}
    write_json(out_dir / "history.json", {"budget": budget})
    print(
        f"checkpoint {args.dataset}: {entry.format} ImageNet VGG16 {entry.path} "
        f"(sha256 {reference['sha256'][:12]}, {entry.image_passes:,} image passes declared)"
    )


def check_reference(reference: dict[str, Any], params: dict[str, Any], source: str) -> None:
    """Before a fine-tuned run from a checkpoint source touches its folder: the source is one
    of the params' ``checkpoints`` (so ``validate_params`` has checked that model.variant has
    a VGG16 trunk) and the file is the one the reference stage checked."""
    if reference["name"] not in (params.get("checkpoints") or {}):
        raise ConfigError(
            f"checkpoint source {reference['name']!r} is not in checkpoints (its entry gives "
            "the file and the model needs a VGG16 trunk: docs/compare_imagenet.md)",
            path=source,
        )
    path = Path(reference["path"])
    if not path.is_file() or sha256(path) != reference["sha256"]:
        raise CheckpointError(
            "missing or changed since its reference was written (re-run `dvc repro`, which "
            "re-runs its pretrain_checkpoint stage)",
            path=path,
        )


def image_passes(run_dir: Path) -> int | None:
    """The image passes a trained run spent (its ``history.json`` budget; None for a run
    trained before budgets were recorded)."""
    path = run_dir / "history.json"
    if not path.is_file():
        return None
    return (json.loads(path.read_text()).get("budget") or {}).get("image_passes")


def run_budget(args: argparse.Namespace, axes: dict[str, list], seed: int) -> dict[str, Any]:
    """What a fine-tuned or matched run's compute is counted with (its ``config.json``
    ``budget``): the paired source model's seed and image passes, and for a matched run the
    total it is given, the paired fine-tuned run's own passes plus its source's."""
    if args.init not in ("finetuned", "matched"):
        return {}
    reference = checkpoint_reference(args.init_weights)
    if reference is not None:
        if args.init == "matched":
            raise ConfigError(
                f"checkpoint source {reference['name']!r} has no compute-matched scratch arm "
                "(docs/compare_imagenet.md)",
                path=args.init_weights,
            )
        return {
            "source_seed": None,
            "source_model": reference["path"],
            "source_image_passes": reference["image_passes"],
            "source_kind": "checkpoint",
            "source_format": reference["format"],
            "source_sha256": reference["sha256"],
            "source_note": reference.get("note"),
        }
    model, k = source_model(args.init_weights, axes, seed)
    out: dict[str, Any] = {
        "source_seed": k,
        "source_model": model.as_posix(),
        "source_image_passes": image_passes(model.parent),
    }
    if args.init == "matched":
        paired = Path(args.match_dir) / f"seed-{seed}"
        own = image_passes(paired)
        if own is None or out["source_image_passes"] is None:
            raise ConfigError(
                "the matched arm needs the image passes of the paired fine-tuned run and its "
                "source model (history.json 'budget'; re-run their stages)",
                path=paired / "history.json",
            )
        out.update(matches=paired.as_posix(), target_image_passes=own + out["source_image_passes"])
    return out


def _jobs(args: argparse.Namespace, params: dict[str, Any], seeds: list[int], nested: bool):
    """One training job per seed (a dict a worker process can take)."""
    axes = study_axes(params, args.params)
    out_dir = Path(args.out_dir)
    jobs = []
    for k, seed in enumerate(seeds):
        budget = run_budget(args, axes, seed)
        job = {
            "params_path": args.params,
            "dataset": args.dataset,
            "init": args.init,
            "store": args.store,
            "init_weights": budget.get("source_model") if args.init == "finetuned" else None,
            "source": args.source if args.init in ("finetuned", "matched") else None,
            "seed": seed,
            "fraction": args.fraction,
            "out_dir": str(out_dir / f"seed-{seed}" if nested else out_dir),
            "resume": args.resume,
            "progress": k == 0,  # one progress bar on the terminal, not interleaved ones
            "budget": budget,
            "init_format": budget.get("source_format") or "project",
        }
        if args.init == "matched":
            config = build_config(params, args.dataset, "matched", out_dir, args.store)
            batch = config.batch_size * config.accumulate * (config.nproc_per_node or 1)
            job["iterations"] = math.ceil(budget["target_image_passes"] / batch)
        jobs.append(job)
    return jobs


def _seeds(args: argparse.Namespace, params: dict[str, Any]) -> tuple[list[int], bool]:
    """(the seeds to train, whether each goes into its own ``seed-<s>/``)."""
    axes = study_axes(params, args.params)
    if args.init == "pretrain":
        if args.fraction != 1.0:
            raise ConfigError("a source model trains on its whole train split", path=args.params)
        if args.seed is not None:
            return [args.seed], False
        return axes["source_seeds"], True
    if args.seed is not None:
        return [args.seed], False
    return axes["seeds"], True


@stage_main
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    params = load_params(args.params)
    validate_params(params, args.params, datasets=[])
    if args.init == "checkpoint":
        write_reference(args, params)
        return 0
    if not args.store:
        raise ConfigError(f"init {args.init!r} needs --store", path=args.params)
    if args.init in ("finetuned", "matched") and not args.init_weights:
        raise ConfigError(f"init {args.init!r} needs --init-weights", path=args.params)
    if args.init == "matched" and not args.match_dir:
        raise ConfigError("init 'matched' needs --match-dir", path=args.params)
    seeds, nested = _seeds(args, params)
    out_dir = Path(args.out_dir)
    jobs = _jobs(args, params, seeds, nested)
    # Inputs known good before anything in out_dir is touched.
    from dsod_core.data.store import StoreReader
    from dsod_core.engine.weights import load_weights

    first = build_config(params, args.dataset, args.init, out_dir, args.store, source=args.params)
    StoreReader(args.store).require_training(first.train_split)
    _coverage_warning(params, args.dataset, args.store)
    reference = checkpoint_reference(args.init_weights)
    if reference is not None:
        check_reference(reference, params, args.params)
    else:  # every source model readable before any run folder is touched
        for weights in dict.fromkeys(j["init_weights"] for j in jobs if j["init_weights"]):
            load_weights(weights)
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
