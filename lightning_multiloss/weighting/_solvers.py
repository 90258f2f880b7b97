"""Small K×K solvers shared by the gradient strategies (float64, on the CPU).

The matrices are ``K × K`` with ``K`` the number of tasks, so exact active-set methods are cheap
and need no external solver. Every function takes and returns float64 CPU tensors: the Gramian
base (:class:`~lightning_multiloss.weighting.GramianWeighting`) converts the Gramian once. The
work (the ridge, the active-set method, PCGrad's projections) runs on NumPy views of them
(:func:`host_array`): each step is a handful of operations on K×K arrays, where NumPy's fixed
cost per operation is several times smaller than torch's.

>>> import torch
>>> G = torch.tensor([[18.0, -22.0], [-22.0, 38.0]], dtype=torch.float64)  # J = [[-4,1,1],[6,1,1]]
>>> simplex_qp(G)  # the min-norm point of the convex hull of the rows of J
tensor([0.6000, 0.4000], dtype=torch.float64)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

_CPU = torch.device("cpu")
_F64 = torch.float64
_F64_EPS = float(torch.finfo(torch.float64).eps)

RIDGE = 1e-10
"""Relative ridge added to each diagonal entry (``G_ii ← G_ii (1 + 1e-10)``, a zero one gets
``1e-10·ZERO_FLOOR·max G_jj``) so that every solve is well posed when the Gramian is singular
(identical or zero gradients, ``K`` larger than the dimension). Relative to each task's own
scale, so that a task whose gradient is 10⁶ times smaller than another's is not swamped by the
ridge: it changes ``wᵀGw`` by at most ``1e-10·Σ wᵢ² G_ii`` (plus the floor's share)."""

ZERO_FLOOR = 1e-20
"""A diagonal entry below this times the largest one is regularised as if it were that large
(so a zero gradient's row is not singular)."""


# -- small helpers ----------------------------------------------------------------------------
def uniform(k: int) -> Tensor:
    return torch.full((k,), 1.0 / k, dtype=_F64)


def zero_rows(gramian: Tensor) -> Tensor:
    """Boolean mask of the tasks whose gradient is zero (``G_ii = 0``).

    Only an exact zero: a gradient 10⁻⁸ times the size of another is a gradient, and the
    scale-invariant methods (Nash-MTL, PCGrad, ...) must treat it as one.
    """
    return gramian.diagonal() <= 0.0


def regularize(gramian: Tensor, ridge: float = RIDGE) -> Tensor:
    """``G + ridge·diag(max(G_ii, ZERO_FLOOR·max G_jj))`` (an absolute floor when ``G`` is zero)."""
    return torch.from_numpy(_regularized(host_array(gramian), ridge))


def host_array(tensor: Tensor) -> np.ndarray:
    """A float64 NumPy array of ``tensor`` (a view where it already is a float64 CPU tensor: read only)."""
    return tensor.detach().to(device=_CPU, dtype=_F64).numpy()


def _regularized(gramian: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """:func:`regularize` on an array (a new one)."""
    k = gramian.shape[0]
    diag = np.diagonal(gramian).clip(min=0.0)
    top = float(diag.max())
    out = gramian.copy()
    out[np.diag_indices(k)] += ridge * np.maximum(diag, ZERO_FLOOR * top) if top > 0.0 else 1e-30
    return out


# -- quadratic programs ------------------------------------------------------------------------
def _starting_points(q: np.ndarray, c: np.ndarray, simplex: bool, start: np.ndarray | None) -> np.ndarray:
    """Feasible first iterates, one row per problem.

    ``start`` (projected onto the feasible set) where it is usable, else a vertex (simplex) or 0.
    """
    m, k = c.shape
    x = np.zeros((m, k))
    if simplex:
        x[np.arange(m), np.argmin(0.5 * np.diagonal(q) + c, axis=1)] = 1.0
    if start is None or start.shape[-1] != k:
        return x
    warm = np.broadcast_to(start, (m, k)).clip(min=0.0)
    total = warm.sum(axis=1, keepdims=True)
    usable = np.isfinite(total) & (total > 0.0 if simplex else True)
    if simplex:
        warm = warm / np.where(usable, total, 1.0)
    return np.where(usable, warm, x)


def _multiplier_tolerance(q: np.ndarray, c: np.ndarray, x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``(m, K)``: how far below 0 the multiplier ``(Qx + c)_j + shift`` of each variable may fall
    from rounding alone: ``1e-11`` times the size of the terms summed, ``Σᵢ|Q_ji x_i| + |c_j| + |shift|``.

    Each variable is judged on its own scale: a tolerance on the largest scale of ``Q`` would call a
    vertex optimal whenever a task's gradient is 10⁶ times smaller than another's. Summing the terms'
    sizes (not the size of their sum) keeps the rounding of a cancelling sum, near a stationary
    point, from reading as a negative multiplier (a variable would enter, then leave, in a cycle).
    """
    sizes = np.abs(x) @ np.abs(q) + np.abs(c) + np.abs(shift)[:, None]
    tolerance: np.ndarray = 1e-11 * sizes + 1e-300
    return tolerance


def _active_set_on_host(
    q_np: np.ndarray, c_np: np.ndarray, simplex: bool, max_iter: int, start: np.ndarray | None = None
) -> np.ndarray:
    """Primal active-set method for ``min ½xᵀQx + cᵀx`` s.t. ``x ≥ 0`` (and ``Σx = 1`` if ``simplex``).

    ``Q`` must be positive definite (see :func:`regularize`); the method is then exact and ends
    after finitely many steps (each solves one equality-constrained system on the free set).
    ``c`` of shape ``(m, K)`` holds ``m`` problems that share ``Q`` (UPGrad's K projections):
    they are stepped together, each on its own free set, with one batched solve per step.

    It starts from a vertex (or 0), adding one free variable per step, or from ``start``: the
    solution of a nearby problem (the previous training step's) usually has the right free set
    already, so a warm start ends after one or two solves instead of about ``K``. The minimiser
    is unique, so the start changes the result only by rounding.

    The iterations run in NumPy on the host copies: a step is some twenty operations on K×K
    arrays, each of which costs torch several times NumPy's fixed overhead (5× faster at K = 8).
    """
    m, k = c_np.shape
    if start is not None and start.shape[-1] == k:
        # Where the start's free sets are already the optimal ones (the common case from one
        # training step to the next), one solve and the optimality check end it, without the
        # bookkeeping of the iterations below (half the operations, each a fixed cost).
        solved = _optimum_on_free_sets(q_np, c_np, simplex, np.broadcast_to(start > 0.0, (m, k)))
        if solved is not None:
            return _feasible(solved, simplex)
    x = _starting_points(q_np, c_np, simplex, start)
    free = x > 0.0
    done = np.zeros(m, dtype=bool)
    rows = np.arange(m)
    # Per row, the free sets it has optimised on: a set met again means a cycle of rounding (a
    # variable enters on a multiplier at the rounding level, then leaves), so the row stops there.
    visited: list[set[bytes]] = [set() for _ in range(m)]
    for _ in range(max_iter):
        solution = _solve_on_free_sets(q_np, c_np, simplex, free)
        target = solution[:, :k]
        feasible = ((target >= 0.0) | ~free).all(axis=1) & ~done
        blocked = ~feasible & ~done
        # Rows whose target is feasible move to it; optimal if no fixed variable wants to enter.
        x = np.where(feasible[:, None], target, x)
        grad = x @ q_np + c_np
        # The multiplier ν of Σx = 1 from the same solve (Qx + c + ν = 0 on the free set).
        mu = -solution[:, k] if simplex else np.zeros(m)
        tol = _multiplier_tolerance(q_np, c_np, x, mu)
        multipliers = np.where(free, math.inf, (grad - mu[:, None]) / tol)  # in units of each one's tolerance
        entering = multipliers.argmin(axis=1)
        done |= feasible & (multipliers[rows, entering] >= -1.0)
        grow = feasible & ~done
        for row in np.flatnonzero(grow):
            key = free[row].tobytes()
            if key in visited[row]:  # the point of this free set is as good as any in the cycle
                done[row] = True
                grow[row] = False
            visited[row].add(key)
        free[grow, entering[grow]] = True
        # Rows whose target is not: step towards it until the first free variable reaches 0.
        if blocked.any():
            step = target - x
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = np.where(free & (step < 0.0), x / -step, math.inf)
            leaving = ratios.argmin(axis=1)
            ratio = ratios[rows, leaving]
            x = np.where(blocked[:, None], x + np.clip(ratio, 0.0, 1.0)[:, None] * step, x)
            x[blocked, leaving[blocked]] = 0.0
            free[blocked, leaving[blocked]] = False
            drop = blocked[:, None] & free & (x <= 0.0)
            x = np.where(drop, 0.0, x)
            free &= ~drop
            if simplex:  # an empty free set cannot happen in exact arithmetic; restart at a vertex
                empty = ~free.any(axis=1)
                if empty.any():
                    x[empty] = _starting_points(q_np, c_np[empty], simplex, None)
                    free[empty] = x[empty] > 0.0
        if done.all():
            break
    return _feasible(x, simplex)


def _feasible(x: np.ndarray, simplex: bool) -> np.ndarray:
    """``x`` with rounding below 0 clipped (and each row summing to 1 on the simplex)."""
    x = x.clip(min=0.0)
    if simplex:
        x = x / x.sum(axis=1, keepdims=True)
    return np.ascontiguousarray(x)


def _solve_on_free_sets(q: np.ndarray, c: np.ndarray, simplex: bool, free: np.ndarray) -> np.ndarray:
    """Each row's equality-constrained problem on its free set, in one batched solve: ``(m, n)``,
    ``x`` in the first ``K`` columns (and, on the simplex, the multiplier ν of ``Σx = 1`` last).

    ``Q`` restricted to the free set and identity rows (right-hand side 0) for the fixed
    variables, so that all systems have one size; on the simplex, bordered by the constraint
    ``Σ_F x = 1`` (a free set must not be empty there).
    """
    m, k = c.shape
    n = k + 1 if simplex else k
    diagonal = np.arange(k)
    system = np.zeros((m, n, n))
    system[:, :k, :k] = np.where(free[:, :, None] & free[:, None, :], q, 0.0)
    system[:, diagonal, diagonal] += ~free  # x = 0 for a fixed variable
    rhs = np.zeros((m, n, 1))
    rhs[:, :k, 0] = np.where(free, -c, 0.0)
    if simplex:
        system[:, :k, k] = free
        system[:, k, :k] = free
        rhs[:, k, 0] = 1.0
    solved: np.ndarray = np.linalg.solve(system, rhs)[:, :, 0]
    return solved


def _optimum_on_free_sets(q: np.ndarray, c: np.ndarray, simplex: bool, free: np.ndarray) -> np.ndarray | None:
    """The ``(m, K)`` minimisers of :func:`_active_set_on_host`'s problems if ``free`` holds each
    row's optimal free set, else ``None``.

    Solves each row's problem with its fixed variables at 0 and equality on the free ones (one
    batched solve), then checks the optimality conditions: the free variables are ``≥ 0`` and no
    fixed one has a multiplier below its rounding tolerance (on the simplex, that of ``Σx = 1``
    included; :func:`_multiplier_tolerance`). They
    are sufficient (``Q`` positive definite), so any guess of the free sets is safe.
    """
    k = c.shape[1]
    if simplex and not free.any(axis=1).all():
        return None
    solution = _solve_on_free_sets(q, c, simplex, free)
    x = solution[:, :k]
    if (x < 0.0)[free].any():
        return None
    multipliers = x @ q + c  # Qx + c (+ ν on the simplex) must be ≥ 0 off the free set
    shift = solution[:, k] if simplex else np.zeros(len(x))
    multipliers += shift[:, None]
    if (multipliers < -_multiplier_tolerance(q, c, x, shift))[~free].any():
        return None
    return x


def simplex_qp(
    gramian: Tensor, linear: Tensor | None = None, ridge: float = RIDGE, start: Tensor | None = None
) -> Tensor:
    """``argmin_{w ∈ Δ} ½wᵀGw + bᵀw`` over the simplex ``Δ = {w ≥ 0, Σw = 1}``, exactly.

    With ``b = 0`` this is the minimum-norm point ``Jᵀw`` of the convex hull of the task
    gradients (MGDA). Among several minimisers (a singular ``G``) the ridge picks the one of
    smallest ``‖w‖``. ``start``: a warm start (e.g. the previous step's solution), for speed only.
    """
    k = gramian.shape[0]
    if k == 1:
        return torch.ones(1, dtype=_F64)
    q = _regularized(host_array(gramian), ridge)
    c = np.zeros((1, k)) if linear is None else host_array(linear).reshape(1, k)
    warm = None if start is None else host_array(start)
    return torch.from_numpy(_active_set_on_host(q, c, simplex=True, max_iter=20 * k + 100, start=warm)[0])


def _principal_pivoting(q: Tensor, c: Tensor, max_iter: int) -> tuple[Tensor, Tensor]:
    """Block principal pivoting for ``min ½xᵀQx + cᵀx`` s.t. ``x ≥ 0``, ``m`` problems (rows of ``c``) at once.

    The optimality conditions are the linear complementarity problem ``x ≥ 0``, ``y = Qx + c ≥ 0``,
    ``xᵢyᵢ = 0``. Each step guesses the free set ``F`` (``y_F = 0``, the rest ``x = 0``), solves
    ``Q_FF x_F = −c_F`` and swaps *every* index that breaks a sign (``x_F < 0`` or ``y < 0`` off
    ``F``) at once, so one step can change many variables where an active-set method changes one:
    a few steps instead of about ``K`` (Júdice & Pires 1994). Block swaps can cycle, so a row whose
    number of wrong signs has not fallen for three steps stops, unsolved. Each row keeps its own
    free set and counters; the rows still running take one batched Cholesky solve per step
    (``Q`` on the free set, identity rows and columns for the fixed variables).

    Returns ``(x, solved)``: ``x`` of an unsolved row is its last guess, clipped to ``x ≥ 0``.
    """
    m, k = c.shape
    tol = (1e-11 * (float(q.diagonal().abs().max()) + c.abs().amax(dim=1) + 1e-300))[:, None]
    eye = torch.eye(k, dtype=_F64)
    x = torch.zeros(m, k, dtype=_F64)
    # The first guess, F = ∅, needs no solve: x = 0, y = c.
    free = c < -tol
    solved = ~free.any(dim=1)
    running = ~solved
    fewest_wrong = free.sum(dim=1)
    tries_left = torch.full((m,), 3)
    for _ in range(max_iter):
        if not bool(running.any()):
            break
        rows = running.nonzero().flatten()
        factor, info = torch.linalg.cholesky_ex(torch.where(free[rows, :, None] & free[rows, None, :], q, eye))
        if bool((info != 0).any()):
            # Q_FF singular (a singular G without a ridge, UPGrad's reg_eps=0): no step on that free
            # set; the row stops here, unsolved, and the active-set method finishes it.
            running[rows[info != 0]] = False
            rows, factor = rows[info == 0], factor[info == 0]
            if rows.numel() == 0:
                break
        f, rhs = free[rows], c[rows]
        guess = torch.cholesky_solve(torch.where(f, -rhs, 0.0).unsqueeze(-1), factor).squeeze(-1)
        x[rows] = guess
        wrong = torch.where(f, guess < -tol[rows], guess @ q + rhs < -tol[rows])
        count = wrong.sum(dim=1)
        fewer = count < fewest_wrong[rows]
        fewest_wrong[rows] = torch.where(fewer, count, fewest_wrong[rows])
        tries_left[rows] = torch.where(fewer, 3, tries_left[rows] - 1)
        free[rows] = f ^ wrong
        solved[rows] = count == 0
        running[rows] = (count > 0) & (tries_left[rows] > 0)
    return x.clamp_min(0.0), solved


def box_qp(gramian: Tensor, lower: Tensor, ridge: float = RIDGE, start: Tensor | None = None) -> Tensor:
    """``argmin_{v ≥ u} vᵀGv``: the dual of the projection of ``Jᵀu`` onto the dual cone of the rows of ``J``.

    Solved as ``v = u + x`` with ``x = argmin_{x ≥ 0} ½xᵀGx + (Gu)ᵀx``. ``lower`` of shape
    ``(m, K)``: ``m`` such problems at once (one row of the result each), by block principal
    pivoting; a row where that stalls is finished by the active-set method, started from where
    pivoting stopped. ``start``: the ``x`` of nearby problems (the previous training step's
    ``v − u``), for speed only: the active-set method then starts from it, and usually ends after
    one solve where the free sets are unchanged (the minimiser is unique, so the result changes
    only by rounding).
    """
    g = _regularized(host_array(gramian), ridge)
    k = g.shape[0]
    single = lower.ndim == 1
    low = host_array(lower).reshape(-1, k)
    linear = low @ g
    max_iter = 20 * k + 100
    if start is not None and tuple(start.shape) == linear.shape:
        x = _active_set_on_host(g, linear, simplex=False, max_iter=max_iter, start=host_array(start))
    else:
        pivoted, _ = _principal_pivoting(torch.from_numpy(g), torch.from_numpy(linear), max_iter=2 * k + 10)
        # The active-set method finishes every row from where pivoting stopped: a row that pivoting
        # solved is confirmed in one step, one where it stalled (or where a solve on an
        # ill-conditioned free set lost digits, as on a near-singular G of scale 1e12) is completed.
        x = _active_set_on_host(g, linear, simplex=False, max_iter=max_iter, start=pivoted.numpy())
    v = torch.from_numpy(low + x)
    return v[0] if single else v


def simplex_min_linear_plus_norm(
    gramian: Tensor,
    linear: Tensor,
    rho: float,
    rtol: float = 1e-12,
    bisection_only: bool = False,
    start: Tensor | None = None,
) -> Tensor:
    """``argmin_{w ∈ Δ} bᵀw + ρ·sqrt(wᵀGw)`` (the inner problem of CAGrad).

    Uses ``ρ√q = min_{t>0} ρ(q/(2t) + t/2)``: for a fixed ``t`` the problem is the simplex QP
    ``min bᵀw + (ρ/2t)wᵀGw`` with solution ``w(t)``; the partial minimum ``F(t)`` is convex in
    ``t`` with ``F'(t) = ρ/2·(1 − q(w(t))/t²)``, so ``t* = ‖Jᵀw*‖`` solves ``t² = q(w(t))``. On
    a fixed support of ``w``, ``w(t)`` is affine in ``t`` and that equation is a quadratic, solved
    in closed form; the support is updated until it is stable (a few QPs). If that does not
    settle, bisection on ``log t`` (``bisection_only=True`` forces it) finds ``t*``. Each QP
    warm-starts from the one before (the first from ``start``, e.g. the previous step's ``w``).
    """
    k = gramian.shape[0]
    if k == 1:
        return torch.ones(1, dtype=_F64)
    if rho <= 0.0:
        j = int(torch.argmin(linear))
        w = torch.zeros(k, dtype=_F64)
        w[j] = 1.0
        return w

    previous: list[Tensor] = []  # each QP warm-starts from the last one: nearby t, nearby solution

    def solve(t: float) -> tuple[Tensor, float]:
        w = simplex_qp(gramian, linear * (t / rho), start=previous[-1] if previous else start)
        previous.append(w)
        return w, float(w @ gramian @ w)

    hi = math.sqrt(max(float(gramian.diagonal().max()), 0.0))
    if hi == 0.0:
        return uniform(k)
    # Below t ≈ ρ·ridge/|b| the QP's linear term (t/ρ)·b is smaller than the ridge that
    # regularize adds, and the ridge, not b, picks w(t) among the points with Jᵀw = 0: the test
    # for t* = 0 is made well above that (else a hull containing 0 would always give t* = 0).
    ridge = RIDGE * float(gramian.diagonal().clamp_min(0.0).mean())
    linear_size = float(linear.abs().max())
    lo = min(max(hi * 1e-12, 1e4 * rho * ridge / linear_size if linear_size > 0.0 else 0.0), 0.5 * hi)
    w_lo, q_lo = solve(lo)
    upper = hi
    if q_lo <= lo * lo:
        # t* ≤ lo: 0 (w* is the best point with Jᵀw* = 0), or t* is the scale of tasks whose
        # gradients are far smaller than the mean task's (the scale of the ridge above, 10⁸ apart
        # in norm say). Told apart at the smallest scale of t: there q(w(t)) is above t² only if
        # t* > 0 (beyond q's own rounding, which a hull containing 0 leaves).
        floor = min(hi * 1e-12, 0.5 * lo)
        w_floor, q_floor = solve(floor)
        rounding = 64.0 * _F64_EPS * float(w_floor.abs() @ gramian.abs() @ w_floor.abs())
        if q_floor <= floor * floor + rounding:
            return w_lo
        upper, lo, q_lo = lo, floor, q_floor  # t* in (floor, lo)
    if not bisection_only:
        t = math.sqrt(q_lo)
        for _ in range(3 * k + 10):
            w, q = solve(t)
            t_new = _root_on_support(gramian, linear, rho, w > 0.0, t)
            if t_new is None:
                break
            if abs(t_new - t) <= 1e-12 * t:
                w, q = solve(t_new)
                if abs(q - t_new * t_new) <= 1e-9 * max(q, t_new * t_new):
                    return w
                break
            t = t_new
    log_lo, log_hi = math.log(lo), math.log(upper)
    for _ in range(200):
        mid = 0.5 * (log_lo + log_hi)
        t = math.exp(mid)
        _, q = solve(t)
        if q > t * t:
            log_lo = mid
        else:
            log_hi = mid
        if log_hi - log_lo < rtol:
            break
    return solve(math.exp(0.5 * (log_lo + log_hi)))[0]


def _root_on_support(gramian: Tensor, linear: Tensor, rho: float, support: Tensor, near: float) -> float | None:
    """The root ``t > 0`` of ``t² = q(w(t))`` with ``w(t)`` the QP solution on a fixed ``support``."""
    idx = torch.nonzero(support).flatten()
    n = idx.numel()
    if n == 0:
        return None
    q = regularize(gramian)[idx][:, idx]
    kkt = torch.zeros(n + 1, n + 1, dtype=_F64)
    kkt[:n, :n] = q
    kkt[:n, n] = 1.0
    kkt[n, :n] = 1.0
    rhs = torch.zeros(n + 1, 2, dtype=_F64)
    rhs[n, 0] = 1.0
    rhs[:n, 1] = -linear[idx] / rho  # w(t) = w0 + t·w1
    sol = torch.linalg.solve(kkt, rhs)
    w0, w1 = sol[:n, 0], sol[:n, 1]
    g = gramian[idx][:, idx]
    a0, a1, a2 = float(w0 @ g @ w0), float(w0 @ g @ w1), float(w1 @ g @ w1)
    # (1 - a2) t² - 2 a1 t - a0 = 0
    qa, qb, qc = 1.0 - a2, -2.0 * a1, -a0
    if abs(qa) <= 1e-14 * (abs(a2) + 1.0):
        roots = [-qc / qb] if qb != 0.0 else []
    else:
        disc = qb * qb - 4.0 * qa * qc
        if disc < 0.0:
            return None
        root = math.sqrt(disc)
        roots = [(-qb + root) / (2.0 * qa), (-qb - root) / (2.0 * qa)]
    positive = [r for r in roots if r > 0.0 and math.isfinite(r)]
    return min(positive, key=lambda r: abs(r - near)) if positive else None


# -- other K×K helpers -------------------------------------------------------------------------
def nash_solve(gramian: Tensor, start: Tensor, tol: float = 1e-12, max_iter: int = 200) -> Tensor:
    """The positive solution of ``Gα = 1/α`` (element-wise), by damped Newton.

    ``α`` minimises the self-concordant ``f(α) = ½αᵀGα − Σᵢ log αᵢ`` (its gradient is
    ``Gα − 1/α``, its Hessian ``G + diag(1/α²)`` is positive definite), so the damped Newton
    step ``α ← α − Δ/(1+λ)`` (``λ²`` the Newton decrement) stays positive and converges
    globally, quadratically near the solution. ``G`` must have no zero row, and the ridge of
    :func:`regularize` keeps ``f`` bounded below when ``G`` is singular; NaN where ``G`` is
    indefinite beyond the ridge (no solution).
    """
    g = regularize(gramian)
    alpha = start.to(_F64).clone()
    # First the best multiple of the start (f(tα) is least at t² = K / αᵀGα): a warm start from a
    # step whose gradients had other norms can be off by orders of magnitude, and the damped phase
    # lowers f by a bounded amount per iteration, so it would not get back within max_iter.
    quadratic = float(alpha @ g @ alpha)
    if not (math.isfinite(quadratic) and quadratic > 0.0):  # a start beyond float64's range
        alpha = g.diagonal().rsqrt()
        quadratic = float(alpha @ g @ alpha)
    if not (math.isfinite(quadratic) and quadratic > 0.0):
        # G is indefinite beyond the ridge along the start (float32 rows of opposite gradients:
        # an eigenvalue of -5e-8 relative): f has no minimum, Gα = 1/α no solution to return.
        return torch.full_like(alpha, math.nan)
    alpha = alpha * math.sqrt(alpha.numel() / quadratic)
    for _ in range(max_iter):
        grad = g @ alpha - 1.0 / alpha
        hess = g + torch.diag(1.0 / alpha**2)
        delta = torch.linalg.solve(hess, grad)
        decrement = math.sqrt(max(float(grad @ delta), 0.0))
        alpha = alpha - (delta if decrement < 0.25 else delta / (1.0 + decrement))
        alpha = alpha.clamp_min(1e-300)
        if decrement * decrement < tol:
            break
    return alpha


def eigh_psd(gramian: Tensor) -> tuple[Tensor, Tensor, int]:
    """Eigenvalues (descending) and eigenvectors of a PSD ``G``, with its numerical rank."""
    values, vectors = torch.linalg.eigh(gramian)
    order = torch.argsort(values, descending=True)
    values, vectors = values[order], vectors[:, order]
    top = float(values[0]) if values.numel() else 0.0
    tol = max(top, 0.0) * gramian.shape[0] * torch.finfo(_F64).eps * 10
    rank = int((values > tol).sum()) if top > 0.0 else 0
    return values, vectors, rank


def random_orders(k: int, generator: torch.Generator) -> Tensor:
    """``(K, K)``: row ``i`` is the order in which task ``i`` visits the tasks (one ``randperm`` per task, in turn)."""
    return torch.stack([torch.randperm(k, generator=generator) for _ in range(k)])


def pcgrad_weights(gramian: Tensor, orders: Tensor) -> Tensor:
    r"""PCGrad's ``w`` (the update is ``Jᵀw``) from the Gramian and each task's order of the others.

    Algorithm 1 of Yu et al. in Gramian form: ``g_i' = Σ_k A_ik g_k`` with ``A_i = e_i``; for each
    ``j`` in row ``i`` of ``orders`` (``j ≠ i``, ``g_j ≠ 0``): if ``g_i'·g_j = (A_i G)_j < 0``, then
    ``A_ij −= (A_i G)_j / G_jj``; ``w = Σ_i A_i``. The K tasks are independent of each other, so
    step ``t`` projects every ``g_i'`` onto its own ``t``-th task at once: K vectorised steps
    instead of K² scalar ones.
    """
    g = gramian.detach().to(_F64).numpy()
    k = g.shape[0]
    diag = np.diagonal(g)
    usable = diag > 0.0  # a zero gradient is never projected onto; a small one is (projection is scale-free)
    a = np.eye(k)
    tasks = np.arange(k)
    with np.errstate(divide="ignore", invalid="ignore"):  # inner / 0 where nothing is projected
        for j in orders.detach().cpu().numpy().T:  # column t: each row's t-th task (NumPy: _active_set_on_host)
            inner = (a * g[j]).sum(axis=1)  # g_i'·g_j = (A_i G)_j, G symmetric
            project = (j != tasks) & usable[j] & (inner < 0.0)
            a[tasks, j] -= np.where(project, inner / diag[j], 0.0)
    return torch.from_numpy(a.sum(axis=0))


def gradvac_weights(gramian: Tensor, orders: Tensor, target: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    r"""GradVac's ``w`` and the updated target similarities ``φ̂`` (K×K), vectorised like :func:`pcgrad_weights`.

    For each ``j`` in row ``i`` of ``orders`` (``j ≠ i``, ``g_j ≠ 0``, ``g_i' ≠ 0``), with
    ``φ = cos(g_i', g_j)``: if ``φ < φ̂_ij``, ``A_ij += ‖g_i'‖(φ̂√(1−φ²) − φ√(1−φ̂²)) / (‖g_j‖√(1−φ̂²))``;
    then ``φ̂_ij ← (1−β)φ̂_ij + βφ``. ``target`` is read, not written (the new one is returned).
    """
    g = gramian.detach().to(_F64).numpy()
    k = g.shape[0]
    diag = np.diagonal(g).clip(min=0.0)
    norms = np.sqrt(diag)
    phi_target = target.detach().to(_F64).numpy()
    new_target = phi_target.copy()
    a = np.eye(k)
    tasks = np.arange(k)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 where a pair is left alone
        for j in orders.detach().cpu().numpy().T:  # NumPy: see _active_set_on_host
            square = ((a @ g) * a).sum(axis=1)  # ‖g_i'‖²
            # Zero gradients are left alone; small ones are not (the rule depends on angles only).
            active = (j != tasks) & (diag[j] > 0.0) & (square > 0.0)
            norm = np.sqrt(square.clip(min=0.0))
            phi = ((a * g[j]).sum(axis=1) / (norm * norms[j])).clip(-1.0, 1.0)
            phi_hat = phi_target[tasks, j]
            root_hat = np.sqrt((1.0 - phi_hat**2).clip(min=1e-12))
            root = np.sqrt((1.0 - phi**2).clip(min=0.0))
            step = norm * (phi_hat * root - phi * root_hat) / (norms[j] * root_hat)
            a[tasks, j] += np.where(active & (phi < phi_hat), step, 0.0)
            new_target[tasks, j] = np.where(active, (1.0 - beta) * phi_hat + beta * phi, new_target[tasks, j])
    return torch.from_numpy(a.sum(axis=0)), torch.from_numpy(new_target).to(target.dtype)
