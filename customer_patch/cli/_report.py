"""The report of ``apply``: one JSON line per record, and what ``--resume`` reads back.

A line is ``{"line": N, "id": ..., "ok": ..., "attempts": ..., "hash": ...}``,
plus ``error``, ``message`` and ``status`` on failure, written and flushed as
each result arrives, so a crash loses nothing already done.  ``hash`` is the
record's content hash, so that ``--resume`` refuses another file's report.

Which records a report shows as *done* follows the order in which they were
applied: a record sent for a customer (succeeded, or failed after a request
went out, which may have changed it) undoes the later records of that
customer the report showed as done, since its value may now be the one the
provider holds.  ``apply`` then sends every later record of a customer again
once it sends one of that customer's records, so that the last line of the
file lands last, whatever was killed or failed before.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import filelock

from customer_patch._bulk import UpdateResult, customer_key, refused_at_once
from customer_patch._errors import CustomerPatchError, Problem, ProviderError
from customer_patch._model import Customer, CustomerPatch, ExternalIds, shared_names
from customer_patch.cli._input import Line

_TORN_PREFIX = b'{"line": '  # every line this module writes starts so
# "n", its place, and "to", where its record went: a line without them could
# be resumed out of order, or against another provider, unnoticed.
_REQUIRED = {"line": int, "ok": bool, "attempts": int, "hash": str, "n": int, "to": str}


class ReportError(Exception):
    """The report cannot be used (a one-line reason; nothing was sent)."""


class ReportWriteError(Exception):
    """Writing the report failed mid-run (e.g. a full disk); the run must stop."""

    def __init__(self, path: Path, error: OSError, *, what: str = "the report") -> None:
        self.path = path
        self.error = error
        reason = error.strerror or str(error)
        super().__init__(f"cannot write {what} {path} ({reason})")


class History:
    """What a report shows: each line's content hash, and the lines done, in order."""

    def __init__(self, *, match_on: str | None = None) -> None:
        self.hashes: dict[int, str] = {}
        self._done: dict[str, set[int]] = {}  # customer key -> line numbers done
        # With --match-on, a line names a customer by a key, and a file that
        # renames keys names one customer by two, or one key two customers: the
        # provider's id each line was matched to groups a customer's lines.
        self._customer_of: dict[int, str] = {}  # line number -> customer key
        self._match_on = match_on
        self._key_of: dict[int, str] = {}  # line number -> its key (with match_on)
        # With match_on, each key's renames the report shows, in line order:
        # (line, the customer given the key, or None: the key taken from it).
        self._renames: dict[str, list[tuple[int, str | None]]] = {}
        self._spelled: dict[str, str] = {}  # a key given, as the report wrote it
        self.entries = 0
        self.changed: dict[str, set[str]] = {}
        """Customer key -> the fields records sent to it changed (see :class:`UndoFile`)."""
        self.destinations: set[str] = set()
        """Where the report's records were sent (``"provider base_url"``)."""
        # The first line sent by a run that wrote an undo file, and by one that did not.
        self._sent_with_undo: int | None = None
        self._sent_without_undo: int | None = None
        self.undo_file: str | None = None
        """:func:`first_line_print` of the undo file the report's run wrote, if it said."""

    def __bool__(self) -> bool:
        return self.entries > 0

    def add(self, entry: dict[str, Any]) -> None:
        """Take one report line into account, in the order the report holds them."""
        self.entries += 1
        self.destinations.add(entry["to"])
        after = entry.get("after")
        if (
            isinstance(after, dict)
            and entry["attempts"] > 0
            and "customer" in entry
            and entry.get("undo") is True
        ):
            # Sent, so its undo line was written first: what it changed is done
            # with for the undo file, written there or left out (not read, or
            # quoting the key), whatever a later record finds in those fields.
            # (A line a run without one sent makes a resume with one refused:
            # see undo_refusal.)
            try:
                changed = _paths(CustomerPatch.from_dict(after))
            except (CustomerPatchError, ValueError, TypeError):
                changed = set()  # masked past reading: the undo file's own lines decide
            self.changed.setdefault(customer_key(entry["customer"]), set()).update(changed)
        number, key = entry["line"], customer_key(entry.get("id"))
        if self._match_on is not None:
            self._renamed(number, entry, after)
        if "customer" in entry:  # matched (or read) to a customer: grouped by it
            key = self._customer_of[number] = customer_key(entry["customer"])
        # Its one attempt refused with a 4xx: it changed nothing, undo file or not.
        refused = refused_at_once(entry["attempts"], entry.get("status"))
        if entry.get("undo") is True and isinstance(entry.get("undo_file"), str):
            self.undo_file = entry["undo_file"]
        if entry["attempts"] > 0 and not (refused and not entry["ok"]):
            if entry.get("undo") is True:
                if self._sent_with_undo is None:
                    self._sent_with_undo = number
            elif self._sent_without_undo is None:
                self._sent_without_undo = number
        self.hashes[number] = entry["hash"]
        done = self._done.setdefault(key, set())
        if entry["ok"] or entry["attempts"] > 0:
            # Sent after the later lines shown done: their values may be overwritten.
            done.difference_update([n for n in done if n > number])
        if entry["ok"]:
            done.add(number)
        else:
            done.discard(number)
        if not done:
            del self._done[key]

    def undo_refusal(self, undo_file: Path | None) -> str | None:
        """Why resuming this report with ``undo_file`` (``None``: without one)
        would leave an undo file short of the run's writes, or ``None``: every
        write of a run with an undo file must have its line in that one file,
        or applying it restores values of mid-run as if they were the first."""
        if undo_file is None and self._sent_with_undo is not None:
            return (
                f"the report's run writes an undo file (line {self._sent_with_undo} has its "
                "undo line): resume with --changes-only --undo-file and that file, or this "
                "run's writes would have none; nothing sent"
            )
        if undo_file is not None and self._sent_without_undo is not None:
            return (
                f"--undo-file {undo_file}: line {self._sent_without_undo} of the report was "
                "sent without an undo file, so what it changed was never read; an undo file "
                "begun now would restore what it left; nothing sent"
            )
        if undo_file is not None and self._sent_with_undo is not None and not undo_file.exists():
            return (
                f"--undo-file {undo_file} does not exist, but the report's run wrote undo "
                f"lines (line {self._sent_with_undo}'s): give the file it wrote them to; "
                "nothing sent"
            )
        return None

    def _renamed(self, number: int, entry: dict[str, Any], after: Any) -> None:
        assert self._match_on is not None
        key = entry.get("id")
        if isinstance(key, str):
            self._key_of[number] = key
        new = after.get(self._match_on) if isinstance(after, dict) else None
        if not isinstance(new, str) or "customer" not in entry:
            return
        if isinstance(key, str) and key.casefold() != new.casefold():
            self._renames.setdefault(key.casefold(), []).append((number, None))
        given = customer_key(entry["customer"])
        self._renames.setdefault(new.casefold(), []).append((number, given))
        self._spelled.setdefault(new.casefold(), new)

    def customer_of(self, line: Line) -> str:
        """Who ``line`` updates: the customer the report shows it matched, or its key."""
        return self._customer_of.get(line.number, line.key)

    def is_done(self, line: Line) -> bool:
        """Whether the report shows ``line`` as applied and not overwritten since."""
        return line.number in self._done.get(self.customer_of(line), ())

    def moved_key_refusal(self) -> str | None:
        """Why a resume matching on keys cannot send again a line it would send
        again (see :class:`~customer_patch.cli._apply.Resume`), or ``None``.

        Such a line is looked up by its key again, when the provider holds what
        the whole report did, and the lines sent again before it did again.
        That must find the customer it found (or, unmatched, the one the file
        says held the key there), and a key it gives must be free or its
        customer's: else it would update another customer, or give two one key.
        """
        renames = {key: sorted(events) for key, events in self._renames.items()}
        by_line: dict[int, list[tuple[str, str | None]]] = {}
        for key, events in renames.items():
            for number, given in events:
                by_line.setdefault(number, []).append((key, given))

        def holder(key: str, before: float = math.inf) -> tuple[int, str | None] | None:
            """The last rename of ``key`` the report shows before that line: (line, who)."""
            found = [event for event in renames.get(key, ()) if event[0] < before]
            return found[-1] if found else None

        resent: set[str] = set()  # which lines the resume sends again, as Resume decides
        replayed: dict[str, tuple[int, str | None]] = {}  # renames sent again, so far
        for number, key in sorted(self._key_of.items()):
            customer = self._customer_of.get(number)
            who = {customer or customer_key(key), customer_key(key)}
            done = number in self._done.get(customer or customer_key(key), ())
            if done and who.isdisjoint(resent):
                continue
            resent |= who
            looked_up = key.casefold()
            expected = customer if customer is not None else _who(holder(looked_up, number))
            found = replayed.get(looked_up) or holder(looked_up)
            if found is not None and found[1] != expected:
                return self._moved(number, key, found[0])
            for given_key, given in by_line.get(number, ()):
                taken = replayed.get(given_key) or holder(given_key)
                if given is not None and taken is not None and taken[1] not in (None, given):
                    return self._moved(number, self._spelled[given_key], taken[0])
                replayed[given_key] = (number, given)
        return None

    def _moved(self, number: int, key: str, since: int) -> str:
        return (
            f"line {number} ({self._match_on} {key!r}) must be sent again, but line {since} "
            "of the report moved that key between customers: sent again, it would not "
            "update the customer it did.  Apply what is left with ids instead; nothing sent"
        )

    @property
    def done(self) -> int:
        return sum(len(lines) for lines in self._done.values())

    def check(self, records: Iterable[tuple[int, str]], report: Path, source: str) -> None:
        """Raise :class:`ReportError` unless ``records`` (line, hash) are those the report saw."""
        seen = 0
        for number, digest in records:
            expected = self.hashes.get(number)
            if expected is None:
                continue
            if expected != digest:
                raise ReportError(
                    f"{report} is not a report of {source}: line {number} differs "
                    "(was the file edited, or is this another file's report?); nothing sent"
                )
            seen += 1
        if seen != len(self.hashes):
            raise ReportError(
                f"{report} is not a report of {source}: it has results for "
                f"{len(self.hashes) - seen} line(s) the file does not have; nothing sent"
            )


def _who(event: tuple[int, str | None] | None) -> str | None:
    return None if event is None else event[1]


def read_history(path: Path, *, match_on: str | None = None) -> History:
    """Every line of the report ``path``, checked; a torn line (a crash mid-write)
    is skipped.  ``match_on``: the run names customers by that key."""
    history = History(match_on=match_on)
    for number, line in enumerate(_lines(path), start=1):
        entry = _entry(line)
        if entry is None:
            if _torn(line):
                continue  # torn by a crash mid-write: its record is simply done again
            raise ReportError(
                f"{path}:{number}: not a line of a customer-patch report; nothing sent"
            )
        missing = [k for k, kind in _REQUIRED.items() if not isinstance(entry.get(k), kind)]
        if missing or "id" not in entry or any(isinstance(entry[k], bool) for k in ("line", "n")):
            needs = ", ".join(f"'{k}'" for k in (*_REQUIRED, "id"))
            raise ReportError(
                f"{path}:{number}: a report line needs {needs}"
                + (
                    " (a report of an older version cannot be resumed)"
                    if "hash" in missing
                    else ""
                )
                + "; nothing sent"
            )
        # The order of the lines is the order of the sends, which decides what
        # is done: a report sorted (or its lines moved) would resume wrong.
        if entry["n"] != history.entries + 1:
            raise ReportError(
                f"{path}:{number}: the report's lines are out of order (was it sorted "
                "or edited?); it cannot say what was done last; nothing sent"
            )
        history.add(entry)
    return history


def _torn(line: bytes) -> bool:
    """Whether ``line`` is what a crash mid-write (or a full disk) left of a line:
    any start of one, cut after any byte (and ended since, or not)."""
    cut = line.removesuffix(b"\n")
    return cut.isascii() and (cut.startswith(_TORN_PREFIX) or _TORN_PREFIX.startswith(cut))


MAX_LINE = 64 << 20
"""Bytes of a report or undo line read back at most.  What this module writes
stays under it: a report line is cut down to ``SHOWN`` (see ``_fitted``); an
undo line holds values a provider answered, within the client's 8 MiB cap
(6 bytes a character at most, JSON-escaped).  A wrong file costs no more than
this; a device or a pipe, which could be read without end, is refused before
(see regular_file)."""

SHOWN = 1 << 20
"""Bytes of JSON a report line holds at most, before it is cut down."""

# What a report line keeps when it is cut down: what --resume reads, and what
# an operator needs to know about the record.
_KEPT = (
    "line",
    "n",
    "to",
    "id",
    "ok",
    "attempts",
    "hash",
    "error",
    "status",
    "changed",
    "customer",
    "undo",
    "undo_file",
)


def _fitted(entry: dict[str, Any]) -> bytes:
    """``entry`` as a report line: whole, or, past ``SHOWN`` bytes (a value, a
    message or an id as long as the input made it), without the values and
    with the id and message cut, saying how much was left out."""
    data = json.dumps(entry).encode()
    if len(data) <= SHOWN:
        return data
    kept = {k: entry[k] for k in _KEPT if k in entry}
    for key in ("id", "message"):
        text = entry.get(key)
        if isinstance(text, str) and len(text) > SHOWN // 4:
            kept[key] = f"{text[: SHOWN // 4]}... ({len(text) - SHOWN // 4} more characters)"
        elif key in entry:
            kept[key] = entry[key]
    kept["not_shown"] = f"{len(data)} bytes of JSON, cut down"
    return json.dumps(kept).encode()


def _lines(path: Path) -> Iterable[bytes]:
    try:
        with path.open("rb") as f:
            number = 0
            while line := f.readline(MAX_LINE + 1):
                number += 1
                if len(line) > MAX_LINE:
                    raise ReportError(
                        f"{path}:{number}: not a line of a customer-patch report or undo "
                        f"file (longer than {MAX_LINE >> 20} MiB)"
                    )
                yield line
    except OSError as e:
        raise ReportError(f"{path}: cannot be read ({e.strerror})") from None


def first_line_print(path: Path) -> str | None:
    """A fingerprint of the first line of the file at ``path`` (``None``: no whole
    line yet): the undo file is only ever appended to, so its first line, once
    written, tells it from another run's."""
    for line in _lines(path):
        return _line_print(line) if line.endswith(b"\n") else None
    return None


def _line_print(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()[:16]


def regular_file(path: Path, flag: str) -> None:
    """Raise :class:`ReportError` if ``path`` exists and is not a regular file (a
    device or a pipe would be read without end, or block)."""
    try:
        if path.exists() and not path.is_file():
            raise ReportError(f"{flag} {path} is not a regular file")
    except OSError as e:  # a name too long, a folder that cannot be searched
        raise ReportError(f"{flag} {path}: {e.strerror}") from None


def _entry(line: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return entry if isinstance(entry, dict) else None


def _open(path: Path, mode: str) -> BinaryIO:
    """Open the report file (tests replace this to simulate a full disk)."""
    return path.open(mode, buffering=0)  # type: ignore[return-value]


def _write_all(file: BinaryIO, data: bytes) -> None:
    """All of ``data`` to an unbuffered file: a short write may happen, a lost one must not."""
    view = memoryview(data)
    while view:
        written = file.write(view)
        if written is None:  # pragma: no cover - non-blocking files only
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        view = view[written:]


class _MakesItsFile:
    """A file of the run's that it may have made, and then only may remove:
    made exclusively (never one another program made meanwhile, which is
    refused as existing), through a link to nothing the file the link names
    (never the link)."""

    _made: Path | None = None

    def _make(self, given: Path, flag: str) -> BinaryIO:
        made = Path(os.path.realpath(given))
        if os.path.lexists(made):  # a link that leads round to itself
            raise ReportError(f"{flag} {given}: cannot be written (a link loop)")
        self._made = made  # before it is made: a signal can raise as the call returns
        try:
            return _open(made, "xb")
        except FileExistsError:
            self._made = None
            raise ReportError(
                f"{flag} {given} exists (made as this run started, or a link that "
                "leads nowhere); name another file"
            ) from None
        except OSError as e:
            self._made = None
            raise ReportError(f"{flag} {given}: cannot be written ({e.strerror})") from None

    def _discard_made(self) -> None:
        if self._made is not None:
            with contextlib.suppress(OSError):
                self._made.unlink()
            self._made = None


class Report(_MakesItsFile):
    """The report file of one run: locked, healed, appended to; and what it shows done.

    With no file (no ``--report`` nor ``--resume``) it writes nothing and
    shows nothing done.
    """

    def __init__(self, path: Path | None = None, destination: str | None = None) -> None:
        self.path = path
        self.destination = destination
        self.history = History()
        self._file: BinaryIO | None = None
        self._locks: list[filelock.BaseFileLock] = []
        self.error: ReportWriteError | None = None
        self._entries = 0  # written by this run (not those a resumed report had)
        # Until the run begins: whether the file holds an old report to empty,
        # and the report a resumed run copies into it.
        self._replacing: tuple[bool, Path | None] | None = None

    @classmethod
    def open(
        cls,
        report: Path | None,
        *,
        resume: Path | None,
        overwrite: bool,
        source: Path | None,
        destination: str,
        match_on: str | None = None,
    ) -> Report:
        """The report for a run writing ``report`` (or continuing ``resume``) for
        ``source``, its records sent to ``destination`` (``"provider base_url"``,
        written on each line), naming customers by ``match_on`` if given.

        Raises :class:`ReportError`, before anything is written, when the
        report would be the input file, exists and would be overwritten
        unasked, is being written by another run, cannot be read back, or
        (resumed) shows records sent elsewhere.
        """
        target = report or resume
        if target is None:
            return cls()
        if resume is not None:
            regular_file(resume, "--resume")
        if report is not None:  # a pipe would block the run as it opens it
            regular_file(report, "--report")
        for given, flag in ((report, "--report"), (resume, "--resume")):
            if given is not None and source is not None and same_file(given, source):
                raise ReportError(f"{flag} {given} is the input file; name another file")
        if source is not None and same_file(aside_of(target), source):
            raise ReportError(
                f"the input file {source} is the copy the report is replaced through; "
                "name another file"
            )
        folder = _folder_of(target)
        if not folder.is_dir():
            raise ReportError(f"--report {target}: the folder {folder} does not exist")
        self = cls(target, destination)
        try:
            self._lock(target)
            # A kill between writing the copy and renaming it left it behind;
            # under the lock no run is writing it now.
            with contextlib.suppress(OSError):  # none (the common case), or a folder
                aside_of(target).unlink()
            in_place = resume is not None and same_file(resume, target)
            if resume is not None:
                if not in_place:
                    self._lock(resume)
                self.history = read_history(resume, match_on=match_on)
                elsewhere = self.history.destinations - {destination}
                if elsewhere:
                    raise ReportError(
                        f"--resume {resume} is a report of records sent to "
                        f"{sorted(elsewhere)[0]}, not to {destination}: what it shows "
                        "done is not done there; nothing sent"
                    )
            if in_place:
                self._file = self._opened(target, "ab")
                if _ends_torn(target):
                    # A crash mid-write left half a line: end it first (a full disk
                    # raises ReportWriteError, as for any write of the report).
                    self._write(b"\n")
            else:
                if target.exists() and not overwrite:
                    raise ReportError(
                        f"--report {target} exists; continue it with --resume {target}, "
                        "or pass --overwrite-report to replace it"
                    )
                existed = target.exists()
                # Emptied (and given what the resumed report holds) only when the
                # run begins: one refused or stopped before sending leaves it whole.
                if existed:
                    self._file = self._opened(target, "ab")
                else:
                    self._file = self._make(target, "--report")
                self._replacing = (existed, resume)
        except BaseException:
            # A signal raises anywhere in here, the file just made included:
            # made by this run and holding nothing, it goes.
            self._discard_made()
            self.close()
            raise
        return self

    def _lock(self, path: Path) -> None:
        # By the file's own name, not the one given: another run reaching it
        # through a link (or a folder's) must meet the same lock.
        real = os.path.realpath(path)
        lock = filelock.FileLock(f"{real}.lock", timeout=0)
        try:
            links = os.stat(real).st_nlink if os.path.exists(real) else 1
            if links > 1:  # another name no lock sees
                raise ReportError(
                    f"{path} has {links} names (hard links): another run could write it "
                    "under another one; name a file of its own"
                )
            lock.acquire()
        except filelock.Timeout:
            raise ReportError(f"{path} is in use by another run (locked by {real}.lock)") from None
        except OSError as e:
            raise ReportError(f"{path}: cannot be locked ({e.strerror})") from None
        self._locks.append(lock)

    def _opened(self, path: Path, mode: str) -> BinaryIO:
        try:
            return _open(path, mode)
        except OSError as e:
            raise ReportError(f"--report {path}: cannot be written ({e.strerror})") from None

    @property
    def begun(self) -> bool:
        """Whether the file is this run's report yet (see :meth:`begin`)."""
        return self._replacing is None

    def begin(self) -> None:
        """The run is about to send: replace the old report the file held, if any
        (``--overwrite-report``), and copy the resumed report's lines into it.

        Raises :class:`ReportWriteError` if that fails (nothing was sent; the
        old report is as it was).
        """
        if self._replacing is None:
            return
        existed, resume = self._replacing
        self._replacing = None
        if not existed and resume is None:
            return  # created empty by this run: nothing to replace
        assert self._file is not None
        assert self.path is not None
        # Written aside, then renamed over the report's own file (not a link to
        # it): a full disk or a kill midway leaves the old report whole.
        real = Path(os.path.realpath(self.path))
        aside = aside_of(real)
        try:
            file = _open(aside, "wb")
            if existed:  # the old report's permissions (a report may be private)
                os.chmod(aside, stat.S_IMODE(os.stat(real).st_mode))
            try:
                if resume is not None:
                    # The new report must account for every record on its own,
                    # in the order the old one saw them.
                    for line in _lines(resume):
                        if _entry(line) is not None:
                            _write_all(file, line if line.endswith(b"\n") else line + b"\n")
            finally:
                file.close()
            os.replace(aside, real)
            self._file.close()
            self._file = _open(real, "ab")
        except BaseException as e:
            with contextlib.suppress(OSError):
                aside.unlink()
            if not isinstance(e, OSError):
                raise
            self.error = ReportWriteError(self.path, e)
            raise self.error from None

    def write(self, entry: dict[str, Any]) -> None:
        """Append one entry; raise :class:`ReportWriteError` if it (or an earlier one) failed."""
        if self._file is None:
            return
        self.begin()
        # Where it went, and its place: see read_history.
        entry = {**entry, "n": self.history.entries + self._entries + 1}
        if self.destination is not None:
            entry["to"] = self.destination
        self._write(_fitted(entry) + b"\n")
        self._entries += 1

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        assert self.path is not None
        if self.error is not None:
            raise self.error
        try:
            _write_all(self._file, data)
        except OSError as e:
            self.error = ReportWriteError(self.path, e)
            raise self.error from None

    def discard_if_unused(self) -> None:
        """Close the report, and remove it if this run created it and wrote
        no entry: for a run that ends before sending anything, so that running
        the same command again is not refused for it.  An old report the run
        was to replace is left as it was, unless :meth:`begin` replaced it."""
        self._replacing = None  # an old report stays as it was
        if not self._entries:
            self._discard_made()  # under the lock still, which close() releases
        self.close()

    def close(self) -> None:
        """Close the file and release the locks (safe to call twice)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        while self._locks:
            with contextlib.suppress(OSError):
                self._locks.pop().release()

    def __enter__(self) -> Report:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def aside_of(report: Path) -> Path:
    """The copy ``report`` is replaced through: written beside the report's own
    file (not a link to it), then renamed over it.  One name, not one per
    process: the report's lock lets one run at a time write it."""
    real = Path(os.path.realpath(report))
    return real.with_name(f".{real.name}.customer-patch.tmp")


def _folder_of(path: Path) -> Path:
    """The folder ``path`` is to be made in: a link's target's, for a link to
    nothing (``r.jsonl -> nowhere/r.jsonl``)."""
    if os.path.islink(path):
        return Path(os.path.realpath(path)).parent
    return path.parent


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file (through links too), or name one:
    a report the run has yet to make (``sub/../r.jsonl``, a link to it) is no
    file ``samefile`` can compare."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _ends_torn(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


_UNDO_START = b'{"id": '
"""How every line of an undo file starts (see :meth:`UndoFile.add`)."""


def _cut_torn_end(path: Path) -> None:
    """Cut ``path`` after its last line end, if something follows it."""
    if not _ends_torn(path):
        return
    with path.open("r+b") as f:
        start = f.seek(0, os.SEEK_END)
        while start > 0:
            step = min(start, 64 * 1024)
            start -= step
            f.seek(start)
            end = f.read(step).rfind(b"\n")
            if end >= 0:
                f.truncate(start + end + 1)
                return
        f.truncate(0)


def entry_for(line: Line, error: BaseException | None, attempts: int) -> dict[str, Any]:
    """The report line for ``line``'s outcome (``line`` first: see ``_TORN_PREFIX``)."""
    entry: dict[str, Any] = {
        "line": line.number,
        "id": line.customer_id,
        "ok": error is None,
        "attempts": attempts,
        "hash": line.digest,
    }
    if error is not None:
        entry["error"] = type(error).__name__
        entry["message"] = str(error)
        if isinstance(error, ProviderError):
            entry["status"] = error.status
    return entry


def changes_entry(result: UpdateResult) -> dict[str, Any]:
    """What a read-before-write record adds to its report line: whether it
    changed anything and, for what was sent, the values before and after."""
    entry: dict[str, Any] = {"changed": result.changed}
    if result.before is not None:
        entry["customer"] = result.before.id
    if result.changed and result.sent is not None and result.before is not None:
        restore, unknown = result.sent.undo_for(result.before)
        entry["before"] = restore.to_dict()
        entry["after"] = result.sent.to_dict()
        if unknown:
            entry["before_unknown"] = list(unknown)
    return entry


class UndoFile(_MakesItsFile):
    """``--undo-file``: for each record sent, a line that restores what it changed.

    Lines are in the format ``apply`` reads (``{"id": ..., "patch": {...}}``),
    by the provider's id.  Only the first value read for each field of a
    customer is kept: applying the file in any order then restores the state
    before the run, even when one customer had several records.  The file
    is never replaced: a new one must not exist; with ``--resume`` it is
    continued.
    """

    def __init__(
        self,
        path: Path,
        *,
        resume: bool,
        mask: Callable[[str], str] | None = None,
        history: History | None = None,
        check: Callable[[CustomerPatch], Sequence[Problem]] | None = None,
    ) -> None:
        self.path = path
        self._mask = mask  # the client's: a value quoting the token is not written
        # The client's checks: a value read that they refuse would make the
        # line one that `apply` of the file refuses, when it is needed.
        self._check = check
        # Customer key -> fields done with: restored by a line, or left out for
        # good.  A resumed run learns the first from the file, the second from
        # what the report (``history``) says each record sent changed.
        self.covered: dict[str, set[str]] = {}
        if resume and history is not None:
            self.covered = {key: set(fields) for key, fields in history.changed.items()}
        self.missing = 0
        self.written = 0  # lines this run wrote
        self.error: ReportWriteError | None = None
        self.first: str | None = None
        """:func:`first_line_print` of this file, once it has a line (each report
        line says it, so a resume can tell this file from another run's)."""
        self.check(path, resume=resume)
        if path.exists():
            for number, line in enumerate(_lines(path), start=1):
                if not line.endswith(b"\n") and (
                    line.startswith(_UNDO_START) or _UNDO_START.startswith(line)
                ):
                    # Cut short by a crash or a full disk: written before its write
                    # was sent, and that write never was.  It restores nothing, and
                    # is cut off below (ended, it would be a line that is no line,
                    # for `apply` of the file and for the next resume).
                    break
                try:
                    record = json.loads(line)
                    patch = CustomerPatch.from_dict(record["patch"])
                except (ValueError, KeyError, TypeError, CustomerPatchError):
                    raise ReportError(f"{path}:{number}: not a line of an undo file") from None
                self.covered.setdefault(customer_key(record["id"]), set()).update(_paths(patch))
            self.first = first_line_print(path)
            expected = None if history is None or not resume else history.undo_file
            if expected is not None and self.first != expected:
                # Another run's: its lines would stand for fields this run changed,
                # and neither file would restore them.
                raise ReportError(
                    f"--undo-file {path} is not the undo file the report's run wrote "
                    "(its first line differs): give the file it wrote; nothing sent"
                )
            # Only once every whole line is an undo file's, and the run's: a file
            # given by mistake is refused as it was.
            try:
                _cut_torn_end(path)
                self._file = _open(path, "ab")
            except OSError as e:
                why = e.strerror
                raise ReportError(f"--undo-file {path}: cannot be written ({why})") from None
        else:
            try:
                self._file = self._make(path, "--undo-file")
            except BaseException:
                self._discard_made()  # a signal as it was made: as for the report
                raise

    @staticmethod
    def check(path: Path, *, resume: bool) -> None:
        """Raise :class:`ReportError` if ``path`` cannot be this run's undo file (it
        exists and this is not a resumed run, or its folder does not exist)."""
        regular_file(path, "--undo-file")
        if path.exists() and not resume:
            raise ReportError(f"--undo-file {path} exists; name a new file (it is never replaced)")
        folder = _folder_of(path)
        if not folder.is_dir():
            raise ReportError(f"--undo-file {path}: the folder {folder} does not exist")

    def discard_if_unused(self) -> None:
        """Close the file, and remove it if this run created it and wrote nothing:
        for a run that ends before sending anything, so that running the same
        command again is not refused for it."""
        self.close()
        if not self.written:
            self._discard_made()

    def add(
        self, before: Customer, sent: CustomerPatch
    ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """Record how to undo ``sent`` (called before it is sent: a write whose
        answer a crash cuts off may still land); the fields it cannot restore,
        as not read, as quoting the token (the provider echoed it there), and
        as holding a value the client's checks refuse (the provider took it
        some other way)."""
        restore, unknown = sent.undo_for(before)
        secret: set[str] = set()
        if self._mask is not None:
            secret = _echoing(restore, self._mask)
            restore = _without(restore, secret)
        refused = _refused(restore, self._check) if self._check is not None else set()
        restore = _without(restore, refused)
        covered = self.covered.setdefault(customer_key(before.id), set())
        # A custom field set by name in one record and by id in another is one field.
        restored = covered | _aliases(covered, before.custom_field_ids or {})
        kept = _without(restore, restored)
        # A field left out (not read, quoting the key, or refused) is done with
        # too: a later record's value for it is the run's, not what the customer
        # had before it.
        unknown = tuple(path for path in unknown if path not in restored)
        covered.update(_paths(kept) | secret | refused | set(unknown))
        if kept:
            line = json.dumps({"id": before.id, "patch": kept.to_dict()}).encode() + b"\n"
            self._put(line)
            self.written += 1
            if self.first is None:
                self.first = _line_print(line)
        quoting = tuple(sorted(path for path in secret if path not in restored))
        invalid = tuple(sorted(path for path in refused if path not in restored))
        self.missing += len(unknown) + len(quoting) + len(invalid)
        return unknown, quoting, invalid

    def _put(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        try:
            _write_all(self._file, data)
        except OSError as e:
            self.error = ReportWriteError(self.path, e, what="the undo file")
            raise self.error from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()


def _paths(patch: CustomerPatch) -> set[str]:
    """Every field a patch sets, custom fields one by one."""
    paths: set[str] = set()
    for path, value in patch.set_fields():
        if path == "custom_fields":
            paths.update(f"custom_fields[{k!r}]" for k in value)
        else:
            paths.add(path)
    paths.update(f"extra.{k}" for k in patch.extra)
    return paths


def _refused(
    patch: CustomerPatch, check: Callable[[CustomerPatch], Sequence[Problem]]
) -> set[str]:
    """The fields of ``patch`` (named as by :func:`_paths`) that ``check`` finds a
    problem in, each checked alone: a problem of one field (or one a check
    names by a group, as "custom_fields", or by none) costs no other field."""
    paths = _paths(patch)
    return {path for path in paths if check(_without(patch, paths - {path}))}


def _echoing(patch: CustomerPatch, mask: Callable[[str], str]) -> set[str]:
    """The fields of ``patch`` (named as by :func:`_paths`) whose value ``mask`` changes."""

    def echoes(value: Any) -> bool:
        text = json.dumps(value, default=repr, ensure_ascii=False)
        return mask(text) != text

    found: set[str] = set()
    for path, value in patch.set_fields():
        if path == "custom_fields":
            found.update(f"custom_fields[{k!r}]" for k, v in value.items() if echoes(v))
        elif echoes(value):
            found.add(path)
    found.update(f"extra.{k}" for k, v in patch.extra.items() if echoes(v))
    return found


def _aliases(paths: set[str], names: Mapping[int, str | None]) -> set[str]:
    """The other key of each custom field in ``paths``: its name for its id, its id
    for its name (where no other field of the customer has that name)."""
    shared = shared_names(names)
    other: set[str] = set()
    for field_id, name in names.items():
        if not name or name in shared:  # no name (or an empty one), or one of several fields
            continue
        by_id, by_name = f"custom_fields[{field_id!r}]", f"custom_fields[{name!r}]"
        if by_id in paths:
            other.add(by_name)
        if by_name in paths:
            other.add(by_id)
    return other


def _without(patch: CustomerPatch, covered: set[str]) -> CustomerPatch:
    """``patch`` without the fields in ``covered``."""
    values: dict[str, Any] = {}
    external: dict[str, Any] = {}
    for path, value in patch.set_fields():
        if path == "custom_fields":
            kept = {k: v for k, v in value.items() if f"custom_fields[{k!r}]" not in covered}
            if kept:
                values[path] = kept
        elif path in covered:
            continue
        elif path.startswith("external_ids."):
            external[path.removeprefix("external_ids.")] = value
        else:
            values[path] = value
    if external:
        values["external_ids"] = ExternalIds(**external)
    extra = {k: v for k, v in patch.extra.items() if f"extra.{k}" not in covered}
    return CustomerPatch(**values, extra=extra)
