"""Building blocks shared by experiments."""

from __future__ import annotations

from typing import TypeVar

import hydra.utils
from omegaconf import DictConfig

from memos_lab.data.schema import Conversation, KnowledgeEdit
from memos_lab.errors import ConfigError, DataError

Record = TypeVar("Record", Conversation, KnowledgeEdit)
KIND_NAMES = {Conversation: "a dialogue dataset", KnowledgeEdit: "a knowledge-update dataset"}


def load_records(cfg: DictConfig, record_type: type[Record]) -> list[Record]:
    """Instantiate `cfg.dataset` and check it yields the records this experiment needs."""
    records = list(hydra.utils.instantiate(cfg.dataset))
    if not records:
        raise DataError("the dataset is empty")
    if not all(isinstance(record, record_type) for record in records):
        found = sorted({type(record).__name__ for record in records})
        raise ConfigError(
            f"experiment {cfg.experiment.name!r} needs {KIND_NAMES[record_type]}; the chosen dataset yields {found}"
        )
    return records
