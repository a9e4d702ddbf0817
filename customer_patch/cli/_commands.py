"""The commands: ``apply``, ``sandbox``, ``demo`` and ``providers``."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
import stamina.instrumentation
from rich.console import Console
from rich.table import Table

from customer_patch._adapter import Adapter
from customer_patch._client import Client
from customer_patch._errors import CustomerPatchError
from customer_patch._model import UNSET, Unset
from customer_patch._pacing import RateLimit
from customer_patch._registry import available_adapters, get_adapter
from customer_patch.cli._apply import (
    EXIT_BAD_INPUT,
    Tally,
    apply,
    describe_invalid,
    done_lines,
    done_records,
)
from customer_patch.cli._input import InputError, Line, count_records, read_updates
from customer_patch.cli._progress import ProgressView
from customer_patch.sandbox import FakeProvider, Faults, fake_for

DEMO_CUSTOMERS = 300
GENERIC_TOKEN_ENV = "CUSTOMER_PATCH_TOKEN"  # noqa: S105 - a variable's name, not a secret
"""Where the token is read from for an adapter that names no variable of its own."""

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise SystemExit(EXIT_BAD_INPUT)


def _adapter(name: str) -> Adapter:
    try:
        return get_adapter(name)
    except CustomerPatchError as e:
        _fail(str(e))
        raise  # unreachable: _fail exits


def _rate_limit(text: str | None) -> tuple[RateLimit, ...] | Unset | None:
    """``None`` (the adapter's limits), ``off``, or ``BURST/PER_SECOND[,BURST/PER_SECOND...]``."""
    if text is None:
        return UNSET
    if text == "off":
        return None
    try:
        limits = []
        for part in text.split(","):
            burst, per_second = part.split("/")
            limits.append(RateLimit(burst=int(burst), per_second=float(per_second)))
    except ValueError:
        raise click.BadParameter(
            "expected BURST/PER_SECOND (e.g. 50/5, or 10/1,50/5 for two buckets) or 'off'"
        ) from None
    return tuple(limits)


@click.group()
@click.version_option(package_name="customer-patch")
def cli() -> None:
    """Partial updates of customer records at SaaS providers, safely and fast."""
    # Retries are counted in the summary; stamina's per-retry warnings would
    # only interleave with the progress display.
    stamina.instrumentation.set_on_retry_hooks([])


@cli.command()
def providers() -> None:
    """List the installed provider adapters."""
    for name in available_adapters():
        adapter = get_adapter(name)
        extras = [f"token from ${adapter.token_env}"] if adapter.token_env else []
        if adapter.sandbox:
            extras.append("has a sandbox")
        out.print(f"{name:<16} {adapter.default_base_url:<32} {', '.join(extras)}")


@cli.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--provider", required=True, help="The adapter to use (see `providers`).")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--dry-run", is_flag=True, help="Check every line and print the requests; send nothing."
)
@click.option(
    "--report", type=click.Path(dir_okay=False, path_type=Path), help="Write a JSONL report here."
)
@click.option(
    "--resume",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Skip records this report shows as done; new results are appended to it.",
)
@click.option("--strict", is_flag=True, help="Send nothing if any line is invalid.")
@click.option("--base-url", help="Another host for the provider (https, or http to loopback).")
@click.option(
    "--rate-limit", help="BURST/PER_SECOND[,BURST/PER_SECOND] for raised limits, or 'off'."
)
def apply_command(
    file: Path,
    provider: str,
    concurrency: int,
    dry_run: bool,
    report: Path | None,
    resume: Path | None,
    strict: bool,
    base_url: str | None,
    rate_limit: str | None,
) -> None:
    """Apply the updates in FILE (JSONL or CSV) at a provider.

    The token is read from the provider's environment variable (`providers`
    lists them), never from a flag, which would land in shell history.  Exit status: 0 all
    succeeded, 1 some failed, 2 bad input or usage.
    """
    adapter = _adapter(provider)
    limit = _rate_limit(rate_limit)
    token_env = adapter.token_env or GENERIC_TOKEN_ENV
    token = os.environ.get(token_env, "")
    if not token and not dry_run:
        _fail(f"set {token_env} in the environment (tokens are never taken as flags)")
    try:
        total = count_records(file)
        lines = read_updates(file, adapter)
        if strict or dry_run:
            lines = _checked_first(list(lines), strict=strict)
        client = Client(adapter, token=token or "dry-run", base_url=base_url, rate_limit=limit)
    except (InputError, ValueError) as e:
        _fail(str(e))
        raise
    if dry_run:
        raise SystemExit(_dry_run(client, lines))
    skip = done_records(resume) if resume else set()
    target = report or resume
    same_file = resume is not None and target is not None and target.resolve() == resume.resolve()
    mode = "a" if same_file else "w"
    with contextlib.ExitStack() as stack:
        sink: IO[str] | None = None
        if target is not None:
            torn = mode == "a" and _ends_torn(target)
            sink = stack.enter_context(target.open(mode, encoding="utf-8"))
            if torn:
                sink.write("\n")  # a crash mid-write left half a line: end it first
            if resume is not None and not same_file:
                # The new report must account for every record on its own, so
                # that resuming from it later does not redo the ones done before.
                sink.writelines(done_lines(resume))
        tally = Tally(total=total)
        try:
            asyncio.run(_run(client, lines, tally, concurrency, sink, skip, f"{adapter.provider}"))
        except KeyboardInterrupt:
            err.print(
                f"interrupted after {tally.done} records"
                + (f"; continue with --resume {target}" if target else "")
            )
            raise SystemExit(130) from None
        except InputError as e:
            _fail(str(e))
    _summary(tally)
    raise SystemExit(tally.exit_status())


def _ends_torn(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def _checked_first(lines: list[Line], *, strict: bool) -> Iterator[Line]:
    bad = [line for line in lines if line.error is not None]
    for line in bad:
        err.print(describe_invalid(line))
    if bad and strict:
        _fail(f"{len(bad)} invalid line(s); --strict sends nothing")
    return iter(lines)


def _dry_run(client: Client, lines: Iterator[Line]) -> int:
    valid = invalid = 0
    for line in lines:
        if line.patch is None:
            invalid += 1
            continue
        request = client.prepare(line.customer_id, line.patch)
        valid += 1
        out.print(f"[bold]line {line.number}[/bold]: {request.method} {request.url}")
        for name, value in request.redacted_headers().items():
            out.print(f"  {name}: {value}")
        out.print(f"  {request.body.decode()}")
    out.print(
        f"dry run: {valid} request(s) would be sent, {invalid} invalid line(s); nothing sent"
    )
    return EXIT_BAD_INPUT if invalid else 0


async def _run(
    client: Client,
    lines: Iterator[Line],
    tally: Tally,
    concurrency: int,
    sink: IO[str] | None,
    skip: set[tuple[int, str]],
    label: str,
) -> None:
    async with client:
        with ProgressView(out, label, tally.total) as view:
            await apply(
                client,
                lines,
                tally=tally,
                concurrency=concurrency,
                report=sink,
                skip=skip,
                # Through the view: a write to stderr would land inside the live bar.
                on_invalid=lambda line: view.note(describe_invalid(line), err),
                on_result=view.update,
            )


def _summary(tally: Tally) -> None:
    parts = [f"{tally.succeeded} succeeded", f"{tally.failed} failed", f"{tally.invalid} invalid"]
    if tally.retries:
        parts.append(f"{tally.retries} retries")
    if tally.skipped:
        parts.append(f"{tally.skipped} skipped (done before)")
    errors = ", ".join(f"{n} {name}" for name, n in sorted(tally.errors.items()))
    out.print("; ".join(parts) + (f" ({errors})" if errors else ""))


@cli.command()
@click.option("--provider", required=True)
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--faults", default="", help="e.g. latency=0.05,429=0.05,500=0.1,drop=0.02")
@click.option("--customers", default=20, show_default=True, help="Demo customers to seed.")
@click.option(
    "--limits",
    default="documented",
    show_default=True,
    help="'documented', 'off', or BURST/PER_SECOND[,...] (raised limits).",
)
def sandbox(provider: str, port: int, faults: str, customers: int, limits: str) -> None:
    """Run a fake provider on 127.0.0.1 in the foreground (Ctrl-C stops it)."""
    adapter = _adapter(provider)
    enforced: tuple[RateLimit, ...] | None = None  # the provider's documented limits
    if limits != "documented":
        parsed = _rate_limit(limits)
        enforced = parsed if isinstance(parsed, tuple) else ()
    try:
        fake = fake_for(adapter)(faults=Faults.parse(faults), limits=enforced)
    except (CustomerPatchError, ValueError) as e:
        _fail(str(e))
        raise

    async def serve() -> None:
        base_url = await fake.start(port=port)
        ids = fake.seed_demo(customers)
        out.print(f"{adapter.provider} sandbox on {base_url} (token: {fake.token})")
        out.print(
            f"seeded {len(ids)} customers, e.g. {ids[0]!r}" if ids else "no customers seeded"
        )
        out.print(
            f"try: {adapter.token_env}={fake.token} customer-patch apply FILE "
            f"--provider {provider} --base-url {base_url}"
        )
        try:
            await asyncio.Event().wait()
        finally:
            await fake.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


@cli.command()
def demo() -> None:
    """Apply the bundled example files to every provider's sandbox, on loopback."""
    raise SystemExit(asyncio.run(_demo()))


async def _demo() -> int:
    summary = Table(title="every record ends with exactly one result")
    for column in ("provider", "records", "ok", "failed", "invalid", "retries", "seconds"):
        summary.add_column(column, justify="left" if column == "provider" else "right")
    examples: list[tuple[str, Any, dict[str, Any], dict[str, Any]]] = []
    for name in available_adapters():
        adapter = get_adapter(name)
        fake_cls = fake_for(adapter) if adapter.sandbox else None
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
                tally = Tally(total=count_records(path))
                out.print(f"[bold]{adapter.provider}[/bold]: {path.name} -> sandbox at {base_url}")
                await _run(
                    client, read_updates(path, adapter), tally, 16, None, set(), adapter.provider
                )
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
        "custom field (422), a missing customer (404), values the provider cannot take."
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
