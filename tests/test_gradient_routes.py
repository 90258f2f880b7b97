"""Gradient-level strategies inside Lightning's training step: the Gramian on both routes, the
steps against a plain-PyTorch replay (accumulation, clipping), bf16-mixed, checkpoint resume,
GradDrop, the error messages, and DDP exactness (one 2-process launch).

Every expected value is computed here independently: per-task gradients by separate autograd
calls on fresh forward passes, updates by a hand-written SGD loop.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_multiloss import MultiLossError, MultiTaskMixin, NonFiniteLossError, Task, gradients
from lightning_multiloss.gradients import (
    find_shared_parameters,
    jacobian_mode,
    parameter_gradients,
    parameter_route_gradients,
    representation_route_gradients,
    set_jacobian_mode,
)
from lightning_multiloss.weighting import (
    WEIGHTINGS,
    Fixed,
    GradDrop,
    GramianWeighting,
    Progress,
    Weighting,
    create_weighting,
)
from lightning_multiloss.weighting.graddrop import graddrop_gradient
from tests._ddp import run_ddp_script
from tests._models import HEAD_SIZES, ToyNet, assert_params_close, quiet_trainer, toy_loader

TASK_LOSS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cls": F.cross_entropy,
    "reg": F.mse_loss,
    "aux": F.mse_loss,
}


# -- test strategies (not registered) ------------------------------------------------------
def mgda2(gramian: Tensor) -> Tensor:
    """MGDA for two tasks in closed form: γ = clip((g₂−g₁)·g₂ / ‖g₁−g₂‖², 0, 1), w = [γ, 1−γ]."""
    g11, g12, g22 = gramian[0, 0], gramian[0, 1], gramian[1, 1]
    gamma = ((g22 - g12) / (g11 + g22 - 2 * g12)).clamp(0.0, 1.0)
    return torch.stack([gamma, 1.0 - gamma])


class MGDA2(GramianWeighting):
    name: ClassVar[str] = "test-mgda2"
    min_tasks: ClassVar[int] = 2
    max_tasks: ClassVar[int | None] = 2

    def compute_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        return mgda2(gramian)


class LossOverNorm(GramianWeighting):
    """w ∝ L_i / (1 + ‖g_i‖), summing to K: depends on the Gramian's scale and on the losses
    (catches a wrong DDP factor on either)."""

    name: ClassVar[str] = "test-loss-over-norm"

    def compute_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        return loss_over_norm(gramian.diagonal().sqrt(), losses)


def loss_over_norm(norms: Tensor, losses: Tensor) -> Tensor:
    raw = losses / (1.0 + norms)
    return raw * len(raw) / raw.sum()


class RepNet(ToyNet):
    """ToyNet that marks its trunk output as the shared representation."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.shared_representation(self.trunk(x))
        return {name: head(z) for name, head in self.heads.items()}


def registered_gradient_strategies() -> list[str]:
    return sorted(name for name, cls in WEIGHTINGS.items() if issubclass(cls, GramianWeighting))


def make_strategy(name: str, route: str, ddp: str = "exact") -> Weighting:
    """A test strategy or a registered one, by name."""
    if name == "test-mgda2":
        return MGDA2(route=route, ddp=ddp)  # type: ignore[arg-type]
    if name == "test-loss-over-norm":
        return LossOverNorm(route=route, ddp=ddp)  # type: ignore[arg-type]
    if name == "graddrop":
        return GradDrop(seed=3, ddp=ddp)  # type: ignore[arg-type]
    return WEIGHTINGS[name](route=route, ddp=ddp)  # type: ignore[call-arg]


def tasks_for(name: str) -> tuple[str, ...]:
    cls = type(make_strategy(name, "representation"))
    if cls.max_tasks is not None and cls.max_tasks < 3:
        return ("cls", "reg")
    return ("cls", "reg", "aux")


def is_deterministic(name: str, tasks: Sequence[str]) -> bool:
    """Whether two copies of the strategy give the same weights whatever the global RNG does."""
    a = make_strategy(name, "parameters")
    a.bind(tasks)
    b = copy.deepcopy(a)
    rows = torch.tensor([[1.0, 2.0, -0.5], [-1.5, 0.5, 1.0], [0.3, -0.2, 2.0]])[: len(tasks)]
    gramian, losses = rows @ rows.T, torch.tensor([0.7, 1.3, 0.4])[: len(tasks)]
    assert isinstance(a, GramianWeighting) and isinstance(b, GramianWeighting)
    torch.manual_seed(1)
    wa = a.weights_from_gramian(gramian, losses)
    torch.manual_seed(2)
    wb = b.weights_from_gramian(gramian, losses)
    return bool(torch.equal(wa, wb))


# -- independent computations ----------------------------------------------------------------
def plain_losses(model: ToyNet, batch: dict[str, Tensor], z: Tensor | None = None) -> Tensor:
    z = model.trunk(batch["x"]) if z is None else z
    return torch.stack([TASK_LOSS[n](model.heads[n](z), batch[n]) for n in model.heads])


def brute_task_gradients(model: ToyNet, batch: dict[str, Tensor], route: str) -> Tensor:
    """(K, ...) per-task gradients, each from its own fresh forward pass and autograd call."""
    rows = []
    for n in model.heads:
        if route == "representation":
            z = model.trunk(batch["x"]).detach().requires_grad_(True)
            (g,) = torch.autograd.grad(TASK_LOSS[n](model.heads[n](z), batch[n]), z)
            rows.append(g)
        else:
            loss = TASK_LOSS[n](model.heads[n](model.trunk(batch["x"])), batch[n])
            grads = torch.autograd.grad(loss, list(model.trunk.parameters()))
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def brute_gramian(model: ToyNet, batch: dict[str, Tensor], route: str) -> Tensor:
    rows = brute_task_gradients(model, batch, route).reshape(len(model.heads), -1).double()
    return (rows @ rows.T).float()


def replay(
    model: ToyNet,
    batches: Sequence[dict[str, Tensor]],
    route: str,
    *,
    lr: float,
    accumulate: int = 1,
    clip: float | None = None,
) -> dict[str, Tensor]:
    """Plain-PyTorch SGD: w from the brute-force Gramian, backward of Σ w.detach()·L."""
    model = copy.deepcopy(model)
    weighting = model.weighting
    assert isinstance(weighting, GramianWeighting)
    weighting.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    steps = len(batches) // accumulate
    for step in range(steps):
        weighting.set_progress(Progress(step, 0, steps))
        optimizer.zero_grad()
        for batch in batches[step * accumulate : (step + 1) * accumulate]:
            gramian = brute_gramian(model, batch, route)
            losses = plain_losses(model, batch)
            w = weighting.weights_from_gramian(gramian, losses.detach()).detach()
            ((w * losses).sum() / accumulate).backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        weighting.after_optimizer_step()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def params_of(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def net_for(route: str, weighting: Weighting, tasks: Sequence[str] = ("cls", "reg"), **kw: Any) -> ToyNet:
    cls = RepNet if route == "representation" else ToyNet
    return cls(weighting, tasks=tasks, lr=kw.pop("lr", 0.1), **kw)


def fit(model: pl.LightningModule, tmp_path: Path, batches: int, batch_size: int = 16, **trainer_kw: Any) -> pl.Trainer:
    ckpt_path = trainer_kw.pop("ckpt_path", None)
    trainer = quiet_trainer(default_root_dir=str(tmp_path), **trainer_kw)
    trainer.fit(model, toy_loader(n=batches * batch_size, batch_size=batch_size), ckpt_path=ckpt_path)
    return trainer


def batches_of(count: int, batch_size: int = 16) -> list[dict[str, Tensor]]:
    return list(toy_loader(n=count * batch_size, batch_size=batch_size))


# -- the Gramian on each route ---------------------------------------------------------------
def test_representation_gramian_equals_brute_force() -> None:
    model = RepNet(LossOverNorm(route="representation"), tasks=("cls", "reg", "aux"))
    batch = batches_of(1)[0]
    z = model.trunk(batch["x"])
    losses = plain_losses(model, batch, z)
    taken = representation_route_gradients(losses, ddp="exact", representation=z)
    gramian, detached = taken.gramian, taken.losses
    torch.testing.assert_close(gramian, brute_gramian(model, batch, "representation"), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(detached, losses.detach())
    assert not detached.requires_grad
    # Nothing was accumulated into .grad and the graph is still usable.
    assert all(p.grad is None for p in model.parameters())
    losses.sum().backward()


def test_parameter_gramian_equals_jjt_and_shared_parameters_are_the_trunk() -> None:
    model = ToyNet(LossOverNorm(), tasks=("cls", "reg", "aux"))
    batch = batches_of(1)[0]
    losses = plain_losses(model, batch)
    named = [(n, p) for n, p in model.named_parameters() if not n.startswith("weighting.")]
    shared = find_shared_parameters(losses, named)
    assert [id(p) for p in shared] == [id(p) for p in model.trunk.parameters()]
    gramian = parameter_route_gradients(losses, ddp="exact", parameters=shared).gramian
    torch.testing.assert_close(gramian, brute_gramian(model, batch, "parameters"), rtol=1e-5, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("route", ["parameters", "representation"])
def test_the_returned_loss_refuses_a_second_backward_by_name(route: str) -> None:
    # Its gradients come from this step's per-task passes, freed by the first backward: a second
    # one must say so, not fail inside autograd on a count of gradients.
    model = net_for(route, MGDA2(route=route))
    loss = model.training_step(batches_of(1)[0], 0)
    loss.backward(retain_graph=True)
    assert all(p.grad is not None for p in model.trunk.parameters())
    with pytest.raises(MultiLossError, match="cannot be backpropagated twice"):
        loss.backward()


class InPlaceBackward(torch.autograd.Function):
    """Doubles its input; the backward writes into a fresh unbatched tensor in place, which a
    vectorised backward cannot do (as some custom operators do)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.shape = x.shape
        return 2.0 * x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        out = torch.zeros(ctx.shape, dtype=grad.dtype)
        out += 2.0 * grad
        return out


class ConvHeads(nn.Module):
    """Conv trunk (conv, max-pool, linear), a layer only tasks a and b use, and three heads."""

    def __init__(self, custom_op: bool = False) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 12), nn.Tanh()
        )
        self.ab = nn.Linear(12, 12)
        self.heads = nn.ModuleDict({"a": nn.Linear(12, 1), "b": nn.Linear(12, 3), "c": nn.Linear(12, 2)})
        self.custom_op = custom_op

    def task_losses(self, x: Tensor, targets: dict[str, Tensor], only: str | None = None) -> Tensor:
        z = self.trunk(x)
        if self.custom_op:
            z = InPlaceBackward.apply(z)
        losses = []
        for name, head in self.heads.items():
            if only not in (None, name):
                continue
            h = torch.relu(self.ab(z)) if name in ("a", "b") else z
            losses.append(F.mse_loss(head(h), targets[name]))
        return torch.stack(losses)


def conv_batch() -> tuple[Tensor, dict[str, Tensor]]:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 1, 8, 8, generator=g)
    return x, {name: torch.randn(6, size, generator=g) for name, size in (("a", 1), ("b", 3), ("c", 2))}


def per_task_jacobian(model: ConvHeads, x: Tensor, targets: dict[str, Tensor], params: list[nn.Parameter]) -> Tensor:
    """Each row from its own forward pass and its own autograd call; zeros where a task does not reach."""
    rows = []
    for name in model.heads:
        (loss,) = model.task_losses(x, targets, only=name)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        pieces = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
        rows.append(torch.cat([piece.reshape(-1) for piece in pieces]))
    return torch.stack(rows)


@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_parameter_jacobian_equals_per_task_autograd(mode: str) -> None:
    model = ConvHeads()
    x, targets = conv_batch()
    params = [*model.trunk.parameters(), *model.ab.parameters()]  # ab: unused by task c (zero row piece)
    losses = model.task_losses(x, targets)
    jacobian = parameter_gradients(losses, params, mode=mode)  # type: ignore[arg-type]
    expected = per_task_jacobian(model, x, targets, params)
    assert jacobian.shape == expected.shape == (3, sum(p.numel() for p in params))
    torch.testing.assert_close(jacobian, expected, rtol=1e-6, atol=1e-7)
    assert float(jacobian[2, -sum(p.numel() for p in model.ab.parameters()) :].abs().max()) == 0.0
    assert all(p.grad is None for p in model.parameters())
    losses.sum().backward()  # the graph is kept for Lightning's backward


def test_batched_jacobian_falls_back_to_the_loop_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gradients, "_batching_failure", None)
    model = ConvHeads(custom_op=True)
    x, targets = conv_batch()
    params = list(model.trunk.parameters())
    expected = per_task_jacobian(model, x, targets, params)
    with pytest.warns(RuntimeWarning, match="batched Jacobian of the parameter route failed .*one backward pass per"):
        first = parameter_gradients(model.task_losses(x, targets), params, mode="batched")
    torch.testing.assert_close(first, expected, rtol=1e-6, atol=1e-7)
    assert gradients._batching_failure is not None and "vmap" in gradients._batching_failure
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered: no second try, no second warning
        second = parameter_gradients(model.task_losses(x, targets), params, mode="batched")
    torch.testing.assert_close(second, expected, rtol=1e-6, atol=1e-7)


def test_batched_jacobian_mode_gives_the_same_lightning_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gradients, "_batching_failure", None)
    calls: list[int] = []
    batched_jacobian = gradients._batched_jacobian

    def counted(losses: Tensor, parameters: Sequence[Tensor], task_parameters: Any) -> Any:
        calls.append(losses.numel())
        return batched_jacobian(losses, parameters, task_parameters)

    monkeypatch.setattr(gradients, "_batched_jacobian", counted)
    assert jacobian_mode() == "loop"
    with pytest.raises(MultiLossError, match=r"jacobian mode must be one of \['loop', 'batched'\], got 'vmap'"):
        set_jacobian_mode("vmap")  # type: ignore[arg-type]
    looped = net_for("parameters", WEIGHTINGS["upgrad"](route="parameters"), ("cls", "reg", "aux"))
    batched = copy.deepcopy(looped)
    before = copy.deepcopy(looped)
    fit(looped, tmp_path / "loop", batches=3, max_steps=3)
    set_jacobian_mode("batched")
    try:
        fit(batched, tmp_path / "batched", batches=3, max_steps=3)
    finally:
        set_jacobian_mode("loop")
    assert calls == [3, 3, 3] and gradients._batching_failure is None  # the batched call did the work
    assert_params_close(params_of(batched), params_of(looped), atol=1e-6, what="batched vs loop")
    want = replay(before, batches_of(3), "parameters", lr=0.1)
    assert_params_close(params_of(batched), want, atol=1e-5, what="batched vs replay")


def test_mgda2_oracle_matches_published_example() -> None:
    jac = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    w = mgda2(jac @ jac.T)
    torch.testing.assert_close(w, torch.tensor([0.6, 0.4]))
    torch.testing.assert_close(w @ jac, torch.tensor([0.0, 1.0, 1.0]))


# -- Lightning steps against the replay ------------------------------------------------------
STRATEGIES = ["test-mgda2", "test-loss-over-norm", *registered_gradient_strategies()]


@pytest.mark.parametrize("route", ["representation", "parameters"])
def test_lightning_steps_equal_replay_for_every_strategy(tmp_path: Path, route: str) -> None:
    """Three Lightning SGD steps equal the replay, for the test strategies and every registered one."""
    checked, nondeterministic = [], []
    for name in STRATEGIES:
        tasks = tasks_for(name)
        model = net_for(route, make_strategy(name, route), tasks)
        before = copy.deepcopy(model)
        fit(model, tmp_path / name, batches=3, max_steps=3)
        got = params_of(model)
        assert all(torch.isfinite(v).all() for v in got.values()), name
        if not is_deterministic(name, tasks):
            nondeterministic.append(name)
            continue
        want = replay(before, batches_of(3), route, lr=0.1)
        assert_params_close(got, want, atol=1e-5, what=f"{name}/{route}")
        weighting = model.weighting
        assert isinstance(weighting, GramianWeighting)
        # The logged weights are the last training step's.
        assert model.weighting.last_weights is not None
        torch.testing.assert_close(weighting.last_weights, model.weighting.last_weights)
        checked.append(name)
    assert "test-mgda2" in checked and "test-loss-over-norm" in checked, checked
    assert not nondeterministic, f"weights depend on the global RNG: {nondeterministic}"


def test_parameter_route_moves_differently_from_representation_route(tmp_path: Path) -> None:
    """The two routes give different Gramians, hence different updates (the route is really used)."""
    a = net_for("representation", LossOverNorm(route="representation"))
    b = net_for("parameters", LossOverNorm(route="parameters"))
    fit(a, tmp_path / "a", batches=2, max_steps=2)
    fit(b, tmp_path / "b", batches=2, max_steps=2)
    diff = max((params_of(a)[k] - params_of(b)[k]).abs().max().item() for k in params_of(a))
    assert diff > 1e-4


def test_accumulation_and_clipping_equal_replay(tmp_path: Path) -> None:
    # accumulate_grad_batches=2: each micro-batch has its own weights; Lightning averages.
    model = net_for("representation", LossOverNorm(route="representation"), ("cls", "reg", "aux"))
    before = copy.deepcopy(model)
    trainer = fit(model, tmp_path / "acc", batches=4, max_steps=2, accumulate_grad_batches=2)
    assert trainer.global_step == 2
    want = replay(before, batches_of(4), "representation", lr=0.1, accumulate=2)
    assert_params_close(params_of(model), want, atol=1e-5, what="accumulation")
    # Clipping by norm, on the parameter route: the replay clips the same way.
    model = net_for("parameters", MGDA2(route="parameters"), lr=0.5)
    before = copy.deepcopy(model)
    fit(model, tmp_path / "clip", batches=3, max_steps=3, gradient_clip_val=0.05)
    want = replay(before, batches_of(3), "parameters", lr=0.5, clip=0.05)
    unclipped = replay(before, batches_of(3), "parameters", lr=0.5)
    assert_params_close(params_of(model), want, atol=1e-5, what="clipping")
    assert max((want[k] - unclipped[k]).abs().max().item() for k in want) > 1e-3  # clipping did act


def test_bf16_mixed_runs_close_to_fp32(tmp_path: Path) -> None:
    for route in ("representation", "parameters"):
        full = net_for(route, LossOverNorm(route=route), ("cls", "reg", "aux"))
        half = copy.deepcopy(full)
        fit(full, tmp_path / f"fp32-{route}", batches=4, max_steps=4)
        fit(half, tmp_path / f"bf16-{route}", batches=4, max_steps=4, precision="bf16-mixed")
        got, want = params_of(half), params_of(full)
        assert all(torch.isfinite(v).all() for v in got.values())
        assert half.weighting.last_weights is not None and torch.isfinite(half.weighting.last_weights).all()
        assert_params_close(got, want, atol=2e-2, what=f"bf16 {route}")


@pytest.mark.parametrize("route", ["representation", "parameters"])
def test_bf16_mixed_takes_the_gramian_and_the_weights_in_float32(
    tmp_path: Path, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Autocast runs matrix products in bfloat16: a Gramian of three significant digits, and
    # bfloat16 weights, unless the route takes the product outside it.
    from lightning_multiloss.weighting import _gramian

    name = "parameter_route_gradients" if route == "parameters" else "representation_route_gradients"
    real = getattr(_gramian, name)
    taken: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        taken.append(real(*args, **kwargs))
        return taken[-1]

    monkeypatch.setattr(_gramian, name, spy)
    model = net_for(route, LossOverNorm(route=route), ("cls", "reg", "aux"))
    fit(model, tmp_path, batches=3, max_steps=3, precision="bf16-mixed")
    assert len(taken) == 3
    for shared in taken:
        assert shared.gramian.dtype == torch.float32
        rows = shared.jacobian.double()  # float32 rows (parameters) or bfloat16 ones (representation)
        exact = rows @ rows.T
        torch.testing.assert_close(shared.gramian.double(), exact, rtol=1e-5, atol=1e-6 * exact.abs().max().item())
    assert model.weighting.last_weights.dtype == torch.float32


def test_bf16_mixed_representation_route_applies_the_float32_weights(tmp_path: Path) -> None:
    # The weights were cast to the rows' dtype (bfloat16 at the representation) before the heads'
    # gradients were scaled by them: task cls's head moved by bf16(w) = 0.56640625 times its
    # gradient where w = 0.56827927 was computed and logged.
    model = net_for("representation", create_weighting("mgda", route="representation"), ("cls", "reg", "aux"), lr=1.0)
    head = copy.deepcopy(model.heads["cls"])
    before = copy.deepcopy(model)
    fit(model, tmp_path, batches=1, max_steps=1, precision="bf16-mixed")
    batch = batches_of(1)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(head(before.trunk(batch["x"])), batch["cls"])
    (gradient,) = torch.autograd.grad(loss, head.weight)
    applied = (head.weight - model.heads["cls"].weight).detach() / gradient  # SGD, lr 1
    weight = float(model.weighting.last_weights[0])
    assert float(applied.median()) == pytest.approx(weight, rel=1e-5)
    assert abs(weight - float(torch.tensor(weight).bfloat16())) > 1e-4  # the rounded one is told apart


@pytest.mark.parametrize("strategy", ["test-loss-over-norm", "graddrop"])
def test_checkpoint_resume_equals_straight_run(tmp_path: Path, strategy: str) -> None:
    route = "representation"
    straight = net_for(route, make_strategy(strategy, route))
    first = copy.deepcopy(straight)
    fit(straight, tmp_path / "straight", batches=2, max_epochs=2)
    trainer = fit(first, tmp_path / "first", batches=2, max_epochs=1)
    path = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # plain values only
    state = checkpoint["state_dict"]
    if strategy == "graddrop":
        assert int(state["weighting.draws"]) == 2
    else:
        torch.testing.assert_close(state["weighting.last_weights"], first.weighting.last_weights)
    resumed = net_for(route, make_strategy(strategy, route), seed=7)
    fit(resumed, tmp_path / "resumed", batches=2, max_epochs=2, ckpt_path=str(path))
    assert_params_close(params_of(resumed), params_of(straight), atol=1e-7, what="resume")


def test_evaluation_uses_last_training_weights_without_changing_state(tmp_path: Path) -> None:
    model = net_for("representation", LossOverNorm(route="representation"))
    fit(model, tmp_path, batches=2, max_steps=2)
    weighting = model.weighting
    assert isinstance(weighting, GramianWeighting)
    last = weighting.last_weights.clone()
    batch = batches_of(1)[0]
    trainer = quiet_trainer(default_root_dir=str(tmp_path))
    metrics = trainer.validate(model, toy_loader(n=16, batch_size=16), verbose=False)[0]
    with torch.no_grad():
        losses = plain_losses(model, batch)
    assert metrics["val/loss"] == pytest.approx(float((last * losses).sum()), rel=1e-5)
    for i, name in enumerate(model.heads):
        assert metrics[f"val/weight/{name}"] == pytest.approx(float(last[i]), rel=1e-6)
    torch.testing.assert_close(weighting.last_weights, last)


# -- GradDrop --------------------------------------------------------------------------------
def graddrop_oracle(task_grads: Tensor, uniform: Tensor) -> Tensor:
    """GradDrop written coordinate by coordinate from the paper's formula."""
    k, b = task_grads.shape[:2]
    flat = task_grads.reshape(k, b, -1)
    u = uniform.reshape(-1)
    out = torch.zeros(b, flat.shape[2], dtype=task_grads.dtype)
    for c in range(flat.shape[2]):
        sums = [float(flat[i, :, c].sum()) for i in range(k)]
        denominator = sum(abs(s) for s in sums)
        purity = 0.5 * (1 + sum(sums) / denominator) if denominator > 0 else 0.5
        for i in range(k):
            keep = (purity > u[c] and sums[i] > 0) or (purity < u[c] and sums[i] < 0) or sums[i] == 0
            if keep:
                out[:, c] += flat[i, :, c]
    return out.reshape(task_grads.shape[1:])


def test_graddrop_gradient_matches_oracle_and_sum_without_conflict() -> None:
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(3, 5, 4, 2, generator=g)
    uniform = torch.rand(4, 2, generator=g)
    torch.testing.assert_close(graddrop_gradient(grads, uniform), graddrop_oracle(grads, uniform))
    positive = grads.abs() * torch.tensor([1.0, -1.0]).view(1, 1, 1, 2)  # same sign in every task
    torch.testing.assert_close(graddrop_gradient(positive, uniform), positive.sum(0))


def test_graddrop_keeps_a_float64_model_in_float64() -> None:
    # The per-task gradients at z were cast to float32: errors of ~6e-6 in a float64 model.
    g = torch.Generator().manual_seed(1)
    mixers = torch.randn(3, 5, 5, generator=g, dtype=torch.float64)
    z = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    losses = torch.stack([((z @ mixers[i]) ** 2).sum() * (i + 1) - 3 * (z @ mixers[i]).sum() for i in range(3)])
    strategy = GradDrop(seed=2)
    strategy.bind(["a", "b", "c"])
    per_task = torch.stack([torch.autograd.grad(losses[i], z, retain_graph=True)[0] for i in range(3)])
    expected = graddrop_oracle(per_task, strategy.uniform((5,), 0).to(torch.float64))
    got = torch.autograd.grad(strategy(losses, representation=z).loss, z)[0]
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


def test_graddrop_draws_the_same_sequence_at_every_default_dtype() -> None:
    # precision="64-true" sets torch's default dtype to float64 in the training step: the seeded
    # draws were another sequence there (0.704 for 0.963), and a resume at another precision
    # continued a different one.
    strategy = GradDrop(seed=3)
    float32_draws = strategy.uniform((6,), 4)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        float64_default_draws = strategy.uniform((6,), 4)
    finally:
        torch.set_default_dtype(before)
    assert float32_draws.dtype == float64_default_draws.dtype == torch.float32
    assert torch.equal(float32_draws, float64_default_draws)


def test_graddrop_lightning_steps_equal_replay(tmp_path: Path) -> None:
    model = RepNet(GradDrop(seed=5), tasks=("cls", "reg", "aux"), lr=0.1)
    before = copy.deepcopy(model)
    fit(model, tmp_path, batches=3, max_steps=3)
    assert model.weighting.last_weights is not None
    torch.testing.assert_close(model.weighting.last_weights, torch.ones(3))
    # Replay: trunk gets J_zᵀ g̃ (g̃ from the oracle), each head its own task's gradient.
    ref = copy.deepcopy(before)
    draws = GradDrop(seed=5)
    optimizer = torch.optim.SGD(ref.parameters(), lr=0.1)
    for step, batch in enumerate(batches_of(3)):
        optimizer.zero_grad()
        grads = brute_task_gradients(ref, batch, "representation")
        dropped = graddrop_oracle(grads, draws.uniform(grads.shape[2:], step))
        z = ref.trunk(batch["x"])
        z.backward(dropped)
        plain_losses(ref, batch, z.detach()).sum().backward()
        optimizer.step()
    assert_params_close(params_of(model), params_of(ref), atol=1e-5, what="graddrop")
    # Conflicts did occur, so GradDrop differed from the plain sum.
    plain = copy.deepcopy(before)
    plain.weighting = Fixed()
    plain.weighting.bind(["cls", "reg", "aux"])
    fit(plain, tmp_path / "plain", batches=3, max_steps=3)
    assert max((params_of(plain)[k] - params_of(model)[k]).abs().max().item() for k in params_of(plain)) > 1e-4


class NoConflictNet(MultiTaskMixin, pl.LightningModule):
    """Heads are positive linear maps and every loss is the mean head output: all task
    gradients on the representation are positive, so they never conflict."""

    def __init__(self, weighting: Weighting, k: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.heads = nn.ModuleDict({f"t{i}": nn.Linear(16, 1, bias=False) for i in range(k)})
        with torch.no_grad():
            for head in self.heads.values():
                head.weight.copy_(head.weight.abs() + 0.1)
        tasks = [Task(f"t{i}", lambda out, target: out.mean(), target="x") for i in range(k)]
        self.configure_multitask(tasks, weighting)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.shared_representation(self.trunk(x))
        return {name: head(z) for name, head in self.heads.items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_graddrop_without_conflict_equals_plain_sum(tmp_path: Path) -> None:
    drop, plain = NoConflictNet(GradDrop(seed=1)), NoConflictNet(Fixed())
    fit(drop, tmp_path / "drop", batches=3, max_steps=3)
    fit(plain, tmp_path / "plain", batches=3, max_steps=3)
    assert all((h.weight > 0).all() for h in drop.heads.values())  # still non-conflicting
    assert_params_close(params_of(drop), params_of(plain), atol=1e-7, what="no conflict")


# -- errors ----------------------------------------------------------------------------------
def test_representation_route_without_mark_names_the_call(tmp_path: Path) -> None:
    model = ToyNet(LossOverNorm(route="representation"))  # forward does not mark z
    with pytest.raises(MultiLossError, match=r"test-loss-over-norm.*shared_representation"):
        fit(model, tmp_path, batches=1, max_steps=1)
    with pytest.raises(MultiLossError, match=r"graddrop.*shared_representation"):
        fit(ToyNet(GradDrop()), tmp_path, batches=1, max_steps=1)


def test_gradient_errors_name_strategy_and_fix() -> None:
    w = LossOverNorm(route="parameters")
    w.bind(["a", "b"])
    losses = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(MultiLossError, match=r"test-loss-over-norm.*needs the task gradients"):
        w(losses)
    with pytest.raises(MultiLossError, match=r"test-loss-over-norm.*no shared parameters"):
        w(losses, parameters=[])

    class Bad(GramianWeighting):
        name: ClassVar[str] = "test-bad"

        def compute_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
            return gramian.diagonal() * math.nan

    bad = Bad(route="parameters")
    bad.bind(["a", "b"])
    theta = torch.ones(2, requires_grad=True)
    with pytest.raises(
        NonFiniteLossError, match=r"'test-bad' gave non-finite weight\(s\) \[nan, nan\] from the Gramian"
    ):
        bad(theta * 2.0, parameters=[theta])

    class Short(Bad):
        def compute_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
            return torch.ones(1)

    short = Short(route="parameters")
    short.bind(["a", "b"])
    with pytest.raises(MultiLossError, match=r"must return shape \(2,\), got \(1,\)"):
        short(theta * 2.0, parameters=[theta])
    rep = LossOverNorm(route="representation")
    rep.bind(["a", "b"])
    z = torch.ones(2, 3)  # no grad
    with pytest.raises(MultiLossError, match="does not require grad"):
        rep(torch.stack([z.sum(), z.sum()]), representation=z)
    with pytest.raises(MultiLossError, match=r"graddrop.*ddp must be"):
        GradDrop(ddp="global")  # type: ignore[arg-type]
    with pytest.raises(MultiLossError, match=r"graddrop.*seed must be an int"):
        GradDrop(seed=0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
@pytest.mark.parametrize("route", ["parameters", "representation"])
def test_a_nonfinite_weight_of_a_gramian_strategy_stops_training_naming_the_step(
    tmp_path: Path, route: str, on_nonfinite: str
) -> None:
    """As a loss-level strategy's: a NonFiniteLossError naming the strategy, its weights and the step
    (it was a plain MultiLossError without the step), in either mode (the strategy's failure, not the batch's)."""

    class InfiniteAtStep2(GramianWeighting):
        name: ClassVar[str] = "test-infinite-at-step-2"

        def __init__(self, route: str) -> None:
            super().__init__(route=route)  # type: ignore[arg-type]
            self.solves = 0

        def compute_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
            self.solves += 1
            return torch.tensor([1.0, math.inf if self.solves == 3 else 1.0], dtype=gramian.dtype)

    net = RepNet if route == "representation" else ToyNet
    model = net(InfiniteAtStep2(route), on_nonfinite=on_nonfinite)  # type: ignore[arg-type]
    with pytest.raises(NonFiniteLossError) as raised:
        fit(model, tmp_path, batches=4, max_epochs=1)
    message = str(raised.value)
    assert message.startswith(
        "weighting 'test-infinite-at-step-2' gave non-finite weight(s) [1.0, inf] from the Gramian"
    )
    assert message.endswith(", at train step 2, epoch 0, batch 2")
    assert model.trainer.global_step == 2


def test_parameter_route_without_shared_parameters_says_so(tmp_path: Path) -> None:
    class Separate(ToyNet):
        def forward(self, x: Tensor) -> dict[str, Tensor]:  # the trunk serves one task only: nothing shared
            return {"cls": self.heads["cls"](self.trunk(x)), "reg": self.heads["reg"](x.repeat(1, 2))}

    model = Separate(MGDA2(route="parameters"))
    with pytest.raises(MultiLossError, match=r"test-mgda2.*no trainable parameter is used by two or more"):
        fit(model, tmp_path, batches=1, max_steps=1)
    with pytest.raises(MultiLossError, match="found by autograd on the first training step"):
        ToyNet(MGDA2()).shared_parameters()
    frozen = ToyNet(MGDA2(route="parameters"))  # a shared trunk, frozen: nothing shared to compare
    frozen.trunk.requires_grad_(False)
    with pytest.raises(MultiLossError, match=r"no trainable parameter is used by two .*\(frozen ones are left out\)"):
        fit(frozen, tmp_path / "frozen", batches=1, max_steps=1)


def test_overridden_shared_parameters_are_used(tmp_path: Path) -> None:
    class FirstLayerOnly(ToyNet):
        def shared_parameters(self) -> list[nn.Parameter]:
            return [self.trunk[0].weight]

    model = FirstLayerOnly(LossOverNorm(route="parameters"))
    before = copy.deepcopy(model)
    fit(model, tmp_path, batches=1, max_steps=1)
    batch = batches_of(1)[0]
    rows = []
    for n in before.heads:
        loss = TASK_LOSS[n](before.heads[n](before.trunk(batch["x"])), batch[n])
        rows.append(torch.autograd.grad(loss, before.trunk[0].weight)[0].reshape(-1))
    jac = torch.stack(rows)
    losses = plain_losses(before, batch).detach()
    w = loss_over_norm((jac * jac).sum(1).sqrt(), losses)
    assert model.weighting.last_weights is not None
    torch.testing.assert_close(model.weighting.last_weights, w, rtol=1e-5, atol=1e-7)


# -- the parameter route reuses its Jacobian for the applied gradient ---------------------------
class _CountBackward(torch.autograd.Function):
    """The identity; counts the backward passes that run through it."""

    calls = 0

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        return z.view_as(z)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        _CountBackward.calls += 1
        return grad


class CountingNet(ToyNet):
    """ToyNet with three tasks whose trunk counts the backward passes through it (default shared parameters)."""

    def __init__(self, weighting: Weighting, **kw: Any) -> None:
        super().__init__(weighting, tasks=("cls", "reg", "aux"), lr=0.1, optimizer="adam", **kw)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = _CountBackward.apply(self.trunk(x))
        return {name: head(z) for name, head in self.heads.items()}


class TrunkShared(CountingNet):
    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())


class WeightShared(CountingNet):
    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.trunk[0].weight]  # the trunk's bias, left out, serves every task


COUNTING_NETS = {"default": CountingNet, "trunk": TrunkShared, "weight": WeightShared}


def fit_counting(model: ToyNet, tmp_path: Path, **trainer_kw: Any) -> tuple[list[int], list[float]]:
    """Fit 4 micro-batches; per micro-batch, the backward passes through the trunk from the start
    of its training step to the end of Lightning's backward, and the loss the step returned."""
    passes: list[int] = []
    returned: list[float] = []
    started = [0]
    step = model.training_step

    def counted_step(batch: Any, batch_idx: int) -> Tensor:
        started[0] = _CountBackward.calls
        loss = step(batch, batch_idx)
        returned.append(float(loss.detach()))
        return loss

    model.training_step = counted_step  # type: ignore[method-assign]
    model.on_after_backward = lambda: passes.append(_CountBackward.calls - started[0])  # type: ignore[method-assign]
    fit(model, tmp_path, batches=4, max_epochs=1, **trainer_kw)
    return passes, returned


@pytest.mark.parametrize("strategy", ["test-loss-over-norm", "upgrad", "nash_mtl"])
def test_reused_jacobian_gives_lightnings_update_with_k_backward_passes(tmp_path: Path, strategy: str) -> None:
    """K = 3 backward passes through the trunk per micro-batch instead of 4, and the same
    parameters (Adam, accumulation of 2, clipping) and returned losses as Lightning's own backward."""
    results = {}
    for shared in ("default", "trunk"):
        for reuse in (True, False):
            model = COUNTING_NETS[shared](make_strategy(strategy, "parameters"), reuse_jacobian=reuse)
            passes, returned = fit_counting(
                model, tmp_path / f"{shared}-{reuse}", accumulate_grad_batches=2, gradient_clip_val=0.5
            )
            # After the first step (which also finds, by autograd, which task uses which parameter):
            assert passes[1:] == [3 if reuse else 4] * 3, (shared, reuse, passes)
            results[(shared, reuse)] = (params_of(model), returned)
    want, want_returned = results[("default", False)]
    moved = max(
        (want[k] - v).abs().max().item()
        for k, v in params_of(CountingNet(make_strategy(strategy, "parameters"))).items()
    )
    assert moved > 1e-3  # the steps did move the parameters
    for key, (got, got_returned) in results.items():
        assert_params_close(got, want, atol=1e-6, what=f"{strategy} {key}")
        torch.testing.assert_close(torch.tensor(got_returned), torch.tensor(want_returned), rtol=1e-6, atol=1e-7)


class WithPenalty(TrunkShared):
    """Adds a term of its own to the mixin's loss, through the kept graph (the representation)."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.z = self.trunk(x)
        return {name: head(self.z) for name, head in self.heads.items()}

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss + 0.1 * self.z.pow(2).mean() + 0.01 * self.trunk[0].weight.abs().sum()


def test_a_term_added_to_the_returned_loss_gets_its_own_gradient(tmp_path: Path) -> None:
    """The reused Jacobian gives the task part; the user's own term (through the kept graph and
    on a parameter directly) still backpropagates: the same steps as Lightning's full backward."""
    results = []
    for reuse in (True, False):
        model = WithPenalty(make_strategy("upgrad", "parameters"), reuse_jacobian=reuse)
        fit(model, tmp_path / str(reuse), batches=3, max_epochs=1)
        results.append(params_of(model))
    assert_params_close(results[0], results[1], atol=1e-6, what="penalty")


class Unfreezing(CountingNet):
    """The ``aux`` head and the trunk's first weight are frozen for the first two steps."""

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        frozen = batch_idx < 2
        self.heads["aux"].requires_grad_(not frozen)
        self.trunk[0].weight.requires_grad_(not frozen)


def test_parameters_frozen_then_trained_get_their_gradient(tmp_path: Path) -> None:
    """The tasks' own parameters are found again when the trainable ones change: the same steps as
    Lightning's full backward, and the unfrozen head and trunk weight do train."""
    results = []
    for reuse in (True, False):
        model = Unfreezing(make_strategy("upgrad", "parameters"), reuse_jacobian=reuse)
        start = params_of(model)
        fit(model, tmp_path / str(reuse), batches=4, max_epochs=1)
        results.append(params_of(model))
    assert_params_close(results[0], results[1], atol=1e-6, what="unfreezing")
    for key in ("heads.aux.weight", "trunk.0.weight"):
        assert float((results[0][key] - start[key]).abs().max()) > 1e-3, key


class ChangingGraph(ToyNet):
    """A graph that changes after the first step, with every parameter trainable throughout: the
    ``aux`` head is out of its loss's graph on the first batch (as a loss that returns a constant
    for a batch without labels), and a ``side`` layer on the input feeds ``reg`` from the start and
    ``cls`` too from the second batch on (a branch switched on after warm-up)."""

    def __init__(self, weighting: Weighting, **kw: Any) -> None:
        super().__init__(weighting, tasks=("cls", "reg", "aux"), lr=0.1, **kw)
        self.side = nn.Linear(8, HEAD_SIZES["cls"])
        self.batch_idx = 0

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.shared_representation(self.trunk(x))
        side = self.side(x)
        aux = self.heads["aux"](z)
        return {
            "cls": self.heads["cls"](z) + (side if self.batch_idx >= 1 else 0.0),
            "reg": self.heads["reg"](z) + side[:, : HEAD_SIZES["reg"]],
            "aux": aux.detach() if self.batch_idx == 0 else aux,
        }


@pytest.mark.parametrize("route", ["parameters", "representation"])
def test_the_reused_update_follows_a_graph_that_changes_after_the_first_step(tmp_path: Path, route: str) -> None:
    """The update each step hands out is that of Lightning's own backward of the weighted sum: the
    head left out of the first step trains from the second, and the layer a second task starts to
    read gets both tasks' weighted gradients (with the parameters found on the first step, aux's
    head never trained and side lost cls's part)."""
    results = []
    for reuse in (True, False):
        model = ChangingGraph(make_strategy("upgrad", route), reuse_jacobian=reuse)
        start = params_of(model)
        fit(model, tmp_path / f"{route}-{reuse}", batches=4, max_epochs=1)
        results.append(params_of(model))
    assert_params_close(results[0], results[1], atol=1e-6, what=f"{route}: reused / Lightning's backward")
    assert float((results[0]["heads.aux.weight"] - start["heads.aux.weight"]).abs().max()) > 1e-3


class AuxLabelledEveryOtherBatch(ToyNet):
    """``aux``'s loss is a constant on even batches (no labels there): two graphs, in turn."""

    def __init__(self, weighting: Weighting, **kw: Any) -> None:
        super().__init__(weighting, tasks=("cls", "reg", "aux"), lr=0.1, **kw)
        self.batch_idx = 0

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.shared_representation(self.trunk(x))
        outputs = {name: head(z) for name, head in self.heads.items()}
        return {**outputs, "aux": outputs["aux"].detach()} if self.batch_idx % 2 == 0 else outputs


@pytest.mark.parametrize("route", ["parameters", "representation"])
def test_graphs_that_alternate_are_read_once_each(tmp_path: Path, route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The heads found for each graph are kept: found on the first two steps (one graph each), not
    again on the next four; and the update is Lightning's backward's."""
    from lightning_multiloss import mixin

    finder = "parameter_users" if route == "parameters" else "own_above_representation"
    calls = [0]
    original = getattr(mixin, finder)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(mixin, finder, counted)
    results = []
    for reuse in (True, False):
        model = AuxLabelledEveryOtherBatch(make_strategy("upgrad", route), reuse_jacobian=reuse)
        fit(model, tmp_path / f"{route}-{reuse}", batches=6, max_epochs=1)
        results.append(params_of(model))
        if reuse:
            assert calls[0] == 2, calls
    assert_params_close(results[0], results[1], atol=1e-6, what=f"{route}: reused / Lightning's backward")


class FirstBatchWithoutLabels(ToyNet):
    """Two tasks; ``reg``'s loss is a constant on the first batch (its labels missing there)."""

    def __init__(self, weighting: Weighting) -> None:
        super().__init__(weighting, tasks=("cls", "reg"))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outputs = super().forward(x)
        return {**outputs, "reg": outputs["reg"].detach()}


def test_no_shared_parameters_because_a_loss_is_constant_names_the_task(tmp_path: Path) -> None:
    model = FirstBatchWithoutLabels(make_strategy("upgrad", "parameters"))
    with pytest.raises(MultiLossError, match=r"task\(s\) \['reg'\] reach no trainable parameter \(a constant loss"):
        fit(model, tmp_path, batches=1, max_epochs=1)


def test_lightnings_backward_stays_where_the_jacobian_cannot_give_the_update(tmp_path: Path) -> None:
    """A parameter outside the shared ones that serves two tasks, or float16 mixed precision
    (a GradScaler scales Lightning's backward): K + 1 passes, the update of the replay."""
    model = WeightShared(LossOverNorm(route="parameters"))
    passes, _ = fit_counting(model, tmp_path / "bias")
    assert passes[1:] == [4] * 3
    from pytorch_lightning.plugins import MixedPrecision

    model = TrunkShared(LossOverNorm(route="parameters"))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    passes, _ = fit_counting(model, tmp_path / "fp16", plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert passes[1:] == [4] * 3
    assert scaler.get_scale() >= 2.0**10  # the scaler ran (and saw no overflow)


# -- DDP: one launch ----------------------------------------------------------------------------
DDP_STEPS = 4
DDP_BATCH = 8


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_with_double_batch(tmp_path: Path) -> None:
    """2 processes × batch B == 1 process × batch 2B (exact modes); local mode: ranks agree, drift measured."""
    ranks = run_ddp_script("ddp_exact.py", tmp_path, str(DDP_STEPS), str(DDP_BATCH), timeout=300)
    assert len(ranks) == 2
    r0, r1 = ranks
    assert r0.keys() == r1.keys()
    drift: dict[str, float] = {}
    exact_checked = []
    for label, result in r0.items():
        name, route, ddp = label.split("|")
        assert result["global_step"] == DDP_STEPS
        for key, value in result["params"].items():  # DDP keeps the replicas identical
            torch.testing.assert_close(value, r1[label]["params"][key], rtol=0, atol=0, msg=f"{label} {key}")
        reference = net_for(route, make_strategy(name, route, ddp), result["tasks"], lr=0.2)
        init = params_of(reference)
        fit(
            reference,
            tmp_path / "ref" / label.replace("|", "-"),
            batches=DDP_STEPS,
            batch_size=2 * DDP_BATCH,
            max_steps=DDP_STEPS,
        )
        want = params_of(reference)
        if ddp == "exact" and result["deterministic"]:
            torch.testing.assert_close(result["weights"], r1[label]["weights"], rtol=0, atol=0)
            # Loss over gradient norm amplifies float32 rounding (the reduction order differs
            # between 2 processes and one): measured 4e-5 to 6e-5 apart, the others 3e-7 at most.
            tolerance = 1e-4 if name == "test-loss-over-norm" else 1e-5
            assert_params_close(result["params"], want, atol=tolerance, rtol=tolerance, what=f"DDP {label}")
            exact_checked.append(label)
        elif ddp == "local":
            # How far the local-mode parameters are from the global-batch ones, relative to how far
            # the global-batch run moved them from their initial values.
            drift[label] = max((result["params"][k] - want[k]).abs().max().item() for k in want) / max(
                (want[k] - init[k]).abs().max().item() for k in want
            )
    print("DDP local-mode drift (max |p_local - p_global| / max |p_global - p_init|):", drift)
    routes = ("representation", "parameters")
    expected = {f"{n}|{r}|exact" for n in STRATEGIES for r in routes} | {"graddrop|representation|exact"}
    assert expected == set(exact_checked), exact_checked
    assert drift and all(math.isfinite(v) for v in drift.values())


def test_ddp_processes_agree_on_the_shared_parameters(tmp_path: Path) -> None:
    """A layer that two tasks share, one of them without labels in rank 1's first batch: every process
    takes the layer as shared (rank 1 alone saw one user; the Jacobian all-reduce aborted on the sizes)."""
    r0, r1 = run_ddp_script("ddp_shared_agree.py", tmp_path, timeout=300)
    assert r0["global_step"] == r1["global_step"] == 3
    assert r0["shared"] == r1["shared"] == ["trunk.0.weight", "trunk.0.bias", "layer.0.weight", "layer.0.bias"]
    assert_params_close(r0["params"], r1["params"], atol=0.0, what="rank 0 / rank 1")


# -- the representation route reuses the heads' passes for the applied gradient -----------------
class CountingHeads(ToyNet):
    """Three tasks, the trunk's output marked; counts the backward passes through the trunk and
    through each head (an identity between the head and its loss)."""

    def __init__(self, weighting: Weighting, **kw: Any) -> None:
        super().__init__(weighting, tasks=("cls", "reg", "aux"), lr=0.1, optimizer="adam", **kw)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.shared_representation(_CountBackward.apply(self.trunk(x)))
        return {name: _CountBackward.apply(head(self.above(z, name))) for name, head in self.heads.items()}

    def above(self, z: Tensor, name: str) -> Tensor:
        return z


class SharedAbove(CountingHeads):
    """``cls`` and ``reg`` read a layer above the representation that they share."""

    def __init__(self, weighting: Weighting, **kw: Any) -> None:
        super().__init__(weighting, **kw)
        self.mix = nn.Linear(16, 16)

    def above(self, z: Tensor, name: str) -> Tensor:
        return torch.tanh(self.mix(z)) if name in ("cls", "reg") else z


class TiedToTrunk(CountingHeads):
    """``aux`` also reads the trunk's weight above the representation (tied weights)."""

    def above(self, z: Tensor, name: str) -> Tensor:
        return z @ (self.trunk[0].weight @ self.trunk[0].weight.T) if name == "aux" else z


REPRESENTATION_NETS = {"heads": CountingHeads, "shared-above": SharedAbove, "tied": TiedToTrunk}


@pytest.mark.parametrize("strategy", ["test-loss-over-norm", "upgrad", "pcgrad"])
def test_representation_route_backward_skips_the_heads(tmp_path: Path, strategy: str) -> None:
    """One pass through each head and one through the trunk per micro-batch (3 + 1 counted), not
    two through each head (3 + 3 + 1), and the same parameters (Adam, accumulation of 2, clipping)
    and returned losses as Lightning's own backward through the whole model."""
    results = {}
    for reuse in (True, False):
        model = CountingHeads(make_strategy(strategy, "representation"), reuse_jacobian=reuse)
        passes, returned = fit_counting(model, tmp_path / str(reuse), accumulate_grad_batches=2, gradient_clip_val=0.5)
        assert passes == [4 if reuse else 7] * 4, (reuse, passes)
        results[reuse] = (params_of(model), returned)
    start = params_of(CountingHeads(make_strategy(strategy, "representation")))
    assert max(float((results[False][0][k] - v).abs().max()) for k, v in start.items()) > 1e-3
    assert_params_close(results[True][0], results[False][0], atol=1e-6, what=strategy)
    torch.testing.assert_close(torch.tensor(results[True][1]), torch.tensor(results[False][1]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("net", ["shared-above", "tied"])
def test_representation_route_keeps_lightnings_backward_where_heads_share(
    tmp_path: Path, net: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer above the representation that two heads share, or a head reading a trunk weight:
    the heads' passes cannot give the update, Lightning's backward runs through the whole model
    (two passes through each head), and the steps equal those of reuse_jacobian=False. The graph is
    walked on the first step only (a head reading the trunk made each step walk it)."""
    from lightning_multiloss import mixin

    walks = [0]
    walk = mixin.leaves_by_task

    def counted(*args: Any, **kwargs: Any) -> Any:
        walks[0] += 1
        return walk(*args, **kwargs)

    monkeypatch.setattr(mixin, "leaves_by_task", counted)
    results = []
    for reuse in (True, False):
        model = REPRESENTATION_NETS[net](make_strategy("upgrad", "representation"), reuse_jacobian=reuse)
        passes, _ = fit_counting(model, tmp_path / str(reuse))
        assert passes == [7] * 4, (net, reuse, passes)
        results.append(params_of(model))
        assert walks[0] == 1, walks
    assert_params_close(results[0], results[1], atol=1e-6, what=net)


def test_representation_route_under_float16_scaler_keeps_lightnings_backward(tmp_path: Path) -> None:
    from pytorch_lightning.plugins import MixedPrecision

    model = CountingHeads(LossOverNorm(route="representation"))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    passes, _ = fit_counting(model, tmp_path, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert passes == [7] * 4
    assert scaler.get_scale() >= 2.0**10


def test_heads_found_from_the_graph() -> None:
    """own_above_representation against graphs whose answer is known by construction."""
    trunk, a, b, shared = nn.Linear(4, 3), nn.Linear(3, 1), nn.Linear(3, 1), nn.Linear(3, 3)
    x = torch.randn(5, 4)
    params = [*trunk.parameters(), *a.parameters(), *b.parameters(), *shared.parameters()]
    z = trunk(x)
    losses = torch.stack([a(z).square().mean(), b(z).abs().mean()])
    assert gradients.own_above_representation(losses, z, params) == [list(a.parameters()), list(b.parameters())]
    # a layer above z read by both heads; a trunk weight read above z; a leaf that is not a parameter
    losses = torch.stack([a(shared(z)).mean(), b(shared(z)).mean()])
    assert gradients.own_above_representation(losses, z, params) is None
    losses = torch.stack([a(z).mean(), (b(z) * trunk.weight.sum()).mean()])
    assert gradients.own_above_representation(losses, z, params) is None
    scale = torch.ones((), requires_grad=True)
    losses = torch.stack([a(z).mean(), (b(z) * scale).mean()])
    assert gradients.own_above_representation(losses, z, params) is None
    # a head reading another output of the node that produced z goes around z
    first, second = trunk(x).split([2, 1], dim=1)
    losses = torch.stack([a(torch.cat([first, first[:, :1]], 1)).mean(), b(second.expand(-1, 3)).mean()])
    assert gradients.own_above_representation(losses, first, params) is None
    # not a stack of the task losses
    not_a_stack = torch.cat([a(z).mean(0), b(z).mean(0)])
    assert gradients.own_above_representation(not_a_stack, z, params) is None


def test_leaves_by_task_matches_autograd() -> None:
    """The walk's leaves per task against autograd's own answer (a leaf gets a gradient, even a
    zero one, exactly when its loss's graph reaches it), on a graph where nodes serve several tasks:
    a layer above z that two heads read, a head reading a trunk weight, a parameter used twice in
    one head, a leaf that is not a parameter, and a task that reaches no leaf above z."""
    torch.manual_seed(0)
    trunk, shared, a, b = nn.Linear(4, 3), nn.Linear(3, 3), nn.Linear(3, 1), nn.Linear(3, 1)
    scale = torch.ones(1, requires_grad=True)
    leaves = [*trunk.parameters(), *shared.parameters(), *a.parameters(), *b.parameters(), scale]
    x = torch.randn(5, 4)

    def task_losses(z: Tensor) -> list[Tensor]:
        above = shared(z)
        return [
            a(above).square().mean(),
            (b(above) * scale).mean() + a.weight.sum(),
            (z @ trunk.weight).mean(),
            z.sum() * 0.0,
        ]

    def reached(loss: Tensor) -> tuple[int, ...]:
        if loss.grad_fn is None:
            return ()
        grads = torch.autograd.grad(loss, leaves, allow_unused=True, retain_graph=True)
        return tuple(sorted(id(p) for p, g in zip(leaves, grads, strict=True) if g is not None))

    z = trunk(x)
    losses = task_losses(z)
    stacked = torch.stack(losses)
    assert gradients.leaves_by_task(stacked) == tuple(reached(loss) for loss in losses)
    skip = list(trunk.parameters())
    assert gradients.leaves_by_task(stacked, skip=skip) == tuple(
        tuple(i for i in reached(loss) if i not in {id(p) for p in skip}) for loss in losses
    )
    above = task_losses(z.detach())  # what each loss reaches without going through z
    assert gradients.leaves_by_task(stacked, stop=z) == tuple(reached(loss) for loss in above)
    assert gradients.leaves_by_task(torch.cat([losses[0].reshape(1), losses[1].reshape(1)])) == ()


def representation_rows_counting_calls(
    monkeypatch: pytest.MonkeyPatch, losses: Tensor, z: Tensor, heads: list[list[nn.Parameter]]
) -> tuple[gradients.SharedGradients, int]:
    """The representation route's rows and heads' gradients, and how many ``autograd.grad`` calls took them."""
    calls = []
    counted = torch.autograd.grad

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return counted(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch.autograd, "grad", counting)
        taken = gradients.representation_route_gradients(losses, ddp="exact", representation=z, task_parameters=heads)
    return taken, len(calls)


def test_the_heads_rows_come_from_one_backward_equal_to_one_per_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The representation route's K rows and the heads' own gradients from one engine run, each
    against its own ``autograd.grad``; heads that read z twice, through a view or not at all."""
    torch.manual_seed(3)
    trunk, a, b, c, d = nn.Linear(4, 6), nn.Linear(6, 2), nn.Linear(6, 1), nn.Linear(3, 1), nn.Linear(4, 1)
    x = torch.randn(5, 4)
    z = torch.tanh(trunk(x))
    outputs = [a(z) * a(z).detach() + a(z), b(z * z), c(z[:, 1:4]), d(x)]  # the last does not read z
    losses = torch.stack([o.square().mean() for o in outputs])
    heads = [list(m.parameters()) for m in (a, b, c, d)]
    taken, calls = representation_rows_counting_calls(monkeypatch, losses, z, heads)
    assert calls == 1
    for i, own in enumerate(heads):
        expected = torch.autograd.grad(losses[i], [z, *own], retain_graph=True, allow_unused=True)
        row = expected[0] if expected[0] is not None else torch.zeros_like(z)
        torch.testing.assert_close(taken.jacobian[i], row.reshape(-1), rtol=1e-6, atol=1e-7)
        for got, want in zip(taken.task_gradients[i], expected[1:], strict=True):
            assert want is not None and got is not None
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_heads_sharing_an_operation_above_z_get_their_own_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A parameter-free operation above z that two heads read (own parameters still apart): a hook
    there would see the two tasks' gradients summed, so each task takes its own backward."""
    torch.manual_seed(4)
    trunk, a, b = nn.Linear(4, 6), nn.Linear(6, 1), nn.Linear(6, 1)
    z = trunk(torch.randn(5, 4))
    shared = torch.relu(z) * 2.0
    losses = torch.stack([a(shared).square().mean(), b(shared).abs().mean()])
    heads = [list(a.parameters()), list(b.parameters())]
    params = [*trunk.parameters(), *heads[0], *heads[1]]
    assert gradients.own_above_representation(losses, z, params) == heads  # the update can still be reused
    taken, calls = representation_rows_counting_calls(monkeypatch, losses, z, heads)
    assert calls == 2
    for i in range(2):
        (row,) = torch.autograd.grad(losses[i], [z], retain_graph=True)
        torch.testing.assert_close(taken.jacobian[i], row.reshape(-1), rtol=1e-6, atol=1e-7)


class HeadsWithPenalty(CountingHeads):
    """Adds its own terms to the mixin's loss: on the representation and on a head's weight."""

    def above(self, z: Tensor, name: str) -> Tensor:
        self.z = z
        return z

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss + 0.1 * self.z.pow(2).mean() + 0.01 * self.heads["cls"].weight.abs().sum()


def test_representation_route_keeps_the_gradient_of_a_term_added_to_the_loss(tmp_path: Path) -> None:
    results = []
    for reuse in (True, False):
        model = HeadsWithPenalty(make_strategy("upgrad", "representation"), reuse_jacobian=reuse)
        passes, _ = fit_counting(model, tmp_path / str(reuse))
        assert passes == [4 if reuse else 7] * 4
        results.append(params_of(model))
    assert_params_close(results[0], results[1], atol=1e-6, what="penalty")


@pytest.mark.parametrize("route", ["parameters", "representation"])
def test_mgda_leaves_out_a_task_without_a_labelled_sample(tmp_path: Path, route: str) -> None:
    # One batch where `reg` has no label: its loss is a zero in the graph, its gradient zero. MGDA's
    # min-norm point was that zero gradient (weights [0, 1]): nothing moved. It now trains `cls`
    # alone, as one SGD step on the cls loss does.
    batch = {**batches_of(1, batch_size=8)[0], "reg_mask": torch.zeros(8, dtype=torch.bool)}
    model = net_for(route, create_weighting("mgda", route=route), masks={"reg": "reg_mask"})
    expected = copy.deepcopy(model)
    before = params_of(model)
    trainer = quiet_trainer(default_root_dir=str(tmp_path), max_epochs=1)
    trainer.fit(model, torch.utils.data.DataLoader([batch], batch_size=None))
    torch.testing.assert_close(model.weighting.last_weights, torch.tensor([1.0, 0.0]))
    loss = F.cross_entropy(expected(batch["x"])["cls"], batch["cls"])
    params = list(expected.parameters())
    for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True), strict=True):
        if g is not None:
            p.data -= 0.1 * g
    assert_params_close(params_of(model), params_of(expected), atol=1e-6, what=f"mgda {route}")
    assert float((model.trunk[0].weight.detach() - before["trunk.0.weight"]).abs().max()) > 1e-4


def test_default_shared_parameters_follow_a_layer_unfrozen_later(tmp_path: Path) -> None:
    # Fine-tuning: the first trunk layer is frozen in epoch 0 and trained from epoch 1 on. The shared
    # parameters were found once, on the first step, so its conflicts never reached the Gramian.
    class TwoLayerTrunk(ToyNet):
        def __init__(self) -> None:
            super().__init__(create_weighting("mgda"))
            self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
            self.trunk[0].requires_grad_(False)

    class UnfreezeAtEpoch1(pl.Callback):
        def __init__(self) -> None:
            self.seen: list[list[str]] = []  # the shared parameters at each epoch's end

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            pl_module.trunk[0].requires_grad_(trainer.current_epoch >= 1)

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
            names = {id(p): n for n, p in pl_module.named_parameters()}
            self.seen.append([names[id(p)] for p in pl_module.shared_parameters()])

    model, unfreeze = TwoLayerTrunk(), UnfreezeAtEpoch1()
    trainer = quiet_trainer(default_root_dir=str(tmp_path), max_epochs=3, callbacks=[unfreeze])
    trainer.fit(model, toy_loader(n=32, batch_size=16))
    every = ["trunk.0.weight", "trunk.0.bias", "trunk.2.weight", "trunk.2.bias"]
    assert unfreeze.seen == [every[2:], every, every]


@pytest.mark.parametrize("route", ["parameters", "representation"])
def test_a_frozen_trunk_is_named_as_the_reason_a_gradient_strategy_cannot_weigh(route: str) -> None:
    # BackboneFinetuning's first epochs: the representation route's message said to mark z (it was
    # marked), the parameter route's to use the representation route (which fails the same way).
    from pytorch_lightning.callbacks import BackboneFinetuning

    class Finetuned(RepNet):
        def __init__(self) -> None:
            super().__init__(create_weighting("mgda", route=route))
            self.backbone = self.trunk

    with pytest.raises(MultiLossError, match=r"A frozen trunk \(BackboneFinetuning's first epochs\)"):
        quiet_trainer(max_epochs=2, callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=1)]).fit(
            Finetuned(), toy_loader(n=32)
        )
