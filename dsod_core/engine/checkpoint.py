"""Checkpoints as plain dicts of tensors and primitives, written atomically, newest N kept.

Loading always uses ``torch.load(..., weights_only=True)``: a pickle that would construct
arbitrary objects (and so could run code) is refused before anything in it runs.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from dsod_core.errors import CheckpointError

_PATTERN = re.compile(r"^ckpt_epoch(\d+)\.pt$")


def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` into a temp file in the same folder, fsync, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely; corrupt, foreign or unsafe files raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path=path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe pickle"
        raise CheckpointError(
            f"refused: not a plain checkpoint (weights_only load failed: {first[:200]})",
            path=path,
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt or unreadable checkpoint ({exc})", path=path) from exc
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


def save_training_checkpoint(
    directory: str | os.PathLike, epoch: int, state: dict[str, Any], keep: int = 2
) -> Path:
    """Write ``ckpt_epoch<N>.pt`` atomically and delete all but the newest ``keep``."""
    path = save_atomic(state, Path(directory) / f"ckpt_epoch{epoch:04d}.pt")
    for old in checkpoint_files(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


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
