"""``customer-patch apply``: run an update file through a client, with a report.

The report is JSONL, one line per record, written and flushed as each result
arrives, so a crash loses nothing already done; ``--resume`` skips the
records a report already shows as succeeded and appends the rest, so a record
retried by a resumed run has several lines: the last one is its outcome.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any

from attrs import define, field

from customer_patch._bulk import UpdateResult
from customer_patch._client import Client
from customer_patch._errors import CustomerPatchError, ProviderError
from customer_patch.cli._input import Line

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def done_lines(report: Path) -> list[str]:
    """The lines of ``report`` that record a success, as written."""
    lines = []
    with report.open(encoding="utf-8") as f:
        for text in f:
            try:
                entry = json.loads(text)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("ok") is True:
                lines.append(text if text.endswith("\n") else text + "\n")
    return lines


def done_records(report: Path) -> set[tuple[int, str]]:
    """``(line, id)`` of every record ``report`` shows as succeeded.

    A torn last line (the process was killed mid-write) is ignored: that
    record is simply done again, which a PATCH makes harmless.
    """
    entries = (json.loads(line) for line in done_lines(report))
    return {(entry["line"], json.dumps(entry["id"])) for entry in entries}


def report_entry(
    line: int, customer_id: Any, error: BaseException | None, attempts: int
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "line": line,
        "id": customer_id,
        "ok": error is None,
        "attempts": attempts,
    }
    if error is not None:
        entry["error"] = type(error).__name__
        entry["message"] = str(error)
        if isinstance(error, ProviderError):
            entry["status"] = error.status
    return entry


@define
class Tally:
    """What a run did, for the summary and the exit status."""

    total: int
    succeeded: int = 0
    failed: int = 0
    invalid: int = 0
    skipped: int = 0
    retries: int = 0
    started: float = field(factory=time.monotonic)
    errors: dict[str, int] = field(factory=dict)

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.invalid

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def exit_status(self) -> int:
        if self.invalid:
            return EXIT_BAD_INPUT
        return EXIT_FAILED if self.failed else EXIT_OK


async def apply(
    client: Client,
    lines: Iterator[Line],
    *,
    tally: Tally,
    concurrency: int,
    report: IO[str] | None,
    skip: set[tuple[int, str]],
    on_invalid: Callable[[Line], None],
    on_result: Callable[[Tally], None],
) -> None:
    """Send every valid line; record every record (invalid ones too) exactly once."""
    line_of: dict[int, Line] = {}  # in flight only: bounded by concurrency

    def write(entry: dict[str, Any]) -> None:
        if report is not None:
            report.write(json.dumps(entry) + "\n")
            report.flush()

    async def valid() -> AsyncIterator[tuple[Any, Any]]:
        index = 0
        for line in lines:
            if (line.number, json.dumps(line.customer_id)) in skip:
                tally.skipped += 1
                continue
            if line.error is not None:
                tally.invalid += 1
                tally.errors[type(line.error).__name__] = (
                    tally.errors.get(type(line.error).__name__, 0) + 1
                )
                write(report_entry(line.number, line.customer_id, line.error, 0))
                on_invalid(line)
                on_result(tally)
                continue
            line_of[index] = line
            index += 1
            yield line.customer_id, line.patch

    async for result in client.iter_updates(valid(), concurrency=concurrency):
        line = line_of.pop(result.index)
        _record(tally, result)
        write(report_entry(line.number, line.customer_id, result.error, result.attempts))
        on_result(tally)


def _record(tally: Tally, result: UpdateResult) -> None:
    tally.retries += max(0, result.attempts - 1)
    if result.ok:
        tally.succeeded += 1
        return
    tally.failed += 1
    name = type(result.error).__name__
    tally.errors[name] = tally.errors.get(name, 0) + 1


def describe_invalid(line: Line) -> str:
    error = line.error
    assert error is not None
    if isinstance(error, CustomerPatchError) and hasattr(error, "problems"):
        details = "; ".join(str(p) for p in error.problems)
    else:
        details = str(error)
    return f"line {line.number}: {details} (nothing sent)"


def print_line(text: str, stream: IO[str] = sys.stderr) -> None:
    print(text, file=stream, flush=True)
