"""The command line with careless input, options and reports: issue 9's CLI cases.

Each test runs ``apply`` in-process against a DualEntry fake on loopback."""

import contextlib
import errno
import json
import os
import resource
import subprocess

import filelock
import pytest
from click.testing import CliRunner

from customer_patch.cli import _input, _report
from customer_patch.cli._commands import cli
from customer_patch.cli._input import CSV_FIELD_LIMIT
from tests.helpers import QID
from tests.test_cli import CLI, TOKEN, apply_dualentry, digest, jsonl, report_lines, run
from tests.threaded_fake import threaded_fake

FAST = {"limits": ()}


def apply_fast(path, base):
    """apply against the fake at ``base``, unpaced (the fake enforces no limits)."""
    return [*apply_dualentry(path, base), "--rate-limit", "off"]


def names(fake, ids):
    return {i: fake.customers[i]["name"] for i in ids}


# -- 2: resume never lands an older line over a newer one --------------------------------------


def entry(line, customer_id, record, *, ok, attempts=1):
    return {
        "line": line,
        "id": customer_id,
        "ok": ok,
        "attempts": attempts,
        "hash": digest(record),
    }


def stamped(entries, base):
    """Report lines as apply writes them: each with its place and where it went."""
    return "".join(
        json.dumps({**e, "n": n, "to": f"dualentry {base}"}) + "\n"
        for n, e in enumerate(entries, start=1)
    )


def test_resume_sends_the_later_lines_of_a_customer_again_after_an_earlier_one(tmp_path):
    records = [
        {"id": 1001, "patch": {"name": "a"}},  # failed in the first run
        {"id": 1001, "patch": {"name": "b"}},  # succeeded in the first run
        {"id": 1002, "patch": {"name": "c"}},  # succeeded: not sent again
    ]
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    lines = [
        entry(1, 1001, records[0], ok=False, attempts=5),
        entry(2, 1001, records[1], ok=True),
        entry(3, 1002, records[2], ok=True),
    ]
    with threaded_fake("dualentry", customers=2, **FAST) as (fake, base, ids):
        report.write_text(stamped(lines, base))
        result = run([*apply_fast(path, base), "--resume", str(report)])
        stored = names(fake, ids)
        sent = [(r.path, r.body) for r in fake.requests]
    assert result.exit_code == 0, result.output
    assert stored[1001] == "b"  # the last line of the file, not the retried older one
    assert sent == [
        ("/public/v2/customers/1001/", {"name": "a"}),
        ("/public/v2/customers/1001/", {"name": "b"}),
    ]


def test_resume_and_the_runner_agree_on_what_is_one_customer():
    """Resume re-sends a customer's later lines; the runner serialises a customer's
    lines.  Both must see one customer where the provider may: a UUID in either
    case, 5 and "5".  Two notions used to differ (the report's json.dumps form)."""
    from customer_patch import _bulk
    from customer_patch.cli import _input

    assert _report.customer_key is _bulk.customer_key is _input.customer_key
    assert _bulk.customer_key(QID.upper()) == _bulk.customer_key(QID)
    assert _bulk.customer_key(5) == _bulk.customer_key("5")


def test_a_line_done_before_an_earlier_line_was_sent_again_is_not_done(tmp_path):
    """Run 1: line 1 failed, line 2 ok; run 2 sent line 1 again and was killed.

    Run 3 must send line 2 again: line 1 landed after it."""
    records = [{"id": 1001, "patch": {"name": "a"}}, {"id": 1001, "patch": {"name": "b"}}]
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    lines = [
        entry(1, 1001, records[0], ok=False),
        entry(2, 1001, records[1], ok=True),
        entry(1, 1001, records[0], ok=True),  # run 2, killed before line 2 went again
    ]
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        report.write_text(stamped(lines, base))
        fake.customers[1001]["name"] = "a"  # what run 2 left
        result = run([*apply_fast(path, base), "--resume", str(report)])
        stored = fake.customers[1001]["name"]
    assert result.exit_code == 0, result.output
    assert stored == "b"


# -- 3: a report of another file ----------------------------------------------------------------


def test_resume_refuses_another_files_report_before_sending(tmp_path):
    monday = jsonl(tmp_path / "monday.jsonl", [{"id": 1001, "patch": {"name": "Mon"}}])
    tuesday = jsonl(tmp_path / "tuesday.jsonl", [{"id": 1001, "patch": {"name": "Tue"}}])
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        first = run([*apply_fast(monday, base), "--report", str(report)])
        before = report.read_bytes()
        second = run([*apply_fast(tuesday, base), "--resume", str(report)])
        sent = len(fake.requests)
    assert first.exit_code == 0, first.output
    assert second.exit_code == 2
    assert sent == 1  # only Monday's
    assert f"{report} is not a report of {tuesday}: line 1 differs" in second.output
    assert len(second.output.strip().splitlines()) == 1
    assert report.read_bytes() == before


def test_resume_refuses_a_report_with_lines_the_file_does_not_have(tmp_path):
    records = [{"id": 1001, "patch": {"name": f"N{n}"}} for n in range(3)]
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    report.write_text(stamped([entry(9, 1001, records[0], ok=True)], "https://api.dualentry.com"))
    result = run(["apply", str(path), "--provider", "dualentry", "--resume", str(report)])
    assert result.exit_code == 2
    assert "results for 1 line(s) the file does not have" in result.output


# -- 4: the report never destroys a file; one run at a time ---------------------------------------


def test_report_naming_the_input_is_refused_and_the_input_kept(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "x"}}])
    before = path.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(path)
    os.link(path, tmp_path / "hard.jsonl")
    for flag, other in [
        ("--report", path),
        ("--report", tmp_path / "link.jsonl"),
        ("--report", tmp_path / "hard.jsonl"),
        ("--resume", path),
        ("--resume", tmp_path / "hard.jsonl"),
    ]:
        result = run(
            ["apply", str(path), "--provider", "dualentry", flag, str(other), "--overwrite-report"]
        )
        assert result.exit_code == 2, (flag, other, result.output)
        assert f"{flag} {other} is the input file" in result.output
        assert path.read_bytes() == before


def test_an_existing_report_is_not_overwritten_unless_asked(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "x"}}])
    report = tmp_path / "r.jsonl"
    report.write_text("precious\n")
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        refused = run([*apply_fast(path, base), "--report", str(report)])
        assert fake.requests == []
        assert report.read_text() == "precious\n"
        replaced = run([*apply_fast(path, base), "--report", str(report), "--overwrite-report"])
    assert refused.exit_code == 2
    assert "exists; continue it with --resume" in refused.output
    assert replaced.exit_code == 0, replaced.output
    assert [r["ok"] for r in report_lines(report)] == [True]


def test_two_runs_cannot_write_one_report(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "x"}}])
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        with filelock.FileLock(f"{report}.lock"):  # what a running apply holds
            result = run([*apply_fast(path, base), "--report", str(report)])
        assert fake.requests == []
    assert result.exit_code == 2
    assert f"{report} is in use by another run" in result.output
    assert not report.exists()


def test_a_report_reached_through_a_link_is_locked_as_the_report(tmp_path):
    """A running apply holds its report's lock: another run naming the same file
    through a symbolic link must be refused too, not empty the file under it;
    a report with a hard link (a second name, which no lock sees) is refused."""
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "x"}}])
    report = tmp_path / "r.jsonl"
    report.write_text("precious\n")
    (tmp_path / "link.jsonl").symlink_to(report)
    (tmp_path / "dir").symlink_to(tmp_path)
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        with filelock.FileLock(f"{report}.lock"):  # what a running apply holds
            through = [
                run([*apply_fast(path, base), "--report", str(name), "--overwrite-report"])
                for name in (tmp_path / "link.jsonl", tmp_path / "dir" / "r.jsonl")
            ]
        os.link(report, tmp_path / "hard.jsonl")
        hard = [
            run([*apply_fast(path, base), "--report", str(name), "--overwrite-report"])
            for name in (report, tmp_path / "hard.jsonl")
        ]
        assert fake.requests == []
    for result in through:
        assert result.exit_code == 2, result.output
        assert "is in use by another run" in result.output
    for result in hard:
        assert result.exit_code == 2, result.output
        assert "has 2 names (hard links)" in result.output
    assert report.read_text() == "precious\n"


def test_standard_input_and_a_report_of_the_same_file_are_refused(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "x"}}])
    before = path.read_bytes()
    with path.open("rb") as stdin:
        proc = subprocess.run(
            [*CLI, "apply", "-", "--provider", "dualentry", "--report", str(path)]
            + ["--overwrite-report", "--base-url", "http://127.0.0.1:9"],
            stdin=stdin,
            capture_output=True,
            text=True,
            env={**os.environ, "DUALENTRY_API_KEY": TOKEN},
            timeout=60,
        )
    assert proc.returncode == 2, proc.stderr
    assert f"--report {path} is the input file" in proc.stderr
    assert path.read_bytes() == before


@pytest.mark.parametrize("torn", [b'{"line":', b"{", b'{"li', b'{"line": 2, "id": 10'])
@pytest.mark.parametrize("healed", [False, True], ids=["last", "healed"])
def test_a_report_line_torn_anywhere_is_done_again_on_resume(tmp_path, torn, healed):
    """A full disk (or a kill) can cut a line after any byte: a resume does that
    record again, whatever was left of its line."""
    records = [{"id": 1001, "patch": {"name": "A"}}, {"id": 1002, "patch": {"name": "B"}}]
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=2, **FAST) as (fake, base, ids):
        done = stamped([entry(1, 1001, records[0], ok=True)], base).encode()
        report.write_bytes(done + torn + (b"\n" if healed else b""))
        resumed = run([*apply_fast(path, base), "--resume", str(report)])
        stored = names(fake, ids)
    assert resumed.exit_code == 0, resumed.output
    assert stored == {1001: "Demo Customer 1001", 1002: "B"}  # only the torn one again


def _limited_memory():
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.parametrize("flag", ["--resume", "--undo-file"])
def test_a_report_or_undo_file_that_is_not_a_file_is_refused_not_read_forever(tmp_path, flag):
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "x"}}])
    report = tmp_path / "r.jsonl"
    report.write_bytes(b"")
    more = ["--changes-only", "--resume", str(report)] if flag == "--undo-file" else []
    proc = subprocess.run(
        [*CLI, "apply", str(path), "--provider", "dualentry", flag, "/dev/zero", *more]
        + ["--base-url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        env={**os.environ, "DUALENTRY_API_KEY": TOKEN},
        timeout=60,
        preexec_fn=_limited_memory,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{flag} /dev/zero is not a regular file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_resume_file_of_one_endless_line_is_refused_not_read_whole(tmp_path):
    """A large file with no line break (a disk image given by mistake) is refused
    once a line is longer than any the command writes, not read into memory."""
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "x"}}])
    report = tmp_path / "r.jsonl"
    with report.open("wb") as f:
        f.truncate(6 << 30)  # sparse: no disk used
    result = run(["apply", str(path), "--provider", "dualentry", "--resume", str(report)])
    assert result.exit_code == 2, result.output
    assert ":1: not a line of a customer-patch report or undo file (longer than 64 MiB)" in (
        result.output
    )


def test_a_report_line_for_a_huge_id_is_one_resume_reads_back(tmp_path):
    """An invalid record whose id is 3 MiB of text: its report line is kept small
    enough for --resume, whatever the input held."""
    path = tmp_path / "u.jsonl"
    path.write_text(
        json.dumps({"id": "x" * (3 << 20), "patch": {}})
        + "\n"
        + json.dumps({"id": 1001, "patch": {"name": "N"}})
        + "\n"
    )
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        first = run([*apply_fast(path, base), "--report", str(report)])
        resumed = run([*apply_fast(path, base), "--resume", str(report)])
    assert first.exit_code == 2, first.output  # the invalid line
    assert max(len(line) for line in report.read_bytes().splitlines()) < 2 << 20
    assert resumed.exit_code == 2, resumed.output  # the same invalid line, and nothing else
    assert "not a line" not in resumed.output


# -- 6: standard input and named pipes ------------------------------------------------------------


def test_apply_reads_standard_input(tmp_path):
    from click.testing import CliRunner

    from customer_patch.cli._commands import cli

    with threaded_fake("dualentry", customers=2, **FAST) as (fake, base, ids):
        text = "".join(json.dumps({"id": i, "patch": {"name": "S"}}) + "\n" for i in ids)
        result = CliRunner().invoke(
            cli,
            [*apply_fast("-", base), "--report", str(tmp_path / "r.jsonl")],
            input=text,
            env={"DUALENTRY_API_KEY": TOKEN},
        )
        stored = names(fake, ids)
        csv_result = CliRunner().invoke(
            cli,
            [*apply_fast("-", base), "--format", "csv", "--strict"],
            input=f"id,name\n{ids[0]},C\n",
            env={"DUALENTRY_API_KEY": TOKEN},
        )
        after_csv = fake.customers[ids[0]]["name"]
    assert result.exit_code == 0, result.output
    assert stored == dict.fromkeys(ids, "S")
    assert len(report_lines(tmp_path / "r.jsonl")) == 2
    assert csv_result.exit_code == 0, csv_result.output
    assert after_csv == "C"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_is_read_once_without_hanging(tmp_path):
    import subprocess
    import threading

    from tests.test_cli import CLI

    fifo = tmp_path / "u.jsonl"
    os.mkfifo(fifo)
    with threaded_fake("dualentry", customers=2, **FAST) as (fake, base, ids):
        text = "".join(json.dumps({"id": i, "patch": {"name": "P"}}) + "\n" for i in ids)

        def feed():
            with open(fifo, "w") as f:
                f.write(text)

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        proc = subprocess.run(
            [*CLI, *apply_fast(fifo, base)],
            env={**os.environ, "DUALENTRY_API_KEY": TOKEN},
            capture_output=True,
            text=True,
            timeout=30,  # a hang guard: counting the records used to consume the pipe
        )
        writer.join(5)
        stored = names(fake, ids)
    assert proc.returncode == 0, proc.stderr
    assert stored == dict.fromkeys(ids, "P")


# -- 8: dry run and --strict stream -------------------------------------------------------------


def test_strict_reads_the_file_twice_instead_of_holding_it(tmp_path, monkeypatch):
    """--strict checks every line first, then streams: it never builds a list of lines."""
    path = jsonl(
        tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": f"N{n}"}} for n in range(50)]
    )
    monkeypatch.setattr(
        "customer_patch.cli._commands.list", lambda *a: pytest.fail("list()"), raising=False
    )
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        result = run([*apply_fast(path, base), "--strict"])
        stored = fake.customers[1001]["name"]
    assert result.exit_code == 0, result.output
    assert stored == "N49"


def test_dry_run_streams_one_line_a_record_and_sums_up(tmp_path):
    records = 20_000
    path = tmp_path / "u.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": 1001 + n, "patch": {"name": f"N{n}"}}) + "\n" for n in range(records)
        )
    )
    result = run(["apply", str(path), "--provider", "dualentry", "--dry-run"])
    lines = result.output.splitlines()
    assert result.exit_code == 0, result.output[-500:]
    assert len(lines) == records + 1
    assert lines[0] == (
        'line 1: PATCH https://api.dualentry.com/public/v2/customers/1001/ {"name":"N0"}'
    )
    assert (
        lines[-1]
        == f"dry run: {records} request(s) would be sent, 0 invalid line(s); nothing sent"
    )


# -- 10: a malformed line is an invalid record, never a crash -----------------------------------


def test_malformed_jsonl_lines_are_invalid_records_and_the_rest_goes_out(tmp_path):
    good = [json.dumps({"id": 1001 + n, "patch": {"name": f"N{n}"}}).encode() for n in range(5)]
    deep = b'{"id": 1, "patch": {"extra": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}}"
    lines = [
        good[0],
        deep,  # line 2: RecursionError
        b'{"id": ' + b"7" * 5000 + b', "patch": {"name": "x"}}',  # line 3: int limit
        good[1],
        b'{"id": 1003, "patch": {"name": "caf\xe9"}}',  # line 5: Latin-1, not UTF-8
        good[2],
        b'{"id": 1006, "patch":\r {"name": "CR"}}',  # line 7: a bare CR is JSON whitespace
        good[3],
        b'{"id": 1005, "id": 1001, "patch": {"name": "twice"}}',  # line 9: a key twice
        good[4],
    ]
    path = tmp_path / "u.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=6, **FAST) as (fake, base, ids):
        result = run([*apply_fast(path, base), "--report", str(report)])
        stored = names(fake, ids)
    assert result.exit_code == 2, result.output
    assert "line 2: nested too deeply to read (nothing sent)" in result.output
    assert "line 3: holds a number with more than 4,300 digits (nothing sent)" in result.output
    assert "line 5: not UTF-8 (byte 36) (nothing sent)" in result.output
    assert 'line 9: key "id" is given twice (nothing sent)' in result.output
    assert stored == {1001: "N0", 1002: "N1", 1003: "N2", 1004: "N3", 1005: "N4", 1006: "CR"}
    entries = report_lines(report)
    assert sorted(e["line"] for e in entries) == list(range(1, 11))
    assert sorted(e["line"] for e in entries if not e["ok"]) == [2, 3, 5, 9]
    assert "6 succeeded; 0 failed; 4 invalid" in result.output


def test_a_bom_and_crlf_endings_are_read(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + b'{"id": 1001, "patch": {"name": "A"}}\r\n'
        + b'{"id": 1002, "patch": {"name": "B"}}\r\n'
    )
    with threaded_fake("dualentry", customers=2, **FAST) as (fake, base, ids):
        result = run([*apply_fast(path, base)])
        stored = names(fake, ids)
    assert result.exit_code == 0, result.output
    assert stored == {1001: "A", 1002: "B"}


def test_malformed_csv_rows_are_invalid_records(tmp_path):
    path = tmp_path / "u.csv"
    path.write_bytes(
        b"id,name,extra\n"
        + b"1001,A,\n"
        + b"1002,"
        + b"x" * 200_000
        + b",\n"  # line 3: a cell over 128 KiB is read
        + b"7" * 5000
        + b",B,\n"  # line 4: an id too long for int()
        + b'1003,"caf\xe9",\n'  # line 5: not UTF-8
        + b'1004,C,"{""x"": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b'}"\n'  # line 6: deep
        + b"1005,D,\n"
    )
    with threaded_fake("dualentry", customers=5, **FAST) as (fake, base, ids):
        result = run([*apply_fast(path, base)])
        stored = names(fake, ids)
    assert result.exit_code == 2, result.output
    assert "line 4: id: has more than 4,300 digits (nothing sent)" in result.output
    assert "line 5: not UTF-8 (byte 10) (nothing sent)" in result.output
    assert "line 6: extra: nested too deeply to read (nothing sent)" in result.output
    assert stored[1001] == "A"
    assert stored[1005] == "D"
    assert stored[1003] != "caf\ufffd"


@pytest.mark.parametrize("strict", [False, True])
def test_a_quote_left_open_in_a_csv_is_an_error_naming_the_lines_it_swallowed(tmp_path, strict):
    """The quote opened on line 3 never closes: CSV reads every line after it as
    part of that cell.  That is an invalid record naming those lines, never a
    name holding three rows, nor rows gone without a word."""
    path = tmp_path / "u.csv"
    path.write_text('id,name\n1001,Acme\n1002,"Beta\n1003,Gamma\n1004,Delta\n')
    with threaded_fake("dualentry", customers=4, **FAST) as (fake, base, ids):
        result = run([*apply_fast(path, base), *(["--strict"] if strict else [])])
        stored = names(fake, ids)
    assert result.exit_code == 2, result.output
    assert "line 3: not valid CSV: unexpected end of data (lines 3 to 5 were read as one" in (
        result.output
    )
    assert stored == {
        1001: "Demo Customer 1001" if strict else "Acme",
        1002: "Demo Customer 1002",
        1003: "Demo Customer 1003",
        1004: "Demo Customer 1004",
    }


def test_a_quoted_cell_over_several_lines_is_still_one_cell(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text('id,address\n1001,"1 Main St\nSpringfield"\n1002,Elm St\n')
    with threaded_fake("dualentry", customers=2, **FAST) as (fake, base, ids):
        result = run([*apply_fast(path, base)])
        stored = {i: fake.customers[i]["address"] for i in ids}
    assert result.exit_code == 0, result.output
    assert stored == {1001: "1 Main St\nSpringfield", 1002: "Elm St"}


def test_a_csv_cell_over_the_limit_is_an_invalid_record(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("id,name\n1001," + "x" * (CSV_FIELD_LIMIT + 1) + "\n1002,B\n")
    with threaded_fake("dualentry", customers=2, **FAST) as (fake, base, ids):
        result = run([*apply_fast(path, base)])
        stored = names(fake, ids)
    assert result.exit_code == 2, result.output
    assert f"line 2: not valid CSV: field larger than field limit ({CSV_FIELD_LIMIT})" in (
        result.output
    )
    assert stored[1002] == "B"


def strict_json(text):
    """json.loads that refuses what is not JSON (NaN, Infinity), as other tools do."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_nan_and_infinity_are_not_json_in_a_file_of_updates(tmp_path):
    """Python's json reads NaN, Infinity and 1e400 (as inf): a JSONL line with
    one was taken (an id NaN went into the report, which other tools cannot
    read), and a CSV custom field cell "Infinity" was a float refused as not
    JSON, where the docs read a cell that is not JSON as text."""
    lines = [
        '{"id": NaN, "patch": {"name": "A"}}',
        '{"id": 1001, "patch": {"custom_fields": {"Score": Infinity}}}',
        '{"id": 1e400, "patch": {"name": "A"}}',
        '{"id": 1002, "patch": {"name": "fine"}}',
    ]
    path = tmp_path / "u.jsonl"
    path.write_text("\n".join(lines) + "\n")
    csv = tmp_path / "u.csv"
    csv.write_text("id,custom_fields.Partner\n1001,Infinity\n1002,-Infinity\n1003,NaN\n")
    with threaded_fake("dualentry", customers=3) as (fake, base, _):
        result = run([*apply_dualentry(path, base), "--report", str(tmp_path / "r.jsonl")])
        dry = run([*apply_dualentry(csv, base), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "line 1: not valid JSON: NaN is not JSON" in result.output
    assert "line 2: not valid JSON: Infinity is not JSON" in result.output
    assert "line 3: not valid JSON: 1e400 is too large a number" in result.output
    assert "1 succeeded" in result.output
    report = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(report) == 4
    for line in report:
        strict_json(line)
    assert dry.exit_code == 0, dry.output
    for value in ("Infinity", "-Infinity", "NaN"):
        assert f'{{"custom_fields":[{{"Partner":"{value}"}}]}}' in dry.output


# -- 13: report and option problems --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate-limit", "5/inf"], "PER_SECOND must be from 0.001"),
        (["--rate-limit", "1/1e-300"], "PER_SECOND must be from 0.001"),
        (["--rate-limit", "5/nan"], "PER_SECOND must be from 0.001"),
        (["--rate-limit", "5/-1"], "PER_SECOND must be from 0.001"),
        (["--rate-limit", "0/5"], "BURST must be a whole number from 1"),
        (["--rate-limit", "-3/5"], "BURST must be a whole number from 1"),
        (["--report", "/no/such/folder/r.jsonl"], "the folder /no/such/folder does not exist"),
        (["--dry-run", "--report", "r.jsonl"], "--dry-run sends nothing"),
        (["--verbose"], "--verbose goes with --dry-run"),
        (["--base-url", "http://127.0.0.1:99999"], "port 99999 is out of range"),
        (["--base-url", ""], "base_url must be an absolute URL starting with https://"),
        (["--changes-only", "--undo-file", "u" * 300], "--undo-file uuuu"),
    ],
)
def test_option_problems_are_one_line_and_exit_2(tmp_path, args, message):
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "x"}}])
    result = run(["apply", str(path), "--provider", "dualentry", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output


def test_the_command_alone_shows_its_help():
    """Not a mistake: click shows the help (a usage error of its own kind), which
    the one-line form made one line of text with its line ends written out."""
    result = run([])
    assert "Commands:" in result.output
    assert "\\n" not in result.output
    assert "error:" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["apply", "FILE", "--concurrency", "0"], "'--concurrency': 0 is not in the range"),
        (["apply", "/no/such/file.jsonl"], "'/no/such/file.jsonl' does not exist"),
        (["apply", "."], "is a directory"),
        (["apply", "FILE", "--frobnicate"], "No such option '--frobnicate'"),
        (["plan", "FILE", "--format", "xml"], "'xml' is not one of"),
        (["plan", "FILE", "--report", "r.jsonl"], "No such option '--report'"),
        (["apply"], "Missing argument 'FILE'"),
        (["frob"], "No such command 'frob'"),
    ],
)
def test_usage_mistakes_click_finds_are_one_line_and_exit_2(tmp_path, args, message):
    """Click's own: its usage, a hint and a blank line before the message (four lines)."""
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "x"}}])
    result = run([str(path) if a == "FILE" else a for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "--help" in result.output  # where to look


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limits", "bogus"], "--limits bogus: expected BURST/PER_SECOND"),
        (["--customers", "-5"], "--customers"),
        (["--customers", "100000000"], "--customers"),
        (["--faults", "500=abc"], "--faults 500=abc: expected a number from 0 to 1"),
        (["--faults", "hang=maybe"], "--faults hang=maybe: expected true or false"),
    ],
)
def test_sandbox_option_problems_are_one_line_and_exit_2(args, message):
    # --customers -5 seeded none without a word; 100,000,000 ran on and on.
    result = run(["sandbox", "--provider", "dualentry", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"id": 1001, "ok": true, "attempts": 1, "hash": "x"}\n', "a report line needs"),
        # Without its place ("n") or where it went ("to"), a line could be
        # resumed out of order, or against another provider, unnoticed.
        (b'{"line": 1, "id": 1001, "ok": true, "attempts": 1, "hash": "x", "to": "a"}\n', "needs"),
        (b'{"line": 1, "id": 1001, "ok": true, "attempts": 1, "hash": "x", "n": 1}\n', "needs"),
        (b'{"line": 1, "id": 1001, "ok": true, "attempts": 1}\n', "an older version"),
        (b"\xff\xfe not a report\n", ":1: not a line of a customer-patch report"),
        (
            b'{"line": 1, "id": 1001, "ok": true, "attempts": 1, "hash": "x", "n": 1, "to": "a"}'
            b"\n[1]\n",
            ":2: not a line",
        ),
    ],
)
def test_a_resume_file_that_is_not_a_report_is_refused(tmp_path, content, message):
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "x"}}])
    report = tmp_path / "r.jsonl"
    report.write_bytes(content)
    result = run(["apply", str(path), "--provider", "dualentry", "--resume", str(report)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert report.read_bytes() == content


def test_a_report_resumed_against_another_provider_or_server_is_refused(tmp_path):
    """A run against a sandbox (or staging), then --resume against production:
    the report's done lines were skipped there, never sent, and the run said
    it had nothing to do.  Each line says where its record went; resuming
    elsewhere is refused before anything is sent."""
    records = [{"id": 1001 + n, "patch": {"name": f"N{n}"}} for n in range(3)]
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=3, **FAST) as (staging, base, _):
        first = run([*apply_fast(path, base), "--report", str(report)])
    content = report.read_bytes()
    with threaded_fake("dualentry", customers=3, **FAST) as (production, other, ids):
        resumed = run([*apply_fast(path, other), "--resume", str(report)])
        sent = len(production.requests)
    assert first.exit_code == 0, first.output
    assert resumed.exit_code == 2, resumed.output
    assert f"sent to dualentry {base}, not to dualentry {other}" in resumed.output
    assert len(resumed.output.strip().splitlines()) == 1, resumed.output
    assert sent == 0
    assert report.read_bytes() == content


def test_a_refusal_quoting_a_hand_edited_report_is_one_line(tmp_path):
    """The refusal quotes the report's own "to": one edited to hold a line
    break and a terminal escape printed a second line, and a colour."""
    records = [{"id": 1001, "patch": {"name": "N0"}}]
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    line = entry(1, 1001, records[0], ok=True)
    report.write_text(stamped([line], "x\nerror: forged\x1b[31m"))
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        resumed = run([*apply_fast(path, base), "--resume", str(report)])
        sent = len(fake.requests)
    assert resumed.exit_code == 2, resumed.output
    assert "sent to dualentry x\\nerror: forged\\x1b[31m, not to" in resumed.output
    assert len(resumed.output.strip().splitlines()) == 1, resumed.output
    assert sent == 0


def test_a_report_whose_lines_were_reordered_is_refused(tmp_path):
    """The report's order is the order of the sends, which decides what is done
    for a customer written twice: a sorted report (by line number, here) made
    --resume skip the record whose value the provider no longer held."""
    records = [{"id": 1001, "patch": {"name": f"N{n}"}} for n in range(4)]
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        first = run([*apply_fast(path, base), "--report", str(report)])
        lines = report.read_bytes().splitlines(keepends=True)
        report.write_bytes(b"".join(reversed(lines)))  # as `sort -r` could
        content = report.read_bytes()
        before = len(fake.requests)
        resumed = run([*apply_fast(path, base), "--resume", str(report)])
        sent = len(fake.requests) - before
    assert first.exit_code == 0, first.output
    assert resumed.exit_code == 2, resumed.output
    assert "the report's lines are out of order" in resumed.output
    assert sent == 0
    assert report.read_bytes() == content


@pytest.mark.parametrize("flag", ["--strict", "--resume"])
def test_a_pipe_that_cannot_be_copied_aside_is_one_line_and_no_report_left(tmp_path, flag):
    """--strict and --resume read a pipe twice, from a temporary copy: a disk
    too full for it (here a file size limit) gave a traceback, exit 1, and left
    an empty report that refused the same command after."""
    records = [{"id": 1001, "patch": {"name": f"N{n}"}} for n in range(3000)]
    lines = "".join(json.dumps(record) + "\n" for record in records)
    report = tmp_path / "r.jsonl"
    limit = 16 * 1024

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        if flag == "--resume":  # a report of the first line: the rest is to send
            done = {"line": 1, "id": 1001, "ok": True, "attempts": 1, "n": 1}
            done |= {"hash": digest(records[0]), "to": f"dualentry {base}"}
            report.write_text(json.dumps(done) + "\n")
        given = [str(report)] if flag == "--resume" else ["--report", str(report)]
        proc = subprocess.run(
            [*CLI, "apply", "-", "--provider", "dualentry", "--base-url", base, flag, *given]
            + ["--rate-limit", "off"],
            input=lines,
            capture_output=True,
            text=True,
            env={**os.environ, "DUALENTRY_API_KEY": TOKEN},
            preexec_fn=small_files,
            timeout=60,
        )
        sent = fake.requests
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [error] = proc.stderr.strip().splitlines()
    assert error.startswith("error: standard input cannot be copied aside"), error
    assert "nothing was sent" in error
    assert sent == []
    assert report.exists() == (flag == "--resume")  # the given one kept, a new one gone


class FullDisk:
    """A report file whose writes fail with ENOSPC once ``room`` lines were written."""

    def __init__(self, real, room):
        self.real, self.room = real, room

    def write(self, data):
        if self.room == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= bytes(data).count(b"\n")
        return self.real.write(data)

    def close(self):
        self.real.close()


def test_a_full_disk_mid_run_stops_cleanly_and_the_report_stays_true(tmp_path, monkeypatch):
    real_open = _report._open
    monkeypatch.setattr(_report, "_open", lambda path, mode: FullDisk(real_open(path, mode), 5))
    records = [{"id": 1001 + n, "patch": {"name": f"N{n}"}} for n in range(40)]
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=40, **FAST) as (fake, base, ids):
        result = run([*apply_fast(path, base), "--report", str(report), "--concurrency", "2"])
        sent = len(fake.requests)
        done = {e["id"] for e in report_lines(report) if e["ok"]}
        applied = {i for i in ids if fake.customers[i]["name"] == f"N{i - 1001}"}
        monkeypatch.setattr(_report, "_open", real_open)
        for i in ids:
            fake.customers[i]["name"] = "reset"  # to see what the resumed run sends
        resumed = run([*apply_fast(path, base), "--resume", str(report)])
        stored = names(fake, ids)
    assert result.exit_code == 3, result.output
    assert f"cannot write the report {report} (No space left on device)" in result.output
    assert f"continue with --resume {report}" in result.output
    assert "Traceback" not in result.output
    assert len(done) == 5
    assert done <= {1001 + n for n in range(40)}
    assert sent < 20  # it stopped sending
    assert done <= applied  # nothing claimed that was not done
    assert resumed.exit_code == 0, resumed.output
    # What the report shows done is not sent again.
    assert {i for i in ids if stored[i] == f"N{i - 1001}"} == set(ids) - done


@pytest.mark.parametrize("old", [None, "precious\n"])
def test_a_full_disk_before_the_first_record_sends_nothing(tmp_path, monkeypatch, old):
    """A resumed run into a new report copies the old report's lines first: a
    disk too full for them ends the run before anything is sent, and leaves no
    half-copied report that the same command would then be refused for, nor
    half of one it was told to replace."""
    records = [{"id": 1001 + n, "patch": {"name": f"N{n}"}} for n in range(3)]
    path = jsonl(tmp_path / "u.jsonl", records)
    earlier, report = tmp_path / "earlier.jsonl", tmp_path / "r.jsonl"
    replacing = []
    if old is not None:
        report.write_text(old)
        replacing = ["--overwrite-report"]
    with threaded_fake("dualentry", customers=3, **FAST) as (fake, base, _):
        first = run([*apply_fast(path, base), "--report", str(earlier), "--max-failures", "1"])
        real_open = _report._open
        monkeypatch.setattr(_report, "_open", lambda p, mode: FullDisk(real_open(p, mode), 0))
        requests = len(fake.requests)
        full = run(
            [*apply_fast(path, base), "--resume", str(earlier), "--report", str(report)]
            + replacing
        )
        sent = len(fake.requests) - requests
    assert first.exit_code == 0, first.output
    assert full.exit_code == 3, full.output
    assert full.output == (
        f"error: cannot write the report {report} (No space left on device); nothing was sent\n"
    )
    assert sent == 0
    assert report.read_text() == old if old is not None else not report.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("name", ["r.jsonl", "a|b.jsonl"])
@pytest.mark.parametrize("how", ["--resume", "--overwrite-report"])
def test_the_copy_a_killed_run_left_aside_is_removed_by_the_next(tmp_path, how, name):
    """A report is replaced through a copy written beside it
    (``.NAME.customer-patch.tmp``) and renamed over it; a SIGKILL between the
    two left the copy behind for good.  The next run that holds the report's
    lock removes it: no other run can be writing it then.  Nothing else is
    touched: not a file named by a process id (``.r.jsonl.20261123.tmp`` is
    as likely an operator's), not another report's copy."""
    records = [{"id": 1001 + n, "patch": {"name": f"N{n}"}} for n in range(2)]
    path = jsonl(tmp_path / "u.jsonl", records)
    report, earlier = tmp_path / name, tmp_path / "earlier.jsonl"
    left = tmp_path / f".{name}.customer-patch.tmp"
    kept = [tmp_path / f".{name}.{n}.tmp" for n in ("4242", "20261123", "notes")]
    kept.append(tmp_path / ".other.jsonl.customer-patch.tmp")
    for aside in [left, *kept]:
        aside.write_text("half a copy\n")
    with threaded_fake("dualentry", customers=2, **FAST) as (fake, base, _):
        first = run([*apply_fast(path, base), "--report", str(earlier)])
        args = ["--resume", str(earlier), "--report", str(report)]
        if how == "--overwrite-report":
            report.write_text("")
            args = ["--report", str(report), how]
        again = run([*apply_fast(path, base), *args])
    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    assert not left.exists()
    assert [p.read_text() for p in kept] == ["half a copy\n"] * len(kept)
    assert len(report_lines(report)) == 2


@pytest.mark.parametrize("flag", ["--undo-file", "input"])
def test_a_file_named_as_the_reports_copy_is_refused_not_destroyed(tmp_path, flag):
    """The copy a report is replaced through is the command's own file: given
    as the input or the undo file, it would be removed, or written over."""
    report = tmp_path / "r.jsonl"
    report.write_text("")
    aside = tmp_path / ".r.jsonl.customer-patch.tmp"
    record = {"id": 1001, "patch": {"name": "x"}}
    if flag == "input":
        path = jsonl(aside, [record])
        more = ["--format", "jsonl"]
    else:  # a new file, as an undo file must be
        path = jsonl(tmp_path / "u.jsonl", [record])
        more = ["--changes-only", "--undo-file", str(aside)]
    before = aside.read_bytes() if aside.exists() else None
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        result = run(
            [*apply_fast(path, base), "--report", str(report), "--overwrite-report", *more]
        )
        sent = len(fake.requests)
    assert result.exit_code == 2, result.output
    assert "the copy the report is replaced through; name another file" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert sent == 0
    assert (aside.read_bytes() if aside.exists() else None) == before
    assert report.read_text() == ""


def test_a_full_disk_healing_a_torn_report_is_one_line(tmp_path, monkeypatch):
    """--resume ends a torn last line first: on a full disk that write failed
    with a traceback (exit 1), then exited 2 ("bad input or usage"), where a
    full disk exits 3 ("the report could not be written") everywhere else."""
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "x"}}])
    report = tmp_path / "r.jsonl"
    report.write_bytes(b'{"line": 1, "id": 10')  # a kill mid-write
    real_open = _report._open
    monkeypatch.setattr(_report, "_open", lambda p, mode: FullDisk(real_open(p, mode), 0))
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        result = run([*apply_fast(path, base), "--resume", str(report)])
        sent = fake.requests
    assert result.exit_code == 3, result.output
    assert report.read_bytes() == b'{"line": 1, "id": 10'  # as it was
    assert result.output == (
        f"error: cannot write the report {report} (No space left on device); nothing was sent\n"
    )
    assert sent == []


def test_a_report_that_is_not_a_regular_file_is_refused(tmp_path):
    """A named pipe as --report blocked the run as it opened it, silently."""
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "x"}}])
    fifo = tmp_path / "r.jsonl"
    os.mkfifo(fifo)
    result = run(
        [*apply_fast(path, "http://127.0.0.1:9"), "--report", str(fifo), "--overwrite-report"]
    )
    assert result.exit_code == 2, result.output
    assert result.output == f"error: --report {fifo} is not a regular file\n"


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("how", ["a file", "a stream"])
def test_a_line_too_long_to_be_a_record_refuses_the_file_in_one_line(
    tmp_path, monkeypatch, fmt, how
):
    """/dev/zero (one line without end) was read into memory whole: a traceback
    (MemoryError) or the process killed, and an empty report left behind."""
    monkeypatch.setattr(_input, "MAX_LINE", 1000)  # 64 MiB: a smaller stand-in
    head = "id,name\n1001,A\n" if fmt == "csv" else '{"id": 1001, "patch": {"name": "A"}}\n'
    path = tmp_path / f"u.{fmt}"
    path.write_bytes(head.encode() + b"x" * 5000 + b"\n")
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        if how == "a file":
            result = run([*apply_fast(path, base), "--report", str(report)])
        else:
            args = [*apply_fast("-", base), "--format", fmt, "--report", str(report)]
            env = {"DUALENTRY_API_KEY": TOKEN}
            result = CliRunner().invoke(cli, args, input=path.read_bytes(), env=env)
        sent = len(fake.requests)
    assert result.exit_code == 2, result.output
    number = 3 if fmt == "csv" else 2
    name = path if how == "a file" else "-"
    assert f"error: {name}:{number}: a line longer than 0 MiB: not a file of updates" in (
        result.output
    )
    assert len(result.output.strip().splitlines()) == 1, result.output
    if sent == 0:
        assert result.output.endswith("; nothing was sent\n")
        assert not report.exists()
    else:  # read lazily, a stream's first record went first: the report says so
        assert f"stopped after 1 records; continue with --resume {report}" in result.output
        assert len(report_lines(report)) == 1


def _run_with_unwritable(fd, args, where):
    """The CLI run with its standard output (``fd`` 1) or error (2) a pipe
    nobody reads (closed), /dev/full, or closed; its exit status and what it
    wrote to the other one."""
    env = {**os.environ, "DUALENTRY_API_KEY": TOKEN}
    other = "stderr" if fd == 1 else "stdout"
    streams = {other: subprocess.PIPE}
    key = "stdout" if fd == 1 else "stderr"
    if where == "no descriptor":  # `>&-` or `2>&-`: Python's stream is None
        proc = subprocess.run(
            [*CLI, *args], **streams, env=env, timeout=120, preexec_fn=lambda: os.close(fd)
        )
    elif where == "/dev/full":
        with open("/dev/full", "wb") as full:
            proc = subprocess.run([*CLI, *args], **streams, **{key: full}, env=env, timeout=120)
    else:
        reader, writer = os.pipe()
        os.close(reader)  # every write meets a closed pipe (`| head -1`, once head has gone)
        try:
            proc = subprocess.run([*CLI, *args], **streams, **{key: writer}, env=env, timeout=120)
        finally:
            os.close(writer)
    return proc.returncode, getattr(proc, other).decode()


@pytest.mark.parametrize("where", ["a closed pipe", "/dev/full", "no descriptor"])
@pytest.mark.parametrize("dry_run", [False, True])
def test_standard_output_that_cannot_be_written_never_stops_the_run_silently(
    tmp_path, dry_run, where
):
    """`apply ... | head -1`: the 1,000th record's progress line met the closed
    pipe and click ended the run there, exit 1, nothing on stderr; /dev/full
    gave a traceback.  The run goes on (its report holds every record) and
    says on stderr that its output was cut; a dry run, whose output is its
    product, exits 3."""
    records = [{"id": 1001 + n % 3, "patch": {"name": f"N{n}"}} for n in range(1200)]
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=3, **FAST) as (fake, base, _):
        extra = ["--dry-run", "--verbose"] if dry_run else ["--report", str(report)]
        status, stderr = _run_with_unwritable(1, [*apply_fast(path, base), *extra], where)
    assert "Traceback" not in stderr
    assert "error: standard output could not be written" in stderr, stderr
    if dry_run:
        assert status == 3, stderr
    else:
        assert status == 0, stderr
        assert len(report_lines(report)) == 1200


@pytest.mark.parametrize("command", ["plan", "dry-run"])
def test_a_plan_whose_output_and_error_are_one_closed_pipe_exits_3(tmp_path, command):
    """`plan FILE 2>&1 | head -1`: the message saying standard output could not
    be written met the closed pipe too, and rich ended the command there with
    exit 1 ("some customers could not be read") instead of 3."""
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "x"}}] * 50)
    reader, writer = os.pipe()
    os.close(reader)  # every write meets a closed pipe (`2>&1 | head -1`, once head has gone)
    with threaded_fake("dualentry", customers=3, **FAST) as (fake, base, _):
        args = ["plan", str(path), "--provider", "dualentry", "--base-url", base]
        if command == "dry-run":
            args = [*apply_fast(path, base), "--dry-run", "--verbose"]
        try:
            proc = subprocess.run(
                [*CLI, *args],
                stdout=writer,
                stderr=writer,
                env={**os.environ, "DUALENTRY_API_KEY": TOKEN},
                timeout=120,
            )
        finally:
            os.close(writer)
    assert proc.returncode == 3


@pytest.mark.parametrize("where", ["a closed pipe", "/dev/full", "no descriptor"])
def test_standard_error_that_cannot_be_written_never_stops_the_run(tmp_path, where):
    """`apply ... 2>&1 | head -1`: the first note on stderr once head had gone
    ended the run halfway, exit 1, with nothing said anywhere.  Standard error
    carries the run's progress and notes: losing it loses nothing the report
    holds, and the run goes on to its own exit status."""
    records = [{"id": 1001 + n % 3, "patch": {"name": f"N{n}"}} for n in range(600)]
    records[5:5] = [{"id": 1001, "patch": {"phone": "not a phone"}}]  # a note on stderr
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=3, **FAST) as (fake, base, _):
        status, stdout = _run_with_unwritable(
            2, [*apply_fast(path, base), "--report", str(report)], where
        )
        stored = fake.customers[1003]["name"]
    assert status == 2, stdout  # the invalid line's, as with stderr there
    assert "Traceback" not in stdout
    assert len(report_lines(report)) == len(records)
    assert stored == "N599"


@pytest.mark.parametrize("command", ["plan", "dry-run"])
def test_an_output_that_cannot_encode_the_data_shows_it_escaped(tmp_path, command):
    """PYTHONIOENCODING=ascii (or a C locale's terminal): a customer's name in
    another script ended plan and --dry-run with a UnicodeEncodeError
    traceback.  What cannot be encoded is shown escaped, and the run goes on."""
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "Zoë → 東京"}}])
    env = {**os.environ, "DUALENTRY_API_KEY": TOKEN, "PYTHONIOENCODING": "ascii"}
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        if command == "plan":
            args = ["plan", str(path), "--provider", "dualentry", "--base-url", base]
        else:
            args = [*apply_fast(path, base), "--dry-run", "--verbose"]
        proc = subprocess.run(
            [*CLI, *args], capture_output=True, env=env, timeout=120, check=False
        )
    stdout, stderr = proc.stdout.decode("ascii"), proc.stderr.decode()
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == 0, stderr
    assert "Zo\\xeb" in stdout or "Zo\\u00eb" in stdout, stdout


@pytest.mark.parametrize("command", ["apply", "plan"])
def test_no_standard_input_to_read_is_one_line(command):
    """`customer-patch apply - <&-`: an AttributeError traceback, exit 1."""
    proc = subprocess.run(
        [*CLI, command, "-", "--provider", "dualentry", "--base-url", "http://127.0.0.1:9"],
        capture_output=True,
        env={**os.environ, "DUALENTRY_API_KEY": TOKEN},
        timeout=120,
        preexec_fn=lambda: os.close(0),
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == ["error: -: standard input is closed; nothing to read"]


# -- 14: data is never markup ---------------------------------------------------------------------


def test_markup_in_data_is_printed_verbatim(tmp_path):
    hostile = "[red]Acme[/red] [link=https://evil.example]click[/link]"
    path = jsonl(
        tmp_path / "u.jsonl",
        [
            {"id": 1001, "patch": {"name": hostile}},
            {"id": 1002, "patch": {"name": "[/bold]"}},
            {"id": "[/bold]", "patch": {"name": "x"}},  # invalid: its message quotes it
            {"id": 1003, "patch": {"phone": "[/bold] [red]"}},  # invalid too
        ],
    )
    dry = run(["apply", str(path), "--provider", "dualentry", "--dry-run"])
    assert dry.exit_code == 2, dry.output
    assert json.dumps({"name": hostile}, separators=(",", ":")) in dry.output
    assert '{"name":"[/bold]"}' in dry.output
    with threaded_fake("dualentry", customers=3, **FAST) as (fake, base, _):
        real = run([*apply_fast(path, base), "--report", str(tmp_path / "r.jsonl")])
        stored = fake.customers[1001]["name"]
    assert real.exit_code == 2, real.output
    assert "Traceback" not in real.output
    assert "2 succeeded; 0 failed; 2 invalid" in real.output
    assert stored == hostile


# -- 20: CSV dialects and ambiguity ----------------------------------------------------------------


def test_csv_with_a_bom_and_semicolons_is_read(tmp_path):
    path = tmp_path / "u.csv"
    path.write_bytes(b"\xef\xbb\xbfid;name;email\r\n1001;Semi;a@b.example\r\n")
    other = tmp_path / "v.csv"
    other.write_text("id|name\n1002|Pipe\n")
    with threaded_fake("dualentry", customers=2, **FAST) as (fake, base, ids):
        result = run([*apply_fast(path, base)])
        unknown = run([*apply_fast(other, base)])
        stored = names(fake, ids)
    assert result.exit_code == 0, result.output
    assert stored[1001] == "Semi"
    assert unknown.exit_code == 2
    assert "say --delimiter" in unknown.output


@pytest.mark.parametrize("header", ["id,name,name", "id,id,name"])
def test_a_csv_column_given_twice_is_refused(tmp_path, header):
    path = tmp_path / "u.csv"
    path.write_text(f"{header}\n1001,1001,A\n")
    result = run(["apply", str(path), "--provider", "dualentry"])
    assert result.exit_code == 2
    assert "column(s) given twice" in result.output


def test_a_custom_field_both_by_column_and_in_json_is_an_invalid_line(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text(
        'id,custom_fields,custom_fields.Tier\n1001,"{""Tier"": ""Gold""}",Silver\n1002,,Bronze\n'
    )
    with threaded_fake("dualentry", customers=2, **FAST) as (fake, base, _):
        result = run([*apply_fast(path, base)])
        bodies = [r.body for r in fake.requests if r.method == "PATCH"]
    assert result.exit_code == 2, result.output
    assert (
        "line 2: custom_fields is given both as JSON and by column custom_fields.Tier"
        in result.output
    )
    assert bodies == [{"custom_fields": [{"Tier": "Bronze"}]}]


# -- 19: failure thresholds and exit codes -----------------------------------------------------


def test_max_failures_stops_the_run_and_the_rest_is_not_attempted(tmp_path):
    wrong = [{"id": 5001 + n, "patch": {"name": "x"}} for n in range(40)]  # no such customers
    path = jsonl(tmp_path / "u.jsonl", wrong)
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        result = run(
            [*apply_fast(path, base), "--max-failures", "3", "--concurrency", "1"]
            + ["--report", str(report)]
        )
        sent = len(fake.requests)
    assert result.exit_code == 3, result.output
    assert sent == 3
    entries = report_lines(report)
    assert len(entries) == 40  # every record accounted for
    assert sum(e["error"] == "NotAttemptedError" for e in entries) == 37
    assert "stopped: TooManyFailuresError" in result.output
    assert "37 not attempted" in result.output


def test_consecutive_failures_of_one_kind_stop_by_default(tmp_path):
    wrong = [{"id": 5001 + n, "patch": {"name": "x"}} for n in range(60)]
    path = jsonl(tmp_path / "u.jsonl", wrong)
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        result = run([*apply_fast(path, base), "--concurrency", "1"])
        sent = len(fake.requests)
        unlimited = run([*apply_fast(path, base), "--max-consecutive-failures", "0"])
    assert result.exit_code == 3, result.output
    assert sent == 25
    assert unlimited.exit_code == 1, unlimited.output


def test_an_auth_stop_is_exit_3_even_with_an_invalid_line(tmp_path):
    path = jsonl(
        tmp_path / "u.jsonl",
        [{"id": "bad", "patch": {"name": "x"}}] + [{"id": 1001, "patch": {"name": "y"}}] * 3,
    )
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        result = run([*apply_fast(path, base)], env={"DUALENTRY_API_KEY": "wrong-key"})
    assert result.exit_code == 3, result.output
    assert "stopped: PermissionDeniedError" in result.output
    assert "wrong-key" not in result.output


# -- a pipe, read off the event loop ---------------------------------------------------------


def input_threads():
    import threading

    return [t for t in threading.enumerate() if t.name == "customer-patch input"]


@pytest.mark.parametrize("leave", ["aclose", "cancel"])
async def test_leaving_while_a_pipe_is_awaited_ends_its_reader_at_once(leave):
    """The read waits on the pipe and on a wake-up pipe: leaving wakes it, and
    its thread ends before ``taken`` returns (one left blocked in the read
    would hold the stream's lock, and the interpreter aborts at exit)."""
    import asyncio
    import io

    from customer_patch.cli._pipe import Stopped, stoppable, taken

    read_end, write_end = os.pipe()
    try:
        stream = stoppable(io.FileIO(read_end, "rb", closefd=True))
        os.write(write_end, b"one\n")
        lines = taken(iter(stream.readline, b""), stream.raw)
        assert await asyncio.wait_for(anext(lines), 20) == b"one\n"
        waiting = asyncio.ensure_future(anext(lines))  # the writer says nothing more
        await asyncio.sleep(0.01)
        assert not waiting.done()
        assert len(input_threads()) == 1
        if leave == "cancel":
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(waiting, 20)
        else:
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            await asyncio.wait_for(lines.aclose(), 20)
        assert input_threads() == []
        with pytest.raises(Stopped):
            stream.readline()  # and any later read of it ends at once too
        stream.close()
    finally:
        os.close(write_end)


async def test_a_pipe_read_off_the_loop_gives_every_line_then_ends():
    import io

    from customer_patch.cli._pipe import stoppable, taken

    read_end, write_end = os.pipe()
    stream = stoppable(io.FileIO(read_end, "rb", closefd=True))
    os.write(write_end, b"a\nb\n")
    os.close(write_end)
    assert [line async for line in taken(iter(stream.readline, b""), stream.raw)] == [
        b"a\n",
        b"b\n",
    ]
    assert input_threads() == []
    stream.close()
