"""IMTL-G: the update with equal projections on every unit task gradient (Liu et al. 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_multiloss.weighting._gramian import GramianWeighting
from lightning_multiloss.weighting._registry import register
from lightning_multiloss.weighting._solvers import eigh_psd, uniform

_ROWS_PRECISION = torch.finfo(torch.float32).eps  # the Jacobian's rows: float32 or wider


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
    uniform (TorchJD returns zeros, which would also stop training the task heads). It vanishes
    within rounding where gradients cancel (two opposite ones: the only update with equal
    projections is 0, which the uniform weights give): the rows of :math:`J` are float32 (or
    wider), so :math:`\sum_i v_i` is known to about float32's precision times
    :math:`\sqrt{K}\,\|\sqrt{\operatorname{diag}(G)}\| / \lambda_{\max}(G)`; a sum below a
    hundred times that is taken as 0 (dividing by it gave weights of ±2·10⁷).

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
        k = g.shape[0]
        values, vectors, rank = eigh_psd(g)
        if rank == 0:
            return uniform(k)
        kept = vectors[:, :rank]
        norms = g.diagonal().clamp_min(0.0).sqrt()
        v = kept @ ((kept.T @ norms) / values[:rank])  # G⁺ √diag(G)
        total = float(v.sum())
        rounding = _ROWS_PRECISION * math.sqrt(k) * float(norms.norm()) / float(values[0])
        if abs(total) <= 100.0 * rounding or not torch.isfinite(v).all():
            return uniform(k)
        return v / total
