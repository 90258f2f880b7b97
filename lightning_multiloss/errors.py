"""Exceptions raised by lightning-multiloss.

Every message names what is wrong (the task, key, strategy or value) so that a bad
configuration fails at once with a readable line, not a stack trace from inside torch.
"""

from __future__ import annotations

from typing import TypeVar

_E = TypeVar("_E", bound=BaseException)


class MultiLossError(ValueError):
    """A configuration, batch or model output that lightning-multiloss cannot use."""


class NonFiniteLossError(MultiLossError, FloatingPointError):
    """A task loss is NaN or infinite (raised when ``on_nonfinite="raise"``)."""


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when it has none): the reason an
    error of another library gives, for a message of one line."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def raised_by_every_process(error: _E) -> _E:
    """Mark ``error`` as one that every DDP process raises together (its cause was reduced over the
    processes first): an app prints it once, from the first process (``on_every_process``)."""
    error.on_every_process = True  # type: ignore[attr-defined]
    return error
