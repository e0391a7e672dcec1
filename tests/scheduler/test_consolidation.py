"""Consolidation of stable, often-used working memories into a LoRA adapter (tiny_llama)."""

import pytest

from memos_lab.errors import ConfigError
from memos_lab.memory.parametric.lora import LoRAMemory
from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.models.llm import build_tiny_llama
from memos_lab.mos import MOS
from memos_lab.scheduler.base import Budget, MemScheduler
from memos_lab.scheduler.lfu import LFUPolicy
from memos_lab.scheduler.parametric import ConsolidationSettings, Consolidator, recitation_edit

pytestmark = pytest.mark.usefixtures("single_thread")


def test_only_often_used_old_enough_memories_are_consolidated_and_the_store_keeps_them(embedder):
    mos = MOS(lambda: GeneralTextMemory(embedder, fusion="bm25"))
    mos.register_user("u")
    mos.create_cube("u", cube_id="c")
    scheduler = MemScheduler(mos, "u", "c", LFUPolicy(), Budget(max_items=4), top_k=1)
    dog, rain = mos.add("u", "c", ["Leo: we adopted a rescue dog called Biscuit today",
                                   "Maya: it has been raining all week long here"])  # fmt: skip
    for _ in range(3):
        scheduler.on_user_turn("Biscuit the rescue dog")
    lora = LoRAMemory(build_tiny_llama(), rank=2, steps=3, target_modules=["q_proj", "v_proj"])
    try:
        consolidator = Consolidator(lora, ConsolidationSettings(min_uses=3, min_age=2, max_items=4))
        assert [entry.item.id for entry in consolidator.candidates(scheduler)] == [dog]
        report = consolidator.consolidate(scheduler)
        assert report is not None and report.edits == 1 and report.steps > 0
        assert consolidator.consolidated == {dog}
        assert [edit.edit_id for edit in lora.edits()] == [dog]
        assert consolidator.consolidate(scheduler) is None  # nothing new qualifies
        assert {item.id for item in mos.get_all("u", "c")} == {dog, rain}  # the store still holds both
    finally:
        lora.close()


def test_recitation_edits_split_the_memory_text():
    from memos_lab.memory.item import MemoryItem

    edit = recitation_edit(MemoryItem("Leo: we adopted a rescue dog called Biscuit", id="x"))
    assert (edit.prompt, edit.target_new, edit.subject) == ("Leo: we adopted a", "rescue dog called Biscuit", "Leo")
    assert recitation_edit(MemoryItem("too short here")) is None


def test_bad_settings():
    with pytest.raises(ConfigError, match="consolidation.min_uses must be a positive integer, got 0"):
        ConsolidationSettings(min_uses=0)
