"""Localisation and classification on one input: a digit placed at a random position on a canvas."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_multiloss.app.data._base import SplitDataModule, SplitDataModuleMixin
from lightning_multiloss.app.data.digits import DIGIT_IMAGES, load_digits_tensors
from lightning_multiloss.errors import MultiLossError


class LocClsDataModuleMixin(SplitDataModuleMixin):
    """Each of the 1797 8×8 digits pasted at a random position of a ``canvas``×``canvas`` image.

    Batch keys: ``x`` (``(1, canvas, canvas)`` in [0, 1]), ``loc`` (the cell of the digit's centre
    on a ``grid``×``grid`` grid over the canvas, as one index ``row * grid + col``: the target of
    a heat-map head with one logit per cell), ``pos`` (the centre's ``(row, col)`` in pixels),
    ``cls`` (1 if the digit is 5 or more, else 0) and ``digit`` (0-9).

    Args:
        canvas: the side of the canvas in pixels (>= 8).
        grid: the side of the localisation grid; ``canvas`` must be a multiple of it (the
            default 12 on a 24-pixel canvas matches a conv trunk with one 2×2 pooling).
        copies: how many placements of each digit (more samples, same digits; all of a digit's
            placements fall in one split).
        Other args: those of :class:`~lightning_multiloss.app.data.SplitDataModule`.

    Example:
        >>> dm = LocClsDataModule(batch_size=2)
        >>> dm.setup()
        >>> batch = next(iter(dm.train_dataloader()))
        >>> tuple(batch["x"].shape), tuple(batch["loc"].shape), int(batch["loc"].max()) < 144
        ((2, 1, 24, 24), (2,), True)
    """

    def __init__(self, canvas: int = 24, grid: int = 12, copies: int = 1, **split: object) -> None:
        super().__init__(**split)  # type: ignore[arg-type]
        if canvas < 8:
            raise MultiLossError(f"LocClsDataModule: canvas must be >= 8 (the digits are 8x8), got {canvas}")
        if grid < 1 or canvas % grid:
            raise MultiLossError(f"LocClsDataModule: canvas ({canvas}) must be a multiple of grid ({grid})")
        if copies < 1:
            raise MultiLossError(f"LocClsDataModule: copies must be >= 1, got {copies}")
        self.canvas = canvas
        self.grid = grid
        self.copies = copies
        self.input_shape = (1, canvas, canvas)

    def target_classes(self) -> dict[str, int]:
        return {"loc": self.grid**2}  # the cells of the grid

    def split_settings(self) -> dict[str, Any]:
        return {**super().split_settings(), "copies": self.copies}  # copies sets the number of samples

    def source_count(self) -> int:
        return DIGIT_IMAGES  # split before the copies: a digit's placements stay in one split

    def build_from(self, sources: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        images, labels = load_digits_tensors()
        images, labels = images[sources].repeat(self.copies, 1, 1), labels[sources].repeat(self.copies)
        n, size = len(images), self.canvas
        top = torch.randint(0, size - 8 + 1, (n,), generator=generator)
        left = torch.randint(0, size - 8 + 1, (n,), generator=generator)
        x = torch.zeros(n, 1, size, size)
        for i in range(n):
            x[i, 0, top[i] : top[i] + 8, left[i] : left[i] + 8] = images[i]
        centre = torch.stack([top, left], dim=1).float() + 3.5  # the middle of the 8x8 box
        cell = (centre * self.grid / size).long().clamp_(0, self.grid - 1)
        return {
            "x": x,
            "loc": cell[:, 0] * self.grid + cell[:, 1],
            "pos": centre,
            "cls": (labels >= 5).long(),
            "digit": labels,
        }


class LocClsDataModule(LocClsDataModuleMixin, SplitDataModule):
    """:class:`LocClsDataModuleMixin` on ``lightning.pytorch``."""
