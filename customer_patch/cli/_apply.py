"""``customer-patch apply``: run an update file through a client, with a report.

The report (see ``_report``) gets one line per record as each result
arrives; ``--resume`` skips the records it shows as done, except that once a
record of a customer is sent again, every later record of that customer is
sent again too, so that the file's last value for each field lands last.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from typing import IO, Any

from attrs import define, field

from customer_patch._bulk import Progress, UpdateResult
from customer_patch._client import Client
from customer_patch._errors import (
    AuthenticationError,
    NotAttemptedError,
    PermissionDeniedError,
    UnknownCustomFieldError,
    ValidationError,
)
from customer_patch._model import Customer, CustomerPatch
from customer_patch.cli._input import Line
from customer_patch.cli._pipe import Stoppable
from customer_patch.cli._report import (
    History,
    Report,
    ReportWriteError,
    UndoFile,
    changes_entry,
    entry_for,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3
EXIT_SIGINT = 130


@define
class Tally:
    """What a run did, for the summary and the exit status."""

    total: int | None
    succeeded: int = 0
    failed: int = 0
    invalid: int = 0
    not_attempted: int = 0
    skipped: int = 0
    unchanged: int = 0
    """Of the succeeded, those that already had every value (nothing sent)."""
    retries: int = 0
    stopped: str | None = None
    """Why the run stopped before the end (a 401/403, a failure threshold)."""
    unread_after: int | None = None
    """The last line read, when the run stopped reading an input that may wait."""
    started: float = field(factory=time.monotonic)
    errors: dict[str, int] = field(factory=dict)

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.invalid + self.not_attempted

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def exit_status(self) -> int:
        if self.stopped is not None:
            return EXIT_STOPPED
        if self.invalid:
            return EXIT_BAD_INPUT
        return EXIT_FAILED if self.failed else EXIT_OK

    def count_error(self, error: BaseException) -> None:
        name = type(error).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


async def apply(
    client: Client,
    lines: AsyncGenerator[Line, None],
    *,
    tally: Tally,
    concurrency: int,
    report: Report,
    on_invalid: Callable[[str], None],
    on_result: Callable[[Tally], None],
    max_failures: int | None = None,
    max_consecutive_failures: int | None = None,
    changes_only: bool = False,
    match_on: str | None = None,
    undo: UndoFile | None = None,
    on_note: Callable[[str], None] = lambda text: None,
    waits: Stoppable | None = None,
) -> None:
    """Send every valid line; record every record (invalid ones too) exactly once.

    ``on_invalid`` is given the description of each invalid line: one the file
    reader refused, or one the client refused before sending (see
    :func:`refused_input`).

    ``changes_only``: read each customer first and send only what differs;
    ``match_on``: lines name customers by that key; ``undo``: record how to
    restore what each record changed.

    ``waits``: the stream ``lines`` come from, if a read of it may wait (a
    pipe).  Once the run stops sending, it is read no further: every line
    taken from then on would only be reported not attempted, and a producer
    that never ends would keep the run going forever.  (A file is read to its
    end instead, so the report holds every line.)

    Raises :class:`ReportWriteError` if the report cannot be written: the
    run stops (requests in flight are cancelled), and the report holds only
    what was done.
    """
    line_of: dict[int, Line] = {}  # in flight only: bounded by concurrency
    last_read = 0  # the number of the last line taken

    async def valid() -> AsyncIterator[tuple[Any, Any]]:
        nonlocal last_read
        index = 0
        skipped_by = Resume(report.history)
        async with contextlib.aclosing(lines):  # and its reader, when the run stops
            async for line in lines:
                last_read = line.number
                if skipped_by(line):
                    tally.skipped += 1
                    on_result(tally)
                    continue
                if line.error is not None:
                    tally.invalid += 1
                    tally.count_error(line.error)
                    try:
                        report.write(entry_for(line, line.error, 0))
                    except ReportWriteError:
                        return  # the run stops: the consumer raises it
                    on_invalid(describe_invalid(line))
                    on_result(tally)
                    continue
                line_of[index] = line
                index += 1
                yield line.customer_id, line.patch

    stopped_by: list[BaseException] = []

    def stopping(progress: Progress) -> None:
        if progress.stopped is not None and not stopped_by:
            stopped_by.append(progress.stopped)
            if waits is not None:
                waits.stop()

    results = client.iter_updates(
        valid(),
        progress=stopping,
        concurrency=concurrency,
        max_failures=max_failures,
        max_consecutive_failures=max_consecutive_failures,
        skip_unchanged=changes_only,
        match_on=match_on,
        before_write=None if undo is None else _undo_first(undo, on_note),
    )
    reading = changes_only or match_on is not None
    try:
        async for result in results:
            line = line_of.pop(result.index)
            _record(tally, result)
            if refused_input(result.error):
                assert result.error is not None
                on_invalid(client.mask(describe_refused(line.number, result.error)))
            entry = entry_for(line, result.error, result.attempts)
            if undo is not None:  # a resume must continue the undo file: see History
                entry["undo"] = True
                if undo.first is not None:
                    entry["undo_file"] = undo.first
            if reading:
                entry.update(changes_entry(result))
            if isinstance(result.error, ReportWriteError):
                raise result.error  # the undo file could not be written: nothing was sent
            if reading:  # the values read are the provider's: it may have put the token there
                entry.update(
                    (k, masked(entry[k], client.mask)) for k in _FROM_PROVIDER if k in entry
                )
            report.write(entry)
            on_result(tally)
    finally:  # leaving early (an error, a signal): stop the run and its requests now
        aclose = getattr(results, "aclose", None)
        if aclose is not None:
            await aclose()
    if waits is not None and waits.cut:
        tally.unread_after = last_read
        if tally.stopped is None:  # no line taken after the stop said why
            tally.stopped = _stop_reason(stopped_by[0])
    if report.error is not None:
        raise report.error


class Resume:
    """Whether ``--resume`` skips each line, given in file order: the report shows
    it done, and no earlier record of its customer is sent again (once one is,
    every later one is too, so that the file's last value for each field lands
    last)."""

    def __init__(self, history: History | None) -> None:
        self._history = history
        self._resent: set[str] = set()  # customers one of whose records is sent again

    def __call__(self, line: Line) -> bool:
        history = self._history
        if not history:
            return False
        # A customer by the id a line was matched to, and by the key it gave: a
        # file that renames keys can name one customer by two.
        who = {history.customer_of(line), line.key}
        if history.is_done(line) and who.isdisjoint(self._resent):
            return True
        if line.error is None:
            self._resent |= who
        return False


def resumed(lines: Iterable[Line], history: History | None) -> Iterator[tuple[Line, bool]]:
    """Each line, and whether ``--resume`` skips it (see :class:`Resume`)."""
    skipped_by = Resume(history)
    return ((line, skipped_by(line)) for line in lines)


def _undo_first(
    undo: UndoFile, on_note: Callable[[str], None]
) -> Callable[[Any, Customer, CustomerPatch], None]:
    """The undo line is written before the write is sent: a PATCH whose answer a
    kill cuts off may still have landed, and then only this line knows the
    value before it."""

    def write(customer_id: Any, before: Customer, changes: CustomerPatch) -> None:
        unknown, quoting, refused = undo.add(before, changes)
        for fields, why in (
            (unknown, "not read"),
            (quoting, "the provider shows the token there"),
            (refused, "the value read is one this client refuses to send"),
        ):
            if fields:
                on_note(
                    f"{customer_id!r}: the undo file cannot restore {', '.join(fields)} ({why})"
                )

    return write


# The parts of a report line a provider's answer fills (never what --resume
# reads: its line number, hash and the input's id stay as written).
_FROM_PROVIDER = ("before", "after", "customer", "message")


def masked(value: Any, mask: Callable[[str], str]) -> Any:
    """``value`` (JSON-ready) with ``mask`` applied to every string in it, keys too."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {masked(k, mask): masked(v, mask) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v, mask) for v in value]
    return value


def _stop_reason(cause: BaseException) -> str:
    return f"{type(cause).__name__}: {shown(one_line(cause))}"


def _record(tally: Tally, result: UpdateResult) -> None:
    tally.retries += max(0, result.attempts - 1)
    error = result.error
    if error is None:
        tally.succeeded += 1
        tally.unchanged += not result.changed
        return
    tally.count_error(error)
    if refused_input(error):
        tally.invalid += 1
        return
    if isinstance(error, NotAttemptedError):
        tally.not_attempted += 1
        if tally.stopped is None:
            tally.stopped = _stop_reason(error.cause)
        return
    tally.failed += 1
    if isinstance(error, AuthenticationError | PermissionDeniedError) and tally.stopped is None:
        tally.stopped = _stop_reason(error)


def refused_input(error: BaseException | None) -> bool:
    """Whether ``error`` says the record's own custom fields are wrong, found
    before anything was sent for it: a name the provider's definitions do not
    have, a name two fields share, a value that does not fit its field.  The
    line is then invalid, as one the file reader refuses (exit status 2), not
    failed.  (A match key no customer has, or two do, stays a failure, as a
    customer not found does.)"""
    if isinstance(error, UnknownCustomFieldError):
        return not error.sent  # sent: the provider's own 422, an answer like any other
    return (
        isinstance(error, ValidationError)
        and bool(error.problems)
        and all(p.field.startswith("custom_fields") for p in error.problems)
    )


def one_line(error: BaseException) -> str:
    """What is wrong, in one line (a validation's problems joined); it may quote
    data: print it through :func:`shown`."""
    if isinstance(error, ValidationError):
        return "; ".join(str(p) for p in error.problems)
    return str(error)


def shown(value: Any) -> str:
    """``value`` as text for a line of output: what is not printable (a line
    break, a terminal escape) is escaped, so data cannot forge or hide lines."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def describe_refused(number: int, error: BaseException) -> str:
    """``line N: what is wrong (nothing sent)``, for standard error."""
    details = shown(one_line(error))
    said = "" if details.endswith("nothing was sent") else " (nothing sent)"
    return f"line {number}: {details}{said}"


def describe_invalid(line: Line) -> str:
    assert line.error is not None
    return describe_refused(line.number, line.error)


def dry_run(
    client: Client,
    lines: Iterator[Line],
    *,
    out: IO[str],
    err: IO[str],
    verbose: bool,
    match_on: str | None = None,
) -> int:
    """Print each valid line's request (one line each, or in full), then a summary.

    With ``match_on`` the customer's id is not known until a run reads it: the
    path shows ``{id}``, and the line says which customer it stands for.

    Plain writes, no markup: the text is the data's, and a million lines
    must not cost a million renderings.
    """
    valid = invalid = custom = 0
    base = client.base_url.rstrip("/")
    adapter = client.adapter
    for line in lines:
        if line.error is not None:
            invalid += 1
            out.flush()  # keep the two streams in order on a terminal
            err.write(describe_invalid(line) + "\n")
            err.flush()
            continue
        valid += 1
        assert line.patch is not None
        custom += bool(line.patch.custom_fields)
        found = ""
        if match_on is not None:
            found = f"  ({{id}}: the customer with {match_on} {line.customer_id!r})"
        if verbose:
            if match_on is None:
                request = client.prepare(line.customer_id, line.patch)
            else:
                path = adapter.update_path("{id}")
                request = client._request(adapter.method, path, adapter.update_route, line.body)
            headers = "".join(f"  {k}: {v}\n" for k, v in request.redacted_headers().items())
            body = request.body.decode()
            out.write(
                f"line {line.number}: {request.method} {request.url}{found}\n{headers}  {body}\n"
            )
        else:
            body = line.body.decode()
            path = line.path if match_on is None else adapter.update_path("{id}")
            out.write(f"line {line.number}: {adapter.method} {base}{path} {body}{found}\n")
    unchecked = ""
    if custom and client.check_custom_fields and adapter.custom_fields_path() is not None:
        # The names are the provider's to know: a run reads its definitions first.
        sets = "line sets" if custom == 1 else "lines set"
        unchecked = (
            f" ({custom} {sets} custom fields, which `plan` checks against the provider's "
            "definitions; a dry run reads nothing)"
        )
    out.write(
        f"dry run: {valid} request(s) would be sent, {invalid} invalid line(s); "
        f"nothing sent{unchecked}\n"
    )
    out.flush()
    return EXIT_BAD_INPUT if invalid else EXIT_OK
