"""scripts/device_check.sh --cpu-smoke: every step of the GPU check runs (tiny, on the CPU) and its numbers
land in OUTDIR/metrics.json. The GPU run itself needs a CUDA machine."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "device_check.sh"


@pytest.mark.integration
def test_the_device_check_runs_every_step_on_the_cpu(tmp_path: Path):
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out"), "--cpu-smoke"],
        capture_output=True, text=True, timeout=1800, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert all(metrics[f"step/{name}/exit"] == 0 for name in ("gpu_tests", "kv_reuse", "kv_compose", "main_cpu"))
    assert metrics["kv_reuse/64/greedy_match_frac"] == 1.0 and metrics["kv_reuse/128/saved_frac"] > 0.5
    assert metrics["main/cpu/qa/questions"] > 0
    assert metrics["kv_compose/context_tokens_mean"] >= 256  # the memories and the memory message's header
    assert 0.98 < metrics["kv_compose/rerotate/prefill_saved_frac"] < 1  # the message end is always computed
    assert 0 < metrics["kv_compose/cacheblend@0.15/prefill_saved_frac"] < 1
    assert metrics["kv_compose/text/ttft_ms_p50"] > 0 and metrics["kv_compose/exact/ttft_speedup"] > 0
    assert "device_check.log" in {p.name for p in (tmp_path / "out").iterdir()}
