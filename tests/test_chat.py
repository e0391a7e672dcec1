"""The answer loop on tiny_llama: memories reach the prompt, answers are greedy and reproducible."""

import pytest
import torch

from memos_lab.chat import MemChat, greedy_generate, system_message
from memos_lab.errors import ConfigError
from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.models.llm import build_tiny_llama
from memos_lab.mos import MOS
from memos_lab.scheduler.base import Budget, MemScheduler
from memos_lab.scheduler.lru import LRUPolicy

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama(seed=0)


@pytest.fixture
def scheduler(embedder):
    mos = MOS(lambda: GeneralTextMemory(embedder, fusion="bm25"))
    mos.register_user("u")
    mos.create_cube("u", cube_id="c")
    scheduler = MemScheduler(mos, "u", "c", LRUPolicy(), Budget(max_items=3), top_k=2)
    mos.add("u", "c", ["Maya moved to Lisbon", "Leo adopted a dog called Biscuit", "it rained all week"])
    return scheduler


def test_text_mode_puts_the_working_memory_into_the_prompt(scheduler, tiny):
    chat = MemChat(scheduler, tiny, mode="text", max_new_tokens=5)
    answer = chat.ask("What is the name of Leo's dog?")
    assert set(answer.memory_ids) == {item.id for item in scheduler.memories()}
    system = system_message(scheduler.memories())
    assert "Leo adopted a dog called Biscuit" in system
    assert answer.context_tokens == len(tiny.encode_chat([{"role": "system", "content": system}], False))
    assert answer.prompt_tokens > answer.context_tokens
    assert answer.prefilled_tokens == answer.prompt_tokens  # text mode prefills everything
    assert 0 < answer.ttft_ms <= answer.answer_ms


def test_greedy_generate_matches_transformers_generate(tiny):
    prompt = tiny.encode_chat([{"role": "user", "content": "hello there"}])
    ours, _ = greedy_generate(tiny, prompt, 8)
    reference = tiny.model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                    pad_token_id=tiny.tokenizer.pad_token_id)[0, len(prompt):].tolist()
    stop = tiny.tokenizer.eos_token_id
    assert ours == (reference[: reference.index(stop)] if stop in reference else reference)


def test_bad_settings(scheduler, tiny):
    with pytest.raises(ConfigError, match="chat mode 'telepathy' is not one of"):
        MemChat(scheduler, tiny, mode="telepathy")
    with pytest.raises(ConfigError, match="max_new_tokens must be a positive integer"):
        MemChat(scheduler, tiny, max_new_tokens=0)
