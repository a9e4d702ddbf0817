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


@contextmanager
def threaded_fake(
    provider: str, *, customers: int = 0, **options: Any
) -> Iterator[tuple[FakeProvider, str, list[Any]]]:
    fake = fake_for(get_adapter(provider))(**options)
    ids = fake.seed_demo(customers)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    base: list[str] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        base.append(loop.run_until_complete(fake.start()))
        started.set()
        loop.run_forever()
        loop.run_until_complete(fake.stop())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield fake, base[0], ids
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
