"""The one decoder and the local generator on a tiny Llama: batched greedy answers equal one-by-one ones,
stop tokens end an answer, a cached prefix changes nothing, settings of device and dtype resolve as
documented, and random_llama presets have Llama-3 shapes."""

from __future__ import annotations

import pytest
import torch

from memos_lab.errors import ConfigError
from memos_lab.generation.base import ChatRequest
from memos_lab.generation.local import LocalGenerator
from memos_lab.models.decode import greedy, greedy_batch, prefill, stop_token_ids
from memos_lab.models.device import resolve_device, resolve_dtype
from memos_lab.models.llm import LanguageModel, build_random_llama, build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")

QUESTIONS = [
    "Where does Maya live?",
    "What is the name of Leo's dog, the small one?",
    "hi",
    "Which hobby did she pick up?",
]


@pytest.fixture(scope="module")
def tiny(scrambled_tiny: LanguageModel) -> LanguageModel:
    return scrambled_tiny


def prompts(lm: LanguageModel) -> list[list[int]]:
    return [lm.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


def test_batched_greedy_equals_one_by_one(tiny):
    ids = prompts(tiny)
    assert len({len(p) for p in ids}) > 1  # different lengths: the batch is left-padded
    alone = [greedy(tiny, p, 10).token_ids for p in ids]
    assert greedy_batch(tiny, ids, 10, batch_size=4).token_ids == alone
    assert greedy_batch(tiny, ids, 10, batch_size=3).token_ids == alone
    assert len({tuple(a) for a in alone}) > 1


def test_without_stop_every_answer_has_max_new_tokens(tiny):
    answers = greedy_batch(tiny, prompts(tiny), 6, stop=False).token_ids
    assert all(len(a) == 6 for a in answers)


def test_a_stop_token_ends_the_answer_and_is_dropped(tiny):
    ids = prompts(tiny)[0]
    free = greedy_batch(tiny, [ids], 12, stop=False).token_ids[0]
    stops = stop_token_ids(tiny)
    stopped = greedy(tiny, ids, 12).token_ids
    cut = next((i for i, t in enumerate(free) if t in stops), len(free))
    assert stopped == free[:cut] and not stops & set(stopped)


def test_a_cached_prefix_gives_the_same_answer_and_cache(tiny):
    ids = prompts(tiny)[1]
    prefix = prefill(tiny, ids[:-5]).snapshot()
    full, reused = greedy(tiny, ids, 8), greedy(tiny, ids, 8, prefix)
    assert reused.token_ids == full.token_ids and reused.reused == len(ids) - 5 and full.reused == 0
    assert len(full.cache) >= len(ids) and full.cache.token_ids[: len(ids)] == tuple(ids)


def test_the_local_generator_batches_and_reports_each_request(tiny):
    requests = [ChatRequest.user(q, request_id=str(i)) for i, q in enumerate(QUESTIONS)]
    batched = LocalGenerator(tiny, batch_size=4).generate(requests, 8)
    single = LocalGenerator(tiny, batch_size=1).generate(requests, 8)
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    for generation, ids in zip(batched, prompts(tiny), strict=True):
        assert generation.prompt_tokens == len(ids) and generation.completion_tokens == len(generation.token_ids)
        assert 0 < generation.ttft_ms <= generation.latency_ms and not generation.failed
    assert [g.request_id for g in batched] == ["0", "1", "2", "3"]


def test_a_prompt_longer_than_the_context_fails_alone(tiny):
    small = build_tiny_llama(seed=0, device="cpu", max_position_embeddings=64)
    generations = LocalGenerator(small).generate([ChatRequest.user("x" * 100), ChatRequest.user("hi")], 4)
    assert generations[0].failed and "longer than the context" in generations[0].error
    assert not generations[1].failed


def test_device_and_dtype_settings():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown device 'tpu'; valid: auto, cpu, cuda, cuda:N, mps"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="unknown dtype 'int8'"):
        resolve_dtype("int8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device=cuda:1: no CUDA GPU"):
            resolve_device("cuda:1")
        assert resolve_device("auto").type in ("cpu", "mps")


def test_the_fingerprint_does_not_name_the_device(tiny):
    assert not any(value == "cpu" for value in tiny.fingerprint().values())
    assert tiny.describe()["device"] == "cpu"


def test_random_llama_has_llama3_shapes_and_is_reproducible():
    lm = build_random_llama("tiny", seed=1, device="cpu")
    config = lm.model.config
    assert config.vocab_size == 128256 and config.num_key_value_heads == 2 and lm.name == "random-llama-tiny"
    assert lm.fingerprint() == build_random_llama("tiny", seed=1, device="cpu").fingerprint()
    assert (
        lm.fingerprint()["weights_sha256"]
        != build_random_llama("tiny", seed=2, device="cpu").fingerprint()["weights_sha256"]
    )
    assert lm.model.lm_head.weight.data_ptr() == lm.model.model.embed_tokens.weight.data_ptr()  # tied, as Llama-3.2
    ids = lm.encode_chat([{"role": "user", "content": "hi"}])
    assert len(greedy(lm, ids, 3, stop=False).token_ids) == 3
    with pytest.raises(ConfigError, match="unknown preset '70b'; valid: tiny, 1b, 3b, 8b"):
        build_random_llama("70b", device="cpu")


def test_random_llama_refuses_a_model_that_cannot_fit(monkeypatch):
    import memos_lab.models.llm as llm

    monkeypatch.setattr(llm, "_available_ram", lambda: 4 * 2**30)
    with pytest.raises(ConfigError, match=r"model.preset=8b: 8.03 B parameters need 29.9 GiB in float32 on cpu"):
        build_random_llama("8b", device="cpu", dtype="float32")
