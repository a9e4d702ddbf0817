"""Reading update files: JSONL or CSV, each line checked before anything is sent.

JSONL: one ``{"id": ..., "patch": {...}}`` per line, the patch in the neutral
form of :meth:`CustomerPatch.from_dict`.  CSV: a column ``id`` and columns
named after neutral fields; an empty cell leaves the field alone and a cell
reading ``null`` clears it.  Structured fields (``tax_ids``, addresses,
``custom_fields``, ``external_ids``, ``extra``) take JSON; ``external_ids.crm``
and friends take text; ``custom_fields.<name>`` takes a JSON value, or text
when the cell is not JSON (write ``"42"`` with quotes for the text 42).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
from attrs import frozen

from customer_patch._adapter import Adapter
from customer_patch._errors import CustomerPatchError, Problem, ValidationError
from customer_patch._model import CustomerPatch, ExternalIds

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


class InputError(Exception):
    """The file as a whole cannot be read (unknown format, unknown CSV column)."""


@frozen
class Line:
    """One record of an update file: valid (``patch`` set) or not (``error`` set)."""

    number: int
    customer_id: Any
    patch: CustomerPatch | None = None
    error: CustomerPatchError | None = None


def read_updates(path: Path, adapter: Adapter) -> Iterator[Line]:
    """Every record of ``path``, checked against ``adapter``'s rules; lazily."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        raw = _jsonl(path)
    elif suffix == ".csv":
        raw = _csv(path, adapter)
    else:
        raise InputError(f"{path}: unknown format {suffix!r}; use .jsonl or .csv")
    for number, customer_id, data in raw:
        yield _check(number, customer_id, data, adapter)


def count_records(path: Path) -> int:
    """How many records ``path`` holds (for progress and ETA), without parsing them."""
    with path.open("rb") as f:
        lines = sum(1 for line in f if line.strip())
    return lines - 1 if path.suffix.lower() == ".csv" else lines


def _check(number: int, customer_id: Any, data: Any, adapter: Adapter) -> Line:
    if isinstance(data, Problem):
        return Line(number, customer_id, error=ValidationError([data]))
    try:
        patch = CustomerPatch.from_dict(data)
    except ValidationError as e:  # paths are relative to the patch: say so
        problems = [Problem(f"patch.{p.field}".rstrip("."), p.message) for p in e.problems]
        return Line(number, customer_id, error=ValidationError(problems))
    try:
        adapter.encode(customer_id, patch)  # every provider rule, before anything is sent
    except CustomerPatchError as e:
        return Line(number, customer_id, error=e)
    return Line(number, customer_id, patch)


def _jsonl(path: Path) -> Iterator[tuple[int, Any, Any]]:
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                yield number, None, Problem("", f"not valid JSON: {e.msg} at column {e.pos + 1}")
                continue
            if not isinstance(record, dict) or set(record) != {"id", "patch"}:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                yield (
                    number,
                    None,
                    Problem("", f'expected {{"id": ..., "patch": {{...}}}}, got {keys}'),
                )
                continue
            yield number, record["id"], record["patch"]


def _csv(path: Path, adapter: Adapter) -> Iterator[tuple[int, Any, Any]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or "id" not in header:
            raise InputError(f"{path}:1: a CSV needs a header row with an 'id' column")
        unknown = [
            c
            for c in header
            if c != "id"
            and c not in _TEXT | _STRUCTURED | _EXTERNAL
            and not c.startswith("custom_fields.")
        ]
        if unknown:
            raise InputError(f"{path}:1: unknown column(s): {', '.join(unknown)}")
        for row in reader:
            number = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield (
                    number,
                    None,
                    Problem("", f"has {len(row)} cells; the header has {len(header)}"),
                )
                continue
            cells = dict(zip(header, row, strict=True))
            raw_id = cells.pop("id").strip()
            as_int = adapter.customer_id_type is int and raw_id.isascii() and raw_id.isdigit()
            customer_id: Any = int(raw_id) if as_int else raw_id
            try:
                yield number, customer_id, _row_to_patch(cells)
            except ValueError as e:
                yield number, customer_id, Problem("", str(e))


def _row_to_patch(cells: dict[str, str]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for column, cell in cells.items():
        if cell == "":
            continue
        if cell == "null":
            value: Any = None
        elif column in _TEXT or column in _EXTERNAL:
            value = cell
        elif column.startswith("custom_fields."):
            try:
                value = json.loads(cell)
            except ValueError:
                value = cell
        else:
            try:
                value = json.loads(cell)
            except ValueError as e:
                raise ValueError(f"{column}: not valid JSON: {e}") from None
        if "." in column:
            group, _, key = column.partition(".")
            members = patch.setdefault(group, {})
            if not isinstance(members, dict):
                raise ValueError(f"{group} is given both as JSON and by column")
            members[key] = value
        else:
            patch[column] = value
    return patch
