"""Fast Adaptive Multitask Optimization (Liu et al. 2023)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_multiloss.weighting._base import WeightedLoss, Weighting
from lightning_multiloss.weighting._common import check_positive, linearised, process_mean
from lightning_multiloss.weighting._registry import register

_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


@register("famo")
class FAMO(Weighting):
    r"""Balance the tasks' rates of log-loss decrease at O(1) cost per step (Liu et al. 2023).

    "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023, as in the authors' code.
    Task logits :math:`\xi` (init 0) give :math:`z = \mathrm{softmax}(\xi)`; with
    :math:`D_i = L_i + \epsilon` the step minimises

    .. math:: L = \sum_i \frac{z_i}{c} \log D_i, \qquad c = \sum_j \frac{z_j}{D_j}
              \quad (\text{detached}),

    whose gradient is :math:`\sum_i \omega_i \nabla L_i` with :math:`\omega_i = z_i/(c D_i)`,
    :math:`\sum_i \omega_i = 1` (the reported weights are these :math:`\omega_i`). After each
    optimizer step, with :math:`\delta_i = \log D_i^{\text{before}} - \log D_i^{\text{after}}`
    (the decrease of each log loss), :math:`\xi` takes one step of its own Adam optimizer on the
    gradient :math:`J_{\mathrm{softmax}}(\xi)^\top \delta = z \odot \delta - z\,(z^\top\delta)`,
    with L2 weight decay :math:`\gamma` (``torch.optim.Adam``'s ``weight_decay``).

    :math:`\xi` is not a parameter of the model's optimizer: it is a buffer (with the Adam
    moments and step count) that the strategy updates itself, so it is checkpointed and
    restored exactly but never seen by the model's optimizer or gradient clipping.

    **The post-step losses.** The official code evaluates the losses again on the same batch
    after the optimizer step (one extra forward pass per step). This implementation uses the
    *next* training step's losses instead (the next batch, with the updated parameters): the
    update of :math:`\xi` for step ``t`` happens at the start of step ``t+1``, before its
    weights are computed, so no extra forward is needed: O(K) extra work per step. It
    approximates :math:`\delta` with :math:`\log L(\theta_t; B_t) - \log L(\theta_{t+1};
    B_{t+1})`, which adds the difference between two batches' losses to the signal (noise of
    mean zero when the batches are exchangeable; Adam's normalisation and the small step of
    :math:`\xi` keep it in check, but with very small batches the signal is noisier). With
    gradient accumulation the "before" losses are those of the last micro-batch of the step.

    **DDP.** The losses used for :math:`\delta` and for :math:`D` in the weights are the means
    over all processes (one all-reduce of ``K+1`` numbers per training step), so :math:`\xi`
    and the weights are identical on every process (and equal to those of one process
    training on the whole batch when each process's loss is a mean over the same number of
    samples); each process backpropagates
    :math:`\sum_i \omega_i L_i^{\text{local}}` (value: :math:`\sum_i z_i/c \log \bar D_i`).

    **Missing labels.** A task whose (process-mean) loss is exactly 0 in a step (no labelled
    sample) is left out of that step: its weight is 0, ``c`` sums over the other tasks, and its
    :math:`\delta_i` is taken as 0 for the update that involves that step. (In the official
    code :math:`D_i = \epsilon` would take almost all the weight and stall the other tasks.)
    The official ``min_losses`` offset is 0 here.

    Versus the peers: the official code and LibMTL, but with the next step's losses as the post-step
    ones (no extra forward): the same weights and ξ given the same post-step losses.

    Args:
        lr: the learning rate of :math:`\xi`'s Adam (0.025 in the paper and code).
        weight_decay: :math:`\gamma`, Adam's L2 weight decay on :math:`\xi` (1e-3, the default of
            the reference multi-task code; the paper tunes it per dataset).
        eps: :math:`\epsilon` added to each loss before the log (1e-8 as the code).

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import FAMO
        >>> w = FAMO()
        >>> w.bind(["seg", "depth"])
        >>> w(torch.tensor([1.0, 3.0])).weights  # z uniform: ω ∝ 1/L
        tensor([0.7500, 0.2500])
        >>> w.after_optimizer_step()
        >>> _ = w(torch.tensor([0.5, 3.0]))  # seg's log loss fell: ξ moves towards depth
        >>> w.logits
        tensor([-0.0250,  0.0250])
    """

    needs_nonnegative_losses = True  # a negative one has no log
    min_tasks = 2
    last_weights_are_state = True  # the weights of the last step's losses: not a function of the state
    PRECISE_STATE = ("logits", "exp_avg", "exp_avg_sq", "previous_losses")  # bf16-true would stall ξ's Adam

    def __init__(self, lr: float = 0.025, weight_decay: float = 1e-3, eps: float = 1e-8) -> None:
        super().__init__()
        self.lr = check_positive("famo", "lr", lr)
        self.weight_decay = check_positive("famo", "weight_decay", weight_decay, allow_zero=True)
        self.eps = check_positive("famo", "eps", eps)
        self._pending = False
        self.logits: Tensor
        self.exp_avg: Tensor
        self.exp_avg_sq: Tensor
        self.adam_step: Tensor
        self.previous_losses: Tensor
        self.pending: Tensor

    def build(self, num_tasks: int) -> None:
        self.register_buffer("logits", torch.zeros(num_tasks))  # ξ
        self.register_buffer("exp_avg", torch.zeros(num_tasks))
        self.register_buffer("exp_avg_sq", torch.zeros(num_tasks))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.long))  # exact at any count, in any precision
        self.register_buffer("previous_losses", torch.zeros(num_tasks))  # the last training step's mean losses
        self.register_buffer("pending", torch.zeros((), dtype=torch.bool))  # an optimizer step since then

    @property
    def z(self) -> Tensor:
        """The current task distribution :math:`\\mathrm{softmax}(\\xi)`."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, losses: Tensor) -> WeightedLoss:
        if self.training:
            mean = process_mean(losses).to(self.logits)  # identical on every process
            if self._pending:
                self._update(self.previous_losses, mean)
                self._set_pending(False)
            self.previous_losses.copy_(mean)
        else:
            mean = losses.detach().to(self.logits)
        present = mean > 0
        d = mean + self.eps
        z = torch.where(present, self.z, 0.0)
        c = (z / d).sum()
        coefficient = torch.where(present, z / c.clamp(min=1e-30), 0.0)  # z_i / c
        # Value Σ z_i/c·log D̄_i, gradient Σ ω_i ∇L_i with ω_i = z_i/(c D̄_i) (D̄ = D without DDP).
        # The log of present tasks only: an absent one's 0·log(D) would be NaN where D < 0.
        return linearised((coefficient * torch.log(torch.where(present, d, 1.0))).sum(), coefficient / d, losses)

    @torch.no_grad()
    def _update(self, before: Tensor, after: Tensor) -> None:
        valid = (before > 0) & (after > 0)
        delta = torch.where(valid, torch.log(before + self.eps) - torch.log(after + self.eps), 0.0)
        z = self.z
        grad = z * delta - z * (z * delta).sum()  # softmax Jacobianᵀ·δ
        # One step of torch.optim.Adam (L2 weight decay), written out so its state is in buffers.
        grad = grad + self.weight_decay * self.logits
        beta1, beta2 = _BETAS
        self.adam_step += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**self.adam_step
        bias_correction2 = 1 - beta2**self.adam_step
        denom = (self.exp_avg_sq.sqrt() / bias_correction2.sqrt()).add_(_ADAM_EPS)
        self.logits.sub_(self.lr * self.exp_avg / (bias_correction1 * denom))

    def after_optimizer_step(self) -> None:
        self._set_pending(True)

    def _set_pending(self, value: bool) -> None:
        self._pending = value
        self.pending.fill_(value)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._count_in_integers()  # a float32 count, assigned by a load with assign=True
        self._pending = bool(self.pending)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._count_in_integers()  # a strategy pickled with the hyper-parameters by an earlier version

    def _count_in_integers(self) -> None:
        """Keep Adam's step count an integer: earlier versions kept it float32, which bf16-true rounded
        to bfloat16, where the count stops at 256."""
        step = self._buffers.get("adam_step")
        if step is not None and step.is_floating_point():
            self._buffers["adam_step"] = step.to(torch.long)

    def extra_repr(self) -> str:
        text = f"lr={self.lr}, weight_decay={self.weight_decay}, eps={self.eps}"
        return text + (f", {super().extra_repr()}" if self.task_names else "")
