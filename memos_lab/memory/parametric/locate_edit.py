"""Locate-then-edit parametric memory: closed-form edits of the MLP `down_proj` weights, kept as LoRA adapters.

The shared core of ROME, MEMIT and AlphaEdit (rome.py, memit.py, alphaedit.py add only their update rule):

1. key: the input of `down_proj` at the subject's last token, at each edited layer (averaged over the
   edit prompt and `context_templates` model-written prefixes of it);
2. target value: one vector δ per edit, added to the MLP output of the last edited layer at the subject's
   last token and optimised (`v_steps` Adam steps, the weights frozen) so the model says the new target,
   with ROME's KL term on "<subject> is a" and a weight decay on δ, its norm clamped;
3. the update: the method's closed form (a least-squares solve weighted by the key statistics E[k kᵀ]
   of `key_stats.py`), turning keys into the target values.

Every delta is stored exactly as a LoRA adapter on `down_proj` of the edited layers: the adapter holds the
sum of the adapter's edits, factorised by SVD into lora_B @ lora_A with alpha = rank (scaling 1). The rank
is the delta's numerical rank (at most the number of edits), or `rank` when set, with the dropped part
reported as `delta_residual` (relative Frobenius norm). Saving, switching, merging, fingerprints and
refusals are the adapter store's (adapters.py), shared with gradient LoRA.
"""

from __future__ import annotations

import contextlib
import re
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, cast

import torch
from peft import LoraConfig
from transformers import DynamicCache

from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import ConfigError, DataError
from memos_lab.memory.parametric import key_stats
from memos_lab.memory.parametric.adapters import AdapterMemory, LayerSettings
from memos_lab.memory.parametric.base import EditReport, check_batch, prompt_key
from memos_lab.memory.parametric.gate import EditGate
from memos_lab.models.llm import LanguageModel
from memos_lab.models.probe import encode_target, greedy_continuations, left_padded

MODULE = "down_proj"
TEMPLATE_STARTS = ("The", "Therefore", "Because", "I", "You", "It")  # MEMIT's context-template openings
TEMPLATE_TOKENS = 10
RANK_TOLERANCE = 1e-6
CHUNK_ROWS = 32  # rows of similar tail length run together while the target values are optimised  # singular values below this fraction of the largest count as zero


@dataclass(frozen=True)
class EditorSettings(LayerSettings):
    """The settings every locate-then-edit method shares (method files add their own)."""

    config_keys: ClassVar[Mapping[str, Any]] = {"adapter": "default", "gate": None, "cache_dir": "~/.cache/memos_lab"}
    layers: tuple[int, ...] | None = None
    layer_span: tuple[float, float] | None = None  # [lo, hi) as fractions of the depth, as for LoRA
    rank: int | None = None  # None: the exact delta (its numerical rank); else truncated, residual reported
    v_steps: int = 60  # Adam steps on the target vectors per batch (most edits finish far earlier)
    v_lr: float = 0.5
    kl_weight: float = 0.0625  # ROME's KL(base || edited) on "<subject> is a"
    weight_decay: float = 0.5  # on |δ|² / |h|², h the hidden state δ is added to
    clamp_norm: float = 4.0  # |δ| <= clamp_norm * |h|
    v_stop_nll: float = 0.05  # stop early once every edit's mean target-token NLL is below this
    context_templates: int = 2  # model-written prefixes the key and value are averaged over (MEMIT: 5; costs rows)
    stats_corpus: str = "model"  # key_stats.CORPORA
    stats_tokens: int = 20000

    def validate(self) -> None:
        if self.layer_span is not None and self.layers is not None:
            raise ConfigError("parametric: set layers or layer_span, not both")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"parametric.rank must be >= 1 or null (exact), got {self.rank}")
        if self.v_steps < 1 or self.v_lr <= 0 or self.clamp_norm <= 0:
            raise ConfigError("parametric: v_steps, v_lr and clamp_norm must be positive")
        if min(self.kl_weight, self.weight_decay, self.v_stop_nll, self.context_templates) < 0:
            raise ConfigError("parametric: kl_weight, weight_decay, v_stop_nll and context_templates must be >= 0")
        if self.context_templates > len(TEMPLATE_STARTS):
            raise ConfigError(f"parametric.context_templates must be at most {len(TEMPLATE_STARTS)}")
        if self.stats_corpus not in key_stats.CORPORA:
            raise ConfigError(
                f"parametric.stats_corpus: unknown {self.stats_corpus!r}; valid: {', '.join(key_stats.CORPORA)}"
            )

    def for_depth(self, depth: int) -> Self:
        resolved = super().for_depth(depth)
        layers = resolved.layers
        if not layers:
            raise ConfigError("parametric: a locate-then-edit method needs layers or layer_span")
        bad = [layer for layer in layers if not 0 <= layer < depth]
        if bad:
            raise ConfigError(f"parametric.layers: {bad} out of range; this model has {depth} layers (0-{depth - 1})")
        if max(layers) == depth - 1:  # the target vector sits at the subject, which only later layers carry on
            raise ConfigError(f"parametric.layers: the last edited layer must be below the top one ({depth - 1})")
        return resolved

    def lora_config(self, rank: int = 1) -> LoraConfig:
        assert self.layers is not None  # for_depth resolved the layers
        return LoraConfig(
            r=rank, lora_alpha=rank, target_modules=[MODULE], layers_to_transform=list(self.layers), bias="none"
        )


@dataclass
class EditRequest:
    """One edit, tokenised: each template row's prompt ids and the index of the subject's last token in it."""

    edit: KnowledgeEdit
    rows: list[tuple[list[int], int]]
    target: list[int]
    essence: tuple[list[int], int]  # "<subject> is a"


@dataclass(frozen=True)
class _Row:
    """One row of the target-value problem: prompt (+ target) ids, the subject's last token, its edit."""

    ids: list[int]
    at: int
    owner: int
    target_len: int  # 0: a "<subject> is a" row, scored by the KL term only

    @property
    def head(self) -> list[int]:
        return self.ids[: self.at]

    @property
    def tail(self) -> list[int]:
        return self.ids[self.at :]


class _TailBatch:
    """The rows' tails (from the subject's last token on, right-padded) and where their losses are read."""

    def __init__(self, rows: list[_Row], pad: int, head_mask: torch.Tensor) -> None:
        self.rows, self.pad, self.head_mask = rows, pad, head_mask
        tails = [row.tail for row in rows]
        self.width = max(len(t) for t in tails)
        self.ids = torch.tensor([t + [pad] * (self.width - len(t)) for t in tails])
        tail_mask = torch.tensor([[1] * len(t) + [0] * (self.width - len(t)) for t in tails])
        self.mask = torch.cat([head_mask, tail_mask], dim=1)
        self.positions = torch.tensor([[len(row.head) + j for j in range(self.width)] for row in rows])
        self.row_ix, self.first = torch.arange(len(rows)), torch.zeros(len(rows), dtype=torch.long)  # δ's place
        self.owner = torch.tensor([row.owner for row in rows])
        targeted = [r for r, row in enumerate(rows) if row.target_len]
        self.target_rows = torch.tensor(targeted, dtype=torch.long)
        self.token_row_owner = self.owner[self.target_rows]
        # the positions whose logits predict each target token, and those tokens
        self.pred_rows = torch.tensor([r for r in targeted for _ in range(rows[r].target_len)], dtype=torch.long)
        self.pred_cols = torch.tensor(
            [len(tails[r]) - rows[r].target_len - 1 + j for r in targeted for j in range(rows[r].target_len)],
            dtype=torch.long,
        )
        self.gold = torch.tensor([tok for r in targeted for tok in rows[r].tail[-rows[r].target_len :]])
        self.token_owner = self.owner[self.pred_rows]
        essence = [r for r, row in enumerate(rows) if not row.target_len]
        self.essence_rows = torch.tensor(essence, dtype=torch.long)
        self.essence_cols = torch.tensor([len(tails[r]) - 1 for r in essence], dtype=torch.long)
        self.essence_owner = self.owner[self.essence_rows]

    def inputs(self) -> dict[str, torch.Tensor]:
        return {"attention_mask": self.mask, "position_ids": self.positions}

    def select(self, stay: torch.Tensor) -> _TailBatch:
        return _TailBatch(
            [row for row, ok in zip(self.rows, stay.tolist(), strict=True) if ok], self.pad, self.head_mask[stay]
        )

    def target_nll(self, lm_head: torch.nn.Module, hidden: torch.Tensor, n: int) -> torch.Tensor:
        """The summed NLL of each edit's target tokens in these rows."""
        logp = lm_head(hidden[self.pred_rows, self.pred_cols]).log_softmax(-1).gather(-1, self.gold[:, None])[:, 0]
        return torch.zeros(n).index_add(0, self.token_owner, -logp)

    def essence_logp(self, lm_head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return lm_head(hidden[self.essence_rows, self.essence_cols]).log_softmax(-1)

    def essence_kl(self, lm_head: torch.nn.Module, hidden: torch.Tensor, base: torch.Tensor, n: int) -> torch.Tensor:
        """KL(base || edited) of the next token after "<subject> is a", per edit (ROME's essence term)."""
        if not len(self.essence_rows):
            return torch.zeros(n)
        logp = self.essence_logp(lm_head, hidden)
        kl = torch.nn.functional.kl_div(logp, base[self.essence_owner], log_target=True, reduction="none").sum(-1)
        return torch.zeros(n).index_add(0, self.essence_owner, kl)


@dataclass
class _Chunk:
    """Rows run together: their tails, the heads' KV cache and the tails' hidden states below the upper layers."""

    batch: _TailBatch
    cache: Any
    base_hidden: torch.Tensor

    def run(self, decoder: torch.nn.Module, shift: torch.Tensor, first_layer: int) -> torch.Tensor:
        """The upper layers' output for the tails, each row's δ added at its first token."""
        batch = self.batch
        embeds = self.base_hidden.index_put((batch.row_ix, batch.first), shift[batch.owner], accumulate=True)
        hidden = decoder(inputs_embeds=embeds, past_key_values=self.cache, use_cache=True, **batch.inputs())
        _rewind(self.cache, batch.width, first_layer)
        return hidden.last_hidden_state

    def without(self, done: torch.Tensor) -> _Chunk | None:
        """This chunk less the rows of finished edits (None when none is left)."""
        stay = ~done[self.batch.owner]
        if not stay.any():
            return None
        if stay.all():
            return self
        self.cache.batch_select_indices(stay.nonzero().squeeze(-1))
        batch = self.batch.select(stay)
        return _Chunk(batch, self.cache, self.base_hidden[stay, : batch.width])  # the tails are right-padded


class LocateThenEditMemory(AdapterMemory):
    """Edits solved in closed form (`_deltas`, per method) and stored exactly as the active adapter."""

    settings_class: ClassVar[type[EditorSettings]] = EditorSettings
    settings: EditorSettings

    def __init__(
        self,
        model: LanguageModel,
        gate: EditGate | None = None,
        adapter: str | None = "default",
        cache_dir: str | Path = "~/.cache/memos_lab",
        **settings: Any,
    ) -> None:
        if gate is not None:
            raise ConfigError(f"parametric={self.method} edits are not gated: set parametric.gate=null")
        self.cache_dir = Path(cache_dir).expanduser()  # where the key statistics are cached
        self.delta_residual = 0.0  # of the last stored adapter, when `rank` truncates it
        self._templates: list[str] | None = None
        self._moments: dict[int, torch.Tensor] | None = None
        super().__init__(model, gate=None, adapter=adapter, **settings)

    def adapter_config(self, entry: Mapping[str, Any] | None = None) -> LoraConfig:
        """A stored adapter holds its delta at the delta's rank, which the manifest records per adapter; a
        fresh one is rank 1 until its first edit replaces it."""
        if entry is None:
            return self.settings.lora_config()
        rank = entry.get("rank")
        if not isinstance(rank, int) or rank < 1:
            raise DataError(f"parametric memory manifest: adapter {entry.get('name')!r} has no valid rank ({rank!r})")
        return self.settings.lora_config(rank)

    # -- the method --------------------------------------------------------------------------------
    @abstractmethod
    def _deltas(self, requests: list[EditRequest], shifts: torch.Tensor, adapter: str) -> dict[int, torch.Tensor]:
        """This batch's weight deltas {layer: (d_model, d_key)}, given the optimised value shifts δ (n, d_model)."""

    def _spread_over_layers(
        self,
        requests: list[EditRequest],
        shifts: torch.Tensor,
        solve: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> dict[int, torch.Tensor]:
        """MEMIT's update (shared by MEMIT and AlphaEdit, which differ in `solve`): each edit's goal is the
        output of the last edited layer plus its δ; layer by layer, lowest first and each seeing the updates
        below it, the remaining gap R is split evenly over the layers still to edit and `solve(layer, K, R)`
        gives that layer's ΔW with ΔW K ≈ R."""
        assert self.settings.layers is not None  # for_depth resolved the layers
        layers = sorted(self.settings.layers)
        _, start = self._keys_and_hidden(requests, layers[0], {})
        goals = (start + shifts).double()
        pending: dict[int, torch.Tensor] = {}
        for done, layer in enumerate(layers):
            keys, hidden = self._keys_and_hidden(requests, layer, pending)
            residual = (goals - hidden.double()) / (len(layers) - done)
            pending[layer] = solve(layer, keys.double(), residual)
        return pending

    def statistics(self) -> dict[int, torch.Tensor]:
        """E[k kᵀ] of each edited layer (computed once per model and corpus, then read from the cache)."""
        if self._moments is None:
            s = self.settings
            assert s.layers is not None  # for_depth resolved the layers
            self._moments = key_stats.second_moments(
                self.model, s.layers, s.stats_corpus, s.stats_tokens, self.cache_dir, s.seed
            )
        return self._moments

    # -- editing -----------------------------------------------------------------------------------
    def edit(self, edits: Sequence[KnowledgeEdit]) -> EditReport:
        check_batch(edits)
        adapter = self.store.get()
        name = self.active_adapter
        requests = [self._request(edit) for edit in edits]  # bad input fails here, before anything changes
        self.statistics()
        started = time.perf_counter()
        with self.store.on(adapter.key):
            shifts, steps, nll = self._optimise_values(requests)
            new = self._deltas(requests, shifts, name)
        current = self._current_deltas(adapter.key)
        prompts = {prompt_key(edit.prompt) for edit in edits}
        assert self.settings.layers is not None  # for_depth resolved the layers
        kept = [edit for edit in adapter.edits if prompt_key(edit.prompt) not in prompts]
        self._store(
            name, {layer: current[layer] + new.get(layer, 0) for layer in self.settings.layers}, kept + list(edits)
        )
        with self.store.on(self.store.get().key):
            learned = self._learned(requests)
        return EditReport(len(edits), steps, time.perf_counter() - started, float(nll.max()), learned)

    def _request(self, edit: KnowledgeEdit) -> EditRequest:
        try:
            target = encode_target(self.model, edit.target_new)
        except DataError as error:
            raise DataError(f"edit {edit.edit_id!r}: {error}") from None
        rows = [self._locate(prefix + edit.prompt, edit.subject, edit.edit_id) for prefix in self.templates()]
        essence = self._locate(f"{edit.subject.strip()} is a", edit.subject, edit.edit_id)
        return EditRequest(edit, rows, target, essence)

    def _locate(self, text: str, subject: str, edit_id: str) -> tuple[list[int], int]:
        """The ids of `text` and the index of the last token of the (last) occurrence of `subject` in it."""
        found = list(re.finditer(re.escape(subject.strip()), text, flags=re.IGNORECASE)) if subject.strip() else []
        if not found:
            raise DataError(f"edit {edit_id!r}: subject {subject!r} does not occur in its prompt {text!r}")
        end = found[-1].end()
        encoded = self.model.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids, offsets = [int(i) for i in encoded["input_ids"]], encoded["offset_mapping"]
        at = max(i for i, (start, stop) in enumerate(offsets) if start < end and stop > start)
        return ids, at

    def templates(self) -> list[str]:
        """ "" and `context_templates` short model-written prefixes (greedy, so no randomness)."""
        if self._templates is None:
            starts = list(TEMPLATE_STARTS[: self.settings.context_templates])
            said = greedy_continuations(self.model, starts, TEMPLATE_TOKENS) if starts else []
            prefixes = [
                f"{s}{self.model.tokenizer.decode(ids, skip_special_tokens=True)}"
                for s, ids in zip(starts, said, strict=True)
            ]
            self._templates = [""] + [" ".join(p.replace("{", " ").replace("}", " ").split()) + ". " for p in prefixes]
        return self._templates

    # -- the target values -------------------------------------------------------------------------
    def _optimise_values(self, requests: list[EditRequest]) -> tuple[torch.Tensor, int, torch.Tensor]:
        """δ per edit at the output of the last edited layer L, so that every template says the target.

        Only the layers above L, and only the tokens from the subject's last one on, depend on δ: one pass
        without gradients caches the rest (the row heads' keys and values, the tails' hidden states at L)
        and each step runs just the tails through the upper layers, in chunks of rows of similar length
        (little padding). An edit whose mean target-token NLL is below `v_stop_nll` is done: its δ is
        kept and its rows leave the batch. Returns δ, the steps run and each edit's mean NLL with its δ."""
        s = self.settings
        assert s.layers is not None  # for_depth resolved the layers
        top, n = max(s.layers), len(requests)
        rows = [_Row(ids + r.target, at, i, len(r.target)) for i, r in enumerate(requests) for ids, at in r.rows]
        if s.kl_weight > 0:
            rows += [_Row(r.essence[0], r.essence[1], i, 0) for i, r in enumerate(requests)]
        rows.sort(key=lambda row: len(row.tail))
        model = self.model.model
        lm_head, decoder = model.get_output_embeddings(), model.model
        base_essence = torch.zeros(n, lm_head.out_features)
        chunks = [self._chunk(rows[i : i + CHUNK_ROWS], top, base_essence) for i in range(0, len(rows), CHUNK_ROWS)]
        tokens = torch.zeros(n).index_add_(
            0, torch.tensor([row.owner for row in rows]), torch.tensor([float(row.target_len) for row in rows])
        )
        ref_norm = torch.zeros(n)
        for chunk in chunks:  # |h| at the subject, per edit: the scale of the decay and the clamp
            batch = chunk.batch
            ref_norm.index_add_(0, batch.token_row_owner, chunk.base_hidden[batch.target_rows, 0].norm(dim=-1))
        ref_norm /= torch.bincount(torch.tensor([row.owner for row in rows if row.target_len]), minlength=n).float()
        shift = torch.zeros(n, model.config.hidden_size, requires_grad=True)
        optimizer = torch.optim.Adam([shift], lr=s.v_lr)
        done, kept = torch.zeros(n, dtype=torch.bool), torch.zeros(n, model.config.hidden_size)
        steps, final_nll = 0, torch.zeros(n)  # steps: reported after the loop
        with _frozen(model), _upper_layers(decoder, top + 1):
            for steps in range(1, s.v_steps + 1):
                nll, kl = torch.zeros(n), torch.zeros(n)
                for chunk in chunks:
                    hidden = chunk.run(decoder, shift, top + 1)
                    nll = nll + chunk.batch.target_nll(lm_head, hidden, n)
                    kl = kl + chunk.batch.essence_kl(lm_head, hidden, base_essence, n)
                nll = nll / tokens
                active = ~done
                decay = (shift.norm(dim=-1) / ref_norm) ** 2
                loss = (nll + s.kl_weight * kl + s.weight_decay * decay)[active].sum()
                finished = active & (nll.detach() < s.v_stop_nll)
                if steps == s.v_steps:  # the δ returned is the last one scored
                    finished = active
                if finished.any():
                    kept[finished], final_nll[finished] = shift.detach()[finished], nll.detach()[finished]
                    done |= finished
                    if done.all():
                        break
                    chunks = [c for c in (chunk.without(done) for chunk in chunks) if c is not None]
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():  # |δ| <= clamp_norm |h|
                    limit = s.clamp_norm * ref_norm
                    norms = shift.norm(dim=-1)
                    shift.mul_(
                        torch.where(norms > limit, limit / norms.clamp(min=1e-12), torch.ones_like(norms))[:, None]
                    )
        if not torch.isfinite(kept).all():
            raise ConfigError(f"parametric={self.method}: the target vectors diverged; lower parametric.v_lr")
        return kept, steps, final_nll

    @torch.no_grad()
    def _chunk(self, rows: list[_Row], top: int, base_essence: torch.Tensor) -> _Chunk:
        """The cached part of some rows: their heads' KV cache and their tails' hidden states at layer `top`
        (and, into `base_essence`, the unedited next-token distribution of their "<subject> is a" rows)."""
        decoder = self.model.model.model
        cache, head_mask = self._head_cache([row.head for row in rows])
        batch = _TailBatch(rows, self._pad_id(), head_mask)
        seen: dict[str, torch.Tensor] = {}

        def keep_output(module: torch.nn.Module, args: Any, output: Any) -> None:
            seen["h"] = output[0] if isinstance(output, tuple) else output

        with _hooked(decoder.layers[top], keep_output):
            hidden = decoder(input_ids=batch.ids, past_key_values=cache, use_cache=True, **batch.inputs())
        _rewind(cache, batch.width, 0)
        base_essence[batch.essence_owner] = batch.essence_logp(
            self.model.model.get_output_embeddings(), hidden.last_hidden_state
        )
        return _Chunk(batch, cache, seen["h"])

    def _pad_id(self) -> int:
        tokenizer = self.model.tokenizer
        return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)

    def _head_cache(self, heads: list[list[int]]) -> tuple[Any, torch.Tensor]:
        """The KV cache of the left-padded row heads (empty when every head is) and their mask."""
        if not any(heads):
            return DynamicCache(config=self.model.model.config), torch.zeros(len(heads), 0, dtype=torch.long)
        width = max(len(h) for h in heads)
        ids = torch.tensor([[self._pad_id()] * (width - len(h)) + h for h in heads])
        mask = torch.tensor([[0] * (width - len(h)) + [1] * len(h) for h in heads])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model.model.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        return out.past_key_values, mask

    # -- keys and hidden states under pending deltas ------------------------------------------------
    @torch.no_grad()
    def _keys_and_hidden(
        self, requests: list[EditRequest], layer: int, pending: dict[int, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per edit: the key at `layer` (mean over templates) and the output of the last edited layer at the
        subject (the plain prompt), with this batch's `pending` deltas applied."""
        rows = [ids for r in requests for ids, _ in r.rows]
        at = [index for r in requests for _, index in r.rows]
        ids, mask, positions = left_padded(self.model, rows)
        cols = torch.tensor([ids.shape[1] - len(r) + a for r, a in zip(rows, at, strict=True)])
        row_ix = torch.arange(len(rows))
        seen: dict[str, torch.Tensor] = {}
        layers = self.model.model.model.layers
        assert self.settings.layers is not None  # for_depth resolved the layers

        def keep_key(module: torch.nn.Module, args: Any) -> None:
            seen["k"] = args[0][row_ix, cols]

        def keep_hidden(module: torch.nn.Module, args: Any, output: Any) -> None:
            seen["h"] = (output[0] if isinstance(output, tuple) else output)[row_ix, cols]
            raise key_stats.StopForward  # nothing above the last edited layer is needed

        with (
            _pending(layers, pending),
            _pre_hooked(layers[layer].mlp.down_proj, keep_key),
            _hooked(layers[max(self.settings.layers)], keep_hidden),
            contextlib.suppress(key_stats.StopForward),
        ):
            self.model.model.model(input_ids=ids, attention_mask=mask, position_ids=positions)
        per = len(requests[0].rows)
        keys = seen["k"].reshape(len(requests), per, -1).mean(1)
        hidden = seen["h"].reshape(len(requests), per, -1)[:, 0]
        return keys, hidden

    def keys(self, edits: Sequence[KnowledgeEdit], layer: int) -> torch.Tensor:
        """The keys of `edits` at `layer` on the model with the active adapter applied."""
        requests = [self._request(edit) for edit in edits]
        with self.store.on(self.store.get().key):
            return self._keys_and_hidden(requests, layer, {})[0]

    @torch.no_grad()
    def _learned(self, requests: list[EditRequest]) -> bool:
        """Every target token is the teacher-forced argmax after the plain edit prompt."""
        for start in range(0, len(requests), 32):
            chunk = requests[start : start + 32]
            rows = [r.rows[0][0] + r.target for r in chunk]
            ids, mask, positions = left_padded(self.model, rows)
            logits = self.model.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            width = ids.shape[1]
            for row, request in enumerate(chunk):
                at = torch.arange(width - len(request.target) - 1, width - 1)
                if logits[row, at].argmax(-1).tolist() != request.target:
                    return False
        return True

    # -- the adapter holding the deltas -------------------------------------------------------------
    def _current_deltas(self, key: str) -> dict[int, torch.Tensor]:
        """The weight delta the adapter `key` adds at each edited layer (scaling * B @ A)."""
        layers = self.model.model.model.layers
        deltas = {}
        assert self.settings.layers is not None  # for_depth resolved the layers
        for layer in self.settings.layers:
            module = getattr(layers[layer].mlp, MODULE)
            a, b = module.lora_A[key].weight, module.lora_B[key].weight
            deltas[layer] = (module.scaling[key] * (b.double() @ a.double())).detach()
        return deltas

    def _store(self, name: str, totals: dict[int, torch.Tensor], edits: list[KnowledgeEdit]) -> None:
        """Replace adapter `name` by one holding `totals` exactly (or truncated to `rank`), B @ A by SVD."""
        factors, ranks, dropped, whole = {}, [], 0.0, 0.0
        for layer, total in totals.items():
            u, sigma, vh = torch.linalg.svd(total.double(), full_matrices=False)
            keep = int((sigma > sigma[0] * RANK_TOLERANCE).sum()) if sigma[0] > 0 else 0
            factors[layer] = (u * sigma, vh)
            ranks.append(keep)
        rank = max(1, max(ranks)) if self.settings.rank is None else self.settings.rank
        for layer, (us, vh) in factors.items():
            b, a = us[:, :rank], vh[:rank]
            dropped += float((totals[layer].double() - b @ a).norm() ** 2)
            whole += float(totals[layer].double().norm() ** 2)
        self.delta_residual = (dropped / whole) ** 0.5 if whole > 0 else 0.0
        key = self.store.replace(name, self.settings.lora_config(rank), edits).key
        layers = self.model.model.model.layers
        with torch.no_grad():
            for layer, (us, vh) in factors.items():
                module = getattr(layers[layer].mlp, MODULE)
                width = min(rank, us.shape[1])
                module.lora_A[key].weight.zero_()[:width] = vh[:width].float()
                module.lora_B[key].weight.zero_()[:, :width] = us[:, :width].float()


@contextmanager
def _hooked(module: torch.nn.Module, hook: Callable) -> Iterator[None]:
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _pre_hooked(module: torch.nn.Module, hook: Callable) -> Iterator[None]:
    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _pending(layers: torch.nn.ModuleList, deltas: dict[int, torch.Tensor]) -> Iterator[None]:
    """The model with extra weight deltas on `down_proj` of some layers (a batch's not yet stored update)."""
    handles = []
    for layer, delta in deltas.items():
        weight = delta.float()
        handles.append(
            getattr(layers[layer].mlp, MODULE).register_forward_hook(
                lambda module, args, output, w=weight: output + args[0] @ w.T
            )
        )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _rewind(cache: Any, tokens: int, first_layer: int) -> None:
    """Drop the last `tokens` positions (the tails, rerun each step) from the cache layers `first_layer` on,
    and their autograd history."""
    for layer in cache.layers[first_layer:]:
        layer.crop(-tokens)
        layer.keys, layer.values = layer.keys.detach(), layer.values.detach()


@contextmanager
def _upper_layers(decoder: torch.nn.Module, first: int) -> Iterator[None]:
    """The decoder runs only its layers `first` on (inputs_embeds are then the hidden states below them);
    each attention keeps its own layer index, so a full-depth KV cache lines up."""
    layers = cast(torch.nn.ModuleList, decoder.layers)
    decoder.layers = torch.nn.ModuleList(list(layers)[first:])
    try:
        yield
    finally:
        decoder.layers = layers


@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """No gradients for the weights while the target vectors are optimised."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
