"""``multiloss-train`` resumes exactly: 2 epochs + ``ckpt_path=.../last.ckpt`` end where 4 straight epochs end.

The training order of every epoch depends only on the seed and the epoch (the data modules'
train sampler), so a resumed run reads the batches the uninterrupted run read. Runs are tiny
(``trainer=debug``: 3 batches an epoch) and in this process.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl  # the app's default package
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lightning_multiloss import MultiLossError, ResumableDataLoader
from lightning_multiloss.app.config import config_dir
from lightning_multiloss.app.data import DigitsDataModule
from lightning_multiloss.app.train import run

QUIET = ("trainer=debug", "trainer.enable_progress_bar=false", "test=false")


class StopAfterEpochs(pl.Callback):
    """Ends training after ``epochs`` epochs, as a preempted job would (the run planned more)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class StopAtStep(pl.Callback):
    """Ends training after ``step`` optimizer steps, in the middle of an epoch (as a preemption would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def run_app(out: Path, *overrides: str) -> dict[str, Any]:
    overrides = (*QUIET, *overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"output_dir={out}"])
    return run(cfg, overrides)


def checkpoint(folder: Path) -> dict[str, Any]:
    return torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same_tensors(a: Any, b: Any, where: str) -> None:
    """``a`` and ``b`` hold the same structure and exactly the same tensors (optimizer states are nested)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_resumed_exactly(straight: dict[str, Any], resumed: dict[str, Any]) -> None:
    assert straight["global_step"] == resumed["global_step"] == 12  # 4 epochs of 3 batches
    assert_same_tensors(straight["state_dict"], resumed["state_dict"], "state_dict")
    assert_same_tensors(straight["optimizer_states"], resumed["optimizer_states"], "optimizer_states")


@pytest.mark.parametrize(
    "weighting",
    [
        ("weighting=fixed",),
        ("weighting=scheduled", "weighting.unit=step", "weighting.schedule.duration=12"),
        ("weighting=scheduled", "weighting.unit=epoch", "weighting.schedule.duration=4"),
        # Lightning loads a checkpoint into the module as built, then converts it to float64: the
        # resumed run started from the float32 rounding of the saved weights (2.5e-7 apart at the end).
        ("weighting=uncertainty", "trainer.precision=64-true"),
    ],
    ids=["fixed", "scheduled-step", "scheduled-epoch", "uncertainty-64-true"],
)
def test_two_epochs_then_resume_to_four_equals_four_straight(tmp_path: Path, weighting: tuple[str, ...]) -> None:
    run_app(tmp_path / "straight", *weighting, "trainer.max_epochs=4")
    run_app(tmp_path / "first", *weighting, "trainer.max_epochs=2")
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    run_app(tmp_path / "resumed", *weighting, f"ckpt_path={last}", "trainer.max_epochs=4")
    assert checkpoint(tmp_path / "first")["global_step"] == 6
    assert_resumed_exactly(checkpoint(tmp_path / "straight"), checkpoint(tmp_path / "resumed"))


def test_a_run_with_loader_workers_resumes_exactly(tmp_path: Path) -> None:
    """With worker processes a plain DataLoader takes the epoch's order from its sampler when
    Lightning creates its iterator, which a resumed fit does before it calls ``set_epoch``: the
    resumed epoch 2 read epoch 0's order. The train loader takes it at the first batch."""
    workers = "data.num_workers=2"
    run_app(tmp_path / "straight", workers, "trainer.max_epochs=4")
    run_app(tmp_path / "first", workers, "trainer.max_epochs=2")
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    run_app(tmp_path / "resumed", workers, f"ckpt_path={last}", "trainer.max_epochs=4")
    assert_resumed_exactly(checkpoint(tmp_path / "straight"), checkpoint(tmp_path / "resumed"))


def test_a_preempted_scheduled_run_resumes_exactly(tmp_path: Path) -> None:
    """``weighting=scheduled`` counts in fractions of the planned steps: a run planned for 4 epochs,
    stopped after 2 and resumed, ends where the uninterrupted run ends."""
    weighting = ("weighting=scheduled", "schedule@weighting.schedule=linear", "trainer.max_epochs=4")
    stop = f"+callbacks.stop._target_={__name__}.StopAfterEpochs"
    run_app(tmp_path / "straight", *weighting)
    run_app(tmp_path / "first", *weighting, stop, "+callbacks.stop.epochs=2")
    assert checkpoint(tmp_path / "first")["global_step"] == 6
    run_app(tmp_path / "resumed", *weighting, f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}")
    assert_resumed_exactly(checkpoint(tmp_path / "straight"), checkpoint(tmp_path / "resumed"))


@pytest.mark.filterwarnings("error:.*your dataloader is not resumable")
def test_a_run_resumed_in_the_middle_of_an_epoch_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    """A checkpoint every step (``every_n_train_steps``), the run stopped at step 4 (the second batch
    of epoch 1), resumed: the train loader skips the batch of epoch 1 already trained on. DWA weighs
    from the epochs' mean losses, which would count a batch read twice."""
    every_step = "+callbacks.checkpoint.every_n_train_steps=1"
    run_app(tmp_path / "straight", "weighting=dwa", "trainer.max_epochs=4")
    stop = (f"+callbacks.stop._target_={__name__}.StopAtStep", "+callbacks.stop.step=4")
    run_app(tmp_path / "first", "weighting=dwa", "trainer.max_epochs=4", every_step, *stop)
    saved = checkpoint(tmp_path / "first")
    assert saved["global_step"] == 4
    (state,) = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state == {"epoch": 1, "batches": 1, "length": 20, "batch_size": 64, "replicas": 1}
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    run_app(tmp_path / "resumed", "weighting=dwa", "trainer.max_epochs=4", f"ckpt_path={last}")
    assert_resumed_exactly(checkpoint(tmp_path / "straight"), checkpoint(tmp_path / "resumed"))


class FakeTrainer:
    """What the data module reads of its Trainer: the distributed sampler's arguments."""

    def __init__(self, num_replicas: int, rank: int) -> None:
        self.distributed_sampler_kwargs = {"num_replicas": num_replicas, "rank": rank}


def train_order(dm: DigitsDataModule, epoch: int) -> list[int]:
    """The indices (into the train split) that the train loader yields in ``epoch``."""
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]  # what Lightning's loop calls each epoch
    return list(loader.sampler)


@pytest.mark.parametrize("replicas", [1, 2])
def test_the_train_order_depends_only_on_the_seed_and_the_epoch(replicas: int) -> None:
    dm = DigitsDataModule(batch_size=32, seed=3)
    dm.setup()
    n = len(dm.datasets["train"])
    per_process = -(-n // replicas)  # DistributedSampler pads to equal shares
    for epoch in (0, 1, 5):
        # By hand: a permutation drawn from a generator seeded with seed + epoch, padded, then strided.
        permutation = torch.randperm(n, generator=torch.Generator().manual_seed(3 + epoch)).tolist()
        padded = (permutation + permutation)[: per_process * replicas]
        shares = []
        for rank in range(replicas):
            dm.trainer = FakeTrainer(replicas, rank) if replicas > 1 else None  # type: ignore[assignment]
            torch.manual_seed(1000 + rank + epoch)  # the global random state plays no part
            shares.append(train_order(dm, epoch))
            assert shares[-1] == padded[rank::replicas]
        assert sorted(i for share in shares for i in share) == sorted(padded)
    assert train_order(dm, 0) != train_order(dm, 1)  # a new order each epoch


# -- resuming another model: one line naming what the checkpoint holds and what the config asks for --------
HELD = "tasks digit (10 outputs), recon (64 outputs), centre (1 output) and weighting 'fixed'"


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default experiment (fixed weights), 2 epochs."""
    out = tmp_path_factory.mktemp("digits")
    run_app(out, "trainer.max_epochs=2")
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    ("overrides", "asked", "detail"),
    [
        (
            ("~model.tasks.centre",),
            "tasks digit (10 outputs), recon (64 outputs) and weighting 'fixed'",
            "the config's model lacks heads.centre.weight, heads.centre.bias",
        ),
        (
            ("+task@model.tasks.parity=binary",),
            "tasks digit (10 outputs), recon (64 outputs), centre (1 output), parity (1 output) and weighting 'fixed'",
            "the checkpoint lacks heads.parity.weight, heads.parity.bias",
        ),
        (
            ("model.tasks.digit.out_features=12",),
            "tasks digit (12 outputs), recon (64 outputs), centre (1 output) and weighting 'fixed'",
            "heads.digit.weight is [10, 64] in the checkpoint, [12, 64] in the config",
        ),
        (
            ("weighting=uncertainty",),
            "tasks digit (10 outputs), recon (64 outputs), centre (1 output) and weighting 'uncertainty'",
            "the checkpoint lacks weighting.log_var",
        ),
        (
            ("model.trunk.hidden=[32]",),
            "tasks digit (10 outputs), recon (64 outputs), centre (1 output) and weighting 'fixed'",
            "trunk.body.1.weight is [128, 64] in the checkpoint, [32, 64] in the config; "
            "the config's model lacks trunk.body.3.weight, trunk.body.3.bias",
        ),
    ],
    ids=["fewer-tasks", "more-tasks", "head-size", "weighting", "trunk"],
)
def test_resuming_another_model_names_both(
    digits_checkpoint: Path, tmp_path: Path, overrides: tuple[str, ...], asked: str, detail: str
) -> None:
    expected = (
        f"ckpt_path '{digits_checkpoint}' does not fit the configured model: the checkpoint holds {HELD}; "
        f"the config asks for {asked} ({detail})"
    )
    with pytest.raises(MultiLossError) as info:
        run_app(tmp_path, f"ckpt_path={digits_checkpoint}", "trainer.max_epochs=3", *overrides)
    assert str(info.value) == expected


def test_another_weighting_with_the_same_state_is_refused_too(digits_checkpoint: Path, tmp_path: Path) -> None:
    """``fixed`` and ``gls`` keep no state: the checkpoint would load, but it trained another weighting."""
    with pytest.raises(MultiLossError) as info:
        run_app(tmp_path, f"ckpt_path={digits_checkpoint}", "trainer.max_epochs=3", "weighting=gls")
    assert str(info.value) == (
        f"ckpt_path '{digits_checkpoint}' does not fit the configured model: the checkpoint holds {HELD}; "
        "the config asks for tasks digit (10 outputs), recon (64 outputs), centre (1 output) and weighting 'gls'"
    )


@pytest.fixture(scope="module")
def uncertainty_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default experiment with uncertainty weighting (learned log-variances), 1 epoch."""
    out = tmp_path_factory.mktemp("uncertainty")
    run_app(out, "weighting=uncertainty", "trainer.max_epochs=1")
    return out / "checkpoints" / "last.ckpt"


def test_an_initial_value_the_resume_would_not_take_is_refused(uncertainty_checkpoint: Path, tmp_path: Path) -> None:
    """weighting.init seeds the log-variances, which a resumed run loads from the checkpoint: another
    value was ignored without a word (as model.optimizer.lr would be, which is refused)."""
    with pytest.raises(MultiLossError) as info:
        run_app(tmp_path, f"ckpt_path={uncertainty_checkpoint}", "trainer.max_epochs=2", "weighting=uncertainty",
                "weighting.init=3.0")  # fmt: skip
    assert str(info.value) == (
        f"ckpt_path '{uncertainty_checkpoint}' was trained with weighting.init=0.0, the config asks for 3.0: a resumed "
        "run continues with the weighting's learned state from the checkpoint, where this value would not take "
        "effect; resume with weighting.init=0.0"
    )


def test_stchs_warm_up_cannot_change_on_resume(tmp_path: Path) -> None:
    """STCH records its nadir at the warm-up's end: lowered below the epochs done, the resumed run
    never recorded one (it said the change was followed)."""
    run_app(tmp_path / "first", "weighting=stch", "weighting.warmup_epochs=2", "trainer.max_epochs=2")
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    with pytest.raises(MultiLossError) as info:
        run_app(tmp_path / "resumed", "weighting=stch", "weighting.warmup_epochs=1", f"ckpt_path={last}",
                "trainer.max_epochs=3")  # fmt: skip
    assert str(info.value).startswith(
        f"ckpt_path '{last}' was trained with weighting.warmup_epochs=2, the config asks for 1: the warm-up's end is "
        "when the weighting records its reference point"
    )
    assert str(info.value).endswith("; resume with weighting.warmup_epochs=2")


def test_a_weighting_setting_the_resume_follows_is_warned_of(
    digits_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        result = run_app(tmp_path, f"ckpt_path={digits_checkpoint}", "trainer.max_epochs=3",
                         "weighting.weights=[1.0,0.5,0.5]")  # fmt: skip
    assert result["status"] == "completed"
    assert "the resumed run changes weighting.weights from None to [1.0, 0.5, 0.5]: from the resumed step on" in [
        r.getMessage() for r in caplog.records
    ]


def test_the_same_model_resumes(digits_checkpoint: Path, tmp_path: Path) -> None:
    result = run_app(tmp_path, f"ckpt_path={digits_checkpoint}", "trainer.max_epochs=3")
    assert result["status"] == "completed" and checkpoint(tmp_path)["global_step"] == 9


def test_a_checkpoint_without_the_last_weights_of_earlier_versions_resumes(tmp_path: Path) -> None:
    # GLS (FAMO, STCH, RLW) keeps its last weights in checkpoints now, and the mixin its open epoch's
    # task-loss sums; a run of an earlier version, without them, resumes (its weights are those of
    # the next step's losses, its sums start from zero).
    run_app(tmp_path / "first", "weighting=gls", "trainer.max_epochs=1")
    saved = checkpoint(tmp_path / "first")
    earlier = ["weighting.last_weights", *(key for key in saved["state_dict"] if key.startswith("_mt_train_means."))]
    assert len(earlier) == 4
    for key in earlier:
        del saved["state_dict"][key]
    older = tmp_path / "older.ckpt"
    torch.save(saved, older)
    result = run_app(tmp_path / "second", "weighting=gls", f"ckpt_path={older}", "trainer.max_epochs=2")
    assert result["status"] == "completed" and checkpoint(tmp_path / "second")["global_step"] == 6


def test_a_run_resumed_into_its_own_folder_keeps_the_earlier_csv_rows(tmp_path: Path) -> None:
    # Lightning's CSVLogger deleted the metrics.csv it found in the folder: the first epochs' rows were lost.
    run_app(tmp_path, "trainer.max_epochs=1")
    before = (tmp_path / "csv" / "metrics.csv").read_text()
    steps = checkpoint(tmp_path)["global_step"]
    run_app(tmp_path, "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}")
    assert (tmp_path / "csv" / f"metrics-until-step-{steps}.csv").read_text() == before
    with open(tmp_path / "csv" / "metrics.csv") as f:
        epochs = {row["epoch"] for row in csv.DictReader(f) if row.get("epoch")}
    assert "1" in epochs and "0" not in epochs  # the resumed epoch's rows (and the final evaluation's)
