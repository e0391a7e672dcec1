"""mem0's REST routes over mem0's own `Memory`, offline: the comparison server of experiments/mem0_service_load.py.

mem0's REST server (`server/main.py` in the mem0ai/mem0 repository) is not part of the `mem0ai` wheel, and the
current one needs PostgreSQL (its users, API keys and request logs; pgvector by default) and an LLM and
embedding endpoint (OpenAI by default). This module serves the routes the load uses with the same paths and
bodies (POST /memories with `messages` and `user_id`, POST /search with `query`, `user_id`, `top_k`, GET
/memories?user_id=) as plain FastAPI `def` endpoints (mem0's style: each runs on the thread pool), around
`mem0.Memory` (mem0ai 2.2.1) configured as `memory=mem0` configures it: a local faiss store, memos_lab's
embedder, `infer=False` (no LLM runs offline; with it, every add would be an LLM call). No authentication.

    python experiments/mem0_rest_server.py --port 8770 --home DIR [--embedder hashing]
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from hydra import compose, initialize_config_dir
from pydantic import BaseModel

from memos_lab.memory.textual.peers.mem0 import Mem0Settings, _open_mem0
from memos_lab.settings import CONF_DIR, register_schemas


class Message(BaseModel):
    role: str
    content: str


class MemoryCreate(BaseModel):
    messages: list[Message]
    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None
    metadata: dict[str, Any] | None = None


class SearchRequest(BaseModel):
    query: str
    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None
    top_k: int = 20


def scope(user_id: str | None, agent_id: str | None, run_id: str | None) -> dict[str, str]:
    found = {key: value for key, value in (("user_id", user_id), ("agent_id", agent_id), ("run_id", run_id)) if value}
    if not found:
        raise HTTPException(400, "At least one identifier (user_id, agent_id, run_id) is required.")
    return found


def create_app(memory: Any) -> FastAPI:
    app = FastAPI(title="mem0 REST routes (offline, infer=False)")

    @app.post("/memories")
    def add_memory(body: MemoryCreate) -> Any:
        ids = scope(body.user_id, body.agent_id, body.run_id)
        messages = [message.model_dump() for message in body.messages]
        return memory.add(messages, **ids, metadata=body.metadata, infer=False)

    @app.get("/memories")
    def get_all_memories(
        user_id: str | None = None, agent_id: str | None = None, run_id: str | None = None, top_k: int = 20
    ) -> Any:
        return memory.get_all(filters=scope(user_id, agent_id, run_id), top_k=top_k)

    @app.post("/search")
    def search_memories(body: SearchRequest) -> Any:
        return memory.search(body.query, filters=scope(body.user_id, body.agent_id, body.run_id), top_k=body.top_k)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--home", required=True, help="folder of mem0's faiss store and history database")
    parser.add_argument("--embedder", default="minilm")
    args = parser.parse_args()
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("serve", overrides=["root=unused", f"embedder={args.embedder}"])
    import hydra.utils
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(int(cfg.threads))  # as `serve` runs (threads=1)
    threadpool_limits(int(cfg.threads), user_api="blas")
    memory = _open_mem0(Mem0Settings(infer=False, home=args.home), hydra.utils.instantiate(cfg.embedder))
    uvicorn.run(create_app(memory), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
