"""Small real components shared by the tests: a two-branch network and synthetic data.

The data is generated (a fixed seed), so the tests need no download and no data package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_multiloss import MultiTaskMixin, Task
from lightning_multiloss.weighting import Weighting


class ToyDataset(Dataset):
    """``n`` samples of 8 features; ``cls``: 3 classes, ``reg``: 2 targets, ``aux``: 1 target."""

    def __init__(self, n: int = 128, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.cls = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0.5).long()
        self.reg = torch.stack([self.x[:, 2] * 2.0, self.x[:, 3] - self.x[:, 4]], dim=1)
        self.aux = (self.x[:, 5:6] ** 2) * 3.0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "cls": self.cls[i], "reg": self.reg[i], "aux": self.aux[i]}


HEAD_SIZES = {"cls": 3, "reg": 2, "aux": 1}


def toy_tasks(
    names: Sequence[str] = ("cls", "reg"), metrics: bool = False, masks: Mapping[str, str] | None = None
) -> list[Task]:
    """``cls`` (cross-entropy, accuracy) and the regression tasks (MSE); ``masks``: task → its mask's batch key."""
    masks = masks or {}
    tasks = []
    for name in names:
        if name == "cls":
            m = {"acc": torchmetrics.Accuracy("multiclass", num_classes=3)} if metrics else {}
            tasks.append(Task("cls", nn.CrossEntropyLoss(), metrics=m, mask=masks.get(name)))
        else:
            m = {"mse": torchmetrics.MeanSquaredError()} if metrics else {}
            tasks.append(Task(name, nn.MSELoss(), metrics=m, mask=masks.get(name)))
    return tasks


class ToyNet(MultiTaskMixin, pl.LightningModule):
    """Shared trunk (8 → hidden) and one linear head per task."""

    def __init__(
        self,
        weighting: Weighting | str | None = None,
        tasks: Sequence[str] = ("cls", "reg"),
        hidden: int = 16,
        lr: float = 0.05,
        optimizer: str = "sgd",
        seed: int = 0,
        metrics: bool = False,
        masks: Mapping[str, str] | None = None,
        **multitask: Any,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(8, hidden), nn.Tanh())
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, HEAD_SIZES[name]) for name in tasks})
        self.lr = lr
        self.optimizer_name = optimizer
        self.configure_multitask(toy_tasks(tasks, metrics, masks), weighting, **multitask)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.trunk(x)
        return {name: head(z) for name, head in self.heads.items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def toy_loader(n: int = 128, batch_size: int = 16, seed: int = 0, shuffle: bool = False) -> DataLoader:
    return DataLoader(ToyDataset(n, seed), batch_size=batch_size, shuffle=shuffle)


def assert_params_close(
    got: Mapping[str, Tensor], want: Mapping[str, Tensor], atol: float, what: str = "", rtol: float = 0.0
) -> None:
    """The same keys, each tensor within ``atol`` (and ``rtol``) of ``want``'s."""
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=rtol, atol=atol, msg=lambda m, k=key: f"{what} {k}: {m}")


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """A CPU Trainer without progress bar, model summary or checkpoints unless asked for."""
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
    }
    options.update(kwargs)
    return pl.Trainer(**options)
