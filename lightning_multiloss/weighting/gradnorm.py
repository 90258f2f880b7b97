"""GradNorm: balance the task gradient norms against their training rates (Chen et al. 2018)."""

from __future__ import annotations

import torch
from torch import Tensor
from typing_extensions import Unpack

from lightning_multiloss.weighting._base import GradientOptions
from lightning_multiloss.weighting._common import check_positive
from lightning_multiloss.weighting._gramian import GramianWeighting
from lightning_multiloss.weighting._registry import register


def gradnorm_loss(omega: Tensor, norms: Tensor, ratios: Tensor, alpha: float, present: Tensor) -> Tensor:
    r"""GradNorm's loss :math:`\sum_{i \in P} |w_i n_i - \mathrm{sg}(\overline{w n}\, r_i^\alpha)|`.

    ``w = K·softmax(ω)``; ``present`` (``(K,)`` booleans) is ``P``, the tasks in the step, over
    which the mean is taken too.
    """
    weights = omega.numel() * torch.softmax(omega, dim=0)
    weighted = weights * norms
    mask = present.to(weighted.dtype)
    target = ((weighted * mask).sum() / mask.sum() * ratios**alpha).detach()
    return ((weighted - target).abs() * mask).sum()


@register("gradnorm")
class GradNorm(GramianWeighting):
    r"""GradNorm, from *GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
    Multitask Networks* (Chen et al., ICML 2018).

    The weights :math:`w = K\,\mathrm{softmax}(\omega)` (sum ``K``, as LibMTL) are moved so that
    each weighted gradient norm :math:`w_i\|g_i\|` (:math:`\|g_i\| = \sqrt{G_{ii}}`) tracks the
    mean one times the task's relative inverse training rate:

    .. math::
        \mathcal L_{\mathrm{grad}}(\omega) = \sum_i \Big| w_i \|g_i\| -
        \mathrm{sg}\big(\overline{w\|g\|}\; r_i^{\alpha}\big) \Big|, \qquad
        r_i = \tilde L_i / \operatorname{mean}_j \tilde L_j, \quad \tilde L_i = L_i / L_i(0)

    and after each training step :math:`\omega \leftarrow \omega - \eta\,\nabla_\omega \mathcal L_{\mathrm{grad}}`
    (plain gradient descent, by the strategy itself: :math:`\omega` is a checkpointed buffer,
    not a parameter of the model's optimizer, and no extra backward through the network is
    needed). The step returns the weights *before* the update (as LibMTL). :math:`L_i(0)` is task
    i's loss in the first training step where it is above 0 (a buffer); losses must be >= 0. A task
    whose loss is 0 in a step (no labelled sample in the batch) is left out of that step's
    update: out of the sum and of both means.

    Versus the peers: LibMTL's update given the same :math:`L(0)`; LibMTL starts in the second epoch
    (a plain sum in the first), takes :math:`L(0)` from the first epoch's mean and steps ω with the
    model's optimizer, we start at the first step with its losses and a plain gradient step of size
    ``lr``.

    Args:
        alpha: the restoring force :math:`\alpha \ge 0` (1.5 in the paper's NYU-v2 runs).
        lr: step size :math:`\eta > 0` of :math:`\omega`.
        route: where the task gradients are taken (the paper: the last shared layer).
        ddp: ``"exact"`` or ``"local"`` Gramian under DDP.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import GradNorm
        >>> w = GradNorm()
        >>> w.bind(["a", "b"])
        >>> G = torch.tensor([[4.0, 0.0], [0.0, 1.0]])  # ‖g_1‖ = 2, ‖g_2‖ = 1
        >>> w.weights_from_gramian(G, torch.tensor([1.0, 1.0]))
        tensor([1., 1.])
        >>> w.weights_from_gramian(G, torch.tensor([1.0, 1.0]))  # task 1's gradient is larger
        tensor([0.9625, 1.0375])
    """

    needs_nonnegative_losses = True  # a ratio of negative losses is no rate of training
    host_state = ("num_steps", "omega", "initial_losses")

    def __init__(self, alpha: float = 1.5, lr: float = 0.025, **options: Unpack[GradientOptions]) -> None:
        super().__init__(**options)
        self.alpha = check_positive(self.name, "alpha", alpha, allow_zero=True)
        self.lr = check_positive(self.name, "lr", lr)
        self.num_steps = torch.zeros((), dtype=torch.long, device="cpu")

    def build(self, num_tasks: int) -> None:
        self.omega = torch.zeros(num_tasks, dtype=torch.float64, device="cpu")
        self.initial_losses = torch.zeros(num_tasks, dtype=torch.float64, device="cpu")  # 0: no loss above 0 yet

    def compute_weights(self, g: Tensor, values: Tensor) -> Tensor:
        k = g.shape[0]
        omega = self.omega if self.num_tasks else torch.zeros(k)
        weights = k * torch.softmax(omega.to(torch.float64), dim=0)
        if self.training and self.num_tasks:
            present = values > 0.0
            initial = self.initial_losses
            initial.copy_(torch.where(present & (initial == 0.0), values, initial))
            if bool(present.any()):  # on the host copy, as everything here
                relative = torch.where(present, values / torch.where(present, initial, 1.0), 0.0)
                ratios = relative / relative[present].mean()
                norms = g.diagonal().clamp_min(0.0).sqrt()
                with torch.enable_grad():
                    leaf = omega.clone().requires_grad_(True)
                    (grad,) = torch.autograd.grad(gradnorm_loss(leaf, norms, ratios, self.alpha, present), leaf)
                self.omega.copy_(omega - self.lr * grad)
            self.num_steps += 1
        return weights
