"""The local backend: a transformers model in this process, on the device it was loaded on (`model=`),
answering greedily in left-padded batches of `batch_size` requests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from memos_lab.errors import DataError
from memos_lab.generation.base import ChatRequest, Generation, Generator, check_max_new_tokens
from memos_lab.models.decode import check_context, greedy_batch
from memos_lab.models.device import clock
from memos_lab.models.llm import LanguageModel
from memos_lab.settings import Settings, positive_int


@dataclass(frozen=True)
class LocalSettings(Settings):
    section: ClassVar[str] = "llm"
    config_keys: ClassVar[Mapping[str, Any]] = {"model": "${model}"}  # the LanguageModel, built by `model=`
    batch_size: int = 8  # questions decoded together (left-padded; greedy answers equal one-by-one ones)

    def validate(self) -> None:
        positive_int(self, "batch_size")


class LocalGenerator(Generator):
    settings_class = LocalSettings

    def __init__(self, model: LanguageModel, **settings: Any) -> None:
        self.settings = LocalSettings.from_mapping(settings)
        self.model = model
        self.name = model.name
        self.batch_size = self.settings.batch_size

    @property
    def language_model(self) -> LanguageModel:
        return self.model

    def describe(self) -> dict[str, str]:
        return {"backend": "local", **self.model.describe(), "batch_size": str(self.batch_size)}

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, requests: Sequence[ChatRequest], max_new_tokens: int) -> list[Generation]:
        check_max_new_tokens(max_new_tokens)
        results: dict[int, Generation] = {}
        prompts: dict[int, list[int]] = {}
        for index, request in enumerate(requests):
            ids = self.model.encode_chat([dict(m) for m in request.messages])
            try:
                check_context(self.model, len(ids) + max_new_tokens)
            except DataError as error:  # this question fails; the others are still answered
                results[index] = Generation.failure(str(error), request.request_id)
                continue
            prompts[index] = ids
        order = list(prompts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            started = clock(self.model.device)
            decoded = greedy_batch(self.model, [prompts[i] for i in batch], max_new_tokens, batch_size=len(batch))
            latency_ms = (clock(self.model.device) - started) * 1000
            for index, answer, first_at in zip(batch, decoded.token_ids, decoded.first_token_at, strict=True):
                results[index] = Generation(
                    text=cast(str, self.model.tokenizer.decode(answer, skip_special_tokens=True)),  # one sequence
                    prompt_tokens=len(prompts[index]),
                    completion_tokens=len(answer),
                    latency_ms=latency_ms,
                    ttft_ms=(first_at - started) * 1000,
                    token_ids=tuple(answer),
                    request_id=requests[index].request_id,
                )
        return [results[i] for i in range(len(requests))]
