"""DB-MTL: balance the log-losses' gradient magnitudes (Lin et al. 2023)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from typing_extensions import Unpack

from lightning_multiloss.weighting._base import GradientOptions
from lightning_multiloss.weighting._common import as_number, check_positive, require
from lightning_multiloss.weighting._gramian import GramianWeighting
from lightning_multiloss.weighting._registry import register

_EPS = 1e-8


@register("db_mtl")
class DBMTL(GramianWeighting):
    r"""Dual-balancing multi-task learning (DB-MTL), from *Dual-Balancing for Multi-Task Learning*
    (Lin et al., 2023), in Gramian form.

    The paper balances losses (it differentiates :math:`\log L_i`) and gradients:
    :math:`\hat g_i \leftarrow \beta_t \hat g_i + (1-\beta_t)\nabla\log L_i`,
    :math:`d = \sum_i (\max_j\|\hat g_j\| / \|\hat g_i\|)\,\hat g_i`, with
    :math:`\beta_t = \beta / t^{\sigma}`. An EMA of gradient *vectors* cannot be rebuilt from
    the current Gramian, so this implementation keeps the EMA of their *norms* only:

    .. math::
        \hat n_i \leftarrow \beta_t \hat n_i + (1-\beta_t)\frac{\sqrt{G_{ii}}}{L_i + \epsilon},
        \qquad
        w_i = \frac{\max_j \hat n_j / \hat n_i}{L_i + \epsilon}

    so :math:`d = J^\top w = \sum_i (\max_j \hat n_j/\hat n_i)\,\nabla \log(L_i+\epsilon)`: the
    current log-loss gradients with the paper's magnitudes, **without the EMA of the
    directions** (exact when :math:`\beta = 0`). :math:`\hat n` and the step counter are
    checkpointed buffers, updated in training mode only; :math:`\epsilon = 10^{-8}` as in the
    paper's code. A zero-gradient task gets :math:`w_i = 1/(L_i+\epsilon)`.

    **Missing labels.** A task whose loss is exactly 0 in a step (no labelled sample in the batch,
    or a perfect fit) is left out of that step: its weight is 0 (not :math:`1/\epsilon`, which the
    evaluation's weighted total would take up) and its :math:`\hat n_i` stays as it was. Losses
    must not be negative (the mixin refuses them; here they are taken as 0).

    Versus the peers: LibMTL's update when β = 0; with the EMA, LibMTL averages the gradient vectors
    from zero, so its first step is (1 − β) = 0.1 times ours, and later steps differ by the
    directions' average (ours is of the norms only); TorchJD does not have it.

    Args:
        beta: EMA factor :math:`\beta \in [0, 1)` (0.9, LibMTL's default).
        beta_sigma: decay exponent :math:`\sigma \ge 0` of :math:`\beta_t` (0, LibMTL's default).
        route: where the task gradients are taken.
        ddp: ``"exact"`` or ``"local"`` Gramian under DDP.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import DBMTL
        >>> w = DBMTL()
        >>> w.bind(["a", "b"])
        >>> G = torch.tensor([[4.0, 0.0], [0.0, 1.0]])  # ‖∇log L‖ = 2/2 = 1 and 1/0.25 = 4
        >>> w.weights_from_gramian(G, torch.tensor([2.0, 0.25])).round(decimals=4)  # (4/1)/2, (4/4)/0.25
        tensor([2., 4.])
    """

    needs_nonnegative_losses = True  # a negative one has no log
    host_state = ("num_steps", "norm_ema")

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0, **options: Unpack[GradientOptions]) -> None:
        super().__init__(**options)
        beta = as_number(self.name, "beta", beta)
        require(self.name, math.isfinite(beta) and 0.0 <= beta < 1.0, "beta must be in [0, 1)", beta)
        self.beta = beta
        self.beta_sigma = check_positive(self.name, "beta_sigma", beta_sigma, allow_zero=True)
        self.num_steps = torch.zeros((), dtype=torch.long, device="cpu")

    def build(self, num_tasks: int) -> None:
        self.norm_ema = torch.zeros(num_tasks, dtype=torch.float64, device="cpu")

    @property
    def single_task_weight(self) -> str:
        return "1/L (the gradient of log L)"

    def compute_weights(self, g: Tensor, values: Tensor) -> Tensor:
        present = values > 0.0  # a loss of exactly 0 is left out of the step (see the docs)
        shifted = values.clamp_min(0.0) + _EPS
        norms = g.diagonal().clamp_min(0.0).sqrt() / shifted
        step = int(self.num_steps) + 1
        if self.num_tasks:
            beta = self.beta / step**self.beta_sigma
            ema = torch.where(present, norms + beta * (self.norm_ema - norms), self.norm_ema)
        else:
            ema = norms
        if self.training and self.num_tasks:
            self.norm_ema.copy_(ema)
            self.num_steps += 1
        top = float(ema.max())
        usable = ema > 1e-12 * top
        balance = torch.where(usable, top / torch.where(usable, ema, torch.ones_like(ema)), torch.ones_like(ema))
        return torch.where(present, balance / shifted, torch.zeros_like(shifted))
