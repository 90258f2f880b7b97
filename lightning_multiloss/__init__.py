"""lightning-multiloss: multi-task loss weighting for PyTorch Lightning."""

from lightning_multiloss.errors import MultiLossError, NonFiniteLossError
from lightning_multiloss.mixin import MultiTaskMixin
from lightning_multiloss.sampling import ResumableDataLoader, ShardSampler
from lightning_multiloss.task import Task
from lightning_multiloss.weighting import (
    Fixed,
    Learnable,
    Progress,
    Scheduled,
    WeightedLoss,
    Weighting,
    available_weightings,
    create_weighting,
)

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Imported on first use, so that `import lightning_multiloss` does not pull in pytorch_lightning
    # for users of the `lightning` package.
    if name == "LossWeightingCallback":
        from lightning_multiloss.callback import LossWeightingCallback

        return LossWeightingCallback
    raise AttributeError(f"module 'lightning_multiloss' has no attribute {name!r}")


__all__ = [
    "Fixed",
    "Learnable",
    "LossWeightingCallback",
    "MultiLossError",
    "MultiTaskMixin",
    "NonFiniteLossError",
    "Progress",
    "ResumableDataLoader",
    "Scheduled",
    "ShardSampler",
    "Task",
    "WeightedLoss",
    "Weighting",
    "__version__",
    "available_weightings",
    "create_weighting",
]
