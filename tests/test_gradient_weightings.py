"""The gradient-level strategies as functions of the Gramian: published values, properties, edge cases.

Each strategy is called directly as ``w = weights_from_gramian(J @ J.T, losses)`` and the update is
``d = w @ J``. Expected values come from the publications (TorchJD's examples on
``J = [[-4, 1, 1], [6, 1, 1]]``), from independent solves in the gradient space (scipy, numpy,
plain-vector replays of the papers' algorithms) or from optimality conditions.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import Tensor

from lightning_multiloss.errors import MultiLossError, NonFiniteLossError
from lightning_multiloss.gradients import gramian_of
from lightning_multiloss.weighting import (
    DBMTL,
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    GradNorm,
    GradVac,
    GramianWeighting,
    Learnable,
    NashMTL,
    PCGrad,
    UPGrad,
    create_weighting,
)
from lightning_multiloss.weighting import _solvers as solvers
from lightning_multiloss.weighting._common import seeded_generator
from lightning_multiloss.weighting._gramian import psd_up_to_rounding
from lightning_multiloss.weighting._solvers import (
    _principal_pivoting,
    box_qp,
    gradvac_weights,
    pcgrad_weights,
    regularize,
    simplex_min_linear_plus_norm,
    simplex_qp,
)

J0 = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
NAMES = ["mgda", "pcgrad", "gradvac", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "upgrad", "gradnorm", "db_mtl"]
F64 = torch.float64


def bound(name: str, k: int, **hparams: Any) -> GramianWeighting:
    strategy = create_weighting(name, **hparams)
    assert isinstance(strategy, GramianWeighting)
    strategy.bind([f"t{i}" for i in range(k)])
    return strategy


def weights(strategy: GramianWeighting, jac: Tensor, losses: Tensor | None = None) -> Tensor:
    losses = torch.ones(jac.shape[0], dtype=jac.dtype) if losses is None else losses
    return strategy.weights_from_gramian(jac @ jac.T, losses)


def random_jacobians(count: int, seed: int = 0) -> list[Tensor]:
    """Float64 Jacobians over K in {2, 3, 5, 10}, some with K > P (singular Gramian)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        k = (2, 3, 5, 10)[i % 4]
        p = (4, 12, 3)[i % 3]
        scale = torch.rand(k, 1, generator=g, dtype=F64) * 3 + 0.1
        out.append(torch.randn(k, p, generator=g, dtype=F64) * scale + 0.3 * torch.randn(1, p, generator=g, dtype=F64))
    return out


# -- published values (TorchJD's documented examples) ----------------------------------------------
@pytest.mark.parametrize(
    ("name", "hparams", "expected"),
    [
        ("mgda", {}, [0.0, 1.0, 1.0]),
        ("pcgrad", {}, [0.5848, 3.8012, 3.8012]),
        ("imtl_g", {}, [0.0767, 1.0, 1.0]),
        ("upgrad", {}, [0.2929, 1.9004, 1.9004]),
        ("cagrad", {"c": 0.5, "rescale": 0}, [0.1835, 1.2041, 1.2041]),
        ("nash_mtl", {"max_norm": 1.0}, [0.0542, 0.7061, 0.7061]),
    ],
)
def test_published_directions(name: str, hparams: dict[str, Any], expected: list[float]) -> None:
    d = weights(bound(name, 2, **hparams), J0) @ J0
    torch.testing.assert_close(d, torch.tensor(expected), atol=1e-4, rtol=0)


def test_mgda_published_weights_and_two_task_closed_form() -> None:
    torch.testing.assert_close(weights(MGDA(), J0), torch.tensor([0.6, 0.4]), atol=1e-6, rtol=0)
    # Closed form gamma = clip((g2 - g1).g2 / |g1 - g2|^2, 0, 1), by hand on other pairs.
    for g1, g2 in [([1.0, 0.0], [0.0, 2.0]), ([1.0, 1.0], [3.0, 3.0]), ([2.0, 0.0], [-1.0, 0.1])]:
        a, b = torch.tensor(g1, dtype=F64), torch.tensor(g2, dtype=F64)
        gamma = min(max(float((b - a) @ b / ((a - b) @ (a - b))), 0.0), 1.0)
        torch.testing.assert_close(weights(MGDA(), torch.stack([a, b])), torch.tensor([gamma, 1 - gamma], dtype=F64))


def test_upgrad_exact_projection_value() -> None:
    # Without TorchJD's 1e-4 regularisation: the exact average of the two dual-cone projections,
    # computed by hand: g1 projected off g2 (they conflict) and g2 off g1.
    g1, g2 = J0[0].double(), J0[1].double()
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2  # projection of g1 onto {d: d.g2 >= 0}; it keeps d.g1 > 0
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    assert float(p1 @ g1) > 0 and float(p2 @ g2) > 0
    d = weights(UPGrad(reg_eps=0.0), J0.double()) @ J0.double()
    torch.testing.assert_close(d, (p1 + p2) / 2, atol=1e-9, rtol=0)


# -- properties over random Jacobians ----------------------------------------------------------------
def scipy_simplex_min(fun: Any, k: int, starts: int = 3, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    best = math.inf
    for s in range(starts):
        x0 = np.ones(k) / k if s == 0 else rng.dirichlet(np.ones(k))
        res = minimize(
            fun,
            x0,
            bounds=[(0.0, 1.0)] * k,
            constraints={"type": "eq", "fun": lambda x: x.sum() - 1.0},
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        best = min(best, float(res.fun))
    return best


def test_mgda_is_the_min_norm_point_of_the_hull() -> None:
    for jac in random_jacobians(24):
        k = jac.shape[0]
        g = (jac @ jac.T).numpy()
        w = weights(MGDA(), jac)
        assert float(w.min()) >= 0.0 and abs(float(w.sum()) - 1.0) < 1e-12
        norm2 = float((w @ jac) @ (w @ jac))
        # Optimality certificate: the gradient Gw is >= w'Gw on every vertex (KKT of the simplex QP).
        assert float((jac @ jac.T @ w).min()) >= norm2 - 1e-9 * float(np.trace(g))
        # and an independent solve finds nothing shorter.
        assert norm2 <= scipy_simplex_min(lambda x, g=g: x @ g @ x, k) + 1e-9


def test_warm_started_solves_equal_cold_solves() -> None:
    """MGDA and CAGrad warm-start each step's QPs from the previous solution: same weights as a fresh solve.

    A slowly drifting Jacobian (the training case) and unrelated ones in between (a start with
    the wrong support, or the wrong K); the QP itself from any start, even an unusable one.
    """
    g = torch.Generator().manual_seed(5)
    base = torch.randn(6, 9, generator=g, dtype=F64) + 0.5
    jacobians = [base + 0.05 * t * torch.randn(6, 9, generator=g, dtype=F64) for t in range(8)]
    jacobians += random_jacobians(8, seed=11)
    warm = {"mgda": MGDA(), "cagrad": CAGrad(c=0.4)}
    for jac in jacobians:
        for name, strategy in warm.items():
            cold = MGDA() if name == "mgda" else CAGrad(c=0.4)
            torch.testing.assert_close(weights(strategy, jac), weights(cold, jac), atol=1e-10, rtol=0, msg=name)
    gram = jacobians[3] @ jacobians[3].T
    linear = torch.randn(6, generator=g, dtype=F64)
    cold_qp = simplex_qp(gram, linear)
    kkt = gram @ cold_qp + linear  # optimality: equal on the support, no smaller off it
    support = cold_qp > 1e-12
    assert not bool(support.all()) and float(kkt[~support].min()) >= float(kkt[support].max()) - 1e-9
    starts = [
        torch.eye(6, dtype=F64)[5],
        torch.full((6,), -1.0, dtype=F64),
        torch.full((6,), math.nan, dtype=F64),
        torch.ones(3, dtype=F64),
        torch.rand(6, generator=g, dtype=F64),
    ]
    for start in starts:
        torch.testing.assert_close(simplex_qp(gram, linear, start=start), cold_qp, atol=1e-12, rtol=0)
    # UPGrad's K box QPs are stepped together; rows that finish early must stay as they were.
    lowers = torch.rand(6, 6, generator=g, dtype=F64) * torch.eye(6, dtype=F64)[[0, 1, 2, 3, 4, 4]]
    together = box_qp(gram, lowers)
    for lower, row in zip(lowers, together, strict=True):
        torch.testing.assert_close(row, box_qp(gram, lower), atol=1e-12, rtol=0)
        assert bool((row >= lower - 1e-15).all())


def test_a_start_on_the_optimal_free_sets_ends_in_one_solve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starts whose positive entries are the optimal free sets take the one-solve path; others
    (a superset, a subset) the iterations; every start gives the cold solution."""
    g = torch.Generator().manual_seed(8)
    jac = torch.randn(6, 9, generator=g, dtype=F64) + 0.5
    gram = jac @ jac.T
    linear = torch.randn(6, generator=g, dtype=F64)
    cold_qp = simplex_qp(gram, linear)
    support = cold_qp > 0.0
    assert 1 < int(support.sum()) < 6  # so that a subset and a superset exist
    kkt = gram @ cold_qp + linear  # the reference is optimal: equal on the support, no smaller off it
    assert float(kkt[support].max() - kkt[support].min()) <= 1e-9
    assert float(kkt[~support].min()) >= float(kkt[support].max()) - 1e-9
    lowers = torch.eye(6, dtype=F64) / 6  # UPGrad's K problems
    cold_box = box_qp(gram, lowers)
    box_support = (cold_box - lowers) > 0.0
    box_grad = cold_box @ gram  # optimal: 0 where above the bound, ≥ 0 where on it
    assert float(box_grad[box_support].abs().max()) <= 1e-8 and float(box_grad[~box_support].min()) >= -1e-8
    assert bool(box_support.any()) and not bool(box_support.all())

    accepted: list[bool] = []
    original = solvers._optimum_on_free_sets

    def counting(*args: Any) -> Any:
        result = original(*args)
        accepted.append(result is not None)
        return result

    monkeypatch.setattr(solvers, "_optimum_on_free_sets", counting)
    subset = support.clone()
    subset[int(torch.nonzero(support)[0])] = False
    simplex_starts = {
        "optimal": (cold_qp, True),
        "same support, other values": (support.to(F64) * torch.rand(6, generator=g, dtype=F64) + support * 0.1, True),
        "superset": (torch.ones(6, dtype=F64), False),
        "subset": (subset.to(F64), False),
    }
    for what, (start, one_solve) in simplex_starts.items():
        accepted.clear()
        torch.testing.assert_close(simplex_qp(gram, linear, start=start), cold_qp, atol=1e-12, rtol=0, msg=what)
        assert accepted == [one_solve], what
    box_starts = {
        "optimal": (cold_box - lowers, True),
        "superset": (torch.ones(6, 6, dtype=F64), False),
        "none free": (torch.zeros(6, 6, dtype=F64), False),
    }
    for what, (start, one_solve) in box_starts.items():
        accepted.clear()
        torch.testing.assert_close(box_qp(gram, lowers, start=start), cold_box, atol=1e-12, rtol=0, msg=what)
        assert accepted == [one_solve], what


def test_mgda_normalizations() -> None:
    jac = random_jacobians(3, seed=3)[2]  # K = 5
    losses = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25], dtype=F64)
    norms = jac.norm(dim=1)
    for mode, n in [("l2", norms), ("loss", losses), ("loss+", losses * norms)]:
        w = MGDA(normalization=mode).weights_from_gramian(jac @ jac.T, losses)
        # w_i n_i is the min-norm point of the hull of the normalised gradients g_i / n_i.
        s = w * n
        assert abs(float(s.sum()) - 1.0) < 1e-9
        normed = jac / n[:, None]
        gram = (normed @ normed.T).numpy()
        best = scipy_simplex_min(lambda x, m=gram: x @ m @ x, 5)
        assert float((s @ normed) @ (s @ normed)) <= best + 1e-9


def dual_cone_projection(vector: np.ndarray, jac: np.ndarray) -> np.ndarray:
    """argmin |d - vector|^2 s.t. J d >= 0, solved in the gradient space by scipy."""
    res = minimize(
        lambda d: 0.5 * np.sum((d - vector) ** 2),
        vector,
        jac=lambda d: d - vector,
        constraints={"type": "ineq", "fun": lambda d: jac @ d, "jac": lambda d: jac},
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return np.asarray(res.x)


def test_upgrad_never_conflicts() -> None:
    for jac in random_jacobians(24, seed=1):
        g = jac @ jac.T
        exact = UPGrad(reg_eps=0.0).weights_from_gramian(g, torch.ones(jac.shape[0], dtype=F64))
        assert float((g @ exact).min()) >= -1e-6, g @ exact  # <d, g_i> >= 0 for every task
        default = UPGrad().weights_from_gramian(g, torch.ones(jac.shape[0], dtype=F64))
        # TorchJD's regularisation bounds the conflict by 1e-4 * trace(G) * w_i.
        assert bool((g @ default >= -1e-4 * torch.trace(g) * default - 1e-9).all())


def test_upgrad_is_the_mean_of_the_dual_cone_projections() -> None:
    for jac in random_jacobians(6, seed=2)[:3]:  # K = 2, 3, 5
        d = UPGrad(reg_eps=0.0).weights_from_gramian(jac @ jac.T, torch.ones(jac.shape[0], dtype=F64)) @ jac
        j = jac.numpy()
        expected = np.mean([dual_cone_projection(row, j) for row in j], axis=0)
        np.testing.assert_allclose(d.numpy(), expected, atol=1e-6)


def test_upgrad_warm_started_from_the_last_step_equals_a_cold_solve() -> None:
    """One UPGrad over a drifting sequence of Gramians (each QP starts from the last step's
    solutions), with a jump to unrelated gradients half-way, equals a fresh UPGrad per step, and
    the dual-cone projections solved independently."""
    gen = torch.Generator().manual_seed(7)
    base = torch.randn(6, 9, generator=gen, dtype=F64)
    warm = UPGrad(reg_eps=0.0)
    for step in range(12):
        jac = base + 0.05 * step * torch.randn(6, 9, generator=gen, dtype=F64)
        if step == 6:
            jac = torch.randn(6, 9, generator=gen, dtype=F64) * torch.tensor([1.0, 3.0, 0.2, 1.0, 5.0, 0.5])[:, None]
        g, ones = jac @ jac.T, torch.ones(6, dtype=F64)
        got = warm.weights_from_gramian(g, ones)
        torch.testing.assert_close(got, UPGrad(reg_eps=0.0).weights_from_gramian(g, ones), rtol=1e-9, atol=1e-10)
        if step in (0, 6, 11):
            j = jac.numpy()
            expected = np.mean([dual_cone_projection(row, j) for row in j], axis=0)
            np.testing.assert_allclose((got @ jac).numpy(), expected, atol=1e-6)


def test_host_solvers_run_on_one_intra_op_thread() -> None:
    """The K×K solve runs with one intra-op thread (OpenMP backend), and the count is restored."""
    from lightning_multiloss.weighting import _gramian

    seen: list[int] = []

    class Spy(GramianWeighting):
        def compute_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
            seen.append(torch.get_num_threads())
            return torch.ones_like(losses)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        Spy().weights_from_gramian(torch.eye(3), torch.ones(3))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1 if _gramian._OPENMP_BACKEND else 2]


def test_imtl_g_of_opposite_gradients_rounded_in_float32_is_uniform() -> None:
    # The Gramian the parameter route took in a fit of L_a = mean(o - t) + 10, L_b = 10 - mean(o - t):
    # exactly opposite gradients, rank 1 up to float32 rounding. The only update with equal
    # projections on both is 0, that of equal weights; dividing by the rounding noise of Σv gave
    # weights of ±2·10⁷, and a step of 10⁶.
    g = torch.tensor([[0.5990878939628601, -0.5990879237651825], [-0.5990879237651825, 0.5990879535675049]])
    torch.testing.assert_close(bound("imtl_g", 2).weights_from_gramian(g, torch.ones(2)), torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("angle", [0.03, 0.01, 0.003])
def test_imtl_g_of_nearly_parallel_gradients_is_exact(angle: float) -> None:
    # Nearly parallel gradients of norms 1 and 10: G is ill-conditioned, not a cancellation; the
    # rounding guard must keep the weights (a guard scaled by the smallest eigenvalue made them uniform).
    rows = torch.tensor([[1.0, 0.0], [10.0 * math.cos(angle), 10.0 * math.sin(angle)]], dtype=torch.float64)
    g = rows @ rows.T
    v = torch.linalg.solve(g, g.diagonal().sqrt())  # equal projections, by hand: G v = ‖g_i‖
    got = bound("imtl_g", 2).weights_from_gramian((rows.float() @ rows.float().T), torch.ones(2))
    torch.testing.assert_close(got.double(), v / v.sum(), rtol=1e-4, atol=0.0)


def test_nash_mtl_of_opposite_gradients_rounded_in_float32_keeps_the_first_weights(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Opposite gradients have no Nash bargaining solution (Gα = 1/α > 0 is impossible); rounded in
    # float32 their Gramian is indefinite beyond the solver's ridge, and the solve crashed with
    # "math domain error". As documented: 1 at the first step, and a warning.
    g = torch.tensor([[0.5990878939628601, -0.5990879237651825], [-0.5990879237651825, 0.5990879535675049]])
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        weights = bound("nash_mtl", 2).weights_from_gramian(g, torch.ones(2))
    torch.testing.assert_close(weights, torch.ones(2))
    assert "have no Nash bargaining solution at step 0" in caplog.text


def test_imtl_g_equal_projections() -> None:
    for jac in random_jacobians(24, seed=4):
        if jac.shape[0] > jac.shape[1]:
            continue  # equal projections need independent gradients
        w = IMTLG().weights_from_gramian(jac @ jac.T, torch.ones(jac.shape[0], dtype=F64))
        d = w @ jac
        projections = jac @ d / jac.norm(dim=1)
        assert abs(float(w.sum()) - 1.0) < 1e-9
        torch.testing.assert_close(projections, projections.mean().expand_as(projections), rtol=1e-7, atol=1e-9)


def pcgrad_replay(jac: Tensor, orders: list[list[int]]) -> tuple[Tensor, list[Tensor]]:
    """Algorithm 1 of Yu et al. on the gradient vectors."""
    projected = []
    for i, order in enumerate(orders):
        gi = jac[i].clone()
        for j in order:
            if j != i and float(gi @ jac[j]) < 0:
                gi = gi - (gi @ jac[j]) / (jac[j] @ jac[j]) * jac[j]
        projected.append(gi)
    return torch.stack(projected).sum(0), projected


def test_pcgrad_two_tasks_leaves_no_conflict() -> None:
    for jac in random_jacobians(40, seed=5)[::4]:  # K = 2
        d = weights(PCGrad(), jac) @ jac
        replay, (p1, p2) = pcgrad_replay(jac, [[0, 1], [0, 1]])
        torch.testing.assert_close(d, replay, atol=1e-10, rtol=1e-10)
        assert float(p1 @ jac[1]) >= -1e-10 and float(p2 @ jac[0]) >= -1e-10
        assert bool((jac @ d >= -1e-9).all())  # for two tasks the sum conflicts with neither


def test_pcgrad_order_from_seed_and_step() -> None:
    jac = random_jacobians(4, seed=6)[3]  # K = 10
    k = jac.shape[0]
    strategy = PCGrad(seed=7)
    for step in range(3):
        gen = seeded_generator(7, step)
        orders = [torch.randperm(k, generator=gen).tolist() for _ in range(k)]
        d = weights(strategy, jac) @ jac
        torch.testing.assert_close(d, pcgrad_replay(jac, orders)[0], atol=1e-9, rtol=1e-9)
    assert int(strategy.num_steps) == 3
    # A resumed copy (state dict) continues with the same orders.
    resumed = PCGrad(seed=7)
    resumed.load_state_dict(strategy.state_dict())
    torch.testing.assert_close(weights(resumed, jac), weights(strategy, jac))
    # Evaluation does not advance the step.
    strategy.eval()
    weights(strategy, jac)
    assert int(strategy.num_steps) == 4


def pcgrad_gramian_loop(gram: Tensor, orders: Tensor) -> Tensor:
    """Algorithm 1 of Yu et al. in Gramian form, one task and one other task at a time."""
    k = gram.shape[0]
    top = max(float(gram.diagonal().max()), 0.0)
    total = torch.zeros(k, dtype=F64)
    for i in range(k):
        a = torch.zeros(k, dtype=F64)
        a[i] = 1.0
        for j in orders[i].tolist():
            if j == i or float(gram[j, j]) <= 1e-12 * top:
                continue
            inner = float(a @ gram[:, j])  # g_i'·g_j
            if inner < 0.0:
                a[j] -= inner / float(gram[j, j])
        total += a
    return total


def test_pcgrad_vectorised_matches_the_loop_of_algorithm_1() -> None:
    g = torch.Generator().manual_seed(12)
    for k, p in [(2, 5), (5, 3), (17, 40), (40, 30), (40, 200)]:
        jac = torch.randn(k, p, generator=g, dtype=F64) * torch.rand(k, 1, generator=g, dtype=F64)
        jac[k // 2] = 0.0  # a zero gradient: never projected onto
        orders = torch.stack([torch.randperm(k, generator=g) for _ in range(k)])
        gram = jac @ jac.T
        w = pcgrad_weights(gram, orders)
        torch.testing.assert_close(w, pcgrad_gramian_loop(gram, orders), atol=1e-10, rtol=1e-10)
        expected = pcgrad_replay(jac, orders.tolist())[0]
        torch.testing.assert_close(w @ jac, expected, atol=1e-9, rtol=1e-9)


def test_box_qp_meets_the_optimality_conditions_at_forty_tasks() -> None:
    # UPGrad's K problems at K = 40, some with a rank-deficient Gramian (K > P), where block
    # pivoting stalls on some rows and the active-set method finishes them.
    g = torch.Generator().manual_seed(13)
    stalled = 0
    for p in (8, 25, 60, 300):
        jac = torch.randn(40, p, generator=g, dtype=F64) + 0.3 * torch.randn(1, p, generator=g, dtype=F64)
        gram = jac @ jac.T
        gram = gram / torch.trace(gram) + 1e-4 * torch.eye(40, dtype=F64)
        lower = torch.eye(40, dtype=F64) / 40
        v = box_qp(gram, lower)
        q = gram + 1e-10 * torch.trace(gram) / 40 * torch.eye(40, dtype=F64)  # the solver's ridge
        y = v @ q  # the gradient of ½vᵀQv; optimal: y ≥ 0, and y = 0 where v > lower
        assert bool((v >= lower - 1e-15).all())
        assert float(y.min()) >= -1e-10
        assert float(((v - lower) * y).abs().max()) <= 1e-10
        for row in (0, 17, 39):  # a row solved alone is the same
            torch.testing.assert_close(box_qp(gram, lower[row]), v[row], atol=1e-12, rtol=0)
        stalled += int((~_principal_pivoting(regularize(gram), lower @ regularize(gram), 90)[1]).sum())
    assert stalled > 0  # the fallback was exercised


def gradvac_replay(jac: Tensor, orders: list[list[int]], target: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """Wang et al.'s update on the gradient vectors (whole-model similarity)."""
    target = target.clone()
    new_target = target.clone()
    total = torch.zeros(jac.shape[1], dtype=F64)
    for i, order in enumerate(orders):
        gi = jac[i].clone()
        for j in order:
            if j == i:
                continue
            phi = float(gi @ jac[j] / (gi.norm() * jac[j].norm()))
            hat = float(target[i, j])
            if phi < hat:
                coef = gi.norm() * (hat * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - hat**2))
                gi = gi + coef / (jac[j].norm() * math.sqrt(1 - hat**2)) * jac[j]
            new_target[i, j] = (1 - beta) * hat + beta * phi
        total += gi
    return total, new_target


def test_gradvac_matches_vector_replay_over_steps() -> None:
    jac_list = random_jacobians(8, seed=7)
    strategy = bound("gradvac", 3, beta=0.3, seed=1)
    target = torch.zeros(3, 3, dtype=F64)
    for step in range(4):
        jac = jac_list[1 + 4 * (step % 2)]  # two different K = 3 Jacobians, alternating
        gen = seeded_generator(1, step)
        orders = [torch.randperm(3, generator=gen).tolist() for _ in range(3)]
        expected, target = gradvac_replay(jac, orders, target, 0.3)
        torch.testing.assert_close(weights(strategy, jac) @ jac, expected, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(strategy.target, target, atol=1e-12, rtol=0)
    assert bool((target[~torch.eye(3, dtype=torch.bool)] != 0).all())  # every pair's target moved


def test_gradvac_vectorised_matches_vector_replay_at_ten_tasks() -> None:
    g = torch.Generator().manual_seed(14)
    jac = torch.randn(10, 7, generator=g, dtype=F64)
    target = (torch.rand(10, 10, generator=g, dtype=F64) - 0.5) * (1 - torch.eye(10, dtype=F64))
    orders = torch.stack([torch.randperm(10, generator=g) for _ in range(10)])
    w, new_target = gradvac_weights(jac @ jac.T, orders, target, beta=0.2)
    expected, expected_target = gradvac_replay(jac, orders.tolist(), target, 0.2)
    torch.testing.assert_close(w @ jac, expected, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(new_target, expected_target, atol=1e-12, rtol=0)


def cagrad_objective(x: np.ndarray, g: np.ndarray, rho: float) -> float:
    k = len(x)
    return float(x @ g @ np.ones(k) / k + rho * math.sqrt(max(x @ g @ x, 0.0)))


def test_cagrad_inner_problem_against_brute_force() -> None:
    for jac in random_jacobians(16, seed=8):
        k = jac.shape[0]
        if k > 3:
            continue
        g = (jac @ jac.T).numpy()
        rho = 0.4 * math.sqrt(g.mean())
        w_star = CAGrad(c=0.4).solve_inner(jac @ jac.T).numpy()
        found = cagrad_objective(w_star, g, rho)
        if k == 2:
            a = np.linspace(0, 1, 20001)
            grid = np.stack([a, 1 - a], axis=1)
        else:
            a, b = (m.ravel() for m in np.meshgrid(np.linspace(0, 1, 401), np.linspace(0, 1, 401)))
            grid = np.stack([a, b, 1 - a - b], axis=1)[a + b <= 1 + 1e-12]
        quad = np.einsum("ni,ij,nj->n", grid, g, grid)
        best = float((grid @ g.mean(axis=1) + rho * np.sqrt(np.maximum(quad, 0.0))).min())
        assert found <= best + 1e-9
        assert found <= scipy_simplex_min(lambda x, g=g, rho=rho: cagrad_objective(x, g, rho), k) + 1e-9


@pytest.mark.parametrize("seed", [0, 2, 4])
def test_cagrad_inner_problem_is_optimal_with_gradient_norms_1e8_apart(seed: int) -> None:
    # The search over t started at the mean task's scale: with tasks 10⁸ smaller in norm, t* lay
    # below it and a vertex came back (its objective 15-26% above the optimum). Checked by the
    # optimality conditions of the convex problem on the simplex, from J itself: the gradient
    # b + ρ·Gw/‖Jᵀw‖ is smallest, and equal, on the support of w.
    rng = np.random.default_rng(seed)
    k = 6
    jac = rng.standard_normal((k, 8)) * np.where(np.arange(k) % 2, 1e4, 1e-4)[:, None]
    g = jac @ jac.T
    rho = 0.4 * math.sqrt(g.mean())
    w = CAGrad(c=0.4).solve_inner(torch.tensor(g)).numpy()
    b = g.mean(axis=1)
    direction = jac.T @ w
    gradient = b + rho * (jac @ direction) / np.linalg.norm(direction)
    size = np.abs(b) + rho * np.abs(jac) @ np.abs(direction) / np.linalg.norm(direction)  # each entry's own scale
    support = w > 1e-9
    lowest = gradient[support].max()  # the common value on the support
    assert np.all(gradient >= lowest - 1e-9 * size), (w, gradient)
    assert np.all(np.abs(gradient[support] - lowest) <= 1e-9 * size[support]), (w, gradient)


def test_cagrad_support_root_agrees_with_bisection() -> None:
    for jac in random_jacobians(20, seed=18):
        g = jac @ jac.T
        k = g.shape[0]
        b, rho = g.sum(1) / k, 0.4 * float(g.mean().sqrt())
        fast = simplex_min_linear_plus_norm(g, b, rho)
        slow = simplex_min_linear_plus_norm(g, b, rho, bisection_only=True)
        value = [float(b @ w + rho * (w @ g @ w).clamp_min(0).sqrt()) for w in (fast, slow)]
        assert value[0] <= value[1] + 1e-10 * abs(value[1]) + 1e-12


def test_cagrad_weights_formula() -> None:
    jac = random_jacobians(3, seed=9)[1]  # K = 3
    g = jac @ jac.T
    for c, rescale, divisor in [(0.4, 1, 1 + 0.4**2), (0.5, 2, 1.5), (0.3, 0, 1.0)]:
        strategy = CAGrad(c=c, rescale=rescale)
        w_star = strategy.solve_inner(g)
        g0 = jac.mean(0)
        gw = w_star @ jac
        expected = (g0 + c * g0.norm() / gw.norm() * gw) / divisor  # the paper's d, on the vectors
        torch.testing.assert_close(strategy.weights_from_gramian(g, torch.ones(3, dtype=F64)) @ jac, expected)
    torch.testing.assert_close(CAGrad(c=0.0).weights_from_gramian(g, torch.ones(3)), torch.full((3,), 1 / 3, dtype=F64))


def test_nash_mtl_solves_the_bargaining_equation() -> None:
    for jac in random_jacobians(24, seed=10):
        k, p = jac.shape
        if k > p:
            continue
        g = jac @ jac.T
        for normalize, target in [(False, g), (True, g / torch.linalg.matrix_norm(g))]:
            alpha = bound("nash_mtl", k, normalize=normalize).weights_from_gramian(g, torch.ones(k, dtype=F64))
            assert bool((alpha > 0).all())
            torch.testing.assert_close(alpha * (target @ alpha), torch.ones(k, dtype=F64), atol=1e-6, rtol=0)


def test_nash_mtl_update_every_and_warm_start() -> None:
    jac_a, jac_b = random_jacobians(8, seed=11)[1], random_jacobians(8, seed=12)[1]  # K = 3
    strategy = bound("nash_mtl", 3, update_weights_every=2, normalize=False)
    first = weights(strategy, jac_a)
    torch.testing.assert_close(weights(strategy, jac_b), first)  # step 1: reused
    third = weights(strategy, jac_b)  # step 2: solved again, for jac_b
    g = jac_b @ jac_b.T
    torch.testing.assert_close(third * (g @ third), torch.ones(3, dtype=F64), atol=1e-6, rtol=0)
    torch.testing.assert_close(strategy.alpha, third)


def test_aligned_mtl_matches_numpy_eigh() -> None:
    for jac in random_jacobians(24, seed=13):
        k = jac.shape[0]
        g = (jac @ jac.T).numpy()
        lam, vec = np.linalg.eigh(g)
        keep = lam > lam.max() * k * np.finfo(np.float64).eps * 10
        lam, vec = lam[keep], vec[:, keep]
        balance = math.sqrt(lam.min()) * vec @ np.diag(lam**-0.5) @ vec.T
        expected = balance @ np.full(k, 1.0 / k)
        got = AlignedMTL().weights_from_gramian(jac @ jac.T, torch.ones(k, dtype=F64))
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-7, atol=1e-9)


# -- GradNorm and DB-MTL state updates ----------------------------------------------------------------
def test_gradnorm_step_matches_the_paper_loss() -> None:
    jac = random_jacobians(3, seed=14)[1]  # K = 3
    losses = [torch.tensor([2.0, 1.0, 0.5], dtype=F64), torch.tensor([1.0, 0.9, 0.2], dtype=F64)]
    strategy = bound("gradnorm", 3, alpha=1.5, lr=0.1)
    omega = torch.zeros(3, dtype=F64)
    for step, values in enumerate(losses):
        w = strategy.weights_from_gramian(jac @ jac.T, values)
        torch.testing.assert_close(w, 3 * torch.softmax(omega, 0))  # the weights before the update
        # The paper's loss on the gradient vectors, by autograd.
        leaf = omega.clone().requires_grad_(True)
        scaled = 3 * torch.softmax(leaf, 0)
        norms = torch.stack([(scaled[i] * jac[i]).norm() for i in range(3)])
        relative = values / losses[0]
        target = norms.mean().detach() * (relative / relative.mean()) ** 1.5
        (grad,) = torch.autograd.grad((norms - target).abs().sum(), leaf)
        omega = omega - 0.1 * grad
        torch.testing.assert_close(strategy.omega, omega, atol=1e-12, rtol=0)
        if step == 0:
            torch.testing.assert_close(strategy.initial_losses, losses[0])
    assert not torch.equal(omega, torch.zeros(3, dtype=F64))


def test_gradnorm_leaves_a_task_without_labels_out_and_takes_its_first_labelled_loss_as_l0() -> None:
    """Task 1 has no labelled sample in the first step (loss 0, gradient 0): its L(0) is its loss
    in the first step that has one (it was set to 1), and a step without its label leaves it out
    of the GradNorm loss (its ratio 0 pulled its weight down)."""
    jac = random_jacobians(3, seed=14)[1]  # K = 3
    steps = [
        torch.tensor([2.0, 0.0, 0.5], dtype=F64),
        torch.tensor([1.0, 3.0, 0.2], dtype=F64),
        torch.tensor([0.8, 0.0, 0.3], dtype=F64),
    ]
    strategy = bound("gradnorm", 3, alpha=1.5, lr=0.1)
    omega = torch.zeros(3, dtype=F64)
    initial = torch.tensor([2.0, 3.0, 0.5], dtype=F64)  # each task's first nonzero loss
    for values in steps:
        present = values > 0
        rows = jac * present[:, None].to(F64)  # an unlabelled task has no gradient
        w = strategy.weights_from_gramian(rows @ rows.T, values)
        torch.testing.assert_close(w, 3 * torch.softmax(omega, 0))
        # The paper's loss over the labelled tasks alone, by autograd.
        leaf = omega.clone().requires_grad_(True)
        scaled = 3 * torch.softmax(leaf, 0)
        norms = torch.stack([(scaled[i] * rows[i]).norm() for i in range(3) if present[i]])
        relative = values[present] / initial[present]
        target = norms.mean().detach() * (relative / relative.mean()) ** 1.5
        (grad,) = torch.autograd.grad((norms - target).abs().sum(), leaf)
        omega = omega - 0.1 * grad
        torch.testing.assert_close(strategy.omega, omega, atol=1e-12, rtol=0)
    torch.testing.assert_close(strategy.initial_losses, initial)


def test_db_mtl_norm_ema_and_weights() -> None:
    jac = random_jacobians(3, seed=15)[1]  # K = 3
    steps = [torch.tensor([2.0, 0.5, 1.0], dtype=F64), torch.tensor([1.5, 0.4, 0.1], dtype=F64)]
    strategy = bound("db_mtl", 3, beta=0.8, beta_sigma=0.5)
    ema = torch.zeros(3, dtype=F64)
    for t, values in enumerate(steps, start=1):
        log_grad_norms = (jac / (values + 1e-8)[:, None]).norm(dim=1)  # |grad log L_i|
        beta = 0.8 / t**0.5
        ema = beta * ema + (1 - beta) * log_grad_norms
        expected = (ema.max() / ema) / (values + 1e-8)
        torch.testing.assert_close(strategy.weights_from_gramian(jac @ jac.T, values), expected)
        torch.testing.assert_close(strategy.norm_ema, ema)
    # beta = 0: the update is exactly sum_i (max_j |grad log L_j| / |grad log L_i|) grad log L_i.
    values = steps[1]
    d = bound("db_mtl", 3, beta=0.0).weights_from_gramian(jac @ jac.T, values) @ jac
    log_grads = jac / (values + 1e-8)[:, None]
    n = log_grads.norm(dim=1)
    torch.testing.assert_close(d, ((n.max() / n)[:, None] * log_grads).sum(0))


def test_db_mtl_leaves_a_zero_loss_out_of_the_step() -> None:
    """A task without a labelled sample (loss 0, gradient 0): weight 0, its EMA norm kept; the others
    as if it were absent from the step."""
    jac = random_jacobians(3, seed=16)[1]  # K = 3
    first = torch.tensor([2.0, 0.5, 1.0], dtype=F64)
    strategy = bound("db_mtl", 3, beta=0.8)
    strategy.weights_from_gramian(jac @ jac.T, first)
    ema = 0.2 * (jac / (first + 1e-8)[:, None]).norm(dim=1)  # after one step, from zero
    torch.testing.assert_close(strategy.norm_ema, ema)
    unlabelled = jac.clone()
    unlabelled[1] = 0.0
    second = torch.tensor([1.5, 0.0, 0.1], dtype=F64)
    got = strategy.weights_from_gramian(unlabelled @ unlabelled.T, second)
    norms = (jac / (second + 1e-8)[:, None]).norm(dim=1)
    ema = torch.stack([0.8 * ema[0] + 0.2 * norms[0], ema[1], 0.8 * ema[2] + 0.2 * norms[2]])
    torch.testing.assert_close(strategy.norm_ema, ema)
    expected = (ema.max() / ema) / (second + 1e-8)
    expected[1] = 0.0
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac", "nash_mtl", "gradnorm", "db_mtl"])
def test_evaluation_does_not_change_state(name: str) -> None:
    jac = random_jacobians(3, seed=16)[1]
    strategy = bound(name, 3)
    weights(strategy, jac, torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    before = {key: value.clone() for key, value in strategy.state_dict().items()}
    strategy.eval()
    weights(strategy, jac * 2, torch.tensor([3.0, 2.0, 1.0], dtype=F64))
    after = strategy.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert all(not key.startswith("_") for key in after)  # plain buffers, checkpointed


# -- degenerate inputs ----------------------------------------------------------------------------------
def degenerate_cases() -> list[tuple[str, Tensor]]:
    g = torch.Generator().manual_seed(17)
    row = torch.randn(1, 6, generator=g, dtype=F64)
    random3 = torch.randn(3, 6, generator=g, dtype=F64)
    return [
        ("identical", row.repeat(3, 1)),
        ("zero row", torch.cat([random3[:2], torch.zeros(1, 6, dtype=F64)])),
        ("all zero", torch.zeros(3, 6, dtype=F64)),
        ("opposite", torch.cat([row, -row])),
        ("one task", row),
        ("K=40", torch.randn(40, 12, generator=g, dtype=F64)),
        ("tiny", random3 * 1e-20),
        ("huge", random3 * 1e15),
    ]


@pytest.mark.parametrize("name", NAMES)
def test_degenerate_inputs_give_finite_weights(name: str) -> None:
    for case, jac in degenerate_cases():
        k = jac.shape[0]
        strategy = bound(name, k)
        losses = torch.linspace(0.5, 2.0, k, dtype=F64)
        for _ in range(2):  # twice: the stateful ones use their state on the second call
            w = weights(strategy, jac, losses)
            assert w.shape == (k,), (case, w.shape)
            assert bool(torch.isfinite(w).all()), (name, case, w)
        if case == "identical" and name in ("mgda", "imtl_g", "upgrad", "aligned_mtl", "pcgrad"):
            # Symmetric tasks get equal weights (to the solvers' 1e-6 on a singular Gramian).
            assert float((w - w.mean()).abs().max()) < 1e-6, (name, w)


@pytest.mark.parametrize("name", NAMES)
def test_float32_gramian_and_device_dtype_kept(name: str) -> None:
    strategy = bound(name, 2)
    w = weights(strategy, J0, torch.tensor([1.0, 2.0]))
    assert w.dtype == torch.float32 and w.device == J0.device
    assert bool(torch.isfinite(w).all())


def dependent_float32_jacobians() -> list[tuple[str, Tensor]]:
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 64, generator=g)
    return [
        ("parallel", torch.stack([a, 3.0 * a])),
        ("opposite", torch.stack([a, -1.6 * a])),
        ("a sum of two others", torch.stack([a, b, a + b])),
        ("rank 2 of 5", torch.randn(5, 2, generator=g) @ torch.randn(2, 64, generator=g)),
        ("10⁶ times smaller", torch.stack([a, 1e-6 * b])),
    ]


@pytest.mark.parametrize("name", NAMES)
def test_float32_gramian_of_dependent_gradients_gives_the_update_of_its_float64_rows(name: str) -> None:
    # A float32 Gramian of linearly dependent gradients has "zero" eigenvalues of about 1e-7·λ_max,
    # of either sign. IMTL-G and Aligned-MTL counted them as rank (an update 10⁻⁶ of the right one),
    # CAGrad met an indefinite G (the wrong vertex of its inner problem). The same rows in float64
    # are the reference (checked against TorchJD, LibMTL and brute force in test_peers.py).
    for case, rows in dependent_float32_jacobians():
        k = rows.shape[0]
        exact = rows.double()
        losses = torch.linspace(0.5, 2.0, k)
        w32 = bound(name, k).weights_from_gramian(rows @ rows.T, losses)
        w64 = bound(name, k).weights_from_gramian(exact @ exact.T, losses.double())
        gap = float(((w32.double() - w64) @ exact).norm())
        scale = float(exact.norm(dim=1).max()) * max(1.0, float(w64.abs().sum()))
        assert gap <= 1e-4 * scale, (name, case, w32.tolist(), w64.tolist())


def test_psd_up_to_rounding_decides_the_rank_on_the_cosines() -> None:
    eps32 = float(torch.finfo(torch.float32).eps)
    # Gradients 10⁸ apart in size, at 60°, and a zero one: full rank where it is used, kept as it is.
    apart = np.array([[4.0, 0.0, 1e-8], [0.0, 0.0, 0.0], [1e-8, 0.0, 1e-16]])
    assert psd_up_to_rounding(apart, eps32) is apart
    # g₂ = 3·g₁ with the float32 rounding of 9 left in, and a zero gradient: rank 1, zeros kept exact.
    parallel = np.array([[1.0, 3.0, 0.0], [3.0, 9.0 + 1e-6, 0.0], [0.0, 0.0, 0.0]])
    cleaned = psd_up_to_rounding(parallel, eps32)
    assert (cleaned[2] == 0.0).all() and (cleaned[:, 2] == 0.0).all()
    assert abs(float(np.linalg.eigvalsh(cleaned[:2, :2])[0])) < 1e-14
    np.testing.assert_allclose(cleaned[:2, :2], [[1.0, 3.0], [3.0, 9.0]], rtol=1e-6)
    # The same matrix computed in float64 is taken at its word: 1e-6 is far above float64's rounding.
    assert psd_up_to_rounding(parallel, float(torch.finfo(F64).eps)) is parallel


def test_a_half_precision_gramian_is_taken_as_it_is() -> None:
    # bfloat16's ε times K·λ_max reached the eigenvalues of 40 well-conditioned gradients (cosines
    # of 0.3), and cut the Gramian to rank 1.
    cosines = np.full((40, 40), 0.3) + 0.7 * np.eye(40)
    assert psd_up_to_rounding(cosines, float(torch.finfo(torch.bfloat16).eps)) is cosines
    assert psd_up_to_rounding(cosines, float(torch.finfo(torch.float32).eps)) is cosines


def test_the_gramian_is_a_full_float32_product_under_a_lower_matmul_precision() -> None:
    # set_float32_matmul_precision("high") (TF32 on GPUs) or "medium" (bfloat16 passes) rounds the
    # product to 10 or 7 bits: parallel gradients got "zero" eigenvalues of 1e-3·λ_max again.
    rows = torch.randn(3, 5000, generator=torch.Generator().manual_seed(3))
    exact = rows @ rows.T  # "highest", the default
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        got = gramian_of(rows)
        assert torch.get_float32_matmul_precision() == "medium"  # the setting is left as it was
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.equal(got, exact)


def test_box_qp_on_a_singular_gramian_without_a_ridge() -> None:
    # UPGrad(reg_eps=0): the free set's block of a singular G has no Cholesky factor; the row is
    # left to the active-set method instead of raising torch's LinAlgError.
    g = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=F64)
    lower = torch.tensor([-1.0, -1.0], dtype=F64)
    v = box_qp(g, lower, ridge=0.0)
    assert bool((v >= lower - 1e-12).all())
    assert float(v @ g @ v) <= 1e-12  # the minimum of vᵀGv ≥ 0 is 0: v ⊥ (1, 1)


def test_bad_inputs_raise_clear_errors() -> None:
    strategy = bound("mgda", 2)
    with pytest.raises(MultiLossError, match=r"weighting 'mgda': the Gramian must be a square"):
        strategy.weights_from_gramian(torch.ones(2, 3), torch.ones(2))
    with pytest.raises(MultiLossError, match=r"weighting 'mgda': losses must have shape \(2,\)"):
        strategy.weights_from_gramian(torch.eye(2), torch.ones(3))
    with pytest.raises(MultiLossError, match=r"weighting 'mgda' is bound to 2 tasks but got a 3×3 Gramian"):
        strategy.weights_from_gramian(torch.eye(3), torch.ones(3))
    with pytest.raises(NonFiniteLossError, match=r"weighting 'mgda': the Gramian of the task gradients is not finite"):
        strategy.weights_from_gramian(torch.tensor([[1.0, math.nan], [math.nan, 1.0]]), torch.ones(2))
    with pytest.raises(MultiLossError, match=r"weighting 'mgda': not a Gramian J Jᵀ: its diagonal .* negative"):
        strategy.weights_from_gramian(torch.tensor([[1.0, 0.0], [0.0, -1.0]]), torch.ones(2))


# -- hyper-parameters -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "hparams", "message"),
    [
        ("cagrad", {"c": -0.1}, r"weighting 'cagrad': c must be finite and >= 0, got -0.1"),
        ("cagrad", {"rescale": 3}, r"weighting 'cagrad': rescale must be 0, 1 or 2, got 3"),
        ("gradnorm", {"alpha": -1.0}, r"weighting 'gradnorm': alpha must be finite and >= 0, got -1.0"),
        ("gradnorm", {"lr": 0.0}, r"weighting 'gradnorm': lr must be finite and > 0, got 0.0"),
        ("gradnorm", {"lr": math.nan}, r"weighting 'gradnorm': lr must be finite and > 0, got nan"),
        ("gradvac", {"beta": 1.5}, r"weighting 'gradvac': beta must be in \(0, 1\], got 1.5"),
        ("gradvac", {"seed": -1}, r"weighting 'gradvac': seed must be an integer >= 0, got -1"),
        ("pcgrad", {"seed": 1.5}, r"weighting 'pcgrad': seed must be an integer >= 0, got 1.5"),
        ("mgda", {"normalization": "l1"}, r"weighting 'mgda': normalization must be one of .*, got 'l1'"),
        ("nash_mtl", {"update_weights_every": 0}, r"weighting 'nash_mtl': update_weights_every must be .*, got 0"),
        ("nash_mtl", {"max_norm": -1.0}, r"weighting 'nash_mtl': max_norm must be finite and >= 0, got -1.0"),
        ("upgrad", {"reg_eps": -1e-4}, r"weighting 'upgrad': reg_eps must be finite and >= 0, got -0.0001"),
        ("db_mtl", {"beta": 1.0}, r"weighting 'db_mtl': beta must be in \[0, 1\), got 1.0"),
        ("db_mtl", {"beta_sigma": -0.5}, r"weighting 'db_mtl': beta_sigma must be finite and >= 0, got -0.5"),
        ("imtl_g", {"route": "trunk"}, r"weighting 'imtl_g': route must be 'parameters' or 'representation'"),
        ("aligned_mtl", {"ddp": "global"}, r"weighting 'aligned_mtl': ddp must be 'exact' or 'local'"),
        ("mgda", {"gamma": 1.0}, r"weighting 'mgda' has no hyper-parameter\(s\) \['gamma'\]"),
        # Strings, Hydra's null and bools are not numbers (float() raised a bare ValueError or TypeError,
        # or quietly took '0.4' and 1.0).
        ("cagrad", {"c": "0.4"}, r"weighting 'cagrad': c must be a number, got '0.4'"),
        ("cagrad", {"rescale": 1.0}, r"weighting 'cagrad': rescale must be 0, 1 or 2, got 1.0"),
        ("upgrad", {"reg_eps": None}, r"weighting 'upgrad': reg_eps must be a number, got None"),
        ("gradvac", {"beta": None}, r"weighting 'gradvac': beta must be a number, got None"),
        ("db_mtl", {"beta": "x"}, r"weighting 'db_mtl': beta must be a number, got 'x'"),
        ("dwa", {"temperature": None}, r"weighting 'dwa': temperature must be a number, got None"),
        ("famo", {"lr": "a"}, r"weighting 'famo': lr must be a number, got 'a'"),
        ("stch", {"mu": True}, r"weighting 'stch': mu must be a number, got True"),
        ("uncertainty", {"init": "x"}, r"weighting 'uncertainty': init must be a number, got 'x'"),
        ("uncertainty", {"init": [0.0, None]}, r"weighting 'uncertainty': init\[1\] must be a number, got None"),
        ("imtl_l", {"init": [0.0, 1e6]}, r"weighting 'imtl_l': init\[1\] must be finite and within ±80, got 1000000.0"),
        ("learnable", {"check_every": "5"}, r"weighting 'learnable': check_every must be an integer >= 1, got '5'"),
        ("learnable", {"check_every": 2.5}, r"weighting 'learnable': check_every must be an integer >= 1, got 2.5"),
        ("learnable", {"init": "0.5"}, r"weighting 'learnable': init must be a number or a list of numbers, got '0.5'"),
    ],
)
def test_hyperparameter_errors(name: str, hparams: dict[str, Any], message: str) -> None:
    with pytest.raises(MultiLossError, match=message):
        create_weighting(name, **hparams)


def test_learnable_takes_a_whole_float_check_every_as_the_callback_takes_every_n_steps() -> None:
    learnable = create_weighting("learnable", check_every=2.0)
    assert isinstance(learnable, Learnable) and learnable.check_every == 2 and type(learnable.check_every) is int


def test_every_strategy_is_registered_with_route_and_ddp() -> None:
    classes = [MGDA, PCGrad, GradVac, CAGrad, IMTLG, NashMTL, AlignedMTL, UPGrad, GradNorm, DBMTL]
    for name, cls in zip(NAMES, classes, strict=True):
        strategy = create_weighting(name, route="representation", ddp="local")
        assert type(strategy) is cls and cls.name == name
        assert (strategy.route, strategy.ddp) == ("representation", "local")


# -- tasks whose gradients differ by orders of magnitude ---------------------------------------
def brute_force_min_norm(jac: Tensor) -> Tensor:
    """MGDA's min-norm weights by enumerating the supports (small K, well-scaled rows only)."""
    k = jac.shape[0]
    best, best_w = math.inf, None
    for mask in range(1, 2**k):
        support = [i for i in range(k) if mask >> i & 1]
        rows = jac[support]
        kkt = torch.zeros(len(support) + 1, len(support) + 1, dtype=F64)
        kkt[:-1, :-1] = rows @ rows.T
        kkt[:-1, -1] = kkt[-1, :-1] = 1.0
        rhs = torch.zeros(len(support) + 1, dtype=F64)
        rhs[-1] = 1.0
        solution = torch.linalg.lstsq(kkt, rhs).solution[:-1]
        if float(solution.min()) < -1e-12:
            continue
        w = torch.zeros(k, dtype=F64)
        w[support] = solution
        norm = float((w @ jac).norm())
        if norm < best:
            best, best_w = norm, w
    assert best_w is not None
    return best_w


@pytest.mark.parametrize("big", [1e2, 1e6, 1e8])
def test_mgda_exact_when_gradient_norms_differ_by_orders_of_magnitude(big: float) -> None:
    # Three small tasks (norms ~1e-2 and ~1) and one of norm ~`big` that the min-norm point leaves
    # out: the answer is the brute-force min-norm point of the three small ones alone.
    g = torch.Generator().manual_seed(21)
    small = torch.randn(3, 40, generator=g, dtype=F64) * torch.tensor([[1e-2], [1e-2], [1.0]], dtype=F64)
    expected_small = brute_force_min_norm(small)
    d = expected_small @ small
    huge = big * torch.randn(40, generator=g, dtype=F64)
    huge = huge + (2.0 - float(huge @ d) / float(d @ d)) * d  # g·d = 2‖d‖² > ‖d‖²: it stays out of the optimum
    jac = torch.cat([small, huge[None]])
    w = weights(bound("mgda", 4), jac)
    torch.testing.assert_close(w[:3], expected_small, atol=1e-7, rtol=0)
    assert float(w[3]) == 0.0
    torch.testing.assert_close((w @ jac).norm(), d.norm(), atol=0, rtol=1e-7)


@pytest.mark.parametrize("scale", [1e-4, 1e-6, 1e-8])
def test_nash_mtl_is_invariant_to_the_scale_of_a_task_gradient(scale: float) -> None:
    base = torch.tensor([[1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [0.0, 0.2, 1.0]], dtype=F64)
    jac = base * torch.tensor([[1.0], [1.0], [scale]], dtype=F64)
    alpha = weights(bound("nash_mtl", 3), jac)
    # The bargaining equation αᵢ(Gα)ᵢ = 1, read from its definition, and the direction of the unscaled problem.
    torch.testing.assert_close(alpha * (jac @ jac.T @ alpha), torch.ones(3, dtype=F64), atol=1e-8, rtol=0)
    unscaled = weights(bound("nash_mtl", 3), base)
    torch.testing.assert_close(alpha @ jac, unscaled @ base, atol=1e-8, rtol=0)


def test_nash_mtl_without_a_solution_keeps_the_previous_weights(caplog: pytest.LogCaptureFixture) -> None:
    # Two opposite gradients: 0 is in their cone and αᵢ(Gα)ᵢ = 1 has no solution (the ridge's α was ~6e4).
    opposite = torch.tensor([[1.0, 2.0, 0.5], [-1.0, -2.0, -0.5]], dtype=F64)
    solvable = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0]], dtype=F64)
    strategy = bound("nash_mtl", 2)
    with caplog.at_level("WARNING"):
        torch.testing.assert_close(weights(strategy, opposite), torch.ones(2, dtype=F64))  # first step: 1
        good = weights(strategy, solvable)
        torch.testing.assert_close(good * (solvable @ solvable.T @ good), torch.ones(2, dtype=F64), atol=1e-8, rtol=0)
        torch.testing.assert_close(weights(strategy, opposite), good)  # then the previous step's
    warnings = [r.getMessage() for r in caplog.records if "no Nash bargaining solution" in r.getMessage()]
    assert len(warnings) == 1 and "at step 0" in warnings[0]


def test_nash_mtl_warm_started_from_gradients_of_other_norms_still_solves() -> None:
    # Found in a batch-size-1 fit: after a step whose first gradient was tiny (α ≈ [82, 2.4]), the
    # warm start was ~400 times too long for the next Gramian; 200 damped Newton steps did not get
    # back, the step was declared without a solution and α stayed stale from then on.
    before = torch.tensor([[1.9633e-4, -1.5617e-3], [-1.5617e-3, 0.22569]], dtype=F64)
    gramian = torch.tensor([[29.8105, -0.48099], [-0.48099, 0.17033]], dtype=F64)
    # K = 2 in closed form: αᵢ(Gα)ᵢ = 1 gives αᵢ = 1/√((1 + ρ)Gᵢᵢ), ρ the cosine of the two gradients.
    rho = gramian[0, 1] / (gramian[0, 0] * gramian[1, 1]).sqrt()
    exact = 1.0 / ((1.0 + rho) * gramian.diagonal()).sqrt()
    strategy = bound("nash_mtl", 2, normalize=False)
    strategy.weights_from_gramian(before, torch.ones(2, dtype=F64))
    alpha = strategy.weights_from_gramian(gramian, torch.ones(2, dtype=F64))
    torch.testing.assert_close(alpha, exact, rtol=1e-8, atol=0)


def test_nash_mtl_solves_from_a_start_beyond_float64s_range() -> None:
    # The rescaled start was 0 (αᵀGα overflowed), the solve NaN.
    gramian = torch.tensor([[1.0, 0.2], [0.2, 1.0]], dtype=F64)
    alpha = bound("nash_mtl", 2, normalize=False).solve(gramian, torch.full((2,), 1e200, dtype=F64))
    assert alpha is not None
    torch.testing.assert_close(alpha, torch.full((2,), 1.2**-0.5, dtype=F64), rtol=1e-9, atol=0)  # K = 2 closed form


def test_cagrad_at_a_pareto_stationary_point_takes_the_average_gradient() -> None:
    # 0 is in the convex hull of [g, -g, g3]: the documented update is g0/s (weights 1/K), not
    # g0 + ρ·(rounding noise)/‖noise‖ (the weights were ~3e5).
    g = torch.Generator().manual_seed(3)
    row, third = torch.randn(7, generator=g, dtype=F64), torch.randn(7, generator=g, dtype=F64)
    jac = torch.stack([row, -row, third])
    for rescale, divisor in [(0, 1.0), (1, 1 + 0.4**2)]:
        w = weights(bound("cagrad", 3, c=0.4, rescale=rescale), jac)
        torch.testing.assert_close(w, torch.full((3,), 1 / 3 / divisor, dtype=F64))


@pytest.mark.parametrize("scale", [1e-7, 1e-9])
def test_pcgrad_and_gradvac_project_onto_small_gradients(scale: float) -> None:
    # The papers' rules depend on angles only: a gradient 1e-7 the size of another still conflicts.
    # With two tasks each one's only other is the other: the order does not matter.
    jac = torch.tensor([[1.0, 0.0], [-scale, scale]], dtype=F64)
    orders = [[0, 1], [1, 0]]
    # g₁' = g₁ − (g₁·g₂/‖g₂‖²)g₂ = [½, ½] and g₂' = g₂ − (g₂·g₁/‖g₁‖²)g₁ = [0, s], for every s.
    torch.testing.assert_close(pcgrad_replay(jac, orders)[0], torch.tensor([0.5, 0.5 + scale], dtype=F64))
    torch.testing.assert_close(weights(bound("pcgrad", 2), jac) @ jac, torch.tensor([0.5, 0.5 + scale], dtype=F64))
    expected, _ = gradvac_replay(jac, orders, torch.zeros(2, 2, dtype=F64), 0.5)
    assert float(expected[0]) < 0.99  # the small gradient's conflict changed the first task's
    torch.testing.assert_close(weights(bound("gradvac", 2, beta=0.5), jac) @ jac, expected, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize(
    ("name", "hparams", "message"),
    [
        ("fixed", {"weights": [True, 1.0]}, r"weighting 'fixed': weight for task 'a' must be a number, got True"),
        ("fixed", {"weights": [0.0, 0.0]}, r"weighting 'fixed': every weight is 0 \({'a': 0.0, 'b': 0.0}\)"),
        ("stch", {"preference": [1.0, -1.0]}, r"weighting 'stch': preference for task 'b' must be finite and >= 0"),
    ],
)
def test_per_task_hyperparameter_errors_name_the_task(name: str, hparams: dict[str, Any], message: str) -> None:
    with pytest.raises(MultiLossError, match=message):
        create_weighting(name, **hparams).bind(["a", "b"])


@pytest.mark.parametrize(
    "rows",
    [
        # Gradients on one line (rank 1), norms 1e-6 to 1e6: 0 is in the hull. A variable entered on a
        # multiplier at the rounding level and left again, until the iteration limit (240 solves).
        [[0.03694365281636229], [-0.47163389475103107], [0.15716335891925595], [1234829.1823519277],
         [-141.33576872236003], [-6.388472697996831e-07], [0.009612034214536424]],
        [[-1.7080451088837956, 0.0771961834376039], [0.0001617024624656097, 8.244064853887911e-05],
         [0.0004567524105865101, -9.72999261103608e-06], [-0.212205342844648, -0.6900022532442217],
         [458.63910921000195, -3501.345333862504]],
    ],
)  # fmt: skip
def test_the_simplex_qp_ends_in_a_few_solves_on_badly_scaled_stationary_problems(
    rows: list[list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    jac = torch.tensor(rows, dtype=F64)
    k = jac.shape[0]
    solves = []
    original = solvers._solve_on_free_sets
    monkeypatch.setattr(solvers, "_solve_on_free_sets", lambda *a: solves.append(1) or original(*a))
    w = simplex_qp(jac @ jac.T)
    assert len(solves) <= 2 * k
    # As short as the brute-force min-norm point (0 is in the hull: both are ~0 on the gradients' scale).
    best = brute_force_min_norm(jac)
    assert float((w @ jac).norm()) <= float((best @ jac).norm()) + 1e-12 * float(jac.norm())


@pytest.mark.parametrize("small", [1e-2, 1e-5, 1e-7])
def test_cagrad_with_a_small_gradient_that_conflicts_with_nothing(small: float) -> None:
    # Its inner solution is that small gradient: not a cancellation, so not a stationary point. The
    # threshold was relative to the largest gradient and dropped the correction (d = g0/s).
    from scipy.optimize import minimize_scalar

    c = 0.4
    jac = torch.tensor([[1.0, 0.2, 0.0], [-0.3 * small, small, 0.5 * small]], dtype=F64)
    g0 = jac.mean(0)
    rho = c * float(g0.norm())

    def inner(t: float) -> float:  # the inner objective on the segment w = (1 - t, t), from the paper
        gw = (1 - t) * jac[0] + t * jac[1]
        return float(gw @ g0) + rho * float(gw.norm())

    # Brent's bounded search never evaluates the ends, where the minimum is here (t = 1): compare them too.
    interior = minimize_scalar(inner, bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-14}).x
    t = min((0.0, 1.0, interior), key=inner)
    gw = (1 - t) * jac[0] + t * jac[1]
    expected = (g0 + rho / float(gw.norm()) * gw) / (1 + c * c)
    got = weights(bound("cagrad", 2, c=c), jac) @ jac
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-6)
