"""Training configuration: one params dataclass that reads top to bottom.

Built from the training params of ``params.yaml`` (plus the paths the stage adds) by
:meth:`TrainConfig.from_dict`, which validates every field through the project's params
mechanism (:mod:`dsod_core.params`): unknown keys, types, choices and ranges, numbers YAML 1.1
reads as strings (``lr: 5e-2``) converted. The ``augmentation``, ``postprocess`` and
``model_overrides`` mappings are checked key by key by their own params classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from dsod_core.data.transforms import AugmentationParams
from dsod_core.model.config import MIN_INPUT_SIZE, DSODConfig
from dsod_core.params import ParamError, Params, param

Split = Literal["train", "val", "test"]

#: ``DSODConfig`` fields the run sets itself (from the data and ``input_size``), never overrides.
NOT_OVERRIDES = ("in_channels", "num_classes", "input_size")


@dataclass(frozen=True)
class PostprocessParams(Params):
    """Keyword arguments of ``dsod_core.postprocess.postprocess`` for validation during
    training (``train.postprocess``); defaults are the paper's inference settings."""

    section: ClassVar[str] = "postprocess"

    score_threshold: float = param(0.01, "least class score kept", min=0, max=1)
    pre_nms_top_k: int = param(400, "best boxes per class going into NMS", min=1)
    nms_iou: float = param(0.45, "NMS suppresses boxes overlapping more than this", min=0, max=1)
    max_detections: int = param(200, "detections kept per image", min=1)
    variances: tuple[float, float] = param(
        (0.1, 0.2), "SSD box-coding variances (centre, size)", min=0, min_exclusive=True
    )
    clip: bool = param(True, "clip decoded boxes to the image before NMS")


@dataclass
class TrainConfig(Params):
    """The whole configuration of one training run (``docs/training.md``)."""

    section: ClassVar[str] = "train"

    # what to train on and where to write
    store: str = param("", "the prepared HDF5 store")
    out_dir: str = param("", "models/<run>: checkpoints, final weights, log")
    train_split: Split = param("train", "split trained on")
    train_fraction: float = param(
        1.0,
        "a nested subset of the train split, drawn by whole source units (volumes, scenes, "
        "images) from `seed` (dsod_core.data.subsets); 1.0: all of it",
        min=0,
        max=1,
        min_exclusive=True,
    )
    val_split: Split = param("val", "split of the validation mAP during training")
    # the model
    variant: str = param(
        "dsod_tiny", "model variant (python -m dsod_core.model.summary)", min_len=1
    )
    input_size: int = param(64, "square network input in pixels", min=MIN_INPUT_SIZE)
    model_overrides: dict[str, Any] = param(
        default_factory=dict,
        doc="DSODConfig fields over the variant's, e.g. {memory_efficient: true}",
        schema=DSODConfig,
    )
    init_weights: str | None = param(None, "null: from scratch; else model.pt of a source run")
    init_format: Literal["project", "torchvision", "timm"] = param(
        "project",
        "what init_weights is: project (a model.pt of this project) or an ImageNet VGG16 "
        "checkpoint in torchvision's or timm's layout (dsod_core.backbone_init)",
    )
    # optimisation (per-process micro-batch; global batch = batch_size*accumulate*world)
    batch_size: int = param(16, "images per process and micro-batch", min=1)
    accumulate: int = param(1, "micro-batches per optimiser step", min=1)
    epochs: int = param(30, "passes over the train split (unless iterations is set)", min=1)
    iterations: int | None = param(None, "optimiser steps; when set, it decides the length", min=1)
    optimizer: Literal["sgd"] = param("sgd", "SGD with momentum (the paper's)")
    lr: float = param(0.05, "learning rate (after warm-up)", min=0)
    momentum: float = param(0.9, "SGD momentum", min=0)
    weight_decay: float = param(5e-4, "L2 weight decay", min=0)
    warmup_steps: int = param(50, "linear warm-up, in optimiser steps", min=0)
    schedule: Literal["multistep", "cosine"] = param("multistep", "learning-rate schedule")
    lr_steps: list[float] = param(
        default_factory=lambda: [0.67, 0.89],
        doc="multistep: drops (x lr_gamma) at these fractions of all steps",
        min=0,
        max=1,
        min_exclusive=True,
        max_exclusive=True,
        expect="a list of fractions in (0, 1)",
    )
    lr_gamma: float = param(0.1, "multistep: factor of each drop", min=0)
    grad_clip: float | None = param(
        None, "max global gradient norm; null: off", min=0, min_exclusive=True
    )
    # data
    augmentation: dict[str, Any] = param(
        default_factory=dict,
        doc="training augmentation (dsod_core.data.transforms.AugmentationParams)",
        schema=AugmentationParams,
    )
    negative_fraction: float = param(
        1.0,
        "share of the background-only train samples (no box) drawn into each epoch, a new "
        "draw per epoch from `seed`; 1.0: all of them, 0: none",
        min=0,
        max=1,
    )
    num_workers: int = param(0, "DataLoader worker processes", min=0)
    # evaluation during training
    eval_every: int = param(1, "validation mAP every N epochs; 0: only at the end", min=0)
    postprocess: dict[str, Any] = param(
        default_factory=dict,
        doc="decoding and NMS of the validation (PostprocessParams)",
        schema=PostprocessParams,
    )
    # budget: stop on a validation plateau, keep the best weights (docs/training.md)
    patience: int | None = param(
        None,
        "stop after this many validation evaluations in a row without a better val mAP@0.5 "
        "(Ignite EarlyStopping); null: off, every epoch runs",
        min=1,
    )
    keep_best: bool = param(
        False,
        "model.pt holds the weights of the best validation evaluation (val mAP@0.5), not the "
        "last epoch's",
    )
    # hardware
    device: Literal["auto", "cpu", "cuda"] = param("auto", "auto: the GPU when there is one")
    threads: int | None = param(
        None, "CPU threads per process; null: cores / processes on the node", min=1
    )
    # CUDA only: autocast. True/"auto": bfloat16 where the GPU supports it, else float16 with
    # a GradScaler; "bf16" / "fp16" force one; False/"off": float32.
    amp: bool | Literal["auto", "bf16", "fp16", "off"] = param(
        True, "CUDA autocast: true/auto (bf16 where supported, else fp16), bf16, fp16, false/off"
    )
    channels_last: bool = param(True, "NHWC tensors on CUDA")
    compile: bool = param(False, "torch.compile the training forward (eager if it fails)")
    sync_bn: bool = param(False, "SyncBatchNorm across processes (CUDA/NCCL)")
    backend: Literal["gloo", "nccl"] | None = param(None, "null: one process; gloo or nccl")
    nproc_per_node: int | None = param(None, "spawn N processes (Ignite launcher)", min=1)
    # reproducibility and resumption
    seed: int = param(0, "seed of initialisation, data order and augmentation", min=0)
    resume: bool = param(False, "continue from the newest checkpoint in out_dir/checkpoints")
    keep_checkpoints: int = param(2, "newest checkpoints kept", min=1)
    progress: bool = param(
        True, "progress bars on a terminal, a line per epoch elsewhere (DSOD_PROGRESS overrides)"
    )
    dvclive: bool = param(True, "log per-epoch metrics with DVCLive (rank 0)")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "params.yaml") -> TrainConfig:
        """Validate a mapping of TrainConfig fields (messages start with ``source``)."""
        return cls.parse(d, source=source)

    def check(self) -> None:
        self.parse_nested("augmentation", AugmentationParams)
        self.parse_nested("postprocess", PostprocessParams)
        if self.patience is not None and self.eval_every == 0:
            self.fail("patience", "needs validation evaluations during training (eval_every >= 1)")
        fixed = [k for k in NOT_OVERRIDES if k in self.model_overrides]
        if fixed:
            self.fail(
                "model_overrides",
                f"{fixed} are set by the data and input_size, not by overrides",
            )
        from dsod_core.model.registry import list_variants

        if self.variant not in list_variants():
            self.fail(
                "variant",
                f"{self.variant!r} is not a known variant (known: {', '.join(list_variants())})",
            )

    @classmethod
    def _message(cls, owner: str, err: ParamError) -> str:
        if err.kind == "unknown" and len(err.key) == 1:  # a key of the run's own mapping
            return (
                f"unknown {owner or 'train'} key(s) {list(err.unknown)}{err.hint} "
                f"(accepted: {', '.join(err.accepted)})"
            )
        return super()._message(owner, err)
