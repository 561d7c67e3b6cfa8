"""YAML configs read into typed dataclasses, with errors that name the bad key."""

from __future__ import annotations

import dataclasses
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from reportgen.errors import ReportgenError, file_problem

T = TypeVar("T")

MAX_CONFIG_BYTES = 1_000_000  # configs are a few hundred bytes
MAX_VALUES = 100_000  # values in a config once YAML aliases are expanded (an alias bomb expands to billions)
MAX_DEPTH = 32  # nesting of mappings and lists


def load_yaml(path: str | Path) -> dict:
    """Parse a YAML mapping; a missing file or malformed YAML is a one-line ReportgenError."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise ReportgenError(f"config file {path} {problem}; give a YAML config file"
                             if problem != "not found" else f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ReportgenError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes; "
                                 "give a YAML config file (they are a few hundred bytes)")
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, OSError) as e:
        raise ReportgenError(f"cannot read {path} as a UTF-8 text file ({e.__class__.__name__}); "
                             "give a YAML config file") from None
    except yaml.YAMLError as e:
        raise ReportgenError(f"malformed YAML in {path}{yaml_where(e)}: {_shown(getattr(e, 'problem', None) or e)}; "
                             "fix the file") from None
    except RecursionError:
        raise ReportgenError(f"{path} is nested too deeply to be a config; fix the file") from None
    check_size(data, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ReportgenError(f"{path} must hold a YAML mapping of keys to values, not {type(data).__name__}")
    return data


def yaml_where(e: Exception) -> str:
    mark = getattr(e, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def check_size(data: Any, where: str) -> None:
    """Refuse parsed YAML that is nested more than MAX_DEPTH deep or, with its aliases expanded,
    holds more than MAX_VALUES values: reading it would take unbounded time and memory."""
    stack, count = [(data, 0)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ReportgenError(f"{where} expands to more than {MAX_VALUES} values (YAML anchors and aliases "
                                 "repeat their contents); a config needs far fewer: remove the aliases")
        if depth > MAX_DEPTH:
            raise ReportgenError(f"{where} is nested more than {MAX_DEPTH} levels deep; fix the file")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for kv in value.items() for v in kv)
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 4
_REPR.maxlevel = 2


def _shown(value: Any) -> str:
    """A value as an error message shows it: its repr, cut short (a value may be huge)."""
    return _REPR.repr(value) if not isinstance(value, Exception) else str(value)[:200]


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, checking keys and value types recursively.

    `where` names the source in errors, e.g. 'configs/train.yaml' or 'configs/train.yaml: model'.
    """
    if not isinstance(data, dict):
        raise ReportgenError(f"{where} must be a mapping of keys to values, not {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known), key=str)
    if unknown:
        raise ReportgenError(
            f"unknown key {_shown(str(unknown[0]))} in {where}; known keys: {', '.join(sorted(known))}"
        )
    kwargs = {k: _convert(hints[k], v, f"{where}: {k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ReportgenError(f"{where}: {_shown(e)}") from None


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if origin is typing.Literal:
        if value not in args:
            raise ReportgenError(f"{where} must be one of {', '.join(map(repr, args))}, got {_shown(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ReportgenError(f"{where} must be a list, got {_shown(value)}")
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ReportgenError(f"{where} must be a mapping, got {_shown(value)}")
        return {k: _convert(args[1], v, f"{where}: {k}") for k, v in value.items()} if args else value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ReportgenError(f"{where} must be {tp.__name__}, got {_shown(value)}")
    return value


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config dataclass (for checkpoints and provenance)."""
    return dataclasses.asdict(obj)
