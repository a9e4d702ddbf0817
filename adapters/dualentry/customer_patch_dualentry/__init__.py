"""The DualEntry adapter for customer-patch (``Client("dualentry", ...)``)."""

from customer_patch_dualentry._adapter import DualEntryAdapter

__all__ = ["DualEntryAdapter"]
