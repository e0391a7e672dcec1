"""Every script under examples/ and every Python snippet of the README's "Python API" section runs."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
pytestmark = pytest.mark.usefixtures("single_thread")


def readme_snippets(section: str = "Python API") -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)


@pytest.mark.parametrize("script", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs(script: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")


def test_the_readme_python_snippets_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snippets = readme_snippets()
    assert len(snippets) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__main__"}
    for snippet in snippets:  # one namespace: a later snippet uses what an earlier one made
        exec(compile(snippet, "README.md (Python API)", "exec"), namespace)


def test_importing_memos_lab_loads_no_heavy_module() -> None:
    import subprocess
    import sys

    code = "import sys, memos_lab; print(sorted(m for m in ('torch', 'hydra', 'transformers') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_every_name_memos_lab_exports_resolves() -> None:
    import memos_lab

    assert sorted(memos_lab.__all__) == sorted(memos_lab._EXPORTS)
    for name in memos_lab.__all__:
        assert getattr(memos_lab, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        memos_lab.nope  # noqa: B018
