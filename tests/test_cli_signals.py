"""``apply`` as a real process: stopped by SIGINT, SIGTERM and SIGKILL, then resumed.

Kill points are chosen by the number of lines in the report, never by
sleeping; every wait has a deadline, and "promptly" is a hang guard (20 s),
not a timing assertion."""

import json
import os
import random
import signal
import subprocess
import time

import pytest

from customer_patch import _convert
from customer_patch.cli._commands import Interrupted
from customer_patch.sandbox import Faults
from tests.test_cli import CLI, TOKEN, jsonl
from tests.threaded_fake import threaded_fake

PROMPTLY = 20  # seconds: a hang guard only
pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


def report_entries(path):
    """The whole lines of a report that may be in the middle of being written."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_bytes().split(b"\n"):
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # torn, or the empty tail
    return entries


def wait_for_lines(proc, report, count, deadline=30):
    """Wait until ``report`` holds ``count`` lines or ``proc`` ended; bounded."""
    end = time.monotonic() + deadline
    while time.monotonic() < end and proc.poll() is None:
        if len(report_entries(report)) >= count:
            return
        time.sleep(0.01)  # polling the file, not waiting for the server


def start(path, base, report, *, resume, extra=(), concurrency=4):
    flag = "--resume" if resume else "--report"
    return subprocess.Popen(
        [
            *CLI,
            "apply",
            str(path),
            "--provider",
            "dualentry",
            "--base-url",
            base,
            "--rate-limit",
            "off",
            "--concurrency",
            str(concurrency),
            flag,
            str(report),
            *extra,
        ],
        env={**os.environ, "DUALENTRY_API_KEY": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_apply_promptly_and_the_report_resumes(tmp_path, signum, status):
    records = 120
    with threaded_fake("dualentry", customers=records, limits=(), faults=Faults(latency=0.03)) as (
        fake,
        base,
        ids,
    ):
        path = jsonl(tmp_path / "u.jsonl", [{"id": i, "patch": {"name": f"S{i}"}} for i in ids])
        report = tmp_path / "r.jsonl"
        proc = start(path, base, report, resume=False)
        wait_for_lines(proc, report, 20)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=PROMPTLY)
        done = {e["line"] for e in report_entries(report) if e["ok"]}

        resumed = start(path, base, report, resume=True)
        _, resumed_err = resumed.communicate(timeout=60)
        stored = {i: fake.customers[i]["name"] for i in ids}
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr
    assert f"continue with --resume {report}" in stderr
    assert f"interrupted after {len(done)} records" in stderr
    assert 20 <= len(done) < records
    assert resumed.returncode == 0, resumed_err
    assert stored == {i: f"S{i}" for i in ids}
    assert {e["line"] for e in report_entries(report) if e["ok"]} == set(range(1, records + 1))


def fold(records):
    """What the provider must end with: each customer's fields, the last line winning."""
    state = {}
    for record in records:
        state.setdefault(record["id"], {}).update(record["patch"])
    return state


def test_soak_kills_and_resumes_under_faults_end_with_the_in_order_fold(tmp_path):
    """120 lines over 20 customers, 35% 500s, 10% drops, 5% truncated answers (applied,
    then cut): SIGKILL at three points, resume until done; 0 stale, 0 lost."""
    rng = random.Random(9)
    customers = list(range(1001, 1021))
    records = []
    for n in range(120):
        fields = rng.sample(["name", "email", "phone"], rng.randint(1, 3))
        patch = {}
        for field in fields:
            if field == "name":
                patch["name"] = f"name-{n}"
            elif field == "email":
                patch["email"] = f"e{n}@soak.example"
            else:
                patch["phone"] = f"555-{n:04d}"
        records.append({"id": rng.choice(customers), "patch": patch})
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    faults = Faults(
        rates={"500": 0.35, "drop": 0.1, "truncate": 0.05}, latency=0.005, retry_after=0, seed=4
    )
    statuses = []
    with threaded_fake("dualentry", customers=20, limits=(), faults=faults) as (fake, base, _):
        for kill_at in (25, 55, 90):  # report lines, across runs
            proc = start(path, base, report, resume=report.exists(), concurrency=16)
            wait_for_lines(proc, report, kill_at)
            proc.kill()
            proc.communicate(timeout=PROMPTLY)
            statuses.append(proc.returncode)
        for _ in range(6):  # resume until every record succeeded; bounded
            proc = start(
                path, base, report, resume=True, extra=["--max-consecutive-failures", "0"]
            )
            _, stderr = proc.communicate(timeout=120)
            statuses.append(proc.returncode)
            if proc.returncode == 0:
                break
        stored = {i: dict(fake.customers[i]) for i in customers}
    assert statuses[-1] == 0, (statuses, stderr)
    expected = fold(records)
    stale = [
        (i, k, stored[i].get(k), v)
        for i, patch in expected.items()
        for k, v in patch.items()
        if stored[i].get(k) != v
    ]
    assert stale == []
    lines_ok = {e["line"] for e in report_entries(report) if e["ok"]}
    assert lines_ok == set(range(1, len(records) + 1))


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_before_anything_is_sent_ends_cleanly(tmp_path, signum, status):
    """During --strict's first pass over a large file: exit 130/143 with a hint, not
    click's 'Aborted!' (exit 1) or a silent SIGTERM death."""
    path = tmp_path / "big.jsonl"
    line = json.dumps({"id": 1001, "patch": {"name": "x"}}) + "\n"
    path.write_text(line * 300_000)
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=1, limits=()) as (fake, base, _):
        proc = start(path, base, report, resume=False, extra=["--strict"])
        end = time.monotonic() + PROMPTLY
        while not report.exists() and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.01)  # the report is opened before the first pass starts
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=PROMPTLY)
        sent = len(fake.requests)
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr
    assert "Aborted" not in stderr
    if "before anything was sent" in stderr:
        assert sent == 0
        assert "run again with --overwrite-report" in stderr
    else:  # the machine was fast enough to start sending: the run's own message
        assert f"continue with --resume {report}" in stderr


def test_a_signal_while_a_line_is_parsed_is_not_an_invalid_line(monkeypatch):
    """SIGTERM raises Interrupted wherever the main thread is; inside cattrs (which
    gathers every Exception of a structure hook into its report) it became "line N:
    patch: SIGTERM", and --strict went on reading 300,000 lines to exit 2 (CI saw
    the test above time out).  Like KeyboardInterrupt, it must pass every
    ``except Exception``."""
    converter = _convert._converter.copy()

    def interrupted(value, type_):
        raise Interrupted(signal.SIGTERM)

    converter.register_structure_hook(str, interrupted)
    monkeypatch.setattr(_convert, "_converter", converter)
    with pytest.raises(Interrupted):
        _convert.structure_patch({"name": "x"})
