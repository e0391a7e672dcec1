"""`python -m memos_lab mcp` driven over stdio by the `mcp` SDK's own client (issue 24, §4)."""

from __future__ import annotations

import json
import os
import sys

import anyio
import pytest

pytest.importorskip("mcp")

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from memos_lab.memory.textual.general_text import GeneralTextMemory
from memos_lab.models.embedder import HashingEmbedder
from memos_lab.mos import MOS


def payload(result) -> object:
    assert not result.is_error, result
    if result.structured_content is not None:
        content = result.structured_content
        return content.get("result", content)
    return json.loads(result.content[0].text)


@pytest.mark.slow
def test_an_mcp_host_adds_searches_gets_updates_and_deletes_over_stdio(tmp_path):
    root = tmp_path / "root"
    mos = MOS(lambda: GeneralTextMemory(HashingEmbedder(dim=512)), root=root, durable=True)
    mos.register_user("alice")
    mos.register_user("bob")
    mos.create_cube("alice", cube_id="notes")
    mos.create_cube("bob", cube_id="private")
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "memos_lab", "mcp", f"root={root}", "mcp.user=alice", "embedder=hashing"],
        env={**os.environ},
    )

    async def session_run() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = {tool.name for tool in (await session.list_tools()).tools}
            assert {"add_memory", "search_memory", "get_memory", "update_memory", "delete_memory"} <= tools
            [tea, _] = payload(
                await session.call_tool(
                    "add_memory", {"cube_id": "notes", "texts": ["alice likes green tea", "alice lives in Oslo"]}
                )
            )
            hits = payload(await session.call_tool("search_memory", {"query": "green tea", "top_k": 1}))
            assert [hit["id"] for hit in hits] == [tea]
            assert (
                payload(await session.call_tool("get_memory", {"cube_id": "notes", "item_id": tea}))["text"]
                == "alice likes green tea"
            )
            newer = payload(
                await session.call_tool(
                    "update_memory", {"cube_id": "notes", "item_id": tea, "text": "alice likes black tea"}
                )
            )
            assert (
                payload(await session.call_tool("delete_memory", {"cube_id": "notes", "item_id": newer["id"]}))
                == newer["id"]
            )
            denied = await session.call_tool("add_memory", {"cube_id": "private", "texts": ["alice was here"]})
            assert denied.is_error and "may not write" in denied.content[0].text

    anyio.run(session_run)
    reopened = MOS(lambda: GeneralTextMemory(HashingEmbedder(dim=512)), root=root, durable=True)
    statuses = {"statuses": ["active", "archived", "deleted"]}
    stored = sorted((item.text, item.metadata.status) for item in reopened.get_all("alice", "notes", statuses))
    assert stored == [
        ("alice likes black tea", "deleted"),
        ("alice likes green tea", "archived"),
        ("alice lives in Oslo", "active"),
    ]
    assert reopened.get_all("bob", "private") == []
