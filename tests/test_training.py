"""End-to-end Trainer runs: logged keys and values, prediction, trajectory files, optimizer-step
counting under gradient accumulation, clipping, and tasks with missing labels.

Every expected value is computed here by hand (from the formula or a plain-PyTorch replay),
never read back from the code under test.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import itertools
import logging
import math
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_multiloss import LossWeightingCallback, MultiLossError, MultiTaskMixin, Task
from lightning_multiloss.schedules import Linear
from lightning_multiloss.weighting import Fixed, Learnable, Scheduled, Weighting, create_weighting
from lightning_multiloss.weighting.learnable import project_to_simplex
from tests._models import ToyDataset, ToyNet, assert_params_close, quiet_trainer, toy_loader

TASKS = ("cls", "reg")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def callback_of(trainer: pl.Trainer) -> LossWeightingCallback:
    found = [cb for cb in trainer.callbacks if isinstance(cb, LossWeightingCallback)]
    assert len(found) == 1, f"expected one LossWeightingCallback, got {found}"
    return found[0]


def assert_rows_close(got: Any, want: Any, atol: float = 1e-6) -> None:
    """Nested lists of numbers equal within ``atol``."""
    torch.testing.assert_close(
        torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64), rtol=0, atol=atol
    )


def rows_with(rows: list[dict[str, str]], key: str) -> list[dict[str, str]]:
    return [r for r in rows if r.get(key, "") != ""]


class BatchRecorder(pl.Callback):
    """Records, after every training batch, the weights that batch used."""

    def __init__(self) -> None:
        self.weights: list[list[float]] = []
        self.global_steps: list[int] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.weights.append(pl_module.weighting.last_weights.tolist())
        self.global_steps.append(trainer.global_step)


# -- end to end -------------------------------------------------------------------------------


def _expected_train_weights(kind: str, step: int, logged: dict[str, str]) -> list[float]:
    """The weights a training batch taken after ``step`` optimizer steps must use, by hand."""
    if kind == "fixed":
        return [0.5, 0.3]
    if kind == "scheduled":  # Linear(1 -> 0 over 6 steps)
        alpha = 1.0 - min(step, 6) / 6
        return [alpha, 1.0 - alpha]
    # learnable: a convex pair in [0, 1] (its values are checked against a replay elsewhere)
    alpha = float(logged["train/weight/cls"])
    assert 0.0 <= alpha <= 1.0
    return [alpha, 1.0 - alpha]


def _make(kind: str) -> Weighting:
    if kind == "fixed":
        return Fixed([0.5, 0.3])
    if kind == "scheduled":
        return Scheduled(Linear(1.0, 0.0, duration=6))
    return Learnable()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fixed", "scheduled", "learnable"])
def test_fit_validate_test_predict(tmp_path: Path, kind: str) -> None:
    model = ToyNet(_make(kind), metrics=True, lr=0.1)
    logger = CSVLogger(tmp_path, name="run")
    trainer = quiet_trainer(logger=logger, max_epochs=2, log_every_n_steps=1)
    val_loader = toy_loader(n=32, batch_size=16, seed=1)
    trainer.fit(model, toy_loader(n=64, batch_size=16), val_loader)
    trainer.validate(model, val_loader, verbose=False)
    trainer.test(model, toy_loader(n=32, batch_size=16, seed=2), verbose=False)
    log_dir = Path(trainer.log_dir)
    logger.save()
    rows = read_csv(log_dir / "metrics.csv")

    # The logged keys, exactly.
    expected = {"epoch", "step"}
    for stage in ("train", "val", "test"):
        expected.add(f"{stage}/loss")
        for t in TASKS:
            expected |= {f"{stage}/loss/{t}", f"{stage}/weight/{t}"}
    expected |= {f"train/loss/{t}_epoch" for t in TASKS}  # Keras' per-epoch history
    for stage in ("val", "test"):
        expected |= {f"{stage}/acc/cls", f"{stage}/mse/reg"}
    assert set(rows[0]) == expected

    # Every optimizer step logged; the combined loss is the weighted sum of the logged task losses.
    train_rows = rows_with(rows, "train/loss")
    assert [int(r["step"]) for r in train_rows] == list(range(8))
    for r in train_rows:
        w = [float(r[f"train/weight/{t}"]) for t in TASKS]
        losses = [float(r[f"train/loss/{t}"]) for t in TASKS]
        assert w == pytest.approx(_expected_train_weights(kind, int(r["step"]), r), abs=1e-6)
        assert float(r["train/loss"]) == pytest.approx(w[0] * losses[0] + w[1] * losses[1], rel=1e-6)

    # Each epoch's mean training loss per task is the mean of that epoch's logged step values.
    epoch_rows = rows_with(rows, f"train/loss/{TASKS[0]}_epoch")
    assert [int(r["epoch"]) for r in epoch_rows] == [0, 1]
    for r in epoch_rows:
        steps = [x for x in train_rows if int(x["epoch"]) == int(r["epoch"])]
        for t in TASKS:
            mean = sum(float(x[f"train/loss/{t}"]) for x in steps) / len(steps)
            assert float(r[f"train/loss/{t}_epoch"]) == pytest.approx(mean, rel=1e-6)

    # Validation / test: the weights in force at the end of training, the same weighted sum.
    final_alpha = float(model.weighting.alpha.detach()) if kind == "learnable" else None
    for stage in ("val", "test"):
        stage_rows = rows_with(rows, f"{stage}/loss")
        assert stage_rows, f"no {stage} row"
        for r in stage_rows:
            w = [float(r[f"{stage}/weight/{t}"]) for t in TASKS]
            losses = [float(r[f"{stage}/loss/{t}"]) for t in TASKS]
            assert float(r[f"{stage}/loss"]) == pytest.approx(w[0] * losses[0] + w[1] * losses[1], rel=1e-6)
            assert 0.0 <= float(r[f"{stage}/acc/cls"]) <= 1.0
            # MSE metric over the whole set == the (equal-size batch) mean of the per-batch MSE loss
            assert float(r[f"{stage}/mse/reg"]) == pytest.approx(float(r[f"{stage}/loss/reg"]), rel=1e-5)
        last = stage_rows[-1]
        w_last = [float(last[f"{stage}/weight/{t}"]) for t in TASKS]
        if kind == "fixed":
            assert w_last == pytest.approx([0.5, 0.3])
        elif kind == "scheduled":  # 8 steps done: the schedule sits at its end
            assert w_last == pytest.approx([0.0, 1.0])
        else:
            assert w_last == pytest.approx([final_alpha, 1.0 - final_alpha], abs=1e-6)

    # The trajectory files, in the logger folder; the rows are the weights each step used,
    # i.e. what was logged for the batch taken after step - 1 optimizer steps.
    assert (log_dir / "loss_weights.png").stat().st_size > 0
    traj = read_csv(log_dir / "loss_weights.csv")
    assert list(traj[0]) == ["step", "epoch", *TASKS]
    # One row per optimizer step, then one numbered one past the last: the weights in force at
    # the end (for learnable, alpha after its last update: the value the replay ends with).
    assert [int(r["step"]) for r in traj] == list(range(1, 10))
    assert [int(r["epoch"]) for r in traj] == [0] * 4 + [1] * 4 + [2]  # the end: after 2 epochs
    end = [float(traj[-1][t]) for t in TASKS]
    if kind == "learnable":
        assert end == pytest.approx([final_alpha, 1.0 - final_alpha], abs=1e-6)
    else:
        assert end == pytest.approx(_expected_train_weights(kind, 8, traj[-1]), abs=1e-6)
    logged_by_step = {int(r["step"]): r for r in train_rows}
    for r in traj[:-1]:
        logged = logged_by_step[int(r["step"]) - 1]
        for t in TASKS:
            assert float(r[t]) == pytest.approx(float(logged[f"train/weight/{t}"]), abs=1e-7)
    cb = callback_of(trainer)
    assert cb.steps == [int(r["step"]) for r in traj[:-1]]
    assert_rows_close(cb.weights, [[float(r[t]) for t in TASKS] for r in traj[:-1]], atol=1e-7)
    assert cb.end_weights == pytest.approx(end, abs=1e-7)

    # Prediction needs no targets: dict batches with only the input, bare tensors, 1-tuples.
    x = torch.randn(12, 8, generator=torch.Generator().manual_seed(5))
    model.eval()
    with torch.no_grad():
        z = model.trunk(x)
        direct = {t: model.heads[t](z) for t in TASKS}
    for loader in (
        DataLoader([{"x": row} for row in x], batch_size=5),
        DataLoader(x, batch_size=5),
        DataLoader(TensorDataset(x), batch_size=5),
    ):
        predictions = trainer.predict(model, loader)
        assert predictions is not None and len(predictions) == 3
        start = 0
        for out in predictions:
            assert isinstance(out, dict) and set(out) == set(TASKS)
            n = out["cls"].shape[0]
            assert out["cls"].shape == (n, 3) and out["reg"].shape == (n, 2)
            for t in TASKS:
                torch.testing.assert_close(out[t], direct[t][start : start + n])
            start += n
        assert start == 12


# -- the trajectory record --------------------------------------------------------------------


@pytest.mark.slow
def test_trajectory_every_n_steps_and_bounded(tmp_path: Path) -> None:
    # 10 optimizer steps; log_every_n_steps does not drive the record, every_n_steps does.
    every3 = LossWeightingCallback(every_n_steps=3)
    bounded = LossWeightingCallback(every_n_steps=1, max_points=4, filename="bounded")
    default = quiet_trainer(max_steps=10, log_every_n_steps=4, default_root_dir=tmp_path / "a")
    model = ToyNet(Scheduled(Linear(1.0, 0.0, duration=10)))
    default.fit(model, toy_loader(n=128, batch_size=16))
    assert callback_of(default).steps == list(range(1, 11))  # every step by default
    assert_rows_close(callback_of(default).weights, [[1 - s / 10, s / 10] for s in range(10)])

    for cb, expected in ((every3, [1, 3, 6, 9]), (bounded, [1, 4, 8])):
        # bounded, by hand: [1,2,3,4] + 5 -> 5 points > 4: stride 2 -> [1,2,4]; +6 -> [1,2,4,6];
        # +8 -> 5 points: stride 4 -> [1,4,8]; 10 % 4 != 0.
        trainer = quiet_trainer(max_steps=10, callbacks=[cb], default_root_dir=tmp_path / cb.filename)
        trainer.fit(ToyNet(Scheduled(Linear(1.0, 0.0, duration=10))), toy_loader(n=128, batch_size=16))
        assert callback_of(trainer) is cb
        assert cb.steps == expected
        assert cb.epochs == [(s - 1) // 8 for s in expected]  # 8 batches per epoch
        assert_rows_close(cb.weights, [[1 - (s - 1) / 10, (s - 1) / 10] for s in expected])
        written = read_csv(tmp_path / cb.filename / f"{cb.filename}.csv")
        assert [int(r["step"]) for r in written] == [*expected, 11]  # and the weights in force at the end


# -- schedules count optimizer steps ----------------------------------------------------------

# 64 samples in batches of 8: 8 batches, 2 optimizer steps per epoch with accumulation 4.
ACCUM = 4
BATCHES_PER_EPOCH = 8


def _accumulated_run(weighting: Weighting, tmp_path: Path, **trainer_kw: Any) -> tuple[BatchRecorder, list[dict]]:
    recorder = BatchRecorder()
    trainer = quiet_trainer(
        accumulate_grad_batches=ACCUM,
        callbacks=[recorder],
        logger=CSVLogger(tmp_path, name="acc"),
        log_every_n_steps=1,
        **trainer_kw,
    )
    trainer.fit(ToyNet(weighting), toy_loader(n=64, batch_size=8))
    trainer.logger.save()  # type: ignore[union-attr]
    return recorder, rows_with(read_csv(Path(trainer.log_dir) / "metrics.csv"), "train/loss")  # type: ignore[arg-type]


@pytest.mark.slow
def test_schedule_counts_optimizer_steps_with_accumulation(tmp_path: Path) -> None:
    recorder, rows = _accumulated_run(Scheduled(Linear(1.0, 0.0, duration=6), unit="step"), tmp_path, max_epochs=3)
    assert len(recorder.weights) == 24
    # batch b (0-based, over all epochs) runs after b // 4 optimizer steps
    alpha = [1.0 - (b // ACCUM) / 6 for b in range(24)]
    assert [w[0] for w in recorder.weights] == pytest.approx(alpha, abs=1e-6)
    assert [w[1] for w in recorder.weights] == pytest.approx([1 - a for a in alpha], abs=1e-6)
    assert recorder.global_steps[-1] == 6
    # the logger gets one value per optimizer step (the last batch of each window), step k: 1 - k/6
    assert [int(r["step"]) for r in rows] == list(range(6))
    assert [float(r["train/weight/cls"]) for r in rows] == pytest.approx([1 - k / 6 for k in range(6)], abs=1e-6)


@pytest.mark.slow
def test_schedule_by_epoch_changes_only_at_epoch_boundaries(tmp_path: Path) -> None:
    recorder, _ = _accumulated_run(Scheduled(Linear(1.0, 0.0, duration=4), unit="epoch"), tmp_path, max_epochs=3)
    alpha = [1.0 - (b // BATCHES_PER_EPOCH) / 4 for b in range(3 * BATCHES_PER_EPOCH)]
    assert [w[0] for w in recorder.weights] == pytest.approx(alpha, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("limits", "planned"), [({"max_steps": 5}, 5), ({"max_epochs": 2}, 4)])
def test_schedule_by_fraction_uses_planned_optimizer_steps(tmp_path: Path, limits: dict, planned: int) -> None:
    recorder, _ = _accumulated_run(Scheduled(Linear(1.0, 0.0, duration=1.0), unit="fraction"), tmp_path, **limits)
    assert len(recorder.weights) == planned * ACCUM
    alpha = [1.0 - (b // ACCUM) / planned for b in range(planned * ACCUM)]
    assert [w[0] for w in recorder.weights] == pytest.approx(alpha, abs=1e-6)


class TwoOptimizerNet(ToyNet):
    """Manual optimization with one optimizer for the trunk and one for the heads, both stepped
    each batch (Lightning's ``global_step`` counts each); records the weights of each batch."""

    def __init__(self, weighting: Weighting) -> None:
        super().__init__(weighting)
        self.automatic_optimization = False
        self.alphas: list[float] = []

    def configure_optimizers(self) -> Any:
        return [torch.optim.SGD(self.trunk.parameters(), lr=0.01), torch.optim.SGD(self.heads.parameters(), lr=0.01)]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        optimizers = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        self.alphas.append(float(self.weighting.last_weights[0]))
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(loss)
        for optimizer in optimizers:
            optimizer.step()
        return loss


@pytest.mark.parametrize(("limits", "batches"), [({"max_epochs": 2}, 8), ({"max_epochs": 3, "max_steps": 10}, 5)])
def test_schedule_by_fraction_under_manual_optimization_with_two_optimizers(
    tmp_path: Path, limits: dict, batches: int
) -> None:
    # t is the fraction of the planned optimizer steps: 2 a batch here. The plan counted batches,
    # so t reached 1 half-way (and a schedule defined on [0, 1] failed past it).
    model = TwoOptimizerNet(Scheduled(lambda t: 1.0 - t, unit="fraction"))
    trainer = quiet_trainer(default_root_dir=tmp_path, **limits)
    trainer.fit(model, toy_loader(64, batch_size=16))  # 4 batches an epoch
    steps = 2 * batches  # max_steps=10 (global_step) ends it after 5 batches
    assert trainer.global_step == steps and len(model.alphas) == batches
    assert model.alphas == pytest.approx([1.0 - 2 * b / steps for b in range(batches)], abs=1e-6)


# -- accumulation and clipping: a plain-PyTorch replay ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fixed", "learnable"])
def test_accumulation_and_clipping_match_plain_pytorch(tmp_path: Path, kind: str) -> None:
    lr, clip = 0.1, 0.05
    weighting = Fixed([0.5, 0.3]) if kind == "fixed" else Learnable(init=0.4)
    model = ToyNet(weighting, lr=lr)
    trunk, heads = copy.deepcopy(model.trunk), copy.deepcopy(model.heads)
    alpha = torch.tensor(0.4, requires_grad=True)
    params = [*trunk.parameters(), *heads.parameters()] + ([alpha] if kind == "learnable" else [])

    trainer = quiet_trainer(max_steps=1, accumulate_grad_batches=2, gradient_clip_val=clip, default_root_dir=tmp_path)
    trainer.fit(model, toy_loader(n=16, batch_size=8))
    assert trainer.global_step == 1

    # The replay: two half-batches, loss / 2 each, clip the global norm, one SGD step, clip alpha.
    optimizer = torch.optim.SGD(params, lr=lr)
    for batch in toy_loader(n=16, batch_size=8):
        z = trunk(batch["x"])
        l_cls = F.cross_entropy(heads["cls"](z), batch["cls"])
        l_reg = F.mse_loss(heads["reg"](z), batch["reg"])
        loss = 0.5 * l_cls + 0.3 * l_reg if kind == "fixed" else alpha * l_cls + (1 - alpha) * l_reg
        (loss / 2).backward()
    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    assert norm > 10 * clip, "the test must exercise the clipping"
    optimizer.step()
    with torch.no_grad():
        alpha.clamp_(0.0, 1.0)

    got = [*model.trunk.named_parameters(), *model.heads.named_parameters()]
    if kind == "learnable":
        got.append(("weighting.alpha", model.weighting.alpha))
    assert len(got) == len(params)
    for (name, value), want in zip(got, params, strict=True):
        torch.testing.assert_close(value.detach(), want.detach(), rtol=0, atol=1e-6, msg=f"{name} differs")


# -- tasks with missing labels ------------------------------------------------------------------


class MaskedNet(MultiTaskMixin, pl.LightningModule):
    """``cls`` labels missing where the target is -100, ``reg`` where ``reg_mask`` is false,
    ``aux`` where its target is NaN."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.heads = nn.ModuleDict({"cls": nn.Linear(16, 3), "reg": nn.Linear(16, 2), "aux": nn.Linear(16, 1)})
        self.configure_multitask(
            [
                Task("cls", nn.CrossEntropyLoss(), ignore_value=-100),
                Task("reg", nn.MSELoss(), mask="reg_mask"),
                Task("aux", nn.MSELoss(), ignore_value=float("nan")),
            ],
            Fixed([1.0, 0.5, 0.25]),
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.trunk(x)
        return {name: head(z) for name, head in self.heads.items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _masked_batches() -> list[dict[str, Tensor]]:
    data = ToyDataset(16, seed=3)
    labelled = torch.tensor([1, 0, 1, 1, 0, 1, 0, 1], dtype=torch.bool)
    first = {
        "x": data.x[:8],
        "cls": torch.where(labelled, data.cls[:8], torch.tensor(-100)),
        "reg": data.reg[:8],
        "reg_mask": ~labelled | (torch.arange(8) == 0),  # a different subset
        "aux": torch.where(labelled[:, None].roll(1, 0), data.aux[:8], torch.tensor(float("nan"))),
    }
    second = {  # no sample labelled for any task
        "x": data.x[8:],
        "cls": torch.full((8,), -100),
        "reg": data.reg[8:],
        "reg_mask": torch.zeros(8, dtype=torch.bool),
        "aux": torch.full((8, 1), float("nan")),
    }
    return [first, second]


def _hand_losses(model: MaskedNet, batch: dict[str, Tensor]) -> list[float]:
    with torch.no_grad():
        z = model.trunk(batch["x"])
        keep = batch["cls"] != -100
        logp = torch.log_softmax(model.heads["cls"](z)[keep], dim=1)
        l_cls = -logp[torch.arange(int(keep.sum())), batch["cls"][keep]].mean()
        m = batch["reg_mask"]
        l_reg = ((model.heads["reg"](z)[m] - batch["reg"][m]) ** 2).mean()
        a = ~torch.isnan(batch["aux"][:, 0])
        l_aux = ((model.heads["aux"](z)[a] - batch["aux"][a]) ** 2).mean()
    return [float(l_cls), float(l_reg), float(l_aux)]


def test_masked_losses_count_only_labelled_samples() -> None:
    model = MaskedNet()
    first, second = _masked_batches()
    losses = model.task_losses(model(first["x"]), first)
    assert losses.tolist() == pytest.approx(_hand_losses(model, first), rel=1e-6)

    # No labelled sample: exactly zero, yet in the graph; the heads get zero (not missing) gradients.
    losses = model.task_losses(model(second["x"]), second)
    assert losses.tolist() == [0.0, 0.0, 0.0]
    assert losses.requires_grad
    losses.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} left out of the graph"
        assert torch.count_nonzero(p.grad) == 0


@pytest.mark.parametrize("shape", [(5,), (5, 1)], ids=["(B,)", "(B, 1)"])
def test_a_mask_of_one_entry_per_sample_selects_those_samples(shape: tuple[int, ...]) -> None:
    # (B, 1): a collated list of one-element tensors; float 0/1 as well as booleans.
    target = torch.arange(10.0).reshape(5, 2)
    output = target + 1.0
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0]).reshape(shape)
    kept_output, kept_target = Task("reg", nn.MSELoss(), mask="m").select(output, target, {"m": mask})
    torch.testing.assert_close(kept_target, target[[0, 2, 3]])
    torch.testing.assert_close(kept_output, output[[0, 2, 3]])


@pytest.mark.parametrize(
    ("mask", "refused"),
    [
        (torch.tensor([0.3, 0.0, 1.0, 1.0, 0.0]), "must be boolean, or hold 0 and 1 only"),  # sample weights
        (torch.tensor([float("nan"), 0.0, 1.0, 1.0, 0.0]), "must be boolean, or hold 0 and 1 only"),
        (["yes", "no", "yes", "yes", "no"], "must be a boolean tensor with one entry per sample, got list"),
    ],
    ids=["weights", "nan", "strings"],
)
def test_a_mask_that_does_not_select_is_refused_naming_the_task_and_key(mask: Any, refused: str) -> None:
    # A 0.3 or a NaN counted as labelled (a mask taken for sample weights trained on all of them);
    # strings raised torch's "too many dimensions 'str'", naming neither. Through the mixin's task
    # losses, which read a float mask on the task's first batch.
    model = ToyNet(masks={"reg": "m"})
    batch = {**next(iter(toy_loader(n=5, batch_size=5))), "m": mask}
    with pytest.raises(MultiLossError, match=f"task 'reg': the mask 'm' {refused}"):
        model.task_losses(model(batch["x"]), batch)


def _labelled_batch() -> dict[str, Tensor]:
    """Eight samples with every label."""
    data = ToyDataset(24, seed=3)
    rows = slice(16, 24)
    return {
        "x": data.x[rows],
        "cls": data.cls[rows],
        "reg": data.reg[rows],
        "reg_mask": torch.ones(8, dtype=torch.bool),
        "aux": data.aux[rows],
    }


def test_masked_evaluation_means_are_over_the_labelled_samples(tmp_path: Path) -> None:
    # Batches of 8: some labels, none, all. Each task's val/test loss is the mean over its labelled
    # samples (a batch's loss weighted by how many it has); the total stays a mean over batches.
    model = MaskedNet()
    first, second, third = *_masked_batches(), _labelled_batch()
    some, full = _hand_losses(model, first), _hand_losses(model, third)
    labelled = [int((first["cls"] != -100).sum()), int(first["reg_mask"].sum()), int((~first["aux"].isnan()).sum())]
    assert min(labelled) > 0 and max(labelled) < 8  # the weighting by counts matters
    trainer = quiet_trainer(default_root_dir=tmp_path)
    for stage, run in (("val", trainer.validate), ("test", trainer.test)):
        (logged,) = run(model, DataLoader([first, second, third], batch_size=None), verbose=False)
        for task, a, b, n in zip(("cls", "reg", "aux"), some, full, labelled, strict=True):
            assert logged[f"{stage}/loss/{task}"] == pytest.approx((n * a + 8 * b) / (n + 8), rel=1e-6), task
        totals = [sum(w * v for w, v in zip([1.0, 0.5, 0.25], losses, strict=True)) for losses in (some, full)]
        assert logged[f"{stage}/loss"] == pytest.approx((totals[0] + 0.0 + totals[1]) / 3, rel=1e-6)


def test_bf16_true_evaluation_means_and_best_values_sum_in_float32(tmp_path: Path) -> None:
    # precision="bf16-true" converts the module with .to(dtype), the metrics' states included: a
    # bfloat16 running mean of 256 batches of losses near 1 lost most of its weight (val/loss/reg
    # came out about half the true mean), and the best-so-far values were rounded to bfloat16.
    model = ToyNet(best_metrics=True, lr=0.0)  # the fit's one step leaves the parameters as they are
    data = ToyDataset(2048, seed=3)
    loader = DataLoader(data, batch_size=8)
    trainer = quiet_trainer(default_root_dir=tmp_path, precision="bf16-true", max_epochs=1, limit_train_batches=1)
    trainer.fit(model, loader, loader)  # best values are a fit's validations'
    got = {key: float(value) for key, value in trainer.callback_metrics.items()}

    sums = {"cls": 0.0, "reg": 0.0}  # the bfloat16 model's batch losses, summed on the host in float64
    with torch.no_grad():
        for batch in loader:
            outputs = model(batch["x"].to(torch.bfloat16))
            sums["cls"] += float(F.cross_entropy(outputs["cls"], batch["cls"])) * len(batch["x"])
            sums["reg"] += float(F.mse_loss(outputs["reg"], batch["reg"].to(torch.bfloat16))) * len(batch["x"])
    means = {task: total / len(data) for task, total in sums.items()}
    for task, mean in means.items():
        assert got[f"val/loss/{task}"] == pytest.approx(mean, rel=1e-3), task
    assert got["val/loss"] == pytest.approx(means["cls"] + means["reg"], rel=1e-3)  # weights 1
    assert got["val/loss_best"] == got["val/loss"]  # the first epoch's value, not rounded to bfloat16
    assert model.state_dict()["_mt_best.values"].dtype == torch.float32


class StopAfterBatch(pl.Callback):
    """Stops the run after batch ``last`` (as Timer or a rule of one's own would); records each
    batch's task losses, computed by hand before the step."""

    def __init__(self, last: int) -> None:
        self.last = last
        self.losses: list[list[float]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            outputs = pl_module(batch["x"])
        cls, reg = F.cross_entropy(outputs["cls"], batch["cls"]), F.mse_loss(outputs["reg"], batch["reg"])
        self.losses.append([float(cls), float(reg)])

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.last + 1:
            trainer.should_stop = True


def test_a_run_stopped_between_logging_steps_logs_the_last_steps_task_values(tmp_path: Path) -> None:
    # Lightning writes the step at which a callback stops the run; the task losses and weights,
    # logged on the logging steps alone, showed those of the logging step before.
    stop = StopAfterBatch(last=4)
    model = ToyNet(Fixed([0.5, 2.0]))
    trainer = quiet_trainer(max_epochs=1, logger=CSVLogger(tmp_path, name="m"), log_every_n_steps=3, callbacks=[stop])
    trainer.fit(model, toy_loader(128, batch_size=16))
    assert trainer.global_step == 5
    trainer.logger.save()  # type: ignore[union-attr]
    rows = rows_with(read_csv(Path(trainer.log_dir) / "metrics.csv"), "train/loss/cls")  # type: ignore[arg-type]
    assert [int(r["step"]) for r in rows] == [2, 4]  # the third batch (log_every_n_steps), and the stop
    for row, batch in zip(rows, (2, 4), strict=True):
        cls, reg = stop.losses[batch]
        assert [float(row["train/loss/cls"]), float(row["train/loss/reg"])] == pytest.approx([cls, reg], rel=1e-6)
        assert float(row["train/loss"]) == pytest.approx(0.5 * cls + 2.0 * reg, rel=1e-6)
        assert [float(row["train/weight/cls"]), float(row["train/weight/reg"])] == [0.5, 2.0]


@pytest.mark.slow
def test_masked_training_run(tmp_path: Path) -> None:
    model = MaskedNet()
    expected_first = _hand_losses(model, _masked_batches()[0])
    trainer = quiet_trainer(max_steps=2, logger=CSVLogger(tmp_path, name="m"), log_every_n_steps=1)
    trainer.fit(model, DataLoader(_masked_batches(), batch_size=None))
    assert trainer.global_step == 2
    trainer.logger.save()  # type: ignore[union-attr]
    rows = rows_with(read_csv(Path(trainer.log_dir) / "metrics.csv"), "train/loss")  # type: ignore[arg-type]
    first, second = rows
    assert [float(first[f"train/loss/{t}"]) for t in ("cls", "reg", "aux")] == pytest.approx(expected_first, rel=1e-6)
    total = sum(w * v for w, v in zip([1.0, 0.5, 0.25], expected_first, strict=True))
    assert float(first["train/loss"]) == pytest.approx(total, rel=1e-6)
    # No labelled sample: each task adds 0 to the total, and its own value is NaN (no loss of it was
    # measured; a 0 drew a perfect fit into the task's curve).
    assert all(math.isnan(float(second[f"train/loss/{t}"])) for t in ("cls", "reg", "aux"))
    assert float(second["train/loss"]) == 0.0
    assert all(math.isfinite(float(v)) for v in model.state_dict()["trunk.0.weight"].flatten())


# -- evaluation before, between and after fits ------------------------------------------------------


def test_validate_and_test_before_and_between_fits(tmp_path: Path) -> None:
    # trainer.validate and trainer.test run under inference mode and leave the metrics they reset
    # holding inference tensors; a later fit's validation (under no_grad) updates the same metrics.
    model = ToyNet(metrics=True)
    val = toy_loader(n=32, batch_size=16, seed=1)
    data = ToyDataset(32, seed=1)

    def expected() -> dict[str, float]:
        with torch.no_grad():
            out = model(data.x)
        return {
            "loss/cls": F.cross_entropy(out["cls"], data.cls).item(),
            "mse/reg": F.mse_loss(out["reg"], data.reg).item(),
            "acc/cls": (out["cls"].argmax(1) == data.cls).float().mean().item(),
        }

    for epochs in (1, 2):  # validate, fit; validate, fit on
        quiet_trainer(default_root_dir=tmp_path).validate(model, val, verbose=False)
        trainer = quiet_trainer(max_epochs=epochs, default_root_dir=tmp_path)
        trainer.fit(model, toy_loader(n=32, batch_size=16), val, ckpt_path=None)
        for key, value in expected().items():
            assert trainer.callback_metrics[f"val/{key}"].item() == pytest.approx(value, rel=1e-5), key
    # The same for the test metrics: a test under inference mode, then one under no_grad.
    quiet_trainer(default_root_dir=tmp_path).test(model, val, verbose=False)
    (logged,) = quiet_trainer(default_root_dir=tmp_path, inference_mode=False).test(model, val, verbose=False)
    for key, value in expected().items():
        assert logged[f"test/{key}"] == pytest.approx(value, rel=1e-5), key


class _ModeNet(ToyNet):
    """ToyNet marking its shared representation, and optionally kept in training mode for evaluation
    (Lightning's ``on_validation_model_eval`` overridden: MC dropout) or put in evaluation mode for
    training (all its dropout off). Without dropout or batch norm either mode computes the same."""

    def __init__(self, weighting: Weighting, mode: str) -> None:
        super().__init__(weighting, optimizer="adam", lr=0.01)
        self.mode = mode

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.shared_representation(self.trunk(x))
        return {name: head(z) for name, head in self.heads.items()}

    def on_validation_model_eval(self) -> None:
        if self.mode == "evaluated in training mode":
            self.train()
        else:
            super().on_validation_model_eval()

    def on_train_epoch_start(self) -> None:
        if self.mode == "trained in evaluation mode":
            self.eval()


@pytest.mark.parametrize("mode", ["evaluated in training mode", "trained in evaluation mode"])
@pytest.mark.parametrize(
    ("name", "options"),
    [("famo", {}), ("rlw", {}), ("mgda", {"route": "representation"}), ("upgrad", {"route": "parameters"})],
)
def test_the_strategy_trains_in_training_steps_and_evaluates_in_evaluation_steps_whatever_the_modules_mode(
    name: str, options: dict[str, Any], mode: str
) -> None:
    # The reference: the same fit with Lightning's modes (training in training, evaluation in
    # validation). A validation in training mode used to step FAMO's state, overwrite the last
    # weights (FAMO, RLW) and make the gradient strategies ask for their gradients under no_grad;
    # a training step in evaluation mode used to leave them untrained.
    def fit(how: str) -> tuple[_ModeNet, dict[str, Tensor]]:
        torch.manual_seed(0)
        model = _ModeNet(create_weighting(name, **options), how)
        trainer = quiet_trainer(max_epochs=2, limit_val_batches=2, num_sanity_val_steps=1)
        trainer.fit(model, toy_loader(n=64), toy_loader(n=32, seed=1))
        return model, {k: v.clone() for k, v in trainer.callback_metrics.items()}

    reference, reference_logged = fit("Lightning's modes")
    model, logged = fit(mode)
    assert_params_close(model.state_dict(), reference.state_dict(), atol=0.0, what=mode)
    assert_params_close(logged, reference_logged, atol=0.0, what=mode)
    assert model.weighting.training == model.training  # its mode follows the module's again after the steps


@pytest.mark.parametrize(
    ("metric", "reference"),
    [(torchmetrics.MeanSquaredError, F.mse_loss), (torchmetrics.MeanAbsoluteError, F.l1_loss)],
)
def test_a_torchmetrics_metric_as_the_loss_of_a_one_output_head(metric: Any, reference: Any) -> None:
    # torchmetrics' Metric overloads ==, so `loss in (F.cross_entropy, ...)` took every metric for a
    # class loss and refused a one-output head ("a loss over classes needs one output per class").
    class AuxNet(ToyNet):
        def __init__(self) -> None:
            super().__init__(tasks=("cls", "aux"))
            self.configure_multitask([Task("cls", nn.CrossEntropyLoss()), Task("aux", metric())], "fixed")

    model = AuxNet()
    batch = next(iter(toy_loader(n=16, batch_size=16)))
    outputs = model(batch["x"])
    assert outputs["aux"].shape == batch["aux"].shape == (16, 1)
    losses = model.task_losses(outputs, batch)  # checks the target against the loss, as a training step
    torch.testing.assert_close(losses[1], reference(outputs["aux"], batch["aux"]))


def test_two_evaluation_dataloaders_each_log_their_own_values(tmp_path: Path) -> None:
    # The second loader's values were pooled with the first's: one set of means and metrics per stage.
    model = ToyNet(metrics=True)
    first, second = ToyDataset(16, seed=1), ToyDataset(24, seed=2)
    trainer = quiet_trainer(default_root_dir=tmp_path)
    with torch.no_grad():
        expected = []
        for data in (first, second):
            out = model(data.x)
            expected.append(
                {
                    "loss/cls": float(F.cross_entropy(out["cls"], data.cls)),
                    "loss/reg": float(F.mse_loss(out["reg"], data.reg)),
                    "acc/cls": float((out["cls"].argmax(1) == data.cls).float().mean()),
                    "mse/reg": float(F.mse_loss(out["reg"], data.reg)),
                }
            )
    for stage, run in (("val", trainer.validate), ("test", trainer.test)):
        for _ in range(2):  # and again: each epoch starts afresh
            loaders = [DataLoader(first, batch_size=16), DataLoader(second, batch_size=8)]
            logged = run(model, loaders, verbose=False)
            assert len(logged) == 2
            for index, values in enumerate(expected):
                for key, value in values.items():
                    got = logged[index][f"{stage}/{key}/dataloader_idx_{index}"]
                    assert got == pytest.approx(value, rel=1e-5), (stage, index, key)


def test_a_second_evaluation_dataloader_adds_nothing_to_the_state_dict() -> None:
    # Its metrics are copies made on its first batch: with a metric whose states are persistent they
    # added keys, and a fresh model could no longer load the state strictly.
    def model() -> ToyNet:
        accuracy = torchmetrics.Accuracy("multiclass", num_classes=3)
        accuracy.persistent(True)
        net = ToyNet()
        net.configure_multitask(
            [Task("cls", nn.CrossEntropyLoss(), metrics={"acc": accuracy}), Task("reg", nn.MSELoss())], "fixed"
        )
        return net

    net = model()
    keys = set(net.state_dict())
    loaders = [DataLoader(ToyDataset(16, seed=1), batch_size=8), DataLoader(ToyDataset(16, seed=2), batch_size=8)]
    quiet_trainer().validate(net, loaders, verbose=False)
    assert set(net.state_dict()) == keys
    model().load_state_dict(net.state_dict())  # strict


class HookCounter(pl.profilers.Profiler):
    """Counts the hooks the Trainer dispatches (each dispatch opens one profiler action)."""

    def __init__(self) -> None:
        super().__init__()
        self.actions: dict[str, int] = {}

    def start(self, action_name: str) -> None:
        self.actions[action_name] = self.actions.get(action_name, 0) + 1

    def stop(self, action_name: str) -> None:
        pass


CALLBACK_STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
)


class AfterBackwardCounter(LossWeightingCallback):
    """A user's subclass with a per-step hook of its own."""

    def __init__(self) -> None:
        super().__init__(plot=False)
        self.after_backward = 0

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        self.after_backward += 1


def test_the_callback_is_dispatched_only_the_per_step_hooks_that_do_something() -> None:
    # Lightning dispatches each hook to each callback at every step (a profiler action each, a few
    # microseconds); a hook the callback leaves to Lightning's no-op, or one its strategy needs
    # nothing from (a fixed sum is told no progress), is not dispatched.
    def dispatched(callback: LossWeightingCallback, weighting: Weighting) -> tuple[dict[str, int], BatchRecorder]:
        counter, recorder = HookCounter(), BatchRecorder()
        trainer = quiet_trainer(max_epochs=1, profiler=counter, callbacks=[callback, recorder])
        trainer.fit(ToyNet(weighting), toy_loader(n=64))  # 4 steps
        prefix = f"[Callback]{callback.state_key}."
        return {hook: counter.actions.get(prefix + hook, 0) for hook in CALLBACK_STEP_HOOKS}, recorder

    callback = LossWeightingCallback(plot=False)
    counts, recorder = dispatched(callback, Fixed([0.5, 0.3]))
    assert counts == {hook: 4 if hook == "on_train_batch_end" else 0 for hook in CALLBACK_STEP_HOOKS}
    assert recorder.weights == [pytest.approx([0.5, 0.3])] * 4
    # The same callback in a later fit whose strategy follows the progress: it is told it again.
    counts, recorder = dispatched(callback, Scheduled(Linear(1.0, 0.0, duration=4), unit="step"))
    assert counts["on_train_batch_start"] == 4
    assert [w[0] for w in recorder.weights] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    # A subclass's own per-step hook is dispatched as any callback's.
    mine = AfterBackwardCounter()
    counts, _ = dispatched(mine, Fixed([0.5, 0.3]))
    assert counts["on_after_backward"] == 4
    assert mine.after_backward == 4


class Tunable(ToyNet):
    """What Lightning's tuners need: a ``batch_size`` and ``lr`` to set, and the model's own loader."""

    def __init__(self, weighting: Weighting) -> None:
        super().__init__(weighting)
        self.batch_size = 8

    def train_dataloader(self) -> DataLoader:
        return toy_loader(n=64, batch_size=self.batch_size)

    val_dataloader = train_dataloader


@pytest.mark.parametrize("make", [Learnable, lambda: Scheduled(Linear(1.0, 0.0, duration=4))])
def test_lightnings_tuners_run_strategies_that_need_the_callback(make: Any) -> None:
    # Their trial steps run with callbacks of their own: the mixin refused to train without its
    # Callback there, though the fit that follows has it.
    from pytorch_lightning.tuner import Tuner

    model = Tunable(make())
    tuner = Tuner(quiet_trainer(max_epochs=1))
    size = tuner.scale_batch_size(model, max_trials=2, steps_per_trial=2)
    assert size is not None and model.batch_size == size
    assert tuner.lr_find(model, num_training=8) is not None
    trainer = quiet_trainer(max_epochs=1, callbacks=[LossWeightingCallback(plot=False)])
    trainer.fit(model)
    assert trainer.global_step == math.ceil(64 / size)


class AlphaSeen(Tunable):
    """The alpha each training step uses."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.alphas.append(float(self.weighting.alpha))
        return super().training_step(batch, batch_idx)


def test_lr_finds_trial_steps_keep_the_learnable_alpha_in_0_1() -> None:
    # The clip ran in the Callback alone, which the tuner's trials run without: at lr_find's larger
    # rates alpha left [0, 1] (to 8.9 in 8 steps), and a negative weight made the loss infinite.
    from pytorch_lightning.tuner import Tuner

    model = AlphaSeen(Learnable(init=0.5))
    model.alphas, model.batch_size = [], 2  # 32 batches: lr_find's 30 trial steps in one epoch
    found = Tuner(quiet_trainer(max_epochs=1)).lr_find(
        model, min_lr=1e-3, max_lr=50.0, num_training=30, early_stop_threshold=None, update_attr=False
    )
    assert found is not None and len(model.alphas) >= 29
    assert any(a in (0.0, 1.0) for a in model.alphas)  # it reached a bound: the clip had work to do
    assert all(0.0 <= a <= 1.0 for a in model.alphas), model.alphas
    assert float(model.weighting.alpha) == 0.5  # the tuner puts the model back


class WrappedSGD:
    """An optimizer Lightning takes that is no torch.optim.Optimizer (a wrapper that logs or rescales
    its steps): it has no step hooks."""

    def __init__(self, params: Any, lr: float) -> None:
        self.inner = torch.optim.SGD(params, lr=lr)
        self.param_groups, self.defaults, self.state = self.inner.param_groups, self.inner.defaults, self.inner.state

    def step(self, closure: Any = None) -> Any:
        return self.inner.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


class WithWrappedSGD(ToyNet):
    def __init__(self, weighting: Weighting, **kw: Any) -> None:
        super().__init__(weighting, **kw)
        self.alphas: list[float] = []

    def configure_optimizers(self) -> Any:
        return WrappedSGD(self.parameters(), lr=1.0)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.weighting.alpha.ndim == 0:  # two tasks: alpha
            self.alphas.append(float(self.weighting.alpha))
        return super().training_step(batch, batch_idx)


def test_learnable_with_an_optimizer_of_another_kind_is_clipped_after_the_batch(tmp_path: Path) -> None:
    """No step hook to register (the fit failed with an AttributeError): the clip after the batch."""
    model = WithWrappedSGD(Learnable(init=0.5))
    quiet_trainer(max_epochs=2, default_root_dir=str(tmp_path)).fit(model, toy_loader(n=64))
    assert len(model.alphas) == 8 and float(model.weighting.alpha) in (0.0, 1.0)  # the clip had work to do
    assert all(0.0 <= alpha <= 1.0 for alpha in model.alphas), model.alphas


class CountedLearnable(Learnable):
    """Learnable (K > 2) that counts the projections it applies: of weights that moved since the last."""

    def __init__(self) -> None:
        super().__init__()
        self.projections = 0

    def constrain(self) -> None:
        projected = getattr(self, "projected", None)
        self.projections += 1 if projected is None else int(bool((self.alpha != projected).any()))
        super().constrain()


@pytest.mark.parametrize("wrapped", [False, True], ids=["torch-optimizer", "other-optimizer"])
def test_the_weights_are_projected_once_per_optimizer_step(tmp_path: Path, wrapped: bool) -> None:
    """Once, in the step (its hook) or after the batch (no hook): projected twice, a simplex point
    moved by its rounding, and a check that left such points alone kept bfloat16 weights summing to
    0.88."""
    model = (WithWrappedSGD if wrapped else ToyNet)(CountedLearnable(), tasks=("cls", "reg", "aux"))
    trainer = quiet_trainer(max_steps=6, accumulate_grad_batches=2, default_root_dir=str(tmp_path))
    trainer.fit(model, toy_loader(n=16 * 12))
    assert trainer.global_step == 6 and model.weighting.projections == 6


def test_a_second_projection_without_a_step_leaves_the_weights() -> None:
    """The hook in the step, then the call after the batch (or two hooks where a subclass's step
    calls its parent's): in bfloat16 projecting a point of the simplex again moves it
    ([0.8828, 0.1172, 0] to [0.8867, 0.1211, 0.0039], summing to 1.0117)."""
    weighting = Learnable()
    weighting.bind(["a", "b", "c"])
    weighting.to(torch.bfloat16)
    with torch.no_grad():
        weighting.alpha.copy_(torch.tensor([0.9, 0.13, 0.0]))  # a step moved them off the simplex
    weighting.constrain()
    once = weighting.alpha.detach().clone()
    assert not torch.equal(project_to_simplex(once), once)  # projecting again would move them
    weighting.constrain()
    assert torch.equal(weighting.alpha.detach(), once)


def test_a_bfloat16_simplex_projection_sums_to_one_to_its_rounding() -> None:
    weighting = Learnable()
    weighting.bind(["a", "b", "c", "d", "e"])
    weighting.to(torch.bfloat16)
    with torch.no_grad():
        weighting.alpha.copy_(torch.tensor([0.3, 0.2, 0.15, 0.13, 0.1]))  # sums to 0.88
    weighting.constrain()
    alpha = weighting.alpha.detach().float()
    assert (alpha >= 0).all() and abs(float(alpha.sum()) - 1.0) <= 5 * 2**-8, alpha


class LookaheadLike(torch.optim.Optimizer):
    """A wrapper as some libraries write one: a torch Optimizer subclass that skips its __init__ and
    steps its inner optimizer in a step of its own, which torch never wraps with the step hooks."""

    def __init__(self, params: Any, lr: float) -> None:  # no super().__init__()
        self.inner = torch.optim.SGD(params, lr=lr)
        self.param_groups, self.defaults, self.state = self.inner.param_groups, self.inner.defaults, self.inner.state
        self._optimizer_step_pre_hooks: dict[int, Any] = {}
        self._optimizer_step_post_hooks: dict[int, Any] = {}

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        return self.inner.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)


class WithLookaheadLike(ToyNet):
    def configure_optimizers(self) -> Any:
        return LookaheadLike(self.parameters(), lr=1.0)


def test_an_optimizer_whose_step_never_calls_the_hooks_is_constrained_after_the_batch(tmp_path: Path) -> None:
    """Its hook registered, and never ran: the weights went negative and stayed (sum -21.7 after 6 steps)."""
    model = WithLookaheadLike(CountedLearnable(), tasks=("cls", "reg", "aux"))
    trainer = quiet_trainer(max_steps=6, default_root_dir=str(tmp_path))
    trainer.fit(model, toy_loader(n=16 * 6))
    assert model.weighting.projections == 6
    alpha = model.weighting.alpha.detach()
    assert (alpha >= 0).all() and abs(float(alpha.sum()) - 1.0) < 1e-6, alpha


class ClippedShare(Weighting):
    """A strategy of one's own: ``w = (a, 1 - a)``, ``a`` trainable and kept in [0, 1] by constrain."""

    name = "test-clipped-share"

    def build(self, num_tasks: int) -> None:
        self.a = nn.Parameter(torch.tensor(0.5))

    def current_weights(self) -> Tensor:
        return torch.stack([self.a.detach(), 1 - self.a.detach()])

    def forward(self, losses: Tensor) -> Any:
        from lightning_multiloss.weighting import WeightedLoss

        weights = torch.stack([self.a, 1 - self.a])
        return WeightedLoss((weights * losses).sum(), weights.detach())

    @torch.no_grad()
    def constrain(self) -> None:
        self.a.clamp_(0.0, 1.0)


class ShareSeen(Tunable):
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.shares.append(float(self.weighting.a))
        return super().training_step(batch, batch_idx)


def test_a_strategy_of_ones_own_is_constrained_in_the_tuners_trial_steps_and_needs_the_callback() -> None:
    """constrain was applied by the Callback's step hook alone: the tuner's trial steps (no Callback)
    left ``a`` at 4813 and beyond, and a fit without the Callback was not refused."""
    from pytorch_lightning.tuner import Tuner

    model = ShareSeen(ClippedShare())
    assert model.weighting.needs_callback
    model.shares, model.batch_size = [], 2
    Tuner(quiet_trainer(max_epochs=1)).lr_find(
        model, min_lr=0.5, max_lr=50.0, num_training=12, early_stop_threshold=None, update_attr=False
    )
    assert len(model.shares) >= 11 and any(a in (0.0, 1.0) for a in model.shares)
    assert all(0.0 <= a <= 1.0 for a in model.shares), model.shares


class AlphaAtBatchEnd(pl.Callback):
    """Another callback's view of alpha at each batch's end (Lightning runs the Trainer's callbacks
    before the one the mixin adds), as an EMA of the weights takes it."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.seen.append(float(pl_module.weighting.alpha))


def test_learnable_alpha_is_clipped_inside_the_optimizer_step(tmp_path: Path) -> None:
    """An EMA callback (WeightAveraging) and any other batch-end hook see alpha in [0, 1]: the clip ran
    in the Callback's own batch-end hook, after theirs, and the EMA of alpha copied back at the end
    of fit was 5.25 (task weights [5.25, -4.25])."""
    from pytorch_lightning.callbacks import WeightAveraging
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    seen = AlphaAtBatchEnd()
    model = ToyNet(Learnable(init=0.5), lr=1.0)
    ema = WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(0.5))
    quiet_trainer(max_epochs=2, callbacks=[seen, ema], default_root_dir=str(tmp_path)).fit(model, toy_loader(n=64))
    assert len(seen.seen) == 8 and seen.seen[-1] in (0.0, 1.0)  # the clip had work to do
    assert all(0.0 <= alpha <= 1.0 for alpha in seen.seen), seen.seen
    assert 0.0 <= float(model.weighting.alpha) <= 1.0  # the average, copied back at the end of fit


class TwoOptimizers(ToyNet):
    """Manual optimization: the network and alpha in two optimizers, both stepped every batch."""

    def __init__(self, weighting: Weighting, **kw: Any) -> None:
        super().__init__(weighting, **kw)
        self.automatic_optimization = False
        self.after_step: list[float] = []

    def configure_optimizers(self) -> Any:
        network = [p for name, p in self.named_parameters() if not name.startswith("weighting.")]
        return torch.optim.SGD(network, lr=0.05), torch.optim.SGD(self.weighting.parameters(), lr=1.0)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        first, second = self.optimizers()  # type: ignore[misc]
        loss = super().training_step(batch, batch_idx)
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        first.step()
        second.step()
        self.after_step.append(float(self.weighting.alpha))  # what code after opt.step() reads
        return loss


def test_learnable_under_manual_optimization_is_clipped_at_the_step_and_checked_on_time(tmp_path: Path) -> None:
    """alpha read right after opt.step() is in [0, 1] (it was 3.79 until the batch's end); with two
    optimizers global_step moves 2 a batch, and check_every=2 never met Learnable's odd count: the
    bound was told at the epoch's end alone (step 64 here) instead of at the first check after it."""
    model = TwoOptimizers(Learnable(init=0.5, check_every=2))
    trainer = quiet_trainer(max_epochs=1, default_root_dir=str(tmp_path))
    told_at: list[int] = []

    class Note(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "reached a bound" in record.getMessage():
                told_at.append(trainer.global_step)

    handler = Note()
    logging.getLogger("lightning_multiloss").addHandler(handler)
    try:
        trainer.fit(model, toy_loader(n=256, batch_size=8))
    finally:
        logging.getLogger("lightning_multiloss").removeHandler(handler)
    assert trainer.global_step == 64 and len(model.after_step) == 32
    assert all(0.0 <= alpha <= 1.0 for alpha in model.after_step), model.after_step
    reached = next(2 * (i + 1) for i, alpha in enumerate(model.after_step) if alpha in (0.0, 1.0))
    assert len(told_at) == 1 and told_at[0] <= reached + 2, (told_at, reached)


class CountingFixed(Fixed):
    """A plain sum that counts its post-step calls."""

    calls = 0

    def after_optimizer_step(self) -> None:
        self.calls += 1


class StepsCounted(Tunable):
    """Counts the optimizer steps Lightning takes."""

    steps = 0

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        super().on_before_optimizer_step(optimizer)
        self.steps += 1


@pytest.mark.parametrize("tune", ["lr_find accumulating", "scale_batch_size one step a trial"])
def test_tuner_trials_call_the_post_step_update_once_per_optimizer_step(tune: str) -> None:
    # The mixin's count of steps started at -1 and was never reset: an accumulation batch at step 0
    # counted as a step, and scale_batch_size's trials (each from step 0, one step each) all ended
    # at step 1, so only the first got its update.
    from pytorch_lightning.tuner import Tuner

    model = StepsCounted(CountingFixed())
    if tune == "lr_find accumulating":
        tuner = Tuner(quiet_trainer(max_epochs=1, accumulate_grad_batches=2))
        tuner.lr_find(model, num_training=4, early_stop_threshold=None, update_attr=False)
    else:
        tuner = Tuner(quiet_trainer(max_epochs=1))
        tuner.scale_batch_size(model, mode="power", max_trials=3, steps_per_trial=1)
    assert model.steps >= 3
    assert model.weighting.calls == model.steps


class ClosureEvaluated(ToyNet):
    """LBFGS: Lightning runs training_step at each of the closure's evaluations; each is recorded."""

    def __init__(self, weighting: Weighting) -> None:
        super().__init__(weighting)
        self.evaluated: list[float] = []  # the cls loss of each evaluation, by hand

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        with torch.no_grad():
            self.evaluated.append(float(F.cross_entropy(self(batch["x"])["cls"], batch["cls"])))
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=3)


def test_lbfgs_evaluations_each_take_a_step_of_the_strategy_and_the_post_step_update_runs_once(
    tmp_path: Path,
) -> None:
    # The README's rule for closures: every evaluation is a training step of the strategy and
    # counts in the epoch means; the post-step update follows the optimizer steps.
    model = ClosureEvaluated(CountingFixed([1.0, 1.0]))
    trainer = quiet_trainer(max_epochs=1, logger=CSVLogger(tmp_path, name="", version=""), log_every_n_steps=1)
    trainer.fit(model, toy_loader(n=64, batch_size=16))
    assert trainer.global_step == 4  # one optimizer step per batch
    assert len(model.evaluated) > 4  # LBFGS evaluated several times a step
    assert model.weighting.calls == 4
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    logged = [float(r["train/loss/cls_epoch"]) for r in rows if r.get("train/loss/cls_epoch")]
    assert logged == pytest.approx([sum(model.evaluated) / len(model.evaluated)], rel=1e-6)


class TrainingOnly(pl.LightningDataModule):
    """Training data alone, with a batch size for the tuner to scale."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_size = 4

    def train_dataloader(self) -> DataLoader:
        return toy_loader(n=64, batch_size=self.batch_size)


class TrainingOnlyForTheTuner(TrainingOnly):
    def val_dataloader(self) -> list[DataLoader]:
        return []  # no validation: the README's way for Tuner.scale_batch_size


def test_scale_batch_size_without_validation_data_needs_an_empty_val_dataloader() -> None:
    # Lightning's batch-size trials ask for the validation loaders whenever the module defines
    # validation_step, which the mixin does; without them its own error stops the tuner.
    from pytorch_lightning.tuner import Tuner

    with pytest.raises(Exception, match="`val_dataloader` must be implemented"):
        Tuner(quiet_trainer(max_epochs=1)).scale_batch_size(
            ToyNet(Fixed([0.5, 0.3])), datamodule=TrainingOnly(), max_trials=2, steps_per_trial=1
        )
    data = TrainingOnlyForTheTuner()
    trainer = quiet_trainer(max_epochs=1)
    size = Tuner(trainer).scale_batch_size(ToyNet(Fixed([0.5, 0.3])), datamodule=data, max_trials=2, steps_per_trial=1)
    assert size is not None and size >= 4
    trainer.fit(ToyNet(Fixed([0.5, 0.3])), datamodule=data)
    assert trainer.global_step == 64 // data.batch_size


def test_the_tuners_trial_steps_are_no_part_of_the_fits_first_epoch() -> None:
    # The trials' losses were added to the first epoch's logged means (and a NaN of a diverging
    # trial stopped the fit that followed).
    def epoch_means(tune: bool) -> list[float]:
        from pytorch_lightning.tuner import Tuner

        model = Tunable(Fixed([0.5, 0.3]))
        if tune:
            Tuner(quiet_trainer(max_epochs=1)).lr_find(model, num_training=6, update_attr=False)
        trainer = quiet_trainer(max_epochs=1)
        trainer.fit(model)
        return [float(trainer.callback_metrics[f"train/loss/{task}_epoch"]) for task in TASKS]

    assert epoch_means(tune=True) == pytest.approx(epoch_means(tune=False), rel=1e-6)


@pytest.mark.parametrize("weighting", ["dwa", "stch"])
def test_the_learning_rate_finder_callback_leaves_the_epoch_means_alone(weighting: str) -> None:
    # Its trials run inside the fit, after setup: the epoch means counted their batches (the
    # restored checkpoint took back the sums, not the count kept on the host), so DWA's epoch-0
    # mean was 6/(6+8) of the true one and its weights from epoch 2 on were wrong.
    from pytorch_lightning.callbacks import LearningRateFinder

    def trained(finder: bool) -> dict[str, Tensor]:
        model = Tunable(create_weighting(weighting))
        callbacks = [LearningRateFinder(num_training_steps=8, update_attr=False)] if finder else []
        quiet_trainer(max_epochs=4, callbacks=callbacks).fit(model)
        return {name: p.detach().clone() for name, p in model.named_parameters()}

    assert_params_close(trained(finder=True), trained(finder=False), atol=0.0)


def gaussian_nll(output: tuple[Tensor, Tensor], target: Tensor) -> Tensor:
    """½(log σ² + (y − μ)²/σ²), shifted by 2 to stay ≥ 0 in these short runs."""
    mean, log_var = output
    return 0.5 * (log_var + (target - mean) ** 2 / log_var.exp()).mean() + 2.0


class MeanAndVariance(MultiTaskMixin, pl.LightningModule):
    """``reg`` predicts a mean and a log-variance: its output is a pair."""

    def __init__(self, order: tuple[str, str], **task_options: Any) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.cls, self.mean, self.log_var = nn.Linear(16, 3), nn.Linear(16, 2), nn.Linear(16, 2)
        tasks = {"cls": Task("cls", nn.CrossEntropyLoss()), "reg": Task("reg", gaussian_nll, **task_options)}
        self.configure_multitask([tasks[name] for name in order], "uncertainty")

    def forward(self, x: Tensor) -> dict[str, Any]:
        z = self.trunk(x)
        return {"cls": self.cls(z), "reg": (self.mean(z), self.log_var(z))}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


@pytest.mark.parametrize("order", [("cls", "reg"), ("reg", "cls")])
def test_a_task_whose_output_is_a_pair_of_tensors(order: tuple[str, str]) -> None:
    # A Gaussian NLL head (mean, log-variance) failed in the target check and the batch size.
    model = MeanAndVariance(order)
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(model, toy_loader(n=32, batch_size=8), toy_loader(n=16, batch_size=8))
    data = ToyDataset(16)
    with torch.no_grad():
        z = model.trunk(data.x)
        by_hand = {
            "cls": F.cross_entropy(model.cls(z), data.cls).item(),
            "reg": gaussian_nll((model.mean(z), model.log_var(z)), data.reg).item(),
        }
    logged = trainer.validate(model, toy_loader(n=16, batch_size=16), verbose=False)[0]
    for task, value in by_hand.items():
        assert logged[f"val/loss/{task}"] == pytest.approx(value, rel=1e-5)


def test_a_pair_output_with_a_mask_and_a_failing_loss_are_named() -> None:
    model = MeanAndVariance(("cls", "reg"), ignore_value=-100.0)
    batch = next(iter(toy_loader(n=8, batch_size=8)))
    with pytest.raises(MultiLossError, match=r"task 'reg': a mask or ignore_value selects samples of a tensor output"):
        model.training_step(batch, 0)
    model = MeanAndVariance(("cls", "reg"))
    batch["reg"] = batch["reg"][:, :1].repeat(1, 3)  # 3 targets for a pair of (8, 2) outputs
    with pytest.raises(MultiLossError, match=r"output tuple\[\(8, 2\) torch.float32, \(8, 2\) torch.float32\]"):
        model.training_step(batch, 0)


class MeanVar(NamedTuple):
    mean: Tensor
    log_var: Tensor


class NamedMeanAndVariance(MeanAndVariance):
    def forward(self, x: Tensor) -> dict[str, Any]:
        z = self.trunk(x)
        return {"cls": self.cls(z), "reg": MeanVar(self.mean(z), self.log_var(z))}


class MeanOfThePair(torchmetrics.MeanSquaredError):
    """A metric of the predicted mean."""

    def update(self, output: MeanVar, target: Tensor) -> None:  # type: ignore[override]
        super().update(output.mean, target)


def test_metrics_of_a_task_whose_output_is_a_named_pair() -> None:
    # Detaching a namedtuple for the metrics failed (MeanVar(generator)); a metric that cannot
    # read a pair raised torchmetrics' own AttributeError.
    model = NamedMeanAndVariance(("cls", "reg"), metrics={"mse": MeanOfThePair()})
    data = ToyDataset(16)
    with torch.no_grad():
        mean = model.mean(model.trunk(data.x))
    logged = quiet_trainer().validate(model, toy_loader(n=16, batch_size=8), verbose=False)[0]
    assert logged["val/mse/reg"] == pytest.approx(F.mse_loss(mean, data.reg).item(), rel=1e-5)
    model = MeanAndVariance(("cls", "reg"), metrics={"mse": torchmetrics.MeanSquaredError()})
    with pytest.raises(MultiLossError, match=r"task 'reg': its metric 'val/mse/reg' failed on output tuple\["):
        quiet_trainer().validate(model, toy_loader(n=16, batch_size=8), verbose=False)


class SplitsNestedTargets(ToyNet):
    """A user's batch layout: the input under "img", the targets under "targets"."""

    def split_batch(self, batch: Any) -> tuple[Any, Any]:
        return batch["img"], batch["targets"]


def test_a_prediction_batch_that_split_batch_cannot_read_names_predict_inputs() -> None:
    # A label-free prediction batch met the user's split_batch: a bare KeyError 'targets'.
    model = SplitsNestedTargets()
    with pytest.raises(
        MultiLossError, match=r"keys \['img'\]\): split_batch\(\) failed on it: 'targets'; override predict_inputs"
    ):
        model.predict_step({"img": torch.randn(4, 8)}, 0)
    # Where the user overrides predict_inputs too, prediction reads the input alone.
    model.predict_inputs = lambda batch: batch["img"]  # type: ignore[method-assign]
    assert model.predict_step({"img": torch.randn(4, 8)}, 0)["cls"].shape == (4, 3)


# -- where the Callback's files go, and when the system refuses them --------------------------------
class RaiseAtStep(pl.Callback):
    """Raises (an error, or Ctrl-C) in the batch after the optimizer step ``step``."""

    def __init__(self, step: int, error: BaseException) -> None:
        self.step, self.error = step, error

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise self.error


FIXED = [0.25, 2.0]


def fixed_rows(steps: range) -> list[list[str]]:
    """The CSV rows of Fixed(FIXED) over ``steps`` (4 steps an epoch: 64 samples in batches of 16)."""
    return [[str(step), str((step - 1) // 4), "0.25", "2.0"] for step in steps]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_a_fit_that_stops_on_an_exception_writes_the_steps_recorded_so_far(tmp_path: Path, error: Any) -> None:
    trainer = quiet_trainer(max_epochs=3, default_root_dir=str(tmp_path), callbacks=[RaiseAtStep(6, error)])
    with contextlib.suppress(RuntimeError, SystemExit):  # Lightning exits on Ctrl-C
        trainer.fit(ToyNet(Fixed(FIXED)), toy_loader(64))
    assert trainer.global_step == 6
    with open(tmp_path / "loss_weights.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["step", "epoch", "cls", "reg"], *fixed_rows(range(1, 7))]  # no end row: training did not end
    assert (tmp_path / "loss_weights.png").stat().st_size > 0


def test_a_folder_that_cannot_be_made_stops_the_fit_before_training(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    folder = tmp_path / "a_file" / "run"
    trainer = quiet_trainer(max_epochs=2, default_root_dir=str(folder))
    with pytest.raises(
        MultiLossError,
        match=r"^LossWeightingCallback: cannot make the folder '.*a_file/run' for loss_weights\.csv and "
        r"loss_weights\.png: a part of it is a file$",
    ):
        trainer.fit(ToyNet(Fixed(FIXED)), toy_loader(64))
    assert trainer.global_step == 0
    # The run result's file under a file: "File exists", naming neither the argument nor the cause.
    callback = LossWeightingCallback(result_file=str(tmp_path / "a_file" / "result.json"))
    trainer = quiet_trainer(max_epochs=2, default_root_dir=str(tmp_path), callbacks=[callback])
    with pytest.raises(
        MultiLossError,
        match=r"^cannot make the folder '.*a_file' for the run result result\.json: a part of it is a file$",
    ):
        trainer.fit(ToyNet(Fixed(FIXED)), toy_loader(64))
    assert trainer.global_step == 0


@pytest.mark.parametrize("taken", ["folder", "png"])
def test_a_record_that_cannot_be_written_at_the_end_names_the_file(
    tmp_path: Path, taken: str, caplog: pytest.LogCaptureFixture
) -> None:
    class TakenAway(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            if trainer.global_step == 8 and taken == "folder":  # the last step: the folder becomes a file
                (tmp_path / "run").rmdir()
                (tmp_path / "run").write_text("")
            elif trainer.global_step == 8:  # a folder where the plot goes (the CSV was named for it)
                (tmp_path / "run" / "loss_weights.png").mkdir()

    trainer = quiet_trainer(max_epochs=2, default_root_dir=str(tmp_path / "run"), callbacks=[TakenAway()])
    said = (
        r"cannot make the folder '.*run' for loss_weights\.csv and loss_weights\.png: a part of it is a file"
        if taken == "folder"
        else r"cannot write the weights' record .*run/loss_weights\.png: Is a directory"  # it named the CSV
    )
    with (
        caplog.at_level("ERROR", logger="lightning_multiloss"),
        pytest.raises(MultiLossError, match=rf"^LossWeightingCallback: {said} \(the record is also in the Callback's"),
    ):
        trainer.fit(ToyNet(Fixed(FIXED)), toy_loader(64))
    assert trainer.global_step == 8
    # on_exception, which follows, did not try again ("... was not written")
    assert not [r for r in caplog.records if r.name.startswith("lightning_multiloss")]
    if taken == "png":
        with open(tmp_path / "run" / "loss_weights.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[1:] == [*fixed_rows(range(1, 9)), ["9", "2", "0.25", "2.0"]]  # and the end row


def test_a_logger_without_a_name_gets_the_files_beside_lightnings_checkpoints(tmp_path: Path) -> None:
    """``str(name)`` as Lightning's ModelCheckpoint: the files went to <save_dir>/<version>, the
    checkpoints to <save_dir>/None/<version>."""
    from pytorch_lightning.loggers import Logger

    class Nameless(Logger):
        name = None  # type: ignore[assignment]
        version = "v1"

        @property
        def save_dir(self) -> str:
            return str(tmp_path)

        def log_metrics(self, metrics: Any, step: Any = None) -> None:
            pass

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            pass

    trainer = quiet_trainer(max_epochs=1, logger=Nameless(), enable_checkpointing=True)
    trainer.fit(ToyNet(Fixed(FIXED)), toy_loader(64))
    assert sorted(p.name for p in (tmp_path / "None" / "v1").iterdir()) == [
        "checkpoints",
        "loss_weights.csv",
        "loss_weights.png",
    ]


def test_runs_of_a_wandb_logger_sharing_its_save_dir_keep_their_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a W&B logger first, the files went to its save_dir, which the runs share: each run
    overwrote the last one's CSV (W&B gets the plot alone). Now <save_dir>/<project>/<run id>, as
    Lightning's checkpoints."""
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs = {}
    for weights in ([0.3, 0.7], [0.9, 0.1]):
        logger = WandbLogger(project="weights", save_dir=str(tmp_path), offline=True)
        try:
            trainer = quiet_trainer(max_epochs=1, logger=logger, default_root_dir=str(tmp_path))
            trainer.fit(ToyNet(Fixed(weights)), toy_loader(64))
            runs[logger.version] = weights
        finally:
            wandb.finish()
    assert len(runs) == 2 and not (tmp_path / "loss_weights.csv").exists()
    for run_id, weights in runs.items():
        with open(tmp_path / "weights" / run_id / "loss_weights.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert [[float(v) for v in row[2:]] for row in rows[1:]] == [pytest.approx(weights)] * 5, rows


class AlphaStepsEveryOtherBatch(TwoOptimizers):
    """Manual optimization: the network steps every batch, alpha's optimizer every other one."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        first, second = self.optimizers()  # type: ignore[misc]
        loss = MultiTaskMixin.training_step(self, batch, batch_idx)
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        first.step()
        if batch_idx % 2 == 1:
            second.step()
        return loss


def test_manual_optimization_projects_once_per_step_of_alphas_optimizer(tmp_path: Path) -> None:
    """Not again after a batch where alpha's optimizer did not step: in bfloat16 the projection of a
    point on the simplex is another point, and the path left a plain replay's."""
    model = AlphaStepsEveryOtherBatch(CountedLearnable(), tasks=("cls", "reg", "aux"))
    quiet_trainer(max_epochs=1, default_root_dir=str(tmp_path)).fit(model, toy_loader(n=8 * 8, batch_size=8))
    assert model.weighting.projections == 4  # 8 batches, alpha stepped in 4


class OptimizerByName(ToyNet):
    def __init__(self, weighting: Weighting, **kw: Any) -> None:
        super().__init__(weighting, **kw)
        self.optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam

    def configure_optimizers(self) -> Any:
        return self.optimizer_class(self.parameters(), lr=0.5)


class SwitchToSGD(pl.Callback):
    """Replaces the optimizer at epoch 1 (an Adam to SGD switch), after the Callback hooked the first."""

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == 1:
            pl_module.optimizer_class = torch.optim.SGD
            trainer.strategy.setup_optimizers(trainer)


def test_weights_stepped_by_an_optimizer_set_up_during_the_fit_are_constrained(tmp_path: Path) -> None:
    """The step hook is on the first optimizer: the new one's steps went unconstrained (the weights
    summed to -8.9 at the end); the call after the batch constrains what no hook did."""
    model = OptimizerByName(CountedLearnable(), tasks=("cls", "reg", "aux"))
    trainer = quiet_trainer(max_epochs=2, callbacks=[SwitchToSGD()], default_root_dir=str(tmp_path))
    trainer.fit(model, toy_loader(n=64))
    assert isinstance(trainer.optimizers[0], torch.optim.SGD) and trainer.global_step == 8
    alpha = model.weighting.alpha.detach()
    assert (alpha >= 0).all() and abs(float(alpha.sum()) - 1.0) < 1e-6, alpha
    assert model.weighting.projections == 8  # one a step, the hook's or the batch end's


def _simplex_by_sorting(v: list[float]) -> list[float]:
    """Euclidean projection onto the simplex in float64 (Held et al.): w = max(v - theta, 0)."""
    u = sorted(v, reverse=True)
    total, theta = 0.0, 0.0
    for i, value in enumerate(u, start=1):
        total += value
        if value - (total - 1.0) / i > 0:
            theta = (total - 1.0) / i
    return [max(x - theta, 0.0) for x in v]


class LossesSeen(ToyNet):
    """ToyNet that keeps each training step's task losses and the weights it used."""

    def __init__(self, weighting: Weighting, **kw: Any) -> None:
        super().__init__(weighting, **kw)
        self.seen: list[tuple[list[float], list[float]]] = []

    def task_losses(self, outputs: Any, batch: Any) -> Tensor:
        losses = super().task_losses(outputs, batch)
        if self.training:
            self.seen.append((losses.detach().tolist(), self.weighting.alpha.detach().tolist()))
        return losses


def test_learnable_k_tasks_follows_a_plain_replay_of_projected_sgd(tmp_path: Path) -> None:
    """With SGD, ∂L/∂w_i = L_i: each step's weights are the float64 projection of the last ones minus
    lr times the losses, once per step, through Lightning's loop and the step hooks."""
    lr = 0.3
    model = LossesSeen(Learnable(), tasks=("cls", "reg", "aux"), lr=lr)
    quiet_trainer(max_steps=12, default_root_dir=str(tmp_path)).fit(model, toy_loader(n=16 * 12))
    assert len(model.seen) == 12
    for (losses, used), (_, next_used) in itertools.pairwise(model.seen):
        expected = _simplex_by_sorting([w - lr * loss for w, loss in zip(used, losses, strict=True)])
        assert next_used == pytest.approx(expected, abs=2e-6)
