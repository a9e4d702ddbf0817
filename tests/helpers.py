"""The pieces many test files need, written once: ids, tokens, requests.

Import them (``from tests.helpers import ...``) rather than redefining them.
"""

from __future__ import annotations

from typing import Any

from customer_patch import Adapter, CustomerPatch, Request
from tests import seeds

QID = seeds.QWOTY_CUSTOMER_ID
"""A Qwoty customer id (a UUID): the one of Qwoty's documentation page."""
DEID = 1234
"""A DualEntry customer id (an integer)."""
TOKEN = "de_live_0123456789abcdef0123456789abcdef"
"""The credential the helpers use unless told otherwise: long and unique, so a
test can search any text for it."""


def build(
    adapter: Adapter,
    customer_id: Any,
    patch: CustomerPatch,
    *,
    token: str = TOKEN,
    base_url: str = "https://h/api/",
) -> Request:
    """The request ``adapter`` builds for one update: no client, no network."""
    return adapter.build_request(customer_id, patch, base_url=base_url, token=token)
