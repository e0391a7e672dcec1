"""Interruptions and concurrent writers, measured (issue 17): run by experiments/reliability.sh.

`kill KIND RUNS OUT.json`: a process writes in a loop (KIND dump: MemCube.dump; save: MOS.save; load: the
declarative loader) and is killed with SIGKILL at a random moment; then the next open must succeed, hold
whole batches only, and leave no staging folder beside the cube.

`writers N ROUNDS OUT.json`: N processes at once, each round on a fresh cube folder and a fresh MOS root:
N declarative loads (5 items each) into one new cube_dir, and N MOS writers that each register a user,
create, fill, save and share a cube and add an item to one shared team cube (reopening and redoing the
change when another writer saved the team cube first). Lost items, users, cubes and shares are counted
against what each process reported (exit status 0 = "all my changes are stored").

Workers are forked, not started through the CLI, so that a round costs milliseconds, not an interpreter
start; tests/loading/test_load_writers.py checks the CLI path itself.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

from memos_lab.artifact import staging_leftovers
from memos_lab.cli import CONF_DIR, LOAD_CONFIG_NAME
from memos_lab.cube import MemCube
from memos_lab.errors import BusyError, MemosError
from memos_lab.loading.declarative import load
from memos_lab.locking import hold_writer_lock
from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.models.embedder import HashingEmbedder
from memos_lab.mos import CUBES_DIR, MOS, REGISTRY_FILE

BATCH = 50  # items per write in the kill loops: an intact store holds a multiple of it
EMBEDDER = HashingEmbedder(512)  # conf/embedder/hashing.yaml's


def new_memory() -> GeneralTextMemory:
    return GeneralTextMemory(EMBEDDER)


def texts(tag: str, count: int) -> list[str]:
    return [f"{tag} note {i} about the garden and the kite" for i in range(count)]


def load_cfg(cube_dir: Path, source: Path) -> Any:
    overrides = ["user=alice", f"cube_dir={cube_dir}", f"input={source}", "embedder=hashing", "lock_timeout_s=120"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(LOAD_CONFIG_NAME, overrides=overrides)


def write_jsonl(path: Path, tag: str, count: int) -> Path:
    path.write_text(
        "".join(json.dumps({"text": text, "source": f"{tag}:{i}"}) + "\n" for i, text in enumerate(texts(tag, count)))
    )
    return path


# ---- kill -9 ----------------------------------------------------------------------------------------


def prepare(kind: str, folder: Path) -> None:
    if kind == "dump":
        cube = MemCube.create("alice", new_memory(), "c")
        cube.text.add(texts("start", BATCH))
        cube.dump(folder / "cube")
    elif kind == "save":
        mos = MOS(new_memory, root=folder / "root")
        mos.register_user("alice")
        mos.create_cube("alice", cube_id="c")
        mos.add("alice", "c", texts("start", BATCH))
        mos.save("alice", "c")
    else:
        load(load_cfg(folder / "cube", write_jsonl(folder / "start.jsonl", "start", BATCH)))


def write_forever(kind: str, folder: Path) -> None:
    # Composed once, so the loop is the loader's own work (reading, embedding, writing the cube).
    cfg = load_cfg(folder / "cube", folder / "start.jsonl") if kind == "load" else None
    for step in range(10**6):
        if kind == "dump":
            cube = MemCube.load(folder / "cube", EMBEDDER)
            cube.text.add(texts(f"step{step}", BATCH))
            cube.dump(folder / "cube")
        elif kind == "save":
            mos = MOS(new_memory, root=folder / "root")
            mos.add("alice", "c", texts(f"step{step}", BATCH))
            mos.save("alice", "c")
        else:
            cfg.input = str(write_jsonl(folder / f"step{step}.jsonl", f"step{step}", BATCH))
            load(cfg)


def next_open(kind: str, folder: Path) -> tuple[int, Path]:
    """Open as the next user would; the number of items stored, and the cube folder."""
    if kind == "save":
        mos = MOS(new_memory, root=folder / "root")
        return len(
            mos.get_all("alice", "c", {"statuses": ["active", "archived", "deleted"]})
        ), folder / "root" / CUBES_DIR / "c"
    with hold_writer_lock(folder / "cube", 30):  # what the loader does before it reads the cube
        return len(MemCube.load(folder / "cube", EMBEDDER).text), folder / "cube"


def kill_runs(kind: str, runs: int, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    fork = multiprocessing.get_context("fork")
    intact, staging_left, killed_mid_write, failures = 0, 0, 0, []
    with tempfile.TemporaryDirectory() as workdir:
        for run in range(runs):
            folder = Path(workdir) / f"{kind}-{run}"
            folder.mkdir()
            prepare(kind, folder)
            worker = fork.Process(target=write_forever, args=(kind, folder))
            worker.start()
            time.sleep(rng.uniform(0.05, 1.5))
            os.kill(worker.pid, signal.SIGKILL)
            worker.join()
            target = folder / "root" / CUBES_DIR / "c" if kind == "save" else folder / "cube"
            killed_mid_write += bool(staging_leftovers(target) or list(target.parent.glob(".*.tmp")))
            try:
                count, target = next_open(kind, folder)
            except MemosError as error:
                failures.append(f"run {run}: {error}")
                continue
            intact += count % BATCH == 0 and count >= BATCH
            leftovers = staging_leftovers(target)
            if kind == "save":
                leftovers += staging_leftovers(folder / "root" / REGISTRY_FILE)
            staging_left += len(leftovers)
    return {"kind": kind, "runs": runs, "intact": intact, "staging_left_after_next_open": staging_left,
            "killed_with_staging_present": killed_mid_write, "failures": failures}  # fmt: skip


# ---- concurrent writers -----------------------------------------------------------------------------


def run_workers(targets: list[Callable[[], None]]) -> list[int]:
    """Start every target in its own forked process at once; their exit statuses."""
    fork = multiprocessing.get_context("fork")
    workers = [fork.Process(target=_exit_status, args=(target,)) for target in targets]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [worker.exitcode for worker in workers]


def _exit_status(target: Callable[[], None]) -> None:
    try:
        target()
    except MemosError as error:
        print(f"error: {error}", file=sys.stderr)
        os._exit(2)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def load_round(folder: Path, writers: int) -> dict[str, int]:
    sources = [write_jsonl(folder / f"w{n}.jsonl", f"w{n}", 5) for n in range(writers)]

    def writer(n: int) -> Callable[[], None]:
        def run() -> None:
            summary = load(load_cfg(folder / "cube", sources[n]))
            if summary["items_added"] != 5:
                raise SystemExit(3)

        return run

    statuses = run_workers([writer(n) for n in range(writers)])
    stored = {item.text for item in MemCube.load(folder / "cube", EMBEDDER).text.get_all()}
    reported = [n for n, status in enumerate(statuses) if status == 0]
    lost = sum(text not in stored for n in reported for text in texts(f"w{n}", 5))
    untruthful = sum(status != 0 and all(t in stored for t in texts(f"w{n}", 5)) for n, status in enumerate(statuses))
    return {"writers": writers, "exit_0": len(reported), "lost_items": lost, "untruthful_exits": untruthful}


def mos_round(folder: Path, writers: int) -> dict[str, int]:
    root = folder / "root"
    setup = MOS(new_memory, root=root)
    setup.register_user("owner")
    setup.create_cube("owner", cube_id="team")
    setup.save("owner", "team")
    for n in range(writers):
        setup.register_user(f"u{n}")
        setup.share_cube("owner", "team", f"u{n}", "write")
    redone = multiprocessing.get_context("fork").Value("i", 0)

    def writer(n: int) -> Callable[[], None]:
        def run() -> None:
            user = f"u{n}"
            mos = MOS(new_memory, root=root, lock_timeout_s=120)
            mos.register_user(f"extra{n}")
            mos.create_cube(user, cube_id=f"c{n}")
            mos.add(user, f"c{n}", texts(user, 5))
            mos.save(user, f"c{n}")
            mos.share_cube(user, f"c{n}", "owner", "read")
            for _ in range(50):
                mos.add(user, "team", [f"{user} was here"])
                try:
                    mos.save(user, "team")
                    return
                except BusyError:  # another writer saved the team cube first: build on its version
                    with redone.get_lock():
                        redone.value += 1
                    mos = MOS(new_memory, root=root, lock_timeout_s=120)
            raise SystemExit(4)

        return run

    statuses = run_workers([writer(n) for n in range(writers)])
    final = MOS(new_memory, root=root)
    reported = [n for n, status in enumerate(statuses) if status == 0]
    users = set(final._users)
    team = {item.text for item in final.get_all("owner", "team")}
    lost_users = sum(f"extra{n}" not in users for n in reported)
    lost_cubes = sum(f"c{n}" not in final.readable_cubes(f"u{n}") for n in reported)
    lost_shares = sum(f"c{n}" not in final.readable_cubes("owner") for n in reported)
    lost_items = sum(f"u{n} was here" not in team for n in reported)
    lost_items += sum(
        len(final.get_all(f"u{n}", f"c{n}")) != 5 for n in reported if f"c{n}" in final.readable_cubes(f"u{n}")
    )
    return {"writers": writers, "exit_0": len(reported), "lost_users": lost_users, "lost_cubes": lost_cubes,
            "lost_shares": lost_shares, "lost_items": lost_items, "stale_saves_redone": redone.value}  # fmt: skip


def writer_rounds(writers: int, rounds: int) -> dict[str, Any]:
    totals: dict[str, dict[str, int]] = {"load": {}, "mos": {}}
    with tempfile.TemporaryDirectory() as workdir:
        for round_ in range(rounds):
            for name, one_round in (("load", load_round), ("mos", mos_round)):
                folder = Path(workdir) / f"{name}-{round_}"
                folder.mkdir()
                for key, value in one_round(folder, writers).items():
                    totals[name][key] = totals[name].get(key, 0) + value if key != "writers" else value
    return {"writers": writers, "rounds": rounds, **totals}


def write_readme(out: Path, ann_runs: list[Path], ann_command: str, fuzz_command: str) -> None:
    """results/reliability/README.md: every figure beside the command that produced it, and the date."""
    rows = ["| figure | value | command |", "| --- | --- | --- |"]
    fuzz = out / "fuzz.json"
    if fuzz.exists():
        counts = json.loads(fuzz.read_text())
        shown = ", ".join(f"{k}: {v}" for k, v in counts.items() if not isinstance(v, (dict, list)))
        rows.append(f"| fuzzing (fuzz/) | {shown} | `{fuzz_command}` |")
    else:
        rows.append(f"| fuzzing | not run (FUZZ=1 runs it) | `{fuzz_command}` |")
    drip = json.loads((out / "drip.json").read_text())
    for row in drip["rows"]:
        rows.append(
            f"| one served question, {row['fault']}, stream={str(row['stream']).lower()}, timeout_s={row['timeout_s']:g}, "
            f"max_retries={row['max_retries']} | {row['wall_s']:.2f} s in {row['attempts']} attempts (stated bound "
            f"{row['bound_s']:.2f} s) | `{drip['command']}` |"
        )
    for kind in ("dump", "save", "load"):
        result = json.loads((out / f"kill_{kind}.json").read_text())
        value = (f"{result['intact']}/{result['runs']} intact, {result['staging_left_after_next_open']} staging left after "
                 f"the next open ({result['killed_with_staging_present']} kills left one to clean)")  # fmt: skip
        rows.append(f"| kill -9 during {kind} | {value} | `{result['command']}` |")
    for writers in (2, 4):
        result = json.loads((out / f"writers_{writers}.json").read_text())
        ld, mos = result["load"], result["mos"]
        rows.append(
            f"| {writers} concurrent `load` into one new cube, {result['rounds']} rounds | {ld['exit_0']} of "
            f"{writers * result['rounds']} exit 0; lost items {ld['lost_items']}; untruthful exits {ld['untruthful_exits']} "
            f"| `{result['command']}` |"
        )
        rows.append(
            f"| {writers} concurrent MOS writers on one root, {result['rounds']} rounds | {mos['exit_0']} of "
            f"{writers * result['rounds']} exit 0; lost users {mos['lost_users']}, cubes {mos['lost_cubes']}, shares "
            f"{mos['lost_shares']}, items {mos['lost_items']}; stale saves refused and redone {mos['stale_saves_redone']} "
            f"| same |"
        )
    for run in ann_runs:
        metrics = json.loads((run / "metrics.json").read_text())
        rows.append(
            f"| HNSW dense search p50 / p95, {int(metrics['scaling/items'])} items, "
            f"{metrics['scaling/deleted_fraction']:.0%} soft-deleted | {metrics['scaling/search_ms_p50']:.2f} ms / "
            f"{metrics['scaling/search_ms_p95']:.2f} ms | `{ann_command}` ({run.name}) |"
        )
    text = [
        "# Reliability (issues 17, 22)",
        "",
        f"Produced by `experiments/reliability.sh` on {time.strftime('%Y-%m-%d', time.gmtime())} (UTC), "
        "2 shared CPU cores; raw figures in the JSON files beside this one.",
        "",
        *rows,
        "",
        "Notes:",
        '- kill -9: a writer loops (50 new items per write) and is killed after 0.05-1.5 s; "intact" means the',
        '  next open succeeds and holds whole batches only. "kills left one to clean" counts kills that hit a',
        "  write in progress (a staging folder was present); the next open removed every one.",
        "- concurrent writers are forked processes calling the loader and the MOS directly (a round costs no",
        "  interpreter start); tests/loading/test_load_writers.py checks two `python -m memos_lab load` processes.",
        "  A MOS writer whose team-cube save was refused (another writer saved first) reopened the root and",
        '  redid its change: those are the "stale saves refused and redone".',
        "- ANN: both runs share the machine with other jobs (load average about 15 on 2 cores), which inflates",
        "  the absolute times; the ratio of the two p50s is the figure the issue's target is about (within 2x).",
        "  Before this change the filtered search grew its candidate count to the whole store once items were",
        "  deleted (the issue measured p50 2.2 ms -> 25.6 ms with 1% deleted).",
        "",
    ]
    (out / "README.md").write_text("\n".join(text))


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "readme":
        out, ann_command, fuzz_command, *ann_runs = args
        write_readme(Path(out), [Path(run) for run in ann_runs], ann_command, fuzz_command)
        return
    started = time.perf_counter()
    if command == "kill":
        result = kill_runs(args[0], int(args[1]))
    elif command == "writers":
        result = writer_rounds(int(args[0]), int(args[1]))
    else:
        raise SystemExit(f"unknown command {command!r}; valid: kill, writers")
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["command"] = " ".join(["python", "experiments/reliability.py", *argv])
    Path(args[-1]).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
