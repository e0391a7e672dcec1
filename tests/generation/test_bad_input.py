"""Bad model and endpoint settings: one line naming the setting, exit status 2, no traceback, no run written."""

from __future__ import annotations

from pathlib import Path

import pytest

from memos_lab import cli

TINY = ["experiment=scheduling", "model=tiny_llama", "embedder=hashing", "logger=none", "dataset.n_conversations=1",
        "dataset.n_sessions=2", "experiment.max_new_tokens=2"]  # fmt: skip
DEAD = "http://127.0.0.1:9/v1"  # nothing listens on the discard port


def run(tmp_path: Path, capsys: pytest.CaptureFixture, *overrides: str) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", *TINY, *overrides, f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert "Traceback" not in err and not (tmp_path / "run" / "metrics.json").exists()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["device=tpu"], "device: unknown device 'tpu'; valid: auto, cpu, cuda, cuda:N, mps"),
        (["dtype=int4"], "dtype: unknown dtype 'int4'"),
        (["llm=openai_compatible", f"llm.base_url={DEAD}", "llm.model=m", "llm.max_retries=0"],
         f"llm.base_url: cannot reach {DEAD}"),
        (["llm=openai_compatible", "llm.base_url=localhost:8000", "llm.model=m"], "llm.base_url must be an http(s) URL"),
        (["llm=openai_compatible", f"llm.base_url={DEAD}", "llm.model=m", "llm.api_key_env=MEMOS_NO_SUCH_KEY_VAR"],
         "MEMOS_NO_SUCH_KEY_VAR is not set"),
        (["llm=openai_compatible", f"llm.base_url={DEAD}", "llm.model=m", "llm.check=false", "experiment.mode=kv"],
         "needs the model's weights"),
    ],
)  # fmt: skip
def test_bad_model_settings_are_one_line(tmp_path, capsys, overrides, message):
    assert message in run(tmp_path, capsys, *overrides)


def test_a_missing_gpu_is_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert "device=cuda: no CUDA GPU is visible" in run(tmp_path, capsys, "device=cuda")


def test_a_context_longer_than_the_model_takes_is_one_line(tmp_path, capsys):
    line = run(tmp_path, capsys, "experiment=kv_reuse", "experiment.mode=sweep", "experiment.memory_tokens=400",
               "model.max_position_embeddings=128")  # fmt: skip
    assert "longer than the context of tiny-llama (128 tokens)" in line
