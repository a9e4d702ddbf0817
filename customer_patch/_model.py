"""The provider-neutral partial-update model and the neutral customer result.

A patch field is tri-state: ``UNSET`` (leave it alone, nothing is sent),
``None`` (clear it, sent as JSON ``null``) or a value (set it).  Translating a
patch into a provider's body is the adapters' job; this module knows no
provider.
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal, TypeAlias, TypeVar

import attrs
from attrs import field, frozen


class _UnsetType(enum.Enum):
    # An enum member is a true singleton: identity survives copy, deepcopy
    # and pickle without any extra code, and mypy narrows on ``is UNSET``.
    UNSET = "UNSET"

    def __bool__(self) -> Literal[False]:
        return False

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _UnsetType.UNSET
"""Marks a patch field as *left alone*: it is not sent to the provider."""

Unset: TypeAlias = Literal[_UnsetType.UNSET]
"""The type of :data:`UNSET`, for annotations such as ``str | None | Unset``."""

T = TypeVar("T")

CustomerId: TypeAlias = str | int | uuid.UUID
"""A customer id as a provider uses it: a string (a UUID object is read as one) or an integer."""


def _tuple_or_keep(value: Any) -> Any:
    # Lists become tuples so a frozen patch is immutable all the way down;
    # anything else (UNSET, None, a wrong type) is left for validation to
    # report, because construction never raises on content.
    if isinstance(value, list):
        return tuple(value)
    return value


def _dict_or_keep(value: Any) -> Any:
    # A private copy, so mutating the caller's dict later cannot change a patch.
    # (UNSET and a plain dict first: an ABC check costs more than the copy.)
    if value is UNSET:
        return value
    if type(value) is dict or isinstance(value, Mapping):
        return dict(value)
    return value


@frozen
class TaxId:
    """One tax identifier, e.g. ``TaxId("VAT", "FR98765432100")``."""

    tax: str
    """The kind of tax id, e.g. ``"VAT"``."""
    value: str
    """The identifier itself."""


@frozen(kw_only=True)
class ExternalIds:
    """Ids of the customer in other systems; each one is tri-state."""

    crm: str | Unset | None = UNSET
    """The customer's id in a CRM."""
    erp: str | Unset | None = UNSET
    """The customer's id in an ERP."""
    accounting: str | Unset | None = UNSET
    """The customer's id in an accounting system."""


@frozen(kw_only=True)
class Address:
    """A postal address.

    An address is replaced as a whole: ``street``, ``city`` and ``postal_code``
    are required; ``country`` is ``""`` or an ISO 3166-1 alpha-2 code.
    """

    street: str
    """The street and number."""
    city: str
    """The city."""
    postal_code: str
    """The postal or ZIP code."""
    state: str = ""
    """The state, province or region (``""`` when none)."""
    second_line: str = ""
    """A second address line (``""`` when none)."""
    country: str = ""
    """``""`` or an ISO 3166-1 alpha-2 code such as ``"FR"``."""
    name: str | None = None
    """An optional label for the address (not sent when ``None``)."""


CustomFieldKey: TypeAlias = str | int
"""The keys of :attr:`CustomerPatch.custom_fields`: a ``str`` names a custom
field, an ``int`` is its id (for when two fields share a name)."""


@frozen(kw_only=True, slots=False)  # one built per update: see Customer
class CustomerPatch:
    """A partial update of one customer, in provider-neutral terms.

    Every field defaults to :data:`UNSET` and is then not sent.  ``None``
    clears a field; any other value sets it.  Which fields a provider can
    patch, and what it accepts, is checked by its adapter before anything is
    sent.
    """

    name: str | Unset | None = UNSET
    """The customer's name."""
    type: str | Unset | None = UNSET
    """``"company"`` or ``"individual"``."""
    segment_id: str | Unset | None = UNSET
    """A segment's id."""
    logo: str | Unset | None = UNSET
    """A URL."""
    tax_ids: tuple[TaxId, ...] | Unset | None = field(default=UNSET, converter=_tuple_or_keep)
    """Replaces *all* tax ids: ``[]`` removes every one, UNSET keeps them."""
    external_ids: ExternalIds | Unset = UNSET
    """Ids in other systems, each member tri-state."""
    unique_id: str | Unset | None = UNSET
    """An id the organisation chose for the customer."""
    email: str | Unset | None = UNSET
    """An email address."""
    phone: str | Unset | None = UNSET
    """A phone number."""
    website: str | Unset | None = UNSET
    """A website address."""
    address: str | Unset | None = UNSET
    """The address as free text."""
    country: str | Unset | None = UNSET
    """A country, as the provider writes it."""
    billing_address: Address | Unset | None = UNSET
    """The billing address, replaced as a whole."""
    shipping_address: Address | Unset | None = UNSET
    """The shipping address, replaced as a whole."""
    custom_fields: Mapping[CustomFieldKey, Any] | Unset = field(
        default=UNSET, converter=_dict_or_keep
    )
    """Custom field values by name (``str`` key) or by id (``int`` key); ``None`` clears."""
    extra: Mapping[str, Any] = field(factory=dict, converter=_dict_or_keep)
    """Provider-specific raw fields, sent verbatim.  A key that a mapped field
    already covers is an error."""

    def set_fields(self) -> Iterator[tuple[str, Any]]:
        """Yield ``(path, value)`` for every field that is not UNSET.

        :class:`ExternalIds` members appear as ``external_ids.crm`` and so on,
        so an adapter can support them one by one.  ``extra`` is not included.
        """
        for name in _PATCH_FIELDS:
            # getattr, not __dict__: a subclass may hold a field in a slot.
            value = getattr(self, name)
            if value is UNSET:
                continue
            if name == "external_ids" and isinstance(value, ExternalIds):
                for sub in _EXTERNAL_ID_FIELDS:
                    sub_value = getattr(value, sub)
                    if sub_value is not UNSET:
                        yield f"external_ids.{sub}", sub_value
            else:
                yield name, value

    def is_empty(self) -> bool:
        """True when the patch would change nothing."""
        return not self.extra and next(self.set_fields(), None) is None

    def __bool__(self) -> bool:
        """False for a patch that sets nothing (``CustomerPatch()``)."""
        return not self.is_empty()

    def changes_from(self, customer: Customer) -> CustomerPatch:
        """This patch with only what differs from ``customer``; falsy when nothing does.

        Equality, field by field (a field the read did not return is kept, never
        guessed equal; see :attr:`Customer.read_fields`):

        * text as sent: no trimming, no case folding; ``None`` (clear) equals a
          field the provider shows as ``null`` only (not ``""``);
        * ``tax_ids`` as an unordered collection of ``(tax, value)``; any
          difference keeps the whole list (providers replace it whole);
        * ``external_ids`` member by member;
        * addresses whole, with the provider's defaults filled (``""`` for a
          missing state, second line or country);
        * ``custom_fields`` entry by entry, by name or by id, against the values
          read; ``None`` equals a field the read shows with no value; a name two
          fields share, or a name or an id the read did not show, is kept.
          Values are equal when they are the same JSON value (``True`` is not
          ``1``; ``1`` is ``1.0``);
        * ``extra`` keys against the provider's own JSON (:attr:`Customer.raw`).
        """
        known = customer.read_fields
        changes: dict[str, Any] = {}
        external: dict[str, Any] = {}
        for path, value in self.set_fields():
            if path.startswith("external_ids."):
                member = path.removeprefix("external_ids.")
                current = getattr(customer.external_ids, member, None)
                if not _same(value, current) or (known is not None and path not in known):
                    external[member] = value
                continue
            if known is not None and path not in known:
                changes[path] = value
            elif path == "custom_fields":
                differing = _custom_field_changes(value, customer)
                if differing:
                    changes[path] = differing
            elif path == "tax_ids":
                if not _same_tax_ids(value, customer.tax_ids):
                    changes[path] = value
            elif not _same(value, getattr(customer, path)):
                changes[path] = value
        if external:
            changes["external_ids"] = ExternalIds(**external)
        extra = {
            k: v
            for k, v in self.extra.items()
            if not (isinstance(k, str) and k in customer.raw and _same(v, customer.raw[k]))
        }
        return CustomerPatch(**changes, extra=extra)

    def undo_for(self, before: Customer) -> tuple[CustomerPatch, tuple[str, ...]]:
        """The patch that puts back what ``before`` had for every field this one sets,
        and the fields it cannot (their value was not read: see
        :attr:`Customer.read_fields`; an ``extra`` key the provider did not show).

        Apply it after this patch to restore the customer.
        """
        values: dict[str, Any] = {}
        external: dict[str, Any] = {}
        unknown: list[str] = []
        for path, value in self.set_fields():
            if path == "custom_fields":
                restored = {}
                for key in value:
                    known, current = _custom_value(before, key)
                    if known:
                        restored[key] = current
                    else:
                        unknown.append(f"custom_fields[{key!r}]")
                if restored:
                    values[path] = restored
                continue
            known, current = _read_value(before, path)
            if not known:
                unknown.append(path)
            elif path.startswith("external_ids."):
                external[path.removeprefix("external_ids.")] = current
            else:
                values[path] = current
        if external:
            values["external_ids"] = ExternalIds(**external)
        extra = {}
        for key in self.extra:
            if isinstance(key, str) and key in before.raw:
                extra[key] = before.raw[key]
            else:
                unknown.append(f"extra.{key}")
        return CustomerPatch(**values, extra=extra), tuple(unknown)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CustomerPatch:
        """Build a patch from its JSON-ready neutral form.

        An absent key is UNSET and ``null`` clears.  Every problem is reported
        at once in one :class:`~customer_patch.ValidationError`.
        """
        from customer_patch._convert import structure_patch

        return structure_patch(data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready neutral form; ``from_dict(p.to_dict()) == p``."""
        from customer_patch._convert import unstructure_patch

        return unstructure_patch(self)


def _read_value(customer: Customer, path: str) -> tuple[bool, Any]:
    """``(known, value)`` of a neutral field path in a customer as read."""
    known = customer.read_fields
    if known is not None and path not in known:
        return False, None
    if path.startswith("external_ids."):
        return True, getattr(customer.external_ids, path.removeprefix("external_ids."), None)
    return True, getattr(customer, path)


def shared_names(names: Mapping[int, str | None]) -> set[str | None]:
    """The names more than one custom field has (counted once: a customer may
    show thousands of fields), in a ``custom_field_ids`` mapping."""
    return {n for n, count in collections.Counter(names.values()).items() if count > 1}


def _custom_key(customer: Customer, key: CustomFieldKey) -> CustomFieldKey | None:
    """Where the read put custom field ``key``'s value (a name or an id) in
    ``customer.custom_fields``, or ``None`` where it is not known: by its name,
    or by its id where the name cannot say which field (shared, empty or left
    out).  A name two fields share, or a name or id the read did not show in
    that place, is not known, rather than read as cleared."""
    values = customer.custom_fields
    read = customer.read_fields
    if values is None or (read is not None and "custom_fields" not in read):
        return None
    names = customer.custom_field_ids or {}
    shared = shared_names(names)
    if isinstance(key, int) and not isinstance(key, bool):
        if key not in names:
            return None
        name = names[key]
        where: CustomFieldKey = name if name and name not in shared else key
    elif key in shared:
        return None
    else:
        where = key
    return where if where in values else None


def _custom_value(customer: Customer, key: CustomFieldKey) -> tuple[bool, Any]:
    """``(known, value)`` of one custom field, by name or id, as read."""
    where = _custom_key(customer, key)
    if where is None:
        return False, None
    assert customer.custom_fields is not None  # where is a key of them
    return True, customer.custom_fields[where]


def _same(a: Any, b: Any) -> bool:
    """The same JSON value: ``True`` is not ``1``, ``1`` is ``1.0``, lists in order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _same_tax_ids(sent: Any, current: tuple[TaxId, ...] | None) -> bool:
    if sent is None or current is None:
        return sent is None and current is None
    pairs = collections.Counter((t.tax, t.value) for t in sent)
    return pairs == collections.Counter((t.tax, t.value) for t in current)


def _custom_field_changes(
    sent: Mapping[CustomFieldKey, Any], customer: Customer
) -> dict[Any, Any]:
    differing = {}
    for key, value in sent.items():
        known, current = _custom_value(customer, key)
        if not known or not _same(value, current):
            differing[key] = value
    return differing


# Looked up once: set_fields runs for every record sent.
_PATCH_FIELDS = tuple(a.name for a in attrs.fields(CustomerPatch) if a.name != "extra")
_EXTERNAL_ID_FIELDS = tuple(a.name for a in attrs.fields(ExternalIds))


# Not slotted: one is built for every answer read, and attrs writes a frozen
# class's fields into its __dict__ about twice as fast as it sets slots (one
# object.__setattr__ call a field): a microsecond an answer, for about 120
# bytes more a customer, little beside its raw JSON.  (Not for Request: vars()
# of a dict class would show its credentials.)
@frozen(kw_only=True, slots=False)
class Customer:
    """A customer as a provider returned it, in neutral terms.

    Fields the provider did not return are ``None``; ``raw`` is the
    provider's own JSON object for the customer, untouched.
    """

    id: str | int
    """The provider's id of the customer."""
    provider: str
    """The provider's name."""
    name: str | None = None
    """The customer's name."""
    type: str | None = None
    """``"company"`` or ``"individual"``."""
    segment_id: str | None = None
    """The segment's id."""
    logo: str | None = None
    """A URL."""
    tax_ids: tuple[TaxId, ...] | None = None
    """Every tax id, or ``None`` when the answer did not include them."""
    external_ids: ExternalIds | None = None
    """Ids in other systems."""
    unique_id: str | None = None
    """An id the organisation chose."""
    email: str | None = None
    """An email address."""
    phone: str | None = None
    """A phone number."""
    website: str | None = None
    """A website address."""
    address: str | None = None
    """The address as free text."""
    country: str | None = None
    """A country, as the provider writes it."""
    billing_address: Address | None = None
    """The billing address."""
    shipping_address: Address | None = None
    """The shipping address."""
    custom_fields: Mapping[CustomFieldKey, Any] | None = None
    """Custom field values by name, or by id where two fields share a name (or
    the answer showed a field without a name, or with an empty one)."""
    created_at: dt.datetime | None = None
    """When the customer was created, timezone-aware."""
    updated_at: dt.datetime | None = None
    """When the customer was last changed, timezone-aware."""
    raw: Mapping[str, Any] = field(factory=dict, repr=False)
    """The provider's own JSON object for the customer, untouched."""
    read_fields: frozenset[str] | None = field(default=None, repr=False)
    """The neutral fields (``"name"``, ``"external_ids.crm"``) the answer included;
    a field not in it was not read (``None``: every field was).  A provider may
    answer a list with fewer fields than a get."""
    custom_field_ids: Mapping[int, str | None] | None = field(default=None, repr=False)
    """The id and name of every custom field the answer showed (names may repeat;
    ``None`` where the answer left a name out), so a value can be found by id as
    well as by name."""


@frozen(kw_only=True)
class CustomFieldDefinition:
    """A custom field as a provider defines it for customers."""

    id: int
    """The provider's id of the field."""
    name: str
    """The field's name (two fields may share one)."""
    field_type: str
    """What its values are, as the provider says (``"text"``, ``"boolean"``...)."""
    is_active: bool
    """Whether values can be written: the field is active, and active for customers."""
    options: tuple[str, ...] | None = None
    """The choices of a select field, else ``None``."""
    raw: Mapping[str, Any] = field(factory=dict, repr=False)
    """The provider's own JSON object for the field, untouched."""
