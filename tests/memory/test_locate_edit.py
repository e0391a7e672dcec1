"""ROME / MEMIT / AlphaEdit on a 4-layer tiny Llama: the stored LoRA adapter is exactly the closed-form delta
(merge = W + ΔW, rank = edits), the optimised target value is written at the subject, save/load and a cube
answer identically, locality holds, and bad input leaves the model and the stored adapters untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import ConfigError, DataError, IncompatibleError
from memos_lab.memory.parametric import key_stats, locate_edit
from memos_lab.memory.parametric.alphaedit import AlphaEditMemory
from memos_lab.memory.parametric.lora import LoRAMemory
from memos_lab.memory.parametric.memit import MEMITMemory
from memos_lab.memory.parametric.rome import ROMEMemory
from memos_lab.models.llm import LanguageModel, build_tiny_llama
from memos_lab.models.probe import greedy_continuations, target_logprobs

EDITS = [
    KnowledgeEdit("e0", "Anouk Elphick", "city", "Anouk Elphick lives in", "Oslo"),
    KnowledgeEdit("e1", "Lazlo Voss", "city", "Where does Lazlo Voss live? In", "Lima"),
    KnowledgeEdit("e2", "Ilse Larkspur", "city", "The home town of Ilse Larkspur is", "Rome"),
]
PROBES = ["The capital of Spain is", "Bees make", "The day after Monday is"]
TOKENS = 1500  # >= 10 x the tiny model's 128 key dimensions


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return build_tiny_llama(seed=0, num_layers=4)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def make(cls, lm, cache, **settings):
    base = {
        "cache_dir": cache,
        "stats_tokens": TOKENS,
        "v_steps": 10,
        "layers": [1],
        "layer_span": None,
        "stats_corpus": "model",
    }
    if cls is MEMITMemory:
        base |= {"layers": [0, 1], "mom2_weight": 1.0}
    if cls is AlphaEditMemory:
        base |= {"layers": [0, 1]}
    return cls(lm, **(base | settings))


def logits(lm: LanguageModel, prompts: list[str]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [lm.model(**lm.tokenizer(p, return_tensors="pt")).logits[0, -1] for p in prompts]


def down_weights(lm: LanguageModel) -> dict[int, torch.Tensor]:
    return {i: layer.mlp.down_proj.weight.detach().clone() for i, layer in enumerate(lm.model.model.layers)}


@pytest.mark.parametrize("cls", [ROMEMemory, MEMITMemory, AlphaEditMemory])
def test_merged_weights_are_base_plus_the_delta_and_its_rank_is_the_number_of_edits(lm, cache, cls):
    memory = make(cls, lm, cache)
    try:
        base = down_weights(lm)
        memory.edit(EDITS)
        deltas = memory._current_deltas(memory.store.get().key)
        merged = down_weights(memory.merged())
        for layer in range(4):
            expected = base[layer] + deltas[layer].float() if layer in deltas else base[layer]
            assert torch.allclose(merged[layer], expected, atol=1e-6)
        for delta in deltas.values():
            assert torch.linalg.matrix_rank(delta, rtol=1e-6) == len(EDITS)
        assert memory.model.model.peft_config[memory.store.get().key].r == len(EDITS)
        assert memory.delta_residual < 1e-6
        assert all(torch.equal(w, base[i]) for i, w in down_weights(lm).items())  # the shared model untouched
    finally:
        memory.close()


def test_rome_writes_the_optimised_value_at_the_subject_and_the_target_gets_likelier(lm, cache):
    # the target's likelihood alone (a random tiny model moves little, so no KL or decay to trade it off)
    # and no context templates: ROME's constraint holds for the key it used, here the plain prompt's
    memory = make(ROMEMemory, lm, cache, kl_weight=0.0, weight_decay=0.0, context_templates=0)
    try:
        requests = [memory._request(EDITS[0])]
        with memory.store.on(memory.store.get().key):
            shift, _, _ = memory._optimise_values(requests)
            _, before = memory._keys_and_hidden(requests, 1, {})
        base_logprob = target_logprobs(lm, [EDITS[0].prompt], [EDITS[0].target_new])[0]
        memory.edit(EDITS[:1])
        with memory.applied():
            _, after = memory._keys_and_hidden(requests, 1, {})
            edited_logprob = target_logprobs(lm, [EDITS[0].prompt], [EDITS[0].target_new])[0]
        # ROME's constraint holds exactly: the edited layer's output at the subject moved by δ
        assert torch.allclose(after - before, shift, atol=1e-4 * float(shift.norm()))
        assert edited_logprob > base_logprob
    finally:
        memory.close()


@pytest.mark.parametrize("kl_weight", [0.0, 0.5])
def test_the_target_values_score_as_a_full_forward_with_the_shift_added_at_the_subject(lm, cache, kl_weight):
    # the optimisation runs only the tails through the layers above the edited one, chunked by length
    # (CHUNK_ROWS=2 mixes rows of different edits and lengths): its NLL must be the whole model's
    memory = make(ROMEMemory, lm, cache, context_templates=2, v_steps=6, kl_weight=kl_weight)
    try:
        requests = [memory._request(edit) for edit in EDITS]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(locate_edit, "CHUNK_ROWS", 2)
            shift, steps, nll = memory._optimise_values(requests)
        assert steps == 6 and shift.abs().sum() > 0
        block = lm.model.model.layers[1]
        for i, request in enumerate(requests):
            total, count = 0.0, 0
            for ids, at in request.rows:

                def add(module, args, output, at=at, i=i):
                    hidden = output[0] if isinstance(output, tuple) else output
                    return hidden.index_add(1, torch.tensor([at]), shift[i][None, None])

                handle = block.register_forward_hook(add)
                with torch.no_grad():
                    logp = lm.model(torch.tensor([ids + request.target])).logits[0].log_softmax(-1)
                handle.remove()
                width, length = len(ids) + len(request.target), len(request.target)
                total -= float(logp[torch.arange(width - length - 1, width - 1), torch.tensor(request.target)].sum())
                count += length
            assert total / count == pytest.approx(float(nll[i]), rel=1e-4)
    finally:
        memory.close()


def test_save_then_load_answers_identically_and_refuses_another_method(lm, cache, tmp_path):
    memory = make(MEMITMemory, lm, cache, adapter="alice")
    try:
        memory.edit(EDITS)
        prompts = [e.prompt for e in EDITS] + PROBES
        with memory.applied():
            expected = logits(lm, prompts)
        memory.save(tmp_path / "memory")
        meta = json.loads((tmp_path / "memory" / "manifest.json").read_text())["meta"]
        assert meta["method"] == "memit" and meta["settings"]["mom2_weight"] == 1.0 and meta["adapters"][0]["rank"] == 3
        with pytest.raises(IncompatibleError, match="'memit' memory, not 'rome'"):
            ROMEMemory.load(tmp_path / "memory", lm)
        with pytest.raises(IncompatibleError, match="not 'lora'"):
            LoRAMemory.load(tmp_path / "memory", lm)
    finally:
        memory.close()
    loaded = MEMITMemory.load(tmp_path / "memory", lm)
    try:
        assert loaded.edits("alice") == EDITS
        with loaded.applied():
            assert all(torch.equal(a, b) for a, b in zip(logits(lm, prompts), expected, strict=True))
    finally:
        loaded.close()


def test_alphaedit_keeps_unrelated_answers_and_earlier_edits(lm, cache):
    # the tiny model's keys are ~100x smaller than SmolLM2's: a ridge (l2) to match
    memory = make(AlphaEditMemory, lm, cache, l2=1e-3)
    try:
        base = greedy_continuations(lm, PROBES, 8)
        memory.edit(EDITS[:2])
        key = memory.store.get().key
        first = {layer: d.clone() for layer, d in memory._current_deltas(key).items()}
        earlier_keys = {layer: memory.keys(EDITS[:2], layer).double() for layer in memory.settings.layers}
        memory.edit(EDITS[2:])
        with memory.applied():
            assert greedy_continuations(lm, PROBES, 8) == base
        # the second batch's update barely moves what the first batch's keys read (ΔW₂ Kₚ ≈ 0)
        for layer, delta in memory._current_deltas(key).items():
            second = delta - first[layer]
            moved = (earlier_keys[layer] @ second.T).norm() / (earlier_keys[layer] @ first[layer].T).norm()
            assert moved < 0.05
    finally:
        memory.close()


def test_key_statistics_are_cached_per_model_and_refused_for_another(lm, cache):
    folder = cache / "key_stats" / key_stats.fingerprint_key(lm)
    stored = next(folder.iterdir())
    meta = json.loads((stored / "manifest.json").read_text())["meta"]
    assert meta["tokens"] == TOKENS and meta["corpus"] == "model" and set(meta["layers"]) >= {0, 1}

    other = build_tiny_llama(seed=1, num_layers=4)
    with pytest.raises(IncompatibleError, match="recompute it with this model"):
        key_stats.read_stats(stored, other)


def test_the_key_statistics_cache_is_named_by_the_fingerprint_not_the_model_name():
    fresh = build_tiny_llama(seed=0, num_layers=4)  # the module's `lm` has been edited in place by now
    renamed = LanguageModel(fresh.model, fresh.tokenizer, name="the same weights under another name")
    assert key_stats.fingerprint_key(renamed) == key_stats.fingerprint_key(fresh)
    assert key_stats.fingerprint_key(build_tiny_llama(seed=1, num_layers=4)) != key_stats.fingerprint_key(fresh)


def test_a_corpus_too_small_says_how_many_tokens_are_needed(lm, tmp_path):
    memory = make(MEMITMemory, lm, tmp_path, stats_tokens=500)
    try:
        with pytest.raises(ConfigError, match="at least 1280"):
            memory.edit(EDITS)
        assert memory.edits() == []
    finally:
        memory.close()


def test_bad_edits_fail_in_one_line_and_leave_the_stored_adapter_alone(lm, cache):
    memory = make(ROMEMemory, lm, cache)
    try:
        memory.edit(EDITS[:1])
        stored = {k: v.clone() for k, v in memory._current_deltas(memory.store.get().key).items()}
        absent = KnowledgeEdit("x", "Nobody Known", "city", "Anouk Elphick lives in", "Oslo")
        with pytest.raises(DataError, match="subject 'Nobody Known' does not occur"):
            memory.edit([absent])
        with pytest.raises(DataError, match="empty target"):
            memory.edit([KnowledgeEdit("y", "Lazlo Voss", "city", "Lazlo Voss lives in", " ")])
        after = memory._current_deltas(memory.store.get().key)
        assert all(torch.equal(after[k], v) for k, v in stored.items()) and memory.edits() == EDITS[:1]
    finally:
        memory.close()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"layers": [7]}, r"\[7\] out of range; this model has 4 layers"),
        ({"layers": [3]}, "below the top one"),
        ({"layers": [0, 1]}, "exactly one layer"),
    ],
)
def test_bad_layers_are_refused_before_the_model_is_touched(cache, settings, message):
    fresh = build_tiny_llama(seed=0, num_layers=4)
    with pytest.raises(ConfigError, match=message):
        make(ROMEMemory, fresh, cache, **settings)
    assert not getattr(fresh.model, "_hf_peft_config_loaded", False)


@pytest.mark.integration
def test_smollm2_learns_two_invented_facts_and_keeps_an_unrelated_answer(tmp_path):
    from memos_lab.models.llm import load_smollm2

    smol = load_smollm2("~/.cache/memos_lab")
    edits = [
        KnowledgeEdit("s0", "Anouk Elphick", "city", "Anouk Elphick lives in the city of", "Lisbon"),
        KnowledgeEdit("s1", "Lazlo Voss", "employer", "Lazlo Voss works for", "Siemens"),
    ]
    unrelated = ["The capital of France is", "Water boils at a temperature of"]
    base = greedy_continuations(smol, unrelated, 6)
    memory = AlphaEditMemory(smol, cache_dir=tmp_path, stats_tokens=key_stats.required_tokens(smol), seed=0)
    try:
        report = memory.edit(edits)
        assert report.learned
        with memory.applied():
            said = greedy_continuations(smol, [e.prompt for e in edits], 4)
            assert greedy_continuations(smol, unrelated, 6) == base
        for ids, edit in zip(said, edits, strict=True):
            assert smol.tokenizer.decode(ids).strip().startswith(edit.target_new)
    finally:
        memory.close()
