"""LoRAMemory on the tiny Llama: a small edit is provably learned, the base model stays untouched, and
save/load/switch/merge/refusal and bad inputs behave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from memos_lab.artifact import file_entry
from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import ConfigError, DataError, IncompatibleError, MemosError, NotFoundError
from memos_lab.eval.editing import starts_with_target
from memos_lab.memory.parametric.gate import EditGate
from memos_lab.memory.parametric.lora import LoRAMemory
from memos_lab.models.llm import LanguageModel, build_tiny_llama
from memos_lab.models.probe import greedy_continuations

# Short targets on a 2-layer model: learned in a few dozen steps with a high learning rate.
FAST = {"rank": 8, "alpha": 16, "lr": 1e-2, "steps": 200, "batch_size": 4, "loss": "target", "seed": 0}
HASHING = {"_target_": "memos_lab.models.embedder.HashingEmbedder", "dim": 256}
PROBES = ["The capital of Spain is", "Bees make", "The day after Monday is"]


def fact(i: int, subject: str, target: str, prompt: str | None = None) -> KnowledgeEdit:
    return KnowledgeEdit(f"e{i}", subject, "city", prompt or f"{subject} lives in", target)


EDITS = [fact(0, "Anouk Elphick", "Oslo"), fact(1, "Lazlo Voss", "Lima"), fact(2, "Ilse Larkspur", "Rome")]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny model trains ~20x faster on one thread when the cores are shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return build_tiny_llama(seed=0)


@pytest.fixture(scope="module")
def trained(lm) -> LoRAMemory:
    memory = LoRAMemory(lm, adapter="alice", **FAST)
    memory.report = memory.edit(EDITS)
    yield memory
    memory.close()


def said(lm: LanguageModel, prompts: list[str], n: int = 6) -> list[str]:
    return [lm.tokenizer.decode(ids) for ids in greedy_continuations(lm, prompts, n)]


def learned(lm: LanguageModel, memory: LoRAMemory, edits=EDITS) -> list[bool]:
    with memory.applied():
        return [
            starts_with_target(text, e.target_new)
            for text, e in zip(said(lm, [e.prompt for e in edits]), edits, strict=False)
        ]


def state(lm: LanguageModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in lm.model.state_dict().items()}


def test_tiny_model_learns_the_edits_and_base_answers_stay(lm, trained):
    fresh = build_tiny_llama(seed=0)  # same weights, never touched by an adapter
    prompts = [e.prompt for e in EDITS] + PROBES
    assert trained.report.learned and trained.report.steps < FAST["steps"]
    assert learned(lm, trained) == [True, True, True]
    assert not any(
        starts_with_target(t, e.target_new) for t, e in zip(said(fresh, [e.prompt for e in EDITS]), EDITS, strict=False)
    )
    # outside applied() the shared model answers exactly as the untouched one
    assert said(lm, prompts) == said(fresh, prompts)


def test_save_writes_a_plain_peft_adapter_folder_and_load_restores_it(lm, trained, tmp_path):
    trained.save(tmp_path / "memory")
    adapter_dir = tmp_path / "memory" / "adapters" / "alice"
    assert sorted(p.name for p in adapter_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    manifest = json.loads((tmp_path / "memory" / "manifest.json").read_text())
    assert manifest["fingerprint"] == lm.fingerprint() and manifest["meta"]["adapters"][0]["name"] == "alice"
    # peft itself reads the folder onto a fresh copy of the base model and says the same
    fresh = build_tiny_llama(seed=0)
    with_peft = LanguageModel(PeftModel.from_pretrained(fresh.model, str(adapter_dir)), fresh.tokenizer, "peft")
    prompts = [e.prompt for e in EDITS] + PROBES
    with trained.applied():
        expected = said(lm, prompts)
    assert said(with_peft, prompts) == expected

    loaded = LoRAMemory.load(tmp_path / "memory", lm)
    try:
        assert loaded.adapters == ["alice"] and loaded.edits("alice") == EDITS
        with loaded.applied():
            assert said(lm, prompts) == expected
    finally:
        loaded.close()


def test_save_refuses_a_non_empty_folder(trained, tmp_path):
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        trained.save(tmp_path / "memory")
    assert (tmp_path / "memory" / "keep.txt").read_text() == "mine"


def test_adapter_for_another_base_model_is_refused_and_the_model_untouched(trained, tmp_path):
    trained.save(tmp_path / "memory")
    other = build_tiny_llama(seed=1)
    before = state(other)
    with pytest.raises(IncompatibleError, match="weights_sha256"):
        LoRAMemory.load(tmp_path / "memory", other)
    assert not getattr(other.model, "_hf_peft_config_loaded", False)
    assert state(other).keys() == before.keys() and all(torch.equal(state(other)[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "manifest.json").unlink(), "manifest.json: missing"),
        (lambda d: (d / "manifest.json").write_text("{oops"), "manifest.json: not valid JSON"),
        (lambda d: (d / "adapters/alice/adapter_model.safetensors").write_bytes(b"\x00" * 12), "truncated or altered"),
        (lambda d: (d / "adapters/alice/adapter_config.json").unlink(), "adapter_config.json: missing"),
        (lambda d: _edit_config(d, r=4), "adapter_config.json: truncated or altered"),
        (lambda d: _edit_config(d, r=4, sign=True), "adapter_config.json: r is 4, memos_lab writes 8"),
        (lambda d: _edit_config(d, layer_replication=[[0, 2], [0, 2]], sign=True), "layer_replication is .*refused"),
        (lambda d: _edit_config(d, use_dora=True, sign=True), "use_dora is true, memos_lab writes false"),
        (lambda d: _edit_config(d, surprise=1, sign=True), "surprise: memos_lab writes no such key"),
    ],
)
def test_corrupt_folder_gives_a_clear_error_and_keeps_the_model_as_it_was(lm, trained, tmp_path, damage, message):
    trained.save(tmp_path / "memory")
    damage(tmp_path / "memory")
    adapters_before = set(lm.model.peft_config)
    with pytest.raises(MemosError, match=message):
        LoRAMemory.load(tmp_path / "memory", lm)
    assert set(lm.model.peft_config) == adapters_before
    assert learned(lm, trained) == [True, True, True]  # the stored adapter next to it is intact


def _edit_config(folder: Path, sign: bool = False, **changes) -> None:
    """Change the stored adapter config; `sign`: also record its new size and hash, as a forger would."""
    path = folder / "adapters/alice/adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))
    if sign:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"]["adapters/alice/adapter_config.json"] = file_entry(
            folder, "adapters/alice/adapter_config.json"
        )
        (folder / "manifest.json").write_text(json.dumps(manifest))


def test_switch_between_named_adapters_and_disable(lm):
    memory = LoRAMemory(lm, adapter="alice", **FAST)
    try:
        memory.edit([fact(0, "Anouk Elphick", "Oslo")])
        memory.create_adapter("bob")
        memory.edit([fact(0, "Anouk Elphick", "Lima")])
        prompt = [EDITS[0].prompt]
        with memory.applied():
            assert said(lm, prompt)[0].lstrip().startswith("Lima")
        memory.switch("alice")
        with memory.applied():
            assert said(lm, prompt)[0].lstrip().startswith("Oslo")
        memory.disable()
        with memory.applied():
            assert said(lm, prompt) == said(build_tiny_llama(seed=0), prompt)
        memory.enable()
        with pytest.raises(NotFoundError, match="carol"):
            memory.switch("carol")
        with pytest.raises(ConfigError, match="already exists"):
            memory.create_adapter("bob")
        for bad in ("bob\n", "../bob", ""):  # a trailing newline passed a `$`-anchored match
            with pytest.raises(ConfigError, match="adapter name"):
                memory.create_adapter(bad)
        assert memory.store.names == ["alice", "bob"]
    finally:
        memory.close()
    assert not any(k.endswith(memory.store._uid) for k in getattr(lm.model, "peft_config", {}))  # none left: gone


def test_merged_model_answers_like_the_adapter_and_has_its_own_fingerprint(lm, trained):
    before = state(lm)
    merged = trained.merged()
    prompts = [e.prompt for e in EDITS] + PROBES
    with trained.applied():
        expected = said(lm, prompts)
    assert said(merged, prompts) == expected
    assert merged.fingerprint()["weights_sha256"] != lm.fingerprint()["weights_sha256"]
    assert not any("lora" in name for name in merged.model.state_dict())
    assert all(torch.equal(state(lm)[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    "batch, message",
    [
        ([], "empty batch"),
        ([fact(0, "A B", "Oslo", "A B lives in"), fact(1, "A B", "Lima", "A  B lives in")], "contradictory edits"),
        ([fact(0, "A B", "Oslo"), fact(0, "C D", "Lima")], "appears twice"),
        ([fact(0, "A B", "<|im_end|>")], "cannot be encoded"),
        ([fact(0, "A B", "  ")], "empty target"),
    ],
)
def test_bad_batches_are_refused_and_the_adapter_is_unchanged(lm, trained, batch, message):
    before = state(lm)
    with pytest.raises(DataError, match=message):
        trained.edit(batch)
    assert all(torch.equal(state(lm)[k], v) for k, v in before.items())
    assert trained.edits() == EDITS


def test_a_diverging_edit_restores_the_adapter(lm):
    memory = LoRAMemory(lm, adapter="boom", **(FAST | {"lr": 1e30, "stop_when_learned": False, "steps": 20}))
    try:
        before = state(lm)
        with pytest.raises(ConfigError, match="diverged"):
            memory.edit(EDITS)
        assert all(torch.equal(state(lm)[k], v) for k, v in before.items())
        assert memory.edits() == []
    finally:
        memory.close()


def test_sequential_edits_with_replay_keep_the_earlier_batch(lm):
    memory = LoRAMemory(lm, adapter="seq", **(FAST | {"replay": 8}))
    try:
        memory.edit(EDITS[:2])
        memory.edit(EDITS[2:])
        assert learned(lm, memory) == [True, True, True]
        memory.edit([fact(9, "Anouk Elphick", "Kyiv")])  # an update overrides the stored edit of that prompt
        assert [e.target_new for e in memory.edits()] == ["Lima", "Rome", "Kyiv"]
    finally:
        memory.close()


def test_gate_applies_the_adapter_only_to_queries_about_edited_subjects(lm, tmp_path):
    gate = EditGate(HASHING, threshold=0.3)
    memory = LoRAMemory(lm, gate=gate, adapter="gated", **FAST)
    try:
        memory.edit(EDITS)
        assert memory.applies(["Where does Lazlo Voss live?", "Bees make"]) == [True, False]
        memory.save(tmp_path / "memory")
    finally:
        memory.close()
    loaded = LoRAMemory.load(tmp_path / "memory", lm)
    try:
        assert loaded.applies(["Where does Lazlo Voss live?", "Bees make"]) == [True, False]
    finally:
        loaded.close()

    # a gate naming the registered ONNX embedder without its export_dir: one line, not a TypeError (issue 22)
    manifest_path = tmp_path / "memory" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["meta"]["gate"]["embedder"] = {"_target_": "memos_lab.models.embedder.OnnxEmbedder"}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IncompatibleError, match="gate.embedder: OnnxEmbedder needs export_dir, which is not set"):
        LoRAMemory.load(tmp_path / "memory", lm)


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="loss"):
        LoRAMemory(build_tiny_llama(), loss="everything")
    with pytest.raises(ConfigError, match="locality_prompts"):
        LoRAMemory(build_tiny_llama(), locality_weight=1.0)
    with pytest.raises(ConfigError, match="unknown setting"):
        LoRAMemory(build_tiny_llama(), ranks=4)
    with pytest.raises(IncompatibleError, match="does not fit"):
        LoRAMemory(build_tiny_llama(), target_modules=["c_attn"])
    with pytest.raises(ConfigError, match="not both"):
        LoRAMemory(build_tiny_llama(), layers=[0], layer_span=[0.0, 0.5])
    with pytest.raises(ConfigError, match="layer_span"):
        LoRAMemory(build_tiny_llama(), layer_span=[0.6, 0.2])
    with pytest.raises(ConfigError, match="target_prob"):
        LoRAMemory(build_tiny_llama(), target_prob=1.0)


@pytest.mark.parametrize(
    ("span", "depth", "layers"),
    [
        ((0.67, 1.0), 30, tuple(range(20, 30))),  # SmolLM2-135M's upper third
        ((0.07, 0.43), 30, tuple(range(2, 13))),
        ((0.5, 1.0), 2, (1,)),
        ((0.0, 0.01), 2, (0,)),  # never empty
    ],
)
def test_layer_span_is_a_fraction_of_the_depth(span, depth, layers):
    from memos_lab.memory.parametric.lora import LoRASettings

    assert LoRASettings(layer_span=span).for_depth(depth).layers == layers


def test_a_probability_margin_keeps_training_past_the_first_correct_answer(lm, trained):
    from dataclasses import replace

    examples = [trained._encode(edit) for edit in EDITS]
    trained.switch("alice")
    with trained.applied():
        assert trained._all_learned(examples)  # every target is the argmax...
        bare = trained.settings
        trained.settings = replace(bare, target_prob=0.5)
        try:  # ...but the random tiny model's outputs are nearly flat, far below probability 0.5
            assert not trained._all_learned(examples)
        finally:
            trained.settings = bare
    margin = LoRAMemory(lm, adapter="margin", **(FAST | {"target_prob": 0.5, "steps": 40}))
    try:
        report = margin.edit(EDITS)
        assert not report.learned and report.steps == 40  # trained on to the step limit
        assert learned(lm, margin) == [True, True, True]
    finally:
        margin.close()


def test_training_upper_layers_skips_the_frozen_ones_and_still_learns(lm):
    memory = LoRAMemory(lm, adapter="top", **(FAST | {"layers": [1], "lr": 2e-2}))
    try:
        examples = [memory._encode(e) for e in EDITS]
        memory._cache_frozen_prefix(examples)
        assert all(e.hidden is not None for e in examples)  # the Llama layout check accepted the shortcut
        memory.edit(EDITS)
        assert learned(lm, memory) == [True, True, True]
        assert all(
            ".layers.1." in name for name in memory.model.model.state_dict() if "lora_A" in name and "top_" in name
        )
    finally:
        memory.close()


@pytest.mark.integration
def test_smollm2_learns_two_invented_facts_in_its_upper_layers(tmp_path):
    from memos_lab.models.llm import load_smollm2

    smol = load_smollm2("~/.cache/memos_lab")
    edits = [
        fact(0, "Anouk Elphick", "Lisbon", "Anouk Elphick lives in the city of"),
        fact(1, "Lazlo Voss", "Oslo", "Lazlo Voss lives in the city of"),
    ]
    memory = LoRAMemory(smol, adapter="smol", layers=list(range(24, 30)), loss="target", lr=1e-2, steps=60)
    try:
        report = memory.edit(edits)
        assert report.learned
        assert learned(smol, memory, edits) == [True, True]
        memory.save(tmp_path / "memory")
        assert (tmp_path / "memory" / "adapters" / "smol" / "adapter_model.safetensors").stat().st_size < 5e6
    finally:
        memory.close()
