"""`RemoteMOS`: the MOS's methods, over HTTP to `python -m memos_lab serve` (httpx).

The same names and arguments as `memos_lab.mos.MOS`, so code written for one runs on the other. The
server decides the caller from the token, so a client acts as the users whose tokens it holds: one user's
token (`token=`), and, with the admin token (`admin_token=`), every user it registers (a token is minted
for each). Naming any other caller is refused here, before a request is sent. Server errors come back as
the same MemosError classes the in-process MOS raises, with the server's one line.

With a `namespace`, the user and cube ids this client names are that prefix plus the ids its caller uses,
so runs that register the same users and cubes (the jobs of a sweep) share one server without colliding.
The experiments build one with `mos=remote` (conf/mos/remote.yaml, `RemoteMOS.from_settings`).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import httpx

from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import AccessDeniedError, BusyError, ConfigError, DataError, MemosError, NotFoundError
from memos_lab.memory.item import MemoryItem, MemoryMetadata, new_id
from memos_lab.memory.textual.base import SearchFilter, TextualMemory
from memos_lab.mos import READ, CubeHit, CubeInfo
from memos_lab.settings import Settings, positive, positive_int, uses_settings

JOB_ENDED = ("done", "failed")
_SENT_METADATA = ("user", "session", "source", "event_time", "tags", "extra")  # what a client may set
_ERRORS: dict[int, type[MemosError]] = {
    401: AccessDeniedError,
    403: AccessDeniedError,
    404: NotFoundError,
    409: BusyError,
    429: BusyError,  # a rate limit or a full job queue: retry later
}


@dataclass(frozen=True)
class RemoteCube:
    """What `create_cube` returns: the id and owner (the cube's contents stay on the server)."""

    cube_id: str
    owner: str
    text: None = None  # no local text memory: its index lives in the server


@dataclass(frozen=True)
class RemoteSettings(Settings):
    """`mos=remote`: the experiments' MOS is a server's (conf/mos/remote.yaml)."""

    section: ClassVar[str] = "mos"
    url: str = "???"  # http://HOST:PORT of `python -m memos_lab serve`
    # the *name* of the environment variable holding the server's admin token (the runs register their
    # users; a token is minted for each); never the token itself, which would land in the run folder
    token_env: str = "MEMOS_LAB_ADMIN_TOKEN"
    namespace: str | None = None  # prefix of the run's user and cube ids; None: a fresh one per run
    token_ttl_s: float | None = 7 * 86400  # lifetime of the tokens minted for the run's users
    timeout_s: float = 600.0  # per request
    max_batch: int = 256  # items per add request (the server's serve.max_batch)

    def validate(self) -> None:
        positive(self, "token_ttl_s", "timeout_s")
        positive_int(self, "max_batch")
        if not self.token_env.isidentifier():
            raise ConfigError(f"mos.token_env must name an environment variable, got {self.token_env!r}")


class RemoteMOS:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        admin_token: str | None = None,
        timeout_s: float = 60.0,
        max_batch: int = 256,
        namespace: str = "",
        token_ttl_s: float | None = None,
    ) -> None:
        if token is None and admin_token is None:
            raise ConfigError("RemoteMOS needs a user's token or the admin token")
        self._http = httpx.Client(base_url=url.rstrip("/") + "/v1", timeout=timeout_s)
        self._admin = admin_token
        self._tokens: dict[str, str] = {}  # user (as this client's caller names them) -> token
        self.max_batch = max_batch
        self.namespace = namespace
        self.token_ttl_s = token_ttl_s
        if token is not None:
            self._tokens[self._local(str(self._call("GET", "/me", token=token)["user_id"]))] = token

    @classmethod
    @uses_settings(RemoteSettings)
    def from_settings(cls, textual_memory_factory: Callable[[], TextualMemory], **values: Any) -> RemoteMOS:
        """The experiments' remote MOS (`mos=remote`): the admin token read from `token_env`, and refused
        unless the server embeds with the run's embedder into the run's memory backend (else its results
        would be another configuration's)."""
        settings = RemoteSettings.from_mapping(values)
        namespace = settings.namespace if settings.namespace is not None else f"run{secrets.token_hex(4)}-"
        mos = cls.from_environment(
            settings.url,
            admin_token_env=settings.token_env,
            timeout_s=settings.timeout_s,
            max_batch=settings.max_batch,
            namespace=namespace,
            token_ttl_s=settings.token_ttl_s,
        )
        text = textual_memory_factory()
        try:
            served = mos._call("GET", "/info", token=mos._admin)
        except AccessDeniedError as error:
            mos.close()
            raise AccessDeniedError(
                f"the MOS server at {settings.url} refused the admin token in ${settings.token_env}: {error}"
            ) from None
        ours = {"name": text.embedder.name, "dim": text.embedder.dim}
        memory = f"{type(text).__module__}.{type(text).__qualname__}"
        if served["embedder"] != ours or served["memory"] != memory:
            mos.close()
            raise ConfigError(
                f"the MOS server at {settings.url} builds cubes of {served['memory']} embedded by {served['embedder']}; "
                f"this run's memory= and embedder= give {memory} embedded by {ours}: start the server with the run's"
            )
        return mos

    @classmethod
    def from_environment(
        cls, url: str, token_env: str | None = None, admin_token_env: str | None = None, **kwargs: Any
    ) -> RemoteMOS:
        """Tokens read from the environment variables these name (never the tokens themselves in a config)."""

        def read(name: str | None) -> str | None:
            if name and not os.environ.get(name):
                raise ConfigError(f"${name} is unset (a token's variable was named, the variable holds nothing)")
            return os.environ[name] if name else None

        return cls(url, token=read(token_env), admin_token=read(admin_token_env), **kwargs)

    def close(self) -> None:
        self._http.close()

    # ---- users and cubes ------------------------------------------------------------------------

    def register_user(self, user: str) -> None:
        """Register `user` (admin token needed) and mint a token this client then acts with for them."""
        if self._admin is None:
            raise AccessDeniedError("registering users needs the admin token (RemoteMOS(admin_token=...))")
        served = self._id(user)
        self._call("POST", "/admin/users", {"user_id": served}, token=self._admin)
        made = self._call("POST", f"/admin/users/{served}/tokens", {"ttl_s": self.token_ttl_s}, token=self._admin)
        self._tokens[user] = str(made["token"])

    def create_cube(self, owner: str, cube_id: str | None = None) -> RemoteCube:
        made = self._call("POST", "/cubes", {"cube_id": self._new_cube_id(cube_id)}, caller=owner)
        return RemoteCube(self._local(made["cube_id"]), self._local(made["owner"]))

    def create_team_cube(self, owner: str, members: Iterable[str], cube_id: str | None = None) -> RemoteCube:
        body = {"cube_id": self._new_cube_id(cube_id), "members": [self._id(member) for member in members]}
        made = self._call("POST", "/cubes", body, caller=owner)
        return RemoteCube(self._local(made["cube_id"]), self._local(made["owner"]))

    def share_cube(self, caller: str, cube_id: str, user: str, mode: str = READ) -> None:
        self._call("PUT", f"/cubes/{self._id(cube_id)}/shares/{self._id(user)}", {"mode": mode}, caller=caller)

    def unshare_cube(self, caller: str, cube_id: str, user: str) -> None:
        self._call("DELETE", f"/cubes/{self._id(cube_id)}/shares/{self._id(user)}", caller=caller)

    def readable_cubes(self, user: str) -> list[str]:
        cube_ids = self._call("GET", "/cubes", caller=user)["cube_ids"]
        return [self._local(cube_id) for cube_id in cube_ids if cube_id.startswith(self.namespace)]

    def describe(self, caller: str, cube_id: str) -> CubeInfo:
        info = self._call("GET", f"/cubes/{self._id(cube_id)}", caller=caller)
        return CubeInfo(
            self._local(info["cube_id"]),
            self._local(info["owner"]),
            int(info["items"]),
            int(info["index_bytes"]),
            bool(info["returns_stored_items"]),
            tuple(info["slots"]),
        )

    # ---- memory operations ----------------------------------------------------------------------

    def add(self, caller: str, cube_id: str, items: Iterable[MemoryItem | str]) -> list[str]:
        """Sent in batches of `max_batch` (the server's limit): each batch is stored whole or not at all."""
        batch = [_item_body(MemoryItem(item) if isinstance(item, str) else item) for item in items]
        ids: list[str] = []
        for start in range(0, len(batch), self.max_batch):
            chunk = batch[start : start + self.max_batch]
            ids += self._call("POST", f"/cubes/{self._id(cube_id)}/memories", {"items": chunk}, caller=caller)["ids"]
        return ids

    def search(
        self,
        caller: str,
        query: str,
        *,
        top_k: int = 10,
        cube_ids: Sequence[str] | None = None,
        filters: Mapping[str, object] | SearchFilter | None = None,
    ) -> list[CubeHit]:
        scope = None if cube_ids is None else [self._id(cube_id) for cube_id in cube_ids]
        body: dict[str, Any] = {"query": query, "top_k": top_k, "cube_ids": scope}
        if filters is not None:
            body["filters"] = _filter_body(filters)
        hits = self._call("POST", "/search", body, caller=caller)["hits"]
        return [CubeHit(self._local(hit["cube_id"]), _item(hit["item"]), float(hit["score"])) for hit in hits]

    def get(self, caller: str, cube_id: str, item_id: str) -> MemoryItem:
        return _item(self._call("GET", f"/cubes/{self._id(cube_id)}/memories/{item_id}", caller=caller))

    def get_all(
        self, caller: str, cube_id: str, filters: Mapping[str, object] | SearchFilter | None = None
    ) -> list[MemoryItem]:
        params = {key: value for key, value in _filter_body(filters or {}).items() if value not in (None, [])}
        items = self._call("GET", f"/cubes/{self._id(cube_id)}/memories", params=params, caller=caller)["items"]
        return [_item(item) for item in items]

    def update(self, caller: str, cube_id: str, item_id: str, text: str, **metadata: object) -> MemoryItem:
        unknown = sorted(set(metadata) - set(_SENT_METADATA))
        if unknown:
            raise ConfigError(f"a remote update may change {list(_SENT_METADATA)}, not {unknown}")
        body: dict[str, Any] = {"text": text}
        for key, value in metadata.items():
            body[key] = list(value) if isinstance(value, tuple) else value
        return _item(self._call("PATCH", f"/cubes/{self._id(cube_id)}/memories/{item_id}", body, caller=caller))

    def merge(self, caller: str, cube_id: str, item_ids: Sequence[str], text: str | None = None) -> MemoryItem:
        return _item(
            self._call(
                "POST", f"/cubes/{self._id(cube_id)}/merge", {"item_ids": list(item_ids), "text": text}, caller=caller
            )
        )

    def delete(self, caller: str, cube_id: str, item_id: str, hard: bool = False) -> None:
        self._call(
            "DELETE",
            f"/cubes/{self._id(cube_id)}/memories/{item_id}",
            params={"hard": str(hard).lower()},
            caller=caller,
        )

    def save(self, caller: str, cube_id: str) -> None:
        """Fold the cube's journal into a new dump on the server (writes are durable without it)."""
        self._call("POST", f"/cubes/{self._id(cube_id)}/save", caller=caller)

    # ---- the server's model: activation caches, parametric edit jobs ------------------------------

    def cache_activation(
        self, caller: str, cube_id: str, max_items: int = 64, per_item: bool = True, assembled: bool = True
    ) -> dict[str, Any]:
        """Encode the KV caches of the cube's `max_items` most recent active memories with the server's model
        into the cube's activation slot (POST /v1/cubes/{id}/activation); what is cached now (model, memories,
        caches_added, caches_total, cached_tokens, cache_bytes). BusyError while the model is busy."""
        body = {"max_items": max_items, "per_item": per_item, "assembled": assembled}
        summary = self._call("POST", f"/cubes/{self._id(cube_id)}/activation", body, caller=caller)
        return {**summary, "cube_id": self._local(summary["cube_id"])}

    def submit_edits(
        self, caller: str, cube_id: str, edits: Sequence[KnowledgeEdit], adapter: str = "default"
    ) -> dict[str, Any]:
        """Queue knowledge edits to train into `adapter` of the cube's parametric memory on the server
        (POST /v1/cubes/{id}/parametric/edits); the job (job_id, status, ...), to follow with `job` or
        `wait_job`. BusyError (429) when the server's job queue is full."""
        body = {"edits": [_edit_body(edit) for edit in edits], "adapter": adapter}
        return self._job(self._call("POST", f"/cubes/{self._id(cube_id)}/parametric/edits", body, caller=caller))

    def job(self, caller: str, job_id: str) -> dict[str, Any]:
        """A job `caller` submitted (GET /v1/jobs/{id}): status queued, running, done (with its result) or
        failed (with one line)."""
        return self._job(self._call("GET", f"/jobs/{job_id}", caller=caller))

    def wait_job(self, caller: str, job_id: str, timeout_s: float = 600.0, poll_s: float = 0.5) -> dict[str, Any]:
        """The job once it is done or failed (polled every `poll_s`); BusyError if it is neither after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while (job := self.job(caller, job_id))["status"] not in JOB_ENDED:
            if time.monotonic() >= deadline:
                raise BusyError(f"job {job_id} is still {job['status']} after {timeout_s:g} s")
            time.sleep(poll_s)
        return job

    # ---- the wire -------------------------------------------------------------------------------

    def _job(self, job: dict[str, Any]) -> dict[str, Any]:
        return {**job, "cube_id": self._local(job["cube_id"])}

    def _id(self, local: str) -> str:
        """A user or cube id as the server knows it."""
        return f"{self.namespace}{local}"

    def _local(self, served: str) -> str:
        return served.removeprefix(self.namespace)

    def _new_cube_id(self, cube_id: str | None) -> str | None:
        if cube_id is None and self.namespace:
            cube_id = new_id()  # named here, so the server's id carries the namespace
        return None if cube_id is None else self._id(cube_id)

    def _call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        params: Mapping[str, Any] | None = None,
        caller: str | None = None,
        token: str | None = None,
    ) -> Any:
        if caller is not None:
            if caller not in self._tokens:
                raise AccessDeniedError(f"this client holds no token of {caller!r}; it acts as {sorted(self._tokens)}")
            token = self._tokens[caller]
        try:
            response = self._http.request(
                method, path, json=body, params=params, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as error:
            raise BusyError(f"MOS server {self._http.base_url} unreachable: {type(error).__name__}: {error}") from None
        if response.status_code < 300:
            return response.json()
        try:
            line = str(response.json()["error"])
        except (ValueError, KeyError, TypeError):
            line = response.text[:200]
        kind = _ERRORS.get(response.status_code, DataError if response.status_code < 500 else MemosError)
        raise kind(f"{line} (HTTP {response.status_code})")


def _item_body(item: MemoryItem) -> dict[str, Any]:
    meta = item.metadata
    body: dict[str, Any] = {"text": item.text, "id": item.id, "tags": list(meta.tags), "extra": dict(meta.extra)}
    body.update({key: getattr(meta, key) for key in ("user", "session", "source", "event_time")})
    return body


def _edit_body(edit: KnowledgeEdit) -> dict[str, Any]:
    """What the server takes of an edit (locality and portability probes are for evaluation, not training)."""
    body = {key: getattr(edit, key) for key in ("edit_id", "subject", "relation", "prompt", "target_new")}
    return {**body, "target_old": edit.target_old, "paraphrases": list(edit.paraphrases)}


def _filter_body(filters: Mapping[str, object] | SearchFilter) -> dict[str, Any]:
    values = asdict(SearchFilter.from_mapping(filters))
    return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


_METADATA = {item.name for item in fields(MemoryMetadata)}


def _item(data: Mapping[str, Any]) -> MemoryItem:
    metadata = {key: value for key, value in data["metadata"].items() if key in _METADATA}
    metadata["tags"] = tuple(metadata.get("tags", ()))
    return MemoryItem(text=data["text"], metadata=MemoryMetadata(**metadata), id=data["id"])
