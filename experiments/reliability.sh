#!/usr/bin/env bash
# Reliability (issues 17, 22): kill -9 during dump / save / load, concurrent writers into one cube and one MOS
# root, filtered ANN search with soft-deleted items, the longest a hostile server holds one served question,
# and (when FUZZ=1) the fuzz campaign (fuzz/: artifacts, a hostile server, hostile run folders for `report`).
#   experiments/reliability.sh          (about 10 minutes on 2 busy cores; FUZZ=1 adds the fuzz campaign)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=results/reliability
RUNS=outputs/suites/reliability
mkdir -p "$OUT"
rm -rf "$RUNS"

FUZZ_COMMAND="python -m fuzz --examples 5000 --seed 0 --max-seconds 1380 --out $OUT/fuzz.json"
if [[ "${FUZZ:-0}" == 1 ]]; then
  $FUZZ_COMMAND
fi
# One question to a server that drips a byte a second, streams forever or never ends its body, against the
# stated bound timeout_s x (max_retries + 1) + backoff (about a minute).
$PY -m fuzz.drip --timeout-s 3 --max-retries 2 --out $OUT/drip.json

for kind in dump save load; do
  $PY experiments/reliability.py kill $kind 20 $OUT/kill_$kind.json
done
for writers in 2 4; do
  $PY experiments/reliability.py writers $writers 20 $OUT/writers_$writers.json
done

# 50k random unit vectors (384-d), HNSW M=16 efConstruction=100 efSearch=128, dense ranking, top 10 from 100
# candidates; the same store with 0% and 10% of its items soft-deleted at random.
ANN=(experiment=scaling embedder=hashing embedder.dim=384 logger=none threads=1 memory=vector memory.index_type=hnsw
     memory.hnsw_m=16 memory.ef_construction=100 memory.fusion=dense experiment.size=50000 experiment.ingest_sample=100)
$PY -m memos_lab run -m "${ANN[@]}" experiment.deleted_fraction=0.0,0.1 hydra.sweep.dir=$RUNS/ann

$PY experiments/reliability.py readme $OUT "python -m memos_lab run -m ${ANN[*]} experiment.deleted_fraction=0.0,0.1" \
  "$FUZZ_COMMAND" $RUNS/ann/0 $RUNS/ann/1
