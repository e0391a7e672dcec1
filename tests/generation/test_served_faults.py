"""The served client against a hostile server (fuzz/hostile_server.py, a fault injector on 127.0.0.1): every
attempt ends within `timeout_s` whatever the server sends, a stream stops after `max_new_tokens` pieces, a
reply has a size cap, bad usage counts are counted failures, and one question takes at most `worst_case_s`.
These are the reproductions of issue 22 items 2-4; the honest paths run against `transformers serve`
(test_served.py, test_served_qa.py)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from fuzz.hostile_server import HostileServer, Reply, chunk, completion, endless_stream, honest_stream, json_reply, sse
from memos_lab import cli
from memos_lab.errors import ConfigError
from memos_lab.generation.base import ChatRequest, Generation
from memos_lab.generation.served import ServedGenerator, ServedSettings

QUESTION = [ChatRequest.user("Where does Maya live?", request_id="q1")]
INFINITY_USAGE = b'{"prompt_tokens": Infinity, "completion_tokens": 1}'
SLACK_S = 0.5  # thread start and scheduling on a loaded machine


def ask(server: HostileServer, stream: bool, **settings: object) -> tuple[Generation, float]:
    generator = ServedGenerator(server.url, "m", check=False, stream=stream, **settings)
    started = time.perf_counter()
    (generation,) = generator.generate(QUESTION, 8)
    generator.close()
    return generation, time.perf_counter() - started


@pytest.mark.parametrize("stream", [False, True])
def test_a_drip_is_cut_at_timeout_s(stream: bool):
    # Issue 22 item 3: one byte every 0.05 s kept an attempt alive as long as the server dripped.
    body = honest_stream(["Lis", "bon"]) if stream else json.dumps(completion()).encode()
    with HostileServer(Reply(body=body, drip_s=0.05, framing="chunked" if stream else "length")) as server:
        generation, took = ask(server, stream, timeout_s=1.0, max_retries=0)
    assert generation.failed and "timed out" in generation.error
    assert 1.0 <= took < 1.0 + SLACK_S


def test_a_dripped_question_takes_at_most_the_stated_worst_case():
    settings = {"timeout_s": 0.6, "max_retries": 2}
    bound = ServedSettings(base_url="http://x/v1", model="m", **settings).worst_case_s  # type: ignore[arg-type]
    assert bound == pytest.approx(0.6 * 3 + 0.5 + 1.0)
    with HostileServer(json_reply(completion(), drip_s=0.05)) as server:
        generation, took = ask(server, False, **settings)
        assert server.requests == 3  # each attempt was cut, then retried
    assert generation.failed and 0.6 * 3 <= took < bound + SLACK_S


def test_an_endless_stream_stops_after_max_new_tokens_pieces():
    # Issue 22 item 4: a stream that never ends grew answers to megabytes.
    reply = Reply(body=endless_stream(), content_type="text/event-stream", framing="chunked")
    with HostileServer(reply) as server:
        generation, took = ask(server, True, timeout_s=5.0, max_retries=2)
        assert server.requests == 1  # a server that ignores max_tokens is not asked again
    assert generation.failed and "more than max_new_tokens=8" in generation.error and took < 2.0


@pytest.mark.parametrize("stream", [False, True])
def test_a_body_that_never_ends_is_cut_by_the_deadline_or_the_byte_cap(stream: bool):
    never_ends = Reply(body=b'{"id": "c1", "choices": [', declared_length=10**9, hold=True)
    with HostileServer(never_ends) as server:
        generation, took = ask(server, stream, timeout_s=1.0, max_retries=0)
    assert generation.failed and took < 1.0 + SLACK_S
    with HostileServer(json_reply(completion("x" * (3 << 20)))) as server:
        generation, _ = ask(server, stream, timeout_s=5.0, max_retries=2, max_reply_bytes=1 << 20)
        assert server.requests == 1  # too large is not retried
    assert generation.failed and "larger than 1048576 bytes" in generation.error


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("usage", [INFINITY_USAGE, b'{"prompt_tokens": -3, "completion_tokens": 1}',
                                   b'{"prompt_tokens": 1e400, "completion_tokens": 1}',
                                   b'{"prompt_tokens": "5", "completion_tokens": 1}',
                                   b'{"prompt_tokens": NaN, "completion_tokens": 1}'])  # fmt: skip
def test_usage_that_is_not_a_count_is_a_counted_failure(stream: bool, usage: bytes):
    # Issue 22 item 2: `Infinity` ended the run with an OverflowError traceback.
    if stream:
        events = [chunk("Lisbon"), b'{"id": "c1", "model": "m", "choices": [], "usage": ' + usage + b"}"]
        reply = Reply(body=lambda: sse(events), content_type="text/event-stream", framing="chunked")
    else:
        text = json.dumps(completion(usage={"prompt_tokens": 0})).replace('{"prompt_tokens": 0}', usage.decode())
        reply = Reply(body=text.encode())
    with HostileServer(reply) as server:
        generation, _ = ask(server, stream, timeout_s=5.0, max_retries=0)
    assert generation.failed and "is not a token count" in generation.error


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body=b"[" * 100_000 + b"]" * 100_000),
        Reply(body=b"<html>502 Bad Gateway</html>", content_type="text/html"),
        json_reply({"choices": "abc"}),
        json_reply(completion(content={"text": "x"})),
        Reply(raw=b"\x00\xffgarbage\r\n\r\n"),
        json_reply(completion(), reset_after=40),
    ],
    ids=["deep", "html", "wrong-type", "not-text", "garbage", "reset"],
)
@pytest.mark.parametrize("stream", [False, True])
def test_a_broken_reply_is_one_counted_failure(reply: Reply, stream: bool):
    with HostileServer(reply) as server:
        generation, _ = ask(server, stream, timeout_s=2.0, max_retries=0)
    assert generation.failed and "\n" not in generation.error and generation.text == ""


def test_the_check_at_start_turns_a_broken_reply_into_one_line():
    deep = Reply(body=INFINITY_USAGE.replace(b"Infinity", b"[" * 50_000))
    with HostileServer(deep) as server, pytest.raises(ConfigError, match="sent no usable reply to a test request"):
        ServedGenerator(server.url, "m", max_retries=0, timeout_s=2.0)


def test_a_served_run_with_infinity_usage_writes_its_metrics(tmp_path: Path, capsys: pytest.CaptureFixture):
    """Through the CLI: every answer is a counted failure and the run ends with metrics.json, exit 0."""
    stream = Reply(body=lambda: sse([chunk("Lisbon"), b'{"choices": [], "usage": ' + INFINITY_USAGE + b"}"]),
                   content_type="text/event-stream", framing="chunked")  # fmt: skip
    with HostileServer(stream) as server:
        cli.main(["run", "experiment=scheduling", "embedder=hashing", "logger=none", "dataset.n_conversations=1",
                  "dataset.n_sessions=2", "experiment.max_new_tokens=4", "llm=openai_compatible",
                  f"llm.base_url={server.url}", "llm.model=m", "llm.check=false", "llm.stream=true",
                  "llm.timeout_s=2", f"hydra.run.dir={tmp_path}"])  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["qa/answer_failures"] == metrics["qa/questions"] > 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_stalled_name_lookup_is_cut_at_timeout_s(monkeypatch: pytest.MonkeyPatch):
    # The deadline covers connecting, name lookup included: getaddrinfo obeys no socket timeout.
    real_lookup = socket.getaddrinfo

    def stalled(host: str, *args: object, **kwargs: object) -> object:
        if host == "stalled.memos-lab.invalid":
            time.sleep(5)
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", stalled)
    generator = ServedGenerator("http://stalled.memos-lab.invalid:9/v1", "m", check=False, timeout_s=0.5, max_retries=0)
    started = time.perf_counter()
    (generation,) = generator.generate(QUESTION, 8)
    took = time.perf_counter() - started
    generator.close()
    assert generation.failed and "timed out" in generation.error
    assert took < 0.5 + SLACK_S
