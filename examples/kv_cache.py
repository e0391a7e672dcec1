"""Cache a memory's KV once and answer from it: the prompt's memory prefix is never prefilled again.

python examples/kv_cache.py     (tiny random Llama: the answer is noise, the reuse is real)
"""

import tempfile

import memos_lab
from memos_lab.memory.activation.kv_cache import memory_messages

model = memos_lab.build_tiny_llama(seed=0)
memory = memos_lab.KVCacheMemory(model, budget_mb=64)
facts = ["Alice moved to Lisbon in May."]
memory.add("alice", facts[0])  # the system message holding the memory, prefilled once
question = {"role": "user", "content": "Where does Alice live?"}
prompt = model.encode_chat([*memory_messages(facts, memory.template), question])
answer, _, reused = memory.generate(prompt, max_new_tokens=8)
print(f"reused {reused} of {len(prompt)} prompt tokens; answer ids {answer}")
assert reused > 0

with tempfile.TemporaryDirectory() as folder:
    memory.save(folder)  # safetensors + a manifest holding the model's fingerprint
    loaded = memos_lab.KVCacheMemory.load(folder, model)
    assert loaded.keys() == ["alice"] and loaded.generate(prompt, max_new_tokens=8)[0] == answer
