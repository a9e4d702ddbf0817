"""Reading update files: JSONL or CSV, each record checked before anything is sent.

JSONL: one ``{"id": ..., "patch": {...}}`` per line, the patch in the neutral
form of :meth:`CustomerPatch.from_dict`.  CSV: a column ``id`` and columns
named after neutral fields; an empty cell leaves the field alone and a cell
reading ``null`` clears it.  Structured fields (``tax_ids``, addresses,
``custom_fields``, ``external_ids``, ``extra``) take JSON; ``external_ids.crm``
and friends take text; ``custom_fields.<name>`` takes a JSON value, or text
when the cell is not JSON (write ``"42"`` with quotes for the text 42).

Files are read as bytes and split at ``\\n`` only (``\\r\\n`` is accepted), so a
bare CR inside a JSONL line (legal JSON whitespace) never splits it, and each
line is decoded on its own: a line that is not UTF-8, not JSON, nested too
deeply or holding a number too long to read is an invalid record with its
line number, never the end of the run.  A UTF-8 byte-order mark at the start
is ignored.  Each record carries a hash of its bytes, which the report keeps
so that ``--resume`` can tell whether it is given the same file.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import os
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import attrs
from attrs import define, frozen

from customer_patch._adapter import Adapter, NotJSONError, strict_loads
from customer_patch._bulk import customer_key
from customer_patch._errors import CustomerPatchError, Problem, ValidationError, quoted
from customer_patch._model import CustomerPatch, ExternalIds
from customer_patch.cli._pipe import Stoppable, stoppable

_STRUCTURED = {
    "tax_ids",
    "external_ids",
    "billing_address",
    "shipping_address",
    "custom_fields",
    "extra",
}
_TEXT = {a.name for a in attrs.fields(CustomerPatch)} - _STRUCTURED
_EXTERNAL = {f"external_ids.{a.name}" for a in attrs.fields(ExternalIds)}
FORMATS = ("jsonl", "csv")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
_BOM = b"\xef\xbb\xbf"
DIGEST_CHARS = 16
"""Hex characters of a record's SHA-256 kept in the report (64 bits)."""
MAX_LINE = 64 * 1024 * 1024
"""The longest line read (64 MiB): a file with a longer one is not a file of
updates (``/dev/zero``, a binary file), and is refused there."""
CSV_FIELD_LIMIT = 8 * 1024 * 1024
"""The largest CSV cell read (the csv module's default is 128 KiB); a larger one
makes its record invalid."""


class InputError(Exception):
    """The input as a whole cannot be read (unknown format, no usable CSV header)."""


@frozen
class Line:
    """One record of an update file: valid (``patch`` set) or not (``error`` set)."""

    number: int
    """The record's (first) line in the file, from 1."""
    customer_id: Any
    patch: CustomerPatch | None = None
    error: CustomerPatchError | None = None
    digest: str = ""
    """A hash of the record's bytes (for a CSV, with its header's)."""
    path: str = ""
    """The request's path below the base URL, when valid."""
    body: bytes = b""
    """The request's JSON body, when valid."""

    @property
    def key(self) -> str:
        """The customer this record updates, as a string that tells customers apart."""
        return customer_key(self.customer_id)


@frozen
class _Raw:
    number: int
    digest: str
    customer_id: Any
    data: Any  # the patch's neutral form, or a Problem


@define
class Source:
    """Where the updates come from: a file, a named pipe, or standard input."""

    name: str
    """How messages name it (``-`` for standard input)."""
    format: str
    path: Path | None = None
    """A regular file, which can be read more than once; else ``None``."""
    stream: IO[bytes] | None = None
    """A stream that can be read once (standard input, a named pipe)."""
    owns_stream: bool = False
    _spool: IO[bytes] | None = None

    @classmethod
    def of(cls, path: Path, fmt: str | None = None, stdin: IO[bytes] | None = None) -> Source:
        """The source ``path`` names (``-`` is standard input), in format ``fmt`` or by suffix."""
        if str(path) == "-":
            if stdin is None:  # `<&-`: Python's own stand-in for a closed descriptor 0
                raise InputError("-: standard input is closed; nothing to read")
            if _waits(stdin):  # a pipe or a terminal: its own reader, which stops
                fd = stdin.fileno()
                stream = stoppable(io.FileIO(fd, "rb", closefd=False))
                return cls(name="-", format=fmt or "jsonl", stream=stream, owns_stream=True)
            return cls(name="-", format=fmt or "jsonl", stream=stdin)
        fmt = fmt or _SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise InputError(
                f"{path}: unknown format {path.suffix!r}; use .jsonl or .csv, or say --format"
            )
        if is_regular(path):
            return cls(name=str(path), format=fmt, path=path)
        try:  # a named pipe or a device; unbuffered, to be buffered by its reader
            stream = stoppable(path.open("rb", buffering=0))
        except OSError as e:
            raise InputError(f"{path}: cannot be read ({e.strerror})") from None
        return cls(name=str(path), format=fmt, stream=stream, owns_stream=True)

    @property
    def rereadable(self) -> bool:
        return self.path is not None or self._spool is not None

    @property
    def waits(self) -> Stoppable | None:
        """The stream the records are read from, if a read of it may wait."""
        if self.rereadable or self.stream is None:
            return None
        raw = getattr(self.stream, "raw", None)
        return raw if isinstance(raw, Stoppable) else None

    def spool(self) -> None:
        """Copy a one-pass stream to a temporary file, so it can be read twice."""
        if self.rereadable:
            return
        assert self.stream is not None
        try:
            spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise InputError(self._not_copied(e)) from None
        try:
            shutil.copyfileobj(self.stream, spool)
        except OSError as e:  # a full disk, a file size limit
            spool.close()
            raise InputError(self._not_copied(e)) from None
        self._spool = spool

    def _not_copied(self, error: OSError) -> str:
        name = "standard input" if self.name == "-" else self.name
        return (
            f"{name} cannot be copied aside to be read twice (--strict and --resume "
            f"read it twice): {error.strerror or error}; nothing was sent"
        )

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        """The bytes, from the start for a file or a spooled stream."""
        if self.path is not None:
            try:
                f = self.path.open("rb")
            except OSError as e:
                raise InputError(f"{self.path}: cannot be read ({e.strerror})") from None
            with f:
                yield f
        elif self._spool is not None:
            self._spool.seek(0)
            yield self._spool
        else:
            assert self.stream is not None
            yield self.stream

    def count(self) -> int | None:
        """How many records there are (for progress), or ``None`` when that would
        consume a stream."""
        if not self.rereadable:
            return None
        with self.open() as f:
            lines = sum(1 for line in _physical_lines(f, self.name) if line.strip())
        return max(0, lines - 1) if self.format == "csv" else lines

    def close(self) -> None:
        """Close what this source opened (standard input's descriptor stays open)."""
        for f in (self._spool, self.stream if self.owns_stream else None):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


def _waits(stream: IO[bytes]) -> bool:
    """Whether a read of ``stream`` may wait for its writer (not a regular file)."""
    try:
        return not stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):  # no descriptor: in memory
        return False


def is_regular(path: Path) -> bool:
    """Whether ``path`` is a regular file (not a pipe, a device or a socket)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_updates(
    source: Source | Path,
    adapter: Adapter,
    *,
    delimiter: str | None = None,
    match_on: str | None = None,
) -> Iterator[Line]:
    """Every record of ``source``, checked against ``adapter``'s rules; lazily.

    With ``match_on``, records name their customer by that key (a column, or
    a JSONL key) instead of ``id``; the id is found when the run reads it.
    """
    if isinstance(source, Path):
        source = Source.of(source)
    with source.open() as f:
        for raw in _records(f, source, adapter, delimiter, match_on or "id"):
            yield _check(raw, adapter, match_on)


def read_digests(
    source: Source, adapter: Adapter, *, delimiter: str | None = None, match_on: str | None = None
) -> Iterator[tuple[int, str]]:
    """``(line, digest)`` of every record, without checking them."""
    with source.open() as f:
        for raw in _records(f, source, adapter, delimiter, match_on or "id"):
            yield raw.number, raw.digest


def count_records(path: Path) -> int:
    """How many records the file ``path`` holds (for progress), without parsing them."""
    count = Source.of(path).count()
    assert count is not None
    return count


def _records(
    f: IO[bytes], source: Source, adapter: Adapter, delimiter: str | None, key: str
) -> Iterator[_Raw]:
    lines = _physical_lines(f, source.name)
    if source.format == "csv":
        return _csv(lines, source.name, adapter, delimiter, key)
    return _jsonl(lines, key)


def _physical_lines(f: IO[bytes], name: str = "") -> Iterator[bytes]:
    """Lines split at ``\\n`` only, each with its ending; a leading BOM removed.

    Raises :class:`InputError` at a line longer than :data:`MAX_LINE`
    (``/dev/zero``, a binary file), never read on: memory and time never grow
    with a line."""
    first = True
    number = 0
    # A binary file splits at b"\n" and nowhere else.
    while line := f.readline(MAX_LINE + 1):
        number += 1
        if first:
            first = False
            if line.startswith(_BOM):
                line = line[len(_BOM) :]
        if len(line) > MAX_LINE:
            raise InputError(
                f"{name}:{number}: a line longer than {MAX_LINE >> 20} MiB: not a file of updates"
            )
        yield line


def _content(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


def _check(raw: _Raw, adapter: Adapter, match_on: str | None = None) -> Line:
    number, customer_id, data = raw.number, raw.customer_id, raw.data
    if isinstance(data, Problem):
        return Line(number, customer_id, error=ValidationError([data]), digest=raw.digest)
    if match_on is not None and not (isinstance(customer_id, str) and customer_id.strip()):
        problem = Problem(match_on, f"must be a non-empty string, not {quoted(customer_id, 40)}")
        return Line(number, customer_id, error=ValidationError([problem]), digest=raw.digest)
    try:
        patch = CustomerPatch.from_dict(data)
    except ValidationError as e:  # paths are relative to the patch: say so
        problems = [Problem(f"patch.{p.field}".rstrip("."), p.message) for p in e.problems]
        return Line(number, customer_id, error=ValidationError(problems), digest=raw.digest)
    except (RecursionError, TypeError, ValueError) as e:
        return _invalid(raw, _unreadable(e))
    try:  # every provider rule, before sending
        if match_on is None:
            path, body = adapter.prepare_update(customer_id, patch)
        else:  # the id is not known before the run looks the key up
            path, body = "", adapter.prepare_body(patch)
    except CustomerPatchError as e:
        return Line(number, customer_id, error=e, digest=raw.digest)
    except (RecursionError, TypeError, ValueError) as e:
        return _invalid(raw, _unreadable(e))
    return Line(number, customer_id, patch, digest=raw.digest, path=path, body=body)


def _invalid(raw: _Raw, message: str) -> Line:
    error = ValidationError([Problem("", message)])
    return Line(raw.number, raw.customer_id, error=error, digest=raw.digest)


def _unreadable(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply to read"
    if "integer string conversion" in str(e):
        return "holds a number with more than 4,300 digits"
    return f"cannot be read: {e}"


class _DuplicateKeyError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        counts = Counter(k for k, _ in pairs)
        twice = next(k for k, n in counts.items() if n > 1)
        raise _DuplicateKeyError(f"key {json.dumps(twice)} is given twice")
    return record


def _jsonl(lines: Iterable[bytes], key: str = "id") -> Iterator[_Raw]:
    for number, line in enumerate(lines, start=1):
        content = _content(line)
        if not content.strip():
            continue
        digest = _digest(content)
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as e:
            yield _Raw(number, digest, None, Problem("", f"not UTF-8 (byte {e.start + 1})"))
            continue
        try:
            # Strict: an id NaN would go into the report, which other tools cannot read.
            record = strict_loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            problem = Problem("", f"not valid JSON: {e.msg} at column {e.pos + 1}")
            yield _Raw(number, digest, None, problem)
            continue
        except NotJSONError as e:
            yield _Raw(number, digest, None, Problem("", f"not valid JSON: {e}"))
            continue
        except _DuplicateKeyError as e:
            yield _Raw(number, digest, None, Problem("", str(e)))
            continue
        except (RecursionError, ValueError) as e:
            yield _Raw(number, digest, None, Problem("", _unreadable(e)))
            continue
        if not isinstance(record, dict) or set(record) != {key, "patch"}:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            problem = Problem("", f'expected {{"{key}": ..., "patch": {{...}}}}, got {keys}')
            yield _Raw(number, digest, None, problem)
            continue
        customer_id = record[key]
        if not isinstance(customer_id, str | int | float | bool | None):
            # Any other id is refused by every adapter; keep it out of the report.
            problem = Problem(
                key, f"must be a string or a number, not {type(customer_id).__name__}"
            )
            yield _Raw(number, digest, None, problem)
            continue
        yield _Raw(number, digest, customer_id, record["patch"])


def _delimiter(header: bytes) -> str:
    """``,`` if the header row has one, else ``;``, else a tab, else ``,``."""
    for candidate in (b",", b";", b"\t"):
        if candidate in header:
            return candidate.decode()
    return ","


def _csv(
    lines: Iterator[bytes], name: str, adapter: Adapter, delimiter: str | None, key: str = "id"
) -> Iterator[_Raw]:
    first = next(lines, b"")
    delimiter = delimiter or _delimiter(first)
    consumed = 0
    pending: list[bytes] = []

    def feed() -> Iterator[str]:
        nonlocal consumed
        for line in itertools.chain([first] if first else [], lines):
            consumed += 1
            pending.append(line)
            yield line.decode("utf-8", "surrogateescape")

    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    # strict: a quote left open to the end of the file, or text after a closing
    # quote, is an error, not a cell that swallowed the rows after it.
    reader = csv.reader(feed(), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise InputError(f"{name}:1: the header row is not valid CSV ({e})") from None
    header_bytes = _content(b"".join(pending))
    pending.clear()
    if not header or key not in header:
        hint = "" if delimiter != "," else " (if it is not comma-separated, say --delimiter)"
        raise InputError(f"{name}:1: a CSV needs a header row with an '{key}' column{hint}")
    if key != "id" and "id" in header:
        raise InputError(f"{name}:1: with --match-on {key}, an 'id' column would be ambiguous")
    nameless = [str(n) for n, c in enumerate(header, start=1) if not c.strip()]
    if nameless:  # "id,name," : a comma too many at the end
        raise InputError(f"{name}:1: column(s) {', '.join(nameless)} have no name")
    twice = sorted(c for c, n in Counter(header).items() if n > 1)
    if twice:
        raise InputError(f"{name}:1: column(s) given twice: {', '.join(twice)}")
    unknown = [
        c
        for c in header
        if c != key
        and c not in _TEXT | _STRUCTURED | _EXTERNAL
        and not c.startswith("custom_fields.")
    ]
    if unknown:
        raise InputError(f"{name}:1: unknown column(s): {', '.join(unknown)}")
    header_hash = hashlib.sha256(header_bytes + b"\n")
    while True:
        start = consumed + 1
        problem: Problem | None = None
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            row, problem = [], Problem("", f"not valid CSV: {e}{_span(start, consumed)}")
        record = _content(b"".join(pending))
        pending.clear()
        digest_of = header_hash.copy()
        digest_of.update(record)
        digest = digest_of.hexdigest()[:DIGEST_CHARS]
        if problem is not None:
            yield _Raw(start, digest, None, problem)
            continue
        if not any(cell.strip() for cell in row):
            continue
        try:
            record.decode("utf-8")
        except UnicodeDecodeError as e:
            yield _Raw(start, digest, None, Problem("", f"not UTF-8 (byte {e.start + 1})"))
            continue
        if len(row) != len(header):
            counted = f"has {len(row)} cells; the header has {len(header)}"
            problem = Problem("", counted + _span(start, consumed))
            yield _Raw(start, digest, None, problem)
            continue
        cells = dict(zip(header, row, strict=True))
        raw_id = cells.pop(key).strip()
        customer_id: Any = raw_id
        numeric = raw_id.isascii() and raw_id.isdigit()
        if key == "id" and adapter.customer_id_type is int and numeric:
            try:
                customer_id = int(raw_id)
            except ValueError:
                problem = Problem("id", "has more than 4,300 digits")
                yield _Raw(start, digest, raw_id[:20] + "...", problem)
                continue
        try:
            yield _Raw(start, digest, customer_id, _row_to_patch(cells))
        except (RecursionError, ValueError) as e:
            message = str(e) if not isinstance(e, RecursionError) else _unreadable(e)
            yield _Raw(start, digest, customer_id, Problem("", message))


def _span(start: int, end: int) -> str:
    """For an invalid record read over several lines, which ones (a quote left open
    takes the lines after it into its cell)."""
    if end <= start:
        return ""
    return f" (lines {start} to {end} were read as one record: is a quote left open?)"


def _row_to_patch(cells: dict[str, str]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for column, cell in cells.items():
        if cell == "":
            continue
        group, dotted, key = column.partition(".")
        if dotted and cells.get(group, "") != "":
            raise ValueError(f"{group} is given both as JSON and by column {column}")
        if cell == "null":
            value: Any = None
        elif column in _TEXT or column in _EXTERNAL:
            value = cell
        elif dotted:  # custom_fields.<name>: JSON, or else text
            try:
                value = strict_loads(cell)
            except RecursionError:
                raise ValueError(f"{column}: nested too deeply to read") from None
            except ValueError:
                value = cell
        else:
            try:
                value = strict_loads(cell)
            except RecursionError:
                raise ValueError(f"{column}: nested too deeply to read") from None
            except ValueError as e:
                raise ValueError(f"{column}: not valid JSON: {e}") from None
        if dotted:
            patch.setdefault(group, {})[key] = value
        else:
            patch[column] = value
    return patch
