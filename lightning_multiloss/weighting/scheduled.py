"""Weights that follow a schedule of training progress."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_multiloss.errors import MultiLossError, first_line
from lightning_multiloss.schedules import ScheduleLike, as_schedule
from lightning_multiloss.weighting._base import Progress, WeightedLoss, Weighting, weighted_sum
from lightning_multiloss.weighting._common import as_number, check_weight, per_task_values
from lightning_multiloss.weighting._registry import register

Unit = Literal["step", "epoch", "fraction"]


@register("scheduled")
class Scheduled(Weighting):
    r"""Task weights that follow schedules of training progress.

    With one schedule and two tasks, the schedule is the weight ``alpha`` of the first task:

    .. math:: L = \alpha(t)\,L_1 + (1 - \alpha(t))\,L_2, \qquad \alpha(t) \in [0, 1]

    With one schedule per task (a list in task order, or a dict by task name; tasks a dict
    leaves out keep weight 1), :math:`L = \sum_i w_i(t) L_i`.

    The Callback sets ``t`` before every training batch from the trainer's counters, so the
    weights are a function of progress alone and a resumed run continues them exactly.

    Versus the peers: LibMTL and TorchJD have no scheduled weights; nothing to differ from.

    Args:
        schedule: a :mod:`~lightning_multiloss.schedules` schedule, any callable
            ``t -> value``, or a number (a constant); or a list / dict of those, one per task.
        unit: what ``t`` counts: ``"step"`` (optimizer steps: gradient accumulation does not
            speed the schedule up), ``"epoch"``, or ``"fraction"`` of the planned optimizer steps
            (at most 1: past the plan, the schedules hold their values at 1).

    Example:
        >>> import torch
        >>> from lightning_multiloss.schedules import Linear
        >>> from lightning_multiloss.weighting import Progress, Scheduled
        >>> w = Scheduled(Linear(start=1.0, end=0.0, duration=100))
        >>> w.bind(["digit", "recon"])
        >>> w.set_progress(Progress(step=25, epoch=0))
        >>> w.weights
        tensor([0.7500, 0.2500])
    """

    def __init__(
        self,
        schedule: ScheduleLike | float | Sequence[ScheduleLike | float] | Mapping[str, ScheduleLike | float],
        unit: Unit = "step",
    ) -> None:
        super().__init__()
        if unit not in ("step", "epoch", "fraction"):
            raise MultiLossError(f"weighting 'scheduled': unit must be 'step', 'epoch' or 'fraction', got {unit!r}")
        self.unit: Unit = unit
        _refuse_classes(schedule)
        self._spec = schedule
        self._schedules: list[Callable[[float], float]] = []
        self._alpha = False
        self._last: list[float] | None = None
        self.weights: Tensor

    def build(self, num_tasks: int) -> None:
        spec = self._spec
        if isinstance(spec, Mapping) or (isinstance(spec, Sequence) and not isinstance(spec, str)):
            per_task = per_task_values(self.name, self.task_names, spec, "schedule", 1.0, "schedules")
            self._schedules = [
                as_schedule(s, f"schedule of task {n!r}") for s, n in zip(per_task, self.task_names, strict=True)
            ]
        else:
            if num_tasks != 2:
                raise MultiLossError(
                    f"weighting 'scheduled': a single schedule is the alpha of two tasks, but there are "
                    f"{num_tasks} tasks {list(self.task_names)}; give one schedule per task"
                )
            self._alpha = True
            self._schedules = [as_schedule(spec, "schedule of alpha")]
        # Persistent, so a checkpoint shows the weights in force when it was written.
        values = self.values_at(0.0)
        self.register_buffer("weights", torch.tensor(values))
        self._last = torch.tensor(values, device="cpu").tolist()  # as stored (the default float dtype's rounding)

    def values_at(self, t: float) -> list[float]:
        """The task weights at progress ``t`` (checked: finite, non-negative, alpha in [0, 1])."""
        values = [self._evaluate(i, t) for i in range(len(self._schedules))]
        if self._alpha:
            alpha = as_number(self.name, f"the value of alpha's schedule at t={t}", values[0])
            if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
                first, second = self.task_names
                raise MultiLossError(
                    f"weighting 'scheduled': alpha (the weight of task {first!r}; task {second!r} gets 1 - alpha) "
                    f"must be in [0, 1], the schedule gave {alpha} at t={t}"
                )
            return [alpha, 1.0 - alpha]
        what = f"the scheduled weight at t={t}"
        return [check_weight(self.name, n, v, what) for v, n in zip(values, self.task_names, strict=True)]

    def _evaluate(self, index: int, t: float) -> Any:
        """The value of schedule ``index`` at ``t``; an error of a user's schedule as a
        :class:`MultiLossError` naming the task (or alpha) and ``t`` (the original as its cause), which
        the plan check reports before training and the Callback's end-of-fit row tolerates."""
        try:
            return self._schedules[index](t)
        except Exception as error:
            whose = "alpha" if self._alpha else f"task {self.task_names[index]!r}"
            raise MultiLossError(
                f"weighting 'scheduled': the schedule of {whose} raised {type(error).__name__} "
                f"at t={t}: {first_line(error)}"
            ) from error

    def progress_value(self, progress: Progress) -> float:
        """``t`` in this weighting's unit."""
        if self.unit == "step":
            return float(progress.step)
        if self.unit == "epoch":
            return float(progress.epoch)
        if not progress.total_steps or progress.total_steps <= 0 or not math.isfinite(progress.total_steps):
            raise MultiLossError(
                "weighting 'scheduled': unit='fraction' needs the planned number of optimizer steps; "
                "set max_steps or max_epochs on the Trainer (max_time alone gives no length)"
            )
        # A resumed run that keeps its first plan goes past it: the schedules hold their end values.
        return min(progress.step / progress.total_steps, 1.0)

    def check_plan(self, progress: Progress) -> None:
        """Check the weights at every step of the planned run, before the first one.

        ``t`` takes the values training will give it: each optimizer step from now to the last
        of this fit (at most 2001 of them, evenly spread, on a longer run), or each epoch for
        ``unit="epoch"``. A value out of range (negative, non-finite, alpha outside [0, 1]) fails
        now, naming the task and ``t``, not when training reaches it, and so does an error raised by
        a schedule of one's own. Without a known end (no ``max_steps`` or ``max_epochs``) only the
        start is checked. The point after the last step, where the Callback computes the weights in
        force when training ends, trains nothing and is not checked: a schedule invalid there (or
        that raises there, such as ``1 / (N - t)``) leaves the last step's weights in that end row.
        """
        self.progress_value(progress)  # fails now for unit="fraction" without a planned length
        if self.unit == "epoch":
            first, last = progress.epoch, (progress.total_epochs or progress.epoch + 1) - 1
        else:
            steps = progress.fit_steps if progress.fit_steps is not None else progress.total_steps
            first, last = progress.step, (steps - 1 if steps else progress.step)  # steps 0 .. N - 1 train
        if last - first > 2000:
            points = sorted({first + round((last - first) * i / 2000) for i in range(2001)})
        else:
            points = list(range(first, max(last, first) + 1))
        for point in points:
            at = Progress(step=point, epoch=point, total_steps=progress.total_steps, total_epochs=progress.total_epochs)
            try:
                self.values_at(self.progress_value(at))
            except MultiLossError as error:
                # The cause is a user's schedule's own error, where it raised one.
                raise MultiLossError(f"{error} (checked over the planned run, before the first step)") from (
                    error.__cause__
                )

    @property
    def follows_planned_length(self) -> bool:
        """Only ``unit="fraction"`` divides by the planned number of steps."""
        return self.unit == "fraction"

    def set_progress(self, progress: Progress) -> None:
        values = self.values_at(self.progress_value(progress))
        if values != self._last:  # copy to the device only when a value changes
            # Built in float64: under precision="64-true" the buffer keeps the schedule's own value.
            self.weights.copy_(torch.tensor(values, dtype=torch.float64))
            self._last = values

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._last = None  # the loaded buffer may differ from what this config computes

    def current_weights(self) -> Tensor:
        """The weights at the progress the Callback gave last, before a step: those of the step in
        progress, or of the last one done (a loaded checkpoint's too); the next step's are the
        schedule's at its own progress (:meth:`values_at`)."""
        return self.weights.detach().clone()

    def forward(self, losses: Tensor) -> WeightedLoss:
        return weighted_sum(self.weights, losses)


def _refuse_classes(spec: object) -> None:
    """Refuse a schedule class given for a schedule (``Scheduled(Linear)``): it is callable, so it
    would be taken for a schedule and fail at the first weights, with a TypeError from its __init__."""
    if isinstance(spec, Mapping):
        items: list[tuple[str, object]] = [(f"schedule of task {k!r}", v) for k, v in spec.items()]
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        items = [(f"schedule at index {i} of the list", v) for i, v in enumerate(spec)]
    else:
        items = [("schedule of alpha", spec)]
    for where, value in items:
        if isinstance(value, type):
            raise MultiLossError(
                f"weighting 'scheduled': the {where} is the class {value.__name__}, not a schedule: "
                f"create one, e.g. {value.__name__}(...) with its arguments"
            )
