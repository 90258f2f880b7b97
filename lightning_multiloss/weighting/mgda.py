"""MGDA: the minimum-norm point of the convex hull of the task gradients (Sener & Koltun 2018)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor
from typing_extensions import Unpack

from lightning_multiloss.weighting._base import GradientOptions
from lightning_multiloss.weighting._common import require
from lightning_multiloss.weighting._gramian import GramianWeighting
from lightning_multiloss.weighting._registry import register
from lightning_multiloss.weighting._solvers import host_array, simplex_qp, zero_rows

Normalization = Literal["none", "loss", "l2", "loss+"]
_NORMALIZATIONS = ("none", "loss", "l2", "loss+")


@register("mgda")
class MGDA(GramianWeighting):
    r"""Multiple-gradient descent (MGDA), from *Multi-Task Learning as Multi-Objective Optimization*
    (Sener & Koltun, NeurIPS 2018).

    The update is the minimum-norm element of the convex hull of the task gradients, a common
    descent direction (zero at a Pareto-stationary point):

    .. math:: w = \operatorname*{argmin}_{w \in \Delta} w^\top \tilde G w, \qquad
              \tilde G = N^{-1} G N^{-1},\quad N = \mathrm{diag}(n_1, \dots, n_K)

    solved exactly (active set on the simplex; for two tasks the closed form
    :math:`\gamma = \mathrm{clip}((\tilde g_2 - \tilde g_1)\cdot \tilde g_2 / \|\tilde g_1 - \tilde g_2\|^2, 0, 1)`,
    :math:`w = (\gamma, 1 - \gamma)`). The normalisers :math:`n_i` are those of the paper's code:
    ``"none"`` (1), ``"l2"`` (:math:`\|g_i\| = \sqrt{G_{ii}}`), ``"loss"`` (:math:`L_i`) and
    ``"loss+"`` (:math:`L_i \|g_i\|`); a non-positive normaliser is replaced by 1. The returned
    weights are :math:`w_i / n_i`, so the update :math:`J^\top (w / n)` is the min-norm point of
    the *normalised* gradients (as in LibMTL; the original code instead puts :math:`w_i` on the
    raw losses, which for ``normalization != "none"`` is not a common descent direction).

    A task whose gradient is exactly zero (no labelled sample in the batch, or a loss that does
    not reach the shared tensors) is left out of the hull, with weight 0: its zero gradient would
    otherwise be the min-norm point and stop every task for the step (unless all are zero).

    Versus the peers: exact, where LibMTL (the paper's solver, stop at 1e-5) and TorchJD
    (Frank-Wolfe, ε = 1e-3) stop early: their updates are about 1e-3 off for a few tasks, up to
    0.2 for ten tasks (equal at tight tolerances); at a vertex LibMTL's two-task rule returns
    0.999 / 0.001 where this returns 1 / 0.

    Args:
        normalization: ``"none"`` (default), ``"loss"``, ``"l2"`` or ``"loss+"``.
        route: where the task gradients are taken (``"representation"`` is MGDA-UB).
        ddp: ``"exact"`` or ``"local"`` Gramian under DDP.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import MGDA
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
        >>> w = MGDA().weights_from_gramian(J @ J.T, torch.ones(2))
        >>> w
        tensor([0.6000, 0.4000])
        >>> (w @ J).round(decimals=4) + 0.0  # rounding hides the float32 matmul error
        tensor([0., 1., 1.])
    """

    def __init__(self, normalization: Normalization = "none", **options: Unpack[GradientOptions]) -> None:
        super().__init__(**options)
        require(
            self.name,
            normalization in _NORMALIZATIONS,
            f"normalization must be one of {_NORMALIZATIONS}",
            normalization,
        )
        self.normalization: Normalization = normalization
        # The last simplex solution, a warm start for the next step's QP: speed only, not state
        # (Jᵀw is unique, so a resumed run without it gets the same update to rounding; on a
        # singular Gramian the weights that make it are not, and may be split otherwise).
        self._previous_solution: Tensor | None = None

    def normalizers(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The ``(K,)`` normalisers :math:`n_i` (float64)."""
        return torch.from_numpy(self._normalizers(host_array(gramian), host_array(losses)))

    def _normalizers(self, gramian: np.ndarray, losses: np.ndarray) -> np.ndarray:
        if self.normalization == "none":
            return np.ones_like(losses)
        norms = np.sqrt(np.diagonal(gramian).clip(min=0.0))
        n = norms if self.normalization == "l2" else losses if self.normalization == "loss" else losses * norms
        return np.where(n > 0.0, n, 1.0)

    def compute_weights(self, g: Tensor, values: Tensor) -> Tensor:
        # NumPy from here: each operation on K×K values costs torch more.
        gramian = host_array(g)
        n = self._normalizers(gramian, host_array(values))
        present = ~zero_rows(g).numpy()
        if present.any() and not present.all():
            # A zero gradient (a task without a labelled sample in the batch, or one that does not
            # reach the shared tensors) would be the min-norm point itself and stop every task.
            w = np.zeros(len(n))
            w[present] = self._min_norm_weights(gramian[np.ix_(present, present)] / np.outer(n[present], n[present]))
            return torch.from_numpy(w / n)
        return self._min_norm_weights(gramian / (n[:, None] * n[None, :])) / torch.from_numpy(n)

    def _min_norm_weights(self, gramian: np.ndarray) -> Tensor:
        """The min-norm point's weights on the simplex for a (normalised) Gramian."""
        if gramian.shape[0] == 1:
            return torch.ones(1, dtype=torch.float64)
        if gramian.shape[0] == 2:
            denominator = float(gramian[0, 0] + gramian[1, 1] - 2.0 * gramian[0, 1])
            scale = float(gramian[0, 0] + gramian[1, 1])
            if denominator <= 1e-12 * scale or scale <= 0.0:
                gamma = 0.5
            else:
                gamma = min(max(float(gramian[1, 1] - gramian[0, 1]) / denominator, 0.0), 1.0)
            w = torch.tensor([gamma, 1.0 - gamma], dtype=torch.float64)
        else:
            w = simplex_qp(torch.from_numpy(gramian), start=self._previous_solution)
            self._previous_solution = w
        return w
