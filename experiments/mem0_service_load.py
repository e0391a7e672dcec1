"""The load of experiments/service_load.py against mem0's REST routes (experiments/mem0_rest_server.py).

Same corpus, seed size, clients, mix and duration as service_load.py: one mem0 server process on a fresh
folder at 127.0.0.1, seeded with the dialogue turns under one `user_id` every client shares (mem0's
counterpart of the shared team cube), then `--clients` asyncio httpx clients send searches (top_k 10) and
single-message adds for `--duration` seconds. Lost writes: acknowledged memory ids missing from GET /memories
afterwards. mem0's routes have no authentication, so the clients send no token.

    python experiments/mem0_service_load.py --embedder hashing --clients 32 --duration 60 [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from service_load import Tally, corpus, latencies, provenance, report  # the same corpus and statistics

from memos_lab.generation.serve import free_port

SCOPE = "team"


def start(port: int, home: Path, embedder: str, log: Path) -> subprocess.Popen[bytes]:
    server = Path(__file__).parent / "mem0_rest_server.py"
    command = [sys.executable, str(server), "--port", str(port), "--home", str(home), "--embedder", embedder]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900  # minutes: at load 20, importing torch alone took 16 s of CPU
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the mem0 server exited: {log.read_text()[-600:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    process.kill()
    raise SystemExit("the mem0 server did not answer within 900 s")


def seed(url: str, texts: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=600) as http:
        for begin in range(0, len(texts), 256):
            messages = [{"role": "user", "content": text} for text in texts[begin : begin + 256]]
            http.post("/memories", json={"messages": messages, "user_id": SCOPE}).raise_for_status()


async def client(n: int, url: str, until: float, share: float, queries: list[str], tally: Tally) -> None:
    rng = random.Random(n)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        step = 0
        while time.monotonic() < until:
            step += 1
            searching = rng.random() < share
            started = time.perf_counter()
            try:
                if searching:
                    body = {"query": rng.choice(queries), "user_id": SCOPE, "top_k": 10}
                    response = await http.post("/search", json=body)
                else:
                    text = f"client {n} noted fact {step}: {rng.choice(queries)}"
                    body = {"messages": [{"role": "user", "content": text}], "user_id": SCOPE}
                    response = await http.post("/memories", json=body)
            except httpx.HTTPError as error:
                tally.errors[type(error).__name__] = tally.errors.get(type(error).__name__, 0) + 1
                continue
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code == 200:
                (tally.search_ms if searching else tally.add_ms).append(elapsed)
                if not searching:
                    tally.acknowledged += [row["id"] for row in response.json()["results"]]
            else:
                key = f"{response.status_code}: {response.text[:80]}"
                tally.errors[key] = tally.errors.get(key, 0) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--search-share", type=float, default=0.8)
    parser.add_argument("--seed-items", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not 0 < args.duration <= 600 or not 0 < args.clients <= 256:
        parser.error("bounded runs only: 0 < duration <= 600 s, 0 < clients <= 256")
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="mem0-load-") as scratch:
        process = start(port, Path(scratch) / "mem0", args.embedder, Path(scratch) / "server.log")
        try:
            texts, queries = corpus(args.seed_items)
            seed(url, texts[: args.seed_items])
            tally = Tally()

            async def run() -> None:
                until = time.monotonic() + args.duration
                await asyncio.gather(
                    *(client(n, url, until, args.search_share, queries, tally) for n in range(args.clients))
                )

            started = time.monotonic()
            asyncio.run(run())
            wall_s = time.monotonic() - started
            listed = httpx.get(f"{url}/memories", params={"user_id": SCOPE, "top_k": 10**6}, timeout=300)
            listed.raise_for_status()
            stored = {row["id"] for row in listed.json()["results"]}
        finally:
            process.kill()
            process.wait()
    result = {
        **provenance(load_before),
        "server": "mem0 REST routes (experiments/mem0_rest_server.py), mem0ai 2.2.1 Memory, faiss, infer=False",
        "embedder": args.embedder,
        "clients": args.clients,
        "seed_items": args.seed_items,
        **latencies(tally, wall_s),
        "lost_writes": sum(memory_id not in stored for memory_id in tally.acknowledged),
        "items_after": len(stored),
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
