"""Benchmark 1: client overhead against a server that replies at once.

update_many vs a hand-written aiohttp loop (semaphore + gather) vs an httpx
loop: the same bodies, the same concurrency, the same server (in its own
process).  Every run of every contender is a fresh Python process, and the
rounds are interleaved in rotating order, so no contender inherits a warm
allocator, a cache or a turn of the machine's noise from another.  Each run
reports its wall time and the CPU (user + system) its process spent, both
measured around the run itself, after the same warm-up for all, and how much
of that CPU went to the garbage collector's passes (timed by ``gc.callbacks``).
"CPU x aiohttp" is the ratio of the medians; "paired" is the median of each
round's ratio to the raw loop's run in the same round, which the machine's
slow swings move less.

Run: python benchmarks/bench_overhead.py [--updates N] [--rounds R] [--only NAME ...] [--pin]

With --pin (Linux), the server runs on CPU 0 and every measured run on CPU 1.

With --instructions, each contender instead runs under valgrind's callgrind,
once with no updates and once with N, and the difference is printed as
instructions per update (user space only): a count that does not move with
the machine's noise (two runs agree within about 1%), for telling a change
of a few percent from none.  It is not time: code that chases pointers runs
fewer instructions per second than C, so quote time for the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import aiohttp
import httpx
from _report import header, table
from _servers import server

from customer_patch import Client, CustomerPatch

BODY = json.dumps({"name": "Acme"}).encode()
HEADERS = {"X-API-KEY": "bench", "Content-Type": "application/json"}
WARM_UP = 500


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


async def raw_aiohttp_keeping(base: str, n: int, concurrency: int) -> None:
    # As update_many does, keeps every answer (here, as parsed JSON) to the end.
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    kept: list[object] = []
    async with aiohttp.ClientSession(connector=connector) as s:

        async def one(i: int) -> None:
            async with sem, s.patch(url(base, i), data=BODY, headers=HEADERS) as r:
                r.raise_for_status()
                kept.append(json.loads(await r.read()))

        await asyncio.gather(*(one(i) for i in range(n)))
    assert len(kept) == n


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


async def library_streamed(base: str, n: int, concurrency: int) -> None:
    # Like the raw loops, keeps no result once looked at: what a large run does.
    async with Client("dualentry", token="bench", base_url=base, rate_limit=None) as de:
        updates = ((i + 1, CustomerPatch(name="Acme")) for i in range(n))
        async for result in de.iter_updates(updates, concurrency=concurrency):
            assert result.ok, result.error


CONTENDERS = {
    "customer-patch update_many": library,
    "customer-patch iter_updates": library_streamed,
    "raw aiohttp loop": raw_aiohttp,
    "raw aiohttp, keeping answers": raw_aiohttp_keeping,
    "httpx loop": raw_httpx,
}


def child(name: str, base: str, n: int, concurrency: int) -> None:
    """One measured run in this (fresh) process; prints its figures as JSON."""
    run = CONTENDERS[name]
    asyncio.run(run(base, WARM_UP, concurrency))
    # Time in the garbage collector's passes, which an allocation count starts:
    # what keeping results (or making every coroutine up front) costs.
    in_gc = [0.0, 0.0]  # seconds so far, start of the pass under way

    def collecting(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            in_gc[1] = time.process_time()
        else:
            in_gc[0] += time.process_time() - in_gc[1]

    gc.callbacks.append(collecting)
    wall, cpu, before = time.perf_counter(), time.process_time(), os.times()
    asyncio.run(run(base, n, concurrency))
    wall, cpu, after = time.perf_counter() - wall, time.process_time() - cpu, os.times()
    gc.callbacks.remove(collecting)
    system = after.system - before.system
    print(json.dumps({"wall": wall, "cpu": cpu, "gc": in_gc[0], "sys": system}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", nargs="+", choices=list(CONTENDERS), default=list(CONTENDERS))
    parser.add_argument("--instructions", action="store_true", help="count, under callgrind")
    parser.add_argument(
        "--pin", action="store_true", help="server on CPU 0, each measured run on CPU 1 (Linux)"
    )
    parser.add_argument("--child", choices=list(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.base, args.updates, args.concurrency)
        return
    names: list[str] = args.only
    if args.instructions:
        if args.pin:
            parser.error("--pin measures time; --instructions counts (no pinning to do)")
        instructions(names, args.updates, args.concurrency)
        return
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    gcs: dict[str, list[float]] = {name: [] for name in names}
    systems: dict[str, list[float]] = {name: [] for name in names}
    # Pinned, neither the server nor a run moves between the two cores (or
    # shares one): less of the machine's noise in each figure.
    on_cpu_1 = (lambda: os.sched_setaffinity(0, {1})) if args.pin else None
    with server(cpu=0 if args.pin else None) as base:
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                out = subprocess.run(
                    [
                        *(sys.executable, __file__, "--child", name, "--base", base),
                        *("--updates", str(args.updates), "--concurrency", str(args.concurrency)),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                    preexec_fn=on_cpu_1,
                )
                run = json.loads(out.stdout.splitlines()[-1])
                rates[name].append(args.updates / run["wall"])
                cpus[name].append(run["cpu"] / args.updates * 1e6)
                gcs[name].append(run["gc"] / args.updates * 1e6)
                systems[name].append(run["sys"] / args.updates * 1e6)
    raw_rate = statistics.median(rates.get("raw aiohttp loop", [math_nan()]))
    raw_cpu = statistics.median(cpus.get("raw aiohttp loop", [math_nan()]))
    raw_cpus = cpus.get("raw aiohttp loop", [math_nan()] * args.rounds)

    def paired(name: str) -> float:
        # Each round's ratio to the raw loop of the same round, then the median:
        # the machine's slow swings (a round at half speed) move both runs of a
        # round, so they cancel here, where a median of each side keeps them.
        return statistics.median(c / r for c, r in zip(cpus[name], raw_cpus, strict=True))

    header(
        f"overhead: {args.updates} updates, concurrency {args.concurrency}, server replies "
        f"at once; {args.rounds} interleaved rounds, each run a fresh process"
        f"{' (server on CPU 0, runs on CPU 1)' if args.pin else ''} "
        "(targets vs aiohttp: >= 0.85x throughput, <= 1/0.85 = 1.18x CPU per update)"
    )
    table(
        [
            "contender",
            "median/s",
            "min/s",
            "max/s",
            "x aiohttp",
            "CPU us/update",
            "min",
            "max",
            "CPU x aiohttp",
            "paired",
            "of it GC us",
            "of it system us",
        ],
        [
            [
                name,
                statistics.median(rates[name]),
                min(rates[name]),
                max(rates[name]),
                statistics.median(rates[name]) / raw_rate,
                statistics.median(cpus[name]),
                min(cpus[name]),
                max(cpus[name]),
                statistics.median(cpus[name]) / raw_cpu,
                paired(name),
                statistics.median(gcs[name]),
                statistics.median(systems[name]),
            ]
            for name in names
        ],
    )


def instructions(names: list[str], n: int, concurrency: int) -> None:
    """Instructions per update of each contender, counted by callgrind."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt install valgrind)")
    per_update: dict[str, float] = {}
    with server() as base:
        for name in names:
            counts = []
            for updates in (0, n):  # the difference leaves out start-up and warm-up
                out = subprocess.run(
                    [
                        *("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"),
                        *(sys.executable, __file__, "--child", name, "--base", base),
                        *("--updates", str(updates), "--concurrency", str(concurrency)),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                found = re.search(r"Collected : (\d+)", out.stderr)
                assert found, out.stderr[-500:]
                counts.append(int(found.group(1)))
            per_update[name] = (counts[1] - counts[0]) / n
    raw = per_update.get("raw aiohttp loop", float("nan"))
    header(
        f"overhead in instructions: {n} updates, concurrency {concurrency}, counted by "
        "callgrind (user space; not time)"
    )
    table(
        ["contender", "k instructions/update", "x aiohttp"],
        [[name, count / 1000, count / raw] for name, count in per_update.items()],
    )


def math_nan() -> float:
    return float("nan")


if __name__ == "__main__":
    main()
