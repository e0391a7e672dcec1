"""What a result needs to be trusted: code version, packages, hardware, command line."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

TRACKED_PACKAGES = (
    "memos_lab", "torch", "transformers", "sentence-transformers", "peft", "faiss-cpu", "bm25s",
    "ranx", "hydra-core", "omegaconf", "datasets", "wandb", "numpy", "mem0ai",
)  # fmt: skip


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(path: Path | None = None) -> str:
    """The project's commit, suffixed `-dirty` when the working tree has uncommitted changes."""
    folder = str(path or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def hardware() -> dict[str, str]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "memory_gib": f"{memory_gib:.1f}",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


COMMAND_VARIABLE = "MEMOS_LAB_COMMAND"  # set by the CLI; launcher workers (joblib, Ray) inherit it


def environment() -> dict[str, object]:
    return {
        "git_commit": git_commit(),
        "command": os.environ.get(COMMAND_VARIABLE) or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "packages": package_versions(),
        "hardware": hardware(),
    }


def memory_provenance(cfg: Any) -> dict[str, str]:
    """The declarative-memory backend and its settings as run: a row that says what ran, whether ours or
    another memory system's adapter (its package version is among the tracked packages)."""
    memory = cfg.get("memory") or {}
    info = {"backend": str(memory.get("_target_", "")).rsplit(".", 1)[-1]}
    for key, value in sorted(memory.items()):
        if key != "_target_" and (value is None or isinstance(value, str | int | float | bool)):
            info[str(key)] = str(value)
    return info


RANDOM_MODEL_TARGETS = ("memos_lab.models.llm.build_random_llama", "memos_lab.models.llm.build_tiny_llama")


def model_provenance(cfg: Any) -> dict[str, str]:
    """Where the run's models ran, read from the config before anything is built: the device and dtype
    (resolved, so an unknown device or a missing GPU fails here), the answering model's backend, name and
    URL, the judge's. A key is never here: only the name of the variable that holds it."""
    from memos_lab.models.device import resolve_device, resolve_dtype

    device = resolve_device(cfg.get("device", "auto"))
    info = {"device": str(device), "dtype": str(resolve_dtype(cfg.get("dtype", "auto"), device)).removeprefix("torch.")}
    if device.type == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name(device)
    model = cfg.get("model") or {}
    info["model"] = str(model.get("name_or_path") or model.get("preset") or model.get("_target_", "")).rsplit(".", 1)[
        -1
    ]
    info["random_weights"] = str(model.get("_target_") in RANDOM_MODEL_TARGETS).lower()
    for role, node in (("llm", cfg.get("llm")), ("judge", (cfg.get("judge") or {}).get("generator"))):
        if node and node.get("base_url"):
            info[f"{role}_backend"] = "openai_compatible"
            info[f"{role}_model"] = str(node.get("model"))
            info[f"{role}_base_url"] = str(node.get("base_url"))
            info[f"{role}_api_key_env"] = str(node.get("api_key_env") or "")
        elif node:
            info[f"{role}_backend"] = "local"
    return info
