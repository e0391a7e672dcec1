#!/usr/bin/env bash
# Memory-scheduling policies compared at equal working-memory size (16 items, top-5 retrieval per turn).
#   1. working-memory hit rate on the synthetic dialogues: 5 policies x 3 seeds x 4 conversations, MiniLM,
#      no generation (the hit rate does not depend on the answers)          -> results/scheduling/
#   2. answers with SmolLM2-135M on 1 synthetic conversation (25 questions), working memory of 8 items:
#      lru and recency in kv mode (memories as a cached prefix: the same tokens as text mode, plus the
#      KV-tier hit rate and prefill savings), recency once more in text mode as the latency reference
#                                                                             -> results/scheduling/qa_smollm2/
#   3. hit rate on the LoCoMo dev slice (2 conversations, ~400 turns each)  -> results/scheduling/locomo/
#   4. part 1 with the model-free hashing embedder instead of MiniLM (all 8 conversations; seconds per run)
#                                                                             -> results/scheduling/hashing/
# Usage: experiments/scheduling.sh [part ...]   (default: all parts, e.g. `experiments/scheduling.sh 2 3`)
# LOCOMO=FILE points part 3 at the LoCoMo json (default: the shared dev slice).
# On a larger model: add `model=hf model.name_or_path=<folder or hub id>` to part 2.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOCOMO=${LOCOMO:-/work/shared/data/locomo/locomo10_dev.json}
SUITE=outputs/suites/scheduling
POLICIES=lru,lfu,recency,relevance,memos
COMMON=(experiment=scheduling logger=none threads=1)

part1() {
  rm -rf "$SUITE/synthetic"
  $PY -m memos_lab run -m "${COMMON[@]}" "scheduler=$POLICIES" experiment.answer=false dataset.n_conversations=4 \
    seed=0,1,2 hydra.sweep.dir="$SUITE/synthetic"
  $PY -m memos_lab report "$SUITE/synthetic" --out results/scheduling \
    --metrics sched/working_hit_rate,sched/working_hit_rate_any,sched/working_tokens_mean
}

part2() {
  rm -rf "$SUITE/qa_smollm2" "$SUITE/qa_smollm2_text"
  local small=(dataset.n_conversations=1 experiment.working_memory.max_items=8)
  $PY -m memos_lab run -m "${COMMON[@]}" scheduler=lru,recency experiment.mode=kv "${small[@]}" \
    hydra.sweep.dir="$SUITE/qa_smollm2"
  $PY -m memos_lab run -m "${COMMON[@]}" scheduler=recency experiment.mode=text "${small[@]}" \
    hydra.sweep.dir="$SUITE/qa_smollm2_text"
  $PY -m memos_lab report "$SUITE/qa_smollm2" "$SUITE/qa_smollm2_text" --out results/scheduling/qa_smollm2 \
    --metrics sched/working_hit_rate,qa/f1,qa/em,sched/prefill_saved_frac,latency/answer_ms_p50,latency/answer_ms_p95,latency/ttft_ms_p50,qa/context_tokens_mean
}

part3() {
  rm -rf "$SUITE/locomo"
  $PY -m memos_lab run -m "${COMMON[@]}" "scheduler=$POLICIES" experiment.answer=false dataset=locomo \
    dataset.path="$LOCOMO" experiment.max_conversations=2 hydra.sweep.dir="$SUITE/locomo"
  $PY -m memos_lab report "$SUITE/locomo" --out results/scheduling/locomo \
    --metrics sched/working_hit_rate,sched/working_hit_rate_any
}

part4() {
  rm -rf "$SUITE/hashing"
  $PY -m memos_lab run -m "${COMMON[@]}" "scheduler=$POLICIES" experiment.answer=false embedder=hashing \
    seed=0,1,2 hydra.sweep.dir="$SUITE/hashing"
  $PY -m memos_lab report "$SUITE/hashing" --out results/scheduling/hashing \
    --metrics sched/working_hit_rate,sched/working_hit_rate_any,sched/working_tokens_mean
}

for part in "${@:-1 2 3 4}"; do
  for p in $part; do
    case $p in
      1|2|3|4) "part$p" ;;
      *) echo "unknown part $p (1 to 4)" >&2; exit 2 ;;
    esac
  done
done
