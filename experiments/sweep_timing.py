"""Wall time of whole sweeps for a suite: timing.csv (one row per sweep) -> a Markdown table with the ratio.

Used by experiments/launchers.sh; the sweeps are compared pairwise (first launcher vs each other one) and
their metrics checked for equality, timings aside, job by job.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from memos_lab.artifact import atomic_write_text

TIMING = re.compile(r"(_ms|_s)(_p\d+)?$")  # latencies, throughputs (..._per_s) and wall times differ run to run


def untimed_metrics(sweep: Path) -> dict[str, dict[str, float]]:
    return {
        job.parent.name: {k: v for k, v in json.loads(job.read_text()).items() if not TIMING.search(k)}
        for job in sorted(sweep.glob("*/metrics.json"))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("timing_csv", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--command", required=True, help="the command that regenerates this table")
    options = parser.parse_args()

    timing = pd.read_csv(options.timing_csv)
    timing["wall_s"] = timing["end"] - timing["start"]
    baseline = timing["launcher"].iloc[0]
    totals = timing.groupby("launcher", sort=False)["wall_s"].sum()
    lines = [
        "# Sweep wall time by launcher",
        "",
        f"- command: `{options.command}`",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} CPU cores; load average (1 min) before/after each sweep in the table",
        "",
        tabulate(timing[["launcher", "repeat", "wall_s", "load_before", "load_after"]], headers="keys",
                 tablefmt="github", showindex=False, floatfmt=".1f"),
        "",
    ]  # fmt: skip
    for launcher in totals.index.drop(baseline):
        same = all(
            untimed_metrics(Path(row_b.sweep_dir)) == untimed_metrics(Path(row_a.sweep_dir))
            for row_a, row_b in zip(
                timing[timing.launcher == baseline].itertuples(),
                timing[timing.launcher == launcher].itertuples(),
                strict=False,
            )
        )
        lines.append(
            f"**{launcher} / {baseline} wall-time ratio: {totals[launcher] / totals[baseline]:.2f}** "
            f"({totals[launcher]:.0f} s / {totals[baseline]:.0f} s over {int((timing.launcher == launcher).sum())} "
            f"sweep(s)); metrics identical job by job, timings aside: {'yes' if same else 'NO'}."
        )
    atomic_write_text(options.out, "\n".join(lines) + "\n")
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
