"""The Qwoty adapter for customer-patch (``Client("qwoty", ...)``)."""

from customer_patch_qwoty._adapter import QwotyAdapter

__all__ = ["QwotyAdapter"]
