"""Benchmark 4: memory of a streaming run is flat in the number of records.

Each size runs in a fresh process (peak RSS is a per-process high-water
mark) against an instant server in another process.  iter_updates streams;
update_many is shown beside it because it collects every result by design.
Run: python benchmarks/bench_memory.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys

from _report import header, table
from _servers import server

from customer_patch import Client, CustomerPatch


async def stream(base: str, n: int, concurrency: int, collect: bool) -> int:
    async with Client("dualentry", token="bench", base_url=base, rate_limit=None) as de:
        updates = ((i + 1, CustomerPatch(name=f"Acme {i}")) for i in range(n))
        if collect:
            report = await de.update_many(updates, concurrency=concurrency)
            return len(report.succeeded)
        ok = 0
        async for result in de.iter_updates(updates, concurrency=concurrency):
            ok += result.ok
        return ok


def child(base: str, n: int, concurrency: int, collect: bool) -> None:
    ok = asyncio.run(stream(base, n, concurrency, collect))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"ok": ok, "peak_mb": peak_kib / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=4)
    parser.add_argument("--sizes", default="20000,200000")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    if args.child:
        base, n, c, collect = args.child
        child(base, int(n), int(c), collect == "1")
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with server() as base:
        peaks: dict[tuple[str, int], float] = {}
        for mode, collect in [("iter_updates", "0"), ("update_many", "1")]:
            for n in sizes:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        base,
                        str(n),
                        str(args.concurrency),
                        collect,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(out.stdout)
                assert result["ok"] == n, result
                peaks[mode, n] = result["peak_mb"]
                rows.append(
                    [mode, n, result["peak_mb"], result["peak_mb"] / peaks[mode, sizes[0]]]
                )
    header(
        f"memory: peak RSS by input size, concurrency {args.concurrency} "
        "(target for streaming: <= 1.2x of the smallest size, < 150 MB)"
    )
    table(["mode", "updates", "peak RSS MB", f"x at {sizes[0]}"], rows)


if __name__ == "__main__":
    main()
