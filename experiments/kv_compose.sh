#!/usr/bin/env bash
# Composition strategies for activation memory (issue 21) -> results/kv_compose/.
#   qa:    SmolLM2-135M on the LoCoMo dev slice, experiment=qa's retrieved top-10 contexts (MiniLM), a seeded
#          subset: the first CONVERSATIONS conversations, PER_GROUP questions per conversation and category;
#          every strategy x recompute fraction against a full prefill of the same prompt, MAX_NEW greedy
#          answer tokens compared with the text form's, TTFT interleaved with the text form      -> qa/
#   sweep: TTFT against context length on model=random_llama model.preset=$PRESET (random weights: only the
#          timings and the prefill accounting mean anything), MEMORY_TOKENS in 10 memories    -> sweep/
#   table: one row per strategy x fraction and the agreement/TTFT plot, from each part's runs
# Usage: [CONVERSATIONS=3] [PER_GROUP=1] [MAX_NEW=12] [STRATEGIES=[exact,...]] [FRACS=[0,0.05,...]] [THREADS=2] [PRESET=1b] [MEMORY_TOKENS=512,2048]
#        [SWEEP_STRATEGIES=[rerotate,cacheblend,leading]] [REPEATS=2] experiments/kv_compose.sh [part ...]
#        (parts: qa sweep table; default all). Timings are in-process and interleaved: ratios are robust,
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
SUITE=outputs/suites/kv_compose
COMMON=(experiment=kv_compose logger=none "threads=${THREADS:-2}")

qa() {
  rm -rf "$SUITE/qa" && mkdir -p "$SUITE/qa"
  echo "before: $(cat /proc/loadavg)" > "$SUITE/qa/loadavg.txt"
  $PY -m memos_lab run -m "${COMMON[@]}" dataset=locomo "dataset.path=$LOCOMO" "dataset.limit=$CONVERSATIONS" \
    "experiment.max_questions=$PER_GROUP" "experiment.max_new_tokens=$MAX_NEW" "experiment.strategies=$STRATEGIES" \
    "experiment.recompute_fracs=$FRACS" hydra.sweep.dir="$SUITE/qa"
  echo "after: $(cat /proc/loadavg)" >> "$SUITE/qa/loadavg.txt"
}

sweep() {
  rm -rf "$SUITE/sweep" && mkdir -p "$SUITE/sweep"
  echo "before: $(cat /proc/loadavg)" > "$SUITE/sweep/loadavg.txt"
  $PY -m memos_lab run -m "${COMMON[@]}" experiment.mode=sweep model=random_llama "model.preset=$PRESET" \
    "experiment.memory_tokens=$MEMORY_TOKENS" experiment.chunks=10 "experiment.strategies=$SWEEP_STRATEGIES" \
    "experiment.recompute_fracs=[0.15]" "experiment.repeats=$REPEATS" experiment.max_new_tokens=0 hydra.sweep.dir="$SUITE/sweep"
  echo "after: $(cat /proc/loadavg)" >> "$SUITE/sweep/loadavg.txt"
}

table() {
  local part
  for part in qa sweep; do
    [ -d "$SUITE/$part" ] || continue
    mkdir -p "results/kv_compose/$part"
    cp "$SUITE/$part/loadavg.txt" "results/kv_compose/$part/loadavg.txt"
    $PY -m memos_lab report "$SUITE/$part" --out "results/kv_compose/$part" --note "experiments/kv_compose.sh $part"
    $PY experiments/kv_compose_table.py "$SUITE/$part" --out "results/kv_compose/$part" \
      --command "experiments/kv_compose.sh $part table (CONVERSATIONS=$CONVERSATIONS PER_GROUP=$PER_GROUP MAX_NEW=$MAX_NEW STRATEGIES=$STRATEGIES FRACS=$FRACS PRESET=$PRESET MEMORY_TOKENS=$MEMORY_TOKENS SWEEP_STRATEGIES=$SWEEP_STRATEGIES REPEATS=$REPEATS)"
  done
}

for part in "${@:-qa sweep table}"; do
  for p in $part; do
    case $p in
      qa|sweep|table) "$p" ;;
      *) echo "unknown part $p (qa, sweep, table)" >&2; exit 2 ;;
    esac
  done
done
