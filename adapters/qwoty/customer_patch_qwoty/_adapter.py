"""Qwoty's wire format for ``PATCH /customers/{id}``, without any I/O.

Requests carry ``Authorization: Bearer``; answers come in an envelope,
``{"success": true, "data": {...}}`` or ``{"success": false, "error": "..."}``,
and a ``success: false`` body is an error whatever its status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

from customer_patch import Adapter, Customer, TaxId, Tooling, WireField, wire
from customer_patch.wire import parse_datetime, text, type_name, uuid_text


def _url(value: Any) -> list[str]:
    if not isinstance(value, str):
        return [f"must be a URL string, not {type_name(value)}"]
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        return [f"must be an absolute http(s) URL, got {value!r}"]
    return []


def _tax_ids(value: Any) -> list[str]:
    if not isinstance(value, tuple):
        return [f"must be a list of TaxId, not {type_name(value)}"]
    problems = []
    for i, tax_id in enumerate(value):
        if not isinstance(tax_id, TaxId):
            problems.append(f"[{i}] must be a TaxId, not {type_name(tax_id)}")
            continue
        for part in ("tax", "value"):
            part_value = getattr(tax_id, part)
            if not isinstance(part_value, str) or not part_value:
                problems.append(f"[{i}].{part} must be a non-empty string")
    return problems


def _encode_tax_ids(value: tuple[TaxId, ...]) -> list[dict[str, str]]:
    return [{"tax": t.tax, "tax_value": t.value} for t in value]


def _tax_ids_from(value: Any) -> tuple[TaxId, ...] | None:
    # The PATCH example leaves tax_ids out: absent stays None, not ().
    if value is None:
        return None
    return tuple(TaxId(t["tax"], t["tax_value"]) for t in value)


class QwotyAdapter(Adapter):
    """Qwoty: UUID customer ids, tax ids replaced as a whole, three external ids."""

    provider = "qwoty"
    default_base_url = "https://qwoty.app/api"
    fields: ClassVar[Mapping[str, WireField]] = {
        "name": WireField(wire="name", nullable=False, check=text()),
        "type": WireField(
            wire="type", nullable=False, check=text(choices=("company", "individual"))
        ),
        "segment_id": WireField(wire="segment_id", check=uuid_text),
        "logo": WireField(wire="logo", check=_url),
        "tax_ids": WireField(
            wire="tax_ids",
            nullable=False,
            check=_tax_ids,
            encode=_encode_tax_ids,
            decode=_tax_ids_from,
        ),
        "external_ids.crm": WireField(wire="id_crm", check=text()),
        "external_ids.erp": WireField(wire="id_erp", check=text()),
        "external_ids.accounting": WireField(wire="id_accounting", check=text()),
    }
    # In answers only: sent through `extra`, they would be refused by Qwoty.
    read_only = frozenset(
        {"id", "workspace_id", "contact_ids", "address_ids", "created_at", "updated_at"}
    )
    # Qwoty documents "workspace-level rate limits" without numbers: nothing
    # to declare, so the client adapts to its 429s instead.
    rate_limits = ()
    customer_id_type = str
    tooling = Tooling(
        token_env="QWOTY_TOKEN",  # noqa: S106 - a variable's name, not a secret
        sandbox="customer_patch_qwoty._fake:QwotyFake",
    )

    def check_customer_id(self, customer_id: object) -> list[str]:
        return uuid_text(customer_id)

    def same_customer(self, sent: object, returned: object) -> bool:
        # UUIDs are case-insensitive: an upper-case id may come back in lower case.
        return isinstance(returned, str) and str(sent).lower() == returned.lower()

    def update_path(self, segment: str) -> str:
        return f"/customers/{segment}"

    def auth_headers(self, token: str) -> Mapping[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def error_details(
        self, status: int, data: Any
    ) -> tuple[str, Mapping[str, Sequence[str]]] | None:
        if not isinstance(data, dict):
            return None
        if data.get("success") is False or (status >= 400 and "error" in data):
            error = data.get("error")
            message = error if isinstance(error, str) else str(error or "request failed")
            field_errors = wire.field_errors(data.get("errors"))
            return message, field_errors
        return None

    def customer_from(self, data: Any) -> Customer:
        c = data["data"]
        if not isinstance(c, dict):
            raise TypeError(f"data should be an object, got {type_name(c)}")
        return Customer(
            id=c["id"],
            provider=self.provider,
            **self.fields_from(c),
            created_at=parse_datetime(c.get("created_at")),
            updated_at=parse_datetime(c.get("updated_at")),
            raw=c,
        )
