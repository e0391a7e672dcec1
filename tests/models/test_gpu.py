"""On a CUDA GPU (marked `gpu`: skipped elsewhere; scripts/device_check.sh runs them): the model, the KV cache
and LoRA memories work on the device, batched answers equal one-by-one ones, the fingerprint does not depend
on the device, and a realistic random_llama shape decodes in bf16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memos_lab.data.schema import KnowledgeEdit
from memos_lab.memory.activation.kv_cache import KVCacheMemory, generate
from memos_lab.models.decode import greedy, greedy_batch
from memos_lab.models.llm import build_random_llama, build_tiny_llama

pytestmark = pytest.mark.gpu

QUESTIONS = ["Where does Maya live?", "What is the name of Leo's dog?", "hi"]


def test_fingerprint_and_answers_do_not_depend_on_the_device():
    cpu, gpu = build_tiny_llama(seed=0, device="cpu"), build_tiny_llama(seed=0, device="cuda", dtype="float32")
    assert gpu.device.type == "cuda" and gpu.fingerprint() == cpu.fingerprint()
    ids = [gpu.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    alone = [greedy(gpu, p, 8).token_ids for p in ids]
    assert greedy_batch(gpu, ids, 8).token_ids == alone
    assert alone == [greedy(cpu, p, 8).token_ids for p in ids]


def test_kv_cache_memory_on_the_gpu_survives_a_save_and_load(tmp_path: Path):
    lm = build_tiny_llama(seed=0, device="cuda", dtype="float32")
    memory = KVCacheMemory(lm)
    memory.add("maya", "Maya moved to Lisbon in May.")
    ids = lm.encode_chat([{"role": "system", "content": "Memories about the user:\nMaya moved to Lisbon in May."},
                          {"role": "user", "content": "Where does Maya live?"}])  # fmt: skip
    answer, _, reused = memory.generate(ids, max_new_tokens=8)
    assert reused > 0 and answer == generate(lm, ids, None, max_new_tokens=8)[0]
    memory.save(tmp_path / "kv")
    loaded = KVCacheMemory.load(tmp_path / "kv", lm)  # tensors read to the CPU, moved to the model's device on use
    assert loaded.generate(ids, max_new_tokens=8)[0] == answer


def test_lora_memory_trains_and_answers_on_the_gpu():
    from memos_lab.memory.parametric.lora import LoRAMemory

    lm = build_tiny_llama(seed=0, device="cuda", dtype="float32")
    memory = LoRAMemory(lm, rank=4, steps=30, target_modules=["q_proj", "v_proj"])
    report = memory.edit(
        [
            KnowledgeEdit(
                edit_id="e1", subject="Maya", relation="lives in", prompt="Maya lives in the city of", target_new="Oslo"
            )
        ]
    )
    assert report.steps > 0 and next(lm.model.parameters()).device.type == "cuda"
    memory.close()


def test_a_realistic_random_llama_shape_decodes_in_bf16():
    lm = build_random_llama("1b", device="cuda", dtype="bf16")
    assert lm.model.dtype == torch.bfloat16 and lm.device.type == "cuda"
    ids = lm.encode_chat([{"role": "user", "content": "hello " * 200}])
    assert len(greedy(lm, ids, 4, stop=False).token_ids) == 4
