"""Random Loss Weighting (Lin et al. 2022)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_multiloss.weighting._base import Progress, WeightedLoss, Weighting, weighted_sum
from lightning_multiloss.weighting._common import check_seed, seeded_generator
from lightning_multiloss.weighting._registry import register


@register("rlw")
class RLW(Weighting):
    r"""Weights drawn at random every training step (Lin et al. 2022).

    "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning",
    TMLR 2022, with the normal distribution (their default):

    .. math:: w = \mathrm{softmax}(\varepsilon), \quad \varepsilon \sim \mathcal N(0, I_K),
              \qquad L = \sum_i w_i L_i

    The sample of optimizer step ``t`` is drawn from a private generator seeded with
    ``(seed, t)``: it is reproducible, identical on every DDP process, the same for
    every micro-batch of a gradient-accumulation step, and a resumed run continues the same
    sequence (``t`` is the trainer's step, handed over before each batch; without a trainer the
    count advances by one per training call and is kept in a persistent buffer). The global
    random state is not touched. In evaluation the weights are their expectation ``1/K``.

    Versus the peers: the distribution of LibMTL's RLW and TorchJD's ``Random``; the samples come
    from a generator seeded by (seed, step) instead of the global one, and evaluation uses the
    expectation 1/K.

    Args:
        seed: the seed of the weight sequence (an integer >= 0).

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import RLW, Progress
        >>> w = RLW(seed=0)
        >>> w.bind(["seg", "depth", "normal"])
        >>> w.set_progress(Progress(step=7, epoch=0))
        >>> a = w(torch.tensor([1.0, 2.0, 3.0])).weights
        >>> w.set_progress(Progress(step=7, epoch=0))
        >>> torch.equal(a, w(torch.tensor([1.0, 2.0, 3.0])).weights), round(a.sum().item(), 6)
        (True, 1.0)
    """

    min_tasks = 2
    last_weights_are_state = True  # each step's draw: not a function of the state

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = check_seed(self.name, seed)
        self._step = 0
        self.step: Tensor

    def build(self, num_tasks: int) -> None:
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def sample(self, step: int) -> Tensor:
        """The ``(K,)`` weights of optimizer step ``step`` (on the CPU)."""
        generator = seeded_generator(self.seed, step)
        return torch.softmax(torch.randn(self.num_tasks, generator=generator, dtype=torch.float64), dim=0).float()

    @property
    def follows_planned_length(self) -> bool:
        return False  # it reads the step counter only

    def set_progress(self, progress: Progress) -> None:
        self._set_step(progress.step)

    def _set_step(self, step: int) -> None:
        self._step = step
        self.step.fill_(step)

    def forward(self, losses: Tensor) -> WeightedLoss:
        if not self.training:
            return weighted_sum(torch.full_like(losses.detach(), 1.0 / self.num_tasks), losses)
        weights = self.sample(self._step).to(losses.device)
        self._set_step(self._step + 1)
        return weighted_sum(weights, losses)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._step = int(self.step)

    def extra_repr(self) -> str:
        return f"seed={self.seed}" + (f", {super().extra_repr()}" if self.task_names else "")
