"""The package's K×K solvers against established ones, on random and degenerate problems.

``simplex_qp`` and ``box_qp`` (exact active-set methods) are compared with quadprog through
qpsolvers; ``simplex_min_linear_plus_norm`` (CAGrad's inner problem, a second-order cone program,
not a QP) with Clarabel through cvxpy. Degenerate problems are included: rank-deficient Gramians
(K above the dimension), duplicate rows, zero rows, an all-zero Gramian, and very small and very
large scales. Where the minimiser is not unique only the objective can be compared: the check is
that our objective is the reference's (to a tolerance relative to the problem's scale) and that
our point satisfies the constraints. quadprog needs a positive definite matrix and moderate
entries, so it gets the problem divided by the mean diagonal of the Gramian, plus a ridge of 1e-9;
its point is evaluated on the original objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import cvxpy
import numpy as np
import pytest
import torch
from qpsolvers import solve_qp
from torch import Tensor

from lightning_multiloss.weighting._solvers import box_qp, simplex_min_linear_plus_norm, simplex_qp

F64 = torch.float64
KINDS = ("random", "rank_deficient", "duplicate_rows", "zero_rows", "all_zero", "tiny", "huge")


@dataclass(frozen=True)
class Problem:
    kind: str
    jac: Tensor  # the rows whose Gramian is the quadratic term

    @property
    def gramian(self) -> Tensor:
        return self.jac @ self.jac.T

    @property
    def scale(self) -> float:
        return float(self.gramian.diagonal().mean()) + 1e-300


def make_problem(kind: str, k: int, seed: int) -> Problem:
    g = torch.Generator().manual_seed(seed)
    dim = k + 3
    if kind == "rank_deficient":
        jac = torch.randn(k, max(k // 2, 1), generator=g, dtype=F64) @ torch.randn(
            max(k // 2, 1), dim, generator=g, dtype=F64
        )
    else:
        jac = torch.randn(k, dim, generator=g, dtype=F64)
    if kind == "duplicate_rows" and k > 1:
        jac[k - 1] = jac[0]
        jac[k // 2] = jac[0]
    if kind == "zero_rows":
        jac[torch.randperm(k, generator=g)[: max(k // 3, 1)]] = 0.0
    if kind == "all_zero":
        jac = torch.zeros_like(jac)
    if kind == "tiny":
        jac = 1e-6 * jac
    if kind == "huge":
        jac = 1e6 * jac
    return Problem(kind, jac)


PROBLEMS = [(kind, k) for kind in KINDS for k in range(1, 11)]


def quadprog(p: Tensor, q: Tensor, *, simplex: bool, lower: Tensor | None = None) -> Tensor:
    """``argmin ½xᵀPx + qᵀx`` s.t. ``x ≥ lower`` (0 by default) and, if ``simplex``, ``Σx = 1``, by quadprog."""
    k = p.shape[0]
    # quadprog fails on large entries: solve the same problem divided by its scale.
    scale = float(p.diagonal().mean()) or float(q.abs().max()) or 1.0
    bound = np.zeros(k) if lower is None else lower.numpy()
    x = solve_qp(
        (p / scale + 1e-9 * torch.eye(k, dtype=F64)).numpy(),
        (q / scale).numpy(),
        G=-np.eye(k),
        h=-bound,
        A=np.ones((1, k)) if simplex else None,
        b=np.ones(1) if simplex else None,
        solver="quadprog",
    )
    assert x is not None, "quadprog found no solution"
    return torch.from_numpy(x)


def simplex_objective(gramian: Tensor, linear: Tensor, w: Tensor) -> float:
    return float(0.5 * w @ gramian @ w + linear @ w)


def assert_on_simplex(w: Tensor) -> None:
    assert float(w.min()) >= 0.0
    assert abs(float(w.sum()) - 1.0) <= 1e-12


@pytest.mark.parametrize(("kind", "k"), PROBLEMS)
def test_simplex_qp_matches_quadprog(kind: str, k: int) -> None:
    problem = make_problem(kind, k, seed=100 * k + KINDS.index(kind))
    gramian = problem.gramian
    g = torch.Generator().manual_seed(k)
    magnitude = problem.scale if kind != "all_zero" else 1.0
    singular = int(torch.linalg.matrix_rank(problem.jac)) < k
    # No linear term (MGDA), one in the range of G (what CAGrad's inner QPs have), and an arbitrary one.
    for what, linear in (
        ("none", torch.zeros(k, dtype=F64)),
        ("in the range of G", gramian @ torch.randn(k, generator=g, dtype=F64)),
        ("arbitrary", magnitude * torch.randn(k, generator=g, dtype=F64)),
    ):
        ours = simplex_qp(gramian, linear)
        assert_on_simplex(ours)
        reference = quadprog(gramian, linear, simplex=True)
        # An arbitrary linear term on a singular G makes both regularised solves ill-conditioned
        # (each is up to about 2e-7 of the scale from the other here, either way round).
        relative = 1e-6 if singular and what == "arbitrary" else 1e-9
        tolerance = relative * (magnitude + float(linear.abs().max()))
        ours_value, reference_value = (
            simplex_objective(gramian, linear, ours),
            simplex_objective(gramian, linear, reference),
        )
        assert ours_value <= reference_value + tolerance, (kind, k, what, ours_value, reference_value)
        assert reference_value <= ours_value + tolerance, (kind, k, what, ours_value, reference_value)
        # A warm start (any point, even a poor one) changes nothing but the path.
        warm = simplex_qp(gramian, linear, start=torch.rand(k, generator=g, dtype=F64))
        assert_on_simplex(warm)
        assert abs(simplex_objective(gramian, linear, warm) - ours_value) <= tolerance


@pytest.mark.parametrize(("kind", "k"), PROBLEMS)
def test_box_qp_matches_quadprog(kind: str, k: int) -> None:
    problem = make_problem(kind, k, seed=200 * k + KINDS.index(kind))
    gramian = problem.gramian
    g = torch.Generator().manual_seed(k + 50)
    # UPGrad's K problems (lower bound eᵢ/K), then random bounds of both signs.
    lowers = torch.cat([torch.eye(k, dtype=F64) / k, torch.randn(3, k, generator=g, dtype=F64)])
    singular = int(torch.linalg.matrix_rank(problem.jac)) < k
    ours = box_qp(gramian, lowers)
    assert ours.shape == lowers.shape
    for lower, v in zip(lowers, ours, strict=True):
        assert bool((v >= lower - 1e-12).all())
        reference = quadprog(2.0 * gramian, torch.zeros(k, dtype=F64), simplex=False, lower=lower)
        tolerance = 1e-8 * problem.scale * (1.0 + float(lower.square().sum()))
        ours_value, reference_value = float(v @ gramian @ v), float(reference @ gramian @ reference)
        assert ours_value <= reference_value + tolerance, (kind, k, ours_value, reference_value)
        if not singular:  # a unique minimiser; on a singular G quadprog's ridge can leave it above ours
            assert reference_value <= ours_value + tolerance, (kind, k, ours_value, reference_value)


@pytest.mark.parametrize(("kind", "k"), [(kind, k) for kind in KINDS for k in (1, 2, 3, 5, 8, 10)])
@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
def test_simplex_min_linear_plus_norm_matches_clarabel(kind: str, k: int) -> None:
    # CAGrad's inner problem: min bᵀw + ρ‖Jᵀw‖ over the simplex, with b = G·1/K and ρ = 0.4‖g₀‖.
    problem = make_problem(kind, k, seed=300 * k + KINDS.index(kind))
    gramian, jac = problem.gramian, problem.jac
    linear = gramian.mean(dim=1)
    rho = 0.4 * float(gramian.mean().clamp_min(0.0).sqrt())
    ours = simplex_min_linear_plus_norm(gramian, linear, rho)
    assert_on_simplex(ours)
    w = cvxpy.Variable(k)
    scale = problem.scale**0.5  # solve on J / √scale: Clarabel's tolerances are absolute
    cost = (linear.numpy() / problem.scale) @ w + rho / scale * cvxpy.norm(jac.numpy().T / scale @ w, 2)
    cvxpy.Problem(cvxpy.Minimize(cost), [w >= 0, cvxpy.sum(w) == 1]).solve(
        solver=cvxpy.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11
    )
    reference = torch.from_numpy(np.clip(w.value, 0.0, None))
    reference = reference / reference.sum()

    def objective(x: Tensor) -> float:
        return float(linear @ x + rho * (x @ gramian @ x).clamp_min(0.0).sqrt())

    assert objective(ours) <= objective(reference) + 1e-8 * problem.scale, (kind, k)
    assert objective(reference) <= objective(ours) + 1e-6 * problem.scale, (kind, k)
