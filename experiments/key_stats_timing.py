"""The one-off step of the closed-form editors: E[k kᵀ] of SmolLM2-135M's MLP keys at the edited layers,
from each corpus the project can make (no download), timed from nothing (corpus making included) into an
empty cache folder, and the size of the null space AlphaEdit keeps per layer.

    python experiments/key_stats_timing.py [--layers 3 4 5 6 7 8] [--tokens 20000 40000]
        [--out results/editing/key_stats.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from memos_lab.memory.parametric import key_stats
from memos_lab.memory.parametric.alphaedit import AlphaEditSettings
from memos_lab.models.llm import load_smollm2
from memos_lab.provenance import git_commit, hardware


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 4, 5, 6, 7, 8])
    parser.add_argument("--corpora", nargs="+", default=list(key_stats.CORPORA))
    parser.add_argument("--tokens", type=int, nargs="+", default=[20000, 40000])
    parser.add_argument("--out", type=Path, default=Path("results/editing/key_stats.json"))
    args = parser.parse_args()
    lm = load_smollm2("~/.cache/memos_lab")
    threshold = AlphaEditSettings().nullspace_threshold
    rows = []
    for corpus in args.corpora:
        for tokens in args.tokens:
            with tempfile.TemporaryDirectory() as cache:
                started = time.perf_counter()
                moments = key_stats.second_moments(lm, args.layers, corpus, tokens, cache, seed=0)
                seconds = time.perf_counter() - started
            null = {}
            for layer, moment in moments.items():
                values = torch.linalg.eigvalsh(moment.double())
                null[layer] = int((values < threshold * values.max()).sum())
            rows.append({"corpus": corpus, "tokens": tokens, "seconds": round(seconds, 1), "null_space_dims": null})
            print(f"| {corpus} | {tokens} | {seconds:.1f} | {' / '.join(str(v) for v in null.values())} |", flush=True)
    record = {
        "command": "python experiments/key_stats_timing.py "
        + " ".join(
            [
                f"--layers {' '.join(map(str, args.layers))}",
                f"--corpora {' '.join(args.corpora)}",
                f"--tokens {' '.join(map(str, args.tokens))}",
            ]
        ),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "hardware": hardware(),
        "key_dims": key_stats.key_dim(lm),
        "nullspace_threshold": threshold,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
