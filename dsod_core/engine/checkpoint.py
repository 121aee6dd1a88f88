"""Checkpoints as plain dicts of tensors and primitives, written atomically, newest N kept.

Rotation is Ignite's :class:`~ignite.handlers.Checkpoint` with a :class:`DurableDiskSaver`
(Ignite's ``DiskSaver`` renames atomically but does not fsync; ours writes through
:func:`dsod_core.io.atomic_path`, which does). Resume is ``Checkpoint.load_objects`` on a dict
loaded here with ``torch.load(..., weights_only=True)``: a pickle that would construct
arbitrary objects (and so could run code) is refused before anything in it runs, and a corrupt
newest checkpoint falls back to the one before (:func:`latest_checkpoint`).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.handlers import Checkpoint, DiskSaver

from dsod_core.errors import CheckpointError
from dsod_core.io import atomic_path

_PATTERN = re.compile(r"^ckpt_epoch(\d+)\.pt$")
FILENAME_PATTERN = "ckpt_epoch{global_step:04d}.{ext}"


def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` into a temp file in the same folder, fsync, then rename onto ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


class DurableDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` whose atomic write also fsyncs (see :mod:`dsod_core.io`)."""

    def _save_func(self, checkpoint: Mapping, path: Path, func) -> None:
        with atomic_path(path) as tmp:
            func(checkpoint, tmp, **self.kwargs)


def checkpointer(
    directory: str | os.PathLike, to_save: Mapping[str, Any], keep: int = 2
) -> Checkpoint:
    """An Ignite ``Checkpoint`` writing ``ckpt_epoch<N>.pt`` into ``directory``, newest ``keep``
    kept. Checkpoints already there (a resumed run) join its rotation."""
    saver = DurableDiskSaver(str(directory), create_dir=True, require_empty=False)
    handler = Checkpoint(
        to_save,
        saver,
        n_saved=keep,
        filename_pattern=FILENAME_PATTERN,
        global_step_transform=lambda engine, _: engine.state.epoch,
    )
    existing = [(int(_PATTERN.match(p.name).group(1)), p.name) for p in checkpoint_files(directory)]
    handler.load_state_dict({"_saved": existing})
    return handler


def _refusal(exc: pickle.UnpicklingError) -> str:
    """The one reason in torch's multi-paragraph weights-only refusal."""
    text = " ".join(str(exc).split())
    m = re.search(
        r"WeightsUnpickler error:\s*(.*?)(?: Please use| Check the documentation|$)", text
    )
    reason = (m.group(1) if m else text).strip().rstrip(".")
    return reason or "unsafe pickle"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely; corrupt, foreign or unsafe files raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path=path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: one line only
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            "refused: not a plain checkpoint of tensors, the file pickles Python objects that "
            f"could run code ({_refusal(exc)})",
            path=path,
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"corrupt or unreadable checkpoint ({first})", path=path) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict, found {type(obj).__name__}", path=path)
    return obj


def checkpoint_files(directory: str | os.PathLike) -> list[Path]:
    """Checkpoints in ``directory`` ordered oldest to newest by epoch."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _PATTERN.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The newest loadable checkpoint; a corrupt newest one falls back to the one before."""
    errors = []
    for path in reversed(checkpoint_files(directory)):
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            errors.append(str(exc))
    if errors:
        raise CheckpointError("no loadable checkpoint: " + "; ".join(errors), path=directory)
    return None
