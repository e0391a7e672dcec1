"""The LLM judge and the served generator under fault injection: a stub HTTP server started in the test
answers with garbage, 500s, hangs or drops the connection. Every fault is a counted failure for that
question, never a crash. (The real server, `transformers serve`, is tested in tests/generation/.)"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from memos_lab.errors import ConfigError
from memos_lab.eval.judge import JudgeError, LLMJudge
from memos_lab.generation.base import ChatRequest
from memos_lab.generation.served import ServedGenerator


class Stub(BaseHTTPRequestHandler):
    replies: ClassVar[list] = []  # per request: a body string, an (HTTP status, body) pair, "HANG" or "DROP"
    requests: ClassVar[list[dict]] = []

    def do_POST(self):
        Stub.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        reply = Stub.replies.pop(0) if Stub.replies else completion("CORRECT")
        if reply == "HANG":
            time.sleep(3)
            return
        if reply == "DROP":
            self.connection.close()  # no status line at all
            return
        status, body = reply if isinstance(reply, tuple) else (200, reply)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body.encode())))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def completion(text: str, prompt_tokens: int = 11, completion_tokens: int = 2) -> str:
    return json.dumps({
        "id": "x", "object": "chat.completion", "created": 0, "model": "stub-model",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })  # fmt: skip


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Stub.replies, Stub.requests = [], []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def served(url: str, **options) -> ServedGenerator:
    settings = {"timeout_s": 1.0, "max_retries": 0, "concurrency": 1, "check": False, **options}
    return ServedGenerator(url, "stub-model", **settings)


def test_verdicts_are_parsed_and_usage_counted(server):
    Stub.replies = [completion("CORRECT"), completion("wrong."), completion("INCORRECT")]
    judge = LLMJudge(served(server))
    assert [judge.judge("q?", "Lisbon", "Lisbon") for _ in range(3)] == [True, False, False]
    sent = Stub.requests[0]
    assert sent["model"] == "stub-model" and "Lisbon" in sent["messages"][0]["content"]
    assert sent["temperature"] == 0 and sent["seed"] == 0 and sent["max_tokens"] == 8
    assert (judge.prompt_tokens, judge.completion_tokens) == (33, 6)


def test_every_fault_is_a_counted_failure_not_a_crash(server):
    Stub.replies = [
        completion("maybe?"),  # no verdict
        "<html>oops</html>",  # garbage
        json.dumps({"choices": []}),  # no choice
        (500, json.dumps({"error": {"message": "boom"}})),  # server error (no retries here)
        "HANG",  # longer than the 1 s timeout
        "DROP",  # connection closed without a reply
        completion("CORRECT"),
    ]
    judge = LLMJudge(served(server, max_consecutive_failures=10))
    verdicts = judge.judge_many([("q", "a", "b")] * 7)
    assert verdicts == [None] * 6 + [True]
    with pytest.raises(JudgeError, match="failed"):
        Stub.replies = [(500, "{}")]
        judge.judge("q", "a", "b")


def test_retries_recover_from_a_500(server):
    Stub.replies = [(500, "{}"), completion("CORRECT")]
    generator = served(server, max_retries=1)
    (generation,) = generator.generate([ChatRequest.user("hi")], 4)
    assert not generation.failed and generation.text == "CORRECT" and len(Stub.requests) == 2


def test_concurrent_requests_keep_their_order(server):
    generator = served(server, concurrency=4)
    Stub.replies = [completion(f"answer {i}") for i in range(8)]
    generations = generator.generate([ChatRequest.user(f"q{i}", request_id=str(i)) for i in range(8)], 4)
    assert [g.request_id for g in generations] == [str(i) for i in range(8)]
    assert all(g.prompt_tokens == 11 and g.completion_tokens == 2 and not g.failed for g in generations)
    assert sorted(g.text for g in generations) == sorted(f"answer {i}" for i in range(8))


def test_a_dead_server_fails_fast_after_a_few_tries():
    generator = ServedGenerator("http://127.0.0.1:9/v1", "m", timeout_s=1, max_retries=0, check=False,
                                max_consecutive_failures=2, concurrency=1)  # fmt: skip
    generations = generator.generate([ChatRequest.user("q")] * 4, 4)
    assert all(g.failed for g in generations)
    assert "skipped after 2 failures" in generations[3].error


def test_bad_settings(server, monkeypatch):
    with pytest.raises(ConfigError, match="base_url must be an http"):
        ServedGenerator("localhost:8000", "m", check=False)
    with pytest.raises(ConfigError, match="model must name"):
        ServedGenerator("http://x", "", check=False)
    monkeypatch.delenv("MEMOS_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="MEMOS_TEST_KEY is not set"):
        ServedGenerator(server, "m", api_key_env="MEMOS_TEST_KEY")
    with pytest.raises(ConfigError, match="llm.base_url: cannot reach"):
        ServedGenerator("http://127.0.0.1:9/v1", "m", timeout_s=1, max_retries=0)
    Stub.replies = [(404, json.dumps({"error": {"message": "no such model"}}))]
    with pytest.raises(ConfigError, match="does not serve 'm'"):
        ServedGenerator(server, "m", max_retries=0)
    Stub.replies = [(401, json.dumps({"error": {"message": "bad key"}}))]
    monkeypatch.setenv("MEMOS_TEST_KEY", "sk-secret-value")
    with pytest.raises(ConfigError, match="refused the key in MEMOS_TEST_KEY") as refused:
        ServedGenerator(server, "m", api_key_env="MEMOS_TEST_KEY", max_retries=0)
    assert "sk-secret-value" not in str(refused.value)


def test_the_key_is_sent_but_never_described(server, monkeypatch):
    monkeypatch.setenv("MEMOS_TEST_KEY", "sk-secret-value")
    generator = ServedGenerator(server, "stub-model", api_key_env="MEMOS_TEST_KEY", max_retries=0)
    assert generator.served_as == "stub-model"
    assert "sk-secret-value" not in json.dumps(generator.describe())
    assert generator.describe()["api_key_env"] == "MEMOS_TEST_KEY"


def test_a_server_dying_mid_run_costs_counted_failures_not_the_run(server):
    from hydra import compose, initialize_config_dir

    from memos_lab.cli import CONF_DIR
    from memos_lab.experiments import scheduling
    from memos_lab.loggers.base import Tracker

    Stub.replies = [completion("OK")] + [completion("Lisbon")] * 3 + ["DROP"] * 200  # the check, 3 answers, then dead
    overrides = ["experiment=scheduling", "model=tiny_llama", "embedder=hashing", "logger=none",
                 "dataset.n_conversations=1", "dataset.n_sessions=2", "llm=openai_compatible", f"llm.base_url={server}",
                 "llm.model=stub-model", "llm.max_retries=0", "llm.timeout_s=2", "llm.max_consecutive_failures=2"]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    metrics = scheduling.run(cfg, Tracker())
    assert metrics["qa/questions"] > 5 and metrics["qa/answer_failures"] == metrics["qa/questions"] - 3
    assert "qa/f1" in metrics and metrics["qa/prompt_tokens_total"] == 3 * 11
    assert len(Stub.requests) == 1 + 3 + 2  # after two failures in a row the server is not called again
