"""Served answers per second with concurrency 8 against concurrency 1, side by side, against a real
`transformers serve` of SmolLM2-135M-Instruct on this machine (the served backend of memos_lab).

The same questions (the synthetic dialogues' questions, each after a short memory context) are sent in
rounds that alternate the two concurrency levels, so machine load hits both alike; each round's answers/s
is recorded, and the medians are printed as a markdown table and written as JSON.

    python experiments/served_concurrency.py [--rounds 3] [--questions 24] [--max-new-tokens 16]
        [--server-args="--continuous-batching"] [--out results/served/concurrency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from memos_lab.data.synthetic import generate_dialogues
from memos_lab.generation.base import ChatRequest
from memos_lab.generation.serve import transformers_serve
from memos_lab.generation.served import ServedGenerator
from memos_lab.models.llm import SMOLLM2_NAME, load_smollm2
from memos_lab.provenance import git_commit, hardware


def questions(n: int) -> list[ChatRequest]:
    requests = []
    for conversation in generate_dialogues(seed=0, n_conversations=4):
        turns = conversation.turns
        for question in conversation.questions:
            context = "\n".join(f"{t.speaker}: {t.text}" for t in turns[:12])
            requests.append(
                ChatRequest.user(question.question, system=f"Memories:\n{context}", request_id=question.question_id)
            )
    return requests[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument(
        "--server-args", default="", help="extra `transformers serve` flags, e.g. --continuous-batching"
    )
    parser.add_argument("--out", type=Path, default=Path("results/served/concurrency.json"))
    args = parser.parse_args()
    cache = os.environ.get("MEMOS_LAB_CACHE", os.path.expanduser("~/.cache/memos_lab"))
    load_smollm2(cache)  # converts the wheel's GGUF file once if needed
    folder = Path(cache) / "models" / SMOLLM2_NAME
    requests = questions(args.questions)
    per_round: dict[int, list[float]] = {1: [], 8: []}
    tokens: dict[int, list[int]] = {1: [], 8: []}
    failures = {1: 0, 8: 0}
    with transformers_serve(folder, extra_args=shlex.split(args.server_args)) as url:
        generators = {c: ServedGenerator(url, str(folder), concurrency=c, timeout_s=300.0) for c in (1, 8)}
        generators[1].generate(requests[:2], args.max_new_tokens)  # warm-up
        for _ in range(args.rounds):
            for concurrency, generator in generators.items():
                started = time.perf_counter()
                generations = generator.generate(requests, args.max_new_tokens)
                seconds = time.perf_counter() - started
                answered = [g for g in generations if not g.failed]
                failures[concurrency] += len(generations) - len(answered)
                per_round[concurrency].append(len(answered) / seconds)
                tokens[concurrency].append(sum(g.completion_tokens for g in answered))
                print(f"concurrency {concurrency}: {len(answered)} answers in {seconds:.1f} s")
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(),
        "server": f"transformers serve {folder.name} --device cpu {args.server_args}".strip(),
        "cpu": hardware()["cpu"],
        "cpu_count": os.cpu_count(),
        "questions": len(requests),
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "answers_per_s": {str(c): statistics.median(v) for c, v in per_round.items()},
        "answers_per_s_rounds": {str(c): v for c, v in per_round.items()},
        "completion_tokens_per_round": {str(c): v for c, v in tokens.items()},
        "failures": {str(c): v for c, v in failures.items()},
    }
    result["speedup_8_vs_1"] = result["answers_per_s"]["8"] / result["answers_per_s"]["1"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| concurrency | answers/s (median of rounds) | failures |\n|---|---|---|")
    for c in ("1", "8"):
        print(f"| {c} | {result['answers_per_s'][c]:.2f} | {result['failures'][c]} |")
    print(f"\nspeedup 8 vs 1: {result['speedup_8_vs_1']:.2f}x; written {args.out}")


if __name__ == "__main__":
    main()
