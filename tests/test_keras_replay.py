"""``Learnable`` is the Keras recipe, step for step: a plain-PyTorch replay of it gives the same
alpha at every step and the same final parameters, and alpha runs to a bound as documented."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_multiloss import LossWeightingCallback
from lightning_multiloss.weighting import Learnable
from tests._models import ToyNet, quiet_trainer, toy_loader

EPOCHS = 5  # 4 batches per epoch: 20 optimizer steps


def keras_replay(model: ToyNet, optimizer_name: str, lr: float) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The recipe in plain PyTorch from ``model``'s initial weights: the alpha each step used, the final weights."""
    trunk, heads = copy.deepcopy(model.trunk), copy.deepcopy(model.heads)
    alpha = model.weighting.alpha.detach().clone().requires_grad_(True)
    params = [*trunk.parameters(), *heads.parameters(), alpha]
    opt = torch.optim.Adam(params, lr=lr) if optimizer_name == "adam" else torch.optim.SGD(params, lr=lr)
    used = []
    for _ in range(EPOCHS):
        for batch in toy_loader(n=64, batch_size=16):  # shuffle=False: the Trainer's order
            z = trunk(batch["x"])
            l1 = F.cross_entropy(heads["cls"](z), batch["cls"])
            l2 = F.mse_loss(heads["reg"](z), batch["reg"])
            used.append(alpha.item())
            (alpha * l1 + (1 - alpha) * l2).backward()
            opt.step()
            opt.zero_grad()
            with torch.no_grad():
                alpha.clamp_(0.0, 1.0)
    final = {f"trunk.{k}": v for k, v in trunk.state_dict().items()}
    final.update({f"heads.{k}": v for k, v in heads.state_dict().items()})
    final["weighting.alpha"] = alpha.detach()
    return used, final


@pytest.mark.slow
@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.1), ("adam", 0.1)])
def test_learnable_is_the_keras_recipe(
    tmp_path: Path, optimizer: str, lr: float, caplog: pytest.LogCaptureFixture
) -> None:
    model = ToyNet(Learnable(check_every=1), lr=lr, optimizer=optimizer)
    used, final = keras_replay(model, optimizer, lr)

    # The recipe's point: alpha runs to a bound (here 1: the regression loss stays the larger one).
    first_bound = next((i for i, a in enumerate(used) if a in (0.0, 1.0)), None)
    assert first_bound is not None and first_bound < len(used) - 2, f"alpha never reached a bound: {used}"
    assert used[-1] in (0.0, 1.0)

    recorder = LossWeightingCallback(every_n_steps=1)
    trainer = quiet_trainer(max_epochs=EPOCHS, callbacks=[recorder], default_root_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        trainer.fit(model, toy_loader(n=64, batch_size=16))
    assert trainer.global_step == len(used) == 4 * EPOCHS

    assert recorder.steps == list(range(1, len(used) + 1))
    got = torch.tensor(recorder.weights, dtype=torch.float64)
    torch.testing.assert_close(got[:, 0], torch.tensor(used, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(got[:, 1], 1 - torch.tensor(used, dtype=torch.float64), rtol=0, atol=1e-6)
    state = {k: v for k, v in model.state_dict().items() if k not in model.MULTITASK_OPTIONAL_STATE}  # logging sums
    assert set(state) == set(final)
    for key, value in final.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6, msg=f"{key} differs from the replay")

    # The warning, once, naming the step at which alpha first sat on the bound (used[k] is the
    # alpha of step k + 1, i.e. the value after k clipped steps).
    warnings = [r for r in caplog.records if "reached a bound" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert warnings[0].levelno == logging.WARNING
    assert f"at optimizer step {first_bound} (seen at the check of step {first_bound})" in warnings[0].getMessage()
