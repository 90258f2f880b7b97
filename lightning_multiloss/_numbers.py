"""Numbers as users give them: Python's, NumPy's scalars, or a 0-d tensor."""

from __future__ import annotations

import numbers

import torch


def real_number(value: object) -> float | None:
    """``value`` as a float where it is one real number (``0.3``, ``np.float32(0.3)``,
    ``torch.tensor(0.3)``), else ``None``; a bool is no number here (``True`` is not a weight).

    >>> import numpy as np
    >>> real_number(np.float32(0.5)), real_number(torch.tensor(2)), real_number(True), real_number([1.0])
    (0.5, 2.0, None, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor):
        scalar = value.ndim == 0 and value.dtype != torch.bool and not value.is_complex()
        return float(value) if scalar else None
    return float(value) if isinstance(value, numbers.Real) else None


def whole_number(value: object) -> int | None:
    """``value`` as an int where it is a whole number (``2``, ``2.0``, ``np.int64(2)``), else ``None``
    (``2.5``, NaN, a string, a bool: ``True`` is no count).

    >>> whole_number(2.0), whole_number(2.5), whole_number(True), whole_number("2")
    (2, None, None, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(float(value))
    return None


_HALF = (torch.float16, torch.bfloat16)


def out_of_half_precision(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """A module's tensor after ``Module._apply`` (``after``), or, where that cast it to a half dtype
    (``precision="bf16-true"``, ``.half()``), the values before the cast (``before``), in float32 or
    wider, on ``after``'s device: for state that half precision would round or stall. A meta or
    half ``before`` has no finer values: ``after`` in float32 then.

    >>> kept = out_of_half_precision(torch.tensor([1.001]), torch.tensor([1.001]).bfloat16())
    >>> kept.dtype, kept.tolist() == torch.tensor([1.001]).tolist()
    (torch.float32, True)
    """
    if after.dtype not in _HALF:
        return after
    source = after if before.is_meta or before.dtype in _HALF else before
    return source.to(device=after.device, dtype=torch.promote_types(source.dtype, torch.float32))
