"""Every file under conf/ agrees with what its target declares: each `_target_` (or experiment / loader
`fn`) is bound to its settings dataclass, and a key it does not declare, a value of the wrong type, or a
value in the component's own file that differs from the dataclass default fails here.

Targets without a settings dataclass (plain functions and classes) are bound to their signature instead.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import OmegaConf

from memos_lab import registry
from memos_lab.cli import CONF_DIR
from memos_lab.settings import SCHEMA_GROUP, Settings, _matches, settings_class_of

NOT_COMPONENTS = (
    "hydra",
    "hparams_search",
    "local",
    "prompt",
)  # Hydra's own settings, searches, per-machine files, prompt texts
# How to compose each group: the primary config and the overrides that bring the group in.
COMPOSE = {
    "memory_type": ("load", ["user=u", "cube_dir=d"]),
    "parametric": ("config", ["experiment=lora_update"]),
}
HYDRA_KEYS = ("_target_", "_recursive_", "_partial_", "_convert_", "_args_")
# Files whose target has no settings dataclass yet (converted family by family); strict, so a converted
# file left in this list fails too.
PENDING: set[str] = set()
# Files one level down (parametric/editor/common.yaml) are shared bases that choices include, not choices:
# they are checked as part of the files that include them.
FILES = sorted(
    path for path in CONF_DIR.glob("*/*.yaml") if path.relative_to(CONF_DIR).parts[0] not in NOT_COMPONENTS
)  # fmt: skip


# Component files that name no settings schema yet. Strict: a file that gains a schema must leave this list.
NO_SCHEMA_YET: set[str] = set()
NO_COMPONENT = {"judge/none.yaml"}  # `_target_: null`: nothing is built, so there is nothing to configure


def composed(group: str, choice: str) -> dict[str, Any]:
    config_name, overrides = COMPOSE.get(group, ("config", []))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=[*overrides, f"{group}={choice}"])
    # An experiment's config is complete as composed (the runner refuses missing values); a dataset's path may be ???
    node = OmegaConf.to_container(cfg[group], resolve=True, throw_on_missing=group == "experiment")
    assert isinstance(node, dict)
    return node


def schema_named(data: dict[str, Any]) -> str | None:
    for entry in data.get("defaults", []):
        if isinstance(entry, str) and entry.startswith(f"/{SCHEMA_GROUP}/"):
            return entry.removeprefix(f"/{SCHEMA_GROUP}/").split("@", 1)[0]
    return None


def literal_values(data: dict[str, Any]) -> dict[str, Any]:
    """The keys a YAML file sets to a value of its own (not an interpolation, not ??? , not a Hydra key)."""
    return {
        key: value for key, value in data.items()
        if key != "defaults" and key not in HYDRA_KEYS and value != "???"
        and not (isinstance(value, str) and value.startswith("${"))
    }  # fmt: skip


def _marked(path: Path) -> Any:
    name = path.relative_to(CONF_DIR).as_posix()
    marks = (
        [pytest.mark.xfail(strict=True, reason="not converted to a settings dataclass yet")] if name in PENDING else []
    )
    return pytest.param(path, id=name, marks=marks)


@pytest.mark.parametrize("path", [_marked(path) for path in FILES])
def test_conf_file_agrees_with_its_target(path: Path):
    group, choice = path.parent.relative_to(CONF_DIR).as_posix(), path.stem
    data = yaml.safe_load(path.read_text()) or {}
    node = composed(group, choice)
    if group == "experiment":  # global-package experiments hold their settings under `experiment:`
        data = {**data.get("experiment", {}), "defaults": data.get("defaults", [])} if "experiment" in data else data
    elif "memory_type" in data:
        data = {**data["memory_type"], "defaults": data.get("defaults", [])}
    target_path = node.get("_target_") or node.get("fn")
    if target_path is None:
        assert set(node) <= {"_target_"}, f"{path}: settings without a target: {sorted(node)}"
        return
    target = get_object(target_path)
    settings_class = settings_class_of(target)
    if settings_class is None:
        check_against_signature(path, target, node, data)
        return
    check_against_settings(path, settings_class, node, data)


def check_against_settings(path: Path, cls: type[Settings], node: dict[str, Any], data: dict[str, Any]) -> None:
    declared = {item.name: item for item in dataclasses.fields(cls)}
    allowed = set(declared) | set(cls.config_keys) | set(HYDRA_KEYS)
    unknown = sorted(set(node) - allowed)
    assert not unknown, f"{path}: {unknown} are not settings of {cls.__name__}; valid: {sorted(declared)}"
    missing = sorted(set(declared) - set(node))
    assert not missing, (
        f"{path}: {missing} missing: name /{SCHEMA_GROUP}/{cls.__module__}.{cls.__name__} in its defaults"
    )
    cls.from_mapping({k: v for k, v in node.items() if k not in cls.config_keys})  # types and ranges
    named = schema_named(data)
    if named is not None:  # the component's own file: it may not restate a default differently
        assert named == f"{cls.__module__}.{cls.__name__}", (
            f"{path}: names schema {named} for a target reading {cls.__name__}"
        )
        for key, value in literal_values(data).items():
            # declared_in_yaml: data each file states (an experiment's metric list); dicts: keyword arguments
            # of what they configure, which checks them (e.g. the scheduling experiment's `working_memory`)
            if key in declared and key not in cls.declared_in_yaml and not isinstance(value, dict):
                default = declared[key].default
                expected = list(default) if isinstance(default, tuple) else default
                assert value == expected, (
                    f"{path}: {key}={value!r}, but {cls.__name__} defaults to {expected!r}; change the default "
                    "in the dataclass, or make this choice a variant file"
                )


def check_against_signature(path: Path, target: Any, node: dict[str, Any], data: dict[str, Any]) -> None:
    function = target.__init__ if inspect.isclass(target) else target
    parameters = inspect.signature(function).parameters
    try:
        hints = typing.get_type_hints(function)
    except NameError:  # annotations naming TYPE_CHECKING-only imports: check names and defaults only
        hints = {}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    for key, value in node.items():
        if key in HYDRA_KEYS or (key in ("name", "fn") and "fn" in node):
            continue
        if key not in parameters:
            assert takes_any, f"{path}: {key!r} is not a parameter of {target.__qualname__}; valid: {list(parameters)}"
            continue
        if key in hints and not isinstance(value, (dict, list)):
            assert _matches(value, hints[key]) or value == "???", f"{path}: {key}={value!r} does not fit {hints[key]}"
    for key, value in literal_values(data).items():
        default = parameters[key].default if key in parameters else inspect.Parameter.empty
        if default is not inspect.Parameter.empty and not isinstance(value, (dict, list)):
            assert value == default, f"{path}: {key}={value!r}, but {target.__qualname__} defaults to {default!r}"


def names_a_schema(path: Path) -> bool:
    """The file's defaults name a `/settings/...` schema, or a sibling file (a variant) that does."""
    data = yaml.safe_load(path.read_text()) or {}
    if schema_named(data) is not None:
        return True
    siblings = [entry for entry in data.get("defaults", []) if isinstance(entry, str) and entry != "_self_"]
    return any(names_a_schema(path.parent / f"{name}.yaml") for name in siblings if not name.startswith("/"))


def _schema_param(path: Path) -> Any:
    name = path.relative_to(CONF_DIR).as_posix()
    marks = [pytest.mark.xfail(strict=True, reason="no settings dataclass yet")] if name in NO_SCHEMA_YET else []
    return pytest.param(path, id=name, marks=marks)


@pytest.mark.parametrize(
    "path", [_schema_param(path) for path in FILES if path.relative_to(CONF_DIR).as_posix() not in NO_COMPONENT]
)
def test_every_component_file_names_its_schema(path: Path):
    assert names_a_schema(path), f"{path}: name /{SCHEMA_GROUP}/<module>.<SettingsClass>@_here_ in its defaults"


@pytest.mark.parametrize("component", registry.components(), ids=lambda c: f"{c.family}/{c.name}")
def test_the_registry_agrees_with_each_target(component: registry.Component):
    """The schema a component's file names is its target's settings class, and a constructor that takes
    its settings as named parameters defaults them as the settings dataclass does."""
    target = get_object(component.target)
    settings_class = settings_class_of(target)
    if component.settings is None:
        return
    assert settings_class is not None, f"{component.target} declares no settings_class"
    assert component.settings == f"{settings_class.__module__}.{settings_class.__name__}"
    parameters = inspect.signature(target.__init__ if inspect.isclass(target) else target).parameters
    if parameters:
        for item in dataclasses.fields(settings_class):
            default = parameters[item.name].default if item.name in parameters else inspect.Parameter.empty
            if default is not inspect.Parameter.empty:
                expected = list(item.default) if isinstance(item.default, tuple) else item.default
                assert (list(default) if isinstance(default, tuple) else default) == expected, (
                    f"{component.target}({item.name}={default!r}) but {settings_class.__name__} says {expected!r}"
                )
