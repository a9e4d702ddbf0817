"""The adapter contract: how a provider's wire format plugs into the core.

Adapters are sans-I/O.  Building a request and reading a response are plain
functions of plain values; the client hands the :class:`Request` to the
transport and the :class:`Response` back here.  An adapter *declares* its
provider (field map, limits, paths, auth) and fills in four hooks
(``update_path``, ``auth_headers``, ``customer_from``, ``error_details``),
with three more it may override (``check_customer_id``, ``same_customer``,
``unknown_custom_fields``).  Reading is declared the same way: the list's
filters (``list_filters``, ``list_defaults``, ``match_keys``, ``ids_filter``,
``page_size``) and the read hooks (``get_path``, ``list_path``,
``custom_fields_path``, ``page_query``, ``page_from``, ``definition_from``,
``check_custom_field_value``), whose defaults say the provider documents no
list and no custom fields.  The machinery below (unset filtering,
unsupported fields, nullability, checks, ``extra`` clashes, path safety,
status-to-exception mapping, the request builders and response parsers of
every operation, what a value a plan sends reads back as) is shared by
every adapter so none of them can get it subtly wrong.
"""

from __future__ import annotations

import functools
import json
import json.scanner
import math
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote, urlencode

from attrs import field, frozen

from customer_patch._checks import check_choices, check_flag, on_field
from customer_patch._errors import (
    Problem,
    ProviderError,
    RateLimitedError,
    ResponseFormatError,
    UnknownCustomFieldError,
    UnsupportedFieldError,
    UnsupportedOperationError,
    ValidationError,
    error_class_for,
    quoted,
)
from customer_patch._http import RateLimit, Request, Response, parse_retry_after, status_text
from customer_patch._model import (
    Customer,
    CustomerId,
    CustomerPatch,
    CustomFieldDefinition,
    CustomFieldKey,
    ExternalIds,
)
from customer_patch.wire import Check, type_name

T = TypeVar("T")

# json.dumps() with options builds a new encoder per call; reuse one instead.
# allow_nan=False: NaN and Infinity are not JSON, whatever Python's json allows.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# The same encoder's C core, called without JSONEncoder.encode's Python layers
# (a few microseconds an update).  No cycle markers: a cycle is a RecursionError,
# which every caller treats as "nested too deeply".
_make_encoder = getattr(json.encoder, "c_make_encoder", None)  # not in typeshed
_C_ENCODE = (
    None
    if _make_encoder is None
    else _make_encoder(
        None, _JSON.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
)


def _dumps(value: Any) -> str:
    """``value`` as compact JSON; raises like :meth:`json.JSONEncoder.encode`."""
    if _C_ENCODE is None or isinstance(value, str):
        return _JSON.encode(value)
    return "".join(_C_ENCODE(value, 0))


class NotJSONError(ValueError):
    """NaN, Infinity, or a number too large for a float (read as inf): Python's
    json reads them, but JSON has no such number, and a report or a plan that
    quotes the value would hold what strict JSON readers refuse."""


def _no_constant(name: str) -> Any:
    raise NotJSONError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise NotJSONError(f"{text:.40} is too large a number")
    return value


def strict_loads(data: str | bytes, **options: Any) -> Any:
    """``json.loads(data, **options)``, raising :class:`NotJSONError` for what JSON
    does not have: the one reader of JSON from a provider or a file of updates."""
    return json.loads(data, parse_constant=_no_constant, parse_float=_finite, **options)


# json.loads(bytes) guesses the encoding and strips whitespace in Python before
# its C scanner runs (about a microsecond an answer).  A body that is plain
# UTF-8 JSON with nothing around it goes to the scanner directly; anything else
# (a BOM, UTF-16, whitespace, an error) is left to strict_loads, so every
# result and every error is its own.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)
_scan_once = getattr(json.scanner, "c_make_scanner", None)  # not in typeshed
_SCAN = None if _scan_once is None else _scan_once(_DECODER)
_EDGES = frozenset(" \t\n\r\ufeff")


def _loads(body: bytes) -> Any:
    """``strict_loads(body)``, with a shortcut for the common case."""
    if _SCAN is not None and body:
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return strict_loads(body)
        if text[0] not in _EDGES and text[-1] not in _EDGES:
            try:
                value, end = _SCAN(text, 0)
            except (StopIteration, json.JSONDecodeError):
                pass  # not JSON: json.loads says why
            else:
                if end == len(text):
                    return value
    return strict_loads(body)


# The characters quote(..., safe="") leaves as they are (RFC 3986 unreserved).
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_.~-]+")


def _no_problems(value: Any) -> list[str]:
    return []


def _as_is(value: Any) -> Any:
    return value


def _text_or_null(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"expected a string or null, got {type_name(value)}")


def _key(instance: object, attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string, got {quoted(value)}")


def _function(instance: object, attribute: Any, value: Any) -> None:
    if not callable(value):
        raise TypeError(f"{attribute.name} must be callable, got {quoted(value)}")


@frozen(kw_only=True)
class WireField:
    """How one neutral field travels to a provider."""

    wire: str = field(validator=_key)
    """The key in the provider's JSON body."""
    nullable: bool = field(default=True, validator=on_field(check_flag))
    """Whether ``None`` (clear the field) is allowed."""
    check: Check = field(default=_no_problems, validator=_function)
    """What makes a (non-``None``) value acceptable; see :mod:`customer_patch.wire`."""
    encode: Callable[[Any], Any] = field(default=_as_is, validator=_function)
    """Turns a valid neutral value into its JSON form."""
    decode: Callable[[Any], Any] = field(default=_text_or_null, validator=_function)
    """Reads the neutral value back from the provider's JSON (given ``None`` when the
    key is absent or null); raises on a value of the wrong shape.  The default
    takes a string or ``None``."""


@frozen(kw_only=True)
class ListFilter:
    """One documented filter of a provider's list: how a value is checked and sent."""

    wire: str = field(validator=_key)
    """The query parameter's name."""
    item: type = str
    """``str`` or ``int``: the type of each value."""
    many: bool = field(default=False, validator=on_field(check_flag))
    """Takes a list of values, sent as the parameter repeated (``id=1&id=2``)."""
    choices: frozenset[str] | None = field(default=None, validator=on_field(check_choices))
    """The values allowed, when the provider documents an enumeration."""

    def check(self, value: Any) -> list[str]:
        """What is wrong with ``value`` (a list or tuple when :attr:`many`)."""
        values = list(value) if self.many and isinstance(value, list | tuple) else [value]
        if self.many and not values:
            return ["must list at least one value"]
        problems = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, self.item):
                problems.append(f"must be {self.item.__name__}, not {type_name(v)}")
            elif v == "":  # "contains nothing" matches every customer
                problems.append("must not be empty")
            elif self.choices is not None and v not in self.choices:
                problems.append(f"must be one of {', '.join(sorted(self.choices))}; got {v!r}")
        return problems

    def encode(self, value: Any) -> list[str]:
        """The query values for a checked ``value``."""
        values = value if self.many and isinstance(value, list | tuple) else [value]
        return [str(v) for v in values]


@frozen(kw_only=True)
class Tooling:
    """What tools around an adapter need to know of it; none of it goes on the wire."""

    token_env: str | None = None
    """The environment variable the command line reads the token from (``None``:
    the generic ``CUSTOMER_PATCH_TOKEN``)."""
    sandbox: str | None = None
    """``"pkg.mod:Class"`` of this provider's fake (a ``FakeProvider``), if it ships one."""


class Adapter(ABC):
    """The base of every provider adapter.

    A subclass declares its provider as class attributes and implements
    :meth:`update_path`, :meth:`auth_headers`, :meth:`customer_from` and
    :meth:`error_details`.  Everything else has a shared implementation.  A
    customer is read with the update's path unless :meth:`get_path` says
    otherwise; a list (:meth:`list_path`, :attr:`list_filters`) and custom
    field definitions (:meth:`custom_fields_path`, :meth:`definition_from`)
    exist only where a subclass declares them.
    """

    provider: ClassVar[str]
    """The provider's name as people write it, used in messages."""
    default_base_url: ClassVar[str]
    method: ClassVar[str] = "PATCH"
    """Must be idempotent (PATCH or PUT): failed attempts are sent again."""
    fields: ClassVar[Mapping[str, WireField]]
    """Neutral field path (``"name"``, ``"external_ids.crm"``) to its wire form.
    A neutral field not listed here cannot be patched at this provider."""
    read_only: ClassVar[frozenset[str]] = frozenset()
    """Wire keys the provider documents as not patchable; refused in ``extra``."""
    rate_limits: ClassVar[tuple[RateLimit, ...]] = ()
    """The provider's documented limits; the client paces every request to all of
    them, a :attr:`RateLimit.per_route` one separately for each route and method."""
    customer_id_type: ClassVar[type] = str
    """``str`` or ``int``: what kind of customer id the provider uses."""
    tooling: ClassVar[Tooling] = Tooling()
    """What the command line and the sandbox need to know: not wire facts."""

    # -- what a subclass provides -------------------------------------------------

    @abstractmethod
    def update_path(self, segment: str) -> str:
        """The path (below the base URL) to patch a customer.

        ``segment`` is the customer id already percent-encoded as one path segment.
        """

    @abstractmethod
    def auth_headers(self, token: str) -> Mapping[str, str]:
        """The headers that carry the credentials (masked wherever they are shown)."""

    @abstractmethod
    def customer_from(self, data: Any) -> Customer:
        """Read the neutral customer from a successful response's JSON.

        May raise (``KeyError``, ``TypeError``, ``ValueError``...) on a body of
        the wrong shape: that becomes a :class:`ResponseFormatError`.
        """

    @abstractmethod
    def error_details(
        self, status: int, data: Any
    ) -> tuple[str, Mapping[str, Sequence[str]]] | None:
        """``(message, field_errors)`` if the JSON body reports an error, else ``None``."""

    def check_customer_id(self, customer_id: object) -> list[str]:
        """What is wrong with a customer id, by the provider's rules."""
        if self.customer_id_type is int:
            if isinstance(customer_id, bool) or not isinstance(customer_id, int):
                return [f"must be an integer, not {type_name(customer_id)}"]
            return [] if customer_id > 0 else ["must be a positive integer"]
        if not isinstance(customer_id, str):
            return [f"must be a string, not {type_name(customer_id)}"]
        return [] if customer_id else ["must not be empty"]

    def unknown_custom_fields(
        self, field_errors: Mapping[str, Sequence[str]], sent: Mapping[str, Any]
    ) -> list[str]:
        """Names of sent custom fields that a 422 says are unknown (default: none)."""
        return []

    # -- reading: what a provider documents (the defaults: nothing) ------------------

    list_filters: ClassVar[Mapping[str, ListFilter]] = {}
    """The customer list's documented filters, by the name callers use."""
    list_defaults: ClassVar[Mapping[str, Any]] = {}
    """Filters every list is read with unless the caller gives them: an ordering
    that does not move while records are updated, so paging misses nothing."""
    match_keys: ClassVar[frozenset[str]] = frozenset()
    """List filters that match one key exactly (no "contains"): a bulk run may
    name its customers by one of them instead of the provider's id."""
    ids_filter: ClassVar[str | None] = None
    """The list filter that takes many customer ids at once, if there is one:
    a bulk run reads a page of customers with one request instead of one each."""
    page_size: ClassVar[int] = 100
    """The most items one page of a list holds: the ``limit`` each page asks for,
    the ids one batch read of a bulk run names, and the most a page may answer
    (a page with more is refused as a :class:`ResponseFormatError`)."""

    def get_path(self, segment: str) -> str | None:
        """The path to read one customer (default: the update's); ``None``: no way."""
        return self.update_path(segment)

    def list_path(self) -> str | None:
        """The path of the customer list, or ``None`` if the provider documents none."""
        return None

    def custom_fields_path(self) -> str | None:
        """The path (query included) of the customer custom-field definitions, or ``None``."""
        return None

    def page_query(self, *, offset: int, limit: int) -> list[tuple[str, str]]:
        """The query parameters of one page (default: ``limit`` and ``offset``)."""
        return [("limit", str(limit)), ("offset", str(offset))]

    def page_from(self, data: Any) -> tuple[Sequence[Any], int]:
        """A page's items and the list's total count (default: ``{"items", "count"}``)."""
        items, count = data["items"], data["count"]
        if not isinstance(items, list) or isinstance(count, bool) or not isinstance(count, int):
            raise TypeError("a page must hold a list of items and an integer count")
        return items, count

    def definition_from(self, data: Any) -> CustomFieldDefinition:
        """Read one custom-field definition; may raise on a body of the wrong shape."""
        raise NotImplementedError

    def read_back(self, path: str, value: Any) -> Any:
        """What a field set to ``value`` reads back as, for a plan's prediction:
        through its ``decode`` where the wire carries the value as it is (a
        provider that shows a cleared text as ``""`` reads as ``None`` both);
        otherwise ``value``."""
        spec = self.fields.get(path)
        if spec is None or value is None or spec.encode is not _as_is:
            return value
        try:
            return spec.decode(value)
        except Exception:  # not the shape an answer has: predicted as sent
            return value

    def check_custom_field_value(self, definition: CustomFieldDefinition, value: Any) -> list[str]:
        """What is wrong with a (non-``None``) value for a field of this definition
        (default: nothing is checked)."""
        return []

    # -- shared machinery ------------------------------------------------------------

    def fields_from(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The neutral fields of a customer in the provider's JSON, read through
        :attr:`fields`, so each wire key is written once per adapter.

        For ``Customer(**adapter.fields_from(data), ...)``; ``external_ids.*``
        fields are gathered into one :class:`ExternalIds`, and when the answer
        lacks some keys, ``read_fields`` says which fields it had.
        """
        top, external, paths = self._read_plan
        values: dict[str, Any] = {}
        missing: list[str] = []
        for wire, path, decode, skip in top:
            if wire in data:
                values[path] = decode(data[wire])
            else:
                missing.append(path)
                if not skip:  # this decoder reads an absent key as something else
                    values[path] = decode(None)
        if external:
            members: dict[str, Any] = {}
            for wire, path, decode, _ in external:
                if wire not in data:
                    missing.append(path)
                members[path.removeprefix("external_ids.")] = decode(data.get(wire))
            values["external_ids"] = ExternalIds(**members)
        # What the answer left out is not known to be empty (a list shows fewer
        # fields than a get): CustomerPatch.changes_from keeps such fields.
        if missing:
            values["read_fields"] = self._read_fields(tuple(missing), paths)
        return values

    @functools.cached_property
    def _read_plan(
        self,
    ) -> tuple[
        tuple[tuple[str, str, Callable[[Any], Any], bool], ...],
        tuple[tuple[str, str, Callable[[Any], Any], bool], ...],
        tuple[str, ...],
    ]:
        # fields_from runs once per answer: sort the map into top-level fields
        # and ExternalIds members once per adapter, not once per customer, and
        # learn which decoders read an absent key as None (the Customer's
        # default), so such keys need no call at all.
        def skip(decode: Callable[[Any], Any]) -> bool:
            try:
                return decode(None) is None
            except Exception:
                return False

        plan = [(f.wire, p, f.decode, skip(f.decode)) for p, f in self.fields.items()]
        top = tuple(e for e in plan if not e[1].startswith("external_ids."))
        external = tuple(e for e in plan if e[1].startswith("external_ids."))
        return top, external, tuple(self.fields)

    def _read_fields(self, missing: tuple[str, ...], paths: tuple[str, ...]) -> frozenset[str]:
        # Answers of one kind (a list page, a get) leave out the same keys:
        # one frozenset each, shared, rather than one per customer.
        cache = self._read_fields_cache
        known = cache.get(missing)
        if known is None:
            known = frozenset(paths) - frozenset(missing)
            if len(cache) < 64:  # a provider that varies its keys gets no more
                cache[missing] = known
        return known

    @functools.cached_property
    def _read_fields_cache(self) -> dict[tuple[str, ...], frozenset[str]]:
        return {}

    def _patch_body(self, patch: CustomerPatch) -> tuple[dict[str, Any], list[Problem]]:
        """The JSON body for ``patch``, and what is wrong with it (then the body is partial).

        Raises :class:`UnsupportedFieldError` at once: a field the provider
        cannot patch is not a problem of its value.
        """
        problems: list[Problem] = []
        fields = self.fields
        extra = patch.extra
        # Construction never raises on content.  (A dict first: an ABC check costs.)
        if type(extra) is not dict and not isinstance(extra, Mapping):
            problems.append(Problem("extra", f"must be a mapping, not {type_name(extra)}"))
            extra = {}
        # Plain loops: a comprehension is a call of its own on Python 3.11, and
        # this runs once per record.
        values = []
        unsupported = []
        for path, value in patch.set_fields():
            spec = fields.get(path)
            if spec is None:
                unsupported.append(path)
            values.append((path, value, spec))
        if not values and not extra:
            problems.append(Problem("", "the patch sets no field: there is nothing to send"))
        if extra:
            unsupported += [f"extra.{k}" for k in extra if k in self.read_only]
        if unsupported:
            raise UnsupportedFieldError(unsupported, provider=self.provider)

        body: dict[str, Any] = {}
        for path, value, spec in values:
            assert spec is not None  # unsupported fields were refused above
            if value is None:
                if spec.nullable:
                    body[spec.wire] = None
                else:
                    problems.append(Problem(path, "cannot be cleared (None) at " + self.provider))
                continue
            try:
                found = spec.check(value)
            except RecursionError:  # a value nested deeper than any check can walk
                found = ["is nested too deeply"]
            if found:
                problems += [Problem(path, message) for message in found]
            elif spec.encode is _as_is:  # most fields: no call needed
                body[spec.wire] = value
            else:
                body[spec.wire] = spec.encode(value)

        if not extra:
            return body, problems
        mapped = {spec.wire: path for path, spec in fields.items()}
        for key, value in extra.items():
            if not isinstance(key, str):
                problems.append(Problem("extra", f"keys must be strings, not {type_name(key)}"))
            elif key in mapped:
                problems.append(Problem(f"extra.{key}", f"is the mapped field {mapped[key]!r}"))
            else:
                try:
                    _dumps(value)
                except RecursionError:
                    problems.append(Problem(f"extra.{key}", "is nested too deeply"))
                except (TypeError, ValueError) as e:
                    problems.append(Problem(f"extra.{key}", f"is not JSON: {e}"))
                else:
                    body[key] = value
        return body, problems

    def prepare_update(self, customer_id: CustomerId, patch: CustomerPatch) -> tuple[str, bytes]:
        """Validate an update and return its path (below the base URL) and JSON body.

        Raises :class:`UnsupportedFieldError`, then :class:`ValidationError`
        listing every problem of the id and the patch at once.
        """
        if not isinstance(patch, CustomerPatch):
            raise TypeError(f"expected a CustomerPatch, got {type_name(patch)}")
        segment, problems = self._segment(customer_id)
        body, patch_problems = self._patch_body(patch)
        problems += patch_problems
        if problems:
            raise ValidationError(problems, provider=self.provider)
        return self.update_path(segment), self._encoded(body)

    def prepare_body(self, patch: CustomerPatch) -> bytes:
        """Validate a patch alone (the customer is not known yet) and return its body."""
        if not isinstance(patch, CustomerPatch):
            raise TypeError(f"expected a CustomerPatch, got {type_name(patch)}")
        body, problems = self._patch_body(patch)
        if problems:
            raise ValidationError(problems, provider=self.provider)
        return self._encoded(body)

    def _encoded(self, body: dict[str, Any]) -> bytes:
        try:
            encoded = _dumps(body).encode()
        except UnicodeEncodeError:
            problem = Problem("", "contains text that is not valid Unicode (a lone surrogate)")
            raise ValidationError([problem], provider=self.provider) from None
        except (RecursionError, ValueError, TypeError) as e:  # an adapter's encode went astray
            problem = Problem("", f"cannot be written as JSON ({type(e).__name__})")
            raise ValidationError([problem], provider=self.provider) from None
        return encoded

    def check_custom_fields(
        self, values: Mapping[CustomFieldKey, Any], definitions: Sequence[CustomFieldDefinition]
    ) -> tuple[list[str], list[Problem]]:
        """Custom field values against the provider's definitions, before sending:
        the names no active field has, and every other problem.

        A name two active fields share cannot say which is meant: the problem
        names the ids to use instead.  One field given twice (by its name and
        by its id) is a problem too: which value lands would be up to chance.
        Values are checked by :meth:`check_custom_field_value`; ``None``
        (clear) always passes.
        """
        # By id: a list paged by offset repeats a definition when one is added
        # meanwhile, and one field listed twice is not two fields sharing a name.
        active = list({d.id: d for d in definitions if d.is_active}.values())
        by_name: dict[str, list[CustomFieldDefinition]] = {}
        for d in active:
            by_name.setdefault(d.name, []).append(d)
        by_id = {d.id: d for d in active}
        unknown: list[str] = []
        problems: list[Problem] = []
        named_by: dict[int, CustomFieldKey] = {}  # definition id -> the key that named it
        for key, value in values.items():
            where = f"custom_fields[{key!r}]"
            if isinstance(key, str):
                matches = by_name.get(key, [])
                if not matches:
                    unknown.append(key)
                    continue
                if len(matches) > 1:
                    ids = " and ".join(str(d.id) for d in matches)
                    problems.append(
                        Problem(where, f"is the name of {len(matches)} fields; use an id: {ids}")
                    )
                    continue
                definition = matches[0]
            else:
                found = by_id.get(key)
                if found is None:
                    problems.append(Problem(where, "is not the id of an active customer field"))
                    continue
                definition = found
            first = named_by.setdefault(definition.id, key)
            if first != key:  # by name and by id: two values, one field
                problems.append(
                    Problem(where, f"is field {definition.id}, given already as {first!r}")
                )
                continue
            if value is not None:
                problems += [
                    Problem(where, m) for m in self.check_custom_field_value(definition, value)
                ]
        return unknown, problems

    def _segment(self, customer_id: CustomerId) -> tuple[str, list[Problem]]:
        """The id as one percent-encoded path segment, and what is wrong with it."""
        if isinstance(customer_id, uuid.UUID):
            customer_id = str(customer_id)
        found = self.check_customer_id(customer_id)
        problems = [Problem("id", m) for m in found] if found else []
        try:
            text = str(customer_id)
        except Exception as e:  # an int past the 4,300 digits Python writes, a bad __str__
            why = (
                "has too many digits to be written"
                if isinstance(customer_id, int) and isinstance(e, ValueError)
                else f"cannot be written as text ({type(e).__name__})"
            )
            return "", [*problems, Problem("id", why)]
        if _SAFE_SEGMENT.fullmatch(text):
            segment = text  # what quote() would return, without its cost
        else:
            try:
                segment = quote(text, safe="")
            except UnicodeEncodeError:
                segment = ""
                problems.append(Problem("id", "contains text that is not valid Unicode"))
        # quote() keeps dots; "." and ".." would climb out of the resource.
        if not problems and segment in {"", ".", ".."}:
            problems.append(Problem("id", f"{customer_id!r} is not a usable path segment"))
        return segment, problems

    @functools.cached_property
    def update_route(self) -> str:
        """The route of an update, for per-route rate limits."""
        return f"{self.method} {self.update_path('{id}')}"

    # -- reading: request builders ---------------------------------------------------

    def prepare_get(self, customer_id: CustomerId) -> tuple[str, str]:
        """Validate an id and return the path to read that customer, and its route.

        Raises :class:`UnsupportedOperationError` if the provider documents no
        way to read one customer, :class:`ValidationError` for a bad id.
        """
        if self.get_path("{id}") is None:
            raise UnsupportedOperationError("get a customer", provider=self.provider)
        path = self.get_path(self.prepare_id(customer_id))
        assert path is not None
        return path, f"GET {self.get_path('{id}')}"

    def prepare_id(self, customer_id: CustomerId) -> str:
        """Validate an id and return it as one percent-encoded path segment.

        Raises :class:`ValidationError` for an id the provider cannot have.
        """
        segment, problems = self._segment(customer_id)
        if problems:
            raise ValidationError(problems, provider=self.provider)
        return segment

    def prepare_list(
        self, filters: Mapping[str, Any], *, offset: int, limit: int | None = None
    ) -> tuple[str, str]:
        """The path (query included) of one page of the customer list, and its route.

        ``filters`` are checked against :attr:`list_filters`: a filter the
        provider does not document is refused, never dropped.
        """
        base = self.list_path()
        if base is None:
            raise UnsupportedOperationError("list customers", provider=self.provider)
        query: list[tuple[str, str]] = []
        problems: list[Problem] = []
        for name, value in filters.items():
            spec = self.list_filters.get(name)
            if spec is None:
                known = ", ".join(sorted(self.list_filters)) or "none"
                problems.append(
                    Problem(name, f"is not a filter {self.provider} documents ({known})")
                )
                continue
            found = spec.check(value)
            problems += [Problem(name, m) for m in found]
            if not found:
                query += [(spec.wire, v) for v in spec.encode(value)]
        if problems:
            raise ValidationError(problems, provider=self.provider)
        query += self.page_query(offset=offset, limit=limit or self.page_size)
        return _with_query(base, query), f"GET {base}"

    def prepare_definitions(self, *, offset: int) -> tuple[str, str]:
        """The path of one page of the customer custom-field definitions, and its route."""
        base = self.custom_fields_path()
        if base is None:
            raise UnsupportedOperationError(
                "read custom field definitions", provider=self.provider
            )
        path = _with_query(base, self.page_query(offset=offset, limit=self.page_size))
        return path, f"GET {base.split('?', 1)[0]}"

    def headers(
        self, token: str, extra: Mapping[str, str] | None = None
    ) -> tuple[dict[str, str], frozenset[str]]:
        """Every request header, and the (lower-case) names of those that are secret."""
        auth = self.auth_headers(token)
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            **(extra or {}),
            **auth,
        }
        return headers, frozenset(k.lower() for k in auth)

    def build_request(
        self,
        customer_id: CustomerId,
        patch: CustomerPatch,
        *,
        base_url: str,
        token: str,
        headers: Mapping[str, str] | None = None,
    ) -> Request:
        """Validate ``patch`` for ``customer_id`` and build the whole request; pure, no I/O."""
        path, body = self.prepare_update(customer_id, patch)
        all_headers, secret = self.headers(token, headers)
        return Request(
            method=self.method,
            url=base_url.rstrip("/") + path,
            headers=all_headers,
            body=body,
            secret_headers=secret,
            route=self.update_route,
        )

    def parse_response(
        self, response: Response, *, request: Request, customer_id: CustomerId | None = None
    ) -> Customer:
        """The updated customer, or the typed error the response stands for.

        ``request`` is what was sent, so a 422 can name the custom fields it is
        about.  With ``customer_id``, a customer whose id is another's is a
        :class:`ResponseFormatError`: that answer is not about this update.
        """
        data = self.read_json(response, request=request)
        customer = self._reading(self.customer_from, data, response)
        if customer_id is not None and not self.same_customer(customer_id, customer.id):
            raise ResponseFormatError(
                f"the answer is about customer {quoted(customer.id)}, not {customer_id!r}",
                provider=self.provider,
                status=response.status,
                body=response.body,
            )
        return customer

    def parse_page(self, response: Response, *, request: Request) -> tuple[list[Customer], int]:
        """One page of the customer list: its customers and the list's total count."""
        data = self.read_json(response, request=request)
        items, count = self._page_items(data, response)
        customers = [self._reading(self.customer_from, item, response) for item in items]
        for customer in customers:
            # Each is the customer its id names to every later request (and a key
            # in the reader's sets): an id of another shape is not a customer.
            if self.check_customer_id(customer.id):
                raise ResponseFormatError(
                    f"the list shows a customer whose id is {quoted(customer.id)}, "
                    f"not an id {self.provider} gives",
                    provider=self.provider,
                    status=response.status,
                    body=response.body,
                )
        return customers, count

    def parse_definitions(
        self, response: Response, *, request: Request
    ) -> tuple[list[CustomFieldDefinition], int]:
        """One page of custom-field definitions, and their total count."""
        data = self.read_json(response, request=request)
        items, count = self._page_items(data, response)
        return [self._reading(self.definition_from, item, response) for item in items], count

    def _page_items(self, data: Any, response: Response) -> tuple[Sequence[Any], int]:
        items, count = self._reading(self.page_from, data, response)
        if len(items) > self.page_size:
            # No read asks for more: within the body cap, a page of 600,000 tiny
            # items would become as many objects (hundreds of MB) for one page.
            raise ResponseFormatError(
                f"a page of {len(items)} items, more than the {self.page_size} asked "
                "for at most: not read",
                provider=self.provider,
                status=response.status,
                body=response.body,
            )
        return items, count

    def _reading(self, read: Callable[[Any], T], data: Any, response: Response) -> T:
        try:
            return read(data)
        except Exception as e:  # any way the provider's data defeats the parser
            raise ResponseFormatError(
                f"{type(e).__name__}: {e}",
                provider=self.provider,
                status=response.status,
                body=response.body,
            ) from e

    def read_json(self, response: Response, *, request: Request) -> Any:
        """The JSON of a successful answer, or the typed error the answer stands for."""
        status = response.status
        unreadable = None
        try:
            data: Any = _loads(response.body)
        # Not UTF-8: not JSON, as JSON with a character cut in two by a lost
        # connection is not (worth a retry, as any body that is not JSON).
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = _NOT_JSON
        except NotJSONError as e:
            data, unreadable = _NOT_JSON, f"JSON this client will not read: {e}"
        except (ValueError, RecursionError) as e:
            # Well-formed, perhaps, but past what this client reads: an integer
            # of more than 4,300 digits, or nesting deeper than the stack.
            data, unreadable = _NOT_JSON, f"JSON this client will not read ({type(e).__name__})"
        details = self.error_details(status, data) if data is not _NOT_JSON else None
        if status >= 300 or details is not None:
            raise self._error(response, details, request)
        if data is _NOT_JSON:
            raise ResponseFormatError(
                unreadable or "the body is not JSON",
                provider=self.provider,
                status=status,
                body=response.body,
                incomplete=unreadable is None,
            )
        return data

    def same_customer(self, sent: CustomerId, returned: object) -> bool:
        """Whether the id in an answer is the customer that was sent (default: equal)."""
        if isinstance(sent, uuid.UUID):
            sent = str(sent)
        return type(returned) is type(sent) and returned == sent

    def _error(
        self,
        response: Response,
        details: tuple[str, Mapping[str, Sequence[str]]] | None,
        request: Request,
    ) -> ProviderError:
        status = response.status
        if details is not None:
            message, field_errors = details
        elif 300 <= status < 400:
            location = response.headers.get("Location", "elsewhere")
            message, field_errors = f"redirect to {location} not followed", {}
        else:
            message, field_errors = status_text(status), {}
        common: dict[str, Any] = {
            "provider": self.provider,
            "status": status,
            "field_errors": field_errors,
            "body": response.body,
            "headers": response.headers,
        }
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return RateLimitedError(message, retry_after=retry_after, **common)
        if status == 422:
            names = self.unknown_custom_fields(
                field_errors, request.json() if request.body else {}
            )
            if names:
                return UnknownCustomFieldError(message, names=names, **common)
        return error_class_for(status)(message, **common)


def _with_query(path: str, query: Sequence[tuple[str, str]]) -> str:
    if not query:
        return path
    return path + ("&" if "?" in path else "?") + urlencode(query, quote_via=quote)


class _NotJson:
    pass


_NOT_JSON: Any = _NotJson()
