#!/usr/bin/env bash
# The service's load, crash and profile figures -> results/service/*.json (see results/service/README.md).
# Each run starts its own server on a fresh temporary root; 30-90 minutes in all on the 2 shared cores (the 20-kill run most).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-results/service}
"$PY" experiments/service_load.py --embedder minilm --clients 32 --duration 60 --overhead 50 --out "$OUT/load_minilm.json"
"$PY" experiments/service_load.py --embedder hashing --clients 32 --duration 60 --overhead 50 --out "$OUT/load_hashing.json"
"$PY" experiments/service_load.py --embedder minilm --clients 32 --duration 60 --overhead 50 --max-query-batch 0 --out "$OUT/load_minilm_unbatched.json"
"$PY" experiments/service_load.py --embedder minilm --clients 32 --duration 60 --overhead 50 --workers 2 --out "$OUT/load_minilm_workers2.json"
"$PY" experiments/service_load.py --embedder hashing --clients 32 --duration 60 --overhead 50 --workers 2 --out "$OUT/load_hashing_workers2.json"
"$PY" experiments/service_load.py --embedder minilm --clients 32 --duration 60 --workers 2 --out "$OUT/pair_minilm_workers2.json"
"$PY" experiments/service_load.py --embedder minilm --clients 32 --duration 60 --workers 1 --out "$OUT/pair_minilm_workers1.json"
"$PY" experiments/service_load.py --embedder minilm --clients 32 --duration 60 --max-query-batch 0 --out "$OUT/pair_minilm_unbatched.json"
"$PY" experiments/service_load.py --embedder minilm --clients 32 --duration 60 --out "$OUT/pair_minilm_batched.json"
"$PY" experiments/service_load.py --embedder hashing --clients 32 --duration 90 --kills 20 --out "$OUT/kill9_hashing.json"
"$PY" experiments/service_load.py --embedder hashing --clients 32 --duration 30 --kills 5 --out "$OUT/kill9x5_hashing.json"
"$PY" experiments/service_profile.py --embedder hashing --duration 20 --out "$OUT/profile_hashing.json"
"$PY" experiments/mem0_service_load.py --embedder hashing --clients 32 --duration 60 --out "$OUT/mem0_load_hashing.json"
"$PY" experiments/service_profile.py --embedder minilm --duration 20 --out "$OUT/profile_minilm.json"
"$PY" experiments/mem0_service_load.py --embedder minilm --clients 32 --duration 60 --out "$OUT/mem0_load_minilm.json"
