"""`python -m memos_lab mcp`: one user's memory on a MOS root as MCP tools (the `mcp` SDK), over stdio or HTTP.

The tools act as `mcp.user` on the same durable MOS the HTTP server uses, so an MCP host and the server
may share one root (each process follows the other's writes). Whoever can start this command can read
the root's files anyway; the user is a setting here, not a token.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf import DictConfig

from memos_lab.errors import ConfigError, MemosError
from memos_lab.memory.item import MemoryItem, MemoryMetadata
from memos_lab.mos import MOS
from memos_lab.service.app import item_json
from memos_lab.service.settings import McpSettings

T = TypeVar("T")


def build_mcp_server(mos: MOS, settings: McpSettings) -> Any:
    """The MCP server whose tools reach `settings.user`'s cubes on `mos` (errors come back as tool errors)."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    user = settings.user
    mos.readable_cubes(user)  # NotFoundError for an unknown user, before any host connects

    def tool(function: Callable[..., T]) -> Callable[..., T]:
        """Register a tool whose MemosError (bad input, access, unknown id) reaches the host as its one line;
        any other exception stays on the server as the SDK's generic crash."""

        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> T:
            try:
                return function(*args, **kwargs)
            except MemosError as error:
                raise ToolError(str(error)) from None

        server.tool()(checked)
        return checked

    server = MCPServer(
        name="memos_lab",
        instructions=f"Long-term memory of {user}: add, search, get, update and delete memory items in cubes.",
    )

    @tool
    def list_cubes() -> list[str]:
        """The ids of the cubes this user may read."""
        return mos.readable_cubes(user)

    @tool
    def add_memory(cube_id: str, texts: list[str], tags: list[str] | None = None) -> list[str]:
        """Store each text as a memory item in the cube; returns the new items' ids."""
        metadata = MemoryMetadata(user=user, tags=tuple(tags or ()))
        return mos.add(user, cube_id, [MemoryItem(text, metadata) for text in texts])

    @tool
    def search_memory(query: str, top_k: int = 5, cube_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """The memory items best matching the query, best first (all readable cubes unless cube_ids names some)."""
        if not 0 < top_k <= settings.max_top_k:
            raise ConfigError(f"top_k must be 1 to {settings.max_top_k}, got {top_k}")
        hits = mos.search(user, query, top_k=top_k, cube_ids=cube_ids)
        return [{"cube_id": hit.cube_id, "score": hit.score, **item_json(hit.item)} for hit in hits]

    @tool
    def get_memory(cube_id: str, item_id: str) -> dict[str, Any]:
        """One memory item by id."""
        return item_json(mos.get(user, cube_id, item_id))

    @tool
    def update_memory(cube_id: str, item_id: str, text: str) -> dict[str, Any]:
        """Replace an item's text: a new version is stored, the old one archived and linked to it."""
        return item_json(mos.update(user, cube_id, item_id, text))

    @tool
    def delete_memory(cube_id: str, item_id: str) -> str:
        """Delete an item (soft: it stays stored with status deleted)."""
        mos.delete(user, cube_id, item_id)
        return item_id

    return server


def run_mcp(cfg: DictConfig) -> None:
    from memos_lab.service.server import mcp_settings, open_mos

    settings = mcp_settings(cfg)
    if not settings.user:
        raise ConfigError("mcp needs mcp.user=USER, whose cubes the tools reach")
    server = build_mcp_server(open_mos(cfg), settings)
    if settings.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=settings.host, port=settings.port)
