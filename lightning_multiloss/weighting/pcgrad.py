"""PCGrad: project each task gradient off the gradients it conflicts with (Yu et al. 2020)."""

from __future__ import annotations

import torch
from torch import Tensor
from typing_extensions import Unpack

from lightning_multiloss.weighting._base import GradientOptions
from lightning_multiloss.weighting._common import require, seeded_generator
from lightning_multiloss.weighting._gramian import GramianWeighting
from lightning_multiloss.weighting._registry import register
from lightning_multiloss.weighting._solvers import pcgrad_weights, random_orders


@register("pcgrad")
class PCGrad(GramianWeighting):
    r"""Projecting conflicting gradients, from *Gradient Surgery for Multi-Task Learning*
    (Yu et al., NeurIPS 2020), Algorithm 1.

    For each task :math:`i`, in a random order of the other tasks :math:`j`:
    if :math:`g_i' \cdot g_j < 0` then :math:`g_i' \leftarrow g_i' - \frac{g_i' \cdot g_j}{\|g_j\|^2} g_j`;
    the update is :math:`\sum_i g_i'` (the sum, as in the paper and TorchJD). In Gramian form
    :math:`g_i' = \sum_k A_{ik} g_k` with :math:`A_i` starting at :math:`e_i`; the projection
    reads :math:`A_{ij} \mathrel{-}= (A_i G)_j / G_{jj}` and :math:`w = \sum_i A_i`. A task with a
    zero gradient is never projected onto.

    The random orders come from a generator seeded by ``(seed, step)`` (``step`` counts the
    training calls, a checkpointed buffer): identical on every process and after a resume.
    For two tasks the order does not matter.

    Versus the peers: TorchJD and LibMTL given the same orders; the orders come from (seed, step),
    not the global random state; LibMTL also visits j = i (projecting :math:`g_i'` off :math:`g_i`
    if they conflict), the paper and TorchJD do not.

    Args:
        seed: seed of the projection orders.
        route: where the task gradients are taken.
        ddp: ``"exact"`` or ``"local"`` Gramian under DDP.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import PCGrad
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
        >>> w = PCGrad().weights_from_gramian(J @ J.T, torch.ones(2))
        >>> w @ J
        tensor([0.5848, 3.8012, 3.8012])
    """

    host_state = ("num_steps",)

    def __init__(self, seed: int = 0, **options: Unpack[GradientOptions]) -> None:
        super().__init__(**options)
        require(
            self.name,
            isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
            "seed must be an integer >= 0",
            seed,
        )
        self.seed = seed
        self.num_steps = torch.zeros((), dtype=torch.long, device="cpu")

    def compute_weights(self, g: Tensor, losses: Tensor) -> Tensor:
        k = g.shape[0]
        orders = random_orders(k, seeded_generator(self.seed, int(self.num_steps)))
        total = pcgrad_weights(g, orders)
        if self.training:
            self.num_steps += 1
        return total
