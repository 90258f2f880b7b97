"""Every bad input fails at once with a MultiLossError whose message names what is wrong."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_multiloss import MultiLossError, MultiTaskMixin, NonFiniteLossError, Task
from lightning_multiloss.schedules import Linear
from lightning_multiloss.weighting import (
    Fixed,
    Learnable,
    Scheduled,
    UPGrad,
    WeightedLoss,
    create_weighting,
    weighted_sum,
)
from tests._models import HEAD_SIZES, ToyDataset, ToyNet, quiet_trainer, toy_tasks

NAN = float("nan")
INF = float("inf")


def samples(n: int = 16) -> list[dict[str, Tensor]]:
    """The toy data as a list of per-sample dicts, so single samples can be edited or dropped."""
    data = ToyDataset(n)
    return [data[i] for i in range(n)]


def fit(model: pl.LightningModule, data: list[dict[str, Tensor]], tmp_path, batch_size: int = 8, **kw: Any):
    trainer = quiet_trainer(default_root_dir=tmp_path, **{"max_epochs": 1, **kw})
    trainer.fit(model, DataLoader(data, batch_size=batch_size))
    return trainer


class Net(MultiTaskMixin, pl.LightningModule):
    """A trunk and one head per task, built from explicit Task objects."""

    def __init__(self, tasks: list[Task], weighting: Any = None, **multitask: Any) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.heads = nn.ModuleDict({t.name: nn.Linear(8, HEAD_SIZES.get(t.name, 1)) for t in tasks})
        self.configure_multitask(tasks, weighting, **multitask)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.trunk(x)
        return {name: head(z) for name, head in self.heads.items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def mse_tasks(*names: str) -> list[Task]:
    return [Task(n, nn.MSELoss()) for n in names]


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------
def test_weights_list_of_the_wrong_length():
    with pytest.raises(MultiLossError, match=r"weighting 'fixed': weights has 3 values for 2 tasks \['cls', 'reg'\]"):
        ToyNet(Fixed([1.0, 2.0, 3.0]))
    with pytest.raises(MultiLossError, match=r"weighting 'fixed': weights has 1 values for 2 tasks"):
        ToyNet(Fixed([1.0]))


def test_weights_dict_naming_an_unknown_task():
    with pytest.raises(
        MultiLossError, match=r"weights names unknown task\(s\) \['seg'\]; the tasks are \['cls', 'reg'\]"
    ):
        ToyNet(Fixed({"cls": 1.0, "seg": 2.0}))


def test_weights_not_a_list_or_dict():
    with pytest.raises(MultiLossError, match=r"weighting 'fixed': weights must be a list .* or a dict .* got 0.5"):
        Fixed(0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "shown"), [(-1.0, "-1.0"), (NAN, "nan"), (INF, "inf"), (-INF, "-inf")])
def test_negative_nan_or_infinite_weight(value, shown):
    with pytest.raises(
        MultiLossError, match=rf"weighting 'fixed': weight for task 'reg' must be finite and >= 0, got {shown}"
    ):
        Fixed({"cls": 1.0, "reg": value})
    # A list is checked where the task names are known, so the message names the task, not '#1'.
    with pytest.raises(MultiLossError, match=rf"weight for task 'reg' must be finite and >= 0, got {shown}"):
        Fixed([1.0, value]).bind(["cls", "reg"])
    with pytest.raises(
        MultiLossError, match=rf"scheduled weight at t=0.0 for task 'reg' must be finite and >= 0, got {shown}"
    ):
        ToyNet(Scheduled([1.0, lambda t: value]))


def test_weight_that_is_not_a_number():
    with pytest.raises(MultiLossError, match=r"weight for task 'reg' must be a number, got 'high'"):
        Fixed({"reg": "high"})  # type: ignore[dict-item]


def test_alpha_outside_unit_interval():
    for init in (1.5, -0.5, NAN):
        with pytest.raises(MultiLossError, match=r"weighting 'learnable': alpha must be in \[0, 1\], got init="):
            ToyNet(Learnable(init=init))
    with pytest.raises(
        MultiLossError, match=r"alpha \(the weight of task 'cls'.*must be in \[0, 1\].*gave 1.5 at t=0.0"
    ):
        ToyNet(Scheduled(1.5))
    with pytest.raises(MultiLossError, match=r"alpha .* must be in \[0, 1\].*gave -0.25 at t=0.0"):
        ToyNet(Scheduled(Linear(-0.25, 1.0, duration=10)))


def test_alpha_leaving_the_interval_during_training(tmp_path):
    # alpha(t) = 0.6 + 0.2 t: 1.0 at step 2, 1.2 at step 3
    model = ToyNet(Scheduled(Linear(0.6, 1.6, duration=5)))
    with pytest.raises(MultiLossError, match=r"alpha \(the weight of task 'cls'.*gave 1.2.* at t=3.0"):
        fit(model, samples(32), tmp_path)


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a/b", "a b", "", "1x", "a.b", "a\n", "x:y"])
def test_task_name_that_breaks_logging_keys(name):
    with pytest.raises(MultiLossError, match=r"task name .* cannot be used in logging keys"):
        Task(name, nn.MSELoss())


def test_task_name_not_a_string_and_loss_not_callable():
    with pytest.raises(MultiLossError, match=r"task name None cannot be used in logging keys"):
        Task(None, nn.MSELoss())  # type: ignore[arg-type]
    with pytest.raises(MultiLossError, match=r"task 'reg': loss must be callable, got str"):
        Task("reg", "mse")  # type: ignore[arg-type]
    with pytest.raises(MultiLossError, match=r"task 'reg': metric name 'r/2' cannot be used in logging keys"):
        Task("reg", nn.MSELoss(), metrics={"r/2": object()})
    # A class is callable too: it failed only at the first step, on a tensor's truth value.
    with pytest.raises(
        MultiLossError,
        match=r"task 'cls': loss is the class CrossEntropyLoss; pass an instance, e.g. CrossEntropyLoss\(\)",
    ):
        Task("cls", nn.CrossEntropyLoss)  # type: ignore[arg-type]


def test_duplicate_task_names():
    with pytest.raises(MultiLossError, match=r"duplicate task names \['reg'\]"):
        Net([Task("cls", nn.CrossEntropyLoss()), Task("reg", nn.MSELoss()), Task("reg", nn.L1Loss())])


def test_configure_multitask_other_bad_arguments():
    with pytest.raises(MultiLossError, match=r"configure_multitask needs at least one task"):
        Net([])
    with pytest.raises(MultiLossError, match=r"on_nonfinite must be 'raise' or 'skip', got 'ignore'"):
        ToyNet(on_nonfinite="ignore")
    with pytest.raises(MultiLossError, match=r"weighting must be a Weighting or a registered name, got int"):
        ToyNet(42)
    with pytest.raises(
        MultiLossError,
        match=r"weighting is the class UPGrad; pass an instance, e.g. UPGrad\(\) or its registered name 'upgrad'$",
    ):
        ToyNet(UPGrad)  # type: ignore[arg-type]
    with pytest.raises(MultiLossError, match=r"weighting must be a Weighting or a registered name, got the class dict"):
        ToyNet(dict)  # type: ignore[arg-type]
    with pytest.raises(MultiLossError, match=r"unknown weighting 'fixd'; available: .*fixed"):
        ToyNet("fixd")
    shared = Fixed()
    ToyNet(shared)
    with pytest.raises(
        MultiLossError, match=r"already bound to tasks \['cls', 'reg'\], cannot bind it to \['cls', 'aux'\]"
    ):
        ToyNet(shared, tasks=("cls", "aux"))


# ---------------------------------------------------------------------------------------------
# Outputs and batches (through a real Trainer, one batch)
# ---------------------------------------------------------------------------------------------
class WrongKeys(ToyNet):
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = super().forward(x)
        return {"cls": out["cls"], "depth": out["reg"]}


class NotADict(ToyNet):
    def forward(self, x: Tensor) -> Any:
        return tuple(super().forward(x).values())


def test_forward_not_one_output_per_task(tmp_path):
    with pytest.raises(
        MultiLossError, match=r"forward must return one output per task: missing \['reg'\], extra \['depth'\]"
    ):
        fit(WrongKeys(), samples(8), tmp_path)
    with pytest.raises(MultiLossError, match=r"forward must return a dict \{task: output\}, got tuple"):
        fit(NotADict(), samples(8), tmp_path)


def test_batch_without_a_task_target(tmp_path):
    data = [{k: v for k, v in s.items() if k != "reg"} for s in samples(8)]
    with pytest.raises(
        MultiLossError, match=r"task 'reg': the batch has no target key 'reg'; it has \['aux', 'cls', 'x'\]"
    ):
        fit(ToyNet(), data, tmp_path)
    model = Net([Task("cls", nn.CrossEntropyLoss()), Task("reg", nn.MSELoss(), target="reg_target")])
    with pytest.raises(MultiLossError, match=r"task 'reg': the batch has no target key 'reg_target'"):
        fit(model, samples(8), tmp_path)


def test_batch_without_the_input_key(tmp_path):
    data = [{k: v for k, v in s.items() if k != "x"} for s in samples(8)]
    with pytest.raises(MultiLossError, match=r"the batch has no input key 'x'; it has \['aux', 'cls', 'reg'\]"):
        fit(ToyNet(), data, tmp_path)
    with pytest.raises(MultiLossError, match=r"the batch has no input key 'image'; .*input_key="):
        fit(ToyNet(input_key="image"), samples(8), tmp_path)


def test_loss_that_is_not_a_scalar(tmp_path):
    model = Net([Task("cls", nn.CrossEntropyLoss()), Task("reg", nn.MSELoss(reduction="none"))])
    with pytest.raises(MultiLossError, match=r"task 'reg': the loss must be a scalar, got \(8, 2\); use a mean or sum"):
        fit(model, samples(8), tmp_path)


# ---------------------------------------------------------------------------------------------
# Non-finite losses
# ---------------------------------------------------------------------------------------------
def poisoned(data: list[dict[str, Tensor]], rows: range, value: float) -> list[dict[str, Tensor]]:
    out = [dict(s) for s in data]
    for i in rows:
        out[i]["reg"] = torch.full_like(out[i]["reg"], value)
    return out


@pytest.mark.parametrize(("value", "shown"), [(NAN, "nan"), (INF, "inf")])
def test_nonfinite_loss_raises_naming_task_and_step(tmp_path, value, shown):
    data = poisoned(samples(24), range(16, 24), value)  # the third batch of 8
    with pytest.raises(
        NonFiniteLossError,
        match=rf"non-finite task loss\(es\) \{{'reg': {shown}\}} at train step 2, epoch 0, batch 2; "
        r"configure_multitask\(on_nonfinite='skip'\) \(multiloss-train: model.on_nonfinite=skip\) skips such steps",
    ):
        fit(ToyNet(), data, tmp_path)


@pytest.mark.parametrize("weighting", ["fixed", "dwa", "upgrad"])
def test_a_nonfinite_training_loss_is_named_before_the_validation_it_poisons(tmp_path, weighting):
    # The epoch (3 steps) ends before a logging step: the validation after it met the NaN parameters
    # first and named every task at a val step (the training steps' losses were checked later).
    data = poisoned(samples(24), range(8, 16), NAN)  # the second batch of 8
    trainer = quiet_trainer(default_root_dir=tmp_path, max_epochs=1, log_every_n_steps=50)
    with pytest.raises(NonFiniteLossError, match=r"\{'reg': nan\} at train step 1, epoch 0, batch 1; "):
        trainer.fit(ToyNet(weighting), DataLoader(data, batch_size=8), DataLoader(samples(8), batch_size=8))


def test_nonfinite_loss_is_a_multiloss_error():
    assert issubclass(NonFiniteLossError, MultiLossError)
    assert issubclass(NonFiniteLossError, FloatingPointError)


def test_nonfinite_validation_loss_raises_even_when_training_skips(tmp_path):
    model = ToyNet(on_nonfinite="skip")
    trainer = quiet_trainer(default_root_dir=tmp_path)
    loader = DataLoader(poisoned(samples(8), range(0, 8), NAN), batch_size=8)
    with pytest.raises(NonFiniteLossError, match=r"\{'reg': nan\} at val .*evaluation is not skipped") as info:
        trainer.validate(model, loader, verbose=False)
    assert "on_nonfinite" not in str(info.value)  # no advice to set what is set already


def test_a_nonfinite_evaluation_loss_says_whether_the_target_or_the_output_made_it(tmp_path):
    # A NaN target in the validation data was reported as "the model itself has diverged".
    trainer = quiet_trainer(default_root_dir=tmp_path)
    loader = DataLoader(poisoned(samples(8), range(2, 3), NAN), batch_size=8)
    with pytest.raises(NonFiniteLossError, match=r"'reg' has non-finite targets 'reg' in the batch: leave such"):
        trainer.validate(ToyNet(), loader, verbose=False)
    diverged = ToyNet()
    with torch.no_grad():
        diverged.heads["cls"].bias.fill_(NAN)
    with pytest.raises(NonFiniteLossError, match=r"'cls' has non-finite outputs: the model has diverged"):
        trainer.validate(diverged, DataLoader(samples(8), batch_size=8), verbose=False)


def test_skip_nonfinite_step_equals_never_seeing_that_batch(tmp_path, caplog):
    """With Adam, a skipped step leaves parameters and optimizer state as if the batch were absent."""
    clean = samples(32)
    with_nan = poisoned(clean, range(16, 24), NAN)  # batch 2 of 4
    without = clean[:16] + clean[24:]

    skipped = ToyNet(optimizer="adam", on_nonfinite="skip")
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        trainer_a = fit(skipped, with_nan, tmp_path / "a", max_epochs=2)
    # Each skip is said, with the task and the step (Lightning's global_step counts the skipped steps too).
    said = [r.getMessage() for r in caplog.records if "skipping the optimizer step" in r.getMessage()]
    assert said == [
        f"on_nonfinite='skip': skipping the optimizer step of non-finite task loss(es) {{'reg': nan}} at train "
        f"step {step}, epoch {epoch}, batch 2"
        for step, epoch in ((2, 0), (6, 1))
    ]
    reference = ToyNet(optimizer="adam", on_nonfinite="skip")
    trainer_b = fit(reference, without, tmp_path / "b", max_epochs=2)

    params_a = dict(skipped.named_parameters())
    params_b = dict(reference.named_parameters())
    assert params_a.keys() == params_b.keys()
    initial = dict(ToyNet(optimizer="adam").named_parameters())
    for name in params_a:
        assert torch.isfinite(params_a[name]).all(), name
        assert torch.equal(params_a[name], params_b[name]), name
        assert not torch.equal(params_a[name], initial[name]), name  # training did happen

    state_a = trainer_a.optimizers[0].state_dict()["state"]
    state_b = trainer_b.optimizers[0].state_dict()["state"]
    assert state_a.keys() == state_b.keys() and len(state_a) == len(params_a)
    for index in state_a:
        assert state_a[index].keys() == state_b[index].keys()
        for key in state_a[index]:
            assert torch.equal(state_a[index][key], state_b[index][key]), (index, key)
        assert float(state_a[index]["step"]) == 6.0  # 3 good batches x 2 epochs


class NaNWeightAtCall(Fixed):
    """A plain sum whose ``bad``-th training call (from 0) gives task ``reg`` a NaN weight."""

    def __init__(self, bad: int) -> None:
        super().__init__([1.0, 1.0])
        self.bad, self.calls = bad, 0

    def forward(self, losses: Tensor) -> WeightedLoss:
        result = super().forward(losses)
        if not self.training:
            return result
        self.calls += 1
        if self.calls - 1 != self.bad:
            return result
        weights = result.weights.clone()
        weights[1] = NAN
        return weighted_sum(weights, losses)


def test_a_nonfinite_weight_is_named_with_its_step_not_blamed_on_the_next_steps_losses(tmp_path):
    # The losses of step 1 are finite, its weight is not: the error named the task losses of step 2
    # (NaN by then, from the NaN parameters) and never the strategy.
    with pytest.raises(NonFiniteLossError) as caught:
        fit(ToyNet(NaNWeightAtCall(bad=1)), samples(32), tmp_path)
    message = str(caught.value)
    assert "weighting 'fixed' gave non-finite weight(s) {'reg': nan} at train step 1, epoch 0, batch 1" in message
    assert "from the task losses {'cls': " in message and "nan" not in message.split("from the task losses")[1]


def test_under_skip_a_nonfinite_weight_stops_training_naming_the_strategy(tmp_path):
    # Skip mode reads the losses alone (one wait a step): the steps after the NaN weight were
    # skipped one by one for the non-finite losses it caused, and the strategy was never named.
    with pytest.raises(NonFiniteLossError) as caught:
        fit(ToyNet(NaNWeightAtCall(bad=1), on_nonfinite="skip"), samples(32), tmp_path)
    assert "weighting 'fixed' gave non-finite weight(s) {'reg': nan} at train step 1, epoch 0, batch 1" in str(
        caught.value
    )


def test_a_skip_in_one_fit_does_not_skip_the_same_step_number_of_the_next(tmp_path):
    model = ToyNet(optimizer="adam", on_nonfinite="skip")
    first = fit(model, poisoned(samples(32), range(8, 16), NAN), tmp_path / "a")  # step 1 of 4 skipped
    assert {float(s["step"]) for s in first.optimizers[0].state_dict()["state"].values()} == {3.0}
    second = fit(model, samples(32), tmp_path / "b")  # a new Trainer counts from 0 again: no skip
    assert {float(s["step"]) for s in second.optimizers[0].state_dict()["state"].values()} == {4.0}


@pytest.mark.parametrize("poisoned_batch", [0, 1])
def test_skip_with_accumulation_drops_the_whole_optimizer_step(tmp_path, poisoned_batch):
    """Accumulating 2 batches: a non-finite first or last micro-batch skips that whole step.

    So the run equals one that never saw that step's two batches (no half-step from the finite one).
    """
    clean = samples(32)
    bad = range(8 * poisoned_batch, 8 * poisoned_batch + 8)  # in the first window (batches 0 and 1)
    skipped = ToyNet(optimizer="adam", on_nonfinite="skip")
    trainer_a = fit(skipped, poisoned(clean, bad, NAN), tmp_path / "a", max_epochs=2, accumulate_grad_batches=2)
    reference = ToyNet(optimizer="adam", on_nonfinite="skip")
    trainer_b = fit(reference, clean[16:], tmp_path / "b", max_epochs=2, accumulate_grad_batches=2)
    for (name, a), b in zip(skipped.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b), name
    steps = [float(s["step"]) for t in (trainer_a, trainer_b) for s in t.optimizers[0].state_dict()["state"].values()]
    assert set(steps) == {2.0}  # one good window x 2 epochs, in both runs


class TwoOptimizers(ToyNet):
    """Manual optimization as the README gives it, with one Adam for the network and one for the
    uncertainty weighting's log-variances."""

    def __init__(self) -> None:
        super().__init__("uncertainty", on_nonfinite="skip")
        self.automatic_optimization = False

    def configure_optimizers(self) -> Any:
        network = [p for name, p in self.named_parameters() if not name.startswith("weighting.")]
        return [torch.optim.Adam(network, lr=0.05), torch.optim.Adam(self.weighting.parameters(), lr=0.05)]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        optimizers = self.optimizers()
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss = super().training_step(batch, batch_idx)
        self.manual_backward(loss)
        for optimizer in optimizers:
            optimizer.step()
        return loss


def test_skip_under_manual_optimization_drops_the_step_of_every_optimizer(tmp_path):
    """Both optimizers step in the bad batch (``global_step`` counts each): neither may move."""
    clean = samples(32)
    skipped = TwoOptimizers()
    trainer_a = fit(skipped, poisoned(clean, range(16, 24), NAN), tmp_path / "a", max_epochs=2)
    reference = TwoOptimizers()
    trainer_b = fit(reference, clean[:16] + clean[24:], tmp_path / "b", max_epochs=2)
    for (name, a), b in zip(skipped.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b), name
    for trainer in (trainer_a, trainer_b):
        for optimizer in trainer.optimizers:
            assert {float(s["step"]) for s in optimizer.state_dict()["state"].values()} == {6.0}


# ---------------------------------------------------------------------------------------------
# How the module is written
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighting", ["fixed", "dwa", "uncertainty", "mgda"])
def test_a_weighting_assigned_as_an_attribute_is_refused_before_training(tmp_path, weighting):
    model = ToyNet()
    model.weighting = create_weighting(weighting)
    trainer = quiet_trainer(default_root_dir=tmp_path, max_epochs=1)
    with pytest.raises(
        MultiLossError,
        match=rf"ToyNet's weighting '{weighting}' is not bound to its tasks \['cls', 'reg'\]: .*configure_multitask",
    ):
        trainer.fit(model, DataLoader(samples(16), batch_size=8))


def test_mixin_listed_after_lightning_module():
    class Backwards(pl.LightningModule, MultiTaskMixin):
        def __init__(self) -> None:
            super().__init__()
            self.configure_multitask(mse_tasks("reg"))

    with pytest.raises(
        MultiLossError, match=r"Backwards: list MultiTaskMixin before LightningModule.*class Backwards\(MultiTaskMixin"
    ):
        Backwards()


def test_configure_multitask_before_super_init():
    class Early(MultiTaskMixin, pl.LightningModule):
        def __init__(self) -> None:
            self.configure_multitask(mse_tasks("reg"))
            super().__init__()

    with pytest.raises(MultiLossError, match=r"call super\(\).__init__\(\) before configure_multitask\(\)"):
        Early()


class TrunkOnlyOptimizer(ToyNet):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [*self.trunk.parameters(), *self.heads.parameters()]
        return torch.optim.SGD(params, lr=0.01)


def test_learnable_parameter_left_out_of_the_optimizer(tmp_path):
    model = TrunkOnlyOptimizer(Learnable())
    trainer = quiet_trainer(default_root_dir=tmp_path, max_epochs=1)
    with pytest.raises(
        MultiLossError, match=r"learnable weighting parameter\(s\) \['weighting.alpha'\] are in no optimizer"
    ):
        trainer.fit(model, DataLoader(samples(8), batch_size=8))
    assert trainer.global_step == 0  # refused at fit start, before any step
    # the same model with the default optimizer (all parameters) trains
    assert fit(ToyNet(Learnable()), samples(8), tmp_path).global_step == 1


class NoCallbacks(ToyNet):
    def configure_callbacks(self) -> Any:
        return []


@pytest.mark.parametrize("weighting", [lambda: Scheduled(Linear(1.0, 0.0, duration=4)), lambda: Learnable()])
def test_weighting_needing_the_callback_without_it(tmp_path, weighting):
    model = NoCallbacks(weighting())
    name = model.weighting.name
    with pytest.raises(MultiLossError, match=rf"weighting '{name}' needs LossWeightingCallback"):
        fit(model, samples(8), tmp_path)


def test_fixed_weighting_does_not_need_the_callback(tmp_path):
    model = NoCallbacks(Fixed([0.5, 0.5]))
    trainer = fit(model, samples(8), tmp_path)
    assert trainer.global_step == 1
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))


# ---------------------------------------------------------------------------------------------
# Negative losses, for the strategies that need losses >= 0
# ---------------------------------------------------------------------------------------------
MARKER = 1e4  # a `reg` target this large makes the shifted loss below negative


def shifted_mse(output: Tensor, target: Tensor) -> Tensor:
    """An MSE, minus 500 on the batches that carry the marker: a loss that can be negative (an NLL)."""
    marked = (target[:, 0] >= MARKER).float().mean()
    return nn.functional.mse_loss(output, target.clamp(max=10.0)) - 500.0 * marked


def nonnegative_strategies() -> list[str]:
    from lightning_multiloss.weighting import WEIGHTINGS, create_weighting

    names = sorted(n for n, c in WEIGHTINGS.items() if c.needs_nonnegative_losses)
    assert {"famo", "gls", "uncertainty", "imtl_l", "dwa", "gradnorm"} <= set(names)  # read from the registry
    assert all(create_weighting(n).needs_nonnegative_losses for n in names)
    return names


@pytest.mark.parametrize("name", nonnegative_strategies())
@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_a_negative_loss_stops_training_naming_task_step_and_strategy(tmp_path, name, on_nonfinite):
    data = poisoned(samples(24), range(16, 24), MARKER)  # the third batch of 8: reg's loss < 0
    model = Net([Task("cls", nn.CrossEntropyLoss()), Task("reg", shifted_mse)], name, on_nonfinite=on_nonfinite)
    expected = r"negative task loss\(es\) {'reg': -\d+\.\d+} at train step 2, epoch 0, batch 2: "
    with pytest.raises(MultiLossError, match=expected) as info:
        fit(model, data, tmp_path)
    assert f"weighting {name!r} needs losses >= 0" in str(info.value)
    assert not isinstance(info.value, NonFiniteLossError)


def test_a_negative_loss_trains_with_a_strategy_that_takes_it(tmp_path):
    data = poisoned(samples(24), range(16, 24), MARKER)
    model = Net([Task("cls", nn.CrossEntropyLoss()), Task("reg", shifted_mse)], "fixed")
    trainer = fit(model, data, tmp_path)
    assert trainer.global_step == 3


def test_famo_value_stays_finite_with_a_negative_loss():
    from lightning_multiloss.weighting import FAMO

    famo = FAMO()
    famo.bind(["a", "b"])
    out = famo(torch.tensor([-0.3, 1.9]))
    # The negative task is out of the step (as a loss of 0 would be): the value is Σ (zᵢ/c)·log Dᵢ over
    # b alone, with c = z_b/D_b, so D_b·log D_b, D_b = 1.9 + ε (it was NaN: 0·log of a negative).
    d = torch.tensor(1.9) + 1e-8
    torch.testing.assert_close(out.loss, d * torch.log(d))
    torch.testing.assert_close(out.weights, torch.tensor([0.0, 1.0]))


def test_manual_optimization_without_a_training_step_of_ones_own(tmp_path):
    # Lightning ignores a returned loss under manual optimization: the mixin's step trained nothing, silently.
    class Manual(ToyNet):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    model = Manual()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MultiLossError, match=r"automatic_optimization is False, .*self\.manual_backward\(loss\)"):
        fit(model, samples(16), tmp_path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    class ManualWithItsStep(Manual):  # as the message says: trains
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            return loss

    model = ManualWithItsStep()
    fit(model, samples(16), tmp_path)
    assert not torch.equal(model.trunk[0].weight.detach(), before["trunk.0.weight"])


def test_a_loss_of_minus_infinity_is_skipped_as_non_finite_not_refused_as_negative(tmp_path, caplog):
    def minus_infinity_when_marked(output: Tensor, target: Tensor) -> Tensor:
        marked = (target[:, 0] >= MARKER).any()
        return nn.functional.mse_loss(output, target.clamp(max=10.0)) - torch.where(marked, INF, 0.0)

    data = poisoned(samples(24), range(16, 24), MARKER)
    model = Net(
        [Task("cls", nn.CrossEntropyLoss()), Task("reg", minus_infinity_when_marked)], "famo", on_nonfinite="skip"
    )
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        trainer = fit(model, data, tmp_path)
    assert trainer.global_step == 3
    assert any(
        "skipping the optimizer step of non-finite task loss(es) {'reg': -inf}" in r.getMessage()
        for r in caplog.records
    )


class BaseWithEarlyStopping(pl.LightningModule):
    """A project's base module that returns one callback from configure_callbacks (Lightning allows it)."""

    def configure_callbacks(self) -> Any:
        return pl.callbacks.EarlyStopping(monitor="val/loss", patience=5)


class ToyOnABase(MultiTaskMixin):
    """ToyNet's layers and tasks, on whatever LightningModule base follows in the class's bases."""

    def __init__(self) -> None:
        super().__init__()
        self.toy = ToyNet()  # its layers; the tasks are declared here
        self.configure_multitask(toy_tasks(), "dwa")

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.toy.trunk(x)
        return {name: head(z) for name, head in self.toy.heads.items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class OnTheBase(ToyOnABase, BaseWithEarlyStopping):
    pass


def test_a_single_callback_from_configure_callbacks_is_kept_beside_the_mixins(tmp_path):
    trainer = quiet_trainer(default_root_dir=tmp_path, max_epochs=1)
    trainer.fit(OnTheBase(), DataLoader(samples(16), batch_size=8), DataLoader(samples(8), batch_size=8))
    kinds = [type(c).__name__ for c in trainer.callbacks]
    assert "EarlyStopping" in kinds and "LossWeightingCallback" in kinds, kinds


class BaseWithoutCallbacks(pl.LightningModule):
    def configure_callbacks(self) -> Any:
        return None  # Lightning takes nothing too


class OnABaseWithout(ToyOnABase, BaseWithoutCallbacks):
    pass


def test_no_callbacks_from_a_base_class_leaves_the_mixins(tmp_path):
    trainer = quiet_trainer(default_root_dir=tmp_path, max_epochs=1)
    trainer.fit(OnABaseWithout(), DataLoader(samples(16), batch_size=8))
    assert "LossWeightingCallback" in [type(c).__name__ for c in trainer.callbacks]


class DetachedReg(ToyNet):
    """Its ``reg`` loss is computed from a detached output: it trains nothing."""

    def task_losses(self, outputs: Any, batch: Any) -> Tensor:
        return super().task_losses({**outputs, "reg": outputs["reg"].detach()}, batch)


def test_a_task_loss_without_a_gradient_is_said_once_naming_the_task(tmp_path, caplog):
    # It trained silently: the task's head never moved.
    model = DetachedReg()
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        fit(model, samples(32), tmp_path)
        trainer = quiet_trainer(default_root_dir=tmp_path)
        trainer.validate(model, DataLoader(samples(8), batch_size=8), verbose=False)
    said = [r.getMessage() for r in caplog.records if "has no gradient" in r.getMessage()]
    assert said == [
        "task 'reg': its training loss has no gradient (detached, computed without autograd, or from frozen "
        "parameters only): it trains nothing"
    ]


def test_a_nan_ignore_value_for_an_integer_target_is_refused():
    # It never matched (an integer holds no NaN): the task trained on every sample, silently.
    task = Task("cls", nn.CrossEntropyLoss(), ignore_value=float("nan"))
    with pytest.raises(MultiLossError, match=r"task 'cls': ignore_value=nan never matches the int64 target 'cls'"):
        task.check_target(torch.randn(4, 3), torch.tensor([0, 1, 2, 1]))
    Task("reg", nn.MSELoss(), ignore_value=float("nan")).check_target(torch.randn(4, 2), torch.randn(4, 2))
