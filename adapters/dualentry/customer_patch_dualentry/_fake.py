"""A fake DualEntry for tests and the sandbox: customers (PATCH, GET one, the
filtered list) and the list of custom field definitions.

Shapes and constraints follow DualEntry's OpenAPI document (the suite checks
every answer and what is accepted against it); the rest follows the docs:
``X-API-KEY`` (401 missing, 403 wrong), integer ids, trailing-slash paths
under ``/public/v1/`` and ``/public/v2/`` (the two versions behave alike),
``{"success": false, "errors": {...}}`` errors, 429 + ``Retry-After`` from
the token buckets.

Routes:

* ``PATCH /customers/{id}/``: custom fields by name or by id, a **422 on an
  unknown name**; 404 for an unknown customer.
* ``GET /customers/{id}/``: the ``CustomerSchemaOut`` (no ``full_address``,
  as the schema has none); 404 for an unknown customer.
* ``GET /customers/``: ``{"items", "count"}`` of ``CustomerListSchemaOut``
  (see ``_LIST_FIELDS``), with every filter the document lists (see
  :meth:`DualEntryFake.list_customers`), ``ordering``, ``limit`` (1 up,
  capped at 100) and ``offset``.
* ``GET /custom-fields/``: ``{"items", "count"}`` of the definitions, with
  the document's filters (see :meth:`DualEntryFake.list_custom_fields`).

Nothing else: no POST, PUT or DELETE, no ``GET /custom-fields/{id}/``.

A customer id that is not an integer is a 400 naming ``customer_id`` (the
document lists 400 for both operations; the server validates its path).

Rate limits (``DualEntryAdapter.rate_limits``, per key, as documented): each
route and method has its own bucket (burst 10 then 1/s; ``/public/v1/`` and
``/public/v2/`` share it: one resource), and every route takes from the key's
all-endpoints bucket (burst 50 then 5/s) as well.

Custom field definitions are the fake's own: ``DualEntryFake(custom_fields=[
definition(7, "Segment", "single_select", ["A", "B"])])``; :data:`CUSTOM_FIELDS`
is the default.  A field "applies to customers" when it is active and its
``applies_to`` has an active ``customer`` entry; only those can be written by
a PATCH (any other name or id is unknown: 422, as an unknown name is) and only
those get an entry in the ``custom_fields`` of customers :meth:`~DualEntryFake.add` creates.

Where the docs are silent the fake chooses, and says so here:

* Query parameters it does not know are **ignored**, as a django-ninja
  server (which the document comes from) ignores them: a misspelt filter
  answers the unfiltered list.
* Array parameters are repeated (``id=1&id=2``: OpenAPI's default
  ``form``/``explode``); a comma-separated value is one value (``id=1,2`` is
  a 400, ``customer_type=a,b`` matches nothing).  A repeated single-valued
  parameter counts by its last value (as Django reads a query).  An empty
  value is a value: ``name=`` matches every name, ``unique_id=`` only an
  empty unique id.
* A value of the wrong type (``id=x``, ``limit=x``, ``is_active=maybe``) or
  outside an enum (``record_status``, ``record_type``, ``field_type``) is a
  400 naming the parameter: ``{"success": false, "errors": {"id": [...]}}``.
* Case-insensitive means compared after ``str.casefold()``; ``icontains`` is a
  literal substring (no wildcards).
* ``search`` on customers matches ``name``, ``unique_id`` or ``email``
  (icontains); on custom fields, ``name`` or ``description``.
* ``state`` is the ``full_address``'s state (``address_obj`` in the
  document): a customer without a ``full_address`` never matches it.
* The fake has no companies: customers belong to none, so ``company_id`` on
  the customer list matches nothing; on the custom field list it keeps the
  organisation-wide fields (no ``company_id``, empty ``company_ids``) and
  those scoped to that company, as the document describes.
* ``ordering`` takes one field, optionally prefixed by ``-``: customers by
  ``id``, ``name`` (case-insensitive), ``created_at`` or ``updated_at``
  (default ``-updated_at``), custom fields by ``id``, ``name`` or
  ``updated_at`` (default ``-updated_at``); anything else is a 400.  Ties are
  broken by ascending id, so every order is deterministic.  Times are a
  logical clock (each :meth:`~DualEntryFake.add` and each successful PATCH
  is later than the one before), never the wall clock; a customer put in
  :attr:`customers` directly sorts as the oldest.  Definitions carry
  no times: the order they were given in is their ``-updated_at`` order.
* ``is_required`` and ``is_active_record`` filter on the ``applies_to``
  entry of ``record_type`` and are ignored without it; ``record_type``
  alone keeps fields with an entry of that type, active or not.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from aiohttp import web

from customer_patch.sandbox import FakeProvider
from customer_patch.wire import ecma_pattern
from customer_patch_dualentry._adapter import PHONE_PATTERN, DualEntryAdapter

# Shaped as DualEntry's OpenAPI document says; what it accepts and refuses is
# what that document accepts and refuses (the suite checks both against it).
_NOT_NULL_TEXT = {"name", "email", "address", "country", "website", "phone"}  # "" when empty
_PATCHABLE = {*_NOT_NULL_TEXT, "unique_id", "full_address", "shipping_address", "custom_fields"}
_ADDRESSES = {"full_address", "shipping_address"}
_ADDRESS_TEXT = ("street", "city", "postal_code", "state", "second_line")
_PHONE = re.compile(ecma_pattern(PHONE_PATTERN))
_ALPHA_2 = re.compile("[A-Z]{2}")
# What a customer in a list shows (CustomerListSchemaOut): fewer fields than a get.
_LIST_FIELDS = (
    "id",
    "name",
    "unique_id",
    "email",
    "website",
    "phone",
    "customer_type",
    "is_active",
    "full_address",
    "shipping_address",
    "custom_fields",
    "created_by",
    "updated_by",
    "approval_status",
    "next_approvers",
    "rejected_by",
)
PAGE_LIMIT = 100
"""The most items a list answers with (``limit`` is capped to it)."""
FIELD_TYPES = (
    "text",
    "number",
    "currency",
    "date",
    "boolean",
    "single_select",
    "multi_select",
    "link",
    "paragraph",
)
"""The document's ``FieldType``."""
RECORD_TYPES = (
    "invoice",
    "bill",
    "direct_expense",
    "journal_entry",
    "vendor_prepayment",
    "vendor_credit",
    "vendor_payment",
    "vendor_refund",
    "customer_payment",
    "customer_prepayment",
    "customer_refund",
    "customer_deposit",
    "currency_revaluation",
    "contract",
    "fixed_asset",
    "customer",
    "vendor",
    "company",
    "sales_order",
    "cash_sale",
    "customer_credit",
)
"""The document's ``AppliesToTypes``: what a custom field may apply to."""
RECORD_STATUSES = ("draft", "posted", "archived")
"""The document's ``RecordStatus``."""
# Customer list filters: parameter -> the stored field compared, case-insensitively.
_ICONTAINS = {p: p for p in ("name", "email", "website", "address", "country", "phone")}
_SEARCHED = ("name", "unique_id", "email")
_CUSTOMER_ORDERINGS = ("id", "name", "created_at", "updated_at")
_FIELD_ORDERINGS = ("id", "name", "updated_at")
_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}  # what pydantic reads as booleans


def definition(
    field_id: int,
    name: str,
    field_type: str,
    options: Sequence[str] | None = None,
    *,
    is_active: bool = True,
    applies_to: Iterable[str | Mapping[str, Any]] = ("customer",),
    company_id: int | None = None,
    company_ids: Iterable[int] = (),
    default_value: str | list[str] | None = None,
    description: str | None = None,
    helper_text: str | None = None,
) -> dict[str, Any]:
    """A custom field definition shaped as ``PublicCustomFieldSchemaOut``.

    ``applies_to`` items are record types (an active, not required entry) or
    ``{"type", "is_active", "is_required"}`` mappings (the flags default to
    ``True`` and ``False``).  Raises ``ValueError`` for what DualEntry would
    not hold: a type outside :data:`FIELD_TYPES` or :data:`RECORD_TYPES`, a
    name outside 2 to 32 characters.

    >>> f = definition(7, "Segment", "single_select", ["A", "B"], applies_to=["customer"])
    >>> f["applies_to"], f["options"]
    ([{'type': 'customer', 'is_active': True, 'is_required': False}], ['A', 'B'])
    """
    if field_type not in FIELD_TYPES:
        raise ValueError(f"field_type {field_type!r} is not one of {FIELD_TYPES}")
    if not isinstance(name, str) or not 2 <= len(name) <= 32:
        raise ValueError(f"a custom field name has 2 to 32 characters, not {name!r}")
    entries = []
    for item in applies_to:
        entry = {"type": item} if isinstance(item, str) else dict(item)
        if entry.get("type") not in RECORD_TYPES:
            raise ValueError(f"applies_to type {entry.get('type')!r} is not one of RECORD_TYPES")
        entries.append(
            {
                "type": entry["type"],
                "is_active": bool(entry.get("is_active", True)),
                "is_required": bool(entry.get("is_required", False)),
            }
        )
    return {
        "id": field_id,
        "name": name,
        "field_type": field_type,
        "is_active": is_active,
        "options": None if options is None else list(options),
        "applies_to": entries,
        "company_id": company_id,
        "company_ids": list(company_ids),
        "default_value": default_value,
        "description": description,
        "helper_text": helper_text,
    }


def _from_schema(item: Mapping[str, Any]) -> dict[str, Any]:
    """A ``PublicCustomFieldSchemaOut``-shaped mapping, checked and completed."""
    return definition(
        item["id"],
        item["name"],
        item["field_type"],
        item.get("options"),
        is_active=item.get("is_active", True),
        applies_to=item.get("applies_to", ()),  # the schema's default: applies to nothing
        company_id=item.get("company_id"),
        company_ids=item.get("company_ids") or (),
        default_value=item.get("default_value"),
        description=item.get("description"),
        helper_text=item.get("helper_text"),
    )


CUSTOM_FIELDS: list[dict[str, Any]] = [
    definition(41, "Partner", "boolean"),
    definition(42, "Partner Name", "text"),
    definition(43, "Tier", "single_select", ["Bronze", "Silver", "Gold"]),
    definition(44, "Region", "text"),
    definition(45, "Region", "text"),  # two fields may share a name
]
"""The default custom field definitions (``PublicCustomFieldSchemaOut``),
all applying to customers."""
DEMO_FIRST_ID = 1001


def applies_to_customers(field: Mapping[str, Any]) -> bool:
    """Whether a PATCH may write ``field``: active, with an active ``customer`` entry."""
    return bool(field["is_active"]) and any(
        a["type"] == "customer" and a["is_active"] for a in field["applies_to"]
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _actor() -> dict[str, Any]:
    return {
        "actor_type": "api_key",
        "email": "",
        "first_name": "API",
        "last_name": "Key",
        "timestamp": _now(),
    }


class _BadQuery(Exception):
    """A query parameter the document's schema refuses: a 400 naming it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


_INTEGER = re.compile(r"-?[0-9]+")


def _integer(text: str) -> int | None:
    """An integer as the spec's ``type: integer`` reads in a path or a query:
    ASCII digits only (Python's ``int`` also takes "1_001", " 7 " and other
    scripts' digits, which the spec's validators refuse)."""
    return int(text) if _INTEGER.fullmatch(text) else None


class _Query:
    """Typed reads of a request's query, as the document declares each parameter."""

    def __init__(self, request: web.Request) -> None:
        self.query = request.query

    def text(self, name: str) -> str | None:
        """A single value: the last one if repeated (as Django's ``QueryDict`` reads it)."""
        values = self.query.getall(name, [])
        return values[-1] if values else None

    def texts(self, name: str, choices: Sequence[str] | None = None) -> list[str] | None:
        values = self.query.getall(name, [])
        if not values:
            return None
        if choices is not None:
            wrong = [v for v in values if v not in choices]
            if wrong:
                raise _BadQuery(name, f"{wrong[0]!r} is not one of {', '.join(choices)}.")
        return values

    def integers(self, name: str) -> list[int] | None:
        values = self.texts(name)
        if values is None:
            return None
        numbers = [_integer(v) for v in values]
        if None in numbers:
            raise _BadQuery(name, "Expected integers (repeat the parameter for several).")
        return numbers  # type: ignore[return-value]

    def integer(self, name: str) -> int | None:
        values = self.integers(name)
        return None if values is None else values[-1]

    def choice(self, name: str, choices: Sequence[str]) -> str | None:
        values = self.texts(name, choices)
        return None if values is None else values[-1]

    def boolean(self, name: str) -> bool | None:
        value = self.text(name)
        if value is None:
            return None
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise _BadQuery(name, "Expected a boolean (true or false).")

    def ordering(self, fields: Sequence[str]) -> tuple[str, bool]:
        """``(field, descending)``, default ``-updated_at``."""
        value = self.text("ordering")
        value = "-updated_at" if value is None else value
        field = value.removeprefix("-")
        if field not in fields:
            allowed = ", ".join(f"{f}, -{f}" for f in fields)
            raise _BadQuery("ordering", f"Ordering by {value!r} is not supported; use {allowed}.")
        return field, value.startswith("-")

    def page(self) -> tuple[int, int]:
        """``(limit, offset)``: limit 1 up (capped at 100, default 100), offset 0 up."""
        limit, offset = self.integer("limit"), self.integer("offset")
        if limit is not None and limit < 1:
            raise _BadQuery("limit", "Ensure this value is greater than or equal to 1.")
        if offset is not None and offset < 0:
            raise _BadQuery("offset", "Ensure this value is greater than or equal to 0.")
        return min(PAGE_LIMIT if limit is None else limit, PAGE_LIMIT), offset or 0


def _icontains(needle: str, haystack: Any) -> bool:
    return isinstance(haystack, str) and needle.casefold() in haystack.casefold()


_Test = Callable[[dict[str, Any]], bool]


def _one_of(field: str, values: list[str]) -> _Test:
    return lambda item: item.get(field) in values


def _containing(field: str, text: str) -> _Test:
    return lambda item: _icontains(text, item.get(field))


def _ordered(
    items: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any], descending: bool
) -> list[dict[str, Any]]:
    """``items`` by ``key``, ties by ascending id (a stable sort keeps them)."""
    by_id = sorted(items, key=lambda item: item["id"])
    return sorted(by_id, key=key, reverse=descending)


class DualEntryFake(FakeProvider):
    """The fake DualEntry (see the module's text for what it serves).

    ``custom_fields`` replaces :data:`CUSTOM_FIELDS` as this fake's custom
    field definitions: ``PublicCustomFieldSchemaOut``-shaped mappings (build
    them with :func:`definition`), served by ``GET /custom-fields/`` in the
    order given.
    """

    provider = "dualentry"
    # Per key: the route's own bucket (checked first), then all endpoints.
    rate_limits = DualEntryAdapter.rate_limits
    demo_file: ClassVar[str | None] = "customer_patch_dualentry:demo/updates.csv"

    def __init__(
        self, *, custom_fields: Iterable[Mapping[str, Any]] | None = None, **options: Any
    ) -> None:
        super().__init__(**options)
        self.custom_fields: list[dict[str, Any]] = [
            _from_schema(f) for f in (CUSTOM_FIELDS if custom_fields is None else custom_fields)
        ]
        ids = [f["id"] for f in self.custom_fields]
        if len(ids) != len(set(ids)):
            raise ValueError(f"custom field ids must be unique, got {ids}")
        self._value_ids = itertools.count(1)
        self._clock = itertools.count(1)
        self._created: dict[Any, int] = {}
        self._updated: dict[Any, int] = {}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.patch(r"/public/{version:v[12]}/customers/{id}/", self.patch),
            web.get(r"/public/{version:v[12]}/customers/{id}/", self.get),
            web.get(r"/public/{version:v[12]}/customers/", self.list_customers),
            web.get(r"/public/{version:v[12]}/custom-fields/", self.list_custom_fields),
        ]

    def error_body(self, status: int, message: str, field: str | None = None) -> dict[str, Any]:
        return {"success": False, "errors": {field or "__all__": [message]}}

    def add(self, **fields: Any) -> dict[str, Any]:
        """Store a customer (``CustomerSchemaOut`` plus ``full_address``); ``fields`` override.

        Its ``custom_fields`` has an empty entry for each definition that
        applies to customers; it is later than every customer stored before.
        """
        customer_id = fields.pop("id", None) or max(self.customers, default=DEMO_FIRST_ID - 1) + 1
        customer: dict[str, Any] = {
            "id": customer_id,
            "name": "Customer",
            "unique_id": None,
            "email": "",
            "address": "",
            "country": "",
            "website": "",
            "phone": "",
            "customer_type": "business",
            "is_active": True,
            "record_status": "posted",
            "is_taxable": False,
            "default_tax_code": "",
            "tax_registration_number": "",
            "default_currency": "",
            "full_address": None,
            "shipping_address": None,
            "custom_fields": [
                {"field": copy.deepcopy(f), "value": None}
                for f in self.custom_fields
                if applies_to_customers(f)
            ],
            "created_by": _actor(),
            "updated_by": _actor(),
            "approval_status": "approved",
            "next_approvers": [],
            "rejected_by": None,
        }
        customer.update(fields)
        self.customers[customer_id] = customer
        self._created[customer_id] = self._updated[customer_id] = next(self._clock)
        return customer

    def seed_demo(self, count: int) -> list[Any]:
        return [
            self.add(id=n, name=f"Demo Customer {n}", unique_id=f"DEMO-{n}")["id"]
            for n in range(DEMO_FIRST_ID, DEMO_FIRST_ID + count)
        ]

    def _auth(self, request: web.Request, route: str) -> web.Response | None:
        """401/403 for the key, else a 429 if the route's or the key's bucket is empty."""
        key = request.headers.get("X-API-KEY")
        if not key:
            return self.error(401, "Authentication credentials were not provided.")
        if key != self.token:
            return self.error(403, "Invalid API key.")
        return self.rate_limited(f"{key} {route}", key)

    def _customer(self, request: web.Request) -> web.Response | dict[str, Any]:
        """The customer the path names, or the error answer (400 not an integer, 404)."""
        customer_id = _integer(request.match_info["id"])
        if customer_id is None:
            return self.error(400, "Input should be a valid integer.", "customer_id")
        customer = self.customers.get(customer_id)
        return self.error(404, "Not found.") if customer is None else customer

    async def get(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request, "GET /customers/{id}/")) is not None:
            return denied
        customer = self._customer(request)
        if isinstance(customer, web.Response):
            return customer
        return web.json_response(_shown(customer))

    async def list_customers(self, request: web.Request) -> web.Response:
        """Filters (all combined with "and"): ``id``, ``company_id``,
        ``customer_type``, ``record_status``, ``approval_status`` (repeated:
        any of the values), ``name``, ``email``, ``website``, ``address``,
        ``country``, ``phone`` (contains, case-insensitive), ``unique_id``
        (equal, case-insensitive), ``state`` (the ``full_address``'s,
        contains), ``search``; then ``ordering``, ``offset``, ``limit``."""
        if (denied := self._auth(request, "GET /customers/")) is not None:
            return denied
        query = _Query(request)
        try:
            keep = self._customer_filters(query)
            field, descending = query.ordering(_CUSTOMER_ORDERINGS)
            limit, offset = query.page()
        except _BadQuery as bad:
            return self.error(400, bad.message, bad.parameter)
        found = [c for c in self.customers.values() if all(test(c) for test in keep)]
        key: Callable[[dict[str, Any]], Any] = {
            "id": lambda c: c["id"],
            "name": lambda c: (c["name"] or "").casefold(),
            "created_at": lambda c: self._created.get(c["id"], 0),
            "updated_at": lambda c: self._updated.get(c["id"], 0),
        }[field]
        page = _ordered(found, key, descending)[offset : offset + limit]
        return web.json_response(
            {"items": [{k: c[k] for k in _LIST_FIELDS} for c in page], "count": len(found)}
        )

    def _customer_filters(self, query: _Query) -> list[_Test]:
        keep: list[_Test] = []
        if (ids := query.integers("id")) is not None:
            keep.append(lambda c: c["id"] in ids)
        if query.integers("company_id") is not None:
            keep.append(lambda c: False)  # the fake's customers belong to no company
        for parameter, choices in (
            ("customer_type", None),
            ("record_status", RECORD_STATUSES),
            ("approval_status", None),
        ):
            if (values := query.texts(parameter, choices)) is not None:
                keep.append(_one_of(parameter, values))
        for parameter, stored in _ICONTAINS.items():
            if (text := query.text(parameter)) is not None:
                keep.append(_containing(stored, text))
        if (unique_id := query.text("unique_id")) is not None:
            wanted = unique_id.casefold()
            keep.append(
                lambda c: (
                    isinstance(c.get("unique_id"), str) and c["unique_id"].casefold() == wanted
                )
            )
        if (state := query.text("state")) is not None:
            keep.append(lambda c: _icontains(state, (c.get("full_address") or {}).get("state")))
        if (search := query.text("search")) is not None:
            keep.append(lambda c: any(_icontains(search, c.get(f)) for f in _SEARCHED))
        return keep

    async def list_custom_fields(self, request: web.Request) -> web.Response:
        """Filters: ``record_type`` (has an entry of that type), ``is_required``
        and ``is_active_record`` (that entry's flags), ``id`` (repeated),
        ``field_type``, ``is_active``, ``name`` (contains, case-insensitive),
        ``company_id``, ``search``; then ``ordering``, ``offset``, ``limit``."""
        if (denied := self._auth(request, "GET /custom-fields/")) is not None:
            return denied
        query = _Query(request)
        try:
            keep = self._field_filters(query)
            field, descending = query.ordering(_FIELD_ORDERINGS)
            limit, offset = query.page()
        except _BadQuery as bad:
            return self.error(400, bad.message, bad.parameter)
        found = [f for f in self.custom_fields if all(test(f) for test in keep)]
        if field == "updated_at":  # the order given is the -updated_at order
            ordered = found if descending else found[::-1]
        elif field == "id":
            ordered = _ordered(found, lambda f: f["id"], descending)
        else:
            ordered = _ordered(found, lambda f: f["name"].casefold(), descending)
        return web.json_response({"items": ordered[offset : offset + limit], "count": len(found)})

    def _field_filters(self, query: _Query) -> list[_Test]:
        keep: list[_Test] = []
        if (ids := query.integers("id")) is not None:
            keep.append(lambda f: f["id"] in ids)
        if (field_type := query.choice("field_type", FIELD_TYPES)) is not None:
            keep.append(lambda f: f["field_type"] == field_type)
        if (is_active := query.boolean("is_active")) is not None:
            keep.append(lambda f: f["is_active"] is is_active)
        if (name := query.text("name")) is not None:
            keep.append(lambda f: _icontains(name, f["name"]))
        if (search := query.text("search")) is not None:
            keep.append(
                lambda f: _icontains(search, f["name"]) or _icontains(search, f["description"])
            )
        if (company := query.integer("company_id")) is not None:
            keep.append(
                lambda f: (
                    (f["company_id"] is None and not f["company_ids"])
                    or f["company_id"] == company
                    or company in f["company_ids"]
                )
            )
        is_required, is_active_record = (
            query.boolean("is_required"),
            query.boolean("is_active_record"),
        )
        if (record_type := query.choice("record_type", RECORD_TYPES)) is not None:

            def entry_matches(f: dict[str, Any]) -> bool:
                return any(
                    a["type"] == record_type
                    and is_required in (None, a["is_required"])
                    and is_active_record in (None, a["is_active"])
                    for a in f["applies_to"]
                )

            keep.append(entry_matches)
        return keep

    async def patch(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request, "PATCH /customers/{id}/")) is not None:
            return denied
        customer = self._customer(request)
        if isinstance(customer, web.Response):
            return customer
        try:
            body = await request.json()
        except ValueError:
            return self.error(400, "JSON parse error.")
        if not isinstance(body, dict):
            return self.error(400, "Expected an object.")
        errors = {k: [m] for k, v in body.items() if (m := _problem(k, v)) is not None}
        if errors:
            return web.json_response({"success": False, "errors": errors}, status=400)
        writable = [f for f in self.custom_fields if applies_to_customers(f)]
        values, unknown = _custom_values(body.get("custom_fields") or [], writable)
        if unknown:
            listed = ", ".join(repr(n) for n in unknown)
            return self.error(422, f"Unknown custom field(s): {listed}", "custom_fields")
        # Keys the schema does not know are ignored, as the schema allows them.
        for key, value in body.items():
            if key in _ADDRESSES:
                customer[key] = None if value is None else _address(value)
            elif key in _NOT_NULL_TEXT:
                customer[key] = "" if value is None else value
            elif key == "unique_id":
                customer[key] = value
        entries = customer["custom_fields"]
        present = {entry["field"]["id"] for entry in entries}
        entries += [  # a field defined after the customer was stored
            {"field": copy.deepcopy(f), "value": None}
            for f in writable
            if f["id"] in values and f["id"] not in present
        ]
        for entry in entries:
            field = entry["field"]
            if field["id"] in values:
                entry["value"] = self._value(field, values[field["id"]], entry["value"])
        customer["updated_by"] = _actor()
        self._updated[customer["id"]] = next(self._clock)
        return web.json_response(_shown(customer))

    def _value(self, field: dict[str, Any], value: Any, old: Any) -> dict[str, Any] | None:
        """A ``CustomFieldValueSchemaOut``, or ``None`` once cleared."""
        if value is None:
            return None
        now = _now()
        value_id = old["id"] if old else next(self._value_ids)
        return {
            "id": value_id,
            "custom_field_id": field["id"],
            "custom_field_name": field["name"],
            "custom_field_type": field["field_type"],
            "custom_field_value_id": value_id,
            "value": value,
            "created_at": old["created_at"] if old else now,
            "updated_at": now,
        }


def _shown(customer: dict[str, Any]) -> dict[str, Any]:
    # full_address is patchable but absent from CustomerSchemaOut; a fake
    # that returned it would hide that the real API does not.
    return {k: v for k, v in customer.items() if k != "full_address"}


def _problem(key: str, value: Any) -> str | None:
    """What CustomerSchemaPatchIn refuses in ``key: value`` (every field may be null)."""
    if key not in _PATCHABLE or value is None:
        return None
    if key in _ADDRESSES:
        return _address_problem(value)
    if key == "custom_fields":
        if isinstance(value, list) and all(isinstance(i, dict) for i in value):
            return None
        return "Expected a list of objects."
    if not isinstance(value, str):
        return "Not a valid string."
    if key == "phone" and (len(value) > 32 or not _PHONE.search(value)):
        return f"Enter a valid phone number: at most 32 characters matching {PHONE_PATTERN}."
    if key == "unique_id" and not 1 <= len(value) <= 64:
        return "Ensure this field has 1 to 64 characters."
    return None


def _address_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "Expected an object."
    missing = [part for part in ("street", "city", "postal_code") if part not in value]
    if missing:
        return f"Required: {', '.join(missing)}."
    wrong = [part for part in _ADDRESS_TEXT if part in value and not isinstance(value[part], str)]
    if value.get("name") is not None and not isinstance(value["name"], str):
        wrong.append("name")
    if wrong:
        return f"Not a valid string: {', '.join(wrong)}."
    country = value.get("country", "")
    if not (country == "" or (isinstance(country, str) and _ALPHA_2.fullmatch(country))):
        return "country: empty or a two-letter upper-case code."
    return None


def _address(value: dict[str, Any]) -> dict[str, Any]:
    """An AddressSchemaIn as stored: defaults filled in, keys it does not know dropped."""
    return {
        "street": value["street"],
        "city": value["city"],
        "state": value.get("state", ""),
        "postal_code": value["postal_code"],
        "country": value.get("country", ""),
        "second_line": value.get("second_line", ""),
        "name": value.get("name"),
    }


def _custom_values(
    items: list[dict[str, Any]], fields: list[dict[str, Any]]
) -> tuple[dict[int, Any], list[str]]:
    """Resolve both shapes to ``{field id: value}`` over ``fields`` (those a
    customer may hold); names and ids that match none of them are unknown."""
    by_name: dict[str, list[int]] = {}
    for f in fields:
        by_name.setdefault(f["name"], []).append(f["id"])
    ids = {f["id"] for f in fields}
    values: dict[int, Any] = {}
    unknown: list[str] = []
    for item in items:
        if set(item) == {"field", "value"} and isinstance(item["field"], dict):
            field_id = item["field"].get("id")
            if not isinstance(field_id, int) or field_id not in ids:
                unknown.append(str(field_id))
                continue
            value = item["value"]
            values[field_id] = value.get("value") if isinstance(value, dict) else value
        else:
            for name, value in item.items():
                if name not in by_name:
                    unknown.append(name)
                else:
                    for field_id in by_name[name]:
                        values[field_id] = value
    return values, unknown
