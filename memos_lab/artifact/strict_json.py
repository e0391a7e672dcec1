"""Strict JSON: untrusted bytes parsed with bounds, and values type-checked against a hint."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from memos_lab.errors import DataError

MAX_JSON_BYTES = 64 * 2**20  # a manifest or JSON payload file
MAX_JSON_DEPTH = 32


def parse_json(data: bytes, where: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Strict JSON from untrusted bytes: UTF-8, bounded size and depth, no duplicate keys, no NaN or
    infinity, no lone surrogates; every failure one DataError line naming `where`."""
    if len(data) > max_bytes:
        raise DataError(f"{where}: {len(data)} bytes of JSON, more than the limit of {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{where}: not UTF-8 ({error.reason} at byte {error.start})") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not valid JSON ({error.msg}; line {error.lineno}, column {error.colno})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as error:  # a refused constant or duplicate key, an integer of too many digits
        raise DataError(f"{where}: unreadable JSON ({_first_line(error)})") from None
    check_plain(value, where)
    return value


def check_plain(value: Any, where: str) -> None:
    """DataError unless `value` is plain JSON data: bounded depth, finite numbers, UTF-8-encodable strings."""
    stack = [("", value, 0)]
    while stack:
        path, node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise DataError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels (at {path or 'the top'})")
        if isinstance(node, dict):
            for key, item in node.items():
                if not isinstance(key, str):
                    raise DataError(f"{where}: {path or 'the top'} has a non-string key {key!r}")
                _check_text(key, where, f"{path}.{key}" if path else key)
                stack.append((f"{path}.{key}" if path else key, item, depth + 1))
        elif isinstance(node, list | tuple):
            stack.extend((f"{path}[{i}]", item, depth + 1) for i, item in enumerate(node))
        elif isinstance(node, str):
            _check_text(node, where, path)
        elif isinstance(node, float) and not math.isfinite(node):
            raise DataError(f"{where}: {path or 'the value'} is {node}; only finite numbers are stored")
        elif not isinstance(node, int | float | bool | types.NoneType):
            raise DataError(f"{where}: {path or 'the value'} is a {_type_name(node)}, not JSON data")


def _check_text(text: str, where: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{where}: {path or 'the value'} holds a lone surrogate (not valid Unicode text)") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"the constant {name} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]  # add's None keeps the test false while recording the key
        raise ValueError(f"duplicate key {duplicate!r}")
    return value


def check_json(value: Any, hint: Any, where: str, prefix: str = "") -> None:
    """DataError naming `where` and the field unless `value` fits the type `hint`: str, int (not bool),
    float, bool, None, Any, Literal, unions, list[T], dict[str, T] and TypedDicts (exactly their keys)."""
    problem = _mismatch(value, hint, "")
    if problem is not None:
        field, expected = problem
        field = (prefix + field).lstrip(".")
        if expected.startswith("unknown"):
            raise DataError(f"{where}: {field}: {expected}")
        got = _type_name(_at(value, problem[0]))
        raise DataError(f"{where}: {field + ': ' if field else ''}expected {expected}, got {got}")


def _mismatch(value: Any, hint: Any, path: str) -> tuple[str, str] | None:
    """(path, what was expected) of the first place `value` does not fit `hint`, or None."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if hint is None or hint is types.NoneType:
        return None if value is None else (path, "null")
    if origin in (typing.Union, types.UnionType):
        if any(_mismatch(value, arm, path) is None for arm in args):
            return None
        deeper = [m for arm in args if (m := _mismatch(value, arm, path)) is not None and m[0] != path]
        return deeper[0] if deeper else (path, " or ".join(_describe(arm) for arm in args))
    if origin is Literal:
        return (
            None if value in args and type(value) in {type(a) for a in args} else (path, " or ".join(map(repr, args)))
        )
    if origin in (list, tuple, Sequence):  # a JSON array (tuple[T, ...] for fields kept as tuples)
        if not isinstance(value, list):
            return path, _describe(hint)
        return next((m for i, item in enumerate(value) if (m := _mismatch(item, args[0], f"{path}[{i}]"))), None)
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            return path, _describe(hint)
        return next((m for key, item in value.items() if (m := _mismatch(item, args[1], f"{path}.{key}"))), None)
    if typing.is_typeddict(hint) or dataclasses.is_dataclass(hint):  # a dataclass as its asdict() record
        if not isinstance(value, dict):
            return path, "an object"
        hints = _type_hints(hint)
        required = (
            _required_keys(hint)
            if typing.is_typeddict(hint)
            else {
                f.name
                for f in dataclasses.fields(hint)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            }
        )
        extra, missing = sorted(set(value) - set(hints)), sorted(required - set(value))
        if extra:
            return f"{path}.{extra[0]}", "unknown field (valid: " + ", ".join(hints) + ")"
        if missing:
            return f"{path}.{missing[0]}", "a value (the field is missing)"
        return next((m for key, item in value.items() if (m := _mismatch(item, hints[key], f"{path}.{key}"))), None)
    if hint is float:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else (path, "a number")
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else (path, "an integer")
    if isinstance(hint, type):
        return None if isinstance(value, hint) else (path, _describe(hint))
    raise TypeError(f"check_json cannot check {hint!r}")  # a programming error, not bad data


@functools.cache
def _type_hints(cls: Any) -> dict[str, Any]:
    """A record type's field types, evaluated once (get_type_hints evaluates our string annotations),
    with TypedDict's Required/NotRequired markers taken off."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {
        k: typing.get_args(h)[0] if typing.get_origin(h) in (typing.Required, typing.NotRequired) else h
        for k, h in hints.items()
    }


@functools.cache
def _required_keys(cls: Any) -> frozenset[str]:
    """A TypedDict's required keys, read from its evaluated annotations: with string annotations Python
    3.11 cannot see NotRequired when it builds __required_keys__."""
    hints = typing.get_type_hints(cls, include_extras=True)
    optional = {k for k, h in hints.items() if typing.get_origin(h) is typing.NotRequired}
    return (
        frozenset(hints) - optional
        if cls.__total__
        else frozenset(k for k, h in hints.items() if typing.get_origin(h) is typing.Required)
    )


_MISSING = object()


def _at(value: Any, path: str) -> Any:
    for key, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        try:
            value = value[int(index)] if index else value[key]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return value


_TYPE_NAMES: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "a list",
    dict: "an object",
}


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (list, tuple, Sequence):
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "an object"
    return _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if value is _MISSING:
        return "nothing"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_json(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return _short(text[0] if text else type(error).__name__, 200).strip("'\"")
