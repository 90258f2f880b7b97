"""The functions that the shipped Hydra configs (``pkg://lightning_multiloss.conf``) name as ``_target_``.

Each builds a core object from plain config values where no class of the package takes them as
they are: the ``scheduled`` weighting with one task's schedule, and the Callback of the Lightning
package that a config chooses with its top-level key ``lightning``.
"""

from __future__ import annotations

from typing import Any

from lightning_multiloss._callback_hooks import LossWeightingHooks
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.schedules import ScheduleLike
from lightning_multiloss.weighting import Scheduled

LIGHTNING_PACKAGES = ("lightning.pytorch", "pytorch_lightning")
"""The two Lightning packages: ``lightning.pytorch`` (of the ``lightning`` package; the default of the
configs) and ``pytorch_lightning``."""


def check_lightning_package(lightning: str, key: str = "lightning") -> str:
    """``lightning`` if it names one of :data:`LIGHTNING_PACKAGES`, else an error naming ``key``.

    Example:
        >>> check_lightning_package("pytorch_lightning")
        'pytorch_lightning'
        >>> check_lightning_package("lightning")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_multiloss.errors.MultiLossError: lightning='lightning' is not a Lightning package: choose ...
    """
    if lightning not in LIGHTNING_PACKAGES:
        raise MultiLossError(
            f"{key}={lightning!r} is not a Lightning package: choose lightning.pytorch (the lightning package) "
            "or pytorch_lightning"
        )
    return lightning


def loss_weighting_callback(lightning: str = "lightning.pytorch", **options: Any) -> LossWeightingHooks:
    """The ``LossWeightingCallback`` of the Lightning package ``lightning``, built with ``options``.

    ``conf/callbacks/loss_weighting.yaml`` passes the config's top-level ``lightning`` key here: a
    Trainer of one package refuses the callbacks of the other.

    Args:
        lightning: ``"lightning.pytorch"`` or ``"pytorch_lightning"``.
        options: the callback's arguments (``every_n_steps``, ``max_points``, ``plot``, ``filename``, ...).

    Example:
        >>> type(loss_weighting_callback("pytorch_lightning", every_n_steps=5)).__module__
        'lightning_multiloss.callback'
    """
    if check_lightning_package(lightning, "callbacks.loss_weighting.lightning") == "lightning.pytorch":
        from lightning_multiloss.lightning import LossWeightingCallback
    else:
        from lightning_multiloss.callback import LossWeightingCallback  # type: ignore[assignment]
    return LossWeightingCallback(**options)


def scheduled_weighting(
    schedule: ScheduleLike | float | list[Any] | dict[str, Any],
    unit: str = "step",
    task: str | None = None,
) -> Scheduled:
    """The ``scheduled`` weighting of ``conf/weighting/scheduled.yaml``.

    Args:
        schedule: the schedule (or one per task, a list or a dict by task name).
        unit: ``"step"``, ``"epoch"`` or ``"fraction"``.
        task: ``None``: ``schedule`` is alpha, the weight of the first of two tasks (the second
            gets ``1 - alpha``); a task name: ``schedule`` is that task's weight and the other
            tasks keep weight 1 (the form for more than two tasks).

    Example:
        >>> from lightning_multiloss.schedules import Linear
        >>> from lightning_multiloss.weighting import Progress
        >>> w = scheduled_weighting(Linear(1.0, 0.0, duration=10), task="recon")
        >>> w.bind(["digit", "recon", "centre"])
        >>> w.set_progress(Progress(step=5, epoch=0))
        >>> w.weights
        tensor([1.0000, 0.5000, 1.0000])
    """
    if task is not None:
        if isinstance(schedule, list | dict):
            raise MultiLossError(
                "weighting 'scheduled': give either task= and one schedule, or a list/dict of schedules"
            )
        return Scheduled({task: schedule}, unit=unit)  # type: ignore[arg-type]
    return Scheduled(schedule, unit=unit)  # type: ignore[arg-type]
