"""Typed settings: every component declares its settings once, as a frozen dataclass.

The pattern (copy it for a new component):

1. Declare the settings next to the component, defaults and docs in one place::

       @dataclass(frozen=True)
       class RecencySettings(Settings):
           section: ClassVar[str] = "scheduler"  # the config path errors name: "scheduler.half_life"
           half_life: float = 16.0  # steps until a use counts half

           def validate(self) -> None:  # called by __post_init__, after the generic type check
               positive(self, "half_life")

2. Point the component at it and build it from keyword settings (Hydra passes the YAML's keys)::

       class RecencyPolicy(SchedulingPolicy):
           settings_class = RecencySettings

           def __init__(self, **settings: Any) -> None:
               self.settings = RecencySettings.from_mapping(settings)

   A function target (a dataset loader, an experiment's `fn`) is marked with `@uses_settings(XSettings)`.

3. The YAML names the dataclass as its schema and only overrides::

       defaults:
         - /settings/memos_lab.scheduler.recency.RecencySettings@_here_
         - _self_
       _target_: memos_lab.scheduler.recency.RecencyPolicy

`register_schemas()` (called by the CLI and the test suite before composing) stores every schema named
that way in Hydra's ConfigStore, so a composed config carries every setting with its type: an override
of the wrong type (`memory.rrf_k=abc`) or an unknown key fails at composition. Range checks live in the
shared validators below, called from `validate`; each raises a one-line ConfigError such as
`memory.rrf_k must be a non-negative number, got -5`. tests/test_config_agreement.py binds every file
under conf/ to its target's settings.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.resources
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, TypeVar

from omegaconf import DictConfig, OmegaConf

from memos_lab.errors import ConfigError

SCHEMA_GROUP = "settings"  # YAML files name their schema as /settings/<module>.<Class>
# The configs ship inside the package (memos_lab.conf, mapped from the repository's top-level conf/), so an
# installed wheel and an editable clone find them the same way.
CONF_DIR = Path(str(importlib.resources.files("memos_lab.conf")))
# A user's own config folders, searched after memos_lab's (os.pathsep-separated, like PYTHONPATH): a
# `memory/mine.yaml` there is selectable as `memory=mine`.
CONFIG_PATH_VARIABLE = "MEMOS_LAB_CONFIG_PATH"
F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every settings dataclass: type checks every field, then runs the subclass's `validate`."""

    section: ClassVar[str] = "settings"
    # Keys a config of this component may hold besides the settings (passed on to its constructor
    # separately, e.g. LoRA's `gate`), with their defaults; they are typed Any in the schema.
    config_keys: ClassVar[Mapping[str, Any]] = {}
    # Components built with hydra.utils.instantiate carry `_target_` in their config; experiments do not.
    instantiated: ClassVar[bool] = True
    # Fields whose value is data each YAML file declares (an experiment's name, fn, metric list), not a
    # default the YAML could drift from.
    declared_in_yaml: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if not _matches(value, hints[item.name]):
                raise ConfigError(f"{self.section}.{item.name} must be {_describe(hints[item.name])}, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Range and consistency checks; subclasses call the shared validators below."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Self:
        """Settings from config keys (a dict or DictConfig); unknown keys and wrong types are ConfigErrors.

        Lists become tuples (frozen settings hold no mutable values); `_target_`-style keys are skipped.
        """
        values = _plain(values)
        valid = [item.name for item in dataclasses.fields(cls)]
        unknown = sorted(key for key in values if key not in valid and not key.startswith("_"))
        if unknown:
            raise ConfigError(f"{cls.section}: unknown setting(s) {unknown}; valid: {valid}")
        hints = _hints(cls)
        return cls(**{key: _frozen(value, hints[key]) for key, value in values.items() if key in valid})

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values (tuples as lists), e.g. for a manifest."""
        return typing.cast(dict[str, Any], _lists(dataclasses.asdict(self)))


def _lists(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_lists(item) for item in value]
    if isinstance(value, dict):
        return {key: _lists(item) for key, item in value.items()}
    return value


def uses_settings(settings_class: type[Settings]) -> Callable[[F], F]:
    """Marks a function target (dataset loader, experiment `fn`) with the settings it reads."""

    def mark(function: F) -> F:
        function.settings_class = settings_class  # type: ignore[attr-defined]
        return function

    return mark


def settings_class_of(target: Any) -> type[Settings] | None:
    """The settings dataclass a `_target_` (class or function) declares, if it declares one."""
    found = getattr(target, "settings_class", None)
    return found if isinstance(found, type) and issubclass(found, Settings) else None


# ---- the shared validators --------------------------------------------------------------------------
# Each takes the settings object (or any object naming its config `section`) and field names; None values
# are skipped (optional settings).


class Sectioned(Protocol):
    section: ClassVar[str]


def positive_int(settings: Sectioned, *names: str) -> None:
    _check(settings, names, lambda v: _is_int(v) and v > 0, "a positive integer")


def non_negative_int(settings: Sectioned, *names: str) -> None:
    _check(settings, names, lambda v: _is_int(v) and v >= 0, "a non-negative integer")


def positive(settings: Sectioned, *names: str) -> None:
    _check(settings, names, lambda v: _is_number(v) and v > 0, "a positive number")


def non_negative(settings: Sectioned, *names: str) -> None:
    _check(settings, names, lambda v: _is_number(v) and v >= 0, "a non-negative number")


def probability(settings: Sectioned, *names: str, top: bool = True) -> None:
    """In [0, 1] (or [0, 1) with top=False)."""
    valid = "a number in [0, 1]" if top else "a number in [0, 1)"
    _check(settings, names, lambda v: _is_number(v) and v >= 0 and (v <= 1 if top else v < 1), valid)


def in_range(settings: Sectioned, name: str, low: float, high: float) -> None:
    _check(settings, (name,), lambda v: _is_number(v) and low <= v <= high, f"a number in [{low}, {high}]")


def one_of(settings: Sectioned, name: str, choices: Iterable[str]) -> None:
    choices = list(choices)
    value = getattr(settings, name)
    if value not in choices:
        raise ConfigError(f"{settings.section}.{name}: unknown {value!r}; valid: {', '.join(map(str, choices))}")


def span(settings: Sectioned, name: str) -> None:
    """A pair [lo, hi) of fractions with 0 <= lo < hi <= 1."""
    value = getattr(settings, name)
    if value is not None and not (len(value) == 2 and all(map(_is_number, value)) and 0 <= value[0] < value[1] <= 1):
        raise ConfigError(f"{settings.section}.{name} must be [lo, hi] with 0 <= lo < hi <= 1, got {list(value)}")


def _check(settings: Sectioned, names: Sequence[str], ok: Callable[[Any], bool], valid: str) -> None:
    for name in names:
        value = getattr(settings, name)
        if value is not None and not ok(value):
            raise ConfigError(f"{settings.section}.{name} must be {valid}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---- types --------------------------------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _matches(value: Any, hint: Any) -> bool:
    """Does `value` fit the annotation? Covers what settings use: scalars, X | None, tuples, Literal, Any."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(item, args[0]) for item in value)
        return len(value) == len(args) and all(_matches(item, arg) for item, arg in zip(value, args, strict=True))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is float:
        return _is_number(value) or (isinstance(value, float) and not math.isfinite(value))
    if hint is int:
        return _is_int(value)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple:
        return (
            f"a list of ({_describe(args[0])})"
            if len(args) == 2 and args[1] is Ellipsis
            else f"a list of {len(args)} values"
        )
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain Python values; Hydra passes nested lists and dicts on as ListConfig / DictConfig."""
    if isinstance(values, DictConfig):
        return typing.cast(dict[str, Any], OmegaConf.to_container(values, resolve=True))
    # keyword arguments from hydra.utils.instantiate(..., _partial_=True) may still hold ListConfig/DictConfig values
    return {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in values.items()
    }


def _frozen(value: Any, hint: Any = Any) -> Any:
    """Lists become tuples; dicts become the nested settings dataclass the annotation names."""
    nested = _nested_settings(hint)
    if isinstance(value, list):
        return tuple(
            nested.from_mapping(item) if nested and isinstance(item, dict) else _frozen(item) for item in value
        )
    if nested is not None and isinstance(value, dict):
        return nested.from_mapping(value)
    return value


def _nested_settings(hint: Any) -> type[Settings] | None:
    """The Settings class in `X`, `X | None` or `tuple[X, ...]`, if any."""
    if isinstance(hint, type) and issubclass(hint, Settings):
        return hint
    for arg in typing.get_args(hint):
        found = _nested_settings(arg)
        if found is not None:
            return found
    return None


# ---- Hydra schemas ------------------------------------------------------------------------------------


def schema_of(cls: type[Settings]) -> type:
    """A non-frozen twin of the settings dataclass that OmegaConf can type-check and Hydra can merge into
    (a frozen structured config would be read-only). Tuples become lists; unions other than X | None, Any."""
    hints = _hints(cls)
    specs: list[tuple[str, Any, Any]] = []
    if cls.instantiated:
        specs.append(("_target_", str, dataclasses.field(default="???")))
    for name, key_default in cls.config_keys.items():
        specs.append((name, Any, dataclasses.field(default=key_default)))
    for item in dataclasses.fields(cls):
        value: Any = item.default if item.default is not dataclasses.MISSING else "???"
        if item.default_factory is not dataclasses.MISSING:
            value = item.default_factory()
        field_type = _schema_type(hints[item.name])
        if isinstance(value, Settings):
            specs.append((item.name, field_type, dataclasses.field(default_factory=field_type)))
        elif isinstance(value, (tuple, list, dict)):
            plain = list(value) if isinstance(value, tuple) else value
            specs.append((item.name, field_type, dataclasses.field(default_factory=functools.partial(_copy, plain))))
        else:
            specs.append((item.name, field_type, dataclasses.field(default=value)))
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", specs)


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value)


def _schema_type(hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        rest = [arg for arg in args if arg is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            inner = _schema_type(rest[0])
            return Any if inner is Any else typing.Optional[inner]  # noqa: UP045 (a runtime type for OmegaConf)
        return Any
    if origin is tuple:
        items = {arg for arg in args if arg is not Ellipsis}
        inner = _schema_type(items.pop()) if len(items) == 1 else Any
        return list[inner] if inner is not Any else list[Any]  # type: ignore[valid-type]
    if hint in (int, float, bool, str):
        return hint
    if isinstance(hint, type) and issubclass(hint, Settings):
        return schema_of(hint)
    return Any  # Literal (checked by the settings), dicts, nested configs


def config_dirs() -> list[Path]:
    """memos_lab's own config folder, then the user's own ones (`MEMOS_LAB_CONFIG_PATH`)."""
    entries = os.environ.get(CONFIG_PATH_VARIABLE, "").split(os.pathsep)
    extra = [Path(entry).expanduser().resolve() for entry in entries if entry]
    for folder in extra:
        if not folder.is_dir() or "'" in str(folder):
            raise ConfigError(f"{CONFIG_PATH_VARIABLE}: {folder} is not a folder of configs")
    return [CONF_DIR, *dict.fromkeys(folder for folder in extra if folder != CONF_DIR)]


def search_path_overrides() -> list[str]:
    """The Hydra override that adds the user's config folders to its search path (none when there are none)."""
    extra = config_dirs()[1:]
    return [f"hydra.searchpath=[{','.join(repr(folder.as_uri()) for folder in extra)}]"] if extra else []


def schema_names(conf_dirs: Sequence[Path] | None = None) -> list[str]:
    """Every `/settings/<class path>` a YAML file under the config folders names in its defaults list."""
    import yaml

    names: set[str] = set()
    for conf_dir in config_dirs() if conf_dirs is None else conf_dirs:
        for path in sorted(conf_dir.rglob("*.yaml")):
            data = yaml.safe_load(path.read_text()) or {}
            for entry in data.get("defaults", []) if isinstance(data, dict) else []:
                name = entry if isinstance(entry, str) else None
                if name and name.startswith(f"/{SCHEMA_GROUP}/"):
                    names.add(name.removeprefix(f"/{SCHEMA_GROUP}/").split("@", 1)[0])
    return sorted(names)


def settings_class_named(path: str) -> type[Settings]:
    """The settings class `module.Class`: memos_lab's own, or one a registered component declares
    (`memos_lab.registry`); a YAML file never makes Python import a module of its choosing."""
    from memos_lab import registry  # the registry builds on this module; it knows other packages' settings

    found = registry.registered_settings(path)
    if found is not None:
        return found
    module, _, name = path.rpartition(".")
    if not module.startswith("memos_lab."):
        raise ConfigError(
            f"settings schema {path!r}: not memos_lab's, and no registered component declares it "
            "(register the component with memos_lab.registry.register)"
        )
    found = getattr(importlib.import_module(module), name, None)
    if not (isinstance(found, type) and issubclass(found, Settings)):
        raise ConfigError(f"settings schema {path!r} is not a Settings dataclass")
    return found


def register_schemas() -> None:
    """Store every schema the YAML files name in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name in schema_names():
        store.store(group=SCHEMA_GROUP, name=name, node=schema_of(settings_class_named(name)))


def group_config(group: str, choice: str) -> DictConfig:
    """One config group file composed on its own, its schema merged in: what `group=choice` contributes.

    Use this instead of OmegaConf.load on a file under conf/ (its `defaults` list needs Hydra). Keys it
    interpolates from the root (`${seed}`) resolve once the node sits in a config that has them.
    """
    from hydra import compose, initialize_config_dir

    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(f"{group}/{choice}", overrides=search_path_overrides())
    node = OmegaConf.select(cfg, group.replace("/", "."))
    assert isinstance(node, DictConfig), f"{group}/{choice} composes to no config"
    return node
