"""Fuzzing the served client: a hostile server on 127.0.0.1 (hostile_server.py) answers each question with
a drawn fault: a field of an honest reply replaced by a wrong type, NaN, Infinity, 1e400 or a deep array;
garbage bytes; a huge or endless body; a drip; a reset; a wrong content type, status or framing.

Oracle (besides the shared one): the client returns one Generation per question whose error, if any, is one
line and whose counts are non-negative integers; or it refuses in one line at its start-up check; and the
example ends within the stated bound (`worst_case_s`, once more for the check) plus a second of slack.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from fuzz.hostile_server import HostileServer, Reply, chunk, completion, endless_stream, sse
from fuzz.oracle import Finding, Guard, Outcome, library_roots, observe

TIMEOUT_S = 0.5  # each attempt's deadline: drips cost this much
MAX_REPLY_BYTES = 1 << 20
SLACK_S = 1.0  # thread scheduling on a loaded machine
SPECIAL = {"<NaN>": "NaN", "<Infinity>": "Infinity", "<-Infinity>": "-Infinity", "<1e400>": "1e400",
           "<DEEP>": "[" * 100_000 + "]" * 100_000}  # fmt: skip
HOSTILE_VALUES: tuple[Any, ...] = (*SPECIAL, None, True, -1, 2**70, 1.5, "", "\ud800", [], {}, [1, "a"],
                                   {"_target_": "os.system", "command": "true"}, "x" * 5000, "line\nbreak")  # fmt: skip
KINDS = ("json", "json", "json", "garbage", "huge", "endless", "drip", "reset", "content-type", "status", "headers")


@dataclass(frozen=True)
class ServedCase:
    reply: Reply
    stream: bool
    check: bool  # the start-up request too
    max_retries: int
    description: str


def _text(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=False)
    for token, raw in SPECIAL.items():
        text = text.replace(json.dumps(token), raw)
    return text.encode("utf-8", "surrogatepass")


def _replaced(value: Any, index: int, new: Any) -> tuple[Any, str]:
    from fuzz.artifacts import json_paths, set_at

    paths = json_paths(value)
    path = paths[index % len(paths)]
    return set_at(value, path, new), "/".join(map(str, path))


def served_cases() -> Any:
    """A hypothesis strategy of ServedCase."""
    from hypothesis import strategies as st

    @st.composite
    def one(draw: Any) -> ServedCase:
        stream, kind = draw(st.booleans()), draw(st.sampled_from(KINDS))
        framing = draw(st.sampled_from(["length", "chunked", "close"]))
        content_type = "text/event-stream" if stream else "application/json"
        events: list[Any] = [chunk("Lis"), chunk("bon"), chunk(usage={"prompt_tokens": 5, "completion_tokens": 2})]
        honest = sse(events) if stream else [_text(completion())]
        reply = Reply(body=b"".join(honest), content_type=content_type, framing=framing)
        detail = ""
        if kind == "json":
            index, new = draw(st.integers(0, 10**6)), draw(st.sampled_from(HOSTILE_VALUES) | st.text(max_size=8))
            if stream:
                at = draw(st.integers(0, len(events) - 1))
                events[at], where = _replaced(events[at], index, new)
                body = b"".join(sse([_text(e) for e in events]))
            else:
                value, where = _replaced(completion(), index, new)
                body = _text(value)
            reply = Reply(body=body, content_type=content_type, framing=framing)
            detail = f"{where} = {new!r:.30}"
        elif kind == "garbage":
            reply = Reply(body=draw(st.binary(max_size=200)), content_type=content_type, framing=framing)
            if draw(st.booleans()):
                reply = Reply(raw=draw(st.binary(max_size=200)))
        elif kind == "huge":
            reply = Reply(body=_text(completion("x" * (MAX_REPLY_BYTES + 10))), framing=framing)
        elif kind == "endless":
            endless = Reply(body=endless_stream(), content_type="text/event-stream", framing="chunked")
            reply = draw(st.sampled_from([endless, Reply(body=b'{"choices": [', declared_length=10**9, hold=True)]))
        elif kind == "drip":
            reply = Reply(
                body=reply.body, content_type=content_type, framing=framing, drip_s=draw(st.floats(0.01, 0.2))
            )
        elif kind == "reset":
            reply = Reply(body=reply.body, content_type=content_type, framing=framing,
                          reset_after=draw(st.integers(0, 400)))  # fmt: skip
        elif kind == "content-type":
            wrong = draw(st.sampled_from(["text/html", "text/plain", "", "application/octet-stream",
                                          "text/event-stream", "application/json; charset=latin-1"]))  # fmt: skip
            reply = Reply(body=reply.body, content_type=wrong, framing=framing)
        elif kind == "status":
            status = draw(st.integers(100, 599))
            body = draw(st.sampled_from([b"", b"oops", _text({"error": {"message": "x" * 300}}), b"[" * 10_000]))
            reply = Reply(body=body, status=status, framing=framing, headers=(("Retry-After", "999999"),))
            detail = f"HTTP {status}"
        else:  # headers
            header = draw(st.sampled_from([("Content-Length", "-5"), ("Content-Length", "abc"),
                                           ("X-Big", "y" * 70_000), ("Transfer-Encoding", "gzip"),
                                           ("Content-Encoding", "gzip")]))  # fmt: skip
            reply = Reply(body=reply.body, content_type=content_type, framing="close", headers=(header,))
            detail = f"{header[0]}: {header[1][:20]}"
        check, retries = draw(st.booleans()), draw(st.integers(0, 1))
        description = f"{kind} {detail} stream={stream} framing={reply.framing} check={check} retries={retries}"
        return ServedCase(reply, stream, check, retries, description)

    return one()


class ServedFuzzer:
    """One hostile server for the whole campaign; `run(case)` asks one question through it under the oracle."""

    def __init__(self) -> None:
        self.server = HostileServer().__enter__()
        self.guard = Guard(library_roots(), [])
        # warm the client's imports and its platform headers (it runs `uname` once), so the oracle sees the example
        self._ask(ServedCase(self.server.reply, stream=False, check=True, max_retries=0, description="warm-up"))

    def close(self) -> None:
        self.server.__exit__()

    def run(self, case: ServedCase) -> Outcome:
        self.server.reply = case.reply
        return observe(self.guard, "served", case.description, lambda: self._ask(case), deadline_s=20.0)

    def _ask(self, case: ServedCase) -> None:
        from memos_lab.generation.base import ChatRequest
        from memos_lab.generation.served import MAX_USAGE_TOKENS, ServedGenerator, ServedSettings

        settings: dict[str, Any] = {"timeout_s": TIMEOUT_S, "max_retries": case.max_retries,
                                    "max_reply_bytes": MAX_REPLY_BYTES, "stream": case.stream, "concurrency": 1}  # fmt: skip
        bound = ServedSettings(base_url=self.server.url, model="m", **settings).worst_case_s * (1 + case.check)
        started = time.perf_counter()
        try:
            generator = ServedGenerator(self.server.url, "m", check=case.check, **settings)
            if not case.check:  # building the client (it loads CA certificates) sends no request: not in the bound
                started = time.perf_counter()
            (generation,) = generator.generate([ChatRequest.user("Where does Maya live?")], 8)
            generator.close()
        finally:
            took = time.perf_counter() - started
            if took > bound + SLACK_S:
                raise Finding("hang", f"{took:.2f} s, over the stated bound of {bound:.2f} s")
        problems = []
        if generation.error is not None and (not generation.error or "\n" in generation.error):
            problems.append(f"error not one line: {generation.error!r:.80}")
        for name in ("prompt_tokens", "completion_tokens"):
            count = getattr(generation, name)
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_USAGE_TOKENS:
                problems.append(f"{name} = {count!r:.40}")
        if not isinstance(generation.text, str) or len(generation.text) > MAX_REPLY_BYTES:
            problems.append("text is not a bounded string")
        if not math.isfinite(generation.latency_ms) or (
            generation.ttft_ms is not None and not math.isfinite(generation.ttft_ms)
        ):
            problems.append("a non-finite latency")
        if problems:
            raise Finding("raw", "; ".join(problems))
