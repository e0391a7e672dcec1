"""Plain peft adapter folders inside an artifact: written as `PeftModel.from_pretrained` reads them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # peft names weights relative to a PeftModel wrapper; ours sit on the bare model
# adapter_config.json keys that only describe where the adapter came from; nothing builds a model from them
PEFT_INFORMATIONAL = frozenset({"base_model_name_or_path", "revision", "peft_version", "inference_mode"})


def write_peft_adapter(folder: Path, config: Any, tensors: Mapping[str, Any]) -> None:
    """A plain peft adapter folder (loadable by `PeftModel.from_pretrained`) inside an artifact's staging:
    `tensors` named as on the bare model, `config` a LoraConfig."""
    from safetensors.torch import save_file  # torch is imported only by the kinds that store tensors

    folder = Path(folder)
    folder.mkdir(parents=True)
    save_file(
        {PEFT_PREFIX + name: t.detach().contiguous().clone() for name, t in tensors.items()}, str(folder / PEFT_WEIGHTS)
    )
    (folder / PEFT_CONFIG).write_text(json.dumps(_peft_json(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _peft_json(config: Any) -> dict[str, Any]:
    """A peft config as the JSON its save_pretrained writes (sets become sorted lists)."""
    return json.loads(
        json.dumps(config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set | frozenset) else str(v))
    )


def _canonical(value: Any) -> str:
    """Order-free form of a config value: peft keeps target modules as a set, so list order means nothing."""
    if isinstance(value, list):
        return json.dumps(sorted(_canonical(item) for item in value))
    return json.dumps(value, sort_keys=True)
