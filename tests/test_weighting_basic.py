"""Fixed, Scheduled and Learnable against hand-computed values, and the registry."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.schedules import Constant, Linear, Step
from lightning_multiloss.weighting import (
    WEIGHTINGS,
    Fixed,
    Learnable,
    Progress,
    Scheduled,
    Weighting,
    available_weightings,
    create_weighting,
    register,
)
from lightning_multiloss.weighting.learnable import project_to_simplex

LEARNABLE_LOGGER = "lightning_multiloss.weighting.learnable"


def bound(weighting, names):
    weighting.bind(names)
    return weighting


# ---------------------------------------------------------------------------------------------
# Fixed
# ---------------------------------------------------------------------------------------------
def test_fixed_list():
    w = bound(Fixed([0.5, 0.3]), ["a", "b"])
    out = w(torch.tensor([2.0, 10.0]))
    # 0.5 * 2 + 0.3 * 10 = 4
    assert out.loss.item() == pytest.approx(4.0, abs=1e-6)
    torch.testing.assert_close(out.weights, torch.tensor([0.5, 0.3]), rtol=0, atol=0)
    assert not out.weights.requires_grad


def test_fixed_dict_leaves_a_task_at_one():
    w = bound(Fixed({"b": 0.25}), ["a", "b", "c"])
    out = w(torch.tensor([1.0, 4.0, 2.0]))
    # 1 * 1 + 0.25 * 4 + 1 * 2 = 4
    assert out.loss.item() == 4.0
    assert out.weights.tolist() == [1.0, 0.25, 1.0]


def test_fixed_default_is_plain_sum_and_dtype_follows_losses():
    w = bound(Fixed(), ["a", "b", "c"])
    losses = torch.tensor([1.5, 2.25, 4.0], dtype=torch.float64)
    out = w(losses)
    assert out.loss.dtype == torch.float64
    assert out.loss.item() == 7.75
    assert out.weights.tolist() == [1.0, 1.0, 1.0]
    # Fixed weights are configuration, not training state: nothing in the checkpoint.
    assert w.state_dict() == {}
    assert not w.needs_callback


def test_fixed_gradient_wrt_losses_is_the_weights():
    w = bound(Fixed([0.5, 0.3]), ["a", "b"])
    losses = torch.tensor([2.0, 10.0], requires_grad=True)
    w(losses).loss.backward()
    torch.testing.assert_close(losses.grad, torch.tensor([0.5, 0.3]), rtol=0, atol=0)


class _Branchy(nn.Module):
    """A → B → {C, D}: task 1 reads C, task 2 reads D."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.A = nn.Linear(3, 5)
        self.B = nn.Linear(5, 5)
        self.C = nn.Linear(5, 2)
        self.D = nn.Linear(5, 1)

    def losses(self, x, y1, y2):
        h = torch.tanh(self.B(torch.tanh(self.A(x))))
        return F.mse_loss(self.C(h), y1), F.mse_loss(self.D(h), y2)


def _grads(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize(("w1", "w2", "exact"), [(0.5, 0.25, True), (0.3, 0.7, False)])
def test_fixed_each_loss_moves_only_its_own_path(w1, w2, exact):
    net = _Branchy()
    g = torch.Generator().manual_seed(0)
    x, y1, y2 = torch.randn(6, 3, generator=g), torch.randn(6, 2, generator=g), torch.randn(6, 1, generator=g)
    params = {name: p for name, p in net.named_parameters()}
    names = list(params)

    # Each loss alone, by autograd.
    l1, _ = net.losses(x, y1, y2)
    g1 = dict(zip(names, _grads(l1, list(params.values())), strict=True))
    _, l2 = net.losses(x, y1, y2)
    g2 = dict(zip(names, _grads(l2, list(params.values())), strict=True))
    # Loss 2 does not reach C, loss 1 does not reach D: autograd reports them unused.
    _, l2 = net.losses(x, y1, y2)
    assert torch.autograd.grad(l2, [net.C.weight, net.C.bias], allow_unused=True) == (None, None)
    for name in ("C.weight", "C.bias"):
        assert torch.equal(g2[name], torch.zeros_like(g2[name]))
    for name in ("D.weight", "D.bias"):
        assert torch.equal(g1[name], torch.zeros_like(g1[name]))

    # The Fixed-combined loss, through a real backward.
    weighting = bound(Fixed([w1, w2]), ["one", "two"])
    net.zero_grad(set_to_none=True)
    weighting(torch.stack(net.losses(x, y1, y2))).loss.backward()
    for name in names:
        got = params[name].grad
        head = name[0]
        if head == "C":
            expected = w1 * g1[name]
        elif head == "D":
            expected = w2 * g2[name]
        else:  # the shared layers receive both
            expected = w1 * g1[name] + w2 * g2[name]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7, msg=name)
            continue
        if exact:  # a power-of-two weight scales every intermediate exactly
            assert torch.equal(got, expected), name
        else:
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=0.0, msg=name)


# ---------------------------------------------------------------------------------------------
# Scheduled
# ---------------------------------------------------------------------------------------------
def test_scheduled_alpha_two_tasks():
    w = bound(Scheduled(Linear(start=1.0, end=0.0, duration=100)), ["a", "b"])
    assert "weights" in dict(w.named_buffers())
    assert w.weights.tolist() == [1.0, 0.0]
    assert w.needs_callback
    buffer = w.weights
    # t = 25: alpha = 1 - 25 / 100 = 0.75
    w.set_progress(Progress(step=25, epoch=3))
    assert w.weights is buffer  # copied into the registered buffer, not replaced
    torch.testing.assert_close(w.weights, torch.tensor([0.75, 0.25]), rtol=0, atol=0)
    out = w(torch.tensor([4.0, 8.0]))
    assert out.loss.item() == 0.75 * 4 + 0.25 * 8  # 5.0
    torch.testing.assert_close(out.weights, torch.tensor([0.75, 0.25]), rtol=0, atol=0)
    # past the end: alpha = 0
    w.set_progress(Progress(step=250, epoch=9))
    assert w.weights.tolist() == [0.0, 1.0]
    assert w(torch.tensor([4.0, 8.0])).loss.item() == 8.0


def test_scheduled_per_task_list():
    w = bound(Scheduled([Linear(0.0, 1.0, duration=10), Constant(2.0), 0.5]), ["a", "b", "c"])
    assert w.weights.tolist() == [0.0, 2.0, 0.5]
    w.set_progress(Progress(step=4, epoch=0))
    torch.testing.assert_close(w.weights, torch.tensor([0.4, 2.0, 0.5]), rtol=0, atol=0)
    # 0.4 * 1 + 2 * 2 + 0.5 * 3 = 5.9
    assert w(torch.tensor([1.0, 2.0, 3.0])).loss.item() == pytest.approx(5.9, abs=1e-6)


def test_scheduled_per_task_dict_and_epoch_unit():
    # "a" is left out: weight 1; "b" is 0 before epoch 2, then 1.
    w = bound(Scheduled({"b": Step(milestones=[2], values=[0.0, 1.0])}, unit="epoch"), ["a", "b"])
    w.set_progress(Progress(step=999, epoch=1))
    assert w.weights.tolist() == [1.0, 0.0]
    w.set_progress(Progress(step=0, epoch=2))
    assert w.weights.tolist() == [1.0, 1.0]


def test_scheduled_step_unit_ignores_epochs():
    w = bound(Scheduled(Linear(0.0, 1.0, duration=8)), ["a", "b"])
    w.set_progress(Progress(step=2, epoch=50))
    assert w.weights.tolist() == [0.25, 0.75]


def test_scheduled_fraction_unit():
    w = bound(Scheduled(Linear(1.0, 0.0, duration=1.0), unit="fraction"), ["a", "b"])
    # t = 30 / 120 = 0.25: alpha = 0.75
    w.set_progress(Progress(step=30, epoch=1, total_steps=120))
    assert w.weights.tolist() == [0.75, 0.25]
    w.set_progress(Progress(step=120, epoch=4, total_steps=120))
    assert w.weights.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("total", [None, 0])
def test_scheduled_fraction_needs_total_steps(total):
    w = bound(Scheduled(Linear(1.0, 0.0, duration=1.0), unit="fraction"), ["a", "b"])
    with pytest.raises(MultiLossError, match=r"unit='fraction' needs the planned number of optimizer steps.*max_steps"):
        w.set_progress(Progress(step=3, epoch=0, total_steps=total))


def test_scheduled_bad_unit():
    with pytest.raises(MultiLossError, match=r"weighting 'scheduled': unit must be .* got 'batch'"):
        Scheduled(0.5, unit="batch")  # type: ignore[arg-type]


def test_scheduled_alpha_leaving_unit_interval_names_tasks_and_t():
    w = bound(Scheduled(Linear(0.5, 1.5, duration=10)), ["cls", "reg"])
    w.set_progress(Progress(step=5, epoch=0))
    assert w.weights.tolist() == [1.0, 0.0]
    # t = 6: alpha = 0.5 + 0.6 = 1.1
    with pytest.raises(MultiLossError, match=r"alpha \(the weight of task 'cls'.*'reg'.*\[0, 1\].*gave 1\.1.* at t=6"):
        w.set_progress(Progress(step=6, epoch=0))
    assert w.weights.tolist() == [1.0, 0.0]  # unchanged by the failed update
    nan = bound(Scheduled(lambda t: math.nan if t > 0 else 0.5), ["cls", "reg"])
    with pytest.raises(MultiLossError, match=r"alpha.*gave nan at t=1"):
        nan.set_progress(Progress(step=1, epoch=0))


def test_scheduled_negative_weight_names_task_and_t():
    w = bound(Scheduled([1.0, Linear(1.0, -1.0, duration=4)]), ["cls", "reg"])
    # t = 3: 1 - 2 * 0.75 = -0.5
    with pytest.raises(
        MultiLossError, match=r"scheduled weight at t=3\.0 for task 'reg' must be finite and >= 0, got -0\.5"
    ):
        w.set_progress(Progress(step=3, epoch=0))


def test_scheduled_state_dict_round_trip(tmp_path):
    w = bound(Scheduled(Linear(1.0, 0.0, duration=100)), ["a", "b"])
    w.set_progress(Progress(step=25, epoch=0))
    path = tmp_path / "w.pt"
    torch.save(w.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert set(state) == {"weights"}
    fresh = bound(Scheduled(Linear(1.0, 0.0, duration=100)), ["a", "b"])
    assert fresh.weights.tolist() == [1.0, 0.0]
    fresh.load_state_dict(state)
    assert fresh.weights.tolist() == [0.75, 0.25]
    fresh.set_progress(Progress(step=50, epoch=0))
    assert fresh.weights.tolist() == [0.5, 0.5]


@pytest.mark.parametrize("through_parent", [False, True])
def test_scheduled_loaded_buffer_is_overwritten_by_next_progress(through_parent):
    # The fresh weighting last computed [1, 0] at t = 0; the loaded state says [0.75, 0.25].
    # set_progress(t = 0) computes [1, 0] again and must still write it over the loaded buffer.
    w = bound(Scheduled(Linear(1.0, 0.0, duration=100)), ["a", "b"])
    state = {"weights": torch.tensor([0.75, 0.25])}
    if through_parent:
        parent = nn.ModuleDict({"weighting": w})
        parent.load_state_dict({"weighting.weights": state["weights"]})
    else:
        w.load_state_dict(state)
    assert w.weights.tolist() == [0.75, 0.25]
    w.set_progress(Progress(step=0, epoch=0))
    assert w.weights.tolist() == [1.0, 0.0]


def test_scheduled_structure_errors():
    with pytest.raises(
        MultiLossError, match=r"schedule names unknown task\(s\) \['nope'\]; the tasks are \['a', 'b'\]"
    ):
        bound(Scheduled({"nope": 1.0}), ["a", "b"])
    with pytest.raises(MultiLossError, match=r"3 schedules for 2 tasks \['a', 'b'\]"):
        bound(Scheduled([1.0, 1.0, 1.0]), ["a", "b"])
    with pytest.raises(MultiLossError, match=r"single schedule is the alpha of two tasks.*3 tasks"):
        bound(Scheduled(0.5), ["a", "b", "c"])
    with pytest.raises(MultiLossError, match=r"schedule of task 'b': expected a schedule"):
        bound(Scheduled([1.0, "linear"]), ["a", "b"])


# ---------------------------------------------------------------------------------------------
# Learnable
# ---------------------------------------------------------------------------------------------
def test_learnable_two_tasks_loss_and_gradient():
    w = bound(Learnable(init=0.3), ["a", "b"])
    assert isinstance(w.alpha, nn.Parameter) and w.alpha.ndim == 0
    losses = torch.tensor([2.0, 5.0], requires_grad=True)
    out = w(losses)
    # 0.3 * 2 + 0.7 * 5 = 4.1
    assert out.loss.item() == pytest.approx(4.1, abs=1e-6)
    torch.testing.assert_close(out.weights, torch.tensor([0.3, 0.7]), rtol=0, atol=1e-7)
    assert not out.weights.requires_grad
    out.loss.backward()
    # dL/dalpha = L1 - L2 = -3; dL/dL = (alpha, 1 - alpha)
    assert w.alpha.grad.item() == 2.0 - 5.0
    torch.testing.assert_close(losses.grad, torch.tensor([0.3, 0.7]), rtol=0, atol=1e-7)
    # an SGD step with lr 0.1 moves alpha by -0.1 * (L1 - L2) = +0.3
    torch.optim.SGD(w.parameters(), lr=0.1).step()
    assert w.alpha.item() == pytest.approx(0.6, abs=1e-6)


def after_step(weighting: Weighting) -> None:
    """What the Callback does after each training batch that took an optimizer step."""
    weighting.constrain()
    weighting.after_optimizer_step()


def test_learnable_default_init():
    assert bound(Learnable(), ["a", "b"]).alpha.item() == 0.5
    torch.testing.assert_close(bound(Learnable(), ["a", "b", "c", "d"]).alpha.data, torch.full((4,), 0.25))


@pytest.mark.parametrize(("value", "clipped"), [(1.7, 1.0), (-0.2, 0.0), (0.4, 0.4)])
def test_learnable_clips_after_step(value, clipped):
    w = bound(Learnable(), ["a", "b"])
    with torch.no_grad():
        w.alpha.fill_(value)
    after_step(w)
    assert torch.equal(w.alpha.data, torch.tensor(clipped))


def _simplex_by_bisection(v):
    """Projection onto the simplex: w = max(v - theta, 0) with theta found by bisection (float64)."""
    v = [float(x) for x in v]
    lo, hi = min(v) - 1.0, max(v)  # f(lo) >= 0 > f(hi) for f(theta) = sum(max(v - theta, 0)) - 1
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(max(x - mid, 0.0) for x in v) > 1.0:
            lo = mid
        else:
            hi = mid
    theta = (lo + hi) / 2
    return [max(x - theta, 0.0) for x in v], theta


HAND_CASES = [
    ([0.5, 0.3, 0.2], [0.5, 0.3, 0.2]),  # already on the simplex
    ([0.6, 0.5, -0.3], [0.55, 0.45, 0.0]),  # theta = (1.1 - 1) / 2 = 0.05
    ([2.0, 0.0, -1.0], [1.0, 0.0, 0.0]),  # theta = 1
    ([0.4, 0.4, 0.4], [1 / 3, 1 / 3, 1 / 3]),  # theta = 0.2 / 3
    ([-1.0, -2.0, -3.0], [1.0, 0.0, 0.0]),  # theta = -2
]


@pytest.mark.parametrize(("v", "expected"), HAND_CASES)
def test_learnable_simplex_projection_hand_values(v, expected):
    w = bound(Learnable(), ["a", "b", "c"])
    with torch.no_grad():
        w.alpha.copy_(torch.tensor(v))
    after_step(w)
    torch.testing.assert_close(w.alpha.data, torch.tensor(expected), rtol=0, atol=1e-6)
    reference, _ = _simplex_by_bisection(v)
    torch.testing.assert_close(w.alpha.data, torch.tensor(reference, dtype=torch.float32), rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [3, 5])
def test_learnable_simplex_projection_random_against_bisection_and_kkt(k):
    g = torch.Generator().manual_seed(k)
    w = bound(Learnable(), [f"t{i}" for i in range(k)])
    for _ in range(40):
        v = (torch.randn(k, generator=g, dtype=torch.float64) * 2.0).tolist()
        with torch.no_grad():
            w.alpha.copy_(torch.tensor(v))
        after_step(w)
        got = w.alpha.detach().double()
        reference, theta = _simplex_by_bisection(v)
        torch.testing.assert_close(got, torch.tensor(reference, dtype=torch.float64), rtol=0, atol=2e-6)
        # KKT: feasible, and v_i - w_i is the same theta on the support.
        assert bool((got >= 0).all())
        assert abs(float(got.sum()) - 1.0) < 1e-5
        for vi, wi in zip(v, got.tolist(), strict=True):
            if wi > 1e-6:
                assert vi - wi == pytest.approx(theta, abs=2e-6)
            else:
                assert vi <= theta + 2e-6
    # the function itself, in float64
    v64 = torch.tensor([0.9, 0.8, -0.5], dtype=torch.float64)
    torch.testing.assert_close(project_to_simplex(v64), torch.tensor([0.55, 0.45, 0.0], dtype=torch.float64))


@pytest.mark.parametrize(
    ("v", "expected"),
    [
        # Far from the simplex (a learning rate of 100 gets there): in float32 the cumulative sum
        # minus 1 lost the 1 and every weight came out 0. By hand: one entry above all others by more
        # than 1 takes all the weight; two within 1 of each other share it as (1 ± their gap) / 2.
        ([3e7, 0.0, 0.0], [1.0, 0.0, 0.0]),
        ([1e8, 5.0, -3.0], [1.0, 0.0, 0.0]),
        ([4e6 + 0.5, 4e6, 0.0], [0.75, 0.25, 0.0]),  # float32 holds a gap of 0.5 at 4e6 (spacing 0.25)
        ([-4e7, -4e7 - 8.0, -4e7 + 8.0], [0.0, 0.0, 1.0]),
    ],
)
def test_the_simplex_projection_holds_far_from_the_simplex_in_float32(v, expected):
    got = project_to_simplex(torch.tensor(v, dtype=torch.float32))
    torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=1e-6)


def test_learnable_k_tasks_loss_and_init():
    w = bound(Learnable(init={"a": 0.5, "c": 0.5}), ["a", "b", "c"])
    assert w.alpha.tolist() == [0.5, 0.0, 0.5]
    out = w(torch.tensor([2.0, 100.0, 4.0]))
    assert out.loss.item() == 3.0
    assert out.weights.tolist() == [0.5, 0.0, 0.5]


def test_learnable_warns_once_when_alpha_sits_on_a_bound(caplog):
    w = bound(Learnable(init=0.9, check_every=2), ["a", "b"])
    with caplog.at_level(logging.WARNING, logger=LEARNABLE_LOGGER):
        with torch.no_grad():
            w.alpha.fill_(1.4)
        after_step(w)  # step 1: clipped to 1, not a check step
        assert w.alpha.item() == 1.0
        assert not caplog.records
        after_step(w)  # step 2: a check step, alpha on the bound
        records = [r for r in caplog.records if r.name == LEARNABLE_LOGGER]
        assert len(records) == 1
        assert records[0].levelno == logging.WARNING
        message = records[0].getMessage()
        assert "reached a bound ([1.0]) at optimizer step 1 (seen at the check of step 2)" in message
        after_step(w)
        after_step(w)  # step 4: still on the bound, no second message
        assert len([r for r in caplog.records if r.name == LEARNABLE_LOGGER]) == 1


def test_learnable_counts_optimizer_steps_from_the_trainer_progress(caplog):
    """After a resume at step 98 the check of step 100 comes two steps later; alpha came to 0 at step 99."""
    w = bound(Learnable(init=0.5, check_every=50), ["a", "b"])
    with caplog.at_level(logging.WARNING, logger=LEARNABLE_LOGGER):
        with torch.no_grad():
            w.alpha.fill_(-0.3)
        w.set_progress(Progress(98, 3))
        w.set_progress(Progress(98, 3))  # two micro-batches of gradient accumulation, one step
        after_step(w)
        assert w.alpha.item() == 0.0 and not caplog.records  # 99 optimizer steps done: not a check step
        w.set_progress(Progress(99, 3))
        after_step(w)
    messages = [r.getMessage() for r in caplog.records if r.name == LEARNABLE_LOGGER]
    assert len(messages) == 1
    assert "reached a bound ([0.0]) at optimizer step 99 (seen at the check of step 100)" in messages[0]


def test_learnable_warning_names_the_step_alpha_reached_the_bound(caplog):
    """Trained by SGD, alpha reaches 0 at step 4, leaves it, comes back at a later step: the check of
    step 50 names the step of the last arrival, found by a plain replay of the clipped updates."""
    gaps = [1.0] * 10 + [-1.0] * 3 + [2.0] * 37  # L₁ − L₂ at each step: ∂L/∂alpha
    w = bound(Learnable(init=0.5, check_every=50), ["a", "b"])
    optimizer = torch.optim.SGD(w.parameters(), lr=0.15)
    alpha, arrivals = 0.5, []
    for step, gap in enumerate(gaps, start=1):
        moved = min(max(alpha - 0.15 * gap, 0.0), 1.0)
        if moved == 0.0 and alpha != 0.0:
            arrivals.append(step)
        alpha = moved
    assert arrivals == [4, 15]
    with caplog.at_level(logging.WARNING, logger=LEARNABLE_LOGGER):
        for gap in gaps:
            optimizer.zero_grad()
            w(torch.tensor([2.0 + gap, 2.0])).loss.backward()
            optimizer.step()
            after_step(w)
    messages = [r.getMessage() for r in caplog.records if r.name == LEARNABLE_LOGGER]
    assert len(messages) == 1
    assert "reached a bound ([0.0]) at optimizer step 15 (seen at the check of step 50)" in messages[0]

    first = bound(Learnable(init=0.5, check_every=50), ["a", "b"])  # never leaves: the first arrival, 4
    optimizer = torch.optim.SGD(first.parameters(), lr=0.15)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LEARNABLE_LOGGER):
        for _ in range(50):
            optimizer.zero_grad()
            first(torch.tensor([3.0, 2.0])).loss.backward()
            optimizer.step()
            after_step(first)
    messages = [r.getMessage() for r in caplog.records if r.name == LEARNABLE_LOGGER]
    assert len(messages) == 1 and "at optimizer step 4 (seen at the check of step 50)" in messages[0]


def test_learnable_no_warning_inside_the_interval(caplog):
    w = bound(Learnable(init=0.5, check_every=1), ["a", "b"])
    with caplog.at_level(logging.WARNING, logger=LEARNABLE_LOGGER):
        for _ in range(3):
            after_step(w)
    assert not [r for r in caplog.records if r.name == LEARNABLE_LOGGER]


def test_learnable_bad_init():
    for init in (1.5, -0.1, math.nan):
        with pytest.raises(MultiLossError, match=r"weighting 'learnable': alpha must be in \[0, 1\], got init="):
            Learnable(init=init)
    with pytest.raises(MultiLossError, match=r"two tasks take one alpha in \[0, 1\], got init=\[0.5, 0.5\]"):
        bound(Learnable(init=[0.5, 0.5]), ["a", "b"])
    with pytest.raises(MultiLossError, match=r"init must sum to 1"):
        bound(Learnable(init=[0.5, 0.5, 0.5]), ["a", "b", "c"])
    with pytest.raises(MultiLossError, match=r"init for task 'b' must be finite and >= 0, got -0.5"):
        bound(Learnable(init=[1.0, -0.5, 0.5]), ["a", "b", "c"])
    with pytest.raises(MultiLossError, match=r"3 tasks take one initial weight per task.*got init=0.3"):
        bound(Learnable(init=0.3), ["a", "b", "c"])
    with pytest.raises(MultiLossError, match=r"check_every must be an integer >= 1, got 0"):
        Learnable(check_every=0)
    with pytest.raises(MultiLossError, match=r"weighting 'learnable' needs at least 2 tasks, got 1"):
        bound(Learnable(), ["a"])


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def test_registry_names():
    names = available_weightings()
    assert {"fixed", "scheduled", "learnable"} <= set(names)
    assert names == sorted(names)
    assert (
        WEIGHTINGS["fixed"] is Fixed and WEIGHTINGS["scheduled"] is Scheduled and WEIGHTINGS["learnable"] is Learnable
    )
    assert Fixed.name == "fixed" and Scheduled.name == "scheduled" and Learnable.name == "learnable"


def test_create_weighting():
    w = create_weighting("fixed", weights=[0.5, 0.3])
    assert isinstance(w, Fixed)
    w.bind(["a", "b"])
    assert w(torch.tensor([2.0, 10.0])).loss.item() == pytest.approx(4.0, abs=1e-6)
    assert isinstance(create_weighting("learnable", init=0.2, check_every=5), Learnable)


def test_create_weighting_unknown_name_lists_available():
    with pytest.raises(MultiLossError, match=r"unknown weighting 'fixd'; available: .*fixed") as info:
        create_weighting("fixd")
    for name in ("fixed", "learnable", "scheduled"):
        assert name in str(info.value)


def test_create_weighting_unknown_hyperparameter():
    with pytest.raises(
        MultiLossError, match=r"weighting 'fixed' has no hyper-parameter\(s\) \['weight'\]; it accepts \['weights'\]"
    ):
        create_weighting("fixed", weight=[1.0])
    with pytest.raises(
        MultiLossError,
        match=r"weighting 'learnable' has no hyper-parameter\(s\) \['alpha'\]; it accepts \['init', 'check_every'\]",
    ):
        create_weighting("learnable", alpha=0.5)


def test_register_refuses_a_taken_name():
    class Other(Fixed):
        pass

    with pytest.raises(MultiLossError, match=r"a weighting named 'fixed' is already registered"):
        register("fixed")(Other)
    assert WEIGHTINGS["fixed"] is Fixed


@pytest.mark.parametrize("number", [np.float32(0.25), np.float64(0.25), torch.tensor(0.25)], ids=str)
def test_a_numpy_or_tensor_number_is_a_number(number: object) -> None:
    # Learnable said "two tasks take one alpha in [0, 1], got init=0.25"; Scheduled, "expected a
    # schedule, a callable or a number, got float32".
    learnable = Learnable(number)  # type: ignore[arg-type]
    learnable.bind(["a", "b"])
    assert float(learnable.alpha) == 0.25
    scheduled = Scheduled(number)  # type: ignore[arg-type]
    scheduled.bind(["a", "b"])
    assert scheduled.values_at(0.0) == [0.25, 0.75]
