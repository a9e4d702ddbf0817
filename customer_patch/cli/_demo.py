"""``customer-patch demo``: the bundled example files against every provider's sandbox."""

from __future__ import annotations

import contextlib
import importlib.resources
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.table import Table

from customer_patch._client import Client
from customer_patch._http import RateLimit
from customer_patch._model import UNSET
from customer_patch._registry import available_adapters, get_adapter
from customer_patch.cli._apply import Tally
from customer_patch.cli._commands import _run, out
from customer_patch.cli._input import Source, read_updates
from customer_patch.cli._pipe import taken
from customer_patch.cli._report import Report
from customer_patch.sandbox import FakeProvider, fake_for

DEMO_CUSTOMERS = 300


async def run_demo() -> int:
    """Apply each adapter's bundled example file to its sandbox; print what happened."""
    summary = Table(title="every record ends with exactly one result")
    for column in ("provider", "records", "ok", "failed", "invalid", "retries", "seconds"):
        summary.add_column(column, justify="left" if column == "provider" else "right")
    examples: list[tuple[str, Any, dict[str, Any], dict[str, Any]]] = []
    for name in available_adapters():
        adapter = get_adapter(name)
        fake_cls = fake_for(adapter) if adapter.tooling.sandbox else None
        if fake_cls is None or fake_cls.demo_file is None:
            continue
        # A sandbox "organisation with raised limits", so the demo takes seconds.
        limits = tuple(
            RateLimit(burst=limit.burst * 5, per_second=limit.per_second * 200)
            for limit in fake_cls.rate_limits
        )
        fake = fake_cls(limits=limits)
        async with fake.running() as base_url:
            ids = fake.seed_demo(DEMO_CUSTOMERS)
            before = {i: dict(fake.customers[i]) for i in ids[:3]}
            client = Client(
                adapter,
                token=fake.token,
                base_url=base_url,
                rate_limit=limits[0] if limits else UNSET,
            )
            with _demo_path(fake_cls) as path:
                source = Source.of(path)
                tally = Tally(total=source.count())
                out.print(f"[bold]{adapter.provider}[/bold]: {path.name} -> sandbox at {base_url}")
                lines = taken(read_updates(source, adapter))
                await _run(client, lines, tally, 16, Report(), adapter.provider)
            for i in ids[:3]:
                examples.append((adapter.provider, i, before[i], dict(fake.customers[i])))
        summary.add_row(
            f"{adapter.provider} ({path.name})",
            *(
                str(n)
                for n in (tally.total, tally.succeeded, tally.failed, tally.invalid, tally.retries)
            ),
            f"{time_taken(tally):.1f}",
        )
    out.print(summary)
    out.print(
        "The failed and invalid records are in the example files on purpose: an unknown\n"
        "custom field (refused before sending, from the provider's definitions), a\n"
        "missing customer (404), values the provider cannot take."
    )
    _show_examples(examples)
    return 0


def time_taken(tally: Tally) -> float:
    return tally.done / tally.rate if tally.rate else 0.0


@contextlib.contextmanager
def _demo_path(fake_cls: type[FakeProvider]) -> Iterator[Path]:
    assert fake_cls.demo_file is not None
    package, _, relative = fake_cls.demo_file.partition(":")
    with importlib.resources.as_file(importlib.resources.files(package) / relative) as path:
        yield path


def _show_examples(examples: list[tuple[str, Any, dict[str, Any], dict[str, Any]]]) -> None:
    table = Table(title="a few records, before and after")
    for column in ("provider", "customer", "field", "before", "after"):
        table.add_column(column)
    skip = {"updated_at", "updated_by"}
    for provider, customer_id, before, after in examples:
        changed = [k for k in after if k not in skip and after[k] != before.get(k)]
        for k in changed:
            shown = str(customer_id)
            shown = shown if len(shown) < 12 else shown[:8] + "..."
            table.add_row(provider, shown, k, _short(before.get(k)), _short(after[k]))
    out.print(table)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 28 else text[:25] + "..."
