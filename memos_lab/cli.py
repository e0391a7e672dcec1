"""`python -m memos_lab COMMAND [hydra overrides]`.

Overrides are checked before any work starts, so an unknown choice or a malformed override gives
one clear line and exit status 2 (also for sweeps, before any job runs).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from memos_lab.errors import ConfigError, MemosError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CONFIG_NAME = "config"
LOAD_CONFIG_NAME = "load"
USAGE_EXIT = 2
HYDRA_OWN_GROUPS = ("hydra", "local")  # not ours to list; Hydra validates hydra/* itself


def config_groups(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """Config group -> its choices, read from the YAML files under conf/."""
    groups = {}
    for folder in sorted(path for path in conf_dir.iterdir() if path.is_dir()):
        if folder.name not in HYDRA_OWN_GROUPS:
            groups[folder.name] = sorted(path.stem for path in folder.glob("*.yaml"))
    return groups


def validate_overrides(overrides: Sequence[str], conf_dir: Path = CONF_DIR, config_name: str = CONFIG_NAME) -> None:
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
    groups = config_groups(conf_dir)
    first_values = []
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
        first_values.append(f"{override.get_key_element()}={values[0]}" if values else override.input_line)
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            compose(config_name, overrides=first_values, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(_one_line(error)) from None


def _one_line(error: BaseException) -> str:
    """Hydra and OmegaConf spread one message over several lines and append debugging hints."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    return " ".join(lines) or type(error).__name__


def _run(args: Sequence[str]) -> None:
    import hydra

    from memos_lab.runner import prepare_environment

    validate_overrides(args)
    prepare_environment()
    sys.argv = [sys.argv[0], *args]
    hydra.main(config_path=str(CONF_DIR), config_name=CONFIG_NAME, version_base="1.3")(_run_task)()


def _run_task(cfg: object) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    from memos_lab.runner import run_experiment

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        metrics = run_experiment(cfg, run_dir, choices=dict(hydra_cfg.runtime.choices))
    except (MemosError, OmegaConfBaseException, InstantiationException) as error:
        # InstantiationException: a config value of the wrong type reached a component's constructor.
        print(f"error: {_one_line(error)}", file=sys.stderr)
        raise SystemExit(USAGE_EXIT) from None
    print(f"wrote {run_dir / 'metrics.json'} ({len(metrics)} metrics)")
    objective = cfg.get("objective")  # a metric name, for sweepers that optimise a return value
    return metrics.get(objective) if objective else None


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
        cfg = compose(LOAD_CONFIG_NAME, overrides=list(args))
    try:
        summary = hydra.utils.get_method(cfg.memory_type.fn)(cfg)
    except (OmegaConfBaseException, InstantiationException) as error:
        raise ConfigError(_one_line(error)) from None
    for key, value in summary.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], None], str]] = {
    "run": (_run, "run an experiment: python -m memos_lab run [-m] [group=choice ...] [key=value ...]"),
    "load": (_load, "load data into a persistent cube: python -m memos_lab load memory_type=declarative "
             "user=U cube_dir=DIR [dataset=NAME | input=FILE.jsonl] [memory=...] [reader=fast|fine]"),
}


def usage() -> str:
    lines = ["usage: python -m memos_lab COMMAND [hydra overrides]", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "config groups (group=choice):"]
    lines += [f"  {group:<11} {', '.join(choices)}" for group, choices in config_groups().items()]
    lines += ["", "Hydra flags: -m/--multirun for sweeps, --cfg job to print the composed config."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; valid: {', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(USAGE_EXIT)
    try:
        COMMANDS[command][0](rest)
    except MemosError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(USAGE_EXIT) from None
