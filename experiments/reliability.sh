#!/usr/bin/env bash
# Reliability (issue 17): kill -9 during dump / save / load, concurrent writers into one cube and one MOS
# root, filtered ANN search with soft-deleted items, and (when FUZZ=1) h-artifact's fuzz campaign.
#   experiments/reliability.sh          (about 10 minutes on 2 busy cores; FUZZ=1 adds the fuzz campaign)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=results/reliability
RUNS=outputs/suites/reliability
mkdir -p "$OUT"
rm -rf "$RUNS"

FUZZ_COMMAND="python -m memos_lab.fuzz --examples 5000 --seed 0 --out $OUT/fuzz.json"
if [[ "${FUZZ:-0}" == 1 ]]; then
  $FUZZ_COMMAND
fi

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
