"""The longest a hostile server can hold one question, measured: `python -m fuzz.drip --out FILE.json`.

One question to the hostile server (hostile_server.py) for each fault that used to hang the client (a drip
of one byte a second, an endless stream, a body that never ends), with streaming off and on, against the
stated bound `ServedSettings.worst_case_s` = timeout_s x (max_retries + 1) plus the waits between attempts.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from fuzz.hostile_server import HostileServer, Reply, completion, endless_stream, honest_stream, json_reply

FAULTS = {
    "drip, 1 byte/s": lambda stream: Reply(
        body=honest_stream(["Lis", "bon"]) if stream else json.dumps(completion()).encode(),
        drip_s=1.0,
        framing="chunked" if stream else "length",
    ),
    "endless stream": lambda stream: Reply(body=endless_stream(), content_type="text/event-stream", framing="chunked"),
    "body that never ends": lambda stream: json_reply({"choices": []}, declared_length=10**9, hold=True),
}


def measure(timeout_s: float, max_retries: int) -> list[dict[str, Any]]:
    from memos_lab.generation.base import ChatRequest
    from memos_lab.generation.served import ServedGenerator

    rows = []
    for fault, reply in FAULTS.items():
        for stream in (False, True):
            with HostileServer(reply(stream)) as server:
                generator = ServedGenerator(
                    server.url, "m", check=False, stream=stream, timeout_s=timeout_s, max_retries=max_retries
                )
                started = time.perf_counter()
                (generation,) = generator.generate([ChatRequest.user("Where does Maya live?")], 24)
                took = time.perf_counter() - started
                generator.close()
                rows.append({"fault": fault, "stream": stream, "timeout_s": timeout_s, "max_retries": max_retries,
                             "attempts": server.requests, "wall_s": round(took, 2),
                             "bound_s": generator.settings.worst_case_s, "error": generation.error})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.drip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout-s", type=float, default=3.0)
    parser.add_argument("--max-retries", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = measure(args.timeout_s, args.max_retries)
    command = f"python -m fuzz.drip --timeout-s {args.timeout_s:g} --max-retries {args.max_retries} --out {args.out}"
    result = {"command": command, "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(f"| {row['fault']}, stream={str(row['stream']).lower()} | {row['wall_s']:.2f} s ({row['attempts']} attempts) "
              f"| {row['bound_s']:.2f} s |")  # fmt: skip
    return 0 if all(row["wall_s"] <= row["bound_s"] + 1.0 for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
