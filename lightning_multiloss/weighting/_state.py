"""Epoch statistics that declare their own reduction over processes (the torchmetrics way)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric

from lightning_multiloss._checkpoints import allow_in_checkpoints, state_functions
from lightning_multiloss._dist import all_reduce_sum


def keep_sums_precise(metric: Metric, state: Tensor, values: Tensor) -> None:
    """Keep ``metric``'s states float32, or float64 for float64 values, whatever the module's dtype.

    Lightning's half precisions (``"bf16-true"``, ``"16-true"``) convert a module with
    ``.to(dtype)``, metric states included, where a bfloat16 sum stops growing at 256; torchmetrics
    leaves the states float32 when the module is converted with ``.double()``
    (``precision="64-true"``). ``state`` is one of the metric's states, read for its dtype.
    """
    wanted = torch.promote_types(values.dtype, torch.float32)
    if state.dtype is not wanted and state.dtype is not torch.float64:
        metric.set_dtype(wanted)


def apply_from_zero(metric: Metric, apply: Callable[[], object]) -> None:
    """Run ``apply`` (the metric's ``Module._apply``), then set the defaults of its states (what
    :meth:`~torchmetrics.Metric.reset` restores) to zeros, as each of this module's metrics starts,
    and the states too where they were meta tensors: ``to_empty`` (a module made on the meta
    device), which torchmetrics applies to the defaults as well, left uninitialised memory there,
    so every epoch's means started from it."""
    was_meta = any(isinstance(v, Tensor) and v.is_meta for v in metric.metric_state.values())
    apply()
    for name, default in metric._defaults.items():
        if isinstance(default, Tensor) and not default.is_meta:
            metric._defaults[name] = torch.zeros_like(default)
    if was_meta and not any(isinstance(v, Tensor) and v.is_meta for v in metric.metric_state.values()):
        metric.reset()


class EvaluationMean(MeanMetric):
    """torchmetrics' :class:`~torchmetrics.MeanMetric` whose states stay float32 under half precisions.

    Example:
        >>> import torch
        >>> mean = EvaluationMean().to(torch.bfloat16)
        >>> for _ in range(1000):
        ...     mean.update(torch.tensor(1.0, dtype=torch.bfloat16), 8)
        >>> mean.compute()
        tensor(1.)
    """

    def update(self, value: float | Tensor, weight: float | Tensor | None = None) -> None:
        if isinstance(value, Tensor):
            keep_sums_precise(self, self.mean_value, value)
        super().update(value, weight)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> EvaluationMean:
        apply_from_zero(self, lambda: super(EvaluationMean, self)._apply(fn, *args, **kwargs))
        return self


class TaskEpochMean(Metric):
    """Each task's mean training loss over an epoch, over the batches that had a label for it.

    A torchmetrics :class:`~torchmetrics.Metric`: its two states (the ``(K,)`` sums and counts)
    are summed over the DDP processes by :meth:`compute` and nowhere else. With ``persistent``
    they are saved in checkpoints, so a run resumed in the middle of an epoch keeps the epoch's
    running sums (under DDP, the Callback writes their total over the processes,
    :meth:`states_over_processes`, and the first process alone takes it back).
    :meth:`update` is a device operation: nothing waits for the device.

    Example:
        >>> import torch
        >>> mean = TaskEpochMean(2)
        >>> mean.add(torch.tensor([1.0, 4.0]))
        >>> mean.add(torch.tensor([3.0, 0.0]), labelled=torch.tensor([1.0, 0.0]))
        >>> mean.means()
        tensor([2., 4.])
    """

    full_state_update = False
    STATES: ClassVar[tuple[str, ...]] = ("total", "count", "batches")
    """The names of its states, as they appear in a state dict."""
    total: Tensor
    count: Tensor
    batches: Tensor

    def __init__(self, num_tasks: int, persistent: bool = True) -> None:
        super().__init__(compute_with_cache=False)
        self.add_state("total", torch.zeros(num_tasks), dist_reduce_fx="sum", persistent=persistent)
        self.add_state("count", torch.zeros(num_tasks), dist_reduce_fx="sum", persistent=persistent)
        self.add_state("batches", torch.zeros(()), dist_reduce_fx="sum", persistent=persistent)
        # Batches counted on the host since the states last took them in; a one-element list,
        # changed in place, because assigning an attribute of an nn.Module costs microseconds.
        self._all_labelled = [0]

    def update(self, losses: Tensor, labelled: Tensor | None = None) -> None:
        """torchmetrics' entry point: the same as :meth:`add`."""
        self.add(losses, labelled)

    def add(self, losses: Tensor, labelled: Tensor | None = None) -> None:
        """Add one batch's ``(K,)`` losses; ``labelled`` (``(K,)``, 0 or 1) leaves tasks out.

        The training step's entry point: one in-place addition on the device, without the
        bookkeeping of torchmetrics' ``update`` wrapper (a batch with every task labelled is
        counted on the host, and the count joins the states when they are read or saved).
        """
        keep_sums_precise(self, self.total, losses)
        if labelled is None:
            self.total.add_(losses.detach())
            self._all_labelled[0] += 1
        else:
            labelled = labelled.to(self.total)
            self.total.add_(losses.detach() * labelled)
            self.count.add_(labelled)
            self.batches.add_(1.0)

    def _flush(self) -> None:
        if self._all_labelled[0]:
            self.count.add_(float(self._all_labelled[0]))
            self.batches.add_(float(self._all_labelled[0]))
            self._all_labelled[0] = 0

    def compute(self) -> Tensor:
        """The ``(K,)`` epoch means (0 for a task without any labelled batch)."""
        return self.total / self.count.clamp_min(1.0)

    def means(self, empty: float = 0.0) -> Tensor:
        """The ``(K,)`` epoch means over all processes (reads the states: once per epoch);
        ``empty`` for a task without any labelled batch."""
        states = self.states_over_processes()
        count = states["count"]
        return torch.where(count > 0, states["total"] / count.clamp_min(1.0), empty)

    def states_over_processes(self) -> dict[str, Tensor]:
        """The states as saved (sums and counts), summed over the DDP processes: a collective, so
        every process must call it. The states themselves stay this process's."""
        self._flush()
        with self.sync_context(should_sync=True):
            return {name: getattr(self, name).clone() for name in self.STATES}

    def seen_any(self) -> bool:
        """Whether a batch was counted since the last reset, on any process: the same answer on
        every process (a collective under DDP: every process must call it; it reads the device, so
        off the hot path). A resumed run's running sums are on the first process only.
        """
        return bool(all_reduce_sum(self.batches + float(self._all_labelled[0])) > 0)

    def scale(self, factor: float) -> None:
        """Multiply the sums and counts by ``factor``, in place.

        They are over each process's batches: a run resumed on another number of processes
        (``factor`` = new / old) adds that many per optimizer step, and the restored batches would
        otherwise weigh ``1 / factor`` times those after the resume.
        """
        self._flush()
        for name in self.STATES:
            getattr(self, name).mul_(factor)

    def clear(self) -> None:
        """Zero the sums and counts in place, keeping their dtype (:meth:`reset` restores the
        float32 defaults)."""
        for name in self.STATES:
            getattr(self, name).zero_()
        self._all_labelled[0] = 0

    def reset(self) -> None:
        super().reset()
        self._all_labelled[0] = 0

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> TaskEpochMean:
        apply_from_zero(self, lambda: super(TaskEpochMean, self)._apply(fn, *args, **kwargs))
        return self

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        self._flush()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        if prefix + "count" in state_dict:  # read first: torchmetrics takes its states out of state_dict
            # The loaded states hold every batch counted when they were saved; batches counted on
            # the host since (the trial steps of a learning-rate finder, which restores its
            # checkpoint after them) are no part of them.
            self._all_labelled[0] = 0
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# A strategy pickled by save_hyperparameters() holds its epoch means, and these their reductions.
allow_in_checkpoints(TaskEpochMean, *state_functions(TaskEpochMean(1)))
