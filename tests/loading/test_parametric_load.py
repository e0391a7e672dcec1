"""`python -m memos_lab load memory_type=parametric ...`: a user's adapter trained and stored in their cube."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from memos_lab.cli import CONF_DIR, LOAD_CONFIG_NAME, validate_overrides
from memos_lab.cube import MemCube
from memos_lab.errors import ConfigError, DataError
from memos_lab.loading.parametric import load
from memos_lab.memory.parametric.lora import LoRAMemory
from memos_lab.models.embedder import HashingEmbedder
from memos_lab.models.llm import build_tiny_llama

FAST = [
    "model=tiny_llama",
    "embedder=hashing",
    "threads=1",
    "parametric.lr=1e-2",
    "parametric.batch_size=4",
    "parametric.layers=null",
]


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def compose_load(*overrides: str):
    validate_overrides(overrides, config_name=LOAD_CONFIG_NAME)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(LOAD_CONFIG_NAME, overrides=list(overrides))


def test_facts_train_the_users_adapter_into_the_cube_and_reloading_trains_nothing(tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text(
        json.dumps({"edit_id": "f1", "subject": "Mira Okafor", "prompt": "Mira Okafor lives in", "target_new": "Oslo"})
        + "\n"
    )
    cube_dir = tmp_path / "cube"
    cfg = compose_load("memory_type=parametric", "user=alice", f"cube_dir={cube_dir}", f"input={facts}", *FAST)
    summary = load(cfg)
    assert summary["created"] and summary["edits_trained"] == 1 and summary["learned"]
    again = load(cfg)
    assert not again["created"] and again["edits_trained"] == 0 and again["edits_already_stored"] == 1
    more = load(
        compose_load(
            "memory_type=parametric",
            "user=alice",
            f"cube_dir={cube_dir}",
            "dataset=synthetic_facts",
            "dataset.n_edits=2",
            *FAST,
        )
    )
    assert more["edits_trained"] == 2 and more["edits_total"] == 3

    cube = MemCube.load(cube_dir, HashingEmbedder(dim=512), model=build_tiny_llama(seed=0))
    assert isinstance(cube.parametric, LoRAMemory) and cube.parametric.adapters == ["alice"]
    assert (cube_dir / "parametric" / "adapters" / "alice" / "adapter_model.safetensors").is_file()
    cube.parametric.close()


def test_bad_sources_are_refused_before_anything_is_stored(tmp_path):
    cube_dir = tmp_path / "cube"
    with pytest.raises(ConfigError, match="exactly one source"):
        load(compose_load("memory_type=parametric", "user=alice", f"cube_dir={cube_dir}", *FAST))
    with pytest.raises(ConfigError, match="knowledge-update datasets"):
        load(
            compose_load(
                "memory_type=parametric",
                "user=alice",
                f"cube_dir={cube_dir}",
                "dataset=synthetic_dialogues",
                "dataset.n_conversations=1",
                *FAST,
            )
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"edit_id": "f1", "subject": "X", "prompt": "X lives in"}) + "\n")
    with pytest.raises(DataError, match="missing key 'target_new'"):
        load(compose_load("memory_type=parametric", "user=alice", f"cube_dir={cube_dir}", f"input={bad}", *FAST))
    assert not cube_dir.exists()


def test_a_closed_form_editor_is_stored_in_the_cube_and_loaded_back(tmp_path):
    cube_dir = tmp_path / "cube"
    editor = [
        "model=tiny_llama",
        "embedder=hashing",
        "threads=1",
        "parametric=memit",
        "parametric.layer_span=null",
        "parametric.layer_span=null",
        "parametric.layers=[0]",
        "parametric.v_steps=5",
        "parametric.stats_tokens=1500",
        "parametric.stats_corpus=synthetic",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    summary = load(
        compose_load(
            "memory_type=parametric",
            "user=alice",
            f"cube_dir={cube_dir}",
            "dataset=synthetic_facts",
            "dataset.n_edits=3",
            *editor,
        )
    )
    assert summary["created"] and summary["edits_trained"] == 3
    cube = MemCube.load(cube_dir, HashingEmbedder(dim=512), model=build_tiny_llama(seed=0))
    try:
        assert type(cube.parametric).__name__ == "MEMITMemory" and cube.parametric.adapters == ["alice"]
        assert len(cube.parametric.edits("alice")) == 3
    finally:
        cube.parametric.close()
