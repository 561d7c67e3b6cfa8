"""YAML configs read into typed dataclasses, with errors that name the bad key."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from reportgen.errors import ReportgenError

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict:
    """Parse a YAML mapping; a missing file or malformed YAML is a one-line ReportgenError."""
    path = Path(path)
    if not path.is_file():
        raise ReportgenError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, OSError) as e:
        raise ReportgenError(f"cannot read {path} as a UTF-8 text file ({e.__class__.__name__}); "
                             "give a YAML config file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ReportgenError(f"malformed YAML in {path}{where}: {getattr(e, 'problem', e)}; fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ReportgenError(f"{path} must hold a YAML mapping of keys to values, not {type(data).__name__}")
    return data


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, checking keys and value types recursively.

    `where` names the source in errors, e.g. 'configs/train.yaml' or 'configs/train.yaml: model'.
    """
    if not isinstance(data, dict):
        raise ReportgenError(f"{where} must be a mapping of keys to values, not {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ReportgenError(
            f"unknown key '{unknown[0]}' in {where}; known keys: {', '.join(sorted(known))}"
        )
    kwargs = {k: _convert(hints[k], v, f"{where}: {k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ReportgenError(f"{where}: {e}") from None


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
            raise ReportgenError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ReportgenError(f"{where} must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ReportgenError(f"{where} must be a mapping, got {value!r}")
        return {k: _convert(args[1], v, f"{where}: {k}") for k, v in value.items()} if args else value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ReportgenError(f"{where} must be {tp.__name__}, got {value!r}")
    return value


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config dataclass (for checkpoints and provenance)."""
    return dataclasses.asdict(obj)
