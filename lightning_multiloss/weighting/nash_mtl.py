"""Nash-MTL: the Nash bargaining solution between the tasks (Navon et al. 2022)."""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
from torch import Tensor
from typing_extensions import Unpack

from lightning_multiloss._dist import is_rank_zero
from lightning_multiloss.gradients import world_size
from lightning_multiloss.weighting._base import GradientOptions
from lightning_multiloss.weighting._common import check_positive, require
from lightning_multiloss.weighting._gramian import GramianWeighting
from lightning_multiloss.weighting._registry import register
from lightning_multiloss.weighting._solvers import nash_solve, zero_rows

log = logging.getLogger(__name__)

NO_SOLUTION = 1e-3
"""The largest ``|αᵢ(Ĝα)ᵢ − 1|`` of a solution: above it, the ridge, not ``Ĝ``, set ``α``. With
the ridge of 1e-10 (relative) this is an ``α`` above about 3e3 in units of the Gramian's scale: two
gradients whose cosine is within ~1e-7 of −1, the rounding of a float32 Gramian."""


@register("nash_mtl")
class NashMTL(GramianWeighting):
    r"""Nash-MTL, from *Multi-Task Learning as a Bargaining Game* (Navon et al., ICML 2022).

    The update :math:`d = J^\top \alpha` is the Nash bargaining solution, characterised by

    .. math:: \hat G \alpha = 1 / \alpha \ \ \text{(element-wise)}, \qquad \alpha > 0,
              \qquad \hat G = G / \|G\|_F \ \text{(``normalize=True``)} \ \text{or}\ G

    The paper solves it by a sequence of convex programs (CCP, with cvxpy); here it is solved
    exactly as the minimiser of the self-concordant :math:`\tfrac12\alpha^\top\hat G\alpha - \sum_i \log\alpha_i`
    by damped Newton (warm-started from the previous solution, a checkpointed buffer).
    By default (``normalize=False``) :math:`\hat G = G`: these are the reference weights (the
    paper's code and LibMTL divide :math:`G` by :math:`\|G\|_F` for their solver but put
    :math:`\|G\|_F` back into its constraint, so their weights are those of :math:`G`), with
    :math:`\|d\|^2 = K`. ``normalize=True`` is a named variant that solves for
    :math:`G/\|G\|_F` instead: the same direction, weights :math:`\sqrt{\|G\|_F}` times the
    reference ones (:math:`\|d\|^2 = K\|G\|_F`). ``max_norm > 0``
    rescales :math:`\alpha` so that :math:`\|J^\top\alpha\| \le` ``max_norm`` (TorchJD's
    ``max_norm``; the paper's code clips the shared parameters' gradient to 1 after the
    backward, for which ``Trainer(gradient_clip_val=...)`` is the Lightning equivalent).

    Versus the peers (paper code, LibMTL, TorchJD): the same weights; where their CCP stops at
    its tolerance, or keeps its previous :math:`\alpha` (1 at the first step) because its first
    convex program is unbounded, this is the exact solution.

    A task whose gradient is zero has no finite Nash weight (:math:`0 = 1/\alpha_i`); it is left
    out of the bargain and gets the mean weight of the others (all zero: every weight is 1). A
    small gradient is not a zero one: the solution is invariant to the scale of each task's
    gradient. Where no solution exists (0 in the convex cone of the gradients: two opposite
    ones, or more tasks than dimensions), the previous step's weights are kept (1 at the first
    step), as the paper's code does when its solver fails, with a warning (once).
    ``update_weights_every = n`` reuses the weights for ``n`` training steps, as in the paper
    (the Gramian is still computed each step; only the solve is skipped).

    Args:
        update_weights_every: solve every this many training steps (``>= 1``).
        max_norm: bound on :math:`\|J^\top\alpha\|` (``0``: none).
        normalize: solve for :math:`G/\|G\|_F` (weights :math:`\sqrt{\|G\|_F}` times the reference's).
        route: where the task gradients are taken.
        ddp: ``"exact"`` or ``"local"`` Gramian under DDP.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import NashMTL
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
        >>> w = NashMTL(max_norm=1.0)
        >>> w.bind(["a", "b"])
        >>> w.weights_from_gramian(J @ J.T, torch.ones(2)) @ J
        tensor([0.0542, 0.7061, 0.7061])
    """

    host_state = ("num_steps", "alpha")

    @property
    def single_task_weight(self) -> str:
        return "1/‖g‖ (the one gradient normalised)"

    def __init__(
        self,
        update_weights_every: int = 1,
        max_norm: float = 0.0,
        normalize: bool = False,
        **options: Unpack[GradientOptions],
    ) -> None:
        super().__init__(**options)
        require(
            self.name,
            isinstance(update_weights_every, int)
            and not isinstance(update_weights_every, bool)
            and update_weights_every >= 1,
            "update_weights_every must be an integer >= 1",
            update_weights_every,
        )
        self.update_weights_every = update_weights_every
        self.max_norm = check_positive(self.name, "max_norm", max_norm, allow_zero=True)
        require(self.name, isinstance(normalize, bool), "normalize must be true or false", normalize)
        self.normalize = normalize
        self.num_steps = torch.zeros((), dtype=torch.long, device="cpu")
        self._warned_no_solution = False

    def build(self, num_tasks: int) -> None:
        # The last solution (before max_norm), in units of the scaled Gramian: reused and warm start.
        self.alpha = torch.ones(num_tasks, dtype=torch.float64, device="cpu")

    def solve(self, gramian: Tensor, start: Tensor | None = None) -> Tensor | None:
        """The positive solution of ``Ĝα = 1/α`` for a float64 Gramian (zero-gradient tasks: mean
        of the others), or ``None`` where there is none."""
        k = gramian.shape[0]
        zero = zero_rows(gramian)
        if bool(zero.all()):
            return torch.ones(k, dtype=torch.float64)
        keep = ~zero
        sub = gramian[keep][:, keep]
        if self.normalize:
            sub = sub / torch.linalg.matrix_norm(sub)
        scale = float(sub.diagonal().mean())  # solve on sub/scale (unit mean diagonal): α = α'/√scale
        if start is not None and bool(torch.isfinite(start).all()) and bool((start > 0).all()):
            first = start[keep] * math.sqrt(scale)
        else:
            first = (sub.diagonal() / scale).rsqrt()
        solution = nash_solve(sub / scale, first)
        # The ridge keeps the solve bounded; where Ĝα = 1/α has no solution (0 in the convex cone
        # of the gradients: opposite ones, or more tasks than dimensions) it returns the ridge's
        # α instead, huge, which the residual shows.
        if not float((solution * (sub / scale @ solution) - 1.0).abs().max()) <= NO_SOLUTION:  # NaN too
            return None
        alpha = torch.empty(k, dtype=torch.float64)
        alpha[keep] = solution / math.sqrt(scale)
        alpha[zero] = alpha[keep].mean()
        return alpha

    def _warn_no_solution(self, k: int) -> None:
        # With ddp="exact" every process meets the same Gramian: rank 0 speaks for all. With "local"
        # each meets its own, so whichever process has no solution says so.
        if self._warned_no_solution or (self.ddp == "exact" and not is_rank_zero()):
            return
        self._warned_no_solution = True
        log.warning(
            "weighting 'nash_mtl'%s: the %d task gradients have no Nash bargaining solution at step %d "
            "(0 is in their convex cone, or within rounding of it: e.g. two opposite gradients, or more "
            "tasks than independent directions); the previous step's weights are kept (1 at the first "
            "step), as in the paper's code. Said once; it happens again wherever the gradients stay so.",
            "" if self.ddp == "exact" or world_size() == 1 else f" (process {dist.get_rank()})",
            k,
            int(self.num_steps),
        )

    def compute_weights(self, g: Tensor, losses: Tensor) -> Tensor:
        stored = self.alpha if self.num_tasks else None
        step = int(self.num_steps)
        if self.training and step % self.update_weights_every != 0 and stored is not None:
            alpha = stored
        else:
            solved = self.solve(g, stored if step > 0 else None)
            if solved is None:
                self._warn_no_solution(g.shape[0])
            # As the paper's code: where there is no solution, the previous one (1 at the first step).
            alpha = solved if solved is not None else stored if stored is not None and step > 0 else g.new_ones(len(g))
        if self.training:
            self.num_steps += 1
            if self.num_tasks:
                self.alpha.copy_(alpha)
        if self.max_norm > 0.0:
            norm = math.sqrt(max(float(alpha @ g @ alpha), 0.0))
            if norm > self.max_norm:
                alpha = alpha * (self.max_norm / norm)
        return alpha
