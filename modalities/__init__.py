"""Modality adapters: native file formats -> canonical samples -> world coordinates."""

from modalities.base import ModalityAdapter, SampleRef, assign_split
from modalities.registry import available, get_adapter, register

__all__ = ["ModalityAdapter", "SampleRef", "assign_split", "available", "get_adapter", "register"]
