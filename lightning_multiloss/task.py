"""A task: one output branch, its loss, where its target is, and how to score it."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lightning_multiloss.errors import MultiLossError

LossFn = Callable[[Tensor, Tensor], Tensor]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass
class Task:
    """One output branch of a multi-task model.

    Args:
        name: the key of this task's output in ``forward``'s dict, and of its logs
            (``train/loss/<name>``): letters, digits, ``_`` and ``-``, not starting with a digit.
        loss: ``loss(output, target) -> scalar`` (an ``nn.Module`` such as
            ``nn.CrossEntropyLoss()`` or a function such as ``F.mse_loss``).
        target: the key of the target in the batch (default: the task's name). Several tasks
            may read the same key (a reconstruction task reads the input).
        metrics: torchmetrics metrics by name, computed on validation and test
            (logged as ``val/<metric>/<task>``).
        mask: the key of a per-sample boolean mask in the batch: only samples where it is true
            count for this task's loss and metrics.
        ignore_value: a target value that marks a missing label (``-100``, ``float("nan")``):
            samples whose target is all ``ignore_value`` are left out.

    A batch in which no sample has a label for a task contributes ``0 * output.sum()`` for it:
    zero, but still in the graph, so DDP does not hang on unused parameters.
    """

    name: str
    loss: LossFn
    target: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    mask: str | None = None
    ignore_value: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise MultiLossError(
                f"task name {self.name!r} cannot be used in logging keys: use letters, digits, '_' and '-', "
                "not starting with a digit (no '/', '.', or spaces)"
            )
        if not callable(self.loss):
            raise MultiLossError(f"task {self.name!r}: loss must be callable, got {type(self.loss).__name__}")
        if self.target is None:
            self.target = self.name
        for metric_name in self.metrics:
            if not isinstance(metric_name, str) or not _NAME.fullmatch(metric_name):
                raise MultiLossError(f"task {self.name!r}: metric name {metric_name!r} cannot be used in logging keys")

    @property
    def target_key(self) -> str:
        assert self.target is not None  # set in __post_init__
        return self.target

    @property
    def has_selection(self) -> bool:
        return self.mask is not None or self.ignore_value is not None

    def select(self, output: Tensor, target: Tensor, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """The samples that have a label for this task (all of them without a mask)."""
        keep: Tensor | None = None
        if self.mask is not None:
            if self.mask not in batch:
                raise MultiLossError(
                    f"task {self.name!r}: the batch has no mask key {self.mask!r}; it has {sorted(batch)}"
                )
            keep = torch.as_tensor(batch[self.mask], device=target.device).reshape(target.shape[0], -1).all(dim=1)
            keep = keep.bool()
        if self.ignore_value is not None:
            flat = target.reshape(target.shape[0], -1)
            if isinstance(self.ignore_value, float) and math.isnan(self.ignore_value):
                missing = torch.isnan(flat).all(dim=1)
            else:
                missing = (flat == self.ignore_value).all(dim=1)
            keep = ~missing if keep is None else keep & ~missing
        if keep is None:
            return output, target
        return output[keep], target[keep]
