"""Benchmark 7: sending only what changes (issue 12).

10,000 DualEntry records of which 5% differ from what the sandbox holds
(a seeded random 5%, spread through the file), applied by the real
`customer-patch apply` process, once sending every record and once with
`--changes-only`, against the DualEntry sandbox with DualEntry's buckets at
their documented bursts (per route and method: burst 10; all endpoints:
burst 50) and their rates scaled up by one factor F (F/s per route, 5F/s
shared; documented: F = 1), so that the run takes minutes, not hours.  The
client is told the same limits (`--rate-limit 10/F/route,50/5F`).

Each contender gets a fresh sandbox in a child process, seeded the same way
(`seed_demo`), and is a fresh `customer-patch` process.  The sandbox counts
the requests it answered per route and the 429s; the physical limit is the
fewest seconds any client could take for the requests the contender needed
(those answered other than 429): for n requests on a route at rate r with
burst b, (n - b) / r; the routes' buckets run side by side, so the limit is
the largest of them and of the shared bucket's (total - 50) / 5F.  After each
run every customer's name is checked against the file ("wrong" counts those
that differ).

`apply` sending every record is bound by its 10,000 PATCHes on one route:
about 500 s at F = 20.  `--every-record N` runs it on the file's first N
records instead (0: not at all); the table's header says which.
Run: python benchmarks/bench_changes_only.py [--factor F] [--records N]
     [--every-record N] [--concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from _report import header, table
from aiohttp import web

from customer_patch import RateLimit
from customer_patch_dualentry._fake import DEMO_FIRST_ID, DualEntryFake

ROUTE_BURST, SHARED_BURST = 10, 50  # DualEntry's documented bursts
ROUTE_RATE, SHARED_RATE = 1.0, 5.0  # and rates, before scaling by F
TOKEN = "sandbox-token"  # the sandbox's documented token
TARGET = 1.15  # changes-only: at most this many times its limit


class CountingFake(DualEntryFake):
    """The DualEntry fake, counting the answers it gives per route and method."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.answered: dict[str, dict[str, int]] = {}
        self.first = self.last = 0.0

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.insert(0, self._count)  # outermost: sees every answer
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        now = time.time()
        self.first = self.first or now
        response: web.StreamResponse = await handler(request)
        self.last = time.time()
        route = f"{request.method} {request.match_info.route.resource.canonical}"  # type: ignore[union-attr]
        counts = self.answered.setdefault(route, {"ok": 0, "429": 0})
        counts["429" if response.status == 429 else "ok"] += 1
        return response


def _serve(conn: Connection, limits: tuple[RateLimit, ...], customers: int) -> None:
    async def main() -> None:
        fake = CountingFake(token=TOKEN, limits=limits)
        fake.seed_demo(customers)
        base = await fake.start()
        conn.send(base)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until asked
        conn.send(
            {
                "answered": fake.answered,
                "answered_429": fake.answered_429,
                "requests": len(fake.requests),
                "first": fake.first,
                "last": fake.last,
                "names": {cid: c["name"] for cid, c in fake.customers.items()},
            }
        )
        await fake.stop()

    asyncio.run(main())


@contextmanager
def sandbox(limits: tuple[RateLimit, ...], customers: int) -> Iterator[tuple[str, Connection]]:
    """A fresh seeded DualEntry sandbox in a child process: (base URL, pipe for its stats)."""
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=_serve, args=(child, limits, customers), daemon=True)
    proc.start()
    base = parent.recv()
    try:
        yield base, parent
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def stats(conn: Connection) -> dict[str, Any]:
    conn.send("stats")
    return conn.recv()  # type: ignore[no-any-return]


def updates(records: int, share: float, seed: int) -> tuple[list[dict[str, Any]], set[int]]:
    """Records that set name and unique_id to what the sandbox holds, except a
    random ``share`` of them (exactly, spread through the file) that rename."""
    ids = list(range(DEMO_FIRST_ID, DEMO_FIRST_ID + records))
    changed = set(random.Random(seed).sample(ids, round(records * share)))
    lines = [
        {
            "id": n,
            "patch": {
                "name": f"Demo Customer {n}" + (" (renamed)" if n in changed else ""),
                "unique_id": f"DEMO-{n}",
            },
        }
        for n in ids
    ]
    return lines, changed


def cli() -> list[str]:
    script = Path(sys.executable).parent / "customer-patch"
    found = str(script) if script.exists() else shutil.which("customer-patch")
    return [found] if found else [sys.executable, "-m", "customer_patch.cli"]


def limit_seconds(answered: dict[str, dict[str, int]], factor: float) -> float:
    """The fewest seconds the buckets allow for these (non-429) requests."""
    needed = {route: counts["ok"] for route, counts in answered.items()}
    per_route = [(n - ROUTE_BURST) / (ROUTE_RATE * factor) for n in needed.values()]
    shared = (sum(needed.values()) - SHARED_BURST) / (SHARED_RATE * factor)
    return max(0.0, shared, *per_route)


def run(
    label: str,
    lines: list[dict[str, Any]],
    extra: list[str],
    *,
    factor: float,
    concurrency: int,
    scratch: Path,
) -> list[object]:
    route, shared = ROUTE_RATE * factor, SHARED_RATE * factor
    limits = (
        RateLimit(burst=ROUTE_BURST, per_second=route, per_route=True),
        RateLimit(burst=SHARED_BURST, per_second=shared),
    )
    spec = f"{ROUTE_BURST}/{route:g}/route,{SHARED_BURST}/{shared:g}"
    path = scratch / f"updates-{len(lines)}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with sandbox(limits, len(lines)) as (base, conn):
        command = [
            *cli(),
            "apply",
            str(path),
            "--provider",
            "dualentry",
            "--base-url",
            base,
            "--rate-limit",
            spec,
            "--concurrency",
            str(concurrency),
            *extra,
        ]
        started = time.time()
        proc = subprocess.run(  # our own CLI, arguments built here
            command,
            env={**os.environ, "DUALENTRY_API_KEY": TOKEN},
            capture_output=True,
            text=True,
            timeout=len(lines) / route * 3 + 300,
            check=False,
        )
        wall = time.time() - started
        seen = stats(conn)
    if proc.returncode != 0:
        print(f"{label}: exit {proc.returncode}\n{proc.stderr[-2000:]}", file=sys.stderr)
    wrong = sum(seen["names"].get(line["id"]) != line["patch"]["name"] for line in lines)
    answered = seen["answered"]
    reads = sum(c["ok"] for r, c in answered.items() if r.startswith("GET"))
    writes = sum(c["ok"] for r, c in answered.items() if r.startswith("PATCH"))
    limit = limit_seconds(answered, factor)
    return [
        label,
        len(lines),
        wall,
        seen["first"] - started,  # the process starting, before its first request
        reads,
        writes,
        seen["answered_429"],
        limit,
        wall / limit if limit else float("nan"),
        proc.returncode,
        wrong,
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--factor", type=float, default=20.0, help="F: rates are F/s, 5F/s")
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--share", type=float, default=0.05, help="of records that differ")
    parser.add_argument(
        "--every-record",
        type=int,
        default=None,
        help="records for the every-record contender (default: all; 0 skips it)",
    )
    parser.add_argument("--concurrency", type=int, default=8)  # the CLI's default
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    every = args.records if args.every_record is None else min(args.every_record, args.records)
    lines, changed = updates(args.records, args.share, args.seed)
    options = {"factor": args.factor, "concurrency": args.concurrency}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        if every:
            rows.append(
                run("apply (every record)", lines[:every], [], scratch=Path(scratch), **options)
            )
        rows.append(
            run(
                "apply --changes-only", lines, ["--changes-only"], scratch=Path(scratch), **options
            )
        )
    route, shared = ROUTE_RATE * args.factor, SHARED_RATE * args.factor
    subset = (
        ""
        if every == args.records
        else " (every record: not run)"
        if not every
        else f" (every record: the first {every} records only)"
    )
    header(
        f"changes only: {args.records} DualEntry records, {len(changed)} differ{subset}; "
        f"sandbox buckets burst {ROUTE_BURST} at {route:g}/s per route, burst {SHARED_BURST} "
        f"at {shared:g}/s shared (F = {args.factor:g}); concurrency {args.concurrency} "
        f"(target: changes-only <= {TARGET}x limit)"
    )
    table(
        [
            "contender",
            "records",
            "wall s",
            "start s",
            "reads",
            "writes",
            "429s",
            "limit s",
            "x limit",
            "exit",
            "wrong",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
