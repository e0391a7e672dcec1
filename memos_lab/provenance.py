"""What a result needs to be trusted: code version, packages, hardware, command line."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

TRACKED_PACKAGES = (
    "memos_lab", "torch", "transformers", "sentence-transformers", "peft", "faiss-cpu", "bm25s",
    "ranx", "hydra-core", "omegaconf", "datasets", "wandb", "numpy",
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
