"""The training budget: stop on a validation plateau, keep the best weights.

``train.patience`` is Ignite's :class:`~ignite.handlers.EarlyStopping` fed with the
validation mAP@0.5 of each evaluation: after ``patience`` evaluations in a row without a
better one (a tie is no improvement) it terminates the trainer. ``train.keep_best`` is an
Ignite :class:`~ignite.handlers.Checkpoint` with ``score_function`` (the same mAP) and
``n_saved=1`` writing ``checkpoints/best/best_epoch<N>.pt`` through the project's durable
saver; at the end its weights are loaded into the model before ``model.pt`` is written (the
earliest of equal bests is kept). Both are off by default and then nothing here is attached:
the run is exactly the one without them. Both are in the resume state (``to_save``) when on.

The validation scores exist on rank 0 only; the score is broadcast so that every process
stops at the same epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from ignite.handlers import Checkpoint, EarlyStopping
from torch import nn

from dsod_core.engine.checkpoint import DurableDiskSaver, load_checkpoint
from dsod_core.engine.config import TrainConfig

NO_SCORE = -1.0  # broadcast when rank 0 has no validation score (empty split)


class Budget:
    """Early stopping and the best weights of one run (both optional)."""

    def __init__(self, config: TrainConfig, trainer: Engine, model: nn.Module) -> None:
        self.config = config
        self.model = model
        self.score: float | None = None
        self.stopper: EarlyStopping | None = None
        self.best: Checkpoint | None = None
        self.stopped_at: int | None = None
        if config.patience is not None:
            self.stopper = EarlyStopping(config.patience, lambda _: self.score, trainer)
        if config.keep_best:
            self.best = Checkpoint(
                {"model": model},
                DurableDiskSaver(
                    str(Path(config.out_dir) / "checkpoints" / "best"),
                    create_dir=True,
                    require_empty=False,
                ),
                n_saved=1,
                filename_pattern="best_epoch{global_step:04d}.{ext}",
                score_function=lambda _: self.score,
                score_name="val_map50",
                global_step_transform=lambda engine, _: engine.state.epoch,
                save_on_rank=0,
            )

    @property
    def active(self) -> bool:
        return self.stopper is not None or self.best is not None

    def state(self) -> dict[str, Any]:
        """The handlers to checkpoint and resume (empty when both are off)."""
        out: dict[str, Any] = {}
        if self.stopper is not None:
            out["stopper"] = self.stopper
        if self.best is not None:
            out["best"] = self.best
        return out

    def update(self, engine: Engine, row: dict[str, Any], evaluated: bool) -> None:
        """After an epoch's history row (``evaluated``: the epoch had a validation run, the
        same on every rank): save the best weights and count the plateau, on every rank with
        the score broadcast from rank 0 (the only one that has it)."""
        if not self.active or not evaluated:
            return
        score = row.get("val_map50")
        score = NO_SCORE if score is None else float(score)
        if idist.get_world_size() > 1:
            score = float(idist.broadcast(torch.tensor(score, dtype=torch.float64), src=0))
        if score == NO_SCORE:
            return
        self.score = score
        if self.best is not None:
            self.best(engine)
        if self.stopper is not None:
            self.stopper(engine)
            if engine.should_terminate:
                self.stopped_at = engine.state.epoch

    def finish(self, history: list[dict[str, Any]], epochs: int) -> dict[str, Any]:
        """Load the best weights (keep_best, rank 0) and say how the run ended: ``reason``
        (``patience`` or ``end``), ``epochs_run``, ``best_epoch`` and ``best_val_map50``,
        ``weights`` (``best`` or ``last``)."""
        scored = [h for h in history if h.get("val_map50") is not None]
        best_row = max(scored, key=lambda h: h["val_map50"], default=None)  # first of ties
        weights = "last"
        if self.best is not None and self.best.last_checkpoint is not None:
            state = load_checkpoint(self.best.last_checkpoint)
            self.model.load_state_dict(state.get("model", state))
            weights = "best"
        reason = "end"
        if self.stopped_at is not None:
            reason = "patience"
        out = {
            "reason": reason,
            "epochs_run": len(history),
            "epochs_planned": epochs,
            "patience": self.config.patience,
            "best_epoch": None if best_row is None else best_row["epoch"],
            "best_val_map50": None if best_row is None else best_row["val_map50"],
            "weights": weights,
        }
        if reason == "patience":
            out["why"] = (
                f"val mAP@0.5 did not improve on {out['best_val_map50']:.4f} (epoch "
                f"{out['best_epoch']}) in {self.config.patience} evaluations; stopped after "
                f"epoch {self.stopped_at} of {epochs}"
            )
        return out
