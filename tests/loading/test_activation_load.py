"""`python -m memos_lab load memory_type=activation`: KV caches of a cube's memories, stored and reloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from memos_lab.cli import CONF_DIR, LOAD_CONFIG_NAME, validate_overrides
from memos_lab.cube import MemCube
from memos_lab.errors import AccessDeniedError, ConfigError, IncompatibleError
from memos_lab.loading import activation, declarative
from memos_lab.memory.activation.compose.rerotate import RerotateComposition
from memos_lab.memory.activation.kv_cache import KVCacheMemory, memory_messages, prefill
from memos_lab.models.embedder import HashingEmbedder
from memos_lab.models.llm import build_tiny_llama

DATA = [
    "dataset=synthetic_dialogues",
    "dataset.n_conversations=1",
    "dataset.n_sessions=2",
    "dataset.turns_per_session=15",
]


def compose_load(*overrides: str):
    validate_overrides(overrides, config_name=LOAD_CONFIG_NAME)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(LOAD_CONFIG_NAME, overrides=list(overrides))


@pytest.fixture
def cube_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cube"
    declarative.load(compose_load("user=maya", f"cube_dir={folder}", "embedder=hashing", *DATA))
    return folder


def activation_cfg(cube_dir: Path, *extra: str):
    return compose_load(
        "memory_type=activation", "user=maya", f"cube_dir={cube_dir}", "embedder=hashing", "model=tiny_llama", *extra
    )


def test_caches_are_stored_in_the_cube_and_reused_exactly(cube_dir: Path) -> None:
    summary = activation.load(activation_cfg(cube_dir, "memory_type.max_items=5"))
    # a chunk per memory, the header they were encoded behind, the assembled set
    assert summary["memories"] == 5 and summary["caches_added"] == 5 and summary["caches_total"] == 7
    lm = build_tiny_llama(seed=0)  # the config's model, built again as a later process would
    cube = MemCube.load(cube_dir, HashingEmbedder(512), model=lm)
    memory = cube.activation
    assert isinstance(memory, KVCacheMemory) and len(memory.keys()) == 7
    texts = memory.texts(activation.SET_KEY)
    ids = lm.encode_chat([*memory_messages(texts), {"role": "user", "content": "Where do I live?"}])
    used = memory.prefill(ids)
    assert used.reused == len(memory.get(activation.SET_KEY))
    assert torch.allclose(used.logits, prefill(lm, ids).logits, atol=1e-5, rtol=0)
    # the loaded chunks are ready to compose, in any order, with nothing encoded again
    lines = list(reversed(texts))
    item_of = {memory.texts(s.key)[0]: s.items[0] for s in memory.stats() if s.kind == "chunk"}
    composed = memory.compose(lines, RerotateComposition(), [item_of[line] for line in lines])
    assert composed.encoded_tokens == 0 and composed.bytes_copied > 0
    again = activation.load(activation_cfg(cube_dir, "memory_type.max_items=5"))
    assert again["caches_added"] == 0 and again["caches_total"] == 7  # idempotent


def test_cube_with_caches_of_another_model_is_refused(cube_dir: Path) -> None:
    activation.load(activation_cfg(cube_dir, "memory_type.max_items=2"))
    with pytest.raises(IncompatibleError, match="made with model"):
        MemCube.load(cube_dir, HashingEmbedder(512), model=build_tiny_llama(seed=1))


def test_missing_cube_and_extra_sources_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no cube"):
        activation.load(activation_cfg(tmp_path / "none"))
    with pytest.raises(ConfigError, match="memory_type=declarative"):
        activation.load(activation_cfg(tmp_path / "none", "dataset=synthetic_dialogues"))


def test_another_users_cube_is_refused(cube_dir: Path) -> None:
    cfg = compose_load(
        "memory_type=activation", "user=tom", f"cube_dir={cube_dir}", "embedder=hashing", "model=tiny_llama"
    )
    with pytest.raises(AccessDeniedError):
        activation.load(cfg)
