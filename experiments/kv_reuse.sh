#!/usr/bin/env bash
# KV-cache reuse on SmolLM2-135M (fp32, 2 threads) -> results/kv_reuse/{dialogue,sweep}/.
#   dialogue: 10-turn replays of the synthetic dialogues, earlier turns as ~800 tokens of cached memory
#   sweep:    memory length x question length, full prefill vs the cached memory
# TTFT is measured in-process with full and reuse runs interleaved, so machine load hits both alike;
# ratios are robust, absolute milliseconds are not. On a crowded machine, threads=1 avoids OpenMP threads
# spinning against each other. Usage:
#   [THREADS=2] [REPEATS=3] [MEMORY_TOKENS=128,...] [QUESTION_TOKENS=32,256] experiments/kv_reuse.sh [overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SUITE=outputs/suites/kv_reuse
COMMON=(experiment=kv_reuse logger=none threads=${THREADS:-2} experiment.repeats=${REPEATS:-3})
rm -rf "$SUITE"

"$PYTHON" -m memos_lab run -m "${COMMON[@]}" experiment.dialogues=1 experiment.turns=10 \
  experiment.memory_tokens=800 hydra.sweep.dir="$SUITE/dialogue" "$@"
"$PYTHON" -m memos_lab run -m "${COMMON[@]}" experiment.mode=sweep \
  experiment.memory_tokens=${MEMORY_TOKENS:-128,512,800,2048,4096} experiment.question_tokens=${QUESTION_TOKENS:-32,256} \
  experiment.max_new_tokens=8 experiment.compose_memories=0 hydra.sweep.dir="$SUITE/sweep" "$@"

"$PYTHON" -m memos_lab report "$SUITE/dialogue" --out results/kv_reuse/dialogue --metrics \
kv/prefill_tokens_full,kv/prefill_tokens_reuse,kv/saved_frac,kv/theoretical_saved_frac,kv/flops_saved_frac,\
kv/ttft_ms_full_p50,kv/ttft_ms_reuse_p50,kv/ttft_speedup,kv/max_logit_diff,kv/greedy_match_frac,kv/cache_mb,\
kv/cache_kib_per_token,kv/memory_tokens,kv/compose/exact_max_logit_diff,kv/compose/rerotate_max_logit_diff,\
kv/compose/blend_max_logit_diff,kv/compose/naive_max_logit_diff,kv/compose/exact_top1_match_frac,\
kv/compose/rerotate_top1_match_frac,kv/compose/blend_top1_match_frac,kv/compose/naive_top1_match_frac
"$PYTHON" -m memos_lab report "$SUITE/sweep" --out results/kv_reuse/sweep --metrics \
kv/memory_tokens,kv/question_tokens,kv/ttft_ms_full_p50,kv/ttft_ms_reuse_p50,kv/ttft_speedup,kv/saved_frac,kv/flops_saved_frac,kv/max_logit_diff,kv/greedy_match_frac,kv/cache_mb
