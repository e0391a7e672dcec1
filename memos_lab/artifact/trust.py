"""Trusted classes: a stored artifact may name only registered components (`memos_lab.registry`), so data never
picks code."""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator, Mapping
from typing import Any

from memos_lab import registry
from memos_lab.artifact.strict_json import _describe, _mismatch, _short, _short_json, _type_hints, _type_name
from memos_lab.errors import ConfigError, IncompatibleError

HYDRA_KEYS = frozenset({"_target_", "_partial_", "_args_", "_recursive_", "_convert_"})


def trusted_class(path: object, family: str, where: str) -> type[Any]:
    """The class `path` names, only if it is a registered component of `family`: data never picks code."""
    found = registry.trusted_class(path, family)
    if found is None:
        names = ", ".join(component.target.rpartition(".")[2] for component in registry.components(family))
        raise IncompatibleError(
            f"{where} names {_short(path)}; a stored artifact may only name the registered {family} classes {names}"
        )
    return found


def class_path(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def require_trusted(obj: object, family: str, where: str) -> str:
    """The class path of `obj` for a manifest; ConfigError (before writing) if a reader would refuse it."""
    path = class_path(obj)
    if registry.trusted_class(path, family) is not type(obj):
        raise ConfigError(
            f"{where}: class {path} is not a registered {family} component (memos_lab.registry), so it cannot be stored"
        )
    return path


def trusted_settings(config: Mapping[str, Any], family: str, where: str) -> tuple[type, dict[str, Any]]:
    """The class and keyword settings of a `{"_target_": ..., **settings}` config, for building it directly
    (never through hydra.utils.instantiate): the class must be registered, every key one of its constructor's
    parameters and every value a plain scalar, so no nested `_target_` can reach a constructor."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: expected a mapping with a _target_, got {_type_name(config)}")
    cls = trusted_class(config.get("_target_"), family, f"{where}._target_")
    parameters = inspect.signature(cls).parameters
    settings: dict[str, Any] = {}
    for key, value in config.items():
        if key == "_target_":
            continue
        if key not in parameters or key.startswith("_"):
            raise ConfigError(f"{where}.{key}: not a setting of {cls.__name__}; valid: {', '.join(parameters)}")
        if not isinstance(value, str | int | float | bool | types.NoneType):
            raise ConfigError(
                f"{where}.{key}: must be a plain value (string, number, boolean or null), got {_type_name(value)}"
            )
        hint = _type_hints(cls.__init__).get(key, Any)
        if _mismatch(value, hint, "") is not None:
            raise ConfigError(
                f"{where}.{key}: expected {_describe(hint)}, got {_type_name(value)} {_short_json(value)}"
            )
        settings[key] = value
    missing = [
        name
        for name, parameter in parameters.items()
        if parameter.default is parameter.empty
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        and name not in settings
    ]
    if missing:  # found here, not as a TypeError when the class is built (perhaps much later)
        raise ConfigError(f"{where}: {cls.__name__} needs {', '.join(missing)}, which is not set")
    return cls, settings


def _check_targets(manifest: Any, targets: Mapping[str, str], where: str) -> None:
    """Refuse Hydra keys outside the declared places, and `_target_`s that name unregistered classes."""
    for path, value in _walk(manifest):
        if isinstance(value, dict) and HYDRA_KEYS & set(value):
            keys = sorted(HYDRA_KEYS & set(value))
            if path not in targets or keys != ["_target_"]:
                raise IncompatibleError(
                    f"{where}: {path} holds {', '.join(keys)}; a stored artifact cannot name code there"
                )
            trusted_class(value["_target_"], targets[path], f"{where}: {path}._target_")


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every node of a JSON value, iteratively (depth is checked by `check_plain`)."""
    stack = [(path, value)]
    while stack:
        path, value = stack.pop()
        yield path, value
        if isinstance(value, dict):
            stack.extend((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
