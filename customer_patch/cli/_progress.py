"""Progress for a run: a live bar on a terminal, a plain line per 1000 otherwise."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from customer_patch.cli._apply import Tally

EVERY = 1000


class ProgressView:
    def __init__(self, console: Console, label: str, total: int | None) -> None:
        self.console = console
        self.label = label
        self.total = total
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
                TimeRemainingColumn(),
                TextColumn("[red]{task.fields[failed]} failed"),
                console=self.console,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, rate=0.0, failed=0)
        return self

    def note(self, text: str, fallback: Console) -> None:
        """Print a line above the live bar, or to ``fallback`` when there is none."""
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, soft_wrap=True, markup=False)
        else:
            fallback.print(text, markup=False)

    def update(self, tally: Tally) -> None:
        failed = tally.failed + tally.invalid
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task, completed=tally.done + tally.skipped, rate=tally.rate, failed=failed
            )
        elif tally.done - self._last_logged >= EVERY or tally.done + tally.skipped == self.total:
            self._last_logged = tally.done
            of = f"/{self.total}" if self.total is not None else ""
            self.console.print(
                f"{self.label}: {tally.done + tally.skipped}{of} done, {failed} failed, "
                f"{tally.rate:.1f}/s",
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
