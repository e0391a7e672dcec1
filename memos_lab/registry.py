"""The component registry: which classes exist as config choices, and which ones stored data may name.

A component has a family (its config group: `memory`, `activation`, `parametric`, `embedder`, ...), a name
(its choice, `memory=vector`), a class and a settings dataclass. Two ways in, one registry:

- memos_lab's own components are its shipped config files: `conf/<family>/<name>.yaml` whose `_target_`
  is a class of memos_lab (the folder ships inside the package, so it is code, not data);
- another package registers its classes with the `register` decorator, in a module it names under the
  entry-point group `memos_lab.components` of its own packaging, e.g. in its pyproject.toml::

      [project.entry-points."memos_lab.components"]
      mine = "mine_pkg.backend"        # imported once, the first time the registry is asked

Stored artifacts may name only registered classes (`trusted_class`): a class is trusted because code
registered it, never because data names it. A user's own config folder (`MEMOS_LAB_CONFIG_PATH`) adds
choices to select, not trust: its YAML files name registered classes or are built only when selected.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from memos_lab.errors import ConfigError
from memos_lab.settings import CONF_DIR, SCHEMA_GROUP, Settings

ENTRY_POINT_GROUP = "memos_lab.components"
OWN_PACKAGE = "memos_lab."
C = TypeVar("C", bound=type)


@dataclass(frozen=True)
class Component:
    family: str  # the config group: memory, activation, parametric, embedder, scheduler, ...
    name: str  # its choice in that group
    target: str  # module.Class (or module.function: a model loader, a dataset generator)
    settings: str | None  # module.Class of its settings dataclass, if it has one


_registered: dict[str, tuple[Component, type]] = {}  # target -> (component, class): what `register` recorded


def register(family: str, name: str, settings: type[Settings] | None = None) -> Callable[[C], C]:
    """Class decorator: `@register("memory", "mine", settings=MineSettings)` makes the class a component
    (its settings become its `settings_class`), so a cube that stores it can be loaded back."""

    def mark(cls: C) -> C:
        if settings is not None:
            cls.settings_class = settings  # type: ignore[attr-defined]  # read by settings_class_of
        found = getattr(cls, "settings_class", None)
        settings_path = _path(found) if isinstance(found, type) and issubclass(found, Settings) else None
        target = _path(cls)
        _registered[target] = (Component(family, name, target, settings_path), cls)
        return cls

    return mark


def components(family: str | None = None) -> list[Component]:
    """Every registered component (of `family`): memos_lab's own, then those of installed packages."""
    _load_entry_points()
    found = [*_builtin(), *(component for component, _ in _registered.values())]
    return [component for component in found if family is None or component.family == family]


def trusted_class(path: object, family: str) -> type | None:
    """The class a stored `_target_` names, only if it is a registered component of `family`; else None."""
    if not isinstance(path, str):
        return None
    for component in components(family):
        if component.target == path:
            if path in _registered:
                return _registered[path][1]
            module, _, name = path.rpartition(".")
            return getattr(importlib.import_module(module), name)  # memos_lab's own, from its shipped configs
    return None


def registered_settings(path: str) -> type[Settings] | None:
    """The settings dataclass `module.Class` of a registered component of another package, if any."""
    _load_entry_points()
    for component, cls in _registered.values():
        if component.settings == path:
            found = getattr(cls, "settings_class", None)
            return found if isinstance(found, type) and issubclass(found, Settings) else None
    return None


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.cache
def _load_entry_points() -> None:
    """Import each module the `memos_lab.components` entry points name; its `register` calls record it."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as error:  # an installed plugin that is broken: say which, in one line
            raise ConfigError(f"entry point {entry.name!r} ({entry.value}) of {ENTRY_POINT_GROUP}: {error}") from None


@functools.cache
def _builtin() -> tuple[Component, ...]:
    """memos_lab's own components: the `_target_` of each file in its shipped conf/ groups."""
    import yaml

    found = []
    for path in sorted(Path(CONF_DIR).glob("*/*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        target = data.get("_target_") if isinstance(data, dict) else None
        if isinstance(target, str) and target.startswith(OWN_PACKAGE):
            settings = _schema_named(data)
            found.append(Component(path.parent.name, path.stem, target, settings))
    return tuple(found)


def _schema_named(data: dict[str, Any]) -> str | None:
    for entry in data.get("defaults") or []:
        if isinstance(entry, str) and entry.startswith(f"/{SCHEMA_GROUP}/"):
            return entry.removeprefix(f"/{SCHEMA_GROUP}/").split("@", 1)[0]
    return None
