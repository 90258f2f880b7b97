"""Data loading for exact runs (plain PyTorch: usable in any data module).

- :class:`ResumableDataLoader`: a training ``DataLoader`` that a run resumed from a checkpoint
  written in the middle of an epoch continues at the batch where it stopped;
- :class:`ShardSampler`: each DDP process's share of an evaluation split, every sample once.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from lightning_multiloss.errors import MultiLossError

log = logging.getLogger(__name__)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that continues an epoch where a checkpoint left it.

    Lightning saves the ``state_dict()`` of a training loader that has one in every checkpoint,
    and hands it back to ``load_state_dict()`` when a fit resumes from that checkpoint. A plain
    ``DataLoader`` has none: a run resumed from a checkpoint written in the middle of an epoch (a
    step-interval ``ModelCheckpoint``, a preemption) reads that epoch again from its first batch
    ("your dataloader is not resumable"), so it trains on other batches than the uninterrupted run
    would have, and the epoch's mean losses (DWA, STCH) count the batches read twice. This loader's
    state is the epoch and the number of batches it has handed out in it; the resumed epoch skips
    them (their indices are dropped from the epoch's order, which is replayed, not stored; the
    samples are not read) and goes on with the batches the uninterrupted run read next.

    That needs an order that the epoch alone decides: a sampler with ``set_epoch`` and an ``epoch``
    (as ``DistributedSampler`` with its ``seed``: in one process, ``num_replicas=1, rank=0``), which
    Lightning calls before each epoch, or one whose order never changes (no shuffling). A
    ``RandomSampler`` (``shuffle=True``) draws each epoch's order from a random generator (its own,
    or the global random state) whose state a resumed run does not replay: it is warned about. The
    first batch of an iteration is read only when it is asked for, after that call (a plain
    ``DataLoader`` with workers fixes the order when Lightning creates its iterator, before the
    call, and a resumed epoch then reads the first epoch's order). A checkpoint of another epoch
    (one written at an epoch's end) resumes at the epoch's first batch. One whose epoch was read
    otherwise (another batch size or number of processes) skips as many batches as Lightning counts
    done, with a warning: the epoch keeps its length, not its samples. Under DDP every process hands
    out as many batches, so the first process's state, the one in the checkpoint, serves every
    process. Where the loader follows the training loop (:meth:`follow_training`: the package's
    Callback has it follow Lightning's), a checkpoint written during a batch (on an exception, or by
    a signal handler) leaves that batch to the resumed run, and a checkpoint without the loader's
    state (a plain ``DataLoader``'s) resumed in the middle of an epoch skips the batches Lightning
    counts done, with a warning.

    Args:
        Those of ``torch.utils.data.DataLoader``; ``sampler`` (or ``batch_sampler``'s sampler) as above.

    Example:
        >>> import torch
        >>> from torch.utils.data import DistributedSampler, TensorDataset
        >>> data = TensorDataset(torch.arange(6))
        >>> loader = ResumableDataLoader(data, batch_size=2, sampler=DistributedSampler(data, 1, 0, seed=0))
        >>> batches = iter(loader)
        >>> first = next(batches)
        >>> state = loader.state_dict()  # what Lightning writes into a checkpoint after that batch
        >>> state["batches"]
        1
        >>> resumed = ResumableDataLoader(data, batch_size=2, sampler=DistributedSampler(data, 1, 0, seed=0))
        >>> resumed.load_state_dict(state)
        >>> [b[0].tolist() for b in resumed] == [b[0].tolist() for b in batches]
        True
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self._epoch_sampler(), RandomSampler):
            log.warning(
                "ResumableDataLoader: a RandomSampler (shuffle=True) draws each epoch's order from a random "
                "generator (its own, or the global random state) whose state a resumed run does not replay: "
                "its resumed epoch skips the batches trained "
                "on, but in another order. Give the loader a DistributedSampler(dataset, num_replicas=1, rank=0, "
                "shuffle=True, seed=...) instead"
            )
        self._epoch = _NO_EPOCH  # of the iteration under way
        self._handed_out = 0  # its batches handed out, those skipped on resume included
        self._to_skip: Mapping[str, int] | None = None  # a loaded state, for the next iteration
        self._batches_trained: Callable[[], int | None] | None = None  # see follow_training
        self._iterations_followed = 0  # iterations begun since follow_training

    def follow_training(self, batches_trained: Callable[[], int | None] | None) -> None:
        """Count in :meth:`state_dict` only the batches the training loop has trained on.

        A batch is handed out before it is trained on: a checkpoint written during a batch (on an
        exception, or by a signal handler such as Lightning's SLURM requeue) must leave it to the
        resumed run. ``batches_trained()`` gives the number of this epoch's batches the loop has
        finished (``None``: unknown); the package's Callback passes Lightning's at the start of
        training. ``None`` stops following, keeping the count the loop last gave (the Callback
        stops at the end of fit and on an exception, before Lightning's exception checkpoint), so
        that a later fit with another Trainer is not told the count of this one.
        """
        if batches_trained is None:
            self._handed_out = self._batches_done()
        self._batches_trained = batches_trained
        self._iterations_followed = 0

    def _batches_done(self) -> int:
        """The epoch's batches handed out, or those trained on where the loader follows training."""
        trained = self._batches_trained() if self._batches_trained is not None else None
        if trained is not None and 0 <= trained < self._handed_out:
            return trained  # a checkpoint written during a batch: the resumed run trains on it
        return self._handed_out

    def _epoch_sampler(self) -> Any:
        """The sampler that decides the order (the batch sampler's, for a loader built with one)."""
        return self.sampler if self.batch_sampler is None else getattr(self.batch_sampler, "sampler", self.sampler)

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches", "length", "batch_size", "replicas"}``: plain ints (checkpoints load
        with ``weights_only=True``); ``batches``: those handed out in the epoch, or trained on where
        the loader follows the training loop (:meth:`follow_training`)."""
        return {"epoch": self._epoch, "batches": self._batches_done(), **self._reading()}

    def _reading(self) -> dict[str, int]:
        """How an epoch is read: its batches, their size and the number of processes sharing it."""
        size = self.batch_size if self.batch_size is not None else getattr(self.batch_sampler, "batch_size", 0)
        replicas = getattr(self._epoch_sampler(), "num_replicas", 1)
        return {"length": len(self), "batch_size": int(size or 0), "replicas": int(replicas)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Skip ``state["batches"]`` batches when the next iteration is of ``state["epoch"]``."""
        keys = ("epoch", "batches", "length", "batch_size", "replicas")
        if not isinstance(state, Mapping) or not all(isinstance(state.get(key), int) for key in keys):
            raise MultiLossError(
                "ResumableDataLoader.load_state_dict: expected ints 'epoch', 'batches', 'length', 'batch_size' and "
                f"'replicas', got {state!r}"
            )
        self._to_skip = dict(state)

    # A generator, not torch's iterator object (nothing reads more than next() of it): nothing is
    # read until the first batch is asked for, after set_epoch.
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        self._epoch = self._sampler_epoch()
        self._handed_out = 0
        state, self._to_skip = self._to_skip, None
        skip = self._stored_skip(state, self._epoch)
        trained = None
        if self._batches_trained is not None:
            # Lightning's count of this epoch's batches done, at the first batch the loop asks for
            # after the Callback had the loader follow it: 0 in an epoch begun afresh, the batches
            # trained on before the checkpoint in one resumed. A later iteration in the same epoch
            # (a shorter loader that a CombinedLoader cycles) begins its own pass.
            if self._iterations_followed == 0:
                trained = self._batches_trained()
            self._iterations_followed += 1
        if trained is not None:
            if trained and state is None:
                log.warning(
                    "ResumableDataLoader: resumed in the middle of epoch %d from a checkpoint without the loader's "
                    "state (written with a plain DataLoader, or by an earlier version); skipping the %d batches "
                    "Lightning counts done, in the order the sampler gives this epoch (exact if the checkpoint's "
                    "run read the same order)",
                    self._epoch,
                    trained,
                )
            skip = trained
        if _SKIPS_INDICES:
            # Dropped with their indices, not read. Torch's iterator takes the indices when it is
            # created (a worker iterator twice: in its constructor and its reset).
            self._indices().skip = skip
            try:
                iterator = super().__iter__()
            finally:
                self._indices().skip = 0
            self._handed_out = skip
        else:
            iterator = super().__iter__()
            for _ in range(skip):
                next(iterator)  # read, not handed out: the uninterrupted run trained on it before the checkpoint
                self._handed_out += 1
        for batch in iterator:
            self._handed_out += 1
            yield batch

    # torch's iterators take an epoch's indices (batches of them) from `_index_sampler`, once per
    # epoch, and len(loader) its length: a resumed epoch's first batches are dropped there, unread.
    @property
    def _index_sampler(self) -> Any:
        return self._indices()

    def _indices(self) -> _Skipping:
        indices = self.__dict__.get("_skipping")
        if indices is None:
            indices = _Skipping(DataLoader._index_sampler.fget(self))  # type: ignore[attr-defined]
            self.__dict__["_skipping"] = indices
        return indices

    def _sampler_epoch(self) -> int:
        """The epoch the sampler was set to (``set_epoch``), or -1 for one without epochs."""
        epoch = getattr(self._epoch_sampler(), "epoch", None)
        return epoch if isinstance(epoch, int) else _NO_EPOCH

    def _stored_skip(self, state: Mapping[str, int] | None, epoch: int) -> int:
        """The batches of ``epoch`` that a loaded ``state`` says were trained on (0 without one)."""
        if state is None or state["epoch"] != epoch or state["batches"] >= state["length"]:
            return 0  # no state, or that of another epoch, or of an epoch handed out in full
        saved = {key: state[key] for key in ("length", "batch_size", "replicas")}
        if saved != self._reading():
            # Lightning counts the checkpoint's batches done and reads this many fewer: skipping as
            # many keeps the epoch's length, not its samples.
            log.warning(
                "ResumableDataLoader: epoch %d was read in %s, this loader reads it in %s; the resumed epoch skips "
                "its first %d batches (those Lightning counts done), so some of its samples are trained on twice "
                "and others not at all",
                epoch,
                _described(saved),
                _described(self._reading()),
                state["batches"],
            )
        return state["batches"]


class _Skipping:
    """The loader's batches of indices (or indices), the first ``skip`` left out."""

    def __init__(self, indices: Any) -> None:
        self.indices = indices
        self.skip = 0

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.indices), self.skip, None)

    def __len__(self) -> int:
        return len(self.indices)


_NO_EPOCH = -1  # the state's epoch for a sampler without epochs (its order the same every epoch)

# Whether torch's DataLoader reads its indices from the `_index_sampler` property (since torch 1.2);
# where it does not, a resumed epoch reads the batches it skips.
_SKIPS_INDICES = isinstance(vars(DataLoader).get("_index_sampler"), property)


def _described(reading: Mapping[str, int]) -> str:
    return f"{reading['length']} batches of {reading['batch_size']} on {reading['replicas']} process(es)"


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
