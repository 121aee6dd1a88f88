"""DSOD: deeply supervised object detectors trained from scratch, for any channel count."""

from dsod_core.errors import CheckpointError, ConfigError, DataError, ProjectError

__all__ = ["CheckpointError", "ConfigError", "DataError", "ProjectError"]
__version__ = "0.1.0"
