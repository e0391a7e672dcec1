#!/usr/bin/env bash
# Scaling of the declarative backends: search latency (p50/p95), index memory and ingest speed from 1k
# to 100k items. Synthetic items with precomputed random unit vectors (384-d, MiniLM's size) and
# pre-encoded queries, so the times are the index's own; one extra run times end-to-end ingest with MiniLM.
#   experiments/scaling.sh          (about 15 minutes on 2 busy cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ROOT=outputs/suites/scaling
COMMON=(experiment=scaling embedder=hashing embedder.dim=384 logger=none threads=1)
rm -rf "$ROOT"

# HNSW with M=16, efConstruction=100 (a quicker build than the retrieval default of 32/200), efSearch=128.
HNSW=(memory=vector memory.index_type=hnsw memory.hnsw_m=16 memory.ef_construction=100)
$PY -m memos_lab run -m "${COMMON[@]}" "${HNSW[@]}" memory.fusion=dense,rrf experiment.size=1000,10000,100000 \
  hydra.sweep.dir=$ROOT/vector_hnsw
$PY -m memos_lab run -m "${COMMON[@]}" memory=vector memory.index_type=flat,ivf memory.fusion=dense \
  experiment.size=1000,10000,100000 hydra.sweep.dir=$ROOT/vector_flat_ivf
$PY -m memos_lab run -m "${COMMON[@]}" memory=general_text experiment.size=1000,10000,100000 hydra.sweep.dir=$ROOT/general_text
# k-means topics and the networkx graph are built for research-sized stores; measured up to 10k.
$PY -m memos_lab run -m "${COMMON[@]}" memory=tree_text,graph experiment.size=1000,10000 hydra.sweep.dir=$ROOT/structured
# End-to-end ingest through the real embedder (all-MiniLM-L6-v2): the rate loading real text reaches.
$PY -m memos_lab run -m experiment=scaling logger=none threads=2 memory=vector experiment.vectors=embedder \
  experiment.size=1000 experiment.ingest_sample=2000 hydra.sweep.dir=$ROOT/minilm_ingest

$PY -m memos_lab report $ROOT/vector_hnsw $ROOT/vector_flat_ivf $ROOT/general_text $ROOT/structured $ROOT/minilm_ingest \
  --out results/scaling \
  --metrics scaling/search_ms_p50,scaling/search_ms_p95,scaling/index_mb,scaling/build_items_per_s,scaling/ingest_items_per_s
