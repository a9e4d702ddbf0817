"""The read side of the fake providers, over real HTTP on 127.0.0.1.

Plain aiohttp requests (no library client): Qwoty's "Get Customer".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from customer_patch import RateLimit
from customer_patch_qwoty._fake import QwotyFake
from tests.contract import problems

# Tiny refills: a bucket emptied by count stays empty for the whole test.
SLOW = 0.001
Query = Sequence[tuple[str, str]]


class Api:
    """Requests to one running fake; each answer as ``(status, body, headers)``."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def call(
        self, method: str, path: str, query: Query = (), **kwargs: Any
    ) -> tuple[int, Any, Any]:
        async with self.session.request(
            method, self.base_url + path, params=list(query), **kwargs
        ) as r:
            return r.status, await r.json(), r.headers

    async def get(self, path: str, query: Query = (), **kwargs: Any) -> tuple[int, Any, Any]:
        return await self.call("GET", path, query, **kwargs)

    async def ok(self, path: str, query: Query = (), schema: str | None = None) -> Any:
        status, body, _ = await self.get(path, query)
        assert status == 200, body
        if schema is not None:
            assert problems(schema, body) == []
        return body

    async def bad(self, path: str, query: Query = (), status: int = 400) -> dict[str, Any]:
        got, body, _ = await self.get(path, query)
        assert got == status, body
        assert problems("ErrorSchema", body) == []
        return body


@asynccontextmanager
async def serving(fake: Any, headers: dict[str, str] | None = None) -> AsyncIterator[Api]:
    async with fake.running() as base_url, aiohttp.ClientSession(headers=headers) as session:
        assert base_url.startswith("http://127.0.0.1:")
        yield Api(session, base_url)


# -- Qwoty ----------------------------------------------------------------------------------------

QWOTY_FIELDS = {
    "id",
    "workspace_id",
    "name",
    "type",
    "segment_id",
    "logo",
    "tax_ids",
    "id_crm",
    "id_erp",
    "id_accounting",
    "contact_ids",
    "address_ids",
    "created_at",
    "updated_at",
}


def qwoty(**options: Any) -> tuple[QwotyFake, str]:
    fake = QwotyFake(**options)
    [customer_id] = fake.seed_demo(1)
    fake.customers[customer_id].update(
        contact_ids=["0b6b2a52-1c1a-4a0e-9a43-5e5c0c2d0a11"],
        address_ids=["6b8e1f4e-3f0a-4d8e-8c1b-2d6a3e9f7c21"],
    )
    return fake, customer_id


async def test_qwoty_get_customer_answers_the_whole_customer_under_api():
    fake, customer_id = qwoty()
    async with serving(fake, {"Authorization": f"Bearer {fake.token}"}) as api:
        assert api.base_url.endswith("/api")
        status, body, _ = await api.call(
            "PATCH",
            f"/customers/{customer_id}",
            json={"tax_ids": [{"tax": "VAT", "tax_value": "FR1"}]},
        )
        assert status == 200
        assert "tax_ids" not in body["data"]  # the documented PATCH answer leaves it out
        body = await api.ok(f"/customers/{customer_id}")
    assert set(body) == {"success", "data"}
    assert body["success"] is True
    customer = body["data"]
    assert set(customer) == QWOTY_FIELDS
    assert customer["id"] == customer_id
    assert customer["tax_ids"] == [{"tax": "VAT", "tax_value": "FR1"}]
    assert customer["contact_ids"] == ["0b6b2a52-1c1a-4a0e-9a43-5e5c0c2d0a11"]
    assert customer["address_ids"] == ["6b8e1f4e-3f0a-4d8e-8c1b-2d6a3e9f7c21"]
    assert isinstance(customer["workspace_id"], str)
    for stamp in ("created_at", "updated_at"):
        assert dt.datetime.fromisoformat(customer[stamp]).tzinfo is not None
    assert [r.path for r in fake.requests] == [f"/api/customers/{customer_id}"] * 2


async def qwoty_error(api: Api, method: str, path: str, status: int) -> str:
    got, body, _ = await api.call(method, path, json={"name": "A"} if method == "PATCH" else None)
    assert got == status, body
    assert set(body) == {"success", "error"}
    assert body["success"] is False
    assert isinstance(body["error"], str)
    return body["error"]


async def test_qwoty_get_customer_errors_and_no_list():
    fake, customer_id = qwoty()
    async with serving(fake, {"Authorization": f"Bearer {fake.token}"}) as api:
        for unknown in ("00000000-0000-4000-8000-000000000000", "not-a-uuid"):
            assert (
                await qwoty_error(api, "GET", f"/customers/{unknown}", 404) == "Customer not found"
            )
        for path in ("/customers", "/customers/"):  # Qwoty documents no list
            async with api.session.get(api.base_url + path) as r:
                assert r.status == 404
        async with api.session.get(
            api.base_url.removesuffix("/api") + f"/customers/{customer_id}"
        ) as r:
            assert r.status == 404  # only under /api, as Qwoty's base URL
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": fake.token}):
        async with serving(fake, headers) as anonymous:
            error = await qwoty_error(anonymous, "GET", f"/customers/{customer_id}", 401)
            assert error == "Invalid API token"


async def test_qwoty_get_and_patch_share_the_workspace_bucket():
    fake, customer_id = qwoty(limits=(RateLimit(burst=3, per_second=SLOW),))
    async with serving(fake, {"Authorization": f"Bearer {fake.token}"}) as api:
        path = f"/customers/{customer_id}"
        assert (await api.get(path))[0] == 200
        assert (await api.call("PATCH", path, json={"name": "B"}))[0] == 200
        assert (await api.get(path))[0] == 200
        for method in ("GET", "PATCH"):
            got, body, headers = await api.call(
                method, path, json={"name": "C"} if method == "PATCH" else None
            )
            assert (got, body["success"]) == (429, False)
            assert int(headers["Retry-After"]) >= 1
    assert fake.customers[customer_id]["name"] == "B"
