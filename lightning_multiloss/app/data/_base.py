"""A LightningDataModule over in-memory tensors, split into train / val / test by a seed.

Each data module of the demo is written once, as a mixin that imports no Lightning package
(:class:`SplitDataModuleMixin`, ...), and built on each package's ``LightningDataModule``: the
classes of this package on ``lightning.pytorch``, those of :mod:`lightning_multiloss.app.pl` on
``pytorch_lightning`` (a Trainer of one package refuses the data modules of the other).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

import lightning.pytorch as lp
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_multiloss import ResumableDataLoader, ShardSampler
from lightning_multiloss.errors import MultiLossError


def shipped_arrays(name: str) -> dict[str, np.ndarray]:
    """The arrays of ``arrays/<name>.npz``, a data file shipped with the package (sources and licences:
    ``arrays/README.md``)."""
    with (resources.files(__package__) / "arrays" / f"{name}.npz").open("rb") as f, np.load(f) as arrays:
        return {key: arrays[key] for key in arrays.files}


class TensorDictDataset(Dataset):
    """Samples ``{key: tensors[key][i]}`` from tensors that share their first dimension."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        sizes = {key: len(value) for key, value in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise MultiLossError(f"the tensors of a dataset must have the same length, got {sizes}")
        self.tensors = dict(tensors)
        self.size = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}


class SplitDataModuleMixin:
    """Builds all samples once (:meth:`build`), then splits them by ``seed``.

    The code of :class:`SplitDataModule`, for both Lightning packages: mix it (first) into a
    ``LightningDataModule``. To use your own samples, subclass :class:`SplitDataModule` (or
    ``lightning_multiloss.app.pl.SplitDataModule``) and write :meth:`build`.

    Samples made from shared source items (several placements of one image, two images on one
    canvas) would put the same image in training and test samples, and the test would measure
    what was trained on. Such a data module returns the number of its source items from
    :meth:`source_count` and writes :meth:`build_from` instead of :meth:`build`: the source
    items are split by ``seed``, and each split's samples are made from its own items only.

    Args:
        batch_size: samples per batch (per process under DDP).
        val_fraction: the share of the samples held out for validation.
        test_fraction: the share held out for test.
        seed: the seed of the split (and of any random construction of the samples).
        num_workers: DataLoader worker processes (0: load in the main process).
    """

    input_shape: tuple[int, ...] = ()
    """The shape of one input ``x``, known before the data is built (the model is sized from it)."""
    trainer: Any
    """The Trainer (the ``LightningDataModule``'s; None outside a Trainer)."""

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if batch_size < 1:
            raise MultiLossError(f"{name}: batch_size must be >= 1, got {batch_size}")
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise MultiLossError(f"{name}: {key} must be in [0, 1), got {value}")
        if val_fraction + test_fraction >= 1.0:
            raise MultiLossError(
                f"{name}: val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}"
            )
        if num_workers < 0:
            raise MultiLossError(f"{name}: num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.splits: dict[str, Tensor] = {}
        """Each split's indices: of its samples, or of its source items where :meth:`source_count` is set."""
        self.datasets: dict[str, TensorDictDataset] = {}

    def split_settings(self) -> dict[str, Any]:
        """The settings that decide which sample falls in which split (a subclass that makes more or
        fewer samples adds what sets their number)."""
        settings: dict[str, Any] = {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
        }
        if self.source_count() is not None:
            settings["split_unit"] = "source"  # checkpoints of the earlier per-sample split lack it
        return settings

    def source_count(self) -> int | None:
        """The number of source items the samples are made from, where samples share them (then
        :meth:`build_from` makes each split's samples); ``None`` (the default): every sample is its
        own, :meth:`build` makes them all and they are split one by one."""
        return None

    def target_classes(self) -> dict[str, int]:
        """The number of classes of each class-index target (by batch key) where the data's settings
        decide it: a head that reads such a target must have that many outputs."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What decides the split, kept in checkpoints: a resumed run must train on the same split."""
        return {"split": self.split_settings()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.check_split_of(state_dict, "the checkpoint")

    def check_split_of(self, state: Mapping[str, Any], source: str) -> None:
        """Refuse to resume the training of ``source`` (whose data module's :meth:`state_dict` is
        ``state``) on another split: its validation and test samples would have been trained on."""
        saved = state.get("split")
        if not isinstance(saved, Mapping):  # a checkpoint of an earlier version: nothing to compare
            return
        ours = self.state_dict()["split"]
        lacking = [key for key in ours if key not in saved]
        if lacking:  # a setting its version did not have: it split the data otherwise
            raise MultiLossError(
                f"{type(self).__name__}: {source} was split by an earlier version of this data module (it holds no "
                f"{', '.join(lacking)}): its validation and test samples may hold images this version trains on; "
                "start a new run"
            )
        differ = [key for key in ours if saved[key] != ours[key]]
        if differ:
            settings = ", ".join(f"{key}={saved[key]!r} there, {ours[key]!r} here" for key in differ)
            raise MultiLossError(
                f"{type(self).__name__}: {source} was trained on another split of the data ({settings}): "
                "resumed on this one, it would be validated and tested on samples it trained on; resume with "
                f"the same {' and '.join(differ)}"
            )

    def build(self, generator: torch.Generator) -> dict[str, Tensor]:
        """All samples, ``{"x": inputs, <target key>: targets, ...}`` (random choices from ``generator``)."""
        raise NotImplementedError(f"{type(self).__name__} writes neither build() nor source_count() and build_from()")

    def build_from(self, sources: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The samples of one split, made from the source items ``sources`` (indices below
        :meth:`source_count`) and no others, as :meth:`build` returns them."""
        raise NotImplementedError(f"{type(self).__name__}.source_count() is set: write build_from()")

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        generator = torch.Generator().manual_seed(self.seed)
        count = self.source_count()
        if count is None:
            tensors = self.build(generator)
            self.splits = self._split(len(tensors["x"]), generator)
            for split, index in self.splits.items():
                self.datasets[split] = TensorDictDataset({key: value[index] for key, value in tensors.items()})
            return
        if _defined_below(type(self), "build", "source_count"):  # that build() would be skipped
            raise MultiLossError(
                f"{type(self).__name__} writes build(), but its samples share source items (source_count() is set), so "
                "each split's samples are made from its own items by build_from(sources, generator): write build_from "
                "(call super().build_from(sources, generator) there and add to what it returns)"
            )
        self.splits = self._split(count, generator)  # the source items of each split
        for split, sources in self.splits.items():
            self.datasets[split] = TensorDictDataset(self.build_from(sources, generator))

    def _split(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Indices below ``n`` for each split, in the proportions set by the fractions."""
        order = torch.randperm(n, generator=generator)
        n_test = round(n * self.test_fraction)
        n_val = round(n * self.val_fraction)
        return {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        dataset = self.datasets[split]
        if len(dataset) == 0:
            raise MultiLossError(f"{type(self).__name__}: the {split} split is empty; raise its fraction")
        sampler = self._train_sampler(dataset) if split == "train" else self._evaluation_sampler(split, dataset)
        # The train loader resumes an epoch where a checkpoint written in it stopped.
        loader_class = ResumableDataLoader if split == "train" else DataLoader
        return loader_class(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _processes(self) -> tuple[int, int]:
        """``(number of processes, this process's rank)`` of the Trainer's distributed run; ``(1, 0)`` for one."""
        trainer = self.trainer
        kwargs = trainer.distributed_sampler_kwargs if trainer is not None else None
        if not kwargs or kwargs.get("num_replicas", 1) <= 1:
            return 1, 0
        return int(kwargs["num_replicas"]), int(kwargs["rank"])

    def _train_sampler(self, dataset: TensorDictDataset) -> DistributedSampler:
        """This process's share of the training samples, in an order that only ``seed`` and the epoch decide.

        Lightning calls ``set_epoch`` on it before each epoch (in one process too), so a run
        resumed from a checkpoint reads each epoch's batches in the order the uninterrupted run
        read them; a loader shuffled from the global random state would replay the order of the
        first epochs instead, since the seed resets that state when the run restarts.
        """
        replicas, rank = self._processes()
        return DistributedSampler(dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed)

    def _evaluation_sampler(self, split: str, dataset: TensorDictDataset) -> ShardSampler | None:
        """Under DDP, each process's share of ``split``, every sample once (None: in order, one process)."""
        replicas, rank = self._processes()
        if replicas == 1:
            return None
        if len(dataset) < replicas:
            # A process without a batch would leave the others waiting in DDP's first forward.
            raise MultiLossError(
                f"{type(self).__name__}: the {split} split has {len(dataset)} sample(s) for {replicas} processes; "
                "raise its fraction"
            )
        return ShardSampler(dataset, num_replicas=replicas, rank=rank)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test split, for ``trainer.predict(model, datamodule=...)`` (its targets unused)."""
        return self._loader("test")


def _defined_below(cls: type, method: str, than: str) -> bool:
    """Whether the class that gives ``cls`` its ``method`` derives from the one that gives it ``than``
    (both the same class included): a ``build()`` written for samples that ``source_count()`` then
    makes with ``build_from()``, not one inherited from below it (a subclass of the digits that
    adds source items)."""
    mro = cls.__mro__
    where = [next(i for i, c in enumerate(mro) if name in vars(c)) for name in (method, than)]
    return mro[where[0]] is not SplitDataModuleMixin and where[0] <= where[1]


class SplitDataModule(SplitDataModuleMixin, lp.LightningDataModule):
    """:class:`SplitDataModuleMixin` on ``lightning.pytorch``: subclass it and write :meth:`build`."""
