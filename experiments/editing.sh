#!/usr/bin/env bash
# Knowledge editing on SmolLM2-135M (fp32, CPU) -> results/editing/, most important cells first:
#   zsRE dev, 100 edits in one batch:            alphaedit, memit, rome   (BASELINES, gradient LoRA: their own cell)
#   zsRE dev, 10 sequential batches of 10:       alphaedit
#   CounterFact dev, one batch / sequential:     alphaedit, memit / alphaedit
#   synthetic facts, one batch:                  alphaedit
#   zsRE dev records 167-292 (73 edits; the settings were chosen on records 0-99): alphaedit
#   zsRE dev, 100 edits, statistics from 40000 model-sampled tokens instead: alphaedit
# One edit per subject (experiment.repeated_subjects=first): the first 100 distinct zsRE subjects are
# records 0-166. About 6 min per 100-edit editor run on 2 quiet cores (~70 min in all). The gradient-LoRA
# baselines are off by default (BASELINES=gated_lora,lora_kl adds the zsRE batch cell zsre_batch_baselines).
# DATA=../shared/data by default (zsre/zsre_dev.json, counterfact/counterfact_dev.json; read, never copied).
# The key statistics (20000 tokens of the synthetic-dialogue corpus per model) are computed by the first
# run and cached under paths.cache_dir. Usage: experiments/editing.sh [extra hydra overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DATA=${DATA:-../shared/data}
ROOT=${ROOT:-outputs/suites/editing}
BASELINES=${BASELINES-}
RUN=(nice -n "${NICE:-0}" "$PY" -m memos_lab run -m experiment=lora_update logger=none threads="${THREADS:-2}")
ZSRE=(dataset=zsre "dataset.path=$DATA/zsre/zsre_dev.json")
COUNTERFACT=(dataset=counterfact "dataset.path=$DATA/counterfact/counterfact_dev.json")
SEQUENTIAL=(experiment.n_batches=10)

cell() {  # cell NAME METHODS OVERRIDES...
  local name=$1 methods=$2
  shift 2
  "${RUN[@]}" experiment.n_edits=100 parametric="$methods" "$@" "${EXTRA[@]}" hydra.sweep.dir="$ROOT/$name"
}
EXTRA=("$@")
cell zsre_batch alphaedit,memit,rome "${ZSRE[@]}"
if [ -n "$BASELINES" ]; then cell zsre_batch_baselines "$BASELINES" "${ZSRE[@]}"; fi
cell zsre_sequential alphaedit "${ZSRE[@]}" "${SEQUENTIAL[@]}"
cell counterfact_batch alphaedit,memit "${COUNTERFACT[@]}"
cell counterfact_sequential alphaedit "${COUNTERFACT[@]}" "${SEQUENTIAL[@]}"
cell synthetic_batch alphaedit dataset=synthetic_facts
cell zsre_heldout_batch alphaedit "${ZSRE[@]}" experiment.first_edit=167
# how much the result depends on the statistics corpus: the first cell's alphaedit on model-sampled text
cell zsre_batch_model_corpus alphaedit "${ZSRE[@]}" parametric.stats_corpus=model parametric.stats_tokens=40000

METRICS=lora/edits,lora/skipped_repeats,lora/reliability,lora/generalization,lora/locality,lora/retention,lora/reliability_token,lora/generalization_token,lora/locality_token,lora/reliability_prob,lora/generalization_prob,lora/neighborhood_prob,lora/fluency,lora/fluency_base,lora/train_s_per_100_edits
for run in "$ROOT"/*/; do  # each cell's table has the wanted metrics its runs measured
  have=$("$PY" -c 'import glob, json, sys
names = set().union(*(json.load(open(f)) for f in glob.glob(sys.argv[1] + "*/metrics.json")))
print(",".join(m for m in sys.argv[2].split(",") if m in names))' "$run" "$METRICS")
  "$PY" -m memos_lab report "$run" --out "results/editing/$(basename "$run")" --metrics "$have"
done
