"""The command line, in-process (click's runner) and as a real subprocess."""

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from customer_patch.cli._commands import cli
from tests.threaded_fake import threaded_fake

TOKEN = "sandbox-token"
FAST = {"limits": ()}
CLI = [sys.executable, "-m", "customer_patch.cli"]  # the command, as a subprocess
# The command with its retries' jittered waits skipped (their number kept), as
# conftest's _no_retry_waits does in this process: for runs under heavy faults
# whose promises do not depend on how long a retry waits.
CLI_NO_RETRY_WAITS = [
    sys.executable,
    "-c",
    "from customer_patch import RetryPolicy; RetryPolicy.backoff = lambda self, n: 0.0; "
    "import runpy; runpy.run_module('customer_patch.cli', run_name='__main__')",
]


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run(args, env=None):
    return CliRunner().invoke(
        cli, args, env=env or {"DUALENTRY_API_KEY": TOKEN, "QWOTY_TOKEN": TOKEN}
    )


def apply_dualentry(path, base):
    """The start of an apply command against a DualEntry fake at ``base``."""
    return ["apply", str(path), "--provider", "dualentry", "--base-url", base]


def digest(record):
    """The hash the report keeps of a JSONL record written by ``jsonl``."""
    return hashlib.sha256(json.dumps(record).encode()).hexdigest()[:16]


def report_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_apply_jsonl_with_a_report(tmp_path):
    with threaded_fake("dualentry", customers=5, **FAST) as (fake, base, ids):
        updates = jsonl(
            tmp_path / "u.jsonl",
            [{"id": i, "patch": {"name": f"N{i}"}} for i in ids]
            + [{"id": 99, "patch": {"name": "x"}}],
        )
        result = run(
            [
                *apply_dualentry(updates, base),
                "--report",
                str(tmp_path / "r.jsonl"),
            ]
        )
        stored = {i: fake.customers[i]["name"] for i in ids}
    assert result.exit_code == 1, result.output  # one record failed
    assert stored == {i: f"N{i}" for i in ids}
    report = report_lines(tmp_path / "r.jsonl")
    assert sorted(r["line"] for r in report) == [1, 2, 3, 4, 5, 6]
    failed = [r for r in report if not r["ok"]]
    assert failed == [
        {
            "line": 6,
            "id": 99,
            "ok": False,
            "attempts": 1,
            "hash": digest({"id": 99, "patch": {"name": "x"}}),
            "error": "NotFoundError",
            "message": failed[0]["message"],
            "status": 404,
            "n": failed[0]["n"],
            "to": f"dualentry {base}",  # where it went: --resume elsewhere is refused
        }
    ]
    assert [r["n"] for r in report] == [1, 2, 3, 4, 5, 6]  # each line's place
    assert "5 succeeded; 1 failed" in result.output


def test_apply_csv_with_custom_fields_null_and_empty_cells(tmp_path):
    csv = tmp_path / "u.csv"
    csv.write_text(
        'id,name,email,custom_fields.Partner,custom_fields.Tier\n1001,Renamed,null,true,\n1002,,a@b.example,,"""Gold"""\n'
    )
    with threaded_fake("dualentry", customers=2, **FAST) as (fake, base, ids):
        fake.customers[1001]["email"] = "old@x.example"
        result = run([*apply_dualentry(csv, base)])
        bodies = [r.body for r in fake.requests]
    assert result.exit_code == 0, result.output
    assert {"name": "Renamed", "email": None, "custom_fields": [{"Partner": True}]} in bodies
    assert {"email": "a@b.example", "custom_fields": [{"Tier": "Gold"}]} in bodies


def test_dry_run_prints_each_request_masks_the_token_and_sends_nothing(tmp_path):
    updates = jsonl(
        tmp_path / "u.jsonl",
        [{"id": 1234, "patch": {"phone": None}}, {"id": "x", "patch": {"name": "A"}}],
    )
    with threaded_fake("dualentry", **FAST) as (fake, base, _):
        compact = run(
            [*apply_dualentry(updates, base), "--dry-run"],
            env={"DUALENTRY_API_KEY": "real-secret-key"},
        )
        verbose = run(
            [*apply_dualentry(updates, base), "--dry-run", "--verbose"],
            env={"DUALENTRY_API_KEY": "real-secret-key"},
        )
        assert fake.requests == []
    for result in (compact, verbose):
        assert result.exit_code == 2  # line 2 is invalid
        assert "line 2: id: must be an integer, not str (nothing sent)" in result.output
        assert "dry run: 1 request(s) would be sent, 1 invalid line(s); nothing sent" in (
            result.output
        )
        assert "real-secret-key" not in result.output
    # One line a record by default...
    assert f'line 1: PATCH {base}/public/v2/customers/1234/ {{"phone":null}}\n' in compact.output
    assert "X-API-KEY" not in compact.output
    # ...the whole request, credentials masked, with --verbose.
    assert f"line 1: PATCH {base}/public/v2/customers/1234/\n" in verbose.output
    assert "X-API-KEY: ********" in verbose.output
    assert '  {"phone":null}\n' in verbose.output


def test_bad_lines_are_reported_with_their_number_and_the_rest_runs(tmp_path):
    lines = [json.dumps({"id": 1001 + i, "patch": {"name": f"N{i}"}}) for i in range(6)]
    lines.insert(2, '{"id": 1, "patch": {"name": "broken"')  # line 3
    lines.insert(4, json.dumps({"id": 1002, "patch": {"colour": "red"}}))  # line 5
    lines.insert(6, json.dumps({"id": "1003", "patch": {"name": "x"}}))  # line 7
    path = tmp_path / "u.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with threaded_fake("dualentry", customers=6, **FAST) as (fake, base, _):
        result = run(
            [
                *apply_dualentry(path, base),
                "--report",
                str(tmp_path / "r.jsonl"),
            ]
        )
        sent = len(fake.requests)
    assert result.exit_code == 2
    assert "line 3: not valid JSON: Expecting ',' delimiter at column 37" in result.output
    assert "line 5: patch: unknown field(s): colour" in result.output
    assert "line 7: id: must be an integer, not str" in result.output
    assert sent == 6
    assert sorted(r["line"] for r in report_lines(tmp_path / "r.jsonl")) == list(range(1, 10))


def test_strict_sends_nothing_when_any_line_is_bad(tmp_path):
    path = jsonl(
        tmp_path / "u.jsonl",
        [{"id": 1001, "patch": {"name": "ok"}}, {"id": 1001, "patch": {"phone": "abc"}}],
    )
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        result = run([*apply_dualentry(path, base), "--strict"])
        assert fake.requests == []
    assert result.exit_code == 2
    assert "line 2: phone: must match" in result.output


def test_resume_skips_what_the_report_shows_as_done(tmp_path):
    path = jsonl(
        tmp_path / "u.jsonl", [{"id": 1001 + i, "patch": {"name": f"N{i}"}} for i in range(10)]
    )
    report = tmp_path / "r.jsonl"
    done = [
        {
            "line": n,
            "id": 1000 + n,
            "ok": True,
            "attempts": 1,
            "hash": digest({"id": 1000 + n, "patch": {"name": f"N{n - 1}"}}),
            "n": n,
        }
        for n in range(1, 5)
    ]
    with threaded_fake("dualentry", customers=10, **FAST) as (fake, base, _):
        report.write_text(
            "".join(json.dumps({**d, "to": f"dualentry {base}"}) + "\n" for d in done)
            + '{"line": 5, "id": 1005, "ok": tr'
        )  # torn last line
        result = run(
            [
                *apply_dualentry(path, base),
                "--resume",
                str(report),
            ]
        )
        sent_ids = sorted(int(r.path.split("/")[-2]) for r in fake.requests)
    assert result.exit_code == 0, result.output
    assert sent_ids == list(range(1005, 1011))
    assert "4 skipped" in result.output
    ok_lines = {r["line"] for r in report_lines_tolerant(report) if r["ok"]}
    assert ok_lines == set(range(1, 11))


def report_lines_tolerant(path):
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_missing_token_is_a_usage_error(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1, "patch": {"name": "x"}}])
    result = run(["apply", str(path), "--provider", "dualentry"], env={"DUALENTRY_API_KEY": ""})
    assert result.exit_code == 2
    assert "set DUALENTRY_API_KEY" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--provider", "nope"], "no adapter named 'nope'"),
        (["--provider", "dualentry", "--base-url", "http://example.com"], "refusing plain http"),
        (["--provider", "dualentry", "--rate-limit", "fast"], "BURST/PER_SECOND"),
    ],
)
def test_usage_errors_exit_2(tmp_path, args, message):
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1, "patch": {"name": "x"}}])
    result = run(["apply", str(path), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_unknown_csv_column_is_refused_before_sending(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("id,colour\n1001,red\n")
    result = run(["apply", str(path), "--provider", "dualentry"])
    assert result.exit_code == 2
    assert "u.csv:1: unknown column(s): colour" in result.output


@pytest.mark.parametrize(
    ("header", "columns"), [("id,name,", "3"), ("id,,name", "2"), ("id,name,,", "3, 4")]
)
def test_a_csv_column_without_a_name_is_named_by_its_place(tmp_path, header, columns):
    """A comma too many in the header said "unknown column(s): " and nothing more."""
    path = tmp_path / "u.csv"
    path.write_text(f"{header}\n1001,x,\n")
    result = run(["apply", str(path), "--provider", "dualentry"])
    assert result.exit_code == 2
    assert f"u.csv:1: column(s) {columns} have no name" in result.output


def test_providers_lists_the_adapters():
    result = run(["providers"])
    assert "qwoty" in result.output
    assert "DUALENTRY_API_KEY" in result.output


def test_apply_as_a_subprocess_never_prints_the_token(tmp_path):
    secret = "qwoty_super_secret_value_123"
    with threaded_fake("qwoty", customers=3, token=secret) as (fake, base, ids):
        path = jsonl(
            tmp_path / "u.jsonl",
            [{"id": i, "patch": {"name": "S"}} for i in ids]
            + [{"id": ids[0], "patch": {"name": None}}],
        )
        env = {**os.environ, "QWOTY_TOKEN": secret}
        proc = subprocess.run(
            [
                *CLI,
                "apply",
                str(path),
                "--provider",
                "qwoty",
                "--base-url",
                base,
                "--report",
                str(tmp_path / "r.jsonl"),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        names = [fake.customers[i]["name"] for i in ids]
    assert proc.returncode == 2, proc.stderr  # the last line is invalid
    assert names == ["S", "S", "S"]
    assert "line 4: name: cannot be cleared" in proc.stderr
    for text in (proc.stdout, proc.stderr, (tmp_path / "r.jsonl").read_text()):
        assert secret not in text


def test_a_sandbox_on_a_port_already_taken_is_one_line_and_exit_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["sandbox", "--provider", "dualentry", "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: --port {port}: ")
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_the_sandbox_runs_the_qwoty_pages_curl_example_with_the_pages_token():
    """`customer-patch sandbox --provider qwoty --token qwoty_your_token` answers
    the page's command as written (its host swapped) with a 200."""
    import signal
    import time
    import urllib.request

    from tests import seeds
    from tests.test_sandbox import _curl

    with socket.socket() as probe:  # a free port, so the test can find the server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [*CLI, "sandbox", "--provider", "qwoty", "--port", str(port)]
        + ["--token", "qwoty_your_token", "--customers", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        method, url, headers, body = _curl(seeds.QWOTY_CURL, f"http://127.0.0.1:{port}/api")
        request = urllib.request.Request(  # noqa: S310 - a loopback URL of the test's
            url, data=body.encode(), headers=headers, method=method
        )
        status, end = None, time.monotonic() + 30
        while status is None and proc.poll() is None and time.monotonic() < end:
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
                    status, data = answer.status, json.loads(answer.read())
            except urllib.error.HTTPError as e:  # an answer, the wrong one: said below
                status, data = e.code, None
            except urllib.error.URLError:
                time.sleep(0.05)  # polling for the server to listen
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert status == 200, (status, err)
    assert data["data"]["name"] == "Acme Corp (Renamed)"
    assert "token: qwoty_your_token" in out
    assert f"the documentation's example customer(s): '{seeds.QWOTY_CUSTOMER_ID}'" in out


@pytest.mark.parametrize("token", ["", " x", "a\nb"])
def test_a_sandbox_token_that_no_header_can_carry_is_one_line_and_exit_2(token):
    result = run(["sandbox", "--provider", "qwoty", "--token", token])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --token must be printable")
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_demo_runs_and_exits_0():
    proc = subprocess.run(
        [*CLI, "demo"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "every record ends with exactly one result" in proc.stdout
    assert "dualentry" in proc.stdout
    assert "qwoty" in proc.stdout


def test_sigkill_half_way_then_resume_applies_every_record_once(tmp_path):
    import signal
    import time
    from collections import Counter

    records = 200
    with threaded_fake(
        "dualentry",
        customers=records,
        limits=(),
        faults=__import__("customer_patch.sandbox", fromlist=["Faults"]).Faults(latency=0.02),
    ) as (fake, base, ids):
        path = jsonl(
            tmp_path / "u.jsonl",
            [
                {"id": i, "patch": {"name": f"N{i}", "custom_fields": {"Tier": "Gold"}}}
                for i in ids
            ],
        )
        report = tmp_path / "r.jsonl"
        env = {**os.environ, "DUALENTRY_API_KEY": TOKEN}
        args = [
            *CLI,
            "apply",
            str(path),
            "--provider",
            "dualentry",
            "--base-url",
            base,
            "--concurrency",
            "4",
            "--rate-limit",
            "off",
        ]
        proc = subprocess.Popen(
            [*args, "--report", str(report)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            not report.exists() or len(report.read_text().splitlines()) < 40
        ):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        done_before = {r["id"] for r in report_lines_tolerant(report) if r["ok"]}
        assert 40 <= len(done_before) < records  # killed half-way, not at the end

        resumed = subprocess.run(
            [*args, "--resume", str(report)], env=env, capture_output=True, text=True, timeout=60
        )
        sent = Counter(int(r.path.split("/")[-2]) for r in fake.requests if r.method == "PATCH")
        names = {i: fake.customers[i]["name"] for i in ids}

    assert resumed.returncode == 0, resumed.stderr
    assert names == {i: f"N{i}" for i in ids}  # every record applied
    assert all(sent[i] == 1 for i in done_before)  # what the report showed done was not sent again
    assert set(sent) == set(ids)
    # Only records in flight at the kill can have gone twice (a PATCH makes that harmless).
    assert sum(n - 1 for n in sent.values()) <= 4
    ok_lines = {r["line"] for r in report_lines_tolerant(report) if r["ok"]}
    assert ok_lines == set(range(1, records + 1))  # the report accounts for every record


def test_a_csv_id_that_is_not_ascii_digits_is_an_invalid_line_not_a_crash(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("id,name\n\u00b2,A\n1001,B\n")
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        result = run([*apply_dualentry(path, base)])
        sent = len(fake.requests)
    assert result.exit_code == 2
    assert "line 2: id: must be an integer, not str" in result.output
    assert sent == 1


def test_resuming_into_a_new_report_carries_the_done_records_over(tmp_path):
    path = jsonl(
        tmp_path / "u.jsonl", [{"id": 1001 + i, "patch": {"name": f"N{i}"}} for i in range(4)]
    )
    first = tmp_path / "a.jsonl"
    done = {"line": 1, "id": 1001, "ok": True, "attempts": 1, "n": 1}
    done["hash"] = digest({"id": 1001, "patch": {"name": "N0"}})
    second = tmp_path / "b.jsonl"
    with threaded_fake("dualentry", customers=4, **FAST) as (fake, base, _):
        first.write_text(json.dumps({**done, "to": f"dualentry {base}"}) + "\n")
        result = run(
            [
                *apply_dualentry(path, base),
                "--resume",
                str(first),
                "--report",
                str(second),
            ]
        )
        assert len(fake.requests) == 3
    assert result.exit_code == 0, result.output
    assert sorted(r["line"] for r in report_lines(second) if r["ok"]) == [1, 2, 3, 4]


def test_an_adapter_without_a_token_variable_reads_the_generic_one(tmp_path, monkeypatch):
    from customer_patch import AdapterRegistry, Tooling
    from customer_patch_dualentry import DualEntryAdapter

    class NoEnv(DualEntryAdapter):
        tooling = Tooling()

    registry = AdapterRegistry()
    registry.register("noenv", NoEnv)
    monkeypatch.setattr("customer_patch.cli._commands.get_adapter", registry.get)
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "x"}}])
    result = run(["apply", str(path), "--provider", "noenv"], env={"CUSTOMER_PATCH_TOKEN": ""})
    assert result.exit_code == 2
    assert "set CUSTOMER_PATCH_TOKEN" in result.output
