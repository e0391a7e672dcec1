"""Where a request's time goes in the server: cProfile over the server process under the load of
experiments/service_load.py, split into parts per request.

The server runs in this process (the same app `python -m memos_lab serve` builds, one uvicorn process), its
event loop under cProfile from the first search on (seeding is not profiled); every MOS call runs on that
loop, so the profile holds the whole server. The load's clients run in a child process, as in
service_load.py. The profile's clock is the server process's CPU time (`time.process_time`), so the time
other jobs hold the cores does not count: the parts are what one request costs the server, the CPU share it
got is `server_cpu_s / wall_s`. Prints one JSON object: requests served, and each part's CPU milliseconds per
search, add or request (cumulative; profiling inflates Python-heavy parts somewhat, so compare the parts
rather than the totals with service_load.py's latencies).

    python experiments/service_profile.py --embedder hashing --duration 20 [--out results/service/profile_hashing.json]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from service_load import ADMIN, Tally, client, corpus, provenance, report, setup  # the same corpus, users and clients

from memos_lab.generation.serve import free_port

# part -> (file suffix, function name, per what): that function's cumulative time per search, add or request
PARTS = {
    "request, in all (uvicorn, FastAPI, endpoint)": ("uvicorn/protocols/http/h11_impl.py", "run_asgi", "request"),
    "FastAPI: body parsing, validation, dependencies": (
        "fastapi/dependencies/utils.py",
        "solve_dependencies",
        "request",
    ),
    "  of which the bearer token check": ("memos_lab/service/auth.py", "user_of", "request"),
    "response: FastAPI encoding": ("fastapi/routing.py", "serialize_response", "request"),
    "response: JSON rendering": ("starlette/responses.py", "render", "request"),
    "MOS: follow other processes' journal rows": ("memos_lab/mos.py", "_follow", "request"),
    "endpoint search (MOS, hits to JSON-able dicts)": ("memos_lab/service/app.py", "search", "search"),
    "  MOS.search": ("memos_lab/mos.py", "search", "search"),
    "    text memory search": ("memos_lab/memory/textual/base.py", "search", "search"),
    "      BM25 scores": ("memos_lab/memory/textual/lexical.py", "scores", "search"),
    "      rank fusion": ("memos_lab/memory/textual/lexical.py", "reciprocal_rank_fusion", "search"),
    "      dense scores (query embedding included)": (
        "memos_lab/memory/textual/general_text.py",
        "_dense_scores",
        "search",
    ),
    "endpoint add": ("memos_lab/service/app.py", "add", "add"),
    "  MOS.add": ("memos_lab/mos.py", "add", "add"),
    "    journal commit (SQLite, fsync)": ("memos_lab/journal.py", "record", "add"),
    "    text memory add (embedding, indexes)": ("memos_lab/memory/textual/base.py", "add", "add"),
    "embedder.encode (queries and added texts)": ("memos_lab/models/embedder.py", "encode", "request"),
}


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> tuple[int, float]:
    """Calls and cumulative seconds of a function (the outermost frames only, recursion counted once)."""
    calls, seconds = 0, 0.0
    for (file, _, function), (primitive, _, _, total, _) in stats.stats.items():
        if function == name and file.endswith(suffix):
            calls, seconds = calls + primitive, seconds + total
    return calls, seconds


def run_clients(url: str, tokens: list[str], duration: float) -> None:
    """In the child process: the load's clients, for `duration` seconds."""
    _, queries = corpus(0)
    tally, stop, down = Tally(), asyncio.Event(), asyncio.Event()

    async def load() -> None:
        async def stop_later() -> None:
            await asyncio.sleep(duration)
            stop.set()

        await asyncio.gather(
            stop_later(), *(client(n, token, url, stop, 0.8, queries, tally, down) for n, token in enumerate(tokens))
        )

    asyncio.run(load())
    print(json.dumps({"searches": len(tally.search_ms), "adds": len(tally.add_ms), "errors": tally.errors}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--seed-items", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--clients-of", default=None, help=argparse.SUPPRESS)  # the child process: URL
    args = parser.parse_args()
    if args.clients_of:
        run_clients(args.clients_of, json.loads(sys.stdin.read()), args.duration)
        return
    if not 0 < args.duration <= 300 or not 0 < args.clients <= 256:
        parser.error("bounded runs only: 0 < duration <= 300 s, 0 < clients <= 256")

    import uvicorn
    from hydra import compose, initialize_config_dir

    from memos_lab.service.server import build_app
    from memos_lab.settings import CONF_DIR, register_schemas

    load_before = Path("/proc/loadavg").read_text().split()[:3]
    register_schemas()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="memos-profile-") as scratch:
        overrides = [f"root={scratch}/root", f"embedder={args.embedder}", f"serve.port={port}"]
        overrides += ["serve.rate_per_s=100000", "serve.rate_burst=100000"]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("serve", overrides=overrides)
        os.environ["MEMOS_LAB_ADMIN_TOKEN"] = ADMIN
        app = build_app(cfg)
        profile = cProfile.Profile(time.process_time)
        profiling = False
        window: dict[str, float] = {}

        async def profiled(scope, receive, send):
            nonlocal profiling
            if not profiling and scope.get("path") == "/v1/search":
                profile.enable()  # the event loop's thread, from the first search on
                profiling = True
                window.update(wall=time.monotonic(), cpu=time.process_time())
            await app(scope, receive, send)

        server = uvicorn.Server(uvicorn.Config(profiled, host="127.0.0.1", port=port, log_level="warning"))
        url = f"http://127.0.0.1:{port}"
        outcome: dict[str, object] = {}

        def drive() -> None:
            while not server.started:
                time.sleep(0.1)
            texts, _ = corpus(args.seed_items)
            tokens = setup(type("Server", (), {"url": url})(), args.clients, texts[: args.seed_items])
            for token in tokens:  # each token's first use checks its scrypt hash (then cached): not the load's cost
                httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=300).raise_for_status()
            command = [sys.executable, __file__, "--clients-of", url, "--duration", str(args.duration)]
            child = subprocess.run(command, input=json.dumps(tokens), capture_output=True, text=True, check=True)
            outcome.update(json.loads(child.stdout.strip().splitlines()[-1]))
            server.should_exit = True

        threading.Thread(target=drive, daemon=True).start()
        server.run()
        profile.disable()
        wall_s, cpu_s = time.monotonic() - window["wall"], time.process_time() - window["cpu"]
    stats = pstats.Stats(profile)
    searches, adds = int(outcome["searches"]), int(outcome["adds"])
    count = {"search": searches, "add": adds, "request": searches + adds}
    parts = {}
    for part, (suffix, name, per) in PARTS.items():
        calls, seconds = cumulative(stats, suffix, name)
        parts[part] = {"calls": calls, f"ms_per_{per}": round(seconds * 1000 / max(count[per], 1), 2)}
    result = {
        **provenance(load_before),
        "embedder": args.embedder,
        "clients": args.clients,
        "duration_s": args.duration,
        **outcome,
        "wall_s": round(wall_s, 2),
        "server_cpu_s": round(cpu_s, 2),  # the server process's CPU time over the same window
        "requests_per_server_cpu_s": round((searches + adds) / cpu_s, 1),
        "parts": parts,
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
