"""The fuzz campaign: `python -m fuzz --examples 5000 --out FILE.json`, from the repository's root (the harness
is a development tool beside the package, not part of it; it needs the dev dependency hypothesis).

Families, drawn by hypothesis in the ratio 4:4:1 (see each module's docstring):
- artifacts (fuzz/artifacts.py): every artifact kind and input format, damaged, then loaded; first, unless
  --no-planted, a sweep that plants a `_target_` or class path into every JSON field of every artifact;
- served (fuzz/served.py): one question to a hostile server on 127.0.0.1 that breaks the protocol;
- runs (fuzz/runs.py): `report` over run folders with one file mutated.

The shared oracle (fuzz/oracle.py) counts raw tracebacks, hangs, code executions, reads outside and, for
`report`, unescaped injections in report.md or runs.csv. The counts go to FILE.json; the exit status is 1
when any example is bad.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fuzz.oracle import DEADLINE_S, MEMORY_LIMIT_BYTES, Outcome, limited_memory

FAMILIES = ("artifacts", "served", "runs")


def campaign(
    examples: int,
    workdir: Path,
    seed: int = 0,
    planted_first: bool = True,
    families: tuple[str, ...] = FAMILIES,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Run `examples` examples in all: the planted sweep first (unless `planted_first` is off), the rest drawn
    by hypothesis across `families`; stop drawing after `max_seconds`. Return the counts."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    started = time.perf_counter()
    outcomes: list[Outcome] = []
    runners: dict[str, Any] = {}
    strategies: list[tuple[Any, int]] = []  # (strategy, weight)
    with limited_memory(MEMORY_LIMIT_BYTES), tempfile.TemporaryDirectory(dir=workdir) as scratch:
        if "artifacts" in families:
            from fuzz.artifacts import Fuzzer, mutations, planted_cases

            fuzzer = Fuzzer(Path(scratch) / "artifacts")
            runners["artifacts"] = lambda case: fuzzer.run(*case)
            strategies.append((mutations(fuzzer).map(lambda case: ("artifacts", case)), 4))
            if planted_first:
                outcomes += [fuzzer.run(name, mutate) for name, mutate in planted_cases(fuzzer)]
        planted = len(outcomes)
        if "served" in families:
            from fuzz.served import ServedFuzzer, served_cases

            served = ServedFuzzer()
            runners["served"] = served.run
            strategies.append((served_cases().map(lambda case: ("served", case)), 4))
        if "runs" in families:
            from fuzz.runs import RunsFuzzer, run_mutations

            runs = RunsFuzzer(Path(scratch) / "runs")
            runners["runs"] = runs.run
            strategies.append((run_mutations(runs).map(lambda case: ("runs", case)), 1))

        # a report costs about ten loads or five served questions: it gets fewer of the drawn examples
        weighted = [strategy for strategy, weight in strategies for _ in range(weight)]

        @hypothesis_seed(seed)
        @settings(
            max_examples=max(0, examples - planted),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.integers(0, len(weighted) - 1).flatmap(lambda pick: weighted[pick]))
        def draw(drawn: tuple[str, Any]) -> None:
            if max_seconds is None or time.perf_counter() - started < max_seconds:
                family, case = drawn
                outcomes.append(runners[family](case))

        try:
            draw()
        finally:
            if "served" in families:
                served.close()
    results = Counter(o.result for o in outcomes)
    bad = [o for o in outcomes if o.bad]
    return {
        "examples": len(outcomes),
        "planted_target_examples": planted,
        "per_target": dict(sorted(Counter(o.target for o in outcomes).items())),
        "loaded": results["ok"],
        "refused_one_line": results["refused"],
        "raw_tracebacks": results["raw"],
        "hangs": results["hang"],
        "unescaped_injections": results["injection"],
        "code_executions": sum(bool(o.code_executions) for o in outcomes),
        "outside_reads": sum(bool(o.outside_reads) for o in outcomes),
        "stored_state_changed": sum(o.changed for o in outcomes),
        "deadline_s": DEADLINE_S,
        "stopped_at_max_seconds": len(outcomes) < examples,
        "seconds": round(time.perf_counter() - started, 1),
        "failures": [vars(o) for o in bad[:50]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=5000, help="examples in all, the planted sweep included")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-planted", action="store_true", help="skip the planted-_target_ sweep of every JSON field")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop drawing examples after this long")
    args = parser.parse_args(argv)
    families = tuple(name for name in args.families.split(",") if name)
    if not families or set(families) - set(FAMILIES):
        parser.error(f"--families: choose among {', '.join(FAMILIES)}")
    with tempfile.TemporaryDirectory(prefix="memos_fuzz_") as workdir:
        report = campaign(args.examples, Path(workdir), args.seed, not args.no_planted, families, args.max_seconds)
    options = " --no-planted" if args.no_planted else ""
    options += f" --families {','.join(families)}" if families != FAMILIES else ""
    options += f" --max-seconds {args.max_seconds:g}" if args.max_seconds is not None else ""
    report["command"] = f"python -m fuzz --examples {args.examples} --seed {args.seed}{options} --out {args.out}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    keys = ("examples", "raw_tracebacks", "hangs", "unescaped_injections", "code_executions", "outside_reads",
            "stored_state_changed")  # fmt: skip
    print(json.dumps({key: report[key] for key in keys}))
    return 0 if not report["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
