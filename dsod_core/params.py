"""The project's one typed params mechanism: declare fields once, parse and check them everywhere.

A params class is a dataclass (frozen or not) deriving from :class:`Params`, whose fields are
declared with :func:`param`: the annotation is the type, ``param`` gives the default, a one-line
doc and the allowed range. :meth:`Params.parse` is the single validator of every params mapping
of the project (adapter params, ``TrainConfig``, ``DSODConfig``, the augmentation mapping, the
sections of ``params.yaml``): unknown keys (with a "did you mean"), types, choices, ranges, then
the class's :meth:`Params.check` hook for rules that span fields. Every message is one line and
names the key (``train.eval_every must be an integer >= 0, got 'often'``); with ``source`` it
starts with the file (``params.yaml: ...``).

Types understood in annotations:

* ``bool``: ``true``/``false`` only (not ``"yes"``, not 0/1);
* ``int``, ``float``: numbers, never bools, finite; an ``int`` takes a whole float (``8.0``).
  Strings in exponent notation (``"5e-2"``, ``"50e6"``, ``"1.0e5"``) are numbers that YAML 1.1
  loaders such as PyYAML read as strings, and are converted. A class whose values may come from
  command-line flags sets ``numeric_strings = "any"`` to convert every numeric string (``"64"``);
  by default a quoted plain number (``'16'``) is a string and refused;
* ``str``; ``None`` (null); ``Literal[...]`` (choices); unions (``float | None``);
* ``list[X]``, ``tuple[X, ...]`` (a list; kept as a tuple), ``tuple[X, Y]`` (fixed length),
  ``dict[K, V]``; ``Any``; a :class:`Params` subclass (a nested mapping, parsed into an
  instance whose messages name the nested key, ``demo.image_size``).

Field options of :func:`param`: ``min``/``max`` (``min_exclusive``/``max_exclusive``) bound every
number of the value, inside lists and mapping values too; ``min_len`` refuses empty strings,
lists and mappings; ``choices`` lists allowed values not written as a ``Literal``; ``expect``
replaces the generated description of the expected value in messages; ``schema`` checks a
mapping field key by key with another params class and keeps it as a plain mapping of the
keys given (a partial layer such as ``train.augmentation``, merged key by key later).

This module imports nothing of the project but :mod:`dsod_core.errors`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import re
import types
import typing
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from dsod_core.errors import ConfigError

__all__ = [
    "AdapterParams",
    "ParamError",
    "Params",
    "describe_type",
    "expected",
    "param",
    "plain",
]

MISSING = dataclasses.MISSING


def param(
    default: Any = MISSING,
    doc: str = "",
    *,
    default_factory: Any = MISSING,
    min: float | None = None,  # noqa: A002 - reads best at the call site
    max: float | None = None,  # noqa: A002
    min_exclusive: bool = False,
    max_exclusive: bool = False,
    min_len: int | None = None,
    choices: Sequence[Any] | None = None,
    expect: str | None = None,
    schema: type[Params] | None = None,
) -> Any:
    """A field of a :class:`Params` dataclass with its one-line doc, range and choices.

    No ``default`` and no ``default_factory``: the key is required. Use ``default_factory``
    for lists and dicts. See the module docstring for the options.
    """
    meta = {
        "doc": doc,
        "min": min,
        "max": max,
        "min_exclusive": min_exclusive,
        "max_exclusive": max_exclusive,
        "min_len": min_len,
        "choices": None if choices is None else tuple(choices),
        "expect": expect,
        "schema": schema,
    }
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# --- conversion -------------------------------------------------------------------------------
class _Mismatch(Exception):
    """The value does not fit the annotation (rendered by the caller, which knows the key)."""


_EXPONENT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _is_params(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Params)


def _number(value: Any, integer: bool, strings: str) -> int | float:
    if isinstance(value, str):
        if strings != "any" and not _EXPONENT.fullmatch(value):
            raise _Mismatch
        try:
            exact = Decimal(value.strip())
        except InvalidOperation:
            raise _Mismatch from None
        if not math.isfinite(float(exact)):
            raise _Mismatch
        if integer:
            if exact != exact.to_integral_value():
                raise _Mismatch
            return int(exact)
        return float(exact)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _Mismatch
    if integer and isinstance(value, numbers.Integral):
        return int(value)
    f = float(value)
    if not math.isfinite(f):
        raise _Mismatch
    if integer:
        if not f.is_integer():
            raise _Mismatch
        return int(f)
    return f


def _check_range(value: float, meta: Mapping[str, Any]) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
        raise _Mismatch
    if hi is not None and (value > hi or (meta.get("max_exclusive") and value == hi)):
        raise _Mismatch


def _check_choice(value: Any, meta: Mapping[str, Any]) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise _Mismatch


def _coerce(tp: Any, value: Any, meta: Mapping[str, Any], top: bool, strings: str) -> Any:
    """``value`` checked against the annotation ``tp`` and converted (numbers from exponent
    strings, lists for list types, tuples for tuple types, nested params classes parsed).

    Raises :class:`_Mismatch` when it does not fit, :class:`ParamError` (relative to ``tp``)
    from a nested params class or a ``schema``."""
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    origin = typing.get_origin(tp)
    if origin is Literal:
        args = typing.get_args(tp)
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise _Mismatch
    arms = _union_args(tp)
    if arms is not None:
        for arm in arms:
            try:
                return _coerce(arm, value, meta, top, strings)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp in (int, float):
        number = _number(value, tp is int, strings)
        _check_range(number, meta)
        _check_choice(number, meta)
        return number
    if tp is str:
        if not isinstance(value, str) or (top and meta.get("min_len") and not value):
            raise _Mismatch
        _check_choice(value, meta)
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        return _coerce_sequence(tp, value, meta, top, strings)
    if origin is dict or tp is dict:
        return _coerce_mapping(tp, value, meta, top, strings)
    if _is_params(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch
        return tp._build(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _Mismatch


def _coerce_sequence(tp: Any, value: Any, meta: Mapping[str, Any], top: bool, strings: str):
    if not isinstance(value, list | tuple):
        raise _Mismatch
    if top and meta.get("min_len") and len(value) < meta["min_len"]:
        raise _Mismatch
    args = typing.get_args(tp)
    fixed = bool(args) and Ellipsis not in args and typing.get_origin(tp) is tuple
    if fixed and len(args) != len(value):
        raise _Mismatch
    if not args:
        items = list(value)
    elif fixed:
        items = [_coerce(a, v, meta, False, strings) for a, v in zip(args, value)]
    else:
        items = [_coerce(args[0], v, meta, False, strings) for v in value]
    return tuple(items) if typing.get_origin(tp) is tuple or tp is tuple else items


def _coerce_mapping(tp: Any, value: Any, meta: Mapping[str, Any], top: bool, strings: str):
    if not isinstance(value, Mapping):
        raise _Mismatch
    if top and meta.get("min_len") and len(value) < meta["min_len"]:
        raise _Mismatch
    schema = meta.get("schema") if top else None
    if schema is not None:
        return plain(schema._convert(value, partial=True))
    kt, vt = typing.get_args(tp) or (Any, Any)
    out = {}
    for k, v in value.items():
        key = _coerce(kt, k, {}, False, strings)
        if _is_params(vt) and not (isinstance(v, Mapping) or isinstance(v, vt)):
            raise ParamError((str(k),), "value", f"must be a mapping, got {_show(v)}")
        try:
            out[key] = _coerce(vt, v, meta, False, strings)
        except ParamError as exc:
            raise exc.under(str(k)) from None
    return out


def plain(value: Any) -> Any:
    """JSON-able data: params instances as mappings, tuples as lists, paths as strings."""
    if isinstance(value, Params):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


# --- describing types ---------------------------------------------------------------------------
def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _range_words(meta: Mapping[str, Any]) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        left = "(" if meta.get("min_exclusive") else "["
        right = ")" if meta.get("max_exclusive") else "]"
        return f" in {left}{_num(lo)}, {_num(hi)}{right}"
    if lo is not None:
        return f" {'>' if meta.get('min_exclusive') else '>='} {_num(lo)}"
    if hi is not None:
        return f" {'<' if meta.get('max_exclusive') else '<='} {_num(hi)}"
    return ""


def _literal(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def _join(items: list[str]) -> str:
    items = list(dict.fromkeys(items))
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _alternatives(tp: Any, meta: Mapping[str, Any]) -> list[str]:
    arms = _union_args(tp)
    if arms is not None:
        return [a for arm in arms for a in _alternatives(arm, meta)]
    if tp is bool:
        return ["true", "false"]
    if typing.get_origin(tp) is Literal:
        return [_literal(a) for a in typing.get_args(tp)]
    if tp is type(None):
        return ["null"]
    if meta.get("choices") is not None and tp in (str, int, float):
        return [_literal(c) for c in meta["choices"]]
    return [_noun(tp, meta, plural=False, top=True)]


def _noun(tp: Any, meta: Mapping[str, Any], plural: bool, top: bool = False) -> str:
    """``a positive integer`` / ``positive integers``, ``a list of numbers in (0, 1)``, ..."""
    nonempty = "non-empty " if top and meta.get("min_len") else ""
    arms = _union_args(tp)
    if arms is not None and plural:
        return _join([_noun(a, meta, True) for a in arms])
    choices = meta.get("choices") is not None and tp in (str, int, float)
    if arms is not None or typing.get_origin(tp) is Literal or tp is bool or choices:
        words = _join(_alternatives(tp, meta))
        return f"{words} values" if plural else words
    if tp is type(None):
        return "nulls" if plural else "null"
    if tp is int:
        lo, hi = meta.get("min"), meta.get("max")
        exclusive = meta.get("min_exclusive")
        if hi is None and ((lo == 1 and not exclusive) or (lo == 0 and exclusive)):
            return "positive integers" if plural else "a positive integer"
        return ("integers" if plural else "an integer") + _range_words(meta)
    if tp is float:
        return ("numbers" if plural else "a number") + _range_words(meta)
    if tp is str:
        return "strings" if plural else f"a {nonempty}string"
    if tp is Any:
        return "any values" if plural else "any value"
    origin = typing.get_origin(tp)
    if origin in (list, tuple) or tp in (list, tuple):
        return _sequence_noun(tp, meta, plural, nonempty)
    if origin is dict or tp is dict or _is_params(tp):
        kt, vt = typing.get_args(tp) or (Any, Any)
        head = "mappings" if plural else f"a {nonempty}mapping"
        if vt is Any or meta.get("schema") is not None:
            return head
        return f"{head} of {_noun(kt, {}, True)} to {_noun(vt, meta, True)}"
    name = getattr(tp, "__name__", str(tp))
    return f"{name} values" if plural else f"a {name}"


def _sequence_noun(tp: Any, meta: Mapping[str, Any], plural: bool, nonempty: str) -> str:
    head = "lists" if plural else f"a {nonempty}list"
    args = typing.get_args(tp)
    if not args:
        return head
    if Ellipsis in args or typing.get_origin(tp) is list:
        return f"{head} of {_noun(args[0], meta, True)}"
    if len(set(args)) == 1:
        return f"{head} of {len(args)} {_noun(args[0], meta, True)}"
    return f"{head} ({', '.join(_noun(a, meta, False) for a in args)})"


def expected(tp: Any, meta: Mapping[str, Any]) -> str:
    """What a message says a value of annotation ``tp`` must be (``a positive integer``,
    ``'error' or 'skip'``, ``a number > 0 or null``); ``expect`` of :func:`param` wins."""
    return meta.get("expect") or _join(_alternatives(tp, meta))


def describe_type(tp: Any, meta: Mapping[str, Any] | None = None) -> str:
    """The compact type of a docs table (``int >= 1``, ``'voc' | 'coco'``, ``float or null``)."""
    meta = meta or {}
    text = _type_name(tp)
    if meta.get("choices") is not None:
        text = " | ".join(repr(c) for c in meta["choices"])
    return text + _range_text(meta)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return f"a mapping of {_type_name(typing.get_args(tp)[1])}"
    if _is_params(tp):
        return "a mapping"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def _range_text(meta: Mapping[str, Any]) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None and hi is None:
        return ""
    left = f"> {lo}" if meta.get("min_exclusive") else f">= {lo}"
    right = f"< {hi}" if meta.get("max_exclusive") else f"<= {hi}"
    if hi is None:
        return f" {left}"
    return f" {left} and {right}" if lo is not None else f" {right}"


def _show(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- errors -----------------------------------------------------------------------------------
class ParamError(ConfigError):
    """A params error located by its key path relative to the params class that raised it.

    ``kind`` is ``value`` (wrong type or range), ``missing`` (a required key), ``unknown``
    (the last element of ``key`` is the unknown key; ``hint`` is the "did you mean",
    ``accepted`` the keys of that level, ``unknown`` all unknown keys there) or ``check`` (a
    rule of :meth:`Params.check`). Nested classes raise it relative to themselves; the class
    that parses the whole mapping renders the one-line message with its owner (``train.``,
    ``datasets.rgb_demo.``, ``rgb adapter param``)."""

    def __init__(
        self,
        key: Sequence[str],
        kind: str,
        detail: str = "",
        *,
        cls: type[Params] | None = None,
        owner: str | None = None,
        path: str | None = None,
        hint: str = "",
        accepted: Sequence[str] = (),
        unknown: Sequence[str] = (),
    ):
        self.key = tuple(str(k) for k in key)
        self.kind = kind
        self.detail = detail
        self.hint = hint
        self.accepted = tuple(accepted)
        self.unknown = tuple(unknown)
        cls = cls or Params
        super().__init__(cls._message(cls.section if owner is None else owner, self), path=path)

    def _copy(self, key: Sequence[str], **where: Any) -> ParamError:
        return ParamError(
            key,
            self.kind,
            self.detail,
            hint=self.hint,
            accepted=self.accepted,
            unknown=self.unknown,
            **where,
        )

    def under(self, name: str) -> ParamError:
        """The same error one level down: inside the field ``name`` of the parent class."""
        return self._copy((name, *self.key))

    def located(
        self, cls: type[Params], owner: str | None = None, path: str | None = None
    ) -> ParamError:
        """The message as ``cls`` names its keys under ``owner``, in the file ``path``."""
        return self._copy(self.key, cls=cls, owner=owner, path=path)

    def __reduce__(self):  # pickles as the plain error it reads as
        return ConfigError, (self.reason, self.path, self.sample)


def _dotted(owner: str, key: Sequence[str]) -> str:
    return ".".join(p for p in (owner, *key) if p)


# --- the base class -----------------------------------------------------------------------------
_SPECS: dict[type, dict[str, tuple[dataclasses.Field, Any]]] = {}


class Params:
    """Base of every params dataclass (frozen or not): declare fields with :func:`param`.

    Class attributes: ``section``, the owner messages name keys under when none is given
    (``"train"``: ``train.lr``); ``RENAMED``, former key names -> current ones (for the "did
    you mean"); ``validate_on_init``, whether direct construction validates (and converts)
    every field and runs :meth:`check`; ``numeric_strings``, ``"exponent"`` (default) or
    ``"any"`` (see the module docstring).
    """

    section: ClassVar[str] = ""
    RENAMED: ClassVar[Mapping[str, str]] = {}
    validate_on_init: ClassVar[bool] = False
    numeric_strings: ClassVar[str] = "exponent"

    def __post_init__(self) -> None:
        if self.validate_on_init:
            self.validate()

    # --- parsing ------------------------------------------------------------------------------
    @classmethod
    def parse(
        cls,
        values: Mapping[str, Any] | None = None,
        *,
        owner: str | None = None,
        source: str | None = None,
        cross_check: bool = True,
    ):
        """Validate a mapping (as read from YAML/JSON) into an instance.

        ``owner`` is what messages name the keys under (default: :attr:`section`; an adapter's
        name for adapter params); ``source`` (e.g. ``params.yaml``) is the file the message
        starts with. ``cross_check=False`` checks keys, types and ranges only, not the rules of
        :meth:`check` (for a partial mapping completed later, such as a demo dataset's params
        before its ``demo_params.json`` exists).
        """
        with _located(cls, owner, source):
            return cls._build({} if values is None else values, cross_check)

    @classmethod
    def check_values(
        cls,
        values: Mapping[str, Any],
        *,
        owner: str | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        """Keys, types and ranges of a partial mapping (required keys may be absent, no
        :meth:`check`); returns the keys given, converted."""
        with _located(cls, owner, source):
            return cls._convert(values, partial=True)

    def validate(self, source: str | None = None, *, owner: str | None = None) -> None:
        """Check (and convert, in place) every field of this instance, then :meth:`check`."""
        cls = type(self)
        with _located(cls, owner, source):
            for name, (f, tp) in _spec(cls).items():
                value = getattr(self, name)
                new = cls._convert_one(name, tp, f.metadata, value)
                if new is not value:
                    object.__setattr__(self, name, new)
            self.check()

    @classmethod
    def _build(cls, values: Mapping[str, Any], cross_check: bool = True):
        inst = cls(**cls._convert(values, partial=False))
        if cross_check and not cls.validate_on_init:
            inst.check()
        return inst

    @classmethod
    def _convert(cls, values: Any, partial: bool) -> dict[str, Any]:
        if not isinstance(values, Mapping):
            raise ParamError((), "value", f"must be a mapping, got {_show(values)}")
        spec = _spec(cls)
        unknown = sorted((k for k in values if k not in spec), key=str)
        if unknown:
            raise cls._unknown(unknown)
        out = {}
        for name, (f, tp) in spec.items():
            if name in values:
                out[name] = cls._convert_one(name, tp, f.metadata, values[name])
        if not partial:
            for name, (f, tp) in spec.items():
                if name not in values and f.default is MISSING and f.default_factory is MISSING:
                    detail = f"must be {cls._expected(tp, f.metadata)}; it is missing"
                    raise ParamError((name,), "missing", detail)
        return out

    @classmethod
    def _convert_one(cls, name: str, tp: Any, meta: Mapping[str, Any], value: Any) -> Any:
        try:
            return _coerce(tp, value, meta, True, cls.numeric_strings)
        except _Mismatch:
            detail = f"must be {cls._expected(tp, meta)}, got {_show(value)}"
            raise ParamError((name,), "value", detail) from None
        except ParamError as exc:
            raise exc.under(name) from None

    @classmethod
    def _unknown(cls, unknown: list[Any]) -> ParamError:
        accepted = list(_spec(cls))
        key = str(unknown[0])
        close = [cls.RENAMED[key]] if cls.RENAMED.get(key) in accepted else []
        close = close or difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return ParamError(
            (key,),
            "unknown",
            hint=hint,
            accepted=sorted(accepted),
            unknown=[str(u) for u in unknown],
        )

    # --- messages -----------------------------------------------------------------------------
    @classmethod
    def _expected(cls, tp: Any, meta: Mapping[str, Any]) -> str:
        """What a message says a value must be (:func:`expected`)."""
        return expected(tp, meta)

    @classmethod
    def _message(cls, owner: str, err: ParamError) -> str:
        """The one-line message of ``err`` with keys named under ``owner`` (dotted keys)."""
        if err.kind == "unknown":
            parent = _dotted(owner, err.key[:-1])
            where = f"{parent}." if parent else ""
            accepted = ", ".join(err.accepted)
            return f"unknown key {where}{err.key[-1]!r}{err.hint} (accepted: {accepted})"
        name = _dotted(owner, err.key) or "params"
        return f"{name}: {err.detail}" if err.kind == "check" else f"{name} {err.detail}"

    # --- the hook and helpers -----------------------------------------------------------------
    def check(self) -> None:  # noqa: B027 - optional hook
        """Rules that span several fields; raise ``ConfigError`` via :meth:`fail`."""

    def fail(self, name: str, why: str) -> typing.NoReturn:
        """Refuse the value of field ``name`` (dotted for a nested key) because ``why``."""
        raise ParamError(tuple(name.split(".")), "check", why, cls=type(self))

    def parse_nested(self, name: str, schema: type[Params]) -> Params:
        """The mapping field ``name`` parsed whole by ``schema`` (with its :meth:`check`), for
        the rules of a ``schema`` field that span its keys; errors name ``<name>.<key>``."""
        try:
            return schema._build(getattr(self, name) or {})
        except ParamError as exc:
            raise exc.under(name) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (what stores, checkpoints and reports record)."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """One row per field (for docs and ``--help`` tables): name, type (compact:
        ``int >= 1``), expect (what messages say it must be: ``a positive integer``), default,
        doc and whether it is required."""
        rows = []
        for name, (f, tp) in _spec(cls).items():
            required = f.default is MISSING and f.default_factory is MISSING
            if f.default is not MISSING:
                default = f.default
            elif f.default_factory is not MISSING:
                default = f.default_factory()
            else:
                default = None
            rows.append(
                {
                    "name": name,
                    "type": describe_type(tp, f.metadata),
                    "expect": expected(tp, f.metadata),
                    "default": plain(default),
                    "doc": f.metadata.get("doc", ""),
                    "required": required,
                }
            )
        return rows


def _spec(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """Field name -> (field, resolved annotation) of a params dataclass, in declaration order."""
    spec = _SPECS.get(cls)
    if spec is None:
        hints = typing.get_type_hints(cls)
        spec = {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}
        _SPECS[cls] = spec
    return spec


class _located:
    """Re-render :class:`ParamError` for ``cls`` under ``owner``; give errors the ``source``."""

    def __init__(self, cls: type[Params], owner: str | None, source: str | None):
        self.cls, self.owner, self.source = cls, owner, source

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, ParamError):
            raise exc.located(self.cls, self.owner, self.source) from None
        if isinstance(exc, ConfigError) and exc.path is None and self.source is not None:
            raise ConfigError(exc.reason, path=self.source, sample=exc.sample) from None
        return False


# --- adapter params ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AdapterParams(Params):
    """Base of every modality adapter's params: a frozen dataclass whose fields are the params.

    Messages name ``<owner> adapter param '<key>'`` (the owner is the adapter's name) and its
    type as the adapters' docs tables write it (``int >= 1``). Values may come from
    command-line flags (``dsod detect``), so every numeric string is a number.
    Shared vocabulary (use these names for these meanings): ``class_names``, ``unknown_class``,
    ``keep_difficult``, ``val_fraction``, ``test_fraction``, ``seed`` (the split hash seed),
    ``max_pixels``.
    """

    RENAMED: ClassVar[Mapping[str, str]] = {
        "classes": "class_names",
        "unknown_classes": "unknown_class",
        "split_seed": "seed",
    }
    numeric_strings: ClassVar[str] = "any"

    @classmethod
    def _expected(cls, tp: Any, meta: Mapping[str, Any]) -> str:
        # the compact type of the adapters' docs tables (``int >= 1``, ``'voc' | 'coco'``)
        return meta.get("expect") or describe_type(tp, meta)

    @classmethod
    def _message(cls, owner: str, err: ParamError) -> str:
        where = f"{owner} adapter param" if owner else "adapter param"
        if err.kind == "unknown":
            accepted = ", ".join(err.accepted)
            return f"unknown {where} {err.key[-1]!r}{err.hint} (accepted: {accepted})"
        if not err.key:
            return f"{where}s {err.detail}"
        name = f"{where} {err.key[0]!r}" + "".join(f".{k}" for k in err.key[1:])
        return f"{name}: {err.detail}" if err.kind == "check" else f"{name} {err.detail}"


RENAMED = AdapterParams.RENAMED
"""Old adapter param names -> the shared vocabulary (for the "did you mean" of unknown keys)."""
