"""Ignite engines: training (CPU / GPU AMP / distributed), evaluation, checkpoints.

The names below are imported on first use (PEP 562): a stage that only reads the training
params (``TrainConfig``) does not pay for importing PyTorch-Ignite.
"""

from __future__ import annotations

import importlib
from typing import Any

from dsod_core.engine.config import TrainConfig

_LAZY = {
    "run": "dsod_core.engine.trainer",
    "train": "dsod_core.engine.trainer",
    "WEIGHTS_FORMAT": "dsod_core.engine.weights",
    "load_trained_model": "dsod_core.engine.weights",
    "weights_dict": "dsod_core.engine.weights",
}

__all__ = ["WEIGHTS_FORMAT", "TrainConfig", "load_trained_model", "run", "train", "weights_dict"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
