#!/usr/bin/env bash
# Suite "launchers": a 6-job sweep of the main job (memory.fusion x seed) with hydra/launcher=joblib on
# 2 workers against the same 6 jobs one after another (the basic launcher), interleaved basic, joblib, basic, ...
# so that load from elsewhere hits both alike. Regenerates results/launchers/: report.md (the joblib sweep's
# table) and timing.md (wall time of each sweep, the joblib/basic ratio, the load it ran under).
#
#   experiments/launchers.sh                                   # the main job, as `python -m memos_lab run` runs it
#   JOB_ARGS="dataset.n_conversations=2" experiments/launchers.sh   # a smaller job (busy machine)
#   REPEATS=2 experiments/launchers.sh                         # more interleaved pairs
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
NAME=launchers
REPEATS=${REPEATS:-1}
JOB_ARGS=${JOB_ARGS:-}
SWEEP="memory.fusion=rrf,bm25,dense seed=0,1"
ROOT=outputs/suites/$NAME/$(date -u +%Y-%m-%d_%H-%M-%S)
mkdir -p "$ROOT"
echo "launcher,repeat,start,end,load_before,load_after,sweep_dir" > "$ROOT/timing.csv"

for repeat in $(seq 1 "$REPEATS"); do
  for launcher in basic joblib; do
    extra=()
    [[ $launcher == joblib ]] && extra=(hydra.launcher.n_jobs=2)
    dir=$ROOT/$launcher-$repeat
    load_before=$(cut -d' ' -f1 /proc/loadavg)
    start=$(date +%s.%N)
    # shellcheck disable=SC2086  # SWEEP and JOB_ARGS are lists of overrides
    "$PYTHON" -m memos_lab run -m $SWEEP $JOB_ARGS "hydra/launcher=$launcher" "${extra[@]}" "hydra.sweep.dir=$dir"
    end=$(date +%s.%N)
    load_after=$(cut -d' ' -f1 /proc/loadavg)
    echo "$launcher,$repeat,$start,$end,$load_before,$load_after,$dir" >> "$ROOT/timing.csv"
  done
done

SUITE="JOB_ARGS='$JOB_ARGS' REPEATS=$REPEATS experiments/$NAME.sh"
"$PYTHON" -m memos_lab report "$ROOT/joblib-1" --out "results/$NAME" \
  --note "made by experiments/$NAME.sh with JOB_ARGS=[$JOB_ARGS] REPEATS=$REPEATS"
"$PYTHON" experiments/sweep_timing.py "$ROOT/timing.csv" "results/$NAME/timing.md" --command "$SUITE"
