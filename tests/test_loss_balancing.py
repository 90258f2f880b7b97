"""The loss-balancing strategies against their papers: values and gradients by hand, optima,
epoch logic, random sequences, a replay of FAMO's official update, and bad input."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from lightning_multiloss import MultiLossError
from lightning_multiloss.weighting import (
    DWA,
    FAMO,
    GLS,
    IMTLL,
    RLW,
    STCH,
    Progress,
    Uncertainty,
    UncertaintyRevised,
    create_weighting,
)
from lightning_multiloss.weighting._state import TaskEpochMean

MINE = ["uncertainty", "uncertainty_revised", "imtl_l", "dwa", "rlw", "gls", "famo", "stch"]


def bound(weighting, names=("a", "b")):
    weighting.bind(list(names))
    return weighting


def loss_and_grads(weighting, losses):
    """The loss, d loss / d losses, and d loss / d (the weighting's parameters)."""
    losses = torch.tensor(losses, requires_grad=True)
    out = weighting(losses)
    params = list(weighting.parameters())
    grads = torch.autograd.grad(out.loss, [losses, *params])
    return out, grads[0], grads[1:]


# -- uncertainty (Kendall et al. 2018) ----------------------------------------------------------------
def test_uncertainty_value_and_gradients_by_hand():
    w = bound(Uncertainty(init=[0.3, -0.5]))
    out, d_losses, (d_s,) = loss_and_grads(w, [2.0, 5.0])
    s, L = [0.3, -0.5], [2.0, 5.0]
    expected = sum(0.5 * math.exp(-si) * li + 0.5 * si for si, li in zip(s, L, strict=True))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.weights.tolist() == pytest.approx([0.5 * math.exp(-si) for si in s], rel=1e-6)
    assert d_losses.tolist() == pytest.approx([0.5 * math.exp(-si) for si in s], rel=1e-6)
    assert d_s.tolist() == pytest.approx([-0.5 * math.exp(-si) * li + 0.5 for si, li in zip(s, L, strict=True)])
    assert [n for n, _ in w.named_parameters()] == ["log_var"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_uncertainty_optimum_is_half_inverse_loss(optimizer):
    """Optimising s alone on fixed losses: e^{-s_i} → 1/L_i, i.e. weight ½e^{-s_i} → 1/(2 L_i)."""
    losses = torch.tensor([0.5, 4.0, 1.5])
    w = bound(Uncertainty(), ["a", "b", "c"])
    opt = torch.optim.SGD(w.parameters(), lr=1.0) if optimizer == "sgd" else torch.optim.Adam(w.parameters(), lr=0.05)
    for _ in range(150 if optimizer == "sgd" else 1000):
        opt.zero_grad()
        w(losses).loss.backward()
        opt.step()
    torch.testing.assert_close(w(losses).weights, 1.0 / (2.0 * losses), rtol=1e-4, atol=0)


def test_uncertainty_revised_value_gradients_and_optimum_by_hand():
    w = bound(UncertaintyRevised(init={"b": 0.7}))
    out, d_losses, (d_s,) = loss_and_grads(w, [2.0, 5.0])
    s, L = [0.0, 0.7], [2.0, 5.0]
    sigma2 = [math.exp(si) for si in s]
    expected = sum(li / (2 * v) + math.log(1 + v) for li, v in zip(L, sigma2, strict=True))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert d_losses.tolist() == pytest.approx([1 / (2 * v) for v in sigma2], rel=1e-6)
    # d/ds [L e^{-s}/2 + log(1 + e^s)] = -L e^{-s}/2 + e^s/(1 + e^s)
    assert d_s.tolist() == pytest.approx([-li / (2 * v) + v / (1 + v) for li, v in zip(L, sigma2, strict=True)])

    losses = torch.tensor([0.5, 4.0])
    opt = torch.optim.SGD(w.parameters(), lr=1.0)
    for _ in range(150):
        opt.zero_grad()
        w(losses).loss.backward()
        opt.step()
    # Stationary point: 2u² - L u - L = 0 with u = σ².
    u = [(li + math.sqrt(li * li + 8 * li)) / 4 for li in losses.tolist()]
    assert torch.exp(w.log_var).tolist() == pytest.approx(u, rel=1e-4)
    assert w(losses).weights.tolist() == pytest.approx([1 / (2 * ui) for ui in u], rel=1e-4)


def test_imtl_l_value_gradients_and_equal_scaled_losses():
    w = bound(IMTLL(init=[0.2, -1.0]))
    out, d_losses, (d_s,) = loss_and_grads(w, [3.0, 0.25])
    s, L = [0.2, -1.0], [3.0, 0.25]
    assert out.loss.item() == pytest.approx(sum(math.exp(si) * li - si for si, li in zip(s, L, strict=True)))
    assert d_losses.tolist() == pytest.approx([math.exp(si) for si in s])
    assert d_s.tolist() == pytest.approx([math.exp(si) * li - 1 for si, li in zip(s, L, strict=True)])

    losses = torch.tensor([3.0, 0.25])
    opt = torch.optim.SGD(w.parameters(), lr=0.5)
    for _ in range(150):
        opt.zero_grad()
        w(losses).loss.backward()
        opt.step()
    torch.testing.assert_close(w(losses).weights * losses, torch.ones(2), rtol=1e-4, atol=0)


@pytest.mark.parametrize("make", [Uncertainty, UncertaintyRevised, IMTLL])
def test_a_task_without_labels_leaves_its_log_variance_alone(make):
    # Loss 0 (no labelled sample in the batch): the regulariser alone moved its s by a constant
    # each step, and after a few thousand steps its weight e^{-s} (e^{s}) overflowed: inf * 0 = NaN
    # in every parameter. Left out of the step, as GLS, FAMO and DB-MTL leave such a task out.
    w = bound(make(init=[0.3, -0.5]))
    out, d_losses, (d_s,) = loss_and_grads(w, [2.0, 0.0])
    s0 = 0.3
    if make is IMTLL:
        by_hand, d_s0 = math.exp(s0) * 2.0 - s0, math.exp(s0) * 2.0 - 1.0
    elif make is Uncertainty:
        by_hand, d_s0 = 0.5 * math.exp(-s0) * 2.0 + 0.5 * s0, -0.5 * math.exp(-s0) * 2.0 + 0.5
    else:  # log(1 + σ²) = log(1 + e^s)
        by_hand = 0.5 * math.exp(-s0) * 2.0 + math.log1p(math.exp(s0))
        d_s0 = -0.5 * math.exp(-s0) * 2.0 + math.exp(s0) / (1.0 + math.exp(s0))
    assert out.loss.item() == pytest.approx(by_hand, rel=1e-6)
    assert d_s.tolist() == pytest.approx([d_s0, 0.0], rel=1e-6)  # s₁ stays, however long
    weights = [math.exp(0.3), math.exp(-0.5)] if make is IMTLL else [0.5 * math.exp(-0.3), 0.5 * math.exp(0.5)]
    assert d_losses.tolist() == pytest.approx(weights, rel=1e-6)  # its loss keeps its weight


# -- DWA (Liu et al. 2019) ------------------------------------------------------------------------------
def test_dwa_weights_from_epoch_means_by_hand():
    w = bound(DWA(), ["a", "b", "c"])
    losses = torch.tensor([1.0, 2.0, 3.0])
    assert w(losses).weights.tolist() == [1.0, 1.0, 1.0]  # epoch 1
    e1, e2, e3 = [2.0, 1.0, 4.0], [1.0, 0.9, 2.0], [0.8, 0.9, 1.0]
    w.on_epoch_losses(torch.tensor(e1))
    assert w(losses).weights.tolist() == [1.0, 1.0, 1.0]  # epoch 2

    def expected(new, old, t=2.0):
        r = [n / o for n, o in zip(new, old, strict=True)]
        e = [math.exp(ri / t) for ri in r]
        return [3 * ei / sum(e) for ei in e]

    w.on_epoch_losses(torch.tensor(e2))
    out = w(losses)  # epoch 3: r = L̄(2) / L̄(1)
    assert out.weights.tolist() == pytest.approx(expected(e2, e1), rel=1e-6)
    assert out.loss.item() == pytest.approx(sum(wi * li for wi, li in zip(expected(e2, e1), [1, 2, 3], strict=True)))
    assert sum(out.weights.tolist()) == pytest.approx(3.0)

    w.eval()
    before = {k: v.clone() for k, v in w.state_dict().items()}
    w(losses)
    assert all(torch.equal(v, w.state_dict()[k]) for k, v in before.items())
    w.train()
    w.on_epoch_losses(torch.tensor(e3))
    assert w(losses).weights.tolist() == pytest.approx(expected(e3, e2), rel=1e-6)
    # The temperature: T → ∞ makes the weights uniform; a zero mean two epochs ago gives ratio 1.
    hot = bound(DWA(temperature=1e6))
    hot.on_epoch_losses(torch.tensor([0.0, 1.0]))
    hot.on_epoch_losses(torch.tensor([5.0, 0.1]))
    assert hot.weights.tolist() == pytest.approx([1.0, 1.0], rel=1e-5)
    cold = bound(DWA(temperature=0.5))
    cold.on_epoch_losses(torch.tensor([0.0, 1.0]))
    cold.on_epoch_losses(torch.tensor([5.0, 2.0]))  # ratios [1 (no information), 2]
    e = [math.exp(1 / 0.5), math.exp(2 / 0.5)]
    assert cold.weights.tolist() == pytest.approx([2 * x / sum(e) for x in e], rel=1e-6)
    # A zero latest mean (no labelled sample in the last epoch) is no information either: ratio 1,
    # not 0 (the least weight, as if the task's loss had collapsed).
    latest = bound(DWA(temperature=2.0))
    latest.on_epoch_losses(torch.tensor([1.0, 1.0]))
    latest.on_epoch_losses(torch.tensor([0.0, 1.0]))
    assert latest.weights.tolist() == pytest.approx([1.0, 1.0], rel=1e-6)  # 2·softmax([1, 1] / 2)
    latest.on_epoch_losses(torch.tensor([3.0, 0.5]))  # ratios [1 (0 before), 0.5]
    e = [math.exp(1 / 2.0), math.exp(0.5 / 2.0)]
    assert latest.weights.tolist() == pytest.approx([2 * x / sum(e) for x in e], rel=1e-6)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ([1e-40, 1.0], [1e-40, 1.0], [1.0, 1.0]),  # subnormal float32 means: ratio 1, not 1e-40 / 1e-30
        ([1e-31, 1.0], [2e-31, 1.0], None),  # ratios [2, 1]
        ([1e-20, 1.0], [1e20, 1.0], [2.0, 0.0]),  # a ratio of 1e40: overflowed float32 (NaN weights)
    ],
)
def test_dwa_ratio_of_extreme_epoch_means(before, after, expected):
    w = bound(DWA(temperature=2.0))
    w.on_epoch_losses(torch.tensor(before))
    w.on_epoch_losses(torch.tensor(after))
    if expected is None:
        e = [math.exp(2.0 / 2.0), math.exp(1.0 / 2.0)]
        expected = [2 * x / sum(e) for x in e]
    assert w.weights.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-30)


# -- RLW (Lin et al. 2022) --------------------------------------------------------------------------
def test_rlw_reproducible_per_step_on_the_simplex_with_mean_one_over_k():
    w = bound(RLW(seed=3), ["a", "b", "c"])
    other = bound(RLW(seed=3), ["a", "b", "c"])
    losses = torch.tensor([1.0, 2.0, 3.0])

    def at(weighting, step):
        weighting.set_progress(Progress(step=step, epoch=0))
        return weighting(losses).weights

    torch.manual_seed(0)
    a = at(w, 5)
    torch.manual_seed(1)  # the global random state plays no part
    assert torch.equal(a, at(other, 5))
    assert torch.equal(a, at(w, 5))  # the same step again (a gradient-accumulation micro-batch)
    assert not torch.equal(a, at(w, 6))
    assert not torch.equal(a, at(bound(RLW(seed=4), ["a", "b", "c"]), 5))
    # The documented sample: softmax of N(0, I) drawn from a generator seeded by (seed, step).
    mixed = (3 * 0x9E3779B97F4A7C15 + 5 * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (2**63 - 1)
    g = torch.Generator().manual_seed(mixed)
    torch.testing.assert_close(a, torch.softmax(torch.randn(3, generator=g, dtype=torch.float64), 0).float())
    out = w(losses)
    assert out.loss.item() == pytest.approx(float((out.weights * losses).sum()))

    samples = torch.stack([at(w, step) for step in range(3000)])
    assert bool((samples > 0).all())
    torch.testing.assert_close(samples.sum(1), torch.ones(3000))
    torch.testing.assert_close(samples.mean(0), torch.full((3,), 1 / 3), rtol=0, atol=0.015)
    assert float(samples.std(0).min()) > 0.1  # really random, not uniform

    # Without a trainer each training call advances the step; evaluation uses 1/K and changes nothing.
    fresh = bound(RLW(seed=3), ["a", "b", "c"])
    assert torch.equal(fresh(losses).weights, at(bound(RLW(seed=3), ["a", "b", "c"]), 0))
    assert int(fresh.step) == 1
    fresh.eval()
    assert fresh(losses).weights.tolist() == pytest.approx([1 / 3] * 3)
    assert int(fresh.step) == 1


# -- GLS (Chennupati et al. 2019) -------------------------------------------------------------------
def test_gls_value_and_gradients_by_hand():
    out, grad, _ = loss_and_grads(bound(GLS(), "abc"), [2.0, 8.0, 4.0])
    assert out.loss.item() == pytest.approx(4.0)  # (2·8·4)^{1/3}
    assert grad.tolist() == pytest.approx([4 / (3 * 2), 4 / (3 * 8), 4 / (3 * 4)], rel=1e-6)
    torch.testing.assert_close(out.weights, grad)
    # Tiny and large losses: computed in log space.
    out, grad, _ = loss_and_grads(bound(GLS()), [1e-30, 1e30])
    assert out.loss.item() == pytest.approx(1.0, rel=1e-5)
    assert grad.tolist() == pytest.approx([0.5e30, 0.5e-30], rel=1e-5)


def test_gls_zero_loss_left_out_and_negative_rejected():
    out, grad, _ = loss_and_grads(bound(GLS(), "abc"), [0.0, 4.0, 9.0])
    assert out.loss.item() == pytest.approx(6.0)  # √(4·9): the zero task is left out
    assert grad.tolist() == pytest.approx([0.0, 6 / (2 * 4), 6 / (2 * 9)], rel=1e-6)
    out, grad, _ = loss_and_grads(bound(GLS()), [0.0, 0.0])
    assert out.loss.item() == 0.0 and grad.tolist() == [0.0, 0.0]
    with pytest.raises(MultiLossError, match=r"'gls'.*non-negative.*-1\.5"):
        bound(GLS())(torch.tensor([1.0, -1.5]))


# -- FAMO (Liu et al. 2023) -------------------------------------------------------------------------
class OfficialFAMO:
    """A plain-PyTorch transcription of the authors' FAMO class (min_losses = 0)."""

    def __init__(self, n_tasks: int, w_lr: float = 0.025, gamma: float = 1e-3) -> None:
        self.min_losses = torch.zeros(n_tasks)
        self.w = torch.tensor([0.0] * n_tasks, requires_grad=True)
        self.w_opt = torch.optim.Adam([self.w], lr=w_lr, weight_decay=gamma)

    def get_weighted_loss(self, losses):
        self.prev_loss = losses
        z = F.softmax(self.w, -1)
        D = losses - self.min_losses + 1e-8
        c = (z / D).sum().detach()
        return (D.log() * z / c).sum()

    def update(self, curr_loss):
        delta = (self.prev_loss - self.min_losses + 1e-8).log() - (curr_loss - self.min_losses + 1e-8).log()
        with torch.enable_grad():
            d = torch.autograd.grad(F.softmax(self.w, -1), self.w, grad_outputs=delta.detach())[0]
        self.w_opt.zero_grad()
        self.w.grad = d
        self.w_opt.step()


def test_famo_replays_the_official_algorithm_step_by_step():
    """The official loop: weighted loss, model step, update(losses after the step). Here the losses
    after step t are those of step t+1 (the documented next-batch choice), fed to both."""
    g = torch.Generator().manual_seed(0)
    sequence = [torch.rand(3, generator=g) * 3 + 0.05 for _ in range(40)]
    mine = bound(FAMO(), "abc")
    official = OfficialFAMO(3)
    for t, losses in enumerate(sequence):
        if t > 0:
            official.update(losses.detach())
        reference = losses.clone().requires_grad_()
        expected_loss = official.get_weighted_loss(reference)
        (expected_grad,) = torch.autograd.grad(expected_loss, reference)
        out, grad, _ = loss_and_grads(mine, losses.tolist())
        mine.after_optimizer_step()
        torch.testing.assert_close(mine.logits, official.w.detach(), rtol=0, atol=1e-6)
        torch.testing.assert_close(out.loss, expected_loss.detach(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out.weights, grad)
        assert float(out.weights.sum()) == pytest.approx(1.0, rel=1e-5)
    assert float(mine.logits.abs().max()) > 0.05  # the logits did move
    # Own optimizer: ξ is a buffer, not a parameter of the model's optimizer.
    assert list(mine.parameters()) == []
    assert {"logits", "exp_avg", "exp_avg_sq", "adam_step", "previous_losses", "pending"} <= set(mine.state_dict())


def test_famo_no_update_without_an_optimizer_step_or_in_evaluation():
    w = bound(FAMO())
    w(torch.tensor([1.0, 2.0]))
    w(torch.tensor([0.5, 2.0]))  # no optimizer step in between (gradient accumulation): no update
    assert w.logits.tolist() == [0.0, 0.0]
    w.after_optimizer_step()
    w.eval()
    state = {k: v.clone() for k, v in w.state_dict().items()}
    w(torch.tensor([0.1, 2.0]))
    assert all(torch.equal(v, w.state_dict()[k]) for k, v in state.items())
    w.train()
    w(torch.tensor([0.25, 2.0]))  # the update uses the training losses [0.5, 2] → [0.25, 2]
    official = OfficialFAMO(2)
    official.get_weighted_loss(torch.tensor([0.5, 2.0]))
    official.update(torch.tensor([0.25, 2.0]))
    torch.testing.assert_close(w.logits, official.w.detach(), rtol=0, atol=1e-6)


def test_a_float64_model_keeps_its_precision_in_the_epoch_and_step_means():
    # precision="64-true": DWA's epoch sums (torchmetrics states, which a module's .double() leaves
    # float32) and FAMO's mean losses (cast to float32) rounded each loss to float32.
    near_one = [1.0 + 2e-12, 1.0 - 3e-12]
    dwa = bound(DWA()).double()
    dwa.epoch_losses.add(torch.tensor(near_one, dtype=torch.float64))
    dwa.epoch_losses.add(torch.tensor([3.0, 5.0], dtype=torch.float64))
    dwa.end_training_epoch()
    assert dwa.last_means.tolist() == [(near_one[0] + 3.0) / 2, (near_one[1] + 5.0) / 2]
    famo = bound(FAMO()).double()
    famo(torch.tensor(near_one, dtype=torch.float64))
    assert famo.previous_losses.tolist() == near_one


def test_a_float64_model_evaluates_gls_and_stch_in_float64():
    near = [2.0 + 3e-12, 0.25 - 1e-12]  # each rounded in float32
    losses = torch.tensor(near, dtype=torch.float64)
    gls = bound(GLS()).double().eval()
    assert float(gls(losses).loss) == pytest.approx(math.sqrt(near[0] * near[1]), rel=1e-14, abs=0)  # by hand
    stch = bound(STCH()).double().eval()  # in its warm-up: Σ log Lᵢ
    assert float(stch(losses).loss) == pytest.approx(
        math.log(near[0] + 1e-20) + math.log(near[1] + 1e-20), rel=1e-14, abs=0
    )


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_famo_of_a_half_precision_model_replays_the_official_algorithm_in_float32(half: torch.dtype) -> None:
    # precision="bf16-true" casts every buffer: in bfloat16 Adam's beta2 = 0.999 is 1, its bias
    # correction 0, and ξ never moved (its step count stopped at 256); in float16 the count stopped
    # at 2048. The losses are half values, as the module gives them; the official code runs in float32.
    g = torch.Generator().manual_seed(1)
    rates = torch.tensor([0.99, 0.995, 1.0])  # the first task's loss falls fastest: ξ moves away from it
    noise = [1 + 0.1 * torch.rand(3, generator=g) for _ in range(300)]
    sequence = [(torch.tensor([3.0, 2.0, 1.0]) * rates**t * n).to(half) for t, n in enumerate(noise)]
    mine = bound(FAMO(), "abc").to(half)
    official = OfficialFAMO(3)
    for t, losses in enumerate(sequence):
        if t > 0:
            official.update(losses.float())
        official.get_weighted_loss(losses.float())
        mine(losses)
        mine.after_optimizer_step()
    assert int(mine.adam_step) == len(sequence) - 1
    torch.testing.assert_close(mine.logits, official.w.detach(), rtol=0, atol=1e-5)
    assert float(official.w.detach().abs().max()) > 0.05  # the logits did move
    # A checkpoint of float32 state loads into the cast module without rounding; its device follows.
    state = {k: v.clone() for k, v in mine.state_dict().items()}
    again = bound(FAMO(), "abc").to(half)
    again.load_state_dict(state)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in state.items())
    assert again.to("meta").logits.is_meta


def test_famo_counts_in_integers_after_an_earlier_versions_float_count() -> None:
    # Earlier versions kept adam_step float32: a strategy pickled with the hyper-parameters, or a
    # state loaded with assign=True, brought it back, and bf16-true stalled it at 256 again.
    old = bound(FAMO(), "abc")
    old._buffers["adam_step"] = torch.tensor(300.0)  # as an earlier version pickled it
    unpickled = pickle.loads(pickle.dumps(old))
    assert unpickled.adam_step.dtype == torch.long and int(unpickled.adam_step) == 300
    assigned = bound(FAMO(), "abc")
    assigned.load_state_dict({**assigned.state_dict(), "adam_step": torch.tensor(7.0)}, assign=True)
    assert assigned.adam_step.dtype == torch.long and int(assigned.adam_step) == 7
    assert unpickled.to(torch.bfloat16).adam_step.dtype == torch.long


def test_dwa_of_a_bfloat16_model_keeps_its_epoch_means_in_float32() -> None:
    # Its rates are ratios of epoch means near 1: bfloat16's 8 bits rounded 1.001 to 1.
    dwa = bound(DWA()).to(torch.bfloat16)
    for means in ([1.001, 2.0], [1.0, 2.003]):
        dwa.epoch_losses.add(torch.tensor(means))
        dwa.end_training_epoch()
    assert dwa.previous_means.tolist() == torch.tensor([1.001, 2.0]).tolist()
    assert dwa.last_means.tolist() == torch.tensor([1.0, 2.003]).tolist()


def test_epoch_sums_of_a_half_precision_model_are_float32():
    # precision="bf16-true" converts the module with .to(dtype), states included: a bfloat16 sum
    # stops growing at 256, so 1000 losses of 1 had a mean of 0.256.
    mean = TaskEpochMean(2).to(torch.bfloat16)
    for _ in range(1000):
        mean.add(torch.ones(2, dtype=torch.bfloat16))
    assert mean.means().tolist() == [1.0, 1.0]


def test_famo_task_without_labels_gets_no_weight():
    w = bound(FAMO(), "abc")
    _, grad, _ = loss_and_grads(w, [0.0, 1.0, 3.0])
    assert grad.tolist() == pytest.approx([0.0, 0.75, 0.25])  # z uniform over the two present tasks
    w.after_optimizer_step()
    loss_and_grads(w, [1.0, 1.0, 3.0])  # δ of the task absent before is taken as 0
    official = OfficialFAMO(3)
    official.get_weighted_loss(torch.tensor([5.0, 1.0, 3.0]))
    official.update(torch.tensor([5.0, 1.0, 3.0]))  # δ = 0 for every task: only the weight decay (of 0)
    torch.testing.assert_close(w.logits, official.w.detach(), rtol=0, atol=1e-6)


# -- STCH (Lin et al. 2024) -------------------------------------------------------------------------
def test_stch_warmup_nadir_and_smooth_max_by_hand():
    w = bound(STCH(mu=0.5, warmup_epochs=1, preference=[2.0, 1.0]))
    out, grad, _ = loss_and_grads(w, [1.0, 4.0])  # warm-up: Σ log L
    assert out.loss.item() == pytest.approx(math.log(4.0))
    assert grad.tolist() == pytest.approx([1.0, 0.25])
    w.on_epoch_losses(torch.tensor([9.0, 9.0]))  # epoch 0: warm-up
    assert not w.has_nadir
    w.on_epoch_losses(torch.tensor([2.0, 8.0]))  # epoch 1: the nadir epoch
    assert w.has_nadir and w.nadir.tolist() == [2.0, 8.0]

    L, n, pref, mu = [1.0, 4.0], [2.0, 8.0], [2.0, 1.0], 0.5
    ell = [p * math.log(li / ni + 1e-20) for p, li, ni in zip(pref, L, n, strict=True)]
    lse = math.log(sum(math.exp(e / mu) for e in ell))
    p = [math.exp(e / mu - lse) for e in ell]
    out, grad, _ = loss_and_grads(w, L)
    assert out.loss.item() == pytest.approx(2 * mu * lse, rel=1e-6)
    expected_grad = [2 * pi * wi / li for pi, wi, li in zip(p, pref, L, strict=True)]
    assert grad.tolist() == pytest.approx(expected_grad, rel=1e-5)
    torch.testing.assert_close(out.weights, grad)

    # μ → 0: K times the Tchebycheff maximum max_i w_i ℓ_i.
    sharp = bound(STCH(mu=1e-3, warmup_epochs=0))
    sharp.on_epoch_losses(torch.tensor([1.0, 1.0]))
    assert sharp(torch.tensor([0.5, 3.0])).loss.item() == pytest.approx(2 * math.log(3.0), abs=1e-2)


def test_stch_defaults_zero_nadir_and_missing_task():
    w = bound(STCH())
    assert (w.mu, w.warmup_epochs) == (1.0, 4)
    for _ in range(4):
        w.on_epoch_losses(torch.tensor([1.0, 1.0]))
    assert not w.has_nadir
    w.on_epoch_losses(torch.tensor([0.0, 2.0]))  # a task never labelled in the nadir epoch: not normalised
    assert w.has_nadir and w.nadir.tolist() == [1.0, 2.0]
    out, grad, _ = loss_and_grads(w, [0.0, 1.0])  # no label this step: its term is left out
    assert out.loss.item() == pytest.approx(2 * math.log(0.5), rel=1e-6)
    assert grad.tolist() == pytest.approx([0.0, 2.0], rel=1e-6)
    out, grad, _ = loss_and_grads(w, [0.0, 0.0])
    assert out.loss.item() == 0.0 and grad.tolist() == [0.0, 0.0]


# -- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MINE)
def test_unknown_hyper_parameter_is_named(name):
    with pytest.raises(MultiLossError, match=rf"weighting '{name}' has no hyper-parameter\(s\) \['temprature'\]"):
        create_weighting(name, temprature=2.0)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("dwa", {"temperature": -1.0}, r"'dwa': temperature must be finite and > 0, got -1\.0"),
        ("dwa", {"temperature": 0}, r"'dwa': temperature must be finite and > 0, got 0"),
        ("stch", {"mu": 0.0}, r"'stch': mu must be finite and > 0, got 0\.0"),
        ("stch", {"mu": -2}, r"'stch': mu must be finite and > 0, got -2"),
        ("stch", {"warmup_epochs": -1}, r"'stch': warmup_epochs must be an integer >= 0, got -1"),
        ("stch", {"preference": [1.0, 0.0]}, r"'stch': preference for task 'b' must be > 0, got 0\.0"),
        ("famo", {"lr": 0.0}, r"'famo': lr must be finite and > 0, got 0\.0"),
        ("famo", {"lr": -0.1}, r"'famo': lr must be finite and > 0, got -0\.1"),
        ("famo", {"weight_decay": -1e-3}, r"'famo': weight_decay must be finite and >= 0, got -0\.001"),
        ("famo", {"eps": float("nan")}, r"'famo': eps must be finite and > 0, got nan"),
        ("rlw", {"seed": -1}, r"'rlw': seed must be an integer >= 0, got -1"),
        ("uncertainty", {"init": float("inf")}, r"'uncertainty': init must be finite and within ±80, got inf"),
        ("uncertainty_revised", {"init": [0.0, float("nan")]}, r"'uncertainty_revised': init\[1\] must be finite"),
        (
            "imtl_l",
            {"init": {"b": float("nan")}},
            r"'imtl_l': init for task 'b' must be finite and within ±80, got nan",
        ),
    ],
)
def test_out_of_range_values_are_named(name, kwargs, message):
    with pytest.raises(MultiLossError, match=message):
        create_weighting(name, **kwargs).bind(["a", "b"])  # a list of per-task values is checked by task name


@pytest.mark.parametrize("name", MINE)
def test_too_few_tasks(name):
    with pytest.raises(MultiLossError, match=rf"weighting '{name}' needs at least 2 tasks, got 1: \['only'\]"):
        create_weighting(name).bind(["only"])


def test_per_task_init_names_unknown_task():
    with pytest.raises(MultiLossError, match=r"'uncertainty': init names unknown task\(s\) \['c'\]"):
        bound(Uncertainty(init={"c": 1.0}))


@pytest.mark.parametrize("name", MINE)
def test_config_file_builds_the_strategy_with_its_defaults(name):
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = Path(__file__).parent.parent / "conf" / "weighting" / f"{name}.yaml"
    built = instantiate(OmegaConf.load(path))
    default = create_weighting(name)
    assert type(built) is type(default)
    built.bind(["a", "b"])
    default.bind(["a", "b"])
    assert repr(built) == repr(default)
    for key, value in default.state_dict().items():
        torch.testing.assert_close(built.state_dict()[key], value, rtol=0, atol=0)
