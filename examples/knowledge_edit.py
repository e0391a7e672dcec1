"""Write a knowledge edit into a LoRA adapter and read it back from the edited model.

python examples/knowledge_edit.py     (tiny random Llama, a few seconds on a CPU)
"""

import tempfile

import memos_lab
from memos_lab.models.probe import greedy_continuations

model = memos_lab.build_tiny_llama(seed=0)
edit = memos_lab.KnowledgeEdit("e0", subject="Anouk Elphick", relation="city", prompt="Anouk Elphick lives in",
                               target_new="Oslo")  # fmt: skip
memory = memos_lab.LoRAMemory(model, adapter="facts", rank=8, alpha=16, lr=1e-2, steps=200, loss="target")
report = memory.edit([edit])
with memory.applied():  # the base model answers as loaded outside this block
    [continuation] = greedy_continuations(model, [edit.prompt], 6)
print(f"edited in {report.seconds:.1f}s: {edit.prompt!r} -> {model.tokenizer.decode(continuation)!r}")
assert model.tokenizer.decode(continuation).strip().startswith("Oslo")

with tempfile.TemporaryDirectory() as folder:
    memory.save(folder)  # a manifest plus one plain peft adapter folder per adapter
    memory.close()
    loaded = memos_lab.LoRAMemory.load(folder, model)
    assert [e.target_new for e in loaded.edits("facts")] == ["Oslo"]
    loaded.close()
