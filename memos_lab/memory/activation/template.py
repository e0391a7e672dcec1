"""How memory texts become the system message their activations belong to, whole or piece by piece."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from memos_lab.models.llm import LanguageModel

MEMORY_TEMPLATE = "Memories about the user:\n{memories}"
MEMORY_SEPARATOR = "\n"
_SENTINEL = "\x00MEMORIES\x00"


def memory_messages(texts: Sequence[str], template: str = MEMORY_TEMPLATE) -> list[dict[str, str]]:
    """The chat messages that put memory texts in front of a conversation."""
    return [{"role": "system", "content": template.format(memories=MEMORY_SEPARATOR.join(texts))}]


@dataclass(frozen=True)
class ChunkedPrompt:
    """A memory system message cut into token pieces: header + chunk_1 + ... + chunk_k + footer.

    Every chunk but the last ends with the separator; the last one is the same text without it.
    """

    header: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...]
    footer: tuple[int, ...]

    @property
    def ids(self) -> list[int]:
        return [*self.context, *self.footer]

    @property
    def context(self) -> list[int]:
        """Header and chunks: the tokens a composed cache holds."""
        return [*self.header, *(i for chunk in self.chunks for i in chunk)]

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Each chunk's [start, end) position in the context."""
        spans, start = [], len(self.header)
        for chunk in self.chunks:
            spans.append((start, start + len(chunk)))
            start += len(chunk)
        return spans


def encode_piece(lm: LanguageModel, text: str) -> tuple[int, ...]:
    """Token ids of one piece of a prompt (no special tokens added)."""
    return tuple(lm.tokenizer.encode(text, add_special_tokens=False))


def template_parts(lm: LanguageModel, template: str = MEMORY_TEMPLATE) -> tuple[str, str]:
    """The rendered system message before and after its memories."""
    rendered = cast(  # tokenize=False: the rendered text
        str,
        lm.tokenizer.apply_chat_template(
            memory_messages([_SENTINEL], template), tokenize=False, add_generation_prompt=False
        ),
    )
    before, after = rendered.split(_SENTINEL)
    return before, after


def chunked_memory_prompt(lm: LanguageModel, texts: Sequence[str], template: str = MEMORY_TEMPLATE) -> ChunkedPrompt:
    """Tokenise the memory message piece by piece, so each memory's tokens do not depend on its neighbours."""
    before, after = template_parts(lm, template)
    pieces = [text + (MEMORY_SEPARATOR if i < len(texts) - 1 else "") for i, text in enumerate(texts)]
    return ChunkedPrompt(
        encode_piece(lm, before), tuple(encode_piece(lm, piece) for piece in pieces), encode_piece(lm, after)
    )
