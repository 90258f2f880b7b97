"""``MultiTaskMixin``: the training, validation, test and predict steps of a multi-task model."""

from __future__ import annotations

import copy
import difflib
import logging
import math
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from torch._functorch import config as _functorch_config  # donated buffers: _graphs_kept_for_several_backwards
from torchmetrics import MeanMetric, Metric

from lightning_multiloss._callback_hooks import LossWeightingHooks
from lightning_multiloss._dist import all_reduce_sum, is_distributed, is_rank_zero
from lightning_multiloss._lightning import (
    is_lightning_module_class,
    is_logging_step,
    lightning_package,
    scales_float16_losses,
    trainer_of,
    trainer_stage,
)
from lightning_multiloss._metric_keys import (
    LOADER_SUFFIX,
    METRIC_KEYS,
    BestValues,
    KeyScheme,
    MetricKeys,
    check_unique_keys,
    loader_key,
    metrics_by_task,
)
from lightning_multiloss.errors import MultiLossError, NonFiniteLossError, first_line, raised_by_every_process
from lightning_multiloss.gradients import (
    leaves_by_task,
    own_above_representation,
    own_by_task,
    parameter_users,
    shared_by_use,
    users_over_processes,
)
from lightning_multiloss.task import Task
from lightning_multiloss.weighting import (
    WEIGHTINGS,
    Fixed,
    GradientWeighting,
    GramianWeighting,
    TaskEpochMean,
    WeightedLoss,
    Weighting,
    create_weighting,
)
from lightning_multiloss.weighting._gramian import NonFiniteWeightsError
from lightning_multiloss.weighting._state import EvaluationMean

Stage = Literal["train", "val", "test"]
log = logging.getLogger(__name__)
_MAX_PENDING = 1024
"""The most training steps whose losses wait for the non-finite check (it runs at least this often)."""
_OWNER = "_mt_owner"
"""The module's token, which ties the weighting configured in it to it (:meth:`Weighting.claim`)."""
_KEPT_USES = 8
"""How many graphs' worth of the tasks' own parameters are kept (:meth:`MultiTaskMixin._mt_kept_own_parameters`)."""
_TASKS_IN_CHECKPOINT = "multiloss_task_names"  # the checkpoint's entry that lists the tasks in order
_WEIGHTING_IN_CHECKPOINT = "multiloss_weighting"  # the checkpoint's entry that names the strategy
_COMPILED_MODULE = "_orig_mod"  # the attribute through which torch.compile's wrapper holds the module
OnNonFinite = Literal["raise", "skip"]

if TYPE_CHECKING:  # the mixin is used with a LightningModule; type-check against nn.Module only
    _Base = nn.Module
else:
    _Base = object


def _shape_of(value: object) -> tuple[int, ...] | None:
    """A state entry's shape (``None`` for what is no tensor)."""
    return tuple(value.shape) if isinstance(value, Tensor) else None


def _step_and_epoch(trainer: Any | None) -> tuple[int, int]:
    """The Trainer's ``(global_step, current_epoch)``; ``(-1, -1)`` without one."""
    return (-1, -1) if trainer is None else (trainer.global_step, trainer.current_epoch)


def _step_name(step: int, epoch: int, batch: int) -> str:
    """How an error names a training step: ``step 3, epoch 0, batch 3`` (``batch 3`` without a Trainer)."""
    return f"step {step}, epoch {epoch}, batch {batch}" if step >= 0 else f"batch {batch}"


def _negative_loss_message(strategy: str, culprits: Mapping[str, object], where: str) -> str:
    return (
        f"negative task loss(es) {dict(culprits)} at {where}: weighting {strategy!r} needs losses >= 0 (it takes "
        "their log, a ratio of them, or has no minimum below 0); shift such a loss by its lower bound "
        "(e.g. a negative log-likelihood) or choose another weighting"
    )


def _without_compile_wrappers(key: str) -> str:
    return ".".join(part for part in key.split(".") if part != _COMPILED_MODULE)


def _match_compiled_keys(state: dict[str, Any], own: Mapping[str, Any]) -> None:
    """Rename, in ``state``, the keys that differ from the model's own only by ``torch.compile``'s
    wrapper (``trunk._orig_mod.0.weight`` against ``trunk.0.weight``, either way round): a module
    compiled in ``setup`` for training only is plain when the checkpoint is loaded for evaluation."""
    if not any(_COMPILED_MODULE in key for key in (*state, *own)):
        return
    by_plain_key = {_without_compile_wrappers(key): key for key in own}
    for key in [k for k in state if k not in own]:
        target = by_plain_key.get(_without_compile_wrappers(key))
        if target is not None and target not in state:
            state[target] = state.pop(key)


class MultiTaskMixin(_Base):
    """Multi-task steps for a LightningModule: list the mixin first among the bases.

    Declare the tasks and the weighting once in ``__init__`` with :meth:`configure_multitask`,
    write ``forward(x) -> {task: output}`` and ``configure_optimizers``; the mixin supplies
    ``training_step``, ``validation_step``, ``test_step`` and ``predict_step``. The training step
    returns the combined loss, so Lightning's own backward, gradient accumulation, clipping,
    precision and DDP stay in charge. It logs ``<stage>/loss/<task>``, ``<stage>/weight/<task>``,
    ``<stage>/loss`` and, on validation and test, ``<stage>/<metric>/<task>``; by option, in the
    order ``<stage>/<task>/<metric>``, without the task part for a single task, training metrics
    and best-so-far values (see :meth:`configure_multitask`).

    ``torch.compile`` works with every strategy and route: of the trunk (e.g. in ``setup``), of
    ``forward``, or of the whole module (``trainer.fit(torch.compile(model))``: the mixin's steps
    then run uncompiled around the compiled ``forward``).

    Every piece can be overridden: :meth:`split_batch` (how a batch splits into the input and
    the targets), :meth:`predict_inputs`, :meth:`task_losses`, or the steps themselves.

    What the mixin shares with the rest of the package, all of it documented here:

    - :attr:`weighting`: the strategy (its :attr:`~Weighting.last_weights` are the weights of the
      last training step);
    - :meth:`shared_representation` and :meth:`shared_parameters`: what the gradient strategies
      differentiate;
    - :meth:`optimizer_step_skipped`: whether an optimizer step was skipped
      (``on_nonfinite="skip"``), for the Callback, which must not step the strategy then;
    - :meth:`check_finite_losses` and :meth:`end_training_epoch`: called by the Callback at each
      training epoch's end (the non-finite check, the epoch-mean task losses).

    Its own state is in attributes that start with ``_mt_``; no other object reads them.

    The training step waits for the device in only two cases: a gradient strategy (one copy of
    the K×K Gramian and the K losses to the host), and ``on_nonfinite="skip"`` (one read of the
    K losses, to know whether to skip). Otherwise a non-finite task loss is recorded on the
    device, with its step, and checked on the Trainer's logging steps and at each epoch's end:
    training then stops, on every process, naming the task and the step where it first appeared.

    Example:
        >>> import torch
        >>> import pytorch_lightning as pl
        >>> from torch import nn
        >>> from lightning_multiloss import MultiTaskMixin, Task
        >>> from lightning_multiloss.weighting import Fixed
        >>> class Net(MultiTaskMixin, pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.trunk = nn.Linear(4, 8)
        ...         self.heads = nn.ModuleDict({"cls": nn.Linear(8, 3), "reg": nn.Linear(8, 1)})
        ...         self.configure_multitask(
        ...             [Task("cls", nn.CrossEntropyLoss()), Task("reg", nn.MSELoss())],
        ...             Fixed([0.5, 0.3]),
        ...         )
        ...     def forward(self, x):
        ...         z = torch.relu(self.trunk(x))
        ...         return {name: head(z) for name, head in self.heads.items()}
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> sorted(Net()(torch.zeros(2, 4)))
        ['cls', 'reg']
    """

    # Declared for type checkers; set by configure_multitask.
    weighting: Weighting
    _mt_tasks: tuple[Task, ...]
    _mt_metrics: nn.ModuleDict
    _mt_train_means: TaskEpochMean

    MULTITASK_OPTIONAL_STATE: ClassVar[tuple[str, ...]] = tuple(f"_mt_train_means.{s}" for s in TaskEpochMean.STATES)
    """State keys of the module's own that a checkpoint may lack (earlier versions left them out):
    the open epoch's task-loss sums, which then start from zero. Sized by the number of tasks."""

    if TYPE_CHECKING:  # provided by the LightningModule

        def log(self, name: str, value: Any, **kwargs: Any) -> None: ...
        def log_dict(self, dictionary: Mapping[str, Any], **kwargs: Any) -> None: ...

    def configure_multitask(
        self,
        tasks: Sequence[Task],
        weighting: Weighting | str | None = None,
        *,
        input_key: str = "x",
        on_nonfinite: OnNonFinite = "raise",
        metrics: Any = None,
        metric_keys: MetricKeys = "stage/metric/task",
        single_task_keys: bool = False,
        train_metrics: bool = False,
        best_metrics: bool = False,
        reuse_jacobian: bool = True,
    ) -> None:
        """Declare the tasks and the weighting (call it in ``__init__``, after ``super().__init__()``).

        Args:
            tasks: the tasks, in the order of the loss vector the weighting sees.
            weighting: a :class:`~lightning_multiloss.weighting.Weighting`, a registered name,
                or ``None`` for a plain sum.
            input_key: the batch key of the network's input, for dict batches.
            on_nonfinite: what to do with a NaN or infinite task loss: ``"raise"`` stops with
                the task's name and the step; ``"skip"`` skips that optimizer step on every
                process (no backward, parameters and optimizer state untouched; with gradient
                accumulation, the whole accumulated step). The step still counts in
                ``global_step``, as Lightning counts it.
            metrics: more metrics, by task: a torchmetrics ``MultitaskWrapper`` or a dict
                ``{task: metrics}`` (each value as :class:`Task` takes ``metrics``); they join the
                tasks' own.
            metric_keys: the order of each task's keys: ``"stage/metric/task"`` (``val/acc/digit``,
                ``val/loss/digit``, ``val/weight/digit``) or ``"stage/task/metric"``
                (``val/digit/acc``, ``val/digit/loss``, ...); the combined loss is ``<stage>/loss``.
            single_task_keys: with one task, keys without the task part (``val/acc``,
                ``val/acc_best``, ``train/acc``, ``val/weight``), as single-task Lightning code logs
                them; the task's own loss keeps its task part, ``<stage>/loss`` being the combined
                loss (the same value under a plain sum). Needs exactly one task.
            train_metrics: also update the tasks' metrics on training steps and log their epoch
                values (``train/<metric>/<task>``, computed at the epoch's end). An update is a
                device operation; create classification metrics with ``validate_args=False`` for
                a training step that does not wait for a GPU (their checks call ``torch.unique``).
            best_metrics: log the best value so far of each metric whose ``higher_is_better`` is
                set (``val/<metric>_best/<task>``: its largest or smallest validation epoch value)
                and of the combined loss (``val/loss_best``: its smallest), updated at each
                validation epoch's end (not in the sanity check) and kept in checkpoints.
            reuse_jacobian: for the Gramian strategies: build the gradient that Lightning's
                backward applies from the K per-task backward passes the route takes anyway.
                ``route="parameters"``: K passes through the model in all, not K + 1; used where
                every trainable parameter outside :meth:`shared_parameters` belongs to at most one
                task (the default shared parameters; a trunk's parameters with heads apart).
                ``route="representation"``: the backward runs from the representation through
                the trunk only, not through the heads again; used where each parameter above the
                representation belongs to one task (no layer above it shared by two heads).
                Neither under float16 mixed precision (whose GradScaler must scale the backward
                that produces the update). ``False``: Lightning backpropagates ``Σ wᵢLᵢ`` through
                the whole model, for code that hooks into that backward or a loss whose graph
                reaches leaf tensors that are not the module's parameters.
        """
        _check_mixin_order(self)
        if not isinstance(self, nn.Module) or "_parameters" not in self.__dict__:
            raise MultiLossError("call super().__init__() before configure_multitask()")
        tasks = list(tasks)
        if not tasks:
            raise MultiLossError("configure_multitask needs at least one task")
        for task in tasks:
            if not isinstance(task, Task):
                raise MultiLossError(f"tasks must be Task objects, got {type(task).__name__}: {task!r}")
        names = [task.name for task in tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise MultiLossError(f"duplicate task names {duplicates}; each task needs its own name")
        if not isinstance(reuse_jacobian, bool):
            raise MultiLossError(f"reuse_jacobian must be True or False, got {reuse_jacobian!r}")
        if on_nonfinite not in ("raise", "skip"):
            raise MultiLossError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        if weighting is None:
            weighting = Fixed()
        elif isinstance(weighting, str):
            weighting = create_weighting(weighting)
        if isinstance(weighting, type) and issubclass(weighting, Weighting):
            registered = (
                f" or its registered name {weighting.name!r}" if WEIGHTINGS.get(weighting.name) is weighting else ""
            )
            example = f"{weighting.__name__}(){registered}"
            raise MultiLossError(f"weighting is the class {weighting.__name__}; pass an instance, e.g. {example}")
        if not isinstance(weighting, Weighting):
            what = f"the class {weighting.__name__}" if isinstance(weighting, type) else type(weighting).__name__
            raise MultiLossError(f"weighting must be a Weighting or a registered name, got {what}")
        # One weighting per model (Weighting.claim); copies and pickles of the module get a new token.
        token = self.__dict__.get(_OWNER) or uuid.uuid4().hex
        weighting.bind(names)  # first: a weighting of other tasks is refused naming both
        weighting.claim(token)
        self.__dict__[_OWNER] = token  # a plain attribute (nn.Module's __setattr__ is not needed), not state
        if metric_keys not in METRIC_KEYS:
            raise MultiLossError(f"metric_keys must be one of {list(METRIC_KEYS)}, got {metric_keys!r}")
        if single_task_keys and len(tasks) != 1:
            raise MultiLossError(
                f"single_task_keys=True leaves the task out of the keys, so it needs exactly one task; got {names}"
            )
        task_metrics = metrics_by_task(tasks, metrics)
        scheme = KeyScheme(metric_keys, single_task_keys)

        self.weighting = weighting
        self._mt_tasks = tuple(tasks)
        self._mt_names = frozenset(names)
        self._mt_unlabelled: list[int] = []  # filled by task_losses: tasks without a labelled sample
        self._mt_labelled_counts: dict[int, int] = {}  # filled by task_losses: the masked tasks' labelled samples
        self._mt_input_key = input_key
        self._mt_on_nonfinite: OnNonFinite = on_nonfinite
        self._mt_keys = {
            stage: (
                f"{stage}/loss",
                [scheme.key(stage, "loss", n) for n in names],
                [scheme.key(stage, "weight", n) for n in names],
            )
            for stage in ("train", "val", "test")
        }
        metric_stages = ("train", "val", "test") if train_metrics else ("val", "test")
        # Per stage, (task index, key) of each metric, in the order of _mt_metrics[stage].
        named = [(i, m, metric) for i, n in enumerate(names) for m, metric in task_metrics[n].items()]
        self._mt_metric_keys = {
            stage: [(i, scheme.key(stage, m, names[i])) for i, m, _ in named] for stage in metric_stages
        }
        # (key, index of the validation metric or None for the combined loss) of each best-so-far
        # value: see on_validation_epoch_end.
        self._mt_best_keys: list[tuple[str, int | None]] = []
        if best_metrics:
            best = [("val/loss_best", None, False)] + [
                (scheme.key("val", f"{m}_best", names[i]), at, bool(metric.higher_is_better))
                for at, (i, m, metric) in enumerate(named)
                if metric.higher_is_better is not None
            ]
            self._mt_best_keys = [(key, at) for key, at, _ in best]
            self._mt_best = BestValues([higher for *_, higher in best])
        self._mt_epoch_loss_keys = [f"{key}_epoch" for key in self._mt_keys["train"][1]]
        check_unique_keys(
            [
                *(key for total, losses, weights in self._mt_keys.values() for key in (total, *losses, *weights)),
                *(key for entries in self._mt_metric_keys.values() for _, key in entries),
                *(key for key, _ in self._mt_best_keys),
                *self._mt_epoch_loss_keys,
            ]
        )
        self._mt_checked_trainer: int | None = None  # the Trainer whose callbacks were checked
        # Per task, the (output shape, target shape, target dtype) last checked: see _mt_check_target.
        self._mt_checked_targets: dict[str, tuple[Any, ...]] = {}
        self._mt_without_gradient: set[str] = set()  # tasks whose training loss had no gradient (said once)
        self._mt_checked_masks: set[str] = set()  # tasks whose mask values were checked: see task_losses
        # Under DDP, the first non-finite evaluation loss of each stage this epoch, raised at its end.
        self._mt_eval_failures: dict[str, str] = {}
        # on_nonfinite="skip": the Trainer (_trainer_key) whose coming optimizer steps are dropped,
        # whether one has been dropped yet, and (Trainer, global_step after it) of each step dropped
        # for the latest skip. All the steps of one batch are dropped (manual optimization may step
        # several optimizers), and with gradient accumulation the step that ends the window: the
        # skip ends at the first batch after a dropped step. A later fit with another Trainer
        # restarts its count, and must not skip its own step of that number.
        self._mt_skip_for: int | None = None
        self._mt_skip_done = False
        self._mt_skipped_steps: set[tuple[int, int]] = set()
        self._mt_representation: Tensor | None = None  # marked in forward, taken by the step
        self._mt_shared_params: list[nn.Parameter] | None = None  # found on the first step
        self._mt_shared_found_among: tuple[int, ...] = ()  # the ids of the trainable parameters then
        self._mt_reuse_jacobian = reuse_jacobian
        self._mt_parameters: list[nn.Parameter] | None = None  # listed once per fit: _mt_trainable_parameters
        # By graph (the ids of the shared and the trainable parameters, and of those each task's loss
        # reaches), per task the parameters only that task uses (None: the update needs Lightning's
        # backward): see _mt_kept_own_parameters.
        self._mt_own_params: dict[tuple[tuple[int, ...], ...], list[list[nn.Parameter]] | None] = {}
        self._mt_backward_needed_for: tuple[tuple[int, ...], ...] | None = None  # see _mt_kept_own_parameters
        # (step, epoch, batch index, detached losses, detached weights: None until the strategy
        # gave them) of the training steps not yet checked for non-finite values: see
        # check_finite_losses.
        self._mt_pending: list[tuple[int, int, int, Tensor, Tensor | None]] = []
        # This batch's task losses and weights and its size, where not logged yet (a step between
        # logging steps): see on_train_batch_end.
        self._mt_unlogged: tuple[Tensor, Tensor, int, Tensor | None] | None = None
        self._mt_callback_watch = _CallbackWatch()
        # One copy of each metric per stage (their states must not mix); keyed "<stage>_metrics"
        # (a ModuleDict key must not be an attribute of it, such as ``train``).
        self._mt_metrics = nn.ModuleDict(
            {f"{stage}_metrics": nn.ModuleList(copy.deepcopy(m) for _, _, m in named) for stage in metric_stages}
        )
        for metric in self.running_training_metrics():
            # In checkpoints, as the task losses' epoch sums: a run resumed in an epoch logs the
            # metric over all of it, not over the batches after the resume.
            metric.persistent(True)
        # The evaluation epoch means of the total, the task losses and the weights (in _mt_keys
        # order), kept by torchmetrics: see _mt_log.
        self._mt_eval_means = nn.ModuleDict(
            {stage: nn.ModuleList(EvaluationMean() for _ in range(1 + 2 * len(tasks))) for stage in ("val", "test")}
        )
        # The epoch means of the training task losses (logged as train/loss/<task>_epoch at each
        # epoch's end): device additions each step, reduced over processes once per epoch; in
        # checkpoints, so that a run resumed in an epoch logs the mean over all of it.
        self._mt_train_means = TaskEpochMean(len(tasks))
        # The means and metrics of the second and further evaluation dataloaders, made on their
        # first batch ("<stage>_<index>": a ModuleDict of "means" and "metrics"): each loader's
        # values are its own (Lightning logs them under "/dataloader_idx_<index>").
        self._mt_other_loaders = nn.ModuleDict()

    # -- what users may override --------------------------------------------------------
    @property
    def tasks(self) -> tuple[Task, ...]:
        """The declared tasks, in loss-vector order."""
        return self._mt_tasks

    def logged_keys(self, stage: Literal["train", "val", "test"], dataloaders: int = 1) -> list[str]:
        """The keys the mixin logs in ``stage``: what a ``ModelCheckpoint`` or ``EarlyStopping`` can
        monitor (the combined loss, the task losses and weights, the tasks' metrics, the training
        epoch means and the best values; :meth:`logging_step_keys` are logged on the Trainer's
        logging steps only). With several evaluation ``dataloaders`` Lightning ends
        each loader's keys with ``/dataloader_idx_<index>``, the first loader's too (the best
        values, which follow the first loader, keep their keys).

        Example: ``["val/loss", "val/loss/digit", "val/weight/digit", "val/acc/digit", "val/acc_best/digit"]``.
        """
        if dataloaders < 1:
            raise MultiLossError(f"logged_keys: dataloaders must be at least 1, got {dataloaders}")
        total, losses, weights = self._mt_keys[stage]
        metrics = [key for _, key in self._mt_metric_keys.get(stage, [])]
        if stage == "train":
            return [total, *losses, *weights, *metrics, *self._mt_epoch_loss_keys]
        best = [key for key, _ in self._mt_best_keys] if stage == "val" else []
        per_loader = [total, *losses, *weights, *metrics]
        if dataloaders > 1:
            per_loader = [loader_key(key, index) for index in range(dataloaders) for key in per_loader]
        return [*per_loader, *best]

    def logging_step_keys(self) -> list[str]:
        """The training keys logged on the Trainer's logging steps only (``log_every_n_steps``), as
        the loggers write step values only there: each task's loss and weight. A ``monitor`` on one
        reads the last logging step's value, and finds none in an epoch without a logging step:
        monitor a task's epoch mean (``train/loss/<task>_epoch``) or a validation key instead."""
        _, losses, weights = self._mt_keys["train"]
        return [*losses, *weights]

    def monitor_problem(self, monitor: str, val_dataloaders: int | None = None) -> str | None:
        """Why a callback's ``monitor`` (``ModelCheckpoint``, ``EarlyStopping``) would find no value
        among the keys the mixin logs, or ``None``: a key it does not log (with the nearest one it
        does), or one of the :meth:`logging_step_keys`. With several ``val_dataloaders`` the
        validation keys are each loader's (``…/dataloader_idx_<i>``), and a key without the suffix
        is logged by none of them; where their number is not known yet (``None``, before the
        loaders are loaded), a key with or without the suffix counts."""
        val = self.logged_keys("val", dataloaders=val_dataloaders or 1)
        logged = [*self.logged_keys("train"), *val]
        sparse = self.logging_step_keys()
        if monitor in sparse:
            instead = (
                repr(f"{monitor}_epoch")
                if f"{monitor}_epoch" in logged
                else f"a validation key instead (e.g. {val[0]!r})"
            )
            return (
                f"{monitor!r} is logged on the Trainer's logging steps only (log_every_n_steps): a monitor would "
                f"read a stale value, or none in an epoch without one; monitor {instead}"
            )
        if monitor in logged or (
            val_dataloaders is None and any(monitor.startswith(key + LOADER_SUFFIX) for key in val)
        ):
            return None
        if val_dataloaders is not None and val_dataloaders > 1 and monitor in self.logged_keys("val"):
            return (
                f"with {val_dataloaders} validation dataloaders Lightning logs {monitor!r} for each loader apart, "
                f"as {loader_key(monitor, 0)!r}, ...: monitor one of them"
            )
        close = difflib.get_close_matches(monitor, logged, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"the model logs no {monitor!r}; {hint}it logs {logged}"

    def split_batch(self, batch: Any) -> tuple[Any, Mapping[str, Any]]:
        """Split a batch into the network's input and a mapping that holds the targets.

        Accepts a dict (the input under ``input_key``; targets, masks are its other keys) or a
        pair ``(input, {key: target})``. Override it for any other layout.
        """
        if isinstance(batch, Mapping):
            if self._mt_input_key not in batch:
                raise MultiLossError(
                    f"the batch has no input key {self._mt_input_key!r}; it has {sorted(batch)}. "
                    "Pass input_key= to configure_multitask or override split_batch()"
                )
            return batch[self._mt_input_key], batch
        if isinstance(batch, list | tuple) and len(batch) == 2 and isinstance(batch[1], Mapping):
            return batch[0], batch[1]
        raise MultiLossError(
            f"cannot split a batch of type {type(batch).__name__}: expected a dict or (input, dict of targets); "
            "override split_batch() for other layouts"
        )

    def predict_inputs(self, batch: Any) -> Any:
        """The network's input in a prediction batch, which needs no targets.

        A dict batch goes through :meth:`split_batch`; where that needs targets a prediction batch
        lacks (an override reading ``batch["targets"]``), override this method too.
        """
        if isinstance(batch, Mapping):
            try:
                return self.split_batch(batch)[0]
            except (MultiLossError, KeyError) as error:
                raise MultiLossError(
                    f"a prediction batch (keys {sorted(map(str, batch))}): split_batch() failed on it: "
                    f"{first_line(error)}; override predict_inputs(batch) to return the network's input "
                    "from a batch without targets"
                ) from error
        if isinstance(batch, list | tuple):
            return batch[0]
        return batch

    def task_losses(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> Tensor:
        """The ``(K,)`` vector of task losses, checked (scalars, one per task, targets present)."""
        losses: list[Tensor] = []
        for task in self._mt_tasks:
            output = outputs[task.name]
            key = task.target_key
            if key not in batch:
                raise MultiLossError(f"task {task.name!r}: the batch has no target key {key!r}; it has {sorted(batch)}")
            target = batch[key]
            if task.has_selection:
                if task.name not in self._mt_checked_masks:  # once per task (it reads a float mask), as class indices
                    task.check_mask_values(batch)
                    self._mt_checked_masks.add(task.name)
                if not isinstance(output, Tensor):
                    raise MultiLossError(
                        f"task {task.name!r}: a mask or ignore_value selects samples of a tensor output "
                        f"(batch first), got a {type(output).__name__}"
                    )
                output, target = task.select(output, target, batch)
                self._mt_labelled_counts[len(losses)] = int(output.shape[0])
                if output.shape[0] == 0:
                    # No labelled sample: zero, but in the graph (DDP expects every parameter used).
                    losses.append(outputs[task.name].sum() * 0.0)
                    self._mt_unlabelled.append(len(losses) - 1)
                    continue
            if isinstance(output, Tensor):  # a tuple of tensors (mean, log-variance) is the loss's to read
                self._mt_check_target(task, output, target)
            try:
                loss = task.loss(output, target)
            except MultiLossError:
                raise
            except (RuntimeError, ValueError, IndexError, TypeError) as error:
                raise MultiLossError(
                    f"task {task.name!r}: its loss failed on output {_described(output)} and target "
                    f"{_described(target)}: {first_line(error)}"
                ) from error
            if not isinstance(loss, Tensor) or loss.ndim != 0:
                shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
                raise MultiLossError(
                    f"task {task.name!r}: the loss must be a scalar, got {shape}; use a mean or sum reduction"
                )
            if not loss.requires_grad and self.weighting.training and torch.is_grad_enabled():
                self._mt_warn_without_gradient(task.name)
            losses.append(loss)
        return torch.stack(losses)

    def _mt_warn_without_gradient(self, name: str) -> None:
        """Say once per task that its training loss reaches no parameter (its step trains nothing)."""
        if name in self._mt_without_gradient:
            return
        self._mt_without_gradient.add(name)
        log.warning(
            "task %r: its training loss has no gradient (detached, computed without autograd, or from frozen "
            "parameters only): it trains nothing",
            name,
        )

    def _mt_check_target(self, task: Task, output: Tensor, target: Any) -> None:
        """The target's shape and dtype for this task's loss, when they change (no wait for the device).

        Class indices are checked against the head's size once per task (that reads the target).
        """
        signature = (output.shape, getattr(target, "shape", ()), getattr(target, "dtype", None))
        if self._mt_checked_targets.get(task.name) == signature:
            return
        task.check_target(output, target)
        if task.name not in self._mt_checked_targets:
            task.check_class_range(output, target)
        self._mt_checked_targets[task.name] = signature

    def shared_representation(self, z: Tensor) -> Tensor:
        """Mark ``z`` as the shared representation the task heads read; returns ``z`` unchanged.

        Call it in ``forward`` (``z = self.shared_representation(z)``) for the gradient strategies
        with ``route="representation"`` and for GradDrop: their per-task gradients are taken with
        respect to ``z`` (batch first). Free otherwise: it only keeps a reference during training.
        Under ``torch.compile`` of the whole ``forward`` it splits the compiled graph in two
        (trunk, heads) for those strategies, so that ``z`` is a tensor the gradients can reach;
        ``torch.export`` (strict or not, in training mode too) sees the identity.
        """
        weighting = getattr(self, "weighting", None)
        if (
            isinstance(weighting, GradientWeighting)
            and weighting.training  # a training step's (the mixin sets it), whatever the module's mode
            and torch.is_grad_enabled()
            and weighting.route == "representation"
        ):
            if _is_exporting():
                return z  # torch.export traces forward for inference: nothing to keep, no graph break
            if _is_compiling():
                _keep_representation_eagerly(self, z)
            else:
                self._mt_representation = z
        return z

    def shared_parameters(self) -> list[nn.Parameter]:
        """The shared parameters whose per-task gradients the ``route="parameters"`` strategies compare.

        Default: every trainable parameter (outside the weighting) that at least two task losses
        depend on, found by autograd on the first training step (so the task heads are left out)
        and again whenever the trainable parameters change (a frozen layer trained from some
        epoch on). Override it to choose them, e.g. ``return list(self.trunk.parameters())``.
        """
        if self._mt_shared_params is None:
            raise MultiLossError("the default shared_parameters() are found by autograd on the first training step")
        return self._mt_shared_params

    # -- the steps ----------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if _is_compiling():  # torch.compile(model): Lightning compiles the steps; see _run_eagerly
            return _run_eagerly(MultiTaskMixin.training_step, self, batch, batch_idx)
        trainer = trainer_of(self)
        self._mt_meet_trainer(trainer)
        weighting = self.weighting  # one look-up: a submodule's attribute access costs a microsecond
        if not weighting.training:  # the module put in evaluation mode for training (all its dropout off)
            with _strategy_in_mode(weighting, training=True):
                return self._mt_training_step_kept(batch, batch_idx, trainer, weighting)
        return self._mt_training_step_kept(batch, batch_idx, trainer, weighting)

    def _mt_training_step_kept(self, batch: Any, batch_idx: int, trainer: Any | None, weighting: Weighting) -> Tensor:
        if isinstance(weighting, GradientWeighting):
            with _graphs_kept_for_several_backwards():
                return self._mt_training_step(batch, batch_idx, trainer, weighting)
        return self._mt_training_step(batch, batch_idx, trainer, weighting)

    def _mt_training_step(self, batch: Any, batch_idx: int, trainer: Any | None, weighting: Weighting) -> Tensor:
        if self._mt_skip_done:  # the skipped step is over: this batch belongs to the next one
            self._mt_skip_for, self._mt_skip_done = None, False
        outputs, targets, losses, batch_size = self._mt_forward(batch)
        if self._mt_on_nonfinite == "skip" and not self._mt_all_finite(losses, "train", batch_idx):
            # The coming optimizer step is skipped: with gradient accumulation one bad micro-batch
            # skips the whole step (the others' gradients are dropped too, not applied as half a step).
            self._mt_skip_coming_steps(trainer)
            # Lightning refuses None under DDP. A zero that reaches every parameter keeps DDP's
            # gradient all-reduce in step on all processes; on_before_optimizer_step drops it.
            return self._mt_reaching_every_parameter(losses, 0.0)
        # Kept for check_finite_losses, with the weights below; in skip mode the losses are finite
        # already, and a strategy's non-finite weights (a failure of the strategy, not of the
        # batch: reading them too would be a second wait per step) stop training there.
        self._mt_record_nonfinite(losses, trainer, batch_idx)
        failure: NonFiniteLossError | None = None
        if isinstance(weighting, GradientWeighting):
            # Each process solves with its own Gramian in local mode: a failure there is its alone,
            # and it stopping alone would leave the others waiting in DDP's all-reduce.
            on_its_own = is_distributed() and weighting.ddp == "local"
            try:
                result = weighting(losses, **self._mt_gradient_inputs(losses, trainer, outputs))
            except NonFiniteLossError as error:
                if not on_its_own:
                    self.check_finite_losses()  # names the task and the step, if a task loss is the cause
                    where = _step_name(*_step_and_epoch(trainer), batch_idx)
                    # The same Gramian on every process: they all raise it together.
                    raise raised_by_every_process(NonFiniteLossError(f"{error}, at train {where}")) from error
                # A loss whose gradient is NaN everywhere carries it to every process, and the check
                # of the kept losses and weights (at the next logging step, or the epoch's end) stops
                # them all, naming the strategy and this step by its NaN weights; the reason is
                # this process's alone, so it says it.
                if self._mt_on_nonfinite != "skip":
                    log.warning(
                        "weighting %r failed on this process alone at train %s: %s",
                        weighting.name,
                        _step_name(*_step_and_epoch(trainer), batch_idx),
                        error,
                    )
                failure = error
                nan = losses.new_full(losses.shape, math.nan)
                result = WeightedLoss(self._mt_reaching_every_parameter(losses, math.nan), nan.detach())
            if on_its_own and self._mt_on_nonfinite == "skip":
                # Skip mode reads the losses every step already: one more tiny all-reduce tells every
                # process whether any solver failed, and they all skip the step; or, where a strategy
                # gave non-finite weights from a finite Gramian (its failure, not the batch's: never
                # skipped), they all stop.
                flags = [float(failure is not None), float(isinstance(failure, NonFiniteWeightsError))]
                failed, weights_failed = all_reduce_sum(torch.tensor(flags, device=losses.device)).tolist()
                if weights_failed > 0.0:
                    where = _step_name(*_step_and_epoch(trainer), batch_idx)
                    reason = failure if isinstance(failure, NonFiniteWeightsError) else None
                    raise NonFiniteLossError(
                        f"{reason or f'weighting {weighting.name!r} gave non-finite weights on another process'}, "
                        f"at train {where}"
                    )
                if failed > 0.0:
                    if failure is not None or trainer is None or trainer.global_rank == 0:
                        log.warning(
                            "on_nonfinite='skip': skipping the optimizer step at train step %s, batch %s: %s",
                            getattr(trainer, "global_step", -1),
                            batch_idx,
                            failure or "a solver on another process met a non-finite Gramian",
                        )
                    self._mt_skip_coming_steps(trainer)
                    return self._mt_reaching_every_parameter(losses, 0.0)
        else:
            result = weighting(losses)
        # The strategy's own copy of this step's weights: result.weights may be a view of a
        # parameter (learnable) that later steps change in place. A local solver's failure has
        # none: its NaN weights stand for them.
        self._mt_record_weights(weighting.last_weights if failure is None else result.weights)
        labelled = self._mt_labelled(losses)
        self._mt_train_means.add(losses, labelled)
        if weighting.uses_epoch_losses:
            weighting.epoch_losses.add(losses, labelled)
        logging_step = is_logging_step(trainer)
        self._mt_log("train", losses, result.weights, result.loss, batch_size, logging_step, labelled=labelled)
        if not logging_step:
            self._mt_unlogged = (losses, result.weights, batch_size, labelled)
        if self._mt_metric_keys.get("train"):
            self._mt_update_metrics("train", outputs, targets)
        if logging_step:
            self.check_finite_losses()
        return result.loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        if _is_compiling():
            return _run_eagerly(MultiTaskMixin.validation_step, self, batch, batch_idx, dataloader_idx)
        return self._mt_eval_step(batch, batch_idx, "val", dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        if _is_compiling():
            return _run_eagerly(MultiTaskMixin.test_step, self, batch, batch_idx, dataloader_idx)
        return self._mt_eval_step(batch, batch_idx, "test", dataloader_idx)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self(self.predict_inputs(batch))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        super().on_before_optimizer_step(optimizer)  # type: ignore[misc]
        if self._mt_skip_for is None:
            return
        trainer = trainer_of(self)
        trainer_id = _trainer_key(trainer)
        if self._mt_skip_for != trainer_id:
            return
        # No gradients: the optimizer leaves the parameters and its state (moments, step) alone.
        optimizer.zero_grad(set_to_none=True)
        if not self._mt_skip_done:
            self._mt_skipped_steps, self._mt_skip_done = set(), True
        steps_done = int(trainer.global_step) + 1 if trainer is not None else 0
        self._mt_skipped_steps.add((trainer_id, steps_done))

    def optimizer_step_skipped(self, steps_done: int) -> bool:
        """Whether the optimizer step that brought ``global_step`` to ``steps_done`` was skipped.

        Only ``on_nonfinite="skip"`` skips steps; the Callback asks, so as not to step the
        strategy's constraints and post-step updates after a step that did not happen.
        """
        return (_trainer_key(trainer_of(self)), steps_done) in self._mt_skipped_steps

    def _mt_skip_coming_steps(self, trainer: Any | None) -> None:
        """Drop the optimizer steps of this batch (:meth:`on_before_optimizer_step`)."""
        self._mt_skip_for, self._mt_skip_done = _trainer_key(trainer), False

    def check_finite_losses(self) -> None:
        """Raise :class:`NonFiniteLossError` if a training task loss, or a weight the strategy
        gave, was NaN or infinite.

        The training steps keep their detached task losses and weights (references, no copy) until
        this check reads them all at once: on the Trainer's logging steps, at each training epoch's
        end (the Callback calls it) and every ``1024`` steps in between, so a step never waits for
        the device. Under DDP one all-reduce makes every process raise together, naming the
        earliest step on any process. Where the losses of that step are finite and a weight is not,
        the error names the strategy and its weights.
        """
        pending, self._mt_pending = self._mt_pending, []
        if not pending:  # the same on every process: they run the same number of steps
            return
        losses = torch.stack([entry[3] for entry in pending]).to(torch.float64)
        index = torch.arange(len(pending), device=losses.device, dtype=torch.float64)[:, None]
        none = float(len(pending))
        nonfinite = ~torch.isfinite(losses)
        negative = losses < 0 if self.weighting.needs_nonnegative_losses else torch.zeros_like(nonfinite)
        # A step the strategy failed in (raising) has no weights: ones stand for them.
        given = next((entry[4] for entry in pending if entry[4] is not None), None)
        weights = (
            torch.zeros_like(losses)
            if given is None
            else torch.stack([given.new_ones(given.shape) if e[4] is None else e[4] for e in pending])
        )
        bad_weights = ~torch.isfinite(weights)
        # Per task, the first step of each kind (K non-finite, K negative, then K non-finite
        # weights): one all-reduce gives every process the same earliest step and the same error.
        first = torch.cat(
            [
                torch.where(nonfinite, index, none).amin(dim=0),
                torch.where(negative, index, none).amin(dim=0),
                torch.where(bad_weights.to(losses.device), index, none).amin(dim=0),
            ]
        )
        if is_distributed():
            import torch.distributed as dist

            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        k = len(self._mt_tasks)
        firsts = [int(i) for i in first.tolist()]
        first_nonfinite, first_negative, first_bad_weight = firsts[:k], firsts[k : 2 * k], firsts[2 * k :]
        at = min(firsts)
        if at == len(pending):
            return
        step, epoch, batch, values, step_weights = pending[at]
        names = [task.name for task in self._mt_tasks]
        local = values.tolist()
        where = _step_name(step, epoch, batch)
        if at not in first_nonfinite and at not in first_negative:  # the weights alone, at that step
            given_weights = step_weights.tolist() if step_weights is not None else [1.0] * k
            culprit_weights = _first_nonfinite_at(at, names, given_weights, first_bad_weight)
            raise raised_by_every_process(
                NonFiniteLossError(
                    f"weighting {self.weighting.name!r} gave non-finite weight(s) {culprit_weights} at train {where}, "
                    f"from the task losses {dict(zip(names, local, strict=True))}"
                )
            )
        if at not in first_nonfinite:  # negative losses only, at that step
            culprits: dict[str, object] = {
                name: value if value < 0 else "negative on another process"
                for name, value, i in zip(names, local, first_negative, strict=True)
                if i == at
            }
            raise raised_by_every_process(
                MultiLossError(_negative_loss_message(self.weighting.name, culprits, f"train {where}"))
            )
        culprits = _first_nonfinite_at(at, names, local, first_nonfinite)
        raise raised_by_every_process(
            NonFiniteLossError(
                f"non-finite task loss(es) {culprits} at train {where}; configure_multitask(on_nonfinite='skip') "
                "(multiloss-train: model.on_nonfinite=skip) skips such steps"
            )
        )

    def check_finite_evaluation_losses(self, stage: Literal["val", "test"]) -> None:
        """Under DDP, raise :class:`NonFiniteLossError` on every process if a ``stage`` task loss was
        NaN or infinite on any of them in the epoch (one all-reduce; the Callback calls it at the
        epoch's end). In one process the evaluation step raises at once."""
        failure = self._mt_eval_failures.pop(stage, None)
        if not is_distributed():
            return
        device = self.weighting.last_weights.device
        if float(all_reduce_sum(torch.tensor(float(failure is not None), device=device))) == 0.0:
            return
        raise raised_by_every_process(
            NonFiniteLossError(
                failure or f"non-finite task loss(es) at {stage} on another process{_EVALUATION_NOT_SKIPPED}"
            )
        )

    def end_training_epoch(self) -> None:
        """Log each task's epoch-mean training loss as ``train/loss/<task>_epoch`` (NaN for a task
        without a labelled sample in the epoch), then start anew.

        (``train/<task>/loss_epoch`` with ``metric_keys="stage/task/metric"``.)

        Called by the Callback at each training epoch's end, on every process (the means are over
        all processes and, per task, over the batches that had a label for it).
        """
        if self._mt_train_means.seen_any():
            # NaN for a task without a labelled sample in the epoch, as its validation mean: not a 0
            # that a checkpoint monitoring the key in mode "min" would take for the best loss.
            means = self._mt_train_means.means(empty=math.nan)
            # Already the means over all processes, the same on each: sync_dist averages equal values
            # (two small all-reduces per key and epoch) and keeps Lightning from warning under DDP
            # that an epoch value is not synchronised.
            for key, value in zip(self._mt_epoch_loss_keys, means.unbind(), strict=True):
                self.log(key, value, on_step=False, on_epoch=True, sync_dist=True)
        self._mt_train_means.reset()

    def running_epoch_sums(self) -> list[TaskEpochMean]:
        """The running sums of the open training epoch, which checkpoints keep: the task losses'
        (``train/loss/<task>_epoch``) and the strategy's epoch losses (DWA, STCH).

        Under DDP each process holds its part: the Callback writes their total into checkpoints,
        and on resume the first process alone takes it back.
        """
        sums = [self._mt_train_means]
        if self.weighting.uses_epoch_losses:
            sums.append(self.weighting.epoch_losses)
        return sums

    def running_training_metrics(self) -> list[Metric]:
        """The tasks' training metrics (``train_metrics=True``; each torchmetrics ``Metric``, the
        members of a ``MetricCollection``), whose states of the open epoch checkpoints keep.

        Under DDP each process holds its part: the Callback writes their states over all processes
        into checkpoints, and on resume the first process alone takes them back.
        """
        stage = self._mt_metrics["train_metrics"] if "train_metrics" in self._mt_metrics else nn.ModuleList()
        return [module for module in stage.modules() if isinstance(module, Metric)]

    def drop_training_epoch(self) -> None:
        """Forget the open training epoch's task-loss sums and training metrics without logging them.

        The Callback calls it at each training epoch's start (a checkpoint written at an epoch's end
        holds that epoch's training metrics, which Lightning resets after logging them, but a
        resumed fit starts at the next epoch) and when a resumed fit starts after an epoch whose end
        hooks Lightning did not run.
        """
        self._mt_train_means.reset()
        for metric in self.running_training_metrics():
            metric.reset()

    def setup(self, stage: str) -> None:
        """Give this process its own torchmetrics states, and start a fit's epoch sums afresh; call
        ``super()`` if you override it.

        ``ddp_spawn`` (``ddp_fork``, ``ddp_notebook``) on CPU hands each process the model through
        ``torch.multiprocessing``, which moves its tensors to shared memory, and Lightning gives the
        processes private copies of the parameters and buffers only: the torchmetrics states (the
        epoch means, DWA's and STCH's epoch sums, the tasks' metrics) would be one storage for every
        process and the main process's model, each process adding into the others' sums and the
        sanity check's into a later ``validate``; so would the Gramian strategies' host state (the
        step counts, Nash-MTL's α). Here, before any update or checkpoint restore, a metric whose
        states are in shared memory is reset, which gives it new ones of its own, and the host
        state is copied.
        """
        super().setup(stage)  # type: ignore[misc]
        for metric in self.modules():
            if isinstance(metric, Metric) and any(map(_in_shared_memory, metric.metric_state.values())):
                metric.reset()
        if stage == "fit":
            # The open epoch's task-loss sums start afresh, before a resumed fit loads its own (and
            # a tuner's trial steps, which restore the checkpoint they saved before, leave none).
            self._mt_train_means.reset()
        if isinstance(self.weighting, GramianWeighting):
            self.weighting.own_host_state()  # the solver's state, a plain tensor beside the buffers

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log the task values of a step that a callback ended the run at; call ``super()`` if you override it.

        They are logged on the logging steps alone (each key costs Lightning time per call), but
        Lightning also writes the step at which a callback stops the run (``Timer``, a rule of
        one's own, run before this hook), which would otherwise show the values of the logging
        step before.
        """
        super().on_train_batch_end(outputs, batch, batch_idx)  # type: ignore[misc]
        unlogged, self._mt_unlogged = self._mt_unlogged, None
        trainer = trainer_of(self)
        if unlogged is not None and getattr(trainer, "should_stop", False):
            self._mt_log_task_values(*unlogged)
        if trainer is not None:
            self._mt_after_step_without_callback(trainer)

    def __getstate__(self) -> dict[str, Any]:
        # A copy or a pickle of the module is another model: it claims a weighting anew (its own copy
        # of the weighting, unclaimed too), and cannot take the original's.
        state: dict[str, Any] = super().__getstate__()
        state.pop(_OWNER, None)
        return state

    def _mt_after_step_without_callback(self, trainer: Any) -> None:
        """The strategy's constraints and post-step updates (Learnable's clip of alpha to [0, 1])
        after an optimizer step that no :class:`LossWeightingCallback` follows: Lightning's tuners
        (``Tuner.lr_find``, ``Tuner.scale_batch_size``) run their trial steps with callbacks of
        their own, and alpha left [0, 1] there (an infinite loss at lr_find's larger rates)."""
        watch = self._mt_callback_watch
        step = trainer.global_step
        if watch.present or step == watch.last_step:  # the Callback's job; or an accumulation batch
            return
        watch.last_step = step
        if not self.optimizer_step_skipped(step):
            self.weighting.constrain()
            self.weighting.after_optimizer_step()

    def on_train_start(self) -> None:
        """Note whether a :class:`LossWeightingCallback` follows this fit's optimizer steps (a tuner's
        trials run with callbacks of their own; each trial starts here); call ``super()`` if you override it."""
        super().on_train_start()  # type: ignore[misc]
        trainer = trainer_of(self)
        watch = self._mt_callback_watch
        watch.present = any(isinstance(callback, LossWeightingHooks) for callback in getattr(trainer, "callbacks", []))
        watch.last_step = getattr(trainer, "global_step", 0)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the task names, in order, and the strategy's name beside the state; call ``super()``
        if you override it."""
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        checkpoint[_TASKS_IN_CHECKPOINT] = [task.name for task in self.tasks]
        checkpoint[_WEIGHTING_IN_CHECKPOINT] = self.weighting.name

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of the same tasks in another order; call ``super()`` if you override it.

        A strategy's state is by task position (uncertainty's log-variances, Nash-MTL's α, the
        epoch means), so tasks declared in another order (built from a dict or a set, say) would
        take each other's state. Called before the state is loaded, on resume and by
        ``load_from_checkpoint``. Other tasks (a renamed one, another set) load with a warning.
        A checkpoint of another strategy is warned of, naming both: it loads where its state has
        the same entries (MGDA's last weights into UPGrad's: a switch of strategy); where they
        differ Lightning's strict loading refuses it after the warning (its error names the keys
        alone).
        A submodule compiled in ``setup`` (``self.trunk = torch.compile(self.trunk)``) writes its
        keys with torch's ``_orig_mod.``: they load into the same module compiled or not.
        """
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            model_state = self.state_dict(keep_vars=True)
            _match_compiled_keys(state, model_state)
            # The training metrics' states are no weights: those of metrics this model lacks (built
            # without train_metrics, for inference, or with a metric fewer) are left, not refused.
            own = set(self._mt_metrics.state_dict(prefix="_mt_metrics.", keep_vars=True))
            for key in [k for k in state if k.startswith("_mt_metrics.") and k not in own]:
                del state[key]
            self._mt_check_checkpoint_weighting(checkpoint.get(_WEIGHTING_IN_CHECKPOINT), state, model_state)
        written = checkpoint.get(_TASKS_IN_CHECKPOINT)  # absent: a checkpoint of an earlier version
        names = [task.name for task in self.tasks]
        if not isinstance(written, list) or written == names:
            return
        if sorted(written) == sorted(names):
            raise MultiLossError(
                f"the checkpoint was written with the tasks {written}, the model declares them in another order, "
                f"{names}: declare them in the checkpoint's order (each strategy's state is kept by task position)"
            )
        log.warning(
            "the checkpoint was written with the tasks %s, the model has %s: the strategy's state is taken by position",
            written,
            names,
        )

    def _mt_check_checkpoint_weighting(
        self, written: object, state: Mapping[str, Any], model_state: Mapping[str, Any]
    ) -> None:
        """Warn of a checkpoint of another strategy, naming both and what its state holds. A warning,
        not an error: a strategy of the same entries takes them (a switch of strategy), and of
        others Lightning's strict loading refuses them after this message (``strict=False`` loads
        the network and the entries of the same name, as asked)."""
        ours = self.weighting.name
        if not isinstance(written, str) or written == ours:  # absent: a checkpoint of an earlier version
            return
        prefix = "weighting."
        theirs = sorted(k for k in state if k.startswith(prefix))
        mine = sorted(k for k in model_state if k.startswith(prefix))
        # The last step's weights may be missing (checkpoints of earlier versions): the model's stay.
        optional = f"{prefix}last_weights"
        if {k for k in theirs if k != optional} == {k for k in mine if k != optional}:
            left = optional in theirs and optional not in mine
            log.warning(
                "the checkpoint was written with the weighting %r, the model has %r: the model's strategy takes "
                "its state (%s)%s",
                written,
                ours,
                ", ".join(k for k in theirs if k in mine) or "none",
                f"; not {optional}, as {ours!r} computes its weights from its own state" if left else "",
            )
            return
        shared = [k for k in theirs if k in mine]
        same_shape = [k for k in shared if _shape_of(state[k]) == _shape_of(model_state[k])]
        log.warning(
            "the checkpoint was written with the weighting %r, the model has %r, whose state differs (only in the "
            "checkpoint: %s; only in the model: %s%s): a strict load refuses it, and a load with strict=False takes "
            "the entries of the same name and shape (%s); load it into a model with the weighting %r",
            written,
            ours,
            [k for k in theirs if k not in mine],
            [k for k in mine if k not in theirs],
            "".join(f"; {k} of another shape, which fails any load" for k in shared if k not in same_shape),
            ", ".join(same_shape) or "none",
            written,
        )

    def on_fit_start(self) -> None:
        """Check that the Trainer has the Callback the strategy's hooks need, and forget the checks
        that earlier steps left pending; call ``super()`` if you override it.

        Here rather than at the first step: Lightning's tuners (``Tuner.scale_batch_size``,
        ``lr_find``, their callbacks) run their trial steps earlier, with callbacks of their own,
        and put the model back afterwards; their losses are no part of the fit's first epoch.
        """
        super().on_fit_start()  # type: ignore[misc]
        self._mt_pending.clear()
        self._mt_skip_for, self._mt_skip_done = None, False  # a skip left by an interrupted fit
        trainer = trainer_of(self)
        if trainer is None or not self.weighting.needs_callback:
            return
        if not any(isinstance(cb, LossWeightingHooks) for cb in trainer.callbacks):
            raise MultiLossError(
                f"weighting {self.weighting.name!r} needs LossWeightingCallback: keep the mixin's "
                "configure_callbacks() (or call super().configure_callbacks()), or pass the callback to the Trainer"
            )

    def on_validation_epoch_start(self) -> None:
        """Check the training losses not checked yet, and start the epoch's evaluation means and
        metrics afresh if needed; call ``super()`` if you override it.

        A NaN training loss since the last check is named here, with its task and step, before the
        validation meets the parameters it made NaN (and names every task at a validation step).
        ``trainer.validate`` runs under ``torch.inference_mode`` and leaves the states of the
        metrics it reset as inference tensors, which the validation of a later ``fit`` (under
        ``no_grad``) may not update in place: they are made anew here, before the first update.
        """
        super().on_validation_epoch_start()  # type: ignore[misc]
        self.check_finite_losses()
        self._mt_start_evaluation_states("val")

    def on_test_epoch_start(self) -> None:
        """As :meth:`on_validation_epoch_start`, for the test metrics; call ``super()`` if you override it."""
        super().on_test_epoch_start()  # type: ignore[misc]
        self._mt_start_evaluation_states("test")

    def on_validation_epoch_end(self) -> None:
        """Update and log the best-so-far values (``best_metrics=True``); call ``super()`` if you override it.

        The epoch's values are computed here, before Lightning logs them (torchmetrics keeps the
        result, so nothing is computed twice). The best values are those of a fit's validations:
        the sanity check and a ``trainer.validate`` of its own (another split, a pretrained model
        checked before fine-tuning) are left out.
        """
        super().on_validation_epoch_end()  # type: ignore[misc]
        trainer = trainer_of(self)
        self._mt_log_unscored_metrics("val", trainer)
        outside_fit = trainer is not None and (trainer.sanity_checking or trainer_stage(trainer) != "fit")
        if not self._mt_best_keys or outside_fit:
            return
        total = cast("Sequence[MeanMetric]", self._mt_eval_means["val"])[0]
        metrics = cast("Sequence[Metric]", self._mt_metrics["val_metrics"])
        scored = [total if at is None else metrics[at] for _, at in self._mt_best_keys]
        counts = [m.update_count for m in scored]
        if is_distributed():
            # Updates on any process (one all-reduce an epoch): every process computes the same
            # metrics (a collective each) and leaves out the same ones, those no process could score.
            counts = all_reduce_sum(torch.tensor(counts, device=total.device)).tolist()
        for index, ((key, _), metric, count) in enumerate(zip(self._mt_best_keys, scored, counts, strict=True)):
            if count == 0:  # nothing to score this epoch (e.g. no labelled sample)
                continue
            best = self._mt_best.update(index, metric.compute())
            self.log(key, best, on_step=False, on_epoch=True, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        """Log NaN for the test metrics no batch could score; call ``super()`` if you override it."""
        super().on_test_epoch_end()  # type: ignore[misc]
        self._mt_log_unscored_metrics("test", trainer_of(self))

    def _mt_log_unscored_metrics(self, stage: Literal["val", "test"], trainer: Any | None) -> None:
        """Log NaN for each task metric that no batch of the epoch could score (no labelled sample),
        as for its loss, so that its key is logged in every epoch (a monitor on it finds it).

        In one process only: under DDP every process logs every metric at every step (see
        :meth:`_mt_update_metrics`) and Lightning computes it from no sample.
        """
        if not self._mt_metric_keys.get(stage) or trainer is None or is_distributed():
            return
        batches = trainer.num_val_batches if stage == "val" else trainer.num_test_batches
        loaders = len(batches)
        for loader in range(loaders):
            metrics = self._mt_eval_metrics(stage, loader)[1]
            for (_, key), metric in zip(self._mt_metric_keys[stage], metrics, strict=True):
                if metric.update_count == 0:
                    name = key if loaders == 1 else loader_key(key, loader)
                    self.log(name, math.nan, on_step=False, on_epoch=True, add_dataloader_idx=False)

    def configure_callbacks(self) -> Any:
        own = super().configure_callbacks()  # type: ignore[misc]
        # Lightning takes a sequence, a single callback, or nothing.
        callbacks = [] if own is None else list(own) if isinstance(own, Sequence) else [own]
        callback_cls = _callback_class_for(self)
        trainer = trainer_of(self)
        trainer_callbacks = getattr(trainer, "callbacks", []) if trainer is not None else []
        if not any(isinstance(cb, callback_cls) for cb in [*callbacks, *trainer_callbacks]):
            callbacks.append(callback_cls())
        return callbacks

    # -- internals ----------------------------------------------------------------------
    def _mt_forward(self, batch: Any) -> tuple[Mapping[str, Tensor], Mapping[str, Any], Tensor, int]:
        inputs, targets = self.split_batch(batch)
        outputs = self(inputs)
        if not isinstance(outputs, Mapping):
            raise MultiLossError(f"forward must return a dict {{task: output}}, got {type(outputs).__name__}")
        if outputs.keys() != self._mt_names:
            missing = sorted(self._mt_names - outputs.keys())
            extra = sorted(set(outputs) - self._mt_names)
            raise MultiLossError(
                f"forward must return one output per task: missing {missing}, extra {extra}; "
                f"the tasks are {[t.name for t in self._mt_tasks]}"
            )
        self._mt_unlabelled.clear()  # in place: assigning an attribute of an nn.Module costs microseconds
        self._mt_labelled_counts.clear()
        losses = self.task_losses(outputs, targets)
        first = _first_tensor(outputs[self._mt_tasks[0].name])
        batch_size = int(first.shape[0]) if first is not None and first.ndim > 0 else 1
        return outputs, targets, losses, batch_size

    def _mt_meet_trainer(self, trainer: Any | None) -> None:
        """Once per Trainer: refuse manual optimization without a training step of the user's own,
        and forget the parameter list (a new fit may have added or replaced parameters)."""
        if trainer is None or self._mt_checked_trainer == id(trainer):
            return
        if not self.automatic_optimization and type(self).training_step is MultiTaskMixin.training_step:
            # Lightning ignores the returned loss under manual optimization: nothing would train.
            raise MultiLossError(
                "automatic_optimization is False, so Lightning does not backpropagate the loss the mixin's "
                "training_step returns: override training_step, take `loss = super().training_step(batch, "
                "batch_idx)`, then call self.manual_backward(loss) and step your optimizers"
            )
        self._mt_checked_trainer = id(trainer)
        self._mt_parameters = None

    def _mt_reaching_every_parameter(self, losses: Tensor, value: float) -> Tensor:
        """``value`` times every trainable parameter's sum: a loss whose gradient is ``value``
        everywhere (0 to skip a step, NaN to carry a failure), so that DDP's gradient all-reduce
        runs on every process alike."""
        return sum((p.sum() * value for p in self.parameters() if p.requires_grad), losses.new_zeros(()))

    def _mt_record_nonfinite(self, losses: Tensor, trainer: Any | None, batch_idx: int) -> None:
        """Keep this step's losses for :meth:`check_finite_losses` (a reference: no copy, no wait)."""
        self._mt_pending.append((*_step_and_epoch(trainer), batch_idx, losses.detach(), None))

    def _mt_record_weights(self, weights: Tensor) -> None:
        """Keep the weights the strategy gave for this step's recorded losses (a reference)."""
        step, epoch, batch, losses, _ = self._mt_pending[-1]
        self._mt_pending[-1] = (step, epoch, batch, losses, weights.detach())
        if len(self._mt_pending) >= _MAX_PENDING:
            self.check_finite_losses()

    def _mt_labelled(self, losses: Tensor) -> Tensor | None:
        """``(K,)``: 1 for the tasks with a labelled sample in this batch (``None``: all of them)."""
        if not self._mt_unlabelled:
            return None
        labelled = torch.ones(len(self._mt_tasks))
        labelled[self._mt_unlabelled] = 0.0
        return labelled.to(losses.device, non_blocking=True)

    def _mt_gradient_inputs(self, losses: Tensor, trainer: Any | None, outputs: Mapping[str, Any]) -> dict[str, Any]:
        """What the gradient strategy's ``forward`` takes besides the losses.

        The marked representation (taken, so that the module keeps no reference to the graph), or
        the :meth:`shared_parameters` (the default ones are found by autograd on the first step,
        through the task ``outputs`` where a compiled graph hides the parameters' use) and, where
        the strategy can give the combined gradient itself (``reuse_jacobian``), each task's own
        parameters.
        """
        weighting = self.weighting
        assert isinstance(weighting, GradientWeighting)
        reuse = self._mt_reuse_jacobian and weighting.gives_combined_gradient and not scales_float16_losses(trainer)
        if weighting.route == "representation":
            representation, self._mt_representation = self._mt_representation, None
            inputs: dict[str, Any] = {"representation": representation}
            if reuse and representation is not None:
                own = self._mt_heads_parameters(losses, representation)
                if own is not None:
                    inputs["task_parameters"] = own
            return inputs
        uses_default = type(self).shared_parameters is MultiTaskMixin.shared_parameters
        candidates = self._mt_trainable_parameters() if uses_default else []
        trainable_ids = tuple(map(id, candidates))
        if uses_default and (self._mt_shared_params is None or trainable_ids != self._mt_shared_found_among):
            if self._mt_shared_params is not None:
                log.info("the trainable parameters changed: the shared ones are found again")
                if is_distributed() and is_rank_zero() and set(trainable_ids) - set(self._mt_shared_found_among):
                    log.warning(
                        "parameters became trainable after DDP wrapped the model: DDP does not average their "
                        "gradients (it lists the parameters that require grad when it starts), so the processes "
                        "drift apart; make them trainable before fit (freeze with a learning rate of 0 instead)"
                    )
            # Once, for the shared and the tasks' own.
            users = parameter_users(losses, candidates, self._mt_in_task_order(outputs))
            if weighting.ddp == "exact":  # one shared set on every process: their Jacobians are summed
                users = users_over_processes(users, losses.numel(), losses.device)
            found = shared_by_use(candidates, users, losses.numel())
            if not found:
                used = {task for tasks in users for task in tasks}
                idle = [t.name for i, t in enumerate(self._mt_tasks) if i not in used]
                why = (
                    f" in this step task(s) {idle} reach no trainable parameter (a constant loss, e.g. a batch without "
                    "their labels; Task(mask=...) or ignore_value keep such a loss in the graph as 0);"
                    if idle
                    else ""
                )
                raise MultiLossError(
                    f"weighting {weighting.name!r} uses route='parameters', but no trainable parameter is used by two "
                    f"or more task losses (frozen ones are left out):{why} override shared_parameters() to return "
                    "the shared ones, or use route='representation'. A frozen trunk (BackboneFinetuning's first "
                    "epochs) leaves a gradient strategy nothing to compare: keep a shared layer trainable, or train "
                    "the heads first with a loss-level strategy"
                )
            self._mt_shared_params = found
            self._mt_shared_found_among = trainable_ids
            shared_ids = {id(p) for p in found}
            rest = [(p, u) for p, u in zip(candidates, users, strict=True) if id(p) not in shared_ids]
            by_task = own_by_task([p for p, _ in rest], [u for _, u in rest], losses.numel())
            self._mt_kept_own_parameters(
                _usage_key(found, candidates), lambda: leaves_by_task(losses, skip=found), lambda: by_task
            )
        # Frozen ones left out (a trunk frozen for a while): autograd refuses them.
        inputs = {"parameters": [p for p in self.shared_parameters() if p.requires_grad]}
        if reuse:
            own = self._mt_task_parameters(losses, inputs["parameters"], outputs, candidates if uses_default else None)
            if own is not None:
                inputs["task_parameters"] = own
        return inputs

    def _mt_in_task_order(self, outputs: Mapping[str, Any]) -> list[Any]:
        return [outputs[task.name] for task in self._mt_tasks]

    def _mt_trainable_parameters(self) -> list[nn.Parameter]:
        """The module's trainable parameters outside the weighting.

        The module's parameters are listed once per fit (walking the modules costs about 80 µs
        for a model of ten layers, every step); which of them require grad is read each time.
        """
        if self._mt_parameters is None:
            self._mt_parameters = [p for n, p in self.named_parameters() if not n.startswith("weighting.")]
        return [p for p in self._mt_parameters if p.requires_grad]

    def _mt_task_parameters(
        self,
        losses: Tensor,
        shared: list[nn.Parameter],
        outputs: Mapping[str, Any],
        trainable: list[nn.Parameter] | None = None,
    ) -> list[list[nn.Parameter]] | None:
        """Per task, the trainable parameters outside ``shared`` that only its loss uses; ``None``
        where one of them serves two tasks (then the combined gradient needs Lightning's backward).

        Found by autograd (K backward passes) on the first step and again whenever the shared or
        the trainable parameters change (a head frozen, then trained) or the parameters each task's
        loss reaches do (a head that a batch without its labels leaves out of its loss, a layer that
        a second task starts to read): each step walks the graph to know
        (:meth:`_mt_kept_own_parameters`).
        ``trainable``: :meth:`_mt_trainable_parameters`, where the step has listed them already.
        """
        if trainable is None:
            trainable = self._mt_trainable_parameters()

        def find() -> list[list[nn.Parameter]] | None:
            shared_ids = {id(p) for p in shared}
            rest = [p for p in trainable if id(p) not in shared_ids]
            return own_by_task(rest, parameter_users(losses, rest, self._mt_in_task_order(outputs)), losses.numel())

        return self._mt_kept_own_parameters(
            _usage_key(shared, trainable), lambda: leaves_by_task(losses, skip=shared), find
        )

    def _mt_heads_parameters(self, losses: Tensor, representation: Tensor) -> list[list[nn.Parameter]] | None:
        """Per task, the trainable parameters its loss reaches above the shared representation (its
        head); ``None`` where the update needs Lightning's backward (see
        :func:`~lightning_multiloss.gradients.own_above_representation`).

        Read from the autograd graph whenever the trainable parameters change (``requires_grad``
        set or cleared, a new fit) or the leaves each task's loss reaches above the representation
        do (a head that a batch without its labels leaves out, a layer that a second head starts to
        read): each step walks the graph above the representation (the heads only) to know.
        """
        trainable = self._mt_trainable_parameters()
        return self._mt_kept_own_parameters(
            _usage_key((), trainable),
            lambda: leaves_by_task(losses, stop=representation),
            lambda: own_above_representation(losses, representation, trainable),
        )

    def _mt_kept_own_parameters(
        self,
        usage: tuple[tuple[int, ...], ...],
        uses: Callable[[], tuple[tuple[int, ...], ...]],
        find: Callable[[], list[list[nn.Parameter]] | None],
    ) -> list[list[nn.Parameter]] | None:
        """The tasks' own parameters for this step's graph: found with ``find`` for a graph not seen
        before, known by ``usage`` (the shared and the trainable parameters) and ``uses`` (the
        parameters each task's loss reaches: a walk of the graph, about 1 µs a node).

        The last few graphs' are kept: a task whose labels some batches lack changes the graph back
        and forth, and finding costs K backward passes. Once a graph needs Lightning's backward
        (``find`` gives ``None``: a layer that serves two tasks, a head that reads the trunk),
        the step takes it without walking, until the trainable parameters change: that backward
        gives the right update whatever the graph.
        """
        if usage == self._mt_backward_needed_for:
            return None
        key = (*usage, *uses())
        if key not in self._mt_own_params:
            if len(self._mt_own_params) >= _KEPT_USES:
                self._mt_own_params.pop(next(iter(self._mt_own_params)))  # the oldest
            self._mt_own_params[key] = find()
        own = self._mt_own_params[key]
        if own is None:
            self._mt_backward_needed_for = usage
        return own

    def _mt_all_finite(
        self,
        losses: Tensor,
        stage: Stage,
        batch_idx: int,
        outputs: Mapping[str, Any] | None = None,
        targets: Mapping[str, Any] | None = None,
    ) -> bool:
        """Read the losses now (one wait): ``False`` to skip the step, or raise naming the task (and,
        given the batch's ``outputs`` and ``targets``, whether its output or its target is not finite)."""
        values = losses.detach().tolist()
        names = [t.name for t in self._mt_tasks]
        negative: dict[str, float] = {}
        if stage == "train" and self.weighting.needs_nonnegative_losses:
            # A loss of -inf is non-finite (skipped), not a negative one (refused).
            negative = {n: v for n, v in zip(names, values, strict=True) if math.isfinite(v) and v < 0}
        nonfinite_anywhere = [not math.isfinite(v) for v in values]
        negative_anywhere = [name in negative for name in names]
        if stage == "train" and is_distributed():  # every process skips or raises, or none (one all-reduce)
            # Per task, so that every process can name the task that another one found non-finite.
            flags = torch.tensor([*nonfinite_anywhere, *negative_anywhere], dtype=torch.float32, device=losses.device)
            summed = [count > 0 for count in all_reduce_sum(flags).tolist()]
            nonfinite_anywhere, negative_anywhere = summed[: len(names)], summed[len(names) :]
        bad = any(nonfinite_anywhere)
        refuse = any(negative_anywhere)
        if not bad and not refuse:
            return True
        trainer = trainer_of(self)
        where = (
            f"step {trainer.global_step}, epoch {trainer.current_epoch}, batch {batch_idx}"
            if trainer is not None
            else f"batch {batch_idx}"
        )
        if refuse:  # not a step to skip: every step of such a loss is wrong for the method
            culprits: dict[str, object] = {
                name: negative.get(name, "negative on another process")
                for name, anywhere in zip(names, negative_anywhere, strict=True)
                if anywhere
            }
            raise MultiLossError(_negative_loss_message(self.weighting.name, culprits, f"train {where}"))
        culprits = {n: v for n, v in zip(names, values, strict=True) if not math.isfinite(v)}
        elsewhere = {
            name: "non-finite on another process"
            for name, anywhere in zip(names, nonfinite_anywhere, strict=True)
            if anywhere and name not in culprits
        }
        detail = f"task loss(es) {culprits | elsewhere}"
        if stage == "train" and self._mt_on_nonfinite == "skip":
            if culprits or trainer is None or trainer.global_rank == 0:  # each skip said once, by whoever saw it
                log.warning(
                    "on_nonfinite='skip': skipping the optimizer step of non-finite %s at train %s", detail, where
                )
            return False
        hint = (
            "; configure_multitask(on_nonfinite='skip') (multiloss-train: model.on_nonfinite=skip) skips such steps"
            if stage == "train"
            else _EVALUATION_NOT_SKIPPED
            if outputs is None or targets is None
            else f" (evaluation is not skipped: {self._mt_nonfinite_sources(culprits, outputs, targets)})"
        )
        message = f"non-finite {detail} at {stage} {where}{hint}"
        if stage != "train" and is_distributed():
            # The processes may evaluate different numbers of batches (ShardSampler), so no step can
            # wait for the others: the first such loss is kept, and every process raises together at
            # the epoch's end (check_finite_evaluation_losses).
            self._mt_eval_failures.setdefault(stage, message)
            return False
        raise NonFiniteLossError(message)

    def _mt_nonfinite_sources(
        self, culprits: Mapping[str, object], outputs: Mapping[str, Any], targets: Mapping[str, Any]
    ) -> str:
        """Where each task's non-finite loss comes from: its output (the model has diverged) or its
        target (the data). Reads the tensors: only on the way to an error."""
        said = []
        for task in self._mt_tasks:
            if task.name not in culprits:
                continue
            output, target = outputs.get(task.name), targets.get(task.target_key)
            if task.has_selection and isinstance(output, Tensor) and isinstance(target, Tensor):
                output, target = task.select(output, target, targets)
            if not _all_finite(output):
                said.append(f"{task.name!r} has non-finite outputs: the model has diverged")
            elif not _all_finite(target):
                said.append(
                    f"{task.name!r} has non-finite targets {task.target_key!r} in the batch: leave such samples "
                    "out with the task's mask= or ignore_value=float('nan')"
                )
            else:
                said.append(f"{task.name!r} has finite outputs and targets: its loss made the non-finite value")
        return "; ".join(said)

    def _mt_log(
        self,
        stage: Stage,
        losses: Tensor,
        weights: Tensor,
        total: Tensor,
        batch_size: int,
        logging_step: bool = True,
        loader: int = 0,
        labelled: Tensor | None = None,
    ) -> None:
        total_key, loss_keys, weight_keys = self._mt_keys[stage]
        if stage != "train":
            # Epoch means weighted by the samples they are over, whose sums torchmetrics adds up over
            # processes: exact under DDP also when the processes evaluate different numbers of
            # samples, where Lightning's sync_dist would take an integer mean of their counts. A
            # masked task's loss is a mean over its labelled samples: weighted by their number (a
            # batch without one adds nothing), so the epoch value is the mean over them all.
            values = [total.detach(), *losses.detach().unbind(), *weights.unbind()]
            keys = [total_key, *loss_keys, *weight_keys]
            counts = [self._mt_labelled_counts.get(i, batch_size) for i in range(len(loss_keys))]
            sizes = [batch_size, *counts, *[batch_size] * len(weight_keys)]
            means = self._mt_eval_metrics(stage, loader)[0]
            names = self._mt_loader_attributes(stage, loader, "means", len(means))
            for key, mean, value, size, name in zip(keys, means, values, sizes, names, strict=True):
                mean.update(value, size)
                self.log(
                    key,
                    mean,
                    on_step=False,
                    on_epoch=True,
                    prog_bar=key == total_key,
                    batch_size=batch_size,
                    metric_attribute=name,
                )
            return
        self.log(total_key, total.detach(), on_step=True, on_epoch=False, batch_size=batch_size, prog_bar=True)
        # Each logged key costs Lightning a fixed amount per call, and the loggers write step values
        # only on their logging steps, so per-task training values are logged on those steps alone.
        if logging_step:
            self._mt_log_task_values(losses, weights, batch_size, labelled)

    def _mt_log_task_values(self, losses: Tensor, weights: Tensor, batch_size: int, labelled: Tensor | None) -> None:
        """Log a training step's task losses and weights: NaN for the loss of a task without a
        labelled sample in the batch (``labelled``: see :meth:`_mt_labelled`), whose 0 in the
        weighted sum is no value of the task's loss."""
        _, loss_keys, weight_keys = self._mt_keys["train"]
        shown = losses.detach()
        if labelled is not None:
            shown = torch.where(labelled > 0, shown, torch.full_like(shown, math.nan))
        values_by_key = dict(zip(loss_keys, shown.unbind(), strict=True))
        values_by_key.update(zip(weight_keys, weights.unbind(), strict=True))
        self.log_dict(values_by_key, on_step=True, on_epoch=False, batch_size=batch_size)

    def _mt_start_evaluation_states(self, stage: Literal["val", "test"]) -> None:
        """Reset the ``stage`` means, and, outside inference mode, the metrics whose states are
        inference tensors.

        At an epoch's start they hold nothing yet (Lightning resets them at each epoch's end), but
        in a model made on the meta device and then ``to_empty`` the means held uninitialised
        memory until then (the tasks' own metrics too: torchmetrics' defaults are that memory).
        """
        means, metrics = self._mt_eval_metrics(stage, 0)
        later = [
            metric
            for key, group in self._mt_other_loaders.items()
            if key.startswith(f"{stage}_")
            for part in cast(nn.ModuleDict, group).values()
            for metric in cast("Sequence[Metric]", part)
        ]
        inference = torch.is_inference_mode_enabled()  # inference tensors may be updated in place then
        for metric in [*means, *metrics, *later]:
            if isinstance(metric, EvaluationMean) or (not inference and _holds_inference_tensors(metric)):
                metric.reset()

    def _mt_eval_metrics(self, stage: Stage, loader: int) -> tuple[Sequence[MeanMetric], Sequence[Metric]]:
        """The evaluation means and the tasks' metrics of ``stage`` for dataloader ``loader``."""
        means = cast("Sequence[MeanMetric]", self._mt_eval_means[stage]) if stage != "train" else []
        metrics = (
            cast("Sequence[Metric]", self._mt_metrics[f"{stage}_metrics"])
            if f"{stage}_metrics" in self._mt_metrics
            else []
        )
        if loader == 0:
            return means, metrics
        key = f"{stage}_{loader}"
        if key not in self._mt_other_loaders:
            copies = nn.ModuleDict(
                {
                    "means": nn.ModuleList(copy.deepcopy(list(means))),
                    "metrics": nn.ModuleList(copy.deepcopy(list(metrics))),
                }
            )
            for metric in copies.modules():
                if isinstance(metric, Metric):
                    metric.reset()  # copied from the first loader's, which may hold this epoch's values
                    metric.persistent(False)  # made on the way: never in a checkpoint (a fresh model has none)
            self._mt_other_loaders[key] = copies
        group = cast(nn.ModuleDict, self._mt_other_loaders[key])
        return cast("Sequence[MeanMetric]", group["means"]), cast("Sequence[Metric]", group["metrics"])

    @staticmethod
    def _mt_loader_attributes(stage: Stage, loader: int, group: str, count: int) -> list[str | None]:
        """The attribute names of a later loader's means or metrics, for ``self.log`` (Lightning
        lists a module's metrics once, before these were made); ``None`` (found by Lightning) for the first."""
        if loader == 0:
            return [None] * count
        return [f"_mt_other_loaders.{stage}_{loader}.{group}.{i}" for i in range(count)]

    def _mt_update_metrics(
        self, stage: Stage, outputs: Mapping[str, Tensor], targets: Mapping[str, Any], loader: int = 0
    ) -> None:
        """Update the tasks' metrics of ``stage`` (device operations) and log them as epoch values.

        Lightning computes each logged metric at the epoch's end (over all processes) and resets it.
        """
        metrics = self._mt_eval_metrics(stage, loader)[1]
        names = self._mt_loader_attributes(stage, loader, "metrics", len(metrics))
        selected: dict[int, tuple[Tensor, Any] | None] = {}  # per task: its labelled outputs and targets
        for (at, key), metric, name in zip(self._mt_metric_keys[stage], metrics, names, strict=True):
            if at not in selected:
                task = self._mt_tasks[at]
                output, target = (
                    apply_to_collection(outputs[task.name], Tensor, Tensor.detach),
                    targets[task.target_key],
                )
                if task.has_selection:
                    output, target = task.select(output, target, targets)
                    selected[at] = (output, target) if output.shape[0] > 0 else None
                else:
                    selected[at] = (output, target)
            pair = selected[at]
            if pair is not None:
                try:
                    metric.update(*pair)
                except (RuntimeError, ValueError, TypeError, AttributeError, IndexError) as error:
                    raise MultiLossError(
                        f"task {self._mt_tasks[at].name!r}: its metric {key!r} failed on output "
                        f"{_described(pair[0])} and target {_described(pair[1])}: {first_line(error)}"
                    ) from error
            # Under DDP every process logs every metric at every step, labelled or not: Lightning
            # computes a logged metric at the epoch's end with a collective, which would wait
            # forever for a process that never logged it (a task without labels in its shard).
            if pair is not None or is_distributed():
                self.log(key, metric, on_step=False, on_epoch=True, metric_attribute=name)

    def _mt_eval_step(self, batch: Any, batch_idx: int, stage: Literal["val", "test"], loader: int = 0) -> Tensor:
        # The strategy evaluates (no state changed, the last training weights for a gradient one)
        # also where the module stays in training mode (on_validation_model_eval overridden: MC dropout).
        with _strategy_in_mode(self.weighting, training=False):
            outputs, targets, losses, batch_size = self._mt_forward(batch)
            self._mt_all_finite(losses, stage, batch_idx, outputs, targets)
            result = self.weighting(losses)
        self._mt_log(stage, losses, result.weights, result.loss, batch_size, loader=loader)
        self._mt_update_metrics(stage, outputs, targets, loader)
        return result.loss


_is_compiling: Callable[[], bool] = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
_is_exporting: Callable[[], bool] = getattr(torch.compiler, "is_exporting", None) or (lambda: False)


_EVALUATION_NOT_SKIPPED = (
    " (evaluation is not skipped: a NaN there comes from the model's outputs or the batch's targets)"
)


def _first_nonfinite_at(
    at: int, names: Sequence[str], values: Sequence[float], firsts: Sequence[int]
) -> dict[str, object]:
    """By task, the values first non-finite at pending step ``at`` (this process's, or where another
    process alone saw it, saying so)."""
    return {
        name: value if not math.isfinite(value) else "non-finite on another process"
        for name, value, first in zip(names, values, firsts, strict=True)
        if first == at
    }


def _all_finite(value: Any) -> bool:
    """Whether every floating tensor in ``value`` (a tensor, or a tuple, list or dict of them) is finite."""
    if isinstance(value, Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, Mapping):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_all_finite(v) for v in value)
    return True


def _holds_inference_tensors(metric: Metric) -> bool:
    """Whether a state of ``metric`` (or of a metric it wraps) is an inference tensor."""
    return any(
        isinstance(state, Tensor) and state.is_inference()
        for inner in metric.modules()
        if isinstance(inner, Metric)
        for state in inner.metric_state.values()
    )


@dataclass
class _CallbackWatch:
    """Whether the fit's callbacks include a :class:`LossWeightingCallback` (read at each fit's start)
    and the last optimizer step seen without one."""

    present: bool = True
    last_step: int = 0


def _trainer_key(trainer: Any | None) -> int:
    """What tells Trainers apart in the skip's bookkeeping: its id, 0 outside one."""
    return id(trainer) if trainer is not None else 0


def _in_shared_memory(state: Tensor | list[Tensor]) -> bool:
    """Whether a metric state (a tensor, or a list of them) is in the CPU's shared memory."""
    tensors = state if isinstance(state, list) else [state]
    return any(t.device.type == "cpu" and t.is_shared() for t in tensors)


def _usage_key(shared: Sequence[nn.Parameter], trainable: Sequence[nn.Parameter]) -> tuple[tuple[int, ...], ...]:
    """What the tasks' own parameters were found for: the shared and the trainable parameters."""
    return tuple(id(p) for p in shared), tuple(id(p) for p in trainable)


@torch.compiler.disable
def _keep_representation_eagerly(module: MultiTaskMixin, z: Tensor) -> None:
    """Keep ``z`` for the representation route, outside the compiled graph.

    Under ``torch.compile`` of the whole ``forward`` this call is a graph break, so ``z`` is a real
    tensor between two compiled graphs (trunk, heads): the per-task gradients with respect to it
    run through the heads' graph. Inside one graph ``z`` would be an intermediate no gradient reaches.
    """
    module._mt_representation = z


@torch.compiler.disable
def _run_eagerly(step: Callable[..., Tensor], *args: Any) -> Tensor:
    """Run a step of the mixin uncompiled; the module's ``forward`` inside it stays compiled.

    ``trainer.fit(torch.compile(model))`` makes Lightning compile ``forward`` and the steps. The
    steps are host-side bookkeeping (logging, checks, the strategy's host solvers) that dynamo
    cannot trace (``self.log`` fails inside it); the work worth compiling is in ``forward``, which
    Lightning compiles on its own.
    """
    return step(*args)


@contextmanager
def _strategy_in_mode(weighting: Weighting, training: bool) -> Iterator[None]:
    """The strategy in training (``True``: a training step) or evaluation mode inside, whatever the
    module's mode, which ``.train()`` and ``.eval()`` give it; its mode restored on exit. A module
    kept in training mode for validation (MC dropout) must not train the strategy, nor one put in
    evaluation mode for training (all its dropout off) leave it untrained."""
    if weighting.training == training:
        yield
        return
    weighting.train(training)
    try:
        yield
    finally:
        weighting.train(not training)


@contextmanager
def _graphs_kept_for_several_backwards() -> Iterator[None]:
    """No donated buffers in ``torch.compile`` graphs: the gradient strategies backpropagate through them several times.

    A compiled graph's backward may free its saved activations ("donated buffers", torch >= 2.5),
    which needs ``retain_graph=False``; the gradient strategies take the per-task gradients with
    ``retain_graph=True`` before Lightning's own backward. Torch reads the option when it compiles a
    graph (in ``forward``) and again in each backward that keeps the graph, so it is off for the
    whole training step of a gradient strategy and nowhere else (Lightning's backward keeps no graph).
    """
    if not hasattr(_functorch_config, "donated_buffer"):
        yield
        return
    previous = _functorch_config.donated_buffer
    _functorch_config.donated_buffer = False
    try:
        yield
    finally:
        _functorch_config.donated_buffer = previous


def _check_mixin_order(module: Any) -> None:
    """The mixin must precede the LightningModule among the bases, or Lightning's steps win."""
    mro = type(module).__mro__
    mixin_at = mro.index(MultiTaskMixin)
    for at, cls in enumerate(mro):
        if is_lightning_module_class(cls):
            if at < mixin_at:
                raise MultiLossError(
                    f"{type(module).__name__}: list MultiTaskMixin before LightningModule among the base classes, "
                    f"as in `class {type(module).__name__}(MultiTaskMixin, LightningModule)`"
                )
            return


def _callback_class_for(module: Any) -> type[LossWeightingHooks]:
    """The ``LossWeightingCallback`` of the module's Lightning package (imported only when needed)."""
    if lightning_package(module) == "lightning.pytorch":
        from lightning_multiloss.lightning import LossWeightingCallback as LightningCallback

        return LightningCallback
    from lightning_multiloss.callback import LossWeightingCallback

    return LossWeightingCallback


def _first_tensor(output: Any) -> Tensor | None:
    """The first tensor of a task's output: a tensor, or a tuple, list or dict of them."""
    if isinstance(output, Tensor):
        return output
    items = output.values() if isinstance(output, Mapping) else output if isinstance(output, list | tuple) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def _described(value: Any) -> str:
    """``(64, 10) float32`` for a tensor, ``tuple[(64, 1) float32, (64, 1) float32]`` for a tuple of them."""
    if isinstance(value, Tensor):
        return f"{tuple(value.shape)} {value.dtype}"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__}[{', '.join(_described(item) for item in value)}]"
    return type(value).__name__
