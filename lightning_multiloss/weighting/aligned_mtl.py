"""Aligned-MTL: align the principal components of the task gradients (Senushkin et al. 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_multiloss.weighting._gramian import GramianWeighting
from lightning_multiloss.weighting._registry import register
from lightning_multiloss.weighting._solvers import eigh_psd, uniform


@register("aligned_mtl")
class AlignedMTL(GramianWeighting):
    r"""Aligned-MTL, from *Independent Component Alignment for Multi-Task Learning*
    (Senushkin et al., CVPR 2023), Algorithm 1 (the ``"min"`` scale of the paper's code).

    The gradient system is replaced by a stable one with equal singular values (condition
    number 1), scaled by the smallest singular value:

    .. math:: G = V \Lambda V^\top, \qquad
              B = \sqrt{\lambda_{\min}}\; V \Lambda^{-1/2} V^\top, \qquad w = B\,\tfrac{1}{K}\mathbf 1

    Eigenvalues up to ``10·K·ε·λ_max`` (ε of float64, as TorchJD) are dropped (V and Λ keep the
    non-zero part, and :math:`\lambda_{\min}` is the smallest kept one); the routes' float32
    Gramians have had those below ``K·ε·λ_max`` with float32's ε set to zero already
    (:func:`~lightning_multiloss.weighting._gramian.psd_up_to_rounding`), about the paper code's cut. An
    all-zero Gramian gives uniform weights.

    Versus the peers: TorchJD exactly (:math:`B\mathbf 1/K`); the paper's code and LibMTL sum the
    balanced matrix (:math:`B\mathbf 1`), so their weights are K times these (LibMTL also drops
    eigenvalues with float32's eps).

    Args:
        route: where the task gradients are taken.
        ddp: ``"exact"`` or ``"local"`` Gramian under DDP.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import AlignedMTL
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
        >>> w = AlignedMTL().weights_from_gramian(J @ J.T, torch.ones(2))
        >>> w @ J
        tensor([0.2133, 0.9673, 0.9673])
    """

    def compute_weights(self, g: Tensor, losses: Tensor) -> Tensor:
        k = g.shape[0]
        values, vectors, rank = eigh_psd(g)
        if rank == 0:
            return uniform(k)
        lam, v = values[:rank], vectors[:, :rank]
        balance = lam[-1].sqrt() * v @ torch.diag(lam.rsqrt()) @ v.T
        return balance @ uniform(k)
