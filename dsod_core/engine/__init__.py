"""Ignite engines: training (CPU / GPU AMP / distributed), evaluation, checkpoints."""

from dsod_core.engine.config import TrainConfig
from dsod_core.engine.trainer import load_trained_model, run, train

__all__ = ["TrainConfig", "load_trained_model", "run", "train"]
