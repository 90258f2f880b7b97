"""The Lightning package of a run: ``lightning.pytorch`` (the default) or ``pytorch_lightning``.

A Trainer of one package refuses the modules, data modules, callbacks and loggers of the other, so
a run builds all of them from the one package that the config's top-level key ``lightning`` names
(``multiloss-train lightning=pytorch_lightning``). The shipped configs name Lightning's classes as
``${oc.select:lightning,lightning.pytorch}.callbacks.ModelCheckpoint``, so they follow the key by
themselves; :func:`use_lightning` maps the other targets: the demo's data modules and network
(:mod:`lightning_multiloss.app.data` and :mod:`~lightning_multiloss.app.models` are built on
``lightning.pytorch``, :mod:`lightning_multiloss.app.pl` on ``pytorch_lightning``) and any target
that names a class of the other package.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from omegaconf import DictConfig, ListConfig

from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.factories import LIGHTNING_PACKAGES, check_lightning_package

DEFAULT_LIGHTNING = "lightning.pytorch"
"""The package a config without a ``lightning`` key uses (that of the ``lightning`` package)."""

_APP_CLASSES = {
    "lightning_multiloss.app.data": ("SplitDataModule", "DigitsDataModule", "LocClsDataModule", "MultiMNISTDataModule"),
    "lightning_multiloss.app.models": ("MultiTaskNet",),
}
_ON_PYTORCH_LIGHTNING: dict[str, str] = {
    **{
        f"{module}.{name}": f"lightning_multiloss.app.pl.{name}"
        for module, names in _APP_CLASSES.items()
        for name in names
    },
    "lightning_multiloss.lightning.LossWeightingCallback": "lightning_multiloss.callback.LossWeightingCallback",
}
"""A ``lightning.pytorch`` class of this package → the same class on ``pytorch_lightning``."""
_COUNTERPART: dict[str, dict[str, str]] = {
    "pytorch_lightning": _ON_PYTORCH_LIGHTNING,
    "lightning.pytorch": {pl_name: lp_name for lp_name, pl_name in _ON_PYTORCH_LIGHTNING.items()},
}


def target_for(target: str, lightning: str) -> str:
    """``target``, or the same class of the Lightning package ``lightning`` when it names one of the other.

    Example:
        >>> target_for("pytorch_lightning.callbacks.EarlyStopping", "lightning.pytorch")
        'lightning.pytorch.callbacks.EarlyStopping'
        >>> target_for("lightning_multiloss.app.data.DigitsDataModule", "pytorch_lightning")
        'lightning_multiloss.app.pl.DigitsDataModule'
        >>> target_for("torch.optim.Adam", "pytorch_lightning")
        'torch.optim.Adam'
    """
    check_lightning_package(lightning)
    (other,) = (package for package in LIGHTNING_PACKAGES if package != lightning)
    if target.startswith(f"{other}."):
        return f"{lightning}.{target[len(other) + 1 :]}"
    return _COUNTERPART[lightning].get(target, target)


def use_lightning(cfg: DictConfig | ListConfig, lightning: str) -> None:
    """Map every ``_target_`` of a resolved config, at any depth, to the package ``lightning`` (in place)."""
    if isinstance(cfg, DictConfig):
        target = cfg.get("_target_")
        if isinstance(target, str):
            cfg._target_ = target_for(target, lightning)
        children = [cfg[key] for key in cfg if key != "_target_"]
    else:
        children = list(cfg)
    for child in children:
        if isinstance(child, DictConfig | ListConfig):
            use_lightning(child, lightning)


def import_lightning(lightning: str) -> ModuleType:
    """The Lightning package ``lightning``, imported; one line naming the key when it is not installed."""
    check_lightning_package(lightning)
    try:
        return importlib.import_module(lightning)
    except ImportError as error:
        distribution = "lightning" if lightning == "lightning.pytorch" else "pytorch-lightning"
        raise MultiLossError(
            f"lightning={lightning}: the package is not installed ({error}); pip install {distribution}, "
            "or choose the other package with lightning=lightning.pytorch|pytorch_lightning"
        ) from None
