"""Fixed weights: Keras' ``loss_weights``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightning_multiloss._numbers import real_number
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.weighting._base import WeightedLoss, Weighting, weighted_sum
from lightning_multiloss.weighting._common import check_weight, per_task_values
from lightning_multiloss.weighting._registry import register


@register("fixed")
class Fixed(Weighting):
    r"""A fixed weighted sum of the task losses, as Keras' ``compile(loss_weights=...)``.

    .. math:: L = \sum_i w_i L_i

    Each loss moves only the layers on its own path from the input: a head that task ``j``
    does not use receives no gradient from :math:`L_j`.

    Versus the peers: Keras' ``loss_weights`` and TorchJD's ``Constant``/``Sum`` exactly (a task a
    dict leaves out weighs 1, as in Keras).

    Args:
        weights: one weight per task in task order, or a dict by task name (tasks it leaves
            out get weight 1, as in Keras). ``None``: every weight is 1. Each weight must be
            finite and non-negative.

    Example:
        >>> import torch
        >>> from lightning_multiloss.weighting import Fixed
        >>> w = Fixed({"digit": 0.5, "recon": 0.3})
        >>> w.bind(["digit", "recon"])
        >>> w(torch.tensor([2.0, 10.0])).loss
        tensor(4.)
    """

    def __init__(self, weights: Sequence[float] | Mapping[str, float] | None = None) -> None:
        super().__init__()
        if isinstance(weights, str | bytes) or real_number(weights) is not None:
            raise MultiLossError(
                f"weighting 'fixed': weights must be a list (task order) or a dict by task name, got {weights!r}"
            )
        if isinstance(weights, set | frozenset):
            raise MultiLossError(
                f"weighting 'fixed': weights must be a list (task order) or a dict by task name, got a set "
                f"{weights!r}, which has no order"
            )
        if weights is not None and not isinstance(weights, Mapping):
            weights = list(weights)
        # Checked now, so that a bad value fails when the config is built, not at bind time.
        if isinstance(weights, Mapping):
            weights = {name: check_weight("fixed", name, value) for name, value in weights.items()}
        # A list is checked in build, where the task names are known.
        self._spec = weights
        self.weights: Tensor

    def build(self, num_tasks: int) -> None:
        # Not persistent: fixed weights are configuration, not training state. On the default device
        # (the meta device under `with torch.device("meta")`), the values checked on the host.
        weights = torch.empty(num_tasks).copy_(self._configured_weights())
        self.register_buffer("weights", weights, persistent=False)

    def set_unsaved_state(self) -> None:
        if not self.weights.is_meta:
            with torch.no_grad():
                self.weights.copy_(self._configured_weights())
        super().set_unsaved_state()

    def _configured_weights(self) -> Tensor:
        """The weights of the configuration, checked, as a CPU tensor of the default float dtype."""
        spec = [1.0] * self.num_tasks if self._spec is None else self._spec
        values = per_task_values(self.name, self.task_names, spec, "weights", 1.0)
        values = [check_weight(self.name, name, v) for name, v in zip(self.task_names, values, strict=True)]
        if not any(values):
            raise MultiLossError(
                f"weighting 'fixed': every weight is 0 ({dict(zip(self.task_names, values, strict=True))}): "
                "the loss would be 0 and nothing would train"
            )
        stored = torch.tensor(values, device="cpu")  # the default float dtype: float32 holds up to about 3.4e38
        finite, any_nonzero = bool(torch.isfinite(stored).all()), bool(stored.any())
        if not (finite and any_nonzero):
            trouble = "beyond its range" if not finite else "all 0 once rounded: nothing would train"
            raise MultiLossError(
                f"weighting 'fixed': the weights {dict(zip(self.task_names, values, strict=True))} are "
                f"{stored.tolist()} in {stored.dtype}, {trouble}"
            )
        return stored

    def current_weights(self) -> Tensor:
        """The weights the next step uses (the strategy's ``weights`` buffer)."""
        return self.weights.detach().clone()

    def forward(self, losses: Tensor) -> WeightedLoss:
        return weighted_sum(self.weights, losses)
