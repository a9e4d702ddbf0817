"""Benchmark 3: a rate-bound run against a token bucket (burst 10, then 50/s).

Beyond its bucket the server answers 429 with Retry-After (whole seconds, as
HTTP has it).  Once with the limit declared to the client, once without
(the client must find it by itself), side by side against one server each.
Run: python benchmarks/bench_rate.py [--updates N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.request

from _report import header, table
from _servers import server

from customer_patch import UNSET, Client, CustomerPatch, RateLimit, Unset
from customer_patch_dualentry import DualEntryAdapter

BURST, RATE = 10, 50.0


class Undeclared(DualEntryAdapter):
    """DualEntry's wire format with no limits declared, like a provider without docs."""

    rate_limits = ()


async def run(base: str, n: int, limit: RateLimit | Unset) -> tuple[float, int]:
    adapter = DualEntryAdapter() if isinstance(limit, RateLimit) else Undeclared()
    async with Client(adapter, token="bench", base_url=base, rate_limit=limit) as de:
        updates = ((i + 1, CustomerPatch(name="Acme")) for i in range(n))
        start = time.perf_counter()
        report = await de.update_many(updates, concurrency=16)
        elapsed = time.perf_counter() - start
    return elapsed, len(report.failed)


def stats(base: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{base}/stats") as r:  # noqa: S310 - loopback only
        return json.load(r)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=1_000)
    args = parser.parse_args()
    rows = []
    for label, limit, target in [
        ("declared RateLimit(10, 50/s)", RateLimit(burst=BURST, per_second=RATE), 0.95),
        ("not declared (adaptive)", UNSET, 0.80),
    ]:
        with server(bucket=(BURST, RATE)) as base:
            elapsed, failed = asyncio.run(run(base, args.updates, limit))
            seen = stats(base)
        rate = args.updates / elapsed
        rows.append(
            [
                label,
                elapsed,
                rate,
                rate / RATE,
                target,
                seen["429"],
                seen["429"] / seen["requests"] * 100,
                failed,
            ]
        )
    header(
        f"rate-bound: {args.updates} updates, concurrency 16, server bucket burst {BURST} "
        f"then {RATE:.0f}/s, 429 + Retry-After beyond it"
    )
    table(["limit", "wall s", "updates/s", "x 50/s", "target", "429s", "% 429", "failed"], rows)


if __name__ == "__main__":
    main()
