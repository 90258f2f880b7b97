"""``LossWeightingCallback`` for ``pytorch_lightning``."""

from __future__ import annotations

import pytorch_lightning as pl

from lightning_multiloss._callback_hooks import LossWeightingHooks


class LossWeightingCallback(LossWeightingHooks, pl.Callback):
    __doc__ = LossWeightingHooks.__doc__
