"""The client keeps its promises against hostile answers and careless use (issue 9).

Most tests fake the network at the transport seam (``MockTransport``); real
sockets are used where the behaviour lives in the transport (compression).
"""

import asyncio
import contextlib
import gzip
import itertools
import json
import logging
import math
import pickle
import threading
import traceback
import urllib.parse
import zlib

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from customer_patch import (
    BadRequestError,
    Client,
    CustomerPatch,
    CustomerPatchError,
    NotAttemptedError,
    NotFoundError,
    Problem,
    RateLimit,
    RateLimitedError,
    Response,
    ResponseFormatError,
    ResponseTooLargeError,
    RetryPolicy,
    ServerError,
    TransportError,
    ValidationError,
    wire,
)
from customer_patch._errors import MESSAGE_KEPT
from customer_patch._pacing import Pacer
from customer_patch._retry import HeldPastDeadline, send_with_retries
from customer_patch._transport import _Inflate
from customer_patch.testing import MockTransport
from tests.helpers import (
    HANG_GUARD,
    QID,
    TOKEN,
    loopback_client,
    mock_client,
    serve,
    serve_raw,
)


def customer(cid=1, **fields):
    return json.dumps({"id": cid, "name": "A", **fields}).encode()


# -- answers that defeat a parser are typed, final errors ---------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"id": 1, "name": "A", "x": ' + b"9" * 5000 + b"}",
    ],
    ids=["nested-deeply", "5000-digit-integer"],
)
async def test_an_answer_past_what_json_reads_is_a_final_format_error(body):
    transport = MockTransport(lambda r: Response(status=200, body=body))
    async with mock_client(transport) as client:
        with pytest.raises(ResponseFormatError) as info:
            await client.update(1, CustomerPatch(name="A"))
    assert not info.value.incomplete
    assert len(transport.requests) == 1  # not retried: the same answer would come again


async def test_a_garbled_answer_is_still_retried():
    bodies = iter([b'{"id": 1, "na', customer()])
    transport = MockTransport(lambda r: Response(status=200, body=next(bodies)))
    async with mock_client(transport) as client:
        await client.update(1, CustomerPatch(name="A"))
    assert len(transport.requests) == 2


async def test_an_answer_about_another_customer_is_a_format_error():
    async with mock_client(lambda r: Response(status=200, body=customer(2))) as client:
        with pytest.raises(ResponseFormatError, match="customer 2, not 1"):
            await client.update(1, CustomerPatch(name="A"))


async def test_qwoty_ids_compare_without_case():
    body = json.dumps({"success": True, "data": {"id": QID, "name": "A"}}).encode()
    transport = MockTransport(lambda r: Response(status=200, body=body))
    async with Client("qwoty", token=TOKEN, transport=transport) as client:
        assert (await client.update(QID.upper(), CustomerPatch(name="A"))).id == QID


# -- inputs that defeat a check are ValidationErrors ---------------------------------------


def nested(depth):
    value = "leaf"
    for _ in range(depth):
        value = {"x": value}
    return value


@pytest.mark.parametrize(
    "patch",
    [
        CustomerPatch(extra={"deep": nested(5000)}),
        CustomerPatch(custom_fields={"Partner": nested(5000)}),
    ],
    ids=["extra", "custom_fields"],
)
def test_input_nested_too_deeply_is_a_validation_error(patch):
    with pytest.raises(ValidationError, match="nested too deeply"):
        Client("dualentry", token=TOKEN).prepare(1, patch)


def test_from_dict_with_a_key_that_is_not_a_string_is_a_validation_error():
    with pytest.raises(ValidationError, match="field names must be strings"):
        CustomerPatch.from_dict({1: "a"})


# -- destinations and secrets ----------------------------------------------------------------


@pytest.mark.parametrize("base_url", ["https://api.example/#", "https://api.example/?"])
def test_an_empty_query_or_fragment_is_refused(base_url):
    with pytest.raises(ValueError, match="query or fragment"):
        Client("dualentry", token=TOKEN, base_url=base_url)


@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        ("", "must be an absolute"),  # an unset variable: not the production host
        ("http://127.0.0.1:99999", "port 99999 is out of range"),
        ("https://api.example:-1", "port -1 is out of range"),
    ],
)
def test_a_base_url_that_names_no_server_is_refused(base_url, message):
    with pytest.raises(ValueError, match=message):
        Client("dualentry", token=TOKEN, base_url=base_url)


@pytest.mark.parametrize("token", ["a\x01b", "a\x7fb", "a\tb"])
def test_tokens_with_control_characters_are_refused(token):
    with pytest.raises(ValueError, match="control characters") as info:
        Client("dualentry", token=token)
    assert token not in str(info.value)


async def test_a_provider_echoing_the_key_never_puts_it_in_errors():
    def echo(request):
        key = request.headers["X-API-KEY"]
        body = {"success": False, "errors": {"__all__": [f"key {key} revoked"], key: [key]}}
        return Response(status=404, headers={"X-Echo": key}, body=json.dumps(body).encode())

    async with mock_client(echo) as client:
        with pytest.raises(NotFoundError) as info:
            await client.update(1, CustomerPatch(name="A"))
    error = info.value
    for shown in (str(error), repr(error), error.message, error.body.decode()):
        assert TOKEN not in shown
    assert "key ******** revoked" in str(error)
    assert TOKEN not in repr(error.field_errors)
    assert TOKEN not in repr(dict(error.headers))


def _windows(secret, least=12):
    return {secret[i : i + least].lower() for i in range(len(secret) - least + 1)}


@pytest.mark.parametrize(
    "quote",
    [
        lambda key: [key[: len(key) // 2], key[len(key) // 2 :]],  # split over two fields
        lambda key: [f"...{key[-14:]}"],  # its end
        lambda key: [key[3:17]],  # its middle
        lambda key: ["".join(f"%{ord(c):02x}" if i % 2 else c for i, c in enumerate(key[2:20]))],
        lambda key: [key[5:].replace(key[8], f"\\u{ord(key[8]):04x}")],
    ],
    ids=["halves", "end", "middle", "percent mix", "json escape"],
)
async def test_any_twelve_characters_of_the_key_echoed_are_masked(quote):
    """The key echoed in pieces, each 12 characters or more: only a prefix was
    masked, so a provider quoting the rest (or each half in its own field) put
    the key, whole, into errors, reports and logs."""

    def echo(request):
        pieces = quote(request.headers["X-API-KEY"])  # written into the JSON as they are
        errors = ", ".join(f'"field{i}": ["bad value {p} here"]' for i, p in enumerate(pieces))
        return Response(status=400, body=f'{{"success": false, "errors": {{{errors}}}}}'.encode())

    async with mock_client(echo) as client:
        with pytest.raises(BadRequestError) as info:
            await client.update(1, CustomerPatch(name="A"))
    error = info.value
    body = (urllib.parse.unquote(error.body.decode()), repr(json.loads(error.body)))
    for shown in (str(error), repr(error), repr(error.field_errors), *body):
        assert not any(w in shown.lower() for w in _windows(TOKEN)), shown
    assert "******** here" in repr(error.field_errors)


async def test_a_key_holding_a_percent_sign_is_masked_and_breaks_nothing():
    """A % of the key's own was read as the start of an escape: masking raised
    ValueError, so an echoing refusal became a ValueError without its status,
    and an undo file failed on a customer named "12345%bigsales"."""
    key = "de_live_ab%zz%41cdef0123456789%"
    client = Client("dualentry", token=key)
    assert client.mask("Black Friday: 12345%bigsales") == "Black Friday: 12345%bigsales"
    assert client.mask(f"a {key} b {key[3:18]} c") == "a ******** b ******** c"

    def echo(request):
        body = {"success": False, "errors": {"name": [f"key {key} refused"]}}
        return Response(status=400, body=json.dumps(body).encode())

    async with Client("dualentry", token=key, transport=MockTransport(echo)) as client:
        with pytest.raises(BadRequestError) as info:
            await client.update(1, CustomerPatch(name="A"))
    assert info.value.status == 400
    assert key not in str(info.value)


def test_fewer_than_twelve_characters_of_the_key_are_ordinary_text():
    client = Client("dualentry", token=TOKEN)
    assert (
        client.mask(f"id {TOKEN[:11]} and {TOKEN[5:16]}") == f"id {TOKEN[:11]} and {TOKEN[5:16]}"
    )
    assert client.mask(f"id {TOKEN[:12]}.") == "id ********."


async def test_a_transport_error_quoting_the_key_never_shows_it():
    """aiohttp's parser errors quote the raw bytes: a server can put the key there."""

    def broken(request):
        key = request.headers["X-API-KEY"]
        raise TransportError(f"Invalid character in chunk size: b'{key}'", provider="dualentry")

    async with mock_client(broken, retry=RetryPolicy(attempts=2)) as client:
        with pytest.raises(TransportError) as info:
            await client.update(1, CustomerPatch(name="A"))
    assert TOKEN not in str(info.value)
    assert "********" in str(info.value)


async def test_the_key_in_another_case_is_masked_too():
    """An ISO date parser upper-cases what it quotes: the key comes back changed."""
    body = json.dumps({"id": 1, "created_by": {"timestamp": TOKEN}}).encode()
    async with mock_client(lambda r: Response(status=200, body=body)) as client:
        with pytest.raises(ResponseFormatError) as info:
            await client.update(1, CustomerPatch(name="A"))
    for shown in (str(info.value), info.value.body.decode()):
        assert TOKEN.upper() not in shown.upper()


async def test_a_validation_error_holds_no_token_in_any_frame():
    async with mock_client(lambda r: Response(status=200, body=customer())) as client:
        with pytest.raises(ValidationError) as info:
            await client.update(1, CustomerPatch(phone="not a phone!"))
    for frame, _ in traceback.walk_tb(info.value.__traceback__):
        for name, value in frame.f_locals.items():
            assert TOKEN not in repr(value), f"{frame.f_code.co_name}: {name}"


def _locals_quoting(error, secret):
    """The frames, in an error's traceback and its causes', with a local that shows
    ``secret``: what an error tracker recording locals (Sentry's default) would send."""
    found = []
    link, seen = error, set()
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        for frame, _ in traceback.walk_tb(link.__traceback__):
            for name, value in frame.f_locals.items():
                if secret in repr(value):
                    found.append(f"{frame.f_code.co_name}: {name}")
        link = link.__cause__ or link.__context__
    return found


@pytest.mark.parametrize(
    "answer",
    [
        # A refusal quoting the key, in its body and a header.
        lambda key: Response(
            status=400,
            headers={"X-Echo": key},
            body=json.dumps({"success": False, "errors": {"__all__": [f"key {key}"]}}).encode(),
        ),
        # A success a parser refuses, quoting the key (an exception as the cause).
        lambda key: Response(
            status=200, body=json.dumps({"id": 1, "created_by": {"timestamp": key}}).encode()
        ),
        # An answer about another customer, whose name is the key.
        lambda key: Response(status=200, body=json.dumps({"id": 2, "name": key}).encode()),
    ],
    ids=["refusal", "unreadable", "another customer"],
)
async def test_no_frame_of_an_error_holds_the_answer_that_echoed_the_key(answer):
    """The error's text was masked, but its traceback kept the frames that read the
    answer (the response, the parsed JSON) with the key in their locals, for any
    error tracker that records locals (Sentry does by default) to send on."""

    async with mock_client(lambda r: answer(r.headers["X-API-KEY"])) as client:
        with pytest.raises(CustomerPatchError) as info:
            await client.update(1, CustomerPatch(name="A"))
        [result] = [r async for r in client.iter_updates([(1, CustomerPatch(name="A"))])]
    assert _locals_quoting(info.value, TOKEN) == []
    assert result.error is not None
    assert _locals_quoting(result.error, TOKEN) == []


def test_a_providers_errors_object_is_kept_within_bounds():
    """Each item of a provider's error lists became a string of its own: 7 MiB
    of ``[{}, {}, ...]`` kept 155 MB in every failed record's error, after the run."""
    errors = {
        "name": [{}] * 200_000,
        "email": ["x" * 100_000],
        **{f"field{i}": [f"message {i}"] for i in range(300)},
    }
    kept = wire.field_errors(errors)
    messages = [m for ms in kept.values() for m in ms]
    assert len(messages) <= wire.MAX_FIELD_ERRORS + 1
    assert max(map(len, messages)) <= wire.MAX_MESSAGE
    assert kept["name"][:3] == ["{}", "{}", "{}"]  # in order, from the start
    assert kept["__all__"] == [
        f"and {200_000 + 1 + 300 - wire.MAX_FIELD_ERRORS} more messages not kept"
    ]
    assert wire.field_errors({"a": ["b", "c"], "d": "e"}) == {"a": ["b", "c"], "d": ["e"]}


async def test_a_huge_refusal_leaves_a_small_error():
    body = json.dumps({"success": False, "errors": {"__all__": [{}] * 500_000}}).encode()
    async with mock_client(lambda r: Response(status=400, body=body)) as client:
        with pytest.raises(BadRequestError) as info:
            await client.update(1, CustomerPatch(name="A"))
    assert len(info.value.message) < 100 * wire.MAX_MESSAGE
    assert sum(map(len, info.value.field_errors.values())) <= wire.MAX_FIELD_ERRORS + 1


def _texts(error):
    """Every text an error keeps: what a run holds on to for each failed record."""
    yield str(error)
    yield from (a for a in error.args if isinstance(a, str))
    yield getattr(error, "message", "")
    for messages in getattr(error, "field_errors", {}).values():
        yield from messages
    for problem in getattr(error, "problems", ()):
        yield from (problem.field, problem.message)
    yield getattr(error, "body", b"").decode("utf-8", "replace")


HUGE = "x" * 4_000_000


def _select_definitions(request):
    if "custom-fields" in request.url:
        options = [f"option {i} " + "o" * 1000 for i in range(4000)]
        field = {"id": 5, "name": "Tier", "field_type": "single_select", "options": options}
        return Response(status=200, body=json.dumps({"items": [field], "count": 1}).encode())
    return Response(status=200, body=customer(1))


@pytest.mark.parametrize(
    ("adapter", "answer", "patch", "options"),
    [
        ("dualentry", lambda r: (400, {"detail": HUGE}), CustomerPatch(name="A"), {}),
        ("qwoty", lambda r: (400, {"success": False, "error": HUGE}), CustomerPatch(name="A"), {}),
        (  # a parser quoting the provider's value
            "dualentry",
            lambda r: (200, {"id": 1, "name": "A", "updated_by": {"timestamp": HUGE}}),
            CustomerPatch(name="A"),
            {},
        ),
        (  # a key looked up, quoted
            "dualentry",
            lambda r: (200, {"items": [{"id": 7, "name": "A", "unique_id": HUGE}], "count": 1}),
            CustomerPatch(name="A"),
            {"match_on": "unique_id"},
        ),
        ("dualentry", _select_definitions, CustomerPatch(custom_fields={"Tier": "no"}), {}),
    ],
    ids=["detail", "qwoty error", "bad date", "matched key", "select options"],
)
async def test_a_providers_huge_text_leaves_a_small_error(adapter, answer, patch, options):
    """A failed record kept the provider's message whole, twice (``message`` and
    the error's text): 2 MiB a record for a 1 MiB ``detail``, 680 MB for 300
    records.  Every text it keeps is cut to MESSAGE_KEPT characters."""

    def respond(request):
        found = answer(request)
        if isinstance(found, Response):
            return found
        status, data = found
        return Response(status=status, body=json.dumps(data).encode())

    cid = QID if adapter == "qwoty" else "K1" if "match_on" in options else 1
    async with mock_client(respond, adapter, retry=None) as client:
        report = await client.update_many([(cid, patch), (cid, patch)], **options)
    assert len(report.failed) == 2
    for result in report.failed:
        sizes = [len(text) for text in _texts(result.error)][:-1]  # the body aside
        assert max(sizes) <= 2 * MESSAGE_KEPT, sizes
        assert len(getattr(result.error, "body", b"")) <= 64 * 1024


def _cut_inside_the_key(where, key, k):
    """An answer whose text the client cuts ``k`` characters into ``key``."""
    if where == "field message":  # cut at 1,000 characters
        return 400, {"success": False, "errors": {"__all__": ["x" * (999 - k) + key]}}
    if where == "message":  # cut at MESSAGE_KEPT characters
        return 400, {"detail": "x" * (MESSAGE_KEPT - 1 - k) + key}
    if where == "quoted id":  # a repr cut at 80 characters, its quote first
        return 200, {"id": "x" * (78 - k) + key, "name": "A"}
    if where == "wide body":  # UTF-16, cut at 64 KiB: 32 Ki characters
        start = '{"detail": "No.", "pad": "'
        text = start + "x" * (32 * 1024 - len(start) - k) + key + '"}'
        return 400, text.encode("utf-16-le")
    start = b'{"detail": "No.", "pad": "'  # the body, cut at 64 KiB
    return 400, start + b"x" * (64 * 1024 - len(start) - k) + key.encode() + b'"}'


@pytest.mark.parametrize("k", [4, 8, 11])
@pytest.mark.parametrize("where", ["field message", "message", "quoted id", "body", "wide body"])
@pytest.mark.parametrize("token", [TOKEN, "de_live:Ab!Cd@EfGhIjKlMnOpQrStUvWxYz0123456789"])
async def test_a_cut_inside_an_echo_of_the_key_leaves_none_of_it(where, k, token):
    """A text is cut before it is masked, and a mask needs 12 characters of the
    key: an echo the cut fell inside left its first 11 in the error (and a cut
    back to the start of a word, tried first, left the piece before a ':' of
    the key).  The piece of the key a cut ends with is masked."""

    def echo(request):
        status, data = _cut_inside_the_key(where, request.headers["X-API-KEY"], k)
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        return Response(status=status, body=body)

    async with mock_client(echo, retry=None, token=token) as client:
        [result] = (await client.update_many([(1, CustomerPatch(name="A"))])).failed
    texts = list(_texts(result.error))
    if where == "wide body":
        texts.append(result.error.body.decode("utf-16-le", "replace"))
    if where.endswith("body"):  # cut where asked
        assert result.error.body_cut
    else:
        assert any(text.endswith("\u2026") or "\u2026," in text for text in texts)
    assert not [text for text in texts if token[:k].lower() in text.lower()]
    assert any("x" * 20 in text for text in texts)  # what came before the key is kept


@pytest.mark.parametrize(
    ("tail", "where"),
    [
        ("%32", "message"),  # a percent-escape after the piece, inside what is kept
        ("%3", "message"),  # the cut inside the escape
        ("%", "message"),
        ("\\u0032", "body"),  # JSON's escape, in a body cut at 64 KiB
        ("\\u00", "body"),
    ],
)
async def test_a_piece_of_the_key_escaped_at_a_cut_is_masked_too(tail, where):
    """The piece of the key a cut text ends with was matched as written: one
    followed by an escape (or an escape the cut fell inside) kept its 10 plain
    characters (a red team's find)."""

    def echo(request):
        key = request.headers["X-API-KEY"]
        piece = key[:10] + tail  # what is kept, and the cut right after
        if where == "message":
            text = "x" * (999 - len(piece)) + piece + key[11:]
            body = json.dumps({"success": False, "errors": {"__all__": [text]}}).encode()
        else:
            start = b'{"detail": "'
            body = start + b"y" * (64 * 1024 - len(start) - len(piece)) + piece.encode()
            body += b"more" * 10 + b'"}'
        return Response(status=400, body=body)

    async with mock_client(echo, retry=None) as client:
        [result] = (await client.update_many([(1, CustomerPatch(name="A"))])).failed
    texts = list(_texts(result.error))
    assert not [text for text in texts if TOKEN[:6] in text]


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (
            400,
            b'{"success": false, "errors": {"__all__": ["No."]}, "pad": "'
            + b"x" * 8_000_000
            + b'"}',
            BadRequestError,
        ),
        (500, b"<html>" + b"x" * 8_000_000, ServerError),
        (200, b'{"id": 1, "name": ' + b"[" * 10 + b"x" * 8_000_000, ResponseFormatError),
    ],
    ids=["refusal", "outage page", "unreadable"],
)
async def test_an_error_keeps_the_start_of_a_huge_answer_only(status, body, error):
    """Every failed record's error kept the provider's whole answer, up to the
    8 MiB read cap: update_many, which keeps every result, held 8 GB for 1,000
    records a hostile provider refused.  The first 64 KiB say what it was."""
    async with mock_client(lambda r: Response(status=status, body=body)) as client:
        report = await client.update_many(
            [(1, CustomerPatch(name="A")), (2, CustomerPatch(name="B"))],
            concurrency=1,
        )
    assert [type(r.error) for r in report.results] == [error, error]
    for result in report.results:
        assert result.error.body == body[: 64 * 1024]


async def test_an_error_keeps_the_first_16_kib_of_huge_headers_and_the_wait_asked_for():
    """An error kept the answer's headers whole: 100 headers of 8 KB (within
    aiohttp's own limits) made each failed record hold 800 KB, 240 MB for 300
    records a hostile provider refused.  The first 16 KiB are kept, in order,
    and Retry-After wherever it came (the retry reads it from the error)."""
    junk = [(f"X-Junk-{i}", "j" * 8000) for i in range(100)]
    headers = CIMultiDict([("Content-Type", "application/json"), *junk, ("Retry-After", "0")])
    answer = Response(status=503, headers=headers, body=b"{}")
    async with mock_client(lambda r: answer, retry=None) as client:
        report = await client.update_many([(1, CustomerPatch(name="A"))])
    [result] = report.failed
    kept = result.error.headers
    assert sum(len(k) + len(v) for k, v in kept.items()) <= 16 * 1024 + len("Retry-After0")
    assert list(kept.items())[:3] == list(headers.items())[:3]  # the first, in order
    assert kept["Retry-After"] == "0"
    assert ServerError("x", provider="p", status=500, headers=headers).headers == kept
    # Retry-After is kept wherever it comes, once: a hundred of them are no way around.
    waits = CIMultiDict([("Retry-After", "9" * 8000)] * 100)
    kept = ServerError("x", provider="p", status=500, headers=waits).headers
    assert sum(len(k) + len(v) for k, v in kept.items()) <= 16 * 1024 + 8011


async def test_a_content_encoding_echoing_the_key_never_shows_it():
    """The transport's own ResponseFormatError quotes the encoding it was sent."""

    async def echo(request):
        return web.Response(
            body=b"{}", headers={"Content-Encoding": request.headers["X-API-KEY"].lower()}
        )

    async with serve(echo) as base, loopback_client(base) as client:
        with pytest.raises(ResponseFormatError) as info:
            await client.update(1, CustomerPatch(name="A"))
    assert "encoded as '********\u2026, which" in str(info.value)  # cut short, then masked
    assert TOKEN.lower() not in repr(info.value).lower()


async def failing_on_a_raw_answer(answer):
    """The TransportError of an update answered with the bytes ``answer(key)``
    makes of the key the request carried (for answers no HTTP server writes)."""

    async def on_connection(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"x-api-key:")
        )
        writer.write(answer(key))
        await writer.drain()
        writer.close()

    async with serve_raw(on_connection) as base, loopback_client(base, retry=None) as client:
        with pytest.raises(TransportError) as info:
            await client.update(1, CustomerPatch(name="A"))
    return info


async def test_the_aiohttp_error_behind_a_transport_error_is_not_kept():
    """aiohttp's error quotes the bad header line, and its request_info holds the
    request's headers, key included: a TransportError keeps neither."""

    info = await failing_on_a_raw_answer(
        lambda key: b"HTTP/1.1 200 OK\r\nkey " + key + b"\r\n\r\n{}"
    )
    error, seen = info.value, []
    while error is not None:
        seen.append(error)
        error = error.__cause__ or error.__context__
    assert [type(e) for e in seen] == [TransportError]
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    "rest",
    [
        b"X-Echo: %s\x00%s\r\nContent-Length: 2\r\n\r\n{}",  # a NUL in a header value
        b"%s %s: v\r\nContent-Length: 2\r\n\r\n{}",  # a space in a header name
        b"Content-Length: 1%s\x01%s\r\n\r\n{}",  # a bad character in a length
        b'WWW-Authenticate: Bearer realm="api", key="%s\x00%s"\r\nContent-Length: 2\r\n\r\n{}',
        b"X-Echo: %s %s\r\nContent-Length: 100\r\n\r\n{}",  # then the connection closes
        b"X-Echo: %s %s\r\n",  # and closes before the head ends
    ],
    ids=["nul-in-value", "space-in-name", "bad-length", "quotes", "cut-body", "cut-head"],
)
async def test_the_key_split_in_a_malformed_answer_is_not_quoted_in_halves(rest):
    """aiohttp's errors quote what the server sent (the line its parser refused,
    the head it had read when the connection closed): the key echoed there split
    by one byte came out in two halves, neither of which the mask found."""
    info = await failing_on_a_raw_answer(
        lambda key: b"HTTP/1.1 200 OK\r\n" + rest % (key[:11], key[11:])
    )
    assert TOKEN[:11] not in str(info.value)
    assert TOKEN[11:] not in str(info.value)
    assert "Error: the " in str(info.value)  # still says what went wrong


def escaped(text, how):
    """``text`` as a provider could quote it back."""
    return {
        "\\u escapes": "".join(f"\\u{ord(c):04x}" for c in text),
        "\\u escapes, upper case": "".join(f"\\u{ord(c):04X}" for c in text),
        "half escaped": "".join(f"\\u{ord(c):04x}" if i % 2 else c for i, c in enumerate(text)),
        "percent-encoded": "".join(f"%{ord(c):02X}" for c in text),
    }[how]


@pytest.mark.parametrize(
    "how", ["\\u escapes", "\\u escapes, upper case", "half escaped", "percent-encoded"]
)
async def test_the_key_escaped_in_a_body_is_masked_there_too(how):
    body = f'{{"success": false, "errors": {{"__all__": ["bad key {escaped(TOKEN, how)}"]}}}}'
    answer = Response(status=400, body=body.encode())
    async with mock_client(lambda r: answer) as client:
        with pytest.raises(BadRequestError) as info:
            await client.update(1, CustomerPatch(name="A"))
    for shown in (str(info.value), info.value.body.decode(), repr(info.value.field_errors)):
        assert TOKEN not in shown
        assert escaped(TOKEN, how) not in shown
    with contextlib.suppress(ValueError):  # what json reads of the body, too
        assert TOKEN not in json.dumps(json.loads(info.value.body), ensure_ascii=False)


@pytest.mark.parametrize("odd", [b"", b"\x00"], ids=["whole", "an-odd-byte-more"])
@pytest.mark.parametrize("how", ["as is", "\\u escapes", "percent-encoded"])
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
async def test_the_key_in_a_body_of_another_encoding_is_masked_there_too(encoding, how, odd):
    """Escaped, the key in a UTF-16 body was kept: only its plain form was
    looked for in the wide encodings (and in one with a byte that does not
    decode, whatever its form)."""
    quoted = TOKEN if how == "as is" else escaped(TOKEN, how)
    body = f'{{"success": false, "errors": {{"__all__": ["bad key {quoted}"]}}}}'
    answer = Response(status=400, body=body.encode(encoding) + odd)
    async with mock_client(lambda r: answer) as client:
        with pytest.raises(BadRequestError) as info:
            await client.update(1, CustomerPatch(name="A"))
    read = info.value.body.decode(json.detect_encoding(info.value.body), "replace")
    assert TOKEN not in read
    assert quoted not in read
    assert "********" in read
    assert TOKEN not in str(info.value)


async def test_the_key_as_a_header_name_is_masked_too():
    def echo(request):
        key = request.headers["X-API-KEY"]
        headers = {f"X-Echo-{key}": "1", "X-Other": "2"}
        return Response(status=400, headers=headers, body=b'{"detail": "bad"}')

    async with mock_client(echo) as client:
        with pytest.raises(BadRequestError) as info:
            await client.update(1, CustomerPatch(name="A"))
    assert TOKEN.lower() not in repr(dict(info.value.headers)).lower()
    assert TOKEN.encode().lower() not in pickle.dumps(info.value).lower()
    assert info.value.headers["X-Other"] == "2"


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize(
    "retry_after",
    [
        "Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
        "Mon, 01 Jan 2026 00:00:00 +99999999999999999999",
    ],
)
async def test_a_retry_after_date_past_any_calendar_is_no_retry_after(status, retry_after):
    answer = Response(status=status, headers={"Retry-After": retry_after}, body=b"{}")
    async with mock_client(lambda r: answer, retry=None) as client:
        with pytest.raises((RateLimitedError, ServerError)) as info:
            await client.update(1, CustomerPatch(name="A"))
    assert info.value.status == status


async def test_a_body_cut_inside_a_character_is_retried_as_a_body_cut_short():
    whole = json.dumps({"id": 1, "name": "Café"}, ensure_ascii=False).encode()
    bodies = iter([whole[: whole.index("é".encode()) + 1], whole])
    transport = MockTransport(lambda r: Response(status=200, body=next(bodies)))
    async with mock_client(transport) as client:
        customer = await client.update(1, CustomerPatch(name="Café"))
    assert customer.name == "Café"
    assert len(transport.requests) == 2


async def test_a_body_that_is_not_utf_8_is_not_json_and_worth_a_retry():
    transport = MockTransport(lambda r: Response(status=200, body=b'{"name": "\xe9"}'))
    async with mock_client(transport, retry=RetryPolicy(attempts=2)) as client:
        with pytest.raises(ResponseFormatError) as info:
            await client.update(1, CustomerPatch(name="A"))
    assert info.value.incomplete
    assert len(transport.requests) == 2


@pytest.mark.parametrize("where", ["message", "body"])
async def test_an_answer_holding_a_lone_surrogate_is_still_a_typed_error(where):
    """JSON may carry "\\ud800"; masking the key in such a text must not fail."""
    text = "bad \\ud800 name" if where == "message" else "bad"
    body = f'{{"success": false, "errors": {{"name": ["{text}"]}}, "x": "\\udfff"}}'
    async with mock_client(lambda r: Response(status=400, body=body.encode())) as client:
        with pytest.raises(BadRequestError) as info:
            await client.update(1, CustomerPatch(name="A"))
    assert "bad" in str(info.value)
    assert client.mask("a \ud800 b") == "a \ud800 b"


async def test_a_custom_field_option_echoing_the_key_never_shows_it():
    """The check against the provider's definitions quotes its options."""
    options = ["Bronze", f"echo {TOKEN}"]
    definitions = {
        "items": [{"id": 5, "name": "Tier", "field_type": "single_select", "options": options}],
        "count": 1,
    }
    answer = Response(status=200, body=json.dumps(definitions).encode())
    async with mock_client(lambda r: answer) as client:
        with pytest.raises(ValidationError) as info:
            await client.update(1, CustomerPatch(custom_fields={"Tier": "Gold"}))
    assert "Bronze" in str(info.value)
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value.problems)


@pytest.mark.parametrize("text", ["\udcc3\udca9", "\udcc3\udca9 \ud800", "x\ud800y"])
def test_masking_leaves_a_text_without_the_key_as_it_was(text):
    client = Client("dualentry", token=TOKEN)
    assert client.mask(text) == text


def test_a_problem_that_is_not_text_survives_redaction():
    """A third-party adapter's check may say anything: redacting it must not fail."""
    client = Client("dualentry", token=TOKEN)
    error = client._credentials.redact(ValidationError([Problem(5, 404)]))
    assert error.problems == (Problem(5, 404),)


# -- the time budget holds for every wait ----------------------------------------------------


async def test_the_first_attempt_counts_against_the_budget():
    async def slow_500(request):
        await asyncio.sleep(0.3)
        return Response(status=500, body=b"{}")

    transport = MockTransport(slow_500)
    policy = RetryPolicy(timeout=0.2)
    async with mock_client(transport, retry=policy) as client:
        # The attempt itself is cut when the budget runs out; no second one goes.
        with pytest.raises(TransportError, match="time budget"):
            await client.update(1, CustomerPatch(name="A"))
    assert len(transport.requests) == 1


async def test_a_retry_after_longer_than_the_budget_ends_the_update_at_once():
    refuse = Response(status=429, headers={"Retry-After": "20"}, body=b"{}")
    transport = MockTransport(lambda r: refuse)
    async with Client(
        "dualentry", token=TOKEN, transport=transport, retry=RetryPolicy(timeout=3)
    ) as client:
        with pytest.raises(RateLimitedError):
            await asyncio.wait_for(client.update(1, CustomerPatch(name="A")), HANG_GUARD)
    assert len(transport.requests) == 1


async def test_a_pause_set_by_another_update_counts_against_the_budget_too():
    """One update's 429 asks for 100 s; the next update (budget 3 s) must not wait it out."""

    def answer(request):
        if request.url.endswith("/1/"):
            return Response(status=429, headers={"Retry-After": "100"}, body=b"{}")
        return Response(status=200, body=customer(2))

    transport = MockTransport(answer)
    async with Client(
        "dualentry", token=TOKEN, transport=transport, retry=RetryPolicy(timeout=3)
    ) as client:
        with pytest.raises(RateLimitedError):
            await asyncio.wait_for(client.update(1, CustomerPatch(name="A")), HANG_GUARD)
        with pytest.raises(RateLimitedError, match="time budget") as info:
            await asyncio.wait_for(client.update(2, CustomerPatch(name="B")), HANG_GUARD)
        results = [
            r async for r in client.iter_updates([(2, CustomerPatch(name="B"))], concurrency=1)
        ]
    assert "nothing was sent" in str(info.value)
    assert len(transport.requests) == 1  # only the first update's request went out
    assert results[0].attempts == 0  # nothing sent for it either


async def test_a_backoff_that_overshoots_the_budget_leaves_the_last_answer_standing():
    """The backoff fits the budget, but the sleep ends a little past it (a busy
    machine); the next attempt is then refused by the pacer.  The update ends with
    the provider's last answer, not a made-up 429 (seen in CI)."""
    now = [0.0]

    async def oversleep(seconds):
        now[0] += seconds + 2.5  # wakes long after it should

    errors = iter([ServerError("boom", provider="dualentry", status=500)])

    async def send(deadline):
        if now[0] > deadline:
            raise HeldPastDeadline(RateLimitedError("held", provider="dualentry", status=429))
        raise next(errors)

    policy = RetryPolicy(attempts=5, timeout=2, wait_initial=0.5, wait_max=0.5)
    value, error, attempts = await send_with_retries(
        send,
        policy=policy,
        on_rate_limited=lambda w: None,
        label="x",
        sleep=oversleep,
        clock=lambda: now[0],
    )
    assert value is None
    assert isinstance(error, ServerError)
    assert error.status == 500
    assert attempts == 1


async def test_the_budget_bounds_an_attempt_that_never_finishes():
    async def drip(request):
        await asyncio.sleep(3600)  # a body that drips forever, as far as the client knows

    transport = MockTransport(drip)
    async with Client(
        "dualentry", token=TOKEN, transport=transport, retry=RetryPolicy(timeout=0.2)
    ) as client:
        with pytest.raises(TransportError, match="time budget"):
            await asyncio.wait_for(client.update(1, CustomerPatch(name="A")), HANG_GUARD)
    assert len(transport.requests) == 1


async def test_records_after_the_client_is_closed_mid_run_are_not_attempted():
    client = None

    def answer(request):
        if len(transport.requests) == 4:
            asyncio.get_running_loop().create_task(client.aclose())
        cid = int(request.url.rstrip("/").rsplit("/", 1)[1])
        return Response(status=200, body=customer(cid))

    transport = MockTransport(answer)
    client = mock_client(transport)
    items = [(i, CustomerPatch(name="A")) for i in range(1, 51)]
    report = await asyncio.wait_for(client.update_many(items, concurrency=1), HANG_GUARD)
    assert len(report.results) == 50
    unsent = [r for r in report.results if isinstance(r.error, NotAttemptedError)]
    assert unsent
    assert all(r.attempts == 0 for r in unsent)
    assert len(transport.requests) == 50 - len(unsent)


@pytest.mark.real_waits
def test_the_backoff_of_a_late_retry_is_finite():
    policy = RetryPolicy(attempts=5000, wait_max=2.0)
    assert 0 <= policy.backoff(4999) <= 2.0


@pytest.mark.parametrize(
    ("burst", "per_second"), [(5, math.inf), (1, 1e-300), (1, math.nan), (0, 1), (10**9, 1)]
)
def test_rate_limits_outside_what_a_pacer_can_hold_are_refused(burst, per_second):
    with pytest.raises(ValueError):
        RateLimit(burst=burst, per_second=per_second)


# -- rate_limit=None is no declared limit, not "ignore the provider" -------------------------


async def test_no_declared_limit_still_completes_against_an_enforcing_provider(sandbox):
    sb = await sandbox(
        "dualentry",
        customers=60,
        limits=(RateLimit(burst=10, per_second=100.0),),
        rate_limit=None,
    )
    report = await sb.client.update_many(
        [(i, CustomerPatch(name=f"N{i}")) for i in sb.ids], concurrency=16
    )
    assert len(report.succeeded) == 60, report.failed[:1]
    assert sb.fake.answered_429 > 0  # the provider did enforce its limit


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    async def sleep(self, seconds):
        self.now += seconds


def test_the_pace_recovers_within_seconds_after_a_storm_of_429s():
    clock = FakeClock()
    pacer = Pacer((), start_slow=False, clock=clock, sleep=clock.sleep)
    # 10 s at 50/s accepted, then a 5 s storm: every answer a 429 with Retry-After 1.
    for _ in range(500):
        clock.now += 0.02
        pacer.on_success()
    storm_end = clock.now + 5
    while clock.now < storm_end:
        clock.now += 0.02
        pacer.on_rate_limited(1.0)
    assert pacer.rate is not None
    assert pacer.rate < 25  # the storm at least halved the pace
    # The provider allows 50/s again: requests go as the pacer lets them.
    recovered_at = None
    while clock.now < storm_end + 30:
        asyncio.run(pacer.acquire())
        pacer.on_success()
        if recovered_at is None and pacer.rate >= 40:
            recovered_at = clock.now
    assert recovered_at is not None
    assert recovered_at - storm_end < 10


def test_stray_429s_among_many_successes_do_not_sink_the_pace():
    clock = FakeClock()
    pacer = Pacer((), start_slow=False, clock=clock, sleep=clock.sleep)
    for n in range(5000):  # 100/s, one answer in 25 a 429 (4%)
        clock.now += 0.01
        if n % 25 == 0:
            pacer.on_rate_limited(0.0)
        else:
            pacer.on_success()
    assert pacer.rate is None  # never engaged: no limit was being hit


@pytest.mark.parametrize("per_second", [10, 10_000])
def test_the_log_of_successes_stays_bounded_and_the_estimate_exact(per_second):
    clock = FakeClock()
    pacer = Pacer((), start_slow=False, clock=clock, sleep=clock.sleep)
    adaptive = pacer._adaptive
    held = 0
    for _ in range(30 * per_second):  # 30 s of successes, trimmed only now and then
        clock.now += 1 / per_second
        pacer.on_success()
        held = max(held, len(adaptive._successes))
    assert held <= max(adaptive.KEEP, 2 * per_second + 2) + 1
    # A 429 counts exactly the last second's successes, whatever was kept.
    pacer.on_rate_limited(1.0)
    assert adaptive.recover_to == pytest.approx(adaptive.CUT * per_second, rel=0.01)


class StallingTime:
    """Virtual time for a pacer whose loop can be blocked: a sleep ends at its
    time, or, if that falls in a stall, when the stall ends (all together).
    ``events`` are (time, function) pairs, called when the time comes."""

    def __init__(self, stalls, events=()):
        self.now = 0.0
        self.stalls = stalls  # (start, end) pairs, sorted
        self.events = sorted(events, key=lambda e: e[0])
        self.sleeps = 0
        self._sleepers = []  # (wake at, order, future)
        self._order = itertools.count()

    def clock(self):
        return self.now

    async def sleep(self, seconds):
        self.sleeps += 1
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, next(self._order), future))
        await future

    async def run(self, tasks):
        while True:
            for _ in range(20):  # every task runs until it sleeps or ends
                await asyncio.sleep(0)
            self._sleepers = [s for s in self._sleepers if not s[2].done()]
            if not self._sleepers and not self.events:
                break
            wake = min([s[0] for s in self._sleepers] + [e[0] for e in self.events])
            for start, end in self.stalls:
                if start <= wake < end:
                    wake = end
            self.now = max(self.now, wake)
            while self.events and self.events[0][0] <= self.now:
                self.events.pop(0)[1]()
            for at, _, future in sorted(self._sleepers):
                if at <= self.now:
                    future.set_result(None)
        assert all(t.done() for t in tasks)


def refused_by(limit, times):
    """The requests a provider's token bucket at ``limit`` refuses, as the
    sandbox's bucket counts them."""
    tokens, last, refused = float(limit.burst), 0.0, 0
    for at in times:
        tokens = min(limit.burst, tokens + (at - last) * limit.per_second)
        last = at
        if tokens >= 1:
            tokens -= 1
        else:
            refused += 1
    return refused


@pytest.mark.parametrize(
    "limit",
    [RateLimit(burst=3, per_second=20), RateLimit(burst=1, per_second=1), RateLimit(50, 10)],
)
@pytest.mark.parametrize("stalls", [[], [(0.03, 1.0)], [(0.2, 0.5), (0.6, 3.0), (3.01, 9.0)]])
async def test_requests_held_by_a_stalled_loop_leave_at_the_pace_not_all_at_once(limit, stalls):
    """Slots are taken ahead; a loop blocked past several of them (GC, a
    laptop's sleep, a busy machine) must not send their requests together."""
    time = StallingTime(stalls)
    pacer = Pacer([limit], clock=time.clock, sleep=time.sleep)
    sent, order = [], []

    async def request(n):
        assert await pacer.acquire()
        sent.append(time.now)
        order.append(n)

    tasks = [asyncio.ensure_future(request(n)) for n in range(3 * limit.burst + 12)]
    await time.run(tasks)
    assert order == list(range(len(tasks)))  # the first held is not overtaken
    assert refused_by(limit, sent) == 0
    # Held no longer than the stalls and the pace explain.
    pace = (len(tasks) - 1) / (limit.per_second * Pacer.HEADROOM)
    assert sent[-1] <= sum(end - start for start, end in stalls) + pace + 1e-9


async def test_a_429_pause_holds_the_requests_held_after_a_stall():
    time = StallingTime([(0.01, 2.0)], events=[(2.05, lambda: pacer.on_rate_limited(5.0))])
    pacer = Pacer([RateLimit(burst=2, per_second=10)], clock=time.clock, sleep=time.sleep)
    sent = []

    async def request():
        assert await pacer.acquire()
        sent.append(time.now)

    tasks = [asyncio.ensure_future(request()) for _ in range(20)]
    await time.run(tasks)
    assert [t for t in sent if 2.05 <= t < 7.05] == []


async def test_a_request_held_after_a_stall_keeps_its_deadline():
    outcome = []

    def late_request():
        deadline = time.now + 0.2
        tasks.append(asyncio.ensure_future(request(deadline, outcome)))

    time = StallingTime([(0.01, 12.0)], events=[(12.05, late_request)])
    pacer = Pacer([RateLimit(burst=5, per_second=10)], clock=time.clock, sleep=time.sleep)

    async def request(deadline=math.inf, out=None):
        went = await pacer.acquire(deadline)
        if out is not None:
            out.append((went, time.now))

    tasks = [asyncio.ensure_future(request()) for _ in range(100)]
    await time.run(tasks)
    [(went, at)] = outcome
    assert not went
    assert at <= 12.05 + 0.2  # refused by its deadline, not after the backlog


async def test_no_request_goes_past_its_deadline_when_a_stall_woke_it_late():
    time = StallingTime([(0.01, 5.0)])
    pacer = Pacer([RateLimit(burst=5, per_second=10)], clock=time.clock, sleep=time.sleep)
    went = []

    async def request():
        if await pacer.acquire(3.0):
            went.append(time.now)

    tasks = [asyncio.ensure_future(request()) for _ in range(12)]
    await time.run(tasks)
    assert went  # some went in time
    assert max(went) <= 3.0


async def test_a_route_with_room_is_not_held_behind_another_routes_backlog():
    went = {}

    def other_routes():
        tasks.append(asyncio.ensure_future(request("GET /customers/{id}")))
        tasks.append(asyncio.ensure_future(request("GET /custom-fields")))

    time = StallingTime([(0.01, 10.0)], events=[(10.5, other_routes)])
    limits = [RateLimit(burst=100, per_second=100), RateLimit(1, 1, per_route=True)]
    pacer = Pacer(limits, clock=time.clock, sleep=time.sleep)

    async def request(route):
        assert await pacer.acquire(route=route)
        went.setdefault(route, []).append(time.now)

    tasks = [asyncio.ensure_future(request("PATCH /customers/{id}")) for _ in range(10)]
    await time.run(tasks)
    assert went["GET /customers/{id}"] == [10.5]
    assert went["GET /custom-fields"] == [10.5]


async def test_many_requests_held_after_a_stall_wake_about_once_each():
    time = StallingTime([(0.01, 2.0)])
    pacer = Pacer([RateLimit(burst=10, per_second=1000)], clock=time.clock, sleep=time.sleep)
    tasks = [asyncio.ensure_future(pacer.acquire()) for _ in range(1000)]
    await time.run(tasks)
    assert all(t.result() for t in tasks)
    assert time.sleeps < 4 * len(tasks)  # all waking for each one to go: half a million


def test_a_paced_client_serves_one_asyncio_run_after_another():
    """A client's pacer holds no loop's object: a second asyncio.run, after
    requests were held in the first, paces as the first did."""

    def answer(request):
        if request.url.endswith("/3/"):  # blocks the loop: the later slots pass
            threading.Event().wait(0.2)
        return Response(status=200, body=customer(int(request.url.rsplit("/", 2)[-2])))

    client = Client(
        "dualentry",
        token=TOKEN,
        transport=MockTransport(answer),
        rate_limit=RateLimit(burst=2, per_second=50),
    )

    async def run():
        updates = [(i, CustomerPatch(name="A")) for i in range(1, 9)]
        results = await client.update_many(updates, concurrency=8)
        assert len(results.succeeded) == 8, results.failed

    asyncio.run(run())
    asyncio.run(run())


# -- careless use of a client ------------------------------------------------------------------


async def test_a_closed_client_refuses_to_send():
    client = mock_client(lambda r: Response(status=200, body=customer()))
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.update(1, CustomerPatch(name="A"))
    with pytest.raises(RuntimeError, match="closed"):
        client.iter_updates([(1, CustomerPatch(name="A"))])


def test_a_client_used_from_a_loop_in_another_thread_says_so(sandbox_server):
    # Its own loop still runs (in another thread): not this loop either.
    base_url, token = sandbox_server
    client = loopback_client(base_url, token=token)
    first = asyncio.new_event_loop()
    thread = threading.Thread(target=first.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(
            client.update(1001, CustomerPatch(name="A")), first
        ).result(HANG_GUARD)
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(client.update(1001, CustomerPatch(name="B")))
    finally:
        asyncio.run_coroutine_threadsafe(client.aclose(), first).result(HANG_GUARD)
        first.call_soon_threadsafe(first.stop)
        thread.join(HANG_GUARD)
        first.close()


def test_a_client_used_from_a_second_event_loop_says_so(sandbox_server):
    base_url, token = sandbox_server
    client = loopback_client(base_url, token=token)
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(client.update(1001, CustomerPatch(name="A")))
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(client.update(1001, CustomerPatch(name="B")))
    finally:
        first.run_until_complete(client.aclose())
        first.close()


# -- compressed answers are capped after decoding -----------------------------------------------


async def test_a_gzip_bomb_is_refused_after_decoding_the_cap():
    bomb = gzip.compress(b" " * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB of spaces

    async def handler(request):
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip"})

    async with serve(handler) as base, loopback_client(base, token=TOKEN) as client:
        with pytest.raises(ResponseTooLargeError):
            await client.update(1, CustomerPatch(name="A"))
    assert len(bomb) < 8 * 1024 * 1024  # small on the wire: only the decoded size trips it


async def test_a_gzip_answer_within_the_cap_is_read():
    async def handler(request):
        return web.Response(body=gzip.compress(customer()), headers={"Content-Encoding": "gzip"})

    async with serve(handler) as base, loopback_client(base, token=TOKEN) as client:
        assert (await client.update(1, CustomerPatch(name="A"))).name == "A"


def raw_deflate(data):
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("encoding", "pack"),
    [
        ("deflate", zlib.compress),  # zlib-wrapped, as HTTP says
        ("deflate", raw_deflate),  # raw, as some servers send (aiohttp reads it)
        ("gzip", lambda data: gzip.compress(data[:10]) + gzip.compress(data[10:])),
        ("gzip", lambda data: gzip.compress(data) + b"trailing garbage"),
        ("gzip", lambda data: gzip.compress(data) + b"\n"),  # one byte: no member
        ("deflate", lambda data: zlib.compress(data) + b"\n"),
    ],
    ids=["zlib", "raw-deflate", "two-gzip-members", "gzip-then-garbage", "gzip-nl", "zlib-nl"],
)
async def test_compressed_answers_as_servers_really_send_them_are_read(encoding, pack):
    """Raw deflate and a gzip of two members were errors, retried though the update
    had landed on the first attempt."""
    sent = 0

    async def handler(request):
        nonlocal sent
        sent += 1
        return web.Response(body=pack(customer()), headers={"Content-Encoding": encoding})

    async with serve(handler) as base, loopback_client(base, token=TOKEN) as client:
        assert (await client.update(1, CustomerPatch(name="A"))).name == "A"
    assert sent == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 64 * 1024])
def test_a_compressed_body_decodes_the_same_however_it_is_cut(encoding, size):
    """A body arriving a byte at a time (a slow drip) decodes as one arriving whole:
    the bytes that say which stream comes next may be split between two chunks."""
    data = customer() * 50
    bodies = {
        "gzip": [gzip.compress(data), gzip.compress(data[:99]) + gzip.compress(data[99:])],
        "deflate": [zlib.compress(data), raw_deflate(data)],
    }[encoding]
    for body in bodies:
        inflate = _Inflate(encoding, 1 << 20)
        for start in range(0, len(body), size):
            inflate.feed(body[start : start + size])
        assert inflate.ended()
        assert bytes(inflate.out) == data
        cut = _Inflate(encoding, 1 << 20)
        cut.feed(body[:-3])
        assert not cut.ended()


@pytest.mark.parametrize(
    ("status", "error"), [(404, NotFoundError), (429, RateLimitedError), (500, ServerError)]
)
async def test_an_empty_answer_said_to_be_compressed_is_its_status(status, error):
    """A 404 with "Content-Encoding: gzip" and no body was a TransportError ("the
    gzip body was cut short"): retried, and a 429's Retry-After never honoured."""

    async def handler(request):
        headers = {"Content-Encoding": "gzip", "Retry-After": "0"}
        return web.Response(status=status, body=b"", headers=headers)

    async with serve(handler) as base, loopback_client(base, token=TOKEN, retry=None) as client:
        with pytest.raises(error):
            await client.update(1, CustomerPatch(name="A"))


@pytest.fixture
def sandbox_server():
    """A DualEntry fake on a thread of its own, so each event loop can reach it."""
    from tests.threaded_fake import threaded_fake

    with threaded_fake("dualentry", customers=3, limits=()) as (fake, base_url, _):
        yield base_url, fake.token


async def close_once_waiting(client, reached):
    """Close ``client`` once ``reached`` is set and what it started has had ten
    turns of the loop to reach its wait (a MockTransport answers within one)."""
    await asyncio.wait_for(reached.wait(), HANG_GUARD)
    for _ in range(10):
        await asyncio.sleep(0)
    await client.aclose()


def three_updates(client, how):
    """Customers 1 to 3 updated at once, by ``update()`` each (gathered, errors
    kept) or by one ``update_many``: a task, and how to read its errors."""
    items = [(i, CustomerPatch(name="A")) for i in range(1, 4)]
    if how == "update":
        run = asyncio.gather(*(client.update(*item) for item in items), return_exceptions=True)
        return asyncio.ensure_future(run), lambda outcome: outcome
    run = client.update_many(items, concurrency=3)
    return asyncio.ensure_future(run), lambda report: [r.error for r in report.results]


def held():
    """A handler answering customer 1 only once ``release`` is set, and the
    events: ``arrived`` (a request came) and ``release``."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def hold(request):
        arrived.set()
        await release.wait()
        return web.json_response({"id": 1, "name": "A", "custom_fields": []})

    return hold, arrived, release


@pytest.mark.parametrize("how", ["update", "update_many"])
async def test_closing_the_client_ends_requests_waiting_for_a_connection_unsent(how):
    """aiohttp cancels the requests that wait for a connection when its session
    closes: they were not sent, which is what they say; never a CancelledError in
    a task nobody cancelled (asyncio code takes one for its own cancellation)."""
    hold, arrived, release = held()
    async with serve(hold) as base:
        client = loopback_client(base, max_connections=1)
        task, errors_of = three_updates(client, how)
        await asyncio.wait_for(arrived.wait(), HANG_GUARD)
        await client.aclose()
        release.set()
        outcome = await asyncio.wait_for(task, HANG_GUARD)
    errors = errors_of(outcome)
    # The one on the connection was sent; its answer was cut off by the close.
    assert [type(e) for e in errors] == [TransportError, NotAttemptedError, NotAttemptedError]
    if how == "update_many":
        assert [r.attempts for r in outcome.results] == [1, 0, 0]
        assert "connection pool was closed" in str(outcome.results[1].error.cause)


async def test_a_sent_record_whose_retry_waits_for_a_connection_keeps_its_error_on_close():
    """Answered 500, then closed while its retry waited for a connection: the
    500 stands, for the one request that went out, not a "nothing was sent"."""
    release = asyncio.Event()
    held = asyncio.Event()
    retrying = asyncio.Event()

    async def answer(request):
        if request.match_info["tail"].endswith("/1/"):
            return web.json_response({}, status=500)
        held.set()
        await release.wait()
        return web.json_response({"id": 2, "name": "A", "custom_fields": []})

    class Retry(RetryPolicy):
        def backoff(self, retry_number):
            retrying.set()
            return 0.0  # the retry goes at once, and waits for the only connection

    async with serve(answer) as base:
        client = loopback_client(base, max_connections=1, retry=Retry(attempts=3))
        items = [(1, CustomerPatch(name="A")), (2, CustomerPatch(name="A"))]
        task = asyncio.ensure_future(client.update_many(items, concurrency=2))
        await asyncio.wait_for(held.wait(), HANG_GUARD)
        await asyncio.wait_for(retrying.wait(), HANG_GUARD)
        for _ in range(10):  # let the retry reach the connection pool
            await asyncio.sleep(0)
        await client.aclose()
        release.set()
        report = await asyncio.wait_for(task, HANG_GUARD)
    first = report.results[0]
    assert isinstance(first.error, ServerError), first.error
    assert first.attempts == 1


@pytest.mark.parametrize("how", ["update", "update_many"])
async def test_closing_the_client_ends_requests_held_by_its_pace_at_once(how):
    """Requests waiting for their turn at a slow pace (here one a minute) when
    the client closes are not sent, and do not wait for that turn to say so."""
    sent = []
    first = asyncio.Event()

    def answer(request):
        sent.append(request)
        first.set()
        cid = int(request.url.rstrip("/").rsplit("/", 1)[1])
        return Response(status=200, body=customer(cid))

    transport = MockTransport(answer)
    client = mock_client(transport, rate_limit=RateLimit(burst=1, per_second=1 / 60))
    task, errors_of = three_updates(client, how)
    await close_once_waiting(client, first)  # the other two wait at the pace
    errors = errors_of(await asyncio.wait_for(task, HANG_GUARD))
    assert len(sent) == 1
    assert [type(e) for e in errors].count(NotAttemptedError) == 2, errors
    assert all(
        str(e).startswith("not attempted, after RuntimeError: ") and "was closed" in str(e)
        for e in errors
        if isinstance(e, NotAttemptedError)
    )


async def test_a_wait_at_the_pace_is_a_task_the_leak_checks_see():
    """Every task the library starts carries its name, so a test (or an operator
    listing tasks) can tell one left behind."""
    client = mock_client(
        lambda r: Response(status=200, body=customer(1)),
        rate_limit=RateLimit(burst=1, per_second=1 / 60),
    )
    first = asyncio.ensure_future(client.update(1, CustomerPatch(name="A")))
    waiting = asyncio.ensure_future(client.update(1, CustomerPatch(name="B")))
    await asyncio.wait_for(first, HANG_GUARD)
    for _ in range(10):  # let the second reach its wait
        await asyncio.sleep(0)
    names = [t.get_name() for t in asyncio.all_tasks()]
    assert "customer-patch pacer wait" in names
    await client.aclose()
    with pytest.raises(NotAttemptedError):
        await asyncio.wait_for(waiting, HANG_GUARD)
    assert "customer-patch pacer wait" not in [t.get_name() for t in asyncio.all_tasks()]


class _MinuteBackoff(RetryPolicy):
    def backoff(self, retry_number):
        return 60.0  # no jitter: the retry surely waits when the client closes


@pytest.mark.parametrize(
    ("status", "headers", "error"),
    [(500, {}, ServerError), (429, {"Retry-After": "60"}, RateLimitedError)],
    ids=["backoff", "retry-after"],
)
async def test_closing_the_client_ends_a_wait_to_retry_at_once(status, headers, error):
    """A failed attempt waiting a minute to retry (its own backoff, or the pause a
    429 put on the whole client) ends when the client closes, with its error."""
    answered = asyncio.Event()

    def answer(request):
        answered.set()
        return Response(status=status, headers=headers, body=b"{}")

    transport = MockTransport(answer)
    client = mock_client(transport, retry=_MinuteBackoff(attempts=3))
    task = asyncio.ensure_future(client.update(1, CustomerPatch(name="A")))
    await close_once_waiting(client, answered)
    with pytest.raises(error):
        await asyncio.wait_for(task, HANG_GUARD)
    assert len(transport.requests) == 1


async def test_a_retry_is_logged_once_with_what_an_operator_needs(caplog):
    """On the library's own logger, at INFO: which customer, what failed, which
    retry of how many, after how long; nothing on any other logger (stamina's)."""
    statuses = iter([500, 200])

    def answer(request):
        status = next(statuses)
        return Response(status=status, body=customer(42) if status == 200 else b"{}")

    caplog.set_level(logging.DEBUG)
    client = mock_client(answer, retry=RetryPolicy(attempts=3, wait_initial=0.001))
    await client.update(42, CustomerPatch(name="A"))
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert [(r.name, r.levelno) for r in retries] == [("customer_patch", logging.INFO)]
    message = retries[0].getMessage()
    assert message.startswith("dualentry customer 42: "), message
    assert "500" in message
    assert "retry 1 of 2 in " in message
    assert {r.name for r in caplog.records} <= {"customer_patch"}


def test_an_error_of_the_pacers_sleep_is_raised_not_lost():
    """The injected sleep (the seam tests put a fake time at) failing is an
    error of the wait, not a wait that ended: acquire() must not go round again."""

    async def broken(seconds):
        raise ZeroDivisionError

    pacer = Pacer([RateLimit(burst=1, per_second=1)], clock=FakeClock(), sleep=broken)
    assert asyncio.run(pacer.acquire())  # the burst's one goes at once
    with pytest.raises(ZeroDivisionError):
        asyncio.run(asyncio.wait_for(pacer.acquire(), HANG_GUARD))


def test_a_client_used_in_one_event_loop_then_another_still_ends_its_waits_on_close():
    """A MockTransport client may be used by one asyncio.run after another: the
    waits of the second run end on close, though the first run waited too."""

    limited = None

    def answer(request):
        cid = int(request.url.rstrip("/").rsplit("/", 1)[1])
        if cid == 3:  # holds the whole client for a minute
            limited.set()
            return Response(status=429, headers={"Retry-After": "60"}, body=b"{}")
        return Response(status=200, body=customer(cid))

    client = mock_client(answer, rate_limit=RateLimit(burst=1, per_second=50))

    async def first():  # the second update waits its turn, in this loop
        await asyncio.gather(*(client.update(i, CustomerPatch(name="A")) for i in (1, 2)))

    async def second():
        nonlocal limited
        limited = asyncio.Event()
        task = asyncio.ensure_future(client.update(3, CustomerPatch(name="A")))
        await close_once_waiting(client, limited)
        with pytest.raises(RateLimitedError):
            await asyncio.wait_for(task, HANG_GUARD)

    asyncio.run(first())
    asyncio.run(second())


async def test_a_request_whose_connection_the_close_cut_is_not_retried_nor_said_to_be(caplog):
    """Closing cuts the connection of a request in flight: it may have been
    received (TransportError, one attempt), and no retry follows, so none is logged."""
    hold, arrived, release = held()
    caplog.set_level(logging.INFO, logger="customer_patch")
    async with serve(hold) as base:
        client = loopback_client(base, retry=RetryPolicy(attempts=3, wait_initial=0.001))
        task = asyncio.ensure_future(client.update(1, CustomerPatch(name="A")))
        await asyncio.wait_for(arrived.wait(), HANG_GUARD)
        await client.aclose()
        release.set()
        with pytest.raises(TransportError):
            await asyncio.wait_for(task, HANG_GUARD)
    assert [r.getMessage() for r in caplog.records if "retry" in r.getMessage()] == []


@pytest.mark.parametrize("through", ["transport", "session"])
async def test_closing_the_client_ends_an_attempt_through_the_callers_transport_or_session(
    through,
):
    """The built-in transport's session closes with the client, which ends its
    requests; through a transport or a session of the caller's, an attempt went on
    after aclose() until its timeout (30 s by default), holding its update."""
    hold, arrived, release = held()
    never = asyncio.Event()

    async def silent(request):
        arrived.set()
        await never.wait()

    async with contextlib.AsyncExitStack() as stack:
        if through == "transport":
            options = {"transport": MockTransport(silent)}
        else:
            base = await stack.enter_async_context(serve(hold))
            session = await stack.enter_async_context(aiohttp.ClientSession())
            options = {"base_url": base, "session": session}
        client = Client("dualentry", token=TOKEN, rate_limit=None, retry=None, **options)
        update = asyncio.ensure_future(client.update(1, CustomerPatch(name="A")))
        await asyncio.wait_for(arrived.wait(), HANG_GUARD)
        await client.aclose()
        with pytest.raises(TransportError, match="the client was closed before the answer came"):
            await asyncio.wait_for(update, HANG_GUARD)  # a guard against a hang, not a timing
        release.set()
