"""The package in a user's app shaped as the lightning-hydra-template, run as a user runs it.

The test writes a small app into a temporary folder: ``configs/`` with ``train.yaml`` (a defaults
list) and the template's groups ``data/``, ``model/``, ``callbacks/``, ``logger/``, ``trainer/``,
``paths/``, ``hydra/``; ``src/train.py`` and a ``lightning`` (``lightning.pytorch``) LitModule
built on ``MultiTaskMixin``, trained on an in-memory dataset. ``pkg://lightning_multiloss.conf`` in
its search path supplies ``weighting=learnable`` and the ``run_result`` Hydra callback. It runs a
2-job sweep with the real command line, then ``multiloss-report`` on the sweep's folder.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train_cli import clean_env

FILES = {
    "configs/train.yaml": """\
# @package _global_
defaults:
  - _self_
  - data: blobs
  - model: multitask
  - weighting: fixed  # from pkg://lightning_multiloss.conf
  - callbacks: default
  - logger: csv
  - trainer: default
  - paths: default
  - hydra: default

hydra:
  searchpath:  # only the primary config may set it
    - pkg://lightning_multiloss.conf

task_name: train
seed: 0
test: true
optimized_metric: val/acc/label
""",
    "configs/data/blobs.yaml": """\
_target_: src.data.blobs_datamodule.BlobsDataModule
n_train: 96
n_val: 32
n_test: 32
batch_size: 16
""",
    "configs/model/multitask.yaml": """\
_target_: src.models.multitask_module.MultiTaskLitModule
hidden: 16
lr: 0.02
""",
    "configs/callbacks/default.yaml": """\
model_checkpoint:
  _target_: lightning.pytorch.callbacks.ModelCheckpoint
  dirpath: ${paths.output_dir}/checkpoints
  monitor: val/acc/label
  mode: max
  save_last: true
""",
    "configs/logger/csv.yaml": """\
csv:
  _target_: lightning.pytorch.loggers.csv_logs.CSVLogger
  save_dir: ${paths.output_dir}
  name: csv
  version: ""
""",
    "configs/trainer/default.yaml": """\
_target_: lightning.pytorch.trainer.Trainer
default_root_dir: ${paths.output_dir}
accelerator: cpu
devices: 1
max_epochs: 3
log_every_n_steps: 1
enable_progress_bar: false
enable_model_summary: false
""",
    "configs/paths/default.yaml": """\
root_dir: .
log_dir: ${paths.root_dir}/logs
output_dir: ${hydra:runtime.output_dir}
""",
    "configs/hydra/default.yaml": """\
defaults:
  - override callbacks: run_result  # from pkg://lightning_multiloss.conf: result.json per job

run:
  dir: ${paths.log_dir}/${task_name}/runs/${now:%Y-%m-%d_%H-%M-%S}
sweep:
  dir: ${paths.log_dir}/${task_name}/multiruns/${now:%Y-%m-%d_%H-%M-%S}
  subdir: ${hydra.job.num}
job:
  chdir: false
""",
    "src/__init__.py": "",
    "src/data/__init__.py": "",
    "src/models/__init__.py": "",
    "src/data/blobs_datamodule.py": '''\
import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class BlobsDataModule(L.LightningDataModule):
    """Points of 4 features: `label` is the quadrant of the first two, `size` the norm of all four."""

    def __init__(self, n_train: int, n_val: int, n_test: int, batch_size: int) -> None:
        super().__init__()
        self.sizes = (n_train, n_val, n_test)
        self.batch_size = batch_size

    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(1234)  # the same data for every seed
        x = torch.randn(sum(self.sizes), 4, generator=g)
        label = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()
        size = x.norm(dim=1, keepdim=True)
        self.train_set, self.val_set, self.test_set = (
            TensorDataset(*t) for t in zip(*(v.split(self.sizes) for v in (x, label, size)))
        )

    def loader(self, data, shuffle=False):
        # (x, {task: target}) pairs: the mixin reads the targets by task name.
        collate = lambda rows: (torch.stack([r[0] for r in rows]), {
            "label": torch.stack([r[1] for r in rows]), "size": torch.stack([r[2] for r in rows])})
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, collate_fn=collate)

    def train_dataloader(self):
        return self.loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self.loader(self.val_set)

    def test_dataloader(self):
        return self.loader(self.test_set)
''',
    "src/models/multitask_module.py": """\
import lightning as L
import torch
import torchmetrics
from torch import nn

from lightning_multiloss import MultiTaskMixin, Task


class MultiTaskLitModule(MultiTaskMixin, L.LightningModule):
    def __init__(self, weighting, hidden: int = 16, lr: float = 0.02) -> None:
        super().__init__()
        self.lr = lr
        self.trunk = nn.Sequential(nn.Linear(4, hidden), nn.ReLU())
        self.heads = nn.ModuleDict({"label": nn.Linear(hidden, 4), "size": nn.Linear(hidden, 1)})
        accuracy = torchmetrics.Accuracy("multiclass", num_classes=4)
        self.configure_multitask(
            tasks=[
                Task("label", nn.CrossEntropyLoss(), metrics={"acc": accuracy}),
                Task("size", nn.MSELoss(), metrics={"mae": torchmetrics.MeanAbsoluteError()}),
            ],
            weighting=weighting,
        )

    def forward(self, x):
        z = self.trunk(x)
        return {name: head(z) for name, head in self.heads.items()}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)
""",
    "src/train.py": """\
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the template does this with rootutils

import hydra
import lightning as L
from hydra.utils import instantiate


@hydra.main(version_base="1.3", config_path="../configs", config_name="train.yaml")
def main(cfg):
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, weighting=instantiate(cfg.weighting))
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = [instantiate(lg) for lg in cfg.logger.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    trainer.fit(model, datamodule=datamodule)
    objective = float(trainer.callback_metrics[cfg.optimized_metric])
    if cfg.test:
        trainer.test(model, datamodule=datamodule, ckpt_path="best")
    return objective


if __name__ == "__main__":
    main()
""",
}


def logged_test_metrics(job: Path) -> dict[str, float]:
    """The test row of the job's CSV logger (Lightning's own record of what was logged)."""
    with open(job / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    (row,) = [r for r in rows if r.get("test/acc/label")]
    return {key: float(value) for key, value in row.items() if key.startswith("test/") and value}


@pytest.mark.slow
def test_a_template_shaped_lightning_app_is_swept_and_reported(tmp_path: Path) -> None:
    app = tmp_path / "app"
    for name, text in FILES.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    run = subprocess.run(
        [sys.executable, "src/train.py", "-m", "weighting=learnable", "seed=1,2", "hydra.sweep.dir=logs/sweep"],
        cwd=app,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    sweep = app / "logs" / "sweep"
    for job, seed in (("0", 1), ("1", 2)):
        result = json.loads((sweep / job / "result.json").read_text())
        assert result["status"] == "completed", result["error"]
        assert result["weighting"] == "learnable" and result["seed"] == seed
        assert result["overrides"] == ["weighting=learnable", f"seed={seed}"]
        assert result["config_key"] == "weighting=learnable"
        assert result["primary"] == {"label": "acc", "size": "mae"} and result["evaluated_on"] == "test"
        logged = logged_test_metrics(sweep / job)
        for task, metrics in result["metrics"].items():
            for metric, value in metrics.items():
                assert value == pytest.approx(logged[f"test/{metric}/{task}"]), (job, task, metric)
        # Learnable alpha: the two weights are alpha and 1 - alpha.
        assert sum(result["weights"].values()) == pytest.approx(1.0)
        assert (sweep / job / "csv" / "loss_weights.png").is_file()

    report = subprocess.run(
        [str(Path(sys.executable).parent / "multiloss-report"), "logs/sweep"],
        cwd=app,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    assert "2 runs read: 2 completed (2 swept in 1 configuration" in report.stdout
    with open(sweep / "report.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["weighting"], row["seeds"], row["n"]) == ("learnable", "1 2", "2")
    accs = [json.loads((sweep / job / "result.json").read_text())["metrics"]["label"]["acc"] for job in ("0", "1")]
    assert float(row["label/acc/mean"]) == pytest.approx(sum(accs) / 2)
