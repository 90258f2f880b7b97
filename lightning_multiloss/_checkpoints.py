"""Checkpoints that ``torch.load`` reads with its default ``weights_only=True``."""

from __future__ import annotations

import inspect
from typing import Any

import torch


def allow_in_checkpoints(*objects: Any) -> None:
    """Let ``torch.load(weights_only=True)`` rebuild ``objects`` (classes of the package, and the
    functions torchmetrics keeps in a metric's state).

    A module that calls Lightning's ``save_hyperparameters()`` with a strategy or a schedule among
    its arguments has them pickled into every checkpoint; torch's default loader refuses any class
    that is not allow-listed, so ``load_from_checkpoint`` and resuming failed. These objects are
    rebuilt from their attributes: no code of the checkpoint's choosing runs.
    """
    add = getattr(torch.serialization, "add_safe_globals", None)  # torch >= 2.4
    if add is not None:
        add(list(objects))


def allow_own_class_in_checkpoints(cls: type) -> None:
    """:func:`allow_in_checkpoints` for a class of the package; a subclass of a user's is theirs to
    allow (``torch.serialization.add_safe_globals``): the list holds for every ``torch.load`` of
    the process, and defining a class must not make it loadable from any file."""
    if cls.__module__.split(".", 1)[0] == "lightning_multiloss":
        allow_in_checkpoints(cls)


def state_functions(obj: object) -> list[Any]:
    """The plain functions of another package that ``obj`` keeps among its attributes (one level of
    dicts included): what pickling ``obj`` refers to by name."""
    found: list[Any] = []
    for value in vars(obj).values():
        for item in value.values() if isinstance(value, dict) else (value,):
            own = getattr(item, "__module__", "") or ""
            if inspect.isfunction(item) and not own.startswith("lightning_multiloss") and item not in found:
                found.append(item)
    return found
