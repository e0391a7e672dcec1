"""Fuzzing `report`: run folders written by a stranger. Two real runs (experiment=qa, tiny model, two
configurations) are made once; each example copies them, damages one file either holds (metrics.json,
config.yaml, provenance.json, per_query.json, answers.json, report.md, .hydra/*...) and reports on the copy.

A damage is a JSON or YAML node (or key) replaced by a wrong type, NaN, Infinity, 1e308, a deep array or an
injection (a spreadsheet formula, a markdown heading after a newline, raw HTML, a table's pipe, a
javascript: link); bytes truncated, flipped or emptied; or the file replaced by a folder, a link outside,
/dev/zero or a FIFO.

Oracle (besides the shared one): `report` writes its files or refuses in one line; and what it writes holds
no injection: in report.md no heading made by data, no raw HTML or javascript: link outside code, no table
row with more or fewer cells than its header; in runs.csv and table.csv no cell that a spreadsheet would
run (one starting with =, +, -, @, a tab or a carriage return, other than a number).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fuzz.artifacts import DEEP, json_paths, mutate_bytes, set_at
from fuzz.oracle import Finding, Guard, Outcome, library_roots, observe

INJECTIONS = (
    "=cmd|' /C calc'!A0",
    "+SUM(1+1)*cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)",
    "\t=1+1",
    "\r=1+1",
    "abc`<script>alert(1)</script>\n# INJECTED heading",
    "<img src=x onerror=alert(1)>",
    "a | INJECTED | b",
    "[click](javascript:alert(1))",
    "``` \n# INJECTED in a fence",
)
VALUES: tuple[Any, ...] = (*INJECTIONS, "<NaN>", "<Infinity>", "<1e308>", "<DEEP>", None, True, -1, 10**30, 1.5, "",
                           "\ud800", [], {}, ["a", 1], {"_target_": "os.system", "command": "true"}, "x" * 5000)  # fmt: skip
RAW = {'"<NaN>"': "NaN", '"<Infinity>"': "Infinity", '"<1e308>"': "1e308", '"<DEEP>"': DEEP}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CODE_SPAN = re.compile(r"(?<![\\`])(`+)(?!`)(.+?)(?<!`)\1(?!`)")  # a backslash-escaped backtick opens none
HEADING = re.compile(r"^ {0,3}#{1,6}(\s|$)")
DEADLINE_S = 30.0  # a report draws plots: slower than a load
FEW_METRICS = ["qa/f1", "latency/answer_ms_p50"]


def _dump_json(value: Any) -> str:
    text = json.dumps(value)
    for token, raw in RAW.items():
        text = text.replace(token, raw)
    return text


def mutate_node(root: Path, relative: str, index: int, new: Any, key: bool) -> str:
    """Replace one node of a JSON or YAML file (or, with `key`, rename the key holding it to `new`)."""
    import yaml

    file = root / relative
    text = file.read_text(encoding="utf-8")
    is_yaml = relative.endswith((".yaml", ".yml"))
    value = yaml.safe_load(text) if is_yaml else json.loads(text)
    paths = json_paths(value)
    path = paths[index % len(paths)]
    if key and path and isinstance(new, str):
        parent = value
        for part in path[:-1]:
            parent = parent[part]
        if isinstance(parent, dict):
            parent[new] = parent.pop(path[-1])
    else:
        value = set_at(value, path, new)
    dumped = _dump_json(value)
    if is_yaml:  # YAML 1.2 reads JSON; the special tokens become YAML's own
        dumped = dumped.replace("NaN", ".nan").replace("Infinity", ".inf")
    file.write_text(dumped, encoding="utf-8", errors="surrogatepass")
    return f"{'key' if key else 'node'} {relative} {'/'.join(map(str, path))} = {new!r:.40}"


def mutate_file(root: Path, relative: str, outside: Path, how: int) -> str:
    file = root / relative
    kind = ("delete", "folder", "link-out", "devzero", "fifo", "huge", "text")[how % 7]
    file.unlink()
    if kind == "folder":
        file.mkdir()
    elif kind == "link-out":
        file.symlink_to(outside / "secret.txt")
    elif kind == "devzero":
        file.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(file)
    elif kind == "huge":
        file.write_bytes(b"[" + b"1," * (4 << 20) + b"1]")
    elif kind == "text":
        file.write_text(INJECTIONS[how % len(INJECTIONS)])
    return f"file {relative} {kind}"


class RunsFuzzer:
    """Makes the pristine runs once; `run(case)` reports on a damaged copy under the oracle."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.pristine = self.workdir / "pristine"
        _make_runs(self.pristine)
        self.files = sorted(str(p.relative_to(self.pristine)) for p in self.pristine.rglob("*") if p.is_file())
        self.outside = self.workdir / "outside"
        self.outside.mkdir(parents=True, exist_ok=True)
        (self.outside / "secret.txt").write_text("not yours\n")
        roots = [self.workdir / "cases", *library_roots(), Path(os.environ.get("MPLCONFIGDIR", "/nonexistent"))]
        self.guard = Guard([*roots, Path.home() / ".config" / "matplotlib", Path("/usr/share/fonts")], [self.workdir])
        self.count = 0
        self._report(self.pristine, self.workdir / "warm")  # warm imports and font caches

    def _report(self, runs: Path, out: Path, metrics: list[str] | None = None) -> None:
        from memos_lab.reporting import write_report

        write_report([runs], out, "python -m memos_lab report (fuzz)", metrics)
        check_outputs(out)

    def run(self, case: tuple[str, Callable[[Path, Path], str], bool]) -> Outcome:
        """Report on damaged runs: on every metric, or (when `few`) on FEW_METRICS, 5x faster (fewer plots)."""
        relative, mutate, few = case
        self.count += 1
        case_dir = self.workdir / "cases" / f"{self.count:06d}"
        runs = case_dir / "runs"
        shutil.copytree(self.pristine, runs, symlinks=True)
        try:
            mutation = mutate(runs, self.outside)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
            mutation = f"(mutation not applicable: {type(error).__name__})"
        outcome = observe(
            self.guard,
            f"runs:{relative.split('/')[-1]}",
            mutation,
            lambda: self._report(runs, case_dir / "out", FEW_METRICS if few else None),
            DEADLINE_S,
        )
        shutil.rmtree(case_dir, ignore_errors=True)
        return outcome


def _make_runs(folder: Path) -> None:
    """Two qa runs of the tiny model on the LoCoMo fixture, differing in top_k: two configurations."""
    from memos_lab import cli

    fixture = Path(__file__).resolve().parent.parent / "tests" / "data" / "fixtures" / "locomo_tiny.json"
    for top_k in (2, 3):
        with contextlib.redirect_stdout(None):
            cli.main(["run", "experiment=qa", "dataset=locomo", f"dataset.path={fixture}", "dataset.limit=1",
                      "model=tiny_llama", "embedder=hashing", "logger=none", "experiment.max_new_tokens=4",
                      f"experiment.top_k={top_k}", f"hydra.run.dir={folder / f'top_k_{top_k}'}"])  # fmt: skip


def _outside_code(line: str) -> str:
    return CODE_SPAN.sub("", line)


def _cells(row: str) -> int:
    """Cells of a markdown table row: pipes not escaped by a backslash split it (inside code spans too)."""
    return len(re.findall(r"(?<!\\)\|", row.strip().strip("|"))) + 1


def check_outputs(out: Path) -> None:
    """Finding("injection") for anything in report.md, runs.csv or table.csv that data could have injected."""
    report = out / "report.md"
    if report.is_file():
        fenced, table_cells = False, None
        for number, line in enumerate(report.read_text(encoding="utf-8").split("\n"), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if fenced:
                continue
            visible = _outside_code(line)
            if HEADING.match(line) and "INJECTED" in line:
                raise Finding("injection", f"report.md:{number}: a heading made by data: {line[:80]!r}")
            if re.search(r"(?<!\\)<\s*(script|img)|(?<!\\)\]\(\s*javascript:", visible, re.IGNORECASE):
                raise Finding("injection", f"report.md:{number}: raw HTML or a javascript: link: {line[:80]!r}")
            if line.startswith("|"):
                cells = _cells(line)
                if table_cells is not None and cells != table_cells:
                    raise Finding("injection", f"report.md:{number}: {cells} cells under a {table_cells}-cell header")
                table_cells = cells if table_cells is None else table_cells
            else:
                table_cells = None
    for name in ("runs.csv", "table.csv"):
        path = out / name
        if not path.is_file():
            continue
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle):
                for cell in row:
                    if cell.startswith(FORMULA_START) and not _is_number(cell):
                        raise Finding("injection", f"{name}: a cell a spreadsheet would run: {cell[:60]!r}")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def run_mutations(fuzzer: RunsFuzzer) -> Any:
    """A hypothesis strategy of (file, mutate) pairs over every file of the pristine runs."""
    from hypothesis import strategies as st

    @st.composite
    def one(draw: Any) -> tuple[str, Callable[[Path, Path], str], bool]:
        relative, few = draw(st.sampled_from(fuzzer.files)), draw(st.integers(0, 7)) > 0
        family = draw(st.sampled_from(["node", "node", "node", "key", "bytes", "file"]))
        structured = relative.endswith((".json", ".yaml", ".yml"))
        if family in ("node", "key") and structured:
            index, new = draw(st.integers(0, 10**6)), draw(st.sampled_from(VALUES) | st.text(max_size=12))
            return relative, lambda root, outside: mutate_node(root, relative, index, new, family == "key"), few
        if family == "file":
            how = draw(st.integers(0, 6))
            return relative, lambda root, outside: mutate_file(root, relative, outside, how), few
        how, offset = draw(st.integers(0, 3)), draw(st.integers(0, 10**6))
        return relative, lambda root, outside: mutate_bytes(root, relative, how, offset, False), few

    return one()
