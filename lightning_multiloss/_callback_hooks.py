"""The Callback's behaviour, written once for both Lightning packages (no Lightning import)."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from lightning_multiloss._dist import all_reduce_sum
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.weighting import Progress, Weighting

log = logging.getLogger(__name__)


class LossWeightingHooks:
    """Schedules, constrains and records the weights of a ``MultiTaskMixin`` module.

    - before each training batch: hands the strategy the training :class:`Progress`
      (optimizer steps, epochs, planned steps), which sets scheduled weights;
    - after each optimizer step (not each batch: gradient accumulation is respected): the
      strategy's constraints and post-step updates (``learnable`` clips alpha here);
    - at each training epoch's end: the epoch-mean task losses, averaged over all processes,
      for the strategies that use them;
    - records the weights every ``every_n_steps`` optimizer steps (default: the Trainer's
      ``log_every_n_steps``), keeps that record in checkpoints as plain lists, and at the end
      of fit writes it as ``<filename>.csv`` and ``<filename>.png`` into the logger's folder.

    Args:
        every_n_steps: record the weights every this many optimizer steps.
        plot: write the PNG plot (the CSV is always written).
        filename: the stem of the files written at the end of fit.
    """

    def __init__(self, every_n_steps: int | None = None, plot: bool = True, filename: str = "loss_weights") -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise MultiLossError(f"LossWeightingCallback: every_n_steps must be >= 1, got {every_n_steps}")
        if not filename or os.sep in filename:
            raise MultiLossError(f"LossWeightingCallback: filename must be a plain file stem, got {filename!r}")
        self.every_n_steps = every_n_steps
        self.plot = plot
        self.filename = filename
        self.task_names: list[str] = []
        self.steps: list[int] = []
        self.epochs: list[int] = []
        self.weights: list[list[float]] = []
        self._last_step = 0
        self._total_steps: int | None = None

    # Lightning names the state by class; both packages' classes share this key.
    @property
    def state_key(self) -> str:
        return "LossWeightingCallback"

    @staticmethod
    def _weighting(pl_module: Any) -> Weighting:
        weighting = getattr(pl_module, "weighting", None)
        if not isinstance(weighting, Weighting):
            raise MultiLossError(
                f"LossWeightingCallback needs a MultiTaskMixin module that called configure_multitask(); "
                f"{type(pl_module).__name__} has no weighting"
            )
        return weighting

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        weighting = self._weighting(pl_module)
        pl_module._mt_callback_attached = True
        if self.task_names and self.task_names != list(weighting.task_names):
            raise MultiLossError(
                f"LossWeightingCallback recorded tasks {self.task_names}, the model has {list(weighting.task_names)}"
            )
        self.task_names = list(weighting.task_names)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # A learnable weight that no optimizer steps would silently stay at its initial value.
        in_optimizer = {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]}
        missing = [
            f"weighting.{name}"
            for name, p in self._weighting(pl_module).named_parameters()
            if p.requires_grad and id(p) not in in_optimizer
        ]
        if missing:
            raise MultiLossError(
                f"the learnable weighting parameter(s) {missing} are in no optimizer: build the optimizer from "
                "self.parameters() in configure_optimizers (or add self.weighting.parameters() to a param group)"
            )

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Synchronise with the (possibly restored) step counter; this resets no schedule state.
        self._last_step = trainer.global_step
        total = trainer.estimated_stepping_batches
        self._total_steps = int(total) if isinstance(total, int | float) and math.isfinite(total) else None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        weighting = self._weighting(pl_module)
        weighting.set_progress(Progress(trainer.global_step, trainer.current_epoch, self._total_steps))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:  # an accumulation batch: no optimizer step yet
            return
        self._last_step = step
        if pl_module._mt_step_skipped:
            return
        self._weighting(pl_module).after_optimizer_step()
        every = self.every_n_steps or trainer.log_every_n_steps or 1
        used = pl_module._mt_last_weights
        if used is not None and (step % every == 0 or step == 1):
            self.steps.append(step)
            self.epochs.append(trainer.current_epoch)
            self.weights.append([float(v) for v in used.tolist()])

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        weighting = self._weighting(pl_module)
        if not weighting.uses_epoch_losses:
            return
        total = all_reduce_sum(pl_module._mt_epoch_loss_sum)
        count = all_reduce_sum(pl_module._mt_epoch_loss_count)
        if float(count) > 0:
            weighting.on_epoch_losses(total / count)
        pl_module._mt_epoch_loss_sum.zero_()
        pl_module._mt_epoch_loss_count.zero_()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        # `trainer.log_dir` broadcasts under DDP: every rank must ask for it, not only rank 0.
        folder = trainer.log_dir or trainer.default_root_dir
        if not trainer.is_global_zero or not self.steps:
            return
        from lightning_multiloss._trajectory import write_trajectory

        paths = write_trajectory(
            os.path.join(folder, self.filename), self.task_names, self.steps, self.epochs, self.weights, self.plot
        )
        log.info("loss-weight trajectory written to %s", ", ".join(paths))

    def state_dict(self) -> dict[str, Any]:
        return {
            "task_names": list(self.task_names),
            "steps": list(self.steps),
            "epochs": list(self.epochs),
            "weights": [list(row) for row in self.weights],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.task_names = list(state_dict["task_names"])
        self.steps = list(state_dict["steps"])
        self.epochs = list(state_dict["epochs"])
        self.weights = [list(row) for row in state_dict["weights"]]
