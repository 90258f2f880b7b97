"""A learnable alpha clipped to [0, 1]: the Keras recipe (and its K-task form on the simplex)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_multiloss._dist import is_rank_zero
from lightning_multiloss._numbers import real_number, whole_number
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.weighting._base import Progress, WeightedLoss, Weighting, weighted_sum
from lightning_multiloss.weighting._common import check_weight, per_task_values
from lightning_multiloss.weighting._registry import register

log = logging.getLogger(__name__)


def project_to_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of ``v`` onto ``{w : w >= 0, sum(w) = 1}`` (Duchi et al. 2008).

    Device operations only (it runs after every optimizer step). A NaN in ``v`` gives NaN weights,
    which the check of the losses then reports, instead of an error here.
    """
    # The projection of v + c is that of v: shifted so that its largest entry is 0, the cumulative
    # sum minus 1 keeps the 1 at any magnitude (at 3e7 in float32 it was rounded away: all weights 0).
    v = v - v.max()
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, dim=0) - 1.0
    index = torch.arange(1, v.numel() + 1, device=v.device, dtype=v.dtype)
    # The entries with u_j > css_j / j are a prefix of u (Duchi et al., Lemma 2), so the last one,
    # rho, is their count - 1: counted, not searched with nonzero (which waits for the device).
    rho = ((u - css / index > 0).sum() - 1).clamp(min=0)
    theta = css.gather(0, rho.reshape(1)) / (rho + 1).to(v.dtype)
    return torch.clamp(v - theta, min=0.0)


@register("learnable")
class Learnable(Weighting):
    r"""A trainable weight, projected back to its bounds after every optimizer step.

    The Keras recipe (a trainable loss-weighting layer whose weight is clipped to [0, 1]),
    exactly, for two tasks:

    .. math:: L = \alpha L_1 + (1 - \alpha) L_2, \qquad
              \alpha \leftarrow \mathrm{clip}(\alpha - \eta\,\partial L/\partial\alpha,\ 0,\ 1)

    ``alpha`` is an ``nn.Parameter`` (initialised at ``init``, 0.5 by default) stepped by the
    model's own optimizer and clipped inside that step (:meth:`constrain`, a step post-hook the
    Callback registers), so that every later reader of the step (an EMA callback, the code after
    ``opt.step()`` under manual optimization) sees it in [0, 1]. For K > 2 tasks the
    weights ``w`` (initialised uniform) are projected onto the simplex
    :math:`\{w \ge 0, \sum_i w_i = 1\}` instead.

    .. warning::
        This recipe does not balance the tasks. :math:`\partial L / \partial \alpha = L_1 - L_2`,
        so gradient descent moves alpha toward whichever loss is smaller until it reaches a bound:
        the minimum over alpha of a convex combination is the smaller loss. Expect alpha at 0 or 1
        within a few epochs, after which one task is no longer trained. A message is logged when
        it reaches a bound. For learned balancing use ``uncertainty``-style strategies.

    Versus the peers: the Keras recipe exactly; LibMTL and TorchJD have no such strategy.

    Args:
        init: the initial alpha (two tasks, in [0, 1]) or the initial weights (K tasks, on the
            simplex). ``None``: 0.5, or uniform.
        check_every: check for a weight on a bound every this many optimizer steps (reading the
            value waits for the device, so it is not done on every step): at the first batch end
            at or past each multiple (under manual optimization with several optimizers stepped
            in a batch the steps are counted from the batch's first, one per batch).

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import Learnable
        >>> w = Learnable()
        >>> w.bind(["loc", "cls"])
        >>> w(torch.tensor([2.0, 4.0])).loss
        tensor(3., grad_fn=<AddBackward0>)
    """

    min_tasks = 2

    def __init__(self, init: float | Sequence[float] | None = None, check_every: int = 50) -> None:
        super().__init__()
        number = real_number(init)  # a NumPy scalar or a 0-d tensor is a number too
        if number is not None:
            init = number
        if isinstance(init, str | bytes | bool):
            raise MultiLossError(f"weighting 'learnable': init must be a number or a list of numbers, got {init!r}")
        if isinstance(init, int | float) and not 0.0 <= float(init) <= 1.0:
            raise MultiLossError(f"weighting 'learnable': alpha must be in [0, 1], got init={init}")
        # A whole float counts (2.0 from a config's arithmetic), as for the Callback's every_n_steps.
        every = whole_number(check_every)
        if every is None or every < 1:
            raise MultiLossError(f"weighting 'learnable': check_every must be an integer >= 1, got {check_every!r}")
        self._init = init
        self.check_every = every
        self._steps = 0
        self._steps_known = False  # whether a Progress gave the count (a resumed run's first batch need not check)
        self._check_due = False  # a multiple of check_every passed between two batches (several optimizers)
        self._warned_bound = False
        self.alpha: nn.Parameter
        self.on_bound_since: Tensor
        self.projected: Tensor  # K > 2: the weights as last projected

    def build(self, num_tasks: int) -> None:
        # The optimizer step at which the weights last came onto a bound (-1: not on one). It
        # stays on the device, updated with torch.where after each step; only the periodic check
        # reads it, so the warning can name that step without a host sync per step. Not
        # checkpointed: after a resume it restarts from the first step seen on the bound.
        self.register_buffer("on_bound_since", torch.tensor(-1, dtype=torch.long), persistent=False)
        init = self._init
        if num_tasks == 2:
            if init is None:
                init = 0.5
            if not isinstance(init, int | float):
                raise MultiLossError(f"weighting 'learnable': two tasks take one alpha in [0, 1], got init={init}")
            self.alpha = nn.Parameter(torch.tensor(float(init)))
            return
        if isinstance(init, int | float):
            raise MultiLossError(
                f"weighting 'learnable': {num_tasks} tasks take one initial weight per task (on the simplex), "
                f"got init={init}"
            )
        spec = [1.0 / num_tasks] * num_tasks if init is None else init
        values = per_task_values(self.name, self.task_names, spec, "init", 0.0)
        values = [check_weight(self.name, name, v, "init") for name, v in zip(self.task_names, values, strict=True)]
        if abs(sum(values) - 1.0) > 1e-6:
            raise MultiLossError(f"weighting 'learnable': init must sum to 1 (the simplex), got {values}")
        self.alpha = nn.Parameter(torch.tensor(values))
        # The weights as last projected (or given): constrain projects only weights that moved
        # since, so that it can run in the step's hook and again after the batch (and twice where
        # a subclass's step calls its parent's, both hooked) and project once.
        self.register_buffer("projected", self.alpha.detach().clone(), persistent=False)

    def current_weights(self) -> Tensor:
        """``[alpha, 1 - alpha]`` for two tasks, else ``alpha`` (the simplex point), after the last step."""
        alpha = self.alpha.detach()
        return torch.stack([alpha, 1.0 - alpha]) if alpha.ndim == 0 else alpha.clone()

    def forward(self, losses: Tensor) -> WeightedLoss:
        alpha = self.alpha
        if alpha.ndim == 0:
            weights = torch.stack([alpha, 1.0 - alpha])
            loss = alpha * losses[0] + (1.0 - alpha) * losses[1]
            return WeightedLoss(loss, weights.detach())
        return weighted_sum(alpha, losses)

    @property
    def follows_planned_length(self) -> bool:
        return False  # it reads the step counter only

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        loaded = state_dict.get(f"{prefix}alpha")
        alpha = getattr(self, "alpha", None)  # None before bind
        if not isinstance(loaded, Tensor) or alpha is None or alpha.is_meta or loaded.is_meta:
            return
        # Loaded weights outside the domain (another strategy's "alpha", taken by a load with
        # strict=False) are put back into it, saying so; a checkpoint's own are left bit for bit, to
        # the rounding of the coarsest of the dtypes involved: a bfloat16 run's loaded into a float32
        # module (Lightning converts it after loading), float32 weights cast to float64 ("64-true").
        weights = alpha.detach().double()
        dtypes = [alpha.dtype, torch.float32] + ([loaded.dtype] if loaded.is_floating_point() else [])
        tolerance = 4 * weights.numel() * max(torch.finfo(dtype).eps for dtype in dtypes)
        outside = bool((weights < 0).any() or (weights > 1).any())
        if weights.ndim > 0:
            outside = outside or abs(float(weights.sum()) - 1.0) > tolerance
        if outside:
            log.warning(
                "weighting 'learnable': the loaded weights %s are not %s: put back there",
                [round(v, 6) for v in weights.reshape(-1).tolist()],
                "in [0, 1]" if weights.ndim == 0 else "on the simplex",
            )
            with torch.no_grad():
                alpha.copy_(alpha.clamp(0.0, 1.0) if alpha.ndim == 0 else project_to_simplex(alpha))
        if alpha.ndim > 0:
            # As loaded (or put back): not projected again. A new tensor, in alpha's dtype and on its
            # device, which a load with assign=True may have changed.
            self.projected = alpha.detach().clone()

    def set_unsaved_state(self) -> None:
        # Not on a bound since any step counted here (a load into a model made on the meta device
        # left it uninitialised: the bound warning named a step of that memory).
        if not self.on_bound_since.is_meta:
            self.on_bound_since.fill_(-1)
        super().set_unsaved_state()

    def set_progress(self, progress: Progress) -> None:
        # The optimizer steps done so far (restored by Lightning on resume), so that the bound
        # checks keep their cadence and the warning its count across a resumed run. Several
        # optimizers stepped in one batch (manual optimization) move it on by more than this
        # strategy counted: a multiple of check_every passed in that gap is checked at this batch.
        if self._steps_known and progress.step // self.check_every > self._steps // self.check_every:
            self._check_due = True
        self._steps, self._steps_known = progress.step, True

    @torch.no_grad()
    def constrain(self) -> None:
        """Clip alpha to [0, 1] (two tasks) or project the weights onto the simplex (K tasks), where
        they moved since their last projection (on the device, no wait): idempotent, so the
        projection of a step happens once (in bfloat16 that of a point on the simplex is another)."""
        alpha = self.alpha
        if alpha.ndim == 0:
            alpha.clamp_(0.0, 1.0)
            return
        moved = (alpha != self.projected).any()
        alpha.copy_(torch.where(moved, project_to_simplex(alpha), alpha))
        self.projected.copy_(alpha)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        before, self._steps = self._steps, self._steps + 1
        weights = self.alpha.detach()
        on_bound = ((weights == 0.0) | (weights == 1.0)).any()
        since = self.on_bound_since
        since.copy_(torch.where(on_bound, torch.where(since < 0, self._steps, since), -1))
        if self._check_due or self._steps // self.check_every > before // self.check_every:
            self._check_due = False
            self._check_bound()

    def end_training_epoch(self) -> None:
        super().end_training_epoch()
        # Also at each epoch's end (one read an epoch): a run shorter than check_every steps, or one
        # that ends between two checks, would otherwise never say that alpha sits on a bound.
        self._check_bound()

    def _check_bound(self) -> None:
        since = int(self.on_bound_since)  # read from the device here only: once per check_every steps
        if since >= 0 and not self._warned_bound and is_rank_zero():
            log.warning(
                "learnable alpha reached a bound (%s) at optimizer step %d (seen at the check of step %d): the "
                "minimum of a convex combination of losses is the smaller loss, so this recipe drives alpha to "
                "0 or 1 and stops training one task. Consider 'uncertainty' or a fixed or scheduled weighting.",
                [round(v, 6) for v in self.alpha.detach().reshape(-1).tolist()],
                since,
                self._steps,
            )
        self._warned_bound = since >= 0
