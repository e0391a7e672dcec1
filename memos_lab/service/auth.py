"""Who is calling: bearer tokens stored hashed in the root, the admin token, and a rate limit per token.

A token reads `mlt_<id>_<secret>`: the id finds its row in `root/service/tokens.sqlite`, which holds the
scrypt hash of the secret (hashlib.scrypt, a random salt per token), never the secret. Hashes are compared
in constant time (hmac.compare_digest). scrypt is slow on purpose, so a token verified once is remembered
by this process as a keyed digest (a random key per process, so memory holds no token either); its row is
still read on every request, so a revocation or expiry takes effect at once, in every process.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from memos_lab.errors import AccessDeniedError, DataError, NotFoundError
from memos_lab.journal import open_table

TOKENS_FILE = "service/tokens.sqlite"
_TOKEN = re.compile(r"mlt_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_SCHEMA = (
    "CREATE TABLE tokens (id TEXT PRIMARY KEY, user TEXT NOT NULL, salt BLOB NOT NULL, hash BLOB NOT NULL,"
    " created_at REAL NOT NULL, expires_at REAL, revoked_at REAL)"
)


class AuthError(AccessDeniedError):
    """No token, a malformed, unknown, wrong, expired or revoked one (401)."""


class RateLimitedError(AccessDeniedError):
    """This token sent more requests than its rate allows (429)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    user: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None


class TokenStore:
    """The tokens of one root; one per process (several processes may share the file)."""

    def __init__(self, root: Path, scrypt_n: int = 16384, scrypt_r: int = 8, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(root) / TOKENS_FILE
        self._n, self._r = scrypt_n, scrypt_r
        self._lock = threading.Lock()
        self._verified: dict[str, bytes] = {}  # token id -> keyed digest of the token that passed scrypt
        self._key = os.urandom(32)
        self._db = open_table(self.path, busy_timeout_s, _SCHEMA, "token store")

    def issue(self, user: str, ttl_s: float | None = None) -> tuple[str, TokenInfo]:
        """A new token for `user` (shown once; only its hash is kept) and its record."""
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        salt = os.urandom(16)
        now = time.time()
        info = TokenInfo(token_id, user, now, None if ttl_s is None else now + ttl_s, None)
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (token_id, user, salt, self._hash(secret, salt), now, info.expires_at),
            )
        return f"mlt_{token_id}_{secret}", info

    def revoke(self, token_id: str) -> None:
        with self._lock:
            changed = self._db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), token_id)
            ).rowcount
        if not changed:
            raise NotFoundError(f"no live token with id {token_id[:40]!r}")

    def tokens_of(self, user: str) -> list[TokenInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, user, created_at, expires_at, revoked_at FROM tokens WHERE user = ? ORDER BY created_at",
                (user,),
            ).fetchall()
        return [self._info(row) for row in rows]

    def user_of(self, token: str) -> tuple[str, str]:
        """(user, token id) of a presented token, or AuthError; the row is read every time."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise AuthError("malformed token")
        token_id, secret = match.groups()
        with self._lock:
            row = self._db.execute(
                "SELECT id, user, created_at, expires_at, revoked_at, salt, hash FROM tokens WHERE id = ?", (token_id,)
            ).fetchone()
        if row is None:
            raise AuthError("unknown token")
        info = self._info(row[:5])
        if info.revoked_at is not None:
            raise AuthError("token revoked")
        if info.expires_at is not None and time.time() >= info.expires_at:
            raise AuthError("token expired")
        digest = hmac.digest(self._key, token.encode(), "sha256")
        known = self._verified.get(token_id)
        if known is None or not hmac.compare_digest(known, digest):
            salt, stored = row[5], row[6]
            if not isinstance(salt, bytes) or not isinstance(stored, bytes):
                raise DataError(f"{self.path}: token {token_id!r} has a malformed hash")
            if not hmac.compare_digest(self._hash(secret, salt), stored):
                raise AuthError("wrong token")
            self._verified[token_id] = digest
        return info.user, token_id

    def _hash(self, secret: str, salt: bytes) -> bytes:
        return hashlib.scrypt(secret.encode(), salt=salt, n=self._n, r=self._r, p=1, maxmem=256 * 2**20, dklen=32)

    def _info(self, row: tuple[object, ...]) -> TokenInfo:
        token_id, user, created, expires, revoked = row
        numbers = (created, expires, revoked)
        if not (isinstance(token_id, str) and isinstance(user, str)) or not all(
            value is None or isinstance(value, float | int) for value in numbers
        ):
            raise DataError(f"{self.path}: token row {str(token_id)[:40]!r} is malformed")
        return TokenInfo(token_id, user, float(created), _float(expires), _float(revoked))  # type: ignore[arg-type]

    def close(self) -> None:
        self._db.close()


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def admin_matches(presented: str, expected: str | None) -> bool:
    """Whether `presented` is the admin token, compared in constant time (as digests, so lengths do not leak)."""
    if not expected:
        return False
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), hashlib.sha256(expected.encode()).digest())


class RateLimiter:
    """A token bucket per token: `rate_per_s` sustained, `burst` at once. In memory, per process."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate, self.burst = rate_per_s, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # token id -> (tokens left, when)
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            left, then = self._buckets.get(key, (float(self.burst), now))
            left = min(float(self.burst), left + (now - then) * self.rate)
            if left < 1:
                raise RateLimitedError(
                    f"rate limit: more than {self.rate:g} requests/s on this token", (1 - left) / self.rate
                )
            self._buckets[key] = (left - 1, now)
