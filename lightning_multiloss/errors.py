"""Exceptions raised by lightning-multiloss.

Every message names what is wrong (the task, key, strategy or value) so that a bad
configuration fails at once with a readable line, not a stack trace from inside torch.
"""

from __future__ import annotations


class MultiLossError(ValueError):
    """A configuration, batch or model output that lightning-multiloss cannot use."""


class NonFiniteLossError(MultiLossError, FloatingPointError):
    """A task loss is NaN or infinite (raised when ``on_nonfinite="raise"``)."""
