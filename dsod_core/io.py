"""Atomic file writes: the one way the project puts a file on disk.

Every output (JSON, images, checkpoints, ONNX graphs, demo data) is written to a temporary file
in the destination folder, flushed and fsynced, given the permissions a plain ``open`` would
give (``0o666`` less the umask; ``mkstemp`` alone makes them ``0600``) and renamed onto the
destination. A reader therefore sees the old file or the new one, never half of one, and a
killed process leaves at most a hidden ``.<name>.*.tmp`` file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto it.

    For writers that want a file name (``PIL.Image.save``, ``nibabel.save``, rasterio,
    ``torch.onnx.export``). ``suffix`` lets format-sniffing writers see the right extension
    (e.g. ``".nii.gz"``). On any exception the temporary file is removed and ``path`` is
    untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def write_with(path: str | os.PathLike, writer: Callable[[Path], Any], suffix: str = ".tmp"):
    """Call ``writer(tmp_path)`` and rename the result onto ``path`` atomically."""
    with atomic_path(path, suffix=suffix) as tmp:
        writer(tmp)
    return Path(path)


def json_default(o: Any) -> Any:
    """``json.dumps`` fallback for numpy scalars/arrays and paths."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def write_json(
    path: str | os.PathLike, obj: Any, indent: int | None = 2, allow_nan: bool = True
) -> Path:
    """``obj`` as JSON (numpy values converted) written atomically. ``allow_nan=False`` refuses
    NaN/Infinity, which strict JSON readers (GeoJSON clients) reject."""
    text = json.dumps(obj, indent=indent, default=json_default, allow_nan=allow_nan)
    return write_atomic(path, text + "\n")
