"""A fake Qwoty for tests and the sandbox: PATCH and GET of one customer.

Served under ``/api`` (``base_url`` is ``http://127.0.0.1:<port>/api``, as
Qwoty's is ``https://qwoty.app/api``):

* ``PATCH /api/customers/{id}``: the documented behaviour: ``null``
  unsetting ``segment_id``/``logo``/``id_*``, ``tax_ids`` replacing all
  entries, and the answer the documented example shows (without
  ``workspace_id``, ``tax_ids``, ``contact_ids``, ``address_ids``).
* ``GET /api/customers/{id}`` ("Get Customer"): ``{"success": true, "data":
  {customer}}``, the customer whole, with ``workspace_id``, ``tax_ids``,
  ``contact_ids`` and ``address_ids``.

No list: Qwoty documents none, so ``GET /api/customers`` is a 404 here.
Both routes share the auth (``Authorization: Bearer``, 401 otherwise) and
the rate limiting (one workspace-wide bucket per limit).  Ids are UUID
strings; an id the store does not hold, UUID or not, is a 404 ``Customer not
found``.  Errors use Qwoty's envelope, ``{"success": false, "error": "..."}``.
Where Qwoty documents nothing (validation statuses, 404 bodies, limits) the
fake answers 422 for an invalid field value, 400 for a body that is not JSON,
and enforces no limit unless given ``limits=``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, ClassVar
from urllib.parse import urlsplit

from aiohttp import web

from customer_patch.sandbox import FakeProvider

_NULLABLE = {"segment_id", "logo", "id_crm", "id_erp", "id_accounting"}
_FIELDS = {"name", "type", "tax_ids"} | _NULLABLE
_DEMO_NAMESPACE = uuid.UUID("6f1c2b1e-8d2a-4c1e-9b1a-2f7d5e4c3b2a")


def demo_id(n: int) -> str:
    """The id of demo customer ``n``, the same in the store and in the demo file."""
    return str(uuid.uuid5(_DEMO_NAMESPACE, f"customer-{n}"))


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class QwotyFake(FakeProvider):
    provider = "qwoty"
    demo_file: ClassVar[str | None] = "customer_patch_qwoty:demo/updates.jsonl"
    base_path: ClassVar[str] = "/api"

    def routes(self) -> list[web.RouteDef]:
        return [
            web.patch(f"{self.base_path}/customers/{{id}}", self.patch),
            web.get(f"{self.base_path}/customers/{{id}}", self.get),
        ]

    def error_body(self, status: int, message: str, field: str | None = None) -> dict[str, Any]:
        return {"success": False, "error": f"{field}: {message}" if field else message}

    def add(self, **fields: Any) -> dict[str, Any]:
        customer: dict[str, Any] = {
            "id": fields.pop("id", None) or str(uuid.uuid4()),
            "workspace_id": "8a6e0804-2bd0-4672-b79d-d97027f9071a",
            "name": "Customer",
            "type": "company",
            "segment_id": None,
            "logo": None,
            "tax_ids": [],
            "id_crm": None,
            "id_erp": None,
            "id_accounting": None,
            "contact_ids": [],
            "address_ids": [],
            "created_at": _now(),
            "updated_at": _now(),
        }
        customer.update(fields)
        self.customers[customer["id"]] = customer
        return customer

    def seed_demo(self, count: int) -> list[Any]:
        return [
            self.add(id=demo_id(n), name=f"Demo Customer {n}", id_crm=f"crm_{n:04d}")["id"]
            for n in range(1, count + 1)
        ]

    def seed_examples(self) -> list[Any]:
        # The customer of the "Partially update a customer" page, as its
        # example answer shows it before the rename.
        return [
            self.add(
                id="550e8400-e29b-41d4-a716-446655440000",
                name="Acme Corp",
                id_crm="crm_001",
                created_at="2026-01-15T10:30:00Z",
                updated_at="2026-01-15T10:30:00Z",
            )["id"]
        ]

    def _find(self, request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return None, self.error(401, "Invalid API token")
        if (limited := self.rate_limited(self.token)) is not None:
            return None, limited
        customer = self.customers.get(request.match_info["id"])
        if customer is None:
            return None, self.error(404, "Customer not found")
        return customer, None

    async def get(self, request: web.Request) -> web.Response:
        """The customer whole, as "Get Customer" documents it."""
        customer, error = self._find(request)
        return error or web.json_response({"success": True, "data": customer})

    async def patch(self, request: web.Request) -> web.Response:
        customer, error = self._find(request)
        if error is not None:
            return error
        assert customer is not None
        try:
            body = await request.json()
        except ValueError:
            return self.error(400, "Invalid JSON body")
        problem = _check(body)
        if problem is not None:
            return self.error(422, problem[1], problem[0])
        customer.update(body)
        customer["updated_at"] = _now()
        # The documented PATCH answer leaves these out; so does the fake.
        shown = {
            k: v
            for k, v in customer.items()
            if k not in {"workspace_id", "tax_ids", "contact_ids", "address_ids"}
        }
        return web.json_response({"success": True, "data": shown})


def _check(body: Any) -> tuple[str, str] | None:
    if not isinstance(body, dict):
        return "body", "must be an object"
    for key, value in body.items():
        if key not in _FIELDS:
            return key, "unknown field"
        if value is None:
            if key not in _NULLABLE:
                return key, "may not be null"
        elif key == "type" and value not in ("company", "individual"):
            return key, "must be company or individual"
        elif key == "tax_ids":
            if not isinstance(value, list) or not all(
                isinstance(t, dict)
                and set(t) == {"tax", "tax_value"}
                and all(isinstance(v, str) for v in t.values())
                for t in value
            ):
                return key, "must be a list of {tax, tax_value} (strings)"
        elif not isinstance(value, str):
            return key, "must be a string"
        elif key == "segment_id" and not _is_uuid(value):
            return key, "must be a UUID"
        elif key == "logo" and not _is_url(value):
            return key, "must be a URL"
    return None


# The fake's own reading of the documentation, not the client's checks
# (wire.uuid_text, the adapter's _url): tests then compare two readings.
def _is_uuid(text: str) -> bool:
    # uuid.UUID also reads "{...}", "urn:uuid:..." and 32 hex digits: not a UUID as written.
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def _is_url(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
