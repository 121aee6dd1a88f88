"""Ignite engines: training (CPU / GPU AMP / distributed), evaluation, checkpoints."""

from dsod_core.engine.config import TrainConfig
from dsod_core.engine.trainer import run, train
from dsod_core.engine.weights import WEIGHTS_FORMAT, load_trained_model, weights_dict

__all__ = ["WEIGHTS_FORMAT", "TrainConfig", "load_trained_model", "run", "train", "weights_dict"]
