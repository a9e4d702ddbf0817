"""The per-request fast paths (issue 11) give exactly what the general path gives."""

import json
import math
import random
import socket
import traceback
from types import MappingProxyType
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from customer_patch import (
    CustomerPatch,
    ExternalIds,
    Request,
    TransportError,
    WireField,
    get_adapter,
)
from customer_patch._adapter import _JSON, _dumps, _loads, strict_loads
from customer_patch._transport import AiohttpTransport
from customer_patch_dualentry._adapter import DualEntryAdapter
from tests.helpers import serve

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(json_values)
def test_the_c_encoder_writes_what_the_json_encoder_writes(value):
    assert _dumps(value) == _JSON.encode(value)
    assert json.loads(_dumps(value)) == value


def test_the_c_encoder_refuses_what_the_json_encoder_refuses():
    assert _dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'
    for bad in ({"a": math.nan}, {"a": object()}, {"a": math.inf}):
        for encode in (_dumps, _JSON.encode):
            try:
                encode(bad)
            except (TypeError, ValueError):
                pass
            else:
                raise AssertionError(f"{encode} accepted {bad!r}")


# The general path is json.loads, less NaN, Infinity and numbers past a float
# (see test_hardening): the shortcut must read and refuse exactly as it does.
def outcome(read, body):
    try:
        return ("value", read(body))
    except Exception as e:  # the error's type and text are part of what must match
        return (type(e).__name__, str(e))


json_texts = json_values.map(lambda v: json.dumps(v, ensure_ascii=False))
edges = st.sampled_from(["", " ", "\n", "\ufeff", "x", "}", "\x00", ",1"])
bodies = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda a, t, b: (a + t + b).encode(), edges, json_texts, edges),
    st.builds(lambda t, enc: t.encode(enc), json_texts, st.sampled_from(["utf-16", "utf-32-le"])),
    st.builds(lambda t, cut: t.encode()[:cut], json_texts, st.integers(0, 30)),
)


@given(bodies)
def test_the_json_shortcut_reads_and_refuses_what_json_loads_does(body):
    assert outcome(_loads, body) == outcome(strict_loads, body)


def test_the_json_shortcut_keeps_json_loads_errors_for_hostile_bodies():
    for body in (b"", b"[" * 100_000, b"1" * 5000, b'{"a": 1} {"b": 2}', b"\xef\xbb\xbf{}"):
        assert outcome(_loads, body) == outcome(strict_loads, body)


def test_the_json_shortcut_reads_mutated_hostile_bodies_as_json_loads_does():
    rng = random.Random(7)
    seeds = [
        b'{"a": 1}',
        b"[1, 2]",
        b'"x"',
        b"1",
        b"1e400",
        b"NaN",
        b"-Infinity",
        b"\xef\xbb\xbf{}",
        b"\xff\xfe{\x00}\x00",
        b'{"a":1}\x00',
        b"1\x00",
        b"\x001",
        b"[" * 3000 + b"]" * 3000,
        b"9" * 5000,
        b'"\\ud800"',
        b'"\xed\xa0\x80"',
        b'{"a":1}{',
        b" 1",
        b"1 ",
        b"\t[]\n",
        b'{"a":1,"a":2}',
        b"tru",
        b"true",
        b"null",
        b"[1,]",
        b'"\x7f"',
        b'"\x1f"',
        b"\x0c1",
        b"1\x0c",
        b"\xc2\xa01",
        b"1\xe2\x80\xa8",
        b"01",
        b"-0",
        b"1.",
        b".5",
        b"{}\r",
    ]

    bodies = list(seeds)
    alphabet = b'{}[]",:0123456789.eE+-tfnrul \t\n\r\\\x00\xef\xbb\xbf\xff\xfe\xc3\xa9'
    for _ in range(5000):
        base = bytearray(rng.choice(seeds[:7]))
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(len(base) + 1)
            base[pos:pos] = bytes([rng.choice(alphabet)])
        bodies.append(bytes(base))
    for body in bodies:  # by repr: NaN is not equal to itself
        shortcut = outcome(lambda b: repr(_loads(b)), body)
        assert shortcut == outcome(lambda b: repr(strict_loads(b)), body), body[:60]


class TextIds(DualEntryAdapter):
    customer_id_type = str  # any text is an id here, as a third-party provider's could be


@given(st.text(min_size=1).filter(lambda t: t not in {".", ".."}))
def test_an_id_is_percent_encoded_as_quote_would(text):
    adapter = TextIds()
    try:
        expected = quote(text, safe="")
    except UnicodeEncodeError:
        return  # a lone surrogate: refused, tested elsewhere
    path, _ = adapter.prepare_update(text, CustomerPatch(name="A"))
    assert path == adapter.update_path(expected)


async def headers_received(each_request_headers, pick):
    """Send a PATCH with each of these headers (taken one at a time, so a caller may
    change a mapping between two) through one transport to a server on loopback;
    what ``pick`` read of the headers of each request received."""
    seen = []

    async def echo(request):
        seen.append(pick(request.headers))
        return web.Response(body=b"{}", content_type="application/json")

    async with serve(echo) as base:
        transport = AiohttpTransport(provider="test", timeout=10)
        try:
            for headers in each_request_headers:
                request = Request(method="PATCH", url=base + "/", headers=headers, body=b"{}")
                await transport.send(request)
        finally:
            await transport.aclose()
    return seen


async def test_the_session_sends_the_first_requests_headers_only_while_they_stay_the_same():
    def probes():
        headers = {"X-Probe": "1"}  # a plain dict: the caller may change it
        yield headers
        headers["X-Probe"] = "2"
        yield headers
        yield MappingProxyType({"X-Probe": "3"})

    seen = await headers_received(probes(), lambda headers: headers.get("X-Probe"))
    assert seen == ["1", "2", "3"]


async def test_a_shared_transport_never_sends_one_clients_headers_with_anothers():
    """The session opened for the first request's headers sends them by itself; a
    request with other headers (another client's key) must go without them."""
    first = MappingProxyType({"X-Api-Key": "first-secret"})
    other = MappingProxyType({"X-Other-Key": "other-secret"})
    seen = await headers_received(
        (first, other, first, {}, other),
        lambda headers: {k: v for k, v in headers.items() if k.startswith("X-")},
    )
    alone = [{"X-Api-Key": "first-secret"}, {"X-Other-Key": "other-secret"}]
    assert seen == [alone[0], alone[1], alone[0], {}, alone[1]]


async def test_the_session_sends_one_value_per_header_name_as_a_request_of_its_own_would():
    """Two spellings of one name (an adapter's "accept" over the client's
    "Accept"): the last one goes, on the session's headers as on a request's own."""
    twice = MappingProxyType({"X-Key": "A", "x-key": "B"})
    seen = await headers_received(
        (twice, twice, {"X-Other": "1"}, twice),
        lambda headers: sorted((k.lower(), v) for k, v in headers.items() if k[0] in "Xx"),
    )
    assert seen == [[("x-key", "B")], [("x-key", "B")], [("x-other", "1")], [("x-key", "B")]]


def refused_url():
    """A 127.0.0.1 address where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.mark.parametrize("way", ["the first headers", "other headers", "a session of the caller"])
async def test_a_transport_error_holds_no_header_value_in_its_frames(way):
    """An error tracker records the locals of every frame of an error's traceback:
    none may hold a request's credentials (the suppressed aiohttp context aside)."""
    secret = "s3cret-header-value"
    first = MappingProxyType({"X-Api-Key": secret})
    other = MappingProxyType({"X-Api-Key": secret, "X-Other": "1"})
    session = aiohttp.ClientSession() if way == "a session of the caller" else None
    transport = AiohttpTransport(provider="test", timeout=10, session=session)
    url = refused_url()
    try:
        headers = first
        if way == "other headers":
            with pytest.raises(TransportError):
                await transport.send(Request(method="GET", url=url, headers=first, body=b""))
            headers = other
        with pytest.raises(TransportError) as info:
            await transport.send(Request(method="GET", url=url, headers=headers, body=b""))
        await transport.aclose()
        with pytest.raises(RuntimeError) as closed:
            await transport.send(Request(method="GET", url=url, headers=headers, body=b""))
    finally:
        await transport.aclose()
        if session is not None:
            await session.close()
    for error in (info.value, closed.value):
        for frame, _ in traceback.walk_tb(error.__traceback__):
            if frame.f_code.co_filename == __file__:
                continue  # this test's own frame holds the headers, of course
            for name, value in frame.f_locals.items():
                assert secret not in repr(value), f"{frame.f_code.co_name}: {name}"


def reference_fields_from(adapter, data):
    """fields_from as its docstring defines it, one call per field, nothing shared."""
    values = {}
    external = {}
    for path, spec in adapter.fields.items():
        value = spec.decode(data.get(spec.wire))
        if path.startswith("external_ids."):
            external[path.removeprefix("external_ids.")] = value
        else:
            values[path] = value
    if external:
        values["external_ids"] = ExternalIds(**external)
    if not all(spec.wire in data for spec in adapter.fields.values()):
        values["read_fields"] = frozenset(
            path for path, spec in adapter.fields.items() if spec.wire in data
        )
    return values


def _blank_when_absent(value):
    return "" if value is None else value


def _refuses_null(value):
    if value is None:
        raise ValueError("null is not a segment")
    return value


class Defaulting(DualEntryAdapter):
    """Decoders that read an absent key as something else, or refuse it, and
    external ids: the paths of fields_from the built-in adapters do not take."""

    fields = MappingProxyType(
        {
            "segment_id": WireField(wire="segment", decode=_refuses_null),
            **DualEntryAdapter.fields,
            "email": WireField(wire="email", decode=_blank_when_absent),
            "external_ids.crm": WireField(wire="crm_id"),
            "external_ids.erp": WireField(wire="erp_id", decode=_blank_when_absent),
        }
    )


@pytest.mark.parametrize("name", ["qwoty", "dualentry", "defaulting"])
@given(data=st.data())
def test_a_customer_is_read_as_one_call_per_field_would_read_it(name, data):
    adapter = Defaulting() if name == "defaulting" else get_adapter(name)
    wires = sorted(spec.wire for spec in adapter.fields.values())
    shown = data.draw(st.sets(st.sampled_from(wires)))
    answer = dict.fromkeys(shown)
    for wire in shown:  # a string where the decoder takes one, else null
        if data.draw(st.booleans()):
            answer[wire] = data.draw(st.text(max_size=5))
    expected = outcome(lambda d: reference_fields_from(adapter, d), answer)
    got = outcome(adapter.fields_from, answer)
    if expected[0] == "value":
        # Every Customer default is None: a field left out equals one read as None.
        expected = ("value", {k: v for k, v in expected[1].items() if v is not None})
        got = ("value", {k: v for k, v in got[1].items() if v is not None})
    assert got == expected


def test_answers_that_leave_out_the_same_keys_share_one_read_fields():
    adapter = get_adapter("dualentry")
    one = adapter.fields_from({"id": 1, "name": "A"})["read_fields"]
    two = adapter.fields_from({"id": 2, "name": "B"})["read_fields"]
    assert one is two
    assert "name" in one
    assert "email" not in one
