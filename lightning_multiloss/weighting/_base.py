"""The strategy contract: a :class:`Weighting` turns per-task losses into one loss."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from lightning_multiloss.errors import MultiLossError


class WeightedLoss(NamedTuple):
    """What a weighting returns for one step."""

    loss: Tensor
    """The scalar that Lightning backpropagates."""
    weights: Tensor
    """``(K,)``, detached: the effective weight of each task in ``loss`` (for logging)."""


@dataclass(frozen=True)
class Progress:
    """Where training stands, as the Callback reports it before each optimizer step."""

    step: int
    """Optimizer steps completed (``trainer.global_step``), not batches."""
    epoch: int
    """Epochs completed (``trainer.current_epoch``)."""
    total_steps: int | None = None
    """The planned number of optimizer steps, when known."""


class Weighting(nn.Module, ABC):
    """Base class of every loss-weighting strategy.

    A strategy is an ``nn.Module``: learnable weights are its ``nn.Parameter``s (so they reach
    the optimizer, DDP and checkpoints like any other parameter), running state lives in
    buffers. It is created with its hyper-parameters only, then :meth:`bind` gives it the task
    names (the mixin does that), which is when parameters sized by the number of tasks are built.

    Subclasses implement :meth:`build` (optional) and :meth:`forward`; the Callback calls the
    hooks :meth:`set_progress`, :meth:`after_optimizer_step` and :meth:`on_epoch_losses`.
    ``self.training`` tells a training step from an evaluation one: evaluation must not change
    any state.
    """

    name: ClassVar[str] = ""
    """Registry name, set by :func:`~lightning_multiloss.weighting.register`."""
    min_tasks: ClassVar[int] = 1
    max_tasks: ClassVar[int | None] = None
    uses_epoch_losses: ClassVar[bool] = False
    """Whether the mixin must accumulate each task's epoch-mean training loss for this strategy."""

    def __init__(self) -> None:
        super().__init__()
        self._task_names: tuple[str, ...] = ()

    # -- binding --------------------------------------------------------------------------
    @property
    def task_names(self) -> tuple[str, ...]:
        """The task names, in the order of the loss vector (empty before :meth:`bind`)."""
        return self._task_names

    @property
    def num_tasks(self) -> int:
        return len(self._task_names)

    def bind(self, task_names: Sequence[str]) -> None:
        """Attach the strategy to its tasks and build what depends on their number."""
        names = tuple(task_names)
        if self._task_names:
            if names != self._task_names:
                raise MultiLossError(
                    f"weighting {self.name!r} is already bound to tasks {list(self._task_names)}, "
                    f"cannot bind it to {list(names)}; create one weighting per model"
                )
            return
        k = len(names)
        if k < self.min_tasks:
            raise MultiLossError(
                f"weighting {self.name!r} needs at least {self.min_tasks} tasks, got {k}: {list(names)}"
            )
        if self.max_tasks is not None and k > self.max_tasks:
            raise MultiLossError(
                f"weighting {self.name!r} takes at most {self.max_tasks} tasks, got {k}: {list(names)}"
            )
        self._task_names = names
        self.build(k)

    def build(self, num_tasks: int) -> None:
        """Create parameters and buffers sized by ``num_tasks`` (called once, by :meth:`bind`)."""

    def per_task(self, values: Sequence[float] | Mapping[str, float], what: str, default: float) -> list[float]:
        """Values in task order from a list (task order) or a dict by task name.

        A dict may leave tasks out (they get ``default``) but may not name a task the model
        lacks; a list must have exactly one value per task.
        """
        names = self._task_names
        if isinstance(values, Mapping):
            unknown = [key for key in values if key not in names]
            if unknown:
                raise MultiLossError(
                    f"weighting {self.name!r}: {what} names unknown task(s) {unknown}; the tasks are {list(names)}"
                )
            return [float(values.get(name, default)) for name in names]
        values = list(values)
        if len(values) != len(names):
            raise MultiLossError(
                f"weighting {self.name!r}: {what} has {len(values)} values for {len(names)} tasks {list(names)}"
            )
        return [float(v) for v in values]

    def check_weights(self, values: Sequence[float], what: str) -> list[float]:
        """Reject a negative, NaN or infinite weight, naming its task."""
        names = self._task_names or tuple(str(i) for i in range(len(values)))
        return [check_weight(self.name, name, value, what) for name, value in zip(names, values, strict=True)]

    # -- the step -------------------------------------------------------------------------
    @abstractmethod
    def forward(self, losses: Tensor) -> WeightedLoss:
        """Combine the ``(K,)`` task losses (in :attr:`task_names` order) into one loss."""

    # -- hooks called by the Callback -----------------------------------------------------
    def set_progress(self, progress: Progress) -> None:
        """Called before each training batch with the current :class:`Progress`."""

    def after_optimizer_step(self) -> None:
        """Called after each optimizer step: constraints and post-step updates."""

    def on_epoch_losses(self, epoch_losses: Tensor) -> None:
        """Called at each training epoch's end with the ``(K,)`` epoch-mean task losses.

        Only for strategies with ``uses_epoch_losses = True``; the means are over all
        processes, so every rank receives the same values. A task's mean leaves out the batches
        without any labelled sample of it (0 if it had none in the epoch).
        """

    @property
    def needs_callback(self) -> bool:
        """Whether this strategy relies on the Callback's hooks (a fixed sum does not)."""
        cls = type(self)
        return (
            cls.set_progress is not Weighting.set_progress
            or cls.after_optimizer_step is not Weighting.after_optimizer_step
            or cls.uses_epoch_losses
        )

    def extra_repr(self) -> str:
        return f"tasks={list(self._task_names)}" if self._task_names else ""


def check_weight(strategy: str, task: str, value: float, what: str = "weight") -> float:
    """``value`` as a float, or an error naming the strategy and task if negative, NaN or infinite."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise MultiLossError(
            f"weighting {strategy!r}: {what} for task {task!r} must be a number, got {value!r}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise MultiLossError(f"weighting {strategy!r}: {what} for task {task!r} must be finite and >= 0, got {value}")
    return value


def weighted_sum(weights: Tensor, losses: Tensor) -> WeightedLoss:
    """``Σ wᵢ Lᵢ`` with the weights reported detached."""
    return WeightedLoss(torch.dot(weights.to(losses.dtype), losses), weights.detach())
