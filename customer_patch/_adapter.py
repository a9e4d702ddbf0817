"""The adapter contract: how a provider's wire format plugs into the core.

Adapters are sans-I/O.  Building a request and reading a response are plain
functions of plain values; the client hands the :class:`Request` to the
transport and the :class:`Response` back here.  An adapter *declares* its
provider (field map, limits, paths, auth) and fills in four hooks
(``update_path``, ``auth_headers``, ``customer_from``, ``error_details``),
with three more it may override (``check_customer_id``, ``same_customer``,
``unknown_custom_fields``); the machinery below (unset filtering,
unsupported fields, nullability, checks, ``extra`` clashes, path safety,
status-to-exception mapping) is shared by every adapter so none of them can
get it subtly wrong.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

from attrs import frozen

from customer_patch._errors import (
    Problem,
    ProviderError,
    RateLimitedError,
    ResponseFormatError,
    UnknownCustomFieldError,
    UnsupportedFieldError,
    ValidationError,
    error_class_for,
)
from customer_patch._http import RateLimit, Request, Response, parse_retry_after, status_text
from customer_patch._model import Customer, CustomerId, CustomerPatch, ExternalIds
from customer_patch.wire import Check, type_name

# json.dumps() with options builds a new encoder per call; reuse one instead.
# allow_nan=False: NaN and Infinity are not JSON, whatever Python's json allows.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# The same encoder's C core, called without JSONEncoder.encode's Python layers
# (a few microseconds an update).  No cycle markers: a cycle is a RecursionError,
# which every caller treats as "nested too deeply".
_make_encoder = getattr(json.encoder, "c_make_encoder", None)  # not in typeshed
_C_ENCODE = (
    None
    if _make_encoder is None
    else _make_encoder(
        None, _JSON.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
)


def _dumps(value: Any) -> str:
    """``value`` as compact JSON; raises like :meth:`json.JSONEncoder.encode`."""
    if _C_ENCODE is None or isinstance(value, str):
        return _JSON.encode(value)
    return "".join(_C_ENCODE(value, 0))


# The characters quote(..., safe="") leaves as they are (RFC 3986 unreserved).
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_.~-]+")


def _no_problems(value: Any) -> list[str]:
    return []


def _as_is(value: Any) -> Any:
    return value


def _text_or_null(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"expected a string or null, got {type_name(value)}")


@frozen(kw_only=True)
class WireField:
    """How one neutral field travels to a provider."""

    wire: str
    """The key in the provider's JSON body."""
    nullable: bool = True
    """Whether ``None`` (clear the field) is allowed."""
    check: Check = _no_problems
    """What makes a (non-``None``) value acceptable; see :mod:`customer_patch.wire`."""
    encode: Callable[[Any], Any] = _as_is
    """Turns a valid neutral value into its JSON form."""
    decode: Callable[[Any], Any] = _text_or_null
    """Reads the neutral value back from the provider's JSON (given ``None`` when the
    key is absent or null); raises on a value of the wrong shape.  The default
    takes a string or ``None``."""


@frozen(kw_only=True)
class Tooling:
    """What tools around an adapter need to know of it; none of it goes on the wire."""

    token_env: str | None = None
    """The environment variable the command line reads the token from (``None``:
    the generic ``CUSTOMER_PATCH_TOKEN``)."""
    sandbox: str | None = None
    """``"pkg.mod:Class"`` of this provider's fake (a ``FakeProvider``), if it ships one."""


class Adapter(ABC):
    """The base of every provider adapter.

    A subclass declares its provider as class attributes and implements
    :meth:`update_path`, :meth:`auth_headers`, :meth:`customer_from` and
    :meth:`error_details`.  Everything else has a shared implementation.
    """

    provider: ClassVar[str]
    """The provider's name as people write it, used in messages."""
    default_base_url: ClassVar[str]
    method: ClassVar[str] = "PATCH"
    """Must be idempotent (PATCH or PUT): failed attempts are sent again."""
    fields: ClassVar[Mapping[str, WireField]]
    """Neutral field path (``"name"``, ``"external_ids.crm"``) to its wire form.
    A neutral field not listed here cannot be patched at this provider."""
    read_only: ClassVar[frozenset[str]] = frozenset()
    """Wire keys the provider documents as not patchable; refused in ``extra``."""
    rate_limits: ClassVar[tuple[RateLimit, ...]] = ()
    """The provider's documented limits for this request; the client paces to all of them."""
    customer_id_type: ClassVar[type] = str
    """``str`` or ``int``: what kind of customer id the provider uses."""
    tooling: ClassVar[Tooling] = Tooling()
    """What the command line and the sandbox need to know: not wire facts."""

    # -- what a subclass provides -------------------------------------------------

    @abstractmethod
    def update_path(self, segment: str) -> str:
        """The path (below the base URL) to patch a customer.

        ``segment`` is the customer id already percent-encoded as one path segment.
        """

    @abstractmethod
    def auth_headers(self, token: str) -> Mapping[str, str]:
        """The headers that carry the credentials (masked wherever they are shown)."""

    @abstractmethod
    def customer_from(self, data: Any) -> Customer:
        """Read the neutral customer from a successful response's JSON.

        May raise (``KeyError``, ``TypeError``, ``ValueError``...) on a body of
        the wrong shape: that becomes a :class:`ResponseFormatError`.
        """

    @abstractmethod
    def error_details(
        self, status: int, data: Any
    ) -> tuple[str, Mapping[str, Sequence[str]]] | None:
        """``(message, field_errors)`` if the JSON body reports an error, else ``None``."""

    def check_customer_id(self, customer_id: object) -> list[str]:
        """What is wrong with a customer id, by the provider's rules."""
        if self.customer_id_type is int:
            if isinstance(customer_id, bool) or not isinstance(customer_id, int):
                return [f"must be an integer, not {type_name(customer_id)}"]
            return [] if customer_id > 0 else ["must be a positive integer"]
        if not isinstance(customer_id, str):
            return [f"must be a string, not {type_name(customer_id)}"]
        return [] if customer_id else ["must not be empty"]

    def unknown_custom_fields(
        self, field_errors: Mapping[str, Sequence[str]], sent: Mapping[str, Any]
    ) -> list[str]:
        """Names of sent custom fields that a 422 says are unknown (default: none)."""
        return []

    # -- shared machinery ------------------------------------------------------------

    def fields_from(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The neutral fields of a customer in the provider's JSON, read through
        :attr:`fields`, so each wire key is written once per adapter.

        For ``Customer(**adapter.fields_from(data), ...)``; ``external_ids.*``
        fields are gathered into one :class:`ExternalIds`.
        """
        values = {path: spec.decode(data.get(spec.wire)) for path, spec in self._read_plan[0]}
        external = self._read_plan[1]
        if external:
            values["external_ids"] = ExternalIds(
                **{name: spec.decode(data.get(spec.wire)) for name, spec in external}
            )
        return values

    @functools.cached_property
    def _read_plan(
        self,
    ) -> tuple[tuple[tuple[str, WireField], ...], tuple[tuple[str, WireField], ...]]:
        # fields_from runs once per answer: sort the map into top-level fields
        # and ExternalIds members once per adapter, not once per customer.
        top = tuple((p, f) for p, f in self.fields.items() if not p.startswith("external_ids."))
        external = tuple(
            (p.removeprefix("external_ids."), f)
            for p, f in self.fields.items()
            if p.startswith("external_ids.")
        )
        return top, external

    def _patch_body(self, patch: CustomerPatch) -> tuple[dict[str, Any], list[Problem]]:
        """The JSON body for ``patch``, and what is wrong with it (then the body is partial).

        Raises :class:`UnsupportedFieldError` at once: a field the provider
        cannot patch is not a problem of its value.
        """
        problems: list[Problem] = []
        values = list(patch.set_fields())
        if not values and not patch.extra:
            problems.append(Problem("", "the patch sets no field: there is nothing to send"))
        unsupported = [path for path, _ in values if path not in self.fields]
        unsupported += [f"extra.{k}" for k in patch.extra if k in self.read_only]
        if unsupported:
            raise UnsupportedFieldError(unsupported, provider=self.provider)

        body: dict[str, Any] = {}
        for path, value in values:
            spec = self.fields[path]
            if value is None:
                if spec.nullable:
                    body[spec.wire] = None
                else:
                    problems.append(Problem(path, "cannot be cleared (None) at " + self.provider))
                continue
            try:
                found = spec.check(value)
            except RecursionError:  # a value nested deeper than any check can walk
                found = ["is nested too deeply"]
            problems.extend(Problem(path, message) for message in found)
            if not found:
                body[spec.wire] = spec.encode(value)

        mapped = {spec.wire: path for path, spec in self.fields.items()} if patch.extra else {}
        for key, value in patch.extra.items():
            if not isinstance(key, str):
                problems.append(Problem("extra", f"keys must be strings, not {type_name(key)}"))
            elif key in mapped:
                problems.append(Problem(f"extra.{key}", f"is the mapped field {mapped[key]!r}"))
            else:
                try:
                    _dumps(value)
                except RecursionError:
                    problems.append(Problem(f"extra.{key}", "is nested too deeply"))
                except (TypeError, ValueError) as e:
                    problems.append(Problem(f"extra.{key}", f"is not JSON: {e}"))
                else:
                    body[key] = value
        return body, problems

    def prepare_update(self, customer_id: CustomerId, patch: CustomerPatch) -> tuple[str, bytes]:
        """Validate an update and return its path (below the base URL) and JSON body.

        Raises :class:`UnsupportedFieldError`, then :class:`ValidationError`
        listing every problem of the id and the patch at once.
        """
        if not isinstance(patch, CustomerPatch):
            raise TypeError(f"expected a CustomerPatch, got {type_name(patch)}")
        if isinstance(customer_id, uuid.UUID):
            customer_id = str(customer_id)
        problems = [Problem("id", m) for m in self.check_customer_id(customer_id)]
        text = str(customer_id)
        if _SAFE_SEGMENT.fullmatch(text):
            segment = text  # what quote() would return, without its cost
        else:
            try:
                segment = quote(text, safe="")
            except UnicodeEncodeError:
                segment = ""
                problems.append(Problem("id", "contains text that is not valid Unicode"))
        # quote() keeps dots; "." and ".." would climb out of the resource.
        if not problems and segment in {"", ".", ".."}:
            problems.append(Problem("id", f"{customer_id!r} is not a usable path segment"))
        body, patch_problems = self._patch_body(patch)
        problems += patch_problems
        if problems:
            raise ValidationError(problems, provider=self.provider)
        try:
            encoded = _dumps(body).encode()
        except UnicodeEncodeError:
            problem = Problem("", "contains text that is not valid Unicode (a lone surrogate)")
            raise ValidationError([problem], provider=self.provider) from None
        except (RecursionError, ValueError, TypeError) as e:  # an adapter's encode went astray
            problem = Problem("", f"cannot be written as JSON ({type(e).__name__})")
            raise ValidationError([problem], provider=self.provider) from None
        return self.update_path(segment), encoded

    def headers(
        self, token: str, extra: Mapping[str, str] | None = None
    ) -> tuple[dict[str, str], frozenset[str]]:
        """Every request header, and the (lower-case) names of those that are secret."""
        auth = self.auth_headers(token)
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            **(extra or {}),
            **auth,
        }
        return headers, frozenset(k.lower() for k in auth)

    def build_request(
        self,
        customer_id: CustomerId,
        patch: CustomerPatch,
        *,
        base_url: str,
        token: str,
        headers: Mapping[str, str] | None = None,
    ) -> Request:
        """Validate ``patch`` for ``customer_id`` and build the whole request; pure, no I/O."""
        path, body = self.prepare_update(customer_id, patch)
        all_headers, secret = self.headers(token, headers)
        return Request(
            method=self.method,
            url=base_url.rstrip("/") + path,
            headers=all_headers,
            body=body,
            secret_headers=secret,
        )

    def parse_response(
        self, response: Response, *, request: Request, customer_id: CustomerId | None = None
    ) -> Customer:
        """The updated customer, or the typed error the response stands for.

        ``request`` is what was sent, so a 422 can name the custom fields it is
        about.  With ``customer_id``, a customer whose id is another's is a
        :class:`ResponseFormatError`: that answer is not about this update.
        """
        status = response.status
        unreadable = None
        try:
            data: Any = json.loads(response.body)
        except json.JSONDecodeError:
            data = _NOT_JSON
        except (ValueError, RecursionError) as e:
            # Well-formed, perhaps, but past what this client reads: an integer
            # of more than 4,300 digits, or nesting deeper than the stack.
            data, unreadable = _NOT_JSON, f"JSON this client will not read ({type(e).__name__})"
        details = self.error_details(status, data) if data is not _NOT_JSON else None
        if status >= 300 or details is not None:
            raise self._error(response, details, request)
        if data is _NOT_JSON:
            raise ResponseFormatError(
                unreadable or "the body is not JSON",
                provider=self.provider,
                status=status,
                body=response.body,
                incomplete=unreadable is None,
            )
        try:
            customer = self.customer_from(data)
        except Exception as e:  # any way the provider's data defeats the parser
            raise ResponseFormatError(
                f"{type(e).__name__}: {e}",
                provider=self.provider,
                status=status,
                body=response.body,
            ) from e
        if customer_id is not None and not self.same_customer(customer_id, customer.id):
            raise ResponseFormatError(
                f"the answer is about customer {customer.id!r:.80}, not {customer_id!r}",
                provider=self.provider,
                status=status,
                body=response.body,
            )
        return customer

    def same_customer(self, sent: CustomerId, returned: object) -> bool:
        """Whether the id in an answer is the customer that was sent (default: equal)."""
        if isinstance(sent, uuid.UUID):
            sent = str(sent)
        return type(returned) is type(sent) and returned == sent

    def _error(
        self,
        response: Response,
        details: tuple[str, Mapping[str, Sequence[str]]] | None,
        request: Request,
    ) -> ProviderError:
        status = response.status
        if details is not None:
            message, field_errors = details
        elif 300 <= status < 400:
            location = response.headers.get("Location", "elsewhere")
            message, field_errors = f"redirect to {location} not followed", {}
        else:
            message, field_errors = status_text(status), {}
        common: dict[str, Any] = {
            "provider": self.provider,
            "status": status,
            "field_errors": field_errors,
            "body": response.body,
            "headers": response.headers,
        }
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return RateLimitedError(message, retry_after=retry_after, **common)
        if status == 422:
            names = self.unknown_custom_fields(field_errors, request.json())
            if names:
                return UnknownCustomFieldError(message, names=names, **common)
        return error_class_for(status)(message, **common)


class _NotJson:
    pass


_NOT_JSON: Any = _NotJson()
