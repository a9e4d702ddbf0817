"""Benchmark 2: a latency-bound run; the server takes 50 ms per reply.

Wall time of update_many against the ideal N / concurrency x delay.
Run: python benchmarks/bench_latency.py [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from _report import header, table
from _servers import server

from customer_patch import Client, CustomerPatch


async def run(base: str, n: int, concurrency: int) -> float:
    async with Client("dualentry", token="bench", base_url=base, rate_limit=None) as de:
        updates = ((i + 1, CustomerPatch(name="Acme")) for i in range(n))
        start = time.perf_counter()
        report = await de.update_many(updates, concurrency=concurrency)
        elapsed = time.perf_counter() - start
    assert not report.failed, report.failed[:3]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ideal = args.updates / args.concurrency * args.delay
    with server(delay=args.delay) as base:
        asyncio.run(run(base, 200, args.concurrency))  # warm-up
        walls = [
            asyncio.run(run(base, args.updates, args.concurrency)) for _ in range(args.rounds)
        ]
    header(
        f"latency-bound: {args.updates} updates, concurrency {args.concurrency}, "
        f"server delay {args.delay * 1000:.0f} ms; {args.rounds} rounds (target: <= 1.15x ideal)"
    )
    med = statistics.median(walls)
    table(
        ["run", "ideal s", "median s", "min s", "max s", "x ideal"],
        [["update_many", ideal, med, min(walls), max(walls), med / ideal]],
    )


if __name__ == "__main__":
    main()
