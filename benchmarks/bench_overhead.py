"""Benchmark 1: client overhead against a server that replies at once.

update_many vs a hand-written aiohttp loop (semaphore + gather) vs an httpx
loop: the same bodies, the same concurrency, the same server (in its own
process), side by side in one run, rounds interleaved in rotating order.
Run: python benchmarks/bench_overhead.py [--updates N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp
import httpx
from _report import header, table
from _servers import server

from customer_patch import Client, CustomerPatch

BODY = json.dumps({"name": "Acme"}).encode()
HEADERS = {"X-API-KEY": "bench", "Content-Type": "application/json"}


def url(base: str, i: int) -> str:
    return f"{base}/public/v2/customers/{i + 1}/"


async def raw_aiohttp(base: str, n: int, concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as s:

        async def one(i: int) -> None:
            async with sem, s.patch(url(base, i), data=BODY, headers=HEADERS) as r:
                r.raise_for_status()
                json.loads(await r.read())

        await asyncio.gather(*(one(i) for i in range(n)))


async def raw_httpx(base: str, n: int, concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as c:

        async def one(i: int) -> None:
            async with sem:
                r = await c.patch(url(base, i), content=BODY, headers=HEADERS)
                r.raise_for_status()
                r.json()

        await asyncio.gather(*(one(i) for i in range(n)))


async def library(base: str, n: int, concurrency: int) -> None:
    async with Client("dualentry", token="bench", base_url=base, rate_limit=None) as de:
        updates = ((i + 1, CustomerPatch(name="Acme")) for i in range(n))
        report = await de.update_many(updates, concurrency=concurrency)
    assert not report.failed, report.failed[:3]


CONTENDERS = {
    "customer-patch update_many": library,
    "raw aiohttp loop": raw_aiohttp,
    "httpx loop": raw_httpx,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    names = list(CONTENDERS)
    with server() as base:
        asyncio.run(raw_aiohttp(base, 1000, args.concurrency))  # warm the server up
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start = time.perf_counter()
                asyncio.run(CONTENDERS[name](base, args.updates, args.concurrency))
                rates[name].append(args.updates / (time.perf_counter() - start))
    raw = statistics.median(rates["raw aiohttp loop"])
    hx = statistics.median(rates["httpx loop"])
    header(
        f"overhead: {args.updates} updates, concurrency {args.concurrency}, server replies "
        f"at once; {args.rounds} interleaved rounds (targets: >= 0.85x aiohttp, >= 1.0x httpx)"
    )
    table(
        ["contender", "median/s", "min/s", "max/s", "x aiohttp", "x httpx"],
        [
            [
                name,
                statistics.median(v),
                min(v),
                max(v),
                statistics.median(v) / raw,
                statistics.median(v) / hx,
            ]
            for name, v in rates.items()
        ],
    )


if __name__ == "__main__":
    main()
