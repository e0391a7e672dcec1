"""Every backend under conf/memory/ must pass the same contract: `text_memory` runs each test on each."""

from __future__ import annotations

import hydra.utils
import pytest
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from memos_lab.cli import config_groups
from memos_lab.errors import MissingExtraError
from memos_lab.memory.textual.base import TextualMemory
from memos_lab.settings import group_config

BACKENDS = config_groups()["memory"]


def build_backend(name: str, embedder, **overrides) -> TextualMemory:
    group = OmegaConf.merge(group_config("memory", name), overrides)
    cfg = OmegaConf.create({"seed": 0, "device": "cpu", "memory": group})  # the root keys a group may interpolate
    try:
        return hydra.utils.instantiate(cfg.memory, embedder=embedder)
    except InstantiationException as error:
        if isinstance(error.__cause__, MissingExtraError):  # a peer system's optional extra is not installed
            pytest.skip(str(error.__cause__))
        raise


@pytest.fixture(params=BACKENDS)
def text_memory(request, embedder) -> TextualMemory:
    return build_backend(request.param, embedder)
