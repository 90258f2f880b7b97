"""``strategy="ddp_spawn"`` on 2 CPU processes: each process keeps its own torchmetrics states.

torch.multiprocessing hands the spawned processes the model's tensors in shared memory, and
Lightning gives them private copies of the parameters and buffers only: the metrics' states were
one storage for both processes and the main process's model, so the sanity check's updates were
still in a later ``validate`` of the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.multiprocessing.spawn import ProcessExitedException
from torch.utils.data import DataLoader

from lightning_multiloss.weighting import create_weighting
from tests._models import ToyDataset, ToyNet, quiet_trainer, toy_loader


def spawned_fit(make_model: Callable[[], ToyNet], make_trainer: Callable[[], Any], *loaders: Any) -> tuple[ToyNet, Any]:
    """Fit with ddp_spawn, once more if gloo aborted a process as they shut down: on a loaded
    2-core machine a process whose fit had ended ("Trainer.fit stopped" printed, the Callback's
    barrier passed) was now and then killed by SIGABRT in gloo's teardown ("terminate called
    without an active exception"), after the training this file checks."""
    for attempt in range(2):
        model, trainer = make_model(), make_trainer()
        try:
            trainer.fit(model, *loaders)
        except ProcessExitedException as error:
            if error.signal_name != "SIGABRT" or attempt == 1:
                raise
            continue
        return model, trainer
    raise AssertionError("unreachable")


@pytest.mark.slow
def test_a_validate_after_a_spawned_fit_is_the_plain_evaluation(tmp_path) -> None:
    val = ToyDataset(32, seed=1)  # 16 samples per process: no padding
    model, _ = spawned_fit(
        lambda: ToyNet(metrics=True),
        lambda: quiet_trainer(
            default_root_dir=tmp_path,
            accelerator="cpu",
            devices=2,
            strategy="ddp_spawn",
            max_epochs=1,
            num_sanity_val_steps=2,
        ),
        toy_loader(64, batch_size=8),
        DataLoader(val, batch_size=8),
    )
    got = quiet_trainer(default_root_dir=tmp_path / "validate").validate(
        model, DataLoader(val, batch_size=8), verbose=False
    )[0]

    with torch.no_grad():
        outputs = model(val.x)
    cls, reg = F.cross_entropy(outputs["cls"], val.cls), F.mse_loss(outputs["reg"], val.reg)
    accuracy = (outputs["cls"].argmax(dim=1) == val.cls).float().mean()
    expected = {
        "val/loss/cls": cls,
        "val/loss/reg": reg,
        "val/loss": cls + reg,  # weights 1
        "val/acc/cls": accuracy,
        "val/mse/reg": reg,
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(float(value), rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_a_spawned_fit_keeps_each_process_solver_state_apart(tmp_path) -> None:
    # Nash-MTL counts its steps in host state, a plain tensor that torch.multiprocessing put in
    # shared memory: both processes added to one count (7 after 4 steps).
    model, _ = spawned_fit(
        lambda: ToyNet(create_weighting("nash_mtl")),
        lambda: quiet_trainer(
            default_root_dir=tmp_path, accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=4
        ),
        toy_loader(64, batch_size=8),
    )
    assert int(model.weighting.num_steps) == 4  # rank 0's state, sent back to this process
