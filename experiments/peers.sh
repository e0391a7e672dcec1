#!/usr/bin/env bash
# Other memory systems in our harness (results/peers/): retrieval on the LoCoMo dev slice (turn-level evidence,
# categories 1-4, all-MiniLM-L6-v2 shared by every system) for mem0 (pip install -e ".[peers]"; infer=false,
# single turns and turns with one neighbour each side) and our four backends with their defaults.
#   experiments/peers.sh [LOCOMO_FILE]     (default ../shared/data/locomo/locomo10_dev.json)
# The embedding cache is shared, so ingest rates measure the systems' own indexing, not MiniLM.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOCOMO=${1:-../shared/data/locomo/locomo10_dev.json}
ROOT=outputs/suites/peers
COMMON=(experiment=retrieval logger=none threads=1 dataset=locomo dataset.path="$LOCOMO" embedder=minilm
        embedder.cache_dir=outputs/suites/embedding_cache)
METRICS=retrieval/recall_all@10,retrieval/recall@10,retrieval/multi-hop/recall_all@10,retrieval/temporal/recall_all@10,retrieval/open-domain/recall_all@10,retrieval/single-hop/recall_all@10,retrieval/ingest_items_per_s,retrieval/search_ms_p50
rm -rf "$ROOT"
$PY -m memos_lab run -m "${COMMON[@]}" memory=mem0 reader.context_turns=0,1 hydra.sweep.dir=$ROOT/retrieval/mem0
$PY -m memos_lab run -m "${COMMON[@]}" memory=general_text,tree_text,vector,graph hydra.sweep.dir=$ROOT/retrieval/ours
$PY -m memos_lab report $ROOT/retrieval/* --out results/peers/retrieval --metrics "$METRICS" --note "made by experiments/peers.sh"
