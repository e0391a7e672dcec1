#!/usr/bin/env bash
# Composition strategies for activation memory (issue 21) -> results/kv_compose/.
#   qa:    SmolLM2-135M on the LoCoMo dev slice, experiment=qa's retrieved top-10 contexts (MiniLM), a seeded
#          subset: the first CONVERSATIONS conversations, PER_GROUP questions per conversation and category;
#          every strategy x recompute fraction against a full prefill of the same prompt, MAX_NEW greedy
#          answer tokens compared with the text form's, TTFT interleaved with the text form; QA_OVERRIDES
#          appended (e.g. compose.check_layer=4), into qa$QA_TAG/                                 -> qa$QA_TAG/
#   sweep: TTFT against context length on model=random_llama model.preset=$PRESET (random weights: only the
#          timings and the prefill accounting mean anything), MEMORY_TOKENS in 10 memories    -> sweep/
#   scheduling: the scheduling loop (experiment=scheduling experiment.mode=kv, recency, 16 working-memory
#          items) on SmolLM2 and the LoCoMo dev slice, the first SCHED_CONVERSATIONS conversations,
#          SCHED_QUESTIONS evenly spaced questions each, once per strategy of SCHED_STRATEGIES (cacheblend and
#          leading at 15 % recompute), every answer also given in the text form on the same working memory
#          (agreement, TTFT interleaved); SCHED_ENCODE says when each memory's chunk cache is encoded: at
#          `question` time, when first composed, or at `write` time, when added to the cube (off the question's
#          path; experiment.activation.encode_on_write), or both, one run each; JOBS runs at once,
#          SCHED_OVERRIDES appended to each run (e.g. compose.check_layer=4), SCHED_TAG appended to
#          its folder's name <strategy>_<question|write>; cacheblend and leading at SCHED_FRAC -> scheduling/
#   table: one row per strategy x fraction and the agreement/TTFT plot, from the qa and sweep runs
#   scheduling_table: the report of every run under $SUITE/scheduling, into SCHED_RESULTS
# Usage: [CONVERSATIONS=3] [PER_GROUP=1] [MAX_NEW=12] [STRATEGIES=[exact,...]] [FRACS=[0,0.05,...]] [THREADS=2] [PRESET=1b]
#        [QA_OVERRIDES="..."] [QA_TAG=] [MEMORY_TOKENS=512,2048] [SWEEP_STRATEGIES=[rerotate,cacheblend,leading]] [REPEATS=2] [SCHED_CONVERSATIONS=1]
#        [SCHED_QUESTIONS=20] [SCHED_STRATEGIES=exact,naive,rerotate,cacheblend,leading] [SCHED_ENCODE=question,write]
#        [SCHED_OVERRIDES="..."] [SCHED_TAG=] [SCHED_FRAC=0.15] [SCHED_MAX_MB=256] [SCHED_RESULTS=results/kv_compose/scheduling] [JOBS=1]
#        experiments/kv_compose.sh [part ...]
#        (parts: qa sweep scheduling scheduling_table table; default qa sweep table). Timings are in-process and interleaved: ratios are robust,
#        absolute milliseconds depend on the machine's load (recorded in each part's loadavg.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOCOMO=${LOCOMO:-/work/shared/data/locomo/locomo10_dev.json}
CONVERSATIONS=${CONVERSATIONS:-3}
PER_GROUP=${PER_GROUP:-1}
MAX_NEW=${MAX_NEW:-12}
STRATEGIES=${STRATEGIES:-[exact,naive,rerotate,cacheblend,leading]}  # qa: files of conf/compose/
FRACS=${FRACS:-[0,0.05,0.1,0.15,0.25,0.5,1.0]}  # qa: the recompute fractions of cacheblend and leading
PRESET=${PRESET:-1b}
MEMORY_TOKENS=${MEMORY_TOKENS:-512,2048}
SWEEP_STRATEGIES=${SWEEP_STRATEGIES:-[rerotate,cacheblend,leading]}
REPEATS=${REPEATS:-2}
SCHED_CONVERSATIONS=${SCHED_CONVERSATIONS:-1}
SCHED_QUESTIONS=${SCHED_QUESTIONS:-20}
SCHED_STRATEGIES=${SCHED_STRATEGIES:-exact,naive,rerotate,cacheblend,leading}
SCHED_ENCODE=${SCHED_ENCODE:-question,write}
SCHED_OVERRIDES=${SCHED_OVERRIDES:-}
SCHED_MAX_MB=${SCHED_MAX_MB:-256}
SCHED_TAG=${SCHED_TAG:-}
SCHED_FRAC=${SCHED_FRAC:-0.15}
SCHED_RESULTS=${SCHED_RESULTS:-results/kv_compose/scheduling}
JOBS=${JOBS:-1}
QA_OVERRIDES=${QA_OVERRIDES:-}
QA_TAG=${QA_TAG:-}
SUITE=outputs/suites/kv_compose
COMMON=(experiment=kv_compose logger=none "threads=${THREADS:-2}")

qa() {
  local dir="$SUITE/qa$QA_TAG" extra=()
  read -ra extra <<< "$QA_OVERRIDES"
  rm -rf "$dir" && mkdir -p "$dir"
  echo "before: $(cat /proc/loadavg)" > "$dir/loadavg.txt"
  $PY -m memos_lab run -m "${COMMON[@]}" dataset=locomo "dataset.path=$LOCOMO" "dataset.limit=$CONVERSATIONS" \
    "experiment.max_questions=$PER_GROUP" "experiment.max_new_tokens=$MAX_NEW" "experiment.strategies=$STRATEGIES" \
    "experiment.recompute_fracs=$FRACS" "${extra[@]}" hydra.sweep.dir="$dir"
  echo "after: $(cat /proc/loadavg)" >> "$dir/loadavg.txt"
}

sweep() {
  rm -rf "$SUITE/sweep" && mkdir -p "$SUITE/sweep"
  echo "before: $(cat /proc/loadavg)" > "$SUITE/sweep/loadavg.txt"
  $PY -m memos_lab run -m "${COMMON[@]}" experiment.mode=sweep model=random_llama "model.preset=$PRESET" \
    "experiment.memory_tokens=$MEMORY_TOKENS" experiment.chunks=10 "experiment.strategies=$SWEEP_STRATEGIES" \
    "experiment.recompute_fracs=[0.15]" "experiment.repeats=$REPEATS" experiment.max_new_tokens=0 hydra.sweep.dir="$SUITE/sweep"
  echo "after: $(cat /proc/loadavg)" >> "$SUITE/sweep/loadavg.txt"
}

schedule_one() {  # strategy $1, chunks encoded at $2 (question|write), into $SUITE/scheduling/<strategy>_<when><tag>
  local fraction=() extra=()
  case $1 in cacheblend|leading) fraction=("compose.recompute_frac=$SCHED_FRAC") ;; esac
  read -ra extra <<< "$SCHED_OVERRIDES"
  $PY -m memos_lab run experiment=scheduling logger=none "threads=${THREADS:-1}" model=smollm2 scheduler=recency \
    experiment.mode=kv experiment.working_memory.max_items=16 "compose=$1" "${fraction[@]}" experiment.compare_text=true \
    "experiment.activation.encode_on_write=$([ "$2" = write ] && echo true || echo false)" \
    "experiment.activation.max_mb=$SCHED_MAX_MB" dataset=locomo "dataset.path=$LOCOMO" \
    "experiment.max_conversations=$SCHED_CONVERSATIONS" "experiment.max_questions=$SCHED_QUESTIONS" \
    "experiment.max_new_tokens=$MAX_NEW" "${extra[@]}" hydra.run.dir="$SUITE/scheduling/$1_$2$SCHED_TAG"
}

scheduling() {  # replaces the runs it makes and keeps the others, so the table can gather several calls
  mkdir -p "$SUITE/scheduling"
  echo "before ($SCHED_STRATEGIES x $SCHED_ENCODE): $(cat /proc/loadavg)" >> "$SUITE/scheduling/loadavg.txt"
  local name when
  for name in ${SCHED_STRATEGIES//,/ }; do
    for when in ${SCHED_ENCODE//,/ }; do
      case $when in question|write) ;; *) echo "SCHED_ENCODE: $when is not question or write" >&2; exit 2 ;; esac
      rm -rf "$SUITE/scheduling/${name}_$when$SCHED_TAG"
      schedule_one "$name" "$when" &
      while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    done
  done
  wait
  echo "after ($SCHED_STRATEGIES x $SCHED_ENCODE): $(cat /proc/loadavg)" >> "$SUITE/scheduling/loadavg.txt"
}

scheduling_table() {
  local out=$SCHED_RESULTS
  mkdir -p "$out"
  cp "$SUITE/scheduling/loadavg.txt" "$out/loadavg.txt"
  $PY -m memos_lab report "$SUITE/scheduling" --out "$out" --note "experiments/kv_compose.sh scheduling (one call per row group, listed in results/kv_compose/README.md; each run's overrides are in runs.csv), then experiments/kv_compose.sh scheduling_table" \
    --metrics sched/prefill_saved_frac,sched/compute_saved_with_writes_frac,sched/kv_write_encoded_tokens,sched/kv_write_encode_s,sched/kv_recomputed_frac,sched/kv_encoded_frac,sched/kv_hit_rate,sched/first_token_agreement,sched/answer_agreement,latency/ttft_ms_p50,latency/text_ttft_ms_p50,sched/ttft_speedup,sched/kv_bytes_copied_mean,qa/context_tokens_mean,qa/questions,qa/f1
}

table() {
  local part
  for part in "qa$QA_TAG" sweep; do
    [ -d "$SUITE/$part" ] || continue
    mkdir -p "results/kv_compose/$part"
    cp "$SUITE/$part/loadavg.txt" "results/kv_compose/$part/loadavg.txt"
    $PY -m memos_lab report "$SUITE/$part" --out "results/kv_compose/$part" --note "experiments/kv_compose.sh $part"
    $PY experiments/kv_compose_table.py "$SUITE/$part" --out "results/kv_compose/$part" \
      --command "experiments/kv_compose.sh ${part%%_*} table (QA_TAG=$QA_TAG QA_OVERRIDES='$QA_OVERRIDES' CONVERSATIONS=$CONVERSATIONS PER_GROUP=$PER_GROUP MAX_NEW=$MAX_NEW STRATEGIES=$STRATEGIES FRACS=$FRACS PRESET=$PRESET MEMORY_TOKENS=$MEMORY_TOKENS SWEEP_STRATEGIES=$SWEEP_STRATEGIES REPEATS=$REPEATS)"
  done
}

for part in "${@:-qa sweep table}"; do
  for p in $part; do
    case $p in
      qa|sweep|scheduling|scheduling_table|table) "$p" ;;
      *) echo "unknown part $p (qa, sweep, scheduling, scheduling_table, table)" >&2; exit 2 ;;
    esac
  done
done
