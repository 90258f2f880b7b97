"""Training metrics and best-so-far values on 2 DDP processes: 2 epochs, validation each epoch.

Each rank saves the outputs its model made (training and validation), the targets of its
batches, the values logged at each epoch's end and the warnings of its fit; the test computes the global values from
both ranks' records.

Usage: python ddp_metrics.py OUT_DIR
"""

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from lightning_multiloss import MultiTaskMixin, Task
from tests._ddp import save_rank_result
from tests._models import ToyDataset, quiet_trainer

N_TRAIN, N_VAL, BATCH = 64, 32, 8
TRAIN_KEYS = ("train/acc/cls", "train/mse/reg", "train/loss/cls_epoch", "train/loss/reg_epoch")
VAL_KEYS = ("val/acc/cls", "val/mse/reg", "val/loss", "val/acc_best/cls", "val/mse_best/reg", "val/loss_best")


class Net(MultiTaskMixin, pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.heads = nn.ModuleDict({"cls": nn.Linear(16, 3), "reg": nn.Linear(16, 2)})
        self.outputs = {"train": [], "val": []}
        self.targets = {"train": [], "val": []}
        acc = torchmetrics.Accuracy("multiclass", num_classes=3, validate_args=False)
        self.configure_multitask(
            [
                Task("cls", nn.CrossEntropyLoss(), metrics={"acc": acc}),
                Task("reg", nn.MSELoss(), metrics={"mse": torchmetrics.MeanSquaredError()}),
            ],
            train_metrics=True,
            best_metrics=True,
        )

    def forward(self, x):
        z = self.trunk(x)
        return {name: head(z) for name, head in self.heads.items()}

    def training_step(self, batch, batch_idx):
        self._record("train", batch)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        if not self.trainer.sanity_checking:
            self._record("val", batch)
        return super().validation_step(batch, batch_idx)

    def _record(self, stage, batch):
        with torch.no_grad():
            outputs = self(batch["x"])
        self.outputs[stage].append({k: v.detach().clone() for k, v in outputs.items()})
        self.targets[stage].append({"cls": batch["cls"].clone(), "reg": batch["reg"].clone()})

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.3)


class Logged(pl.Callback):
    """The values logged for each epoch (the training epoch values exist once that epoch has ended)."""

    def __init__(self) -> None:
        self.val = []
        self.train = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val.append({k: float(trainer.callback_metrics[k]) for k in VAL_KEYS})

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self.train.append({k: float(trainer.callback_metrics[k]) for k in TRAIN_KEYS})

    def on_train_end(self, trainer, pl_module):
        self.train.append({k: float(trainer.callback_metrics[k]) for k in TRAIN_KEYS})


def loader(dataset, rank):
    return DataLoader(dataset, batch_size=BATCH, sampler=DistributedSampler(dataset, 2, rank, shuffle=False))


def main() -> None:
    out_dir = Path(sys.argv[1])
    logged = Logged()
    trainer = quiet_trainer(
        devices=2,
        strategy="ddp",
        max_epochs=2,
        callbacks=[logged],
        use_distributed_sampler=False,
        num_sanity_val_steps=1,
        default_root_dir=out_dir,
    )
    model = Net()
    rank = trainer.global_rank
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader(ToyDataset(N_TRAIN), rank), loader(ToyDataset(N_VAL, seed=1), rank))
    save_rank_result(
        out_dir,
        rank,
        {
            "outputs": model.outputs,
            "targets": model.targets,
            "train": logged.train,
            "val": logged.val,
            "best": model.state_dict()["_mt_best.values"].clone(),
            "warnings": [str(w.message) for w in caught],
        },
    )


if __name__ == "__main__":
    main()
