"""The fault soak at 10,000 records (the suite runs the same soak at 1,000).

Faults: 10% 500/503, 5% 429 with Retry-After, 2% dropped connections, 1%
truncated bodies, plus 50 missing customers (404) and 50 unknown custom
fields (422).  Prints the figures; exits 1 if any record was lost, doubled,
wrong in the store, or failed with the wrong error.
Run: python benchmarks/bench_soak.py [--records N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from _report import header, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.soak import FAULTS, POLICY, soak  # the suite's soak, shared


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    figures = asyncio.run(soak(args.records, concurrency=args.concurrency))
    header(
        f"fault soak: {args.records} records + 50 missing, concurrency {args.concurrency}, "
        f"faults {FAULTS}, {POLICY.attempts} attempts at most"
    )
    injected = figures["injected"]
    table(
        ["records", "results", "ok", "failed", "requests", "max attempts", "seconds", "problems"],
        [
            [
                figures["records"],
                figures["results"],
                figures["succeeded"],
                figures["failed"],
                figures["requests"],
                figures["max_attempts"],
                figures["elapsed"],
                len(figures["problems"]),
            ]
        ],
    )
    table(["fault", "injected"], [[kind, n] for kind, n in injected.items() if n])
    for problem in figures["problems"][:20]:
        print("PROBLEM:", problem)
    raise SystemExit(1 if figures["problems"] else 0)


if __name__ == "__main__":
    main()
