"""Typed configuration: dataclasses loaded from YAML plus ``key=value`` overrides.

Every stage has a dataclass with a docstring under each field (shown by ``--help``). Loading is
strict: an unknown key, a wrong type or a missing required key is a :class:`ConfigError` that names
the key and where it came from, raised before any work starts. Nested dataclasses are addressed with
dotted keys (``cleaning.min_text_chars=50``).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from bg2vec.errors import ConfigError

T = TypeVar("T")


class _Override(str):
    """A value typed on the command line: converted by the target field's type, not guessed by YAML,
    so that ``output=2024`` stays a string while ``seq_len=128`` becomes an int."""


def load_config(cls: type[T], path: str | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from an optional YAML file and ``key=value`` overrides (overrides win)."""
    data: dict[str, Any] = {}
    origin = "command line"
    if path is not None:
        origin = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; pass --config with a YAML file "
                              f"(the presets live under configs/<preset>/)") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a folder; pass --config one YAML file (a preset folder "
                              f"holds one per stage, e.g. configs/tiny/mntp.yaml)") from None
        except UnicodeDecodeError as e:
            line = Path(path).read_bytes()[:e.start].count(b"\n") + 1
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.object[e.start]:#04x} on line {line}); "
                              f"save it as UTF-8") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values, "
                              f"not a {type(loaded).__name__}")
        data = loaded or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. output=runs/x)")
        _set_dotted(data, key.strip(), _Override(value))
    return from_dict(cls, data, where=origin)


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config", prefix: str = "") -> T:
    """Strictly convert a mapping into the dataclass ``cls``."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        if isinstance(data[key], _Override):
            where = "command-line override"
        hint = difflib.get_close_matches(key, fields, n=1)
        did_you_mean = f" (did you mean {prefix + hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{where}: unknown key {prefix + key!r}{did_you_mean}; valid keys"
                          f"{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix}{name}", where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {prefix + name!r}; "
                              f"set it in the YAML file or pass {prefix}{name}=VALUE")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass (for manifests and ``train_loop_config``)."""
    return dataclasses.asdict(obj)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (LitGPT style)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def describe(cls: type, prefix: str = "") -> str:
    """Human-readable list of every key with its type, default and docstring (for ``--help``)."""
    lines = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(describe(tp, prefix=f"{prefix}{f.name}."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f"default: {f.default!r}"
        elif f.default_factory is not dataclasses.MISSING:
            default = f"default: {f.default_factory()!r}"
        else:
            default = "required"
        lines.append(f"  {prefix}{f.name} ({_type_name(tp)}; {default})")
        if f.name in docs:
            lines.extend(textwrap.wrap(docs[f.name], width=96, initial_indent=" " * 6,
                                       subsequent_indent=" " * 6))
    return "\n".join(lines)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}=...: {part!r} is a value, not a section")
        node = child
    node[last] = value


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check (and for command-line overrides, parse) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(value, _Override):
        where = "command-line override"
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, _Override) and value.strip() in ("", "null", "None")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], key, where)
        raise TypeError(f"unsupported config annotation {tp} for {key}")
    if tp is str:
        if isinstance(value, _Override) and value.strip() in ('""', "''"):
            return ""  # key='""' on the command line: the empty string (a bare key= is None where allowed)
        if isinstance(value, str):
            return str(value)
        return _fail(value, "a string (quote it in YAML)", key, where)
    if isinstance(value, _Override):
        try:
            value = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            pass
    if tp is Any:  # free-form values handed to user code as they are (e.g. a callable's options)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            return _fail(value, f"a section of keys ({', '.join(f.name for f in dataclasses.fields(tp))})",
                         key, where)
        return from_dict(tp, value, where=where, prefix=f"{key}.")
    if origin is Literal:
        if value in args:
            return value
        return _fail(value, "one of " + ", ".join(repr(a) for a in args), key, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        return _fail(value, "true or false", key, where)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return _fail(value, "an integer", key, where)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        return _fail(value, "a number", key, where)
    if origin is list:
        if isinstance(value, str) or not isinstance(value, Sequence):
            return _fail(value, "a list, e.g. [a, b]", key, where)
        return [_convert(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            return _fail(value, "a mapping, e.g. {a: 1}", key, where)
        return {_convert(k, args[0], key, where): _convert(v, args[1], f"{key}.{k}", where)
                for k, v in value.items()}
    raise TypeError(f"unsupported config annotation {tp} for {key}")


def _fail(value: Any, expected: str, key: str, where: str) -> Any:
    raise ConfigError(f"{where}: {key} must be {expected}, got {str(value)!r}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))
