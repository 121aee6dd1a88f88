"""Training configuration: one dataclass that reads top to bottom.

Built from the ``train`` section of ``params.yaml`` (plus the paths the stage adds) by
:meth:`TrainConfig.from_dict`, which refuses unknown keys and wrong types.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dsod_core.errors import ConfigError


@dataclass
class TrainConfig:
    # what to train on and where to write
    store: str = ""  # prepared HDF5 store
    out_dir: str = ""  # models/<run>: checkpoints, final weights, log
    train_split: str = "train"
    # a nested subset of the train split, drawn by whole source units (volumes, scenes,
    # images) from `seed` (dsod_core.data.subsets); 1.0: all of it
    train_fraction: float = 1.0
    val_split: str = "val"
    # the model
    variant: str = "dsod_tiny"
    input_size: int = 64
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. memory_efficient
    init_weights: str | None = None  # None: from scratch; else model.pt of a source run
    # optimisation (per-process micro-batch; global batch = batch_size*accumulate*world)
    batch_size: int = 16
    accumulate: int = 1
    epochs: int = 30
    iterations: int | None = None  # optimiser steps; when set, it decides the length
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 50  # linear warm-up, in optimiser steps
    schedule: str = "multistep"  # "multistep" or "cosine"
    lr_steps: list[float] = field(default_factory=lambda: [0.67, 0.89])  # fractions of all steps
    lr_gamma: float = 0.1
    grad_clip: float | None = None  # max global gradient norm
    # data
    augmentation: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0
    # evaluation during training
    eval_every: int = 1  # epochs; 0 = only at the end
    postprocess: dict[str, Any] = field(default_factory=dict)
    # hardware
    device: str = "auto"  # "auto", "cpu", "cuda"
    threads: int | None = None  # CPU threads per process; None: cores / processes on the node
    # CUDA only: autocast. True/"auto": bfloat16 where the GPU supports it, else float16 with
    # a GradScaler; "bf16" / "fp16" force one; False/"off": float32.
    amp: bool | str = True
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile the training forward (eager if compiling fails)
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA/NCCL)
    backend: str | None = None  # None (one process), "gloo", "nccl"
    nproc_per_node: int | None = None  # spawn N processes (Ignite launcher)
    # reproducibility and resumption
    seed: int = 0
    resume: bool = False  # continue from the newest checkpoint in out_dir/checkpoints
    keep_checkpoints: int = 2
    progress: bool = True  # Ignite progress bars
    dvclive: bool = True  # log per-epoch metrics with DVCLive (rank 0)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "params.yaml") -> TrainConfig:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown train key(s) {unknown}; accepted: {sorted(names)}", path=source
            )
        cfg = cls(**d)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "params.yaml") -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg, path=source)

        need(
            isinstance(self.train_fraction, int | float)
            and not isinstance(self.train_fraction, bool)
            and 0.0 < float(self.train_fraction) <= 1.0,
            f"train_fraction must lie in (0, 1], got {self.train_fraction!r}",
        )
        for name in ("input_size", "batch_size", "accumulate", "epochs", "keep_checkpoints"):
            v = getattr(self, name)
            need(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                f"train.{name} must be a positive integer, got {v!r}",
            )
        need(
            self.iterations is None or (isinstance(self.iterations, int) and self.iterations > 0),
            f"train.iterations must be a positive integer or null, got {self.iterations!r}",
        )
        for name in ("lr", "momentum", "weight_decay", "lr_gamma"):
            v = getattr(self, name)
            need(
                isinstance(v, int | float) and not isinstance(v, bool) and v >= 0,
                f"train.{name} must be a non-negative number, got {v!r}",
            )
        need(
            self.schedule in ("multistep", "cosine"),
            f"train.schedule must be 'multistep' or 'cosine', got {self.schedule!r}",
        )
        need(self.optimizer == "sgd", f"train.optimizer must be 'sgd', got {self.optimizer!r}")
        need(
            isinstance(self.lr_steps, list) and all(0 < s < 1 for s in self.lr_steps),
            f"train.lr_steps must be a list of fractions in (0, 1), got {self.lr_steps!r}",
        )
        need(
            self.device in ("auto", "cpu", "cuda"),
            f"train.device must be auto, cpu or cuda, got {self.device!r}",
        )
        need(
            self.backend in (None, "gloo", "nccl"),
            f"train.backend must be null, gloo or nccl, got {self.backend!r}",
        )
        need(
            self.threads is None or (isinstance(self.threads, int) and self.threads >= 1),
            f"train.threads must be a positive integer or null, got {self.threads!r}",
        )
        need(
            self.amp in (True, False, "auto", "bf16", "fp16", "off"),
            f"train.amp must be true, false, auto, bf16, fp16 or off, got {self.amp!r}",
        )
        need(
            isinstance(self.compile, bool),
            f"train.compile must be true or false, got {self.compile!r}",
        )
        need(isinstance(self.augmentation, dict), "train.augmentation must be a mapping")
        need(isinstance(self.model_overrides, dict), "train.model_overrides must be a mapping")
        need(
            self.grad_clip is None
            or (isinstance(self.grad_clip, int | float) and self.grad_clip > 0),
            f"train.grad_clip must be a positive number or null, got {self.grad_clip!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
