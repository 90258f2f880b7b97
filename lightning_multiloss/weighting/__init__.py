"""Loss-weighting strategies: one file each, a base class, a registry by name.

>>> from lightning_multiloss.weighting import create_weighting
>>> create_weighting("fixed", weights=[0.5, 0.3])
Fixed()
"""

import importlib
import pkgutil

from lightning_multiloss.weighting._base import (
    GradientOptions,
    GradientWeighting,
    Progress,
    WeightedLoss,
    Weighting,
    weighted_sum,
)
from lightning_multiloss.weighting._gramian import GramianWeighting
from lightning_multiloss.weighting._registry import (
    WEIGHTINGS,
    available_weightings,
    create_weighting,
    hyperparameters,
    register,
)
from lightning_multiloss.weighting._state import TaskEpochMean
from lightning_multiloss.weighting.aligned_mtl import AlignedMTL
from lightning_multiloss.weighting.cagrad import CAGrad
from lightning_multiloss.weighting.db_mtl import DBMTL
from lightning_multiloss.weighting.dwa import DWA
from lightning_multiloss.weighting.famo import FAMO
from lightning_multiloss.weighting.fixed import Fixed
from lightning_multiloss.weighting.gls import GLS
from lightning_multiloss.weighting.graddrop import GradDrop
from lightning_multiloss.weighting.gradnorm import GradNorm
from lightning_multiloss.weighting.gradvac import GradVac
from lightning_multiloss.weighting.imtl_g import IMTLG
from lightning_multiloss.weighting.imtl_l import IMTLL
from lightning_multiloss.weighting.learnable import Learnable
from lightning_multiloss.weighting.mgda import MGDA
from lightning_multiloss.weighting.nash_mtl import NashMTL
from lightning_multiloss.weighting.pcgrad import PCGrad
from lightning_multiloss.weighting.rlw import RLW
from lightning_multiloss.weighting.scheduled import Scheduled
from lightning_multiloss.weighting.stch import STCH
from lightning_multiloss.weighting.uncertainty import Uncertainty
from lightning_multiloss.weighting.uncertainty_revised import UncertaintyRevised
from lightning_multiloss.weighting.upgrad import UPGrad

__all__ = [
    "DBMTL",
    "DWA",
    "FAMO",
    "GLS",
    "IMTLG",
    "IMTLL",
    "MGDA",
    "RLW",
    "STCH",
    "WEIGHTINGS",
    "AlignedMTL",
    "CAGrad",
    "Fixed",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "GradientOptions",
    "GradientWeighting",
    "GramianWeighting",
    "Learnable",
    "NashMTL",
    "PCGrad",
    "Progress",
    "Scheduled",
    "TaskEpochMean",
    "UPGrad",
    "Uncertainty",
    "UncertaintyRevised",
    "WeightedLoss",
    "Weighting",
    "available_weightings",
    "create_weighting",
    "hyperparameters",
    "register",
    "weighted_sum",
]

# Every strategy file registers itself when imported: import the ones not named above too, so
# that a new strategy is one file (and its YAML), with no other file to touch.
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
