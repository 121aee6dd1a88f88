"""Shared plumbing of the stage scripts: params loading and one-line errors (atomic writes
are :mod:`dsod_core.io`, re-exported here)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from dsod_core.errors import ConfigError, ProjectError
from dsod_core.io import write_atomic, write_json

__all__ = ["load_params", "stage_main", "write_atomic", "write_json"]


def load_params(path: str | Path = "params.yaml", what: str = "params file") -> dict[str, Any]:
    """Read a YAML (or JSON) mapping such as params.yaml with ``yaml.safe_load`` (never
    executes anything); ``what`` names the file in errors."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} not found", path=path) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({str(exc).splitlines()[0]})", path=path) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must hold a mapping at the top level", path=path)
    return data


def stage_main(fn: Callable[[list[str] | None], int | None]) -> Callable[[], None]:
    """Wrap a stage's main: project errors become one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> None:
        try:
            code = fn(argv)
        except ProjectError as exc:
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        sys.exit(code or 0)

    return wrapper
