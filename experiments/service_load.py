"""Load on a real `python -m memos_lab serve` process: concurrent clients, a search/add mix, bounded in time.

One server on a fresh root at 127.0.0.1; a team cube shared by every client (each client its own user and
token), seeded with the synthetic dialogues' turns; then `--clients` asyncio clients (httpx) send searches
(the dialogues' questions) and single-item adds for `--duration` seconds. Afterwards every acknowledged add
is looked up in the cube (lost writes), and, with `--overhead`, the same questions are timed one at a time
over HTTP and on an in-process durable MOS opened on the same root, interleaved (server overhead per search).

With `--kills N`, the server is killed with SIGKILL N times while the clients run (one kill per
`--duration / (N + 1)` seconds of the server being up) and restarted on the same root each time. The clients
keep going through every kill and restart (a request that fails while the server is down on purpose is
counted apart, `unavailable`, and retried after a pause) until the last restart is up and each client has had
a request succeed after it. After each restart every add acknowledged before its kill is looked up (lost
writes per kill); the root must open every time.

    python experiments/service_load.py --embedder minilm --clients 32 --duration 60 \
        [--search-share 0.8] [--kills 0] [--overhead 200] [--workers 1] [--out results/service/minilm.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from memos_lab.data.synthetic import generate_dialogues
from memos_lab.provenance import git_commit, hardware
from memos_lab.service.server import ServerProcess

ADMIN = "load-admin-token"
CUBE = "team"


@dataclass
class Tally:
    search_ms: list[float] = field(default_factory=list)
    add_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # status or exception -> count (server up)
    unavailable: int = 0  # failed while the server was down on purpose (kill runs)
    acknowledged: list[str] = field(default_factory=list)
    served_since_restart: set[int] = field(default_factory=set)  # clients with a success since the last restart


def corpus(seed_items: int) -> tuple[list[str], list[str]]:
    """Turn texts to seed the cube and add during the run, and the questions to search with."""
    texts, queries = [], []
    for conversation in generate_dialogues(seed=0, n_conversations=10):
        texts += [f"{turn.speaker}: {turn.text}" for turn in conversation.turns]
        queries += [question.question for question in conversation.questions]
    repeats = -(-seed_items // len(texts)) + 1
    return [f"{text} ({n})" for n in range(repeats) for text in texts], queries


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def provenance(load_before: list[str]) -> dict[str, object]:
    """What every result file of these scripts starts with: its command, date, commit, machine and load."""
    return {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "hardware": hardware(),
        "loadavg_before": load_before,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
    }


def latencies(tally: Tally, wall_s: float) -> dict[str, object]:
    """Throughput, latency percentiles and errors of a load's requests."""
    done = len(tally.search_ms) + len(tally.add_ms)
    return {
        "wall_s": round(wall_s, 2),
        "requests_per_s": round(done / wall_s, 1),
        "searches": len(tally.search_ms),
        "adds": len(tally.add_ms),
        "search_p50_ms": round(percentile(tally.search_ms, 50), 2),
        "search_p99_ms": round(percentile(tally.search_ms, 99), 2),
        "add_p50_ms": round(percentile(tally.add_ms, 50), 2),
        "add_p99_ms": round(percentile(tally.add_ms, 99), 2),
        "errors": sum(tally.errors.values()),
        "error_kinds": tally.errors,
        "acknowledged_adds": len(tally.acknowledged),
    }


def report(result: dict[str, object], out: Path | None) -> None:
    """Print the result as JSON, and write it to `out` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def setup(server: ServerProcess, clients: int, seed_texts: list[str]) -> list[str]:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=f"{server.url}/v1", timeout=300) as http:
        tokens = []
        for n in range(clients):
            user = f"client{n}"
            http.post("/admin/users", json={"user_id": user}, headers=admin).raise_for_status()
            tokens.append(http.post(f"/admin/users/{user}/tokens", json={}, headers=admin).json()["token"])
        owner = {"Authorization": f"Bearer {tokens[0]}"}
        members = [f"client{n}" for n in range(clients)]
        http.post("/cubes", json={"cube_id": CUBE, "members": members}, headers=owner).raise_for_status()
        for start in range(0, len(seed_texts), 256):
            batch = [{"text": text} for text in seed_texts[start : start + 256]]
            http.post(f"/cubes/{CUBE}/memories", json={"items": batch}, headers=owner).raise_for_status()
    return tokens


async def client(
    n: int,
    token: str,
    url: str,
    stop: asyncio.Event,
    share: float,
    queries: list[str],
    tally: Tally,
    down: asyncio.Event,
) -> None:
    rng = random.Random(n)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"{url}/v1", headers=headers, timeout=60) as http:
        step = 0
        while not stop.is_set():
            step += 1
            searching = rng.random() < share
            started = time.perf_counter()
            try:
                if searching:
                    body = {"query": rng.choice(queries), "top_k": 10, "cube_ids": [CUBE]}
                    response = await http.post("/search", json=body)
                else:
                    item_id = f"c{n}-{step}"
                    body = {"items": [{"text": f"client {n} noted fact {step}: {rng.choice(queries)}", "id": item_id}]}
                    response = await http.post(f"/cubes/{CUBE}/memories", json=body)
            except httpx.HTTPError as error:
                if down.is_set():
                    tally.unavailable += 1
                    await asyncio.sleep(0.5)  # the restart needs the CPU more than a retry loop does
                else:
                    tally.errors[type(error).__name__] = tally.errors.get(type(error).__name__, 0) + 1
                continue
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code in (200, 201):
                (tally.search_ms if searching else tally.add_ms).append(elapsed)
                tally.served_since_restart.add(n)
                if not searching:
                    tally.acknowledged.append(item_id)
            else:
                key = f"{response.status_code}: {response.text[:80]}"
                tally.errors[key] = tally.errors.get(key, 0) + 1


@dataclass
class Restart:
    seconds: float  # from the kill until the restarted server answered
    acknowledged_before: int  # adds acknowledged before the kill ...
    lost: int  # ... of which missing after the restart


async def killer(
    server: ServerProcess,
    token: str,
    clients: int,
    kills: int,
    up_s: float,
    tally: Tally,
    down: asyncio.Event,
    stop: asyncio.Event,
    restarts: list[Restart],
) -> None:
    """Kill the server `kills` times, each after `up_s` seconds of serving, and start it again on the same root;
    stop the clients once each has been served after the last restart."""
    for _ in range(kills):
        await asyncio.sleep(up_s)
        down.set()
        server.kill()
        acknowledged = list(tally.acknowledged)  # the server is dead: nothing more is acknowledged
        started = time.perf_counter()
        await asyncio.to_thread(server.start)  # raises if the root does not open
        seconds = time.perf_counter() - started
        lost, _ = await asyncio.to_thread(lost_writes, server, token, acknowledged)
        restarts.append(Restart(round(seconds, 2), len(acknowledged), lost))
        tally.served_since_restart.clear()
        down.clear()
    while len(tally.served_since_restart) < clients:
        await asyncio.sleep(0.2)
    stop.set()


async def stop_after(seconds: float, stop: asyncio.Event) -> None:
    await asyncio.sleep(seconds)
    stop.set()


async def load(
    args: argparse.Namespace, server: ServerProcess, tokens: list[str], queries: list[str]
) -> tuple[Tally, float, list[Restart]]:
    tally, down, stop, restarts = Tally(), asyncio.Event(), asyncio.Event(), []
    started = time.monotonic()
    tasks = [
        client(n, token, server.url, stop, args.search_share, queries, tally, down) for n, token in enumerate(tokens)
    ]
    if args.kills:
        up_s = args.duration / (args.kills + 1)
        tasks.append(killer(server, tokens[0], len(tokens), args.kills, up_s, tally, down, stop, restarts))
    else:
        tasks.append(stop_after(args.duration, stop))
    await asyncio.gather(*tasks)
    return tally, time.monotonic() - started, restarts


def lost_writes(server: ServerProcess, token: str, acknowledged: list[str]) -> tuple[int, int]:
    with httpx.Client(base_url=f"{server.url}/v1", timeout=300) as http:
        response = http.get(f"/cubes/{CUBE}/memories", headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        stored = {item["id"] for item in response.json()["items"]}
    return sum(item_id not in stored for item_id in acknowledged), len(stored)


def query_batching(server: ServerProcess, token: str) -> dict[str, float]:
    """The server's batching settings and how many embedder calls the texts it embedded took (queries and
    added items, seeding included; one worker's count when several answer: whichever answers this request)."""
    with httpx.Client(base_url=f"{server.url}/v1", timeout=60) as http:
        response = http.get("/info", headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
    batching: dict[str, float] = response.json()["query_batching"]
    if batching.get("batches"):
        batching["mean_batch"] = round(batching["texts"] / batching["batches"], 2)
    return batching


def overhead(args: argparse.Namespace, server: ServerProcess, token: str, queries: list[str]) -> dict[str, float]:
    """p50 of one search at a time over HTTP and on an in-process durable MOS on the same root, interleaved."""
    from hydra import compose, initialize_config_dir

    from memos_lab.service.server import open_mos
    from memos_lab.settings import CONF_DIR, register_schemas

    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("serve", overrides=[f"root={server.root}", f"embedder={args.embedder}"])
    mos = open_mos(cfg)
    http_ms, local_ms = [], []
    with httpx.Client(base_url=f"{server.url}/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        for n in range(args.overhead):
            query = queries[n % len(queries)]
            started = time.perf_counter()
            http.post("/search", json={"query": query, "top_k": 10, "cube_ids": [CUBE]}).raise_for_status()
            http_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            mos.search("client0", query, top_k=10, cube_ids=[CUBE])
            local_ms.append((time.perf_counter() - started) * 1000)
    return {
        "http_search_p50_ms": statistics.median(http_ms),
        "inprocess_search_p50_ms": statistics.median(local_ms),
        "overhead_p50_ms": statistics.median(http_ms) - statistics.median(local_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--search-share", type=float, default=0.8)
    parser.add_argument("--seed-items", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=0)
    parser.add_argument("--overhead", type=int, default=0, help="searches timed one at a time, HTTP vs in-process")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-window-ms", type=float, default=None, help="serve.batch_window_ms (default: its)")
    parser.add_argument("--max-query-batch", type=int, default=None, help="serve.max_query_batch; 0: no batching")
    parser.add_argument("--root", type=Path, default=None, help="default: a fresh temporary folder")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not 0 < args.duration <= 600 or not 0 < args.clients <= 256 or not 0 <= args.kills <= 100:
        parser.error("bounded runs only: 0 < duration <= 600 s, 0 < clients <= 256, 0 <= kills <= 100")
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="memos-load-") as scratch:
        root = args.root or Path(scratch) / "root"
        server = ServerProcess(
            root,
            [
                f"embedder={args.embedder}",
                f"serve.workers={args.workers}",
                "serve.rate_per_s=100000",
                "serve.rate_burst=100000",
                *([] if args.batch_window_ms is None else [f"serve.batch_window_ms={args.batch_window_ms}"]),
                *([] if args.max_query_batch is None else [f"serve.max_query_batch={args.max_query_batch}"]),
            ],
            env={"MEMOS_LAB_ADMIN_TOKEN": ADMIN},
        ).start()
        try:
            seed_texts, queries = corpus(args.seed_items)
            tokens = setup(server, args.clients, seed_texts[: args.seed_items])
            tally, wall_s, restarts = asyncio.run(load(args, server, tokens, queries))
            lost, stored = lost_writes(server, tokens[0], tally.acknowledged)
            batching = query_batching(server, tokens[0])
            compared = overhead(args, server, tokens[0], queries) if args.overhead else {}
        finally:
            server.stop()
    result = {
        **provenance(load_before),
        "embedder": args.embedder,
        "clients": args.clients,
        "workers": args.workers,
        "query_batching": batching,
        "seed_items": args.seed_items,
        **latencies(tally, wall_s),
        "lost_writes": lost,
        "items_after": stored,
        "kills": args.kills,
        "restarts_ok": len(restarts),  # each restart opened the root and answered /v1/health
        "restart_s_max": max(restart.seconds for restart in restarts) if restarts else None,
        "lost_writes_at_restarts": sum(restart.lost for restart in restarts),
        "restarts": [asdict(restart) for restart in restarts],
        "unavailable_requests": tally.unavailable,
        **{key: round(value, 3) for key, value in compared.items()},
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
