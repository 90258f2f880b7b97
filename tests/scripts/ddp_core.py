"""One 2-process DDP launch, three runs; each rank saves what the test compares.

- ``skip``: ``on_nonfinite="skip"``, a NaN target in rank 1's batch ``SKIP_BATCH`` only;
  logs to a CSVLogger (the trajectory file must be written once, by rank 0).
- ``reference``: the same model and data without the samples of that step (both ranks' batches).
- ``masked``: the ``reg`` task has no labelled sample in rank 1's batch ``MASK_BATCH``.
- ``raise``: ``on_nonfinite="raise"`` (the default), the NaN of ``skip`` on rank 1 only, checked at
  the epoch's end: both processes must stop, together, naming the step (it ends in an error).
- ``gradvac_full``, ``gradvac_resumed``: GradVac in ``ddp="local"`` mode (each process keeps its
  own targets), uninterrupted and resumed from the middle of the epoch.
- ``folder_refused``: the Callback's folder cannot be made: both processes stop before training.
- ``raise_local``: the same with MGDA in ``ddp="local"`` mode, where only rank 1's solver sees
  the NaN: both processes must still stop together, naming the step.
- ``weights_local``: a Gramian strategy of a user's own in ``ddp="local"`` mode whose weights are
  infinite on rank 1 at step ``SKIP_BATCH`` (finite losses): both processes stop together, naming
  the strategy and the step (rank 1 raised alone, and rank 0 died in DDP's all-reduce);
  ``weights_local_skip``: the same with ``on_nonfinite="skip"``, which does not skip a strategy's
  failure: both stop at once (they skipped the step and went on).
- ``skip_local``: IMTL-G in ``ddp="local"`` mode with ``on_nonfinite="skip"``, a NaN gradient (finite
  loss) on rank 1 at the first step: both processes skip that step and go on together.
- ``val_raise``: a NaN in rank 1's first validation batch: both processes stop at the epoch's end.
- ``negative_raise``, ``negative_skip``: FAMO (which needs losses >= 0) with a negative ``reg`` loss
  on rank 1 only at step ``SKIP_BATCH``: both processes stop with the same error, naming the task.
- ``unfrozen``: MGDA on the parameter route with a trunk layer frozen before fit and trained from
  the second epoch: rank 0 warns that DDP does not average that layer's gradients.
- ``dwa_saved``, ``dwa_resumed``, ``dwa_resumed_at_epoch_end``: DWA in float64 over 2 epochs,
  checkpointed in the middle of epoch 0 (step ``DWA_SAVE_STEP``) and at its last batch: each rank's
  own running sums of the epoch's losses then, and after resuming from those checkpoints, and the
  final states (the loaders resume in the middle of an epoch); with the tasks' training metrics,
  whose epoch values and the losses' epoch means (``EPOCH_VALUES``) each run records.

Usage: python ddp_core.py OUT_DIR
"""

import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from lightning_multiloss import (
    LossWeightingCallback,
    MultiLossError,
    NonFiniteLossError,
    ResumableDataLoader,
    ShardSampler,
    Task,
)
from lightning_multiloss.weighting import Fixed, GramianWeighting, Learnable, create_weighting
from tests._ddp import save_rank_result
from tests._models import ToyDataset, ToyNet, quiet_trainer

N, BATCH = 96, 8  # 2 ranks x 6 batches of 8; batch j of rank r holds samples 16 j + r + 2 i
SKIP_BATCH, MASK_BATCH = 2, 3
DWA_SAVE_STEP = 3  # of 6 steps in the epoch
# What the training epochs log: the task losses' epoch means and the tasks' training metrics.
EPOCH_VALUES = ("train/loss/cls_epoch", "train/loss/reg_epoch", "train/acc/cls", "train/mse/reg")


def stopped_by(error_type: type[Exception], trainer: pl.Trainer, *fit_args: Any) -> dict[str, Any]:
    """Fit, expecting ``error_type``: its message and the step training stopped at (``{"error": None}``
    where training ended without it)."""
    try:
        trainer.fit(*fit_args)
    except error_type as error:
        return {"error": str(error), "global_step": trainer.global_step}
    return {"error": None}


class Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class NaNOnRank1(ToyNet):
    """Puts a NaN into one target of rank 1's batch ``SKIP_BATCH``."""

    def training_step(self, batch, batch_idx):
        if self.global_rank == 1 and batch_idx == SKIP_BATCH:
            batch = dict(batch)
            batch["reg"] = batch["reg"].clone()
            batch["reg"][0, 0] = float("nan")
        return super().training_step(batch, batch_idx)


class NaNOnRank1InValidation(ToyNet):
    """Puts a NaN into one target of rank 1's first validation batch."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if self.global_rank == 1 and batch_idx == 0:
            batch = dict(batch)
            batch["reg"] = batch["reg"].clone()
            batch["reg"][0, 0] = float("nan")
        return super().validation_step(batch, batch_idx, dataloader_idx)


def nan_gradient_on_rank1_once(output: Tensor, target: Tensor) -> Tensor:
    """MSE, plus √(0·output) at its first training call on rank 1: a finite loss whose gradient is NaN."""
    loss = nn.functional.mse_loss(output, target)
    if output.requires_grad and dist.get_rank() == 1 and not _NAN_GRADIENT_GIVEN:
        _NAN_GRADIENT_GIVEN.append(True)
        loss = loss + torch.sqrt((output * 0).sum())
    return loss


_NAN_GRADIENT_GIVEN: list[bool] = []


class InfiniteOnRank1(GramianWeighting):
    """Uniform weights, but an infinite one on rank 1 at its step ``SKIP_BATCH`` (its ``SKIP_BATCH``-th solve)."""

    name = "test-infinite-on-rank1"

    def __init__(self) -> None:
        super().__init__(ddp="local")
        self.solves = 0

    def compute_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        weights = torch.ones(len(losses), dtype=gramian.dtype)
        if self.training:
            if dist.get_rank() == 1 and self.solves == SKIP_BATCH:
                weights[1] = float("inf")
            self.solves += 1
        return weights


class NegativeOnRank1(ToyNet):
    """Rank 1's ``reg`` loss is shifted below 0 at step ``SKIP_BATCH`` (as a negative log-likelihood can be)."""

    def task_losses(self, outputs, batch):
        losses = super().task_losses(outputs, batch)
        if self.training and self.global_rank == 1 and self.trainer.global_step == SKIP_BATCH:
            losses = losses - torch.tensor([0.0, 50.0])
        return losses


class UnfrozenLater(ToyNet):
    """A two-layer trunk whose first layer is frozen when DDP wraps the model and trained from epoch 1."""

    def __init__(self) -> None:
        super().__init__(create_weighting("mgda"), lr=0.05)
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.trunk[0].requires_grad_(False)

    def on_train_epoch_start(self) -> None:
        self.trunk[0].requires_grad_(self.current_epoch >= 1)


class WithMask(Dataset):
    """ToyDataset plus ``reg_mask``: false for all of rank 1's batch ``MASK_BATCH``, and for a few other samples."""

    def __init__(self) -> None:
        self.data = ToyDataset(N)
        self.mask = torch.ones(N, dtype=torch.bool)
        self.mask[[16 * MASK_BATCH + 1 + 2 * i for i in range(BATCH)]] = False
        self.mask[[0, 5, 30]] = False

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):
        return {**self.data[i], "reg_mask": self.mask[i]}


class EpochSums(pl.Callback):
    """This rank's running sums of the epoch's task losses (DWA's), after step ``DWA_SAVE_STEP`` and at
    the start of training (after a checkpoint was restored)."""

    def __init__(self) -> None:
        self.saved: list[float] | None = None
        self.at_start: list[float] | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.at_start = pl_module.weighting.epoch_losses.total.tolist()
        self.metrics: dict[int, list[float]] = {}  # the logged training metrics of each epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._record_metrics(trainer, trainer.current_epoch - 1)

    def on_train_end(self, trainer, pl_module) -> None:
        self._record_metrics(trainer, trainer.max_epochs - 1)  # the last epoch (current_epoch is past it)

    def _record_metrics(self, trainer, epoch: int) -> None:
        if "train/acc/cls" in trainer.callback_metrics:  # logged at the end of that epoch
            self.metrics[epoch] = [float(trainer.callback_metrics[k]) for k in EPOCH_VALUES]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == DWA_SAVE_STEP:
            self.saved = pl_module.weighting.epoch_losses.total.tolist()


def ddp_trainer(record, **kw):
    # Our own unshuffled DistributedSampler (Lightning's own shuffles training data under DDP),
    # so that which samples form each rank's batch is known.
    return quiet_trainer(
        **{
            "devices": 2,
            "strategy": "ddp",
            "max_epochs": 1,
            "callbacks": [record],
            "use_distributed_sampler": False,
            **kw,
        }
    )


def ddp_loader(dataset, rank: int) -> DataLoader:
    # Resumable: a run resumed in the middle of an epoch goes on with the batches not yet trained on.
    return ResumableDataLoader(dataset, batch_size=BATCH, sampler=DistributedSampler(dataset, 2, rank, shuffle=False))


def snapshot(model, trainer, record) -> dict:
    opt = trainer.optimizers[0].state_dict()["state"]
    return {
        # The parameters and the strategy's state; not the mixin's running sums for logging, each
        # process's own part of its epoch.
        "params": {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("_mt")},
        "global_step": trainer.global_step,
        "optimizer": {int(i): {k: v.clone() for k, v in s.items()} for i, s in opt.items()},
        "steps": record.steps,
        "weights": record.weights,
    }


def main() -> None:
    out_dir = Path(sys.argv[1])
    messages = Messages()
    package_log = logging.getLogger("lightning_multiloss")
    package_log.addHandler(messages)
    package_log.setLevel(logging.INFO)
    result = {}

    # skip: Adam (its moments would move on a zero gradient; they must not move at all)
    model = NaNOnRank1(Learnable(), lr=0.05, optimizer="adam", on_nonfinite="skip")
    record = LossWeightingCallback()
    trainer = ddp_trainer(record, logger=CSVLogger(out_dir, name="skip"))
    rank = trainer.global_rank
    trainer.fit(model, ddp_loader(ToyDataset(N), rank))
    result["skip"] = snapshot(model, trainer, record)
    result["skip"]["log_dir"] = str(trainer.log_dir)

    # reference: step SKIP_BATCH's samples (both ranks) removed from the data
    keep = [i for i in range(N) if not 16 * SKIP_BATCH <= i < 16 * (SKIP_BATCH + 1)]
    model = ToyNet(Learnable(), lr=0.05, optimizer="adam")
    record = LossWeightingCallback(plot=False)
    trainer = ddp_trainer(record, default_root_dir=out_dir / "reference")
    trainer.fit(model, ddp_loader(Subset(ToyDataset(N), keep), rank))
    result["reference"] = snapshot(model, trainer, record)

    # masked: a task without a single labelled sample on one rank for one step
    model = ToyNet(lr=0.2)
    model.configure_multitask(
        [Task("cls", nn.CrossEntropyLoss()), Task("reg", nn.MSELoss(), mask="reg_mask")], Fixed([0.5, 0.3])
    )
    record = LossWeightingCallback(plot=False)
    trainer = ddp_trainer(record, default_root_dir=out_dir / "masked")
    trainer.fit(model, ddp_loader(WithMask(), rank))
    result["masked"] = snapshot(model, trainer, record)

    model = UnfrozenLater()
    record = LossWeightingCallback(plot=False)
    trainer = ddp_trainer(record, default_root_dir=out_dir / "unfrozen", max_epochs=2)
    trainer.fit(model, ddp_loader(ToyDataset(N // 2), rank))

    result["messages"] = list(messages.messages)

    # dwa (float64): checkpoints every DWA_SAVE_STEP steps over 2 epochs; resumed from the middle of
    # epoch 0 (its running sums) and from its last batch (resumed at epoch 1: the same run to the end)
    sums = EpochSums()
    saver = ModelCheckpoint(out_dir / "dwa_ckpt", filename="{step}", every_n_train_steps=DWA_SAVE_STEP, save_top_k=-1)
    trainer = ddp_trainer(
        LossWeightingCallback(plot=False),
        default_root_dir=out_dir / "dwa",
        enable_checkpointing=True,
        max_epochs=2,
        precision="64-true",
    )
    trainer.callbacks.extend([sums, saver])
    model = ToyNet(create_weighting("dwa"), metrics=True, train_metrics=True)
    trainer.fit(model, ddp_loader(ToyDataset(N), rank))
    checkpoint = out_dir / "dwa_ckpt" / f"step={DWA_SAVE_STEP}.ckpt"
    result["dwa_saved"] = {
        "sums": sums.saved,
        "checkpoint": str(checkpoint),
        "state": model.state_dict(),
        "metrics": sums.metrics,
    }
    for name, step in (("dwa_resumed", DWA_SAVE_STEP), ("dwa_resumed_at_epoch_end", 2 * DWA_SAVE_STEP)):
        sums = EpochSums()
        trainer = ddp_trainer(
            LossWeightingCallback(plot=False), default_root_dir=out_dir / name, max_epochs=2, precision="64-true"
        )
        trainer.callbacks.append(sums)
        model = ToyNet(create_weighting("dwa"), metrics=True, train_metrics=True)
        trainer.fit(model, ddp_loader(ToyDataset(N), rank), ckpt_path=str(out_dir / "dwa_ckpt" / f"step={step}.ckpt"))
        result[name] = {"sums": sums.at_start, "state": model.state_dict(), "metrics": sums.metrics}

    # gradvac_local: GradVac with each process's own Gramian and so its own targets (host state),
    # checkpointed in the middle of the epoch and resumed: each process takes back its own targets
    # (every process took rank 0's, and the resumed run drifted from the uninterrupted one)
    saver = ModelCheckpoint(
        out_dir / "gradvac_ckpt", filename="{step}", every_n_train_steps=DWA_SAVE_STEP, save_top_k=-1
    )
    trainer = ddp_trainer(
        LossWeightingCallback(plot=False), default_root_dir=out_dir / "gradvac", enable_checkpointing=True
    )
    trainer.callbacks.append(saver)
    model = ToyNet(create_weighting("gradvac", ddp="local"), lr=0.05)
    trainer.fit(model, ddp_loader(ToyDataset(N), rank))
    result["gradvac_full"] = {"state": model.state_dict()}
    trainer = ddp_trainer(LossWeightingCallback(plot=False), default_root_dir=out_dir / "gradvac_resumed")
    model = ToyNet(create_weighting("gradvac", ddp="local"), lr=0.05)
    checkpoint = out_dir / "gradvac_ckpt" / f"step={DWA_SAVE_STEP}.ckpt"
    trainer.fit(model, ddp_loader(ToyDataset(N), rank), ckpt_path=str(checkpoint))
    result["gradvac_resumed"] = {"state": model.state_dict()}

    # raise: no logging step in the epoch, so the NaN of step SKIP_BATCH is found at its end
    model = NaNOnRank1(Fixed(), lr=0.05)
    record = LossWeightingCallback(plot=False)
    trainer = ddp_trainer(record, default_root_dir=out_dir / "raise", log_every_n_steps=10_000)
    result["raise"] = stopped_by(NonFiniteLossError, trainer, model, ddp_loader(ToyDataset(N), rank))

    # folder_refused: the Callback's folder cannot be made (under a file), which rank 0 alone checks
    # and writes: every process stops before training (rank 1 alone would wait in DDP's all-reduce).
    (out_dir / "a_file").write_text("")
    trainer = ddp_trainer(LossWeightingCallback(plot=False), default_root_dir=out_dir / "a_file" / "run")
    result["folder_refused"] = stopped_by(MultiLossError, trainer, ToyNet(Fixed()), ddp_loader(ToyDataset(N), rank))

    # raise_local: MGDA solving with each process's own Gramian, which only rank 1's solver finds
    # non-finite: rank 1 stopped alone, and rank 0 waited in DDP's all-reduce.
    model = NaNOnRank1(create_weighting("mgda", ddp="local"), lr=0.05)
    trainer = ddp_trainer(
        LossWeightingCallback(plot=False), default_root_dir=out_dir / "raise_local", log_every_n_steps=10_000
    )
    result["raise_local"] = stopped_by(NonFiniteLossError, trainer, model, ddp_loader(ToyDataset(N), rank))

    # weights_local: a strategy of one's own, solving with each process's Gramian, gives an infinite
    # weight on rank 1 alone: rank 1 raised alone, and rank 0 died in DDP's all-reduce
    model = ToyNet(InfiniteOnRank1(), lr=0.05)
    trainer = ddp_trainer(
        LossWeightingCallback(plot=False), default_root_dir=out_dir / "weights_local", log_every_n_steps=10_000
    )
    result["weights_local"] = stopped_by(NonFiniteLossError, trainer, model, ddp_loader(ToyDataset(N), rank))
    model = ToyNet(InfiniteOnRank1(), lr=0.05, on_nonfinite="skip")
    trainer = ddp_trainer(LossWeightingCallback(plot=False), default_root_dir=out_dir / "weights_local_skip")
    result["weights_local_skip"] = stopped_by(NonFiniteLossError, trainer, model, ddp_loader(ToyDataset(N), rank))

    # skip_local: IMTL-G in ddp="local" mode, skip mode, a finite loss with a NaN gradient on rank 1 at
    # the first step: only rank 1's solver meets the non-finite Gramian, and it raised alone
    model = ToyNet(lr=0.05, optimizer="adam")
    model.configure_multitask(
        [Task("cls", nn.CrossEntropyLoss()), Task("reg", nan_gradient_on_rank1_once)],
        create_weighting("imtl_g", ddp="local"),
        on_nonfinite="skip",
    )
    trainer = ddp_trainer(LossWeightingCallback(plot=False), default_root_dir=out_dir / "skip_local")
    trainer.fit(model, ddp_loader(ToyDataset(N), rank))
    result["skip_local"] = snapshot(model, trainer, LossWeightingCallback(plot=False))

    # val_raise: a NaN in rank 1's first validation batch, the ranks evaluating 3 and 2 batches (17
    # and 16 samples): rank 1 raised alone, and rank 0 waited in a collective
    validation = ToyDataset(33)
    loader = DataLoader(validation, batch_size=BATCH, sampler=ShardSampler(validation, num_replicas=2, rank=rank))
    trainer = ddp_trainer(LossWeightingCallback(plot=False), default_root_dir=out_dir / "val_raise")
    try:
        trainer.validate(NaNOnRank1InValidation(), loader, verbose=False)
        result["val_raise"] = {"error": None}
    except NonFiniteLossError as error:
        result["val_raise"] = {"error": str(error)}

    for mode in ("raise", "skip"):
        model = NegativeOnRank1(create_weighting("famo"), lr=0.05, on_nonfinite=mode)
        record = LossWeightingCallback(plot=False)
        trainer = ddp_trainer(record, default_root_dir=out_dir / f"negative_{mode}", log_every_n_steps=10_000)
        try:
            trainer.fit(model, ddp_loader(ToyDataset(N), rank))
            result[f"negative_{mode}"] = {"error": None}
        except MultiLossError as error:
            result[f"negative_{mode}"] = {
                "error": str(error),
                "type": type(error).__name__,
                "global_step": trainer.global_step,
            }
    save_rank_result(out_dir, rank, result)


if __name__ == "__main__":
    main()
