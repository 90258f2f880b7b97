"""What the mixin logs, and under which keys: the key scheme, the metrics by task, the best-so-far values."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_multiloss._numbers import out_of_half_precision
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.task import Task, flatten_metrics

_MultitaskWrapper: Any
try:
    from torchmetrics.wrappers import MultitaskWrapper as _MultitaskWrapper
except ImportError:  # pragma: no cover - torchmetrics < 1.1 has no MultitaskWrapper
    _MultitaskWrapper = None

MetricKeys = Literal["stage/metric/task", "stage/task/metric"]
METRIC_KEYS: tuple[str, ...] = ("stage/metric/task", "stage/task/metric")


@dataclass(frozen=True)
class KeyScheme:
    """The logging key of a value of one task: ``<stage>/<name>/<task>`` or ``<stage>/<task>/<name>``.

    ``name`` is ``loss``, ``weight``, a metric's name or that name with ``_best``. With
    ``single_task`` set (``single_task_keys=True`` and one task) the task part is left out,
    ``<stage>/<name>``, except for the task's loss, which would take the combined loss's key.

    Example:
        >>> KeyScheme().key("val", "acc", "digit"), KeyScheme("stage/task/metric").key("val", "acc", "digit")
        ('val/acc/digit', 'val/digit/acc')
        >>> single = KeyScheme(single_task=True)
        >>> single.key("val", "acc", "digit"), single.key("val", "loss", "digit")
        ('val/acc', 'val/loss/digit')
    """

    order: MetricKeys = "stage/metric/task"
    single_task: bool = False

    def key(self, stage: str, name: str, task: str) -> str:
        if self.single_task and name != "loss":
            return f"{stage}/{name}"
        if self.order == "stage/task/metric":
            return f"{stage}/{task}/{name}"
        return f"{stage}/{name}/{task}"


def metrics_by_task(tasks: Sequence[Task], extra: Any) -> dict[str, dict[str, Metric]]:
    """``{task: {name: Metric}}``: each task's own metrics and those given to ``configure_multitask``.

    ``extra`` is ``None``, a torchmetrics ``MultitaskWrapper``, or a dict ``{task: metrics}`` whose
    values are what :class:`Task` takes as ``metrics`` (a dict, a ``MetricCollection``, one metric).
    """
    found = {task.name: task.named_metrics for task in tasks}
    if extra is None:
        return found
    if _MultitaskWrapper is not None and isinstance(extra, _MultitaskWrapper):
        extra = dict(extra.task_metrics.items())
    if not isinstance(extra, Mapping):
        raise MultiLossError(
            f"metrics must be a torchmetrics MultitaskWrapper or a dict {{task: metrics}}, got {type(extra).__name__}"
        )
    unknown = sorted(str(name) for name in extra if name not in found)
    if unknown:
        raise MultiLossError(f"metrics: no task named {unknown}; the tasks are {list(found)}")
    for name, spec in extra.items():
        added = flatten_metrics(f"metrics for task {name!r}", spec)
        twice = sorted(set(added) & set(found[name]))
        if twice:
            raise MultiLossError(f"task {name!r}: metric(s) {twice} given both in its Task and in metrics=")
        found[name] = {**found[name], **added}
    return found


LOADER_SUFFIX = "/dataloader_idx_"
"""What Lightning appends to a key logged for one of several evaluation dataloaders, before its index."""


def loader_key(key: str, loader: int) -> str:
    """``key`` as Lightning logs it for evaluation dataloader ``loader`` when there are several."""
    return f"{key}{LOADER_SUFFIX}{loader}"


def check_unique_keys(keys: Sequence[str]) -> None:
    """Two values logged under one key would overwrite each other: name the key instead."""
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise MultiLossError(
                f"two logged values would share the key {key!r}: rename the task or metric it comes from "
                "(a task named 'a_epoch' beside 'a' meets a's epoch mean), or choose another metric_keys"
            )
        seen.add(key)


class BestValues(nn.Module):
    """Best-so-far epoch values, the largest or the smallest of each, kept in checkpoints.

    Like torchmetrics' ``MaxMetric`` and ``MinMetric`` as lightning-hydra-template uses them, as one
    buffer (plain tensors: a checkpoint holds them and loads with ``weights_only=True``). NaN
    values are left out. Updated with the epoch's values, which are the same on every process.

    Example:
        >>> best = BestValues([True, False])  # an accuracy, a loss
        >>> best.update(0, torch.tensor(0.5)), best.update(1, torch.tensor(2.0))
        (tensor(0.5000), tensor(2.))
        >>> best.update(0, torch.tensor(0.25)), best.update(1, torch.tensor(1.0))
        (tensor(0.5000), tensor(1.))
    """

    values: Tensor

    def __init__(self, higher_is_better: Sequence[bool]) -> None:
        super().__init__()
        self.higher_is_better = tuple(bool(h) for h in higher_is_better)
        self.register_buffer("values", torch.tensor(self._unseen(), dtype=torch.float32))

    def update(self, index: int, value: Tensor) -> Tensor:
        """Take ``value`` (a scalar) into entry ``index``; returns the best so far."""
        old = self.values[index]
        value = value.detach().to(old.device, old.dtype)
        best = torch.fmax(old, value) if self.higher_is_better[index] else torch.fmin(old, value)
        self.values[index] = best
        return best.clone()

    def reset_parameters(self) -> None:
        """No value seen yet (a module made on the meta device, given memory by ``to_empty``)."""
        with torch.no_grad():
            self.values.copy_(torch.tensor(self._unseen(), device="cpu"))

    def _unseen(self) -> list[float]:
        """Each entry's start: the worst value, which any other one beats."""
        return [-math.inf if higher else math.inf for higher in self.higher_is_better]

    def _apply(self, fn: Any, recurse: bool = True) -> BestValues:
        # Lightning's half precisions convert the module with .to(dtype): the best values would be
        # rounded to bfloat16 (and compared in it); they follow the module's device only.
        kept = self.values
        super()._apply(fn, recurse)
        self.values = out_of_half_precision(kept, self.values)
        return self
