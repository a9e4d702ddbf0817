"""The client at the transport seam, and the aiohttp transport beneath it.

What the client sends, returns and refuses is its own logic: tested with a
``MockTransport``, no network.  What the aiohttp transport does with aiohttp
(what it asks aiohttp to send, how aiohttp's errors become TransportError,
sessions, the size cap) is tested with aioresponses.
"""

import json
import logging

import aiohttp
import pytest
from yarl import URL

from customer_patch import (
    AiohttpTransport,
    Client,
    CustomerPatch,
    NotFoundError,
    Response,
    ResponseFormatError,
    TaxId,
    TransportError,
    UnsupportedFieldError,
    ValidationError,
)
from customer_patch.testing import MockTransport
from tests import seeds
from tests.helpers import DEID, QID, mock_client

TOKEN = "qwoty_s3cr3t_t0ken_value"
QWOTY_URL = f"https://qwoty.app/api/customers/{QID}"
RENAME = CustomerPatch(name="Acme Corp (Renamed)", tax_ids=[TaxId("VAT", "FR98765432100")])


def qwoty_answers(status=200, body=seeds.QWOTY_RESPONSE):
    """A MockTransport answering every request with ``body``."""
    raw = body if isinstance(body, bytes) else body.encode()
    return MockTransport(lambda request: Response(status=status, body=raw))


# -- the client, at the transport seam (MockTransport) ----------------------------------------


async def test_qwoty_quick_start():
    transport = qwoty_answers()
    async with mock_client(transport, "qwoty", token=TOKEN) as qwoty:
        customer = await qwoty.update(QID, RENAME)
    assert customer.name == "Acme Corp (Renamed)"
    assert customer.updated_at.isoformat() == "2026-03-24T14:00:00+00:00"
    assert customer.raw["id_crm"] == "crm_001"
    [request] = transport.requests
    assert (request.method, request.url) == ("PATCH", QWOTY_URL)
    assert request.json() == json.loads(seeds.QWOTY_REQUEST)
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["User-Agent"].startswith("customer-patch/")


DEFINITIONS = {
    "items": [
        {"id": 41, "name": "Partner", "field_type": "boolean", "is_active": True},
        {"id": 42, "name": "Partner Name", "field_type": "text", "is_active": True},
    ],
    "count": 2,
}


async def test_dualentry_quick_start():
    body = json.dumps({"id": DEID, "name": "Acme", "phone": None}).encode()

    def answer(request):
        if request.method == "GET":  # the custom field definitions, read once first
            return Response(status=200, body=json.dumps(DEFINITIONS).encode())
        return Response(status=200, body=body)

    transport = MockTransport(answer)
    async with mock_client(transport, token="k", base_url="http://127.0.0.1:8080") as de:
        customer = await de.update(
            DEID, CustomerPatch(phone=None, custom_fields={"Partner": True, 42: "Acme"})
        )
    assert customer.id == DEID
    definitions, request = transport.requests
    assert definitions.url == (
        "http://127.0.0.1:8080/public/v2/custom-fields/?record_type=customer&limit=100&offset=0"
    )
    assert (request.method, request.url) == (
        "PATCH",
        f"http://127.0.0.1:8080/public/v2/customers/{DEID}/",
    )
    assert request.json() == {
        "phone": None,
        "custom_fields": [
            {"Partner": True},
            {"field": {"id": 42}, "value": {"custom_field_id": 42, "value": "Acme"}},
        ],
    }
    assert request.headers["X-API-KEY"] == "k"


async def test_invalid_patches_send_nothing():
    transport = MockTransport(lambda request: pytest.fail("an invalid patch was sent"))
    async with mock_client(transport, token="k") as de:
        with pytest.raises(ValidationError):
            await de.update(1, CustomerPatch(phone="x" * 40))
        with pytest.raises(UnsupportedFieldError):
            await de.update(1, CustomerPatch(tax_ids=[]))
        with pytest.raises(ValidationError):
            await de.update("../x", CustomerPatch(name="A"))
    assert transport.requests == []


async def test_provider_errors_are_typed_and_never_show_the_token():
    not_found = b'{"success": false, "error": "Customer not found"}'
    async with mock_client(qwoty_answers(404, not_found), "qwoty", token=TOKEN) as qwoty:
        with pytest.raises(NotFoundError) as info:
            await qwoty.update(QID, CustomerPatch(name="A"))
    assert info.value.status == 404
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)


async def test_debug_logs_never_carry_the_token(caplog):
    caplog.set_level(logging.DEBUG)
    async with mock_client(qwoty_answers(), "qwoty", token=TOKEN) as qwoty:
        await qwoty.update(QID, CustomerPatch(name="A"))
    assert any("PATCH" in r.getMessage() for r in caplog.records)
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


# -- the aiohttp transport (aioresponses) ----------------------------------------------------


def sent(mocked, method, url):
    return mocked.requests[(method, URL(url))]


async def test_aiohttp_is_asked_to_send_the_request_as_built(mocked):
    mocked.patch(QWOTY_URL, status=200, body=seeds.QWOTY_RESPONSE)
    async with Client("qwoty", token=TOKEN) as qwoty:
        request = qwoty.prepare(QID, RENAME)
        customer = await qwoty.update(QID, RENAME)
    assert customer.name == "Acme Corp (Renamed)"  # the answer, as aiohttp read it
    [call] = sent(mocked, "PATCH", QWOTY_URL)
    assert call.kwargs["data"] == request.body
    headers = call.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["User-Agent"].startswith("customer-patch/")
    assert call.kwargs["allow_redirects"] is False


async def test_connection_failures_are_transport_errors(mocked):
    mocked.patch(QWOTY_URL, exception=aiohttp.ClientConnectionError("refused"), repeat=True)
    async with Client("qwoty", token=TOKEN) as qwoty:
        with pytest.raises(TransportError, match="refused"):
            await qwoty.update(QID, CustomerPatch(name="A"))


async def test_timeouts_are_transport_errors(mocked):
    mocked.patch(QWOTY_URL, exception=TimeoutError(), repeat=True)
    async with Client("qwoty", token=TOKEN, timeout=2) as qwoty:
        with pytest.raises(TransportError, match="within 2"):
            await qwoty.update(QID, CustomerPatch(name="A"))


async def test_huge_bodies_are_not_read(mocked):
    mocked.patch(QWOTY_URL, status=200, body=b"x" * 5000)
    transport = AiohttpTransport(provider="qwoty", timeout=5, max_response_bytes=1000)
    async with Client("qwoty", token=TOKEN, transport=transport) as qwoty:
        with pytest.raises(ResponseFormatError, match="larger than 1000"):
            await qwoty.update(QID, CustomerPatch(name="A"))


async def test_a_callers_session_is_used_and_left_open(mocked):
    mocked.patch(QWOTY_URL, status=200, body=seeds.QWOTY_RESPONSE)
    async with aiohttp.ClientSession() as session:
        async with Client("qwoty", token=TOKEN, session=session) as qwoty:
            await qwoty.update(QID, CustomerPatch(name="A"))
        assert not session.closed


async def test_one_session_is_reused_across_calls(mocked):
    mocked.patch(QWOTY_URL, status=200, body=seeds.QWOTY_RESPONSE, repeat=True)
    async with Client("qwoty", token=TOKEN) as qwoty:
        await qwoty.update(QID, CustomerPatch(name="A"))
        first = qwoty._transport._session
        await qwoty.update(QID, CustomerPatch(name="B"))
        assert qwoty._transport._session is first
    assert first.closed


# -- what the client refuses before sending anything --------------------------------------------


def test_repr_hides_the_token():
    client = Client("qwoty", token=TOKEN)
    assert TOKEN not in repr(client)
    assert TOKEN not in repr(vars(client))
    assert repr(client) == "Client('qwoty', base_url='https://qwoty.app/api')"


@pytest.mark.parametrize(
    "base_url",
    [
        "http://api.example.com",
        "http://10.0.0.1:8080",
        "ftp://127.0.0.1",
        "https://u:p@h.example",
        "qwoty.app",
    ],
)
def test_unsafe_base_urls_are_refused(base_url):
    with pytest.raises(ValueError, match=r"base_url|plain http"):
        Client("qwoty", token=TOKEN, base_url=base_url)


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:1", "http://localhost:8080/api", "http://[::1]:9"]
)
def test_plain_http_to_loopback_is_allowed(base_url):
    Client("qwoty", token=TOKEN, base_url=base_url)


@pytest.mark.parametrize("token", ["", "   ", "abc\r\nX-Evil: 1", None])
def test_bad_tokens_are_refused_without_echoing_them(token):
    with pytest.raises(ValueError) as info:
        Client("qwoty", token=token)  # type: ignore[arg-type]
    assert "Evil" not in str(info.value)


def test_prepare_builds_without_sending():
    request = Client("dualentry", token="k").prepare(5, CustomerPatch(name="A"))
    assert request.url == "https://api.dualentry.com/public/v2/customers/5/"
    assert request.json() == {"name": "A"}
