"""Modality adapters: native file formats -> canonical samples -> world coordinates.

One package per modality (``modalities/<name>/``: ``adapter.py``, ``params.py``, ``demo.py``
and one module per file format), resolved by name through :mod:`modalities.registry`.
"""

from modalities.base import (
    AdapterParams,
    ModalityAdapter,
    PrepareLog,
    SampleRef,
    assign_split,
    param,
)
from modalities.registry import adapter_code, adapter_version, available, get_adapter

__all__ = [
    "AdapterParams",
    "ModalityAdapter",
    "PrepareLog",
    "SampleRef",
    "adapter_code",
    "adapter_version",
    "assign_split",
    "available",
    "get_adapter",
    "param",
]
