"""Hostile input, hostile responses, transport safety and secrets."""

import asyncio
import datetime as dt
import logging
import ssl
import subprocess
import time
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from customer_patch import (
    Client,
    CustomerPatch,
    ProviderError,
    Response,
    ResponseFormatError,
    RetryPolicy,
    TransportError,
    ValidationError,
)
from customer_patch.sandbox import Faults
from customer_patch_dualentry import DualEntryAdapter
from customer_patch_qwoty import QwotyAdapter
from tests.helpers import QID, build, loopback_client, serve

TOKEN = "tok_5ecret_never_shown_0123456789"


class AnyId(QwotyAdapter):
    """Qwoty's format but any string id: to test the core's path safety alone."""

    def check_customer_id(self, customer_id):
        return [] if isinstance(customer_id, str) else ["must be a string"]


@pytest.mark.parametrize(
    "customer_id",
    [
        "../x",
        "..",
        ".",
        "a/b",
        "a?b=1",
        "a#frag",
        "with space",
        "ünïcødé",
        "%2e%2e",
        "..%2f..",
        "x" * 5000,
        "a\nb",
        "\x00",
    ],
)
def test_a_customer_id_can_never_escape_its_resource(customer_id):
    try:
        request = build(AnyId(), customer_id, CustomerPatch(name="A"))
    except ValidationError as e:
        assert [p.field for p in e.problems] == ["id"]
        return
    parts = urlsplit(request.url)
    assert parts.query == ""
    assert parts.fragment == ""
    assert parts.path.startswith("/api/customers/")
    segment = parts.path.removeprefix("/api/customers/")
    assert "/" not in segment
    assert segment not in ("", ".", "..")


@pytest.mark.parametrize("customer_id", ["", ".", ".."])
def test_empty_and_dot_ids_are_rejected(customer_id):
    with pytest.raises(ValidationError):
        build(AnyId(), customer_id, CustomerPatch(name="A"))


async def test_an_encoded_id_reaches_the_server_as_one_segment():
    seen = []

    async def handler(request):
        seen.append((request.raw_path, request.match_info["id"]))
        return web.json_response({"success": True, "data": {"id": request.match_info["id"]}})

    async with (
        serve(handler, method="PATCH", path="/customers/{id}") as base,
        Client(AnyId(), token="t", base_url=base) as c,
    ):
        for weird in ["../../admin", "a/b?c#d", "%2e%2e", "naïve id"]:
            customer = await c.update(weird, CustomerPatch(name="A"))
            assert customer.id == weird
    assert [m for _, m in seen] == ["../../admin", "a/b?c#d", "%2e%2e", "naïve id"]
    assert all(raw.startswith("/customers/") and raw.count("/") == 2 for raw, _ in seen)


ODD_BODIES = [
    (200, b"", ResponseFormatError),
    (200, b"not json", ResponseFormatError),
    (200, b'{"success": true, "data": {"id": "x", "name": 5}}', ResponseFormatError),
    (
        200,
        b'{"success": true, "data": {"id": "x", "created_at": "yesterday"}}',
        ResponseFormatError,
    ),
    (
        200,
        b'{"success": true, "data": {"id": "x", "tax_ids": [{"tax": "VAT"}]}}',
        ResponseFormatError,
    ),
    (200, b'{"success": true, "data": {"id": "x", "tax_ids": "VAT"}}', ResponseFormatError),
    (200, b'{"success": true, "data": null}', ResponseFormatError),
    (200, b'{"success": false}', ProviderError),
    (200, b"[1, 2]", ResponseFormatError),
    (200, b'"just a string"', ResponseFormatError),
    (500, b"<html>Bad Gateway</html>", ProviderError),
    (418, b"{}", ProviderError),
    (302, b"", ProviderError),
    (200, b"\xff\xfe\x00garbage", ResponseFormatError),
    (200, b'{"success": true, "data": {"id": "x"}}' * 2, ResponseFormatError),
    # Not JSON, or no number a JSON writer can write back: Python's json reads
    # them (1e400 as inf), and a report or a plan quoting the customer then
    # held NaN or Infinity, which strict JSON readers refuse.
    *(
        (200, b'{"success": true, "data": {"id": "x", "score": %s}}' % n, ResponseFormatError)
        for n in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400")
    ),
    (
        200,
        b'{"success": true, "data": {"id": "x", "score": ' + b"[" * 5 + b"NaN",
        ResponseFormatError,
    ),
]


@pytest.mark.parametrize(("status", "body", "error"), ODD_BODIES)
def test_odd_responses_give_typed_errors_never_crashes(status, body, error):
    adapter = QwotyAdapter()
    request = build(adapter, QID, CustomerPatch(name="A"))
    with pytest.raises(error):
        adapter.parse_response(
            Response(status=status, body=body, headers={"Content-Type": "text/plain"}),
            request=request,
        )


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-01-15T10:30:00Z", dt.datetime(2026, 1, 15, 10, 30, tzinfo=dt.UTC)),
        (
            "2026-01-15T10:30:00.123456+05:30",
            dt.datetime(2026, 1, 15, 5, 0, 0, 123456, tzinfo=dt.UTC),
        ),
        ("2026-01-15 10:30:00+00:00", dt.datetime(2026, 1, 15, 10, 30, tzinfo=dt.UTC)),
        ("2026-01-15T10:30", dt.datetime(2026, 1, 15, 10, 30, tzinfo=dt.UTC)),
        ("20260115T103000Z", dt.datetime(2026, 1, 15, 10, 30, tzinfo=dt.UTC)),
    ],
)
def test_odd_but_valid_dates_parse_as_aware_datetimes(stamp, expected):
    body = {
        "success": True,
        "data": {"id": "x", "updated_at": stamp, "surprise": {"new": "field"}},
    }
    customer = QwotyAdapter().customer_from(body)
    assert customer.updated_at == expected
    assert customer.raw["surprise"] == {"new": "field"}  # unknown fields are tolerated and kept


async def test_a_slow_drip_response_is_bounded_by_the_timeout():
    async def drip(request):
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 1000
        await response.prepare(request)
        for _ in range(1000):
            await response.write(b" ")
            await asyncio.sleep(0.05)
        return response

    async with (
        serve(drip, method="PATCH", path="/public/v2/customers/{id}/") as base,
        loopback_client(base, token="k", timeout=0.5, retry=None) as c,
    ):
        started = time.monotonic()
        with pytest.raises(TransportError, match="no complete answer"):
            await c.update(1, CustomerPatch(name="A"))
        assert time.monotonic() - started < 2


async def test_a_redirect_to_another_host_carries_no_credentials():
    elsewhere = []

    async def other(request):
        elsewhere.append(dict(request.headers))
        return web.json_response({"id": 1})

    async with serve(other, host="127.0.0.2") as other_base:

        async def redirect(request):
            raise web.HTTPTemporaryRedirect(f"{other_base}/steal")

        async with (
            serve(redirect, method="PATCH", path="/public/v2/customers/{id}/") as base,
            loopback_client(base, token=TOKEN) as c,
        ):
            with pytest.raises(ProviderError, match="not followed") as info:
                await c.update(1, CustomerPatch(name="A"))
    assert info.value.status == 307
    assert elsewhere == []


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return d / "cert.pem", d / "key.pem"


async def test_tls_is_verified_by_default(self_signed):
    cert, key = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    hits = []

    async def handler(request):
        hits.append(request.headers.get("X-API-KEY"))
        return web.json_response({"id": 1})

    async with (
        serve(handler, method="PATCH", path="/public/v2/customers/{id}/", ssl=context) as base,
        loopback_client(base, token=TOKEN, retry=None) as c,
    ):
        assert base.startswith("https://127.0.0.1:")
        with pytest.raises(TransportError, match=r"(?i)certificate"):
            await c.update(1, CustomerPatch(name="A"))
    assert hits == []  # the key never reached a server that failed verification


def test_there_is_no_switch_to_turn_tls_verification_off():
    import inspect

    for callable_ in (Client.__init__, __import__("customer_patch").AiohttpTransport.__init__):
        params = set(inspect.signature(callable_).parameters)
        assert not params & {"ssl", "verify", "verify_ssl", "insecure"}


async def test_the_token_never_appears_anywhere(sandbox, caplog):
    caplog.set_level(logging.DEBUG)  # everything, aiohttp's loggers included
    faults = Faults(
        rates={"500": 0.2, "429": 0.1, "drop": 0.1, "truncate": 0.05, "false_success": 0.05},
        retry_after=0,
        seed=3,
    )
    # Retries on, so the library's retry records are among the captured logs too.
    sb = await sandbox(
        "qwoty", customers=30, faults=faults, token=TOKEN, retry=RetryPolicy(attempts=2)
    )
    updates = [(i, CustomerPatch(name="x")) for i in sb.ids] + [
        ("bad id", CustomerPatch(name=None))
    ]
    report = await sb.client.update_many(updates)
    assert report.failed  # the faults made errors to inspect
    request = sb.client.prepare(sb.ids[0], CustomerPatch(name="z"))
    texts = [
        repr(sb.client),
        repr(vars(sb.client)),
        repr(request),
        # What a log line of vars(request), or a debugger's view of it, would show.
        repr(getattr(request, "__dict__", None)),
    ]
    for result in report.results:
        texts += [repr(result), str(result.error), repr(result.error)]
        if result.error is not None:
            texts += [repr(vars(result.error))]
    texts += [record.getMessage() for record in caplog.records]
    texts += [caplog.text]
    leaks = [t for t in texts if TOKEN in t]
    assert leaks == []


def test_errors_pickle_with_their_data():
    import pickle

    from customer_patch import UnknownCustomFieldError

    error = UnknownCustomFieldError(
        "bad", names=["Tier"], provider="p", status=422, field_errors={"custom_fields": ["x"]}
    )
    again = pickle.loads(pickle.dumps(error))
    assert (again.names, again.status, again.field_errors, str(again)) == (
        error.names,
        422,
        error.field_errors,
        str(error),
    )


def test_values_that_are_not_json_are_refused():
    for patch in (
        CustomerPatch(custom_fields={"Tier": float("nan")}),
        CustomerPatch(name="A", extra={"x": float("inf")}),
    ):
        with pytest.raises(ValidationError, match="not JSON"):
            build(DualEntryAdapter(), 1, patch)


def test_lone_surrogates_are_a_validation_error():
    with pytest.raises(ValidationError, match="not valid Unicode"):
        build(DualEntryAdapter(), 1, CustomerPatch(name="\ud800"))
    with pytest.raises(ValidationError, match="not valid Unicode"):
        build(AnyId(), "\ud800", CustomerPatch(name="A"))


@pytest.mark.parametrize(
    "customer_id",
    [
        f"{{{QID}}}",
        f"urn:uuid:{QID}",
        QID.replace("-", ""),
    ],
)
def test_only_the_usual_uuid_form_is_accepted(customer_id):
    with pytest.raises(ValidationError, match="usual form"):
        build(QwotyAdapter(), customer_id, CustomerPatch(name="A"))


def test_an_upper_case_uuid_is_the_usual_form_too():
    upper = QID.upper()
    request = build(QwotyAdapter(), upper, CustomerPatch(name="A"))
    assert request.url.endswith(upper)


def test_response_headers_are_case_insensitive():
    from customer_patch import RateLimitedError

    adapter = DualEntryAdapter()
    request = build(adapter, 1, CustomerPatch(name="A"))
    with pytest.raises(RateLimitedError) as info:
        adapter.parse_response(
            Response(status=429, body=b"{}", headers={"retry-after": "7"}), request=request
        )
    assert info.value.retry_after == 7


def test_unknown_custom_field_names_match_whole_words_only():
    adapter = DualEntryAdapter()
    sent = {"custom_fields": [{"ab": 1}, {"Tier": 2}]}
    assert adapter.unknown_custom_fields(
        {"custom_fields": ["Unknown custom field: 'Tier' (Tablet)"]}, sent
    ) == ["Tier"]
