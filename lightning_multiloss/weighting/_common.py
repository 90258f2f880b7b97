"""Helpers shared by the strategies: argument checks, per-task values, seeded draws, process means.

Every strategy that needs one of these imports it from here, so that a rule (how a seed is
checked, how a dict of per-task values is read, how random draws are seeded) is written once.

>>> check_seed("rlw", 3)
3
>>> per_task_values("fixed", ["a", "b"], {"b": 2.0}, "weights", 1.0)
[1.0, 2.0]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from lightning_multiloss._dist import all_reduce_sum
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.weighting._base import WeightedLoss

T = TypeVar("T")

MAX_LOG_SCALE = 80.0
"""The largest initial log-scale (|s|) of uncertainty-type strategies: e^80 is near float32's limit."""


# -- argument checks ---------------------------------------------------------------------------
def require(strategy: str, ok: bool, what: str, value: object) -> None:
    """Raise a :class:`MultiLossError` naming the strategy and the value unless ``ok``."""
    if not ok:
        raise MultiLossError(f"weighting {strategy!r}: {what}, got {value!r}")


def as_number(strategy: str, name: str, value: object) -> float:
    """``value`` as a float, or an error naming it: a number, not a string, ``None`` (Hydra's
    ``null``) or a bool."""
    if not isinstance(value, bool | str | bytes) and value is not None:
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pass
    raise MultiLossError(f"weighting {strategy!r}: {name} must be a number, got {value!r}")


def check_positive(strategy: str, name: str, value: float, allow_zero: bool = False) -> float:
    """``value`` as a float if finite and positive (or >= 0), else an error naming it."""
    number = as_number(strategy, name, value)
    ok = math.isfinite(number) and (number >= 0.0 if allow_zero else number > 0.0)
    require(strategy, ok, f"{name} must be finite and {'>= 0' if allow_zero else '> 0'}", value)
    return number


def check_seed(strategy: str, seed: object) -> int:
    """A seed: an integer >= 0 (``True`` is not one)."""
    ok = isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0
    require(strategy, ok, "seed must be an integer >= 0", seed)
    assert isinstance(seed, int)
    return seed


def check_weight(strategy: str, task: str, value: float, what: str = "weight") -> float:
    """``value`` as a float, or an error naming the strategy and task if negative, NaN or infinite."""
    value = as_number(strategy, f"{what} for task {task!r}", value)
    if not math.isfinite(value) or value < 0:
        raise MultiLossError(f"weighting {strategy!r}: {what} for task {task!r} must be finite and >= 0, got {value}")
    return value


def per_task_values(
    strategy: str,
    names: Sequence[str],
    values: Sequence[T] | Mapping[str, T],
    what: str,
    default: T,
    counted_as: str = "values",
) -> list[T]:
    """Values in task order from a list (task order) or a dict by task name.

    A dict may leave tasks out (they get ``default``) but may not name a task the model
    lacks; a list must have exactly one value per task (``counted_as`` names them in the error).
    """
    if isinstance(values, Mapping):
        unknown = [key for key in values if key not in names]
        if unknown:
            raise MultiLossError(
                f"weighting {strategy!r}: {what} names unknown task(s) {unknown}; the tasks are {list(names)}"
            )
        return [values.get(name, default) for name in names]
    values = list(values)
    if len(values) != len(names):
        raise MultiLossError(
            f"weighting {strategy!r}: {what} has {len(values)} {counted_as} for {len(names)} tasks {list(names)}"
        )
    return values


def check_log_variance_init(
    strategy: str, init: float | Sequence[float] | Mapping[str, float]
) -> float | list[float] | dict[str, float]:
    """The initial log-scales, checked finite (a number, a list in task order or a dict by task name)."""

    def finite(value: float, where: str) -> float:
        value = as_number(strategy, f"init{where}", value)
        # exp(±init) scales a loss: beyond ±80 it overflows float32 (an infinite weight and loss).
        if not math.isfinite(value) or abs(value) > MAX_LOG_SCALE:
            raise MultiLossError(
                f"weighting {strategy!r}: init{where} must be finite and within ±{MAX_LOG_SCALE:g}, got {value}"
            )
        return value

    if isinstance(init, Mapping):
        return {name: finite(v, f" for task {name!r}") for name, v in init.items()}
    if isinstance(init, Sequence) and not isinstance(init, str):
        return [finite(v, f"[{i}]") for i, v in enumerate(init)]
    return finite(init, "")


def initial_values(strategy: str, names: Sequence[str], init: float | list[float] | dict[str, float]) -> Tensor:
    """``init`` as a ``(K,)`` tensor (tasks a dict leaves out start at 0)."""
    if isinstance(init, float):
        return torch.full((len(names),), init)
    return torch.tensor([float(v) for v in per_task_values(strategy, names, init, "init", 0.0)])


# -- seeded draws ------------------------------------------------------------------------------
def seeded_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, step)``: the same on every process and after a resume."""
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + int(step) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (2**63 - 1)
    return torch.Generator(device="cpu").manual_seed(mixed)


# -- losses over processes ---------------------------------------------------------------------
def at_least_float32(values: Tensor) -> Tensor:
    """``values`` in float32, or float64 where they are (a float64 model keeps its precision)."""
    return values.to(torch.promote_types(values.dtype, torch.float32))


def process_mean(losses: Tensor) -> Tensor:
    """The ``(K,)`` mean of the detached losses over all DDP processes, in float32 or wider (one all-reduce)."""
    detached = at_least_float32(losses.detach())
    summed = all_reduce_sum(torch.cat([detached, detached.new_ones(1)]))
    return summed[:-1] / summed[-1]


def linearised(value: Tensor, weights: Tensor, losses: Tensor) -> WeightedLoss:
    """A loss worth ``value`` whose gradient is ``Σ weights_i ∇L_i``.

    For a scalarisation ``f`` of the losses, ``value = f(L̄)`` and ``weights = ∇f(L̄)`` at the
    process-mean losses ``L̄``: each process backpropagates its own losses with the same
    coefficients, so the averaged gradient is that of ``f`` at the mean losses (without DDP,
    ``L̄ = L`` and this is exactly ``f(L)`` and its gradient).
    """
    weights = weights.to(losses.dtype)
    loss = value.to(losses.dtype) + (weights * (losses - losses.detach())).sum()
    return WeightedLoss(loss, weights.detach())
