"""The weights format of a trained run (``model.pt``): writing it and rebuilding the model.

A plain dict of tensors and primitives, loaded with ``weights_only=True``:

* ``format`` = ``"dsod-weights"``, ``version`` = 1;
* ``model``: the detector's ``state_dict``;
* what rebuilds it: ``variant``, ``input_size``, ``model_overrides``, ``in_channels``,
  ``num_classes``;
* what the data was: ``class_names``, ``channel_names``, ``modality``, ``mean``/``std``
  (float32 ``[C]``, the store's train-split normalisation), ``adapter_params`` (the adapter
  params the store was prepared with, resolved: what ``dsod detect`` reads new files with)
  and ``dataset`` (the params name of the store's dataset);
* ``tiling`` (only for a tiled store: the dataset's resolved tiling params; ``dsod detect``
  tiles inputs by it);
* extras of the run (``train_seconds``, ``history``, ``transfer``).

Evaluation, export and benchmarks load a model through :func:`load_trained_model` without
importing the trainer.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from dsod_core.data.store import StoreReader
from dsod_core.engine.checkpoint import load_checkpoint
from dsod_core.errors import CheckpointError
from dsod_core.model import DSOD, build_model

WEIGHTS_FORMAT = "dsod-weights"


def weights_dict(
    model: nn.Module,
    *,
    variant: str,
    input_size: int,
    model_overrides: dict[str, Any],
    reader: StoreReader,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Final weights of ``model`` trained on ``reader``'s store, as a plain dict."""
    det = model.module if hasattr(model, "module") else model
    return {
        "format": WEIGHTS_FORMAT,
        "version": 1,
        "model": {k: v.detach().cpu() for k, v in det.state_dict().items()},
        "variant": variant,
        "input_size": int(input_size),
        "model_overrides": dict(model_overrides),
        "in_channels": reader.num_channels,
        "num_classes": reader.num_classes,
        "class_names": list(reader.class_names),
        "channel_names": list(reader.channel_names),
        "modality": reader.modality,
        "mean": torch.from_numpy(reader.mean.copy()),
        "std": torch.from_numpy(reader.std.copy()),
        "adapter_params": _plain(reader.params.get("adapter")),
        "dataset": str(reader.params.get("dataset", "")),
        # A tiled store's resolved tiling params: `dsod detect` cuts inputs into the same tiles.
        **({"tiling": _plain(reader.params["tiling"])} if reader.params.get("tiling") else {}),
        **(extra or {}),
    }


def _plain(value: Any) -> Any:
    """JSON-like values only (what ``weights_only`` loads): tuples become lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def load_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a ``model.pt`` (weights_only); foreign files raise CheckpointError."""
    w = load_checkpoint(path)
    if w.get("format") != WEIGHTS_FORMAT or "model" not in w:
        raise CheckpointError("not a dsod-weights file (expected model.pt of a run)", path=path)
    return w


def load_trained_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[DSOD, dict[str, Any]]:
    """Rebuild a detector from a run's ``model.pt``; returns ``(model in eval mode, meta)``."""
    w = load_weights(path)
    model = build_model(
        w["variant"],
        in_channels=int(w["in_channels"]),
        num_classes=int(w["num_classes"]),
        input_size=int(w["input_size"]),
        **w.get("model_overrides", {}),
    )
    try:
        model.load_state_dict(w["model"])
    except RuntimeError as exc:
        first = " ".join(str(exc).split())
        raise CheckpointError(f"weights do not fit the model: {first}", path=path) from exc
    return model.to(device).eval(), w
