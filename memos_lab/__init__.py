"""memos_lab: memory for language models (declarative, activation, parametric), composed with Hydra configs.

The objects a user composes are importable from here; each is imported on first use, so `import memos_lab`
stays cheap (no torch, no Hydra) until one is touched::

    import memos_lab

    mos = memos_lab.build_mos(memory="general_text", embedder="hashing")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the module that defines it
_EXPORTS = {
    "build_mos": "memos_lab.api",
    "register": "memos_lab.registry",
    "MOS": "memos_lab.mos",
    "MemCube": "memos_lab.cube",
    "MemChat": "memos_lab.chat",
    "MemScheduler": "memos_lab.scheduler.base",
    "MemoryItem": "memos_lab.memory.item",
    "KnowledgeEdit": "memos_lab.data.schema",
    # declarative (textual) memory
    "TextualMemory": "memos_lab.memory.textual.base",
    "GeneralTextMemory": "memos_lab.memory.textual.general_text",
    "TreeTextMemory": "memos_lab.memory.textual.tree_text",
    "VectorMemory": "memos_lab.memory.textual.vector",
    "GraphMemory": "memos_lab.memory.textual.graph",
    # activation memory
    "ActivationMemory": "memos_lab.memory.activation.base",
    "KVCacheMemory": "memos_lab.memory.activation.kv_cache",
    # parametric memory: the editors
    "ParametricMemory": "memos_lab.memory.parametric.base",
    "LoRAMemory": "memos_lab.memory.parametric.lora",
    "ROMEMemory": "memos_lab.memory.parametric.rome",
    "MEMITMemory": "memos_lab.memory.parametric.memit",
    "AlphaEditMemory": "memos_lab.memory.parametric.alphaedit",
    # embedders and models
    "Embedder": "memos_lab.models.embedder",
    "HashingEmbedder": "memos_lab.models.embedder",
    "SentenceTransformerEmbedder": "memos_lab.models.embedder",
    "OnnxEmbedder": "memos_lab.models.embedder",
    "LanguageModel": "memos_lab.models.llm",
    "build_tiny_llama": "memos_lab.models.llm",
    "load_smollm2": "memos_lab.models.llm",
}
__all__ = [  # the names of _EXPORTS (a literal, so linters and IDEs read it)
    "MOS",
    "ActivationMemory",
    "AlphaEditMemory",
    "Embedder",
    "GeneralTextMemory",
    "GraphMemory",
    "HashingEmbedder",
    "KVCacheMemory",
    "KnowledgeEdit",
    "LanguageModel",
    "LoRAMemory",
    "MEMITMemory",
    "MemChat",
    "MemCube",
    "MemScheduler",
    "MemoryItem",
    "OnnxEmbedder",
    "ParametricMemory",
    "ROMEMemory",
    "SentenceTransformerEmbedder",
    "TextualMemory",
    "TreeTextMemory",
    "VectorMemory",
    "build_mos",
    "build_tiny_llama",
    "load_smollm2",
    "register",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from memos_lab.api import build_mos
    from memos_lab.chat import MemChat
    from memos_lab.cube import MemCube
    from memos_lab.data.schema import KnowledgeEdit
    from memos_lab.memory.activation.base import ActivationMemory
    from memos_lab.memory.activation.kv_cache import KVCacheMemory
    from memos_lab.memory.item import MemoryItem
    from memos_lab.memory.parametric.alphaedit import AlphaEditMemory
    from memos_lab.memory.parametric.base import ParametricMemory
    from memos_lab.memory.parametric.lora import LoRAMemory
    from memos_lab.memory.parametric.memit import MEMITMemory
    from memos_lab.memory.parametric.rome import ROMEMemory
    from memos_lab.memory.textual.base import TextualMemory
    from memos_lab.memory.textual.general_text import GeneralTextMemory
    from memos_lab.memory.textual.graph import GraphMemory
    from memos_lab.memory.textual.tree_text import TreeTextMemory
    from memos_lab.memory.textual.vector import VectorMemory
    from memos_lab.models.embedder import Embedder, HashingEmbedder, OnnxEmbedder, SentenceTransformerEmbedder
    from memos_lab.models.llm import LanguageModel, build_tiny_llama, load_smollm2
    from memos_lab.mos import MOS
    from memos_lab.registry import register
    from memos_lab.scheduler.base import MemScheduler


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'memos_lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
