"""The Callback for the ``lightning`` package (``lightning.pytorch``).

The mixin picks it by itself for a module built on ``lightning.pytorch.LightningModule``.
"""

from __future__ import annotations

import lightning.pytorch as lp

from lightning_multiloss._callback_hooks import LossWeightingHooks


class LossWeightingCallback(LossWeightingHooks, lp.Callback):
    __doc__ = LossWeightingHooks.__doc__
