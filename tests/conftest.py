from types import SimpleNamespace

import aiohttp
import aioresponses.core
import pytest

from customer_patch import RetryPolicy

pytest_plugins = ["customer_patch.testing"]


class _CompatResponse(aiohttp.ClientResponse):
    # aioresponses 0.7.9 predates aiohttp 3.14's required ``stream_writer``
    # (pnuckowski/aioresponses#289); a mocked response has no writer anyway.
    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)


@pytest.fixture
def mocked(monkeypatch):
    """aioresponses, working with the aiohttp this project supports."""
    monkeypatch.setattr(aioresponses.core, "ClientResponse", _CompatResponse)
    with aioresponses.aioresponses() as m:
        yield m


@pytest.fixture(autouse=True)
def _no_retry_waits(request, monkeypatch):
    """Retries keep their count but skip their jittered waits, so tests stay fast.

    A ``Retry-After`` is still honoured; tests marked ``real_waits`` keep every wait.
    """
    if request.node.get_closest_marker("real_waits") is None:
        monkeypatch.setattr(RetryPolicy, "backoff", lambda self, retry_number: 0.0)
