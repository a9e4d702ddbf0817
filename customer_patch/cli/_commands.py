"""The commands: ``apply``, ``sandbox``, ``demo`` and ``providers``."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import select
import signal
import stat
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from attrs import Factory, define
from rich.console import Console
from rich.markup import escape

from customer_patch._adapter import Adapter
from customer_patch._client import Client
from customer_patch._errors import CustomerPatchError, Problem, ValidationError
from customer_patch._http import RateLimit
from customer_patch._model import UNSET, CustomerPatch, Unset
from customer_patch._registry import available_adapters, get_adapter
from customer_patch.cli import stopping_signals
from customer_patch.cli._apply import (
    EXIT_BAD_INPUT,
    EXIT_SIGINT,
    EXIT_STOPPED,
    Tally,
    apply,
    describe_invalid,
    describe_refused,
    dry_run,
    one_line,
    resumed,
    shown,
)
from customer_patch.cli._input import (
    FORMATS,
    InputError,
    Line,
    Source,
    read_digests,
    read_updates,
)
from customer_patch.cli._pipe import Stoppable, taken
from customer_patch.cli._progress import ProgressView
from customer_patch.cli._report import (
    Report,
    ReportError,
    ReportWriteError,
    UndoFile,
    aside_of,
    same_file,
)

T = TypeVar("T")

GENERIC_TOKEN_ENV = "CUSTOMER_PATCH_TOKEN"  # noqa: S105 - a variable's name, not a secret
"""Where the token is read from for an adapter that names no variable of its own."""

# No emoji: ":fire:" in a name or a provider's message is data, printed as it is.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def _fail(message: str, status: int = EXIT_BAD_INPUT) -> NoReturn:
    """One line on standard error, then exit.  The message may quote data (a
    file's name, a report's content): no markup, and nothing unprintable."""
    err.print("[red]error:[/red] " + escape(shown(message)))
    raise SystemExit(status)


def _adapter(name: str) -> Adapter:
    try:
        return get_adapter(name)
    except CustomerPatchError as e:
        _fail(str(e))


MAX_BURST = 1_000_000
PER_SECOND_RANGE = (0.001, 1_000_000.0)


def _rate_limit(
    text: str | None, option: str = "--rate-limit"
) -> tuple[RateLimit, ...] | Unset | None:
    """``None`` (the adapter's limits), ``off``, or ``BURST/PER_SECOND[/route][,...]``
    (``/route``: a bucket for each route and method)."""
    if text is None:
        return UNSET
    if text == "off":
        return None
    low, high = PER_SECOND_RANGE
    limits = []
    for part in text.split(","):
        try:
            burst_text, per_second_text, *scope = part.split("/")
            burst, per_second = int(burst_text), float(per_second_text)
            if scope not in ([], ["route"]):
                raise ValueError(scope)
        except ValueError:
            _fail(
                f"{option} {text}: expected BURST/PER_SECOND (e.g. 50/5), with /route for "
                "a bucket per route (e.g. 10/1/route,50/5), or 'off'"
            )
        if not 1 <= burst <= MAX_BURST:
            _fail(f"{option} {text}: BURST must be a whole number from 1 to {MAX_BURST:,}")
        if not low <= per_second <= high:  # also refuses nan and inf
            _fail(f"{option} {text}: PER_SECOND must be from {low} to {high:,.0f}")
        limits.append(RateLimit(burst=burst, per_second=per_second, per_route=bool(scope)))
    return tuple(limits)


# Options `apply` and `plan` share, written once.
_FILE = click.argument(
    "file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path)
)
_PROVIDER = click.option("--provider", required=True, help="The adapter to use (see `providers`).")
_DELIMITER = click.option(
    "--delimiter",
    type=click.Choice([",", ";", "tab"]),
    help="A CSV's separator (by default: ',' if the header has one, else ';', else tab).",
)
_CONCURRENCY = click.option(
    "--concurrency", default=8, show_default=True, type=click.IntRange(1, 1000)
)
_MATCH_ON = click.option(
    "--match-on",
    help="The column that names each customer instead of 'id' (e.g. unique_id).",
)
_BASE_URL = click.option(
    "--base-url", help="Another host for the provider (https, or http to loopback)."
)
_RATE_LIMIT = click.option(
    "--rate-limit",
    help="BURST/PER_SECOND[/route][,...] for raised limits (/route: per route), or 'off'.",
)


class Interrupted(BaseException):
    """The run was stopped by a signal.

    A BaseException, as KeyboardInterrupt is: raised from a signal handler
    wherever the main thread is, it must pass every ``except Exception`` (cattrs
    gathers those into a validation report: a line would be "invalid")."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _signal_status(e: Interrupted | KeyboardInterrupt) -> int:
    """The exit status of a command a signal ended: 128 + the signal's number, as
    a shell reports a process the signal killed (130 SIGINT, 143 SIGTERM, 129 SIGHUP)."""
    return 128 + e.signum if isinstance(e, Interrupted) else EXIT_SIGINT


class _UsageMistake(click.UsageError):
    """A usage mistake click found, said in one line, as every other mistake
    is: click shows its usage, a hint and a blank line before the message."""

    def show(self, file: Any = None) -> None:
        where = self.ctx.command_path if self.ctx is not None else "customer-patch"
        err.print(
            "[red]error:[/red] " + escape(shown(f"{self.format_message()} (see {where} --help)"))
        )


@contextlib.contextmanager
def _one_line_usage() -> Iterator[None]:
    try:
        yield
    except (_UsageMistake, click.exceptions.NoArgsIsHelpError):  # the help is no mistake
        raise
    except click.UsageError as e:
        raise _UsageMistake(e.format_message(), e.ctx) from None


class _Commands(click.Group):
    """Every command runs with SIGINT and SIGTERM raising :class:`Interrupted`
    (and kept, should something swallow it), from its first line to its last.
    A signal that lands where the command has nothing more precise to say ends
    it with one line and 130 or 143, never click's "Aborted!" (exit 1) or a
    silent SIGTERM death.  (``apply`` and ``plan`` say what was sent, where
    they know it.)"""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        # From before click reads the arguments (--help, --version, a usage
        # mistake) to after it exits: click would make a Ctrl-C "Aborted!", exit 1.
        output = _Output(sys.stdout, product=True)
        # Standard error carries notes and progress: one it cannot write to
        # (`2>&1 | head -1`, once head has gone) ended a run halfway, exit 1,
        # saying nothing.  What it would show is lost; the run goes on.
        diagnostics = _Output(sys.stderr)
        sys.stdout, sys.stderr = output, diagnostics
        status: Any = 0
        try:
            with _signals_interrupt():
                try:
                    return super().main(*args, **kwargs)
                except Interrupted as e:
                    err.print("interrupted", markup=False)
                    raise SystemExit(_signal_status(e)) from None
                except OutputGone:  # said below
                    raise SystemExit(EXIT_STOPPED) from None
        except SystemExit as e:
            status = e.code
            raise
        finally:
            sys.stdout = output.original
            output.close()
            if output.error is not None:
                why = output.error.strerror or type(output.error).__name__
                # Said while standard error is still `diagnostics`: gone too
                # (`2>&1 | head -1`), it drops this, where rich would end the
                # command with SystemExit(1), overriding the status.
                err.print(
                    f"error: standard output could not be written ({why}): what it "
                    "shows is incomplete" + ("; the run went on" if output.progress else ""),
                    markup=False,
                )
            sys.stderr = diagnostics.original
            diagnostics.close()
            if output.error is not None and not output.progress and status in (0, 1, 2, None):
                raise SystemExit(EXIT_STOPPED)  # the output was the product

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with _one_line_usage():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _signals_interrupt(), _one_line_usage():
            try:
                return super().invoke(ctx)
            except (Interrupted, KeyboardInterrupt) as e:
                err.print("interrupted", markup=False)
                raise SystemExit(_signal_status(e)) from None


class OutputGone(Exception):
    """The command's product, its standard output, can no longer be written."""


def _pipe_of(stream: Any) -> int | None:
    """The descriptor of ``stream`` when it is a pipe (and poll() can watch it), else ``None``."""
    if not hasattr(select, "poll"):
        return None  # Windows
    try:
        fd = int(stream.fileno())
        return fd if stat.S_ISFIFO(os.fstat(fd).st_mode) else None
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is both
        return None


def _no_reader(fd: int) -> bool:
    """Whether the pipe ``fd`` writes to has no reader left: poll() reports that
    (POLLERR on Linux, POLLHUP on some systems) without anything written."""
    poller = select.poll()
    poller.register(fd, 0)  # those two are reported whatever is asked for
    return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))


class _Output:
    """Standard output (or error) that a closed pipe or a full disk cannot end a command
    through (click would end it at once, exit 1, saying nothing; a run would
    stop halfway): the first failure is kept, and what follows is dropped.
    With no standard output at all (``>&-``), everything is dropped.

    ``product``: what it shows is the command's product (a plan, a dry run),
    so the first failure raises :class:`OutputGone`: going on would read
    the input and the provider for nothing (``plan - | head -1``), and a
    producer that never ends would keep the command going forever.  Unless
    ``progress`` is set: what it shows is a run's progress (``apply`` writes
    its report), and losing it fails nothing."""

    def __init__(self, stream: Any, *, product: bool = False) -> None:
        self.original = stream
        self.error: OSError | None = None
        self.product = product
        self.progress = False
        self._dropped: Any = None
        if stream is None:
            # Python's own stand-in for a closed descriptor: the first write
            # fails (in write), as it would on a closed pipe.
            stream = self._dropped = open(os.devnull, "w")  # noqa: SIM115 - closed by close()
        # A terminal or a pipe whose encoding cannot write a customer's name
        # (PYTHONIOENCODING=ascii, a C locale): shown escaped, not a traceback.
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")
        self.stream = stream
        self._pipe = _pipe_of(stream)

    def write(self, text: str) -> int:
        if self.error is None:
            if self._dropped is not None:
                self._failed(OSError(errno.EBADF, os.strerror(errno.EBADF)))
            try:
                return int(self.stream.write(text))
            except OSError as e:
                self._failed(e)
        return len(text)

    def flush(self) -> None:
        if self.error is None:
            try:
                self.stream.flush()
            except OSError as e:
                self._failed(e)
            else:
                # A pipe whose reader has gone (`| head -1`) fails the next write,
                # but a command with nothing more to write (a plan whose later
                # lines are all invalid, or change nothing) would never make one.
                if self._pipe is not None and _no_reader(self._pipe):
                    self._failed(BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE)))

    def close(self) -> None:
        """Close what this opened in place of a missing standard output."""
        if self._dropped is not None:
            self._dropped.close()

    def _failed(self, error: OSError) -> None:
        self.error = error
        # What the stream still holds would fail again as Python exits, with
        # an "Exception ignored" on stderr: from here it goes nowhere.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        if self.product and not self.progress:
            raise OutputGone from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@click.group(cls=_Commands)
@click.version_option(package_name="customer-patch")
def cli() -> None:
    """Partial updates of customer records at SaaS providers, safely and fast."""


def _output_is_progress() -> None:
    """What this command shows on standard output is not its product: losing
    it (a closed pipe, a full disk) fails nothing, and the command goes on."""
    if isinstance(sys.stdout, _Output):
        sys.stdout.progress = True


@cli.command()
def providers() -> None:
    """List the installed provider adapters."""
    for name in available_adapters():
        adapter = get_adapter(name)
        extras = [f"token from ${adapter.tooling.token_env}"] if adapter.tooling.token_env else []
        if adapter.tooling.sandbox:
            extras.append("has a sandbox")
        out.print(f"{name:<16} {adapter.default_base_url:<32} {', '.join(extras)}")


EXIT_STATUS_HELP = """\b
Exit status:
  0    every record succeeded
  1    some records failed at the provider
  2    bad input or usage: an invalid record, or a refused option or file
  3    the run was stopped: a 401/403, a failure threshold, or the report
       could not be written (with --dry-run: standard output could not be
       written); takes precedence over 2 and 1
  130  interrupted (SIGINT, Ctrl-C); 143 terminated (SIGTERM); 129 hung up
       (SIGHUP: its terminal closed; nohup keeps it going)"""


@cli.command("apply", epilog=EXIT_STATUS_HELP)
@_FILE
@_PROVIDER
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="The file's format, when its name does not say (standard input: jsonl by default).",
)
@_DELIMITER
@_CONCURRENCY
@click.option(
    "--dry-run", is_flag=True, help="Check every line and print the requests; send nothing."
)
@click.option("--verbose", is_flag=True, help="With --dry-run: print each request in full.")
@click.option(
    "--report", type=click.Path(dir_okay=False, path_type=Path), help="Write a JSONL report here."
)
@click.option(
    "--resume",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Skip records this report shows as done; new results are appended to it.",
)
@click.option(
    "--overwrite-report", is_flag=True, help="Replace the file --report names if it exists."
)
@click.option("--strict", is_flag=True, help="Send nothing if any line is invalid.")
@click.option(
    "--max-failures",
    type=click.IntRange(min=1),
    help="Stop after this many failed records; the rest are reported as not attempted.",
)
@click.option(
    "--max-consecutive-failures",
    default=25,
    show_default=True,
    type=click.IntRange(min=0),
    help="Stop after this many failures in a row with the same error and status (0: never).",
)
@click.option(
    "--changes-only",
    is_flag=True,
    help="Read each customer first; send only what differs (see `plan`).",
)
@click.option(
    "--undo-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --changes-only: write the lines that restore what this run changes.",
)
@_MATCH_ON
@_BASE_URL
@_RATE_LIMIT
def apply_command(
    file: Path,
    provider: str,
    fmt: str | None,
    delimiter: str | None,
    concurrency: int,
    dry_run: bool,
    verbose: bool,
    report: Path | None,
    resume: Path | None,
    overwrite_report: bool,
    strict: bool,
    max_failures: int | None,
    max_consecutive_failures: int,
    changes_only: bool,
    undo_file: Path | None,
    match_on: str | None,
    base_url: str | None,
    rate_limit: str | None,
) -> None:
    """Apply the updates in FILE (JSONL or CSV; - for standard input) at a provider.

    The token is read from the provider's environment variable (`providers`
    lists them), never from a flag, which would land in shell history.
    """
    adapter = _adapter(provider)
    limit = _rate_limit(rate_limit)
    token_env = adapter.tooling.token_env or GENERIC_TOKEN_ENV
    token = os.environ.get(token_env, "")
    if not token and not dry_run:
        _fail(f"set {token_env} in the environment (tokens are never taken as flags)")
    if dry_run and (report or resume or overwrite_report):
        _fail("--dry-run sends nothing, so it takes no --report, --resume or --overwrite-report")
    if verbose and not dry_run:
        _fail("--verbose goes with --dry-run")
    if dry_run and (changes_only or undo_file):
        _fail("--dry-run reads nothing; to see what would change, run `customer-patch plan`")
    if undo_file and not changes_only:
        _fail("--undo-file needs --changes-only (the values to restore are read first)")
    _check_match_on(adapter, match_on)
    separator = "\t" if delimiter == "tab" else delimiter
    try:
        client = Client(adapter, token=token or "dry-run", base_url=base_url, rate_limit=limit)
        source = Source.of(file, fmt, sys.stdin.buffer if sys.stdin else None)
    except (InputError, ValueError) as e:
        _fail(str(e))
    try:
        if dry_run:
            lines = read_updates(source, adapter, delimiter=separator, match_on=match_on)
            raise SystemExit(
                _guarded(lambda: dry_run_lines(client, lines, verbose=verbose, match_on=match_on))
            )
        _output_is_progress()  # the report holds what the run did
        given = None if source.path is None and str(file) == "-" else file
        if given is None and os.path.exists("/dev/stdin"):
            # Standard input can be a file too (`< u.jsonl`): a report naming it
            # would empty it before it is read.
            given = Path("/dev/stdin")
        if undo_file is not None:  # before the report is opened: a refusal touches no file
            _check_undo_file(undo_file, given, report, resume)
        sink: Report | None = None
        undo: UndoFile | None = None
        status: int | None = None

        def before_sending(e: Interrupted | KeyboardInterrupt) -> NoReturn:
            _discard_unused(sink, undo)
            # What is left to name: the report continued, or the one this run
            # would replace (it may exist before Report.open has returned).
            kept = sink.path if sink is not None else report
            if resume is not None and resume.exists():
                again = f"; run again with --resume {resume}"
            elif kept is not None and kept.exists():
                again = "; run again with --overwrite-report"
            else:
                again = ""
            err.print("interrupted before anything was sent" + again, markup=False)
            raise SystemExit(_signal_status(e)) from None

        # From the moment the report may exist until the run's event loop takes
        # the signals over (reading and counting a large file takes a while), a
        # signal ends the command as one before sending: nothing was sent.
        try:
            try:
                sink = Report.open(
                    report,
                    resume=resume,
                    overwrite=overwrite_report,
                    source=given,
                    destination=f"{client.provider} {client.base_url}",
                    match_on=match_on,
                )
            except ReportError as e:
                _fail(str(e))
            except ReportWriteError as e:  # a full disk, as later in the run: status 3
                _fail(f"{e}; nothing was sent", EXIT_STOPPED)
            refusal = None
            if resume is not None:
                refusal = sink.history.undo_refusal(undo_file)
                if refusal is None and match_on is not None:
                    refusal = sink.history.moved_key_refusal()
            if refusal is not None:
                sink.discard_if_unused()
                _fail(refusal)
            if undo_file is not None:
                try:
                    undo = UndoFile(
                        undo_file,
                        resume=resume is not None,
                        mask=client.mask,
                        history=sink.history,
                        check=_problems_of(adapter),
                    )
                except ReportError as e:
                    sink.discard_if_unused()  # created by this run, still empty: gone
                    _fail(str(e))
            with sink, contextlib.closing(undo) if undo else contextlib.nullcontext():
                try:
                    bad, fields_left = _guarded(
                        lambda: _check_first(
                            source, adapter, sink, separator, strict=strict, match_on=match_on
                        )
                    )
                    if bad and not fields_left:
                        _fail(f"{bad} invalid line(s); --strict sends nothing")
                    try:
                        tally = Tally(total=source.count())
                    except InputError as e:  # a line no record can be (/dev/zero)
                        _fail(f"{e}; nothing was sent")
                    thresholds = (max_failures, max_consecutive_failures or None)
                    lines = read_updates(source, adapter, delimiter=separator, match_on=match_on)
                    reading = Reading(changes_only, match_on, undo, invalid=bad)
                    if fields_left:
                        history = sink.history
                        reading.check_fields = lambda: resumed(
                            read_updates(source, adapter, delimiter=separator, match_on=match_on),
                            history,
                        )
                except SystemExit:  # refused before anything was sent
                    _discard_unused(sink, undo)
                    raise
                _raise_if_signalled()
                # _apply_and_report says what a signal ended from its run's start on.
                try:
                    status = _apply_and_report(
                        client,
                        taken(lines, source.waits),
                        tally,
                        concurrency,
                        sink,
                        adapter,
                        thresholds,
                        reading,
                        source.waits,
                    )
                except (InputError, ReportError) as e:  # the file, read on, shows itself wrong
                    # Every record taken before has its result (and its report line).
                    if not tally.done:
                        _discard_unused(sink, undo)
                        _fail(f"{e}; nothing was sent")
                    again = f"; continue with --resume {shown(sink.path)}" if sink.path else ""
                    _fail(f"{e}; stopped after {tally.done} records{again}")
        except (Interrupted, KeyboardInterrupt) as e:
            if status is not None:
                raise  # after the run, which said what it did: the command's guard ends it
            before_sending(e)
    finally:
        source.close()
    raise SystemExit(status)


# The signals the guard received.  Raising is not enough: an exception raised
# inside a finalizer or a weakref callback (the import system has some) is
# printed as "Exception ignored" and lost, and the command would go on.
@define
class _Signals:
    """What the command's guard received, and whether its handler raises at once."""

    received: list[int] = Factory(list)
    deferred: bool = False  # see _signals_deferred


_signals = _Signals()


def _raise_if_signalled() -> None:
    """Raise :class:`Interrupted` for a signal kept but not (or no longer) raised."""
    if _signals.received:
        raise Interrupted(_signals.received[0])


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """The stopping signals raise :class:`Interrupted` here, and are kept in ``_signals``."""

    def on_signal(signum: int, frame: object) -> None:
        _signals.received.append(signum)
        if not _signals.deferred:
            raise Interrupted(signum)

    _signals.received.clear()
    previous = {sig: signal.signal(sig, on_signal) for sig in stopping_signals()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # Acted on inside, or lost with the command's end: none may stop a
        # later command of the same process (a test's, an application's).
        _signals.received.clear()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Inside, a signal is kept, not raised, and raised on leaving: for code that
    checks for one itself (a loop over lines; a run whose event loop takes the
    signals over).  Raised anywhere, it lands in asyncio's loop being built or
    torn down (a traceback from its ``__del__``), or in a callback that prints
    it as "Exception ignored"."""
    was, _signals.deferred = _signals.deferred, True
    try:
        yield
    finally:
        _signals.deferred = was
    _raise_if_signalled()


def _guarded(step: Callable[[], T]) -> T:
    """Run ``step``; a problem with the whole input is a one-line error, exit 2."""
    try:
        return step()
    except (InputError, ReportError) as e:
        _fail(str(e))


def dry_run_lines(
    client: Client, lines: Iterator[Line], *, verbose: bool, match_on: str | None = None
) -> int:
    return dry_run(
        client,
        lines,
        out=sys.stdout,
        err=sys.stderr,
        verbose=verbose,
        match_on=match_on,
    )


def _check_match_on(adapter: Adapter, match_on: str | None) -> None:
    if match_on is not None and match_on not in adapter.match_keys:
        keys = ", ".join(sorted(adapter.match_keys))
        _fail(
            f"--match-on {match_on}: {adapter.provider} can find customers by "
            + (keys if keys else "its own ids only")
        )


def _problems_of(adapter: Adapter) -> Callable[[CustomerPatch], list[Problem]]:
    """What ``adapter`` would refuse in a patch before sending it (by its own
    checks, not the provider's definitions), read back as a file's line is."""

    def problems(patch: CustomerPatch) -> list[Problem]:
        try:
            adapter.prepare_body(CustomerPatch.from_dict(patch.to_dict()))
        except ValidationError as e:
            return list(e.problems)
        except CustomerPatchError as e:  # a field it cannot patch at all
            return [Problem("", str(e))]
        return []

    return problems


def _check_undo_file(
    undo_file: Path, given: Path | None, report: Path | None, resume: Path | None
) -> None:
    """Refuse an --undo-file that is another file of the run, or that cannot be used."""
    for other, flag in ((given, "the input file"), (report, "the report"), (resume, "the report")):
        if other is not None and same_file(undo_file, other):
            _fail(f"--undo-file {undo_file} is {flag}; name another file")
    target = report or resume
    if target is not None and aside_of(target) == Path(os.path.realpath(undo_file)):
        _fail(
            f"--undo-file {undo_file} is the copy the report is replaced through; "
            "name another file"
        )
    try:
        UndoFile.check(undo_file, resume=resume is not None)
    except ReportError as e:
        _fail(str(e))


def _discard_unused(report: Report | None, undo: UndoFile | None) -> None:
    """For a run that ends before sending anything: remove the report and the
    undo file it created, still empty, so the same command runs again."""
    if undo is not None:
        undo.discard_if_unused()
    if report is not None:
        report.discard_if_unused()


def _check_first(
    source: Source,
    adapter: Adapter,
    report: Report,
    delimiter: str | None,
    *,
    strict: bool,
    match_on: str | None = None,
) -> tuple[int, bool]:
    """Before anything is sent: the file is the one the report saw; with --strict, valid.

    Returns, with --strict, the invalid lines found (each printed) and whether
    the lines the run will send set custom fields, to be checked against the
    provider's definitions, which only the run can read (:func:`_strict_fields`).
    """
    if not (strict or report.history):
        return 0, False
    source.spool()  # standard input or a pipe: to a temporary file, to be read twice
    if report.history:
        assert report.path is not None
        digests = read_digests(source, adapter, delimiter=delimiter, match_on=match_on)
        report.history.check(digests, report.path, source.name)
    if not strict:
        return 0, False
    bad = 0
    custom_fields = False
    with _signals_deferred():
        lines = read_updates(source, adapter, delimiter=delimiter, match_on=match_on)
        for line, skipped in resumed(lines, report.history):
            _raise_if_signalled()
            if skipped:
                continue
            if line.error is not None:
                bad += 1
                err.print(describe_invalid(line), markup=False)
            else:
                custom_fields = custom_fields or _sets_custom_fields(line)
    return bad, custom_fields and adapter.custom_fields_path() is not None


def _sets_custom_fields(line: Line) -> bool:
    return line.patch is not None and bool(line.patch.custom_fields)


class NothingSent(Exception):
    """The run ended before sending anything: --strict found a line it would
    refuse, or the report could not be started."""

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)


async def _strict_fields(client: Client, lines: Iterator[tuple[Line, bool]], bad: int) -> None:
    """Check the custom fields of every line the run will send (``lines``, with
    whether --resume skips each) against the provider's definitions, read once;
    raise :class:`NothingSent` if any line is refused (``bad`` were already,
    by the file's reader) or the definitions cannot be read."""
    try:
        await client.custom_field_definitions()
    except CustomerPatchError as e:
        why = f"the custom field definitions could not be read ({type(e).__name__}: "
        why += shown(one_line(e)) + ")"
        if bad:
            raise NothingSent(
                f"{bad} invalid line(s); --strict sends nothing ({why} to check the others)",
                EXIT_BAD_INPUT,
            ) from None
        raise NothingSent(f"{why}; --strict sends nothing", EXIT_STOPPED) from None
    for number, (line, skipped) in enumerate(lines):
        if number % 256 == 0:
            await asyncio.sleep(0)  # a signal's handler runs in the loop: let it in
        if not skipped and line.error is None and _sets_custom_fields(line):
            assert line.patch is not None
            refused = await client._check_custom_fields(line.patch)
            if refused is not None:
                bad += 1
                err.print(client.mask(describe_refused(line.number, refused)), markup=False)
    if bad:
        raise NothingSent(f"{bad} invalid line(s); --strict sends nothing", EXIT_BAD_INPUT)


def _apply_and_report(
    client: Client,
    lines: AsyncGenerator[Line, None],
    tally: Tally,
    concurrency: int,
    report: Report,
    adapter: Adapter,
    thresholds: tuple[int | None, int | None],
    reading: Reading,
    waits: Stoppable | None = None,
) -> int:
    # File names are the operator's: a line break or an escape in one must not
    # forge a line or reach the terminal (as in every "error:" line).
    resume_hint = f"; continue with --resume {shown(report.path)}" if report.path else ""
    try:
        try:
            provider = adapter.provider
            with _signals_deferred():
                asyncio.run(
                    _run(
                        client,
                        lines,
                        tally,
                        concurrency,
                        report,
                        provider,
                        thresholds,
                        reading,
                        waits,
                    )
                )
        except NothingSent as e:
            _discard_unused(report, reading.undo)
            err.print("[red]error:[/red] " + escape(str(e)))
            return e.status
        except ReportWriteError as e:
            _summary(tally, reading)
            err.print(
                f"error: {shown(e)}: stopped after {tally.done} records; make room, then "
                f"continue with --resume {shown(report.path)} (a record whose line the report "
                "could not hold whole is done again)",
                markup=False,
            )
            return EXIT_STOPPED
        _summary(tally, reading)
        if tally.stopped is not None:
            unread = (
                ""
                if tally.unread_after is None
                else f"; the input was not read past line {tally.unread_after}"
            )
            err.print(
                f"stopped: {tally.stopped}; {tally.not_attempted} record(s) not attempted"
                + unread
                + resume_hint,
                markup=False,
            )
        return tally.exit_status()
    except (Interrupted, KeyboardInterrupt) as e:
        if reading.check_fields is not None or not report.begun:
            # During --strict's check, or before the report was replaced: nothing
            # was sent, and the file named is not yet this run's; the command says so.
            raise
        # Wherever it lands, from the run's start to its summary: the report
        # holds what was done, and --resume goes on from there.
        err.print(f"interrupted after {tally.done} records{resume_hint}", markup=False)
        return _signal_status(e)


async def _run(
    client: Client,
    lines: AsyncGenerator[Line, None],
    tally: Tally,
    concurrency: int,
    report: Report,
    label: str,
    thresholds: tuple[int | None, int | None] = (None, None),
    reading: Reading | None = None,
    waits: Stoppable | None = None,
) -> None:
    """Apply ``lines``; a stopping signal cancels the run cleanly (a second one, at once)."""
    async with _signals_cancel(), client:
        reading = reading or Reading()
        if reading.check_fields is not None:
            await _strict_fields(client, reading.check_fields(), reading.invalid)
            reading.check_fields = None  # from here on, records may be sent
        # Before the first record: from here, a signal says "continue with
        # --resume REPORT", which must be this run's report, not the old one.
        try:
            report.begin()
        except ReportWriteError as e:
            raise NothingSent(f"{e}; nothing was sent", EXIT_STOPPED) from None
        with ProgressView(
            out,
            label,
            tally.total,
            pace=client.pace,
            reads_per_request=reading.per_request(client),
        ) as view:
            await apply(
                client,
                lines,
                tally=tally,
                concurrency=concurrency,
                report=report,
                # Through the view: a write to stderr would land inside the live bar.
                on_invalid=lambda text: view.note(text, err),
                on_result=view.update,
                max_failures=thresholds[0],
                max_consecutive_failures=thresholds[1],
                changes_only=reading.changes_only,
                match_on=reading.match_on,
                undo=reading.undo,
                on_note=lambda text: view.note(text, err),
                waits=waits,
            )


@contextlib.asynccontextmanager
async def _signals_cancel() -> AsyncIterator[None]:
    """The stopping signals cancel the task running the block, which then raises
    :class:`Interrupted`; a second signal acts as if none had been caught."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []
    installed: list[int] = []
    # Leaving, asyncio puts a signal back to the system's default, not to what
    # it was: SIGTERM would kill the command silently from then on.
    previous = {sig: signal.getsignal(sig) for sig in stopping_signals()}

    def on_signal(signum: int) -> None:
        received.append(signum)
        for sig in installed:  # a second signal acts as if we had never caught the first
            loop.remove_signal_handler(sig)
            # Which puts SIGINT back to Python's KeyboardInterrupt, raised inside
            # the loop as it winds down (it could wait there on tasks that never
            # wake): the system's default ends the process at once.
            signal.signal(sig, signal.SIG_DFL)
        installed.clear()
        task.cancel()

    for sig in previous:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    try:
        _raise_if_signalled()  # one that came before, its exception lost
        yield
    except asyncio.CancelledError:
        if received:
            task.uncancel()
            raise Interrupted(received[0]) from None
        raise
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
            if previous[sig] is not None:  # None: not set from Python
                signal.signal(sig, previous[sig])


@define
class Reading:
    """How a run reads before it writes: ``--changes-only``, ``--match-on``, ``--undo-file``."""

    changes_only: bool = False
    match_on: str | None = None
    undo: UndoFile | None = None
    invalid: int = 0
    check_fields: Callable[[], Iterator[tuple[Line, bool]]] | None = None
    """With --strict, when lines set custom fields: the lines again (with whether
    --resume skips each), whose custom fields are checked against the provider's
    definitions before anything is sent; ``invalid`` lines were found before.
    ``None`` once checked."""

    def per_request(self, client: Client) -> int:
        """Records one read request serves (0: the run reads nothing)."""
        if self.match_on is not None:
            return 1
        if not self.changes_only:
            return 0
        adapter = client.adapter
        return adapter.page_size if adapter.ids_filter and adapter.list_path() else 1


def _summary(tally: Tally, reading: Reading | None = None) -> None:
    parts = [f"{tally.succeeded} succeeded", f"{tally.failed} failed", f"{tally.invalid} invalid"]
    if reading is not None and (reading.changes_only or reading.match_on):
        parts[0] += f" ({tally.unchanged} unchanged: nothing sent)"
    if tally.not_attempted:
        parts.append(f"{tally.not_attempted} not attempted")
    if tally.retries:
        parts.append(f"{tally.retries} retries")
    if tally.skipped:
        parts.append(f"{tally.skipped} skipped (done before)")
    errors = ", ".join(f"{n} {name}" for name, n in sorted(tally.errors.items()))
    out.print("; ".join(parts) + (f" ({errors})" if errors else ""), markup=False)
    if reading is not None and reading.undo is not None:
        missing = reading.undo.missing
        out.print(
            f"undo: {shown(reading.undo.path)}"
            + (f" ({missing} field(s) could not be recorded; see the notes)" if missing else ""),
            markup=False,
        )


PLAN_EXIT_HELP = """\b
Exit status:
  0    every record was read; the plan is complete
  1    some customers were not found or could not be read
  2    bad input or usage (an invalid record, a refused option or file)
  3    standard output could not be written: the plan is incomplete
  130  interrupted (SIGINT, Ctrl-C); 143 terminated (SIGTERM); 129 hung up
       (SIGHUP: its terminal closed; nohup keeps it going)"""


@cli.command("plan", epilog=PLAN_EXIT_HELP)
@_FILE
@_PROVIDER
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: a line per changed field; json: a JSON line per record, then a summary.",
)
@click.option(
    "--input-format",
    "fmt",
    type=click.Choice(FORMATS),
    help="The file's format, when its name does not say (standard input: jsonl by default).",
)
@_DELIMITER
@_CONCURRENCY
@_MATCH_ON
@_BASE_URL
@_RATE_LIMIT
def plan_command(
    file: Path,
    provider: str,
    output: str,
    fmt: str | None,
    delimiter: str | None,
    concurrency: int,
    match_on: str | None,
    base_url: str | None,
    rate_limit: str | None,
) -> None:
    """Show what `apply --changes-only` would change for FILE: reads, writes nothing.

    Prints, for each record that would change something, one line a field:
    `id  field: before → after`; then a summary with the writes it would send
    and how long they would take at the paced rate.
    """
    from customer_patch.cli._plan import PlanTally, plan, summary

    adapter = _adapter(provider)
    limit = _rate_limit(rate_limit)
    token_env = adapter.tooling.token_env or GENERIC_TOKEN_ENV
    token = os.environ.get(token_env, "")
    if not token:
        _fail(f"set {token_env} in the environment (a plan reads the customers)")
    _check_match_on(adapter, match_on)
    separator = "\t" if delimiter == "tab" else delimiter
    try:
        client = Client(adapter, token=token, base_url=base_url, rate_limit=limit)
        source = Source.of(file, fmt, sys.stdin.buffer if sys.stdin else None)
    except (InputError, ValueError) as e:
        _fail(str(e))
    try:
        lines = read_updates(source, adapter, delimiter=separator, match_on=match_on)
        as_json = output == "json"

        async def planned() -> PlanTally:
            async with _signals_cancel():
                return await plan(
                    client,
                    taken(lines, source.waits),
                    out=sys.stdout,
                    err=sys.stderr,
                    as_json=as_json,
                    concurrency=concurrency,
                    match_on=match_on,
                )

        def run() -> int:
            try:
                with _signals_deferred():
                    tally = asyncio.run(planned())
            except (Interrupted, KeyboardInterrupt) as e:
                err.print("interrupted; nothing was sent", markup=False)
                return _signal_status(e)
            except CustomerPatchError as e:
                _fail(shown(one_line(e)), 1)
            facts = summary(tally, pace=client.pace, write=adapter.method)
            if as_json:
                sys.stdout.write(json.dumps({"summary": facts}) + "\n")
            else:
                sys.stdout.write(
                    f"plan: {facts['changed']} to change, {facts['unchanged']} unchanged, "
                    f"{facts['invalid']} invalid, {facts['not_found']} not found"
                    + (f", {facts['failed']} could not be read" if facts["failed"] else "")
                    + f"; would send {facts['requests']} {facts['request']} request(s), "
                    f"about {facts['seconds']:g} s at the paced rate; nothing was sent\n"
                )
            sys.stdout.flush()
            return tally.exit_status()

        status = _guarded(run)
    finally:
        source.close()
    raise SystemExit(status)


@cli.command()
@click.option("--provider", required=True)
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--faults", default="", help="e.g. latency=0.05,429=0.05,500=0.1,drop=0.02")
@click.option(
    "--customers",
    default=20,
    show_default=True,
    type=click.IntRange(0, 100_000),
    help="Demo customers to seed.",
)
@click.option(
    "--limits",
    default="documented",
    show_default=True,
    help="'documented', 'off', or BURST/PER_SECOND[/route][,...] (raised limits).",
)
@click.option(
    "--token",
    default="sandbox-token",
    show_default=True,
    help="The token it accepts (e.g. a documentation example's, to run it as written).",
)
def sandbox(
    provider: str, port: int, faults: str, customers: int, limits: str, token: str
) -> None:
    """Run a fake provider on 127.0.0.1 in the foreground (Ctrl-C stops it).

    Besides the demo customers, it holds those the provider's documentation
    uses in its examples."""
    # Here, not at the top: the fakes and aiohttp's server would cost every
    # other command's start (tens of ms) for nothing.
    from customer_patch.sandbox import Faults, fake_for

    _output_is_progress()  # a banner: the server is what it is for (`sandbox ... >&- &`)
    adapter = _adapter(provider)
    enforced: tuple[RateLimit, ...] | None = None  # the provider's documented limits
    if limits != "documented":
        parsed = _rate_limit(limits, "--limits")
        enforced = parsed if isinstance(parsed, tuple) else ()
    try:
        if not token or not token.isprintable() or token != token.strip():
            raise ValueError(f"--token must be printable, without spaces around it: {token!r}")
        fake = fake_for(adapter)(faults=Faults.parse(faults), limits=enforced, token=token)
    except (CustomerPatchError, ValueError) as e:
        _fail(str(e))

    async def serve() -> None:
        try:
            base_url = await fake.start(port=port)
        except OSError as e:  # the port is taken, or not ours to take
            _fail(f"--port {port}: {e.strerror or e}")
        ids = fake.seed_demo(customers)
        examples = fake.seed_examples()
        out.print(f"{adapter.provider} sandbox on {base_url} (token: {fake.token})")
        out.print(
            f"seeded {len(ids)} customers, e.g. {ids[0]!r}" if ids else "no customers seeded"
        )
        if examples:
            listed = ", ".join(map(repr, examples))
            out.print(f"the documentation's example customer(s): {listed}")
        out.print(
            f"try: {adapter.tooling.token_env}={fake.token} customer-patch apply FILE "
            f"--provider {provider} --base-url {base_url}"
        )
        try:
            async with _signals_cancel():
                await asyncio.Event().wait()
        finally:
            await fake.stop()

    # Ctrl-C (or SIGTERM) is how a sandbox is stopped: no message, exit 0.
    with contextlib.suppress(Interrupted, KeyboardInterrupt), _signals_deferred():
        asyncio.run(serve())


@cli.command()
def demo() -> None:
    """Apply the bundled example files to every provider's sandbox, on loopback."""
    from customer_patch.cli._demo import run_demo

    raise SystemExit(asyncio.run(run_demo()))
