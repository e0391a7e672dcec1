"""The adapter store: named peft LoRA adapters of one memory on a shared base model, and their artifact.

Both ways of writing knowledge into weights keep it here: gradient LoRA (lora.py) trains an adapter, and the
locate-then-edit solvers (locate_edit.py) compute a delta and store it as one. The store does the rest, once:
create, switch, remove, apply, gate, merge, save and load, with the model fingerprint and every refusal.

Adapters are injected into the shared model under a unique internal name, so memories of different cubes
can sit on one model side by side, and are off except inside `applied()`, so the base model answers as loaded
everywhere else. Stored as an artifact (`memos_lab.artifact`):

    manifest.json                      kind "lora", base-model fingerprint, settings, gate, edits per adapter
    adapters/<name>/adapter_config.json + adapter_model.safetensors     a plain peft adapter folder

On load the adapter's LoRA config is rebuilt from the manifest's settings; the stored adapter_config.json
must say the same, so no file can add peft options that change the shared base model.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, NotRequired, Self, TypedDict, cast

import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer

from memos_lab.artifact import (
    MANIFEST,
    VERSION,
    Artifact,
    check_json,
    file_entry,
    read_artifact,
    write_artifact,
    write_peft_adapter,
)
from memos_lab.data.knowledge import edit_from_record, edit_to_record
from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import ConfigError, DataError, IncompatibleError, MemosError, NotFoundError
from memos_lab.memory.item import new_id
from memos_lab.memory.parametric.base import ParametricMemory
from memos_lab.memory.parametric.gate import EditGate
from memos_lab.models.llm import LanguageModel
from memos_lab.settings import Settings

KIND = "lora"
ADAPTERS_DIR = "adapters"
WEIGHTS = "adapter_model.safetensors"
GATE_TARGET = "meta.gate.embedder"  # the one place a LoRA manifest names a class by `_target_`
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # fullmatch: "$" would let a trailing newline through


@dataclass(frozen=True)
class LayerSettings(Settings):
    """What every adapter method's settings share: layers picked by number or as a span of the depth, and
    the seed of a fresh adapter's initialisation."""

    section: ClassVar[str] = "parametric"
    layers: tuple[int, ...] | None = None
    layer_span: tuple[float, float] | None = None
    seed: int = 0

    def for_depth(self, depth: int) -> Self:
        """These settings with layer_span turned into the layer numbers of a model with `depth` layers."""
        if self.layer_span is None:
            return self
        first = math.floor(self.layer_span[0] * depth)
        last = max(first + 1, math.ceil(self.layer_span[1] * depth))
        return replace(self, layers=tuple(range(first, min(last, depth))), layer_span=None)


@dataclass
class Adapter:
    key: str  # its name on the shared model
    edits: list[KnowledgeEdit] = field(default_factory=list)
    gate: EditGate | None = None


class AdapterStore:
    """A memory's named adapters on the shared `model`, of which one is active; `gate` is the prototype
    every adapter's own gate copies its settings from (None: every prompt is answered)."""

    def __init__(self, model: LanguageModel, seed: int, gate: EditGate | None = None) -> None:
        self.model = model
        self.seed = seed  # LoRA A of every fresh adapter is drawn with it
        self.gate = gate
        self.enabled = True
        self._adapters: dict[str, Adapter] = {}
        self._active: str | None = None
        self._uid = new_id()[:8]

    @property
    def names(self) -> list[str]:
        return list(self._adapters)

    @property
    def active(self) -> str:
        if self._active is None:
            raise NotFoundError("this parametric memory has no adapter; create_adapter(name) first")
        return self._active

    def get(self, name: str | None = None) -> Adapter:
        """The adapter `name` (the active one by default); NotFoundError if unknown."""
        name = self.active if name is None else name
        if name not in self._adapters:
            raise NotFoundError(f"no adapter {name!r}; this memory has {self.names}")
        return self._adapters[name]

    def create(self, name: str, config: LoraConfig) -> None:
        """A fresh adapter (LoRA B starts at zero: no change yet), made the active one."""
        if not ADAPTER_NAME.fullmatch(name):
            raise ConfigError(f"adapter name {name!r}: use 1-64 letters, digits, '_' or '-'")
        if name in self._adapters:
            raise ConfigError(f"adapter {name!r} already exists; switch({name!r}) to use it")
        self.attach(name, config, state=None)
        self._active = name

    def switch(self, name: str) -> None:
        self.get(name)
        self._active = name

    def remove(self, name: str) -> None:
        adapter = self.get(name)
        with warnings.catch_warnings():  # peft warns when the adapter it deletes was the active one
            warnings.simplefilter("ignore")
            self.model.model.delete_adapter(adapter.key)
        del self._adapters[name]
        if self._active == name:
            self._active = next(iter(self._adapters), None)
        self.base_only()

    def close(self) -> None:
        """Take every adapter of this store off the shared model."""
        for name in list(self._adapters):
            self.remove(name)

    def replace(self, name: str, config: LoraConfig, edits: list[KnowledgeEdit]) -> Adapter:
        """Adapter `name` made afresh with `config` (zero weights for the caller to fill) and `edits`."""
        old = self._adapters.pop(name)
        self.model.model.delete_adapter(old.key)
        self.attach(name, config, state=None)
        self._adapters[name].edits = edits
        return self._adapters[name]

    def attach(self, name: str, config: LoraConfig, state: dict[str, torch.Tensor] | None) -> None:
        """Inject adapter `name` into the shared model (with the weights `state`, checked, when given)."""
        key = f"{name.replace('-', '_')}_{self._uid}"
        model = self.model.model
        try:
            # LoRA A is drawn from the global generator: fork it, so the seed alone decides the init
            with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
                warnings.simplefilter("ignore")  # peft warns whenever a model gets a second adapter
                torch.manual_seed(self.seed)
                model.add_adapter(config, adapter_name=key)
        except (ValueError, KeyError) as error:  # e.g. target modules this model does not have
            self.base_only()
            raise IncompatibleError(f"adapter {name!r} does not fit model {self.model.name}: {error}") from error
        try:
            if state is not None:
                _load_state(model, key, state, name)
        except BaseException:
            model.delete_adapter(key)
            raise
        finally:
            self.base_only()
        self._adapters[name] = Adapter(key=key, gate=self._new_gate())

    def _new_gate(self) -> EditGate | None:
        if self.gate is None:
            return None
        gate = EditGate(**self.gate.settings())
        gate._embedder = self.gate._embedder  # share one loaded embedder between the adapters' gates
        return gate

    def base_only(self) -> None:
        """Every adapter off: the shared model answers as loaded."""
        if getattr(self.model.model, "_hf_peft_config_loaded", False):
            self.model.model.disable_adapters()

    @contextmanager
    def on(self, key: str) -> Iterator[None]:
        """Within the block the shared model answers with the adapter of internal name `key`."""
        model = self.model.model
        model.set_adapter(key)
        model.enable_adapters()
        try:
            yield
        finally:
            model.disable_adapters()

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The active adapter on within the block (nothing when disabled or empty)."""
        if not self.enabled or self._active is None:
            yield
            return
        with self.on(self.get().key):
            yield

    def applies(self, prompts: Sequence[str]) -> list[bool]:
        adapter = self.get()
        if adapter.gate is None:
            return [True] * len(prompts)
        return adapter.gate.applies(prompts)

    def merged(self) -> LanguageModel:
        """A new model with the active adapter merged into a copy of the base weights.

        A copy, because merging in place would silently change the model every other adapter (and the
        fingerprint in their manifests) was trained on."""
        key = self.get().key
        clone = copy.deepcopy(self.model.model)
        for module in clone.modules():
            if isinstance(module, LoraLayer) and key in module.lora_A:
                module.merge(safe_merge=True, adapter_names=[key])
        for name, module in list(clone.named_modules()):
            if isinstance(module, BaseTunerLayer):
                parent_name, _, child = name.rpartition(".")
                setattr(clone.get_submodule(parent_name), child, module.get_base_layer())
        del clone.peft_config
        clone._hf_peft_config_loaded = False
        return LanguageModel(model=clone, tokenizer=self.model.tokenizer, name=f"{self.model.name}+{self._active}")

    # -- persistence ------------------------------------------------------------------------------
    def save(self, folder: Path, method: str, settings: Mapping[str, Any]) -> None:
        """Write the store as an artifact into `folder` (absent, empty or an earlier save), all at once."""
        meta = {
            "method": method,
            "settings": dict(settings),
            "gate": self.gate.settings() if self.gate is not None else None,
            "active": self._active,
            "enabled": self.enabled,
            "adapters": [
                {
                    "name": name,
                    "rank": cast(LoraConfig, self.model.model.peft_config[adapter.key]).r,
                    "edits": [edit_to_record(edit) for edit in adapter.edits],
                }
                for name, adapter in self._adapters.items()
            ],
        }

        def build(staging: Path) -> None:
            for name, adapter in self._adapters.items():
                state = get_peft_model_state_dict(self.model.model, adapter_name=adapter.key)
                write_peft_adapter(staging / ADAPTERS_DIR / name, self.model.model.peft_config[adapter.key], state)

        write_artifact(Path(folder), KIND, meta, build=build, fingerprint=self.model.fingerprint())

    def restore(self, artifact: Artifact, config_of: Callable[[Mapping[str, Any]], LoraConfig]) -> None:
        """Attach the adapters of a verified artifact, each with the config `config_of(its manifest entry)`
        rebuilds; every adapter is read before the model is touched, so a bad file leaves it as it was."""
        folder, meta = artifact.folder, artifact.meta
        loaded = []
        for i, entry in enumerate(meta["adapters"]):
            name = entry["name"]
            if not ADAPTER_NAME.fullmatch(name):
                raise DataError(f"{artifact.where(f'meta.adapters[{i}].name')}: bad adapter name {name!r}")
            check_json(entry["edits"], list[KnowledgeEdit], str(folder / MANIFEST), prefix=f"meta.adapters[{i}].edits")
            edits = [edit_from_record(r, f"{folder} edit {j}") for j, r in enumerate(entry["edits"])]
            config = config_of(entry)
            state = artifact.read_peft_adapter(f"{ADAPTERS_DIR}/{name}", config)
            loaded.append((name, copy.deepcopy(config), state, edits))
        try:
            for name, config, state, edits in loaded:
                self.attach(name, config, state)
                self._adapters[name].edits = edits
                adapter_gate = self._adapters[name].gate
                if adapter_gate is not None and edits:
                    adapter_gate.add(edits)
        except BaseException:
            self.close()
            raise
        active = meta["active"]
        self._active = active if active in self._adapters else next(iter(self._adapters), None)
        self.enabled = meta["enabled"]


class AdapterMemory(ParametricMemory):
    """A parametric memory whose knowledge sits in an `AdapterStore`: a method adds how it writes edits
    (`edit`) and the LoRA config of its adapters; everything else is the store's."""

    method: ClassVar[str]  # recorded in the manifest; a memory loads only a folder of its own method
    settings_class: ClassVar[type[LayerSettings]]
    settings: LayerSettings  # an instance of settings_class (each method narrows the type to its own)

    def __init__(
        self, model: LanguageModel, gate: EditGate | None = None, adapter: str | None = "default", **settings: Any
    ) -> None:
        self.model = model
        self.settings = self.settings_class.from_mapping(settings).for_depth(model.model.config.num_hidden_layers)
        self.store = AdapterStore(model, self.settings.seed, gate)
        if adapter is not None:
            self.create_adapter(adapter)

    @abstractmethod
    def adapter_config(self, entry: Mapping[str, Any] | None = None) -> LoraConfig:
        """The LoRA config of a fresh adapter (`entry` None) or of a stored one (its manifest entry): always
        rebuilt from the settings, never read from disk."""

    # -- the store's ------------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return self.store.names

    @property
    def active_adapter(self) -> str:
        return self.store.active

    def edits(self, name: str | None = None) -> list[KnowledgeEdit]:
        return list(self.store.get(name).edits)

    def create_adapter(self, name: str) -> None:
        self.store.create(name, self.adapter_config())

    def switch(self, name: str) -> None:
        self.store.switch(name)

    def remove_adapter(self, name: str) -> None:
        self.store.remove(name)

    def close(self) -> None:
        self.store.close()

    def enable(self) -> None:
        self.store.enabled = True

    def disable(self) -> None:
        self.store.enabled = False

    @contextmanager
    def applied(self) -> Iterator[None]:
        with self.store.applied():
            yield

    def applies(self, prompts: Sequence[str]) -> list[bool]:
        return self.store.applies(prompts)

    def merged(self) -> LanguageModel:
        """A new model with the active adapter merged into a copy of the base weights."""
        return self.store.merged()

    def save(self, folder: Path) -> None:
        self.store.save(folder, self.method, asdict(self.settings))

    @classmethod
    def load(cls, folder: Path, model: LanguageModel) -> Self:
        folder = Path(folder)
        artifact = read_artifact(
            folder, KIND, fingerprint=model.fingerprint(), targets={GATE_TARGET: "embedder"}, migrate=_from_version_1
        )
        artifact.check_meta(AdapterMeta)
        meta = artifact.meta
        if meta.get("method", "lora") != cls.method:
            raise IncompatibleError(f"{folder} holds a {meta.get('method')!r} memory, not {cls.method!r}")
        try:
            settings = cls.settings_class.from_mapping(meta["settings"])
            gate = EditGate.from_stored(meta["gate"], artifact.where("meta.gate")) if meta["gate"] else None
        except (TypeError, ValueError, MemosError) as error:
            raise IncompatibleError(f"{artifact.where('meta.settings/gate')}: {error}") from None
        hidden = model.model.config.hidden_size
        rank = getattr(settings, "rank", None)  # None: an editor's exact delta, sized by its edits
        if rank is not None and rank > hidden:  # checked before anything of that size is allocated
            raise IncompatibleError(
                f"{artifact.where('meta.settings.rank')}: {rank} is above the model's width {hidden}"
            )
        settings = settings.for_depth(model.model.config.num_hidden_layers)
        memory = cls(model, gate=gate, adapter=None, **asdict(settings))  # attaches nothing yet
        memory.store.restore(artifact, memory.adapter_config)
        return memory


class _AdapterEntry(TypedDict):
    name: str
    rank: NotRequired[int]
    edits: list[dict[str, Any]]


class AdapterMeta(TypedDict):
    method: NotRequired[str]
    settings: dict[str, Any]
    gate: dict[str, Any] | None
    active: str | None
    enabled: bool
    adapters: list[_AdapterEntry]


def _from_version_1(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A LoRA manifest written before the artifact module (kind "lora", schema_version 1). It recorded no
    file sizes or hashes: the two files of each named adapter are taken as they are (still confined, no
    links, regular files) and everything else is checked as for a current save."""
    where = f"{folder / MANIFEST}"
    if raw.get("kind") != KIND or raw.get("schema_version") != 1:
        raise IncompatibleError(f"{folder} does not hold a LoRA memory ({MANIFEST} kind/schema_version is not lora/1)")
    check_json(raw.get("adapters"), list[_AdapterEntry], where, prefix="adapters")
    files = {}
    for i, entry in enumerate(raw["adapters"]):
        if not ADAPTER_NAME.fullmatch(entry["name"]):
            raise DataError(f"{where}: adapters[{i}].name: bad adapter name {entry['name']!r}")
        for file in ("adapter_config.json", WEIGHTS):
            name = f"{ADAPTERS_DIR}/{entry['name']}/{file}"
            files[name] = file_entry(folder, name)
    return {
        "format": "memos_lab.artifact",
        "version": VERSION,
        "kind": KIND,
        "created_at": "",
        "fingerprint": raw.get("fingerprint"),
        "meta": {key: raw[key] for key in AdapterMeta.__annotations__ if key in raw},
        "files": files,
        "children": [],
    }


def _load_state(model: torch.nn.Module, key: str, state: dict[str, torch.Tensor], name: str) -> None:
    """Copy saved LoRA weights into adapter `key`, checking names and shapes first."""
    expected = get_peft_model_state_dict(model, adapter_name=key)
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise IncompatibleError(
            f"adapter {name!r}: weights do not match its config (missing {missing[:3]}, extra {extra[:3]})"
        )
    for tensor_name, tensor in state.items():
        if tensor.shape != expected[tensor_name].shape:
            raise IncompatibleError(
                f"adapter {name!r}: {tensor_name} has shape {tuple(tensor.shape)}, "
                f"the model needs {tuple(expected[tensor_name].shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise IncompatibleError(f"adapter {name!r}: {tensor_name} holds non-finite values")
    set_peft_model_state_dict(model, state, adapter_name=key)
