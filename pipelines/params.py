"""Reading and checking the sections of params.yaml that the stage scripts use.

Each stage reads only its own slice; unknown keys and wrong types are refused with a
:class:`ConfigError` naming params.yaml and the key.
"""

from __future__ import annotations

from typing import Any

from dsod_core.errors import ConfigError

DEMO_KEYS = {"out", "image_size", "num_images", "num_images_per_modality", "modalities"}
DATASET_KEYS = {"modality", "root", "adapter", "description"}
PREPARE_KEYS = {"on_error", "compression"}
EVALUATE_KEYS = {"split", "score_threshold", "nms_iou", "max_detections", "pictures", "batch_size"}


def _section(params: dict[str, Any], name: str, allowed: set[str], source: str) -> dict:
    sec = params.get(name)
    if not isinstance(sec, dict):
        raise ConfigError(f"missing or malformed section {name!r}", path=source)
    unknown = sorted(set(sec) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {name!r}; accepted: {sorted(allowed)}", path=source
        )
    return sec


def demo_section(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    return _section(params, "demo", DEMO_KEYS, source)


def prepare_section(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    sec = _section(params, "prepare", PREPARE_KEYS, source)
    if sec.get("on_error", "error") not in ("error", "skip"):
        raise ConfigError(
            f"prepare.on_error must be 'error' or 'skip', got {sec['on_error']!r}", path=source
        )
    return sec


def evaluate_section(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    return _section(params, "evaluate", EVALUATE_KEYS, source)


def dataset_entry(params: dict[str, Any], name: str, source: str = "params.yaml") -> dict:
    datasets = params.get("datasets")
    if not isinstance(datasets, dict) or name not in datasets:
        known = sorted(datasets) if isinstance(datasets, dict) else []
        raise ConfigError(f"unknown dataset {name!r}; datasets in params: {known}", path=source)
    entry = datasets[name]
    if not isinstance(entry, dict):
        raise ConfigError(f"datasets.{name} must be a mapping", path=source)
    unknown = sorted(set(entry) - DATASET_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in datasets.{name}; accepted: {sorted(DATASET_KEYS)}",
            path=source,
        )
    for key in ("modality", "root"):
        if not isinstance(entry.get(key), str):
            raise ConfigError(f"datasets.{name}.{key} must be a string", path=source)
    if not isinstance(entry.get("adapter", {}) or {}, dict):
        raise ConfigError(f"datasets.{name}.adapter must be a mapping", path=source)
    return entry
