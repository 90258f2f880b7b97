"""Which Lightning package a module comes from: ``pytorch_lightning`` or ``lightning.pytorch``.

The two are separate copies, and a Trainer refuses callbacks of the other one, so the mixin
hands each module the callback class of its own package. Nothing here imports Lightning
until a callback class is asked for.
"""

from __future__ import annotations

from typing import Any

from lightning_multiloss.errors import MultiLossError

_PACKAGES = ("pytorch_lightning", "lightning.pytorch", "lightning")


def lightning_package(module: Any) -> str:
    """``"pytorch_lightning"`` or ``"lightning.pytorch"``, from the module's base classes."""
    for cls in type(module).__mro__:
        root = cls.__module__
        if root == "pytorch_lightning" or root.startswith("pytorch_lightning."):
            return "pytorch_lightning"
        if root == "lightning" or root.startswith("lightning."):
            return "lightning.pytorch"
    return "pytorch_lightning"


def callback_class_for(module: Any) -> type:
    """The ``LossWeightingCallback`` class of the module's Lightning package."""
    if lightning_package(module) == "lightning.pytorch":
        from lightning_multiloss.lightning import LossWeightingCallback as LightningCallback

        return LightningCallback
    from lightning_multiloss.callback import LossWeightingCallback

    return LossWeightingCallback


def check_mixin_order(module: Any) -> None:
    """The mixin must precede the LightningModule among the bases, or Lightning's steps win."""
    from lightning_multiloss.mixin import MultiTaskMixin

    mro = type(module).__mro__
    mixin_at = mro.index(MultiTaskMixin)
    for at, cls in enumerate(mro):
        if cls.__name__ == "LightningModule" and cls.__module__.startswith(_PACKAGES):
            if at < mixin_at:
                raise MultiLossError(
                    f"{type(module).__name__}: list MultiTaskMixin before LightningModule among the base classes, "
                    f"as in `class {type(module).__name__}(MultiTaskMixin, LightningModule)`"
                )
            return
