"""Ignite training of DSOD on CPU, one GPU (AMP) or many (``ignite.distributed``).

Structure (as Ignite's templates): small ``setup_*`` functions and ``run(local_rank, config)``,
launched by :func:`train` through ``idist.Parallel``. ``run`` reads top to bottom: threads,
device and store; model, optimiser, data, run length, LR schedule, loss, scaler and the update
engine; checkpointing (and resuming), DVCLive logging, the validation run and the epoch
handlers; then the run itself and the outputs (``model.pt``, ``history.json``). One
``to_save`` dict (model, optimiser, scheduler, scaler, trainer state, history, RNG state)
serves checkpointing and resuming.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, ProgressBar, TerminateOnNan
from ignite.metrics import RunningAverage
from torch import nn
from torch.utils.data import DataLoader

from dsod_core.data.collate import detection_collate
from dsod_core.data.dataset import DetectionDataset
from dsod_core.data.store import StoreReader
from dsod_core.data.transforms import build_train_transform
from dsod_core.detection import progress_mode
from dsod_core.diagnostics import collapse_check
from dsod_core.engine.budget import Budget
from dsod_core.engine.checkpoint import checkpointer, latest_checkpoint, save_atomic
from dsod_core.engine.config import TrainConfig
from dsod_core.engine.evaluator import (
    create_evaluator,
    eval_loader,
    gather_predictions,
    score_predictions,
    select_device,
)
from dsod_core.engine.sampler import StepBatchSampler, background_positions
from dsod_core.engine.weights import load_weights, weights_dict
from dsod_core.errors import CheckpointError, ConfigError, ProjectError
from dsod_core.io import write_json
from dsod_core.loss import MultiBoxLoss
from dsod_core.model import DSOD, build_model
from dsod_core.transfer import load_transferred


def unwrap(model: nn.Module) -> DSOD:
    return model.module if hasattr(model, "module") else model


def setup_data(config: TrainConfig, reader: StoreReader) -> tuple[DataLoader, StepBatchSampler]:
    """Training loader with the shared batch plan (see :mod:`dsod_core.engine.sampler`)."""
    transform = build_train_transform(
        config.input_size,
        config.augmentation,
        channel_names=reader.channel_names,
        channel_mean=reader.mean,
        channel_std=reader.std,
        # Adapters deliver RGB as 8-bit/255, i.e. in [0, 1] (photometric distortion needs it).
        value_range=1.0,
    )
    dataset = DetectionDataset(
        reader, config.train_split, transform, seed=config.seed, fraction=config.train_fraction
    )
    negatives = None
    if config.negative_fraction < 1.0:  # read from the store's box shapes only
        negatives = background_positions(reader.path, dataset.indices)
    sampler = StepBatchSampler(
        len(dataset),
        config.batch_size,
        config.accumulate,
        idist.get_world_size(),
        idist.get_rank(),
        seed=config.seed,
        negatives=negatives,
        negative_fraction=config.negative_fraction,
    )
    if sampler.steps_per_epoch == 0:
        kept = "" if not sampler.thinned else f" (negative_fraction {config.negative_fraction})"
        raise ConfigError(
            f"{sampler.epoch_size} training samples per epoch{kept} are fewer than one "
            "global batch "
            f"(batch_size {config.batch_size} x accumulate {config.accumulate} x "
            f"{idist.get_world_size()} processes)",
            path=config.store,
        )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=detection_collate,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
    return loader, sampler


def setup_model(
    config: TrainConfig, reader: StoreReader, device: torch.device
) -> tuple[nn.Module, dict[str, list[str]]]:
    """Build the variant for the store's channels/classes; optionally initialise from a source
    checkpoint (first conv adapted, class head re-initialised when classes differ) or, with
    ``init_format`` torchvision/timm, the VGG16 trunk from an ImageNet checkpoint
    (:mod:`dsod_core.backbone_init`). Returns the model and which tensors were copied /
    adapted / re-initialised (and, from an ImageNet file, its unused keys; empty from
    scratch)."""
    torch.manual_seed(config.seed)
    model = build_model(
        config.variant,
        in_channels=reader.num_channels,
        num_classes=reader.num_classes,
        input_size=config.input_size,
        **config.model_overrides,
    )
    transfer: dict[str, list[str]] = {}
    if config.init_weights and config.init_format != "project":  # an ImageNet VGG16 file
        from dsod_core.backbone_init import load_backbone_checkpoint

        transfer = load_backbone_checkpoint(model, config.init_weights, config.init_format)
    elif config.init_weights:
        source = load_weights(config.init_weights)
        same = list(source.get("class_names") or []) == list(reader.class_names)
        transfer = load_transferred(
            model, source["model"], source=config.init_weights, same_classes=same
        )
    model = model.to(device)
    if device.type == "cuda" and config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # model.norm: sync_batch is BatchNorm made synchronous here when the run is distributed.
    sync = config.sync_bn or unwrap(model).config.norm == "sync_batch"
    return idist.auto_model(model, sync_bn=sync), transfer


def lr_factor(step: int, total_steps: int, config: TrainConfig) -> float:
    """LR multiplier after ``step`` optimiser steps: linear warm-up, then multistep/cosine."""
    warm = 1.0
    if config.warmup_steps > 0 and step < config.warmup_steps:
        warm = (step + 1) / config.warmup_steps
    frac = step / max(total_steps, 1)
    if config.schedule == "cosine":
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
    drops = sum(1 for s in config.lr_steps if frac >= s)
    return warm * config.lr_gamma**drops


def amp_dtype(setting: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None: float32). bfloat16 needs no
    loss scaling; float16 (GPUs without bf16, or ``amp: fp16``) runs with a GradScaler."""
    if device.type != "cuda" or setting in (False, "off"):
        return None
    if setting in (True, "auto"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if setting == "bf16" else torch.float16


class CompiledForward:
    """``torch.compile(module)`` with a clean fallback: when compiling (or the first compiled
    call) fails, e.g. no C compiler or an unsupported op, a warning names the error once and
    every call runs the eager module from then on. The module itself stays the object that
    is trained and saved (its state-dict keys do not get the compiled wrapper's prefix)."""

    def __init__(self, module: nn.Module, compiled: Any | None = None, **options: Any) -> None:
        self.module = module
        self.failed: str | None = None
        self._compiled = compiled
        if compiled is None:
            try:
                self._compiled = torch.compile(module, **options)
            except Exception as exc:  # torch.compile raises many types; all mean "not here"
                self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        import warnings

        self.failed = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        self._compiled = None
        warnings.warn(f"torch.compile failed, running eager: {self.failed}", stacklevel=3)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is not None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as exc:
                self._fail(exc)
        return self.module(*args, **kwargs)


def setup_trainer(
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: MultiBoxLoss,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    device: torch.device,
) -> Engine:
    """The update step: loss dict, gradient accumulation, clipping, AMP on CUDA."""
    dtype = amp_dtype(config.amp, device)
    channels_last = device.type == "cuda" and config.channels_last
    forward = CompiledForward(model) if config.compile else model

    def update(engine: Engine, batch: dict[str, Any]) -> dict[str, float]:
        model.train()
        images = batch["images"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]]
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
            loc, conf = forward(images)
        losses = criterion(loc.float(), conf.float(), targets, image_size=tuple(images.shape[-2:]))
        scaler.scale(losses["loss"] / config.accumulate).backward()
        if engine.state.iteration % config.accumulate == 0:
            if config.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    trainer = Engine(update)
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, TerminateOnNan(output_transform=lambda o: o["loss"])
    )
    RunningAverage(output_transform=lambda o: o["loss"]).attach(trainer, "loss")
    return trainer


def setup_threads(config: TrainConfig) -> None:
    """CPU threads of this process: ``train.threads``, else the node's cores shared out.

    Several processes each using every core oversubscribe the CPU, and OpenMP's spinning
    threads then slow small-tensor work down by orders of magnitude.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    elif idist.get_nproc_per_node() > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // idist.get_nproc_per_node()))


def setup_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay, made distributed-aware by Ignite."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    return idist.auto_optim(optimizer)


@dataclass(frozen=True)
class RunLength:
    """How long the run is: ``epochs`` over the loader, ``total_steps`` optimiser steps, and
    ``total_micro`` engine iterations when ``train.iterations`` decides the length (one
    optimiser step takes ``accumulate`` iterations, i.e. micro-batches; None otherwise)."""

    epochs: int
    total_steps: int
    total_micro: int | None

    def is_last(self, engine: Engine) -> bool:
        """Whether the epoch that ``engine`` just completed is the run's last."""
        if self.total_micro:
            return engine.state.iteration >= self.total_micro
        return engine.state.epoch == self.epochs

    def ends_inside_epoch(self, engine: Engine, epoch_length: int) -> bool:
        """Whether the run stopped, at its last iteration, inside an epoch (max_iters does
        that without firing EPOCH_COMPLETED)."""
        return bool(
            self.total_micro
            and engine.state.iteration == self.total_micro
            and self.total_micro % epoch_length
        )


def setup_length(config: TrainConfig, steps_per_epoch: int) -> RunLength:
    """The run's length from ``train.iterations`` (when set) or ``train.epochs``."""
    if config.iterations:
        epochs = math.ceil(config.iterations / steps_per_epoch)
    else:
        epochs = config.epochs
    total_steps = config.iterations or epochs * steps_per_epoch
    total_micro = config.iterations * config.accumulate if config.iterations else None
    return RunLength(epochs=epochs, total_steps=total_steps, total_micro=total_micro)


def setup_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per optimiser step: the warm-up and decay of :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, config))


def setup_scaler(config: TrainConfig, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling, enabled for float16 autocast only (see :func:`amp_dtype`)."""
    return torch.amp.GradScaler("cuda", enabled=amp_dtype(config.amp, device) == torch.float16)


def evaluate_split(
    config: TrainConfig, model: nn.Module, reader: StoreReader, device: torch.device, split: str
) -> dict[str, Any] | None:
    """Scores of ``model`` on ``split`` (on rank 0; None elsewhere or when it is empty)."""
    if len(reader.split_indices(split)) == 0:
        return None
    loader = eval_loader(reader, split, config.input_size, max(config.batch_size, 8))
    evaluator = create_evaluator(model, device, config.postprocess)
    if idist.get_rank() == 0 and progress_mode(config.progress) == "bar":
        ProgressBar(desc=f"eval {split}", persist=False).attach(evaluator)
    evaluator.run(loader)
    predictions = gather_predictions(evaluator.state.predictions)
    if idist.get_rank() != 0:
        return None
    scores = score_predictions(reader, predictions)
    scores.pop("_voc07", None)
    return scores


def setup_evaluation(
    config: TrainConfig, model: nn.Module, reader: StoreReader, device: torch.device
) -> Callable[[], dict[str, Any] | None]:
    """The validation run made during training: scores of the model as it is now."""

    def evaluate() -> dict[str, Any] | None:
        return evaluate_split(config, model, reader, device, config.val_split)

    return evaluate


class _RunState:
    """What a checkpoint keeps besides the Ignite objects: history, training time, RNG."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0  # before this process started (a resumed run)
        self.started = time.perf_counter()

    def seconds(self) -> float:
        """Training time so far, the resumed runs' included."""
        return self.train_seconds + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.started
        return {
            "history": list(self.history),
            "train_seconds": self.train_seconds + elapsed,
            "torch_rng": torch.get_rng_state(),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history[:] = state["history"]
        self.train_seconds = float(state["train_seconds"])
        self.started = time.perf_counter()
        torch.set_rng_state(state["torch_rng"])


def setup_checkpointing(config: TrainConfig, to_save: dict[str, Any]) -> Checkpoint | None:
    """Resume ``to_save`` from the newest checkpoint when ``train.resume`` (and one exists);
    return the per-epoch checkpoint handler (rank 0; None on the other ranks)."""
    ckpt_dir = Path(config.out_dir) / "checkpoints"
    if config.resume:
        state = latest_checkpoint(ckpt_dir)
        if state is not None:
            try:
                Checkpoint.load_objects(to_load=to_save, checkpoint=state)
            except (KeyError, RuntimeError, ValueError, TypeError) as exc:
                first = " ".join(str(exc).split())
                raise CheckpointError(
                    f"checkpoint does not fit this run: {first}", path=ckpt_dir
                ) from exc
    if idist.get_rank() != 0:
        return None
    return checkpointer(ckpt_dir, to_save, keep=config.keep_checkpoints)


def setup_logging(config: TrainConfig, resumed: bool) -> Any | None:
    """A DVCLive logger on rank 0 when ``train.dvclive`` (None otherwise); ``resumed``
    continues the steps of a resumed run."""
    if idist.get_rank() != 0 or not config.dvclive:
        return None
    from dvclive import Live

    return Live(
        dir=str(Path(config.out_dir) / "dvclive"),
        resume=resumed,
        save_dvc_exp=False,
        dvcyaml=False,
    )


def log_epoch(live: Any | None, row: dict[str, Any]) -> None:
    """One history row to DVCLive (loss and lr under ``train/``), then the next step."""
    if live is None:
        return
    for k, v in row.items():
        if k not in ("epoch", "step") and v is not None:
            live.log_metric(f"train/{k}" if k in ("loss", "lr") else k, v)
    live.next_step()


def close_logging(live: Any | None) -> None:
    """End the DVCLive run (if any)."""
    if live is None:
        return
    try:
        live.end()
    except FileNotFoundError:
        # end() finishes by removing .dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED (a signal
        # for the VS Code extension) with an exists-then-remove check; seeds training side
        # by side in one `dvc exp run` race on it. Everything else end() does is done by
        # then, so the lost race costs nothing.
        pass


def epoch_line(row: dict[str, Any], epochs: int, where: str) -> str:
    """The plain line of an epoch where no bar is drawn (``train <run>: epoch 3/16 loss
    1.234 lr 0.05 val_map50 0.512``)."""
    shown = {k: v for k, v in row.items() if k not in ("epoch", "step") and v is not None}
    values = " ".join(f"{k} {v:.4g}" for k, v in shown.items())
    return f"train {where}: epoch {row['epoch']}/{epochs} {values}"


def setup_epoch_end(
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    evaluate: Callable[[], dict[str, Any] | None],
    length: RunLength,
    history: list[dict[str, Any]],
    live: Any | None,
    saver: Checkpoint | None,
    budget: Budget | None = None,
) -> Callable[[Engine], None]:
    """The end of an epoch: a history row (loss, lr, validation scores when due), the
    budget's plateau count and best weights (:mod:`dsod_core.engine.budget`), logged and
    checkpointed on rank 0; every rank waits for the others."""
    rank = idist.get_rank()
    lines = rank == 0 and progress_mode(config.progress) == "lines"

    def end_epoch(engine: Engine) -> None:
        epoch = engine.state.epoch
        row: dict[str, Any] = {
            "epoch": epoch,
            "loss": float(engine.state.metrics["loss"]),
            "lr": float(optimizer.param_groups[0]["lr"]),
            # optimiser steps so far: x global batch = the image passes spent (the budget)
            "step": engine.state.iteration // config.accumulate,
        }
        due = config.eval_every and epoch % config.eval_every == 0
        evaluated = bool(due or length.is_last(engine))
        if evaluated:
            scores = evaluate()
            if scores is not None:
                row.update({"val_map50": scores["map50"], "val_coco_ap": scores["coco_ap"]})
        history.append(row)
        if budget is not None:
            budget.update(engine, row, evaluated)
        if rank == 0:
            log_epoch(live, row)
            saver(engine)
            if lines:
                print(epoch_line(row, length.epochs, config.out_dir), flush=True)
        idist.barrier()

    return end_epoch


def setup_handlers(
    trainer: Engine,
    config: TrainConfig,
    loader: DataLoader,
    sampler: StepBatchSampler,
    length: RunLength,
    end_epoch: Callable[[Engine], None],
) -> None:
    """The epoch's batch plan, the epoch end, the progress bar, and the closing of a last
    epoch that ``iterations`` cut short."""

    @trainer.on(Events.EPOCH_STARTED)
    def _plan_epoch(engine: Engine) -> None:
        epoch0 = engine.state.epoch - 1  # ignite counts from 1
        sampler.set_epoch(epoch0)
        loader.dataset.set_epoch(epoch0)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, end_epoch)
    # A bar on a terminal; elsewhere (a log, dvc repro) every redraw would stay in the
    # file: one plain line per epoch instead (history row printed by the epoch end).
    if idist.get_rank() == 0 and progress_mode(config.progress) == "bar":
        ProgressBar(desc="train", persist=True).attach(trainer, metric_names=["loss"])

    @trainer.on(Events.COMPLETED)
    def _partial_last_epoch(engine: Engine) -> None:
        # max_iters stops inside an epoch without EPOCH_COMPLETED: close that epoch here.
        if length.ends_inside_epoch(engine, len(loader)):
            end_epoch(engine)


def run_trainer(
    trainer: Engine, loader: DataLoader, length: RunLength, config: TrainConfig
) -> None:
    """Run to the end (exactly ``iterations`` optimiser steps when set); a loss that became
    NaN/inf (TerminateOnNan stopped the run) raises."""
    if length.total_micro:  # stop at exactly `iterations` optimiser steps
        trainer.run(loader, max_iters=length.total_micro, epoch_length=len(loader))
    else:
        trainer.run(loader, max_epochs=length.epochs, epoch_length=len(loader))
    if trainer.state.output is not None and not math.isfinite(trainer.state.output["loss"]):
        raise ProjectError(
            f"training diverged: the loss became {trainer.state.output['loss']} "
            f"at iteration {trainer.state.iteration}; lower train.lr or set "
            "train.grad_clip",
            path=config.out_dir,
        )


def save_outputs(
    config: TrainConfig,
    model: nn.Module,
    reader: StoreReader,
    result: dict[str, Any],
    transfer: dict[str, list[str]],
) -> None:
    """``model.pt`` (weights and what inference needs) and ``history.json``."""
    out_dir = Path(config.out_dir)
    weights = weights_dict(
        model,
        variant=config.variant,
        input_size=config.input_size,
        model_overrides=config.model_overrides,
        reader=reader,
        extra={
            "train_seconds": result["train_seconds"],
            "history": result["history"],
            "transfer": transfer,
            "stopping": result["stopping"],
            "budget": result["budget"],
        },
    )
    save_atomic(weights, out_dir / "model.pt")
    write_json(out_dir / "history.json", result, indent=1)


def report_end(config: TrainConfig, result: dict[str, Any]) -> None:
    """A line when the run stopped early or learnt nothing (:mod:`dsod_core.diagnostics`)."""
    if result["stopping"].get("why"):
        print(f"train {config.out_dir}: early stop: {result['stopping']['why']}", flush=True)
    if result["collapse"]["collapsed"]:
        collapse = result["collapse"]
        print(
            f"train {config.out_dir}: the model did not learn: {collapse['summary']} "
            f"({'; '.join(collapse['reasons'])})",
            flush=True,
        )


def run_budget(config: TrainConfig, history: list[dict[str, Any]]) -> dict[str, int]:
    """The compute a run spent: optimiser ``steps`` taken (fewer than planned when early
    stopping ended it), the ``global_batch`` (``batch_size * accumulate * processes``) and
    their product, ``image_passes`` (docs/study.md, "Equal budget")."""
    steps = int(history[-1].get("step", 0)) if history else 0
    batch = config.batch_size * config.accumulate * idist.get_world_size()
    return {"steps": steps, "global_batch": batch, "image_passes": steps * batch}


def run(local_rank: int, config: TrainConfig) -> dict[str, Any]:
    """Train per ``config`` in this process; rank 0 writes ``model.pt`` and ``history.json``."""
    setup_threads(config)
    device = select_device(config.device, "train.device")
    reader = StoreReader(config.store).require_training(config.train_split)
    model, transfer = setup_model(config, reader, device)
    optimizer = setup_optimizer(config, model)
    loader, sampler = setup_data(config, reader)
    length = setup_length(config, sampler.steps_per_epoch)
    scheduler = setup_scheduler(config, optimizer, length.total_steps)
    criterion = MultiBoxLoss(unwrap(model).default_boxes)
    scaler = setup_scaler(config, device)
    trainer = setup_trainer(config, model, optimizer, criterion, scheduler, scaler, device)

    state = _RunState(config)
    to_save = {
        "model": unwrap(model),
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scaler": scaler,
        "trainer": trainer,
        "run": state,
    }
    budget = Budget(config, trainer, unwrap(model))
    to_save.update(budget.state())  # nothing when patience and keep_best are off
    saver = setup_checkpointing(config, to_save)
    live = setup_logging(config, resumed=bool(state.history))
    evaluate = setup_evaluation(config, model, reader, device)
    end_epoch = setup_epoch_end(
        config, optimizer, evaluate, length, state.history, live, saver, budget
    )
    setup_handlers(trainer, config, loader, sampler, length, end_epoch)

    run_trainer(trainer, loader, length, config)
    seconds = state.seconds()
    close_logging(live)
    result = {
        "epochs": length.epochs,
        "steps": length.total_steps,
        "budget": run_budget(config, state.history),
        "train_seconds": seconds,
        "history": state.history,
        "stopping": budget.finish(state.history, length.epochs),
        "collapse": collapse_check(state.history),
    }
    if idist.get_rank() == 0:
        report_end(config, result)
        save_outputs(config, model, reader, result, transfer)
    return result


def _run_worker(local_rank: int, config: TrainConfig) -> None:
    run(local_rank, config)


def train(config: TrainConfig) -> dict[str, Any]:
    """Launch :func:`run`: in this process, or in ``nproc_per_node`` spawned processes, or in
    the processes ``torchrun`` started (set ``backend``, leave ``nproc_per_node`` unset).

    The global batch is ``batch_size * accumulate * world_size``. Returns the run's
    ``history.json`` content (written by rank 0). The config is validated first (types,
    ranges and choices of every field), however it was built.
    """
    config.validate()
    if config.backend is None and not config.nproc_per_node:
        return run(0, config)
    with idist.Parallel(backend=config.backend, nproc_per_node=config.nproc_per_node) as par:
        par.run(_run_worker, config)
    return json.loads((Path(config.out_dir) / "history.json").read_text())
