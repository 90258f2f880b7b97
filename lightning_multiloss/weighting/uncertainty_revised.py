"""Revised uncertainty weighting with a positive regulariser (Liebel & Körner 2018)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightning_multiloss.weighting._registry import register
from lightning_multiloss.weighting.uncertainty import Uncertainty


@register("uncertainty_revised")
class UncertaintyRevised(Uncertainty):
    r"""Uncertainty weighting with the regulariser :math:`\log(1 + \sigma^2)` (Liebel & Körner 2018).

    "Auxiliary Tasks in Multi-task Learning", arXiv:1805.06334. Kendall's regulariser
    :math:`\log \sigma` is negative for :math:`\sigma < 1`, which rewards shrinking
    :math:`\sigma` without bound; :math:`\log(1+\sigma^2)` is always positive:

    .. math:: L = \sum_i \frac{L_i}{2\sigma_i^2} + \log(1 + \sigma_i^2)

    :math:`\sigma_i^2` is parametrised as :math:`e^{s_i}` (``s`` an ``nn.Parameter``, init 0,
    i.e. :math:`\sigma_i = 1` as in the authors' code), so it stays positive under any step:
    :math:`L = \sum_i \tfrac12 e^{-s_i} L_i + \mathrm{softplus}(s_i)`, computed stably.
    For a fixed loss the optimum solves :math:`2u^2 - L_i u - L_i = 0` for
    :math:`u = \sigma_i^2`, i.e. :math:`\sigma_i^2 = (L_i + \sqrt{L_i^2 + 8 L_i})/4`.
    The reported weights are :math:`1/(2\sigma_i^2)`.

    Versus the peers: LibMTL and TorchJD do not have it; the authors' formula, with σ² = e^s.

    Args:
        init: the initial :math:`s_i = \log\sigma_i^2`: one number, a list in task order or a
            dict by task name (tasks it leaves out start at 0). Default 0.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import UncertaintyRevised
        >>> w = UncertaintyRevised()
        >>> w.bind(["depth", "seg"])
        >>> out = w(torch.tensor([2.0, 4.0]))
        >>> round(out.loss.item(), 4)  # ½·2 + ½·4 + 2·log 2
        4.3863
        >>> out.weights
        tensor([0.5000, 0.5000])
    """

    needs_nonnegative_losses = True  # below 0 the objective has no minimum

    @staticmethod
    def regulariser(s: Tensor) -> Tensor:
        r""":math:`\log(1 + \sigma_i^2) = \mathrm{softplus}(s_i)`, stable for any :math:`s_i`."""
        return F.softplus(s)
