"""Epoch statistics that declare their own reduction over processes (the torchmetrics way)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class TaskEpochMean(Metric):
    """Each task's mean training loss over an epoch, over the batches that had a label for it.

    A torchmetrics :class:`~torchmetrics.Metric`: its two states (the ``(K,)`` sums and counts)
    are summed over the DDP processes by :meth:`compute` and nowhere else. With ``persistent``
    they are saved in checkpoints, so a run resumed in the middle of an epoch keeps the epoch's
    running sums.
    :meth:`update` is a device operation: nothing waits for the device.

    Example:
        >>> import torch
        >>> mean = TaskEpochMean(2)
        >>> mean.update(torch.tensor([1.0, 4.0]))
        >>> mean.update(torch.tensor([3.0, 0.0]), labelled=torch.tensor([1.0, 0.0]))
        >>> mean.means()
        tensor([2., 4.])
    """

    full_state_update = False
    total: Tensor
    count: Tensor
    batches: Tensor

    def __init__(self, num_tasks: int, persistent: bool = True) -> None:
        super().__init__(compute_with_cache=False)
        self.add_state("total", torch.zeros(num_tasks), dist_reduce_fx="sum", persistent=persistent)
        self.add_state("count", torch.zeros(num_tasks), dist_reduce_fx="sum", persistent=persistent)
        self.add_state("batches", torch.zeros(()), dist_reduce_fx="sum", persistent=persistent)

    def update(self, losses: Tensor, labelled: Tensor | None = None) -> None:
        """Add one batch's ``(K,)`` detached losses; ``labelled`` (``(K,)``, 0 or 1) leaves tasks out."""
        losses = losses.detach().to(self.total.dtype)
        self.batches += 1.0
        if labelled is None:
            self.total += losses
            self.count += 1.0
        else:
            labelled = labelled.to(self.total)
            self.total += losses * labelled
            self.count += labelled

    def compute(self) -> Tensor:
        """The ``(K,)`` epoch means over all processes (0 for a task without any labelled batch)."""
        return self.total / self.count.clamp_min(1.0)

    def means(self) -> Tensor:
        """:meth:`compute` as a ``(K,)`` vector (torchmetrics squeezes a one-task result to a scalar)."""
        return self.compute().reshape(self.total.shape)

    def seen_any(self) -> bool:
        """Whether a batch was counted since the last reset (reads the device: off the hot path).

        DDP training processes run the same number of batches, so this is the same on every process.
        """
        return bool(self.batches > 0)
