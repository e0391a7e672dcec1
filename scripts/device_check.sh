#!/usr/bin/env bash
# GPU check of memos_lab (issue 12), for a single-GPU machine with torch (CUDA), transformers and accelerate
# but only this repository copied over: no weights, no network. Target: under 6 minutes. Usage:
#
#   scripts/device_check.sh OUTDIR                 # on the GPU machine
#   scripts/device_check.sh OUTDIR --cpu-smoke     # the same steps, tiny and on the CPU (what CI can run)
#   scripts/device_check.sh --fetch-wheels DIR     # here, with network: the wheels the GPU machine lacks
#
# Steps (each logged into OUTDIR/device_check.log; a failed step is recorded and the next one still runs):
#   1. the test subset marked `gpu` (pytest -m gpu);
#   2. experiment=kv_reuse in sweep mode on model=random_llama model.preset=8b dtype=bf16 device=cuda,
#      memory 512/2048/8192 tokens + a 32-token question;
#   3. the main job, the scheduling answer loop (experiment=scheduling) on random_llama preset 1b, with
#      device=cuda and then device=cpu, for the speed ratio;
#   4. experiment=kv_compose in sweep mode on the 8b shape (bf16, cuda): 8,192 memory tokens in 10 memories,
#      full prefill versus exact / rerotate / cacheblend and leading at 15 % recompute (TTFT, prefill saved).
# OUTDIR/metrics.json gathers every number (flat, one object); the runs' own folders are under OUTDIR/runs.
#
# Packages the GPU machine lacks (hydra-core, omegaconf, antlr4 4.9.3, tabulate, bm25s) are installed from the
# wheels in $WHEELS (default: ./wheels, ~0.5 MB; make them with --fetch-wheels). logger=none and the hashing
# embedder leave wandb, faiss and MiniLM behind; random_llama needs no weights.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEEL_PACKAGES=(hydra-core==1.3.8 omegaconf==2.3.1 tabulate==0.10.0 bm25s==0.3.16)  # the pins of requirements/constraints.txt

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  dir=${2:?usage: scripts/device_check.sh --fetch-wheels DIR}
  mkdir -p "$dir"
  # cp312 wheels for the GPU machine, whatever Python runs here (all four are pure Python).
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d "$dir" "${WHEEL_PACKAGES[@]}"
  "$PYTHON" -m pip wheel --no-deps -w "$dir" antlr4-python3-runtime==4.9.3  # published only as source
  exit $?
fi

OUT=${1:?usage: scripts/device_check.sh OUTDIR [--cpu-smoke]}
SMOKE=0
[[ "${2:-}" == "--cpu-smoke" ]] && SMOKE=1
mkdir -p "$OUT/runs"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/device_check.log"
: > "$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
STARTED=$(date +%s)

log() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - STARTED ))s] $*" | tee -a "$LOG"; }
step() {  # step NAME COMMAND...: run, log its tail, record its status
  local name=$1; shift
  log "step $name: $*"
  local began=$(date +%s)
  "$@" > "$OUT/$name.out" 2>&1
  local status=$?
  tail -n 5 "$OUT/$name.out" | sed 's/^/    /' >> "$LOG"
  log "step $name: exit $status in $(( $(date +%s) - began ))s"
  echo "$name $status $(( $(date +%s) - began ))" >> "$OUT/steps.txt"
}
: > "$OUT/steps.txt"

if ! "$PYTHON" -c "import hydra, omegaconf, tabulate, bm25s" 2>/dev/null; then
  WHEELS=${WHEELS:-wheels}
  log "installing the missing packages from $WHEELS"
  "$PYTHON" -m pip install --quiet --no-deps --no-index --find-links "$WHEELS" \
    hydra-core omegaconf antlr4-python3-runtime tabulate bm25s >> "$LOG" 2>&1 \
    || { log "missing packages and no wheels in $WHEELS: run scripts/device_check.sh --fetch-wheels $WHEELS first"; exit 2; }
fi
"$PYTHON" - >> "$LOG" 2>&1 <<'EOF'
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF

if (( SMOKE )); then
  DEVICE=cpu; KV=(model=random_llama model.preset=tiny dtype=float32 experiment.memory_tokens=64,128)
  COMPOSE=(model=random_llama model.preset=tiny dtype=float32 experiment.memory_tokens=256)
  MAIN=(model=random_llama model.preset=tiny dataset.n_sessions=2 experiment.max_new_tokens=4); MAIN_DEVICES=(cpu)
else
  DEVICE=cuda; KV=(model=random_llama model.preset=8b dtype=bf16 experiment.memory_tokens=512,2048,8192)
  COMPOSE=(model=random_llama model.preset=8b dtype=bf16 experiment.memory_tokens=8192)
  MAIN=(model=random_llama model.preset=1b dtype=auto dataset.n_sessions=4 experiment.max_new_tokens=16); MAIN_DEVICES=(cuda cpu)
fi
COMMON=(embedder=hashing logger=none)

step gpu_tests "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" ${GPU_TESTS:-tests/models/test_gpu.py}
step kv_reuse "$PYTHON" -m memos_lab run -m experiment=kv_reuse experiment.mode=sweep "${COMMON[@]}" "${KV[@]}" \
  device=$DEVICE experiment.question_tokens=32 experiment.repeats=3 experiment.max_new_tokens=16 \
  hydra.sweep.dir="$OUT/runs/kv_reuse"
step kv_compose "$PYTHON" -m memos_lab run experiment=kv_compose experiment.mode=sweep "${COMMON[@]}" "${COMPOSE[@]}" \
  device=$DEVICE experiment.chunks=10 "experiment.strategies=[exact,rerotate,cacheblend,leading]" \
  "experiment.recompute_fracs=[0.15]" experiment.repeats=3 experiment.max_new_tokens=0 hydra.run.dir="$OUT/runs/kv_compose"
for device in "${MAIN_DEVICES[@]}"; do
  step "main_$device" "$PYTHON" -m memos_lab run experiment=scheduling "${COMMON[@]}" "${MAIN[@]}" device=$device \
    dataset.n_conversations=1 hydra.run.dir="$OUT/runs/main_$device"
done

"$PYTHON" - "$OUT" <<'EOF' 2>&1 | tee -a "$LOG"
"""Gather the runs' metrics into OUTDIR/metrics.json (stdlib only)."""
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

import yaml  # transformers' own dependency

out = Path(sys.argv[1])
metrics = {}
for line in (out / "steps.txt").read_text().splitlines():
    name, status, seconds = line.split()
    metrics[f"step/{name}/exit"], metrics[f"step/{name}/seconds"] = int(status), int(seconds)
junit = out / "gpu_tests.xml"
if junit.exists():
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    for key in ("tests", "failures", "errors", "skipped"):
        metrics[f"gpu_tests/{key}"] = int(suite.get(key, 0))
for run in sorted((out / "runs" / "kv_reuse").glob("*/metrics.json")):
    values = json.loads(run.read_text())
    tokens = yaml.safe_load((run.parent / "config.yaml").read_text())["experiment"]["memory_tokens"]  # as asked
    metrics[f"kv_reuse/{tokens}/prompt_memory_tokens"] = values.get("kv/memory_tokens")  # with the chat template
    for key in ("kv/ttft_speedup", "kv/saved_frac", "kv/theoretical_saved_frac", "kv/greedy_match_frac",
                "kv/ttft_ms_full_p50", "kv/ttft_ms_reuse_p50", "kv/cache_mb", "kv/max_logit_diff"):
        if key in values:
            metrics[f"kv_reuse/{tokens}/{key.removeprefix('kv/')}"] = values[key]
compose = out / "runs" / "kv_compose" / "metrics.json"
if compose.exists():  # TTFT speedup over the full prefill and prefill saved, per strategy
    for key, value in json.loads(compose.read_text()).items():
        if key.endswith(("/ttft_speedup", "/ttft_ms_p50", "/prefill_saved_frac", "context_tokens_mean")):
            metrics[f"kv_compose/{key.removeprefix('compose/')}"] = value
walls = {}
for run in sorted((out / "runs").glob("main_*/metrics.json")):
    device = run.parent.name.removeprefix("main_")
    values = json.loads(run.read_text())
    for key in ("run/wall_s", "latency/answer_ms_p50", "latency/ttft_ms_p50", "qa/questions"):
        if key in values:
            metrics[f"main/{device}/{key}"] = values[key]
    walls[device] = values.get("latency/answer_ms_p50")
if walls.get("cuda") and walls.get("cpu"):
    metrics["main/answer_speedup_cuda_vs_cpu"] = walls["cpu"] / walls["cuda"]
(out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
print(json.dumps(metrics, indent=2, sort_keys=True))
EOF
log "done in $(( $(date +%s) - STARTED ))s; numbers in $OUT/metrics.json"
