"""Logged metric keys by option, training metrics, best-so-far values, MetricCollection and MultitaskWrapper.

Expected keys are written out by hand; expected values are computed here from the predictions the
model made (recorded in ``forward``): by hand (accuracy, mean squared error, max/min over the
epochs) or by a fresh torchmetrics object of the peer library, never read back from the mixin.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics import MetricCollection
from torchmetrics.wrappers import MultitaskWrapper

from lightning_multiloss import MultiTaskMixin, Task
from lightning_multiloss.errors import MultiLossError
from tests._models import HEAD_SIZES, ToyDataset, ToyNet, quiet_trainer, toy_loader
from tests.test_training import read_csv, rows_with


def accuracy(validate_args: bool = True) -> torchmetrics.Metric:
    return torchmetrics.Accuracy("multiclass", num_classes=3, validate_args=validate_args)


def cls_task(**metrics: Any) -> Task:
    return Task("cls", nn.CrossEntropyLoss(), metrics=metrics)


def reg_task(**metrics: Any) -> Task:
    return Task("reg", nn.MSELoss(), metrics=metrics)


class MetricNet(MultiTaskMixin, pl.LightningModule):
    """A trunk and one linear head per task; records what ``forward`` returned, by stage."""

    def __init__(self, tasks: Sequence[Task], lr: float = 0.1, **options: Any) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.heads = nn.ModuleDict({t.name: nn.Linear(16, HEAD_SIZES[t.name]) for t in tasks})
        self.lr = lr
        self.recorded: dict[str, list[dict[str, Tensor]]] = {"train": [], "val": []}
        self.configure_multitask(tasks, **options)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.trunk(x)
        outputs = {name: head(z) for name, head in self.heads.items()}
        trainer = self._trainer
        if trainer is not None and not trainer.sanity_checking and (self.training or trainer.validating):
            self.recorded["train" if self.training else "val"].append({k: v.detach() for k, v in outputs.items()})
        return outputs

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


TRAIN_BATCHES = 4  # 64 samples in batches of 16
VAL = {"n": 32, "batch_size": 16, "seed": 1}


Rows = list[dict[str, str]]


def fit(model: MetricNet, tmp_path: Path, epochs: int = 1, **trainer_kw: Any) -> tuple[pl.Trainer, Rows]:
    trainer_kw.setdefault("logger", CSVLogger(tmp_path, name="run"))
    trainer = quiet_trainer(max_epochs=epochs, log_every_n_steps=1, default_root_dir=tmp_path, **trainer_kw)
    trainer.fit(model, toy_loader(n=64, batch_size=16), toy_loader(**VAL))
    trainer.logger.save()  # type: ignore[union-attr]
    return trainer, read_csv(Path(trainer.log_dir) / "metrics.csv")  # type: ignore[arg-type]


def targets(key: str, n: int = 64, batch_size: int = 16, seed: int = 0) -> list[Tensor]:
    return [batch[key] for batch in toy_loader(n=n, batch_size=batch_size, seed=seed)]


def epoch_outputs(recorded: list[dict[str, Tensor]], batches: int, epoch: int, task: str) -> Tensor:
    return torch.cat([step[task] for step in recorded[epoch * batches : (epoch + 1) * batches]])


def hand_accuracy(logits: Tensor, labels: Tensor) -> float:
    return (logits.argmax(1) == labels).double().mean().item()


def hand_mse(pred: Tensor, target: Tensor) -> float:
    return (pred.double() - target.double()).pow(2).mean().item()


def logged_keys(rows: list[dict[str, str]]) -> set[str]:
    return set(rows[0]) - {"epoch", "step"}


# -- the keys ---------------------------------------------------------------------------------


def expected_keys(order: str, train_metrics: bool, best: bool) -> set[str]:
    def key(stage: str, name: str, task: str) -> str:
        return f"{stage}/{name}/{task}" if order == "stage/metric/task" else f"{stage}/{task}/{name}"

    keys = {"train/loss", "val/loss"}
    for task, metric in (("cls", "acc"), ("reg", "mse")):
        keys |= {key(s, n, task) for s in ("train", "val") for n in ("loss", "weight")}
        keys |= {key("train", "loss", task) + "_epoch", key("val", metric, task)}
        if train_metrics:
            keys.add(key("train", metric, task))
        if best:
            keys.add(key("val", f"{metric}_best", task))
    if best:
        keys.add("val/loss_best")
    return keys


@pytest.mark.parametrize(
    ("order", "train_metrics", "best"),
    [("stage/metric/task", False, False), ("stage/task/metric", True, True), ("stage/metric/task", True, True)],
)
def test_every_key_follows_the_chosen_scheme(tmp_path: Path, order: str, train_metrics: bool, best: bool) -> None:
    tasks = [cls_task(acc=accuracy()), reg_task(mse=torchmetrics.MeanSquaredError())]
    model = MetricNet(tasks, metric_keys=order, train_metrics=train_metrics, best_metrics=best)
    _, rows = fit(model, tmp_path)
    assert logged_keys(rows) == expected_keys(order, train_metrics, best)


def test_single_task_keys_leave_the_task_out(tmp_path: Path) -> None:
    model = MetricNet([cls_task(acc=accuracy())], single_task_keys=True, train_metrics=True, best_metrics=True)
    _, rows = fit(model, tmp_path)
    # As single-task Lightning code logs them; the task's own loss keeps its name (val/loss is the combined loss).
    assert logged_keys(rows) == {
        "train/loss",
        "train/loss/cls",
        "train/loss/cls_epoch",
        "train/weight",
        "train/acc",
        "val/loss",
        "val/loss/cls",
        "val/weight",
        "val/acc",
        "val/acc_best",
        "val/loss_best",
    }


# -- the values -------------------------------------------------------------------------------


def test_training_metrics_are_the_epochs_scores_of_the_training_predictions(tmp_path: Path) -> None:
    tasks = [cls_task(acc=accuracy(validate_args=False)), reg_task(mse=torchmetrics.MeanSquaredError())]
    model = MetricNet(tasks, train_metrics=True)
    _, rows = fit(model, tmp_path, epochs=2)
    epochs = rows_with(rows, "train/acc/cls")
    assert [int(r["epoch"]) for r in epochs] == [0, 1]
    labels, regs = torch.cat(targets("cls")), torch.cat(targets("reg"))
    for epoch, row in enumerate(epochs):
        cls_out = epoch_outputs(model.recorded["train"], TRAIN_BATCHES, epoch, "cls")
        reg_out = epoch_outputs(model.recorded["train"], TRAIN_BATCHES, epoch, "reg")
        assert float(row["train/acc/cls"]) == pytest.approx(hand_accuracy(cls_out, labels), abs=1e-6)
        assert float(row["train/mse/reg"]) == pytest.approx(hand_mse(reg_out, regs), rel=1e-5)
    # The parameters moved between the epochs, so the two epochs' values are not one value twice.
    assert not torch.equal(model.recorded["train"][0]["reg"], model.recorded["train"][TRAIN_BATCHES]["reg"])


def test_best_values_are_the_best_epoch_values_so_far(tmp_path: Path) -> None:
    tasks = [cls_task(acc=accuracy()), reg_task(mse=torchmetrics.MeanSquaredError())]
    model = MetricNet(tasks, lr=0.3, best_metrics=True)
    _, rows = fit(model, tmp_path, epochs=4, num_sanity_val_steps=1)
    val_rows = rows_with(rows, "val/loss")
    assert len(val_rows) == 4  # the sanity check logs nothing
    labels, regs = torch.cat(targets("cls", **VAL)), torch.cat(targets("reg", **VAL))
    acc, mse = [], []
    for epoch, row in enumerate(val_rows):
        acc.append(hand_accuracy(epoch_outputs(model.recorded["val"], 2, epoch, "cls"), labels))
        mse.append(hand_mse(epoch_outputs(model.recorded["val"], 2, epoch, "reg"), regs))
        assert float(row["val/acc/cls"]) == pytest.approx(acc[-1], abs=1e-6)
        assert float(row["val/acc_best/cls"]) == pytest.approx(max(acc), abs=1e-6)
        assert float(row["val/mse_best/reg"]) == pytest.approx(min(mse), rel=1e-5)
        losses = [float(r["val/loss"]) for r in val_rows[: epoch + 1]]
        assert float(row["val/loss_best"]) == pytest.approx(min(losses), rel=1e-6)
    assert len(set(mse)) == 4  # the values changed from epoch to epoch


class SanityProbe(pl.Callback):
    def __init__(self) -> None:
        self.after_sanity: Tensor | None = None

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.after_sanity = pl_module.state_dict()["_mt_best.values"].clone()


def test_best_values_leave_out_the_sanity_check_and_survive_a_resume(tmp_path: Path) -> None:
    tasks = [cls_task(acc=accuracy()), reg_task(mse=torchmetrics.MeanSquaredError())]
    probe = SanityProbe()
    model = MetricNet(tasks, lr=0.3, best_metrics=True)
    trainer, rows = fit(model, tmp_path / "a", epochs=2, num_sanity_val_steps=1, callbacks=[probe])
    assert probe.after_sanity is not None
    assert probe.after_sanity.tolist() == [float("inf"), float("-inf"), float("inf")]  # loss, acc, mse: untouched
    path = tmp_path / "two.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]["_mt_best.values"]
    last = rows_with(rows, "val/loss_best")[-1]
    keys = ["val/loss_best", "val/acc_best/cls", "val/mse_best/reg"]
    assert state.tolist() == pytest.approx([float(last[k]) for k in keys], rel=1e-6)

    # One more epoch from the checkpoint: the best is over all three epochs.
    resumed = MetricNet(tasks, lr=0.3, best_metrics=True)
    trainer = quiet_trainer(max_epochs=3, logger=CSVLogger(tmp_path / "b", name="run"), default_root_dir=tmp_path)
    trainer.fit(resumed, toy_loader(n=64, batch_size=16), toy_loader(**VAL), ckpt_path=path)
    trainer.logger.save()  # type: ignore[union-attr]
    third = rows_with(read_csv(Path(trainer.log_dir) / "metrics.csv"), "val/loss")  # type: ignore[arg-type]
    assert [int(r["epoch"]) for r in third] == [2]
    all_acc = [float(r["val/acc/cls"]) for r in rows_with(rows, "val/loss")] + [float(third[0]["val/acc/cls"])]
    all_loss = [float(r["val/loss"]) for r in rows_with(rows, "val/loss")] + [float(third[0]["val/loss"])]
    assert float(third[0]["val/acc_best/cls"]) == pytest.approx(max(all_acc), abs=1e-6)
    assert float(third[0]["val/loss_best"]) == pytest.approx(min(all_loss), rel=1e-6)


def test_a_validate_of_its_own_leaves_the_best_values_alone(tmp_path: Path) -> None:
    # trainer.validate on another split before the fit (a pretrained model checked first) set a best
    # accuracy that the fit's validations never reached (1.0 beside 0.45 in the report).
    tasks = [cls_task(acc=accuracy()), reg_task(mse=torchmetrics.MeanSquaredError())]
    model = MetricNet(tasks, lr=0.3, best_metrics=True)
    model.eval()
    with torch.no_grad():  # labels the untrained model predicts: accuracy 1 on this split
        data = toy_loader(n=32, batch_size=16, seed=5).dataset
        easy = [{**data[i], "cls": model(data[i]["x"][None])["cls"].argmax(1)[0]} for i in range(len(data))]
    model.train()
    validated = quiet_trainer(default_root_dir=tmp_path).validate(model, DataLoader(easy, batch_size=16))
    assert validated[0]["val/acc/cls"] == 1.0 and not any("_best" in key for key in validated[0])
    _, rows = fit(model, tmp_path / "fit", epochs=2)
    accuracies = [float(r["val/acc/cls"]) for r in rows_with(rows, "val/acc/cls")]
    assert max(accuracies) < 1.0
    assert float(rows_with(rows, "val/acc_best/cls")[-1]["val/acc_best/cls"]) == pytest.approx(max(accuracies))


# -- MetricCollection and MultitaskWrapper ----------------------------------------------------


def f1() -> torchmetrics.Metric:
    return torchmetrics.F1Score("multiclass", num_classes=3, average="macro")


@pytest.mark.parametrize("whole", [False, True], ids=["as-an-entry", "as-metrics"])
def test_a_metric_collection_is_logged_member_by_member(tmp_path: Path, whole: bool) -> None:
    collection = MetricCollection({"acc": accuracy(), "f1": f1()})
    task = Task("cls", nn.CrossEntropyLoss(), metrics=collection if whole else {"scores": collection})
    model = MetricNet([task, reg_task()])
    _, rows = fit(model, tmp_path)
    row = rows_with(rows, "val/loss")[-1]
    outputs, labels = epoch_outputs(model.recorded["val"], 2, 0, "cls"), torch.cat(targets("cls", **VAL))
    reference_f1 = f1()
    reference_f1.update(outputs, labels)
    assert float(row["val/acc/cls"]) == pytest.approx(hand_accuracy(outputs, labels), abs=1e-6)
    assert float(row["val/f1/cls"]) == pytest.approx(float(reference_f1.compute()), abs=1e-6)


def test_multitask_wrapper_as_the_metrics_of_the_tasks(tmp_path: Path) -> None:
    def wrapper() -> MultitaskWrapper:
        return MultitaskWrapper(
            {"cls": MetricCollection({"acc": accuracy(), "f1": f1()}), "reg": torchmetrics.MeanAbsoluteError()}
        )

    model = MetricNet([cls_task(), reg_task()], metrics=wrapper(), metric_keys="stage/task/metric")
    _, rows = fit(model, tmp_path)
    row = rows_with(rows, "val/loss")[-1]
    # The peer computes the same from the same predictions, through its own update and compute.
    reference = wrapper()
    for step, batch in zip(model.recorded["val"], toy_loader(**VAL), strict=True):
        reference.update(step, {"cls": batch["cls"], "reg": batch["reg"]})
    expected = reference.compute()
    assert float(row["val/cls/acc"]) == pytest.approx(float(expected["cls"]["acc"]), abs=1e-6)
    assert float(row["val/cls/f1"]) == pytest.approx(float(expected["cls"]["f1"]), abs=1e-6)
    # A lone metric is named by its class, as MetricCollection names unnamed metrics.
    assert float(row["val/reg/MeanAbsoluteError"]) == pytest.approx(float(expected["reg"]), rel=1e-6)


# -- bad options ------------------------------------------------------------------------------


def test_bad_metric_options_name_the_problem() -> None:
    with pytest.raises(MultiLossError, match=r"single_task_keys=True .* needs exactly one task; got \['cls', 'reg'\]"):
        MetricNet([cls_task(), reg_task()], single_task_keys=True)
    with pytest.raises(MultiLossError, match=r"metric_keys must be one of .*, got 'task/metric'"):
        MetricNet([cls_task()], metric_keys="task/metric")
    with pytest.raises(MultiLossError, match=r"task 'cls': a metric cannot be named 'loss'"):
        cls_task(loss=accuracy())
    with pytest.raises(MultiLossError, match=r"metrics: no task named \['depth'\]; the tasks are \['cls'\]"):
        MetricNet([cls_task()], metrics={"depth": torchmetrics.MeanSquaredError()})
    with pytest.raises(MultiLossError, match=r"task 'cls': metric\(s\) \['acc'\] given both in its Task and in metr"):
        MetricNet([cls_task(acc=accuracy())], metrics={"cls": {"acc": accuracy()}})
    with pytest.raises(MultiLossError, match=r"task 'cls': two metrics are named 'acc'"):
        cls_task(a=MetricCollection({"acc": accuracy()}), b=MetricCollection({"acc": accuracy()}))
    with pytest.raises(MultiLossError, match=r"two logged values would share the key 'val/acc_best/cls'"):
        MetricNet([cls_task(acc=accuracy(), acc_best=accuracy())], best_metrics=True)


# -- no wait for the device -------------------------------------------------------------------


def test_training_metrics_do_not_wait_for_the_device() -> None:
    # Classification metrics with validate_args=False: their checks call torch.unique, a wait on a GPU.
    from tests.test_sync_count import syncs_per_step

    tasks = [cls_task(acc=accuracy(validate_args=False)), reg_task(mse=torchmetrics.MeanSquaredError())]
    per_step, where = syncs_per_step(MetricNet(tasks, train_metrics=True, best_metrics=True))
    assert per_step == 0, where[:5]


# -- two processes ----------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_training_metrics_and_best_values_are_those_of_the_whole_data(tmp_path: Path) -> None:
    from tests._ddp import run_ddp_script

    ranks = run_ddp_script("ddp_metrics.py", tmp_path)
    assert len(ranks) == 2
    batches = {"train": 4, "val": 2}  # per rank and epoch: 32 training and 16 validation samples, batches of 8

    def global_scores(stage: str, epoch: int) -> tuple[float, float]:
        def cat(kind: str, task: str) -> Tensor:
            return torch.cat([epoch_outputs(rank[kind][stage], batches[stage], epoch, task) for rank in ranks])

        return hand_accuracy(cat("outputs", "cls"), cat("targets", "cls")), hand_mse(
            cat("outputs", "reg"), cat("targets", "reg")
        )

    def batch_losses(rank: dict[str, Any], epoch: int) -> Tensor:
        """``(batches, 2)``: each training batch's cross-entropy and MSE, from the recorded outputs."""
        at = slice(epoch * batches["train"], (epoch + 1) * batches["train"])
        pairs = zip(rank["outputs"]["train"][at], rank["targets"]["train"][at], strict=True)
        return torch.tensor(
            [
                [F.cross_entropy(out["cls"].double(), tgt["cls"]).item(), hand_mse(out["reg"], tgt["reg"])]
                for out, tgt in pairs
            ]
        )

    for rank in ranks:
        assert len(rank["train"]) == len(rank["val"]) == 2
        accs, mses = [], []
        for epoch in range(2):
            train_acc, train_mse = global_scores("train", epoch)
            assert rank["train"][epoch]["train/acc/cls"] == pytest.approx(train_acc, abs=1e-6)
            assert rank["train"][epoch]["train/mse/reg"] == pytest.approx(train_mse, rel=1e-5)
            # Each task's epoch-mean training loss: the mean over both processes' batches.
            global_means = torch.cat([batch_losses(r, epoch) for r in ranks]).mean(0)
            own_means = batch_losses(rank, epoch).mean(0)
            for task, expected, own in zip(("cls", "reg"), global_means, own_means, strict=True):
                assert rank["train"][epoch][f"train/loss/{task}_epoch"] == pytest.approx(expected.item(), rel=1e-5)
                assert abs(own.item() - expected.item()) > 1e-4  # one process's own mean would differ
            acc, mse = global_scores("val", epoch)
            accs.append(acc)
            mses.append(mse)
            logged = rank["val"][epoch]
            assert logged["val/acc/cls"] == pytest.approx(acc, abs=1e-6)
            assert logged["val/acc_best/cls"] == pytest.approx(max(accs), abs=1e-6)
            assert logged["val/mse_best/reg"] == pytest.approx(min(mses), rel=1e-5)
            losses = [r["val/loss"] for r in rank["val"][: epoch + 1]]
            assert logged["val/loss_best"] == pytest.approx(min(losses), rel=1e-6)
    # One process's own share would have given other values (so the ones above are the global ones).
    local = [
        hand_mse(
            epoch_outputs(ranks[0]["outputs"]["val"], 2, e, "reg"),
            torch.cat([t["reg"] for t in ranks[0]["targets"]["val"][2 * e : 2 * e + 2]]),
        )
        for e in range(2)
    ]
    assert all(abs(a - b) > 1e-4 for a, b in zip(local, mses, strict=True))
    # Both processes hold the same best values (the checkpoint is written by rank 0).
    torch.testing.assert_close(ranks[0]["best"], ranks[1]["best"], rtol=0, atol=0)
    # Every value the mixin logs for an epoch is the processes' common one: Lightning has nothing to warn of.
    for rank in ranks:
        assert not [w for w in rank["warnings"] if "sync_dist" in w], rank["warnings"]


@pytest.mark.slow
def test_ddp_a_task_labelled_on_one_process_only(tmp_path: Path) -> None:
    """Its metric is the whole data's (the labelled process's samples), and no process waits forever."""
    from tests._ddp import run_ddp_script
    from tests.scripts.ddp_sparse_labels import ToyDataset, sparse_net

    ranks = run_ddp_script("ddp_sparse_labels.py", tmp_path, timeout=120)
    assert len(ranks) == 2
    assert ranks[0]["logged"] == ranks[1]["logged"]
    model = sparse_net()
    model.load_state_dict(ranks[0]["params"], strict=False)
    labelled = ToyDataset(16, seed=10)  # rank 0's validation shard, the only one labelled for reg
    with torch.no_grad():
        mse = hand_mse(model(labelled.x)["reg"], labelled.reg)
    logged = ranks[0]["logged"]
    assert logged["val/mse/reg"] == pytest.approx(mse, rel=1e-5)
    assert logged["val/loss/reg"] == pytest.approx(mse, rel=1e-5)  # an MSE over the same samples
    assert logged["val/mse_best/reg"] <= logged["val/mse/reg"]


@pytest.mark.parametrize("scheme", ["stage/metric/task", "stage/task/metric"])
def test_logged_keys_are_the_keys_a_fit_logs(tmp_path: Path, scheme: str) -> None:
    # What a ModelCheckpoint or EarlyStopping can monitor: compared with what Lightning collected.
    model = ToyNet("fixed", metrics=True, train_metrics=True, best_metrics=True, metric_keys=scheme)
    trainer = quiet_trainer(max_epochs=1, log_every_n_steps=1, default_root_dir=tmp_path)
    trainer.fit(model, toy_loader(n=32), toy_loader(n=32))
    collected = set(trainer.callback_metrics)
    train, val = set(model.logged_keys("train")), set(model.logged_keys("val"))
    assert {key for key in collected if key.startswith("val")} == val
    assert {key for key in collected if key.startswith("train")} == train
    trainer.test(model, toy_loader(n=32))
    assert {key for key in trainer.callback_metrics if key.startswith("test")} == set(model.logged_keys("test"))


def test_logged_keys_of_several_evaluation_dataloaders_are_the_keys_a_validation_logs(tmp_path: Path) -> None:
    # Lightning suffixes every loader's keys, the first's too: logged_keys("val") gave "val/loss",
    # which a ModelCheckpoint then could not find.
    model = ToyNet("fixed", metrics=True, best_metrics=True)
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(model, toy_loader(n=32), [toy_loader(n=16), toy_loader(n=16, seed=1)])
    collected = {key for key in trainer.callback_metrics if key.startswith("val")}
    assert collected == set(model.logged_keys("val", dataloaders=2))
    assert "val/loss/dataloader_idx_0" in collected and "val/loss_best" in collected
    with pytest.raises(MultiLossError, match="dataloaders must be at least 1"):
        model.logged_keys("val", dataloaders=0)


def reg_labelled(labelled: bool, n: int = 16, seed: int = 0) -> DataLoader:
    data = ToyDataset(n, seed)
    mask = torch.tensor(labelled)
    return DataLoader([{**data[i], "reg_mask": mask} for i in range(n)], batch_size=8)


def test_a_metric_without_a_labelled_sample_in_the_epoch_is_logged_as_nan(tmp_path: Path) -> None:
    # In one process it was not logged at all, though logged_keys lists it: a monitor on it failed
    # ("could not find the monitored key"), and the key set differed from a DDP run's.
    model = ToyNet("fixed", metrics=True, masks={"reg": "reg_mask"})
    trainer = quiet_trainer(default_root_dir=tmp_path)
    for labelled in (False, True, False):  # and back: each epoch on its own
        for stage, run in (("val", trainer.validate), ("test", trainer.test)):
            (logged,) = run(model, reg_labelled(labelled), verbose=False)
            assert set(logged) == set(model.logged_keys(stage))
            assert math.isnan(logged[f"{stage}/mse/reg"]) != labelled
            assert math.isfinite(logged[f"{stage}/acc/cls"])
    logged = trainer.validate(model, [reg_labelled(True), reg_labelled(False, seed=1)], verbose=False)
    assert math.isfinite(logged[0]["val/mse/reg/dataloader_idx_0"])
    assert math.isnan(logged[1]["val/mse/reg/dataloader_idx_1"])
    assert set(logged[0]) | set(logged[1]) == set(model.logged_keys("val", dataloaders=2))


def test_task_names_whose_keys_meet_are_refused_with_a_hint_on_the_task() -> None:
    # The hint said to rename a metric where two task names made the key.
    class TwoHeads(MultiTaskMixin, pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.heads = nn.ModuleDict({"a": nn.Linear(8, 2), "a_epoch": nn.Linear(8, 2)})
            self.configure_multitask(
                [Task("a", nn.MSELoss(), target="reg"), Task("a_epoch", nn.MSELoss(), target="reg")]
            )

    with pytest.raises(MultiLossError, match=r"share the key 'train/loss/a_epoch': rename the task or metric"):
        TwoHeads()


def test_a_callback_monitoring_a_key_the_mixin_does_not_log_is_said_before_training(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A typo failed only at the first validation's end, in Lightning's words; a monitor on a key
    # logged on logging steps alone found no value in short epochs.
    from pytorch_lightning.callbacks import EarlyStopping

    model = ToyNet("fixed", metrics=True)
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[EarlyStopping("val/acc/clss")])
    with caplog.at_level("WARNING", logger="lightning_multiloss"), pytest.raises(RuntimeError, match="val/acc/clss"):
        trainer.fit(model, toy_loader(n=32), toy_loader(n=16))
    (said,) = [r.getMessage() for r in caplog.records if "monitors" in r.getMessage()]
    assert said.startswith(
        "EarlyStopping monitors 'val/acc/clss': the model logs no 'val/acc/clss'; did you mean 'val/acc/cls'?"
    )
    caplog.clear()
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[EarlyStopping("train/loss/reg")])
    with caplog.at_level("WARNING", logger="lightning_multiloss"), pytest.raises(RuntimeError):
        trainer.fit(ToyNet("fixed"), toy_loader(n=32))
    (said,) = [r.getMessage() for r in caplog.records if "monitors" in r.getMessage()]
    assert "is logged on the Trainer's logging steps only" in said and "monitor 'train/loss/reg_epoch'" in said
    caplog.clear()
    with caplog.at_level("WARNING", logger="lightning_multiloss"):
        quiet_trainer(max_epochs=1, default_root_dir=tmp_path, callbacks=[EarlyStopping("val/acc/cls")]).fit(
            ToyNet("fixed", metrics=True), toy_loader(n=32), toy_loader(n=16)
        )
    assert not [r for r in caplog.records if "monitors" in r.getMessage()]  # a key it logs: nothing said


def test_a_monitor_of_a_validation_key_without_the_loaders_suffix_is_said_when_there_are_two(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With two validation loaders every validation key has a loader's suffix: 'val/loss' found no
    value, in Lightning's words, only after the first training epoch."""
    from pytorch_lightning.callbacks import EarlyStopping

    def fit(monitor: str, loaders: int = 2) -> list[str]:
        caplog.clear()
        trainer = quiet_trainer(
            max_epochs=1, default_root_dir=tmp_path, num_sanity_val_steps=1, callbacks=[EarlyStopping(monitor)]
        )
        with caplog.at_level("WARNING", logger="lightning_multiloss"), contextlib.suppress(RuntimeError):
            trainer.fit(ToyNet("fixed"), toy_loader(n=32), [toy_loader(n=16) for _ in range(loaders)])
        return [r.getMessage() for r in caplog.records if "monitors" in r.getMessage()]

    assert fit("val/loss") == [
        "EarlyStopping monitors 'val/loss': with 2 validation dataloaders Lightning logs 'val/loss' for each loader "
        "apart, as 'val/loss/dataloader_idx_0', ...: monitor one of them (unless your module logs it itself)"
    ]
    assert fit("val/loss/dataloader_idx_1") == []
    # A second loader removed, its monitor kept: one loader logs no suffix.
    (said,) = fit("val/loss/dataloader_idx_1", loaders=1)
    assert said.startswith(
        "EarlyStopping monitors 'val/loss/dataloader_idx_1': the model logs no 'val/loss/dataloader_idx_1'; "
    )
    model = ToyNet("fixed")
    assert model.monitor_problem("val/loss/dataloader_idx_1") is None  # the loaders not known yet: either counts
    assert model.monitor_problem("val/loss/dataloader_idx_1", val_dataloaders=1) is not None
    assert model.monitor_problem("val/loss", val_dataloaders=1) is None


def test_best_values_made_on_the_meta_device_start_unseen_after_reset_parameters() -> None:
    # Lightning refused to materialise a model made under init_module(empty_init=True) that kept
    # best values: the module had no reset_parameters().
    from lightning_multiloss._metric_keys import BestValues

    with torch.device("meta"):
        best = BestValues([True, False])
    best.to_empty(device="cpu")
    best.values.fill_(math.nan)
    best.reset_parameters()
    assert best.values.tolist() == [-math.inf, math.inf]
    assert best.update(0, torch.tensor(0.5)).item() == 0.5
