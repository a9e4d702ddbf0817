"""The per-request fast paths (issue 11) give exactly what the general path gives."""

import json
import math
from types import MappingProxyType
from urllib.parse import quote

from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from customer_patch import CustomerPatch, Request
from customer_patch._adapter import _JSON, _dumps
from customer_patch._transport import AiohttpTransport
from customer_patch_dualentry._adapter import DualEntryAdapter

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


async def test_headers_are_merged_once_only_when_they_cannot_change():
    seen = []

    async def echo(request):
        seen.append(request.headers.get("X-Probe"))
        return web.Response(body=b"{}", content_type="application/json")

    app = web.Application()
    app.router.add_patch("/", echo)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    transport = AiohttpTransport(provider="test", timeout=10)
    try:
        headers = {"X-Probe": "1"}  # a plain dict: the caller may change it
        url = str(server.make_url("/"))
        await transport.send(Request(method="PATCH", url=url, headers=headers, body=b"{}"))
        headers["X-Probe"] = "2"
        await transport.send(Request(method="PATCH", url=url, headers=headers, body=b"{}"))
        fixed = MappingProxyType({"X-Probe": "3"})
        await transport.send(Request(method="PATCH", url=url, headers=fixed, body=b"{}"))
    finally:
        await transport.aclose()
        await server.close()
    assert seen == ["1", "2", "3"]
