"""`python -m memos_lab COMMAND [hydra overrides]`.

Overrides are checked before any work starts, so an unknown choice or a malformed override gives
one clear line and exit status 2 (also for sweeps, before any job runs).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

from omegaconf import DictConfig, OmegaConf

from memos_lab import registry
from memos_lab.errors import ConfigError, MemosError
from memos_lab.provenance import COMMAND_VARIABLE
from memos_lab.settings import (
    CONF_DIR,
    CONFIG_PATH_VARIABLE,
    config_dirs,
    register_schemas,
    search_path_overrides,
    settings_class_of,
)

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

CONFIG_NAME = "config"
LOAD_CONFIG_NAME = "load"
SERVE_CONFIG_NAME = "serve"
USAGE_EXIT = 2
HYDRA_OWN_GROUPS = ("hydra", "local")  # not ours to list; hydra/* choices are checked against Hydra's own list
MAX_GROUP_CHARS = 128  # W&B's limit on group names
PLUGIN_HINT = "the joblib, ray, submitit launchers and the optuna sweeper come with: pip install 'memos_lab[launchers]'"


def config_groups() -> dict[str, list[str]]:
    """Config group -> its choices, read from the YAML files of memos_lab's and the user's config folders."""
    groups: dict[str, set[str]] = {}
    for conf_dir in config_dirs():
        for folder in sorted(path for path in conf_dir.iterdir() if path.is_dir()):
            if folder.name not in HYDRA_OWN_GROUPS and not folder.name.startswith(("_", ".")):
                groups.setdefault(folder.name, set()).update(path.stem for path in folder.glob("*.yaml"))
    return {group: sorted(choices) for group, choices in sorted(groups.items())}


def validate_overrides(overrides: Sequence[str], config_name: str = CONFIG_NAME) -> None:
    """Raise ConfigError naming the first bad override; sweeps are checked value by value."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    assignments = [item for item in overrides if not item.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(assignments)
    except HydraException as error:
        raise ConfigError(f"malformed override: {_one_line(error)}") from None
    groups = config_groups()
    first_values = []
    hydra_choices: list[tuple[str, list[str]]] = []
    for override in parsed:
        key = override.key_or_group
        if override.is_sweep_override():
            try:
                values = [str(value) for value in override.sweep_string_iterator()]
            except HydraException:
                continue  # an interval for a sweeper to sample; nothing to enumerate
        else:
            values = [override.get_value_element_as_str()]
        if key in groups and not override.is_delete():
            unknown = [value for value in values if value not in groups[key]]
            if unknown:
                raise ConfigError(
                    f"unknown choice {unknown[0]!r} for config group {key!r}; valid: {', '.join(groups[key])}"
                )
        if key.startswith("hydra/") and not override.is_delete():
            hydra_choices.append((key, values))
        assert override.input_line is not None  # the parser keeps every override's input line
        first_values.append(f"{override.get_key_element()}={values[0]}" if values else override.input_line)
    register_schemas()
    search_path = search_path_overrides()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            _check_hydra_choices(hydra_choices)
            choices = [
                line
                for line in first_values
                if line.split("=", 1)[0].lstrip("+~") in groups or "/" in line.split("=", 1)[0]
            ]
            defaults = compose(config_name, overrides=[*search_path, *choices])
            for override in parsed:  # before composing them: its message names the default, Hydra's does not
                _check_value_types(override, defaults, groups)
            cfg = compose(config_name, overrides=[*search_path, *first_values], return_hydra_config=True)
        _check_callbacks(cfg)
        check_settings(cfg)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(_one_line(error)) from None


def _check_callbacks(cfg: DictConfig) -> None:
    """Hydra builds `hydra.callbacks` before any job starts: each must name a Hydra Callback class
    (`+hydra.callbacks.x._target_=os.system` is refused here, in one line, and nothing runs)."""
    from hydra._internal.utils import _locate  # hydra.utils.get_class also logs each failure
    from hydra.experimental.callback import Callback

    for name, node in (OmegaConf.select(cfg, "hydra.callbacks") or {}).items():
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        try:
            found: Any = _locate(str(target))
        except (ImportError, ValueError, AttributeError):
            found = None
        if not (isinstance(found, type) and issubclass(found, Callback)):
            raise ConfigError(f"hydra.callbacks.{name}._target_: {target!r} is not a Hydra Callback class")


def _check_value_types(override: Override, defaults: DictConfig, groups: dict[str, list[str]]) -> None:
    """A setting whose default is a number or a bool takes only that kind of value, or null (`seed=abc` is
    refused here, not as a ValueError deep inside a job). Ints and floats mix: YAML writes `1` for 1.0."""
    key = override.key_or_group
    if key in groups or "/" in key or override.is_delete() or key.startswith("hydra."):
        return
    default = OmegaConf.select(defaults, key, default=None, throw_on_missing=False)
    if isinstance(default, bool):
        kinds: tuple[type, ...] = (bool,)
    elif isinstance(default, (int, float)):
        kinds = (int, float)
    else:
        return
    if override.is_interval_sweep():
        return  # bounds for a sweeper to sample from; the sweeper checks them
    values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
    for value in values:
        if value is None or (isinstance(value, str) and value.startswith("${")):
            continue  # null, or an interpolation resolved later
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            valid = "true or false" if bool in kinds else "a number"
            raise ConfigError(f"override {key}={value!r}: {key} takes {valid} (its default is {default!r})")


def check_settings(cfg: DictConfig) -> None:
    """Build the settings dataclass of every component the config names, so a value out of range
    (`memory.rrf_k=-5`) fails before any job starts, not when the experiment reaches that component."""
    from hydra.utils import get_object

    for key in cfg:
        assert isinstance(key, str)  # a composed config's top-level keys are strings
        if key == "hydra" or OmegaConf.is_missing(cfg, key):  # a missing `???` is the command's own check
            continue
        node = cfg[key]
        if not isinstance(node, DictConfig):
            continue
        target = node.get("_target_") or node.get("fn")
        if not isinstance(target, str):
            continue
        try:
            settings_class = settings_class_of(get_object(target))
        except (ImportError, AttributeError, ValueError):
            raise ConfigError(f"{key}: cannot import {target!r}") from None
        if settings_class is not None:
            values = cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))
            assert isinstance(values, dict)
            settings_class.from_mapping({k: v for k, v in values.items() if k not in settings_class.config_keys})


def _check_hydra_choices(choices: Sequence[tuple[str, list[str]]]) -> None:
    """hydra/launcher, hydra/sweeper...: their options come from Hydra, its plugins and conf/hydra/."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    for group, values in choices:
        options = loader.get_group_options(group)
        unknown = [value for value in values if value not in options]
        if unknown:
            raise ConfigError(
                f"unknown choice {unknown[0]!r} for config group {group!r}; valid: {', '.join(options) or 'none'}"
                f" ({PLUGIN_HINT})"
            )


def _one_line(error: BaseException) -> str:
    """Hydra and OmegaConf spread one message over several lines and append debugging hints."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    cause = error.__cause__
    if cause is not None and str(cause) and str(cause) not in str(error):  # e.g. why an override did not merge
        lines.append(f"({_one_line(cause)})")
    return " ".join(lines) or type(error).__name__


def _run(args: Sequence[str]) -> None:
    import hydra

    from memos_lab.runner import prepare_environment

    validate_overrides(args)
    prepare_environment()
    os.environ[COMMAND_VARIABLE] = command_line("run", args)
    sys.argv = [sys.argv[0], *args, *search_path_overrides()]
    hydra.main(config_path=str(CONF_DIR), config_name=CONFIG_NAME, version_base="1.3")(_run_task)()


def _run_task(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import InstantiationException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    from memos_lab.runner import run_experiment

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        _group_sweep_runs(cfg, hydra_cfg.sweep.dir)
    objective = cfg.get("objective")  # a metric name, for sweepers that optimise a return value
    try:
        metrics = run_experiment(cfg, run_dir, choices=dict(hydra_cfg.runtime.choices))
    except (MemosError, OmegaConfBaseException, InstantiationException) as error:
        # InstantiationException: a config value of the wrong type reached a component's constructor.
        print(f"error: {_one_line(error)}", file=sys.stderr)
        raise SystemExit(USAGE_EXIT) from None
    print(f"wrote {run_dir / 'metrics.json'} ({len(metrics)} metrics)")
    return metrics[objective] if objective else None


def _group_sweep_runs(cfg: DictConfig, sweep_dir: str) -> None:
    """Jobs of one sweep share a W&B group (named after the sweep folder) unless the user chose one."""
    from omegaconf import open_dict

    if "group" in cfg.logger and cfg.logger.group is None:
        with open_dict(cfg):
            cfg.logger.group = str(sweep_dir)[-MAX_GROUP_CHARS:]


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line and exit 2, like every other CLI error
        raise ConfigError(f"{self.prog}: {message}")


def _report(args: Sequence[str]) -> None:
    from memos_lab.reporting import replot_table, write_report

    parser = _ArgumentParser(prog="report", add_help=False)
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=lambda text: [name for name in text.split(",") if name])
    parser.add_argument("--note", help="a line for the report's header, e.g. the suite that regenerates it")
    parser.add_argument("--mix-pinned", action="store_true", help="allow runs that differ in a pinned setting")
    parser.add_argument("--all-plots", action="store_true", help="also every metric against every swept setting")
    parser.add_argument("--from-table", type=Path, help="re-draw the figures from a report's table.csv")
    parser.add_argument("--experiment", help="with --from-table: the experiment that made the table")
    options = parser.parse_args(list(args))
    if bool(options.folders) == bool(options.from_table):
        raise ConfigError("report: give run folders or --from-table TABLE.csv, not both or neither")
    if options.from_table:
        figures = replot_table(
            options.from_table, options.out, command_line("report", args), options.experiment, options.metrics,
            options.all_plots,
        )  # fmt: skip
        print(f"wrote {len(figures)} figure(s) and their section of {options.out / 'report.md'}")
        return
    summary = write_report(
        options.folders, options.out, command_line("report", args), options.metrics, options.note, options.mix_pinned,
        options.all_plots,
    )  # fmt: skip
    print(
        f"wrote {summary.out / 'report.md'}: {summary.configurations} configuration(s), "
        f"{summary.runs} run(s), {summary.failed} failed"
    )


def command_line(command: str, args: Sequence[str]) -> str:
    return shlex.join(["python", "-m", "memos_lab", command, *args])


def _load(args: Sequence[str]) -> None:
    """Compose conf/load.yaml and call the chosen memory type's loader; no Hydra run folder is made."""
    import hydra.utils
    from hydra import compose, initialize_config_dir
    from hydra.errors import InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    from memos_lab.runner import prepare_environment

    if any(arg.startswith("-") for arg in args):
        raise ConfigError(f"load takes key=value overrides only, got {next(a for a in args if a.startswith('-'))!r}")
    validate_overrides(args, config_name=LOAD_CONFIG_NAME)
    prepare_environment()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(LOAD_CONFIG_NAME, overrides=[*search_path_overrides(), *args])
    try:
        summary = hydra.utils.get_method(cfg.memory_type.fn)(cfg)
    except (OmegaConfBaseException, InstantiationException) as error:
        raise ConfigError(_one_line(error)) from None
    for key, value in summary.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")


def _service_config(command: str, args: Sequence[str]) -> DictConfig:
    """conf/serve.yaml composed with `args`, every override and setting checked first."""
    from hydra import compose, initialize_config_dir
    from omegaconf.errors import OmegaConfBaseException

    from memos_lab.service.server import mcp_settings, serve_settings

    if any(arg.startswith("-") for arg in args):
        raise ConfigError(
            f"{command} takes key=value overrides only, got {next(a for a in args if a.startswith('-'))!r}"
        )
    validate_overrides(args, config_name=SERVE_CONFIG_NAME)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(SERVE_CONFIG_NAME, overrides=list(args))
    try:
        str(cfg.root)
    except OmegaConfBaseException:
        raise ConfigError(f"{command} needs root=DIR, the MOS root folder to serve") from None
    serve_settings(cfg)
    mcp_settings(cfg)
    check_settings(cfg)
    return cfg


def _serve(args: Sequence[str]) -> None:
    from memos_lab.service.server import run_server

    run_server(_service_config("serve", args))


def _mcp(args: Sequence[str]) -> None:
    from memos_lab.service.mcp import run_mcp

    run_mcp(_service_config("mcp", args))


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], None], str]] = {
    "run": (_run, "run an experiment: python -m memos_lab run [-m] [group=choice ...] [key=value ...]"),
    "load": (
        _load,
        "load data into a persistent cube: python -m memos_lab load memory_type=declarative "
        "user=U cube_dir=DIR [dataset=NAME | input=FILE.jsonl] [memory=...] [reader=fast|fine]",
    ),
    "report": (
        _report,
        "compare runs: python -m memos_lab report DIR [DIR ...] --out OUTDIR [--metrics m1,m2] [--note TEXT] "
        "[--mix-pinned] [--all-plots]; re-draw figures: report --from-table DIR/table.csv --out DIR",
    ),
    "serve": (
        _serve,
        "serve a MOS root over HTTP: python -m memos_lab serve root=DIR [serve.port=8765] [embedder=...] [memory=...]",
    ),
    "mcp": (
        _mcp,
        "one user's memory as MCP tools: python -m memos_lab mcp root=DIR mcp.user=U [mcp.transport=stdio|http]",
    ),
}


def usage() -> str:
    lines = ["usage: python -m memos_lab COMMAND [hydra overrides]", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, (_, text) in COMMANDS.items()]
    groups = config_groups()
    width = max(map(len, groups))
    lines += ["", "config groups (group=choice):"]
    lines += [f"  {group:<{width}} {', '.join(choices)}" for group, choices in groups.items()]
    own = [c for c in registry.components() if not c.target.startswith(registry.OWN_PACKAGE)]
    if own:
        lines += ["", "components registered by other packages (trusted in stored cubes):"]
        lines += [f"  {c.family}={c.name}: {c.target}" for c in own]
    lines += [
        "",
        f"Your own config folders: {CONFIG_PATH_VARIABLE}=DIR[{os.pathsep}DIR...] (e.g. DIR/memory/mine.yaml).",
    ]
    lines += [
        "",
        "Hydra flags: -m/--multirun for sweeps, --cfg job to print the composed config.",
        "Sweeps run elsewhere with hydra/launcher=joblib|ray|ray_cluster|slurm; hydra/sweeper=optuna searches.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args or args[0] in ("-h", "--help", "help"):
            print(usage())
            return
        command, rest = args[0], args[1:]
        if command not in COMMANDS:
            print(f"error: unknown command {command!r}; valid: {', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
            raise SystemExit(USAGE_EXIT)
        COMMANDS[command][0](rest)
    except MemosError as error:  # a bad override, a bad MEMOS_LAB_CONFIG_PATH, a broken registered plugin...
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(USAGE_EXIT) from None
