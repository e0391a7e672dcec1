#!/usr/bin/env bash
# The two cells of experiments/scaling.sh that carry issue 3's targets, quick enough to rerun alone:
# vector/HNSW search p50 at 1k, 10k, 100k items (random 384-d unit vectors) and end-to-end ingest
# through all-MiniLM-L6-v2. Writes results/scaling_targets/. About 2 minutes on 2 quiet cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ROOT=outputs/suites/scaling_targets
rm -rf "$ROOT"
$PY -m memos_lab run -m experiment=scaling embedder=hashing embedder.dim=384 logger=none threads=2 \
  memory=vector memory.index_type=hnsw memory.hnsw_m=16 memory.ef_construction=100 memory.fusion=dense \
  experiment.size=1000,10000,100000 hydra.sweep.dir=$ROOT/vector_hnsw
$PY -m memos_lab run -m experiment=scaling logger=none threads=2 memory=vector experiment.vectors=embedder \
  experiment.size=1000 experiment.ingest_sample=2000 hydra.sweep.dir=$ROOT/minilm_ingest
$PY -m memos_lab report $ROOT/vector_hnsw $ROOT/minilm_ingest --out results/scaling_targets \
  --metrics scaling/search_ms_p50,scaling/search_ms_p95,scaling/index_mb,scaling/build_items_per_s,scaling/ingest_items_per_s
