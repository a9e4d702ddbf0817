"""Rate limits as data."""

from __future__ import annotations

from attrs import field, frozen, validators


@frozen
class RateLimit:
    """A token bucket: ``burst`` requests at once, then ``per_second`` sustained."""

    burst: int = field(validator=validators.gt(0))
    per_second: float = field(validator=validators.gt(0))
