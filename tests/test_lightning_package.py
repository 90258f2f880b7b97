"""The same model on ``lightning.pytorch`` (the ``lightning`` package) and on ``pytorch_lightning``.

The two packages are separate copies of Lightning: a module of one is refused by the other's
Trainer. The mixin hands each module the callback class of its own package; these tests train
one small two-task model written once and built on either ``LightningModule``, and check that
both train the same way, write the weight trajectory, and resume from a checkpoint.
"""

from __future__ import annotations

import csv
import glob
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning.pytorch as lp
import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lightning_multiloss import MultiLossError, MultiTaskMixin
from lightning_multiloss._callback_hooks import LossWeightingHooks
from lightning_multiloss._lightning import lightning_package
from lightning_multiloss.callback import LossWeightingCallback as PLCallback
from lightning_multiloss.lightning import LossWeightingCallback as LPCallback
from lightning_multiloss.schedules import Linear
from lightning_multiloss.weighting import Learnable, Scheduled, Weighting
from tests._models import toy_loader, toy_tasks

PACKAGES: dict[str, ModuleType] = {"lightning.pytorch": lp, "pytorch_lightning": pl}
CALLBACKS = {"lightning.pytorch": LPCallback, "pytorch_lightning": PLCallback}
STEPS_PER_EPOCH = 2  # 32 samples, batches of 16
EPOCHS = 4


def model_class(package: ModuleType) -> type:
    """The user's model, written once; only the LightningModule it is built on changes."""

    class TwoTaskNet(MultiTaskMixin, package.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self, weighting: Weighting, seed: int = 0) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
            self.heads = nn.ModuleDict({"cls": nn.Linear(16, 3), "reg": nn.Linear(16, 2)})
            self.configure_multitask(toy_tasks(("cls", "reg")), weighting)

        def forward(self, x: Tensor) -> dict[str, Tensor]:
            z = self.trunk(x)
            return {name: head(z) for name, head in self.heads.items()}

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=0.02)

    return TwoTaskNet


MODELS = {name: model_class(package) for name, package in PACKAGES.items()}

WEIGHTINGS = {
    "learnable": lambda: Learnable(init=0.5),
    # alpha from 1 to 0 over the whole run, by optimizer step
    "scheduled": lambda: Scheduled(Linear(1.0, 0.0, duration=STEPS_PER_EPOCH * EPOCHS)),
}


def trainer_for(package_name: str, root: Path, **kwargs: Any) -> Any:
    package = PACKAGES[package_name]
    checkpoint = package.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, filename="{epoch}")
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": EPOCHS,
        "logger": package.loggers.CSVLogger(root, name="logs"),
        "callbacks": [checkpoint],
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
    }
    options.update(kwargs)
    return package.Trainer(**options)


def weighting_callbacks(trainer: Any) -> list[LossWeightingHooks]:
    return [cb for cb in trainer.callbacks if isinstance(cb, LossWeightingHooks)]


def read_trajectory(folder: str) -> list[dict[str, str]]:
    with open(os.path.join(folder, "loss_weights.csv"), newline="") as f:
        return list(csv.DictReader(f))


def params(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(package_name: str, weighting: str, root: Path, resume_from: str | None = None) -> dict[str, Any]:
    model = MODELS[package_name](WEIGHTINGS[weighting]())
    trainer = trainer_for(package_name, root)
    trainer.fit(model, toy_loader(n=16 * STEPS_PER_EPOCH, batch_size=16), ckpt_path=resume_from)
    (callback,) = weighting_callbacks(trainer)
    return {
        "model": model,
        "trainer": trainer,
        "callback": callback,
        "params": params(model),
        "log_dir": trainer.log_dir,
        "checkpoints": sorted(glob.glob(str(root / "ckpt" / "*.ckpt"))),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, str], dict[str, Any]]:
    """For each package and weighting: an uninterrupted run, and one resumed from its epoch-2 checkpoint."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for package_name in PACKAGES:
        for weighting in WEIGHTINGS:
            root = tmp_path_factory.mktemp(f"{package_name}-{weighting}")
            full = train(package_name, weighting, root / "full")
            middle = str(root / "full" / "ckpt" / "epoch=1.ckpt")  # written after 2 of the 4 epochs
            out[package_name, weighting, "full"] = full
            out[package_name, weighting, "resumed"] = train(package_name, weighting, root / "resumed", middle)
            out[package_name, weighting, "full"]["middle"] = middle
    return out


@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
@pytest.mark.parametrize("package_name", list(PACKAGES))
def test_the_mixin_attaches_its_own_packages_callback(
    runs: dict[tuple[str, str, str], dict[str, Any]], package_name: str, weighting: str
) -> None:
    run = runs[package_name, weighting, "full"]
    assert lightning_package(run["model"]) == package_name
    assert isinstance(run["model"], PACKAGES[package_name].LightningModule)
    # Exactly one weighting callback, of the model's package, added by the mixin.
    assert type(run["callback"]) is CALLBACKS[package_name]
    assert isinstance(run["callback"], PACKAGES[package_name].Callback)
    steps = STEPS_PER_EPOCH * EPOCHS
    assert run["trainer"].global_step == steps
    # Its trajectory files, in the logger's folder.
    assert os.path.isfile(os.path.join(run["log_dir"], "loss_weights.png"))
    rows = read_trajectory(run["log_dir"])
    assert int(rows[-1]["step"]) == steps + 1  # the weights in force at the end
    rows = rows[:-1]
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))
    assert [int(r["epoch"]) for r in rows] == [(s - 1) // STEPS_PER_EPOCH for s in range(1, steps + 1)]
    alphas = [float(r["cls"]) for r in rows]
    for r, alpha in zip(rows, alphas, strict=True):
        assert float(r["reg"]) == pytest.approx(1.0 - alpha, abs=1e-6)
    if weighting == "scheduled":
        # By hand: the step that ends at optimizer step s ran with alpha = 1 − (s − 1)/8.
        assert alphas == pytest.approx([1.0 - (s - 1) / steps for s in range(1, steps + 1)], abs=1e-6)
    else:
        # A learned alpha: it moved from 0.5, and stayed in [0, 1].
        assert alphas[0] == pytest.approx(0.5, abs=0.05) and abs(alphas[-1] - 0.5) > 1e-3
        assert all(0.0 <= a <= 1.0 for a in alphas)


@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
def test_both_packages_train_the_same_parameters(
    runs: dict[tuple[str, str, str], dict[str, Any]], weighting: str
) -> None:
    a = runs["lightning.pytorch", weighting, "full"]
    b = runs["pytorch_lightning", weighting, "full"]
    start = params(MODELS["pytorch_lightning"](WEIGHTINGS[weighting]()))
    assert a["params"].keys() == b["params"].keys() == start.keys()
    for key in a["params"]:
        assert torch.equal(a["params"][key], b["params"][key]), key
    assert any(not torch.equal(a["params"][k], start[k]) for k in start)  # it trained
    assert a["callback"].steps == b["callback"].steps
    assert a["callback"].weights == b["callback"].weights


@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
@pytest.mark.parametrize("package_name", list(PACKAGES))
def test_a_checkpoint_resumes_where_it_stopped(
    runs: dict[tuple[str, str, str], dict[str, Any]], package_name: str, weighting: str
) -> None:
    full = runs[package_name, weighting, "full"]
    resumed = runs[package_name, weighting, "resumed"]
    # Plain values only: the checkpoint loads with weights_only=True.
    state = torch.load(full["middle"], weights_only=True)
    assert state["global_step"] == 2 * STEPS_PER_EPOCH
    saved = state["callbacks"]["LossWeightingCallback"]
    assert saved["steps"] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    # Resumed for the last two epochs: the same parameters and the same weight record.
    for key, value in full["params"].items():
        assert torch.equal(resumed["params"][key], value), key
    assert resumed["callback"].steps == full["callback"].steps
    assert resumed["callback"].weights == full["callback"].weights
    rows = read_trajectory(resumed["log_dir"])
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS_PER_EPOCH * EPOCHS + 2))  # + the end


def test_a_pytorch_lightning_checkpoint_resumes_under_lightning(
    runs: dict[tuple[str, str, str], dict[str, Any]], tmp_path: Path
) -> None:
    # Moving a project from pytorch_lightning to lightning.pytorch keeps its checkpoints.
    full = runs["pytorch_lightning", "learnable", "full"]
    moved = train("lightning.pytorch", "learnable", tmp_path, resume_from=full["middle"])
    for key, value in full["params"].items():
        assert torch.equal(moved["params"][key], value), key
    assert moved["callback"].steps == full["callback"].steps


@pytest.mark.parametrize("package_name", list(PACKAGES))
def test_the_other_packages_callback_is_refused_by_name(package_name: str, tmp_path: Path) -> None:
    other = next(name for name in PACKAGES if name != package_name)
    wrong = CALLBACKS[other]()
    trainer = trainer_for(package_name, tmp_path, max_steps=1, callbacks=[wrong], logger=False)
    model = MODELS[package_name](WEIGHTINGS["learnable"]())
    right = "lightning_multiloss.lightning" if package_name == "lightning.pytorch" else "lightning_multiloss"
    with pytest.raises(MultiLossError, match=rf"TwoTaskNet is a {package_name} module, .*`from {right} import"):
        trainer.fit(model, toy_loader(n=16, batch_size=16))
    assert float(model.weighting.alpha.detach()) == 0.5  # stopped before any step


def test_package_is_read_from_the_lightning_module_base() -> None:
    # A user package whose name starts like Lightning's is not Lightning.
    cls = type("Net", (MODELS["lightning.pytorch"],), {"__module__": "pytorch_lightning_recipes.models"})
    assert lightning_package(cls.__new__(cls)) == "lightning.pytorch"
    cls = type("Net", (MODELS["pytorch_lightning"],), {"__module__": "lightning_recipes.models"})
    assert lightning_package(cls.__new__(cls)) == "pytorch_lightning"
