#!/usr/bin/env bash
# The service's load and crash figures -> results/service/*.json (see results/service/README.md).
# Each run starts its own server on a fresh temporary root; about 10 minutes in all on 2 shared cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-results/service}
"$PY" experiments/service_load.py --embedder minilm --clients 32 --duration 60 --overhead 50 --out "$OUT/load_minilm.json"
"$PY" experiments/service_load.py --embedder hashing --clients 32 --duration 60 --overhead 50 --out "$OUT/load_hashing.json"
"$PY" experiments/service_load.py --embedder hashing --clients 32 --duration 90 --kills 20 --out "$OUT/kill9_hashing.json"
