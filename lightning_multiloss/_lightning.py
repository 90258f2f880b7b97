"""The one place where lightning-multiloss reaches into Lightning beyond its documented API.

Each function here reads something Lightning does not document for users; each is covered by
``tests/test_lightning_reach.py``, which fails when a Lightning release changes what it reads.
Nothing here imports Lightning: the functions work for ``pytorch_lightning`` and
``lightning.pytorch`` alike.
"""

from __future__ import annotations

from typing import Any


def lightning_package(obj: Any) -> str:
    """``"pytorch_lightning"`` or ``"lightning.pytorch"``: the package of a module's or callback's classes.

    The two packages are separate copies, and a Trainer of one refuses modules and callbacks of
    the other.
    """
    for cls in type(obj).__mro__:
        root = cls.__module__
        if root == "pytorch_lightning" or root.startswith("pytorch_lightning."):
            return "pytorch_lightning"
        if root == "lightning" or root.startswith("lightning."):
            return "lightning.pytorch"
    return "pytorch_lightning"


def is_lightning_class(cls: type) -> bool:
    """Whether ``cls`` is defined by either Lightning package (not by a package named ``lightning_*``)."""
    return cls.__module__.split(".", 1)[0] in ("pytorch_lightning", "lightning")


def is_lightning_module_class(cls: type) -> bool:
    """Whether ``cls`` is the ``LightningModule`` class of either package."""
    return cls.__name__ == "LightningModule" and is_lightning_class(cls)


def trainer_of(module: Any) -> Any | None:
    """The Trainer a LightningModule is attached to, or ``None`` (``module.trainer`` raises then)."""
    return getattr(module, "_trainer", None)


def trainer_stage(trainer: Any) -> str:
    """What the Trainer is running: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``."""
    fn = trainer.state.fn
    return str(getattr(fn, "value", fn))


def batches_processed(trainer: Any) -> int | None:
    """The batches of the current training epoch that the Trainer has trained on (``None`` where a
    Lightning version does not say).

    Lightning's progress counter: a batch counts once its optimizer step (or accumulation) is
    done, before ``on_train_batch_end``; a checkpoint written during a batch (an exception's, a
    signal's) counts it out, and the resumed run trains on it again.
    """
    progress = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "batch_progress", None)
    processed = getattr(getattr(progress, "current", None), "processed", None)
    return processed if isinstance(processed, int) else None


def is_logging_step(trainer: Any | None) -> bool:
    """Whether the Trainer writes this training step's logged values to its loggers.

    Lightning decides it in its logger connector (``log_every_n_steps``, the last batch, a
    stopping run); ``True`` outside a Trainer or where a Lightning version lacks the property.
    """
    connector = getattr(trainer, "_logger_connector", None)
    if trainer is None or connector is None:
        return True
    try:
        return bool(connector.should_update_logs or trainer.fast_dev_run)
    except (AttributeError, NotImplementedError):  # another Lightning version: log every step
        return True


def scales_float16_losses(trainer: Any | None) -> bool:
    """Whether the Trainer's precision scales the loss before its backward (float16 mixed precision).

    Read from the documented ``trainer.precision`` and the precision plugin's ``scaler`` (a
    ``torch.amp.GradScaler`` under ``"16-mixed"``); ``False`` outside a Trainer.
    """
    if trainer is None:
        return False
    plugin = getattr(trainer, "precision_plugin", None)
    return getattr(plugin, "scaler", None) is not None or str(getattr(trainer, "precision", "")) in ("16-mixed", "16")
