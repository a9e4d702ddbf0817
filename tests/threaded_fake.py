"""Run a fake provider on its own event loop in a thread, for code (the CLI)
that runs its own loop with asyncio.run."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from customer_patch import get_adapter
from customer_patch.sandbox import FakeProvider, fake_for

HANG_GUARD = 10


@contextmanager
def serving(fake: FakeProvider) -> Iterator[str]:
    """Run ``fake`` (built by the caller, perhaps hostile) on loopback in a thread;
    yield its base URL.  A fake with a ``release()`` is released before it stops."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    base: list[str] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        base.append(loop.run_until_complete(fake.start()))
        started.set()
        loop.run_forever()
        loop.run_until_complete(fake.stop())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(HANG_GUARD)
    try:
        yield base[0]
    finally:
        release = getattr(fake, "release", None)
        if release is not None:
            release()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(HANG_GUARD)


@contextmanager
def threaded_fake(
    provider: str, *, customers: int = 0, **options: Any
) -> Iterator[tuple[FakeProvider, str, list[Any]]]:
    fake = fake_for(get_adapter(provider))(**options)
    ids = fake.seed_demo(customers)
    with serving(fake) as base:
        yield fake, base, ids
