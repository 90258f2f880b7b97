"""The planned length of training, checked schedules, and reading a strategy's current weights."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from lightning_multiloss.callback import LossWeightingCallback
from lightning_multiloss.schedules import Linear
from lightning_multiloss.weighting import (
    WEIGHTINGS,
    Fixed,
    GradientWeighting,
    Learnable,
    Scheduled,
    Uncertainty,
    create_weighting,
)
from tests._models import ToyNet, quiet_trainer, toy_loader

STEPS_PER_EPOCH = 4  # 64 samples in batches of 16


def recorded_alpha_after_resume(tmp_path: Path, replan: bool, caplog: pytest.LogCaptureFixture) -> list[float]:
    """alpha = Linear(1 -> 0) over the fraction of training: 2 epochs, then resumed to 4 epochs."""
    model = ToyNet(Scheduled(Linear(1.0, 0.0, duration=1.0), unit="fraction"))
    first = quiet_trainer(max_epochs=2, callbacks=[LossWeightingCallback()], default_root_dir=tmp_path)
    first.fit(model, toy_loader(n=64, batch_size=16))
    checkpoint = tmp_path / "half.ckpt"
    first.save_checkpoint(checkpoint)
    callback = LossWeightingCallback(replan_on_resume=replan)
    second = quiet_trainer(max_epochs=4, callbacks=[callback], default_root_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        second.fit(
            ToyNet(Scheduled(Linear(1.0, 0.0, duration=1.0), unit="fraction")),
            toy_loader(n=64, batch_size=16),
            ckpt_path=checkpoint,
        )
    return [row[0] for row in callback.weights]


def test_a_resumed_run_keeps_the_planned_length(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    alphas = recorded_alpha_after_resume(tmp_path, replan=False, caplog=caplog)
    planned = 2 * STEPS_PER_EPOCH
    # Steps 1..8 were planned over 8 steps: alpha = 1 - (s - 1)/8; the resumed steps continue the
    # same plan, past its end, where the schedule holds 0: no jump back up.
    expected = [max(0.0, 1.0 - (s - 1) / planned) for s in range(1, 4 * STEPS_PER_EPOCH + 1)]
    assert alphas == pytest.approx(expected, abs=1e-6)
    messages = [r.getMessage() for r in caplog.records if "planned" in r.getMessage()]
    assert len(messages) == 1 and "started with 8 optimizer steps planned, the resumed Trainer plans 16" in messages[0]


def test_replan_on_resume_plans_anew(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    alphas = recorded_alpha_after_resume(tmp_path, replan=True, caplog=caplog)
    first = [1.0 - (s - 1) / 8 for s in range(1, 9)]
    resumed = [1.0 - (s - 1) / 16 for s in range(9, 17)]  # the new plan: a jump at step 9
    assert alphas == pytest.approx(first + resumed, abs=1e-6)
    assert any("follow the new plan of 16 steps" in r.getMessage() for r in caplog.records)


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
    with pytest.warns(UserWarning, match=rf"weighting '{name}' with a single task \('only'\): there is nothing"):
        weighting.bind(["only"])
