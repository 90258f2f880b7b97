"""Checkpoint and resume: an interrupted run resumed from its checkpoint ends exactly where an
uninterrupted run ends (parameters, weighting state, optimizer state, weight trajectory)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint, OnExceptionCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler

from lightning_multiloss import LossWeightingCallback, MultiLossError, ResumableDataLoader
from lightning_multiloss.schedules import Linear
from lightning_multiloss.weighting import Fixed, Learnable, Scheduled, Weighting, create_weighting
from tests._models import ToyDataset, ToyNet, assert_params_close, quiet_trainer, toy_loader

HALF = 8  # 64 samples in batches of 16: 4 steps per epoch, so the checkpoint is at an epoch's end


def make_weighting(kind: str) -> Weighting:
    if kind == "step":
        return Scheduled(Linear(1.0, 0.0, duration=12), unit="step")
    if kind == "epoch":
        return Scheduled(Linear(1.0, 0.2, duration=3), unit="epoch")
    if kind == "fraction":
        return Scheduled(Linear(1.0, 0.0, duration=1.0), unit="fraction")
    if kind in ("dwa", "stch"):  # weights from the epochs' mean losses
        return create_weighting(kind)
    return Learnable()


def expected_alpha(kind: str, step: int) -> float | None:
    """The alpha that optimizer step ``step`` (1-based) used, by hand; None for learnable."""
    if kind == "step":
        return 1.0 - min(step - 1, 12) / 12
    if kind == "epoch":
        epoch = (step - 1) // 4
        return 1.0 - 0.8 * min(epoch, 3) / 3
    if kind == "fraction":  # planned for 2 * HALF steps, also by the interrupted run
        return 1.0 - (step - 1) / (2 * HALF)
    return None


class StopAt(pl.Callback):
    """Stops training after ``step`` optimizer steps, as an interruption would (same planned length)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def fit(kind: str, tmp_path: Path, max_steps: int, ckpt_path: str | None = None, **kw: Any):
    model = ToyNet(make_weighting(kind), optimizer="adam", lr=0.05)
    record = LossWeightingCallback()
    trainer = quiet_trainer(
        max_steps=max_steps, default_root_dir=tmp_path, callbacks=[record, *kw.pop("cbs", [])], **kw
    )
    trainer.fit(model, toy_loader(n=64, batch_size=16), ckpt_path=ckpt_path)
    return model, trainer, record


def assert_plain(value: Any, where: str) -> None:
    """Only plain Python values (what ``weights_only=True`` loads without allow-listing)."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str), f"{where}: key {k!r}"
            assert_plain(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            assert_plain(v, f"{where}[{i}]")
    else:
        assert isinstance(value, int | float | str | bool), f"{where} is a {type(value).__name__}"


def optimizer_state(trainer: pl.Trainer) -> dict[int, dict[str, torch.Tensor]]:
    return trainer.optimizers[0].state_dict()["state"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.parametrize("kind", ["step", "epoch", "fraction", "learnable", "dwa", "stch"])
def test_resume_equals_uninterrupted(tmp_path: Path, kind: str) -> None:
    full, full_trainer, full_record = fit(kind, tmp_path / "full", 2 * HALF)

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=HALF, save_top_k=-1)
    # Interrupted at HALF, with the same max_steps as the full run (the same planned length).
    fit(kind, tmp_path / "first", 2 * HALF, cbs=[saver, StopAt(HALF)], enable_checkpointing=True)
    (ckpt,) = sorted((tmp_path / "ckpt").glob("*.ckpt"))

    checkpoint = torch.load(ckpt, weights_only=True)
    assert checkpoint["global_step"] == HALF
    state = checkpoint["callbacks"]["LossWeightingCallback"]
    assert_plain(state, "callback state")
    assert state["steps"] == list(range(1, HALF + 1))
    assert len(state["weights"]) == HALF and all(len(row) == 2 for row in state["weights"])

    resumed, resumed_trainer, resumed_record = fit(kind, tmp_path / "second", 2 * HALF, ckpt_path=str(ckpt))
    assert resumed_trainer.global_step == full_trainer.global_step == 2 * HALF
    assert resumed_trainer.current_epoch == full_trainer.current_epoch

    # Parameters and weighting state (learnable alpha, scheduled weight buffer).
    want = full.state_dict()
    got = resumed.state_dict()
    assert_params_close(got, want, atol=1e-6, what="after resume")

    # Optimizer state, Adam's moments of alpha included.
    want_opt, got_opt = optimizer_state(full_trainer), optimizer_state(resumed_trainer)
    assert set(got_opt) == set(want_opt)
    for index in want_opt:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(got_opt[index][name], want_opt[index][name], rtol=0, atol=1e-6)
    if kind == "learnable":
        params = list(full.parameters())
        at = next(i for i, p in enumerate(params) if p is full.weighting.alpha)
        assert float(want_opt[at]["exp_avg"]) != 0.0
        torch.testing.assert_close(got_opt[at]["exp_avg"], want_opt[at]["exp_avg"], rtol=0, atol=1e-6)

    # The trajectory: the checkpointed half plus the resumed half, as in the uninterrupted run.
    assert resumed_record.steps == full_record.steps == list(range(1, 2 * HALF + 1))
    assert resumed_record.epochs == full_record.epochs == [(s - 1) // 4 for s in range(1, 2 * HALF + 1)]
    got_w = torch.tensor(resumed_record.weights, dtype=torch.float64)
    torch.testing.assert_close(got_w, torch.tensor(full_record.weights, dtype=torch.float64), rtol=0, atol=1e-6)
    if expected_alpha(kind, 1) is not None:
        by_hand = [expected_alpha(kind, s) for s in range(1, 2 * HALF + 1)]
        torch.testing.assert_close(got_w[:, 0], torch.tensor(by_hand, dtype=torch.float64), rtol=0, atol=1e-6)


def same_batches(epochs_steps: int = 4) -> DataLoader:
    """Every batch the same 16 samples: a fit restarted in an epoch replays the loader from its
    first batch (Lightning's way with a plain DataLoader), which here reads what the uninterrupted
    run reads."""
    return DataLoader(ConcatDataset([ToyDataset(16)] * epochs_steps), batch_size=16)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.parametrize("kind", ["dwa", "stch"])
def test_resumed_twice_equals_uninterrupted(tmp_path: Path, kind: str) -> None:
    # Interrupted in epoch 0 (step 2), resumed and interrupted again at its last batch (step 4),
    # then resumed to the end: the first resume runs no on_train_epoch_start, and the epoch it
    # restarted into was not known to be open at the second checkpoint, whose resume then left
    # epoch 0 unended (DWA's means of epochs 0 and 1 in one).
    full, _ = logged_fit(tmp_path, same_batches(), [], kind=kind)
    logged_fit(tmp_path, same_batches(), saved_and_stopped_at(tmp_path / "first", 2), kind=kind)
    (first,) = (tmp_path / "first").glob("*step=2.ckpt")
    logged_fit(tmp_path, same_batches(), saved_and_stopped_at(tmp_path / "second", 4), first, kind=kind)
    (second,) = (tmp_path / "second").glob("*step=4.ckpt")
    resumed, _ = logged_fit(tmp_path, same_batches(), [], second, kind=kind)
    want, got = full.state_dict(), resumed.state_dict()
    assert int(got["weighting.epochs_seen"]) == int(want["weighting.epochs_seen"]) == 3
    assert_params_close(got, want, atol=1e-6, what="after resume")


def test_a_fit_from_step_0_starts_the_epoch_sums_afresh() -> None:
    # Weights loaded from a checkpoint written in an epoch bring that epoch's running sums: a new
    # fit added its own first epoch to them.
    def fit(model: ToyNet) -> ToyNet:
        quiet_trainer(max_epochs=1).fit(model, toy_loader(n=64, batch_size=16))
        return model

    loaded = ToyNet(make_weighting("dwa"))
    loaded.weighting.epoch_losses.add(torch.tensor([100.0, 100.0]))
    torch.testing.assert_close(
        fit(loaded).weighting.last_means, fit(ToyNet(make_weighting("dwa"))).weighting.last_means
    )


class WithHyperparameters(ToyNet):
    """Lightning's idiom: the arguments, a strategy object among them, saved in every checkpoint."""

    def __init__(self, weighting: Weighting) -> None:
        super().__init__(weighting)
        self.save_hyperparameters()


@pytest.mark.parametrize("kind", ["step", "dwa"])
def test_a_module_that_saves_its_strategy_as_a_hyperparameter_loads_from_its_checkpoint(
    tmp_path: Path, kind: str
) -> None:
    model = WithHyperparameters(make_weighting(kind))
    trainer = quiet_trainer(max_epochs=2, default_root_dir=tmp_path)
    trainer.fit(model, toy_loader(n=64, batch_size=16))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = WithHyperparameters.load_from_checkpoint(tmp_path / "last.ckpt")  # weights_only, torch's default
    assert type(loaded.weighting) is type(model.weighting)
    want = model.state_dict()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=0, msg=key)


def shuffled_resumable(n: int = 64) -> ResumableDataLoader:
    """A new order every epoch, decided by the seed and the epoch."""
    data = ToyDataset(n)
    return ResumableDataLoader(data, batch_size=16, sampler=DistributedSampler(data, 1, 0, shuffle=True, seed=3))


class BatchLog(pl.Callback):
    """The samples of every batch trained on (the first feature identifies a sample)."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.batches.append(batch["x"][:, 0].tolist())


def logged_fit(
    tmp_path: Path,
    data: DataLoader | pl.LightningDataModule,
    callbacks: list[pl.Callback],
    ckpt: Path | None = None,
    kind: str = "dwa",
    train_metrics: bool = False,
    **trainer_options: Any,
) -> tuple[ToyNet, BatchLog]:
    """A 3-epoch fit on ``data`` (resumed from ``ckpt``), logging the batches it trains on."""
    model = ToyNet(make_weighting(kind), optimizer="adam", lr=0.05, metrics=train_metrics, train_metrics=train_metrics)
    log = BatchLog()
    trainer = quiet_trainer(
        max_epochs=3,
        default_root_dir=tmp_path,
        callbacks=[log, *callbacks],
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks),
        **trainer_options,
    )
    loaders = {"datamodule": data} if isinstance(data, pl.LightningDataModule) else {"train_dataloaders": data}
    trainer.fit(model, **loaders, ckpt_path=str(ckpt) if ckpt else None)
    return model, log


def saved_and_stopped_at(folder: Path, step: int) -> list[pl.Callback]:
    """A checkpoint at optimizer step ``step`` (``<folder>/*step=<step>.ckpt``), then the fit stops."""
    return [ModelCheckpoint(dirpath=folder, every_n_train_steps=step, save_top_k=-1), StopAt(step)]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.filterwarnings("error:.*your dataloader is not resumable")
@pytest.mark.parametrize("kind", ["dwa", "stch", "learnable"])
def test_resumed_in_the_middle_of_epochs_equals_uninterrupted(tmp_path: Path, kind: str) -> None:
    # A shuffled loader interrupted in the middle of epoch 0 (step 2 of 4) and of epoch 1 (step 7):
    # each resumed epoch trains on the batches the uninterrupted run trained on, no batch twice.
    full_logger, resumed_logger = (CSVLogger(tmp_path, name=name) for name in ("full", "resumed"))
    full, full_log = logged_fit(tmp_path, shuffled_resumable(), [], kind=kind, logger=full_logger)
    _, first_log = logged_fit(tmp_path, shuffled_resumable(), saved_and_stopped_at(tmp_path / "first", 2), kind=kind)
    (first,) = (tmp_path / "first").glob("*step=2.ckpt")
    second_run = saved_and_stopped_at(tmp_path / "second", 7)
    _, second_log = logged_fit(tmp_path, shuffled_resumable(), second_run, first, kind=kind)
    (second,) = (tmp_path / "second").glob("*step=7.ckpt")
    resumed, third_log = logged_fit(tmp_path, shuffled_resumable(), [], second, kind=kind, logger=resumed_logger)

    assert len(full_log.batches) == 12 and full_log.batches[:4] != full_log.batches[4:8]  # shuffled anew each epoch
    assert first_log.batches + second_log.batches + third_log.batches == full_log.batches
    want, got = full.state_dict(), resumed.state_dict()
    assert_params_close(got, want, atol=1e-6, what="after resume")
    # The epoch means logged: epoch 1's, resumed at its fourth batch, is over all four (it was over
    # the batch after the checkpoint alone: the running sums were not in checkpoints).
    full_means, resumed_means = (epoch_means(logger) for logger in (full_logger, resumed_logger))
    assert list(full_means) == [0, 1, 2] and list(resumed_means) == [1, 2]
    for epoch, means in resumed_means.items():
        assert means == pytest.approx(full_means[epoch], rel=1e-6), epoch


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_the_training_metrics_of_an_epoch_resumed_in_its_middle_are_over_all_of_it(tmp_path: Path) -> None:
    # train_metrics=True: the accuracy and MSE of epoch 1, resumed at its fourth batch, were over
    # that batch alone (0.625 for 0.375 in the report): the metrics' states were not in checkpoints.
    # An epoch-end checkpoint holds the ended epoch's states, which the next epoch must not add to.
    full_logger, resumed_logger = (CSVLogger(tmp_path, name=name) for name in ("full", "resumed"))
    full, _ = logged_fit(tmp_path, shuffled_resumable(), [], train_metrics=True, logger=full_logger)
    _, _ = logged_fit(tmp_path, shuffled_resumable(), saved_and_stopped_at(tmp_path / "first", 7), train_metrics=True)
    (mid_epoch,) = (tmp_path / "first").glob("*step=7.ckpt")
    saved = torch.load(mid_epoch, weights_only=True)["state_dict"]
    assert "_mt_metrics.train_metrics.0.tp" in saved and "_mt_metrics.train_metrics.1.sum_squared_error" in saved
    resumed, _ = logged_fit(tmp_path, shuffled_resumable(), [], mid_epoch, train_metrics=True, logger=resumed_logger)
    # Written in on_train_epoch_end, before Lightning logs and resets the epoch's metrics.
    at_end = [ModelCheckpoint(dirpath=tmp_path / "end", save_on_train_epoch_end=True, save_top_k=-1), StopAt(4)]
    _, _ = logged_fit(tmp_path, shuffled_resumable(), at_end, train_metrics=True)
    (epoch_end,) = (tmp_path / "end").glob("epoch=0-step=4.ckpt")
    end_logger = CSVLogger(tmp_path, name="from_end")
    logged_fit(tmp_path, shuffled_resumable(), [], epoch_end, train_metrics=True, logger=end_logger)

    full_values, resumed_values, from_end = (
        epoch_values(logger, ["train/acc/cls", "train/mse/reg"]) for logger in (full_logger, resumed_logger, end_logger)
    )
    assert list(full_values) == [0, 1, 2] and list(resumed_values) == [1, 2] and list(from_end) == [1, 2]
    for epoch in (1, 2):
        assert resumed_values[epoch] == pytest.approx(full_values[epoch], rel=1e-6), epoch
        assert from_end[epoch] == pytest.approx(full_values[epoch], rel=1e-6), epoch
    assert full_values[0] != full_values[1]  # the epochs' values differ: a mix of two epochs would show
    assert_params_close(resumed.state_dict(), full.state_dict(), atol=1e-6, what="after resume")


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_a_checkpoint_without_training_metrics_loads_into_a_model_with_them(tmp_path: Path) -> None:
    # A checkpoint of an earlier version, or of the model before train_metrics=True, has no states of
    # the training metrics (torchmetrics' states are no buffers: a strict load does not miss them).
    saver = ModelCheckpoint(dirpath=tmp_path / "plain", save_top_k=-1)
    quiet_trainer(max_epochs=1, callbacks=[saver], enable_checkpointing=True).fit(ToyNet("fixed"), toy_loader(n=32))
    (path,) = (tmp_path / "plain").glob("*.ckpt")
    assert not any(".train_metrics." in key for key in torch.load(path, weights_only=True)["state_dict"])
    loaded = ToyNet.load_from_checkpoint(path, weighting="fixed", metrics=True, train_metrics=True)
    assert all(int(state.sum()) == 0 for state in loaded.running_training_metrics()[0].metric_state.values())
    model = ToyNet("fixed", metrics=True, train_metrics=True)
    saver = ModelCheckpoint(dirpath=tmp_path / "with", save_top_k=-1)
    trainer = quiet_trainer(max_epochs=2, callbacks=[saver], enable_checkpointing=True)
    trainer.fit(model, toy_loader(n=32), ckpt_path=str(path))
    assert model.trainer.current_epoch == 2 and "train/acc/cls" in model.trainer.callback_metrics
    # And the other way: a checkpoint with them loads into a model without (for inference, say).
    (with_metrics,) = (tmp_path / "with").glob("epoch=1*.ckpt")
    assert any(".train_metrics." in key for key in torch.load(with_metrics, weights_only=True)["state_dict"])
    plain = ToyNet.load_from_checkpoint(with_metrics, weighting="fixed")
    torch.testing.assert_close(plain.trunk[0].weight, model.trunk[0].weight)


def epoch_values(logger: CSVLogger, keys: list[str]) -> dict[int, list[float]]:
    """The logged values of ``keys`` (epoch values, one row per epoch) by epoch."""
    logger.save()
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get(keys[0])]
    return {int(row["epoch"]): [float(row[key]) for key in keys] for row in rows}


def epoch_means(logger: CSVLogger) -> dict[int, list[float]]:
    """The logged ``train/loss/<task>_epoch`` values of each epoch."""
    return epoch_values(logger, ["train/loss/cls_epoch", "train/loss/reg_epoch"])


class FailAt(pl.Callback):
    """Raises when batch ``batch_idx`` of epoch ``epoch`` starts: handed out by the loader, not trained on."""

    def __init__(self, epoch: int, batch_idx: int) -> None:
        self.at = (epoch, batch_idx)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == self.at:
            raise RuntimeError("the machine went away")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.parametrize("kind", ["dwa", "learnable"])
def test_a_checkpoint_written_during_a_batch_leaves_that_batch_to_the_resumed_run(tmp_path: Path, kind: str) -> None:
    # OnExceptionCheckpoint (as Lightning's SLURM requeue, which saves from a signal handler) writes
    # while batch 2 of epoch 1 is in flight: the loader had handed out 3 batches, Lightning had
    # trained on 2 and trains on the third again after the resume.
    full, full_log = logged_fit(tmp_path, shuffled_resumable(), [], kind=kind)
    saver = OnExceptionCheckpoint(dirpath=tmp_path / "crash", filename="crash")
    with pytest.raises(RuntimeError, match="the machine went away"):
        logged_fit(tmp_path, shuffled_resumable(), [saver, FailAt(epoch=1, batch_idx=2)], kind=kind)
    crash = tmp_path / "crash" / "crash.ckpt"
    (state,) = torch.load(crash, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert (state["epoch"], state["batches"]) == (1, 2)
    resumed, resumed_log = logged_fit(tmp_path, shuffled_resumable(), [], crash, kind=kind)
    assert resumed_log.batches == full_log.batches[6:]  # from batch 2 of epoch 1 (4 batches an epoch)
    want, got = full.state_dict(), resumed.state_dict()
    assert_params_close(got, want, atol=1e-6, what="after resume")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_a_checkpoint_without_the_loaders_state_resumes_at_the_batches_lightning_counts_done(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Written by a run with a plain DataLoader over the same seeded sampler (or an earlier version):
    # Lightning does not call load_state_dict, and keeps quiet since the loader is resumable.
    full, full_log = logged_fit(tmp_path, shuffled_resumable(), [])
    resumable = shuffled_resumable()
    plain = DataLoader(resumable.dataset, batch_size=16, sampler=resumable.sampler)
    _, first_log = logged_fit(tmp_path, plain, saved_and_stopped_at(tmp_path / "plain", 6))
    (ckpt,) = (tmp_path / "plain").glob("*step=6.ckpt")
    assert "combined_loader" not in torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        resumed, resumed_log = logged_fit(tmp_path, shuffled_resumable(), [], ckpt)
    assert "resumed in the middle of epoch 1 from a checkpoint without the loader's state" in caplog.text
    assert first_log.batches + resumed_log.batches == full_log.batches
    want, got = full.state_dict(), resumed.state_dict()
    assert_params_close(got, want, atol=1e-6, what="after resume")


class PlainNet(pl.LightningModule):
    """A module without the mixin (so without the package's Callback), counting its steps."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)
        self.steps = 0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.steps += 1
        return self.layer(batch["x"]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_fit_that_raised_leaves_the_loader_to_the_next_fit() -> None:
    # The Callback had the loader follow the first Trainer's count of batches trained (2 when it
    # raised); a later fit of another Trainer without the Callback took that count for its own
    # progress and skipped 2 batches of its first epoch.
    loader = shuffled_resumable()
    with pytest.raises(RuntimeError, match="the machine went away"):
        quiet_trainer(max_epochs=1, callbacks=[FailAt(epoch=0, batch_idx=2)]).fit(ToyNet(make_weighting("dwa")), loader)
    plain = PlainNet()
    quiet_trainer(max_epochs=1).fit(plain, loader)
    assert plain.steps == len(loader) == 4


def test_a_shorter_loader_that_a_combined_loader_cycles_reads_each_pass_whole() -> None:
    # Lightning's default max_size_cycle: the 2-batch loader restarts within the epoch. Its second
    # pass took Lightning's count of the epoch's batches (2) for a resume and skipped them: the
    # epoch ended after 2 of its 5 batches.
    seen: list[list[float]] = []

    class TwoLoaders(ToyNet):
        def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
            seen.append(batch["short"]["x"][:, 0].tolist())
            return super().training_step(batch["long"], batch_idx)

    def resumable(n: int, seed: int) -> ResumableDataLoader:
        data = ToyDataset(n, seed=seed)
        return ResumableDataLoader(data, batch_size=16, sampler=DistributedSampler(data, 1, 0, shuffle=False))

    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(TwoLoaders(make_weighting("dwa")), {"long": resumable(80, 0), "short": resumable(32, 1)})
    assert trainer.global_step == 5
    assert seen[2:4] == seen[0:2] and seen[4] == seen[0]  # the short loader whole, twice, then again


def test_overfit_batches_rebuilds_the_loader_in_order() -> None:
    # Lightning rebuilds the train loader with a SequentialSampler, which the loader refused.
    trainer = quiet_trainer(max_epochs=2, overfit_batches=2)
    trainer.fit(ToyNet(make_weighting("dwa")), shuffled_resumable())
    assert trainer.global_step == 4


class ReloadedData(pl.LightningDataModule):
    def train_dataloader(self) -> ResumableDataLoader:
        return shuffled_resumable()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_a_loader_reloaded_each_epoch_leaves_a_batch_in_flight_to_the_resumed_run(tmp_path: Path) -> None:
    # reload_dataloaders_every_n_epochs builds a new loader each epoch, after on_train_start.
    reload = {"reload_dataloaders_every_n_epochs": 1}
    full, full_log = logged_fit(tmp_path, ReloadedData(), [], **reload)
    saver = OnExceptionCheckpoint(dirpath=tmp_path / "crash", filename="crash")
    with pytest.raises(RuntimeError, match="the machine went away"):
        logged_fit(tmp_path, ReloadedData(), [saver, FailAt(epoch=1, batch_idx=2)], **reload)
    resumed, resumed_log = logged_fit(tmp_path, ReloadedData(), [], tmp_path / "crash" / "crash.ckpt", **reload)
    assert resumed_log.batches == full_log.batches[6:]
    assert_params_close(resumed.state_dict(), full.state_dict(), atol=1e-6, what="after resume")


# -- the tasks of a checkpoint -----------------------------------------------------------------------
def test_a_checkpoint_refuses_the_same_tasks_declared_in_another_order(tmp_path: Path) -> None:
    # A strategy's state is by position (uncertainty's log-variances, Nash-MTL's α): the tasks
    # declared in another order (built from a dict or a set, say) took each other's state, silently.
    trainer = quiet_trainer(default_root_dir=tmp_path, max_steps=2)
    trainer.fit(ToyNet("uncertainty", tasks=("cls", "reg")), toy_loader())
    path = tmp_path / "two.ckpt"
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=True)["multiloss_task_names"] == ["cls", "reg"]
    expected = (
        r"the checkpoint was written with the tasks \['cls', 'reg'\], the model declares them in another order, "
        r"\['reg', 'cls'\]: declare them in the checkpoint's order"
    )
    with pytest.raises(MultiLossError, match=expected):
        quiet_trainer(default_root_dir=tmp_path, max_steps=4).fit(
            ToyNet("uncertainty", tasks=("reg", "cls")), toy_loader(), ckpt_path=path
        )
    with pytest.raises(MultiLossError, match=expected):
        quiet_trainer(default_root_dir=tmp_path).validate(
            ToyNet("uncertainty", tasks=("reg", "cls")), toy_loader(), ckpt_path=path, verbose=False
        )
    resumed = ToyNet("uncertainty", tasks=("cls", "reg"))
    quiet_trainer(default_root_dir=tmp_path, max_steps=4).fit(resumed, toy_loader(), ckpt_path=path)  # the same order


def test_a_checkpoint_of_other_tasks_loads_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trainer = quiet_trainer(default_root_dir=tmp_path, max_steps=2)
    trainer.fit(ToyNet("uncertainty", tasks=("cls", "reg")), toy_loader())
    path = tmp_path / "two.ckpt"
    trainer.save_checkpoint(path)
    model = ToyNet("uncertainty", tasks=("cls", "aux"))
    state = torch.load(path, weights_only=True)
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss.mixin"):
        model.on_load_checkpoint(state)
    assert "written with the tasks ['cls', 'reg'], the model has ['cls', 'aux']" in caplog.text


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_a_resume_from_an_epochs_last_batch_warns_of_lightnings_next_checkpoints(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Lightning (2.6) saves the next epoch's checkpoints as if it had not started: resumed from one
    # of them, the run repeats that epoch. The Callback cannot correct Lightning's loop; it says so.
    logged_fit(tmp_path, same_batches(), saved_and_stopped_at(tmp_path / "first", 4))  # epoch 0's last batch
    (last_batch,) = (tmp_path / "first").glob("*step=4.ckpt")
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        logged_fit(tmp_path, same_batches(), [], last_batch)
    warned = [r.getMessage() for r in caplog.records if "after the last batch of epoch 0" in r.getMessage()]
    assert len(warned) == 1 and "repeats that epoch from its first batch" in warned[0]
    # A checkpoint inside an epoch resumes without it.
    logged_fit(tmp_path, same_batches(), saved_and_stopped_at(tmp_path / "mid", 2))
    (middle,) = (tmp_path / "mid").glob("*step=2.ckpt")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        logged_fit(tmp_path, same_batches(), [], middle)
    assert not [r for r in caplog.records if "after the last batch" in r.getMessage()]


class Renamed(ToyNet):
    """ToyNet whose tasks ``cls`` and ``reg`` are called ``label`` and ``box`` (same heads, same targets)."""

    def __init__(self) -> None:
        super().__init__(Learnable())
        from torch import nn

        from lightning_multiloss import Task

        self.configure_multitask(
            [Task("label", nn.CrossEntropyLoss(), target="cls"), Task("box", nn.MSELoss(), target="reg")],
            Learnable(),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = super().forward(x)
        return {"label": outputs["cls"], "box": outputs["reg"]}


def test_a_run_resumed_into_renamed_tasks_records_under_the_new_names(tmp_path: Path) -> None:
    """The mixin loads the strategy's state by position (with a warning); the Callback kept the
    checkpoint's names: the CSV's header named the old tasks, and a validate after the fit refused
    the model ("recorded tasks ['cls', 'reg'], the model has ['label', 'box']")."""
    first = quiet_trainer(max_steps=4, default_root_dir=str(tmp_path / "a"), enable_checkpointing=True)
    original = ToyNet(Learnable())
    first.fit(original, toy_loader(n=64))
    (checkpoint,) = (tmp_path / "a").rglob("*.ckpt")
    before = [row[2:] for row in csv.reader((tmp_path / "a" / "loss_weights.csv").open())][1:-1]
    callback = LossWeightingCallback(plot=False)
    logger = CSVLogger(str(tmp_path), name="b")
    resumed = quiet_trainer(max_steps=8, callbacks=[callback], logger=logger, log_every_n_steps=1)
    model = Renamed()
    resumed.fit(model, toy_loader(n=64), ckpt_path=str(checkpoint))
    with open(f"{logger.log_dir}/loss_weights.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "epoch", "label", "box"]
    assert [row[2:] for row in rows[1:5]] == before  # the restored steps, by position
    assert [int(row[0]) for row in rows[1:]] == list(range(1, 10))
    assert callback.task_names == ["label", "box"]
    resumed.validate(model, toy_loader(n=16), verbose=False)  # refused the model before


def test_a_checkpoint_of_another_weighting_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Loaded into another strategy, a checkpoint is warned of naming both (it loaded silently):
    one with the same state entries takes it; one whose state differs is refused by Lightning's
    strict loading after the warning (whose error named the keys alone), and with
    ``strict_loading=False`` the network loads and the strategy keeps its own state."""
    trainer = quiet_trainer(max_steps=2, default_root_dir=str(tmp_path))
    trainer.fit(ToyNet("uncertainty"), toy_loader(n=32))
    path = tmp_path / "uncertainty.ckpt"
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=True)["multiloss_weighting"] == "uncertainty"

    def warnings_of_the_weighting() -> list[str]:
        found = [r.getMessage() for r in caplog.records if "written with the weighting" in r.getMessage()]
        caplog.clear()
        return found

    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        quiet_trainer(max_steps=3).fit(ToyNet("uncertainty"), toy_loader(n=32), ckpt_path=str(path))
        assert warnings_of_the_weighting() == []
        quiet_trainer(max_steps=3).fit(ToyNet("uncertainty_revised"), toy_loader(n=32), ckpt_path=str(path))
        assert warnings_of_the_weighting() == [
            "the checkpoint was written with the weighting 'uncertainty', the model has 'uncertainty_revised': "
            "the model's strategy takes its state (weighting.log_var)"
        ]
        differs = (
            "the checkpoint was written with the weighting 'uncertainty', the model has 'dwa', whose state differs "
            "(only in the checkpoint: ['weighting.log_var']; only in the model: ['weighting.epoch_losses."
        )
        with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"weighting\."):
            quiet_trainer(max_steps=3).fit(ToyNet("dwa"), toy_loader(n=32), ckpt_path=str(path))
        (warning,) = warnings_of_the_weighting()
        assert warning.startswith(differs) and warning.endswith(
            "a strict load refuses it, and a load with strict=False takes the entries of the same name and shape "
            "(none); load it into a model with the weighting 'uncertainty'"
        )
        lenient = ToyNet("dwa")
        lenient.strict_loading = False
        quiet_trainer().validate(lenient, toy_loader(n=16), ckpt_path=str(path), verbose=False)
        (warning,) = warnings_of_the_weighting()
        assert warning.startswith(differs)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert torch.equal(lenient.trunk[0].weight, saved["trunk.0.weight"])  # the network loaded


def test_a_gradient_strategys_checkpoint_loads_strictly_into_fixed_weights(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MGDA's last weights are its state (evaluation reuses them); fixed weights are computed from the
    configuration. A switch to fixed weights for fine-tuning loads the network strictly and keeps
    the configured weights (it was refused on ``weighting.last_weights`` after a warning that said
    the model's strategy takes the checkpoint's state)."""
    trainer = quiet_trainer(max_steps=3, default_root_dir=str(tmp_path))
    trainer.fit(ToyNet("mgda"), toy_loader(n=64))
    path = tmp_path / "mgda.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert "weighting.last_weights" in saved

    model = ToyNet(Fixed([0.25, 4.0]))
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        model.load_state_dict(saved)  # strict
        model.on_load_checkpoint(torch.load(path, weights_only=True))
    assert [r.getMessage() for r in caplog.records if "written with the weighting" in r.getMessage()] == [
        "the checkpoint was written with the weighting 'mgda', the model has 'fixed': the model's strategy takes "
        "its state (none); not weighting.last_weights, as 'fixed' computes its weights from its own state"
    ]
    assert torch.equal(model.trunk[0].weight, saved["trunk.0.weight"])
    assert model.weighting.current_weights().tolist() == [0.25, 4.0]
    quiet_trainer(max_steps=6).fit(model, toy_loader(n=64), ckpt_path=str(path))  # and Lightning's resume
    assert model.weighting.last_weights.tolist() == [0.25, 4.0]


def test_learnable_weights_loaded_off_the_simplex_are_put_back(caplog: pytest.LogCaptureFixture) -> None:
    """Another strategy's ``alpha`` (Nash-MTL's), taken by a load with strict=False, sat off the
    simplex; a checkpoint's own weights load bit for bit."""
    learnable = Learnable()
    learnable.bind(["a", "b", "c"])
    own = torch.tensor([0.2, 0.3, 0.5]) + torch.tensor([1e-8, 0.0, 0.0])  # its own, to float32 rounding
    learnable.load_state_dict({"alpha": own, "last_weights": torch.ones(3)}, strict=False)
    assert torch.equal(learnable.alpha.detach(), own)
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        learnable.load_state_dict({"alpha": torch.tensor([0.4641, 0.1741, 0.1083])}, strict=False)
    (message,) = [r.getMessage() for r in caplog.records if "loaded weights" in r.getMessage()]
    assert (
        message
        == "weighting 'learnable': the loaded weights [0.4641, 0.1741, 0.1083] are not on the simplex: put back there"
    )
    theta = (0.4641 + 0.1741 + 0.1083 - 1.0) / 3  # every weight stays positive: w = v - theta
    torch.testing.assert_close(learnable.alpha.detach(), torch.tensor([0.4641, 0.1741, 0.1083]) - theta)


def test_learnable_loads_a_bfloat16_runs_weights_bit_for_bit_and_meta_or_unbound_alike() -> None:
    """Lightning loads a bf16-true run's checkpoint into the float32 module and converts it after:
    its weights sum to 1 to bfloat16's rounding only, and were projected again (the resumed run left
    the uninterrupted one's path). A meta or an unbound module loads without reading values."""
    bf16 = torch.tensor([0.58984375, 0.265625, 0.140625], dtype=torch.bfloat16)  # sums to 0.99609375
    learnable = Learnable()
    learnable.bind(["a", "b", "c"])
    learnable.load_state_dict({"alpha": bf16}, strict=False)
    assert torch.equal(learnable.alpha.detach(), bf16.float())
    with torch.device("meta"):
        on_meta = Learnable()
        on_meta.bind(["a", "b", "c"])
    on_meta.load_state_dict({"alpha": bf16}, strict=False)
    on_meta.load_state_dict({"alpha": torch.empty(3, device="meta")}, strict=False, assign=True)
    Learnable().load_state_dict({}, strict=False)  # not bound: no alpha yet


def test_the_strategy_switch_warning_names_an_entry_of_another_shape(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Learnable's alpha (a scalar for two tasks) and Nash-MTL's (one per task) share a name: the
    warning said a strict=False load takes it, which then failed on its shape."""
    trainer = quiet_trainer(max_steps=1, default_root_dir=str(tmp_path))
    trainer.fit(ToyNet("learnable"), toy_loader(n=16))
    path = tmp_path / "learnable.ckpt"
    trainer.save_checkpoint(path)
    lenient = ToyNet("nash_mtl")
    lenient.strict_loading = False
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"), pytest.raises(RuntimeError, match="size"):
        quiet_trainer().validate(lenient, toy_loader(n=16), ckpt_path=str(path), verbose=False)
    (warning,) = [r.getMessage() for r in caplog.records if "written with the weighting" in r.getMessage()]
    assert "; weighting.alpha of another shape, which fails any load)" in warning
    assert "takes the entries of the same name and shape (none)" in warning


def test_learnable_loads_float32_weights_into_float64_and_with_assign_as_they_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """float32's 1/3 cast to float64 sums to 1 + 3e-8 (a tuner's saved state under "64-true"): it was
    projected, with a warning, against float64's rounding. Loaded with assign=True in float64, the
    kept copy of the projected weights stayed float32, and every call projected again."""
    third = torch.full((3,), 1 / 3, dtype=torch.float32).double()
    learnable = Learnable()
    learnable.bind(["a", "b", "c"])
    learnable.double()
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        learnable.load_state_dict({"alpha": third}, strict=False)
    assert torch.equal(learnable.alpha.detach(), third) and not caplog.records
    assigned = Learnable()
    assigned.bind(["a", "b", "c"])
    stepped = torch.tensor([0.7, 0.5, -0.1], dtype=torch.float64)
    assigned.load_state_dict({"alpha": stepped}, strict=False, assign=True)
    assert assigned.projected.dtype == torch.float64
    assigned.constrain()  # the loaded weights were put back on the simplex: nothing moves
    assert torch.equal(assigned.alpha.detach(), torch.tensor([0.6, 0.4, 0.0], dtype=torch.float64))
