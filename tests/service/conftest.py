"""A real `python -m memos_lab serve` process on 127.0.0.1 (hashing embedder, cheap scrypt), reached with httpx."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from memos_lab.service.server import ServerProcess

ADMIN_TOKEN = "test-admin-token-0123456789"
FAST = ["embedder=hashing", "serve.scrypt_n=1024", "serve.rate_burst=1000", "serve.rate_per_s=1000"]


def start_server(root: Path, *overrides: str) -> ServerProcess:
    return ServerProcess(root, [*FAST, *overrides], env={"MEMOS_LAB_ADMIN_TOKEN": ADMIN_TOKEN}).start()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Api:
    """The server's URL, an admin client, and a way to make users with tokens."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.http = httpx.Client(base_url=f"{server.url}/v1", timeout=60)
        self.admin = bearer(ADMIN_TOKEN)

    def user(self, user_id: str) -> dict[str, str]:
        """Register `user_id` and return the headers of a fresh token of theirs."""
        response = self.http.post("/admin/users", json={"user_id": user_id}, headers=self.admin)
        assert response.status_code in (201, 409), response.text
        return bearer(self.token(user_id))

    def token(self, user_id: str, **body: object) -> str:
        response = self.http.post(f"/admin/users/{user_id}/tokens", json=body, headers=self.admin)
        assert response.status_code == 201, response.text
        return str(response.json()["token"])


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server = start_server(tmp_path_factory.mktemp("service") / "root")
    client = Api(server)
    try:
        yield client
    finally:
        client.http.close()
        server.stop()


@pytest.fixture
def launch() -> Iterator[Callable[..., Api]]:
    """Start servers on given roots (stopped at the end of the test); `Api.server.kill()` is kill -9."""
    started: list[Api] = []

    def start(root: Path, *overrides: str) -> Api:
        started.append(Api(start_server(root, *overrides)))
        return started[-1]

    yield start
    for client in started:
        client.http.close()
        client.server.stop()


@pytest.fixture
def fresh(api: Api) -> Callable[[str], str]:
    """A name unique to this test (the module's server is shared)."""
    counter = iter(range(10**6))
    return lambda name: f"{name}{next(counter)}-{id(counter) % 10**6}"
