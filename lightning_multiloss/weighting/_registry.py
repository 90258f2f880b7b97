"""A registry of weighting strategies by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

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
        return cls

    return decorate


def available_weightings() -> list[str]:
    """The registered names, sorted."""
    return sorted(WEIGHTINGS)


def create_weighting(name: str, **hparams: Any) -> Weighting:
    """Build a registered strategy by name, with a clear error for an unknown name or argument."""
    try:
        cls = WEIGHTINGS[name]
    except KeyError:
        raise MultiLossError(f"unknown weighting {name!r}; available: {', '.join(available_weightings())}") from None
    accepted = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise MultiLossError(f"weighting {name!r} has no hyper-parameter(s) {unknown}; it accepts {accepted}")
    return cls(**hparams)
