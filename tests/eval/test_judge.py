"""The OpenAI-compatible judge against a stub HTTP server started in the test."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from memos_lab.errors import ConfigError
from memos_lab.eval.judge import JudgeError, OpenAICompatibleJudge


class Stub(BaseHTTPRequestHandler):
    replies: list[str] = []  # raw response bodies, served in turn
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        Stub.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        body = Stub.replies.pop(0).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def completion(text: str) -> str:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]})


@pytest.fixture
def server():
    httpd = HTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Stub.replies, Stub.requests = [], []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_verdicts_are_parsed(server):
    Stub.replies = [completion("CORRECT"), completion("wrong."), completion("INCORRECT")]
    judge = OpenAICompatibleJudge(server, "stub-model", api_key_env=None)
    assert [judge.judge("q?", "Lisbon", "Lisbon") for _ in range(3)] == [True, False, False]
    assert Stub.requests[0]["model"] == "stub-model" and "Lisbon" in Stub.requests[0]["messages"][0]["content"]


@pytest.mark.parametrize("reply, message", [(completion("maybe?"), "neither CORRECT nor WRONG"),
                                            ("<html>oops</html>", "no chat completion"),
                                            (json.dumps({"choices": []}), "no chat completion")])
def test_garbage_is_a_judge_error(server, reply, message):
    Stub.replies = [reply]
    with pytest.raises(JudgeError, match=message):
        OpenAICompatibleJudge(server, "m", api_key_env=None).judge("q", "a", "b")


def test_a_dead_endpoint_fails_fast_after_a_few_tries():
    judge = OpenAICompatibleJudge("http://127.0.0.1:9/v1", "m", api_key_env=None, timeout_s=2, max_consecutive_failures=2)
    for _ in range(2):
        with pytest.raises(JudgeError, match="failed"):
            judge.judge("q", "a", "b")
    with pytest.raises(JudgeError, match="disabled after 2 failures"):
        judge.judge("q", "a", "b")


def test_bad_settings():
    with pytest.raises(ConfigError, match="base_url must be an http"):
        OpenAICompatibleJudge("localhost:8000", "m")
    with pytest.raises(ConfigError, match="model must name"):
        OpenAICompatibleJudge("http://x", "")
