"""A fake DualEntry for tests and the sandbox: PATCH, GET and list of
customers, and the list of custom field definitions.

Shapes and constraints follow DualEntry's OpenAPI document (the suite checks
every answer and what is accepted against it); the rest follows the docs:
``X-API-KEY`` (401 missing, 403 wrong), integer ids, trailing-slash paths
under ``/public/v1/`` and ``/public/v2/``, ``{"success": false, "errors":
{...}}`` errors, custom fields by name or by id with a **422 on an unknown
name**, 404 for an unknown customer, and per-key token buckets (burst 10
then 1/s for PATCH customers, burst 50 then 5/s overall) answered with 429 +
Retry-After.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
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


def _definition(field_id: int, name: str, field_type: str, options: Any = None) -> dict[str, Any]:
    return {
        "id": field_id,
        "name": name,
        "field_type": field_type,
        "is_active": True,
        "options": options,
        "applies_to": [{"type": "customer", "is_active": True, "is_required": False}],
        "company_id": None,
        "company_ids": [],
        "default_value": None,
        "description": None,
        "helper_text": None,
    }


CUSTOM_FIELDS: list[dict[str, Any]] = [
    _definition(41, "Partner", "boolean"),
    _definition(42, "Partner Name", "text"),
    _definition(43, "Tier", "single_select", ["Bronze", "Silver", "Gold"]),
    _definition(44, "Region", "text"),
    _definition(45, "Region", "text"),  # two fields may share a name
]
"""The fake organisation's custom field definitions (``PublicCustomFieldSchemaOut``)."""
DEMO_FIRST_ID = 1001


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


class DualEntryFake(FakeProvider):
    provider = "dualentry"
    # Per key: the PATCH-customers route (checked first), then all endpoints.
    rate_limits = DualEntryAdapter.rate_limits
    demo_file: ClassVar[str | None] = "customer_patch_dualentry:demo/updates.csv"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._value_ids = itertools.count(1)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.patch(r"/public/{version:v[12]}/customers/{id}/", self.patch),
            web.get(r"/public/{version:v[12]}/customers/{id}/", self.get),
            web.get(r"/public/{version:v[12]}/customers/", self.list_customers),
            web.get(r"/public/{version:v[12]}/custom-fields/", self.custom_fields),
        ]

    def error_body(self, status: int, message: str, field: str | None = None) -> dict[str, Any]:
        return {"success": False, "errors": {field or "__all__": [message]}}

    def add(self, **fields: Any) -> dict[str, Any]:
        """Store a customer (``CustomerSchemaOut`` plus ``full_address``); ``fields`` override."""
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
            "custom_fields": [{"field": dict(f), "value": None} for f in CUSTOM_FIELDS],
            "created_by": _actor(),
            "updated_by": _actor(),
            "approval_status": "approved",
            "next_approvers": [],
            "rejected_by": None,
        }
        customer.update(fields)
        self.customers[customer_id] = customer
        return customer

    def seed_demo(self, count: int) -> list[Any]:
        return [
            self.add(id=n, name=f"Demo Customer {n}", unique_id=f"DEMO-{n}")["id"]
            for n in range(DEMO_FIRST_ID, DEMO_FIRST_ID + count)
        ]

    def _auth(self, request: web.Request, route: str) -> web.Response | None:
        key = request.headers.get("X-API-KEY")
        if not key:
            return self.error(401, "Authentication credentials were not provided.")
        if key != self.token:
            return self.error(403, "Invalid API key.")
        return self.rate_limited(f"{key} {route}", key)

    def _customer(self, request: web.Request) -> dict[str, Any] | None:
        try:
            return self.customers.get(int(request.match_info["id"]))
        except ValueError:
            return None

    def _page(self, request: web.Request, items: list[Any]) -> web.Response:
        """``{"items", "count"}`` for ``limit`` (1 to 100, capped) and ``offset`` (0 up)."""
        try:
            limit = int(request.query.get("limit", PAGE_LIMIT))
            offset = int(request.query.get("offset", 0))
        except ValueError:
            return self.error(400, "limit and offset must be integers.")
        if limit < 1 or offset < 0:
            return self.error(400, "limit must be at least 1 and offset at least 0.")
        limit = min(limit, PAGE_LIMIT)
        return web.json_response({"items": items[offset : offset + limit], "count": len(items)})

    async def get(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request, "GET customers")) is not None:
            return denied
        customer = self._customer(request)
        if customer is None:
            return self.error(404, "Not found.")
        return web.json_response(_shown(customer))

    async def list_customers(self, request: web.Request) -> web.Response:
        """Paged, by id; the list's filters are not implemented (asking for one is a 400)."""
        if (denied := self._auth(request, "GET customers")) is not None:
            return denied
        unsupported = sorted(set(request.query) - {"limit", "offset"})
        if unsupported:
            return self.error(400, f"the sandbox does not filter lists: {unsupported}")
        customers = [self.customers[k] for k in sorted(self.customers)]
        return self._page(request, [{k: c[k] for k in _LIST_FIELDS} for c in customers])

    async def custom_fields(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request, "GET custom-fields")) is not None:
            return denied
        return self._page(request, CUSTOM_FIELDS)

    async def patch(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request, "PATCH customers")) is not None:
            return denied
        customer = self._customer(request)
        if customer is None:
            return self.error(404, "Not found.")
        try:
            body = await request.json()
        except ValueError:
            return self.error(400, "JSON parse error.")
        if not isinstance(body, dict):
            return self.error(400, "Expected an object.")
        errors = {k: [m] for k, v in body.items() if (m := _problem(k, v)) is not None}
        if errors:
            return web.json_response({"success": False, "errors": errors}, status=400)
        values, unknown = _custom_values(body.get("custom_fields") or [])
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
        for entry in customer["custom_fields"]:
            field = entry["field"]
            if field["id"] in values:
                entry["value"] = self._value(field, values[field["id"]], entry["value"])
        customer["updated_by"] = _actor()
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


def _custom_values(items: list[dict[str, Any]]) -> tuple[dict[int, Any], list[str]]:
    """Resolve both shapes to ``{field id: value}``; names that match nothing are unknown."""
    by_name: dict[str, list[int]] = {}
    for f in CUSTOM_FIELDS:
        by_name.setdefault(f["name"], []).append(f["id"])
    ids = {f["id"] for f in CUSTOM_FIELDS}
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
