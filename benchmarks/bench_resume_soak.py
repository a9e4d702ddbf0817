"""The kill-and-resume soak, large: `customer-patch apply` killed with SIGKILL again
and again, then resumed until done, over a file with duplicate ids under every
injected fault; the store must end as the in-order fold of the file (issue 9).

Each run is a real `customer-patch apply` process against a DualEntry fake on
127.0.0.1 (500s, 503s, 429s with Retry-After 0, dropped connections, answers
truncated after the change was applied).  Kills come at random report sizes.
Prints one table; exits 1 on any stale or lost field.
Run: python benchmarks/bench_resume_soak.py [--lines N] [--customers N] [--kills N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from _report import header, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from customer_patch.sandbox import Faults
from tests.test_cli_signals import start  # the suite's way of running apply, shared
from tests.threaded_fake import threaded_fake

# Resumes must run to the end however many records fail in a row.
OPTIONS = {"concurrency": 16, "extra": ["--max-consecutive-failures", "0"]}
FAULTS = {"500": 0.1, "503": 0.05, "429": 0.05, "drop": 0.05, "truncate": 0.05}


def records(lines: int, customers: list[int], rng: random.Random) -> list[dict[str, object]]:
    out = []
    for n in range(lines):
        patch: dict[str, object] = {}
        for field in rng.sample(["name", "email", "phone"], rng.randint(1, 3)):
            patch[field] = {
                "name": f"name-{n}",
                "email": f"e{n}@soak.example",
                "phone": f"555-{n:05d}",
            }[field]
        out.append({"id": rng.choice(customers), "patch": patch})
    return out


def fold(lines: list[dict[str, object]]) -> dict[object, dict[str, object]]:
    state: dict[object, dict[str, object]] = {}
    for record in lines:
        state.setdefault(record["id"], {}).update(record["patch"])  # type: ignore[arg-type]
    return state


def report_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--customers", type=int, default=250)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    customers = list(range(1001, 1001 + args.customers))
    lines = records(args.lines, customers, rng)
    runs = kills = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "updates.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in lines))
        report = Path(scratch) / "report.jsonl"
        faults = Faults(rates=FAULTS, retry_after=0, seed=args.seed)
        with threaded_fake("dualentry", customers=args.customers, limits=(), faults=faults) as (
            fake,
            base,
            _,
        ):
            # Kill points spread over the report's growth (it gains lines on every run).
            points = sorted(rng.sample(range(1, args.lines), args.kills))
            status = None
            for point in points:
                proc = start(path, base, report, resume=report.exists(), **OPTIONS)
                runs += 1
                deadline = time.monotonic() + 300
                while proc.poll() is None and time.monotonic() < deadline:
                    if report_lines(report) >= point:
                        proc.kill()
                        kills += 1
                        break
                    time.sleep(0.005)
                proc.communicate(timeout=60)
            for _ in range(20):  # resume until everything is done; bounded
                proc = start(path, base, report, resume=True, **OPTIONS)
                runs += 1
                _, stderr = proc.communicate(timeout=600)
                status = proc.returncode
                if status == 0:
                    break
            stored = {i: dict(fake.customers[i]) for i in customers}
            injected = dict(fake.injected)
    expected = fold(lines)
    stale = sum(
        1
        for cid, patch in expected.items()
        for key, value in patch.items()
        if stored[cid].get(key) != value  # type: ignore[index]
    )
    fields = sum(len(p) for p in expected.values())
    header(
        f"kill-and-resume soak: {args.lines} lines over {args.customers} customers "
        f"(duplicate ids), {kills} SIGKILLs, faults {FAULTS}"
    )
    table(
        ["lines", "customers", "runs", "kills", "final exit", "fields", "stale", "seconds"],
        [
            [
                args.lines,
                args.customers,
                runs,
                kills,
                status,
                fields,
                stale,
                time.monotonic() - started,
            ]
        ],
    )
    table(["fault", "injected"], [[kind, n] for kind, n in injected.items() if n])
    if status != 0:
        print("LAST RUN:", stderr[-2000:])
    raise SystemExit(0 if stale == 0 and status == 0 else 1)


if __name__ == "__main__":
    main()
