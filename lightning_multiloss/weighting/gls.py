"""Geometric Loss Strategy (Chennupati et al. 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.weighting._base import WeightedLoss, Weighting
from lightning_multiloss.weighting._common import at_least_float32, linearised, process_mean
from lightning_multiloss.weighting._registry import register


@register("gls")
class GLS(Weighting):
    r"""The geometric mean of the task losses (Chennupati et al. 2019).

    "MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy for Multi-Task
    Learning", CVPR Workshops 2019:

    .. math:: L = \Big(\prod_{i=1}^K L_i\Big)^{1/K} = \exp\Big(\frac1K \sum_i \log L_i\Big),
              \qquad \frac{\partial L}{\partial L_i} = \frac{L}{K\,L_i}

    so each task's gradient is scaled by the inverse of its own loss: the method is invariant
    to the scale of each loss. It is computed in log space (no overflow or underflow of the
    product). No hyper-parameter; the losses must be non-negative (a negative one raises). The
    reported weights are the gradient coefficients :math:`L/(K L_i)`.

    Under DDP the coefficients are computed from the losses averaged over the processes (one
    all-reduce of ``K+1`` numbers per training step) and each process backpropagates
    :math:`\sum_i \frac{\partial L}{\partial L_i}\big|_{\bar L} L_i^{\text{local}}`: the update is that of
    the geometric mean of the global-batch losses, and the weights are the same on every process.

    A task whose loss is exactly 0 in a step (no labelled sample in the batch, or a perfect
    fit) is left out of that step's product: :math:`L` is the geometric mean of the other
    losses (with ``K`` their number) and its weight is 0. The product would be 0 with the
    gradient :math:`0/0` otherwise (NaN, and no training signal for any task). If every loss
    is 0, :math:`L = 0`, still in the graph.

    Versus the peers: LibMTL's loss and gradient exactly; LibMTL reports :math:`L_i/(K\prod_j L_j)`
    as the weights, we report the gradient coefficients; a zero loss is left out here.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import GLS
        >>> w = GLS()
        >>> w.bind(["seg", "depth"])
        >>> out = w(torch.tensor([2.0, 8.0]))
        >>> out.loss, out.weights  # √(2·8); 4/(2·2), 4/(2·8)
        (tensor(4.), tensor([1.0000, 0.2500]))
    """

    needs_nonnegative_losses = True  # a negative one has no log
    min_tasks = 2
    last_weights_are_state = True  # the weights of the last step's losses: not a function of the state

    def __init__(self) -> None:
        super().__init__()
        self._checked_sign = False

    def forward(self, losses: Tensor) -> WeightedLoss:
        detached = losses.detach()
        # Checked here on the first training step and in evaluation only: a check every training
        # step would make it wait for the device. Later ones are caught by the mixin's deferred
        # check (needs_nonnegative_losses), which stops training at its next logging step.
        if (not self.training or not self._checked_sign) and bool((detached < 0).any()):
            raise MultiLossError(
                f"weighting 'gls': the geometric mean needs non-negative losses, got "
                f"{dict(zip(self.task_names, detached.tolist(), strict=True))}"
            )
        self._checked_sign = self._checked_sign or self.training
        mean = process_mean(detached) if self.training else at_least_float32(detached)
        present = mean > 0
        count = present.sum().clamp(min=1)
        logs = torch.where(present, torch.log(torch.where(present, mean, 1.0)), 0.0)
        geometric = torch.where(present.any(), torch.exp(logs.sum() / count), 0.0)
        weights = torch.where(present, geometric / (count * torch.where(present, mean, 1.0)), 0.0)
        return linearised(geometric, weights, losses)
