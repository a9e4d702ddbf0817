"""Every error the library raises, under one root: :class:`CustomerPatchError`.

Errors carry data (status, provider, field errors, the raw body) rather than
only text, so code can act on them.  None of them ever holds a token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from attrs import frozen
from multidict import CIMultiDict

BODY_KEPT = 64 * 1024
"""Bytes of a provider's answer an error keeps in ``body``, at most: its start
says what it was, and a run that keeps every result (``update_many``) must
not keep up to the 8 MiB read cap for every record a provider refused."""

HEADERS_KEPT = 16 * 1024
"""Characters of a provider's headers (names and values) an error keeps in
``headers``, at most, whole headers in the order received (and the first
``Retry-After`` wherever it came): for the same reason, as aiohttp reads up
to 128 headers of 8 KB each."""


MESSAGE_KEPT = 1000
"""Characters of a message an error keeps, at most (a provider's own text, or
a parser's quoting it): a provider can answer with megabytes of it."""

CUT = "\u2026"
"""Ends a text an error keeps cut short (an ellipsis).  The client masks the
piece of the token a cut may end with, too short there to be told from text
otherwise: a text is cut (its error made) before the client, which knows the
token, masks it."""


def cut(text: str, most: int = MESSAGE_KEPT) -> str:
    """``text``, or its start and :data:`CUT`, ``most`` characters at most."""
    return text if len(text) <= most else text[: most - 1] + CUT


def cut_bytes(data: bytes, most: int) -> tuple[bytes, bool]:
    """``data``'s first ``most`` bytes, and whether that cut it."""
    return data[:most], len(data) > most


def quoted(value: Any, most: int = 80) -> str:
    """``value``'s repr for a message, :func:`cut` to ``most`` characters; a repr
    that fails says so."""
    try:
        text = repr(value)
    except Exception:  # a caller's object, which its message must not end a run for
        return f"a {type(value).__name__} (whose repr failed)"
    return cut(text, most)


def _kept_headers(headers: Mapping[str, str] | None) -> CIMultiDict[str]:
    # A copy that stays case-insensitive, as HTTP header names are.
    kept: CIMultiDict[str] = CIMultiDict()
    size = 0
    for name, value in (headers or {}).items():
        size += len(name) + len(value)
        # The first Retry-After, wherever it came: the retry reads that one.
        if size <= HEADERS_KEPT or (name.lower() == "retry-after" and "Retry-After" not in kept):
            kept.add(name, value)
    return kept


class CustomerPatchError(Exception):
    """The root of every error raised by customer-patch."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructors do not survive the default
        # Exception pickling; restore the instance state directly instead.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(
    cls: type[CustomerPatchError], args: tuple[Any, ...], state: dict[str, Any]
) -> CustomerPatchError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


def _cut_if_text(value: Any) -> Any:
    # Anything else is left as it is, for the code that made it to answer for.
    return cut(value) if isinstance(value, str) else value


@frozen
class Problem:
    """One thing wrong with an input: where (``field``) and what (``message``)."""

    field: str = attrs.field(converter=_cut_if_text)
    """Where: a field path such as ``"phone"`` or ``"custom_fields"`` (``""``: the whole
    input); at most 1,000 characters, as the message."""
    message: str = attrs.field(converter=_cut_if_text)
    """What is wrong, for people (at most 1,000 characters: it can quote a
    provider's values, and a failed record keeps it)."""

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ValidationError(CustomerPatchError, ValueError):
    """An update is invalid; nothing was sent.  ``problems`` lists every issue."""

    problems: tuple[Problem, ...]

    def __init__(self, problems: Iterable[Problem], *, provider: str | None = None) -> None:
        self.problems = tuple(problems)
        self.provider = provider
        where = f" for {provider}" if provider else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s){where}:\n{lines}")


class UnsupportedFieldError(CustomerPatchError, ValueError):
    """The patch sets fields the provider cannot patch; nothing was sent."""

    def __init__(self, fields: Sequence[str], *, provider: str) -> None:
        self.fields = tuple(fields)
        self.provider = provider
        super().__init__(f"{provider} cannot patch: {', '.join(self.fields)}")


class UnsupportedOperationError(CustomerPatchError):
    """The provider documents no way to do this (``operation``); nothing was sent."""

    def __init__(self, operation: str, *, provider: str) -> None:
        self.operation = operation
        self.provider = provider
        super().__init__(f"{provider} documents no way to {operation}")


class UnknownAdapterError(CustomerPatchError, LookupError):
    """No adapter is registered under that name."""

    def __init__(self, name: str, *, available: Sequence[str]) -> None:
        self.name = name
        self.available = tuple(available)
        listed = ", ".join(self.available) or "none"
        super().__init__(f"no adapter named {name!r}; available: {listed}")


class AdapterRegistrationError(CustomerPatchError):
    """An adapter could not be registered or loaded."""


class NotAttemptedError(CustomerPatchError):
    """A request was not sent: its bulk run had stopped, or its client was closed
    first.  ``cause`` says why (the run's stop, or the closing)."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(cut(f"not attempted, after {type(cause).__name__}: {cause}"))


class TooManyFailuresError(CustomerPatchError):
    """A bulk run stopped because too many records failed; ``last`` is the latest failure.

    It is the ``cause`` of the :class:`NotAttemptedError` of every record left unsent.
    """

    def __init__(self, message: str, *, failures: int, last: BaseException) -> None:
        self.failures = failures
        self.last = last
        super().__init__(message)


class ProviderError(CustomerPatchError):
    """The provider answered with an error.

    Raised as is for statuses without a subclass, including a ``200`` whose
    body says ``success: false``.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int,
        field_errors: Mapping[str, Sequence[str]] | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        sent: bool = True,
    ) -> None:
        self.message = cut(message)
        """What the provider said went wrong (at most 1,000 characters)."""
        self.provider = provider
        self.status = status
        self.sent = sent
        """``False`` when found before anything was sent, from what the provider
        showed (its custom fields, a list that lacks the customer) or from its
        rate limit (a wait past the update's time budget): ``status`` is then
        the one the provider answers such a request with."""
        self.field_errors = {k: tuple(v) for k, v in (field_errors or {}).items()}
        self.body, cut_short = cut_bytes(body, BODY_KEPT)
        """The start of the provider's answer (at most :data:`BODY_KEPT` bytes)."""
        self.body_cut = cut_short
        """Whether the answer was longer than ``body``, which ends where it was cut."""
        self.headers: Mapping[str, str] = _kept_headers(headers)
        """The answer's headers, looked up without regard to case (at most
        :data:`HEADERS_KEPT` characters of them, and ``Retry-After``)."""
        details = "; ".join(f"{k}: {' '.join(v)}" for k, v in self.field_errors.items())
        said = self.message
        text = f"{provider} answered {status}: {said}" if sent else f"{provider}: {said}"
        super().__init__(f"{text} ({details})" if details else text)


class BadRequestError(ProviderError):
    """400: the provider rejected the request as malformed; see ``field_errors``."""


class AuthenticationError(ProviderError):
    """401: the credentials are missing or not accepted."""


class PermissionDeniedError(ProviderError):
    """403: the credentials may not do this."""


class NotFoundError(ProviderError):
    """404: no such customer."""


class UnprocessableEntityError(ProviderError):
    """422: the provider rejected the content of the update."""


class UnknownCustomFieldError(UnprocessableEntityError):
    """422 because custom field names are unknown to the provider; see ``names``."""

    def __init__(self, message: str, *, names: Sequence[str], **kwargs: Any) -> None:
        self.names = tuple(names)
        super().__init__(message, **kwargs)


class RateLimitedError(ProviderError):
    """429: too many requests.  ``retry_after`` is the wait asked for, in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)


class ServerError(ProviderError):
    """5xx: the provider failed."""


class TransportError(CustomerPatchError):
    """The request did not complete: connection refused or dropped, or a timeout."""

    def __init__(self, message: str, *, provider: str) -> None:
        self.provider = provider
        super().__init__(f"{provider}: {cut(message)}")


class ResponseFormatError(CustomerPatchError):
    """The provider's answer is not what it documents (not JSON, wrong shape, too large)."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int,
        body: bytes = b"",
        incomplete: bool = False,
    ) -> None:
        self.message = message = cut(message)
        """What is wrong with the answer (at most 1,000 characters)."""
        self.provider = provider
        self.status = status
        self.body, cut_short = cut_bytes(body, BODY_KEPT)
        """The start of the provider's answer (at most :data:`BODY_KEPT` bytes)."""
        self.body_cut = cut_short
        """Whether the answer was longer than ``body``, which ends where it was cut."""
        self.incomplete = incomplete
        """The body is not JSON at all (cut short or garbled in transit), so
        another attempt may get a whole answer; a body of the wrong shape, or
        one this client refuses to read (nested too deeply...), is final."""
        super().__init__(f"{provider} answered {status} with an unexpected body: {message}")


class ResponseTooLargeError(ResponseFormatError):
    """The body is larger than the client is willing to read; it was not read."""


_BY_STATUS: dict[int, type[ProviderError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: UnprocessableEntityError,
    429: RateLimitedError,
}


def error_class_for(status: int) -> type[ProviderError]:
    """The :class:`ProviderError` subclass for an HTTP status."""
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, ProviderError)
