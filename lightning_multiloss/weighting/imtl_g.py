"""IMTL-G: the update with equal projections on every unit task gradient (Liu et al. 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_multiloss.weighting._gramian import GramianWeighting
from lightning_multiloss.weighting._registry import register
from lightning_multiloss.weighting._solvers import pinv_psd, uniform


@register("imtl_g")
class IMTLG(GramianWeighting):
    r"""Impartial multi-task learning, gradient part (IMTL-G), from *Towards Impartial
    Multi-task Learning* (Liu et al., ICLR 2021).

    The update :math:`d = J^\top w` has the same projection on every unit task gradient,
    :math:`d \cdot g_i / \|g_i\| = \text{const}`, and :math:`\sum_i w_i = 1`. Since
    :math:`d \cdot g_i = (Gw)_i`, this is :math:`Gw \propto (\|g_1\|, \dots, \|g_K\|)`:

    .. math:: v = G^{+} \sqrt{\operatorname{diag}(G)}, \qquad w = v / \textstyle\sum_i v_i

    with the pseudo-inverse for a singular :math:`G` (the generalisation of Quinton & Rey 2024,
    as in TorchJD). When :math:`\sum_i v_i` vanishes (e.g. all gradients zero) the weights are
    uniform (TorchJD returns zeros, which would also stop training the task heads).

    Versus the peers: TorchJD exactly (pseudo-inverse), except uniform weights where it returns
    zeros; LibMTL's closed form inverts :math:`DU^\top` (full-rank J only) and is equal there.

    Args:
        route: where the task gradients are taken.
        ddp: ``"exact"`` or ``"local"`` Gramian under DDP.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import IMTLG
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
        >>> w = IMTLG().weights_from_gramian(J @ J.T, torch.ones(2))
        >>> w @ J
        tensor([0.0767, 1.0000, 1.0000])
    """

    def compute_weights(self, g: Tensor, losses: Tensor) -> Tensor:
        v = pinv_psd(g) @ g.diagonal().clamp_min(0.0).sqrt()
        total = float(v.sum())
        if abs(total) <= 1e-12 * float(v.abs().sum()) or not torch.isfinite(v).all():
            return uniform(g.shape[0])
        return v / total
