"""CAGrad: the best worst-case improvement near the average gradient (Liu et al. 2021)."""

from __future__ import annotations

import math

from torch import Tensor
from typing_extensions import Unpack

from lightning_multiloss.weighting._base import GradientOptions
from lightning_multiloss.weighting._common import check_positive, require
from lightning_multiloss.weighting._gramian import GramianWeighting
from lightning_multiloss.weighting._registry import register
from lightning_multiloss.weighting._solvers import simplex_min_linear_plus_norm, uniform

STATIONARY = 1e-4
"""``‖Jᵀw*‖`` below this times ``Σᵢ w*ᵢ‖gᵢ‖`` (the size of the gradients that cancel in it) counts
as 0: a Pareto-stationary point."""


@register("cagrad")
class CAGrad(GramianWeighting):
    r"""Conflict-averse gradient descent, from *Conflict-Averse Gradient Descent for Multi-task
    Learning* (Liu et al., NeurIPS 2021), Algorithm 1.

    With :math:`g_0 = J^\top \mathbf 1 / K` the average gradient
    (:math:`\|g_0\|^2 = \operatorname{mean}(G)`) and :math:`\rho = c\|g_0\|`:

    .. math::
        w^* = \operatorname*{argmin}_{w \in \Delta} w^\top G \tfrac{\mathbf 1}{K} + \rho \sqrt{w^\top G w},
        \qquad
        w = \Big(\tfrac{1}{K}\mathbf 1 + \frac{\rho}{\sqrt{w^{*\top} G w^*}}\, w^*\Big) / s

    i.e. :math:`d = g_0 + \rho\, J^\top w^* / \|J^\top w^*\|`. The inner problem is solved
    exactly instead of by the paper's SLSQP: with :math:`t = \|J^\top w\|` fixed it is a simplex
    QP (exact active set), and :math:`t^* = \|J^\top w(t^*)\|` is a closed-form root on the
    optimal support (bisection on :math:`t` as a fallback); a few milliseconds for small K.
    ``rescale`` is the paper code's: ``0``: :math:`s = 1`; ``1`` (its default):
    :math:`s = 1 + c^2`; ``2``: :math:`s = 1 + c`. If :math:`J^\top w^* = 0` (a Pareto-stationary
    point: in practice :math:`\|J^\top w^*\| \le 10^{-4} \sum_i w^*_i \|g_i\|`, the rounding of a
    float32 Gramian) or :math:`g_0 = 0`, the update is :math:`g_0 / s`.

    Versus the peers: the inner problem is solved exactly, where LibMTL's SLSQP (ftol 1e-6) is about
    1e-4 off and TorchJD's Clarabel about 1e-5 (equal at tight tolerances); TorchJD has no rescale
    (it is ``rescale=0``) and returns 0 at a Pareto-stationary point, where this and LibMTL return
    :math:`g_0/s`.

    Args:
        c: radius of the ball around :math:`g_0`, relative to :math:`\|g_0\|`, ``>= 0``
            (0.4 in the paper's NYU-v2 and Cityscapes runs; ``c = 0`` is the average gradient).
        rescale: 0, 1 or 2, as above.
        route: where the task gradients are taken.
        ddp: ``"exact"`` or ``"local"`` Gramian under DDP.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import CAGrad
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
        >>> w = CAGrad(c=0.5, rescale=0).weights_from_gramian(J @ J.T, torch.ones(2))
        >>> w @ J
        tensor([0.1835, 1.2041, 1.2041])
    """

    def __init__(self, c: float = 0.4, rescale: int = 1, **options: Unpack[GradientOptions]) -> None:
        super().__init__(**options)
        self.c = check_positive(self.name, "c", c, allow_zero=True)
        require(
            self.name,
            isinstance(rescale, int) and not isinstance(rescale, bool) and rescale in (0, 1, 2),
            "rescale must be 0, 1 or 2",
            rescale,
        )
        self.rescale = int(rescale)
        # The last inner solution, a warm start for the next step's QPs: speed only, not state
        # (the minimiser is unique, so a resumed run without it gets the same weights to rounding).
        self._previous_inner: Tensor | None = None

    @property
    def single_task_weight(self) -> str:
        return f"{(1.0 + self.c) / self._divisor:.4g} (1 + c over the rescale divisor)"

    @property
    def _divisor(self) -> float:
        return (1.0, 1.0 + self.c**2, 1.0 + self.c)[self.rescale]

    def solve_inner(self, gramian: Tensor) -> Tensor:
        """:math:`w^*`, the solution of the inner problem, for a float64 Gramian."""
        k = gramian.shape[0]
        rho = self.c * math.sqrt(max(float(gramian.mean()), 0.0))
        inner = simplex_min_linear_plus_norm(gramian, gramian.sum(dim=1) / k, rho, start=self._previous_inner)
        self._previous_inner = inner
        return inner

    def compute_weights(self, g: Tensor, losses: Tensor) -> Tensor:
        k = g.shape[0]
        w = uniform(k)
        g0_norm = math.sqrt(max(float(g.mean()), 0.0))
        top = math.sqrt(max(float(g.diagonal().max()), 0.0))
        if g0_norm > 1e-12 * top and self.c > 0.0:
            inner = self.solve_inner(g)
            gw_norm = math.sqrt(max(float(inner @ g @ inner), 0.0))
            # Below this, Jᵀw* is within the rounding of a float32 Gramian (relative 1e-7 on the
            # terms of ‖Jᵀw‖², so about 3e-4 on ‖Jᵀw‖ against the terms that cancel): its direction
            # is noise, the point is stationary. Relative to those terms, not to the largest
            # gradient: a small gradient that conflicts with nothing is not a cancellation.
            cancelled = float(inner @ g.diagonal().clamp_min(0.0).sqrt())
            if gw_norm > STATIONARY * cancelled:
                w = w + (self.c * g0_norm / gw_norm) * inner
        return w / self._divisor
