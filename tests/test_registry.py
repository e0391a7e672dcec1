"""Another package's backend, built in a temporary folder: its module registers itself through the
`memos_lab.components` entry point and its conf/memory/mine.yaml sits in its own config folder. Registered,
it is a config choice, listed by `--help`, stored in a cube and loaded back; unregistered, a cube naming it
is refused although its module is importable."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from memos_lab import registry
from memos_lab.cli import config_groups, main, validate_overrides
from memos_lab.cube import MemCube
from memos_lab.errors import ConfigError, IncompatibleError
from memos_lab.models.embedder import HashingEmbedder
from memos_lab.settings import CONFIG_PATH_VARIABLE

BACKEND = """
from dataclasses import dataclass

from memos_lab.memory.textual.general_text import GeneralTextMemory, GeneralTextSettings
from memos_lab.registry import register


@dataclass(frozen=True)
class MineSettings(GeneralTextSettings):
    fusion: str = "bm25"  # this package's own default


@register("memory", "mine", settings=MineSettings)
class MineMemory(GeneralTextMemory):
    settings_class = MineSettings
"""
MINE_YAML = """
defaults:
  - /settings/mine_pkg.backend.MineSettings@_here_
  - _self_
_target_: mine_pkg.backend.MineMemory
"""


def build_package(site: Path) -> Path:
    """mine_pkg as pip installs it: the package, its conf folder, and a dist-info naming the entry point."""
    package = site / "mine_pkg"
    (package / "conf" / "memory").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "backend.py").write_text(textwrap.dedent(BACKEND))
    (package / "conf" / "memory" / "mine.yaml").write_text(MINE_YAML)
    dist = site / "mine_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mine_pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\nmine = mine_pkg.backend\n")
    return package


def forget_plugins() -> None:
    """As a fresh process would: nothing registered but memos_lab's own, entry points read again."""
    registry._registered.clear()
    registry._load_entry_points.cache_clear()
    for name in [name for name in sys.modules if name.split(".")[0] == "mine_pkg"]:
        del sys.modules[name]


@pytest.fixture
def mine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_registry: None) -> Iterator[Path]:
    package = build_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv(CONFIG_PATH_VARIABLE, str(package / "conf"))
    forget_plugins()
    yield package
    forget_plugins()


def test_a_registered_package_is_a_choice_listed_by_help_and_loads_back_from_a_cube(
    mine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "mine" in config_groups()["memory"]
    main(["--help"])
    shown = capsys.readouterr().out
    assert ", ".join(sorted(config_groups()["memory"])) in shown  # the user's choice listed among ours
    assert "memory=mine: mine_pkg.backend.MineMemory" in shown
    with pytest.raises(ConfigError, match="memory.fusion: unknown 'nope'"):  # its own settings class checks it
        validate_overrides(["memory=mine", "memory.fusion=nope"])
    cube_dir = tmp_path / "cube"
    main(["load", "memory_type=declarative", "user=u", f"cube_dir={cube_dir}", "dataset=synthetic_dialogues",
          "dataset.n_conversations=1", "dataset.n_sessions=2", "memory=mine", "embedder=hashing"])  # fmt: skip
    forget_plugins()  # a new process: the entry point registers the class again on the first load
    cube = MemCube.load(cube_dir, HashingEmbedder(dim=512))
    assert type(cube.text).__name__ == "MineMemory" and cube.text.settings.fusion == "bm25"
    assert cube.text.search("what", top_k=3)


def test_a_cube_naming_an_unregistered_class_is_refused_though_its_module_imports(
    mine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cube_dir = tmp_path / "cube"
    main(["load", "memory_type=declarative", "user=u", f"cube_dir={cube_dir}", "dataset=synthetic_dialogues",
          "dataset.n_conversations=1", "dataset.n_sessions=2", "memory=mine", "embedder=hashing"])  # fmt: skip
    for info in (mine.parent).glob("*.dist-info"):  # uninstalled: the module stays importable, unregistered
        (info / "entry_points.txt").unlink()
    forget_plugins()
    with pytest.raises(IncompatibleError, match="names 'mine_pkg.backend.MineMemory'; .*registered memory classes"):
        MemCube.load(cube_dir, HashingEmbedder(dim=512))
    assert "mine_pkg.backend" not in sys.modules  # refused without importing what the data named
    main(["--help"])
    assert "registered by other packages" not in capsys.readouterr().out
