"""MemCube: one user's or agent's container of declarative, activation and parametric memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memos_lab.memory.item import new_id, now_iso
from memos_lab.memory.textual.base import TextualMemory

SCHEMA_VERSION = 1


@dataclass
class CubeManifest:
    cube_id: str
    owner: str
    schema_version: int = SCHEMA_VERSION
    created_at: str = field(default_factory=now_iso)
    # The resolved Hydra config of each memory slot, so a stored cube can be rebuilt as it was.
    memory_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class MemCube:
    manifest: CubeManifest
    text: TextualMemory
    # Slots filled by the activation (KV cache) and parametric (LoRA) memories when a cube uses them.
    activation: Any | None = None
    parametric: Any | None = None

    @property
    def cube_id(self) -> str:
        return self.manifest.cube_id

    @property
    def owner(self) -> str:
        return self.manifest.owner

    @classmethod
    def create(cls, owner: str, text: TextualMemory, cube_id: str | None = None) -> MemCube:
        return cls(CubeManifest(cube_id=cube_id or new_id(), owner=owner), text)
