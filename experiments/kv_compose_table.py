"""experiment=kv_compose runs -> one table row per strategy x recompute fraction, and a plot of agreement and
TTFT against the share of the context recomputed, one line per strategy (used by experiments/kv_compose.sh);
sweep runs at several context lengths add `ttft_vs_context.png`: TTFT and speedup against the memory tokens.

Reads each run's `configurations.json` (the rows the experiment logged) and `config.yaml`; runs that differ
in a setting (the model preset, the context length) get their own block of rows and their own plot line style.
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tabulate import tabulate

from memos_lab.artifact import atomic_write_bytes, atomic_write_text
from memos_lab.experiments.kv_compose import CONFIGURATIONS_ARTIFACT, TEXT
from memos_lab.reporting.runs import find_run_dirs

COLUMNS = {  # row key -> column title (in this order; missing keys are left out)
    "recompute_frac": "fraction asked",
    "recomputed_frac": "recomputed",
    "memory_saved_frac": "memory prefill saved",
    "prefill_saved_frac": "context prefill saved",
    "compute_saved_frac": "compute saved",
    "top1_agreement": "top-1 agree",
    "answer_agreement": "answer agree",
    "kl_bits_mean": "KL bits",
    "f1": "F1",
    "j": "J",
    "ttft_ms_p50": "TTFT p50 ms",
    "ttft_ms_p95": "TTFT p95 ms",
    "ttft_speedup": "TTFT speedup",
    "bytes_copied_mean": "MiB copied",
}


def setting(config: dict[str, Any]) -> str:
    """What tells this run's rows apart from other runs': the model and, in sweep mode, the context length."""
    model = config.get("model", {})
    name = str(model.get("preset") or model.get("_target_", "").rsplit(".", 1)[-1])
    experiment = config["experiment"]
    return f"{name}, {experiment['memory_tokens']} tokens" if experiment.get("mode") == "sweep" else name


def collect(folders: list[Path]) -> pd.DataFrame:
    rows = []
    for folder in folders:
        for run in find_run_dirs(folder):
            rows_file = run / f"{CONFIGURATIONS_ARTIFACT}.json"
            if not rows_file.exists():
                continue
            config = yaml.safe_load((run / "config.yaml").read_text())
            experiment = config["experiment"]
            length = {"memory_tokens": experiment["memory_tokens"]} if experiment.get("mode") == "sweep" else {}
            for row in json.loads(rows_file.read_text())["rows"]:
                rows.append({"run": setting(config), **length, **row})
    if not rows:
        raise SystemExit(f"no {CONFIGURATIONS_ARTIFACT}.json under {', '.join(map(str, folders))}")
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    shown = frame.copy()
    shown["bytes_copied_mean"] = shown.get("bytes_copied_mean", math.nan) / 2**20
    columns = ["run", "label", *(key for key in COLUMNS if key in shown)]
    shown = shown[columns].rename(columns={"label": "strategy", **COLUMNS}).astype(object)
    shown = shown.where(shown.notna(), None)  # blank, not nan, where a row has no such number
    return tabulate(shown, headers="keys", tablefmt="github", showindex=False, floatfmt=".3g", missingval="")


def plot(frame: pd.DataFrame, out: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [key for key in ("top1_agreement", "answer_agreement", "ttft_speedup") if key in frame]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), layout="constrained", squeeze=False)
    styles = ["-", "--", ":", "-."]
    for axis, key in zip(axes[0], panels, strict=False):
        for r, (run, group) in enumerate(frame[frame["label"] != TEXT].groupby("run", sort=False)):
            for strategy, members in group.groupby("strategy", sort=False):
                points = members.sort_values("recomputed_frac")
                label = f"{strategy} ({run})" if frame["run"].nunique() > 1 else strategy
                axis.plot(points["recomputed_frac"], points[key], marker="o", linestyle=styles[r % len(styles)],
                          label=label)  # fmt: skip
        axis.set_xlabel("share of the context recomputed")
        axis.set_title(COLUMNS[key], fontsize=9)
        if key == "ttft_speedup":
            axis.axhline(1.0, color="grey", linewidth=0.8)  # the text form (a full prefill)
            axis.set_yscale("log")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(out / "agreement_ttft.png", buffer.getvalue())


def context_plot(frame: pd.DataFrame, out: Path) -> bool:
    """TTFT p50 (full prefill and each strategy) and the speedup against the memory tokens, one line per
    strategy; False (nothing drawn) unless the runs span several context lengths."""
    if "memory_tokens" not in frame or frame["memory_tokens"].nunique() < 2:
        return False
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (ttft, speedup) = plt.subplots(1, 2, figsize=(9.6, 3.8), layout="constrained")
    for label, members in frame.groupby("label", sort=False):
        points = members.sort_values("memory_tokens")
        name = "full prefill" if label == TEXT else str(label)
        ttft.plot(points["memory_tokens"], points["ttft_ms_p50"] / 1000, marker="o", label=name)
        if label != TEXT:
            speedup.plot(points["memory_tokens"], points["ttft_speedup"], marker="o", label=name)
    for axis in (ttft, speedup):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("memory tokens (in 10 memories)")
    ttft.set_yscale("log")
    ttft.set_ylabel("TTFT p50 (s)")
    speedup.set_ylabel("TTFT speedup over a full prefill")
    speedup.axhline(1.0, color="grey", linewidth=0.8)
    ttft.legend(fontsize=7)
    speedup.legend(fontsize=7)
    figure.suptitle(", ".join(sorted({run.split(",")[0] for run in frame["run"]})), fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(out / "ttft_vs_context.png", buffer.getvalue())
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folders", type=Path, nargs="+", help="run or sweep folders of experiment=kv_compose")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--command", required=True, help="the command that regenerates this table")
    options = parser.parse_args()
    frame = collect(options.folders)
    options.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(options.out / "strategies.csv", frame.to_csv(index=False))
    plot(frame, options.out)
    against_context = context_plot(frame, options.out)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"# Composition strategies: one row per strategy x recompute fraction\n\n"
        f"Made by `{options.command}` on {stamp}. `recomputed` is the measured share of the context (header +\n"
        f"memories) computed fresh; `TTFT speedup` is the text form's p50 over the strategy's, measured\n"
        f"interleaved on the same prompts. Plot: [agreement_ttft.png](agreement_ttft.png)"
        f"{'; against context length: [ttft_vs_context.png](ttft_vs_context.png)' if against_context else ''}.\n\n"
        f"{markdown(frame)}\n"
    )
    atomic_write_text(options.out / "strategies.md", text)
    print(text)


if __name__ == "__main__":
    main()
