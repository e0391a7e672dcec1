"""The one interface of parametric memory: knowledge written into weights (adapters) of a shared base model.

A parametric memory never changes the base weights it is attached to: outside `applied()` the model
answers exactly as loaded, so several memories (users, cubes) can share one `LanguageModel`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import DataError
from memos_lab.models.llm import LanguageModel


@dataclass(frozen=True)
class EditReport:
    """What one call of `edit` did."""

    edits: int
    steps: int
    seconds: float
    final_loss: float
    learned: bool  # every trained target is the teacher-forced argmax (with the memory's margin) at the end


class ParametricMemory(ABC):
    """Knowledge in weights, kept in named adapters (one per user or cube) of which one is active.

    Everything the loaders, the chat and the experiments call is declared here, so a new method is one
    file plus one YAML under conf/parametric/; constructors take `(model, adapter=None, ...settings)`.
    """

    model: LanguageModel

    @property
    @abstractmethod
    def adapters(self) -> list[str]:
        """Names of the adapters this memory holds."""

    @abstractmethod
    def create_adapter(self, name: str) -> None:
        """A fresh adapter (no change to the model yet), made the active one; ConfigError if it exists."""

    @abstractmethod
    def switch(self, name: str) -> None:
        """Make `name` the active adapter (NotFoundError if unknown)."""

    @abstractmethod
    def edits(self, name: str | None = None) -> list[KnowledgeEdit]:
        """The edits an adapter (the active one by default) has learned."""

    def close(self) -> None:
        """Take everything this memory attached off the shared model (a no-op where nothing is attached)."""

    @abstractmethod
    def edit(self, edits: Sequence[KnowledgeEdit]) -> EditReport:
        """Write a batch of knowledge updates into the memory (later batches add to earlier ones)."""

    @abstractmethod
    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the shared model answers with this memory; outside it, as the base model."""

    def applies(self, prompts: Sequence[str]) -> list[bool]:
        """Which prompts the memory should answer (a gated memory declines unrelated ones)."""
        return [True] * len(prompts)

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write everything into the fresh `folder` (no pickle)."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, model: LanguageModel) -> Self:
        """Rebuild a saved memory on `model`; IncompatibleError for another model's artefact."""


def check_batch(edits: Sequence[KnowledgeEdit]) -> None:
    """DataError for an empty batch, a repeated edit id, or one prompt asked to say two different things."""
    if not edits:
        raise DataError("empty batch of edits: nothing to learn")
    seen_ids: set[str] = set()
    target_of: dict[str, tuple[str, str]] = {}
    for edit in edits:
        if edit.edit_id in seen_ids:
            raise DataError(f"edit id {edit.edit_id!r} appears twice in one batch")
        seen_ids.add(edit.edit_id)
        key = prompt_key(edit.prompt)
        if not key:
            raise DataError(f"edit {edit.edit_id!r}: empty prompt")
        if key in target_of and target_of[key][1] != edit.target_new:
            other, target = target_of[key]
            raise DataError(
                f"contradictory edits {other!r} and {edit.edit_id!r}: prompt {edit.prompt!r} -> "
                f"{target!r} and {edit.target_new!r}"
            )
        target_of[key] = (edit.edit_id, edit.target_new)


def prompt_key(prompt: str) -> str:
    """A prompt compared case- and space-insensitively: a new edit of the same prompt replaces an older one."""
    return " ".join(prompt.split()).casefold()
