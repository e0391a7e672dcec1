"""Concurrent requests' texts embedded in one embedder call (serve.batch_window_ms, serve.max_query_batch),
against a real server process: the hits and scores are exactly the in-process MOS's on the same root."""

from __future__ import annotations

import asyncio
import math

import httpx
from hydra import compose, initialize_config_dir

from memos_lab.service.server import open_mos
from memos_lab.settings import CONF_DIR, register_schemas
from tests.service.test_api import cube

QUERIES = [f"who {verb} the {thing} on day {day}" for verb in ("saw", "sold", "painted") for thing in ("red boat", "old piano", "garden") for day in (3, 17)]  # fmt: skip


def hits(body: dict) -> list[tuple[str, str, float]]:
    return [(hit["cube_id"], hit["item"]["id"], hit["score"]) for hit in body["hits"]]


async def search_all(url: str, headers: dict[str, str], queries: list[str]) -> list[dict]:
    async with httpx.AsyncClient(base_url=f"{url}/v1", headers=headers, timeout=60) as http:
        bodies = [{"query": query, "top_k": 10, "cube_ids": ["notes"]} for query in queries]
        responses = await asyncio.gather(*(http.post("/search", json=body) for body in bodies))
    assert all(response.status_code == 200 for response in responses), [r.text for r in responses]
    return [response.json() for response in responses]


def test_concurrent_searches_are_embedded_together_and_find_exactly_what_the_in_process_mos_finds(launch, tmp_path):
    root = tmp_path / "root"
    api = launch(root, "serve.batch_window_ms=200", "serve.max_query_batch=8")
    alice = api.user("alice")
    cube(api, alice, "notes")
    texts = [f"day {day}: someone {verb} the {thing}" for day in range(30) for verb in ("saw", "sold", "painted", "moved") for thing in ("red boat", "old piano", "garden", "kite")]  # fmt: skip
    added = api.http.post("/cubes/notes/memories", json={"items": [{"text": t} for t in texts[:256]]}, headers=alice)
    assert added.status_code == 201, added.text

    served = asyncio.run(search_all(api.server.url, alice, QUERIES))
    batching = api.http.get("/info", headers=alice).json()["query_batching"]
    assert batching["texts"] == 256 + len(QUERIES)  # the added items', and the queries
    # never more than max_query_batch texts in one embedder call, and some queries shared one
    assert 256 // 8 + math.ceil(len(QUERIES) / 8) <= batching["batches"] < 256 // 8 + len(QUERIES)

    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("serve", overrides=[f"root={root}", "embedder=hashing"])
    local = open_mos(cfg)  # the root as the server left it, in this process
    for query, body in zip(QUERIES, served, strict=True):
        expected = [(hit.cube_id, hit.item.id, hit.score) for hit in local.search("alice", query, cube_ids=["notes"])]
        assert hits(body) == expected and len(expected) == 10, query

    unbatched = launch(root, "serve.max_query_batch=0")  # each search embeds its own query, as before batching
    again = asyncio.run(search_all(unbatched.server.url, alice, QUERIES))
    assert [hits(body) for body in again] == [hits(body) for body in served]
    assert unbatched.http.get("/info", headers=alice).json()["query_batching"] == {"window_ms": 0.0, "max_batch": 0}
