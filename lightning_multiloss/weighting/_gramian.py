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
from typing import ClassVar, Literal

from torch import Tensor

from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.weighting._base import WeightedLoss, Weighting

Route = Literal["parameters", "representation"]
DDPMode = Literal["exact", "local"]


class GramianWeighting(Weighting):
    """A strategy whose weights are a function of the Gramian ``G = J Jᵀ`` and the losses.

    Args:
        route: where the per-task gradients are taken: ``"parameters"`` (the shared parameters)
            or ``"representation"`` (the shared representation the model marks in ``forward``).
        ddp: ``"exact"``: under DDP the Gramian is that of the global batch; ``"local"``: each
            process uses its own (cheaper for the parameter route; see the docs).
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

    @abstractmethod
    def weights_from_gramian(self, gramian: Tensor, losses: Tensor) -> Tensor:
        """The ``(K,)`` task weights from the ``(K, K)`` Gramian and the ``(K,)`` detached losses.

        The combined update direction is ``Jᵀw``. Called once per training step (only in
        training mode), with the same ``gramian`` and ``losses`` on every DDP process, so a
        stateful strategy stays identical across processes.
        """

    def forward(self, losses: Tensor) -> WeightedLoss:
        raise NotImplementedError("the gradient route is wired into the mixin in a later change")
