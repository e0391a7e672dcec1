"""The HTTP API of a MOS root (FastAPI): `create_app(mos, tokens, settings, ...)`; `python -m memos_lab serve` runs it.

The bearer token decides the caller; no request names its caller. The MOS's own checks decide the rest.
Every error is JSON `{"error": "one line"}`: 400 bad input, 401 no or bad token, 403 not allowed,
404 unknown, 409 conflict or busy, 413 too large, 422 malformed or ill-typed request, 429 rate limit or a full job queue;
a 500 says only "internal error" and an id that finds the traceback in the server's log.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which name closures.
import asyncio
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, fields, replace
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from memos_lab.data.schema import KnowledgeEdit
from memos_lab.errors import (
    AccessDeniedError,
    BusyError,
    ConfigError,
    DataError,
    IncompatibleError,
    MemosError,
    NotFoundError,
)
from memos_lab.memory.item import MemoryItem, MemoryMetadata, new_id
from memos_lab.memory.parametric.adapters import ADAPTER_NAME
from memos_lab.memory.parametric.base import check_batch
from memos_lab.memory.textual.base import TextualMemory
from memos_lab.mos import MOS
from memos_lab.service.auth import AuthError, RateLimitedError, RateLimiter, TokenStore, admin_matches
from memos_lab.service.batching import EmbeddingBatcher
from memos_lab.service.jobs import Job, JobRunner
from memos_lab.service.settings import ServeSettings
from memos_lab.service.weights import CubeGuard, LocalModel, cache_activation, edit_job, require

API = "/v1"
log = logging.getLogger("memos_lab.service")
_MAX_LINE = 300  # an error line is cut here: a client's bad input is never echoed at length
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ItemIn(_Strict):
    text: StrictStr
    id: StrictStr | None = None  # default: a new random id
    user: StrictStr | None = None
    session: StrictStr | None = None
    source: StrictStr | None = None
    event_time: StrictStr | None = None
    tags: list[StrictStr] = []
    extra: dict[StrictStr, StrictStr] = {}

    def item(self) -> MemoryItem:
        metadata = MemoryMetadata(
            user=self.user,
            session=self.session,
            source=self.source,
            event_time=self.event_time,
            tags=tuple(self.tags),
            extra=self.extra,
        )
        return MemoryItem(self.text, metadata) if self.id is None else MemoryItem(self.text, metadata, self.id)


class AddRequest(_Strict):
    items: list[ItemIn]


class Filters(_Strict):
    user: StrictStr | None = None
    session: StrictStr | None = None
    tags: list[StrictStr] = []
    statuses: list[StrictStr] = ["active"]
    time_from: StrictStr | None = None
    time_to: StrictStr | None = None


class SearchRequest(_Strict):
    query: StrictStr
    top_k: int = Field(10, ge=1)
    cube_ids: list[StrictStr] | None = None  # default: every cube the caller may read
    filters: Filters | None = None


class UpdateRequest(_Strict):
    text: StrictStr
    user: StrictStr | None = None
    session: StrictStr | None = None
    source: StrictStr | None = None
    event_time: StrictStr | None = None
    tags: list[StrictStr] | None = None
    extra: dict[StrictStr, StrictStr] | None = None


class MergeRequest(_Strict):
    item_ids: list[StrictStr]
    text: StrictStr | None = None


class CubeRequest(_Strict):
    cube_id: StrictStr | None = None
    members: list[StrictStr] | None = None  # a team cube: every member may read and write


class ShareRequest(_Strict):
    mode: Literal["read", "write"] = "read"


class ActivationRequest(_Strict):
    max_items: int = Field(64, ge=1, description="the cube's most recent active memories to cache")
    per_item: bool = Field(True, description="one chunk cache per memory, composable into any working memory")
    assembled: bool = Field(True, description="plus one cache of all of them in time order")


class EditIn(_Strict):
    subject: StrictStr
    prompt: StrictStr = Field(description="what the model is asked, e.g. 'The capital of France is'")
    target_new: StrictStr = Field(description="what it should now answer")
    relation: StrictStr = ""
    target_old: StrictStr | None = None
    edit_id: StrictStr | None = None  # default: a new random id
    paraphrases: list[StrictStr] = []

    def edit(self) -> KnowledgeEdit:
        return KnowledgeEdit(
            edit_id=self.edit_id or new_id(),
            subject=self.subject,
            relation=self.relation,
            prompt=self.prompt,
            target_new=self.target_new,
            target_old=self.target_old,
            paraphrases=tuple(self.paraphrases),
        )


class EditsRequest(_Strict):
    edits: list[EditIn]
    adapter: StrictStr = Field("default", description="the adapter of the cube's parametric memory to train")


class UserRequest(_Strict):
    user_id: StrictStr


class TokenRequest(_Strict):
    ttl_s: float | None = Field(None, gt=0)


_METADATA_FIELDS = tuple(field.name for field in fields(MemoryMetadata))


def job_json(job: Job) -> dict[str, Any]:
    return {key: value for key, value in asdict(job).items() if key != "user"}


def item_json(item: MemoryItem) -> dict[str, Any]:
    # a shallow copy: asdict deep-copies every value, on every hit of every search
    metadata = {name: getattr(item.metadata, name) for name in _METADATA_FIELDS}
    metadata["tags"] = list(item.metadata.tags)
    metadata["extra"] = dict(item.metadata.extra)
    return {"id": item.id, "text": item.text, "metadata": metadata}


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` is refused with 413 before anything parses it, whether its
    Content-Length says so or it is streamed in chunks."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _too_large(self.max_bytes, scope, receive, send)
            return
        # Read the whole body here, never more than the limit, and hand it on in one message.
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(message), send)  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await _too_large(self.max_bytes, scope, receive, send)
                return
        await self.app(scope, _replay({"type": "http.request", "body": bytes(body), "more_body": False}, receive), send)


def _replay(first: MutableMapping[str, Any], then: Receive | None = None) -> Receive:
    """A `receive` that returns `first` once, then defers to `then` (a disconnect, when it comes)."""
    sent = False

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return first
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


async def _too_large(max_bytes: int, scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse({"error": f"request body is larger than {max_bytes} bytes (serve.max_body_bytes)"}, 413)
    await response(scope, receive, send)


def create_app(
    mos: MOS,
    tokens: TokenStore,
    settings: ServeSettings,
    admin_token: str | None,
    jobs: JobRunner,
    local: LocalModel | None = None,
) -> FastAPI:
    """The API over `mos` (a durable MOS on a root); `admin_token` None disables the admin endpoints;
    `local` (the configured model) serves activation caching and parametric edits, run as `jobs`."""
    app = FastAPI(
        title="memos_lab MOS",
        version="1",
        description=(
            "Users, cubes and memories of one MOS root. Every request carries `Authorization: Bearer TOKEN`. "
            "With a local model (`serve ... model=NAME`): a cube's activation caches, and knowledge edits "
            "trained into its parametric memory as jobs to poll."
        ),
    )
    # Every endpoint is a coroutine that calls the MOS directly on the event loop, never awaiting inside a
    # call: the MOS (one process's state, not thread-safe) runs one call at a time. What takes long without
    # touching the MOS runs on threads, awaited between MOS calls: the embedder (queries batched, an add's
    # items; memos_lab/service/batching.py) and the model's activation caching (`guard` keeps the writes that
    # would change the cache being built waiting, memos_lab/service/weights.py).
    limiter = RateLimiter(settings.rate_per_s, settings.rate_burst)
    text = mos.new_text_memory()
    batcher = (
        EmbeddingBatcher(text.embedder, settings.batch_window_ms / 1000, settings.max_query_batch)
        if settings.max_query_batch
        else None
    )
    guard = CubeGuard()
    info_json = {
        "embedder": {"name": text.embedder.name, "dim": text.embedder.dim},
        "memory": f"{type(text).__module__}.{type(text).__qualname__}",
        "model": None if local is None else local.model.name,
    }
    bearer = HTTPBearer(auto_error=False)

    def presented(credentials: HTTPAuthorizationCredentials | None) -> str:
        if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
            raise AuthError("missing bearer token (Authorization: Bearer TOKEN)")
        return credentials.credentials

    async def caller(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        token = presented(credentials)
        token_id = token[4:20]  # the id part; a garbage token is limited under its own garbage key
        limiter.take(token_id)
        user, _ = tokens.user_of(token)
        return user

    async def admin(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        token = presented(credentials)
        limiter.take("admin")
        if not admin_matches(token, admin_token):
            raise AuthError(
                "not the admin token"
                if admin_token
                else f"admin endpoints are off: ${settings.admin_token_env} is unset"
            )

    Caller = Annotated[str, Depends(caller)]
    Admin = Depends(admin)

    def top_k(value: int) -> int:
        if value > settings.max_top_k:
            raise ConfigError(f"top_k {value} is over the limit of {settings.max_top_k} (serve.max_top_k)")
        return value

    # ---- errors ---------------------------------------------------------------------------------

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        line = " ".join(message.split())
        return JSONResponse({"error": line[:_MAX_LINE]}, status, headers=headers)

    @app.exception_handler(MemosError)
    async def memos_error(request: Request, exc: MemosError) -> JSONResponse:
        if isinstance(exc, RateLimitedError):
            return error(429, str(exc), {"Retry-After": str(max(1, round(exc.retry_after_s)))})
        if isinstance(exc, AuthError):
            return error(401, str(exc), {"WWW-Authenticate": "Bearer"})
        status = {
            AccessDeniedError: 403,
            NotFoundError: 404,
            BusyError: 409,
            IncompatibleError: 409,
            ConfigError: 400,
            DataError: 400,
        }
        for kind, code in status.items():
            if isinstance(exc, kind):
                return error(code, str(exc))
        return error(409, str(exc))  # a MemosError of state: already exists, not active, ...

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error(
            422, f"{where}: {first.get('msg', 'invalid request')}" + (" (and more)" if len(exc.errors()) > 1 else "")
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (404, 405):  # routing: say what was asked, not Starlette's bare phrase
            return error(exc.status_code, f"no endpoint {request.method} {request.url.path[:100]}")
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        incident = secrets.token_hex(4)
        log.error("internal error %s on %s %s", incident, request.method, request.url.path, exc_info=exc)
        return error(500, f"internal error (incident {incident}; the server's log has the details)")

    # ---- admin ----------------------------------------------------------------------------------

    @app.post(f"{API}/admin/users", status_code=201, dependencies=[Admin], tags=["admin"])
    async def create_user(body: UserRequest) -> dict[str, str]:
        mos.register_user(body.user_id)
        return {"user_id": body.user_id}

    @app.post(f"{API}/admin/users/{{user_id}}/tokens", status_code=201, dependencies=[Admin], tags=["admin"])
    async def create_token(user_id: str, body: TokenRequest | None = None) -> dict[str, Any]:
        mos.readable_cubes(user_id)  # NotFoundError for an unknown user
        ttl = body.ttl_s if body is not None and body.ttl_s is not None else settings.token_ttl_s
        token, info = tokens.issue(user_id, ttl)
        return {"token": token, **asdict(info)}

    @app.get(f"{API}/admin/users/{{user_id}}/tokens", dependencies=[Admin], tags=["admin"])
    async def list_tokens(user_id: str) -> dict[str, Any]:
        return {"tokens": [asdict(info) for info in tokens.tokens_of(user_id)]}

    @app.delete(f"{API}/admin/tokens/{{token_id}}", dependencies=[Admin], tags=["admin"])
    async def revoke_token(token_id: str) -> dict[str, str]:
        tokens.revoke(token_id)
        return {"revoked": token_id}

    # ---- cubes ----------------------------------------------------------------------------------

    @app.get(f"{API}/me", tags=["cubes"])
    async def me(user: Caller) -> dict[str, str]:
        return {"user_id": user}

    @app.get(f"{API}/cubes", tags=["cubes"])
    async def list_cubes(user: Caller) -> dict[str, list[str]]:
        return {"cube_ids": mos.readable_cubes(user)}

    @app.post(f"{API}/cubes", status_code=201, tags=["cubes"])
    async def create_cube(user: Caller, body: CubeRequest) -> dict[str, str]:
        if body.members is None:
            cube = mos.create_cube(user, body.cube_id)
        else:
            cube = mos.create_team_cube(user, body.members, body.cube_id)
        return {"cube_id": cube.cube_id, "owner": cube.owner}

    @app.put(f"{API}/cubes/{{cube_id}}/shares/{{user_id}}", tags=["cubes"])
    async def share(user: Caller, cube_id: str, user_id: str, body: ShareRequest) -> dict[str, str]:
        mos.share_cube(user, cube_id, user_id, body.mode)
        return {"cube_id": cube_id, "user_id": user_id, "mode": body.mode}

    @app.delete(f"{API}/cubes/{{cube_id}}/shares/{{user_id}}", tags=["cubes"])
    async def unshare(user: Caller, cube_id: str, user_id: str) -> dict[str, str]:
        mos.unshare_cube(user, cube_id, user_id)
        return {"cube_id": cube_id, "user_id": user_id}

    @app.get(f"{API}/cubes/{{cube_id}}", tags=["cubes"])
    async def describe(user: Caller, cube_id: str) -> dict[str, Any]:
        """Owner, item count, index size and filled memory slots of a cube the caller may read."""
        return asdict(mos.describe(user, cube_id))

    @app.post(f"{API}/cubes/{{cube_id}}/save", tags=["cubes"])
    async def save(user: Caller, cube_id: str) -> dict[str, str]:
        """Fold the cube's journal into a new dump (writes are durable without it; this bounds replay)."""
        await guard.settled(cube_id)
        mos.save(user, cube_id)
        return {"cube_id": cube_id}

    # ---- memories -------------------------------------------------------------------------------

    @app.post(f"{API}/cubes/{{cube_id}}/memories", status_code=201, tags=["memories"])
    async def add(user: Caller, cube_id: str, body: AddRequest) -> dict[str, list[str]]:
        if not body.items or len(body.items) > settings.max_batch:
            raise ConfigError(
                f"items: send 1 to {settings.max_batch} items per add (serve.max_batch), got {len(body.items)}"
            )
        items = [item.item() for item in body.items]
        if batcher is not None:  # embedded off the event loop (with other requests' texts), as the memory would
            vectors = await batcher.embed([TextualMemory.key(item) for item in items])
            items = [replace(item, embedding=vector) for item, vector in zip(items, vectors, strict=True)]
        return {"ids": mos.add(user, cube_id, items)}

    @app.get(f"{API}/cubes/{{cube_id}}/memories", tags=["memories"])
    async def get_all(
        user: Caller,
        cube_id: str,
        filter_user: Annotated[str | None, Query(alias="user")] = None,
        session: str | None = None,
        tags: Annotated[list[str] | None, Query()] = None,
        statuses: Annotated[list[str] | None, Query()] = None,
        time_from: str | None = None,
        time_to: str | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        filters = Filters(
            user=filter_user,
            session=session,
            tags=tags or [],
            statuses=statuses or ["active"],
            time_from=time_from,
            time_to=time_to,
        )
        items = mos.get_all(user, cube_id, filters.model_dump())
        return {"items": [item_json(item) for item in items]}

    @app.post(f"{API}/search", tags=["memories"])
    async def search(user: Caller, body: SearchRequest) -> dict[str, list[dict[str, Any]]]:
        filters = None if body.filters is None else body.filters.model_dump()
        limit = top_k(body.top_k)
        vector = (await batcher.embed([body.query]))[0] if batcher is not None and body.query.strip() else None
        hits = mos.search(user, body.query, top_k=limit, cube_ids=body.cube_ids, filters=filters, query_vector=vector)
        return {"hits": [{"cube_id": hit.cube_id, "score": hit.score, "item": item_json(hit.item)} for hit in hits]}

    @app.post(f"{API}/cubes/{{cube_id}}/merge", tags=["memories"])
    async def merge(user: Caller, cube_id: str, body: MergeRequest) -> dict[str, Any]:
        await guard.settled(cube_id)
        return item_json(mos.merge(user, cube_id, body.item_ids, body.text))

    @app.get(f"{API}/cubes/{{cube_id}}/memories/{{item_id:path}}", tags=["memories"])
    async def get(user: Caller, cube_id: str, item_id: str) -> dict[str, Any]:
        return item_json(mos.get(user, cube_id, item_id))

    @app.patch(f"{API}/cubes/{{cube_id}}/memories/{{item_id:path}}", tags=["memories"])
    async def update(user: Caller, cube_id: str, item_id: str, body: UpdateRequest) -> dict[str, Any]:
        changes: dict[str, Any] = body.model_dump(exclude={"text"}, exclude_unset=True)
        if "tags" in changes:
            changes["tags"] = tuple(changes["tags"] or ())
        if "extra" in changes:
            changes["extra"] = dict(changes["extra"] or {})
        await guard.settled(cube_id)
        return item_json(mos.update(user, cube_id, item_id, body.text, **changes))

    @app.delete(f"{API}/cubes/{{cube_id}}/memories/{{item_id:path}}", tags=["memories"])
    async def delete(user: Caller, cube_id: str, item_id: str, hard: bool = False) -> dict[str, str]:
        await guard.settled(cube_id)
        mos.delete(user, cube_id, item_id, hard=hard)
        return {"deleted": item_id}

    # ---- the local model's weights: activation caches, parametric edits ---------------------------

    @app.post(f"{API}/cubes/{{cube_id}}/activation", tags=["activation"])
    async def activation(user: Caller, cube_id: str, body: ActivationRequest | None = None) -> dict[str, Any]:
        """Encode the KV caches of the cube's most recent active memories for the server's model into the
        cube's activation slot, and save the cube. Needs `model=` at startup (400 without one); 409 while a
        parametric job trains. Runs in the request (bounded by `max_items` and serve.max_batch), on a thread:
        other requests are served meanwhile; updates, merges, deletes and saves of this cube wait for it."""
        body = body or ActivationRequest.model_validate({})
        if body.max_items > settings.max_batch:
            raise ConfigError(f"max_items {body.max_items} is over the limit of {settings.max_batch} (serve.max_batch)")
        summary = await cache_activation(
            mos, local, guard, user, cube_id, body.max_items, body.per_item, body.assembled
        )
        return {"cube_id": cube_id, **summary}

    @app.post(f"{API}/cubes/{{cube_id}}/parametric/edits", status_code=202, tags=["parametric"])
    async def submit_edits(user: Caller, cube_id: str, body: EditsRequest) -> dict[str, Any]:
        """Queue a batch of knowledge edits to train into an adapter of the cube's parametric memory (the
        server's `parametric=` editor for a cube without one). Answers 202 with the job; poll
        `GET /v1/jobs/{job_id}`. Jobs run one at a time; 429 when serve.max_queued_jobs are waiting."""
        model = require(local)
        if not body.edits or len(body.edits) > settings.max_batch:
            raise ConfigError(
                f"edits: send 1 to {settings.max_batch} edits per job (serve.max_batch), got {len(body.edits)}"
            )
        if not ADAPTER_NAME.fullmatch(body.adapter):
            raise ConfigError(f"adapter {body.adapter[:70]!r}: use 1 to 64 letters, digits, '_' and '-' (not first)")
        edits = [edit.edit() for edit in body.edits]
        check_batch(edits)
        mos.slot(user, cube_id, "parametric")  # the caller may write the cube: checked now, and again when it runs
        work = edit_job(mos, model, asyncio.get_running_loop(), guard, user, cube_id, body.adapter, edits)
        return job_json(jobs.submit(user, cube_id, "parametric_edit", work))

    @app.get(f"{API}/jobs/{{job_id}}", tags=["parametric"])
    async def job(user: Caller, job_id: str) -> dict[str, Any]:
        """A job the caller submitted: status queued, running, done (with its result) or failed (with one
        line); a job whose server was killed or restarted before it finished is failed, never done."""
        return job_json(jobs.store.get(user, job_id))

    @app.get(f"{API}/info", tags=["admin"])
    async def info(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> dict[str, Any]:
        """What this server's cubes are built with (for any user's token or the admin token): a remote MOS
        checks the embedder and memory backend match its run's. `query_batching`: the batching settings and
        the texts embedded so far (queries and added items', in how many embedder calls) by the answering process."""
        if not admin_matches(presented(credentials), admin_token):
            await caller(credentials)
        batching = {"window_ms": settings.batch_window_ms, "max_batch": settings.max_query_batch}
        if batcher is not None:  # how many embedder calls the queries took so far, in this process
            batching.update(batches=batcher.batches, texts=batcher.texts)
        return {**info_json, "query_batching": batching}

    @app.get(f"{API}/health", tags=["admin"])
    async def health() -> dict[str, str]:
        return {"status": "ok", "pid": str(os.getpid())}

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
