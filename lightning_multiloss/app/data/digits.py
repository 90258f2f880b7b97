"""The UCI handwritten ``digits`` (as scikit-learn ships them): one 8×8 image, a class head, an image head and a
regression head."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_multiloss.app.data._base import SplitDataModule, SplitDataModuleMixin, shipped_arrays

DIGIT_IMAGES = 1797
"""The images in ``arrays/digits.npz``."""


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """The 1797 images as ``(N, 8, 8)`` floats in [0, 1] and their labels (``arrays/digits.npz``)."""
    arrays = shipped_arrays("digits")
    images = torch.from_numpy(arrays["images"]).float() / 16.0
    return images, torch.from_numpy(arrays["labels"]).long()


def vertical_centre(images: Tensor) -> Tensor:
    r"""The row of the ink's centre of mass, relative to the middle of the image (positive: lower).

    .. math:: c = \frac{\sum_{r,k} r\,I_{rk}}{\sum_{r,k} I_{rk}} - \frac{H - 1}{2}

    Example:
        >>> import torch
        >>> image = torch.zeros(1, 8, 8)
        >>> image[0, 6, 2:5] = 1.0
        >>> vertical_centre(image)
        tensor([2.5000])
    """
    rows = torch.arange(images.shape[-2], dtype=images.dtype)
    mass = images.sum(dim=-1)  # (N, H)
    return (mass * rows).sum(dim=-1) / mass.sum(dim=-1).clamp_min(1e-8) - (images.shape[-2] - 1) / 2.0


class DigitsDataModuleMixin(SplitDataModuleMixin):
    """The 1797 handwritten digits of scikit-learn's ``load_digits`` (8×8, shipped with this package).

    Batch keys: ``x`` (64 pixel values in [0, 1], the input and the reconstruction target),
    ``digit`` (the class, 0-9), ``centre`` (the vertical centre of mass of the ink, in pixels
    from the middle row, positive when lower; within about ±1.2), ``ink`` (the mean ink
    intensity, in [0, 1]) and ``parity`` (0.0: even digit, 1.0: odd; a float of shape (1,),
    the target of a ``binary`` task).

    Args: those of :class:`~lightning_multiloss.app.data.SplitDataModule`.

    The code of :class:`DigitsDataModule` (``lightning.pytorch``) and of
    ``lightning_multiloss.app.pl.DigitsDataModule`` (``pytorch_lightning``).

    Example:
        >>> dm = DigitsDataModule(batch_size=4)
        >>> dm.setup()
        >>> batch = next(iter(dm.train_dataloader()))
        >>> {key: tuple(value.shape) for key, value in sorted(batch.items())}
        {'centre': (4, 1), 'digit': (4,), 'ink': (4, 1), 'parity': (4, 1), 'x': (4, 64)}
    """

    input_shape = (64,)

    def build(self, generator: torch.Generator) -> dict[str, Tensor]:
        images, labels = load_digits_tensors()
        return {
            "x": images.reshape(len(images), -1),
            "digit": labels,
            "centre": vertical_centre(images).unsqueeze(1),
            "ink": images.mean(dim=(1, 2)).unsqueeze(1),
            "parity": (labels % 2).float().unsqueeze(1),
        }


class DigitsDataModule(DigitsDataModuleMixin, SplitDataModule):
    """:class:`DigitsDataModuleMixin` on ``lightning.pytorch``."""
