"""``customer-patch plan``: read every customer a file names, print what ``apply
--changes-only`` would change, and send no write."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import IO, Any

from attrs import define

from customer_patch._bulk import UpdateResult
from customer_patch._client import Client
from customer_patch._errors import NotFoundError
from customer_patch.cli._apply import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    describe_invalid,
    describe_refused,
    masked,
    one_line,
    refused_input,
    shown,
)
from customer_patch.cli._input import Line


@define
class PlanTally:
    changed: int = 0
    unchanged: int = 0
    invalid: int = 0
    not_found: int = 0
    failed: int = 0

    def exit_status(self) -> int:
        if self.invalid:
            return EXIT_BAD_INPUT
        return EXIT_FAILED if self.not_found or self.failed else EXIT_OK


def field_changes(result: UpdateResult) -> list[tuple[str, Any, Any]]:
    """``(field, before, after)`` for each field a record would change, in the
    neutral JSON form ``apply`` reads; custom fields one by one."""
    assert result.sent is not None
    assert result.before is not None
    restore, _ = result.sent.undo_for(result.before)  # a field not read: "(not read)"
    before, after = _flat(restore.to_dict()), _flat(result.sent.to_dict())
    missing = object()
    rows = [(path, before.get(path, missing), value) for path, value in after.items()]
    return [(p, "(not read)" if b is missing else b, a) for p, b, a in rows]


def _flat(data: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "custom_fields" and isinstance(value, dict):  # all by name
            flat.update((f"custom_fields.{name}", v) for name, v in value.items())
        elif key == "custom_fields":  # by name and by id: a list of entries
            for entry in value:
                name = entry["name"] if "name" in entry else f"[{entry['id']}]"
                flat[f"custom_fields.{name}"] = entry["value"]
        elif key in ("external_ids", "extra") and isinstance(value, dict):
            flat.update((f"{key}.{k}", v) for k, v in value.items())
        else:
            flat[key] = value
    return flat


async def plan(
    client: Client,
    lines: AsyncGenerator[Line, None],
    *,
    out: IO[str],
    err: IO[str],
    as_json: bool,
    concurrency: int,
    match_on: str | None,
) -> PlanTally:
    """Print the plan of every line (one line a changed field, or JSON Lines) and count."""
    tally = PlanTally()
    line_of: dict[int, Line] = {}

    # The values read are the provider's: it may have put the token in them.
    # Masked as values, not as JSON text: there the mask could start inside an
    # escape ("\\n" before the token) and leave a line that is not JSON.
    def emit(record: dict[str, Any]) -> None:
        out.write(json.dumps(masked(record, client.mask)) + "\n")

    def say(text: str) -> None:
        out.write(client.mask(text) + "\n")

    async def valid() -> AsyncIterator[tuple[Any, Any]]:
        index = 0
        async with contextlib.aclosing(lines):  # and its reader, when the run stops
            async for line in lines:
                if line.error is not None:
                    tally.invalid += 1
                    if as_json:
                        why = one_line(line.error)
                        emit({"line": line.number, "id": line.customer_id, "invalid": why})
                    else:
                        out.flush()
                        err.write(describe_invalid(line) + "\n")
                    continue
                line_of[index] = line
                index += 1
                yield line.customer_id, line.patch

    def show(result: UpdateResult) -> None:
        line = line_of.pop(result.index)
        where = {"line": line.number, "id": line.customer_id}
        if refused_input(result.error):  # as an invalid line: would be refused unsent
            assert result.error is not None
            tally.invalid += 1
            if as_json:
                emit({**where, "invalid": one_line(result.error)})
            else:
                out.flush()
                err.write(client.mask(describe_refused(line.number, result.error)) + "\n")
            return
        if result.error is not None:
            if isinstance(result.error, NotFoundError):
                tally.not_found += 1
            else:
                tally.failed += 1
            if as_json:
                emit(
                    {
                        **where,
                        "error": type(result.error).__name__,
                        "message": str(result.error),
                    }
                )
            else:
                named = f"{shown(line.customer_id)}  line {line.number}"
                say(f"{named}: {shown(one_line(result.error))}")
            return
        if not result.changed:
            tally.unchanged += 1
            if as_json:
                emit(
                    {
                        **where,
                        "customer": result.before.id if result.before else None,
                        "changed": False,
                    }
                )
            return
        tally.changed += 1
        rows = field_changes(result)
        if as_json:
            assert result.before is not None
            emit(
                {
                    **where,
                    "customer": result.before.id,
                    "changed": True,
                    "fields": [{"field": f, "before": b, "after": a} for f, b, a in rows],
                }
            )
        else:
            for field, before, after in rows:
                change = f"{json.dumps(before)} → {json.dumps(after)}"
                say(f"{shown(line.customer_id)}  {shown(field)}: {change}")

    async with client:
        async for result in client.iter_plan(valid(), concurrency=concurrency, match_on=match_on):
            show(result)
            out.flush()  # a plan is read as it comes (and a pipe's next line may be slow)
    return tally


def summary(tally: PlanTally, *, pace: float | None, write: str) -> dict[str, Any]:
    """The plan's counts, and the writes it would send and how long at the paced rate."""
    seconds = tally.changed / pace if pace else 0.0
    return {
        "changed": tally.changed,
        "unchanged": tally.unchanged,
        "invalid": tally.invalid,
        "not_found": tally.not_found,
        "failed": tally.failed,
        "requests": tally.changed,
        "request": write,
        "seconds": round(seconds, 1),
    }
