"""Host-device synchronisations per training step, counted in a real ``Trainer.fit``.

A read of a tensor's value on the host (``item``, ``tolist``, ``bool``, ``int``, ``float``,
``cpu``, ``numpy``) makes the CPU wait until the device has run everything queued before it; on a
GPU each one drains the launch queue. So does ``nonzero``, whose output size the host must
know. The counter wraps those methods for the span of each
training batch after the first (forward, losses, strategy, backward, optimizer step, the
callbacks' batch hooks; the first step is setup: it finds the shared parameters and checks the
targets once), on CPU; ``MULTILOSS_TEST_DEVICE=cuda pytest tests/test_sync_count.py`` runs it unchanged on a GPU.

The Gramian strategies copy the K×K Gramian and the K losses to the host once (their one
allowed sync) and solve there: reads inside ``GramianWeighting._solve_on_host`` are of that host
copy and are not counted.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lightning_multiloss.callback import LossWeightingCallback
from lightning_multiloss.schedules import Linear
from lightning_multiloss.weighting import WEIGHTINGS, GradientWeighting, create_weighting
from tests._models import ToyNet, quiet_trainer, toy_loader

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy", "nonzero")
TORCH_READS = ("nonzero",)  # the same as functions: torch.nonzero(t)
STEPS = 8
DEVICE = os.environ.get("MULTILOSS_TEST_DEVICE", "cpu")  # "cuda" runs the same test on a GPU


class SyncCounter:
    """Counts host reads of tensor values while ``counting`` is on."""

    def __init__(self) -> None:
        self.counting = False
        self.count = 0
        self.where: list[str] = []

    def _in_host_solve(self) -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_name == "_solve_on_host":
                return True
            frame = frame.f_back  # type: ignore[assignment]
        return False

    @contextmanager
    def installed(self) -> Iterator[None]:
        originals = {name: getattr(Tensor, name) for name in READS}
        functions = {name: getattr(torch, name) for name in TORCH_READS}

        def wrap(name: str, original: Any) -> Any:
            def counted(tensor: Tensor, *args: Any, **kwargs: Any) -> Any:
                if self.counting and not self._in_host_solve():
                    self.count += 1
                    caller = sys._getframe(1)
                    self.where.append(f"{name} at {caller.f_code.co_filename}:{caller.f_lineno}")
                return original(tensor, *args, **kwargs)

            return counted

        for name, original in originals.items():
            setattr(Tensor, name, wrap(name, original))
        for name, function in functions.items():
            setattr(torch, name, wrap(f"torch.{name}", function))
        try:
            yield
        finally:
            for name, original in originals.items():
                setattr(Tensor, name, original)
            for name, function in functions.items():
                setattr(torch, name, function)


class Start(pl.Callback):
    def __init__(self, counter: SyncCounter) -> None:
        self.counter = counter

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        # The first step is setup (shared parameters found, first-batch checks): not counted.
        self.counter.counting = batch_idx > 0


class Stop(pl.Callback):
    def __init__(self, counter: SyncCounter) -> None:
        self.counter = counter

    def on_train_batch_end(self, *args: Any) -> None:
        self.counter.counting = False


class RepresentationNet(ToyNet):
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.shared_representation(self.trunk(x))
        return {name: head(z) for name, head in self.heads.items()}


class HandWritten(pl.LightningModule):
    """The reference: ``0.5·L_cls + 0.3·L_reg`` written by hand, logging the same values."""

    def __init__(self, read_every_step: bool = False) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.cls = nn.Linear(16, 3)
        self.reg = nn.Linear(16, 2)
        self.read_every_step = read_every_step

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        z = self.trunk(batch["x"])
        l1 = nn.functional.cross_entropy(self.cls(z), batch["cls"])
        l2 = nn.functional.mse_loss(self.reg(z), batch["reg"])
        loss = 0.5 * l1 + 0.3 * l2
        if self.read_every_step:
            assert torch.isfinite(loss).item()
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def syncs_per_step(model: pl.LightningModule) -> tuple[float, list[str]]:
    counter = SyncCounter()
    callbacks: list[pl.Callback] = [Start(counter)]
    if hasattr(model, "weighting"):
        callbacks.append(LossWeightingCallback())
    callbacks.append(Stop(counter))
    # Logging steps may read values (Lightning writes its loggers then): none fall in the run.
    trainer = quiet_trainer(
        max_epochs=1,
        callbacks=callbacks,
        log_every_n_steps=10_000,
        accelerator=DEVICE,
        limit_val_batches=0,
        default_root_dir=tempfile.mkdtemp(prefix="sync_count_"),
    )
    with counter.installed():
        trainer.fit(model, toy_loader(n=16 * STEPS, batch_size=16))
    assert trainer.global_step == STEPS
    return counter.count / (STEPS - 1), counter.where


def test_the_counter_counts() -> None:
    # The reference has none; the same module with one .item() per step has one.
    assert syncs_per_step(HandWritten())[0] == 0
    assert syncs_per_step(HandWritten(read_every_step=True))[0] == 1


LOSS_LEVEL = sorted(n for n, c in WEIGHTINGS.items() if not issubclass(c, GradientWeighting))
GRADIENT = sorted(n for n, c in WEIGHTINGS.items() if issubclass(c, GradientWeighting))


@pytest.mark.parametrize("name", LOSS_LEVEL)
def test_loss_level_strategies_never_wait_for_the_device(name: str) -> None:
    options = {"schedule": Linear(1.0, 0.0, duration=STEPS)} if name == "scheduled" else {}
    per_step, where = syncs_per_step(ToyNet(create_weighting(name, **options), lr=0.01))
    assert per_step == 0, where[:5]


def test_learnable_weights_of_three_tasks_are_projected_without_waiting() -> None:
    # K > 2: the projection onto the simplex after each optimizer step (it used torch.nonzero).
    model = ToyNet("learnable", tasks=("cls", "reg", "aux"), lr=0.01)
    per_step, where = syncs_per_step(model)
    assert per_step == 0, where[:5]


GRADIENT_CASES = [
    (name, route)
    for name in GRADIENT
    for route in ("parameters", "representation")
    if name != "graddrop" or route == "representation"  # graddrop works on the representation only
]


@pytest.mark.parametrize(("name", "route"), GRADIENT_CASES)
def test_gradient_strategies_wait_at_most_once_per_step(name: str, route: str) -> None:
    options = {} if name == "graddrop" else {"route": route}
    per_step, where = syncs_per_step(RepresentationNet(create_weighting(name, **options), lr=0.01))
    assert per_step <= 1, where[:5]


def test_skip_mode_reads_the_losses_once_per_step() -> None:
    per_step, where = syncs_per_step(ToyNet("fixed", on_nonfinite="skip"))
    assert per_step == 1, where[:5]
