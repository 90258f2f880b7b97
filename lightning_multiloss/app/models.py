"""A configurable multi-task network: a shared trunk (MLP or conv) and one head per task.

:class:`MultiTaskNet` is a :class:`~lightning_multiloss.MultiTaskMixin` LightningModule built
from plain config values (the ``model`` node of the demo's configs), so its hyper-parameters, saved
in checkpoints, are plain lists and dicts and ``MultiTaskNet.load_from_checkpoint`` rebuilds it.
Its code is :class:`MultiTaskNetMixin`, written once: :class:`MultiTaskNet` is built on
``lightning.pytorch``, ``lightning_multiloss.app.pl.MultiTaskNet`` on ``pytorch_lightning``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as lp
import torch
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

from lightning_multiloss.app.config import build_weighting, call, refusal
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.mixin import MultiTaskMixin
from lightning_multiloss.results import metric_direction
from lightning_multiloss.task import Task
from lightning_multiloss.weighting import Weighting

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def _activation(name: str, where: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise MultiLossError(f"{where}: unknown activation {name!r}; available: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]()


def _dense_layers(size: int, widths: Sequence[int], activation: str, dropout: float) -> tuple[list[nn.Module], int]:
    """Linear layers of ``widths`` after an input of ``size``, each with its activation (and dropout).

    Returns the layers and the width of their output.
    """
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(size, width), _activation(activation, "model.trunk")]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        size = width
    return layers, size


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


class MLPTrunk(nn.Module):
    """Flatten the input, then ``Linear → activation (→ dropout)`` for each size in ``hidden``.

    Example:
        >>> trunk = MLPTrunk((64,), hidden=[32, 16])
        >>> trunk.vector(trunk(torch.zeros(2, 64))).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden: Sequence[int] = (128, 64),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dense, size = _dense_layers(math.prod(input_shape), hidden, activation, dropout)
        self.body = nn.Sequential(nn.Flatten(), *dense)
        self.out_features = size

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def vector(self, features: Tensor) -> Tensor:
        """The features as one vector per sample (the input of linear heads)."""
        return features


class ConvTrunk(nn.Module):
    """Conv layers (``Conv2d → activation → MaxPool``) and a shared vector for linear heads.

    Args:
        input_shape: ``(channels, height, width)``, or a flat size with ``image_shape``.
        channels: the output channels of each conv layer.
        kernel_size: the kernel of every conv layer.
        padding: ``"same"`` (keep the size) or ``"valid"`` (no padding).
        pool: the max-pooling size after each conv layer (1: none); one per layer.
        feature: how the last feature map becomes a vector: ``"flatten"``, ``"avg"`` or ``"max"``
            (global pooling over positions).
        fc: sizes of shared fully connected layers on that vector.
        activation, dropout: of every layer.
        image_shape: reshape flat inputs to this ``(C, H, W)`` first.

    The feature map itself is the input of ``heatmap`` heads (one logit per position).

    Example:
        >>> trunk = ConvTrunk((1, 24, 24), channels=[8, 8], pool=[1, 2])
        >>> trunk(torch.zeros(2, 1, 24, 24)).shape
        torch.Size([2, 8, 12, 12])
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int] = (16, 32),
        kernel_size: int = 3,
        padding: str = "same",
        pool: Sequence[int] = (1, 2),
        feature: str = "max",
        fc: Sequence[int] = (),
        activation: str = "relu",
        dropout: float = 0.0,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        shape = list(image_shape) if image_shape is not None else list(input_shape)
        if len(shape) != 3:
            raise MultiLossError(
                f"model.trunk: a conv trunk needs (channels, height, width) inputs, got {list(input_shape)}; "
                "set model.trunk.image_shape to reshape flat inputs"
            )
        if image_shape is not None and math.prod(image_shape) != math.prod(input_shape):
            raise MultiLossError(
                f"model.trunk: image_shape {list(image_shape)} does not hold the input's "
                f"{math.prod(input_shape)} values"
            )
        if len(pool) != len(channels):
            raise MultiLossError(f"model.trunk: pool needs one size per conv layer ({len(channels)}), got {list(pool)}")
        if padding not in ("same", "valid"):
            raise MultiLossError(f"model.trunk: padding must be 'same' or 'valid', got {padding!r}")
        if feature not in ("flatten", "avg", "max"):
            raise MultiLossError(f"model.trunk: feature must be 'flatten', 'avg' or 'max', got {feature!r}")
        self.image_shape = tuple(shape)
        layers: list[nn.Module] = []
        in_channels = shape[0]
        for out_channels, pool_size in zip(channels, pool, strict=True):
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding),
                _activation(activation, "model.trunk"),
            ]
            if pool_size > 1:
                layers.append(nn.MaxPool2d(pool_size))
            in_channels = out_channels
        self.body = nn.Sequential(*layers)
        with torch.no_grad():
            fmap = self.body(torch.zeros(1, *shape))
        if fmap.numel() == 0:
            raise MultiLossError(f"model.trunk: the conv layers reduce a {shape} input to nothing")
        self.feature = feature
        features = int(fmap.numel() if feature == "flatten" else fmap.shape[1])
        head, size = _dense_layers(features, fc, activation, dropout)
        self.fc = nn.Sequential(*head)
        self.out_channels = int(fmap.shape[1])
        self.out_features = size

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x.reshape(x.shape[0], *self.image_shape))

    def vector(self, features: Tensor) -> Tensor:
        if self.feature == "flatten":
            flat = features.flatten(1)
        elif self.feature == "avg":
            flat = features.mean(dim=(2, 3))
        else:
            flat = features.amax(dim=(2, 3))
        return self.fc(flat)


class HeatmapHead(nn.Module):
    """A 1×1 convolution on the trunk's feature map: one logit per position, flattened."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        return self.conv(features).flatten(1)


if TYPE_CHECKING:  # type-checked as a lightning.pytorch module; either package's LightningModule at run time
    _LightningModule = lp.LightningModule
else:
    _LightningModule = object


class MultiTaskNetMixin(MultiTaskMixin, _LightningModule):  # type: ignore[misc]
    """A shared trunk and one head per task, trained on a weighted combination of the task losses.

    The code of :class:`MultiTaskNet` (``lightning.pytorch``) and of
    ``lightning_multiloss.app.pl.MultiTaskNet`` (``pytorch_lightning``), mixed (first) into a
    ``LightningModule``.

    Args:
        trunk: the trunk's config (``_target_``: :class:`MLPTrunk` or :class:`ConvTrunk`, and
            its arguments other than ``input_shape``).
        tasks: ``{name: task config}`` (see ``conf/task/``): ``out_features`` (the head's
            size), ``head`` (``"linear"`` or ``"heatmap"``), ``head_hidden``, ``loss``
            (a ``_target_`` config), ``metrics`` (``{name: _target_ config}``), ``primary``,
            ``target``, ``mask``, ``ignore_value``. The order is the loss vector's order.
        optimizer: a ``_target_`` config of a ``torch.optim`` optimizer (``params`` are given);
            the weighting's own parameters get a param group without weight decay.
        weighting: a weighting config (``_target_`` + hyper-parameters: kept in the checkpoint)
            or a :class:`~lightning_multiloss.weighting.Weighting`; ``None``: a plain sum.
        input_shape: the shape of one input (from the datamodule).
        input_key, on_nonfinite, reuse_jacobian: as in
            :meth:`~lightning_multiloss.MultiTaskMixin.configure_multitask`.

    Example:
        >>> net = MultiTaskNet(
        ...     trunk={"_target_": "lightning_multiloss.app.models.MLPTrunk", "hidden": [16]},
        ...     tasks={
        ...         "digit": {"out_features": 10, "loss": {"_target_": "torch.nn.CrossEntropyLoss"}},
        ...         "centre": {"out_features": 1, "loss": {"_target_": "torch.nn.MSELoss"}},
        ...     },
        ...     weighting={"_target_": "lightning_multiloss.weighting.Fixed", "weights": [0.5, 0.3]},
        ...     input_shape=[64],
        ... )
        >>> {name: tuple(out.shape) for name, out in net(torch.zeros(2, 64)).items()}
        {'digit': (2, 10), 'centre': (2, 1)}
    """

    def __init__(
        self,
        trunk: Mapping[str, Any],
        tasks: Mapping[str, Mapping[str, Any]],
        optimizer: Mapping[str, Any] | None = None,
        weighting: Mapping[str, Any] | Weighting | None = None,
        input_shape: Sequence[int] = (64,),
        input_key: str = "x",
        on_nonfinite: str = "raise",
        reuse_jacobian: bool = True,
    ) -> None:
        super().__init__()
        trunk, tasks, optimizer = _plain(trunk), _plain(tasks), _plain(optimizer)
        weighting_cfg = None if isinstance(weighting, Weighting) else _plain(weighting)
        optimizer = optimizer or {"_target_": "torch.optim.Adam", "lr": 1e-3}
        input_shape = [int(v) for v in _plain(input_shape)]
        if not tasks:
            raise MultiLossError("model.tasks is empty: add at least one task (task@model.tasks.<name>=<option>)")
        # Plain values only: checkpoints load with weights_only=True.
        self.save_hyperparameters(
            {
                "trunk": trunk,
                "tasks": tasks,
                "optimizer": optimizer,
                "weighting": weighting_cfg,
                "input_shape": input_shape,
                "input_key": input_key,
                "on_nonfinite": on_nonfinite,
                "reuse_jacobian": reuse_jacobian,
            }
        )
        self.optimizer_cfg = optimizer
        self.trunk: MLPTrunk | ConvTrunk = call(trunk, "model.trunk", input_shape=input_shape, _convert_="all")
        self.heads = nn.ModuleDict()
        task_list: list[Task] = []
        self.primary: dict[str, str | None] = {}
        self.directions: dict[str, dict[str, str]] = {}
        for name, spec in tasks.items():
            task_list.append(self._build_task(name, dict(spec)))
        self._check_heads(tasks, input_shape)
        if weighting is not None and not isinstance(weighting, Weighting):
            weighting = build_weighting(weighting)
        self.configure_multitask(
            task_list,
            weighting,
            input_key=input_key,
            on_nonfinite=on_nonfinite,  # type: ignore[arg-type]
            reuse_jacobian=reuse_jacobian,
        )

    def _build_task(self, name: str, spec: dict[str, Any]) -> Task:
        where = f"model.tasks.{name}"
        head = spec.get("head", "linear")
        out_features = spec.get("out_features")
        if not isinstance(out_features, int) or out_features < 1:
            raise MultiLossError(f"{where}.out_features must be a positive integer, got {out_features!r}")
        if head == "linear":
            hidden = spec.get("head_hidden") or 0
            if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 0:
                raise MultiLossError(
                    f"{where}.head_hidden must be a non-negative integer (0: a single Linear layer), got {hidden!r}"
                )
            size = self.trunk.out_features
            if hidden > 0:
                module: nn.Module = nn.Sequential(nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, out_features))
            else:
                module = nn.Linear(size, out_features)
        elif head == "heatmap":
            if not isinstance(self.trunk, ConvTrunk):
                raise MultiLossError(f"{where}: a heatmap head needs a conv trunk (model=conv)")
            module = HeatmapHead(self.trunk.out_channels)
        else:
            raise MultiLossError(f"{where}.head must be 'linear' or 'heatmap', got {head!r}")
        self.heads[name] = module
        loss_cfg = spec.get("loss")
        if not isinstance(loss_cfg, Mapping) or "_target_" not in loss_cfg:
            raise MultiLossError(f"{where}.loss: expected a loss config with a _target_, got {loss_cfg!r}")
        loss = call(loss_cfg, f"{where}.loss", _convert_="all")
        metrics = {m: call(c, f"{where}.metrics.{m}", _convert_="all") for m, c in (spec.get("metrics") or {}).items()}
        primary = spec.get("primary")
        if primary is not None and primary not in metrics:
            raise MultiLossError(f"{where}.primary {primary!r} is not one of its metrics {sorted(metrics)}")
        self.primary[name] = primary if primary is not None else next(iter(metrics), None)
        self.directions[name] = {m: metric_direction(metric) for m, metric in metrics.items()}
        return Task(
            name,
            loss,
            target=spec.get("target"),
            metrics=metrics,
            mask=spec.get("mask"),
            ignore_value=spec.get("ignore_value"),
        )

    def _check_heads(self, tasks: Mapping[str, Mapping[str, Any]], input_shape: Sequence[int]) -> None:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            outputs = self(torch.zeros(2, *input_shape))
        self.train(was_training)
        for name, output in outputs.items():
            got = output[0].numel()
            if got != tasks[name]["out_features"]:
                raise MultiLossError(
                    f"model.tasks.{name}: its {tasks[name].get('head', 'linear')} head gives {got} values per "
                    f"sample but out_features is {tasks[name]['out_features']}"
                )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.trunk(x)
        heatmap = any(isinstance(head, HeatmapHead) for head in self.heads.values())
        vector: Tensor | None = None
        if heatmap:  # every head reads (something computed from) the feature map
            features = self.shared_representation(features)
        outputs: dict[str, Tensor] = {}
        for name, head in self.heads.items():
            if isinstance(head, HeatmapHead):
                outputs[name] = head(features)
            else:
                if vector is None:
                    vector = self.trunk.vector(features)
                    if not heatmap:
                        vector = self.shared_representation(vector)
                outputs[name] = head(vector)
        return outputs

    def configure_optimizers(self) -> torch.optim.Optimizer:
        weighting_ids = {id(p) for p in self.weighting.parameters()}
        groups: list[dict[str, Any]] = [{"params": [p for p in self.parameters() if id(p) not in weighting_ids]}]
        if weighting_ids:
            groups.append({"params": list(self.weighting.parameters()), "weight_decay": 0.0})
        options = {k: v for k, v in self.optimizer_cfg.items() if not (k.startswith("_") and k.endswith("_"))}
        optimizer_cls = get_object(self.optimizer_cfg["_target_"])
        try:
            return optimizer_cls(groups, **options)
        except (ValueError, TypeError) as error:  # e.g. torch's "Invalid learning rate: -1"
            raise MultiLossError(refusal(self.optimizer_cfg, "model.optimizer", error)) from None


class MultiTaskNet(MultiTaskNetMixin, lp.LightningModule):  # type: ignore[misc]
    """:class:`MultiTaskNetMixin` on ``lightning.pytorch``."""
