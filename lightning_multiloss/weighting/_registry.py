"""A registry of weighting strategies by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from lightning_multiloss._checkpoints import allow_own_class_in_checkpoints
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.task import NAME_PATTERN
from lightning_multiloss.weighting._base import Weighting

W = TypeVar("W", bound=type[Weighting])

WEIGHTINGS: dict[str, type[Weighting]] = {}
"""Every registered strategy, by name."""


def register(name: str) -> Callable[[W], W]:
    """Class decorator: register a :class:`Weighting` under ``name``.

    ``name`` is what configs and ``create_weighting`` call the strategy, so it follows the rule of
    task names (letters, digits, ``_`` and ``-``, not starting with a digit). A class defined again
    under its registered name (a notebook cell run again, a reloaded module: the same module and
    qualified name) replaces the earlier one; another class under a taken name is refused, and so
    is a class registered under a second name.
    """
    if isinstance(name, type):  # @register without parentheses: Python passed the class as `name`
        raise MultiLossError(
            f'register: write @register("name") with the registry name, not a bare @register, above {name.__name__}'
        )
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise MultiLossError(
            f"register: weighting name {name!r} cannot be used in configs and logging keys: use letters, digits, "
            "'_' and '-', not starting with a digit (no '/', '.', or spaces)"
        )

    def decorate(cls: W) -> W:
        if not (isinstance(cls, type) and issubclass(cls, Weighting)):
            what = cls.__name__ if isinstance(cls, type) else repr(cls)
            raise MultiLossError(f"register({name!r}): {what} is not a Weighting subclass; derive it from Weighting")
        taken = WEIGHTINGS.get(name)
        if taken is not None and taken is not cls and not _redefined(taken, cls):
            raise MultiLossError(f"a weighting named {name!r} is already registered: {taken}")
        other = next((n for n, c in WEIGHTINGS.items() if c is cls and n != name), None)
        if other is not None:
            # `name` is one class attribute: a second name would rename the first one's strategies.
            raise MultiLossError(
                f"register({name!r}): {cls.__name__} is already registered as {other!r}; register a subclass "
                "under the second name"
            )
        cls.name = name
        WEIGHTINGS[name] = cls
        allow_own_class_in_checkpoints(cls)  # a strategy among the arguments that save_hyperparameters() keeps
        return cls

    return decorate


def _redefined(old: type, new: type) -> bool:
    """Whether ``new`` is ``old`` defined again (the same module and qualified name)."""
    return (old.__module__, old.__qualname__) == (new.__module__, new.__qualname__)


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
