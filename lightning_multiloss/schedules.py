"""Schedules: a value as a function of training progress ``t``.

``t`` is counted in the unit the :class:`~lightning_multiloss.weighting.Scheduled` weighting
chooses: optimizer steps (gradient accumulation does not speed a schedule up), epochs, or the
fraction of the planned optimizer steps (``0.0`` at the start, ``1.0`` at the end).

A schedule is a pure function of ``t``: it keeps no state, so resuming from a checkpoint (which
restores the step and epoch counters) continues it exactly where it was. Any callable
``float -> float`` is accepted where a schedule is expected.

Example:
    >>> from lightning_multiloss.schedules import Linear, Piecewise
    >>> Linear(start=1.0, end=0.0, duration=10)(5)
    0.5
    >>> Piecewise([(0, 0.0), (10, 1.0), (20, 1.0)])(15)
    1.0
"""

from __future__ import annotations

import itertools
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias

from lightning_multiloss._checkpoints import allow_own_class_in_checkpoints
from lightning_multiloss._numbers import real_number
from lightning_multiloss.errors import MultiLossError

ScheduleLike: TypeAlias = "Schedule | Callable[[float], float]"


def _require(condition: bool, schedule: str, message: str) -> None:
    if not condition:
        raise MultiLossError(f"{schedule} schedule: {message}")


def _finite(value: object, schedule: str, name: str) -> float:
    # A number, not a string, Hydra's null or a bool (float() would take "0.5" and True).
    _require(
        not isinstance(value, bool | str | bytes) and isinstance(value, numbers.Real),
        schedule,
        f"{name} must be a number, got {value!r}",
    )
    assert isinstance(value, numbers.Real)
    number = float(value)
    _require(math.isfinite(number), schedule, f"{name} must be finite, got {number}")
    return number


def _sequence(values: object, schedule: str, name: str) -> list[object]:
    """``values`` as a list: a list or tuple, not a string, ``None`` or a scalar."""
    _require(
        isinstance(values, Sequence) and not isinstance(values, str | bytes),
        schedule,
        f"{name} must be a list, got {values!r}",
    )
    assert isinstance(values, Sequence)
    return list(values)


def _positive(value: float, schedule: str, name: str) -> float:
    value = _finite(value, schedule, name)
    _require(value > 0, schedule, f"{name} must be > 0, got {value}")
    return value


def _non_negative(value: float, schedule: str, name: str) -> float:
    value = _finite(value, schedule, name)
    _require(value >= 0, schedule, f"{name} must be >= 0, got {value}")
    return value


class Schedule(ABC):
    """A value as a function of training progress ``t`` (see the module docstring)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        allow_own_class_in_checkpoints(cls)  # a schedule among the arguments that save_hyperparameters() keeps

    @abstractmethod
    def __call__(self, t: float) -> float:
        """The value at progress ``t``."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Constant(Schedule):
    """``value`` at every ``t``."""

    def __init__(self, value: float) -> None:
        self.value = _finite(value, "constant", "value")

    def __call__(self, t: float) -> float:
        return self.value


class _Ramp(Schedule):
    """From ``start`` to ``end`` over ``[delay, delay + duration]``, constant outside."""

    kind = "ramp"

    def __init__(self, start: float, end: float, duration: float, delay: float = 0.0) -> None:
        self.start = _finite(start, self.kind, "start")
        self.end = _finite(end, self.kind, "end")
        self.duration = _positive(duration, self.kind, "duration")
        self.delay = _non_negative(delay, self.kind, "delay")

    def progress(self, t: float) -> float:
        return min(max((t - self.delay) / self.duration, 0.0), 1.0)


class Linear(_Ramp):
    r"""Linear ramp: :math:`v(t) = s + (e - s)\,p`, :math:`p = \mathrm{clip}((t - d)/D, 0, 1)`."""

    kind = "linear"

    def __call__(self, t: float) -> float:
        return self.start + (self.end - self.start) * self.progress(t)


class Cosine(_Ramp):
    r"""Cosine ramp: :math:`v(t) = s + (e - s)\,(1 - \cos \pi p)/2`, ``p`` as in :class:`Linear`."""

    kind = "cosine"

    def __call__(self, t: float) -> float:
        return self.start + (self.end - self.start) * (1.0 - math.cos(math.pi * self.progress(t))) / 2.0


class Exponential(Schedule):
    r"""Exponential decay or growth: :math:`v(t) = s\,\gamma^{t}`, optionally clipped to bounds."""

    def __init__(
        self,
        start: float,
        gamma: float,
        min_value: float | None = None,
        max_value: float | None = None,
    ) -> None:
        self.start = _finite(start, "exponential", "start")
        self.gamma = _positive(gamma, "exponential", "gamma")
        self.min_value = None if min_value is None else _finite(min_value, "exponential", "min_value")
        self.max_value = None if max_value is None else _finite(max_value, "exponential", "max_value")
        if self.min_value is not None and self.max_value is not None:
            _require(
                self.min_value <= self.max_value,
                "exponential",
                f"min_value must be <= max_value, got min_value={self.min_value} and max_value={self.max_value}",
            )

    def __call__(self, t: float) -> float:
        try:
            value = self.start * self.gamma**t
        except OverflowError:  # far past a growth schedule's cap: the bounds below still apply
            value = math.copysign(math.inf, self.start) if self.start != 0 else 0.0
        if self.min_value is not None:
            value = max(value, self.min_value)
        if self.max_value is not None:
            value = min(value, self.max_value)
        return value


class Step(Schedule):
    """Piecewise constant: ``values[i]`` from ``milestones[i - 1]`` (inclusive) to ``milestones[i]``.

    ``Step(milestones=[10, 20], values=[1.0, 0.5, 0.1])`` is 1.0 before ``t = 10``, 0.5 on
    ``[10, 20)`` and 0.1 from 20 on (the milestones of ``torch.optim.lr_scheduler.MultiStepLR``).
    """

    def __init__(self, milestones: Sequence[float], values: Sequence[float]) -> None:
        self.milestones = [_finite(m, "step", "milestone") for m in _sequence(milestones, "step", "milestones")]
        self.values = [_finite(v, "step", "value") for v in _sequence(values, "step", "values")]
        _require(
            len(self.values) == len(self.milestones) + 1,
            "step",
            f"needs one more value than milestones, got {len(self.milestones)} milestones "
            f"and {len(self.values)} values",
        )
        _require(
            all(a < b for a, b in zip(self.milestones, self.milestones[1:], strict=False)),
            "step",
            f"milestones must be strictly increasing, got {self.milestones}",
        )

    def __call__(self, t: float) -> float:
        passed = sum(1 for m in self.milestones if t >= m)
        return self.values[passed]


class Warmup(Schedule):
    """Linear warm-up from ``start`` to ``value`` over ``duration``, then constant ``value``."""

    def __init__(self, value: float, duration: float, start: float = 0.0) -> None:
        self.value = _finite(value, "warmup", "value")
        self.duration = _positive(duration, "warmup", "duration")
        self.start = _finite(start, "warmup", "start")

    def __call__(self, t: float) -> float:
        p = min(max(t / self.duration, 0.0), 1.0)
        return self.start + (self.value - self.start) * p


class Cyclic(Schedule):
    """Periodic between ``low`` and ``high`` (starting at ``low``), a triangle or a cosine wave."""

    def __init__(
        self,
        low: float,
        high: float,
        period: float,
        shape: Literal["triangle", "cosine"] = "triangle",
    ) -> None:
        self.low = _finite(low, "cyclic", "low")
        self.high = _finite(high, "cyclic", "high")
        self.period = _positive(period, "cyclic", "period")
        _require(shape in ("triangle", "cosine"), "cyclic", f"shape must be 'triangle' or 'cosine', got {shape!r}")
        self.shape = shape

    def __call__(self, t: float) -> float:
        phase = (t % self.period) / self.period
        p = 1.0 - abs(2.0 * phase - 1.0) if self.shape == "triangle" else (1.0 - math.cos(2.0 * math.pi * phase)) / 2.0
        return self.low + (self.high - self.low) * p


class Piecewise(Schedule):
    """Piecewise linear through ``points`` ``[(t0, v0), (t1, v1), ...]``; constant outside them."""

    def __init__(self, points: Sequence[Sequence[float]]) -> None:
        pairs: list[tuple[float, float]] = []
        for point in _sequence(points, "piecewise", "points"):
            _require(
                isinstance(point, Sequence) and not isinstance(point, str | bytes) and len(point) == 2,
                "piecewise",
                f"each point is a pair (t, value), got {point!r}",
            )
            assert isinstance(point, Sequence)
            pairs.append((_finite(point[0], "piecewise", "t"), _finite(point[1], "piecewise", "value")))
        _require(len(pairs) >= 1, "piecewise", "needs at least one point")
        _require(
            all(a[0] < b[0] for a, b in itertools.pairwise(pairs)),
            "piecewise",
            f"the points' t must be strictly increasing, got {[p[0] for p in pairs]}",
        )
        self.points = pairs

    def __call__(self, t: float) -> float:
        points = self.points
        if t <= points[0][0]:
            return points[0][1]
        for (t0, v0), (t1, v1) in itertools.pairwise(points):
            if t <= t1:
                return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
        return points[-1][1]


SCHEDULES: dict[str, type[Schedule]] = {
    "constant": Constant,
    "linear": Linear,
    "cosine": Cosine,
    "exponential": Exponential,
    "step": Step,
    "warmup": Warmup,
    "cyclic": Cyclic,
    "piecewise": Piecewise,
}
"""Schedules by name (the names of the Hydra ``schedule`` group)."""


def as_schedule(value: ScheduleLike | float, where: str) -> Callable[[float], float]:
    """A schedule from a :class:`Schedule`, a callable, or a number (a constant)."""
    if isinstance(value, bool):
        raise MultiLossError(f"{where}: expected a schedule, a callable or a number, got {value!r}")
    number = real_number(value)  # a NumPy scalar or a 0-d tensor too
    if number is not None:
        try:
            return Constant(number)
        except MultiLossError as error:  # name the task or alpha: the value alone does not say whose
            raise MultiLossError(f"{where}: {error}") from None
    if callable(value):
        return value
    raise MultiLossError(f"{where}: expected a schedule, a callable or a number, got {type(value).__name__}")
