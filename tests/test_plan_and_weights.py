"""The planned length of training, checked schedules, and reading a strategy's current weights."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_multiloss.callback import LossWeightingCallback
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.schedules import Linear
from lightning_multiloss.weighting import (
    WEIGHTINGS,
    Fixed,
    GradientWeighting,
    GramianWeighting,
    Learnable,
    Progress,
    Scheduled,
    Uncertainty,
    Weighting,
    create_weighting,
)
from tests._models import ToyNet, quiet_trainer, toy_loader

STEPS_PER_EPOCH = 4  # 64 samples in batches of 16


def resumed_schedule(
    tmp_path: Path, replan: bool, caplog: pytest.LogCaptureFixture, accumulate: int = 1, batch_size: int = 16
) -> tuple[LossWeightingCallback, int]:
    """alpha = Linear(1 -> 0) over the fraction of training: 2 epochs of 4 steps, then resumed to 4
    epochs (with ``accumulate`` and ``batch_size``): the resumed fit's callback and its last step."""
    model = ToyNet(Scheduled(Linear(1.0, 0.0, duration=1.0), unit="fraction"))
    first = quiet_trainer(max_epochs=2, callbacks=[LossWeightingCallback()], default_root_dir=tmp_path)
    first.fit(model, toy_loader(n=64, batch_size=16))
    checkpoint = tmp_path / "half.ckpt"
    first.save_checkpoint(checkpoint)
    callback = LossWeightingCallback(replan_on_resume=replan)
    second = quiet_trainer(
        max_epochs=4, accumulate_grad_batches=accumulate, callbacks=[callback], default_root_dir=tmp_path
    )
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        second.fit(
            ToyNet(Scheduled(Linear(1.0, 0.0, duration=1.0), unit="fraction")),
            toy_loader(n=64, batch_size=batch_size),
            ckpt_path=checkpoint,
        )
    return callback, second.global_step


def test_a_resumed_run_keeps_the_planned_length(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    callback, _ = resumed_schedule(tmp_path, replan=False, caplog=caplog)
    alphas = [row[0] for row in callback.weights]
    assert callback.plans == [8]  # result.json's planned_steps: the one plan the schedule followed
    planned = 2 * STEPS_PER_EPOCH
    # Steps 1..8 were planned over 8 steps: alpha = 1 - (s - 1)/8; the resumed steps continue the
    # same plan, past its end, where the schedule holds 0: no jump back up.
    expected = [max(0.0, 1.0 - (s - 1) / planned) for s in range(1, 4 * STEPS_PER_EPOCH + 1)]
    assert alphas == pytest.approx(expected, abs=1e-6)
    messages = [r.getMessage() for r in caplog.records if "planned" in r.getMessage()]
    assert len(messages) == 1
    assert "started with 8 optimizer steps planned, the resumed or continued fit plans 16" in messages[0]


def test_the_same_trainer_fitting_on_keeps_the_planned_length(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The same Trainer, max_epochs raised from 2 to 4, fit again: as a resume from a checkpoint,
    # the schedule holds its end value past the first plan (alpha jumped back to 0.5 at step 13).
    model = ToyNet(Scheduled(Linear(1.0, 0.0, duration=1.0), unit="fraction"))
    callback = LossWeightingCallback()
    trainer = quiet_trainer(max_epochs=2, callbacks=[callback], default_root_dir=tmp_path)
    trainer.fit(model, toy_loader(n=64, batch_size=16))
    trainer.fit_loop.max_epochs = 4
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        trainer.fit(model, toy_loader(n=64, batch_size=16))
    planned = 2 * STEPS_PER_EPOCH
    expected = [max(0.0, 1.0 - (s - 1) / planned) for s in range(1, 4 * STEPS_PER_EPOCH + 1)]
    assert [row[0] for row in callback.weights] == pytest.approx(expected, abs=1e-6)
    assert callback.steps == list(range(1, 4 * STEPS_PER_EPOCH + 1))  # one history over both fits
    assert callback.plans == [8]
    fixed = LossWeightingCallback()
    quiet_trainer(max_epochs=1, callbacks=[fixed], default_root_dir=tmp_path).fit(
        ToyNet(Fixed([0.5, 0.5])), toy_loader(n=64, batch_size=16)
    )
    assert fixed.plans == []  # weights that do not follow the planned length
    assert any("started with 8 optimizer steps planned" in r.getMessage() for r in caplog.records)


def test_one_callback_passed_to_two_trainers_records_each_run_alone(tmp_path: Path) -> None:
    # A sweep's loop that builds the callback once: the second run's records held the first's too.
    callback = LossWeightingCallback(plot=False)
    for weights in ([0.9, 0.1], [0.2, 0.8]):
        trainer = quiet_trainer(max_epochs=1, callbacks=[callback], default_root_dir=tmp_path / str(weights[0]))
        trainer.fit(ToyNet(Fixed(weights)), toy_loader(n=48, batch_size=16))
        assert callback.steps == [1, 2, 3]
        torch.testing.assert_close(torch.tensor(callback.weights), torch.tensor([weights] * 3))
        with open(tmp_path / str(weights[0]) / "loss_weights.csv") as f:
            rows = f.read().splitlines()[1:]
        assert [row.split(",")[0] for row in rows] == ["1", "2", "3", "4"]  # the three steps and the end row


def test_replan_on_resume_plans_anew(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    callback, _ = resumed_schedule(tmp_path, replan=True, caplog=caplog)
    alphas = [row[0] for row in callback.weights]
    assert callback.plans == [8, 16]
    first = [1.0 - (s - 1) / 8 for s in range(1, 9)]
    resumed = [1.0 - (s - 1) / 16 for s in range(9, 17)]  # the new plan: a jump at step 9
    assert alphas == pytest.approx(first + resumed, abs=1e-6)
    assert any("follow the new plan of 16 steps" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("accumulate", "batch_size", "total"), [(2, 16, 12), (1, 8, 24), (1, 64, 10)])
def test_replan_on_resume_counts_the_steps_taken_and_those_left_at_the_new_rate(
    accumulate: int, batch_size: int, total: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 2 epochs of 4 steps, resumed to 4 epochs with another accumulation or batch size: 8 steps taken
    # and 2 epochs at the new rate (2, 8 or 1 steps each). Lightning's estimate counts all 4 epochs at
    # the new rate (8, 32 or 4): the schedule ended early, or never.
    callback, last_step = resumed_schedule(tmp_path, True, caplog, accumulate=accumulate, batch_size=batch_size)
    assert last_step == total
    resumed = [row[0] for step, row in zip(callback.steps, callback.weights, strict=True) if step > 8]
    assert resumed == pytest.approx([1.0 - (s - 1) / total for s in range(9, total + 1)], abs=1e-6)
    assert any(f"follow the new plan of {total} steps" in r.getMessage() for r in caplog.records)


def test_a_schedule_out_of_range_fails_before_the_first_step(tmp_path: Path) -> None:
    model = ToyNet(Scheduled({"reg": Linear(1.0, -0.5, duration=1.0)}, unit="fraction"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(max_epochs=3, default_root_dir=tmp_path)
    with pytest.raises(Exception, match=r"before the first step") as info:
        trainer.fit(model, toy_loader(n=64, batch_size=16))
    # -0.5 is reached at the end only, yet the error comes before any step ...
    assert trainer.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # ... at the first planned step where the weight is negative: 1 - 1.5·s/12 < 0 (12 steps).
    first_bad = next(step for step in range(13) if 1.0 - 1.5 * step / 12 < 0)
    t = float(str(info.value).split("at t=")[1].split(" ")[0])
    assert t == pytest.approx(first_bad / 12, abs=1e-3)


def test_a_fraction_past_the_kept_plan_holds_the_schedules_value_at_1() -> None:
    # A schedule that would go on moving past t = 1 (a sine): steps beyond the plan use its value at 1.
    weighting = Scheduled(lambda t: 0.5 + 0.4 * math.sin(7.0 * t), unit="fraction")
    weighting.bind(["a", "b"])
    for step in (15, 20, 40):
        weighting.set_progress(Progress(step=step, epoch=0, total_steps=15))
        assert weighting.weights.tolist() == pytest.approx([0.5 + 0.4 * math.sin(7.0), 0.5 - 0.4 * math.sin(7.0)])
    weighting.set_progress(Progress(step=12, epoch=0, total_steps=15))
    assert float(weighting.weights[0]) == pytest.approx(0.5 + 0.4 * math.sin(7.0 * 12 / 15))


@pytest.mark.parametrize("unit", ["step", "fraction"])
def test_the_plan_is_checked_over_the_steps_that_train_and_no_further(unit: str) -> None:
    # 10 optimizer steps use t = 0 .. 9 (fractions 0 .. 0.9): alpha = 0.105 t stays in [0, 1] on them
    # and reaches 1.05 only at the step after the last, which never trains.
    scale = 10.0 if unit == "step" else 1.0
    weighting = Scheduled(Linear(0.0, 1.05, duration=scale), unit=unit)  # type: ignore[arg-type]
    weighting.bind(["a", "b"])
    weighting.check_plan(Progress(step=0, epoch=0, total_steps=10))
    eleven = Progress(step=0, epoch=0, total_steps=11) if unit == "step" else Progress(0, 0, 10, fit_steps=11)
    with pytest.raises(MultiLossError, match=r"alpha .* must be in \[0, 1\], the schedule gave 1\.05"):
        weighting.check_plan(eleven)  # an 11th step trains at t = 10 (or at the fraction 1)


def test_a_resumed_run_that_keeps_its_plan_is_checked_up_to_its_own_last_step(tmp_path: Path) -> None:
    """Planned 12 steps, stopped at 4, resumed to 20 steps keeping the plan: t = min(step / 12, 1).
    alpha = 1 - 1.05 t is in [0, 1] on the planned steps (t <= 11/12) but not at t = 1: the check
    covers the resumed steps to 19 and fails before the first of them, not when training gets to 12."""
    schedule = partial(Linear, 1.0, -0.05, duration=1.0)  # 1 - 1.05 t

    class StopAfterOneEpoch(pl.Callback):  # as an early stop would
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            trainer.should_stop = True

    callbacks = [LossWeightingCallback(plot=False), StopAfterOneEpoch()]
    first = quiet_trainer(max_epochs=3, callbacks=callbacks, default_root_dir=tmp_path)
    first.fit(ToyNet(Scheduled(schedule(), unit="fraction")), toy_loader(n=64, batch_size=16))
    assert first.global_step == STEPS_PER_EPOCH  # of 12 planned
    checkpoint = tmp_path / "early.ckpt"
    first.save_checkpoint(checkpoint)
    second = quiet_trainer(max_epochs=5, callbacks=[LossWeightingCallback(plot=False)], default_root_dir=tmp_path)
    resumed = ToyNet(Scheduled(schedule(), unit="fraction"))
    with pytest.raises(Exception, match=r"checked over the planned run, before the first step"):
        second.fit(resumed, toy_loader(n=64, batch_size=16), ckpt_path=checkpoint)
    assert second.global_step == STEPS_PER_EPOCH  # restored, not one step further


def test_current_weights_of_the_strategies_with_their_own_state(tmp_path: Path) -> None:
    fixed = Fixed({"cls": 0.5, "reg": 0.25})
    fixed.bind(["cls", "reg"])
    assert fixed.weights_by_task() == {"cls": 0.5, "reg": 0.25}

    learnable = ToyNet(Learnable(init=0.3), lr=0.5)
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path)
    trainer.fit(learnable, toy_loader(n=32, batch_size=16))
    alpha = float(learnable.weighting.alpha)  # after the last update and clip
    assert alpha != 0.3
    assert learnable.weighting.weights_by_task() == pytest.approx({"cls": alpha, "reg": 1.0 - alpha})

    uncertainty = Uncertainty(init={"cls": 0.0, "reg": math.log(4.0)})
    uncertainty.bind(["cls", "reg"])
    assert uncertainty.current_weights().tolist() == pytest.approx([0.5, 0.5 / 4.0])


GRADIENT = sorted(name for name, cls in WEIGHTINGS.items() if issubclass(cls, GradientWeighting))


@pytest.mark.parametrize("name", GRADIENT)
def test_a_gradient_strategy_with_one_task_says_so(name: str) -> None:
    weighting = create_weighting(name)
    if weighting.min_tasks > 1:
        with pytest.raises(Exception, match="needs at least"):
            weighting.bind(["only"])
        return
    said_first = rf"weighting '{name}' with a single task \('only'\): there is nothing"
    with pytest.warns(UserWarning, match=said_first) as said:
        weighting.bind(["only"])
    # The weight it names is the one it gives: computed here from each method's formula for one
    # task with G = [[4]] (‖g‖ = 2) and L = 2.
    assert f"its weight is {weighting.single_task_weight} " in str(said[0].message)
    one_task_weight = {
        "cagrad": (1 + 0.4) / (1 + 0.4**2),  # (1 + c) w over the default rescale divisor 1 + c²
        "nash_mtl": 1 / 2,  # α g·g α = 1: α = 1/‖g‖
        "db_mtl": 1 / 2,  # the gradient of log L: g / L
    }.get(name, 1.0)
    assert weighting.single_task_weight.startswith(
        {"cagrad": "1.207", "nash_mtl": "1/‖g‖", "db_mtl": "1/L"}.get(name, "1")
    )
    if isinstance(weighting, GramianWeighting):
        weighting.train()
        got = weighting.weights_from_gramian(torch.tensor([[4.0]], dtype=torch.float64), torch.tensor([2.0]))
        assert got.tolist() == pytest.approx([one_task_weight], rel=1e-6)
    else:  # GradDrop: every coordinate's sign is pure, so the one gradient passes whole
        theta = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
        loss = (theta * torch.tensor([0.5, 1.0, -2.0])).sum().reshape(1) ** 2
        result = weighting(loss, parameters=[theta])
        (grad,) = torch.autograd.grad(result.loss, theta)
        (plain,) = torch.autograd.grad(loss.sum(), theta)
        torch.testing.assert_close(grad, plain)


# -- which strategies follow the planned length ----------------------------------------------

UNITS = ("step", "epoch", "fraction")


def built(name: str) -> list[Callable[[], Weighting]]:
    """Ways to build the strategy ``name``: the registry's default, or a schedule in each unit."""
    if name == "scheduled":
        return [
            partial(Scheduled, Linear(1.0, 0.0, duration=1.0 if unit == "fraction" else 40), unit=unit)
            for unit in UNITS
        ]
    return [partial(create_weighting, name)]


def weights_after_progress(make: Callable[[], Weighting], progress: Progress) -> Tensor:
    weighting = make()
    weighting.bind(["cls", "reg"])
    weighting.train()
    weighting.set_progress(progress)
    return weighting(torch.tensor([0.7, 1.3])).weights


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_follows_planned_length_says_whether_the_plan_changes_the_weights(name: str) -> None:
    for make in built(name):
        weighting = make()
        if isinstance(weighting, GradientWeighting):
            # No progress reaches their weights: they come from the task gradients alone.
            assert type(weighting).set_progress is Weighting.set_progress
            assert not weighting.follows_planned_length
            continue
        # The same step and epoch, two planned lengths.
        short, long = (weights_after_progress(make, Progress(12, 3, total, total_epochs=20)) for total in (16, 400))
        changed = not torch.allclose(short, long)
        assert weighting.follows_planned_length == changed, (name, getattr(weighting, "unit", None), short, long)


@pytest.mark.parametrize("make", [Fixed, Learnable, partial(Scheduled, Linear(1.0, 0.0, duration=40), unit="step")])
def test_a_strategy_that_does_not_follow_the_plan_resumes_a_longer_run_quietly(
    tmp_path: Path, make: Callable[[], Weighting], caplog: pytest.LogCaptureFixture
) -> None:
    model = ToyNet(make())
    first = quiet_trainer(max_epochs=2, default_root_dir=tmp_path)
    first.fit(model, toy_loader(n=64, batch_size=16))
    checkpoint = tmp_path / "half.ckpt"
    first.save_checkpoint(checkpoint)
    second = quiet_trainer(max_epochs=4, default_root_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        second.fit(ToyNet(make()), toy_loader(n=64, batch_size=16), ckpt_path=checkpoint)
    assert second.global_step == 4 * STEPS_PER_EPOCH
    assert not [r.getMessage() for r in caplog.records if "planned" in r.getMessage()]


def test_a_resumed_step_schedule_is_checked_over_the_new_length(tmp_path: Path) -> None:
    # alpha = 1 - 1.5 s/12 for unit="step": fine for the first 8 steps, negative from step 9 on.
    def make() -> Scheduled:
        return Scheduled({"reg": Linear(1.0, -0.5, duration=12)}, unit="step")

    first = quiet_trainer(max_epochs=2, default_root_dir=tmp_path)
    first.fit(ToyNet(make()), toy_loader(n=64, batch_size=16))
    checkpoint = tmp_path / "half.ckpt"
    first.save_checkpoint(checkpoint)
    second = quiet_trainer(max_epochs=4, default_root_dir=tmp_path)
    with pytest.raises(Exception, match=r"before the first step"):
        second.fit(ToyNet(make()), toy_loader(n=64, batch_size=16), ckpt_path=checkpoint)
    assert second.global_step == 2 * STEPS_PER_EPOCH  # not one resumed step was taken


def test_one_callback_with_a_result_file_writes_each_runs_result_into_its_own_folder(tmp_path: Path) -> None:
    # The second run's result.json went to the first Trainer's folder (its recorder was kept).
    callback = LossWeightingCallback(plot=False, result_file="result.json")
    for name, weights in (("a", [0.9, 0.1]), ("b", [0.2, 0.8])):
        trainer = quiet_trainer(max_epochs=1, callbacks=[callback], default_root_dir=tmp_path / name)
        trainer.fit(ToyNet(Fixed(weights)), toy_loader(n=32, batch_size=16), toy_loader(n=16, batch_size=16, seed=1))
    for name, weights in (("a", [0.9, 0.1]), ("b", [0.2, 0.8])):
        result = json.loads((tmp_path / name / "result.json").read_text())
        assert result["status"] == "completed"
        assert result["weights"] == pytest.approx(dict(zip(["cls", "reg"], weights, strict=True)))


def test_an_epoch_schedule_invalid_only_after_the_last_epoch_ends_the_run_normally(tmp_path: Path) -> None:
    # Valid at epochs 0 and 1 (1.0, then 0.0), negative at t = 2, which never trains: the run failed
    # after its last epoch, when the end row was computed at t = max_epochs.
    callback = LossWeightingCallback(plot=False)
    model = ToyNet(Scheduled({"cls": Linear(1.0, -1.0, duration=2)}, unit="epoch"))
    trainer = quiet_trainer(max_epochs=2, callbacks=[callback], default_root_dir=tmp_path)
    trainer.fit(model, toy_loader(n=64, batch_size=16))
    assert [row[0] for row in callback.weights] == [1.0] * STEPS_PER_EPOCH + [0.0] * STEPS_PER_EPOCH
    assert callback.end_weights == pytest.approx([0.0, 1.0])  # the last step's weights stand


def test_learnable_says_it_sits_on_a_bound_in_a_run_shorter_than_check_every(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 8 optimizer steps with check_every=50: the check never ran, and alpha sat on a bound unsaid.
    model = ToyNet(Learnable(init=0.02), lr=1.0)  # a large step drives alpha onto 0 or 1 at once
    trainer = quiet_trainer(max_epochs=2, default_root_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        trainer.fit(model, toy_loader(n=64, batch_size=16))
    alpha = float(model.weighting.alpha)
    assert alpha in (0.0, 1.0)
    assert sum("learnable alpha reached a bound" in r.getMessage() for r in caplog.records) == 1


def test_an_epoch_schedule_is_checked_over_the_epochs_max_steps_plans() -> None:
    # 4 optimizer steps an epoch. max_steps=20 (max_epochs unset) plans 5 epochs; the weight turns
    # negative at epoch 3: refused before the first step (only epoch 0 was checked).
    schedule = {"cls": Linear(1.0, -0.5, duration=2)}  # 1, 0.25, -0.5 at epochs 0, 1, 2
    model = ToyNet(Scheduled(schedule, unit="epoch"))
    trainer = quiet_trainer(max_epochs=-1, max_steps=20)
    with pytest.raises(Exception, match=r"t=2\.0 .*before the first step"):
        trainer.fit(model, toy_loader(n=64, batch_size=16))
    assert trainer.global_step == 0
    # max_steps=5 ends training in epoch 1, before the weight turns negative: no refusal (it
    # checked all ten epochs of max_epochs).
    trainer = quiet_trainer(max_epochs=10, max_steps=5)
    trainer.fit(ToyNet(Scheduled(schedule, unit="epoch")), toy_loader(n=64, batch_size=16))
    assert trainer.global_step == 5


@pytest.mark.parametrize(
    ("scheduling", "steps"),
    [({0: 2}, 12), ({0: 1, 2: 2}, 6 + 6 + 3 + 3), ({0: 1, 1: 4}, 6 + 2 + 2 + 2)],
)
def test_a_fraction_schedule_plans_the_steps_of_a_gradient_accumulation_scheduler(scheduling, steps) -> None:
    # 6 batches an epoch, 4 epochs. Lightning's estimate of the steps ignores the scheduler (24
    # planned, 12 taken with {0: 2}): alpha stopped halfway, at 0.54 instead of 1/12.
    from pytorch_lightning.callbacks import GradientAccumulationScheduler

    model = ToyNet(Scheduled(Linear(1.0, 0.0, duration=1.0), unit="fraction"))
    recorder = LossWeightingCallback(plot=False)
    trainer = quiet_trainer(max_epochs=4, callbacks=[recorder, GradientAccumulationScheduler(scheduling)])
    trainer.fit(model, toy_loader(n=96, batch_size=16))
    assert trainer.global_step == steps
    assert recorder.steps == list(range(1, steps + 1))
    # The weight of the step that brings global_step to s was set at the fraction (s - 1) / steps.
    assert [w[0] for w in recorder.weights] == pytest.approx([1.0 - (s - 1) / steps for s in recorder.steps])
    assert recorder.end_weights[0] == pytest.approx(0.0)


class ProgressRecorder(Fixed):
    """Equal weights; records every progress the Callback reports (a strategy of a user's own)."""

    def __init__(self) -> None:
        super().__init__()
        self.reported: list[Progress] = []

    def set_progress(self, progress: Progress) -> None:
        self.reported.append(progress)


@pytest.mark.parametrize(("limits", "epochs"), [({"max_epochs": 2}, 2), ({"max_epochs": 5, "max_steps": 12}, 2)])
def test_every_reported_progress_has_the_planned_epochs(tmp_path: Path, limits: dict, epochs: int) -> None:
    # Only the check before the first step had total_epochs; each batch's progress said None.
    weighting = ProgressRecorder()
    trainer = quiet_trainer(default_root_dir=tmp_path, **limits)
    trainer.fit(ToyNet(weighting), toy_loader(128, batch_size=16))  # 8 batches an epoch
    steps = min(16 * epochs // 2, limits.get("max_steps", 10**9))
    assert [p.step for p in weighting.reported] == [*range(steps), steps]  # each batch, and the end
    assert {(p.total_steps, p.total_epochs) for p in weighting.reported} == {(steps, epochs)}


def test_a_callback_listed_after_the_loss_weighting_callback_reads_this_epochs_means(tmp_path: Path) -> None:
    seen: list[float | None] = []

    class Reader(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            value = trainer.callback_metrics.get("train/loss/reg_epoch")
            seen.append(None if value is None else float(value))

    model = ToyNet(Fixed([1.0, 1.0]), lr=0.0)  # no step moves the model: every batch's loss is its first one
    batches = list(toy_loader(n=48, batch_size=16))
    expected = sum(float(torch.nn.functional.mse_loss(model(b["x"])["reg"], b["reg"])) for b in batches) / 3
    trainer = quiet_trainer(max_epochs=2, callbacks=[LossWeightingCallback(plot=False), Reader()])
    trainer.fit(model, toy_loader(n=48, batch_size=16))
    assert seen == pytest.approx([expected, expected], rel=1e-6)  # epoch 0's own mean, not missing


def test_fast_dev_run_writes_no_weight_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    trainer = quiet_trainer(fast_dev_run=True, default_root_dir=tmp_path)
    trainer.fit(ToyNet(Fixed([1.0, 1.0])), toy_loader(n=32, batch_size=16))
    assert trainer.global_step == 1
    assert not list(tmp_path.rglob("loss_weights*"))


def test_a_resume_with_another_every_n_steps_records_at_the_new_one(tmp_path: Path) -> None:
    # The checkpoint's stride won: resumed with every_n_steps=4 after a run of every_n_steps=1, every
    # step was still recorded.
    first = quiet_trainer(max_steps=8, callbacks=[LossWeightingCallback(every_n_steps=1)], default_root_dir=tmp_path)
    first.fit(ToyNet(Fixed([0.3, 0.7])), toy_loader(n=64, batch_size=16))
    first.save_checkpoint(tmp_path / "every1.ckpt")
    callback = LossWeightingCallback(every_n_steps=4)
    second = quiet_trainer(max_steps=20, callbacks=[callback], default_root_dir=tmp_path)
    second.fit(ToyNet(Fixed([0.3, 0.7])), toy_loader(n=64, batch_size=16), ckpt_path=tmp_path / "every1.ckpt")
    assert callback.steps == [*range(1, 9), 12, 16, 20]


def test_a_run_that_ends_before_its_plan_says_where_the_schedule_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # max_time (or EarlyStopping) ended it at step 3 of 8: the schedule stayed near its start, silently.
    class StopAtThree(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            trainer.should_stop = trainer.should_stop or trainer.global_step >= 3

    model = ToyNet(Scheduled(Linear(1.0, 0.0, duration=1.0), unit="fraction"))
    trainer = quiet_trainer(max_epochs=2, callbacks=[StopAtThree()], default_root_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        trainer.fit(model, toy_loader(n=64, batch_size=16))
    assert trainer.global_step == 3
    warned = [r.getMessage() for r in caplog.records if "planned" in r.getMessage()]
    assert warned == [
        "LossWeightingCallback: training ended after 3 of the 8 optimizer steps planned: the schedules over the "
        "fraction of training stopped at t=0.375, short of their end"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):  # a plain sum follows no plan
        quiet_trainer(max_epochs=2, callbacks=[StopAtThree()], default_root_dir=tmp_path).fit(
            ToyNet(Fixed([0.5, 0.5])), toy_loader(n=64, batch_size=16)
        )
    assert not [r for r in caplog.records if "planned" in r.getMessage()]
