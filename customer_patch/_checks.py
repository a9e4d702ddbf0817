"""Checks of the arguments a caller passes, at the bottom of the dependency graph.

Each refuses at once, naming the parameter and the value, rather than let a
wrong one fail deep inside a run (a ``TypeError`` after records were sent)
or be read as something else (``"no"`` is true; aiohttp reads a limit of 0
as no limit).  A number, a flag or a string out of place (of the wrong type
too: ``"30"`` for seconds) is a :class:`ValueError`, as the library's other
checks of values; an object of the wrong kind (a hook, a policy, a session,
a collection), a :class:`TypeError`.  Never pass a secret: its value is quoted.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import operator
import types
from collections.abc import Callable
from typing import Any

from customer_patch._errors import quoted

A_DAY = 86_400
"""Seconds: the longest wait or time budget taken.  Longer is a typo, or a
hang by another name."""


def check_whole(
    name: str, value: Any, *, least: int = 1, most: int | None = None, none: bool = False
) -> None:
    """A whole number (an ``int`` or what ``operator.index`` takes, not ``bool``)
    from ``least`` to ``most``; ``None`` if ``none``."""
    if none and value is None:
        return
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < least or (most is not None and number > most):
        upto = f" and at most {most}" if most is not None else ""
        also = " or None" if none else ""
        raise ValueError(
            f"{name} must be a whole number of at least {least}{upto}{also}, got {quoted(value)}"
        )


def check_seconds(name: str, value: Any, *, zero: bool = False, none: bool = False) -> None:
    """A real number of seconds (not ``bool``) above 0 (or 0 as well if ``zero``)
    and at most :data:`A_DAY`; ``None`` if ``none``."""
    if none and value is None:
        return
    amount: Any = value  # a Real compares, whatever typeshed says of numbers.Real
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 <= amount <= A_DAY  # False for nan; no float() of a huge int
        or (amount == 0 and not zero)
    ):
        least = ", 0 or more," if zero else " above 0"
        also = " or None" if none else ""
        raise ValueError(
            f"{name} must be a finite number of seconds{least} and at most a day "
            f"({A_DAY}){also}, got {quoted(value)}"
        )


def check_flag(name: str, value: Any) -> None:
    """``True`` or ``False``, nothing else that is merely true or false."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {quoted(value)}")


def on_field(check: Callable[..., None], **options: Any) -> Callable[[Any, Any, Any], None]:
    """``check`` (one of these, with ``options``) as an attrs validator: the
    field's name is the parameter's."""

    def validate(instance: Any, attribute: Any, value: Any) -> None:
        check(attribute.name, value, **options)

    return validate


def check_choices(name: str, value: Any) -> None:
    """Not one string: that is a collection of its characters ("ab" would be one of "abc")."""
    if isinstance(value, str):
        raise TypeError(f"{name} must be a collection of strings, not one string: {quoted(value)}")


def _is_coroutine_function(value: Any) -> bool:
    # Only what is surely one: a function, a method, a partial of one, or an
    # instance whose class has an async __call__.  A mock made with a spec
    # passes for a function without being one (and an AsyncMock, called and
    # never awaited, is a test's business, as it always was).
    if isinstance(value, type):
        return False
    if type(value) is functools.partial:
        return _is_coroutine_function(value.func)
    if type(value) in (types.FunctionType, types.MethodType):
        return inspect.iscoroutinefunction(value)
    call = getattr(type(value), "__call__", None)  # noqa: B004 - the class's own __call__
    return type(call) is types.FunctionType and inspect.iscoroutinefunction(call)


def check_hook(name: str, value: Any, *, takes: str, count: int) -> None:
    """A plain function (not a coroutine function) that can be called with
    ``count`` positional arguments (``takes`` says which), or ``None``: a hook
    that cannot would fail only when first called, after records were sent.
    What cannot be told for sure (no signature, a mock) is taken."""
    if value is None:
        return
    if not callable(value):
        raise TypeError(f"{name} must be callable or None, got {quoted(value)}")
    if _is_coroutine_function(value):
        raise TypeError(
            f"{name} must be a plain function, not a coroutine function: it is not awaited"
        )
    try:
        # Not through __wrapped__: a decorator may take other arguments than
        # the function it wraps.
        signature = inspect.signature(value, follow_wrapped=False)
    except Exception:  # a builtin without one, a mock: it will say when called
        return
    try:
        signature.bind(*[None] * count)
    except TypeError:
        raise TypeError(f"{name} must take {takes}, got {quoted(value)}") from None
