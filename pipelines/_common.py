"""Shared plumbing of the stage scripts: params loading, one-line errors, atomic writes."""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from dsod_core.errors import ConfigError, ProjectError

_UMASK = os.umask(0)
os.umask(_UMASK)


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml with ``yaml.safe_load`` (never executes anything)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError("params file not found", path=path) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({str(exc).splitlines()[0]})", path=path) from exc
    if not isinstance(data, dict):
        raise ConfigError("params file must hold a mapping at the top level", path=path)
    return data


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def stage_main(fn: Callable[[list[str] | None], int | None]) -> Callable[[], None]:
    """Wrap a stage's main: project errors become one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> None:
        try:
            code = fn(argv)
        except ProjectError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        sys.exit(code or 0)

    return wrapper
