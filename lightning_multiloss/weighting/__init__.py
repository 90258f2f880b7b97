"""Loss-weighting strategies: one file each, a base class, a registry by name.

>>> from lightning_multiloss.weighting import create_weighting
>>> create_weighting("fixed", weights=[0.5, 0.3])
Fixed()
"""

from lightning_multiloss.weighting._base import Progress, WeightedLoss, Weighting, weighted_sum
from lightning_multiloss.weighting._registry import (
    WEIGHTINGS,
    available_weightings,
    create_weighting,
    register,
)
from lightning_multiloss.weighting.fixed import Fixed
from lightning_multiloss.weighting.learnable import Learnable
from lightning_multiloss.weighting.scheduled import Scheduled

__all__ = [
    "WEIGHTINGS",
    "Fixed",
    "Learnable",
    "Progress",
    "Scheduled",
    "WeightedLoss",
    "Weighting",
    "available_weightings",
    "create_weighting",
    "register",
    "weighted_sum",
]
