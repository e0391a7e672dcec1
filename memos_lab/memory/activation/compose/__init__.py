"""Composition strategies for activation memory: one file each, the interface in `base` (read it first).

`compose_chunks` is the function experiment=kv_reuse measures with (naive, rerotate, leading).
"""

from __future__ import annotations

from collections.abc import Sequence

from memos_lab.memory.activation.compose.base import CompositionStrategy, encode_chunks
from memos_lab.memory.activation.compose.leading import LeadingComposition
from memos_lab.memory.activation.compose.naive import NaiveComposition
from memos_lab.memory.activation.compose.rerotate import RerotateComposition
from memos_lab.memory.activation.template import ChunkedPrompt, chunked_memory_prompt
from memos_lab.models.decode import KVCache
from memos_lab.models.llm import LanguageModel

__all__ = ["chunked_memory_prompt", "compose_chunks", "encode_chunks"]


def compose_chunks(
    lm: LanguageModel,
    prompt: ChunkedPrompt,
    chunk_caches: Sequence[KVCache],
    recompute_frac: float = 0.0,
    reposition: bool = True,
) -> tuple[KVCache, int]:
    """The cache of header + chunks from chunk-only caches (`encode_chunks`), the header recomputed: naive
    with `reposition=False`, else rerotate, or leading with a `recompute_frac`. Returns it and the recomputed
    tokens."""
    strategy: CompositionStrategy
    if not reposition:
        strategy = NaiveComposition()
    elif recompute_frac:
        strategy = LeadingComposition(recompute_frac=recompute_frac)
    else:
        strategy = RerotateComposition()
    composed = strategy.compose(lm, prompt, chunk_caches)
    return composed.cache, composed.recomputed_tokens
