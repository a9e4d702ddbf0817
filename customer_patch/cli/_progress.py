"""Progress for a run: a live bar on a terminal, a plain line per 1000 otherwise.

The time left is worked out from the paced rate, not from the rate so far:
a run at a provider's limit starts with a burst that would promise far too
much.  A run that reads first (``--changes-only``, ``--match-on``) shows
what it read and what it found unchanged; its time left counts the reads
still to make and the writes the share changed so far predicts, each on
its own route's bucket.
"""

from __future__ import annotations

import math
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from customer_patch.cli._apply import Tally

EVERY = 1000


def time_left(
    tally: Tally, total: int | None, pace: float | None, reads_per_request: int
) -> float:
    """Seconds the rest of the run should take at ``pace`` requests a second per route."""
    if total is None:
        return math.nan
    remaining = max(0, total - tally.done - tally.skipped)
    if pace is None:  # unpaced: only the rate so far can tell
        return remaining / tally.rate if tally.rate > 0 else math.nan
    written = tally.done - tally.unchanged - tally.invalid
    share = written / tally.done if tally.done else 1.0
    writes = remaining * share
    reads = math.ceil(remaining / reads_per_request) if reads_per_request else 0
    return max(writes, reads) / pace


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-:--:--"
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class ProgressView:
    def __init__(
        self,
        console: Console,
        label: str,
        total: int | None,
        *,
        pace: float | None = None,
        reads_per_request: int = 0,
    ) -> None:
        self.console = console
        self.label = label
        self.total = total
        self.pace = pace
        self.reads_per_request = reads_per_request
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._last_logged = 0

    def __enter__(self) -> ProgressView:
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>7.1f}/s"),
                TextColumn("{task.fields[left]} left"),
                TextColumn("{task.fields[reading]}"),
                TextColumn("[red]{task.fields[failed]} failed, {task.fields[invalid]} invalid"),
                console=self.console,
            )
            self._bar.start()
            self._task = self._bar.add_task(
                self.label,
                total=self.total,
                rate=0.0,
                failed=0,
                invalid=0,
                left="-:--:--",
                reading="",
            )
        return self

    def note(self, text: str, fallback: Console) -> None:
        """Print a line above the live bar, or to ``fallback`` when there is none."""
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, soft_wrap=True, markup=False)
        else:
            fallback.print(text, markup=False)

    def _reading(self, tally: Tally) -> str:
        if not self.reads_per_request:
            return ""
        return f"read {tally.done}, {tally.unchanged} unchanged,"

    def update(self, tally: Tally) -> None:
        left = _clock(time_left(tally, self.total, self.pace, self.reads_per_request))
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task,
                completed=tally.done + tally.skipped,
                rate=tally.rate,
                failed=tally.failed,
                invalid=tally.invalid,
                left=left,
                reading=self._reading(tally),
            )
        elif tally.done - self._last_logged >= EVERY or tally.done + tally.skipped == self.total:
            self._last_logged = tally.done
            of = f"/{self.total}" if self.total is not None else ""
            reading = f" ({self._reading(tally).rstrip(',')})" if self.reads_per_request else ""
            self.console.print(
                f"{self.label}: {tally.done + tally.skipped}{of} done{reading}, "
                f"{tally.failed} failed, {tally.invalid} invalid, "
                f"{tally.rate:.1f}/s, {left} left",
                highlight=False,
                markup=False,
            )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
