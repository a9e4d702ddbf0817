"""Issue 12 end to end, as a careless operator and a hostile server would use it:
``plan``, ``apply --changes-only``, ``--undo-file`` and ``--match-on`` against the
DualEntry sandbox on 127.0.0.1.

The fake runs in a thread (``threaded_fake``, or :func:`serving` for a fake
built here, some of them hostile); the command runs in-process through click's
runner, or as a subprocess where a signal is part of the test.  Nothing waits
on the clock: hostile fakes hold a request until the test (or another request)
lets it go, and every wait has a generous deadline that only guards a hang.  (One
hostile fake gives the client a moment to take an answer first: that decides only
whether the race it sets up happens, never whether a correct client passes.)
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiohttp import web

from customer_patch import Client, Customer, CustomerPatch, get_adapter
from customer_patch.cli._commands import _problems_of
from customer_patch.cli._report import History, UndoFile
from customer_patch.sandbox import Faults
from customer_patch_dualentry._fake import DualEntryFake, definition
from tests.test_cli import CLI, TOKEN, digest, jsonl, report_lines, run
from tests.threaded_fake import serving, threaded_fake

HANG_GUARD = 20  # seconds: a run that takes this long is hung, not slow
FAST = {"limits": ()}
PATCHABLE = (
    "name",
    "unique_id",
    "email",
    "address",
    "country",
    "website",
    "phone",
    "full_address",
    "shipping_address",
)
"""The stored fields a PATCH can change (custom fields apart)."""
BILLING = {"street": "1 Rue Neuve", "city": "Lyon", "postal_code": "69001", "country": "FR"}
SHIPPING = {"street": "9 Dock Rd", "city": "Leeds", "postal_code": "LS1 1AA", "name": "Depot"}


# -- helpers ------------------------------------------------------------------------------


def state(fake: DualEntryFake) -> dict[Any, dict[str, Any]]:
    """What a PATCH can change, per customer: the patchable fields, and each custom
    field's value by field id (``None`` when it has none)."""
    return copy.deepcopy(
        {
            i: {
                **{k: c[k] for k in PATCHABLE},
                "custom_fields": {
                    e["field"]["id"]: (e["value"] or {}).get("value") for e in c["custom_fields"]
                },
            }
            for i, c in fake.customers.items()
        }
    )


def patches(fake: DualEntryFake) -> list[Any]:
    return [r for r in fake.requests if r.method == "PATCH"]


def plan(path, base, *extra):
    return run(["plan", str(path), "--provider", "dualentry", "--base-url", base, *extra])


def apply(path, base, *extra):
    return run(["apply", str(path), "--provider", "dualentry", "--base-url", base, *extra])


def changes_only(path, base, *extra):
    return apply(path, base, "--changes-only", "--rate-limit", "off", *extra)


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def one_line_error(result, *needles: str) -> None:
    """Exit 2 with a single ``error:`` line on standard error naming ``needles``."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = lines_of(result.stderr)
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: ")
    for needle in needles:
        assert needle in errors[0]
    assert "Traceback" not in result.output


async def _until(flag: threading.Event) -> None:
    """Wait in the fake's loop until the test (another thread) sets ``flag``; bounded."""
    await asyncio.to_thread(flag.wait, HANG_GUARD)


def wait_until(condition, what: str) -> None:
    """Poll ``condition`` (the fake's state, a file) until true; fail after the hang guard."""
    end = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < end, f"hung waiting for {what}"
        time.sleep(0.01)


class ScriptedPatches(DualEntryFake):
    """Answers the first PATCHes of some customers with the statuses scripted for them
    (applying nothing), then behaves."""

    def __init__(self, script: dict[int, list[int]], **options: Any) -> None:
        super().__init__(**options)
        self.script = {k: list(v) for k, v in script.items()}

    async def patch(self, request):
        answers = self.script.get(int(request.match_info["id"]))
        if answers:
            return self.error(answers.pop(0), "scripted refusal")
        return await super().patch(request)


class _Holding(DualEntryFake):
    """A fake whose subclasses hold some answers until the test releases them:
    ``held`` is set once one is held."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.held = threading.Event()
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()

    async def _hold(self) -> None:
        self.held.set()
        await _until(self.released)


class HeldReads(_Holding):
    """Holds every customer list read (the read phase then lasts as long as the
    test wants)."""

    async def list_customers(self, request):
        await self._hold()
        return await super().list_customers(request)


# -- plan -----------------------------------------------------------------------------------


PLAN_RECORDS = [
    {"id": 1001, "patch": {"name": "Renamed", "email": "new@x.example"}},
    {"id": 1002, "patch": {"name": "Demo Customer 1002"}},  # what it already is
    {"id": 1003, "patch": {"phone": "555 0199", "custom_fields": {"Tier": "Gold"}}},
    {"id": 1004, "patch": {"custom_fields": [{"id": 45, "value": "east"}]}},
    {"id": 1004, "patch": {"billing_address": BILLING}},
]
PLAN_LINES = [
    '1001  name: "Demo Customer 1001" → "Renamed"',
    '1001  email: null → "new@x.example"',  # empty at DualEntry: cleared
    '1003  phone: null → "555 0199"',
    '1003  custom_fields.Tier: null → "Gold"',
    '1004  custom_fields.[45]: null → "east"',
    "1004  billing_address: null → " + json.dumps(BILLING),
]


def _summary(changed, unchanged, invalid=0, not_found=0, *, pace):
    seconds = round(changed / pace, 1)
    return (
        f"plan: {changed} to change, {unchanged} unchanged, {invalid} invalid, "
        f"{not_found} not found; would send {changed} PATCH request(s), "
        f"about {seconds:g} s at the paced rate; nothing was sent"
    )


def test_plan_prints_before_and_after_of_each_changed_field_and_sends_no_write(tmp_path):
    pace = Client("dualentry", token=TOKEN).pace
    assert pace is not None
    path = jsonl(tmp_path / "u.jsonl", PLAN_RECORDS)
    with threaded_fake("dualentry", customers=4) as (fake, base, _):  # documented limits
        before = state(fake)
        result = plan(path, base)
        after = state(fake)
        methods = {r.method for r in fake.requests}
    assert result.exit_code == 0, result.output
    assert methods == {"GET"}
    assert after == before
    printed = lines_of(result.stdout)
    assert sorted(printed[:-1]) == sorted(PLAN_LINES)
    # One record's lines together, in the patch's field order.
    assert printed.index(PLAN_LINES[1]) == printed.index(PLAN_LINES[0]) + 1
    assert printed[-1] == _summary(4, 1, pace=pace)
    assert result.stderr == ""


def test_plan_exit_status_says_invalid_over_not_found_over_complete(tmp_path):
    not_found = [*PLAN_RECORDS, {"id": 9999, "patch": {"name": "Ghost"}}]
    invalid = [*not_found, {"id": 1001, "patch": {"name": 5}}]
    with threaded_fake("dualentry", customers=4, **FAST) as (fake, base, _):
        one = plan(jsonl(tmp_path / "a.jsonl", not_found), base, "--rate-limit", "off")
        two = plan(jsonl(tmp_path / "b.jsonl", invalid), base, "--rate-limit", "off")
        sent = patches(fake)
    assert sent == []
    assert one.exit_code == 1, one.output
    assert "9999  line 6: dualentry: customer 9999 is not in the list of customers" in one.stdout
    assert lines_of(one.stdout)[-1] == _summary(4, 1, 0, 1, pace=float("inf"))
    assert two.exit_code == 2, two.output
    assert lines_of(two.stderr) == ["line 7: patch.name: expected str, got int (nothing sent)"]
    assert lines_of(two.stdout)[-1] == _summary(4, 1, 1, 1, pace=float("inf"))


def test_plan_and_apply_agree_on_clearing_and_emptying_a_field(tmp_path):
    """DualEntry shows a field cleared with null as "": the plan took the clear to
    read back as null, so after one it found a second clear unchanged (which the
    run then sent) and an empty value a change (which the run found unchanged)."""
    records = [
        {"id": 1001, "patch": {"email": None}},
        {"id": 1001, "patch": {"email": None}},
        {"id": 1002, "patch": {"email": None}},
        {"id": 1002, "patch": {"email": ""}},
        {"id": 1003, "patch": {"email": ""}},
        {"id": 1003, "patch": {"email": ""}},
        {"id": 1003, "patch": {"email": None}},
        {"id": 1004, "patch": {"email": "a@x.example"}},
        {"id": 1004, "patch": {"email": None}},
        {"id": 1004, "patch": {"email": ""}},
        {"id": 1004, "patch": {"email": "b@x.example"}},
        {"id": 1004, "patch": {"email": ""}},
    ]
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=4, **FAST) as (fake, base, _):
        planned = plan(path, base, "--format", "json", "--rate-limit", "off")
        applied = changes_only(path, base, "--report", str(report))
        again = plan(path, base, "--format", "json", "--rate-limit", "off")
    assert planned.exit_code == 0, planned.output
    assert applied.exit_code == 0, applied.output
    would = {o["line"]: o["changed"] for o in map(json.loads, lines_of(planned.stdout)[:-1])}
    did = {e["line"]: e["changed"] for e in report_lines(report)}
    assert would == did
    # Setting "" where the field reads as cleared changes nothing: planned
    # again, the clears and empties of 1001 to 1003 are all unchanged.
    last = {o["line"]: o["changed"] for o in map(json.loads, lines_of(again.stdout)[:-1])}
    assert [line for line in range(1, 8) if last[line]] == []


def test_plan_json_is_a_line_per_record_then_the_summary(tmp_path):
    records = [
        *PLAN_RECORDS,
        {"id": 9999, "patch": {"name": "Ghost"}},
        {"id": 1001, "patch": {"name": 5}},
    ]
    path = jsonl(tmp_path / "u.jsonl", records)
    with threaded_fake("dualentry", customers=4, **FAST) as (fake, base, _):
        result = plan(path, base, "--format", "json", "--rate-limit", "off")
        sent = patches(fake)
    assert sent == []
    assert result.exit_code == 2, result.output
    assert result.stderr == ""  # the invalid line is in the JSON
    out = [json.loads(line) for line in lines_of(result.stdout)]
    assert out[-1] == {
        "summary": {
            "changed": 4,
            "unchanged": 1,
            "invalid": 1,
            "not_found": 1,
            "failed": 0,
            "requests": 4,
            "request": "PATCH",
            "seconds": 0.0,
        }
    }
    by_line = {o["line"]: o for o in out[:-1]}
    assert sorted(by_line) == [1, 2, 3, 4, 5, 6, 7]
    assert by_line[1] == {
        "line": 1,
        "id": 1001,
        "customer": 1001,
        "changed": True,
        "fields": [
            {"field": "name", "before": "Demo Customer 1001", "after": "Renamed"},
            {"field": "email", "before": None, "after": "new@x.example"},
        ],
    }
    assert by_line[2] == {"line": 2, "id": 1002, "customer": 1002, "changed": False}
    assert by_line[4]["fields"] == [
        {"field": "custom_fields.[45]", "before": None, "after": "east"}
    ]
    assert by_line[5]["fields"] == [
        {
            "field": "billing_address",
            "before": None,
            "after": BILLING,
        }
    ]
    assert by_line[6] == {
        "line": 6,
        "id": 9999,
        "error": "NotFoundError",
        "message": "dualentry: customer 9999 is not in the list of customers",
    }
    assert by_line[7]["id"] == 1001
    assert "patch.name: expected str, got int" in by_line[7]["invalid"]


@pytest.mark.parametrize("before", ["\n", "\t", "\u00e9", "\\", '"'])
def test_plan_json_masks_a_token_the_provider_shows_and_stays_json(tmp_path, before):
    """The token was masked in the JSON text: when it followed an escape
    (a name "Hello\\n<token>"), the mask ate the escape's letter, and the line
    was not JSON any more (a JSON reader refused it, exit status 0)."""
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "Renamed"}}])
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        fake.customers[1001]["name"] = f"Hello{before}{TOKEN}"
        result = plan(path, base, "--format", "json", "--rate-limit", "off")
    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output
    [record, _] = [json.loads(line) for line in lines_of(result.stdout)]
    assert record["fields"] == [
        {"field": "name", "before": f"Hello{before}********", "after": "Renamed"}
    ]


def test_plan_of_an_empty_file_and_of_a_file_that_changes_nothing(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    same = jsonl(
        tmp_path / "same.jsonl",
        [{"id": i, "patch": {"name": f"Demo Customer {i}"}} for i in (1001, 1002, 1001)],
    )
    with threaded_fake("dualentry", customers=2, **FAST) as (fake, base, _):
        nothing = plan(empty, base, "--rate-limit", "off")
        requests_for_nothing = len(fake.requests)
        unchanged = plan(same, base, "--rate-limit", "off")
        as_json = plan(same, base, "--rate-limit", "off", "--format", "json")
        sent = patches(fake)
    assert sent == []
    assert requests_for_nothing == 0  # nothing to read: nothing read
    assert nothing.exit_code == 0, nothing.output
    assert lines_of(nothing.stdout) == [_summary(0, 0, pace=float("inf"))]
    assert unchanged.exit_code == 0, unchanged.output
    assert lines_of(unchanged.stdout) == [_summary(0, 3, pace=float("inf"))]
    assert as_json.exit_code == 0
    assert json.loads(lines_of(as_json.stdout)[-1])["summary"]["unchanged"] == 3


def test_plan_of_a_customer_whose_earlier_record_would_be_refused(tmp_path):
    """The first record names a custom field DualEntry does not have: that record is
    an error; the next record of the same customer is still planned against what was
    read (nothing would have been sent before it), not a crash."""
    records = [
        {"id": 1001, "patch": {"custom_fields": {"Nope": 1}}},
        {"id": 1001, "patch": {"name": "Renamed"}},
    ]
    path = jsonl(tmp_path / "u.jsonl", records)
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        text = plan(path, base, "--rate-limit", "off")
        as_json = plan(path, base, "--rate-limit", "off", "--format", "json")
        sent = patches(fake)
    assert sent == []
    for result in (text, as_json):
        assert result.exit_code == 2, result.output  # the first line is invalid
        assert result.exception is None or isinstance(result.exception, SystemExit)
    assert '1001  name: "Demo Customer 1001" → "Renamed"' in lines_of(text.stdout)
    assert "line 1: dualentry: no active customer custom field is named 'Nope'" in text.stderr
    second = [json.loads(line) for line in lines_of(as_json.stdout)]
    assert {"field": "name", "before": "Demo Customer 1001", "after": "Renamed"} in next(
        o["fields"] for o in second if o.get("line") == 2
    )


@pytest.mark.parametrize(
    ("provider", "match_on", "message"),
    [
        (
            "qwoty",
            "unique_id",
            "--match-on unique_id: qwoty can find customers by its own ids only",
        ),
        ("dualentry", "email", "--match-on email: dualentry can find customers by unique_id"),
        ("dualentry", "id", "--match-on id: dualentry can find customers by unique_id"),
    ],
)
@pytest.mark.parametrize("command", ["plan", "apply"])
def test_match_on_a_key_the_provider_cannot_find_by_is_one_line_exit_2(
    tmp_path, command, provider, match_on, message
):
    path = jsonl(tmp_path / "u.jsonl", [{match_on: "K-1", "patch": {"name": "x"}}])
    extra = ["--changes-only"] if command == "apply" else []
    result = run([command, str(path), "--provider", provider, "--match-on", match_on, *extra])
    one_line_error(result, message)


# -- apply --changes-only -------------------------------------------------------------------


def test_changes_only_sends_only_what_differs_and_reports_before_and_after(tmp_path):
    records = [
        {"id": 1001, "patch": {"name": "Renamed"}},
        {"id": 1002, "patch": {"name": "Demo Customer 1002"}},  # unchanged
        {"id": 1003, "patch": {"name": "Demo Customer 1003", "email": "e@x.example"}},
        {"id": 1003, "patch": {"email": "e@x.example"}},  # what line 3 left: unchanged
        {"id": 9999, "patch": {"name": "Ghost"}},
        {"id": 1001, "patch": {"phone": "call me"}},  # invalid: never read, never sent
    ]
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=3, **FAST) as (fake, base, _):
        result = changes_only(path, base, "--report", str(report))
        sent = [(r.path, r.body) for r in patches(fake)]
        stored = {i: (c["name"], c["email"]) for i, c in fake.customers.items()}
    assert result.exit_code == 2, result.output  # an invalid line
    assert sorted(sent) == [
        ("/public/v2/customers/1001/", {"name": "Renamed"}),
        ("/public/v2/customers/1003/", {"email": "e@x.example"}),
    ]
    assert stored == {
        1001: ("Renamed", ""),
        1002: ("Demo Customer 1002", ""),
        1003: ("Demo Customer 1003", "e@x.example"),
    }
    entries = {e["line"]: e for e in report_lines(report)}
    assert sorted(entries) == [1, 2, 3, 4, 5, 6]
    drop = ("hash", "message", "n", "to")
    seen = {n: {k: v for k, v in e.items() if k not in drop} for n, e in entries.items()}
    assert seen[1] == {
        "line": 1,
        "id": 1001,
        "ok": True,
        "attempts": 1,
        "changed": True,
        "customer": 1001,
        "before": {"name": "Demo Customer 1001"},
        "after": {"name": "Renamed"},
    }
    assert seen[2] == {
        "line": 2,
        "id": 1002,
        "ok": True,
        "attempts": 0,
        "changed": False,
        "customer": 1002,
    }
    assert seen[3]["before"] == {"email": None}
    assert seen[3]["after"] == {"email": "e@x.example"}
    assert seen[4] == {**seen[2], "line": 4, "id": 1003, "customer": 1003}
    assert seen[5] == {
        "line": 5,
        "id": 9999,
        "ok": False,
        "attempts": 0,
        "error": "NotFoundError",
        "status": 404,
        "changed": False,
    }
    assert seen[6]["ok"] is False
    assert seen[6]["error"] == "ValidationError"
    assert (
        "4 succeeded (2 unchanged: nothing sent); 1 failed; 1 invalid "
        "(1 NotFoundError, 1 ValidationError)"
    ) in result.stdout


def test_a_later_record_of_a_customer_is_compared_with_what_the_earlier_one_left(tmp_path):
    """1001 is renamed, other records follow, then 1001 gets its old name back: the
    last record must be compared with what the rename left, not with the read made
    before the run (which would find it unchanged and send nothing).  Concurrency 1:
    the rename is long finished when the last record starts."""
    records = [{"id": 1001, "patch": {"name": "Renamed"}}]
    records += [{"id": i, "patch": {"name": f"N{i}"}} for i in (1002, 1003)]
    records += [{"id": 1001, "patch": {"name": "Demo Customer 1001"}}]
    path = jsonl(tmp_path / "u.jsonl", records)
    with threaded_fake("dualentry", customers=3, **FAST) as (fake, base, _):
        planned = plan(path, base, "--concurrency", "1", "--rate-limit", "off")
        result = changes_only(path, base, "--concurrency", "1")
        sent = [r.body for r in patches(fake)]
        name = fake.customers[1001]["name"]
    assert [line for line in lines_of(planned.stdout) if line.startswith("1001")] == [
        '1001  name: "Demo Customer 1001" → "Renamed"',
        '1001  name: "Renamed" → "Demo Customer 1001"',
    ]
    assert result.exit_code == 0, result.output
    assert name == "Demo Customer 1001"
    assert sent[-1] == {"name": "Demo Customer 1001"}
    assert "4 succeeded (0 unchanged: nothing sent)" in result.stdout


def test_changes_only_of_duplicates_an_unchanged_file_and_an_empty_one_sends_no_more(tmp_path):
    line = {"id": 1001, "patch": {"name": "Once", "email": "once@x.example"}}
    dup = jsonl(tmp_path / "dup.jsonl", [line, line, line])
    same = jsonl(
        tmp_path / "same.jsonl",
        [{"id": i, "patch": {"name": f"Demo Customer {i}"}} for i in (1002, 1003, 1002)],
    )
    empty = tmp_path / "empty.csv"
    empty.write_text("id,name\n")
    with threaded_fake("dualentry", customers=3, **FAST) as (fake, base, _):
        first = changes_only(dup, base)
        sent_for_dup = len(patches(fake))
        again = changes_only(dup, base)  # run twice by mistake: nothing more to send
        unchanged = changes_only(same, base)
        nothing = changes_only(empty, base)
        sent = len(patches(fake))
    assert first.exit_code == 0, first.output
    assert sent_for_dup == 1
    assert "3 succeeded (2 unchanged: nothing sent)" in first.stdout
    for result in (again, unchanged):
        assert result.exit_code == 0, result.output
        assert "3 succeeded (3 unchanged: nothing sent); 0 failed; 0 invalid" in result.stdout
    assert nothing.exit_code == 0, nothing.output
    assert "0 succeeded (0 unchanged: nothing sent); 0 failed; 0 invalid" in nothing.stdout
    assert sent == 1


# -- --undo-file ----------------------------------------------------------------------------

OLD_BILLING = {"street": "2 Old St", "city": "Bath", "postal_code": "BA1", "state": "Somerset"}
SETUP = [  # a starting state with something in every kind of field
    {"id": 1001, "patch": {"phone": "555 0100"}},
    {
        "id": 1002,
        "patch": {
            "custom_fields": [{"name": "Partner", "value": False}, {"id": 44, "value": "north"}]
        },
    },
    {"id": 1003, "patch": {"billing_address": OLD_BILLING}},
    {"id": 1005, "patch": {"email": "keep@x.example"}},
    {"id": 1006, "patch": {"email": "old@x.example", "website": "https://old.example"}},
]
RUN = [
    {"id": 1001, "patch": {"name": "A", "email": "a@x.example"}},
    {"id": 1001, "patch": {"name": "B", "phone": "+1 555 0101"}},
    {"id": 1001, "patch": {"name": "A"}},  # A -> B -> A: the undo restores the first name
    {"id": 1002, "patch": {"custom_fields": {"Partner": True, "Tier": "Gold"}}},
    {
        "id": 1002,
        "patch": {"custom_fields": [{"id": 45, "value": "east"}, {"id": 44, "value": "west"}]},
    },
    {"id": 1003, "patch": {"billing_address": BILLING, "shipping_address": SHIPPING}},
    {"id": 1003, "patch": {"address": "1 Free Text", "country": "France"}},  # not in the list
    {"id": 1004, "patch": {"unique_id": "NEW-1004", "website": "https://x.example"}},
    {"id": 1005, "patch": {"email": "keep@x.example"}},  # unchanged: nothing to undo
    {"id": 1006, "patch": {"email": None, "website": "https://new.example"}},
    {"id": 1002, "patch": {"custom_fields": {"Tier": "Silver", "Partner": True}}},
    {"id": 1004, "patch": {"unique_id": "DEMO-1004"}},  # back to what it was
]


def test_undo_file_restores_every_field_a_run_changed(tmp_path):
    undo = tmp_path / "undo.jsonl"
    with threaded_fake("dualentry", customers=6, **FAST) as (fake, base, _):
        setup = apply(jsonl(tmp_path / "setup.jsonl", SETUP), base, "--rate-limit", "off")
        assert setup.exit_code == 0, setup.output
        snapshot = state(fake)
        result = changes_only(
            jsonl(tmp_path / "run.jsonl", RUN),
            base,
            "--undo-file",
            str(undo),
            "--concurrency",
            "4",
        )
        changed = state(fake)
        undone = apply(undo, base, "--rate-limit", "off")
        restored = state(fake)
    assert result.exit_code == 0, result.output
    assert f"undo: {undo}" in result.stdout
    assert "could not be recorded" not in result.output
    assert changed != snapshot
    assert changed[1001]["name"] == "A"
    assert undone.exit_code == 0, undone.output
    assert restored == snapshot
    records = [json.loads(line) for line in lines_of(undo.read_text())]
    assert all(set(r) == {"id", "patch"} for r in records)
    assert sorted({r["id"] for r in records}) == [1001, 1002, 1003, 1004, 1006]  # 1005: unchanged
    # Only the first value read of each field: 1001's name once, the one before the run.
    assert [r["patch"] for r in records if r["id"] == 1001] == [
        {"name": "Demo Customer 1001", "email": None},
        {"phone": "555 0100"},
    ]


def test_a_provider_showing_the_key_in_customer_data_never_puts_it_in_output_or_files(
    tmp_path,
):
    """A provider that echoes the key into a customer (its name here): the plan, the
    report and the undo file never hold it; the undo says the name cannot be restored."""
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "Fixed", "email": "a@b"}}])
    report, undo = tmp_path / "r.jsonl", tmp_path / "undo.jsonl"
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        fake.customers[1001]["name"] = f"echo {TOKEN}"
        planned = plan(path, base, "--rate-limit", "off")
        as_json = plan(path, base, "--rate-limit", "off", "--format", "json")
        applied = changes_only(path, base, "--report", str(report), "--undo-file", str(undo))
        ended = state(fake)[1001]
    assert planned.exit_code == 0, planned.output
    assert applied.exit_code == 0, applied.output
    assert ended["name"] == "Fixed"
    assert "********" in planned.stdout
    for text in (
        planned.output,
        as_json.output,
        applied.output,
        report.read_text(),
        undo.read_text(),
    ):
        assert TOKEN not in text
        assert TOKEN not in json.dumps(text)
    [restore] = [json.loads(line) for line in lines_of(undo.read_text())]
    assert restore == {"id": 1001, "patch": {"email": None}}  # the name is not restored
    assert "could not be recorded" in applied.output


def test_a_field_the_undo_file_leaves_out_for_the_key_is_not_restored_by_a_later_record(
    tmp_path,
):
    """A then B: the name before the run held the key, so the undo file restores
    no name at all, not the in-between A."""
    records = [{"id": 1001, "patch": {"name": "A"}}, {"id": 1001, "patch": {"name": "B"}}]
    path = jsonl(tmp_path / "u.jsonl", records)
    undo = tmp_path / "undo.jsonl"
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        fake.customers[1001]["name"] = f"echo {TOKEN}"
        applied = changes_only(path, base, "--undo-file", str(undo), "--concurrency", "1")
    assert applied.exit_code == 0, applied.output
    assert undo.read_text() == ""
    assert "the provider shows the token there" in applied.output


@pytest.mark.parametrize("size", [200_000])
def test_a_report_the_command_wrote_with_a_large_value_resumes(tmp_path, size):
    """Before and after of a large address, JSON-escaped (6 bytes a character):
    a report line the command wrote is one --resume reads back."""
    path = jsonl(
        tmp_path / "u.jsonl",
        [{"id": 1001, "patch": {"address": "é" * size}}, {"id": 1001, "patch": {"name": "N"}}],
    )
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        first = changes_only(path, base, "--report", str(report))
        report.write_bytes(report.read_bytes().splitlines(keepends=True)[0])  # as if killed
        resumed = changes_only(path, base, "--resume", str(report))
        name = fake.customers[1001]["name"]
    assert first.exit_code == 0, first.output
    assert resumed.exit_code == 0, resumed.output
    assert name == "N"


def test_masking_the_key_never_touches_what_resume_reads(tmp_path):
    """A short key that happens to be the start of a record's hash: the report
    masks what the provider said, not its own bookkeeping, so it resumes."""
    record = {"id": 1001, "patch": {"name": "N"}}
    path = jsonl(tmp_path / "u.jsonl", [record])
    key = digest(record)[:12]
    report = tmp_path / "r.jsonl"
    args = ["apply", str(path), "--provider", "dualentry", "--changes-only"]
    with threaded_fake("dualentry", customers=1, token=key, **FAST) as (fake, base, _):
        env = {"DUALENTRY_API_KEY": key}
        first = run([*args, "--base-url", base, "--report", str(report)], env=env)
        resumed = run([*args, "--base-url", base, "--resume", str(report)], env=env)
    assert first.exit_code == 0, first.output
    assert report_lines(report)[0]["hash"] == digest(record)
    assert resumed.exit_code == 0, resumed.output


def test_an_existing_undo_file_is_refused_and_left_untouched(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "X"}}])
    undo = tmp_path / "undo.jsonl"
    undo.write_text('{"id": 1001, "patch": {"name": "from an earlier run"}}\n')
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        refused = changes_only(path, base, "--undo-file", str(undo))
        refused_empty = changes_only(path, base, "--undo-file", str(empty))
        sent = patches(fake)
    for result, name in ((refused, undo), (refused_empty, empty)):
        one_line_error(result, f"--undo-file {name} exists", "never replaced")
    assert undo.read_text() == '{"id": 1001, "patch": {"name": "from an earlier run"}}\n'
    assert empty.read_bytes() == b""
    assert sent == []


def test_the_undo_file_may_not_be_the_input_the_report_or_need_no_reading(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "X"}}])
    report = tmp_path / "r.jsonl"
    linked = tmp_path / "linked.jsonl"
    linked.symlink_to(path)
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        same_as_input = changes_only(path, base, "--undo-file", str(path))
        link_to_input = changes_only(path, base, "--undo-file", str(linked))
        same_as_report = changes_only(
            path, base, "--report", str(report), "--undo-file", str(report)
        )
        report.write_text("")
        same_as_resumed = changes_only(
            path,
            base,
            "--resume",
            str(report),
            "--report",
            str(tmp_path / "new.jsonl"),
            "--undo-file",
            str(report),
        )
        # The new report named another way, made only once the run starts.
        new = tmp_path / "new.jsonl"
        (tmp_path / "sub").mkdir()
        (tmp_path / "to-new.jsonl").symlink_to(new)
        new_named_otherwise = [
            changes_only(
                path, base, "--resume", str(report), "--report", str(new), "--undo-file", other
            )
            for other in (
                str(tmp_path / "sub" / ".." / "new.jsonl"),
                str(tmp_path / "to-new.jsonl"),
            )
        ]
        no_reading = apply(path, base, "--undo-file", str(tmp_path / "undo.jsonl"))
        dry = apply(
            path, base, "--dry-run", "--changes-only", "--undo-file", str(tmp_path / "d.jsonl")
        )
        no_folder = changes_only(path, base, "--undo-file", str(tmp_path / "nowhere" / "u.jsonl"))
        sent = patches(fake)
    one_line_error(same_as_input, f"--undo-file {path} is the input file")
    one_line_error(link_to_input, f"--undo-file {linked} is the input file")
    one_line_error(same_as_report, f"--undo-file {report} is the report")
    one_line_error(same_as_resumed, f"--undo-file {report} is the report")
    for result in new_named_otherwise:
        one_line_error(result, "is the report")
    assert not (tmp_path / "new.jsonl").exists()
    one_line_error(no_reading, "--undo-file needs --changes-only")
    one_line_error(dry, "--dry-run reads nothing", "customer-patch plan")
    one_line_error(no_folder, "does not exist")
    assert sent == []
    assert path.read_text() == '{"id": 1001, "patch": {"name": "X"}}\n'
    assert not (tmp_path / "undo.jsonl").exists()
    assert not (tmp_path / "d.jsonl").exists()


# -- --match-on unique_id --------------------------------------------------------------------


@contextmanager
def keyed_fake() -> Iterator[tuple[DualEntryFake, str]]:
    """Customers 1001-1003 (DEMO-1001...), two whose unique ids differ only by case,
    and one with none."""
    with threaded_fake("dualentry", customers=3, **FAST) as (fake, base, _):
        fake.add(id=2001, name="Upper", unique_id="DUP-1")
        fake.add(id=2002, name="Lower", unique_id="dup-1")
        fake.add(id=2003, name="Nameless", unique_id=None)
        yield fake, base


def test_match_on_unique_id_in_a_csv(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text(
        "unique_id,name,email\n"
        "demo-1001,Renamed,\n"  # another case: the same customer
        " DEMO-1002 ,,b@x.example\n"  # spaces around a CSV cell are not part of the key
        "DEMO-1003,Demo Customer 1003,\n"  # unchanged
        "NOPE-1,Ghost,\n"
        "DUP-1,Which one,\n"
        "x&unique_id=DEMO-1001,Injected,\n"  # a key is a value, never a query
    )
    report = tmp_path / "r.jsonl"
    with keyed_fake() as (fake, base):
        result = changes_only(path, base, "--match-on", "unique_id", "--report", str(report))
        sent = sorted((r.path, r.body) for r in patches(fake))
        names = {i: c["name"] for i, c in fake.customers.items()}
    assert result.exit_code == 1, result.output
    assert sent == [
        ("/public/v2/customers/1001/", {"name": "Renamed"}),
        ("/public/v2/customers/1002/", {"email": "b@x.example"}),
    ]
    assert names[2001] == "Upper"
    assert names[2002] == "Lower"
    entries = {e["line"]: e for e in report_lines(report)}
    assert sorted(entries) == [2, 3, 4, 5, 6, 7]
    assert entries[2]["id"] == "demo-1001"
    assert entries[2]["customer"] == 1001
    assert entries[2]["before"] == {"name": "Demo Customer 1001"}
    assert entries[3]["id"] == "DEMO-1002"
    assert entries[4]["changed"] is False
    assert entries[4]["customer"] == 1003
    assert (entries[5]["error"], entries[5]["ok"]) == ("NotFoundError", False)
    assert "no customer has unique_id 'NOPE-1'" in entries[5]["message"]
    assert entries[6]["error"] == "ValidationError"
    assert "matches 2 customers" in entries[6]["message"]
    assert "not a guess" in entries[6]["message"]
    assert entries[7]["error"] == "NotFoundError"
    assert "customer" not in entries[6]
    assert "3 succeeded (1 unchanged: nothing sent); 3 failed; 0 invalid" in result.stdout


def test_match_on_unique_id_in_jsonl_and_in_a_plan(tmp_path):
    records = [
        {"unique_id": "Demo-1003", "patch": {"email": "c@x.example"}},
        {"unique_id": "dup-1", "patch": {"name": "Guess"}},
        {"unique_id": 1001, "patch": {"name": "A number is not a key"}},
        {"id": 1001, "patch": {"name": "An id is not the key asked for"}},
        {"unique_id": "", "patch": {"name": "Empty"}},
    ]
    path = jsonl(tmp_path / "u.jsonl", records)
    with keyed_fake() as (fake, base):
        planned = plan(path, base, "--match-on", "unique_id", "--rate-limit", "off")
        planned_sent = len(patches(fake))
        applied = changes_only(path, base, "--match-on", "unique_id")
        sent = [(r.path, r.body) for r in patches(fake)]
    assert planned_sent == 0
    assert planned.exit_code == 2, planned.output
    assert 'Demo-1003  email: null → "c@x.example"' in lines_of(planned.stdout)
    assert (  # one line, as every line of a plan is
        "dup-1  line 2: unique_id: 'dup-1' matches 2 customers (2001, 2002...): not a guess"
        in lines_of(planned.stdout)
    )
    invalid = lines_of(planned.stderr)
    assert [line.split(":")[0] for line in invalid] == ["line 3", "line 4", "line 5"]
    assert "unique_id: must be a non-empty string" in invalid[0]
    assert "expected {\"unique_id\": ..., \"patch\": {...}}, got ['id', 'patch']" in invalid[1]
    assert lines_of(planned.stdout)[-1].startswith(
        "plan: 1 to change, 0 unchanged, 3 invalid, 0 not found, 1 could not be read;"
    )
    assert applied.exit_code == 2, applied.output
    assert sent == [("/public/v2/customers/1003/", {"email": "c@x.example"})]


def test_match_on_refuses_an_id_column_in_one_line(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("id,unique_id,name\n1001,DEMO-1001,X\n")
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        applied = changes_only(path, base, "--match-on", "unique_id")
        planned = plan(path, base, "--match-on", "unique_id")
        no_key = changes_only(
            jsonl(tmp_path / "n.csv", []), base, "--match-on", "unique_id", "--format", "csv"
        )
        sent = fake.requests
    for result in (applied, planned):
        one_line_error(result, "with --match-on unique_id, an 'id' column would be ambiguous")
    one_line_error(no_key, "a CSV needs a header row with an 'unique_id' column")
    assert sent == []


def test_a_plan_line_cannot_be_forged_by_the_data_it_prints(tmp_path):
    """A key with a line break or a terminal escape (a CRM export can hold anything) is
    printed escaped, on its one line: a plan is read by people deciding to apply it."""
    evil = 'EVIL\n1002  name: "Demo Customer 1002" → "Hijacked"\x1b[2K'
    path = jsonl(tmp_path / "u.jsonl", [{"unique_id": evil, "patch": {"name": "Renamed"}}])
    with keyed_fake() as (fake, base):
        fake.add(id=3001, name="Evil", unique_id=evil)
        result = plan(path, base, "--match-on", "unique_id", "--rate-limit", "off")
    assert result.exit_code == 0, result.output
    printed = lines_of(result.stdout)
    assert len(printed) == 2, printed
    assert printed[0].endswith('name: "Evil" → "Renamed"')
    assert "\x1b" not in result.stdout
    assert not any(line.startswith("1002") for line in printed)


# -- a hostile server -------------------------------------------------------------------------


def test_changes_only_under_injected_faults_reports_each_record_once_and_ends_right(tmp_path):
    """500s, 429s and dropped connections on reads and writes alike: every record gets
    exactly one report line per run, and resuming until done leaves the store with each
    customer's last value (one customer has several records)."""
    customers = list(range(1001, 1031))
    records = [{"id": i, "patch": {"name": f"N{i}"}} for i in customers]
    records += [{"id": i, "patch": {"email": f"e{i}@x.example"}} for i in customers[::3]]
    records += [{"id": 1001, "patch": {"name": "Last"}}]
    records += [{"id": i, "patch": {"name": f"Demo Customer {i}"}} for i in range(1031, 1041)]
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    faults = Faults(rates={"500": 0.25, "429": 0.05, "drop": 0.15}, retry_after=0, seed=12)
    statuses, runs = [], []
    with threaded_fake("dualentry", customers=40, faults=faults, **FAST) as (fake, base, _):
        for attempt in range(6):  # resume until every record is done; bounded
            flag = "--resume" if attempt else "--report"
            before = len(report_lines(report)) if report.exists() else 0
            result = changes_only(path, base, flag, str(report), "--max-consecutive-failures", "0")
            statuses.append(result.exit_code)
            runs.append([e["line"] for e in report_lines(report)[before:]])
            if result.exit_code == 0:
                break
        injected = dict(fake.injected)
        stored = {i: (c["name"], c["email"]) for i, c in fake.customers.items()}
    assert statuses[-1] == 0, (statuses, result.output)
    assert min(injected[kind] for kind in ("500", "429", "drop")) > 0
    assert sorted(runs[0]) == list(range(1, len(records) + 1))  # each record once
    for lines in runs[1:]:
        assert len(lines) == len(set(lines))
    expected = {i: (f"N{i}", "") for i in customers}
    expected.update({i: (f"N{i}", f"e{i}@x.example") for i in customers[::3]})
    expected[1001] = ("Last", "e1001@x.example")
    expected.update({i: (f"Demo Customer {i}", "") for i in range(1031, 1041)})
    assert stored == expected
    done = {e["line"] for e in report_lines(report) if e["ok"]}
    assert done == set(range(1, len(records) + 1))


class RacingList(DualEntryFake):
    """Serves the read of a customer that is being written as it was before the write,
    and answers it only once the write has been answered: what a list read that runs
    alongside the client's own PATCH of the same customer may give."""

    def __init__(self, target: int, **options: Any) -> None:
        super().__init__(**options)
        self.target = target
        self.writing = threading.Event()
        self.snapshot = threading.Event()
        self.written = threading.Event()

    async def patch(self, request):
        if int(request.match_info["id"]) != self.target or self.writing.is_set():
            return await super().patch(request)
        self.writing.set()
        await _until(self.snapshot)  # the list reads the customer before this lands
        response = await super().patch(request)
        self.written.set()
        return response

    async def list_customers(self, request):
        racing = str(self.target) in request.query.getall("id", [])
        if not racing or not self.writing.is_set() or self.snapshot.is_set():
            return await super().list_customers(request)
        response = await super().list_customers(request)
        self.snapshot.set()
        await _until(self.written)
        await asyncio.sleep(0.2)  # the client takes the PATCH's answer first
        return response


def test_a_read_that_races_the_runs_own_write_is_not_trusted(tmp_path):
    """The last record of one read batch (100 records) renames 1001; the first record
    of the next batch names it back.  The next batch is read while the rename is in
    flight: the read shows the old name, so the record looks unchanged; it must be
    compared with what the rename left, and sent, or the file's last value is lost."""
    records = [{"id": 1002, "patch": {"name": "Demo Customer 1002"}}] * 99
    records += [
        {"id": 1001, "patch": {"name": "Renamed"}},
        {"id": 1001, "patch": {"name": "Demo Customer 1001"}},  # the file's last word
    ]
    path = jsonl(tmp_path / "u.jsonl", records)
    fake = RacingList(1001, **FAST)
    fake.seed_demo(2)
    with serving(fake) as base:
        result = changes_only(path, base)
        raced = fake.snapshot.is_set()
        name = fake.customers[1001]["name"]
    assert raced, "the read did not run alongside the write: nothing was tested"
    assert result.exit_code == 0, result.output
    assert name == "Demo Customer 1001"
    assert "101 succeeded (99 unchanged: nothing sent)" in result.stdout


def test_a_record_after_one_the_provider_refused_still_gets_its_undo_line(tmp_path):
    """1001's first record is refused (400: nothing applied), its second is sent whole:
    the undo file must still restore what the second changed."""
    records = [
        {"id": 1001, "patch": {"name": "Refused"}},
        {"id": 1001, "patch": {"email": "second@x.example", "phone": "555 0102"}},
        {"id": 1002, "patch": {"name": "Fine"}},
    ]
    undo = tmp_path / "undo.jsonl"
    fake = ScriptedPatches({1001: [400]}, **FAST)
    fake.seed_demo(2)
    with serving(fake) as base:
        snapshot = state(fake)
        result = changes_only(jsonl(tmp_path / "u.jsonl", records), base, "--undo-file", str(undo))
        changed = state(fake)
        undone = apply(undo, base, "--rate-limit", "off")
        restored = state(fake)
    assert result.exit_code == 1, result.output
    assert changed[1001]["email"] == "second@x.example"
    assert undone.exit_code == 0, undone.output
    assert "could not be recorded" not in result.output
    assert restored == snapshot


def test_a_second_record_setting_a_field_only_the_list_shows_is_undone_too(tmp_path):
    """The billing address (``full_address``) is in the list, not in a customer's own
    answer: after a first record of 1001 was written, its value is still known."""
    records = [
        {"id": 1001, "patch": {"name": "First"}},
        {"id": 1001, "patch": {"billing_address": BILLING}},
    ]
    undo = tmp_path / "undo.jsonl"
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        setup = apply(
            jsonl(tmp_path / "s.jsonl", [{"id": 1001, "patch": {"billing_address": OLD_BILLING}}]),
            base,
            "--rate-limit",
            "off",
        )
        assert setup.exit_code == 0, setup.output
        snapshot = state(fake)
        result = changes_only(jsonl(tmp_path / "u.jsonl", records), base, "--undo-file", str(undo))
        undone = apply(undo, base, "--rate-limit", "off")
        restored = state(fake)
    assert result.exit_code == 0, result.output
    assert "could not be recorded" not in result.output
    assert undone.exit_code == 0, undone.output
    assert restored == snapshot


class AppliedThenFailed(ScriptedPatches):
    """Applies the first PATCHes of some customers, then answers them 500 all the same."""

    async def patch(self, request):
        answers = self.script.get(int(request.match_info["id"]))
        if answers:
            await DualEntryFake.patch(self, request)
            return self.error(answers.pop(0), "applied, then failed")
        return await DualEntryFake.patch(self, request)


def test_after_a_write_that_failed_but_landed_nothing_it_may_have_changed_is_trusted(tmp_path):
    """1001's new billing address lands, but every attempt answers 500: the record
    fails.  The next record is sent whole; the last one puts the old address back,
    which must be sent (the address is unknown since), not skipped as unchanged."""
    records = [
        {"id": 1001, "patch": {"billing_address": BILLING}},
        {"id": 1001, "patch": {"name": "Second"}},
        {"id": 1001, "patch": {"billing_address": OLD_BILLING}},
    ]
    fake = AppliedThenFailed({1001: [500] * 5}, **FAST)
    fake.seed_demo(1)
    fake.customers[1001]["full_address"] = {
        **OLD_BILLING,
        "country": "",
        "second_line": "",
        "name": None,
    }
    with serving(fake) as base:
        result = changes_only(jsonl(tmp_path / "u.jsonl", records), base)
        stored = fake.customers[1001]
    assert result.exit_code == 1, result.output
    assert stored["name"] == "Second"
    assert stored["full_address"]["street"] == OLD_BILLING["street"]


def test_undo_of_one_custom_field_named_once_by_name_and_once_by_id(tmp_path):
    """Partner is field 41: a record setting it by name, then one setting it by id, is
    one field; the undo file must restore its first value, not the second's."""
    records = [
        {"id": 1001, "patch": {"custom_fields": {"Partner": True}}},
        {"id": 1001, "patch": {"custom_fields": [{"id": 41, "value": False}]}},
        {"id": 1002, "patch": {"custom_fields": [{"id": 42, "value": "Acme"}]}},
        {"id": 1002, "patch": {"custom_fields": {"Partner Name": "Other"}}},
    ]
    undo = tmp_path / "undo.jsonl"
    with threaded_fake("dualentry", customers=2, **FAST) as (fake, base, _):
        snapshot = state(fake)
        result = changes_only(jsonl(tmp_path / "u.jsonl", records), base, "--undo-file", str(undo))
        changed = state(fake)
        undone = apply(undo, base, "--rate-limit", "off")
        restored = state(fake)
    assert result.exit_code == 0, result.output
    assert changed[1001]["custom_fields"][41] is False
    assert undone.exit_code == 0, undone.output
    assert restored == snapshot


UNDO_RECORDS = [
    {"id": 1001, "patch": {"name": "One"}},
    {"id": 1002, "patch": {"name": "Two", "email": "two@x.example"}},
    {"id": 1003, "patch": {"name": "Three"}},  # a 403: the run stops here
    {"id": 1002, "patch": {"name": "Two again", "phone": "555 0102"}},
    {"id": 1004, "patch": {"website": "https://four.example"}},
]


def stopped_at_1003(refusals: int = 1) -> ScriptedPatches:
    """A DualEntry fake of four customers whose first ``refusals`` writes to 1003
    are refused (403): a run of UNDO_RECORDS stops there, the rest not attempted."""
    fake = ScriptedPatches({1003: [403] * refusals}, **FAST)
    fake.seed_demo(4)
    return fake


def test_resume_continues_the_undo_file(tmp_path):
    """A 403 on 1003 stops the first run half way (the rest not attempted); the second,
    with --resume, appends to the undo file, which then undoes both runs."""
    path = jsonl(tmp_path / "u.jsonl", UNDO_RECORDS)
    report, undo = tmp_path / "r.jsonl", tmp_path / "undo.jsonl"
    fake = stopped_at_1003()
    with serving(fake) as base:
        snapshot = state(fake)
        common = ["--undo-file", str(undo), "--concurrency", "1"]
        first = changes_only(path, base, "--report", str(report), *common)
        undo_after_first = undo.read_text()
        refused = changes_only(path, base, "--report", str(tmp_path / "r2.jsonl"), *common)
        second = changes_only(path, base, "--resume", str(report), *common)
        undone = apply(undo, base, "--rate-limit", "off")
        restored = state(fake)
    assert first.exit_code == 3, first.output
    assert "PermissionDeniedError" in first.output
    one_line_error(refused, f"--undo-file {undo} exists")
    assert second.exit_code == 0, second.output
    assert undo.read_text().startswith(undo_after_first)
    assert len(lines_of(undo.read_text())) > len(lines_of(undo_after_first))
    assert undone.exit_code == 0, undone.output
    assert restored == snapshot


def test_a_resume_that_would_leave_the_undo_file_short_is_refused(tmp_path):
    """A run writing an undo file, stopped, then resumed without --undo-file (or
    without --changes-only, or with another undo file): the writes of that
    resume had no undo line, and once the run was finished with the right
    flags, the undo file "restored" the values of mid-run, not those before
    it, without a word.  Each is refused before anything is sent; the right
    resume still finishes, and the undo file restores the state before the run."""
    path = jsonl(tmp_path / "u.jsonl", UNDO_RECORDS)
    report, undo = tmp_path / "r.jsonl", tmp_path / "undo.jsonl"
    fake = stopped_at_1003()
    with serving(fake) as base:
        snapshot = state(fake)
        flags = ["--undo-file", str(undo), "--concurrency", "1"]
        first = changes_only(path, base, "--report", str(report), *flags)
        sent = len(fake.requests)
        kept = report.read_text(), undo.read_text()
        forgotten = [
            apply(path, base, "--resume", str(report)),
            changes_only(path, base, "--resume", str(report)),
        ]
        other = changes_only(
            path, base, "--resume", str(report), "--undo-file", str(tmp_path / "other.jsonl")
        )
        # Another run's undo file: its lines would "cover" fields this run
        # changed, and the undo file of neither run would restore them.
        another = tmp_path / "another.jsonl"
        another.write_text('{"id": 1009, "patch": {"name": "Other run"}}\n')
        anothers = changes_only(path, base, "--resume", str(report), "--undo-file", str(another))
        refused_sent = len(fake.requests) - sent
        files_after_refusals = report.read_text(), undo.read_text()
        second = changes_only(path, base, "--resume", str(report), *flags)
        undone = apply(undo, base, "--rate-limit", "off")
        restored = state(fake)
    assert first.exit_code == 3, first.output
    for result in forgotten:
        one_line_error(result, "undo file", "--undo-file", "nothing sent")
    one_line_error(other, "other.jsonl", "does not exist", "nothing sent")
    assert not (tmp_path / "other.jsonl").exists()
    one_line_error(anothers, "another.jsonl", "not the undo file", "nothing sent")
    assert another.read_text() == '{"id": 1009, "patch": {"name": "Other run"}}\n'
    assert refused_sent == 0
    assert files_after_refusals == kept
    assert second.exit_code == 0, second.output
    assert undone.exit_code == 0, undone.output
    assert restored == snapshot


def test_a_torn_last_undo_line_is_cut_off_not_left_in_the_middle(tmp_path):
    """A full disk (or a kill) cut the undo file's last line short, before its
    write was sent.  The resume ended the fragment with a newline: the file
    then held a line that is no line, which `apply` of the undo file counted
    as invalid (exit 2), and which refused every later resume."""
    path = jsonl(tmp_path / "u.jsonl", UNDO_RECORDS)
    report, undo = tmp_path / "r.jsonl", tmp_path / "undo.jsonl"
    fake = stopped_at_1003(refusals=2)
    with serving(fake) as base:
        snapshot = state(fake)
        flags = ["--undo-file", str(undo), "--concurrency", "1", "--report", str(report)]
        first = changes_only(path, base, *flags)
        with undo.open("ab") as f:
            f.write(b'{"id": 1003, "patch": {"na')  # torn: its write was never sent
        second = changes_only(path, base, "--resume", str(report), *flags[:-2])
        third = changes_only(path, base, "--resume", str(report), *flags[:-2])
        undone = apply(undo, base, "--rate-limit", "off")
        restored = state(fake)
    assert (first.exit_code, second.exit_code, third.exit_code) == (3, 3, 0), third.output
    assert all(json.loads(line) for line in lines_of(undo.read_text()))
    assert undone.exit_code == 0, undone.output
    assert restored == snapshot


def test_a_field_its_first_record_could_not_read_is_never_restored_by_a_later_one(tmp_path):
    """A custom field defined after the customer was stored: the customer shows
    no entry for it, so its value before the run is not known, and the first
    record's undo says so.  The second record's undo line then "restored" it
    to the first record's value, which the field never had before the run."""
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, [cid]):
        fake.custom_fields.append(definition(50, "Segment", "text"))
        before = state(fake)
        path = jsonl(
            tmp_path / "u.jsonl",
            [
                {"id": cid, "patch": {"custom_fields": [{"id": 50, "value": "first"}]}},
                {"id": cid, "patch": {"custom_fields": [{"id": 50, "value": "second"}]}},
            ],
        )
        undo = tmp_path / "undo.jsonl"
        result = changes_only(path, base, "--undo-file", str(undo))
        undone = apply(undo, base, "--rate-limit", "off") if undo.exists() else None
        after_undo = state(fake)
    assert result.exit_code == 0, result.output
    assert "cannot restore custom_fields[50] (not read)" in result.output
    assert not undo.exists() or "first" not in undo.read_text()
    assert undone is None or undone.exit_code == 0
    assert after_undo[cid]["custom_fields"].get(50) == "second"  # left as the run left it
    assert before[cid]["custom_fields"].get(50) is None


@pytest.mark.parametrize(
    ("field", "held", "sent"),
    [
        ("phone", "+33 1 23 45 67 89 ext. 12", "555 0100"),
        ("shipping_address", {**BILLING, "state": None}, BILLING),
    ],
    ids=["a phone off the pattern", "an address with a null member"],
)
def test_a_value_read_that_the_client_would_refuse_is_named_not_written_to_undo(
    tmp_path, field, held, sent
):
    """The provider holds a value its own spec refuses (set some other way):
    the undo line restoring it was written, and applying the undo file then
    refused that line (exit 2), at the moment the operator needs it.  The run
    names the field it cannot restore instead, and the file applies."""
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, [cid]):
        fake.customers[cid][field] = held
        fake.customers[cid]["name"] = "Before"
        path = jsonl(tmp_path / "u.jsonl", [{"id": cid, "patch": {field: sent, "name": "After"}}])
        undo = tmp_path / "undo.jsonl"
        result = changes_only(path, base, "--undo-file", str(undo))
        undone = apply(undo, base, "--rate-limit", "off")
        restored = fake.customers[cid]["name"], fake.customers[cid][field]
    assert result.exit_code == 0, result.output
    assert f"the undo file cannot restore {field} (" in result.output
    assert "1 field(s) could not be recorded" in result.output
    assert undone.exit_code == 0, undone.output
    assert restored[0] == "Before"


@pytest.mark.parametrize("content", [b"id,name\n1001,Alice", b"one line, no end"])
def test_a_file_refused_as_an_undo_file_is_left_as_it_was(tmp_path, content):
    """Another file given by mistake as the undo file of a resume: its last line,
    without a line end, was cut off as a torn undo line before the file was
    found not to be an undo file at all."""
    path = jsonl(tmp_path / "u.jsonl", UNDO_RECORDS)
    report, undo = tmp_path / "r.jsonl", tmp_path / "undo.jsonl"
    customers = tmp_path / "customers.csv"
    customers.write_bytes(content)
    fake = stopped_at_1003()
    with serving(fake) as base:
        flags = ["--concurrency", "1", "--report", str(report)]
        first = changes_only(path, base, "--undo-file", str(undo), *flags)
        mistaken = changes_only(path, base, "--resume", str(report), "--undo-file", str(customers))
    assert first.exit_code == 3, first.output
    one_line_error(mistaken, "customers.csv:1: not a line of an undo file")
    assert customers.read_bytes() == content


def test_a_value_the_client_refuses_costs_the_undo_line_only_that_field(tmp_path):
    """A problem of the whole patch (a lone surrogate, which no JSON can carry)
    or of its custom fields as a whole marked every field of the line refused,
    and done with: the valid name and custom field were never restored."""
    undo = UndoFile(
        tmp_path / "undo.jsonl", resume=False, check=_problems_of(get_adapter("dualentry"))
    )
    before = Customer(
        provider="dualentry",
        id=1001,
        name="Before",
        email="a\ud800@b.example",
        custom_fields={"Tier": "Gold", "Score": math.nan},
    )
    sent = CustomerPatch(
        name="After", email="x@y.example", custom_fields={"Tier": "Silver", "Score": 1}
    )
    refused = undo.add(before, sent)[2]
    undo.close()
    assert refused == ("custom_fields['Score']", "email")
    [line] = lines_of((tmp_path / "undo.jsonl").read_text())
    assert CustomerPatch.from_dict(json.loads(line)["patch"]) == CustomerPatch(
        name="Before", custom_fields={"Tier": "Gold"}
    )


def test_records_the_provider_refused_do_not_keep_a_resume_from_its_undo_file(tmp_path):
    """A run without an undo file whose only sends were refused outright (a 404,
    then the 403 that stopped it) changed nothing: a resume may begin one."""
    records = [{"id": 9999, "patch": {"name": "Ghost"}}, *UNDO_RECORDS]
    path = jsonl(tmp_path / "u.jsonl", records)
    report, undo = tmp_path / "r.jsonl", tmp_path / "undo.jsonl"
    fake = ScriptedPatches({1001: [403]}, **FAST)
    fake.seed_demo(4)
    with serving(fake) as base:
        snapshot = state(fake)
        first = changes_only(path, base, "--report", str(report), "--concurrency", "1")
        second = changes_only(
            path, base, "--resume", str(report), "--undo-file", str(undo), "--concurrency", "1"
        )
        undone = apply(undo, base, "--rate-limit", "off")
        restored = state(fake)
    assert first.exit_code == 3, first.output
    assert second.exit_code == 1, second.output  # 9999 is still not found
    assert undone.exit_code == 0, undone.output
    assert restored == snapshot


def test_a_resume_with_an_undo_file_of_a_run_that_had_none_is_refused(tmp_path):
    """The records the first run sent without an undo file changed customers
    whose values before the run nobody read: an undo file begun on the resume
    would restore the values they left, as if they were the ones before."""
    path = jsonl(tmp_path / "u.jsonl", UNDO_RECORDS)
    report, undo = tmp_path / "r.jsonl", tmp_path / "undo.jsonl"
    fake = stopped_at_1003()
    with serving(fake) as base:
        first = changes_only(path, base, "--report", str(report), "--concurrency", "1")
        sent = len(fake.requests)
        resumed_with_undo = changes_only(
            path, base, "--resume", str(report), "--undo-file", str(undo)
        )
        refused_sent = len(fake.requests) - sent
    assert first.exit_code == 3, first.output
    one_line_error(resumed_with_undo, "without an undo file", "nothing sent")
    assert refused_sent == 0
    assert not undo.exists()


@pytest.mark.parametrize(
    ("status", "sent"), [(422, False), (404, False), (303, True), (500, True)]
)
def test_only_a_4xx_at_the_one_attempt_counts_as_nothing_changed(tmp_path, status, sent):
    """A report line failed at its one attempt: a 4xx changed nothing, but a redirect
    (never followed) or a 5xx may have, so a resume with an undo file, which would
    restore what that line left, is refused."""
    history = History()
    history.add(
        {"line": 1, "id": 1001, "to": "dualentry x", "ok": False, "attempts": 1,
         "status": status, "hash": "ab"}
    )  # fmt: skip
    refusal = history.undo_refusal(tmp_path / "undo.jsonl")
    assert (refusal is not None) is sent, refusal


def _matched(path, base, *extra):
    return apply(path, base, "--rate-limit", "off", "--match-on", "unique_id", *extra)


def _run_then_resume(tmp_path, records, fake, *extra):
    """``records`` applied with --match-on to ``fake`` (seeded with 2 customers),
    then resumed: both results, the customers after the first run, and the
    requests the resume sent."""
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    fake.seed_demo(2)
    with serving(fake) as base:
        first = _matched(path, base, "--report", str(report), *extra)
        after_first = copy.deepcopy(fake.customers)
        sent = len(fake.requests)
        resumed = _matched(path, base, "--resume", str(report), *extra)
        resent = len(fake.requests) - sent
    return first, resumed, after_first, resent


def test_a_resume_follows_a_customer_under_every_key_it_had(tmp_path):
    """A customer renamed away and back: a record it failed (a 5xx, which may
    have landed) was sent again on resume, but its later records, named by the
    other key, were taken for another customer's and skipped: the older name
    landed last (a red team's find)."""
    records = [
        {"unique_id": "DEMO-1001", "patch": {"name": "first"}},
        {"unique_id": "DEMO-1001", "patch": {"unique_id": "TMP-1001"}},
        {"unique_id": "TMP-1001", "patch": {"name": "second"}},
        {"unique_id": "TMP-1001", "patch": {"unique_id": "DEMO-1001"}},
    ]
    fake = ScriptedPatches({1001: [501]}, limits=())
    first, resumed, after_first, resent = _run_then_resume(tmp_path, records, fake)
    assert first.exit_code == 1, first.output
    assert resumed.exit_code == 0, resumed.output
    customer = fake.customers[1001]
    assert (customer["name"], customer["unique_id"]) == ("second", "DEMO-1001")


def test_a_resume_that_would_look_a_key_up_after_it_moved_is_refused(tmp_path):
    """Two customers swap keys through a third; the first record failed (a 5xx).
    Sent again on resume, it would look its key up again, now another
    customer's, and write there: refused, nothing sent."""
    records = [
        {"unique_id": "DEMO-1001", "patch": {"name": "meant for 1001"}},
        {"unique_id": "DEMO-1001", "patch": {"unique_id": "TMP"}},
        {"unique_id": "DEMO-1002", "patch": {"unique_id": "DEMO-1001"}},
        {"unique_id": "TMP", "patch": {"unique_id": "DEMO-1002"}},
    ]
    fake = ScriptedPatches({1001: [501]}, limits=())
    first, resumed, after_first, resent = _run_then_resume(tmp_path, records, fake)
    assert first.exit_code == 1, first.output
    one_line_error(resumed, "line 1", "'DEMO-1001'", "line 3", "nothing sent")
    assert resent == 0
    assert fake.customers == after_first


def test_file_names_the_summary_and_hints_print_cannot_forge_lines(tmp_path):
    """A report or undo file named with a line break and a terminal escape was
    printed raw in the hint to resume and in the summary's undo line: three
    lines for one, and the escape reached the terminal."""
    odd = "\x1b[2J\nall done: 0 failed\n"
    report, undo = tmp_path / f"r{odd}.jsonl", tmp_path / f"u{odd}.jsonl"
    missing = jsonl(
        tmp_path / "m.jsonl", [{"id": 9001 + n, "patch": {"name": "X"}} for n in range(3)]
    )
    one = jsonl(tmp_path / "o.jsonl", [{"id": 1001, "patch": {"name": "New"}}])
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        stopped = run(  # a key the provider refuses stops the run
            [*("apply", str(missing), "--provider", "dualentry", "--base-url", base)]
            + ["--rate-limit", "off", "--report", str(report)],
            env={"DUALENTRY_API_KEY": "not-the-key"},
        )
        undone = changes_only(one, base, "--undo-file", str(undo))
    assert "continue with --resume" in stopped.stderr, stopped.output
    assert "undo: " in undone.stdout, undone.output
    for result in (stopped, undone):
        assert "\x1b" not in result.output
        assert not [line for line in result.output.splitlines() if line.startswith("all done")]


class ScriptedLookups(DualEntryFake):
    """Refuses (400) the first lookup of some unique_ids, then behaves."""

    def __init__(self, refuse, **options):
        super().__init__(**options)
        self.refuse = set(refuse)

    async def list_customers(self, request):
        key = request.query.get("unique_id__iexact") or request.query.get("unique_id")
        if key in self.refuse:
            self.refuse.discard(key)
            return self.error(400, "scripted refusal")
        return await super().list_customers(request)


def test_a_resume_whose_unmatched_record_names_a_key_given_away_since_is_refused(tmp_path):
    """The record whose lookup failed has no customer in the report; sent again,
    its key, given to another customer since, found that one (the reviewer's
    find: 1002 got the name meant for 1001)."""
    records = [
        {"unique_id": "DEMO-1001", "patch": {"unique_id": "TMP"}},  # 1001 holds TMP
        {"unique_id": "TMP", "patch": {"name": "meant for 1001"}},  # its lookup fails
        {"unique_id": "TMP", "patch": {"unique_id": "OLD-1001"}},  # 1001 lets TMP go
        {"unique_id": "DEMO-1002", "patch": {"unique_id": "TMP"}},  # 1002 takes it
    ]
    fake = ScriptedLookups({"TMP"}, limits=())
    first, resumed, after_first, resent = _run_then_resume(
        tmp_path, records, fake, "--concurrency", "1"
    )
    assert first.exit_code == 1, first.output
    one_line_error(resumed, "line 2", "'TMP'", "line 4", "nothing sent")
    assert fake.customers == after_first


class FailsOnName(DualEntryFake):
    """Answers 501 to the first PATCH that sets ``name`` to ``name`` (applying nothing)."""

    def __init__(self, name, **options):
        super().__init__(**options)
        self.fail_name = name

    async def patch(self, request):
        if self.fail_name is not None and (await request.json()).get("name") == self.fail_name:
            self.fail_name = None
            return self.error(501, "scripted")
        return await super().patch(request)


def test_a_key_given_away_before_the_record_is_no_reason_to_refuse_a_resume(tmp_path):
    """The key moved to another customer before the record to send again, which
    that customer matched: looked up again, it finds the same one."""
    records = [
        {"unique_id": "DEMO-1001", "patch": {"unique_id": "OLD"}},  # 1001 drops the key
        {"unique_id": "DEMO-1002", "patch": {"unique_id": "DEMO-1001"}},  # 1002 takes it
        {"unique_id": "DEMO-1001", "patch": {"name": "x"}},  # 1002; a 501
    ]
    fake = FailsOnName("x", limits=())
    first, resumed, after_first, resent = _run_then_resume(
        tmp_path, records, fake, "--concurrency", "1"
    )
    assert first.exit_code == 1, first.output
    assert resumed.exit_code == 0, resumed.output
    assert (fake.customers[1002]["name"], fake.customers[1002]["unique_id"]) == ("x", "DEMO-1001")


def test_a_resume_checks_the_keys_of_the_records_it_sends_again_though_done(tmp_path):
    """A record sent again takes every later record of its customer with it,
    done or not: line 2, sent again, gives 1001 the key line 5 gave 1002 since,
    and the older name landed (a red team's find; the check had looked at the
    records not done only)."""
    records = [
        {"unique_id": "DEMO-1001", "patch": {"name": "a"}},  # a 501
        {"unique_id": "DEMO-1001", "patch": {"unique_id": "K"}},
        {"unique_id": "K", "patch": {"name": "b"}},
        {"unique_id": "K", "patch": {"unique_id": "DEMO-1001"}},
        {"unique_id": "DEMO-1002", "patch": {"unique_id": "K"}},  # K: 1002's since
    ]
    fake = FailsOnName("a", limits=())
    first, resumed, after_first, resent = _run_then_resume(
        tmp_path, records, fake, "--concurrency", "1"
    )
    assert first.exit_code == 1, first.output
    one_line_error(resumed, "line 2", "'K'", "line 5", "nothing sent")
    assert fake.customers == after_first


# -- careless operators: refusals that must leave every file as it was -------------------------


def test_a_refused_undo_file_leaves_the_report_alone(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "X"}}])
    undo = tmp_path / "undo.jsonl"
    undo.write_text("")
    old_report = tmp_path / "old.jsonl"
    old_report.write_text('{"line": 1, "id": 1001, "ok": true, "attempts": 1, "hash": "ab"}\n')
    new_report = tmp_path / "new.jsonl"
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        overwriting = changes_only(
            path, base, "--undo-file", str(undo), "--report", str(old_report), "--overwrite-report"
        )
        creating = changes_only(path, base, "--undo-file", str(undo), "--report", str(new_report))
        sent = fake.requests
    for result in (overwriting, creating):
        one_line_error(result, f"--undo-file {undo} exists")
    assert old_report.read_text() == (
        '{"line": 1, "id": 1001, "ok": true, "attempts": 1, "hash": "ab"}\n'
    )
    assert not new_report.exists()  # or the next run is refused for it
    assert sent == []


def test_a_refused_undo_file_leaves_no_new_report_behind(tmp_path):
    """An undo file that is not one: the run is refused, and left the empty new
    report it had created, which the same command then refused ("exists")."""
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "X"}}])
    undo = tmp_path / "undo.jsonl"
    undo.write_text("garbage\n")
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    old.write_text("")
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        result = changes_only(
            path, base, "--resume", str(old), "--report", str(new), "--undo-file", str(undo)
        )
        sent = fake.requests
    one_line_error(result, f"{undo}:1: not a line of an undo file")
    assert not new.exists()
    assert sent == []


def test_a_run_refused_before_sending_leaves_no_undo_file_behind(tmp_path):
    """--strict refuses a file with an invalid line: once the line is fixed, the same
    command must run, not be refused for an (empty) undo file of the refused run."""
    records = [{"id": 1001, "patch": {"name": "X"}}, {"id": 1001, "patch": {"phone": "call me"}}]
    path = jsonl(tmp_path / "u.jsonl", records)
    undo = tmp_path / "undo.jsonl"
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        strict = changes_only(path, base, "--strict", "--undo-file", str(undo))
        left_behind = undo.exists()
        jsonl(path, records[:1])
        again = changes_only(path, base, "--strict", "--undo-file", str(undo))
    assert strict.exit_code == 2, strict.output
    assert not left_behind
    assert again.exit_code == 0, again.output
    assert json.loads(undo.read_text()) == {"id": 1001, "patch": {"name": "Demo Customer 1001"}}


def test_dry_run_with_match_on_says_which_customer_and_does_not_crash(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", [{"unique_id": "DEMO-1001", "patch": {"name": "New"}}])
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        compact = apply(path, base, "--dry-run", "--match-on", "unique_id")
        verbose = apply(path, base, "--dry-run", "--verbose", "--match-on", "unique_id")
        sent = fake.requests
    assert sent == []
    for result in (compact, verbose):
        assert result.exit_code == 0, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "unique_id 'DEMO-1001'" in result.stdout
        assert "dry run: 1 request(s) would be sent, 0 invalid line(s); nothing sent" in (
            result.stdout
        )
    # Never a URL that looks like the request: the id is not known until the run reads it.
    assert f"PATCH {base} " not in compact.stdout
    assert "X-API-KEY: ********" in verbose.stdout


# -- signals during the read phase ---------------------------------------------------------------


def _start(args, base):
    return subprocess.Popen(
        [*CLI, *args, "--provider", "dualentry", "--base-url", base],
        env={**os.environ, "DUALENTRY_API_KEY": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _signalled_once_held(args, base, fake: _Holding, signum):
    """Run the command; once ``fake`` holds an answer, send it ``signum``; wait for
    it to end, then release the fake.  Returns the process and its stderr."""
    proc = _start(args, base)
    try:
        wait_until(lambda: fake.held.is_set() or proc.poll() is not None, "an answer held")
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=HANG_GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
        fake.release()
    return proc, stderr


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize(
    ("command", "signum", "status"),
    [
        ("plan", signal.SIGINT, 130),
        ("plan", signal.SIGTERM, 143),
        ("apply", signal.SIGINT, 130),
        ("apply", signal.SIGTERM, 143),
    ],
)
def test_a_signal_while_reading_ends_promptly_and_cleanly(tmp_path, command, signum, status):
    """The list read is held by the fake: the command is in its read phase for sure
    when the signal comes; it must end with its status, its message, no traceback,
    no write sent, and a report that a resume completes."""
    records = [{"id": i, "patch": {"name": f"N{i}"}} for i in range(1001, 1011)]
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    extra = ["--changes-only", "--report", str(report)] if command == "apply" else []
    fake = HeldReads(**FAST)
    fake.seed_demo(10)
    with serving(fake) as base:
        proc, stderr = _signalled_once_held(
            [command, str(path), "--rate-limit", "off", *extra], base, fake, signum
        )
        sent = patches(fake)
        reported = report_lines(report) if report.exists() else None
        resumed = None
        if command == "apply":
            resumed = changes_only(path, base, "--resume", str(report))
            names = {i: fake.customers[i]["name"] for i in range(1001, 1011)}
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr
    assert sent == []
    if command == "plan":
        assert stderr == "interrupted; nothing was sent\n"
        return
    assert stderr == f"interrupted after 0 records; continue with --resume {report}\n"
    assert reported == []
    assert resumed is not None
    assert resumed.exit_code == 0, resumed.output
    assert names == {i: f"N{i}" for i in range(1001, 1011)}


class AppliedThenSilent(DualEntryFake):
    """Applies the first PATCH of ``target``, then never answers it (until released)."""

    def __init__(self, target: int, **options: Any) -> None:
        super().__init__(**options)
        self.target = target
        self.applied = threading.Event()
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()

    async def patch(self, request):
        if int(request.match_info["id"]) != self.target or self.applied.is_set():
            return await super().patch(request)
        await super().patch(request)
        self.applied.set()
        await _until(self.released)
        return self.error(503, "gone")


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_undo_survives_a_kill_while_a_write_is_in_flight(tmp_path):
    records = [
        {"id": i, "patch": {"name": f"N{i}", "email": f"e{i}@x.example"}} for i in (1001, 1002)
    ]
    path = jsonl(tmp_path / "u.jsonl", records)
    report, undo = tmp_path / "r.jsonl", tmp_path / "undo.jsonl"
    fake = AppliedThenSilent(1001, **FAST)
    fake.seed_demo(2)
    with serving(fake) as base:
        snapshot = state(fake)
        args = ["apply", str(path), "--changes-only", "--rate-limit", "off"]
        proc = _start([*args, "--report", str(report), "--undo-file", str(undo)], base)
        try:
            wait_until(lambda: fake.applied.is_set() or proc.poll() is not None, "the write")
            wait_until(lambda: len(report_lines(report)) == 1 or proc.poll() is not None, "1002")
            proc.kill()
            proc.communicate(timeout=HANG_GUARD)
        finally:
            if proc.poll() is None:
                proc.kill()
        fake.release()
        resumed = changes_only(path, base, "--resume", str(report), "--undo-file", str(undo))
        undone = apply(undo, base, "--rate-limit", "off")
        restored = state(fake)
    assert resumed.exit_code == 0, resumed.output
    assert undone.exit_code == 0, undone.output
    assert restored == snapshot


# -- a custom field the provider's definitions refuse is an invalid record ----------------

REFUSED_FIELD = [
    {"id": 1001, "patch": {"name": "One"}},
    {"id": 1002, "patch": {"custom_fields": {"Nope": 1}}},
    {"id": 1003, "patch": {"name": "Three"}},
]
REFUSED_LINE = (
    "line 2: dualentry: no active customer custom field is named 'Nope'; nothing was sent"
)


def test_apply_counts_a_custom_field_the_definitions_refuse_as_an_invalid_line(tmp_path):
    """Found before anything is sent, from the input alone: the line is invalid (exit 2),
    said with its number on standard error, as a line the reader refuses is; the rest of
    the run goes on.  It was a failed record (exit 1), named nowhere but the report."""
    path = jsonl(tmp_path / "u.jsonl", REFUSED_FIELD)
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=3, **FAST) as (fake, base, _):
        result = apply(path, base, "--rate-limit", "off", "--report", str(report))
        sent = sorted(r.path for r in patches(fake))
    assert result.exit_code == 2, result.output
    assert lines_of(result.stderr) == [REFUSED_LINE]
    assert "2 succeeded; 0 failed; 1 invalid (1 UnknownCustomFieldError)" in result.stdout
    assert sent == ["/public/v2/customers/1001/", "/public/v2/customers/1003/"]
    refused = [r for r in report_lines(report) if not r["ok"]]
    assert [(r["line"], r["error"]) for r in refused] == [(2, "UnknownCustomFieldError")]


def test_strict_checks_custom_fields_against_the_definitions_before_sending_anything(
    tmp_path,
):
    """--strict sends nothing if any line is invalid: a name the definitions do not have
    makes a line invalid, so the definitions are read before the first write."""
    path = jsonl(tmp_path / "u.jsonl", REFUSED_FIELD)
    with threaded_fake("dualentry", customers=3, **FAST) as (fake, base, _):
        result = apply(path, base, "--rate-limit", "off", "--strict")
        sent = patches(fake)
        asked = {(r.method, r.path.split("?")[0]) for r in fake.requests}
    assert result.exit_code == 2, result.output
    assert sent == []
    assert asked == {("GET", "/public/v2/custom-fields/")}
    assert lines_of(result.stderr) == [
        REFUSED_LINE,
        "error: 1 invalid line(s); --strict sends nothing",
    ]


@pytest.mark.parametrize("strict", [False, True])
def test_a_line_whose_key_matches_nothing_and_whose_fields_are_refused_is_invalid(
    tmp_path, strict
):
    """The same line was "not found" (failed, exit 1) in a plain run and invalid
    (exit 2) under --strict: its own problem is what both now say."""
    records = [{"unique_id": "nobody", "patch": {"custom_fields": {"Nope": 1}}}]
    path = jsonl(tmp_path / "u.jsonl", records)
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        result = apply(
            path,
            base,
            "--match-on",
            "unique_id",
            "--rate-limit",
            "off",
            *(["--strict"] if strict else []),
        )
        sent = patches(fake)
    assert sent == []
    assert result.exit_code == 2, result.output
    assert (
        "line 1: dualentry: no active customer custom field is named 'Nope'; nothing was sent"
        in lines_of(result.stderr)
    )


def test_strict_with_custom_fields_it_cannot_check_sends_nothing(tmp_path):
    """The definitions cannot be read (a key the provider refuses): --strict cannot
    know every line is valid, so it sends nothing and says why in one line."""
    path = jsonl(tmp_path / "u.jsonl", REFUSED_FIELD)
    with threaded_fake("dualentry", customers=3, **FAST) as (fake, base, _):
        result = run(
            ["apply", str(path), "--provider", "dualentry", "--base-url", base, "--strict"],
            env={"DUALENTRY_API_KEY": "not-the-key"},
        )
        sent = patches(fake)
    assert sent == []
    assert result.exit_code == 3, result.output
    errors = lines_of(result.stderr)
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: the custom field definitions could not be read")
    assert "PermissionDeniedError" in errors[0]
    assert errors[0].endswith("--strict sends nothing")
    assert "not-the-key" not in result.output


def test_strict_with_valid_custom_fields_sends_every_line(tmp_path):
    records = [
        {"id": 1001, "patch": {"custom_fields": {"Tier": "Gold"}}},
        {"id": 1002, "patch": {"name": "Two"}},
    ]
    path = jsonl(tmp_path / "u.jsonl", records)
    with threaded_fake("dualentry", customers=2, **FAST) as (fake, base, _):
        result = apply(path, base, "--rate-limit", "off", "--strict")
        sent = len(patches(fake))
    assert result.exit_code == 0, result.output
    assert sent == 2


def test_plan_counts_a_custom_field_the_definitions_refuse_as_an_invalid_line(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", REFUSED_FIELD)
    with threaded_fake("dualentry", customers=3, **FAST) as (fake, base, _):
        text = plan(path, base, "--rate-limit", "off")
        as_json = plan(path, base, "--rate-limit", "off", "--format", "json")
    assert text.exit_code == 2, text.output
    assert lines_of(text.stderr) == [REFUSED_LINE]
    assert lines_of(text.stdout)[-1] == _summary(2, 0, 1, pace=float("inf"))
    assert as_json.exit_code == 2, as_json.output
    records = [json.loads(line) for line in lines_of(as_json.stdout)]
    assert {"line": 2, "id": 1002, "invalid": REFUSED_LINE.split(": ", 1)[1]} in records
    assert records[-1]["summary"]["invalid"] == 1


def test_dry_run_says_it_does_not_check_custom_field_names(tmp_path):
    """--dry-run reads nothing, so it cannot know the provider's custom fields: it says
    so, and where they are checked, instead of calling such a line fine."""
    path = jsonl(tmp_path / "u.jsonl", REFUSED_FIELD)
    result = apply(path, "http://127.0.0.1:9", "--dry-run")
    assert result.exit_code == 0, result.output
    assert lines_of(result.stdout)[-1] == (
        "dry run: 3 request(s) would be sent, 0 invalid line(s); nothing sent "
        "(1 line sets custom fields, which `plan` checks against the provider's "
        "definitions; a dry run reads nothing)"
    )


@pytest.mark.parametrize(
    ("custom_fields", "why"),
    [
        ({"Tier": "Platinum"}, "custom_fields['Tier']: must be one of"),
        ({"Region": "north"}, "custom_fields['Region']: is the name of 2 fields; use an id"),
    ],
)
def test_apply_counts_a_custom_field_value_the_definitions_refuse_as_invalid(
    tmp_path, custom_fields, why
):
    records = [{"id": 1001, "patch": {"custom_fields": custom_fields}}]
    path = jsonl(tmp_path / "u.jsonl", records)
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        result = apply(path, base, "--rate-limit", "off")
        sent = patches(fake)
    assert sent == []
    assert result.exit_code == 2, result.output
    [said] = lines_of(result.stderr)
    assert said.startswith(f"line 1: {why}"), said
    assert said.endswith("(nothing sent)")
    assert "0 succeeded; 0 failed; 1 invalid (1 ValidationError)" in result.stdout


class HeldDefinitions(_Holding):
    """Holds every custom-field definitions read."""

    async def list_custom_fields(self, request):
        await self._hold()
        return await super().list_custom_fields(request)


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_the_strict_check_ends_as_one_before_sending(tmp_path, signum, status):
    """It said "interrupted after 0 records; continue with --resume" and left the
    (empty) undo file behind, so the same command was refused on the next try."""
    path = jsonl(tmp_path / "u.jsonl", REFUSED_FIELD)
    report, undo = tmp_path / "r.jsonl", tmp_path / "undo.jsonl"
    fake = HeldDefinitions(**FAST)
    fake.seed_demo(3)
    args = ["apply", str(path), "--rate-limit", "off", "--strict", "--changes-only"]
    args += ["--report", str(report), "--undo-file", str(undo)]
    with serving(fake) as base:
        proc, stderr = _signalled_once_held(args, base, fake, signum)
        sent = patches(fake)
    assert proc.returncode == status, stderr
    assert sent == []
    assert stderr == "interrupted before anything was sent\n"
    assert not undo.exists()
    assert not report.exists()  # created by this run, and left empty: removed


class EchoingRefusal(DualEntryFake):
    """Refuses the definitions read with a message that tries to forge output."""

    async def list_custom_fields(self, request):
        message = "nope\x1b[2J\nline 2: forged :fire: [bold]x[/bold]"
        return web.json_response({"success": False, "errors": {"__all__": [message]}}, status=400)


def test_a_definitions_refusal_is_printed_on_one_line_as_it_is(tmp_path):
    """The provider's text reached the terminal raw: an escape sequence, a line
    break that forged a `line 2:` line, and `:fire:` turned into an emoji."""
    path = jsonl(tmp_path / "u.jsonl", REFUSED_FIELD)
    fake = EchoingRefusal(**FAST)
    fake.seed_demo(3)
    with serving(fake) as base:
        strict = apply(path, base, "--rate-limit", "off", "--strict")
        plain = apply(path, base, "--rate-limit", "off")
    assert strict.exit_code == 3, strict.output
    [said] = lines_of(strict.stderr)
    assert "nope\\x1b[2J\\nline 2: forged :fire: [bold]x[/bold]" in said
    assert plain.exit_code == 1, plain.output  # the read failed: not the line's fault


def test_strict_with_resume_checks_only_the_lines_it_will_send(tmp_path):
    """A line the report shows as done is skipped by --resume: --strict refused the
    run for it (its custom field since made inactive), and read the definitions for
    nothing when no line left to send sets one."""
    records = [
        {"id": 1001, "patch": {"custom_fields": {"Tier": "Gold"}}},
        {"id": 9999, "patch": {"name": "Ghost"}},
    ]
    path = jsonl(tmp_path / "u.jsonl", records)
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        first = apply(path, base, "--rate-limit", "off", "--report", str(report))
        for definition in fake.custom_fields:
            if definition["name"] == "Tier":
                definition["is_active"] = False
        asked = len(fake.requests)
        again = apply(path, base, "--rate-limit", "off", "--resume", str(report), "--strict")
        read = [r.path for r in fake.requests[asked:] if "custom-fields" in r.path]
    assert first.exit_code == 1, first.output
    assert again.exit_code == 1, again.output  # 9999 fails again; line 1 is skipped
    assert "1 skipped (done before)" in again.stdout
    assert read == []


def test_strict_names_every_invalid_line_the_file_and_the_definitions_find(tmp_path):
    """A line the reader refuses stopped --strict before the definitions were read:
    the operator fixed it, ran again, and met the next."""
    records = [
        {"id": 1001, "patch": {"name": 5}},
        {"id": 1002, "patch": {"custom_fields": {"Nope": 1}}},
    ]
    path = jsonl(tmp_path / "u.jsonl", records)
    with threaded_fake("dualentry", customers=2, **FAST) as (fake, base, _):
        result = apply(path, base, "--rate-limit", "off", "--strict")
        sent = patches(fake)
    assert sent == []
    assert result.exit_code == 2, result.output
    assert lines_of(result.stderr) == [
        "line 1: patch.name: expected str, got int (nothing sent)",
        REFUSED_LINE,
        "error: 2 invalid line(s); --strict sends nothing",
    ]


def test_progress_counts_invalid_lines_apart_from_failed_ones(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", REFUSED_FIELD)
    with threaded_fake("dualentry", customers=3, **FAST) as (fake, base, _):
        result = apply(path, base, "--rate-limit", "off")
    progress = [line for line in lines_of(result.stdout) if line.startswith("dualentry: ")]
    assert progress[-1].startswith("dualentry: 3/3 done, 0 failed, 1 invalid, "), progress


def test_a_field_the_undo_file_left_out_stays_out_across_a_resume(tmp_path):
    """As above, with a resume between A and B: the undo file knew which fields it
    had left out only in memory, so the resumed run recorded the in-between A as
    the name to restore.  What the report says each sent record changed is done with."""
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps({"id": 1001, "patch": {"name": "A"}}) + "\n")
    report, undo = tmp_path / "r.jsonl", tmp_path / "undo.jsonl"
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        fake.customers[1001]["name"] = f"echo {TOKEN}"
        first = changes_only(path, base, "--undo-file", str(undo), "--report", str(report))
        with path.open("a") as more:  # lines added at the end: new records for a resume
            more.write(json.dumps({"id": 1001, "patch": {"name": "B"}}) + "\n")
        resumed = changes_only(path, base, "--undo-file", str(undo), "--resume", str(report))
        name = fake.customers[1001]["name"]
    assert first.exit_code == 0, first.output
    assert resumed.exit_code == 0, resumed.output
    assert name == "B"
    assert undo.read_text() == ""


class RefusingWithEscapes(DualEntryFake):
    """Refuses every write with a 401 whose message tries to forge output."""

    async def patch(self, request):
        detail = "nope \x1b[2J\x1b]0;pwned\x07\nerror: forged line"
        return web.json_response({"detail": detail}, status=401)


@pytest.mark.parametrize("extra", [[], ["--changes-only"]])
def test_the_stopped_line_prints_the_providers_text_on_one_line(tmp_path, extra):
    """A 401 stops the run, and the `stopped:` line quoted the provider's message
    raw: terminal escapes, and a line break forging an `error:` line."""
    path = jsonl(tmp_path / "u.jsonl", REFUSED_FIELD[:1])
    fake = RefusingWithEscapes(**FAST)
    fake.seed_demo(1)
    with serving(fake) as base:
        result = apply(path, base, "--rate-limit", "off", *extra)
    assert result.exit_code == 3, result.output
    [stopped] = [line for line in lines_of(result.stderr) if line.startswith("stopped: ")]
    assert "\x1b" not in result.stderr
    assert "nope \\x1b[2J\\x1b]0;pwned\\x07\\nerror: forged line" in stopped
    assert not any(line.startswith("error: forged") for line in lines_of(result.stderr))


@pytest.mark.parametrize("found_by", ["the reader", "the definitions"])
def test_a_strict_refusal_leaves_no_report_it_created(tmp_path, found_by):
    """--strict sends nothing, yet left the empty report it had created: the same
    command, once the file was fixed, was refused for it ("exists; continue it
    with --resume")."""
    bad = {"name": 5} if found_by == "the reader" else {"custom_fields": {"Nope": 1}}
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": bad}])
    report = tmp_path / "r.jsonl"
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        refused = apply(path, base, "--rate-limit", "off", "--strict", "--report", str(report))
        left = report.exists()
        jsonl(path, [{"id": 1001, "patch": {"name": "Fixed"}}])
        again = apply(path, base, "--rate-limit", "off", "--strict", "--report", str(report))
    assert refused.exit_code == 2, refused.output
    assert not left
    assert again.exit_code == 0, again.output
    assert [r["ok"] for r in report_lines(report)] == [True]


@pytest.mark.parametrize("found_by", ["the reader", "the definitions"])
@pytest.mark.parametrize("resuming", [False, True])
def test_a_strict_refusal_leaves_a_report_it_was_told_to_replace(tmp_path, found_by, resuming):
    """--overwrite-report emptied the old report when the run opened it, so a
    --strict refusal, which sends nothing, destroyed it all the same.  The old
    report is replaced only once this run has something to write."""
    bad = {"name": 5} if found_by == "the reader" else {"custom_fields": {"Nope": 1}}
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": bad}])
    report = tmp_path / "r.jsonl"
    old = '{"line": 1, "id": 1001, "ok": false, "attempts": 1, "hash": "ab"}\n'
    report.write_text(old)
    earlier = tmp_path / "earlier.jsonl"  # a report --resume continues into `report`
    earlier.write_text("")
    resume = ["--resume", str(earlier)] if resuming else []
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        refused = apply(
            path, base, "--strict", "--report", str(report), "--overwrite-report", *resume
        )
        sent = fake.requests
    assert refused.exit_code == 2, refused.output
    assert "--strict sends nothing" in refused.output
    assert [r for r in sent if r.method != "GET"] == []  # the definitions are read
    assert report.read_text() == old


def test_a_replaced_report_keeps_its_permissions(tmp_path):
    """Replaced by renaming a new file over it, a private report became readable
    by all (the umask's permissions)."""
    path = jsonl(tmp_path / "u.jsonl", [{"id": 1001, "patch": {"name": "X"}}])
    report = tmp_path / "r.jsonl"
    report.write_text("old\n")
    report.chmod(0o600)
    with threaded_fake("dualentry", customers=1, **FAST) as (fake, base, _):
        result = apply(
            path, base, "--rate-limit", "off", "--report", str(report), "--overwrite-report"
        )
    assert result.exit_code == 0, result.output
    assert [r["ok"] for r in report_lines(report)] == [True]
    assert report.stat().st_mode & 0o777 == 0o600
