"""A fake DualEntry for tests and the sandbox: PATCH and GET of customers,
and the custom field definitions.

Follows the documented behaviour: ``X-API-KEY`` (401 missing, 403 wrong),
integer ids, trailing-slash paths under ``/public/v1/`` and ``/public/v2/``,
a bare customer in answers, ``{"success": false, "errors": {...}}`` errors,
custom fields by name or by id with a **422 on an unknown name**, the phone
and unique_id constraints, and per-key token buckets (burst 10 then 1/s for
PATCH customers, burst 50 then 5/s overall) answered with 429 + Retry-After.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, ClassVar

from aiohttp import web

from customer_patch.sandbox import FakeProvider
from customer_patch.wire import ISO_COUNTRIES
from customer_patch_dualentry._adapter import DualEntryAdapter

_TEXT = {"name", "unique_id", "email", "address", "country", "website", "phone"}
_ADDRESSES = {"full_address", "shipping_address"}
_READ_ONLY = DualEntryAdapter.read_only
_PHONE = re.compile(r"[0-9\s\+\-\.\(\)]*")

CUSTOM_FIELDS: list[dict[str, Any]] = [
    {"id": 41, "name": "Partner", "type": "boolean"},
    {"id": 42, "name": "Partner Name", "type": "text"},
    {"id": 43, "name": "Tier", "type": "single_select"},
    {"id": 44, "name": "Region", "type": "text"},
    {"id": 45, "name": "Region", "type": "text"},  # two fields may share a name
]
DEMO_FIRST_ID = 1001


def _actor() -> dict[str, Any]:
    return {
        "actor_type": "api_key",
        "email": "",
        "first_name": "API",
        "last_name": "Key",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


class DualEntryFake(FakeProvider):
    provider = "dualentry"
    # Per key: the PATCH-customers route (checked first), then all endpoints.
    rate_limits = DualEntryAdapter.rate_limits
    demo_file: ClassVar[str | None] = "customer_patch_dualentry:demo/updates.csv"

    def routes(self) -> list[web.RouteDef]:
        return [
            web.patch(r"/public/{version:v[12]}/customers/{id}/", self.patch),
            web.get(r"/public/{version:v[12]}/customers/{id}/", self.get),
            web.get(r"/public/{version:v[12]}/custom-fields/", self.custom_fields),
        ]

    def error_body(self, status: int, message: str, field: str | None = None) -> dict[str, Any]:
        return {"success": False, "errors": {field or "__all__": [message]}}

    def add(self, **fields: Any) -> dict[str, Any]:
        customer_id = fields.pop("id", None) or max(self.customers, default=DEMO_FIRST_ID - 1) + 1
        customer: dict[str, Any] = {
            "id": customer_id,
            "name": "Customer",
            "unique_id": None,
            "email": None,
            "address": None,
            "country": None,
            "website": None,
            "phone": None,
            "customer_type": "business",
            "is_active": True,
            "record_status": "active",
            "is_taxable": False,
            "default_tax_code": None,
            "tax_registration_number": None,
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

    async def get(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request, "GET customers")) is not None:
            return denied
        customer = self._customer(request)
        if customer is None:
            return self.error(404, "Not found.")
        return web.json_response(_shown(customer))

    async def custom_fields(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request, "GET custom-fields")) is not None:
            return denied
        return web.json_response({"items": CUSTOM_FIELDS, "count": len(CUSTOM_FIELDS)})

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
        errors = _check(body)
        if errors:
            return web.json_response({"success": False, "errors": errors}, status=400)
        values, unknown = _custom_values(body.get("custom_fields", []))
        if unknown:
            listed = ", ".join(repr(n) for n in unknown)
            return self.error(422, f"Unknown custom field(s): {listed}", "custom_fields")
        for key, value in body.items():
            if key in _ADDRESSES and value is not None:
                value = {"state": "", "second_line": "", "country": "", **value}
            if key != "custom_fields":
                customer[key] = value
        for entry in customer["custom_fields"]:
            if entry["field"]["id"] in values:
                v = values[entry["field"]["id"]]
                entry["value"] = (
                    None if v is None else {"custom_field_id": entry["field"]["id"], "value": v}
                )
        customer["updated_by"] = _actor()
        return web.json_response(_shown(customer))


def _shown(customer: dict[str, Any]) -> dict[str, Any]:
    # full_address is patchable but absent from the documented answer; a fake
    # that returned it would hide that the real API does not.
    return {k: v for k, v in customer.items() if k != "full_address"}


def _check(body: dict[str, Any]) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for key, value in body.items():
        if key in _READ_ONLY:
            errors[key] = ["This field cannot be updated."]
        elif key in _TEXT:
            if value is None:
                if key == "name":
                    errors[key] = ["This field may not be null."]
            elif not isinstance(value, str):
                errors[key] = ["Not a valid string."]
            elif key == "phone" and (len(value) > 32 or not _PHONE.fullmatch(value)):
                errors[key] = ["Enter a valid phone number (at most 32 characters)."]
            elif key == "unique_id" and not 1 <= len(value) <= 64:
                errors[key] = ["Ensure this field has 1 to 64 characters."]
        elif key in _ADDRESSES:
            if value is not None and (
                not isinstance(value, dict)
                or not {"street", "city", "postal_code"} <= set(value)
                or value.get("country", "") not in ISO_COUNTRIES | {""}
            ):
                errors[key] = ["street, city and postal_code are required; country is ISO 3166-1."]
        elif key == "custom_fields":
            if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
                errors[key] = ["Expected a list of objects."]
        else:
            errors[key] = ["Unknown field."]
    return errors


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
