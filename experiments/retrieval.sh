#!/usr/bin/env bash
# Retrieval on the LoCoMo dev slice (turn-level evidence, categories 1-4) with all-MiniLM-L6-v2:
#   backends    the four declarative backends with the defaults, scored fold by fold over 5 conversation
#               folds; general_text also chooses from CV's grid on the other folds (retrieval/cv/...);
#   baselines   BM25, dense and their fusion (general_text, no search stages) over single turns and over
#               turns with one neighbour each side, scored fold by fold too;
#   ablations   general_text with one search stage switched on beyond the defaults;
#   embedders   ingest speed and recall on one conversation without the embedding cache: torch beside
#               the ONNX embedder (int8 and fp32).
#   experiments/retrieval.sh [LOCOMO_FILE]     (default ../shared/data/locomo/locomo10_dev.json)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOCOMO=${1:-../shared/data/locomo/locomo10_dev.json}
ROOT=outputs/suites/retrieval
BASE=(experiment=retrieval logger=none threads=1 dataset=locomo dataset.path="$LOCOMO")
COMMON=("${BASE[@]}" embedder=minilm embedder.cache_dir=outputs/suites/embedding_cache)
# The candidates each fold chooses from on the other folds; the defaults are what all five folds together choose.
CV=(experiment.folds=5 'experiment.grid=["reader.context_turns=1,2","memory.speaker_weight=0,0.3,1.0"]')
FIXED=(experiment.folds=5)  # no grid: the config as given, scored fold by fold
METRICS=retrieval/recall_all@10,retrieval/cv/recall_all@10,retrieval/multi-hop/recall_all@10,retrieval/temporal/recall_all@10,retrieval/open-domain/recall_all@10,retrieval/single-hop/recall_all@10,retrieval/recall@10,retrieval/recall@5,retrieval/session_recall_all@10,retrieval/search_ms_p50,retrieval/ingest_items_per_s
rm -rf "$ROOT"  # the embedding cache beside it is kept: same texts, same vectors
report() {  # NAME METRICS FOLDER... : one report per part, into results/retrieval/NAME
  local name=$1 metrics=$2; shift 2
  $PY -m memos_lab report "$@" --out results/retrieval/$name --metrics "$metrics" --note "made by experiments/retrieval.sh"
}

# Most important first: on a crowded machine each LoCoMo pass takes minutes, and every part reports on its own.
$PY -m memos_lab run -m "${COMMON[@]}" "${CV[@]}" memory=general_text hydra.sweep.dir=$ROOT/backends/general_text
report backends "$METRICS" $ROOT/backends/*
$PY -m memos_lab run -m "${COMMON[@]}" "${FIXED[@]}" memory=general_text memory.text_weight=0 memory.speaker_weight=0 \
  memory.fusion=rrf,bm25,dense reader.context_turns=1,0 hydra.sweep.dir=$ROOT/baselines
report baselines "$METRICS" $ROOT/baselines
$PY -m memos_lab run -m "${COMMON[@]}" "${FIXED[@]}" memory=vector,tree_text,graph hydra.sweep.dir=$ROOT/backends/others
report backends "$METRICS" $ROOT/backends/*
$PY -m memos_lab run -m "${BASE[@]}" dataset.limit=1 embedder=minilm,minilm_onnx hydra.sweep.dir=$ROOT/embedders/torch_and_int8
$PY -m memos_lab run -m "${BASE[@]}" dataset.limit=1 embedder=minilm_onnx embedder.quantize=none hydra.sweep.dir=$ROOT/embedders/fp32
report embedders retrieval/recall_all@10,retrieval/recall@10,retrieval/ingest_items_per_s,retrieval/search_ms_p50 $ROOT/embedders/*
for stage in memory.speaker_weight=0 memory.feedback_hits=3 memory.diversity=0.3 memory.session_quota=3; do
  name=${stage#memory.}
  $PY -m memos_lab run -m "${COMMON[@]}" "${FIXED[@]}" memory=general_text "$stage" hydra.sweep.dir=$ROOT/ablations/${name/=/_}
done
report ablations "$METRICS" $ROOT/backends/general_text $ROOT/ablations/*
