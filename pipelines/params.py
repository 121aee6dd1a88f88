"""Reading and checking ``params.yaml``: the whole file, before any stage touches an output.

:func:`validate_params` is called first by every stage script (and by the ``check`` stage that
``dvc.yaml`` runs before all others, so that ``dvc repro`` stops on a typo before DVC removes
any stage's previous outputs). It refuses unknown keys (with a "did you mean"), wrong types,
unknown model variants, ``targets`` or ``sources`` not in ``datasets``, unknown
modalities, adapter params their adapter does not accept, and a dataset ``code`` path that is
not the code of its adapter. Every message names the params file and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from pathlib import Path
from typing import Any

from dsod_core.engine.config import TrainConfig
from dsod_core.errors import ConfigError, DataError

TOP_KEYS = {
    "seed",
    "seeds",
    "train_fractions",
    "sources",
    "demo",
    "datasets",
    "prepare",
    "model",
    "pretrain",
    "targets",
    "train",
    "finetune",
    "evaluate",
}
DEMO_KEYS = {"image_size", "num_images", "num_images_per_modality", "modalities"}
DATASET_KEYS = {"modality", "root", "code", "adapter", "description", "train", "finetune"}
PREPARE_KEYS = {"on_error", "compression"}
MODEL_KEYS = {"variant", "input_size", "overrides"}
PRETRAIN_KEYS = {"train"}
EVALUATE_KEYS = {
    "split",
    "score_threshold",
    "nms_iou",
    "max_detections",
    "pictures",
    "batch_size",
    "device",
}
INITS = ("scratch", "finetuned")


def study_axes(params: dict[str, Any], source: str = "params.yaml") -> dict[str, list]:
    """``seeds``, ``train_fractions`` and ``sources``, checked: the axes every target run is
    trained over (docs/study.md)."""
    seeds = params.get("seeds", [params.get("seed", 0)])
    _need(
        isinstance(seeds, list) and seeds and all(_is_int(s, 0) for s in seeds),
        f"seeds must be a non-empty list of non-negative integers, got {seeds!r}",
        source,
    )
    _need(len(set(seeds)) == len(seeds), f"seeds has repeats: {seeds!r}", source)
    fractions = params.get("train_fractions", [1.0])
    _need(
        isinstance(fractions, list)
        and fractions
        and all(_is_num(f) and 0 < f <= 1 for f in fractions),
        f"train_fractions must be a non-empty list of numbers in (0, 1], got {fractions!r}",
        source,
    )
    _need(
        len(set(fractions)) == len(fractions), f"train_fractions has repeats: {fractions!r}", source
    )
    sources = params.get("sources")
    datasets = params.get("datasets") or {}
    _need(
        isinstance(sources, list) and sources,
        "sources must be a non-empty list of datasets (the source models of fine-tuning)",
        source,
    )
    for name in sources:
        _need(
            name in datasets,
            f"sources: {name!r} is not in datasets ({', '.join(datasets)})",
            source,
        )
    _need(len(set(sources)) == len(sources), f"sources has repeats: {sources!r}", source)
    return {"seeds": seeds, "train_fractions": [float(f) for f in fractions], "sources": sources}


def _unknown(keys: set[str], allowed: set[str], where: str, source: str) -> None:
    extra = sorted(set(keys) - allowed)
    if extra:
        close = difflib.get_close_matches(extra[0], sorted(allowed), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown key {where}{extra[0]!r}{hint} (accepted: {', '.join(sorted(allowed))})",
            path=source,
        )


def _section(params: dict[str, Any], name: str, allowed: set[str], source: str) -> dict:
    sec = params.get(name)
    if not isinstance(sec, dict):
        raise ConfigError(f"missing or malformed section {name!r}", path=source)
    _unknown(set(sec), allowed, f"{name}.", source)
    return sec


def _need(ok: bool, msg: str, source: str) -> None:
    if not ok:
        raise ConfigError(msg, path=source)


def _is_int(v: Any, lo: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def demo_section(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    sec = _section(params, "demo", DEMO_KEYS, source)
    for key in ("image_size", "num_images"):
        _need(_is_int(sec.get(key)), f"demo.{key} must be a positive integer", source)
    _need(
        isinstance(sec.get("num_images_per_modality") or {}, dict),
        "demo.num_images_per_modality must be a mapping",
        source,
    )
    return sec


def prepare_section(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    sec = _section(params, "prepare", PREPARE_KEYS, source)
    _need(
        sec.get("on_error", "error") in ("error", "skip"),
        f"prepare.on_error must be 'error' or 'skip', got {sec.get('on_error')!r}",
        source,
    )
    _need(
        sec.get("compression", "gzip") in ("gzip", None),
        f"prepare.compression must be 'gzip' or null, got {sec.get('compression')!r}",
        source,
    )
    return sec


def evaluate_section(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    sec = _section(params, "evaluate", EVALUATE_KEYS, source)
    _need(
        sec.get("split", "test") in ("train", "val", "test"),
        f"evaluate.split must be train, val or test, got {sec.get('split')!r}",
        source,
    )
    _need(
        sec.get("device", "auto") in ("auto", "cpu", "cuda"),
        f"evaluate.device must be auto, cpu or cuda, got {sec.get('device')!r}",
        source,
    )
    for key in ("score_threshold", "nms_iou"):
        if key in sec:
            _need(
                _is_num(sec[key]) and 0 <= sec[key] <= 1,
                f"evaluate.{key} must be a number in [0, 1], got {sec[key]!r}",
                source,
            )
    for key, lo in (("max_detections", 1), ("batch_size", 1), ("pictures", 0)):
        if key in sec:
            _need(
                _is_int(sec[key], lo),
                f"evaluate.{key} must be an integer >= {lo}, got {sec[key]!r}",
                source,
            )
    return sec


def dataset_entry(params: dict[str, Any], name: str, source: str = "params.yaml") -> dict:
    datasets = params.get("datasets")
    if not isinstance(datasets, dict) or name not in datasets:
        known = sorted(datasets) if isinstance(datasets, dict) else []
        raise ConfigError(f"unknown dataset {name!r}; datasets in params: {known}", path=source)
    entry = datasets[name]
    if not isinstance(entry, dict):
        raise ConfigError(f"datasets.{name} must be a mapping", path=source)
    _unknown(set(entry), DATASET_KEYS, f"datasets.{name}.", source)
    for key in ("modality", "root", "code"):
        if not isinstance(entry.get(key), str) or not entry.get(key):
            raise ConfigError(f"datasets.{name}.{key} must be a non-empty string", path=source)
    # `adapter` is required (`{}` for the adapter's defaults): dvc.yaml tracks it as a param.
    if not isinstance(entry.get("adapter"), dict):
        raise ConfigError(
            f"datasets.{name}.adapter must be a mapping ({{}} for the adapter's defaults)",
            path=source,
        )
    for key in ("train", "finetune"):
        if not isinstance(entry.get(key, {}) or {}, dict):
            raise ConfigError(f"datasets.{name}.{key} must be a mapping", path=source)
    return entry


def merged_adapter_params(entry: dict[str, Any]) -> dict[str, Any]:
    """A dataset's adapter params: ``demo_params.json`` of a demo root (when there is one),
    overridden by the entry's ``adapter`` mapping."""
    values: dict[str, Any] = {}
    demo_params = Path(entry["root"]) / "demo_params.json"
    if demo_params.is_file():
        try:
            values.update(json.loads(demo_params.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"not valid JSON ({exc})", path=demo_params) from None
    values.update(entry.get("adapter") or {})
    return values


def check_dataset(name: str, entry: dict[str, Any], source: str = "params.yaml") -> None:
    """The modality resolves, its adapter accepts the params, ``code`` is the adapter's code."""
    from modalities.registry import adapter_code, get_adapter

    try:
        cls = get_adapter(entry["modality"])
    except ConfigError as exc:
        raise ConfigError(f"datasets.{name}.modality: {exc.reason}", path=source) from None
    values = merged_adapter_params(entry)
    try:
        # Before the demo stage has written a demo root, only keys and types can be checked.
        cls.Params.parse(values, owner=cls.name, cross_check=Path(entry["root"]).exists())
    except ConfigError as exc:
        raise ConfigError(f"datasets.{name}.adapter: {exc.reason}", path=source) from None
    expected = adapter_code(entry["modality"])
    declared = Path(os.path.abspath(entry["code"]))
    if declared.resolve() != expected:
        try:
            shown = expected.relative_to(Path.cwd().resolve())
        except ValueError:
            shown = expected
        raise ConfigError(
            f"datasets.{name}.code is {entry['code']!r} but the {entry['modality']!r} adapter's "
            f"code is {str(shown)!r}; set it so DVC re-runs prepare when that code changes",
            path=source,
        )


def model_section(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    from dsod_core.model import list_variants

    sec = _section(params, "model", MODEL_KEYS, source)
    variant = sec.get("variant")
    if variant not in list_variants():
        close = difflib.get_close_matches(str(variant), list_variants(), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"model.variant {variant!r} is not a known variant{hint} "
            f"(known: {', '.join(list_variants())})",
            path=source,
        )
    _need(_is_int(sec.get("input_size")), "model.input_size must be a positive integer", source)
    _need(isinstance(sec.get("overrides") or {}, dict), "model.overrides must be a mapping", source)
    return sec


def validate_params(
    params: dict[str, Any], source: str = "params.yaml", datasets: list[str] | None = None
) -> None:
    """Check the whole params file (see the module docstring); raise ``ConfigError``.

    ``datasets`` names the datasets whose adapters are resolved and whose adapter params are
    checked by their adapter (None: all). A stage passes only the datasets it reads, so that
    it imports only the adapter code it depends on; the ``check`` stage passes None.
    """
    from dsod_core.model.registry import variant_config

    _unknown(set(params), TOP_KEYS, "", source)
    _need(_is_int(params.get("seed", 0), 0), "seed must be a non-negative integer", source)
    demo_section(params, source)
    all_datasets = params.get("datasets")
    _need(
        isinstance(all_datasets, dict) and all_datasets,
        "datasets must be a non-empty mapping",
        source,
    )
    for name in all_datasets:
        entry = dataset_entry(params, name, source)
        if datasets is None or name in datasets:
            check_dataset(name, entry, source)
    datasets = all_datasets
    prepare_section(params, source)
    model = model_section(params, source)
    try:
        variant_config(
            model["variant"],
            in_channels=1,
            num_classes=1,
            input_size=int(model["input_size"]),
            **dict(model.get("overrides") or {}),
        )
    except (ConfigError, TypeError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, ConfigError) else str(exc)
        raise ConfigError(f"model: {reason}", path=source) from None
    pre = _section(params, "pretrain", PRETRAIN_KEYS, source)
    axes = study_axes(params, source)
    targets = params.get("targets")
    _need(isinstance(targets, list) and targets, "targets must be a non-empty list", source)
    for t in targets:
        _need(t in datasets, f"targets: {t!r} is not in datasets ({', '.join(datasets)})", source)
    _need(
        isinstance(pre.get("train"), dict) and pre["train"],
        "pretrain.train must be a mapping: the source model's own training params (it is not "
        "merged with `train`)",
        source,
    )
    # Paths come from dvc.yaml at run time; only the params are checked here.
    for dataset in axes["sources"]:
        build_config(params, dataset, "pretrain", Path("<out-dir>"), "<store>", source=source)
    for dataset in targets:
        for init in INITS:
            build_config(params, dataset, init, Path("<out-dir>"), "<store>", source=source)
    evaluate_section(params, source)


# Set by the pipeline (paths from dvc.yaml, the `model` section, the top-level `seed`, the
# --resume flag), never by a training section.
PIPELINE_KEYS = {
    "store",
    "out_dir",
    "variant",
    "input_size",
    "init_weights",
    "model_overrides",
    "seed",
    "train_fraction",
    "resume",
}


def merge_train(base: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``override`` on top; a mapping value (``augmentation``, ``postprocess``)
    merges key by key, so an override can change one augmentation setting alone."""
    out = dict(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def train_params(params: dict[str, Any], dataset: str, init: str, source: str) -> dict[str, Any]:
    """The training params of one run, before the pipeline adds paths and the model.

    ``pretrain``: ``pretrain.train`` alone (the source model's own params). ``scratch``:
    ``train`` < ``datasets.<dataset>.train``. ``finetuned``: ``train`` < ``finetune`` <
    ``datasets.<dataset>.train`` < ``datasets.<dataset>.finetune``.
    """
    if init == "pretrain":
        layers = [("pretrain.train", (params.get("pretrain") or {}).get("train"))]
    elif init in INITS:
        entry = (params.get("datasets") or {}).get(dataset) or {}
        layers = [("train", params.get("train")), (f"datasets.{dataset}.train", entry.get("train"))]
        if init == "finetuned":
            layers.insert(1, ("finetune", params.get("finetune")))
            layers.append((f"datasets.{dataset}.finetune", entry.get("finetune")))
    else:
        raise ConfigError(f"init must be 'scratch' or 'finetuned', got {init!r}", path=source)
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - PIPELINE_KEYS
    merged: dict[str, Any] = {}
    for name, layer in layers:
        if layer is not None and not isinstance(layer, dict):
            raise ConfigError(f"{name} must be a mapping", path=source)
        _unknown(set(layer or {}) - PIPELINE_KEYS, fields, f"{name}.", source)
        overlap = PIPELINE_KEYS & set(layer or {})
        if overlap:
            raise ConfigError(
                f"{name}: keys {sorted(overlap)} are set by the pipeline", path=source
            )
        merged = merge_train(merged, layer)
    return merged


def build_config(
    params: dict[str, Any],
    dataset: str,
    init: str,
    out_dir: Path,
    store: str | Path,
    init_weights: str | Path | None = None,
    source: str = "params.yaml",
    seed: int | None = None,
    train_fraction: float = 1.0,
) -> TrainConfig:
    """The ``TrainConfig`` of one run: :func:`train_params`, the model section and the paths.
    ``seed``: the run's training seed (default: the top-level ``seed``, which the source
    models use). A message names the sections the run's params came from."""
    model = params.get("model") or {}
    values = train_params(params, dataset, init, source)
    where = "pretrain.train" if init == "pretrain" else f"training params of {dataset}-{init}"
    try:
        return TrainConfig.from_dict(
            {
                **values,
                "store": str(store),
                "out_dir": str(out_dir),
                "variant": model.get("variant", "dsod_tiny"),
                "input_size": int(model.get("input_size", 64)),
                "model_overrides": dict(model.get("overrides") or {}),
                "init_weights": str(init_weights) if init == "finetuned" and init_weights else None,
                "seed": int(params.get("seed", 0)) if seed is None else int(seed),
                "train_fraction": float(train_fraction),
            },
            source=source,
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.reason}", path=source) from None
