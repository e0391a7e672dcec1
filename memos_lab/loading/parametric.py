"""Train a user's knowledge edits into their adapter of a cube's parametric memory (any ParametricMemory).

`python -m memos_lab load memory_type=parametric user=U cube_dir=DIR (dataset=NAME | input=FACTS.jsonl)
[parametric=lora_ftm|lora_kl|gated_lora|lora ...]`: the cube (created if absent) gets a parametric memory
with the chosen method, or keeps the one it has; each user trains their own named adapter in it.
"""

from __future__ import annotations

import time
from typing import Any

import hydra.utils
import torch
from omegaconf import DictConfig

from memos_lab.data.knowledge import load_facts
from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import ConfigError, DataError
from memos_lab.loading.common import LoaderSettings, cube_writer, open_cube, positive_int, required, save_cube
from memos_lab.settings import uses_settings


@uses_settings(LoaderSettings)
@cube_writer
def load(cfg: DictConfig) -> dict[str, Any]:
    user = required(cfg, "user")
    has_dataset, has_input = cfg.get("dataset") is not None, cfg.get("input") is not None
    if has_dataset == has_input:
        raise ConfigError("load needs exactly one source: dataset=NAME or input=FACTS.jsonl")
    edits = _edits(cfg)  # read and checked before the cube or the model is touched
    if cfg.get("threads") is not None:
        torch.set_num_threads(positive_int(cfg.threads, "threads"))
    cube, created = open_cube(cfg, hydra.utils.instantiate(cfg.embedder))
    memory = cube.parametric
    if memory is None:
        model = hydra.utils.instantiate(cfg.model)
        # partial: Hydra would turn the LanguageModel dataclass into a config if passed as a kwarg
        memory = hydra.utils.instantiate(cfg.parametric, _partial_=True)(model=model, adapter=user)
        cube.parametric = memory
    elif user in memory.adapters:
        memory.switch(user)
    else:
        memory.create_adapter(user)
    # Idempotent: an edit the adapter already holds (same prompt and target) is not trained again.
    known = {(e.prompt, e.target_new) for e in memory.edits(user)}
    new = [e for e in edits if (e.prompt, e.target_new) not in known]
    started = time.perf_counter()
    report = memory.edit(new) if new else None
    return {
        **save_cube(cfg, cube, created),
        "adapter": user,
        "adapters": ",".join(memory.adapters),
        "source": str(cfg.input) if has_input else cfg.dataset._target_,
        "edits_read": len(edits),
        "edits_trained": len(new),
        "edits_already_stored": len(edits) - len(new),
        "edits_total": len(memory.edits(user)),
        "steps": report.steps if report else 0,
        "learned": report.learned if report else True,
        "train_s": time.perf_counter() - started,
    }


def _edits(cfg: DictConfig) -> list[KnowledgeEdit]:
    if cfg.get("input") is not None:
        return load_facts(str(cfg.input))
    records = list(hydra.utils.instantiate(cfg.dataset))
    wrong = sorted({type(r).__name__ for r in records if not isinstance(r, KnowledgeEdit)})
    if wrong:
        raise ConfigError(f"parametric loading reads knowledge-update datasets; the chosen dataset yields {wrong}")
    if not records:
        raise DataError("the dataset is empty")
    return records
