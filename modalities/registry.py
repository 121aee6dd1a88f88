"""Name -> adapter class, for the built-in modalities and for third-party packages.

Third-party packages add adapters through the entry-point group ``dsod.modalities``::

    [project.entry-points."dsod.modalities"]
    thermal = "my_pkg.thermal:ThermalAdapter"

Names are only ever resolved through this registry (never by importing a module named in a
params file), so a params file cannot make the pipeline import arbitrary code.
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import entry_points

from dsod_core.errors import ConfigError
from modalities.base import ModalityAdapter

ENTRY_POINT_GROUP = "dsod.modalities"

# Built-ins are listed here too so the registry works without an installed distribution.
_BUILTIN = {
    "rgb": "modalities.rgb:RGBAdapter",
    "depth": "modalities.depth:DepthAdapter",
    "medical": "modalities.medical:MedicalAdapter",
    "multispectral": "modalities.multispectral:MultispectralAdapter",
}

_registered: dict[str, type[ModalityAdapter]] = {}


def register(name: str):
    """Class decorator registering an adapter under ``name``."""

    def deco(cls: type[ModalityAdapter]) -> type[ModalityAdapter]:
        if not issubclass(cls, ModalityAdapter):
            raise TypeError(f"{cls!r} is not a ModalityAdapter")
        cls.name = name
        _registered[name] = cls
        return cls

    return deco


def _spec_table() -> dict[str, str]:
    table = dict(_BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        table.setdefault(ep.name, ep.value)
    return table


def available() -> list[str]:
    """Names of every adapter that can be resolved (registered, built-in or entry point)."""
    names = set(_registered) | set(_spec_table())
    return sorted(n for n in names if _loadable(n))


def _loadable(name: str) -> bool:
    try:
        get_adapter(name)
    except Exception as exc:  # a broken third-party adapter must not break the others
        warnings.warn(f"modality adapter {name!r} cannot be loaded: {exc}", stacklevel=3)
        return False
    return True


def get_adapter(name: str) -> type[ModalityAdapter]:
    """Resolve an adapter class by name; unknown names list the known ones."""
    if name in _registered:
        return _registered[name]
    table = _spec_table()
    if name not in table:
        known = sorted(set(_registered) | set(table))
        raise ConfigError(f"unknown modality {name!r}; known modalities: {', '.join(known)}")
    module_name, _, attr = table[name].partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, ModalityAdapter)):
        raise ConfigError(f"entry point {name!r} -> {table[name]} is not a ModalityAdapter")
    _registered[name] = cls
    return cls
