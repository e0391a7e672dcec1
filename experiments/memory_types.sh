#!/usr/bin/env bash
# The same 40 synthetic facts (~500 context tokens with SmolLM2-135M) as text in the context, as a KV cache,
# and as LoRA weights (FT-M LoRA, at most 120 steps); 8 facts asked by prompt and by paraphrase:
# accuracy, generalisation, time to first token, storage bytes, the cost of writing all facts and of
# changing one -> results/memory_types/
# On a quiet machine, the ~1k-token setting: experiment.n_facts=80 experiment.n_questions=16.
# On a larger model: add `model=hf model.name_or_path=<folder or hub id>`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SUITE=outputs/suites/memory_types
rm -rf "$SUITE"
$PY -m memos_lab run -m experiment=memory_types dataset=synthetic_facts experiment.memory=text,kv,lora \
  experiment.n_facts=40 experiment.n_questions=8 parametric.steps=120 logger=none threads=1 hydra.sweep.dir="$SUITE"
$PY -m memos_lab report "$SUITE" --out results/memory_types \
  --metrics memtypes/accuracy,memtypes/generalization,memtypes/ttft_ms_p50,memtypes/storage_bytes,memtypes/write_s,memtypes/update_s,memtypes/prompt_tokens_mean
