"""What ``lightning_multiloss._lightning`` reads of Lightning beyond its documented API.

These tests fail when a Lightning release changes what the package relies on, for both
``pytorch_lightning`` and ``lightning.pytorch``.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_multiloss._lightning import (
    batches_processed,
    is_logging_step,
    lightning_package,
    scales_float16_losses,
    trainer_of,
)

PACKAGES = ["pytorch_lightning"] + (["lightning.pytorch"] if importlib.util.find_spec("lightning") else [])


def plain_module(pl: Any) -> Any:
    class Plain(pl.LightningModule):
        """Logs a value every step and remembers what is_logging_step said on each."""

        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(2, 1)
            self.said: list[tuple[int, bool]] = []

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self.layer(batch[0]).pow(2).mean()
            self.said.append((self.global_step, is_logging_step(trainer_of(self))))
            self.log("value", loss.detach(), on_step=True, on_epoch=False)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Plain()


@pytest.mark.parametrize("package", PACKAGES)
def test_is_logging_step_says_which_steps_the_logger_writes(tmp_path: Path, package: str) -> None:
    pl = importlib.import_module(package)
    loggers = importlib.import_module(f"{package}.loggers")
    model = plain_module(pl)
    assert trainer_of(model) is None  # not attached: None, where `model.trainer` raises
    assert is_logging_step(None)
    logger = loggers.CSVLogger(tmp_path, name="reach")
    trainer = pl.Trainer(
        max_epochs=2,
        log_every_n_steps=3,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    data = DataLoader(TensorDataset(torch.randn(28, 2)), batch_size=4)  # 7 steps an epoch
    trainer.fit(model, data)
    assert trainer_of(model) is trainer
    logger.save()
    with open(Path(trainer.log_dir) / "metrics.csv") as f:
        written = {int(row["step"]) for row in csv.DictReader(f) if row.get("value")}
    said = {step for step, logging in model.said if logging}
    assert written  # the check can fail: some steps are written, not all
    assert len(written) < len(model.said)
    assert said == written


@pytest.mark.parametrize("package", PACKAGES)
def test_batches_processed_counts_the_epochs_batches_trained_on(package: str) -> None:
    # During batch i of an epoch (0-based), i batches are done; at its on_train_batch_end, i + 1
    # (with accumulation too: batches, not optimizer steps).
    pl = importlib.import_module(package)
    seen: list[tuple[str, int, int, int | None]] = []

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            seen.append(("start", trainer.current_epoch, batch_idx, batches_processed(trainer)))

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            seen.append(("end", trainer.current_epoch, batch_idx, batches_processed(trainer)))

    trainer = pl.Trainer(
        max_epochs=2,
        accumulate_grad_batches=2,
        logger=False,
        callbacks=[Watch()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(plain_module(pl), DataLoader(TensorDataset(torch.randn(20, 2)), batch_size=4))  # 5 batches
    by_hand = [(hook, e, i, i + (hook == "end")) for e in range(2) for i in range(5) for hook in ("start", "end")]
    assert seen == by_hand
    assert batches_processed(None) is None and batches_processed(object()) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_lightning_package_of_modules_and_callbacks(package: str) -> None:
    pl = importlib.import_module(package)
    assert lightning_package(plain_module(pl)) == package
    assert lightning_package(pl.Callback()) == package


@pytest.mark.parametrize("package", PACKAGES)
def test_scales_float16_losses_only_under_a_grad_scaler(package: str) -> None:
    pl = importlib.import_module(package)
    plugins = importlib.import_module(f"{package}.plugins")
    quiet = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    assert not scales_float16_losses(None)
    for precision in ("32-true", "bf16-mixed", "64-true"):
        assert not scales_float16_losses(pl.Trainer(precision=precision, **quiet)), precision
    scaler = torch.amp.GradScaler("cpu")
    trainer = pl.Trainer(plugins=[plugins.MixedPrecision("16-mixed", "cpu", scaler=scaler)], **quiet)
    assert scales_float16_losses(trainer)


@pytest.mark.parametrize("package", PACKAGES)
def test_a_callback_hook_that_is_not_callable_is_skipped(package: str) -> None:
    # LossWeightingCallback shadows the per-step hooks it does nothing in with None.
    pl = importlib.import_module(package)

    class Counting(pl.Callback):
        def __init__(self) -> None:
            self.calls = 0
            self.on_after_backward = None

        def on_train_batch_end(self, *args: Any) -> None:
            self.calls += 1

    counting = Counting()
    trainer = pl.Trainer(
        max_steps=3,
        callbacks=[counting],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    data = DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=4)
    trainer.fit(plain_module(pl), data)
    assert counting.calls == 3 and trainer.global_step == 3
