"""Every strategy against its peers: TorchJD (imported: pinned in the ``test`` extra) and LibMTL.

LibMTL's wheel does not import on current torch, so its formulas are transcribed here from its
source (each transcription names its file in ``median-research-group/LibMTL``) and used as an
independent reference. A comparison is to 1e-5 on the weights and on the update ``Jᵀw``, on a
few dozen seeded Jacobians (K from 2 to 10, some with conflicting rows, one rank-deficient, one
with a zero row). Where a peer stops its solver early, its tolerance is set tight here; where the
package differs on purpose, the test states the relation and checks it, so that every deviation
is a decision written in code (the class docstrings say the same in words).

The Gramian strategies are called through a full training step, ``w(losses, parameters=[θ])``
with ``losses = J θ + c``: the returned weights are ``w`` and the gradient of the returned loss
with respect to ``θ`` is the update ``Jᵀw``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import cvxpy
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize, root
from torch import Tensor
from torchjd.aggregation import (
    AlignedMTL,
    AlignedMTLWeighting,
    CAGradWeighting,
    ConstantWeighting,
    GradDrop,
    GradVacWeighting,
    IMTLGWeighting,
    MGDAWeighting,
    NashMTL,
    PCGradWeighting,
    RandomWeighting,
    SumWeighting,
    UPGrad,
    UPGradWeighting,
)

from lightning_multiloss.weighting import (
    DWA,
    FAMO,
    GLS,
    IMTLL,
    RLW,
    STCH,
    Fixed,
    GramianWeighting,
    Uncertainty,
    create_weighting,
)
from lightning_multiloss.weighting import (
    GradDrop as OurGradDrop,
)
from lightning_multiloss.weighting.graddrop import graddrop_gradient

F64 = torch.float64
TOL = 1e-5


# -- the Jacobians -----------------------------------------------------------------------------
def jacobians() -> list[Tensor]:
    """30 random Jacobians (K = 2..10, every third with a row conflicting with the first), then a
    rank-deficient one (K = 5, rank 3) and one with a zero row."""
    g = torch.Generator().manual_seed(2024)
    out = []
    for i in range(30):
        k = 2 + i % 9
        jac = torch.randn(k, k + 2 + i % 5, generator=g, dtype=F64)
        if i % 3 == 1:
            jac[1] = -0.8 * jac[0] + 0.3 * jac[1]  # cos(g₀, g₁) close to -1
        out.append(jac)
    out.append(torch.randn(5, 3, generator=g, dtype=F64) @ torch.randn(3, 8, generator=g, dtype=F64))
    zero_row = torch.randn(4, 7, generator=g, dtype=F64)
    zero_row[2] = 0.0
    out.append(zero_row)
    return out


JACOBIANS = jacobians()
RANK_DEFICIENT, ZERO_ROW = len(JACOBIANS) - 2, len(JACOBIANS) - 1
FULL_RANK = [i for i, jac in enumerate(JACOBIANS) if int(torch.linalg.matrix_rank(jac)) == jac.shape[0]]
CASES = pytest.mark.parametrize("case", range(len(JACOBIANS)))


def losses_of(jac: Tensor, seed: int = 0) -> Tensor:
    """Positive task losses (some strategies use them), fixed per Jacobian."""
    return 0.5 + torch.rand(jac.shape[0], generator=torch.Generator().manual_seed(seed), dtype=F64)


def names(k: int) -> list[str]:
    return [f"t{i}" for i in range(k)]


def bound(name: str, k: int, **hparams: Any) -> GramianWeighting:
    strategy = create_weighting(name, **hparams)
    assert isinstance(strategy, GramianWeighting)
    strategy.bind(names(k))
    return strategy


def full_step(strategy: GramianWeighting, jac: Tensor, losses: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One training step on ``losses = Jθ + c`` at θ = 0: the weights and the update ``Jᵀw``."""
    theta = torch.zeros(jac.shape[1], dtype=F64, requires_grad=True)
    offset = losses_of(jac) if losses is None else losses
    result = strategy(jac @ theta + offset, parameters=[theta])
    (update,) = torch.autograd.grad(result.loss, theta)
    return result.weights.to(F64), update


def assert_same(ours: Tensor, peer: Tensor, what: str, tol: float = TOL) -> None:
    torch.testing.assert_close(ours.to(F64), peer.to(F64), atol=tol, rtol=0, msg=lambda m: f"{what}: {m}")


def min_norm_gap(jac: Tensor, ours: Tensor, peer: Tensor) -> None:
    """``ours`` is the exact min-norm point of the hull and ``peer`` a point of the hull: then
    ‖Jᵀw‖² ≤ ‖Jᵀw_peer‖² and ‖Jᵀ(w − w_peer)‖² ≤ ‖Jᵀw_peer‖² − ‖Jᵀw‖² (optimality of the min-norm point)."""
    ours_sq, peer_sq = float((ours @ jac).square().sum()), float((peer @ jac).square().sum())
    assert ours_sq <= peer_sq + 1e-12
    assert float(((ours - peer) @ jac).square().sum()) <= peer_sq - ours_sq + 1e-10


@contextmanager
def recorded_permutations() -> Iterator[list[Tensor]]:
    """Records every permutation ``torch.randperm`` returns inside the block (our random orders)."""
    tape: list[Tensor] = []
    real = torch.randperm

    def recording(*args: Any, **kwargs: Any) -> Tensor:
        permutation = real(*args, **kwargs)
        tape.append(permutation.clone())
        return permutation

    with mock.patch.object(torch, "randperm", recording):
        yield tape


@contextmanager
def replayed_permutations(permutations: list[Tensor]) -> Iterator[None]:
    """``torch.randperm`` returns these permutations, in order, inside the block (the peer's draws)."""
    queue = list(permutations)
    with mock.patch.object(torch, "randperm", lambda *args, **kwargs: queue.pop(0)):
        yield
    assert not queue, "the peer drew fewer permutations than were recorded"


# -- TorchJD: the strategies both packages have ------------------------------------------------
@CASES
def test_upgrad_equals_torchjd(case: int) -> None:
    # TorchJD's defaults (trace normalisation, reg_eps = 1e-4, quadprog) are ours; LibMTL's
    # UPGrad (LibMTL/weighting/UPGrad.py) is TorchJD's code, copied.
    jac = JACOBIANS[case]
    weights, update = full_step(bound("upgrad", jac.shape[0]), jac)
    assert_same(weights, UPGradWeighting()(jac @ jac.T), "weights")
    assert_same(update, UPGrad()(jac), "update")


@CASES
def test_imtl_g_equals_torchjd(case: int) -> None:
    jac = JACOBIANS[case]
    weights, update = full_step(bound("imtl_g", jac.shape[0]), jac)
    assert_same(weights, IMTLGWeighting()(jac @ jac.T), "weights")
    assert_same(update, IMTLGWeighting()(jac @ jac.T) @ jac, "update")


def dependent_float32_rows() -> list[Tensor]:
    """Float32 task gradients that are linearly dependent: parallel, opposite, a sum of two others,
    five of rank 2. Their float32 Gramian has "zero" eigenvalues of about 1e-7·λ_max, of either sign."""
    g = torch.Generator().manual_seed(11)
    a, b = torch.randn(2, 64, generator=g)
    low = torch.randn(5, 2, generator=g) @ torch.randn(2, 64, generator=g)
    return [torch.stack([a, 3.0 * a]), torch.stack([a, -1.6 * a]), torch.stack([a, b, a + b]), low]


@pytest.mark.parametrize(("name", "peer"), [("imtl_g", IMTLGWeighting), ("aligned_mtl", AlignedMTLWeighting)])
def test_float32_gramians_of_dependent_gradients_equal_torchjd(name: str, peer: Any) -> None:
    # TorchJD decides the rank with the float32 Gramian's own ε; the package took float64's on the
    # promoted copy, and counted the rounding as rank (an update 1e-6 of TorchJD's, or the wrong sign).
    for rows in dependent_float32_rows():
        gramian = rows @ rows.T
        ours = bound(name, rows.shape[0]).weights_from_gramian(gramian, torch.ones(rows.shape[0]))
        theirs = peer()(gramian)
        scale = float(rows.norm(dim=1).max())
        torch.testing.assert_close((ours @ rows).double(), (theirs @ rows).double(), atol=1e-4 * scale, rtol=0)


@CASES
def test_aligned_mtl_equals_torchjd_and_is_libmtl_over_k(case: int) -> None:
    jac = JACOBIANS[case]
    k = jac.shape[0]
    weights, update = full_step(bound("aligned_mtl", k), jac)
    assert_same(weights, AlignedMTLWeighting()(jac @ jac.T), "weights")
    assert_same(update, AlignedMTL()(jac), "update")
    # The paper's code and LibMTL sum the balanced matrix (B·1); we average it (B·1/K), as TorchJD:
    # their weights are K times ours.
    assert_same(k * weights, libmtl_aligned_mtl(jac), "K × weights vs LibMTL")


@CASES
@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
def test_cagrad_equals_torchjd_solved_tightly(case: int) -> None:
    jac = JACOBIANS[case]
    k = jac.shape[0]
    weights, update = full_step(bound("cagrad", k, c=0.4, rescale=0), jac)
    peer = tight_cvxpy(lambda: CAGradWeighting(c=0.4)(jac @ jac.T))
    if case == ZERO_ROW:
        # The hull contains 0 (J·e₂ = 0): Jᵀw* = 0, a Pareto-stationary point. TorchJD returns
        # zero weights (no update); we return the average gradient, as the paper's code and LibMTL.
        assert_same(peer, torch.zeros(k, dtype=F64), "TorchJD's weights at a stationary point")
        assert_same(weights, torch.full((k,), 1 / k, dtype=F64), "ours at a stationary point")
        return
    assert_same(weights, peer, "weights")
    assert_same(update, peer @ jac, "update")
    # What is left (up to a few 1e-6) is Clarabel's: our inner objective is never higher.
    assert cagrad_objective(jac, weights) <= cagrad_objective(jac, peer) + 1e-12


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
def test_cagrad_equals_torchjd_when_the_hull_contains_zero(seed: int) -> None:
    # Six gradients in a plane: their hull often contains 0, yet the minimiser of the inner
    # problem need not have Jᵀw* = 0 (b = G1/K pulls it away); ours used to return g₀ there.
    g = torch.Generator().manual_seed(seed)
    jac = torch.randn(6, 2, generator=g, dtype=F64) @ torch.randn(2, 5, generator=g, dtype=F64)
    weights, update = full_step(bound("cagrad", 6, c=0.4, rescale=0), jac)
    peer = tight_cvxpy(lambda: CAGradWeighting(c=0.4)(jac @ jac.T))
    assert_same(weights, peer, "weights")
    assert_same(update, peer @ jac, "update")
    assert cagrad_objective(jac, weights) <= cagrad_objective(jac, peer) + 1e-12


@pytest.mark.parametrize("case", FULL_RANK)
def test_cagrad_equals_libmtl_solved_tightly(case: int) -> None:
    # LibMTL's defaults (calpha 0.5, rescale 1); its SLSQP stops at ftol 1e-6 by default (about
    # 1e-4 off in the weights): at 1e-12 it finds our point, and ours is never worse at 1e-6.
    jac = JACOBIANS[case]
    weights, update = full_step(bound("cagrad", jac.shape[0], c=0.5, rescale=1), jac)
    libmtl_update, inner = libmtl_cagrad(jac, 0.5, 1, ftol=1e-12)
    assert_same(update, libmtl_update, "update")
    assert_same(weights, cagrad_weights(jac, inner, 0.5) / (1 + 0.5**2), "weights")
    _, loose = libmtl_cagrad(jac, 0.5, 1)
    ours_inner = (weights * (1 + 0.5**2) - 1 / len(jac)) / float(weights.sum() * (1 + 0.5**2) - 1)
    assert libmtl_cagrad_objective(jac, ours_inner, 0.5) <= libmtl_cagrad_objective(jac, loose, 0.5) + 1e-9


@pytest.mark.parametrize("case", FULL_RANK)
def test_imtl_g_equals_libmtl(case: int) -> None:
    # LibMTL/weighting/IMTL.py, its gradient part (loss scales at their initial 0): a closed form
    # that inverts D Uᵀ, so full-rank Jacobians without a zero row only (TorchJD and we use G⁺).
    jac = JACOBIANS[case]
    weights, update = full_step(bound("imtl_g", jac.shape[0]), jac)
    assert_same(weights, libmtl_imtl_g(jac), "weights")
    assert_same(update, libmtl_imtl_g(jac) @ jac, "update")


@pytest.mark.parametrize("case", [i for i in range(len(JACOBIANS)) if i not in (RANK_DEFICIENT, ZERO_ROW)])
def test_mgda_equals_libmtl_solved_tightly_and_is_no_worse_than_the_peers(case: int) -> None:
    jac = JACOBIANS[case]
    k = jac.shape[0]
    weights, update = full_step(bound("mgda", k), jac)
    # LibMTL (the paper's solver) with its stopping tolerance 1e-5 -> 1e-13: the same point.
    reference = libmtl_mgda(jac, stop=1e-13, max_iter=3000)
    assert_same(weights, reference, "weights vs LibMTL (tight)")
    assert_same(update, reference @ jac, "update vs LibMTL (tight)")
    # At the peers' own tolerances (LibMTL 1e-5 and 250 steps, TorchJD's Frank-Wolfe: epsilon
    # 1e-3 and 100 steps) they stop early; ours is the exact minimiser, never worse.
    min_norm_gap(jac, weights, libmtl_mgda(jac))
    min_norm_gap(jac, weights, MGDAWeighting()(jac @ jac.T))
    if k == 2:  # Frank-Wolfe is exact on a segment
        assert_same(weights, MGDAWeighting(epsilon=1e-12, max_iters=1000)(jac @ jac.T), "weights vs TorchJD")


def test_mgda_leaves_a_zero_gradient_out_where_the_peers_stop_on_it() -> None:
    # A zero row (a task without a label in the batch) is the min-norm point of the hull: LibMTL and
    # TorchJD put all the weight on it (no update for anyone). We leave it out: the min-norm point of
    # the other rows, as LibMTL computes it for them alone, and weight 0 for the zero one.
    jac = JACOBIANS[ZERO_ROW]
    assert float(jac[2].abs().max()) == 0.0
    weights, update = full_step(bound("mgda", 4), jac)
    assert_same(libmtl_mgda(jac, stop=1e-13, max_iter=3000), torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=F64), "LibMTL")
    others = [0, 1, 3]
    reference = libmtl_mgda(jac[others], stop=1e-13, max_iter=3000)
    assert_same(weights[others], reference, "weights vs LibMTL on the non-zero rows")
    assert float(weights[2]) == 0.0
    assert_same(update, reference @ jac[others], "update")


def test_mgda_rank_deficient_same_update_and_least_norm_weights() -> None:
    # K = 5 gradients in a 3-dimensional span: the min-norm update is unique, the weights are not.
    jac = JACOBIANS[RANK_DEFICIENT]
    weights, update = full_step(bound("mgda", 5), jac)
    reference = libmtl_mgda(jac, stop=1e-13, max_iter=3000)
    assert_same(update, reference @ jac, "update vs LibMTL (tight)")
    assert float(weights.norm()) <= float(reference.norm()) + 1e-9  # the ridge picks the least-norm weights


def test_mgda_two_tasks_at_a_vertex_libmtl_stops_short_of_it() -> None:
    # ⟨g₁, g₂⟩ ≥ ‖g₁‖²: the min-norm point is g₁ itself. LibMTL's two-task rule returns 0.999 there.
    jac = torch.tensor([[1.0, 0.0], [2.0, 0.1]], dtype=F64)
    weights, _ = full_step(bound("mgda", 2), jac)
    assert_same(weights, torch.tensor([1.0, 0.0], dtype=F64), "ours")
    assert_same(libmtl_mgda(jac), torch.tensor([0.999, 0.001], dtype=F64), "LibMTL")
    assert_same(MGDAWeighting()(jac @ jac.T), weights, "TorchJD")


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_mgda_normalisations_equal_libmtl(normalization: str) -> None:
    # LibMTL divides each gradient by its normaliser and returns the min-norm weights of the
    # normalised gradients; the weights on the raw gradients are those divided by the normalisers.
    for case in FULL_RANK[:8:2]:
        jac = JACOBIANS[case]
        losses = losses_of(jac, seed=case)
        weights, _ = full_step(bound("mgda", jac.shape[0], normalization=normalization), jac, losses)
        norms = jac.norm(dim=1)
        n = {"l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
        assert_same(weights, libmtl_mgda(jac / n[:, None], stop=1e-13, max_iter=3000) / n, f"case {case}")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_nash_mtl_default_is_the_reference() -> None:
    """The default weights solve Gα = 1/α for the raw G: those of the official code (here in
    TorchJD's adaptation, with its stopping rule tightened), of LibMTL (the same algorithm,
    LibMTL/weighting/Nash_MTL.py) and of an independent solve with scipy."""
    failures, cases = 0, FULL_RANK[::2]  # K = 2..10, conflicting rows included
    for case in cases:
        jac = JACOBIANS[case]
        k = jac.shape[0]
        g = jac @ jac.T
        weights, update = full_step(bound("nash_mtl", k), jac)  # the default: what a user gets
        independent = scipy_nash(g)
        assert_same(weights, independent, f"case {case}: weights vs scipy", tol=1e-6)
        reference = reference_nash(jac)
        if float((reference * (g @ reference) - 1).abs().max()) > 1e-6:
            # The reference's first convex program (its linearisation at α = 1) is unbounded: it
            # keeps its starting point α = 1 for this step.
            assert_same(reference, torch.ones(k, dtype=F64), f"case {case}: the reference's fallback")
            failures += 1
            continue
        assert_same(weights, reference, f"case {case}: weights vs the reference")
        assert_same(update, reference @ jac, f"case {case}: update vs the reference")
        # The named variant solves for G/‖G‖_F: weights √‖G‖_F times the reference's.
        normalised = bound("nash_mtl", k, normalize=True).weights_from_gramian(g, losses_of(jac))
        assert_same(normalised, torch.linalg.matrix_norm(g).sqrt() * reference, f"case {case}: normalize=True")
    assert failures <= len(cases) // 4, f"the reference failed on {failures} of {len(cases)} Jacobians"


@pytest.mark.parametrize("case", [i for i in range(len(JACOBIANS)) if JACOBIANS[i].shape[0] == 2])
def test_pcgrad_two_tasks_equals_torchjd_and_libmtl(case: int) -> None:
    # For two tasks the random order does not matter.
    jac = JACOBIANS[case]
    weights, update = full_step(bound("pcgrad", 2), jac)
    assert_same(weights, PCGradWeighting()(jac @ jac.T), "weights vs TorchJD")
    libmtl_weights, libmtl_update = libmtl_pcgrad(jac, [[0, 1], [1, 0]])
    assert_same(weights, libmtl_weights, "weights vs LibMTL")
    assert_same(update, libmtl_update, "update vs LibMTL")


@CASES
def test_pcgrad_replays_the_same_orders_as_torchjd_and_libmtl(case: int) -> None:
    # Both peers draw one permutation of the K tasks per task i with torch.randperm / random.shuffle:
    # ours are recorded and fed to the peers, so the three visit the tasks in the same order.
    jac = JACOBIANS[case]
    k = jac.shape[0]
    with recorded_permutations() as orders:
        weights, update = full_step(bound("pcgrad", k, seed=case), jac)
    assert len(orders) == k
    with replayed_permutations(orders):
        peer = PCGradWeighting()(jac @ jac.T)
    assert_same(weights, peer, "weights vs TorchJD")
    libmtl_weights, libmtl_update = libmtl_pcgrad(jac, [order.tolist() for order in orders])
    # LibMTL also visits j = i, so it would project gᵢ' off gᵢ itself if they conflicted (possible
    # for K ≥ 3 after other projections; the paper, TorchJD and we skip j = i): not on these.
    assert libmtl_self_projections(jac, [order.tolist() for order in orders]) == 0
    assert_same(weights, libmtl_weights, "weights vs LibMTL")
    assert_same(update, libmtl_update, "update vs LibMTL")


def test_gradvac_replays_torchjd_and_libmtl_over_several_steps() -> None:
    """Three steps each for K = 2..6 (the target similarities φ̂ carry over), at β = 0.5 (the
    peers' default; ours is the paper's 0.01), with the same random orders."""
    g = torch.Generator().manual_seed(7)
    for k in range(2, 7):
        ours = bound("gradvac", k, beta=0.5, seed=k)
        peer = GradVacWeighting(beta=0.5)
        target = torch.zeros(k, k, dtype=F64)  # LibMTL's rho_T (whole_model grouping)
        for step in range(3):
            jac = torch.randn(k, k + 3, generator=g, dtype=F64)
            jac[1] = -0.6 * jac[0] + 0.4 * jac[1]
            with recorded_permutations() as orders:
                weights, update = full_step(ours, jac)
            others = [[j for j in order.tolist() if j != i] for i, order in enumerate(orders)]
            # TorchJD shuffles the list of the other tasks: translate our order into its indices.
            indices = [torch.tensor([j - (j > i) for j in order]) for i, order in enumerate(others)]
            with replayed_permutations(indices):
                peer_weights = peer(jac @ jac.T)
            assert_same(weights, peer_weights, f"K={k} step {step}: weights vs TorchJD")
            assert_same(update, peer_weights @ jac, f"K={k} step {step}: update vs TorchJD")
            # LibMTL returns no weights (ones): the update only.
            assert_same(update, libmtl_gradvac(jac, target, 0.5, others), f"K={k} step {step}: update vs LibMTL")


def test_db_mtl_first_step_is_ten_times_libmtl_and_equal_without_ema() -> None:
    g = torch.Generator().manual_seed(3)
    for k in (2, 3, 5):
        steps = [
            (torch.randn(k, 6, generator=g, dtype=F64), 0.2 + torch.rand(k, generator=g, dtype=F64)) for _ in range(3)
        ]
        # LibMTL's running average of ∇log L starts at zero, so its first update is (1 − β) = 0.1
        # times ours (our EMA is on the gradient norms, whose ratios do not depend on that start).
        jac, losses = steps[0]
        _, update = full_step(bound("db_mtl", k, beta=0.9), jac, losses)
        libmtl_update, _ = libmtl_db_mtl(jac, losses, torch.zeros_like(jac), beta=0.9, step=1)
        assert_same(update, 10.0 * libmtl_update, f"K={k}: first step, 10 × LibMTL")
        # Without the EMA (β = 0) the two are the same at every step.
        ours = bound("db_mtl", k, beta=0.0)
        buffer = torch.zeros_like(jac)
        for step, (jac, losses) in enumerate(steps, start=1):
            _, update = full_step(ours, jac, losses)
            libmtl_update, buffer = libmtl_db_mtl(jac, losses, buffer, beta=0.0, step=step)
            assert_same(update, libmtl_update, f"K={k} step {step}: β = 0")


def test_gradnorm_first_update_equals_libmtl() -> None:
    """LibMTL trains its logits with the model's optimizer (SGD here, at our lr) from the second
    epoch on, with L(0) the first epoch's mean losses; ours takes a plain gradient step itself
    from the first training step on, with L(0) that step's losses. Given the same L(0), the
    weights after one update are the same."""
    g = torch.Generator().manual_seed(5)
    for k in (2, 3, 4):
        jac1, jac2 = torch.randn(k, 5, generator=g, dtype=F64), torch.randn(k, 5, generator=g, dtype=F64)
        first, second = 0.5 + torch.rand(k, generator=g, dtype=F64), 0.2 + torch.rand(k, generator=g, dtype=F64)
        ours = bound("gradnorm", k, alpha=1.5, lr=0.025)
        weights1, _ = full_step(ours, jac1, first)
        _, _ = full_step(ours, jac2, second)  # step 2: ω moves by the step-2 gradient, after its weights
        weights3, _ = full_step(ours, jac2, second)
        # LibMTL/weighting/GradNorm.py, the loss_scale initialised at 1 (a softmax: any constant).
        loss_scale = torch.ones(k, dtype=F64, requires_grad=True)
        optimizer = torch.optim.SGD([loss_scale], lr=0.025)
        assert_same(weights1, k * F.softmax(loss_scale.detach(), dim=-1), f"K={k}: first weights")
        for jac, losses in ((jac1, first), (jac2, second)):
            optimizer.zero_grad()
            libmtl_gradnorm_loss(loss_scale, jac, losses, first, alpha=1.5).backward()
            optimizer.step()
        assert_same(weights3, k * F.softmax(loss_scale.detach(), dim=-1), f"K={k}: after two updates")


# -- LibMTL: the loss-level strategies ---------------------------------------------------------
def test_dwa_equals_libmtl() -> None:
    # LibMTL/weighting/DWA.py: w = K·softmax(L̄(t−1)/L̄(t−2) / T) from epoch 2 on, 1 before.
    epoch_means = torch.tensor([[1.0, 2.0, 0.5], [0.8, 1.9, 0.3], [0.7, 1.0, 0.29], [0.5, 0.9, 0.2], [0.45, 0.5, 0.1]])
    ours = DWA(temperature=2.0)
    ours.bind(names(3))
    for epoch in range(len(epoch_means)):
        if epoch > 1:
            expected = 3 * F.softmax(epoch_means[epoch - 1] / epoch_means[epoch - 2] / 2.0, dim=-1)
        else:
            expected = torch.ones(3)
        assert_same(ours(torch.ones(3)).weights, expected, f"epoch {epoch}")
        ours.on_epoch_losses(epoch_means[epoch])


def test_rlw_has_libmtl_distribution() -> None:
    # LibMTL/weighting/RLW.py (and TorchJD's Random): w = softmax(ε), ε ~ N(0, I) each step. Ours
    # draws from its own seeded generator: compare the distributions (mean and E[max w]) with a
    # sample of the peers' formula, and the evaluation weights with the expectation 1/K.
    k, n = 4, 4000
    ours = RLW(seed=1)
    ours.bind(names(k))
    ours_sample = torch.stack([ours(torch.ones(k)).weights for _ in range(n)]).to(F64)
    torch.manual_seed(11)
    peer_sample = torch.stack([RandomWeighting()(torch.eye(k, dtype=F64)) for _ in range(n)])
    libmtl_sample = F.softmax(torch.randn(n, k, generator=torch.Generator().manual_seed(12), dtype=F64), dim=-1)
    for sample in (peer_sample, libmtl_sample):
        assert abs(float(ours_sample.max(dim=1).values.mean() - sample.max(dim=1).values.mean())) < 0.012
    assert float((ours_sample.mean(0) - 1 / k).abs().max()) < 0.01
    ours.eval()
    assert_same(ours(torch.ones(k)).weights, torch.full((k,), 1 / k, dtype=F64), "evaluation: E[w]")


def test_uncertainty_equals_libmtl_uw_from_its_start() -> None:
    # LibMTL/weighting/UW.py: L = Σ Lᵢ/(2e^{sᵢ}) + sᵢ/2, s initialised at -0.5; ours starts at
    # s = 0 (σ = 1, the paper), so init=-0.5 reproduces LibMTL.
    losses = torch.tensor([0.7, 2.0, 0.1], dtype=torch.float32, requires_grad=True)
    ours = Uncertainty(init=-0.5)
    ours.bind(names(3))
    out = ours(losses)
    s = torch.full((3,), -0.5, requires_grad=True)
    peer = (losses / (2 * s.exp()) + s / 2).sum()
    assert_same(out.loss.detach(), peer.detach(), "loss")
    assert_same(out.weights, (1 / (2 * s.exp())).detach(), "weights")
    ours_grads = torch.autograd.grad(out.loss, [losses, *ours.parameters()])
    peer_grads = torch.autograd.grad(peer, [losses, s])
    for a, b in zip(ours_grads, peer_grads, strict=True):
        assert_same(a, b, "gradient")


def test_imtl_l_equals_libmtl() -> None:
    # LibMTL/weighting/IMTL.py, its loss part: Σ e^{sᵢ}Lᵢ − sᵢ, s initialised at 0.
    losses = torch.tensor([0.7, 2.0, 0.1], requires_grad=True)
    ours = IMTLL()
    ours.bind(names(3))
    out = ours(losses)
    s = torch.zeros(3, requires_grad=True)
    peer = (s.exp() * losses - s).sum()
    assert_same(out.loss.detach(), peer.detach(), "loss")
    for a, b in zip(
        torch.autograd.grad(out.loss, [losses, *ours.parameters()]), torch.autograd.grad(peer, [losses, s]), strict=True
    ):
        assert_same(a, b, "gradient")


def test_gls_gradient_equals_libmtl() -> None:
    # LibMTL/weighting/GLS.py: L = (Π Lᵢ)^{1/K}. Same loss and gradient; LibMTL reports
    # Lᵢ/(K Π L) as the weights, we report the gradient coefficient ∂L/∂Lᵢ = L/(K Lᵢ).
    losses = torch.tensor([0.7, 2.0, 0.1, 1.3], requires_grad=True)
    ours = GLS()
    ours.bind(names(4))
    out = ours(losses)
    peer = torch.pow(losses.prod(), 1.0 / 4)
    assert_same(out.loss.detach(), peer.detach(), "loss")
    (peer_grad,) = torch.autograd.grad(peer, losses)
    assert_same(torch.autograd.grad(out.loss, losses)[0], peer_grad, "gradient")
    assert_same(out.weights, peer_grad, "weights: the gradient coefficients")


def test_stch_gradient_equals_libmtl() -> None:
    # LibMTL/weighting/STCH.py: the warm-up Σ log(Lᵢ + 1e-20), then with the nadir n (the mean
    # losses of the last warm-up epoch) K·μ·log Σ exp((ℓᵢ − max ℓ)/μ), ℓᵢ = log(Lᵢ/nᵢ + 1e-20).
    # LibMTL leaves out the + max ℓ (a constant for the gradient): same gradient, lower value.
    mu, nadir = 0.5, torch.tensor([2.0, 4.0, 1.0])
    ours = STCH(mu=mu, warmup_epochs=0)
    ours.bind(names(3))
    losses = torch.tensor([0.7, 2.0, 0.1], requires_grad=True)
    warm = torch.log(losses + 1e-20).sum()
    assert_same(torch.autograd.grad(ours(losses).loss, losses)[0], torch.autograd.grad(warm, losses)[0], "warm-up")
    ours.on_epoch_losses(nadir)
    logs = torch.log(losses / nadir + 1e-20)
    peer = mu * torch.log(torch.exp((logs - logs.detach().max()) / mu).sum()) * 3
    out = ours(losses)
    assert_same(torch.autograd.grad(out.loss, losses)[0], torch.autograd.grad(peer, losses)[0], "gradient")
    assert_same(out.loss.detach() - 3 * logs.detach().max(), peer.detach(), "value, less K·max ℓ")


def test_famo_equals_libmtl_given_the_same_post_step_losses() -> None:
    # LibMTL/weighting/FAMO.py re-evaluates the losses on the same batch after the step; ours uses
    # the next step's losses. Given the same "after" losses, the weights and ξ are the same.
    sequence = [torch.tensor([1.0, 3.0, 0.5]), torch.tensor([0.6, 2.9, 0.45]), torch.tensor([0.5, 2.0, 0.44])]
    ours = FAMO(lr=0.025, weight_decay=1e-3)
    ours.bind(names(3))
    w = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=0.025, weight_decay=1e-3)
    previous: Tensor | None = None
    for losses in sequence:
        if previous is not None:  # LibMTL's update_w(curr_losses)
            delta = (previous + 1e-8).log() - (losses + 1e-8).log()
            (d,) = torch.autograd.grad(F.softmax(w, -1), w, grad_outputs=delta)
            optimizer.zero_grad()
            w.grad = d
            optimizer.step()
        leaf = losses.clone().requires_grad_(True)
        z = F.softmax(w.detach(), -1)
        big_d = leaf + 1e-8
        peer = (big_d.log() * z / (z / big_d).sum().detach()).sum()
        out = ours(leaf)
        assert_same(torch.autograd.grad(out.loss, leaf)[0], torch.autograd.grad(peer, leaf)[0], "gradient")
        ours.after_optimizer_step()
        previous = losses
    assert_same(ours.logits, w.detach(), "ξ")


def test_fixed_equals_torchjd_constant_and_sum() -> None:
    jac = JACOBIANS[4]
    losses = losses_of(jac)
    ours = Fixed([0.5, 2.0, 1.0, 0.0, 3.0, 1.0])
    ours.bind(names(6))
    assert_same(ours(losses).weights, ConstantWeighting(torch.tensor([0.5, 2.0, 1.0, 0.0, 3.0, 1.0]))(jac), "Constant")
    plain = Fixed()
    plain.bind(names(6))
    assert_same(plain(losses).weights, SumWeighting()(jac), "Sum")


def test_graddrop_equals_torchjd_and_libmtl_on_positive_representations() -> None:
    """One sample, so the batch sums are the gradients: TorchJD's GradDrop on the matrix of the
    task gradients with our uniform draws is our gradient. LibMTL (LibMTL/weighting/GradDrop.py,
    leak 0) multiplies each sample's gradient by the sign of the representation before summing
    (as the authors' code); we do not: the same on a positive (post-ReLU) representation."""
    g = torch.Generator().manual_seed(9)
    for k, batch in ((2, 1), (3, 1), (4, 5)):
        coefficients = torch.randn(k, batch, 6, generator=g, dtype=F64)
        ours = OurGradDrop(seed=k)
        ours.bind(names(k))
        uniform = ours.uniform((6,), 0).to(F64)  # the draws of the first step
        z = (0.1 + torch.rand(batch, 6, generator=g, dtype=F64)).requires_grad_(True)
        losses = (coefficients * z).sum(dim=(1, 2))
        (gradient,) = torch.autograd.grad(ours(losses, representation=z).loss, z)
        if batch == 1:
            with mock.patch.object(torch, "rand", return_value=uniform):
                peer = GradDrop()(coefficients[:, 0])
            assert_same(gradient[0], peer, f"K={k}: TorchJD")
        assert_same(gradient, libmtl_graddrop(coefficients, z.detach(), uniform), f"K={k}: LibMTL")
        # With signs, LibMTL's masks come from the sign-weighted sums: the same function, other sums.
        signed = z.detach() * torch.where(torch.arange(6) % 2 == 0, 1.0, -1.0).to(F64)
        expected = graddrop_gradient(coefficients, uniform, (coefficients * signed.sign()).sum(1))
        assert_same(expected, libmtl_graddrop(coefficients, signed, uniform), f"K={k}: LibMTL, mixed signs")


# -- transcriptions of LibMTL (median-research-group/LibMTL) and reference solvers -------------
def libmtl_aligned_mtl(grads: Tensor) -> Tensor:
    """LibMTL/weighting/Aligned_MTL.py (``torch.symeig`` is ``torch.linalg.eigh`` today)."""
    m = grads @ grads.t()
    lmbda, v = torch.linalg.eigh(m)
    tol = torch.max(lmbda) * max(m.shape[-2:]) * torch.finfo().eps
    rank = sum(lmbda > tol)
    order = torch.argsort(lmbda, dim=-1, descending=True)
    lmbda, v = lmbda[order][:rank], v[:, order][:, :rank]
    sigma = torch.diag(1 / lmbda.sqrt())
    b = lmbda[-1].sqrt() * ((v @ sigma) @ v.t())
    return b.sum(0)


def libmtl_cagrad(grads: Tensor, calpha: float, rescale: int, ftol: float = 1e-6) -> tuple[Tensor, Tensor]:
    """LibMTL/weighting/CAGrad.py: the update and its inner ``w`` (SLSQP at ``ftol``, scipy's default 1e-6)."""
    gg = grads @ grads.t()
    g0_norm = (gg.mean() + 1e-8).sqrt()
    x_start = np.ones(len(grads)) / len(grads)
    a, b = gg.numpy(), x_start.copy()
    c = (calpha * g0_norm + 1e-8).item()

    def objfn(x: np.ndarray) -> float:
        return float(
            (
                x.reshape(1, -1).dot(a).dot(b.reshape(-1, 1))
                + c * np.sqrt(x.reshape(1, -1).dot(a).dot(x.reshape(-1, 1)) + 1e-8)
            ).sum()
        )

    constraints = {"type": "eq", "fun": lambda x: 1 - sum(x)}
    res = minimize(
        objfn, x_start, bounds=[(0, 1)] * len(grads), constraints=constraints, options={"ftol": ftol, "maxiter": 1000}
    )
    ww = torch.from_numpy(res.x)
    gw = (grads * ww.view(-1, 1)).sum(0)
    g = grads.mean(0) + c / (gw.norm() + 1e-8) * gw
    return g / (1.0, 1 + calpha**2, 1 + calpha)[rescale], ww


def libmtl_cagrad_objective(grads: Tensor, w: Tensor, calpha: float) -> float:
    gg = grads @ grads.t()
    return float(w @ gg.mean(1) + calpha * (gg.mean() + 1e-8).sqrt() * (w @ gg @ w + 1e-8).sqrt())


def cagrad_weights(grads: Tensor, inner: Tensor, c: float) -> Tensor:
    """The paper's d = g₀ + c‖g₀‖/‖Jᵀw*‖ Jᵀw* as weights on the rows (before the rescale)."""
    gg = grads @ grads.t()
    return 1 / len(grads) + c * gg.mean().sqrt() / (inner @ gg @ inner).sqrt() * inner


def cagrad_objective(grads: Tensor, weights: Tensor) -> float:
    """CAGrad's inner objective (c = 0.4) at the w* recovered from the final weights 1/K + λw*."""
    k, gg = len(grads), grads @ grads.t()
    inner = (weights - 1 / k) / float(weights.sum() - 1)
    return float(inner @ gg.mean(1) + 0.4 * gg.mean().sqrt() * (inner @ gg @ inner).sqrt())


def libmtl_imtl_g(grads: Tensor) -> Tensor:
    """LibMTL/weighting/IMTL.py, the weights ``alpha`` from the gradients."""
    task_num = len(grads)
    grads_unit = grads / torch.norm(grads, p=2, dim=-1, keepdim=True)
    d = grads[0:1].repeat(task_num - 1, 1) - grads[1:]
    u = grads_unit[0:1].repeat(task_num - 1, 1) - grads_unit[1:]
    alpha = torch.matmul(torch.matmul(grads[0], u.t()), torch.inverse(torch.matmul(d, u.t())))
    return torch.cat((1 - alpha.sum().unsqueeze(0), alpha), dim=0)


def libmtl_mgda(grads: Tensor, stop: float = 1e-5, max_iter: int = 250) -> Tensor:
    """LibMTL/weighting/MGDA.py, ``_find_min_norm_element`` (the paper's solver), with its
    ``STOP_CRIT`` and ``MAX_ITER`` as arguments."""

    def min_norm_element_from2(v1v1: Tensor, v1v2: Tensor, v2v2: Tensor) -> tuple[Any, Any]:
        if v1v2 >= v1v1:
            return 0.999, v1v1
        if v1v2 >= v2v2:
            return 0.001, v2v2
        gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
        return gamma, v2v2 + gamma * (v1v2 - v2v2)

    def min_norm_2d(grad_mat: Tensor) -> list[Any]:
        dmin, sol = 1e8, []
        for i in range(grad_mat.size()[0]):
            for j in range(i + 1, grad_mat.size()[0]):
                c, d = min_norm_element_from2(grad_mat[i, i], grad_mat[i, j], grad_mat[j, j])
                if d < dmin:
                    dmin, sol = d, [(i, j), c, d]
        return sol

    def projection2simplex(y: Tensor) -> Tensor:
        m = len(y)
        sorted_y = torch.sort(y, descending=True)[0]
        tmpsum, tmax_f = 0.0, (torch.sum(y) - 1.0) / m
        for i in range(m - 1):
            tmpsum += sorted_y[i]
            tmax = (tmpsum - 1) / (i + 1.0)
            if tmax > sorted_y[i + 1]:
                tmax_f = tmax
                break
        return torch.max(y - tmax_f, torch.zeros(m, dtype=y.dtype))

    def next_point(cur_val: Tensor, grad: Tensor, n: int) -> Tensor:
        proj_grad = grad - (torch.sum(grad) / n)
        tm1 = -1.0 * cur_val[proj_grad < 0] / proj_grad[proj_grad < 0]
        tm2 = (1.0 - cur_val[proj_grad > 0]) / (proj_grad[proj_grad > 0])
        t = torch.ones(1, dtype=grad.dtype)
        if (tm1 > 1e-7).sum() > 0:
            t = torch.min(tm1[tm1 > 1e-7])
        if (tm2 > 1e-7).sum() > 0:
            t = torch.min(t, torch.min(tm2[tm2 > 1e-7]))
        return projection2simplex(proj_grad * t + cur_val)

    grad_mat = grads.mm(grads.t())
    init_sol = min_norm_2d(grad_mat)
    n = grads.size()[0]
    sol_vec = torch.zeros(n, dtype=grads.dtype)
    sol_vec[init_sol[0][0]] = init_sol[1]
    sol_vec[init_sol[0][1]] = 1 - init_sol[1]
    if n < 3:
        return sol_vec
    for _ in range(max_iter):
        new_point = next_point(sol_vec, -1.0 * torch.matmul(grad_mat, sol_vec), n)
        v1v1 = sol_vec @ grad_mat @ sol_vec
        v1v2 = sol_vec @ grad_mat @ new_point
        v2v2 = new_point @ grad_mat @ new_point
        nc, _ = min_norm_element_from2(v1v1, v1v2, v2v2)
        new_sol_vec = nc * sol_vec + (1 - nc) * new_point
        if torch.sum(torch.abs(new_sol_vec - sol_vec)) < stop:
            return sol_vec
        sol_vec = new_sol_vec
    return sol_vec


def libmtl_pcgrad(grads: Tensor, orders: list[list[int]]) -> tuple[Tensor, Tensor]:
    """LibMTL/weighting/PCGrad.py: ``orders[i]`` is its ``random.shuffle`` of all K tasks for task i."""
    batch_weight = torch.ones(len(grads), dtype=grads.dtype)
    pc_grads = grads.clone()
    for tn_i in range(len(grads)):
        for tn_j in orders[tn_i]:
            g_ij = torch.dot(pc_grads[tn_i], grads[tn_j])
            if g_ij < 0:
                pc_grads[tn_i] -= g_ij * grads[tn_j] / (grads[tn_j].norm().pow(2) + 1e-8)
                batch_weight[tn_j] -= g_ij / (grads[tn_j].norm().pow(2) + 1e-8)
    return batch_weight, pc_grads.sum(0)


def libmtl_self_projections(grads: Tensor, orders: list[list[int]]) -> int:
    """How often LibMTL's PCGrad meets j = i with ⟨gᵢ', gᵢ⟩ < 0 (a projection the paper does not make)."""
    count = 0
    pc_grads = grads.clone()
    for i in range(len(grads)):
        for j in orders[i]:
            g_ij = torch.dot(pc_grads[i], grads[j])
            if g_ij < 0:
                count += int(i == j)
                pc_grads[i] -= g_ij * grads[j] / (grads[j].norm().pow(2) + 1e-8)
    return count


def libmtl_gradvac(grads: Tensor, rho_t: Tensor, beta: float, orders: list[list[int]]) -> Tensor:
    """LibMTL/weighting/GradVac.py, ``whole_model`` grouping; ``orders[i]``: its shuffle of the
    tasks other than i. Updates ``rho_t`` in place, as LibMTL's ``self.rho_T``."""
    pc_grads = grads.clone()
    for tn_i in range(len(grads)):
        for tn_j in orders[tn_i]:
            rho_ijk = torch.dot(pc_grads[tn_i], grads[tn_j]) / (pc_grads[tn_i].norm() * grads[tn_j].norm() + 1e-8)
            if rho_ijk < rho_t[tn_i, tn_j]:
                target = rho_t[tn_i, tn_j]
                w = (
                    pc_grads[tn_i].norm()
                    * (target * (1 - rho_ijk**2).sqrt() - rho_ijk * (1 - target**2).sqrt())
                    / (grads[tn_j].norm() * (1 - target**2).sqrt() + 1e-8)
                )
                pc_grads[tn_i] += grads[tn_j] * w
            rho_t[tn_i, tn_j] = (1 - beta) * rho_t[tn_i, tn_j] + beta * rho_ijk
    return pc_grads.sum(0)


def libmtl_db_mtl(jac: Tensor, losses: Tensor, buffer: Tensor, beta: float, step: int) -> tuple[Tensor, Tensor]:
    """LibMTL/weighting/DB_MTL.py (β_sigma = 0): the update and the new gradient buffer, for the
    task gradients ``jac`` of ``losses`` (so ∇log(Lᵢ + 1e-8) = gᵢ/(Lᵢ + 1e-8))."""
    batch_grads = jac / (losses + 1e-8)[:, None]
    buffer = batch_grads + (beta / step**0.0) * (buffer - batch_grads)
    u_grad = buffer.norm(dim=-1)
    alpha = u_grad.max() / (u_grad + 1e-8)
    return sum(alpha[i] * buffer[i] for i in range(len(jac))), buffer  # type: ignore[return-value]


def libmtl_gradnorm_loss(loss_scale: Tensor, grads: Tensor, losses: Tensor, initial: Tensor, alpha: float) -> Tensor:
    """LibMTL/weighting/GradNorm.py: ``L_grad`` (``train_loss_buffer[:, 0]`` is ``initial``)."""
    k = len(losses)
    weights = k * F.softmax(loss_scale, dim=-1)
    g_per_loss = torch.norm(weights.unsqueeze(1) * grads, p=2, dim=-1)
    g = g_per_loss.mean(0)
    l_i = losses / initial
    r_i = l_i / l_i.mean()
    constant_term = (g * (r_i**alpha)).detach()
    return (g_per_loss - constant_term).abs().sum(0)


def libmtl_graddrop(per_grads: Tensor, rep: Tensor, uniform: Tensor) -> Tensor:
    """LibMTL/weighting/GradDrop.py, leak 0, ``torch.rand_like(P)`` replaced by ``uniform``."""
    k = len(per_grads)
    inputs = rep.unsqueeze(0).repeat_interleave(k, dim=0)
    grads = (per_grads * inputs.sign()).sum(1)
    p = 0.5 * (1 + grads.sum(0) / (grads.abs().sum(0) + 1e-7))
    m = p.gt(uniform).unsqueeze(0).repeat_interleave(k, dim=0) * grads.gt(0) + p.lt(uniform).unsqueeze(
        0
    ).repeat_interleave(k, dim=0) * grads.lt(0)
    m = m.unsqueeze(1).repeat_interleave(per_grads.size()[1], dim=1)
    return (per_grads * m).sum(0)


def tight_cvxpy(solve: Callable[[], Tensor]) -> Tensor:
    """Run a TorchJD solve with Clarabel's tolerances at 1e-10 instead of its defaults (1e-8)."""
    real = cvxpy.Problem.solve

    def tight(self: cvxpy.Problem, *args: Any, **kwargs: Any) -> Any:
        kwargs.update(tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10, max_iter=500)
        return real(self, *args, **kwargs)

    with mock.patch.object(cvxpy.Problem, "solve", tight):
        return solve()


def reference_nash(jac: Tensor) -> Tensor:
    """The official Nash-MTL step (TorchJD's adaptation of AvivNavon/nash-mtl, methods/weight_methods.py),
    first call, no clipping. Its stopping rule (‖Ĝα − 1/α‖ < 1e-3 on the normalised Ĝ, or α
    moving by < 1e-6) is replaced by α moving by < 1e-10, with up to 100 convex programs."""
    aggregator = NashMTL(n_tasks=jac.shape[0], max_norm=0.0, optim_niter=100)
    weighting = aggregator.weighting

    def stop(gtg: np.ndarray, alpha_t: np.ndarray) -> bool:
        moved = weighting.alpha_param.value
        return moved is None or float(np.linalg.norm(moved - weighting.prvs_alpha_param.value)) < 1e-10

    weighting._stop_criteria = stop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return weighting(jac).to(F64)


def scipy_nash(g: Tensor) -> Tensor:
    """The positive solution of Gα = 1/α, independently: scipy minimises the convex
    ½αᵀGα − Σ log αᵢ on α > 0, then scipy's root finder polishes α∘Gα = 1."""
    gram = g.numpy()
    k = len(gram)

    def objective(alpha: np.ndarray) -> tuple[float, np.ndarray]:
        return 0.5 * alpha @ gram @ alpha - np.log(alpha).sum(), gram @ alpha - 1.0 / alpha

    start = 1.0 / np.sqrt(np.diag(gram))
    rough = minimize(
        objective, start, jac=True, bounds=[(1e-9, None)] * k, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12}
    )
    polished = root(lambda alpha: alpha * (gram @ alpha) - 1.0, rough.x, tol=1e-14)
    assert (polished.x > 0).all()
    assert float(np.abs(polished.x * (gram @ polished.x) - 1.0).max()) < 1e-10
    return torch.from_numpy(polished.x)


def test_transcriptions_reproduce_the_published_numbers() -> None:
    # The transcriptions themselves, on TorchJD's example J = [[-4, 1, 1], [6, 1, 1]].
    jac = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=F64)
    assert_same(libmtl_mgda(jac), torch.tensor([0.6, 0.4], dtype=F64), "MGDA")
    assert_same(
        libmtl_pcgrad(jac, [[0, 1], [1, 0]])[1], torch.tensor([0.5848, 3.8012, 3.8012], dtype=F64), "PCGrad", tol=1e-4
    )
    assert math.isclose(float(scipy_nash(jac @ jac.T) @ (jac @ jac.T) @ scipy_nash(jac @ jac.T)), 2.0, rel_tol=1e-9)
