"""A registry of weighting strategies by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from lightning_multiloss._checkpoints import allow_own_class_in_checkpoints
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.weighting._base import Weighting

W = TypeVar("W", bound=type[Weighting])

WEIGHTINGS: dict[str, type[Weighting]] = {}
"""Every registered strategy, by name."""


def register(name: str) -> Callable[[W], W]:
    """Class decorator: register a :class:`Weighting` under ``name``."""

    def decorate(cls: W) -> W:
        if name in WEIGHTINGS and WEIGHTINGS[name] is not cls:
            raise MultiLossError(f"a weighting named {name!r} is already registered: {WEIGHTINGS[name]}")
        cls.name = name
        WEIGHTINGS[name] = cls
        allow_own_class_in_checkpoints(cls)  # a strategy among the arguments that save_hyperparameters() keeps
        return cls

    return decorate


def hyperparameters(cls: type[Weighting]) -> dict[str, inspect.Parameter]:
    """The keyword arguments that ``cls(...)`` accepts, by name, in signature order.

    A strategy that passes ``**options`` on to its base (the gradient strategies pass ``route``
    and ``ddp``) accepts the base's arguments too.

    >>> from lightning_multiloss.weighting import MGDA
    >>> list(hyperparameters(MGDA))
    ['normalization', 'route', 'ddp']
    """
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        forwards = False
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                forwards = True
            elif p.name != "self" and p.kind is not p.VAR_POSITIONAL:
                found.setdefault(p.name, p)
        if not forwards:
            break
    return found


def available_weightings() -> list[str]:
    """The registered names, sorted."""
    return sorted(WEIGHTINGS)


def create_weighting(name: str, **hparams: Any) -> Weighting:
    """Build a registered strategy by name, with a clear error for an unknown name or argument."""
    try:
        cls = WEIGHTINGS[name]
    except KeyError:
        raise MultiLossError(f"unknown weighting {name!r}; available: {', '.join(available_weightings())}") from None
    accepted = list(hyperparameters(cls))
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise MultiLossError(f"weighting {name!r} has no hyper-parameter(s) {unknown}; it accepts {accepted}")
    return cls(**hparams)
