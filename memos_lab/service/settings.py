"""The service's settings (conf/serve.yaml, `serve.*`): where it listens and the limits it enforces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from memos_lab.errors import ConfigError
from memos_lab.settings import Settings, non_negative, non_negative_int, one_of, positive, positive_int

TRANSPORTS = ("stdio", "http")


@dataclass(frozen=True)
class ServeSettings(Settings):
    section: ClassVar[str] = "serve"
    host: str = "127.0.0.1"  # 0.0.0.0 exposes it to the network: put TLS in front (a reverse proxy)
    port: int = 8765
    workers: int = 1  # server processes on one root (each holds its own copy of the indexes)
    admin_token_env: str = "MEMOS_LAB_ADMIN_TOKEN"  # the *name* of the variable holding the admin token
    max_body_bytes: int = 1_048_576  # a larger request body is refused (413) before it is parsed
    max_batch: int = 256  # items per add
    max_top_k: int = 100
    rate_per_s: float = 50.0  # requests per second per token, sustained ...
    rate_burst: int = 100  # ... and in a burst (token bucket, per server process)
    token_ttl_s: float | None = None  # default lifetime of a new token; None: until revoked
    max_queued_jobs: int = 8  # parametric edit jobs waiting behind the running one; more are refused (429)
    # Concurrent requests' texts (searches' queries, added items) are embedded together, in one embedder call on
    # a thread of its own: the texts that arrived while the previous call ran, and those arriving within
    # batch_window_ms of the first waiting one (0: none; a window only delays a lone request, and under load the
    # next batch fills while one is encoded: 52.7 req/s with 0 ms, 52.0 with 2, results/service/README.md),
    # at most max_query_batch texts per call; max_query_batch 0 embeds in the MOS call on the event loop
    # instead (no batching, no thread)
    batch_window_ms: float = 0.0
    max_query_batch: int = 32
    lock_timeout_s: float = 30.0  # how long a write waits for another process's write to the same cube
    # scrypt cost of the stored token hashes (n must be a power of two); verified tokens are then cached
    scrypt_n: int = 16384
    scrypt_r: int = 8

    def validate(self) -> None:
        positive_int(
            self,
            "port",
            "workers",
            "max_body_bytes",
            "max_batch",
            "max_top_k",
            "rate_burst",
            "scrypt_r",
            "max_queued_jobs",
        )
        positive(self, "rate_per_s", "lock_timeout_s", "token_ttl_s")
        non_negative(self, "batch_window_ms")
        non_negative_int(self, "max_query_batch")
        if self.scrypt_n < 2 or self.scrypt_n & (self.scrypt_n - 1):
            raise ConfigError(f"serve.scrypt_n must be a power of two >= 2, got {self.scrypt_n}")
        if not self.admin_token_env.isidentifier():
            raise ConfigError(f"serve.admin_token_env must name an environment variable, got {self.admin_token_env!r}")


@dataclass(frozen=True)
class McpSettings(Settings):
    section: ClassVar[str] = "mcp"
    user: str = ""  # whose cubes the MCP tools reach (required)
    transport: str = "stdio"  # stdio | http (streamable HTTP on mcp_host:mcp_port)
    host: str = "127.0.0.1"
    port: int = 8766
    max_top_k: int = 100

    def validate(self) -> None:
        one_of(self, "transport", TRANSPORTS)
        positive_int(self, "port", "max_top_k")
