#!/usr/bin/env bash
# Retrieval comparison of the four declarative backends on the synthetic dialogues and the LoCoMo dev
# slice (turn-level evidence, categories 1-4), with all-MiniLM-L6-v2, plus the plain baselines
# (BM25, dense, their fusion; each turn indexed alone).
#   experiments/retrieval.sh [LOCOMO_FILE]     (default ../shared/data/locomo/locomo10_dev.json)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOCOMO=${1:-../shared/data/locomo/locomo10_dev.json}
ROOT=outputs/suites/retrieval
COMMON=(experiment=retrieval embedder=minilm embedder.cache_dir=outputs/suites/embedding_cache logger=none threads=2)
# The reader settings every backend uses: each turn indexed together with its neighbours.
READER=(reader.context_turns=1)
rm -rf "$ROOT"  # the embedding cache beside it is kept: same texts, same vectors

$PY -m memos_lab run -m "${COMMON[@]}" "${READER[@]}" memory=general_text,tree_text,vector,graph \
  dataset=locomo dataset.path="$LOCOMO" hydra.sweep.dir=$ROOT/locomo_dev
$PY -m memos_lab run -m "${COMMON[@]}" memory=general_text memory.fusion=bm25,dense,rrf \
  dataset=locomo dataset.path="$LOCOMO" hydra.sweep.dir=$ROOT/locomo_dev_baselines
$PY -m memos_lab run -m "${COMMON[@]}" "${READER[@]}" memory=general_text,tree_text,vector,graph \
  dataset=synthetic_dialogues hydra.sweep.dir=$ROOT/synthetic

$PY -m memos_lab report $ROOT/synthetic $ROOT/locomo_dev $ROOT/locomo_dev_baselines --out results/retrieval \
  --metrics retrieval/recall_all@10,retrieval/multi-hop/recall_all@10,retrieval/temporal/recall_all@10,retrieval/single-hop/recall_all@10,retrieval/recall_any@10,retrieval/ndcg@10,retrieval/search_ms_p50,retrieval/index_mb
