"""Base class of the gradient-level strategies: task weights from the Gramian of the task gradients.

Almost every gradient method (MGDA, PCGrad, GradVac, CAGrad, IMTL-G, Nash-MTL, Aligned-MTL,
UPGrad, GradNorm, ...) returns a combination ``Jᵀw`` of the per-task gradients whose coefficients
``w`` depend only on the Gramian ``G = J Jᵀ`` (K×K) and the losses. So the step computes ``G``
(on the shared parameters, or on the shared representation), ``w = f(G, losses, state)``, and
returns ``Σ wᵢ.detach()·Lᵢ`` to Lightning's normal backward: gradient accumulation, clipping,
mixed precision, checkpointing and DDP keep working.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.gradients import DDPMode, Route, gramian_and_losses
from lightning_multiloss.weighting._base import WeightedLoss, Weighting, weighted_sum

__all__ = ["DDPMode", "GramianWeighting", "Route"]


class GramianWeighting(Weighting):
    r"""A strategy whose weights are a function of the Gramian ``G = J Jᵀ`` and the losses.

    Each training step, :class:`~lightning_multiloss.MultiTaskMixin` hands the strategy the
    shared representation or the shared parameters; it computes the Gramian of the per-task
    gradients (see :mod:`lightning_multiloss.gradients`), asks the subclass for the weights and
    returns

    .. math:: L = \sum_i \mathrm{sg}(w_i)\, L_i, \qquad w = f(G, L)

    whose gradient is :math:`J^\top w`, to Lightning's own backward. Evaluation steps reuse the
    last training weights (buffer ``last_weights``) and take no gradient.

    Args:
        route: where the per-task gradients are taken: ``"parameters"`` (the shared parameters,
            K backward passes through the trunk) or ``"representation"`` (the representation the
            model marks with ``z = self.shared_representation(z)`` in ``forward``: K small
            backward passes through the heads).
        ddp: ``"exact"``: under DDP the Gramian and losses are those of the global batch, so the
            update equals the single-process one (a K×K all-reduce for the representation route,
            a K×P one for the parameter route); ``"local"``: each process uses its own batch's
            (no communication; the weights differ between processes).

    Example:
        MGDA for two tasks in closed form, on the Jacobian ``[[-4, 1, 1], [6, 1, 1]]``:

        >>> import torch
        >>> from lightning_multiloss.weighting import GramianWeighting
        >>> class MGDA2(GramianWeighting):
        ...     def weights_from_gramian(self, gramian, losses):
        ...         g11, g12, g22 = gramian[0, 0], gramian[0, 1], gramian[1, 1]
        ...         gamma = ((g22 - g12) / (g11 + g22 - 2 * g12)).clamp(0, 1)
        ...         return torch.stack([gamma, 1 - gamma])
        >>> w = MGDA2(route="parameters")
        >>> w.bind(["a", "b"])
        >>> theta = torch.zeros(3, requires_grad=True)
        >>> losses = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]) @ theta
        >>> w(losses, parameters=[theta]).weights
        tensor([0.6000, 0.4000])
    """

    needs_gradients: ClassVar[bool] = True

    def __init__(self, route: Route = "parameters", ddp: DDPMode = "exact") -> None:
        super().__init__()
        if route not in ("parameters", "representation"):
            raise MultiLossError(
                f"weighting {self.name!r}: route must be 'parameters' or 'representation', got {route!r}"
            )
        if ddp not in ("exact", "local"):
            raise MultiLossError(f"weighting {self.name!r}: ddp must be 'exact' or 'local', got {ddp!r}")
        self.route: Route = route
        self.ddp: DDPMode = ddp
        self.last_weights: Tensor

    @abstractmethod
    def weights_from_gramian(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The ``(K,)`` task weights from the ``(K, K)`` Gramian and the ``(K,)`` detached losses.

        The combined update direction is ``Jᵀw``. Called once per training step (only in
        training mode), with the same ``gramian`` and ``losses`` on every DDP process, so a
        stateful strategy stays identical across processes.
        """

    def bind(self, task_names: Sequence[str]) -> None:
        super().bind(task_names)
        if "last_weights" not in self._buffers:
            # The weights of the last training step: what evaluation steps report (in checkpoints).
            self.register_buffer("last_weights", torch.ones(self.num_tasks))

    def forward(
        self,
        losses: Tensor,
        representation: Tensor | None = None,
        parameters: Sequence[Tensor] | None = None,
    ) -> WeightedLoss:
        """``Σ wᵢ.detach()·Lᵢ`` with ``w`` from the Gramian of this step's task gradients.

        The mixin passes ``representation`` (route ``"representation"``) or ``parameters``
        (route ``"parameters"``). In evaluation mode no gradient is taken: the weights of the
        last training step are used.
        """
        if not self.training:
            return weighted_sum(self.last_weights, losses)
        if self.route == "parameters" and parameters is None:
            raise MultiLossError(
                f"weighting {self.name!r} needs the task gradients: use it through MultiTaskMixin's training_step "
                "(which passes the shared parameters), not on the losses alone"
            )
        gramian, detached = gramian_and_losses(
            losses,
            route=self.route,
            ddp=self.ddp,
            representation=representation,
            parameters=parameters,
            strategy=self.name,
        )
        weights = self.weights_from_gramian(gramian, detached)
        if not isinstance(weights, Tensor) or weights.shape != (self.num_tasks,):
            shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
            raise MultiLossError(
                f"weighting {self.name!r}: weights_from_gramian must return shape ({self.num_tasks},), got {shape}"
            )
        weights = weights.detach()
        if not bool(torch.isfinite(weights).all()):
            raise MultiLossError(
                f"weighting {self.name!r}: non-finite task weights {weights.tolist()} from the Gramian "
                f"{gramian.tolist()} (tasks {list(self.task_names)})"
            )
        self.last_weights.copy_(weights)
        return weighted_sum(weights, losses)
