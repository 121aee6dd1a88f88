"""The project's error family.

Every error raised at a boundary (a file read, a params file, a checkpoint) carries the
offending path and a reason, so stage scripts can print exactly one line and exit non-zero.
"""

from __future__ import annotations

from os import PathLike


class ProjectError(Exception):
    """Base class: ``str(err)`` is the one-line message a user sees."""

    def __init__(self, reason: str, path: str | PathLike | None = None, sample: str | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        self.sample = sample
        parts = []
        if self.path:
            parts.append(self.path)
        if sample:
            parts.append(f"sample {sample}")
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)


class DataError(ProjectError):
    """An input data file (image, volume, raster, annotation, store) is unusable."""


class ConfigError(ProjectError):
    """A params file or a configuration value is wrong."""


class CheckpointError(ProjectError):
    """A checkpoint is corrupt, foreign, unsafe or does not fit the model/data."""
