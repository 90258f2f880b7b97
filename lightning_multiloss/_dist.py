"""Small helpers for torch.distributed that are safe without it."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_rank_zero() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over all processes (itself without distributed training)."""
    if is_distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(value: object) -> list[object]:
    """``value`` of every process, in rank order (``[value]`` without distributed training)."""
    if not is_distributed():
        return [value]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
