"""Checks of the arguments a caller passes, at the bottom of the dependency graph.

Each refuses at once, naming the parameter and the value, rather than let a
wrong one fail deep inside a run (a ``TypeError`` after records were sent)
or be read as something else (``"no"`` is true; aiohttp reads a limit of 0
as no limit).  A number or a flag out of place is a :class:`ValueError`, as
the library's other checks of values; an object of the wrong kind, a
:class:`TypeError`.  Never pass a secret: its value is quoted.
"""

from __future__ import annotations

import inspect
from typing import Any

A_DAY = 86_400
"""Seconds: the longest wait or time budget taken.  Longer is a typo, or a
hang by another name."""


def _shown(value: Any) -> str:
    return f"{value!r:.80}"


def check_whole(name: str, value: Any, *, least: int = 1, none: bool = False) -> None:
    """A whole number (``int``, not ``bool``) of at least ``least``; ``None`` if ``none``."""
    if none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        also = " or None" if none else ""
        raise ValueError(
            f"{name} must be a whole number of at least {least}{also}, got {_shown(value)}"
        )


def check_seconds(name: str, value: Any, *, zero: bool = False, none: bool = False) -> None:
    """A number of seconds (``int`` or ``float``, not ``bool``) above 0 (or 0 as
    well if ``zero``) and at most :data:`A_DAY`; ``None`` if ``none``."""
    if none and value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= A_DAY  # False for nan; no float() of a huge int
        or (value == 0 and not zero)
    ):
        least = ", 0 or more," if zero else " above 0"
        also = " or None" if none else ""
        raise ValueError(
            f"{name} must be a finite number of seconds{least} and at most a day "
            f"({A_DAY}){also}, got {_shown(value)}"
        )


def check_flag(name: str, value: Any) -> None:
    """``True`` or ``False``, nothing else that is merely true or false."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {_shown(value)}")


def flag_field(instance: object, attribute: Any, value: Any) -> None:
    """:func:`check_flag` as an attrs validator."""
    check_flag(attribute.name, value)


def check_hook(name: str, value: Any, *, takes: str, count: int) -> None:
    """A plain function (not a coroutine function) that can be called with
    ``count`` positional arguments (``takes`` says which), or ``None``: a hook
    that cannot would fail only when first called, after records were sent."""
    if value is None:
        return
    if not callable(value):
        raise TypeError(f"{name} must be callable or None, got {_shown(value)}")
    if inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(
        getattr(value, "__call__", None)  # noqa: B004 - an object with async __call__
    ):
        raise TypeError(
            f"{name} must be a plain function, not a coroutine function: it is not awaited"
        )
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):  # a builtin without one: it will say when called
        return
    try:
        signature.bind(*[None] * count)
    except TypeError:
        raise TypeError(f"{name} must take {takes}, got {_shown(value)}") from None
