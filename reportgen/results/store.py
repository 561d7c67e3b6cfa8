"""Save and load a Report as results.json plus arrays.npz, exactly and byte-for-byte reproducibly.

results.json holds everything but numpy arrays, with sorted keys and Python's shortest exact
float repr; non-finite floats become {"$float": "nan" | "inf" | "-inf"} (JSON has no NaN) and each
array becomes {"$array": NAME, "sha256": HASH}, a member NAME.npy of arrays.npz. HASH is the sha256
of the array's place in the report and its .npy bytes, so loading refuses an arrays.npz edited,
swapped for another run's, or whose references in results.json were exchanged. Loading is driven
by the dataclasses' type hints, so every nested dataclass, list, dict, Optional and array comes
back as it was saved. The zip is written by hand with fixed timestamps: np.savez stamps the
current time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
import types
import typing
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.errors import ReportgenError
from reportgen.results.schema import SCHEMA_VERSION, Report

RESULTS_FILE = "results.json"
ARRAYS_FILE = "arrays.npz"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema" / "results.schema.json"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
MAX_DEPTH = 64  # nesting of results.json (a report nests about 12 deep); deeper is not a report


class _Mismatch(Exception):
    """Stored data that does not fit the schema; `path` says where."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path or 'top level'}: {problem}")


class _Tampered(Exception):
    """An array in arrays.npz that is not the one results.json was saved with."""

    def __init__(self, path: str, name: str):
        super().__init__(f"the array at {path} ({name}.npy) is not the one saved there")


# ---------------------------------------------------------------- public API
def dump_results(report: Report) -> tuple[bytes, bytes]:
    """The bytes of results.json and arrays.npz for `report` (identical for equal reports)."""
    arrays: dict[str, bytes] = {}
    data = _encode(report, Report, "", arrays)
    text = json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8"), _npz_bytes(arrays)


def parse_results(json_bytes: bytes, npz_bytes: bytes, where: str) -> Report:
    """Rebuild a Report from the two files' bytes; `where` names their source in errors."""
    try:
        raw = json.loads(json_bytes)
    except (ValueError, UnicodeDecodeError) as e:
        raise ReportgenError(f"{where}/{RESULTS_FILE} is not valid JSON ({str(e)[:200]}); rebuild it with "
                             "`reportgen build`") from None
    except RecursionError:
        raw = None
    if raw is None or _too_deep(raw):
        raise ReportgenError(f"{where}/{RESULTS_FILE} is nested more than {MAX_DEPTH} levels deep, so it is not a "
                             "reportgen results file; rebuild it with `reportgen build`")
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise ReportgenError(
            f"{where}/{RESULTS_FILE} has results schema version {repr(version)[:40]}, this reportgen reads version "
            f"{SCHEMA_VERSION}; rebuild it with `reportgen build`"
        )
    arrays = _read_npz(npz_bytes, where)
    try:
        return _decode(Report, raw, "", arrays)
    except _Mismatch as e:
        raise ReportgenError(
            f"{where}/{RESULTS_FILE} does not match the results schema at {e}; rebuild it with `reportgen build`"
        ) from None
    except _Tampered as e:
        raise ReportgenError(
            f"{where}/{ARRAYS_FILE} does not match {where}/{RESULTS_FILE}: {e} (the files were edited, or come from "
            "different runs); render the directory both were written to, or rebuild it with `reportgen build`"
        ) from None


def _too_deep(value: Any) -> bool:
    stack = [(value, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return False


def save_results(report: Report, out_dir: str | Path) -> None:
    """Write results.json and arrays.npz into `out_dir` (created if missing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_bytes, npz_bytes = dump_results(report)
    (out / ARRAYS_FILE).write_bytes(npz_bytes)
    (out / RESULTS_FILE).write_bytes(json_bytes)


def load_results(results_dir: str | Path) -> Report:
    """Load a results directory (or a built site, which holds the same two files)."""
    d = Path(results_dir)
    try:
        json_bytes = (d / RESULTS_FILE).read_bytes()
        npz_bytes = (d / ARRAYS_FILE).read_bytes()
    except OSError as e:
        raise ReportgenError(
            f"cannot read results from {d}: {e.strerror or e} ({Path(e.filename or d).name}); "
            "give a directory written by `reportgen build` or `reportgen analyze`"
        ) from None
    return parse_results(json_bytes, npz_bytes, str(d))


def normalized(report: Report) -> Report:
    """`report` as a saved-and-loaded copy, so that a report built in memory and one loaded from
    disk (or from the cache) are the same object down to dict order, and render identically."""
    return parse_results(*dump_results(report), "report")


# ---------------------------------------------------------------- encoding
def _encode(value: Any, hint: Any, path: str, arrays: dict[str, bytes]) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        hints = _hints(type(value))
        return {f.name: _encode(getattr(value, f.name), hints[f.name], _join(path, f.name), arrays)
                for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"results array {path} has dtype object; store numbers or strings only")
        name = _array_name(path, arrays)
        member = io.BytesIO()
        np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
        arrays[name] = member.getvalue()
        return {"$array": name, "sha256": _array_hash(path, arrays[name])}
    if isinstance(value, np.generic):
        return _encode(value.item(), hint, path, arrays)
    if isinstance(value, float) or (isinstance(value, int) and _strip_optional(hint) is float):
        value = float(value)
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, int):
        return value
    args = typing.get_args(_strip_optional(hint))
    if isinstance(value, (list, tuple)):
        item = args[0] if args else Any
        return [_encode(v, item, _join(path, str(i)), arrays) for i, v in enumerate(value)]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"results dict {path} has a non-string key {bad[0]!r}; JSON keys are strings")
        item = args[1] if len(args) == 2 else Any
        return {k: _encode(v, item, _join(path, k), arrays) for k, v in value.items()}
    raise TypeError(f"cannot store {type(value).__name__} at {path} in results")


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part


def _array_hash(path: str, npy: bytes) -> str:
    """sha256 of an array's place in the report and its .npy bytes: it changes when either does."""
    return hashlib.sha256(path.encode("utf-8") + b"\0" + npy).hexdigest()


def _array_name(path: str, arrays: dict[str, bytes]) -> str:
    """The array's place in the report as a safe zip member name (dict keys may hold any text)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path)
    while name in arrays:
        name += "_"
    return name


def _npz_bytes(arrays: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, arrays[name], compresslevel=6)
    return buf.getvalue()


# ---------------------------------------------------------------- decoding
def _read_npz(npz_bytes: bytes, where: str) -> dict[str, bytes]:
    """The .npy bytes of each member of arrays.npz, by name (decoded once their hash is checked)."""
    try:
        with zipfile.ZipFile(io.BytesIO(npz_bytes)) as zf:
            return {info.filename[: -len(".npy")]: zf.read(info) for info in zf.infolist()
                    if info.filename.endswith(".npy")}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError) as e:
        raise ReportgenError(f"{where}/{ARRAYS_FILE} is corrupt ({str(e)[:200]}); rebuild it with "
                             "`reportgen build`") from None


def _decode(hint: Any, value: Any, path: str, arrays: dict[str, bytes]) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return _decode_any(value, path, arrays)
    if dataclasses.is_dataclass(hint):
        return _decode_dataclass(hint, value, path, arrays)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _decode(_strip_optional(hint), value, path, arrays)
    if origin is list or hint is list:
        _expect(isinstance(value, list), path, "a list", value)
        item = args[0] if args else Any
        return [_decode(item, v, _join(path, str(i)), arrays) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        _expect(isinstance(value, dict), path, "a mapping", value)
        item = args[1] if args else Any
        return {k: _decode(item, v, _join(path, k), arrays) for k, v in value.items()}
    if hint is np.ndarray:
        _expect(_is_array(value) and value["$array"] in arrays, path, "an array in " + ARRAYS_FILE, value)
        npy = arrays[value["$array"]]
        if _array_hash(path, npy) != value["sha256"]:
            raise _Tampered(path, value["$array"])
        try:
            return np.lib.format.read_array(io.BytesIO(npy), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise _Mismatch(path, f"the array is unreadable ({str(e)[:100]})") from None
    if hint is float:
        if _is_marker(value, "$float") and value["$float"] in _NONFINITE:
            return _NONFINITE[value["$float"]]
        _expect(isinstance(value, (int, float)) and not isinstance(value, bool), path, "a number", value)
        return float(value)
    if hint in (int, str, bool):
        ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
        _expect(ok, path, f"a {hint.__name__}", value)
        return value
    raise TypeError(f"results schema uses unsupported type {hint!r} at {path}")


def _decode_dataclass(cls: type, value: Any, path: str, arrays: dict[str, bytes]) -> Any:
    _expect(isinstance(value, dict), path, f"a {cls.__name__} mapping", value)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise _Mismatch(path, f"unknown key '{unknown[0]}' in {cls.__name__}")
    missing = [n for n, f in fields.items() if n not in value and _required(f)]
    if missing:
        raise _Mismatch(path, f"missing key '{missing[0]}' in {cls.__name__}")
    hints = _hints(cls)
    return cls(**{k: _decode(hints[k], v, _join(path, k), arrays) for k, v in value.items()})


def _decode_any(value: Any, path: str, arrays: dict[str, bytes]) -> Any:
    """Untyped data (e.g. a config dict): plain JSON, with array and non-finite float markers."""
    if _is_array(value):
        return _decode(np.ndarray, value, path, arrays)
    if _is_marker(value, "$float"):
        return _decode(float, value, path, arrays)
    if isinstance(value, dict):
        return {k: _decode_any(v, _join(path, k), arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_any(v, _join(path, str(i)), arrays) for i, v in enumerate(value)]
    return value


def _is_marker(value: Any, key: str) -> bool:
    return isinstance(value, dict) and len(value) == 1 and key in value


def _is_array(value: Any) -> bool:
    return (isinstance(value, dict) and set(value) == {"$array", "sha256"}
            and isinstance(value["$array"], str) and isinstance(value["sha256"], str))


def _expect(ok: bool, path: str, what: str, value: Any) -> None:
    if not ok:
        shown = json.dumps(value)[:60] if not isinstance(value, (dict, list)) else type(value).__name__
        raise _Mismatch(path, f"expected {what}, got {shown}")


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"results schema supports Optional[X] only, not {hint!r}")
        return inner[0]
    return hint


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


# ---------------------------------------------------------------- JSON Schema
def json_schema() -> dict:
    """JSON Schema (2020-12) of results.json, derived from the dataclasses.

    The shipped copy is reportgen/schema/results.schema.json; `write_json_schema()` refreshes it
    after a results dataclass changes (a test fails until it is refreshed).
    """
    defs: dict[str, dict] = {
        "float": {"anyOf": [{"type": "number"}, {
            "type": "object", "properties": {"$float": {"enum": sorted(_NONFINITE)}},
            "required": ["$float"], "additionalProperties": False}]},
        "array": {"type": "object", "properties": {"$array": {"type": "string"},
                                                   "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                  "required": ["$array", "sha256"], "additionalProperties": False,
                  "description": f"a member NAME.npy of {ARRAYS_FILE}; sha256 of the array's place in the report "
                                 "(e.g. models.0.findings.attention.entropy), a zero byte and the member's bytes"},
    }
    root = _schema_of(Report, defs)
    defs["Report"]["properties"]["schema_version"] = {"const": SCHEMA_VERSION}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "reportgen results.json",
            **root, "$defs": dict(sorted(defs.items()))}


def write_json_schema(path: str | Path = SCHEMA_PATH) -> None:
    Path(path).write_text(json.dumps(json_schema(), indent=1, sort_keys=True) + "\n")


def _schema_of(hint: Any, defs: dict[str, dict]) -> dict:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        name = hint.__name__
        if name not in defs:
            defs[name] = {}  # placeholder against recursion
            hints = _hints(hint)
            fields = dataclasses.fields(hint)
            defs[name] = {
                "type": "object",
                "properties": {f.name: _schema_of(hints[f.name], defs) for f in fields},
                "required": sorted(f.name for f in fields if _required(f)),
                "additionalProperties": False,
            }
            doc = (hint.__doc__ or "").strip()
            if doc and not doc.startswith(name + "("):  # dataclasses without a docstring get their signature
                defs[name]["description"] = doc.splitlines()[0]
        return {"$ref": f"#/$defs/{name}"}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema_of(_strip_optional(hint), defs), {"type": "null"}]}
    if origin is list or hint is list:
        return {"type": "array", "items": _schema_of(args[0], defs)} if args else {"type": "array"}
    if origin is dict or hint is dict:
        return {"type": "object", "additionalProperties": _schema_of(args[1], defs)} if args else {"type": "object"}
    simple = {np.ndarray: {"$ref": "#/$defs/array"}, float: {"$ref": "#/$defs/float"}, int: {"type": "integer"},
              bool: {"type": "boolean"}, str: {"type": "string"}, Any: {}}
    return simple[hint]
