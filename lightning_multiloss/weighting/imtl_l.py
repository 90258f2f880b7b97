"""IMTL-L: the loss-scale part of Impartial Multi-Task Learning (Liu et al. 2021)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_multiloss.weighting._base import WeightedLoss, Weighting
from lightning_multiloss.weighting._common import check_log_variance_init, initial_values
from lightning_multiloss.weighting._registry import register


@register("imtl_l")
class IMTLL(Weighting):
    r"""Learned loss scales that make every scaled loss equal 1 (IMTL-L, Liu et al. 2021).

    "Towards Impartial Multi-task Learning", ICLR 2021, the loss-balance part (IMTL-L; the
    gradient part IMTL-G is a separate strategy):

    .. math:: L = \sum_i e^{s_i} L_i - s_i

    ``s`` is an ``nn.Parameter`` (init 0) stepped by the model's optimizer. Its gradient
    :math:`e^{s_i} L_i - 1` vanishes when the scaled loss :math:`e^{s_i} L_i` is 1, so for a
    fixed loss :math:`e^{s_i} \to 1/L_i`. The reported weights are :math:`e^{s_i}`. A task whose
    loss is 0 in a step (no labelled sample) is left out of that step: the term :math:`-s_i` alone
    raised its :math:`s_i` every step, until :math:`e^{s_i}` overflowed on a long run without labels.

    Versus the peers: LibMTL's IMTL loss part exactly (the same initial 0).

    Args:
        init: the initial :math:`s_i`: one number, a list in task order or a dict by task name
            (tasks it leaves out start at 0). Default 0.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import IMTLL
        >>> w = IMTLL()
        >>> w.bind(["depth", "seg"])
        >>> w(torch.tensor([2.0, 4.0])).loss
        tensor(6., grad_fn=<SumBackward0>)
    """

    needs_nonnegative_losses = True  # below 0 the objective has no minimum
    min_tasks = 2

    def __init__(self, init: float | Sequence[float] | Mapping[str, float] = 0.0) -> None:
        super().__init__()
        self._init = check_log_variance_init("imtl_l", init)
        self.log_scale: nn.Parameter

    def build(self, num_tasks: int) -> None:
        self.log_scale = nn.Parameter(initial_values(self.name, self.task_names, self._init))

    def current_weights(self) -> Tensor:
        """``e^{s}`` of the current log-scales ``s``."""
        return torch.exp(self.log_scale.detach())

    def forward(self, losses: Tensor) -> WeightedLoss:
        s = self.log_scale.to(losses.dtype)
        weights = torch.exp(s)
        labelled = (losses > 0.0).to(losses.dtype)  # a task without labels in the batch: out of the step
        loss = (weights * losses - labelled * s).sum()
        return WeightedLoss(loss, weights.detach())
