#!/usr/bin/env bash
# Memory-scheduling policies compared at equal working-memory size (16 items, top-5 retrieval per turn).
#   1. working-memory hit rate on the synthetic dialogues: 5 policies x 3 seeds x 4 conversations, MiniLM,
#      no generation (the hit rate does not depend on the answers)  -> results/scheduling/
#   2. answer quality and latency with SmolLM2-135M, memories as text, 2 conversations (50 questions)
#                                                                     -> results/scheduling/qa_smollm2/
#   3. hit rate on the LoCoMo dev slice (2 conversations), when dataset=locomo is available
#                                                                     -> results/scheduling/locomo/
# Usage: experiments/scheduling.sh [part ...]   (default: all parts; e.g. `experiments/scheduling.sh 1`)
# On a larger model: add `model=hf model.name_or_path=<folder or hub id>` to part 2.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SUITE=outputs/suites/scheduling
POLICIES=lru,lfu,recency,relevance,memos
COMMON=(experiment=scheduling logger=none threads=1 "scheduler=$POLICIES")
PARTS=("${@:-1 2 3}")

for part in ${PARTS[@]}; do
  case $part in
    1)
      rm -rf "$SUITE/synthetic"
      $PY -m memos_lab run -m "${COMMON[@]}" experiment.answer=false dataset.n_conversations=4 seed=0,1,2 \
        hydra.sweep.dir="$SUITE/synthetic"
      $PY -m memos_lab report "$SUITE/synthetic" --out results/scheduling \
        --metrics sched/working_hit_rate,sched/working_hit_rate_any,sched/working_tokens_mean
      ;;
    2)
      rm -rf "$SUITE/qa_smollm2"
      $PY -m memos_lab run -m "${COMMON[@]}" experiment.mode=text dataset.n_conversations=2 \
        hydra.sweep.dir="$SUITE/qa_smollm2"
      $PY -m memos_lab report "$SUITE/qa_smollm2" --out results/scheduling/qa_smollm2 \
        --metrics sched/working_hit_rate,qa/f1,qa/em,latency/answer_ms_p50,latency/answer_ms_p95,qa/context_tokens_mean
      ;;
    3)
      rm -rf "$SUITE/locomo"
      $PY -m memos_lab run -m "${COMMON[@]}" experiment.answer=false dataset=locomo \
        dataset.path=../shared/data/locomo/locomo10_dev.json experiment.max_conversations=2 \
        hydra.sweep.dir="$SUITE/locomo"
      $PY -m memos_lab report "$SUITE/locomo" --out results/scheduling/locomo \
        --metrics sched/working_hit_rate,sched/working_hit_rate_any
      ;;
    *) echo "unknown part $part (1, 2 or 3)" >&2; exit 2 ;;
  esac
done
