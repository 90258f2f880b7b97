"""Smooth Tchebycheff scalarisation (Lin et al. 2024)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.weighting._base import WeightedLoss, Weighting
from lightning_multiloss.weighting._common import (
    at_least_float32,
    check_positive,
    check_weight,
    linearised,
    per_task_values,
    process_mean,
)
from lightning_multiloss.weighting._registry import register

_TINY = 1e-20  # the official code's offset inside the log


@register("stch")
class STCH(Weighting):
    r"""Smooth Tchebycheff scalarisation of the log-normalised losses (Lin et al. 2024).

    "Smooth Tchebycheff Scalarization for Multi-Objective Optimization", ICML 2024. The smooth
    Tchebycheff function of objectives :math:`f_i`, preferences :math:`w_i` and ideal point
    :math:`z^*` is :math:`g_\mu = \mu \log \sum_i \exp(w_i (f_i - z^*_i)/\mu)`, a smooth
    maximum that tends to :math:`\max_i w_i (f_i - z^*_i)` as :math:`\mu \to 0`. For deep
    multi-task learning the authors' code uses, after a warm-up, the log losses normalised by a
    nadir point :math:`n` (each task's mean loss over the last warm-up epoch) and
    :math:`z^* = 0`, scaled by ``K``:

    .. math:: L = K\,\mu \log \sum_i \exp\!\Big(\frac{w_i\, \ell_i}{\mu}\Big), \qquad
              \ell_i = \log\Big(\frac{L_i}{n_i} + 10^{-20}\Big)

    During the warm-up (the first ``warmup_epochs`` epochs, and the epoch after them, whose
    training-loss means become :math:`n`) the loss is :math:`\sum_i \log(L_i + 10^{-20})`, as in
    that code. The reported weights are the gradient coefficients :math:`\partial L/\partial
    L_i`: :math:`1/(L_i + 10^{-20})` in the warm-up, :math:`K w_i p_i / (L_i + 10^{-20} n_i)`
    after it, with :math:`p = \mathrm{softmax}(w \ell / \mu)`.

    Exactly as the official code, except: the nadir point is the mixin's epoch-mean training
    loss (averaged over DDP processes; the code averages the per-step losses of the same epoch
    on one process, the same number); a task whose nadir is 0 (never labelled in that epoch) is
    not normalised (:math:`n_i = 1`); the preferences ``w`` (all 1 in the code) may be given;
    the code subtracts :math:`\max_i \ell_i` inside the exponentials without adding it back
    (its loss value is lower by :math:`K \max_i \ell_i`, a constant for the gradient), here the
    value is the formula's (``torch.logsumexp`` is already stable); the gradient is the same.
    The nadir point and the epoch count are persistent buffers (a resumed run continues
    exactly); evaluation changes nothing and uses the warm-up form until the nadir is known.

    Versus the peers: LibMTL's STCH is the official code (see the differences above); TorchJD has no
    loss-level strategy.

    Args:
        mu: the smoothing :math:`\mu > 0` (1.0, the reference multi-task code's default).
        warmup_epochs: epochs of log-loss warm-up before the nadir epoch (4, the same code's
            default); the Tchebycheff phase starts at epoch ``warmup_epochs + 1`` (0-based).
        preference: the :math:`w_i` (> 0), a list in task order or a dict by task name (tasks it
            leaves out get 1); ``None``: all 1.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import STCH
        >>> w = STCH(mu=1.0, warmup_epochs=0)
        >>> w.bind(["seg", "depth"])
        >>> w.on_epoch_losses(torch.tensor([2.0, 4.0]))  # the nadir epoch
        >>> out = w(torch.tensor([1.0, 4.0]))  # ℓ = [log ½, 0]
        >>> round(out.loss.item(), 4)  # 2·log(½ + 1)
        0.8109
    """

    needs_nonnegative_losses = True  # a negative one has no log
    min_tasks = 2
    uses_epoch_losses = True
    last_weights_are_state = True  # the weights of the last step's losses: not a function of the state

    def __init__(
        self,
        mu: float = 1.0,
        warmup_epochs: int = 4,
        preference: Sequence[float] | Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        mu = check_positive("stch", "mu", mu)
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise MultiLossError(f"weighting 'stch': warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
        if isinstance(preference, Mapping):
            preference = {n: self._check_preference(n, v) for n, v in preference.items()}
        elif preference is not None:
            preference = list(preference)  # checked in build, by task name
        self.mu = mu
        self.warmup_epochs = warmup_epochs
        self._preference_spec = preference
        self._has_nadir = False
        self.preference: Tensor
        self.nadir: Tensor
        self.epochs_seen: Tensor

    @staticmethod
    def _check_preference(task: str, value: float) -> float:
        value = check_weight("stch", task, value, "preference")
        if value == 0:
            raise MultiLossError(f"weighting 'stch': preference for task {task!r} must be > 0, got {value}")
        return value

    def build(self, num_tasks: int) -> None:
        self.register_buffer("preference", torch.tensor(self._configured_preference()), persistent=False)
        self.register_buffer("nadir", torch.ones(num_tasks))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))

    def _configured_preference(self) -> list[float]:
        spec = self._preference_spec
        spec = [1.0] * self.num_tasks if spec is None else spec
        values = per_task_values(self.name, self.task_names, spec, "preference", 1.0)
        return [self._check_preference(name, v) for name, v in zip(self.task_names, values, strict=True)]

    def set_unsaved_state(self) -> None:
        if not self.preference.is_meta:
            with torch.no_grad():
                self.preference.copy_(torch.tensor(self._configured_preference(), device="cpu"))
        super().set_unsaved_state()

    @property
    def has_nadir(self) -> bool:
        """Whether the warm-up is over (the nadir point is set)."""
        return self._has_nadir

    def forward(self, losses: Tensor) -> WeightedLoss:
        mean = process_mean(losses) if self.training else at_least_float32(losses.detach())
        present = mean > 0
        safe = torch.where(present, mean, 1.0)
        if not self._has_nadir:  # warm-up: Σ log L_i
            value = torch.where(present, torch.log(safe + _TINY), 0.0).sum()
            return linearised(value, torch.where(present, 1.0 / (safe + _TINY), 0.0), losses)
        nadir = self.nadir.to(mean.dtype)
        preference = self.preference.to(mean.dtype)
        scaled = preference * torch.log(safe / nadir + _TINY) / self.mu
        scaled = torch.where(present, scaled, torch.finfo(scaled.dtype).min / 2)  # absent: no term
        value = torch.where(present.any(), self.num_tasks * self.mu * torch.logsumexp(scaled, dim=0), 0.0)
        p = torch.where(present, torch.softmax(scaled, dim=0), 0.0)
        weights = self.num_tasks * preference * p / (safe + _TINY * nadir)
        return linearised(value, weights, losses)

    @torch.no_grad()
    def on_epoch_losses(self, epoch_losses: Tensor) -> None:
        if int(self.epochs_seen) == self.warmup_epochs:
            means = epoch_losses.detach().to(self.nadir)
            self.nadir.copy_(torch.where(means > 0, means, 1.0))
            self._has_nadir = True
        self.epochs_seen += 1

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._has_nadir = int(self.epochs_seen) > self.warmup_epochs

    def extra_repr(self) -> str:
        text = f"mu={self.mu}, warmup_epochs={self.warmup_epochs}"
        return text + (f", {super().extra_repr()}" if self.task_names else "")
