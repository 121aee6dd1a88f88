"""Name -> adapter class, through one mechanism: the entry-point group ``dsod.modalities``.

The built-in modalities are declared in this project's ``pyproject.toml`` exactly as another
package declares its own::

    [project.entry-points."dsod.modalities"]
    thermal = "my_pkg.thermal.adapter:ThermalAdapter"

Names are only ever resolved through this registry (never by importing a module named in a
params file), so a params file cannot make the pipeline import arbitrary code.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from dsod_core.errors import ConfigError
from modalities.base import ModalityAdapter

ENTRY_POINT_GROUP = "dsod.modalities"

_loaded: dict[str, type[ModalityAdapter]] = {}


def _table() -> dict[str, tuple[str, str | None]]:
    """name -> (``module:attr``, distribution version or None)."""
    table: dict[str, tuple[str, str | None]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        table.setdefault(ep.name, (ep.value, dist.version if dist is not None else None))
    return table


def available() -> list[str]:
    """Names of every adapter that can be resolved."""
    return sorted(n for n in _table() if _loadable(n))


def _loadable(name: str) -> bool:
    try:
        get_adapter(name)
    except Exception as exc:  # a broken third-party adapter must not break the others
        warnings.warn(f"modality adapter {name!r} cannot be loaded: {exc}", stacklevel=3)
        return False
    return True


def get_adapter(name: str) -> type[ModalityAdapter]:
    """Resolve an adapter class by name; unknown names list the known ones."""
    if name in _loaded:
        return _loaded[name]
    table = _table()
    if name not in table:
        raise ConfigError(
            f"unknown modality {name!r}; known modalities: {', '.join(sorted(table))}"
        )
    spec = table[name][0]
    module_name, _, attr = spec.partition(":")
    cls = getattr(importlib.import_module(module_name), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, ModalityAdapter)):
        raise ConfigError(f"entry point {name!r} -> {spec} is not a ModalityAdapter")
    if cls.name != name:
        raise ConfigError(f"entry point {name!r} -> {spec} declares name {cls.name!r}")
    _loaded[name] = cls
    return cls


def adapter_version(name: str) -> str | None:
    """Version of the distribution that provides adapter ``name`` (None when not installed)."""
    entry = _table().get(name)
    return entry[1] if entry else None


def adapter_code(name: str) -> Path:
    """The code that makes adapter ``name``: its package folder when the class lives in a
    ``<package>/adapter.py`` (the house shape), else its module file. The pipeline lists this
    path among the prepare stage's DVC deps (``datasets.<name>.code``)."""
    module_file = Path(inspect.getfile(get_adapter(name))).resolve()
    if module_file.name == "adapter.py" and (module_file.parent / "__init__.py").is_file():
        return module_file.parent
    return module_file


def adapter_from_store(reader: Any) -> ModalityAdapter:
    """The adapter a store was prepared with (``reader``: a ``StoreReader``): rebuilt from the
    store's recorded params and given back what it learnt from the data
    (``ModalityAdapter.restore``), without listing or reading the raw dataset."""
    params = dict(reader.params or {})
    cls = get_adapter(reader.modality)
    try:
        adapter_params = cls.Params.parse(params.get("adapter") or {}, owner=cls.name)
    except ConfigError as exc:
        raise ConfigError(
            f"the store's adapter params no longer parse ({exc.reason}): re-run prepare",
            path=reader.path,
        ) from None
    adapter = cls(params.get("root", "."), adapter_params)
    state = reader.adapter_state or {"class_names": list(reader.class_names)}
    adapter.restore(state)
    return adapter
