#!/usr/bin/env bash
# Knowledge editing with LoRA parametric memory on SmolLM2-135M (fp32) -> results/lora_update/.
#   methods: lora (plain FT-L: whole-text loss, every layer), lora_ftm (target-only loss, every layer),
#            lora_kl (target-only, upper third of the layers, + KL to the frozen model on anchor prompts),
#            gated_lora (target-only, lower-middle layers, probability margin 0.99, applied only when a MiniLM
#            retrieval over the edited subjects fires), gated_lora_upper (the same gate on the upper third)
#   data:    100 synthetic edits, and a SELF-MADE zsRE-format slice of 100 edits
#            (scripts/make_zsre_format_slice.py; not real zsRE: there is no network here)
#   sequential: the 100 synthetic edits in 10 batches of 10, lora/retention = batches 1-9 after batch 10,
#               replaying 20 earlier edits with each batch, and (gated_lora) all of them
# Usage: experiments/lora_update.sh [extra hydra overrides]   (THREADS=1 on a crowded machine)
# About 80 minutes on 2 quiet cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ROOT=outputs/suites/lora_update
ZSRE=outputs/data/zsre_format_selfmade.json
COMMON=(experiment=lora_update logger=none threads=${THREADS:-2} "$@")
rm -rf "$ROOT"
$PY scripts/make_zsre_format_slice.py "$ZSRE" 100 0

$PY -m memos_lab run -m "${COMMON[@]}" dataset=synthetic_facts parametric=gated_lora,gated_lora_upper,lora_kl,lora_ftm,lora \
  hydra.sweep.dir=$ROOT/synthetic
# The zsRE-format slice and the sequential runs go side by side, one thread each (about 40 min instead of
# 70); the every-layer baselines (lora, lora_ftm: 10-14 min each on synthetic) are left out of the zsRE sweep.
ONE=(experiment=lora_update logger=none threads=1 "$@")
$PY -m memos_lab run -m "${ONE[@]}" dataset=zsre dataset.path=$ZSRE parametric=gated_lora,gated_lora_upper,lora_kl \
  hydra.sweep.dir=$ROOT/zsre_selfmade &
$PY -m memos_lab run -m "${ONE[@]}" dataset=synthetic_facts experiment.n_batches=10 parametric.replay=20 \
  parametric=gated_lora,lora_kl,gated_lora_upper hydra.sweep.dir=$ROOT/sequential
wait
# Rehearsal: every earlier edit replayed with each batch (training stops only when all of them are learned).
$PY -m memos_lab run -m "${ONE[@]}" dataset=synthetic_facts experiment.n_batches=10 parametric.replay=100 \
  parametric=gated_lora hydra.sweep.dir=$ROOT/sequential_replay_all

METRICS=lora/reliability,lora/generalization,lora/locality,lora/reliability_prob,lora/generalization_prob,lora/train_s_per_100_edits,lora/adapter_mb,lora/steps
$PY -m memos_lab report $ROOT/synthetic --out results/lora_update/synthetic --metrics $METRICS,lora/portability
$PY -m memos_lab report $ROOT/zsre_selfmade --out results/lora_update/zsre_selfmade --metrics $METRICS
$PY -m memos_lab report $ROOT/sequential $ROOT/sequential_replay_all --out results/lora_update/sequential --metrics lora/retention,$METRICS,lora/portability,lora/batches_learned
