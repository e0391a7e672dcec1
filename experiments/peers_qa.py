"""The QA protocol on mem0 with its own LLM extraction beside our backend and the baselines, all answered (and
mem0's facts extracted) by one served SmolLM2-135M-Instruct (`transformers serve` on 127.0.0.1), on the same
questions; the report goes to results/peers/qa/.

A 135M model's answers mean little: the table shows the protocol working end to end on a served model. The
tests' tiny LoCoMo-format fixture keeps mem0's per-turn extraction affordable on a CPU (LoCoMo's ~600 turns per
conversation take hours there); the README gives the command for a served 8B model on LoCoMo.

    python experiments/peers_qa.py [--out results/peers/qa] [--root outputs/suites/peers/qa]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from memos_lab.generation.serve import transformers_serve
from memos_lab.models.llm import SMOLLM2_NAME, load_smollm2

# The project's tiny LoCoMo-format fixture (2 conversations, 8 turns, 6 questions): on a loaded 2-core CPU one extraction call of
# mem0's (a ~2,000-token prompt) takes minutes, so even a 30-turn synthetic dialogue took over an hour.
DATA = ["dataset=locomo", "dataset.path=tests/data/fixtures/locomo_tiny.json"]
CONFIGS = {  # name -> overrides: mem0 extracting with the served model, our default backend, the two baselines
    "mem0": ["memory=mem0", "memory.infer=true", "memory.llm_max_tokens=64"],
    "ours": ["memory=general_text"],
    "baselines": ["-m", "experiment.context=none,oracle"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/peers/qa"))
    parser.add_argument("--root", type=Path, default=Path("outputs/suites/peers/qa"))
    args = parser.parse_args()
    cache = os.environ.get("MEMOS_LAB_CACHE", os.path.expanduser("~/.cache/memos_lab"))
    load_smollm2(cache)  # converts the wheel's GGUF file once if needed
    folder = Path(cache) / "models" / SMOLLM2_NAME
    shutil.rmtree(args.root, ignore_errors=True)
    with transformers_serve(folder) as url:
        served = [
            f"llm.base_url={url}",
            f"llm.model={folder}",
            f"memory.llm_base_url={url}",
            f"memory.llm_model={folder}",
        ]
        for name, overrides in CONFIGS.items():
            sweep = "-m" in overrides
            where = f"hydra.sweep.dir={args.root / name}" if sweep else f"hydra.run.dir={args.root / name}"
            keep = [o for o in overrides if o != "-m"]
            mine = served if name == "mem0" else served[:2]
            command = [sys.executable, "-m", "memos_lab", "run", *(["-m"] if sweep else []), "experiment=qa",
                       "llm=openai_compatible", "logger=none", "embedder=minilm", *DATA, *mine, *keep, where]  # fmt: skip
            subprocess.run(command, check=True)
    runs = [str(p) for p in sorted(args.root.iterdir())]
    note = "made by experiments/peers_qa.py"
    subprocess.run(
        [sys.executable, "-m", "memos_lab", "report", *runs, "--out", str(args.out), "--note", note], check=True
    )


if __name__ == "__main__":
    main()
