"""The Callback's behaviour, written once for both Lightning packages (no Lightning import)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from lightning_multiloss._dist import all_gather_object, is_distributed
from lightning_multiloss._lightning import batches_processed, is_lightning_class, lightning_package, trainer_stage
from lightning_multiloss._numbers import whole_number
from lightning_multiloss._run_recorder import RunRecorder, active_recorder, make_folder
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.sampling import ResumableDataLoader
from lightning_multiloss.weighting import GramianWeighting, Progress, Weighting

log = logging.getLogger(__name__)

# Per-step hooks that Lightning dispatches to every callback at every step (through a profiler
# context, about 2 µs each) and that this callback leaves to Lightning's base class.
_IDLE_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad")


_LONGEST_STEM = 250  # a file name's 255 bytes, less ".csv" or ".png"


def record_folder(trainer: Any) -> str:
    """The folder of the Callback's files: the first logger's own run folder, or the Trainer's
    ``default_root_dir`` without a logger.

    A CSV or TensorBoard logger's ``log_dir`` (as ``trainer.log_dir``); for another logger
    (W&B, MLflow), whose ``save_dir`` every run shares, ``<save_dir>/<name>/<version>``, where
    Lightning's ``ModelCheckpoint`` puts its ``checkpoints`` folder: in the shared folder each run
    would overwrite the last one's files.
    """
    if not trainer.loggers:
        return str(trainer.default_root_dir)
    logger = trainer.loggers[0]
    per_run = ("CSVLogger", "TensorBoardLogger")
    if any(cls.__name__ in per_run and is_lightning_class(cls) for cls in type(logger).__mro__):
        return str(logger.log_dir)
    save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return os.path.join(str(save_dir), str(logger.name), version)  # str(name) as Lightning's, "None" included


def _raised_by_every_process(trainer: Any, failure: MultiLossError | None) -> None:
    """Raise rank 0's ``failure`` (of a file only it writes) on every process, or return: one
    process that stopped alone would leave the others waiting in their next collective."""
    message = trainer.strategy.broadcast(None if failure is None else str(failure)) if trainer.world_size > 1 else None
    if failure is not None:
        raise failure
    if message is not None:
        raise MultiLossError(message)


class LossWeightingHooks:
    """Schedules, constrains and records the weights of a ``MultiTaskMixin`` module.

    - before each training batch: hands the strategy the training :class:`Progress`
      (optimizer steps, epochs, planned steps), which sets scheduled weights;
    - after each optimizer step (not each batch: gradient accumulation is respected): the
      strategy's constraints and post-step updates (``learnable`` clips alpha here);
    - at each training epoch's end: the module's non-finite check
      (``check_finite_losses()``), the strategy's epoch hook (``end_training_epoch()``: DWA and
      STCH take their epoch-mean losses there), and the module's epoch-mean task losses
      (``end_training_epoch()``);
    - records the weights used at every ``every_n_steps``-th optimizer step without waiting
      for the device (the values are read only when a checkpoint or the plot is written); past
      ``max_points`` records it keeps every other one and doubles the interval, so a week-long
      run keeps a bounded, evenly spaced record. The record goes into checkpoints as plain lists,
      and at the end of fit (or when it stops on an exception, without the end row) into
      ``<filename>.csv`` and ``<filename>.png`` in the first logger's run folder (:func:`record_folder`).
      The files end with one more row, numbered one step past the last, that holds the weights
      in force when training ended (:attr:`end_weights`: what a further step would use, e.g. the
      learnable alpha after its last update); the plot also goes to the TensorBoard, MLflow
      and W&B loggers in use (as a figure, an artifact, an image);
    - before the first step, the planned length of training (optimizer steps, epochs) is handed
      to the strategy's ``check_plan``: a schedule that leaves its range anywhere in the run
      fails then, not when training reaches it. Where the weights depend on the planned length
      (:attr:`~lightning_multiloss.weighting.Weighting.follows_planned_length`, e.g.
      ``unit="fraction"`` schedules), a resumed run keeps the planned number of steps that
      training started with (it is in the checkpoint), so that the schedule continues without a
      jump when ``max_epochs`` grows; ``replan_on_resume=True`` plans anew from the resumed
      Trainer instead; either way a change is logged. Other strategies take the new length;
    - before the first step and at each epoch's start, it lets each
      :class:`~lightning_multiloss.ResumableDataLoader` among the train loaders count the batches
      Lightning has trained on (``follow_training``), so that a checkpoint written during a batch
      leaves that batch to the resumed run; it stops them at the end of fit and on an exception;
    - writes the run's ``result.json`` for ``multiloss-report`` (rank 0): with ``result_file``, or
      in a Hydra job with :class:`~lightning_multiloss.hydra_callbacks.RunResultCallback`: the
      tasks and their metric directions when the run starts, the final validation and test
      metrics (``<stage>/<metric>/<task>`` of ``trainer.callback_metrics``) and the weights when
      the fit and the test end, ``"failed"`` or ``"interrupted"`` when they stop on an error.

    Lightning skips a callback's hook that is not callable: the per-step hooks this callback does
    nothing in are ``None`` on the instance, so that they cost no dispatch (a subclass's own
    override of one is kept). A subclass that overrides a hook calls ``super()`` in it.

    It talks to the module through the mixin's documented members only: ``weighting``,
    ``optimizer_step_skipped``, ``check_finite_losses``, ``end_training_epoch``,
    ``drop_training_epoch``, ``running_epoch_sums`` and ``running_training_metrics``, and records
    the strategy's ``last_weights``.

    Args:
        every_n_steps: record the weights every this many optimizer steps (to start with).
        max_points: the most records kept (at least 2).
        plot: write the PNG plot (the CSV is always written).
        filename: the stem of the files written at the end of fit.
        replan_on_resume: on resume, plan the schedules over the resumed Trainer's length (the
            steps taken and those left at its steps per epoch, which another accumulation or batch
            size changes) instead of the length training started with.
        result_file: write the run result there (``result.json``): relative to the Hydra job's
            output folder in a Hydra app, else to the Trainer's ``default_root_dir``. ``None``:
            only when a ``RunResultCallback`` runs the Hydra job.
    """

    # The state of one run (set by _start_anew).
    _own_recorder: RunRecorder | None
    task_names: list[str]
    _records: list[tuple[int, int, Tensor]]  # (optimizer step, epoch, weights used then): tensors until read
    _stride: int
    _last_step: int
    _fit_started_at: int  # the global step at which this fit started training
    _total_steps: int | None
    _total_epochs: int | None
    _restored_plan: int | None  # the planned steps of a checkpoint being resumed
    _end: tuple[int, int, Tensor] | None  # the weights in force when training ended
    # The training epoch begun and not yet ended (its epoch-end hooks not run), and that of a
    # checkpoint being resumed.
    _open_epoch: int | None
    _restored_open_epoch: int | None
    _plans: list[int]  # the planned lengths the weights followed (see `plans`)

    def __init__(
        self,
        every_n_steps: int = 1,
        max_points: int = 2000,
        plot: bool = True,
        filename: str = "loss_weights",
        replan_on_resume: bool = False,
        result_file: str | os.PathLike[str] | None = None,
    ) -> None:
        _check_integer("every_n_steps", every_n_steps, 1)
        _check_integer("max_points", max_points, 2)
        for name, flag in (("plot", plot), ("replan_on_resume", replan_on_resume)):
            if not isinstance(flag, bool):  # bool("false") is True
                raise MultiLossError(f"LossWeightingCallback: {name} must be true or false, got {flag!r}")
        if (
            not isinstance(filename, str)
            or not filename.strip(".")  # "", ".", "..", or only dots: a path component or a hidden nothing
            or any(c in filename for c in (os.sep, os.altsep or os.sep, "\0"))
            or len(os.fsencode(filename)) > _LONGEST_STEM
        ):
            raise MultiLossError(
                f"LossWeightingCallback: filename must be a plain file stem (no folder, at most {_LONGEST_STEM} "
                f"bytes), got {filename!r}"
            )
        if result_file is not None and (not isinstance(result_file, str | os.PathLike) or not str(result_file)):
            raise MultiLossError(f"LossWeightingCallback: result_file must be a file path or None, got {result_file!r}")
        self.every_n_steps = int(every_n_steps)
        self.max_points = int(max_points)
        self.plot = plot
        self.filename = filename
        self.result_file = None if result_file is None else os.fspath(result_file)
        self.replan_on_resume = replan_on_resume
        self._sets_progress = True  # whether the strategy's set_progress does something (read in setup)
        self._constraint_hooks: list[RemovableHandle] = []  # the strategy's constrain, in its optimizers' steps
        self._val_loaders_checked = False  # whether this fit's monitors were checked against its validation loaders
        self._record_write_failed = False  # whether writing the files at the end of this fit failed
        self._start_anew()
        for hook in _IDLE_STEP_HOOKS:
            self._set_dispatched(hook, False)

    def _set_dispatched(self, hook: str, dispatched: bool) -> None:
        """Lightning skips a callback's hook that is not callable: a hook that does nothing here
        (Lightning's own no-op, or ours while its strategy needs nothing from it) is shadowed by
        ``None`` on the instance, so that it costs no dispatch at each step. A hook a subclass
        overrides is left alone."""
        owner = next((cls for cls in type(self).__mro__ if hook in vars(cls)), None)
        if owner is not None and (is_lightning_class(owner) or owner is LossWeightingHooks):
            if dispatched:
                vars(self).pop(hook, None)
            else:
                setattr(self, hook, None)

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
        names = [task.name for task in pl_module.tasks]
        if list(weighting.task_names) != names:
            # An attribute assignment (module.weighting = DWA()) skips what configure_multitask does.
            raise MultiLossError(
                f"{type(pl_module).__name__}'s weighting {weighting.name!r} is not bound to its tasks {names}: "
                "give a new weighting with self.configure_multitask(tasks, weighting), not by assigning "
                "the weighting attribute"
            )
        self._check_one_of_the_right_package(trainer, pl_module)
        if stage == "fit" and trainer.global_step == 0:
            # A fit from the start (a resumed one gets its records back from the checkpoint after
            # this): one callback passed to several Trainers (a sweep's loop) records each run alone.
            self._start_anew()
            if weighting.uses_epoch_losses:
                # Loaded weights may bring the running sums of an epoch of another run.
                weighting.epoch_losses.clear()
        if self.task_names and self.task_names != list(weighting.task_names):
            raise MultiLossError(
                f"LossWeightingCallback recorded tasks {self.task_names}, the model has {list(weighting.task_names)}"
            )
        self.task_names = list(weighting.task_names)
        self._sets_progress = type(weighting).set_progress is not Weighting.set_progress  # the base's does nothing
        self._set_dispatched("on_train_batch_start", self._sets_progress)
        recorder = self._recorder(trainer)
        if recorder is not None:
            recorder.writes = recorder.writes and trainer.is_global_zero
            tasks = {task.name: list(task.metrics.items()) for task in pl_module.tasks}
            recorder.set_model(tasks, weighting.name or type(weighting).__name__)
            if stage == "fit":
                recorder.fitting_again()
            if recorder.result.status == "running":
                recorder.write()

    def _start_anew(self) -> None:
        """The state of one run: a new Callback's, and a fit's from the start."""
        self._own_recorder = None  # its file is in the Trainer's folder: found again for this one
        self.task_names = []
        self._records = []
        self._stride = self.every_n_steps
        self._last_step = 0
        self._fit_started_at = 0
        self._total_steps = None
        self._total_epochs = None
        self._restored_plan = None
        self._end = None
        self._open_epoch = None
        self._restored_open_epoch = None
        self._plans = []

    def _recorder(self, trainer: Any) -> RunRecorder | None:
        """The run result to fill in: this callback's own (``result_file``), else the Hydra job's, else none."""
        if self._own_recorder is not None:
            return self._own_recorder
        job = active_recorder()
        if self.result_file is None:
            return job
        from lightning_multiloss.hydra_callbacks import in_hydra_job, job_recorder

        if in_hydra_job():
            own = job_recorder(self.result_file)
        else:
            own = RunRecorder(os.path.join(trainer.default_root_dir, os.path.expanduser(self.result_file)))
        if job is not None and job.path == own.path:  # the Hydra callback writes the same file
            return job
        if job is not None:
            # The job's own result would never be filled (and the report would count this one
            # run twice, once as failed).
            raise MultiLossError(
                f"LossWeightingCallback(result_file={self.result_file!r}) writes {own.path}, and the Hydra "
                f"run_result callback this run's {job.path}: one run would be recorded twice; keep one of "
                "them (or give result_file the job's file name)"
            )
        self._own_recorder = own
        return own

    @staticmethod
    def _check_one_of_the_right_package(trainer: Any, pl_module: Any) -> None:
        # A Trainer calls the hooks of the other package's callback too, and the mixin adds one of
        # the module's package beside it: the weighting would be stepped twice per optimizer step.
        # (Two callbacks of one package are refused by Lightning: they share a state key.)
        ours = [cb for cb in trainer.callbacks if isinstance(cb, LossWeightingHooks)]
        package = lightning_package(pl_module)
        for cb in ours:
            if lightning_package(cb) != package:
                where = "lightning_multiloss.lightning" if package == "lightning.pytorch" else "lightning_multiloss"
                raise MultiLossError(
                    f"{type(pl_module).__name__} is a {package} module, but the Trainer has the LossWeightingCallback "
                    f"of the other Lightning package ({type(cb).__module__}); use "
                    f"`from {where} import LossWeightingCallback`, or pass none: the mixin adds the right one"
                )

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # A learnable weight that no optimizer steps would silently stay at its initial value.
        weighting = self._weighting(pl_module)
        in_optimizer = {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]}
        missing = [
            f"weighting.{name}"
            for name, p in weighting.named_parameters()
            if p.requires_grad and id(p) not in in_optimizer
        ]
        if missing:
            raise MultiLossError(
                f"the learnable weighting parameter(s) {missing} are in no optimizer: build the optimizer from "
                "self.parameters() in configure_optimizers (or add self.weighting.parameters() to a param group)"
            )
        self._constrain_in_optimizer_steps(trainer, weighting)
        self._follow_renamed_tasks(weighting)
        self._val_loaders_checked = False
        self._record_write_failed = False
        failure: MultiLossError | None = None
        if trainer.is_global_zero:
            self._warn_of_monitors_not_logged(trainer, pl_module)
            if not trainer.fast_dev_run:
                failure = self._record_folder_problem(trainer)
        _raised_by_every_process(trainer, failure)

    def _follow_renamed_tasks(self, weighting: Weighting) -> None:
        """A run resumed into other task names (which the mixin loads by position, with a warning)
        records under the model's names: the restored record's columns are its tasks by position;
        a record of another number of tasks cannot be, and is left (the files start at the resume)."""
        names = list(weighting.task_names)
        if not self.task_names or self.task_names == names:
            return
        if len(self.task_names) != len(names):
            log.warning(
                "LossWeightingCallback: the checkpoint's record of the weights is of the tasks %s, the model has %s: "
                "it is left, and the record starts at the resumed step",
                self.task_names,
                names,
            )
            self._records = []
        self.task_names = names

    def _constrain_in_optimizer_steps(self, trainer: Any, weighting: Weighting) -> None:
        """Register ``weighting.constrain`` as a step post-hook of each optimizer holding one of its
        parameters, for this fit: the other callbacks' batch-end hooks (an EMA), which Lightning
        runs before this one's, and the code after ``opt.step()`` see the parameters in their domain."""
        self._release_constraints()
        if type(weighting).constrain is Weighting.constrain:  # the base's does nothing
            return
        own = {id(p) for p in weighting.parameters()}

        def constrain(optimizer: Any, args: Any, kwargs: Any) -> None:
            weighting.constrain()

        for optimizer in trainer.optimizers:
            if not any(id(p) in own for group in optimizer.param_groups for p in group["params"]):
                continue
            try:
                self._constraint_hooks.append(optimizer.register_step_post_hook(constrain))
            except (AttributeError, TypeError):
                # An optimizer of another kind (Lightning takes any with step and param_groups), or
                # a wrapper that skipped Optimizer.__init__ (no hook dicts): on_train_batch_end's
                # call constrains its steps, as it does those of a step that never runs the hooks.
                continue

    def _release_constraints(self) -> None:
        for handle in self._constraint_hooks:
            handle.remove()
        self._constraint_hooks = []

    def _record_folder_problem(self, trainer: Any) -> MultiLossError | None:
        """Make the folder of the files written at the end of fit now, so that a path the system
        refuses stops the run before training, not after it: the error, or ``None``."""
        folder = record_folder(trainer)
        try:
            make_folder(folder, f"{self.filename}.csv and {self.filename}.png")
        except MultiLossError as error:
            return MultiLossError(f"LossWeightingCallback: {error}")
        if not os.access(folder, os.W_OK):
            return MultiLossError(f"LossWeightingCallback: the folder {folder!r} for {self.filename}.csv is read-only")
        return None

    @staticmethod
    def _warn_of_monitors_not_logged(trainer: Any, pl_module: Any, val_dataloaders: int | None = None) -> None:
        """Say before the first step which callback monitors a key that would find no value (a typo
        fails only at the first validation's end, in Lightning's words). A warning: the module may
        log the key itself. With ``val_dataloaders`` (known once the loaders are loaded), only what
        their number adds: a validation key without a loader's suffix, or with one."""
        for callback in trainer.callbacks:
            monitor = getattr(callback, "monitor", None)
            if not isinstance(monitor, str):
                continue
            problem = pl_module.monitor_problem(monitor, val_dataloaders)
            if problem is not None and (val_dataloaders is None or pl_module.monitor_problem(monitor) is None):
                log.warning(
                    "%s monitors %r: %s (unless your module logs it itself)", type(callback).__name__, monitor, problem
                )

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        # The validation loaders are loaded now (at the sanity check, before the first step, by
        # default): with several, every validation key has a loader's suffix; with one, none has.
        if self._val_loaders_checked or trainer_stage(trainer) != "fit":
            return
        self._val_loaders_checked = True
        if trainer.is_global_zero:
            self._warn_of_monitors_not_logged(trainer, pl_module, len(trainer.num_val_batches))

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Synchronise with the (possibly restored) step counter; this resets no schedule state.
        self._last_step = self._fit_started_at = trainer.global_step
        self._end = None
        self._follow_training(trainer, partial(batches_processed, trainer))
        planned = fit_steps = _planned_steps(trainer)
        restored, self._restored_plan = self._restored_plan, None
        if restored is None and trainer.global_step > 0:
            restored = self._total_steps  # the same Trainer fitting on (e.g. with a larger max_epochs): as a resume
        if restored is not None:
            # The epoch open when training stopped (restored, or this Callback's own where the same
            # Trainer fits on); None: it stopped at an epoch's end.
            was_open = self._restored_open_epoch if self._restored_open_epoch is not None else self._open_epoch
            planned = fit_steps = _planned_steps_after(trainer, planned, was_open == trainer.current_epoch)
        follows_plan = self._weighting(pl_module).follows_planned_length
        if restored is not None and planned != restored and follows_plan:
            keep = not self.replan_on_resume
            (log.warning if trainer.is_global_zero else log.debug)(  # once, not once per DDP process
                "LossWeightingCallback: training started with %s optimizer steps planned, the resumed or continued "
                "fit plans %s; scheduled weights %s",
                restored,
                planned,
                f"keep the planned {restored} (fractions of training past 1 hold the schedules' end values; "
                "LossWeightingCallback(replan_on_resume=True) plans anew)"
                if keep
                else f"follow the new plan of {planned} steps (a fraction-based schedule jumps)",
            )
            if keep:
                planned = restored
        self._total_steps = planned
        self._total_epochs = _planned_epochs(trainer, planned)
        if follows_plan and planned is not None and self._plans[-1:] != [planned]:
            self._plans.append(planned)
        open_epoch, self._restored_open_epoch = self._restored_open_epoch, None
        if open_epoch is not None and open_epoch < trainer.current_epoch:
            # A checkpoint written after the epoch's last batch and before its end (a step-interval
            # checkpoint, or one at validation): Lightning resumes at the next epoch and does not run
            # the epoch-end hooks it missed, so the strategy ends that epoch here (DWA and STCH take
            # its restored mean losses; on every process, as at an epoch's end).
            self._weighting(pl_module).end_training_epoch()
            pl_module.drop_training_epoch()
            (log.warning if trainer.is_global_zero else log.debug)(
                "LossWeightingCallback: resumed from a checkpoint written after the last batch of epoch %s, before "
                "its end. Lightning saves the checkpoints of the epoch that follows as if it had not started: a run "
                "resumed again from one of them repeats that epoch from its first batch (more steps than an "
                "uninterrupted run). Resume from this run's epoch-end checkpoints, or write step checkpoints at "
                "an interval that does not divide the epoch's steps",
                open_epoch,
            )
        # Open from here: a fit restarted in an epoch (or at its start, after a checkpoint at the
        # previous epoch's last batch) runs no on_train_epoch_start for it.
        self._open_epoch = trainer.current_epoch
        self._weighting(pl_module).check_plan(dataclasses.replace(self._progress(trainer), fit_steps=fit_steps))

    def _progress(self, trainer: Any) -> Progress:
        """Where training stands, with the plan made at its start."""
        return Progress(trainer.global_step, trainer.current_epoch, self._total_steps, self._total_epochs)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._sets_progress:  # the module's weighting was checked in setup
            pl_module.weighting.set_progress(self._progress(trainer))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:  # an accumulation batch: no optimizer step yet
            return
        self._last_step = step
        if pl_module.optimizer_step_skipped(step):
            return
        weighting: Weighting = pl_module.weighting  # checked in setup
        # Again after the batch (a no-op where the step hooks ran): for the steps no hook saw (an
        # optimizer replaced during the fit, a step of an instance's own, one of another kind).
        weighting.constrain()
        weighting.after_optimizer_step()
        if step % self._stride == 0 or step == 1:
            # A reference, no wait: each training step stores its weights in a new tensor.
            self._records.append((step, trainer.current_epoch, weighting.last_weights))
            if len(self._records) > self.max_points:
                self._stride *= 2
                self._records = [r for r in self._records if r[0] % self._stride == 0 or r[0] == 1]

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._open_epoch = trainer.current_epoch
        # Nothing of this epoch is open yet (a fit resumed in an epoch runs no such hook): what a
        # checkpoint written at the last epoch's end kept of it (its training metrics) goes.
        pl_module.drop_training_epoch()
        # Again each epoch: reload_dataloaders_every_n_epochs builds new loaders before this hook.
        self._follow_training(trainer, partial(batches_processed, trainer))

    @staticmethod
    def _follow_training(trainer: Any, batches_trained: Callable[[], int | None] | None) -> None:
        """Let the resumable train loaders count the batches trained on, not those handed out."""
        apply_to_collection(
            trainer.train_dataloader, ResumableDataLoader, lambda loader: loader.follow_training(batches_trained)
        )

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        weighting = self._weighting(pl_module)
        pl_module.check_finite_losses()
        weighting.end_training_epoch()
        pl_module.end_training_epoch()
        self._open_epoch = None

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # The checkpoint is rank 0's state; Lightning calls this on every process, so that what each
        # DDP process holds of its own joins it here.
        weighting = self._weighting(pl_module)
        checkpoint[_PROCESSES] = trainer.world_size  # whose batches the epoch sums are over
        if not is_distributed():
            return
        names = {id(module): name for name, module in pl_module.named_modules()}
        for sums in pl_module.running_epoch_sums():
            # Each process's part of the epoch's running sums (the task losses', DWA's, STCH's): their
            # total, which the first process alone takes back on resume (on_load_checkpoint).
            for name, total in sums.states_over_processes().items():
                checkpoint["state_dict"][f"{names[id(sums)]}.{name}"] = total
        for metric in pl_module.running_training_metrics():
            # The same for the tasks' training metrics: their states over all processes (torchmetrics'
            # own reduction of each: sums added, lists joined), for the first process to take back.
            with metric.sync_context(should_sync=True):
                checkpoint["state_dict"].update(metric.state_dict(prefix=f"{names[id(metric)]}."))
        solver = _solver_of_its_own(weighting)
        if solver is not None:
            # The solver's state of every process (ddp="local"): each takes back its own on resume.
            checkpoint[_HOST_STATE_BY_RANK] = all_gather_object(solver.host_state_dict())

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        weighting = self._weighting(pl_module)
        if trainer.global_rank != 0:
            for sums in pl_module.running_epoch_sums():
                sums.clear()  # the sums over all processes are rank 0's (on_save_checkpoint)
            for metric in pl_module.running_training_metrics():
                metric.reset()  # as are the training metrics' states (over samples: they need no more)
        else:
            written_by = checkpoint.get(_PROCESSES, trainer.world_size)  # absent: an earlier version's
            if isinstance(written_by, int) and written_by > 0 and written_by != trainer.world_size:
                # The sums are over the processes' batches: as many per step as there were processes.
                for sums in pl_module.running_epoch_sums():
                    sums.scale(trainer.world_size / written_by)
        by_rank = checkpoint.get(_HOST_STATE_BY_RANK)
        solver = _solver_of_its_own(weighting)
        if solver is not None and isinstance(by_rank, list):
            if len(by_rank) == trainer.world_size:
                solver.load_host_state_dict(by_rank[trainer.global_rank])
            elif trainer.global_rank == 0:
                log.warning(
                    "LossWeightingCallback: the checkpoint holds the solver state of %d processes, this run has %d: "
                    "every process resumes from rank 0's",
                    len(by_rank),
                    trainer.world_size,
                )

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        planned, done = self._total_steps, trainer.global_step
        if self._plans and planned and done < planned and trainer.is_global_zero and not trainer.interrupted:
            # max_time, EarlyStopping or a callback of one's own ended the run before its plan.
            log.warning(
                "LossWeightingCallback: training ended after %s of the %s optimizer steps planned: the schedules "
                "over the fraction of training stopped at t=%.3g, short of their end",
                done,
                planned,
                done / planned,
            )
        if self._records:
            # What a further step would use: the strategy is told the progress, as before a batch.
            weighting = self._weighting(pl_module)
            try:
                if type(weighting).set_progress is not Weighting.set_progress:
                    weighting.set_progress(self._progress(trainer))
                end = weighting.current_weights().detach().clone()
            except MultiLossError:
                # A schedule checked over the epochs that train may be invalid at the one after the
                # last (unit="epoch": t = max_epochs): the run is done, so the last step's weights stand.
                end = self._records[-1][2]
            self._end = (trainer.global_step + 1, trainer.current_epoch, end)
        failure: MultiLossError | None = None
        if trainer.is_global_zero and self._records and not trainer.fast_dev_run:
            # fast_dev_run writes no files (Lightning's loggers and checkpoints neither)
            try:
                self._write_record(trainer)
            except MultiLossError as error:
                failure = error
        _raised_by_every_process(trainer, failure)

    def _write_record(self, trainer: Any) -> None:
        """``<filename>.csv`` and ``.png`` of the steps recorded (and the end row, once training ended)."""
        from lightning_multiloss._trajectory import write_trajectory

        steps, epochs, weights = self.steps, self.epochs, self.weights
        if self._end is not None:
            steps, epochs = [*steps, self._end[0]], [*epochs, self._end[1]]
            weights = [*weights, self._end[2].float().cpu().tolist()]
        folder = record_folder(trainer)
        stem = os.path.join(folder, self.filename)
        try:
            make_folder(folder, f"{self.filename}.csv and {self.filename}.png")
            paths = write_trajectory(
                stem,
                self.task_names,
                steps,
                epochs,
                weights,
                self.plot,
                loggers=trainer.loggers,
                step=trainer.global_step,
            )
        except (OSError, MultiLossError) as error:
            self._record_write_failed = True  # on_exception, which follows, does not try again
            if isinstance(error, MultiLossError):  # the folder's
                said = str(error)
            else:
                failed = error.filename if isinstance(error.filename, str) else f"{stem}.csv"
                said = f"cannot write the weights' record {failed}: {error.strerror or error}"
            raise MultiLossError(
                f"LossWeightingCallback: {said} (the record is also in the Callback's steps, epochs and weights, "
                "and in the checkpoints saved)"
            ) from error
        log.info("loss-weight trajectory written to %s", ", ".join(paths))

    # -- the run result --------------------------------------------------------------------
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._follow_training(trainer, None)
        self._release_constraints()
        recorder = self._recorder(trainer)
        if recorder is not None:
            recorder.evaluated("val", trainer.callback_metrics)  # the last validation's values
            recorder.finished(self._weights_trained_with(pl_module), int(trainer.world_size), self.plans)
            recorder.write()
        # The other processes wait for rank 0's files (the trajectory's plot, the result): a process
        # that leaves first may end while another still runs, and gloo's teardown then aborted it
        # now and then under ddp_spawn (2 fits in 30 with a rank 0 one second slower).
        trainer.strategy.barrier("LossWeightingCallback.on_fit_end")

    def _weights_trained_with(self, pl_module: Any) -> dict[str, float] | None:
        """The weights of the run's last optimizer step, by task: the strategy's ``last_weights``
        after a step of this fit, else the record's last (a resumed run with no step left, whose
        ``last_weights`` a checkpoint need not hold); ``None`` before any step."""
        if self._last_step > self._fit_started_at:
            values: Tensor = self._weighting(pl_module).last_weights
        elif self._records:
            values = self._records[-1][2]
        else:
            return None
        return dict(zip(self.task_names, values.detach().float().cpu().tolist(), strict=True))

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        pl_module.check_finite_evaluation_losses("val")

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        pl_module.check_finite_evaluation_losses("test")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        # Inside fit, on_fit_end takes the last validation; here a validation of its own (trainer.validate).
        recorder = self._recorder(trainer)
        if recorder is None or trainer.sanity_checking or trainer_stage(trainer) != "validate":
            return
        recorder.evaluated("val", trainer.callback_metrics)
        recorder.finished()
        recorder.write()

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        recorder = self._recorder(trainer)
        if recorder is None:
            return
        recorder.evaluated("test", trainer.callback_metrics)
        recorder.finished()
        recorder.write()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Before the checkpoint callbacks' on_exception (Lightning runs them last): the loaders keep
        # the count of batches trained on, and follow this Trainer no longer.
        self._follow_training(trainer, None)
        self._release_constraints()
        recorder = self._recorder(trainer)
        if recorder is not None:
            recorder.stopped(exception)
            recorder.write()
        if (
            trainer.is_global_zero
            and self._records
            and not trainer.fast_dev_run
            and trainer_stage(trainer) == "fit"
            and not self._record_write_failed
        ):
            # The steps recorded so far (no end row: training did not end), where a finished run
            # would put them; a resumed run rewrites the files whole.
            try:
                self._write_record(trainer)
            except Exception as error:  # the device may be what failed: the exception in flight stays the one raised
                log.error("LossWeightingCallback: the record of the steps so far was not written: %s", error)

    @property
    def end_weights(self) -> list[float] | None:
        """The weights in force when the last fit ended (``None`` before), as the files' last row."""
        return None if self._end is None else self._end[2].float().cpu().tolist()

    @property
    def plans(self) -> list[int]:
        """The planned lengths (optimizer steps) that the weights followed, in order, where they
        depend on it (``unit="fraction"`` schedules; empty otherwise): one for a run that kept its
        plan, resumed or not, more for one re-planned on resume (``result.json``'s ``planned_steps``)."""
        return list(self._plans)

    @property
    def steps(self) -> list[int]:
        """The optimizer steps recorded."""
        return [r[0] for r in self._records]

    @property
    def epochs(self) -> list[int]:
        """The epoch of each recorded step."""
        return [r[1] for r in self._records]

    @property
    def weights(self) -> list[list[float]]:
        """The task weights used at each recorded step (reads them from the device)."""
        if not self._records:
            return []
        return torch.stack([r[2].float().cpu() for r in self._records]).tolist()

    def state_dict(self) -> dict[str, Any]:
        return {
            "task_names": list(self.task_names),
            "steps": self.steps,
            "epochs": self.epochs,
            "weights": self.weights,
            "stride": self._stride,
            "every_n_steps": self.every_n_steps,
            "planned_steps": self._total_steps,
            "plans": list(self._plans),
            "open_epoch": self._open_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.task_names = list(state_dict["task_names"])
        self._stride = int(state_dict.get("stride", self.every_n_steps))
        recorded_every = state_dict.get("every_n_steps")
        if recorded_every is not None and int(recorded_every) != self.every_n_steps:
            # Resumed with another every_n_steps: record at the new one, thinned as far as the run had
            # thinned its records (the stride doubles each time they pass max_points).
            thinned = max(self._stride // int(recorded_every), 1)
            self._stride = self.every_n_steps * thinned
        planned = state_dict.get("planned_steps")
        self._restored_plan = int(planned) if planned is not None else None
        self._plans = [int(p) for p in state_dict.get("plans", [])]
        open_epoch = state_dict.get("open_epoch")
        self._restored_open_epoch = int(open_epoch) if open_epoch is not None else None
        self._records = [
            (int(step), int(epoch), torch.tensor(row))
            for step, epoch, row in zip(state_dict["steps"], state_dict["epochs"], state_dict["weights"], strict=True)
        ]


# The checkpoint's entry that holds each process's host solver state in ddp="local" mode, by rank.
_HOST_STATE_BY_RANK = "lightning_multiloss_host_state_by_rank"
_PROCESSES = "lightning_multiloss_processes"  # the number of processes that wrote a checkpoint


def _solver_of_its_own(weighting: Weighting) -> GramianWeighting | None:
    """``weighting`` where each DDP process keeps its own solver state (a Gramian strategy with host
    state in ``ddp="local"`` mode), else ``None``."""
    if isinstance(weighting, GramianWeighting) and weighting.ddp == "local" and weighting.host_state:
        return weighting
    return None


def _accumulation_schedule(trainer: Any) -> Callable[[int], int] | None:
    """The accumulation by epoch of a callback that changes it (Lightning's
    ``GradientAccumulationScheduler``, whose schedule ``trainer.estimated_stepping_batches`` does
    not know), or ``None``."""
    for callback in trainer.callbacks:
        by_epoch = getattr(callback, "get_accumulate_grad_batches", None)
        if callable(by_epoch):
            return lambda epoch: max(int(by_epoch(epoch)), 1)
    return None


def _accumulation_by_epoch(trainer: Any) -> Callable[[int], int]:
    """The number of batches each optimizer step of an epoch accumulates."""
    fixed = max(int(trainer.accumulate_grad_batches), 1)
    return _accumulation_schedule(trainer) or (lambda epoch: fixed)


def _optimizer_steps_per_batch(trainer: Any) -> int:
    """The optimizer steps of a batch that ``trainer.global_step`` counts: under manual optimization
    each optimizer's (taken to step once a batch, as ``trainer.estimated_stepping_batches`` does
    not say), else one."""
    module = trainer.lightning_module
    if module is None or module.automatic_optimization:
        return 1
    return max(len(trainer.optimizers), 1)


def _steps_by_epoch(trainer: Any) -> Iterator[int]:
    """The optimizer steps of each epoch, from the first (endless; empty where the number of
    batches is not known)."""
    batches = trainer.num_training_batches
    if not isinstance(batches, int | float) or not math.isfinite(batches) or batches <= 0:
        return
    accumulation = _accumulation_by_epoch(trainer)
    per_batch = _optimizer_steps_per_batch(trainer)
    for epoch in itertools.count():
        yield math.ceil(batches / accumulation(epoch)) * per_batch


def _check_integer(name: str, value: object, least: int) -> None:
    """An integer (``2.0`` and NumPy's integers count; ``2.5``, NaN, a string or a bool does not) of at
    least ``least``."""
    whole = whole_number(value)
    if whole is None or whole < least:
        raise MultiLossError(f"LossWeightingCallback: {name} must be an integer >= {least}, got {value!r}")


def _planned_steps(trainer: Any) -> int | None:
    """The optimizer steps training will take (``None`` where nothing bounds them): Lightning's
    estimate, counted epoch by epoch where a callback changes the accumulation by epoch or where
    several optimizers step each batch under manual optimization (the estimate counts batches,
    ``global_step`` and ``max_steps`` every optimizer's steps)."""
    total = trainer.estimated_stepping_batches
    planned = int(total) if isinstance(total, int | float) and math.isfinite(total) else None
    epochs = trainer.max_epochs
    counted_by_lightning = _accumulation_schedule(trainer) is None and _optimizer_steps_per_batch(trainer) == 1
    if planned is None or not isinstance(epochs, int) or epochs < 0 or counted_by_lightning:
        return planned
    steps = sum(itertools.islice(_steps_by_epoch(trainer), max(epochs, 1)))
    if steps == 0:  # batches not known: Lightning's estimate
        return planned
    return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps


def _planned_steps_after(trainer: Any, planned: int | None, in_open_epoch: bool) -> int | None:
    """A resumed fit's optimizer steps in all: those taken (``global_step``) and those left at the
    resumed Trainer's steps per epoch. Another accumulation, batch size or number of batches than
    before changes these, and Lightning's estimate (``planned``) counts every epoch at the new rate.
    ``in_open_epoch``: training stopped inside the current epoch (else at its start)."""
    epochs = trainer.max_epochs
    if planned is None or not isinstance(epochs, int) or epochs < 0:
        return planned
    per_epoch = list(itertools.islice(_steps_by_epoch(trainer), epochs))
    epoch = trainer.current_epoch
    if not per_epoch or epoch >= len(per_epoch):
        return planned
    # The batches of the open epoch trained before the checkpoint (Lightning's count is the last
    # epoch's until the next one starts).
    trained = (batches_processed(trainer) or 0) if in_open_epoch else 0
    taken = (trained // _accumulation_by_epoch(trainer)(epoch)) * _optimizer_steps_per_batch(trainer)
    steps = trainer.global_step + max(per_epoch[epoch] - taken, 0) + sum(per_epoch[epoch + 1 :])
    return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps


def _planned_epochs(trainer: Any, planned_steps: int | None) -> int | None:
    """The number of epochs training will reach: ``max_epochs``, or fewer where ``max_steps`` ends
    it sooner (``None`` where neither bounds it)."""
    epochs = trainer.max_epochs if isinstance(trainer.max_epochs, int) and trainer.max_epochs >= 0 else None
    if planned_steps is None:
        return epochs
    done = 0
    for reached, steps in enumerate(_steps_by_epoch(trainer), start=1):
        done += steps
        if done >= planned_steps or (epochs is not None and reached >= epochs):
            return reached if epochs is None else min(epochs, reached)
    return epochs
