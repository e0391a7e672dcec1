#!/usr/bin/env bash
# The answer-level QA table on the LoCoMo dev slice, SmolLM2-135M answering locally:
#   1. baselines: no memory (context=none), the gold evidence only (context=oracle), the whole conversation cut
#      from the oldest end to FULL_TOKENS tokens (context=full, FULL_FORM=kv: one cached prefix per
#      conversation). FULL_TOKENS defaults to 2048, not SmolLM2's 8,192-token window: an 8k prefill costs
#      minutes of CPU per conversation on the shared machine; FULL_TOKENS=0 uses the model's own window.
#   2. the four declarative backends (general_text, tree_text, vector, graph), top-10 retrieval, MiniLM
#   3. general_text once more in the kv form (same prompts from the activation memory: same answers, TTFT)
#   report: one table over parts 1-3                                               -> results/qa/
#   speed: answers/s of the local answerer, batches of 8 against one question at a time -> results/qa/speed/
# Every configuration answers the same seeded subset: PER_GROUP questions per conversation and category
# (experiment.max_questions, recorded in each run's config). Wall time per part -> results/qa/wall_time.md.
# Usage: experiments/qa.sh [part ...]   (default: 1 2 3 report speed)
# LOCOMO=FILE points it at another LoCoMo json (default: the shared dev slice); PER_GROUP=N (default 1).
# On a served answerer and judge (results/qa/README.md): EXTRA="llm=openai_compatible llm.base_url=URL
# llm.model=NAME judge=openai_compatible judge.generator.base_url=URL judge.generator.model=JUDGE"
# FULL_FORM=text FULL_TOKENS=<its context> experiments/qa.sh 1 2 report   (kv needs local weights)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOCOMO=${LOCOMO:-/work/shared/data/locomo/locomo10_dev.json}
PER_GROUP=${PER_GROUP:-1}
FULL_TOKENS=${FULL_TOKENS:-2048}
FULL_FORM=${FULL_FORM:-kv}
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
  timed "baseline full ($FULL_FORM)" $PY -m memos_lab run -m "${COMMON[@]}" experiment.context=full \
    "experiment.form=$FULL_FORM" \
    "${full[@]}" hydra.sweep.dir="$SUITE/full"
}

part2() {
  rm -rf "$SUITE/backends"
  timed "backends x4" $PY -m memos_lab run -m "${COMMON[@]}" memory=general_text,tree_text,vector,graph \
    hydra.sweep.dir="$SUITE/backends"
}

part3() {
  rm -rf "$SUITE/kv"
  timed "general_text kv" $PY -m memos_lab run -m "${COMMON[@]}" memory=general_text experiment.form=kv \
    hydra.sweep.dir="$SUITE/kv"
}

speed() {  # the answerer alone: hashing retrieval (ingest in no time), 2 conversations x 4 per category
  rm -rf "$SUITE/speed"
  timed "speed batch 1 vs 8" $PY -m memos_lab run -m experiment=qa dataset=locomo "dataset.path=$LOCOMO" \
    dataset.limit=2 logger=none threads=1 embedder=hashing experiment.max_questions=4 experiment.max_new_tokens=16 \
    llm.batch_size=1,8 hydra.sweep.dir="$SUITE/speed"
  $PY -m memos_lab report "$SUITE/speed" --out results/qa/speed --note "experiments/qa.sh speed" \
    --metrics qa/answers_per_s,qa/f1,latency/answer_ms_p50,latency/ttft_ms_p50,qa/prompt_tokens_mean,qa/questions
}

report() {
  local judged=""  # qa/j exists only where a judge was configured
  [[ " ${EXTRA[*]} " == *" judge="* ]] && judged="qa/j,"
  local kv=()
  [ -d "$SUITE/kv" ] && kv=("$SUITE/kv")
  $PY -m memos_lab report "$SUITE/baselines" "$SUITE/full" "$SUITE/backends" "${kv[@]}" --out results/qa \
    --note "experiments/qa.sh, PER_GROUP=$PER_GROUP FULL_TOKENS=$FULL_TOKENS FULL_FORM=$FULL_FORM" \
    --metrics ${judged}qa/f1,qa/bleu1,qa/em,qa/evidence_in_context,retrieval/recall_all@10,qa/context_tokens_mean,qa/prompt_tokens_mean,latency/answer_ms_p50,latency/answer_ms_p95,latency/ttft_ms_p50,latency/ttft_ms_p95,latency/kv_build_ms_mean,qa/truncated_questions,qa/adversarial/f1,qa/single-hop/f1,qa/multi-hop/f1,qa/temporal/f1,qa/open-domain/f1,qa/answer_failures
}

mkdir -p results/qa
[ -f "$WALL" ] || printf '# Wall time of experiments/qa.sh\n\n| part | wall | finished |\n| --- | --- | --- |\n' > "$WALL"
for part in "${@:-1 2 3 report speed}"; do
  for p in $part; do
    case $p in
      1|2|3) "part$p" ;;
      report|speed) "$p" ;;
      *) echo "unknown part $p (1, 2, 3, report, speed)" >&2; exit 2 ;;
    esac
  done
done
