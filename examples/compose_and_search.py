"""Compose a MOS from the configs, add memories, search them, save the cube and open it again.

python examples/compose_and_search.py     (hashing embedder: no model, runs in seconds)
"""

import tempfile

import memos_lab

with tempfile.TemporaryDirectory() as root:
    mos = memos_lab.build_mos(memory="general_text", embedder="hashing", root=root)
    mos.register_user("alice")
    mos.create_cube("alice", cube_id="alice-notes")
    mos.add("alice", "alice-notes", ["Alice moved to Lisbon in May.", "Alice's cat is called Miso."])
    [hit] = mos.search("alice", "What is the name of Alice's cat?", top_k=1)
    print(f"{hit.score:.3f} {hit.item.text}")
    mos.save("alice", "alice-notes")  # crash-safe; the cube folder is an artifact under root/

    reopened = memos_lab.build_mos(memory="general_text", embedder="hashing", root=root)
    [again] = reopened.search("alice", "What is the name of Alice's cat?", top_k=1)
    assert again.item.text == hit.item.text == "Alice's cat is called Miso."
