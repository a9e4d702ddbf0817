"""The fault soak, shared by the suite (1,000 records) and benchmarks/bench_soak.py (10,000).

The fake provider injects 10% 500/503, 5% 429 with Retry-After, 2% dropped
connections and 1% truncated bodies; on top, 50 records name customers that
do not exist (404) and 50 set an unknown custom field (422).  Afterwards
every input has exactly one result, every success is in the store with the
patched values, and every permanent failure carries the right typed error.
"""

from __future__ import annotations

import time
from typing import Any

from customer_patch import (
    Client,
    CustomerPatch,
    NotFoundError,
    RetryPolicy,
    UnknownCustomFieldError,
    get_adapter,
)
from customer_patch.sandbox import Faults, fake_for

FAULTS = {"500": 0.05, "503": 0.05, "429": 0.05, "drop": 0.02, "truncate": 0.01}
TIERS = ("Bronze", "Silver", "Gold")  # the options of the fake's Tier field
POLICY = RetryPolicy(attempts=10, wait_initial=0.01, wait_max=0.2, timeout=120)


async def soak(records: int, *, concurrency: int = 32, seed: int = 7) -> dict[str, Any]:
    adapter = get_adapter("dualentry")
    fake = fake_for(adapter)(faults=Faults(rates=FAULTS, retry_after=0, seed=seed), limits=())
    ids = fake.seed_demo(records)
    missing = list(range(10**6, 10**6 + 50))
    unknown_field = set(ids[:50])

    def patch_for(cid: int) -> CustomerPatch:
        fields: dict[Any, Any] = {"Tier": TIERS[cid % 3]}
        if cid in unknown_field:
            fields["Nope"] = 1
        return CustomerPatch(name=f"N{cid}", custom_fields=fields)

    updates = [(cid, patch_for(cid)) for cid in ids + missing]
    async with fake.running() as base_url:
        async with Client(
            adapter, token=fake.token, base_url=base_url, rate_limit=None, retry=POLICY
        ) as client:
            started = time.monotonic()
            results = [r async for r in client.iter_updates(updates, concurrency=concurrency)]
            elapsed = time.monotonic() - started

    problems: list[str] = []
    if sorted(r.index for r in results) != list(range(len(updates))):
        problems.append("results do not match inputs one to one")
    for r in results:
        cid = r.customer_id
        if cid in missing:
            if not isinstance(r.error, NotFoundError):
                problems.append(f"{cid}: expected NotFoundError, got {r.error!r}")
        elif cid in unknown_field:
            if not (isinstance(r.error, UnknownCustomFieldError) and r.error.names == ("Nope",)):
                problems.append(f"{cid}: expected UnknownCustomFieldError, got {r.error!r}")
            elif fake.customers[cid]["name"] != f"Demo Customer {cid}":
                problems.append(f"{cid}: a rejected update changed the store")
        elif not r.ok:
            problems.append(f"{cid}: failed with {r.error!r} after {r.attempts} attempts")
        else:
            stored = fake.customers[cid]
            tier = next(e for e in stored["custom_fields"] if e["field"]["name"] == "Tier")
            if stored["name"] != f"N{cid}" or tier["value"]["value"] != TIERS[cid % 3]:
                problems.append(f"{cid}: reported succeeded but the store has {stored['name']!r}")
    return {
        "records": len(updates),
        "results": len(results),
        "succeeded": sum(r.ok for r in results),
        "failed": sum(not r.ok for r in results),
        "requests": len(fake.requests),
        "max_attempts": max(r.attempts for r in results),
        "injected": dict(fake.injected),
        "elapsed": elapsed,
        "problems": problems,
    }
