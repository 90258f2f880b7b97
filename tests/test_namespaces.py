"""``multiloss-train`` under each Lightning package: ``lightning.pytorch`` (the default) and ``pytorch_lightning``.

A Trainer of one package refuses the modules, data modules and callbacks of the other, so every
object of a run must come from the package the config's ``lightning`` key names. These tests build
the main job under each package and check the package of every object, then run it (``trainer=debug``)
and compare the two runs: the same seed trains the same network the same way in both.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import lightning.pytorch as lp
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lightning_multiloss import MultiLossError
from lightning_multiloss.app.config import config_dir, validate_config
from lightning_multiloss.app.namespace import import_lightning, target_for
from lightning_multiloss.app.train import build, run

PACKAGES: dict[str, ModuleType] = {"lightning.pytorch": lp, "pytorch_lightning": pl}
QUIET = ("trainer=debug", "trainer.enable_progress_bar=false")


def compose_train(out: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("train", overrides=[*QUIET, *overrides, f"output_dir={out}"])


def package_of(obj: object) -> str:
    """The root package of the module that defines ``obj``'s class."""
    return type(obj).__module__.split(".")[0]


@pytest.mark.parametrize("name", list(PACKAGES))
def test_every_object_of_a_run_comes_from_the_chosen_package(tmp_path: Path, name: str) -> None:
    # A callback written for the other package is mapped to the chosen one too.
    other = next(n for n in PACKAGES if n != name)
    extra = f"+callbacks.lr._target_={other}.callbacks.LearningRateMonitor"
    datamodule, model, trainer = build(compose_train(tmp_path, f"lightning={name}", extra))
    lightning, wrong = PACKAGES[name], PACKAGES[other]
    assert type(trainer) is lightning.Trainer
    assert isinstance(datamodule, lightning.LightningDataModule)
    assert not isinstance(datamodule, wrong.LightningDataModule)
    assert isinstance(model, lightning.LightningModule) and not isinstance(model, wrong.LightningModule)
    assert type(datamodule).__name__ == "DigitsDataModule" and type(model).__name__ == "MultiTaskNet"
    kinds = {type(cb).__name__ for cb in trainer.callbacks}
    assert {"ModelCheckpoint", "LossWeightingCallback", "LearningRateMonitor"} <= kinds
    for callback in trainer.callbacks:
        assert isinstance(callback, lightning.Callback) and not isinstance(callback, wrong.Callback), callback
    assert [type(logger).__name__ for logger in trainer.loggers] == ["CSVLogger"]
    assert all(isinstance(logger, lightning.loggers.Logger) for logger in trainer.loggers)
    root = name.split(".")[0]
    assert package_of(trainer) == package_of(trainer.loggers[0]) == root


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The default experiment, learnable weights, 2 epochs of 3 batches, under each package."""
    results = {}
    for name in PACKAGES:
        out = tmp_path_factory.mktemp(name.replace(".", "_"))
        overrides = (*QUIET, f"lightning={name}", "weighting=learnable")
        results[name] = run(compose_train(out, *overrides), overrides)
        results[name]["state"] = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    return results


@pytest.mark.parametrize("name", list(PACKAGES))
def test_the_main_job_runs_under_each_package(runs: dict[str, dict], name: str) -> None:
    result = runs[name]
    assert result["status"] == "completed" and result["evaluated_on"] == "test"
    assert list(result["metrics"]) == ["digit", "recon", "centre"]
    assert result["state"]["global_step"] == 6
    assert result["state"]["callbacks"]["LossWeightingCallback"]["steps"] == [1, 2, 3, 4, 5, 6]


def test_both_packages_train_the_same_network(runs: dict[str, dict]) -> None:
    a, b = runs["lightning.pytorch"], runs["pytorch_lightning"]
    assert a["metrics"] == b["metrics"] and a["weights"] == b["weights"]
    assert a["state"]["state_dict"].keys() == b["state"]["state_dict"].keys()
    for key, value in a["state"]["state_dict"].items():
        assert torch.equal(value, b["state"]["state_dict"][key]), key


def test_the_default_is_lightning_pytorch(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path)
    assert cfg.lightning == "lightning.pytorch"
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    assert cfg.callbacks.loss_weighting.lightning == "lightning.pytorch"


def test_an_unknown_package_is_named(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "lightning=lightning")
    message = "lightning='lightning' is not a Lightning package: choose lightning.pytorch (the lightning package) or"
    with pytest.raises(MultiLossError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_config(cfg)
    with pytest.raises(MultiLossError, match="is not a Lightning package"):
        build(cfg)


def test_a_package_that_is_not_installed_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)  # as if it were not installed
    with pytest.raises(MultiLossError, match=r"lightning=pytorch_lightning: the package is not installed .*pip"):
        import_lightning("pytorch_lightning")
    assert import_lightning("lightning.pytorch") is lp


def test_targets_are_mapped_both_ways() -> None:
    pairs = {
        "lightning.pytorch.Trainer": "pytorch_lightning.Trainer",
        "lightning.pytorch.loggers.CSVLogger": "pytorch_lightning.loggers.CSVLogger",
        "lightning_multiloss.app.models.MultiTaskNet": "lightning_multiloss.app.pl.MultiTaskNet",
        "lightning_multiloss.app.data.MultiMNISTDataModule": "lightning_multiloss.app.pl.MultiMNISTDataModule",
        "lightning_multiloss.lightning.LossWeightingCallback": "lightning_multiloss.callback.LossWeightingCallback",
    }
    for on_lp, on_pl in pairs.items():
        assert target_for(on_lp, "pytorch_lightning") == on_pl
        assert target_for(on_pl, "lightning.pytorch") == on_lp
        assert target_for(on_lp, "lightning.pytorch") == on_lp and target_for(on_pl, "pytorch_lightning") == on_pl
    for unrelated in ("torch.optim.Adam", "lightning_multiloss.weighting.Fixed", "lightning_fabric.plugins.X"):
        assert target_for(unrelated, "pytorch_lightning") == target_for(unrelated, "lightning.pytorch") == unrelated
