"""A task: one output branch, its loss, where its target is, and how to score it."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import Metric, MetricCollection

from lightning_multiloss.errors import MultiLossError, first_line

LossFn = Callable[[Tensor, Tensor], Tensor]

# Task, metric and strategy names: usable in config names and logging keys.
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


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
        metrics: torchmetrics metrics by name (a ``MetricCollection`` as a value contributes
            its members under their own names), or one ``MetricCollection``; computed on
            validation and test (logged as ``val/<metric>/<task>``), and on training steps with
            ``configure_multitask(train_metrics=True)``. ``loss`` and ``weight`` are taken.
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
    metrics: Mapping[str, Any] | MetricCollection = field(default_factory=dict)
    mask: str | None = None
    ignore_value: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise MultiLossError(
                f"task name {self.name!r} cannot be used in logging keys: use letters, digits, '_' and '-', "
                "not starting with a digit (no '/', '.', or spaces)"
            )
        if isinstance(self.loss, type):  # callable too, but calling it builds a loss, not a value
            raise MultiLossError(
                f"task {self.name!r}: loss is the class {self.loss.__name__}; pass an instance, "
                f"e.g. {self.loss.__name__}(), or a function such as torch.nn.functional.cross_entropy"
            )
        if not callable(self.loss):
            raise MultiLossError(f"task {self.name!r}: loss must be callable, got {type(self.loss).__name__}")
        if self.target is None:
            self.target = self.name
        flatten_metrics(f"task {self.name!r}", self.metrics)  # checks the types and the names
        if self.ignore_value is not None and (
            isinstance(self.ignore_value, bool) or not isinstance(self.ignore_value, int | float)
        ):
            raise MultiLossError(
                f"task {self.name!r}: ignore_value must be a number (e.g. -100 or float('nan')) or None, "
                f"got {self.ignore_value!r}"
            )

    @property
    def named_metrics(self) -> dict[str, Metric]:
        """The task's metrics by the name each is logged under (collections flattened)."""
        return flatten_metrics(f"task {self.name!r}", self.metrics)

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
            mask = self._mask_in(batch, target.device)
            # One entry per sample: (B,), or (B, 1) as a collated list of one-element tensors is. A
            # mask of several entries per sample (per element) would silently drop whole samples.
            if mask.numel() != target.shape[0] or (mask.ndim and mask.shape[0] != target.shape[0]):
                raise MultiLossError(
                    f"task {self.name!r}: the mask {self.mask!r} must hold one entry per sample (batch first), "
                    f"got shape {tuple(mask.shape)} for {target.shape[0]} samples of target {self.target_key!r}"
                    + (
                        "; to leave out single elements of a sample, give the task a loss that masks them"
                        if mask.ndim and mask.shape[0] == target.shape[0]
                        else ""
                    )
                )
            keep = mask.reshape(target.shape[0]).bool()
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

    def _mask_in(self, batch: Mapping[str, Any], device: torch.device | None = None) -> Tensor:
        """This task's mask in ``batch`` as a tensor (on ``device``, else where it is); an error names
        a missing or unreadable one."""
        assert self.mask is not None
        if self.mask not in batch:
            raise MultiLossError(f"task {self.name!r}: the batch has no mask key {self.mask!r}; it has {sorted(batch)}")
        try:
            return torch.as_tensor(batch[self.mask], device=device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise MultiLossError(
                f"task {self.name!r}: the mask {self.mask!r} must be a boolean tensor with one entry per "
                f"sample, got {type(batch[self.mask]).__name__}: {first_line(error)}"
            ) from error

    def check_mask_values(self, batch: Mapping[str, Any]) -> None:
        """Refuse a float mask holding values other than 0 and 1 (sample weights, NaN), which would
        count as labelled. It reads the mask (a boolean or integer one costs nothing): the mixin
        calls it on a task's first batch, as it checks class indices once."""
        if self.mask is None or self.mask not in batch:
            return  # select names a missing mask
        mask = self._mask_in(batch)
        if (mask.is_floating_point() or mask.is_complex()) and not bool(((mask == 0) | (mask == 1)).all()):
            raise MultiLossError(
                f"task {self.name!r}: the mask {self.mask!r} must be boolean, or hold 0 and 1 only; got other "
                f"values in a {mask.dtype} mask (a mask selects samples, it does not weight them)"
            )

    def check_target(self, output: Tensor, target: Any) -> None:
        """Reject a target that this task's loss cannot use, or that would broadcast silently.

        Shapes and dtypes only, so no wait for the device. For the class-index losses
        (cross-entropy, NLL) the target holds one integer class per sample (the output's shape
        without its class dimension) or class probabilities (the output's shape); for the
        element-wise losses (MSE, L1, Huber, smooth L1, BCE) the target has the output's shape.
        """
        if not isinstance(target, Tensor):
            raise MultiLossError(
                f"task {self.name!r}: the target must be a tensor, got {type(target).__name__} "
                f"(batch key {self.target_key!r})"
            )
        nan_marks_missing = isinstance(self.ignore_value, float) and math.isnan(self.ignore_value)
        if nan_marks_missing and not (target.is_floating_point() or target.is_complex()):
            raise MultiLossError(
                f"task {self.name!r}: ignore_value=nan never matches the {_dtype(target)} target {self.target_key!r} "
                "(an integer holds no NaN): give the value that marks a missing label in it, such as -100"
            )
        kind = _loss_kind(self.loss)
        if kind is None or output.ndim == 0:
            return
        shapes = (
            f"output {tuple(output.shape)} {_dtype(output)}, target {tuple(target.shape)} {_dtype(target)}, "
            f"loss {_loss_name(self.loss)}"
        )
        if kind == "classes":
            if output.ndim >= 2 and output.shape[1] == 1:
                raise MultiLossError(
                    f"task {self.name!r}: a loss over classes needs one output per class, the head has one "
                    f"({shapes}): a softmax over one class is always 1, so the loss is always 0 and the head never "
                    "learns; for a yes/no task use a binary loss on one logit (BCEWithLogitsLoss; multiloss-train: "
                    f"loss@model.tasks.{self.name}.loss=bce)"
                )
            indices_shape = output.shape[:1] + output.shape[2:]
            if target.shape == output.shape and target.is_floating_point():
                return  # class probabilities
            if target.shape != indices_shape:
                raise MultiLossError(
                    f"task {self.name!r}: the target must hold one class index per sample, shape "
                    f"{tuple(indices_shape)} (or class probabilities of the output's shape); got {shapes}"
                )
            if target.is_floating_point() or target.dtype == torch.bool:
                raise MultiLossError(
                    f"task {self.name!r}: class indices must be integers (torch.long); got {shapes}: "
                    "convert the target with .long()"
                )
            return
        if target.shape != output.shape:
            hint = "; it would broadcast to a wrong loss" if _broadcasts(output.shape, target.shape) else ""
            raise MultiLossError(
                f"task {self.name!r}: the target's shape must equal the output's; got {shapes}{hint}. "
                "Reshape the target (or the head's output) to match"
            )
        if _is_huber(self.loss) and not target.is_floating_point():
            # MSE, L1 and smooth L1 promote an integer target; Huber's backward fails on it, in
            # Lightning's backward, naming no task.
            raise MultiLossError(
                f"task {self.name!r}: the Huber loss needs a floating-point target; got {shapes}: "
                "convert the target with .float()"
            )

    def check_class_range(self, output: Tensor, target: Tensor) -> None:
        """Class indices within the head's classes (reads the target: call it once, not every step)."""
        if _loss_kind(self.loss) != "classes" or target.is_floating_point() or output.ndim < 2 or target.numel() == 0:
            return
        classes = output.shape[1]
        ignore = _loss_option(self.loss, "ignore_index", -100)
        valid = target[target != ignore]
        if valid.numel() == 0:
            return
        low, high = (int(v) for v in torch.stack([valid.min(), valid.max()]).tolist())
        if low < 0 or high >= classes:
            raise MultiLossError(
                f"task {self.name!r}: class indices must be in [0, {classes - 1}] for a head of {classes} outputs, "
                f"the target has {low if low < 0 else high}; give the head as many outputs as there are classes"
            )


RESERVED_METRIC_NAMES = frozenset({"loss", "weight"})
"""Names the mixin logs each task's loss and weight under, so no metric may take them."""


def flatten_metrics(owner: str, metrics: Any) -> dict[str, Metric]:
    """``{name: Metric}`` from a dict of metrics, one ``MetricCollection``, or one metric.

    A ``MetricCollection`` contributes each member under the name torchmetrics gives it (its key,
    with the collection's ``prefix`` and ``postfix``), as its own metric with its own state. A
    lone metric is named by its class, as ``MetricCollection`` names unnamed ones. ``owner`` names
    the task in the one-line errors.

    Example:
        >>> from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection
        >>> sorted(flatten_metrics("task 'reg'", {"err": MetricCollection({"mse": MeanSquaredError(),
        ...                                                              "mae": MeanAbsoluteError()})}))
        ['mae', 'mse']
    """
    if isinstance(metrics, Metric):
        entries: list[tuple[Any, Any]] = [(type(metrics).__name__, metrics)]
    elif isinstance(metrics, MetricCollection):
        entries = list(metrics.items(keep_base=False, copy_state=False))
    elif isinstance(metrics, Mapping):
        entries = list(metrics.items())
    else:
        raise MultiLossError(
            f"{owner}: metrics must be a dict {{name: torchmetrics metric}} or a MetricCollection, "
            f"got {type(metrics).__name__}"
        )
    flat: dict[str, Metric] = {}
    for name, metric in entries:
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise MultiLossError(f"{owner}: metric name {name!r} cannot be used in logging keys")
        if isinstance(metric, MetricCollection):
            members = list(metric.items(keep_base=False, copy_state=False))
        elif isinstance(metric, Metric):
            members = [(name, metric)]
        else:
            what = f"the class {metric.__name__}" if isinstance(metric, type) else type(metric).__name__
            raise MultiLossError(
                f"{owner}: metric {name!r} must be a torchmetrics Metric or MetricCollection instance "
                f"(e.g. torchmetrics.Accuracy(...)), got {what}"
            )
        for member_name, member in members:
            if not isinstance(member_name, str) or not NAME_PATTERN.fullmatch(member_name):
                raise MultiLossError(f"{owner}: metric name {member_name!r} cannot be used in logging keys")
            if member_name in RESERVED_METRIC_NAMES:
                raise MultiLossError(
                    f"{owner}: a metric cannot be named {member_name!r}: the task's {member_name} is logged under it"
                )
            if member_name in flat:
                raise MultiLossError(f"{owner}: two metrics are named {member_name!r}")
            flat[member_name] = member
    return flat


def _unwrapped(loss: Any) -> tuple[Any, dict[str, Any]]:
    """The loss under any ``functools.partial`` (Hydra's ``_partial_: true``), with the keywords given there."""
    keywords: dict[str, Any] = {}
    while isinstance(loss, functools.partial):
        keywords = {**loss.keywords, **keywords}
        loss = loss.func
    return loss, keywords


def _loss_option(loss: Any, name: str, default: Any) -> Any:
    """An option of the loss (``ignore_index``), from its module or from a ``partial``'s keywords."""
    inner, keywords = _unwrapped(loss)
    return keywords.get(name, getattr(inner, name, default))


def _is_huber(loss: Any) -> bool:
    inner, _ = _unwrapped(loss)
    return isinstance(inner, nn.HuberLoss) or inner is F.huber_loss


def _loss_kind(loss: Any) -> str | None:
    """``"classes"`` for class-index losses, ``"elementwise"`` for losses of equal shapes, else ``None``."""
    loss, _ = _unwrapped(loss)
    # By identity: `in` compares with ==, which torchmetrics' Metric overloads (a truthy composite).
    if isinstance(loss, nn.CrossEntropyLoss | nn.NLLLoss) or any(loss is f for f in (F.cross_entropy, F.nll_loss)):
        return "classes"
    elementwise_modules = (nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.SmoothL1Loss, nn.BCELoss, nn.BCEWithLogitsLoss)
    elementwise_functions = (
        F.mse_loss,
        F.l1_loss,
        F.huber_loss,
        F.smooth_l1_loss,
        F.binary_cross_entropy,
        F.binary_cross_entropy_with_logits,
    )
    if isinstance(loss, elementwise_modules) or any(loss is f for f in elementwise_functions):
        return "elementwise"
    return None


def _loss_name(loss: Any) -> str:
    loss, _ = _unwrapped(loss)
    return type(loss).__name__ if isinstance(loss, nn.Module) else getattr(loss, "__name__", type(loss).__name__)


def _dtype(tensor: Tensor) -> str:
    return str(tensor.dtype).replace("torch.", "")


def _broadcasts(a: torch.Size, b: torch.Size) -> bool:
    try:
        torch.broadcast_shapes(a, b)
    except RuntimeError:
        return False
    return True
