"""``ResumableDataLoader``: a state taken after k batches of an epoch makes a new loader hand out
that epoch's remaining batches, as a plain ``DataLoader`` over the same sampler and epoch reads them."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, TensorDataset

from lightning_multiloss import MultiLossError, ResumableDataLoader

N, BATCH, SEED = 50, 4, 7  # 13 batches an epoch, the last one short


def dataset() -> TensorDataset:
    return TensorDataset(torch.arange(N))


def sampler(data: TensorDataset) -> DistributedSampler:
    return DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=SEED)


def loader(batch_size: int = BATCH, *, with_batch_sampler: bool = False, **kw: Any) -> ResumableDataLoader:
    data = dataset()
    if with_batch_sampler:
        return ResumableDataLoader(data, batch_sampler=BatchSampler(sampler(data), batch_size, drop_last=False), **kw)
    return ResumableDataLoader(data, batch_size=batch_size, sampler=sampler(data), **kw)


def epoch_order(epoch: int, batch_size: int = BATCH) -> list[list[int]]:
    """The batches of ``epoch`` by hand: the permutation DistributedSampler draws from seed + epoch."""
    permutation = torch.randperm(N, generator=torch.Generator().manual_seed(SEED + epoch)).tolist()
    return [permutation[i : i + batch_size] for i in range(0, N, batch_size)]


def ids(batches: Any) -> list[list[int]]:
    return [batch[0].tolist() for batch in batches]


def through_checkpoint(state: dict[str, int]) -> dict[str, Any]:
    """The state as Lightning stores it: saved, then loaded with torch's default ``weights_only=True``."""
    buffer = io.BytesIO()
    torch.save({"combined_loader": [state]}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["combined_loader"][0]


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """What Lightning calls before each epoch (on the sampler, or the batch sampler's)."""
    loader.batch_sampler.sampler.set_epoch(epoch)  # type: ignore[union-attr]


def start(epoch: int, batches: int, **kw: Any) -> tuple[ResumableDataLoader, list[list[int]]]:
    """A loader that handed out ``batches`` batches of ``epoch`` (Lightning calls set_epoch first)."""
    first = loader(**kw)
    set_epoch(first, epoch)
    it = iter(first)
    return first, ids(next(it) for _ in range(batches))


def resume(state: dict[str, Any], epoch: int, **kw: Any) -> ResumableDataLoader:
    second = loader(**kw)
    second.load_state_dict(through_checkpoint(state))
    set_epoch(second, epoch)
    return second


def test_the_order_is_the_samplers() -> None:
    plain = DataLoader(dataset(), batch_size=BATCH, sampler=sampler(dataset()))
    set_epoch(plain, 2)
    assert epoch_order(2) == ids(plain)  # the hand-made reference is the sampler's order
    resumable = loader()
    set_epoch(resumable, 2)
    assert ids(resumable) == epoch_order(2)
    assert resumable.state_dict() == {"epoch": 2, "batches": 13, "length": 13, "batch_size": BATCH, "replicas": 1}


@pytest.mark.parametrize("with_batch_sampler", [False, True])
@pytest.mark.parametrize(("epoch", "done"), [(0, 1), (0, 5), (3, 12)])
def test_a_resumed_epoch_hands_out_the_batches_left(epoch: int, done: int, with_batch_sampler: bool) -> None:
    first, read = start(epoch, done, with_batch_sampler=with_batch_sampler)
    assert read == epoch_order(epoch)[:done]
    state = first.state_dict()
    assert state == {"epoch": epoch, "batches": done, "length": 13, "batch_size": BATCH, "replicas": 1}
    second = resume(state, epoch, with_batch_sampler=with_batch_sampler)
    assert ids(second) == epoch_order(epoch)[done:]
    assert second.state_dict()["batches"] == 13  # the skipped batches count: a later checkpoint resumes right
    assert ids(second) == epoch_order(epoch)  # the skip was for one iteration; the next epoch is whole


def test_resumed_twice_in_one_epoch() -> None:
    first, _ = start(1, 3)
    second = resume(first.state_dict(), 1)
    it = iter(second)
    assert ids(next(it) for _ in range(4)) == epoch_order(1)[3:7]
    third = resume(second.state_dict(), 1)
    assert third.state_dict()["batches"] == 0  # nothing handed out yet
    assert ids(third) == epoch_order(1)[7:]


@pytest.mark.parametrize(("saved_epoch", "done"), [(0, 4), (1, 13)], ids=["another-epoch", "epoch-handed-out"])
def test_a_state_of_an_ended_epoch_skips_nothing(saved_epoch: int, done: int) -> None:
    # A checkpoint written at an epoch's end: Lightning resumes at the next epoch (or, for one whose
    # batches were all handed out, starts the next epoch without a set_epoch of a new number).
    first, _ = start(saved_epoch, done)
    assert ids(resume(first.state_dict(), 1)) == epoch_order(1)


@pytest.mark.parametrize("batch_size", [5, 3], ids=["other-length", "same-length"])
def test_an_epoch_read_otherwise_skips_as_many_batches_and_says_so(
    batch_size: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Lightning counts the checkpoint's 5 batches done and asks for 5 fewer: the epoch keeps its
    # length (batches of 3 give 17 an epoch, of 5 give 10; of 4, 13).
    first, _ = start(0, 5)
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        second = resume(first.state_dict(), 0, batch_size=batch_size)
        assert ids(second) == epoch_order(0, batch_size=batch_size)[5:]
    length = len(epoch_order(0, batch_size=batch_size))
    assert (
        f"epoch 0 was read in 13 batches of 4 on 1 process(es), this loader reads it in {length} batches of "
        f"{batch_size} on 1 process(es); the resumed epoch skips its first 5 batches"
    ) in caplog.text


def test_a_loader_that_follows_training_counts_the_batches_trained_on() -> None:
    # A checkpoint written during batch 6 (an exception's, a signal's): Lightning has trained on 5.
    first, _ = start(0, 6)
    trained: list[int | None] = [5]
    first.follow_training(lambda: trained[0])
    assert first.state_dict()["batches"] == 5
    assert ids(resume(first.state_dict(), 0)) == epoch_order(0)[5:]
    trained[0] = None  # unknown: what was handed out
    assert first.state_dict()["batches"] == 6
    first.follow_training(None)
    assert first.state_dict()["batches"] == 6


def test_the_order_is_fixed_at_the_first_batch_not_at_iter() -> None:
    # Lightning creates the iterator before it calls set_epoch on a resume; with a worker, a plain
    # DataLoader asks its sampler for the order then.
    resumable = loader(num_workers=1)
    it = iter(resumable)
    set_epoch(resumable, 3)
    assert ids(it) == epoch_order(3)


def test_a_loader_that_does_not_shuffle_resumes_too() -> None:
    # No epochs (a SequentialSampler, as Lightning's overfit_batches builds): the order never changes.
    first = ResumableDataLoader(dataset(), batch_size=BATCH)
    it = iter(first)
    for _ in range(3):
        next(it)
    assert first.state_dict()["epoch"] == -1 and first.state_dict()["batches"] == 3
    second = ResumableDataLoader(dataset(), batch_size=BATCH)
    second.load_state_dict(through_checkpoint(first.state_dict()))
    in_order = [list(range(i, min(i + BATCH, N))) for i in range(0, N, BATCH)]
    assert ids(second) == in_order[3:]
    assert ids(second) == in_order


def test_a_shuffling_loader_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lightning_multiloss"):
        ResumableDataLoader(dataset(), batch_size=BATCH, shuffle=True)
    assert "a RandomSampler (shuffle=True) draws each epoch's order from a random generator" in caplog.text


WHOLE = {"epoch": 0, "batches": 2, "length": 13, "batch_size": 4, "replicas": 1}


@pytest.mark.parametrize(
    "state",
    [{**WHOLE, "replicas": None}, {**WHOLE, "batches": "2"}, {"epoch": 0, "batches": 2, "length": 13}, [0, 2, 13]],
)
def test_a_malformed_state_is_named(state: Any) -> None:
    with pytest.raises(MultiLossError, match="expected ints 'epoch', 'batches', 'length', 'batch_size' and 'replicas'"):
        loader().load_state_dict(state)


class CountingDataset(TensorDataset):
    """Counts the samples read."""

    def __init__(self) -> None:
        super().__init__(torch.arange(N))
        self.reads = 0

    def __getitem__(self, index: int) -> Any:
        self.reads += 1
        return super().__getitem__(index)


def test_the_skipped_batches_are_not_read() -> None:
    data = CountingDataset()
    first = ResumableDataLoader(data, batch_size=BATCH, sampler=sampler(data))
    set_epoch(first, 0)
    it = iter(first)
    for _ in range(5):
        next(it)
    second = ResumableDataLoader(data, batch_size=BATCH, sampler=sampler(data))
    second.load_state_dict(through_checkpoint(first.state_dict()))
    set_epoch(second, 0)
    data.reads = 0
    assert ids(second) == epoch_order(0)[5:]
    assert data.reads == N - 5 * BATCH
    assert len(second) == 13  # the epoch's length, for Lightning


@pytest.mark.parametrize("persistent", [False, True])
def test_with_workers_a_resumed_epoch_skips_once(persistent: bool) -> None:
    # Torch's iterator with persistent workers takes the indices again each epoch, from the same object.
    first, _ = start(2, 4)
    second = resume(first.state_dict(), 2, num_workers=1, persistent_workers=persistent)
    assert ids(second) == epoch_order(2)[4:]
    set_epoch(second, 3)
    assert ids(second) == epoch_order(3)
