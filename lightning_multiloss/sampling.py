"""Samplers for exact evaluation under DDP (plain PyTorch: usable in any data module)."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler


class ShardSampler(DistributedSampler):
    """Process ``rank`` of ``num_replicas`` reads samples ``rank, rank + num_replicas, ...``: no padding.

    Lightning's default ``DistributedSampler`` repeats samples so that every process gets as
    many; under DDP the validation and test metrics would then count some samples twice. With
    this sampler each sample is evaluated exactly once (the shares differ by at most one sample;
    the mixin's evaluation means and metrics are torchmetrics states summed over processes, so
    the results equal one process reading the whole split). Evaluation only: DDP training needs
    equal shares.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> dataset = TensorDataset(torch.arange(5))
        >>> [list(ShardSampler(dataset, num_replicas=2, rank=r)) for r in (0, 1)]
        [[0, 2, 4], [1, 3]]
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.total_size = len(dataset)  # type: ignore[arg-type]
        self.num_samples = len(range(rank, self.total_size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))
