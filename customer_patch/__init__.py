"""customer-patch: safe, fast partial updates of customer records at SaaS providers.

Everything public is importable from here; the modules behind it are private.
Adapter authors also use :mod:`customer_patch.wire`.

Names are loaded on first use, so importing one layer (the transport, say)
does not pull in the layers above it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from customer_patch._adapter import Adapter, ListFilter, Tooling, WireField
    from customer_patch._bulk import (
        BulkReport,
        Progress,
        ProgressCallback,
        UpdateResult,
        Updates,
    )
    from customer_patch._client import Client
    from customer_patch._errors import (
        AdapterRegistrationError,
        AuthenticationError,
        BadRequestError,
        CustomerPatchError,
        NotAttemptedError,
        NotFoundError,
        PermissionDeniedError,
        Problem,
        ProviderError,
        RateLimitedError,
        ResponseFormatError,
        ResponseTooLargeError,
        ServerError,
        TooManyFailuresError,
        TransportError,
        UnknownAdapterError,
        UnknownCustomFieldError,
        UnprocessableEntityError,
        UnsupportedFieldError,
        UnsupportedOperationError,
        ValidationError,
    )
    from customer_patch._http import RateLimit, Request, Response
    from customer_patch._model import (
        UNSET,
        Address,
        Customer,
        CustomerId,
        CustomerPatch,
        CustomFieldDefinition,
        CustomFieldKey,
        ExternalIds,
        TaxId,
        Unset,
    )
    from customer_patch._registry import (
        AdapterRegistry,
        available_adapters,
        default_registry,
        get_adapter,
        register_adapter,
    )
    from customer_patch._retry import RetryPolicy
    from customer_patch._transport import AiohttpTransport, Transport
    from customer_patch._version import __version__

_WHERE = {
    "Adapter": "customer_patch._adapter",
    "ListFilter": "customer_patch._adapter",
    "Tooling": "customer_patch._adapter",
    "WireField": "customer_patch._adapter",
    "BulkReport": "customer_patch._bulk",
    "Progress": "customer_patch._bulk",
    "ProgressCallback": "customer_patch._bulk",
    "UpdateResult": "customer_patch._bulk",
    "Updates": "customer_patch._bulk",
    "Client": "customer_patch._client",
    "AdapterRegistrationError": "customer_patch._errors",
    "AuthenticationError": "customer_patch._errors",
    "BadRequestError": "customer_patch._errors",
    "CustomerPatchError": "customer_patch._errors",
    "NotAttemptedError": "customer_patch._errors",
    "NotFoundError": "customer_patch._errors",
    "PermissionDeniedError": "customer_patch._errors",
    "Problem": "customer_patch._errors",
    "ProviderError": "customer_patch._errors",
    "RateLimitedError": "customer_patch._errors",
    "ResponseFormatError": "customer_patch._errors",
    "ResponseTooLargeError": "customer_patch._errors",
    "ServerError": "customer_patch._errors",
    "TooManyFailuresError": "customer_patch._errors",
    "TransportError": "customer_patch._errors",
    "UnknownAdapterError": "customer_patch._errors",
    "UnknownCustomFieldError": "customer_patch._errors",
    "UnprocessableEntityError": "customer_patch._errors",
    "UnsupportedFieldError": "customer_patch._errors",
    "UnsupportedOperationError": "customer_patch._errors",
    "ValidationError": "customer_patch._errors",
    "RateLimit": "customer_patch._http",
    "Request": "customer_patch._http",
    "Response": "customer_patch._http",
    "Address": "customer_patch._model",
    "Customer": "customer_patch._model",
    "CustomerId": "customer_patch._model",
    "CustomFieldDefinition": "customer_patch._model",
    "CustomFieldKey": "customer_patch._model",
    "CustomerPatch": "customer_patch._model",
    "ExternalIds": "customer_patch._model",
    "TaxId": "customer_patch._model",
    "UNSET": "customer_patch._model",
    "Unset": "customer_patch._model",
    "AdapterRegistry": "customer_patch._registry",
    "available_adapters": "customer_patch._registry",
    "default_registry": "customer_patch._registry",
    "get_adapter": "customer_patch._registry",
    "register_adapter": "customer_patch._registry",
    "RetryPolicy": "customer_patch._retry",
    "AiohttpTransport": "customer_patch._transport",
    "Transport": "customer_patch._transport",
    "__version__": "customer_patch._version",
}


def __getattr__(name: str) -> Any:
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'customer_patch' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "UNSET",
    "Adapter",
    "AdapterRegistrationError",
    "AdapterRegistry",
    "Address",
    "AiohttpTransport",
    "AuthenticationError",
    "BadRequestError",
    "BulkReport",
    "Client",
    "CustomFieldDefinition",
    "CustomFieldKey",
    "Customer",
    "CustomerId",
    "CustomerPatch",
    "CustomerPatchError",
    "ExternalIds",
    "ListFilter",
    "NotAttemptedError",
    "NotFoundError",
    "PermissionDeniedError",
    "Problem",
    "Progress",
    "ProgressCallback",
    "ProviderError",
    "RateLimit",
    "RateLimitedError",
    "Request",
    "Response",
    "ResponseFormatError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "ServerError",
    "TaxId",
    "TooManyFailuresError",
    "Tooling",
    "Transport",
    "TransportError",
    "UnknownAdapterError",
    "UnknownCustomFieldError",
    "UnprocessableEntityError",
    "Unset",
    "UnsupportedFieldError",
    "UnsupportedOperationError",
    "UpdateResult",
    "Updates",
    "ValidationError",
    "WireField",
    "__version__",
    "available_adapters",
    "default_registry",
    "get_adapter",
    "register_adapter",
]
