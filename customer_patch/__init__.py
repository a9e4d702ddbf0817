"""customer-patch: safe, fast partial updates of customer records at SaaS providers.

Everything public is importable from here; the modules behind it are private.
Adapter authors also use :mod:`customer_patch.wire`.
"""

from customer_patch._adapter import Adapter, CustomerId, Request, Response, WireField
from customer_patch._bulk import (
    BulkReport,
    Progress,
    ProgressCallback,
    ProgressHook,
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
    ValidationError,
)
from customer_patch._model import (
    UNSET,
    Address,
    Customer,
    CustomerPatch,
    ExternalIds,
    TaxId,
    Unset,
)
from customer_patch._pacing import RateLimit
from customer_patch._registry import (
    AdapterRegistry,
    available_adapters,
    default_registry,
    get_adapter,
    register_adapter,
)
from customer_patch._retry import RETRY_STATUSES, RetryPolicy
from customer_patch._transport import AiohttpTransport, Transport
from customer_patch._version import __version__

__all__ = [
    "RETRY_STATUSES",
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
    "Customer",
    "CustomerId",
    "CustomerPatch",
    "CustomerPatchError",
    "ExternalIds",
    "NotAttemptedError",
    "NotFoundError",
    "PermissionDeniedError",
    "Problem",
    "Progress",
    "ProgressCallback",
    "ProgressHook",
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
    "Transport",
    "TransportError",
    "UnknownAdapterError",
    "UnknownCustomFieldError",
    "UnprocessableEntityError",
    "Unset",
    "UnsupportedFieldError",
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
