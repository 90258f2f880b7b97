"""The demo's data modules and network on ``pytorch_lightning`` (``multiloss-train lightning=pytorch_lightning``).

The same classes as :mod:`lightning_multiloss.app.data` and :mod:`lightning_multiloss.app.models`
(which are built on ``lightning.pytorch``), with the same code (their ``...Mixin`` classes): a
Trainer of one package refuses the modules and data modules of the other.
"""

from __future__ import annotations

import pytorch_lightning as pl

from lightning_multiloss.app.data import (
    DigitsDataModuleMixin,
    LocClsDataModuleMixin,
    MultiMNISTDataModuleMixin,
    SplitDataModuleMixin,
)
from lightning_multiloss.app.models import MultiTaskNetMixin


class SplitDataModule(SplitDataModuleMixin, pl.LightningDataModule):
    """:class:`~lightning_multiloss.app.data.SplitDataModuleMixin` on ``pytorch_lightning``: subclass it and
    write ``build``."""


class DigitsDataModule(DigitsDataModuleMixin, SplitDataModule):
    """:class:`~lightning_multiloss.app.data.DigitsDataModuleMixin` on ``pytorch_lightning``."""


class LocClsDataModule(LocClsDataModuleMixin, SplitDataModule):
    """:class:`~lightning_multiloss.app.data.LocClsDataModuleMixin` on ``pytorch_lightning``."""


class MultiMNISTDataModule(MultiMNISTDataModuleMixin, SplitDataModule):
    """:class:`~lightning_multiloss.app.data.MultiMNISTDataModuleMixin` on ``pytorch_lightning``."""


class MultiTaskNet(MultiTaskNetMixin, pl.LightningModule):  # type: ignore[misc]
    """:class:`~lightning_multiloss.app.models.MultiTaskNetMixin` on ``pytorch_lightning``."""


__all__ = ["DigitsDataModule", "LocClsDataModule", "MultiMNISTDataModule", "MultiTaskNet", "SplitDataModule"]
