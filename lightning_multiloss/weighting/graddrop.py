"""GradDrop: sign-consistent gradient dropout on the shared representation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from lightning_multiloss._dist import all_reduce_sum
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.gradients import DDPMode, representation_gradients, world_size
from lightning_multiloss.weighting._base import GradientWeighting, WeightedLoss
from lightning_multiloss.weighting._common import check_seed, seeded_generator
from lightning_multiloss.weighting._registry import register


def graddrop_gradient(task_grads: Tensor, uniform: Tensor, batch_sums: Tensor | None = None) -> Tensor:
    r"""The GradDrop gradient on the representation from the per-task gradients.

    Args:
        task_grads: ``(K, B, *F)``: each task's gradient on the representation.
        uniform: ``F``-shaped draws of :math:`U(0, 1)`.
        batch_sums: ``(K, *F)``: the batch-summed gradients :math:`G_i` that decide the signs
            (default: ``task_grads.sum(1)``; under DDP, their sum over processes).

    Returns:
        ``(B, *F)``: :math:`\sum_i M_i \circ \partial L_i / \partial z`.

    Example:
        >>> import torch
        >>> g = torch.tensor([[[1.0, 2.0]], [[3.0, -2.0]]])  # K=2, B=1, F=2
        >>> graddrop_gradient(g, torch.tensor([0.3, 0.7]))  # P = [1, 0.5]
        tensor([[ 4., -2.]])
    """
    sums = task_grads.sum(1) if batch_sums is None else batch_sums
    total = sums.abs().sum(0)
    purity = 0.5 * (1.0 + sums.sum(0) / torch.where(total > 0, total, torch.ones_like(total)))
    keep = ((purity > uniform) & (sums > 0)) | ((purity < uniform) & (sums < 0)) | (sums == 0)
    return (task_grads * keep.unsqueeze(1).to(task_grads.dtype)).sum(0)


@register("graddrop")
class GradDrop(GradientWeighting):
    r"""GradDrop (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient
    Sign Dropout", NeurIPS 2020).

    Coordinate-wise, so not a weighting of the losses: on the shared representation :math:`z`
    (marked in ``forward`` with ``z = self.shared_representation(z)``, batch first), with
    :math:`G_i = \sum_{s} \partial L_i/\partial z_s` the batch-summed gradient of task :math:`i`,

    .. math::
        P = \tfrac12\Big(1 + \frac{\sum_i G_i}{\sum_i |G_i|}\Big), \qquad U \sim \mathcal U(0, 1),

        M_i = [P > U]\,[G_i > 0] + [P < U]\,[G_i < 0] + [G_i = 0], \qquad
        \tilde g = \sum_i M_i \circ \frac{\partial L_i}{\partial z}

    per coordinate of :math:`z` (the masks are shared by the samples of the batch). The trunk
    receives :math:`J_z^\top \tilde g`, each head its own task's gradient. This is done inside
    Lightning's single backward by returning

    .. math:: L = \sum_i L_i + \langle z, \mathrm{sg}(\tilde g - \textstyle\sum_i \partial L_i/\partial z)\rangle
                  - \langle \mathrm{sg}(z), \mathrm{sg}(\tilde g - \textstyle\sum_i \partial L_i/\partial z)\rangle

    whose value is :math:`\sum_i L_i` and whose gradient at :math:`z` is :math:`\tilde g`. The
    reported weights are 1. Where no task gradients conflict (same sign on every coordinate),
    :math:`\tilde g = \sum_i \partial L_i/\partial z` and GradDrop is the plain sum.

    :math:`U` comes from a generator seeded with ``(seed, number of previous draws)``: the same
    on every DDP process, restored from checkpoints. With ``ddp="exact"`` the :math:`G_i` are
    summed over the processes (one K×|F| all-reduce), so N processes × batch B make the same update
    as one process × batch N·B.

    Versus the peers: TorchJD's ``GradDrop`` (leak 0) for one sample; LibMTL and the authors' code
    multiply each sample's gradient by the sign of the representation before the batch sum and we do
    not (the same after a ReLU); a coordinate whose sum is exactly 0 keeps its gradient.

    Args:
        seed: the seed of the uniform draws.
        ddp: ``"exact"`` (signs from the global batch) or ``"local"`` (from each process's batch).

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import GradDrop
        >>> w = GradDrop(seed=0)
        >>> w.bind(["a", "b"])
        >>> z = torch.tensor([[1.0, -1.0]], requires_grad=True)
        >>> losses = torch.stack([(z * torch.tensor([1.0, 2.0])).sum(), (z * torch.tensor([3.0, 4.0])).sum()])
        >>> result = w(losses, representation=z)
        >>> result.weights, result.loss.item()
        (tensor([1., 1.]), -2.0)
        >>> torch.autograd.grad(result.loss, z)[0]  # no conflict: the plain sum of the gradients
        tensor([[4., 6.]])
    """

    min_tasks: ClassVar[int] = 2

    def __init__(self, seed: int = 0, ddp: DDPMode = "exact") -> None:
        super().__init__(route="representation", ddp=ddp)
        self.seed = check_seed(self.name, seed)
        self._draws = 0  # the host's copy of the buffer `draws`: read every step without a wait
        self.draws: Tensor

    def build(self, num_tasks: int) -> None:
        # Persistent: a resumed run continues the same sequence of draws.
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))

    def uniform(self, shape: Sequence[int], draw: int) -> Tensor:
        """The ``U(0, 1)`` draws of step ``draw`` (on the CPU, identical on every process and device,
        and at every precision: in float32 whatever torch's default dtype, which ``precision="64-true"``
        sets to float64 in the training step and which would draw another sequence)."""
        return torch.rand(tuple(shape), generator=seeded_generator(self.seed, draw), dtype=torch.float32)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._draws = int(self.draws)

    def forward(
        self,
        losses: Tensor,
        *,
        representation: Tensor | None = None,
        parameters: Sequence[Tensor] | None = None,
    ) -> WeightedLoss:
        ones = torch.ones_like(losses.detach())
        if not self.training:
            return WeightedLoss(losses.sum(), ones)
        if representation is None:
            raise MultiLossError(
                "weighting 'graddrop' works on the shared representation: mark it in forward with "
                "`z = self.shared_representation(z)` and use it through MultiTaskMixin's training_step"
            )
        if representation.ndim < 1:
            raise MultiLossError("weighting 'graddrop': the shared representation must have a batch dimension")
        grads = representation_gradients(losses, representation, "graddrop")
        grads = grads.to(torch.promote_types(grads.dtype, torch.float32))  # float32 or wider (a float64 model keeps it)
        sums = grads.sum(1)
        if self.ddp == "exact" and world_size() > 1:
            sums = all_reduce_sum(sums)
        uniform = self.uniform(representation.shape[1:], self._draws).to(representation.device)
        dropped = graddrop_gradient(grads, uniform, sums)
        correction = (dropped - grads.sum(0)).to(representation.dtype)
        self._draws += 1
        self.draws.fill_(self._draws)
        extra = (representation * correction).sum() - (representation.detach() * correction).sum()
        return WeightedLoss(losses.sum() + extra.to(losses.dtype), ones)
