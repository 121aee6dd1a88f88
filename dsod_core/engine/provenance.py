"""What a trained run is: the record the train stage writes beside the weights
(``<run>/config.json``, :data:`RUN_CONFIG`) and the evaluate stage reads back.

One JSON object: the training settings the run was trained with
(:meth:`TrainConfig.to_dict`, among them ``seed`` and ``train_fraction``), then ``dataset``
(the params dataset it trained on), ``init`` (``pretrain``, ``scratch`` or ``finetuned``),
``source`` (the source dataset a fine-tuned run started from, or whose budget a matched
scratch run was given, else null), ``train_images`` and ``train_units`` (the samples and whole
independence units of its training subset) and ``budget``: what else its compute is counted
with (a fine-tuned run: ``source_seed`` and ``source_image_passes``, the source model's
training; a matched run: the same and ``target_image_passes``, the total it was given;
docs/study.md, "Equal budget").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsod_core.engine.config import TrainConfig
from dsod_core.errors import CheckpointError
from dsod_core.io import write_json

RUN_CONFIG = "config.json"  # the record's file name in a run folder

# The record's own keys, written after the training settings, in this order.
_KEYS = ("dataset", "init", "source", "train_images", "train_units", "budget")


@dataclass(frozen=True)
class RunProvenance:
    dataset: str
    init: str  # "pretrain", "scratch", "finetuned" or "matched" (compute-matched scratch)
    source: str | None = None  # the source dataset of a fine-tuned (or matched) run
    train_images: int | None = None  # samples in the training subset
    train_units: int | None = None  # whole source units (images, volumes, scenes) in it
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig.to_dict() of the run
    budget: dict[str, Any] = field(default_factory=dict)  # source compute counted with it

    @property
    def seed(self) -> int | None:
        """The training seed (null in a record without training settings)."""
        return self.train.get("seed")

    @property
    def train_fraction(self) -> float:
        """The nested train fraction (1.0 when the record does not say)."""
        return self.train.get("train_fraction", 1.0)

    @classmethod
    def of_training(
        cls,
        config: TrainConfig,
        dataset: str,
        init: str,
        source: str | None,
        train_images: int,
        train_units: int,
        budget: dict[str, Any] | None = None,
    ) -> RunProvenance:
        """The record of a run trained with ``config``."""
        return cls(
            dataset, init, source, train_images, train_units, config.to_dict(), dict(budget or {})
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of :data:`RUN_CONFIG`."""
        return {
            **self.train,
            "dataset": self.dataset,
            "init": self.init,
            "source": self.source,
            "train_images": self.train_images,
            "train_units": self.train_units,
            "budget": self.budget,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str | Path | None = None) -> RunProvenance:
        """The record of a :data:`RUN_CONFIG` object (``dataset`` and ``init`` required; the
        keys that are not the record's own are the training settings). ``path`` names the
        file in errors."""
        if not isinstance(d, dict):
            raise CheckpointError("run config is not a JSON object", path=path)
        for key in ("dataset", "init"):
            if not isinstance(d.get(key), str):
                raise CheckpointError(f"run config has no {key!r} (re-run train)", path=path)
        return cls(
            dataset=d["dataset"],
            init=d["init"],
            source=d.get("source"),
            train_images=d.get("train_images"),
            train_units=d.get("train_units"),
            train={k: v for k, v in d.items() if k not in _KEYS},
            budget=dict(d.get("budget") or {}),
        )

    @classmethod
    def read(cls, run_dir: str | Path) -> RunProvenance:
        """The record of the run in ``run_dir``."""
        path = Path(run_dir) / RUN_CONFIG
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise CheckpointError("run has not been trained (no config.json)", path=path) from exc
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"run config unreadable ({exc})", path=path) from exc
        return cls.from_dict(data, path)

    def write(self, run_dir: str | Path) -> Path:
        """Write the record into ``run_dir`` (atomically); returns its path."""
        path = Path(run_dir) / RUN_CONFIG
        write_json(path, self.to_dict())
        return path
