#!/usr/bin/env bash
# The answer-level QA table on the LoCoMo dev slice, SmolLM2-135M answering locally:
#   1. baselines: no memory (context=none), the gold evidence only (context=oracle), the whole conversation cut
#      to FULL_TOKENS tokens (context=full, kv form: one cached prefix per conversation; default 2048, not
#      SmolLM2's 8,192-token window: an 8k prefill costs minutes of CPU per conversation on the shared machine;
#      FULL_TOKENS=0 uses the model's own window)
#   2. the four declarative backends (general_text, tree_text, vector, graph), top-10 retrieval, MiniLM
#   then one report over all of them                                              -> results/qa/
#   3. speed: answers/s with batched generation against one question at a time    -> results/qa/speed/
# Every configuration answers the same seeded subset: PER_GROUP questions per conversation and category
# (experiment.max_questions, recorded in each run's config). Wall time per part -> results/qa/wall_time.md.
# Usage: experiments/qa.sh [part ...]   (default: 1 2 report)
# LOCOMO=FILE points it at another LoCoMo json (default: the shared dev slice); PER_GROUP=N (default 1).
# On a served model and judge (see results/qa/README.md): EXTRA="llm=... judge=..." experiments/qa.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOCOMO=${LOCOMO:-/work/shared/data/locomo/locomo10_dev.json}
PER_GROUP=${PER_GROUP:-1}
FULL_TOKENS=${FULL_TOKENS:-2048}
SUITE=outputs/suites/qa
read -r -a EXTRA <<< "${EXTRA:-}"
COMMON=(experiment=qa dataset=locomo "dataset.path=$LOCOMO" logger=none threads=1
        "experiment.max_questions=$PER_GROUP" experiment.max_new_tokens=16 "${EXTRA[@]}")
WALL=results/qa/wall_time.md

timed() {  # timed NAME COMMAND...: run it and append its wall time to $WALL
  local name=$1 started=$SECONDS
  shift
  "$@"
  echo "| $name | $((SECONDS - started)) s | $(date -u +%Y-%m-%dT%H:%MZ) |" >> "$WALL"
}

part1() {
  rm -rf "$SUITE/baselines" "$SUITE/full"
  timed "baselines none, oracle" $PY -m memos_lab run -m "${COMMON[@]}" experiment.context=none,oracle \
    hydra.sweep.dir="$SUITE/baselines"
  local full=()
  [ "$FULL_TOKENS" = 0 ] || full=("experiment.full_context_tokens=$FULL_TOKENS")
  timed "baseline full (kv)" $PY -m memos_lab run -m "${COMMON[@]}" experiment.context=full experiment.form=kv \
    "${full[@]}" hydra.sweep.dir="$SUITE/full"
}

part2() {
  rm -rf "$SUITE/backends"
  timed "backends x4" $PY -m memos_lab run -m "${COMMON[@]}" memory=general_text,tree_text,vector,graph \
    hydra.sweep.dir="$SUITE/backends"
}

report() {
  local judged=""  # qa/j exists only where a judge was configured
  [[ " ${EXTRA[*]} " == *" judge="* ]] && judged="qa/j,"
  $PY -m memos_lab report "$SUITE/baselines" "$SUITE/full" "$SUITE/backends" --out results/qa \
    --note "experiments/qa.sh, PER_GROUP=$PER_GROUP FULL_TOKENS=$FULL_TOKENS" \
    --metrics ${judged}qa/f1,qa/bleu1,qa/em,qa/evidence_in_context,retrieval/recall_all@10,qa/context_tokens_mean,qa/prompt_tokens_mean,latency/answer_ms_p50,latency/answer_ms_p95,latency/ttft_ms_p50,latency/ttft_ms_p95,qa/truncated_questions,qa/adversarial/f1,qa/single-hop/f1,qa/multi-hop/f1,qa/temporal/f1,qa/open-domain/f1,qa/answer_failures
}

mkdir -p results/qa
[ -f "$WALL" ] || printf '# Wall time of experiments/qa.sh\n\n| part | wall | finished |\n| --- | --- | --- |\n' > "$WALL"
for part in "${@:-1 2 report}"; do
  for p in $part; do
    case $p in
      1|2) "part$p" ;;
      report) report ;;
      *) echo "unknown part $p (1, 2, report)" >&2; exit 2 ;;
    esac
  done
done
