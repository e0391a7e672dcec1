"""LoRA parametric memory: knowledge edits trained into named peft adapters on a shared base model.

Each memory owns one or more named adapters (one per user or cube) injected into the shared model under
a unique internal name, so memories of different cubes can sit on one model side by side. Adapters are
off except inside `applied()`, so the base model answers as loaded everywhere else. Stored as an artifact
(`memos_lab.artifact`):

    manifest.json                      kind "lora", base-model fingerprint, settings, gate, edits per adapter
    adapters/<name>/adapter_config.json + adapter_model.safetensors     a plain peft adapter folder

On load the adapter's LoRA config is rebuilt from the manifest's settings; the stored adapter_config.json
must say the same, so no file can add peft options that change the shared base model.
"""

from __future__ import annotations

import copy
import math
import random
import re
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
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
from memos_lab.memory.parametric.base import EditReport, ParametricMemory, check_batch
from memos_lab.memory.parametric.gate import EditGate
from memos_lab.models.llm import LanguageModel
from memos_lab.models.probe import encode_prompt, encode_target, left_padded
from memos_lab.settings import (
    Settings,
    non_negative,
    non_negative_int,
    one_of,
    positive,
    positive_int,
    probability,
    span,
)

KIND = "lora"
ADAPTERS_DIR = "adapters"
WEIGHTS = "adapter_model.safetensors"
GATE_TARGET = "meta.gate.embedder"  # the one place a LoRA manifest names a class by `_target_`
LOSSES = ("target", "sequence")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
IGNORE = -100  # label of tokens outside the loss

TRUNCATABLE = ("llama", "mistral", "qwen2")  # decoders whose LlamaModel-style forward takes layer input as embeds


@dataclass
class _Example:
    prompt: list[int]
    target: list[int]
    hidden: torch.Tensor | None = None  # the frozen input of the lowest adapted layer, when cached


@dataclass(frozen=True)
class LayerSettings(Settings):
    """What every adapter method's settings share: layers picked by number or as a span of the depth."""

    section: ClassVar[str] = "parametric"
    layers: tuple[int, ...] | None = None
    layer_span: tuple[float, float] | None = None

    def for_depth(self, depth: int) -> Self:
        """These settings with layer_span turned into the layer numbers of a model with `depth` layers."""
        if self.layer_span is None:
            return self
        first = math.floor(self.layer_span[0] * depth)
        last = max(first + 1, math.ceil(self.layer_span[1] * depth))
        return replace(self, layers=tuple(range(first, min(last, depth))), layer_span=None)


@dataclass(frozen=True)
class LoRASettings(LayerSettings):
    """How edits are trained. `loss="target"` puts the loss on the target tokens only (FT-M style);
    `"sequence"` fine-tunes on the whole prompt + target text (plain FT-L, parametric=lora)."""

    section: ClassVar[str] = "parametric"
    config_keys: ClassVar[Mapping[str, Any]] = {"adapter": "default", "gate": None}  # LoRAMemory's own arguments
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    layers: tuple[int, ...] | None = None  # None: every layer (or the layer_span)
    # [lo, hi): the adapted layers as fractions of the model's depth, so one config fits models of any depth
    layer_span: tuple[float, float] | None = None
    steps: int = 300  # upper bound per `edit` call (the committed lora_update results ran with 300)
    lr: float = 1e-3
    batch_size: int = 8
    loss: str = "sequence"
    # KL(base || edited) on unrelated anchor prompts, weighted into the loss; 0 disables it
    locality_weight: float = 0.0
    locality_prompts: tuple[str, ...] = ()
    replay: int = 0  # earlier edits of this adapter mixed into a later batch (sequential editing)
    stop_when_learned: bool = True  # stop once every target is learned (below)
    # a target is learned when each of its tokens is the teacher-forced argmax with at least this
    # probability: a margin above the bare argmax carries the edit over to paraphrases better
    target_prob: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        positive_int(self, "rank", "steps", "batch_size")
        positive(self, "lr", "alpha")
        probability(self, "dropout", "target_prob", top=False)
        one_of(self, "loss", LOSSES)
        non_negative(self, "locality_weight")
        non_negative_int(self, "replay")
        if self.locality_weight > 0 and not self.locality_prompts:
            raise ConfigError("parametric.locality_weight > 0 needs parametric.locality_prompts")
        if not self.target_modules:
            raise ConfigError("parametric.target_modules is empty")
        if self.layer_span is not None and self.layers is not None:
            raise ConfigError(
                "parametric: set layers or layer_span, not both (add parametric.layer_span=null to pick layers by number)"
            )
        span(self, "layer_span")

    def lora_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,  # type: ignore[arg-type]  # peft annotates int; any number scales
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            layers_to_transform=list(self.layers) if self.layers is not None else None,
            bias="none",
        )


@dataclass
class _Adapter:
    key: str  # its name on the shared model
    edits: list[KnowledgeEdit] = field(default_factory=list)
    gate: EditGate | None = None


class LoRAMemory(ParametricMemory):
    method: ClassVar[str] = "lora"  # recorded in the manifest; a memory loads only a folder of its own method
    settings_class: ClassVar[type[LayerSettings]] = LoRASettings
    settings: LoRASettings  # an instance of settings_class; LocateThenEditMemory narrows it to its own

    def __init__(
        self, model: LanguageModel, gate: EditGate | None = None, adapter: str | None = "default", **settings: Any
    ) -> None:
        self.model = model
        resolved = self.settings_class.from_mapping(settings).for_depth(model.model.config.num_hidden_layers)
        self.settings = resolved  # type: ignore[assignment]  # resolved is an instance of this class's settings_class
        self.gate = gate  # the prototype every adapter's own gate copies its settings from
        self.enabled = True
        self._adapters: dict[str, _Adapter] = {}
        self._active: str | None = None
        self._uid = new_id()[:8]
        if adapter is not None:
            self.create_adapter(adapter)

    # -- adapters ---------------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    @property
    def active_adapter(self) -> str:
        if self._active is None:
            raise NotFoundError("this parametric memory has no adapter; create_adapter(name) first")
        return self._active

    def edits(self, name: str | None = None) -> list[KnowledgeEdit]:
        return list(self._adapter(name).edits)

    def create_adapter(self, name: str) -> None:
        """A fresh adapter (LoRA B starts at zero: no change yet), made the active one."""
        if not _NAME.match(name):
            raise ConfigError(f"adapter name {name!r}: use 1-64 letters, digits, '_' or '-'")
        if name in self._adapters:
            raise ConfigError(f"adapter {name!r} already exists; switch({name!r}) to use it")
        self._attach(name, self.settings.lora_config(), state=None)
        self._active = name

    def switch(self, name: str) -> None:
        self._adapter(name)
        self._active = name

    def remove_adapter(self, name: str) -> None:
        adapter = self._adapter(name)
        with warnings.catch_warnings():  # peft warns when the adapter it deletes was the active one
            warnings.simplefilter("ignore")
            self.model.model.delete_adapter(adapter.key)
        del self._adapters[name]
        if self._active == name:
            self._active = next(iter(self._adapters), None)
        self._base_only()

    def close(self) -> None:
        """Take every adapter of this memory off the shared model."""
        for name in list(self._adapters):
            self.remove_adapter(name)

    def enable(self) -> None:
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False

    def _adapter(self, name: str | None = None) -> _Adapter:
        name = self.active_adapter if name is None else name
        if name not in self._adapters:
            raise NotFoundError(f"no adapter {name!r}; this memory has {self.adapters}")
        return self._adapters[name]

    def _attach(self, name: str, config: LoraConfig, state: dict[str, torch.Tensor] | None) -> None:
        key = f"{name.replace('-', '_')}_{self._uid}"
        model = self.model.model
        try:
            # LoRA A is drawn from the global generator: fork it, so the seed alone decides the init
            with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
                warnings.simplefilter("ignore")  # peft warns whenever a model gets a second adapter
                torch.manual_seed(self.settings.seed)
                model.add_adapter(config, adapter_name=key)
        except (ValueError, KeyError) as error:  # e.g. target modules this model does not have
            self._base_only()
            raise IncompatibleError(f"adapter {name!r} does not fit model {self.model.name}: {error}") from error
        try:
            if state is not None:
                _load_state(model, key, state, name)
        except BaseException:
            model.delete_adapter(key)
            raise
        finally:
            self._base_only()
        self._adapters[name] = _Adapter(key=key, gate=self._new_gate())

    def _new_gate(self) -> EditGate | None:
        if self.gate is None:
            return None
        gate = EditGate(**self.gate.settings())
        gate._embedder = self.gate._embedder  # share one loaded embedder between the adapters' gates
        return gate

    def _base_only(self) -> None:
        if getattr(self.model.model, "_hf_peft_config_loaded", False):
            self.model.model.disable_adapters()

    # -- use --------------------------------------------------------------------------------------
    @contextmanager
    def applied(self) -> Iterator[None]:
        if not self.enabled or self._active is None:
            yield
            return
        model = self.model.model
        model.set_adapter(self._adapter().key)
        model.enable_adapters()
        try:
            yield
        finally:
            model.disable_adapters()

    def applies(self, prompts: Sequence[str]) -> list[bool]:
        adapter = self._adapter()
        if adapter.gate is None:
            return [True] * len(prompts)
        return adapter.gate.applies(prompts)

    def merged(self) -> LanguageModel:
        """A new model with the active adapter merged into a copy of the base weights.

        A copy, because merging in place would silently change the model every other adapter (and the
        fingerprint in their manifests) was trained on."""
        key = self._adapter().key
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

    # -- training ---------------------------------------------------------------------------------
    def edit(self, edits: Sequence[KnowledgeEdit]) -> EditReport:
        check_batch(edits)
        adapter = self._adapter()
        examples = [self._encode(edit) for edit in edits]
        prompts = {_norm(edit.prompt) for edit in edits}
        kept = [edit for edit in adapter.edits if _norm(edit.prompt) not in prompts]  # a new edit overrides
        rng = random.Random(self.settings.seed + len(adapter.edits))
        replayed = rng.sample(kept, min(self.settings.replay, len(kept)))
        examples += [self._encode(edit) for edit in replayed]
        params = self._parameters(adapter.key)
        snapshot = [p.detach().clone() for p in params]
        try:
            report = self._train(adapter.key, params, examples, len(edits))
        except BaseException:
            with torch.no_grad():  # a failed edit leaves the adapter as it was
                for param, saved in zip(params, snapshot, strict=True):
                    param.copy_(saved)
            raise
        adapter.edits = kept + list(edits)
        if adapter.gate is not None:
            adapter.gate.add(edits)
        return report

    def _encode(self, edit: KnowledgeEdit) -> _Example:
        try:
            return _Example(encode_prompt(self.model, edit.prompt), encode_target(self.model, edit.target_new))
        except DataError as error:
            raise DataError(f"edit {edit.edit_id!r}: {error}") from None

    def _parameters(self, key: str) -> list[torch.nn.Parameter]:
        params = [p for name, p in self.model.model.named_parameters() if f".{key}." in name]
        for param in params:
            param.requires_grad_(True)
        return params

    def _train(self, key: str, params: list[torch.nn.Parameter], examples: list[_Example], n_edits: int) -> EditReport:
        s = self.settings
        model = self.model.model
        started = time.perf_counter()  # the time includes caching the frozen layers' outputs
        self._cache_frozen_prefix(examples)
        anchors = self._anchors() if s.locality_weight > 0 else None
        optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
        rng = random.Random(s.seed)
        order: list[int] = []
        # Whether each example's targets were the argmax in its latest batch: a free check, since the
        # training forward pass computes those logits anyway (one full check runs at the end).
        correct = [False] * len(examples)
        steps, loss_value = 0, float("nan")
        model.set_adapter(key)
        model.enable_adapters()
        try:
            learned = False
            while steps < s.steps:
                if s.stop_when_learned and all(correct):
                    learned = self._all_learned(examples)  # the batches' verdicts predate their updates
                    if learned:
                        break
                    correct = [False] * len(examples)
                if not order:
                    order = list(range(len(examples)))
                    rng.shuffle(order)
                rows = [order.pop() for _ in range(min(s.batch_size, len(order)))]
                loss, hits = self._edit_loss([examples[i] for i in rows])
                for i, hit in zip(rows, hits, strict=True):
                    correct[i] = hit
                if anchors is not None:
                    loss = loss + s.locality_weight * self._locality_loss(anchors, rng)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise ConfigError(
                        f"LoRA training diverged (loss {loss_value}) at step {steps}; lower parametric.lr"
                    )
            learned = learned or self._all_learned(examples)
        finally:
            optimizer.zero_grad(set_to_none=True)
            model.disable_adapters()
        return EditReport(n_edits, steps, time.perf_counter() - started, loss_value, learned)

    def _logits(self, examples: Sequence[_Example], keep: int) -> torch.Tensor:
        """Logits of the last `keep` positions of the left-padded prompt + target sequences; from the cached
        input of the lowest adapted layer when every example has one (the frozen layers below are skipped)."""
        ids, mask, positions = left_padded(self.model, [e.prompt + e.target for e in examples])
        model = self.model.model
        if any(e.hidden is None for e in examples):
            return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        first = examples[0].hidden
        assert first is not None  # every example has its cached input (checked above)
        embeds = torch.zeros((*ids.shape, first.shape[-1]), dtype=first.dtype, device=ids.device)
        for row, example in enumerate(examples):
            assert example.hidden is not None
            embeds[row, ids.shape[1] - len(example.hidden) :] = example.hidden
        assert self.settings.layers is not None  # inputs are cached only when the lowest adapted layer is known
        layers = model.model.layers
        model.model.layers = torch.nn.ModuleList(list(layers)[min(self.settings.layers) :])
        try:
            return model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        finally:
            model.model.layers = layers

    @torch.no_grad()
    def _cache_frozen_prefix(self, examples: list[_Example]) -> None:
        """Cache each example's input to the lowest adapted layer: the layers below it never change, so
        training then runs only the adapted top of the network (several times faster for upper layers)."""
        model = self.model.model
        start = min(self.settings.layers) if self.settings.layers else 0
        if start == 0 or getattr(model.config, "model_type", None) not in TRUNCATABLE:
            return
        for first in range(0, len(examples), 32):
            chunk = examples[first : first + 32]
            ids, mask, positions = left_padded(self.model, [e.prompt + e.target for e in chunk])
            states = model(
                input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True, logits_to_keep=1
            ).hidden_states[start]
            for row, example in enumerate(chunk):
                example.hidden = states[row, ids.shape[1] - len(example.prompt) - len(example.target) :].clone()
        # Guard against an architecture whose forward differs from the Llama layout: compare once.
        probe = examples[:4]
        full = self._logits([_Example(e.prompt, e.target) for e in probe], keep=1)
        if not torch.allclose(full, self._logits(probe, keep=1), atol=1e-4, rtol=1e-3):
            for example in examples:
                example.hidden = None

    def _edit_loss(self, examples: Sequence[_Example]) -> tuple[torch.Tensor, list[bool]]:
        """Cross-entropy of a left-padded batch, and per example whether every target token is the argmax
        after its teacher-forced prefix (then greedy decoding says the target) with probability >= target_prob."""
        width = max(len(e.prompt) + len(e.target) for e in examples)
        longest = max(len(e.target) for e in examples)
        # Target-only loss needs logits at the last positions alone: skips most of the vocabulary projection.
        keep = longest + 1 if self.settings.loss == "target" else width
        logits = self._logits(examples, keep)
        ids = torch.tensor(
            [[0] * (width - len(e.prompt) - len(e.target)) + e.prompt + e.target for e in examples],
            device=logits.device,
        )
        predicted, gold = logits[:, :-1], ids[:, width - keep + 1 :]
        labels = torch.full_like(gold, IGNORE)
        targets = torch.zeros_like(gold, dtype=torch.bool)
        for row, example in enumerate(examples):
            targets[row, keep - 1 - len(example.target) :] = True
            first = (
                len(example.target) if self.settings.loss == "target" else len(example.prompt) + len(example.target) - 1
            )
            labels[row, keep - 1 - first :] = gold[row, keep - 1 - first :]
        loss = torch.nn.functional.cross_entropy(
            predicted.reshape(-1, predicted.shape[-1]), labels.reshape(-1), ignore_index=IGNORE
        )
        with torch.no_grad():
            good = predicted.argmax(-1) == gold
            if self.settings.target_prob > 0:  # a softmax over the vocabulary only when a margin is asked for
                good &= predicted.softmax(-1).gather(-1, gold.unsqueeze(-1)).squeeze(-1) >= self.settings.target_prob
        hits = (good | ~targets).all(-1).tolist()
        return loss, hits

    @torch.no_grad()
    def _all_learned(self, examples: Sequence[_Example]) -> bool:
        return all(all(self._edit_loss(examples[i : i + 32])[1]) for i in range(0, len(examples), 32))

    def _anchors(self) -> tuple[list[_Example], torch.Tensor, torch.Tensor]:
        """Anchor prompts, their attention mask and the frozen base model's next-token log-probabilities."""
        anchors = [_Example(encode_prompt(self.model, p), []) for p in self.settings.locality_prompts]
        _, mask, _ = left_padded(self.model, [a.prompt for a in anchors])
        self._base_only()
        with torch.no_grad():
            base = self._logits(anchors, keep=0).log_softmax(-1)  # keep=0: every position
        self._cache_frozen_prefix(anchors)
        return anchors, mask, base

    def _locality_loss(
        self, anchors: tuple[list[_Example], torch.Tensor, torch.Tensor], rng: random.Random
    ) -> torch.Tensor:
        examples, mask, base = anchors
        rows = rng.sample(range(len(examples)), min(self.settings.batch_size, len(examples)))
        # the sampled rows are re-padded to their own width, which is the right end of the full padding
        edited = self._logits([examples[i] for i in rows], keep=0).log_softmax(-1)
        width = edited.shape[1]
        reference, weights = base[rows, -width:], mask[rows, -width:].float()
        kl = torch.nn.functional.kl_div(edited, reference, log_target=True, reduction="none").sum(-1)
        return (kl * weights).sum() / weights.sum()

    # -- persistence ------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write the memory as an artifact into `folder` (absent, empty or an earlier save), all at once."""
        meta = {
            "method": self.method,
            "settings": asdict(self.settings),
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

    @classmethod
    def _stored_config(cls, settings: LayerSettings, entry: Mapping[str, Any]) -> LoraConfig:
        """The config a stored adapter is attached with (rebuilt from the settings, never read from disk)."""
        return cast(LoRASettings, settings).lora_config()  # load passes cls.settings_class's; subclasses override

    @classmethod
    def load(cls, folder: Path, model: LanguageModel) -> Self:
        folder = Path(folder)
        artifact = read_artifact(
            folder, KIND, fingerprint=model.fingerprint(), targets={GATE_TARGET: "embedder"}, migrate=_from_version_1
        )
        artifact.check_meta(LoRAMeta)
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
        # Read every adapter before touching the model, so a bad file leaves the model as it was.
        loaded = []
        for i, entry in enumerate(meta["adapters"]):
            name = entry["name"]
            if not _NAME.match(name):
                raise DataError(f"{artifact.where(f'meta.adapters[{i}].name')}: bad adapter name {name!r}")
            check_json(entry["edits"], list[KnowledgeEdit], str(folder / MANIFEST), prefix=f"meta.adapters[{i}].edits")
            edits = [edit_from_record(r, f"{folder} edit {j}") for j, r in enumerate(entry["edits"])]
            config = cls._stored_config(settings, entry)
            state = artifact.read_peft_adapter(f"{ADAPTERS_DIR}/{name}", config)
            loaded.append((name, copy.deepcopy(config), state, edits))
        memory = cls(model, gate=gate, adapter=None, **asdict(settings))
        try:
            for name, config, state, edits in loaded:
                memory._attach(name, config, state)
                memory._adapters[name].edits = edits
                adapter_gate = memory._adapters[name].gate
                if adapter_gate is not None and edits:
                    adapter_gate.add(edits)
        except BaseException:
            memory.close()
            raise
        active = meta["active"]
        memory._active = active if active in memory._adapters else next(iter(memory._adapters), None)
        memory.enabled = meta["enabled"]
        return memory


class _AdapterEntry(TypedDict):
    name: str
    rank: NotRequired[int]
    edits: list[dict[str, Any]]


class LoRAMeta(TypedDict):
    method: NotRequired[str]
    settings: dict[str, Any]
    gate: dict[str, Any] | None
    active: str | None
    enabled: bool
    adapters: list[_AdapterEntry]


def _norm(prompt: str) -> str:
    return " ".join(prompt.split()).casefold()


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
        if not _NAME.match(entry["name"]):
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
        "meta": {key: raw[key] for key in LoRAMeta.__annotations__ if key in raw},
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
