"""Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla 2018), log-variance form."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_multiloss.weighting._base import WeightedLoss, Weighting
from lightning_multiloss.weighting._common import check_log_variance_init, initial_values
from lightning_multiloss.weighting._registry import register


@register("uncertainty")
class Uncertainty(Weighting):
    r"""Each task's loss scaled by a learned homoscedastic uncertainty (Kendall et al. 2018).

    "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and Semantics",
    CVPR 2018, in the log-variance form :math:`s_i = \log \sigma_i^2` the paper recommends for
    numerical stability (and uses for every task, as LibMTL does):

    .. math:: L = \sum_i \tfrac12 e^{-s_i} L_i + \tfrac12 s_i

    ``s`` is an ``nn.Parameter`` (one per task, initialised at ``init``, 0 as in the paper:
    :math:`\sigma = 1`) stepped by the model's own optimizer. For a fixed loss the optimum is
    :math:`e^{s_i} = L_i`, i.e. the weight :math:`\tfrac12 e^{-s_i} \to 1/(2 L_i)`: every task
    is brought to the same scale. The reported weights are :math:`\tfrac12 e^{-s_i}`.

    A task whose loss is 0 in a step (no labelled sample) is left out of that step, regulariser
    included: alone, the regulariser's constant gradient pulled its :math:`s_i` down every step,
    until :math:`e^{-s_i}` overflowed on a long run without labels (and :math:`\infty \cdot 0`
    reached every parameter).

    Versus the peers: LibMTL's UW exactly, except that ``s`` starts at 0 (the paper's σ = 1) where
    LibMTL starts at −0.5 (``init=-0.5`` reproduces it); TorchJD has no loss-level strategy.

    Args:
        init: the initial :math:`s_i = \log\sigma_i^2`: one number, a list in task order or a
            dict by task name (tasks it leaves out start at 0). Default 0.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import Uncertainty
        >>> w = Uncertainty()
        >>> w.bind(["depth", "seg"])
        >>> out = w(torch.tensor([2.0, 4.0]))
        >>> out.loss  # ½·2 + ½·4 + 0
        tensor(3., grad_fn=<SumBackward0>)
        >>> out.weights
        tensor([0.5000, 0.5000])
    """

    needs_nonnegative_losses = True  # below 0 the objective has no minimum
    min_tasks = 2

    def __init__(self, init: float | Sequence[float] | Mapping[str, float] = 0.0) -> None:
        super().__init__()
        self._init = check_log_variance_init(self.name, init)
        self.log_var: nn.Parameter

    def build(self, num_tasks: int) -> None:
        self.log_var = nn.Parameter(initial_values(self.name, self.task_names, self._init))

    def current_weights(self) -> Tensor:
        """``½·e^{-s}`` of the current log-variances ``s`` (the regulariser is not a weight)."""
        return 0.5 * torch.exp(-self.log_var.detach())

    def forward(self, losses: Tensor) -> WeightedLoss:
        s = self.log_var.to(losses.dtype)
        weights = 0.5 * torch.exp(-s)
        labelled = (losses > 0.0).to(losses.dtype)  # a task without labels in the batch: out of the step
        loss = (weights * losses + labelled * self.regulariser(s)).sum()
        return WeightedLoss(loss, weights.detach())

    @staticmethod
    def regulariser(s: Tensor) -> Tensor:
        r""":math:`\log\sigma_i = \tfrac12 s_i`."""
        return 0.5 * s
