"""Tools for adapter authors: checks for what goes out, readers for what comes back.

A check takes a (non-``None``) value and returns the list of what is wrong
with it; an empty list means the value is acceptable.  Checks never raise:
validation collects every problem of a patch and reports them at once.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Collection, Mapping
from typing import Any

from customer_patch._checks import check_choices
from customer_patch._errors import MESSAGE_KEPT, cut
from customer_patch._model import Address

__all__ = [
    "ISO_COUNTRIES",
    "MAX_FIELD_ERRORS",
    "MAX_MESSAGE",
    "Check",
    "address",
    "ecma_pattern",
    "field_errors",
    "iso_country",
    "optional_str",
    "parse_datetime",
    "text",
    "type_name",
    "uuid_text",
]

Check = Callable[[Any], list[str]]
"""A check: a (non-``None``) value in, the list of what is wrong with it out."""

# ISO 3166-1 alpha-2, the 249 officially assigned codes (checked against
# pycountry's database when this list was written).
ISO_COUNTRIES = frozenset(
    [
        "AD",
        "AE",
        "AF",
        "AG",
        "AI",
        "AL",
        "AM",
        "AO",
        "AQ",
        "AR",
        "AS",
        "AT",
        "AU",
        "AW",
        "AX",
        "AZ",
        "BA",
        "BB",
        "BD",
        "BE",
        "BF",
        "BG",
        "BH",
        "BI",
        "BJ",
        "BL",
        "BM",
        "BN",
        "BO",
        "BQ",
        "BR",
        "BS",
        "BT",
        "BV",
        "BW",
        "BY",
        "BZ",
        "CA",
        "CC",
        "CD",
        "CF",
        "CG",
        "CH",
        "CI",
        "CK",
        "CL",
        "CM",
        "CN",
        "CO",
        "CR",
        "CU",
        "CV",
        "CW",
        "CX",
        "CY",
        "CZ",
        "DE",
        "DJ",
        "DK",
        "DM",
        "DO",
        "DZ",
        "EC",
        "EE",
        "EG",
        "EH",
        "ER",
        "ES",
        "ET",
        "FI",
        "FJ",
        "FK",
        "FM",
        "FO",
        "FR",
        "GA",
        "GB",
        "GD",
        "GE",
        "GF",
        "GG",
        "GH",
        "GI",
        "GL",
        "GM",
        "GN",
        "GP",
        "GQ",
        "GR",
        "GS",
        "GT",
        "GU",
        "GW",
        "GY",
        "HK",
        "HM",
        "HN",
        "HR",
        "HT",
        "HU",
        "ID",
        "IE",
        "IL",
        "IM",
        "IN",
        "IO",
        "IQ",
        "IR",
        "IS",
        "IT",
        "JE",
        "JM",
        "JO",
        "JP",
        "KE",
        "KG",
        "KH",
        "KI",
        "KM",
        "KN",
        "KP",
        "KR",
        "KW",
        "KY",
        "KZ",
        "LA",
        "LB",
        "LC",
        "LI",
        "LK",
        "LR",
        "LS",
        "LT",
        "LU",
        "LV",
        "LY",
        "MA",
        "MC",
        "MD",
        "ME",
        "MF",
        "MG",
        "MH",
        "MK",
        "ML",
        "MM",
        "MN",
        "MO",
        "MP",
        "MQ",
        "MR",
        "MS",
        "MT",
        "MU",
        "MV",
        "MW",
        "MX",
        "MY",
        "MZ",
        "NA",
        "NC",
        "NE",
        "NF",
        "NG",
        "NI",
        "NL",
        "NO",
        "NP",
        "NR",
        "NU",
        "NZ",
        "OM",
        "PA",
        "PE",
        "PF",
        "PG",
        "PH",
        "PK",
        "PL",
        "PM",
        "PN",
        "PR",
        "PS",
        "PT",
        "PW",
        "PY",
        "QA",
        "RE",
        "RO",
        "RS",
        "RU",
        "RW",
        "SA",
        "SB",
        "SC",
        "SD",
        "SE",
        "SG",
        "SH",
        "SI",
        "SJ",
        "SK",
        "SL",
        "SM",
        "SN",
        "SO",
        "SR",
        "SS",
        "ST",
        "SV",
        "SX",
        "SY",
        "SZ",
        "TC",
        "TD",
        "TF",
        "TG",
        "TH",
        "TJ",
        "TK",
        "TL",
        "TM",
        "TN",
        "TO",
        "TR",
        "TT",
        "TV",
        "TW",
        "TZ",
        "UA",
        "UG",
        "UM",
        "US",
        "UY",
        "UZ",
        "VA",
        "VC",
        "VE",
        "VG",
        "VI",
        "VN",
        "VU",
        "WF",
        "WS",
        "YE",
        "YT",
        "ZA",
        "ZM",
        "ZW",
    ]
)


def type_name(value: object) -> str:
    """The name of ``value``'s type, for messages."""
    return type(value).__name__


# What "\s" means in ECMA-262, the regular expressions of JavaScript and so of
# JSON Schema and OpenAPI: WhiteSpace (tab, VT, FF, U+FEFF and every Zs space)
# and LineTerminator (LF, CR, U+2028, U+2029).  Python's "\s" differs in six
# characters: it also takes U+001C-U+001F and U+0085, and not U+FEFF.
_ECMA_SPACE = r"\t\n\x0b\x0c\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_ECMA_CLASSES = {"s": _ECMA_SPACE, "d": "0-9", "w": "A-Za-z0-9_"}


def ecma_pattern(pattern: str) -> str:
    """An ECMA-262 pattern (a JSON Schema or OpenAPI ``pattern``) rewritten for ``re``.

    The classes ``\\s \\S \\d \\D \\w \\W``, ``.`` and ``$`` keep their JavaScript
    meaning (``\\d`` is ASCII, ``$`` is the very end); other syntax is passed
    on as written.  Match with ``re.search``, as JSON Schema does.

    >>> space = re.compile(ecma_pattern(r"^\\s$"))
    >>> bool(space.search("\\ufeff")), bool(space.search("\\x1c"))
    (True, False)
    """
    out: list[str] = []
    in_class = False
    chars = iter(pattern)
    for c in chars:
        if c == "\\":
            escaped = next(chars, "")
            body = _ECMA_CLASSES.get(escaped.lower())
            if body is None:
                out.append(c + escaped)
            elif not in_class:
                out.append(f"[^{body}]" if escaped.isupper() else f"[{body}]")
            elif escaped.isupper():
                raise ValueError(f"\\{escaped} inside [...] is not supported: {pattern!r}")
            else:
                out.append(body)
        elif in_class:
            in_class = c != "]"
            out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
        else:
            out.append({"$": r"\Z", ".": r"[^\n\r\u2028\u2029]"}.get(c, c))
    return "".join(out)


def text(
    *,
    min_len: int | None = None,
    max_len: int | None = None,
    pattern: str | None = None,
    schema_pattern: str | None = None,
    choices: Collection[str] | None = None,
) -> Check:
    """A string, optionally of bounded length, matching a pattern or one of ``choices``.

    ``pattern`` is a Python regular expression the whole string must match;
    ``schema_pattern`` is one as a provider's OpenAPI document writes it
    (ECMA-262, matched anywhere unless anchored; see :func:`ecma_pattern`),
    checked exactly as the provider's validator checks it.
    """
    check_choices("choices", choices)
    compiled = re.compile(pattern) if pattern is not None else None
    schema = re.compile(ecma_pattern(schema_pattern)) if schema_pattern is not None else None

    def check(value: Any) -> list[str]:
        if not isinstance(value, str):
            return [f"must be a string, not {type_name(value)}"]
        problems = []
        if min_len is not None and len(value) < min_len:
            problems.append(f"must be at least {min_len} characters long")
        if max_len is not None and len(value) > max_len:
            problems.append(f"must be at most {max_len} characters long (got {len(value)})")
        if compiled is not None and not compiled.fullmatch(value):
            problems.append(f"must match {pattern}")
        if schema is not None and not schema.search(value):
            problems.append(f"must match {schema_pattern}")
        if choices is not None and value not in choices:
            problems.append(f"must be one of {', '.join(map(repr, choices))}; got {value!r}")
        return problems

    return check


def uuid_text(value: Any) -> list[str]:
    """A UUID in its string form."""
    if not isinstance(value, str):
        return [f"must be a UUID string, not {type_name(value)}"]
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        return [f"must be a UUID, got {value!r}"]
    # uuid.UUID() also reads "{...}", "urn:uuid:..." and hex without dashes,
    # none of which a provider's path or field expects.
    if value.lower() != canonical:
        return [f"must be a UUID in its usual form ({canonical}), got {value!r}"]
    return []


def iso_country(value: Any) -> list[str]:
    """An ISO 3166-1 alpha-2 country code such as ``"FR"``."""
    if not isinstance(value, str):
        return [f"must be a string, not {type_name(value)}"]
    if value not in ISO_COUNTRIES:
        return [f"must be an ISO 3166-1 alpha-2 code such as 'FR', got {value!r}"]
    return []


_ALPHA_2 = re.compile("[A-Z]{2}")


def address(value: Any) -> list[str]:
    """An :class:`~customer_patch.Address` with string parts and a country that is
    empty or two upper-case letters (the ISO 3166-1 alpha-2 form).

    Any pair is accepted, not only the assigned codes: ``XK`` is in use, and
    which codes exist is the provider's to decide.
    """
    if not isinstance(value, Address):
        return [f"must be an Address, not {type_name(value)}"]
    problems = []
    for part in ("street", "city", "postal_code", "state", "second_line", "country"):
        part_value = getattr(value, part)
        if not isinstance(part_value, str):
            problems.append(f"{part} must be a string, not {type_name(part_value)}")
    if value.name is not None and not isinstance(value.name, str):
        problems.append(f"name must be a string, not {type_name(value.name)}")
    if isinstance(value.country, str) and value.country and not _ALPHA_2.fullmatch(value.country):
        problems.append(
            "country must be empty or two upper-case letters "
            f"(ISO 3166-1 alpha-2, such as 'FR'), got {value.country!r}"
        )
    return problems


_LEAP_SECOND = re.compile(r"(.*[T ]\d\d:\d\d:)60(\D.*)?")


def parse_datetime(value: Any) -> dt.datetime | None:
    """An aware datetime from an ISO 8601 string; a naive one is taken as UTC.

    Every RFC 3339 ``date-time`` is read, including a lower-case ``t`` or
    ``z`` and a leap second (``23:59:60``, read as the second after ``:59``).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 string, got {type_name(value)}")
    upper = value.upper()  # RFC 3339: "T" and "Z" may be lower case
    try:
        parsed = dt.datetime.fromisoformat(upper)
    except ValueError:
        leap = _LEAP_SECOND.fullmatch(upper)
        if leap is None:
            raise
        parsed = dt.datetime.fromisoformat(leap[1] + "59" + (leap[2] or ""))
        parsed += dt.timedelta(seconds=1)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def optional_str(data: Mapping[str, Any], key: str) -> str | None:
    """``data[key]`` if it is a string, ``None`` if absent or null; else ``TypeError``."""
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{key} should be a string, got {type_name(value)}")


MAX_FIELD_ERRORS = 100
"""The messages :func:`field_errors` keeps of a provider's errors object."""
MAX_MESSAGE = MESSAGE_KEPT
"""The characters :func:`field_errors` keeps of each message, and of each field's name."""


def field_errors(value: Any) -> dict[str, list[str]]:
    """``{field: [messages]}`` from a provider's errors object; tolerant of odd shapes.

    An error is kept with its record, so this is bounded whatever the provider
    sent: the first :data:`MAX_FIELD_ERRORS` messages, in order, each cut to
    :data:`MAX_MESSAGE` characters; a last message under ``"__all__"`` counts
    the rest.
    """
    if not isinstance(value, Mapping):
        return {}
    errors: dict[str, list[str]] = {}
    room, left = MAX_FIELD_ERRORS, 0
    for key, messages in value.items():
        if not isinstance(messages, list):
            messages = [messages]
        if room <= 0:
            left += len(messages)
            continue
        kept = messages[:room]
        errors[cut(str(key), MAX_MESSAGE)] = [cut(str(m), MAX_MESSAGE) for m in kept]
        room -= max(len(kept), 1)  # a field with no message still takes a place
        left += len(messages) - len(kept)
    if left:
        errors.setdefault("__all__", []).append(f"and {left} more messages not kept")
    return errors
