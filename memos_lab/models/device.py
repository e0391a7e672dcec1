"""Where models run: the `device` and `dtype` settings, and the clock every latency metric reads.

`device=auto` takes the GPU when there is one (CUDA, else Apple's MPS), else the CPU; `dtype=auto` is
bfloat16 on a GPU that supports it (float16 on one that does not) and float32 on the CPU.
"""

from __future__ import annotations

import re
import time

import torch

from memos_lab.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DEVICE_SYNTAX = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
VALID_DEVICES = "auto, cpu, cuda, cuda:N, mps"


def resolve_device(device: str | None = "auto") -> torch.device:
    """The torch device of a `device` setting; ConfigError for an unknown name or a GPU that is not there."""
    name = "auto" if device is None else str(device).strip().lower()
    if not DEVICE_SYNTAX.fullmatch(name):
        raise ConfigError(f"device: unknown device {device!r}; valid: {VALID_DEVICES}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if torch.backends.mps.is_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={name}: no CUDA GPU is visible to torch {torch.__version__}; use device=cpu or auto"
            )
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={name}: only {torch.cuda.device_count()} CUDA device(s) (cuda:0..)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps: Apple's MPS backend is not available here; use device=cpu or auto")
    return torch.device(name)


def resolve_dtype(dtype: str | None, device: torch.device | str = "cpu") -> torch.dtype:
    """The torch dtype of a `dtype` setting on `device` (`auto`: bf16 on a GPU that has it, fp32 on the CPU)."""
    name = "auto" if dtype is None else DTYPE_ALIASES.get(str(dtype), str(dtype))
    if name == "auto":
        kind = torch.device(device).type
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if kind == "mps" else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(
            f"dtype: unknown dtype {dtype!r}; choose auto or one of {', '.join([*DTYPES, *DTYPE_ALIASES])}"
        ) from None


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for the device's queued work, so a clock read afterwards covers it (a no-op on the CPU)."""
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def clock(device: torch.device | str | None = None) -> float:
    """perf_counter after the device has finished its queued work: the one clock latency metrics read."""
    synchronize(device)
    return time.perf_counter()
