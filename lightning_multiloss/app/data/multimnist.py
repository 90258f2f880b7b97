"""MultiMNIST: two overlaid real MNIST digits, the benchmark of the MGDA paper (Sener & Koltun, 2018)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_multiloss.app.data._base import SplitDataModule, SplitDataModuleMixin, shipped_arrays
from lightning_multiloss.errors import MultiLossError

MNIST_DIGITS = 5000
"""The digits in ``arrays/mnist_5k.npz``."""


def load_mnist_5k() -> tuple[Tensor, Tensor]:
    """The 5000 digits as ``(5000, 28, 28)`` floats in [0, 1] and their labels (``arrays/mnist_5k.npz``)."""
    arrays = shipped_arrays("mnist_5k")
    return torch.from_numpy(arrays["images"]).float() / 255.0, torch.from_numpy(arrays["labels"]).long()


class MultiMNISTDataModuleMixin(SplitDataModuleMixin):
    """Two MNIST digits on one 36×36 canvas, resized to ``size``×``size`` (the MGDA construction).

    The left digit goes at the top-left corner and the right digit at the bottom-right, each
    shifted by up to ``shift`` pixels in each direction; overlapping pixels take the maximum.
    The 5000 digits are split into train, validation and test digits first; each digit is the
    left digit of ``copies`` samples of its split, with a random right digit of the same split, so
    no test image shows a digit image that training saw.

    Batch keys: ``x`` (``(1, size, size)`` in [0, 1]), ``left`` and ``right`` (the two labels).

    Args:
        size: the side of the resized image (28 as in the paper; 36 keeps the canvas as is).
        shift: the largest shift of each digit, in pixels (0-4).
        copies: samples per digit.
        Other args: those of :class:`~lightning_multiloss.app.data.SplitDataModule`.
    """

    def __init__(self, size: int = 28, shift: int = 4, copies: int = 1, **split: object) -> None:
        super().__init__(**split)  # type: ignore[arg-type]
        if not 8 <= size <= 36:
            raise MultiLossError(f"MultiMNISTDataModule: size must be in [8, 36], got {size}")
        if not 0 <= shift <= 4:
            raise MultiLossError(f"MultiMNISTDataModule: shift must be in [0, 4], got {shift}")
        if copies < 1:
            raise MultiLossError(f"MultiMNISTDataModule: copies must be >= 1, got {copies}")
        self.size = size
        self.shift = shift
        self.copies = copies
        self.input_shape = (1, size, size)

    def split_settings(self) -> dict[str, Any]:
        return {**super().split_settings(), "copies": self.copies}  # copies sets the number of samples

    def source_count(self) -> int:
        return MNIST_DIGITS

    def build_from(self, sources: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        images, labels = load_mnist_5k()
        first = sources.repeat(self.copies)
        second = sources[torch.randint(0, max(len(sources), 1), (len(first),), generator=generator)]
        n = len(first)
        s = self.shift
        d1 = torch.randint(0, s + 1, (n, 2), generator=generator)  # top-left digit at [0, s]
        d2 = torch.randint(8 - s, 9, (n, 2), generator=generator)  # bottom-right digit at [8 - s, 8]
        canvas = torch.zeros(n, 36, 36)
        for i in range(n):
            r, c = int(d1[i, 0]), int(d1[i, 1])
            canvas[i, r : r + 28, c : c + 28] = images[first[i]]
            r, c = int(d2[i, 0]), int(d2[i, 1])
            window = canvas[i, r : r + 28, c : c + 28]
            torch.maximum(window, images[second[i]], out=window)
        x = canvas.unsqueeze(1)
        if self.size != 36 and n:  # (interpolate refuses an empty batch)
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return {"x": x.clamp_(0.0, 1.0), "left": labels[first], "right": labels[second]}


class MultiMNISTDataModule(MultiMNISTDataModuleMixin, SplitDataModule):
    """:class:`MultiMNISTDataModuleMixin` on ``lightning.pytorch``."""
