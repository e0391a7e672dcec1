"""Gradient LoRA parametric memory: knowledge edits trained into named peft adapters on a shared base model.

The adapters live in an `AdapterStore` (adapters.py: switching, gating, merging, saving and loading, with the
model fingerprint and every refusal); this module trains them.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from peft import LoraConfig

from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import ConfigError, DataError
from memos_lab.memory.parametric.adapters import AdapterMemory, LayerSettings
from memos_lab.memory.parametric.base import EditReport, check_batch, prompt_key
from memos_lab.models.probe import encode_prompt, encode_target, left_padded
from memos_lab.settings import (
    non_negative,
    non_negative_int,
    one_of,
    positive,
    positive_int,
    probability,
    span,
)

LOSSES = ("target", "sequence")
IGNORE = -100  # label of tokens outside the loss

TRUNCATABLE = ("llama", "mistral", "qwen2")  # decoders whose LlamaModel-style forward takes layer input as embeds


@dataclass
class _Example:
    prompt: list[int]
    target: list[int]
    hidden: torch.Tensor | None = None  # the frozen input of the lowest adapted layer, when cached


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
        # peft annotates lora_alpha as int, yet scales by alpha / rank with any number: the float goes as given
        scaling: dict[str, Any] = {"lora_alpha": self.alpha}
        return LoraConfig(
            r=self.rank,
            **scaling,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            layers_to_transform=list(self.layers) if self.layers is not None else None,
            bias="none",
        )


class LoRAMemory(AdapterMemory):
    """Edits trained by gradient descent into the active adapter (see LoRASettings)."""

    method: ClassVar[str] = "lora"
    settings_class: ClassVar[type[LayerSettings]] = LoRASettings
    settings: LoRASettings

    def adapter_config(self, entry: Mapping[str, Any] | None = None) -> LoraConfig:
        return self.settings.lora_config()

    # -- training ---------------------------------------------------------------------------------
    def edit(self, edits: Sequence[KnowledgeEdit]) -> EditReport:
        check_batch(edits)
        adapter = self.store.get()
        examples = [self._encode(edit) for edit in edits]
        prompts = {prompt_key(edit.prompt) for edit in edits}
        kept = [edit for edit in adapter.edits if prompt_key(edit.prompt) not in prompts]  # a new edit overrides
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
        self.store.base_only()
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
