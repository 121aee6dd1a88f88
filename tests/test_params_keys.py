"""Every key of the shipped ``params.yaml`` is checked by type and range, in one line naming it.

The walk visits every key of the file (top level, ``demo``, ``datasets.<name>.*``, ``prepare``,
``model``, ``pretrain.train.*``, ``train.*``, ``finetune.*``, ``evaluate.*``, the nested
``augmentation`` mappings), every ``DSODConfig`` field a ``model.overrides`` mapping may set,
and every field of every adapter's ``Params`` class. For each it puts a value of the wrong type
and, where the key has a range or choices, a value outside them, and expects a
:class:`ConfigError` whose message is one line and names the key. The bad values are derived
from the declared annotations (the declarations say what the key takes; the test checks that
the file is refused accordingly).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import pytest
import yaml

from dsod_core.data.transforms import AugmentationParams, build_train_transform
from dsod_core.engine.config import NOT_OVERRIDES, TrainConfig
from dsod_core.errors import ConfigError
from dsod_core.model.config import DSODConfig
from dsod_core.params import AdapterParams, Params, param
from modalities.registry import get_adapter
from pipelines.params import (
    ComparisonSection,
    DatasetEntry,
    DemoSection,
    EvaluateSection,
    ModelSection,
    ParamsFile,
    PrepareSection,
    PretrainSection,
    PrimaryComparison,
    build_config,
    validate_params,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())
MODALITIES = ("rgb", "depth", "medical", "multispectral")


# --- bad values from a declaration ------------------------------------------------------------
def _arms(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _takes_str(tp: Any) -> bool:
    for arm in _arms(tp):
        if arm in (str, Any):
            return True
        if typing.get_origin(arm) is Literal and any(isinstance(a, str) for a in arm.__args__):
            return True
    return False


def _takes_number(tp: Any) -> bool:
    return any(arm in (int, float, Any) for arm in _arms(tp))


def wrong_type(tp: Any) -> Any:
    """A value of a type the annotation does not take."""
    if not _takes_str(tp):
        return "often"
    if not _takes_number(tp):
        return 12345
    raise AssertionError(f"no wrong type for {tp}")


def _number_outside(meta: dict, integer: bool) -> float | None:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None:
        bad = lo if meta.get("min_exclusive") else lo - (1 if integer else 0.5)
    elif hi is not None:
        bad = hi if meta.get("max_exclusive") else hi + (1 if integer else 0.5)
    else:
        return None
    return int(math.floor(bad)) if integer else float(bad)


def _outside(arm: Any, meta: dict) -> Any:
    origin = typing.get_origin(arm)
    if origin is Literal or (meta.get("choices") and arm is str):
        return "no-such-choice"
    if arm in (int, float):
        return _number_outside(meta, arm is int)
    if arm is str:
        return "" if meta.get("min_len") else None
    inner_meta = {**meta, "min_len": None}
    if origin in (list, tuple):
        args = [a for a in typing.get_args(arm) if a is not Ellipsis]
        inner = out_of_range(args[0], inner_meta) if args else None
        if inner is not None:
            fixed = origin is tuple and Ellipsis not in typing.get_args(arm)
            return [inner] * (len(args) if fixed else 1)
        return [] if meta.get("min_len") else None
    if origin is dict and not meta.get("schema"):
        inner = out_of_range(typing.get_args(arm)[1], inner_meta)
        if inner is not None:
            return {"x": inner}
        return {} if meta.get("min_len") else None
    return None


def out_of_range(tp: Any, meta: dict) -> Any:
    """A value of the right shape outside the declared range, choices or length; None when
    the key has none of them."""
    for arm in _arms(tp):
        bad = _outside(arm, meta)
        if bad is not None:
            return bad
    return None


def fields_of(cls: type[Params]) -> dict[str, tuple[Any, dict]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], dict(f.metadata)) for f in dataclasses.fields(cls)}


# --- the walk -----------------------------------------------------------------------------------
TRAIN_FIELDS = fields_of(TrainConfig)
OVERRIDE_FIELDS = {k: v for k, v in fields_of(DSODConfig).items() if k not in NOT_OVERRIDES}


def _declared(path: tuple[str, ...]) -> tuple[Any, dict]:
    """The annotation and field metadata that declare the key at ``path``."""
    head, rest = path[0], path[1:]
    if not rest:
        return fields_of(ParamsFile)[head]
    if head in ("train", "finetune") or path[:2] == ("pretrain", "train") and len(path) > 2:
        sub = rest if head != "pretrain" else rest[1:]
        if len(sub) == 2 and sub[0] == "augmentation":
            return fields_of(AugmentationParams)[sub[1]]
        return TRAIN_FIELDS[sub[0]]
    if head == "datasets":
        return (DatasetEntry, {}) if len(rest) == 1 else fields_of(DatasetEntry)[rest[1]]
    if head == "model" and rest[0] == "overrides" and len(rest) == 2:
        return OVERRIDE_FIELDS[rest[1]]
    if head == "comparison" and rest[0] == "primary" and len(rest) == 2:
        return fields_of(PrimaryComparison)[rest[1]]
    sections = {
        "demo": DemoSection,
        "prepare": PrepareSection,
        "model": ModelSection,
        "pretrain": PretrainSection,
        "evaluate": EvaluateSection,
        "comparison": ComparisonSection,
    }
    return fields_of(sections[head])[rest[0]]


def _walk(node: Any, path: tuple[str, ...]):
    yield path
    if isinstance(node, dict) and not (len(path) == 3 and path[0] == "datasets"):
        for key, value in node.items():  # (adapter mappings: walked by their Params class)
            yield from _walk(value, (*path, str(key)))


def shipped_keys() -> list[tuple[str, ...]]:
    keys = [p for key, value in SHIPPED.items() for p in _walk(value, (key,))]
    keys += [("model", "overrides", name) for name in OVERRIDE_FIELDS]
    return keys


def cases() -> list[tuple[str, str, Any]]:
    out = []
    for path in shipped_keys():
        tp, meta = _declared(path)
        out.append((".".join(path), "type", wrong_type(tp)))
        bad = out_of_range(tp, meta)
        if bad is not None:
            out.append((".".join(path), "range", bad))
    return out


CASES = cases()


def _put(params: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def names_key(message: str, key: str) -> bool:
    """``key`` appears as a whole dotted key (``seed`` is not found in ``seeds``, nor
    ``train.lr`` in ``pretrain.train.lr``)."""
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message) is not None


def assert_refused(params: dict, key: str, **kw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        validate_params(params, "params.yaml", **kw)
    message = str(info.value)
    assert "\n" not in message and message.startswith("params.yaml: "), message
    assert names_key(message, key), (key, message)
    return message


def test_the_walk_covers_every_key_of_the_file():
    keys = {".".join(p) for p in shipped_keys()}
    for must in (
        "seed",
        "seeds",
        "train_fractions",
        "sources",
        "targets",
        "demo.num_images_per_modality",
        "datasets.medical_demo.adapter",
        "prepare.compression",
        "model.overrides.norm",
        "pretrain.train.augmentation.noise_std",
        "train.augmentation.intensity_shift",
        "train.eval_every",
        "finetune.lr",
        "evaluate.device",
        "source_seeds",
        "comparison.primary.against",
        "comparison.matched_fractions",
    ):
        assert must in keys, must
    assert len(keys) >= 100
    ranged = {k for k, kind, _ in CASES if kind == "range"}
    assert {"train.eval_every", "train.lr_steps", "train.schedule", "evaluate.split"} <= ranged


@pytest.mark.parametrize("key, kind, bad", CASES, ids=[f"{k}-{t}" for k, t, _ in CASES])
def test_a_bad_value_of_every_key_is_refused_naming_it(key: str, kind: str, bad: Any):
    params = copy.deepcopy(SHIPPED)
    _put(params, key, bad)
    assert_refused(params, key, datasets=[])


ADAPTER_CASES = [
    (name, field, kind, bad)
    for name in MODALITIES
    for field, (tp, meta) in fields_of(get_adapter(name).Params).items()
    for kind, bad in (("type", wrong_type(tp)), ("range", out_of_range(tp, meta)))
    if kind == "type" or bad is not None
]


@pytest.mark.parametrize(
    "modality, field, kind, bad",
    ADAPTER_CASES,
    ids=[f"{m}.{f}-{k}" for m, f, k, _ in ADAPTER_CASES],
)
def test_a_bad_value_of_every_adapter_param_is_refused_naming_it(modality, field, kind, bad):
    cls = get_adapter(modality).Params
    with pytest.raises(ConfigError) as info:
        cls.parse({field: bad}, owner=modality, source="params.yaml", cross_check=False)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"params.yaml: {modality} adapter param {field!r} must be "), message


def test_adapter_params_are_checked_through_the_params_file(monkeypatch):
    monkeypatch.chdir(ROOT)  # the dataset `code` paths are relative to the repository
    params = copy.deepcopy(SHIPPED)
    params["datasets"]["rgb_demo"]["adapter"] = {"max_pixels": "lots"}
    message = assert_refused(params, "datasets.rgb_demo.adapter", datasets=["rgb_demo"])
    assert "rgb adapter param 'max_pixels' must be float > 0, got 'lots'" in message


# --- the nonsense the former checks let through, and what YAML reads as strings ---------------
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("eval_every", "often", "train.eval_every must be an integer >= 0, got 'often'"),
        ("progress", "no", "train.progress must be true or false, got 'no'"),
        ("num_workers", -3, "train.num_workers must be an integer >= 0, got -3"),
        ("val_split", "vall", "train.val_split must be 'train', 'val' or 'test', got 'vall'"),
        ("lr", "fast", "train.lr must be a number >= 0, got 'fast'"),
        ("batch_size", True, "train.batch_size must be a positive integer, got True"),
        ("epochs", 2.5, "train.epochs must be a positive integer, got 2.5"),
        ("grad_clip", 0, "train.grad_clip must be a number > 0 or null, got 0"),
        ("amp", "fp8", "train.amp must be true, false, 'auto', 'bf16', 'fp16' or 'off'"),
        ("lr_steps", [0.5, 1.0], "train.lr_steps must be a list of fractions in (0, 1)"),
    ],
)
def test_former_nonsense_is_refused(key: str, value: Any, message: str):
    params = copy.deepcopy(SHIPPED)
    params["train"][key] = value
    assert message in assert_refused(params, f"train.{key}", datasets=[])
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig.from_dict({key: value}, source="p.yaml")


def test_numbers_yaml_reads_as_strings_are_numbers():
    text = (ROOT / "params.yaml").read_text().replace("  lr: 0.05 ", "  lr: 5e-2 ")
    params = yaml.safe_load(text)
    assert params["train"]["lr"] == "5e-2"  # what PyYAML makes of it
    params["pretrain"]["train"]["lr"] = "5e-2"
    validate_params(params, datasets=[])
    assert build_config(params, "depth_demo", "scratch", Path("m"), "s.h5").lr == 0.05
    assert build_config(params, "depth_demo", "finetuned", Path("m"), "s.h5").lr == 0.02
    assert build_config(params, "rgb_demo", "pretrain", Path("m"), "s.h5").lr == 0.05
    assert TrainConfig.from_dict({"lr": "5e-2", "epochs": "1e1"}).epochs == 10
    # ... and in an adapter's numeric params
    depth = get_adapter("depth").Params.parse({"max_pixels": "50e6", "val_fraction": "5e-2"})
    assert (depth.max_pixels, depth.val_fraction) == (50e6, 0.05)
    # a quoted plain number is a string in a params file
    with pytest.raises(ConfigError, match=r"train.batch_size must be a positive integer, got '8'"):
        TrainConfig.from_dict({"batch_size": "8"}, source="p.yaml")


def test_the_shipped_file_and_the_presets_validate():
    validate_params(copy.deepcopy(SHIPPED), datasets=[])
    for name in ("voc0712", "coco"):
        preset = yaml.safe_load((ROOT / f"docs/presets/{name}.yaml").read_text())
        params = {**copy.deepcopy(SHIPPED), **preset}
        params["datasets"] = {**SHIPPED["datasets"], **preset["datasets"]}
        params["model"] = {**SHIPPED["model"], **preset["model"]}
        validate_params(params, f"docs/presets/{name}.yaml", datasets=[])


# --- the mechanism itself ---------------------------------------------------------------------
@dataclasses.dataclass
class _Plain(Params):
    section = "plain"
    count: int = param(doc="required, >= 0", min=0)
    ratio: float | None = param(None, "in (0, 1]", min=0, max=1, min_exclusive=True)
    pair: tuple[int, int] = param((1, 2), "two positive integers", min=1)
    mode: Literal["a", "b"] = param("a", "a choice")
    flag: bool = param(False, "a switch")


@dataclasses.dataclass(frozen=True)
class _Frozen(AdapterParams):
    size: int = param(3, "a size", min=1)

    def check(self) -> None:
        if self.size == 7:
            self.fail("size", "seven is not allowed")


def test_the_mechanism_converts_and_refuses():
    p = _Plain.parse({"count": "2e0", "ratio": "5e-1", "pair": [3, 4], "flag": True})
    assert (p.count, p.ratio, p.pair, p.mode, p.flag) == (2, 0.5, (3, 4), "a", True)
    assert p.to_dict() == {"count": 2, "ratio": 0.5, "pair": [3, 4], "mode": "a", "flag": True}
    bad = {
        "flag": ("yes", "plain.flag must be true or false, got 'yes'"),
        "count": (float("nan"), "plain.count must be an integer >= 0, got nan"),
        "ratio": (0, "plain.ratio must be a number in (0, 1] or null, got 0"),
        "pair": ([1, 2, 3], "plain.pair must be a list of 2 positive integers, got [1, 2, 3]"),
        "mode": ("c", "plain.mode must be 'a' or 'b', got 'c'"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(ConfigError) as info:
            _Plain.parse({"count": 1, key: value}, source="f.yaml")
        assert str(info.value) == f"f.yaml: {message}"
    with pytest.raises(ConfigError, match=r"^plain.count must be an integer >= 0; it is missing"):
        _Plain.parse({})
    with pytest.raises(ConfigError, match=r"unknown key plain.'cuont'; did you mean 'count'\?"):
        _Plain.parse({"cuont": 1})
    rows = {r["name"]: r for r in _Plain.describe()}
    assert rows["ratio"]["type"] == "float or null > 0 and <= 1" and rows["pair"]["default"] == [
        1,
        2,
    ]


def test_frozen_adapter_params_keep_their_messages():
    assert _Frozen.parse({"size": "64"}).size == 64  # flags of a command line are strings
    with pytest.raises(ConfigError) as info:
        _Frozen.parse({"sise": 2}, owner="thermal")
    assert str(info.value).startswith("unknown thermal adapter param 'sise'; did you mean 'size'?")
    with pytest.raises(ConfigError, match=r"^thermal adapter param 'size': seven is not allowed$"):
        _Frozen.parse({"size": 7}, owner="thermal")
    assert _Frozen.parse({"size": 7}, cross_check=False).size == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        _Frozen().size = 4  # type: ignore[misc]


def test_model_config_validates_when_built_directly():
    cfg = DSODConfig(in_channels=1, num_classes=2, block_layers=[1, 2, 3, 4], compression="5e-1")
    assert cfg.block_layers == (1, 2, 3, 4) and cfg.compression == 0.5
    assert hash(cfg) == hash(DSODConfig.from_dict(cfg.to_dict()))
    with pytest.raises(ConfigError, match=r"^model.norm must be 'batch', 'group' or 'sync_batch'"):
        DSODConfig(in_channels=1, num_classes=2, norm="layer")
    with pytest.raises(ConfigError, match=r"^model.in_channels must be a positive integer"):
        DSODConfig(in_channels=0, num_classes=2)


def test_augmentation_is_parsed_by_its_params_class():
    kinds = [type(t).__name__ for t in build_train_transform(64, {"zoom_out": "5e-1"}).transforms]
    assert kinds[0] == "ZoomOut"
    with pytest.raises(ConfigError, match=r"^augmentation.zoom_out must be true, false or a num"):
        build_train_transform(64, {"zoom_out": "sometimes"})
    with pytest.raises(ConfigError, match=r"^augmentation.max_zoom must be a number >= 1, got 0.5"):
        build_train_transform(64, {"max_zoom": 0.5})
