"""GradVac: PCGrad towards an adaptive target similarity (Wang et al. 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from typing_extensions import Unpack

from lightning_multiloss.weighting._base import GradientOptions
from lightning_multiloss.weighting._common import as_number, require, seeded_generator
from lightning_multiloss.weighting._gramian import GramianWeighting
from lightning_multiloss.weighting._registry import register
from lightning_multiloss.weighting._solvers import gradvac_weights, random_orders


@register("gradvac")
class GradVac(GramianWeighting):
    r"""Gradient Vaccine, from *Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models* (Wang et al., ICLR 2021).

    Like PCGrad, but each pair is pulled to a target cosine similarity :math:`\hat\phi_{ij}`
    (an EMA of the observed similarities, starting at 0) instead of to orthogonality. For each
    task :math:`i` and each other task :math:`j` in a random order, with
    :math:`\phi_{ij} = \cos(g_i', g_j)`:

    .. math::
        \text{if } \phi_{ij} < \hat\phi_{ij}:\quad
        g_i' \leftarrow g_i' + \frac{\|g_i'\|\,(\hat\phi_{ij}\sqrt{1-\phi_{ij}^2}
        - \phi_{ij}\sqrt{1-\hat\phi_{ij}^2})}{\|g_j\|\sqrt{1-\hat\phi_{ij}^2}}\, g_j,
        \qquad \hat\phi_{ij} \leftarrow (1-\beta)\hat\phi_{ij} + \beta\phi_{ij}

    and the update is :math:`\sum_i g_i'`. Everything is computed from the Gramian
    (:math:`g_i' = \sum_k A_{ik} g_k`, :math:`g_i'\cdot g_j = (A_i G)_j`,
    :math:`\|g_i'\|^2 = A_i G A_i^\top`), so :math:`w = \sum_i A_i`.

    Differences from the paper: one similarity for the whole gradient (the paper also applies
    it per layer; a Gramian has no layers); :math:`\hat\phi` is updated at every step for every
    pair, as in the paper's algorithm and both peers.
    :math:`\hat\phi` (``target``, K×K) and the step counter are checkpointed buffers, updated in
    training mode only. The random orders come from ``(seed, step)``, as in :class:`PCGrad`.

    Versus the peers: TorchJD and LibMTL (``whole_model``) given the same orders and β; β defaults
    to the paper's 0.01 where both peers use 0.5; the orders are seeded by (seed, step); a zero
    gradient is skipped (its φ̂ unchanged) where the peers add ε = 1e-8 to the divisors.

    Args:
        beta: EMA rate of the target similarity, in (0, 1]; the paper uses 1e-2.
        seed: seed of the orders.
        route: where the task gradients are taken.
        ddp: ``"exact"`` or ``"local"`` Gramian under DDP.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import GradVac
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
        >>> w = GradVac()
        >>> w.bind(["a", "b"])
        >>> w.weights_from_gramian(J @ J.T, torch.ones(2)) @ J  # target 0 at the first step: PCGrad
        tensor([0.5848, 3.8012, 3.8012])
        >>> w.target  # phi_hat moved by beta = 0.01 towards cos(g_1, g_2) = -0.84
        tensor([[ 0.0000, -0.0084],
                [-0.0084,  0.0000]], dtype=torch.float64)
    """

    host_state = ("num_steps", "target")

    def __init__(self, beta: float = 0.01, seed: int = 0, **options: Unpack[GradientOptions]) -> None:
        super().__init__(**options)
        beta = as_number(self.name, "beta", beta)
        require(self.name, math.isfinite(beta) and 0.0 < beta <= 1.0, "beta must be in (0, 1]", beta)
        require(
            self.name,
            isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
            "seed must be an integer >= 0",
            seed,
        )
        self.beta = beta
        self.seed = seed
        self.num_steps = torch.zeros((), dtype=torch.long, device="cpu")

    def build(self, num_tasks: int) -> None:
        self.target = torch.zeros(num_tasks, num_tasks, dtype=torch.float64, device="cpu")

    def compute_weights(self, g: Tensor, losses: Tensor) -> Tensor:
        k = g.shape[0]
        target = self.target.clone() if self.num_tasks else torch.zeros(k, k, dtype=torch.float64)
        orders = random_orders(k, seeded_generator(self.seed, int(self.num_steps)))
        total, new_target = gradvac_weights(g, orders, target, self.beta)
        if self.training:
            self.num_steps += 1
            if self.num_tasks:
                self.target.copy_(new_target)
        return total
