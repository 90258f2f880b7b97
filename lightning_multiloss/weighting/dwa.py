"""Dynamic Weight Average (Liu, Johns & Davison 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_multiloss.weighting._base import WeightedLoss, Weighting, weighted_sum
from lightning_multiloss.weighting._common import check_positive
from lightning_multiloss.weighting._registry import register


@register("dwa")
class DWA(Weighting):
    r"""Weights from the rate at which each task's epoch-mean loss falls (Liu et al. 2019).

    "End-to-End Multi-Task Learning with Attention" (MTAN), CVPR 2019:

    .. math:: w_i(t) = K\,\frac{\exp(r_i(t-1)/T)}{\sum_j \exp(r_j(t-1)/T)}, \qquad
              r_i(t-1) = \frac{\bar L_i(t-1)}{\bar L_i(t-2)}

    :math:`\bar L_i(t)` is task ``i``'s mean training loss over epoch ``t`` (over all DDP
    processes; the mixin accumulates it). :math:`w = 1` for the first two epochs
    (:math:`t = 0, 1`). A task whose loss fell more slowly gets more weight; the weights sum
    to ``K``. The last two epoch means and the weights are persistent buffers, so a resumed
    run continues exactly; the weights change only at an epoch's end, never in evaluation.

    If a task's mean was exactly 0 in epoch ``t-1`` or ``t-2`` (no labelled sample that epoch),
    its ratio is taken as 1 (no information): dividing by a zero mean is undefined, and a zero
    latest mean would give the ratio 0, the least weight, as if its loss had collapsed.

    Versus the peers: LibMTL's DWA exactly (w = 1 in epochs 0 and 1); a task whose epoch mean is 0
    gets the ratio 1, where LibMTL divides by 0 (or gives the ratio 0).

    Args:
        temperature: ``T`` > 0 (the paper uses 2); large values make the weights uniform.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import DWA
        >>> w = DWA()
        >>> w.bind(["seg", "depth"])
        >>> w.on_epoch_losses(torch.tensor([1.0, 1.0]))
        >>> w.on_epoch_losses(torch.tensor([0.5, 1.0]))  # seg halved, depth stalled
        >>> w.weights  # 2·softmax([0.5, 1.0] / 2)
        tensor([0.8756, 1.1244])
    """

    needs_nonnegative_losses = True  # a ratio of negative losses is no rate of decrease
    min_tasks = 2
    uses_epoch_losses = True
    PRECISE_STATE = ("last_means", "previous_means")  # the epoch means, summed in float32, kept so

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        self.temperature = check_positive("dwa", "temperature", temperature)
        self.weights: Tensor
        self.last_means: Tensor
        self.previous_means: Tensor
        self.epochs_seen: Tensor

    def build(self, num_tasks: int) -> None:
        self.register_buffer("weights", torch.ones(num_tasks))
        self.register_buffer("last_means", torch.zeros(num_tasks))  # L̄(t-1)
        self.register_buffer("previous_means", torch.zeros(num_tasks))  # L̄(t-2)
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))

    def current_weights(self) -> Tensor:
        """The weights the next step uses (the strategy's ``weights`` buffer)."""
        return self.weights.detach().clone()

    def forward(self, losses: Tensor) -> WeightedLoss:
        return weighted_sum(self.weights, losses)

    @torch.no_grad()
    def on_epoch_losses(self, epoch_losses: Tensor) -> None:
        means = epoch_losses.detach().to(self.last_means)
        self.previous_means.copy_(self.last_means)
        self.last_means.copy_(means)
        self.epochs_seen += 1
        if int(self.epochs_seen) < 2:
            return
        informed = (self.previous_means > 0) & (self.last_means > 0)
        # In float64, on the host (once an epoch; MPS has no float64): a ratio of two float32 means
        # (subnormal ones included) is exact there and cannot overflow, where float32 made
        # 1e20 / 1e-20 infinite and the softmax NaN.
        previous, last, informed = self.previous_means.cpu().double(), self.last_means.cpu().double(), informed.cpu()
        ratio = torch.where(informed, last / torch.where(informed, previous, 1.0), 1.0)
        self.weights.copy_(self.num_tasks * torch.softmax(ratio / self.temperature, dim=0))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}" + (f", {super().extra_repr()}" if self.task_names else "")
