"""The training app: ``multiloss-train`` (or ``python -m lightning_multiloss.app.train``).

With no arguments it trains the default experiment (the UCI digits: a 10-class head, a 64-value
reconstruction head, a 1-value regression head) with fixed weights, then prints a per-task table
of validation and test metrics. Everything else is a Hydra override::

    multiloss-train weighting=scheduled schedule@weighting.schedule=cosine
    multiloss-train lightning=pytorch_lightning
    multiloss-train experiment=loc_cls trainer=ddp_cpu
    multiloss-train -m seed=0,1,2 weighting=fixed,learnable

Each run leaves in Hydra's run folder: ``checkpoints/`` (``last.ckpt``), ``csv/`` (the
metrics, and ``loss_weights.csv`` / ``loss_weights.png``: the weight trajectory), ``.hydra/``
(the resolved config and the overrides) and ``result.json``.

``result.json``: the run's status, metrics, weights and identity, one
:class:`~lightning_multiloss.results.RunResult` (its fields are documented there).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import socket
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_multiloss._callback_hooks import LossWeightingHooks
from lightning_multiloss._run_recorder import launched_as_rank_zero
from lightning_multiloss.app.config import call, config_dir, hydra_import_errors_unlogged, validate_config
from lightning_multiloss.app.namespace import DEFAULT_LIGHTNING, import_lightning, use_lightning
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.hydra_callbacks import task_overrides
from lightning_multiloss.mixin import MultiTaskMixin
from lightning_multiloss.results import RESULT_FILE, RunResult, config_key
from lightning_multiloss.weighting import Weighting

RUN_DIR_ENV = "LIGHTNING_MULTILOSS_RUN_DIR"
"""Set by the training process for the DDP processes Lightning starts: the run folder to reuse."""
OVERRIDES_ENV = "LIGHTNING_MULTILOSS_OVERRIDES"
"""Set with it: the job's own overrides (JSON), so that a DDP process runs one job, not a sweep."""
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", RUN_DIR_ENV, OVERRIDES_ENV)

_task_started = False
_failed_jobs: list[str] = []
"""The jobs of a sweep (``-m``) that failed: the sweep runs the others, then exits with status 1."""
log = logging.getLogger(__name__)


# -- result.json --------------------------------------------------------------------------------
def _float(value: Any) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def task_metrics(logged: Mapping[str, Any], stage: str, tasks: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from Lightning's ``<stage>/<metric>/<task>`` results (``loss`` included).

    Example:
        >>> task_metrics({"val/acc/digit": 0.5, "val/loss/digit": 1.0, "val/weight/digit": 1.0, "val/loss": 1.0},
        ...              "val", ["digit"])
        {'digit': {'acc': 0.5, 'loss': 1.0}}
    """
    metrics: dict[str, dict[str, float]] = {task: {} for task in tasks}
    for key, value in logged.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == stage and parts[2] in metrics and parts[1] != "weight":
            metrics[parts[2]][parts[1]] = _float(value)
    return metrics


def format_table(result: RunResult) -> str:
    """The per-task table printed at the end of a run."""
    rows = [("task", "weight", "metric", "better", "val", "test")]
    test = result.metrics if result.evaluated_on == "test" else {}
    for task, values in result.val_metrics.items():
        weight = result.weights.get(task)
        names = sorted(values, key=lambda m: (m != result.primary.get(task), m == "loss", m))
        for i, metric in enumerate(names):
            test_value = test.get(task, {}).get(metric)
            rows.append(
                (
                    task if i == 0 else "",
                    f"{weight:.4f}" if i == 0 and weight is not None else "",
                    metric + (" *" if metric == result.primary.get(task) else ""),
                    result.directions[task].get(metric, ""),
                    f"{values[metric]:.4f}",
                    "-" if test_value is None else f"{test_value:.4f}",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    title = (
        f"{result.experiment}"
        + (f" (single-task baseline of {result.baseline_of})" if result.baseline_of else "")
        + f", weighting={result.weighting}, seed={result.seed}"
    )
    return "\n".join([title, *lines, "* primary metric; better: max or min", f"outputs: {result.output_dir}"])


# -- building ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSummary:
    """What resuming needs to match of a model: its tasks in order, their head sizes, its weighting, its state."""

    tasks: dict[str, int | None]
    """Task → the size of its head (``out_features``; None: not known), in the loss vector's order."""
    weighting: str | None
    """The weighting's registry name (None: not known)."""
    shapes: dict[str, tuple[int, ...]]
    """The shape of every tensor of the module's ``state_dict``."""

    @classmethod
    def of(cls, hparams: Mapping[str, Any], state: Mapping[str, Any]) -> ModelSummary:
        """The summary of a :class:`~lightning_multiloss.app.models.MultiTaskNet` from its hyper-parameters
        and state (a checkpoint's, or a built model's). Without hyper-parameters: the ``heads.<task>`` of the state.
        """
        shapes = {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}
        specs = hparams.get("tasks")
        if isinstance(specs, Mapping):
            tasks = {
                str(name): spec.get("out_features") if isinstance(spec, Mapping) else None
                for name, spec in specs.items()
            }
        else:
            tasks = {key.split(".")[1]: None for key in shapes if key.startswith("heads.")}
        return cls(tasks, _weighting_name(hparams.get("weighting")), shapes)

    def describe(self) -> str:
        tasks = ", ".join(
            name if size is None else f"{name} ({size} output{'' if size == 1 else 's'})"
            for name, size in self.tasks.items()
        )
        return f"tasks {tasks or '(none)'} and weighting {self.weighting or 'not known'!r}"


@dataclass(frozen=True)
class CheckpointInfo:
    """A checked Lightning checkpoint: its absolute path, how far its training went and what it trained."""

    path: str
    epochs: int
    """Training epochs completed."""
    steps: int
    """Optimizer steps completed (``global_step``)."""
    model: ModelSummary
    """The model it holds."""
    datamodule_states: Mapping[str, Any]
    """The states data modules keep in it (their ``state_dict``), by the class's qualified name."""
    optimizer: Mapping[str, Any] | None = None
    """The optimizer's config it was trained with (``model.optimizer``, from its hyper-parameters)."""
    weighting: Mapping[str, Any] | None = None
    """The weighting's config it was trained with (``weighting``, from its hyper-parameters)."""


def check_checkpoint(path: str | None) -> CheckpointInfo | None:
    """``path`` and its progress if it is a readable Lightning checkpoint, else an error naming it."""
    if path is None:
        return None
    # Relative to the folder the run was launched from, also where Hydra changes into the run's
    # folder (hydra.job.chdir=true).
    path = to_absolute_path(os.path.expanduser(str(path)))
    if os.path.isdir(path):
        raise MultiLossError(f"ckpt_path {path!r} is a folder; give the checkpoint file (e.g. checkpoints/last.ckpt)")
    if not os.path.isfile(path):
        raise MultiLossError(f"ckpt_path {path!r}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        text = str(error).strip()
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; torch's error is cryptic then
            reason = "the file is not in torch.save's format"
        elif "weights_only" in text or "Weights only load failed" in text:
            # torch's own message suggests weights_only=False, which would run code from the file.
            reason = "it holds more than plain values (torch.load with weights_only=True refused it)"
        else:
            reason = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
        raise MultiLossError(f"ckpt_path {path!r} is not a readable PyTorch checkpoint: {reason}") from None
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise MultiLossError(f"ckpt_path {path!r} is not a Lightning checkpoint (no 'state_dict')")
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    # Epochs whose batches all ran: Lightning counts an epoch "processed" before on_train_epoch_end,
    # where the checkpoints are written, and "completed" after; a resumed fit starts after it.
    epochs = progress.get("processed", progress.get("completed", checkpoint.get("epoch", 0)))
    hparams = checkpoint.get("hyper_parameters")
    model = ModelSummary.of(hparams if isinstance(hparams, Mapping) else {}, checkpoint["state_dict"])
    # Lightning keeps a data module's state under its class's name, beside its own entries.
    datamodule_states = {
        key: value for key, value in checkpoint.items() if isinstance(value, Mapping) and key not in _LIGHTNING_ENTRIES
    }
    optimizer = hparams.get("optimizer") if isinstance(hparams, Mapping) else None
    weighting = hparams.get("weighting") if isinstance(hparams, Mapping) else None
    return CheckpointInfo(
        path,
        int(epochs),
        int(checkpoint.get("global_step", 0)),
        model,
        datamodule_states,
        optimizer if isinstance(optimizer, Mapping) else None,
        weighting if isinstance(weighting, Mapping) else None,
    )


_LIGHTNING_ENTRIES = frozenset(
    ("state_dict", "loops", "callbacks", "hyper_parameters", "datamodule_hyper_parameters", "MixedPrecision")
)


def _names(keys: Sequence[str], most: int = 3) -> str:
    return ", ".join(keys[:most]) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def _optional_state(key: str) -> bool:
    """Whether ``key`` is state that a checkpoint may lack: a weighting's
    (:attr:`Weighting.OPTIONAL_STATE`) or the mixin's (:attr:`MultiTaskMixin.MULTITASK_OPTIONAL_STATE`)."""
    owner, _, name = key.rpartition(".")
    weightings = owner.split(".")[-1] == "weighting" and name in Weighting.OPTIONAL_STATE
    return weightings or key in MultiTaskMixin.MULTITASK_OPTIONAL_STATE


def check_same_model(checkpoint: CheckpointInfo, model: ModelSummary) -> None:
    """An error naming what the checkpoint holds and what the config asks for, when they differ.

    Resuming needs the same tasks in the same order (the weighting's per-task state follows that
    order), the same weighting and a state of the same keys and shapes.
    """
    held, shapes = checkpoint.model, checkpoint.model.shapes
    differences = []
    # The mixin's running sums are sized by the tasks, which the message names anyway.
    reshaped = [
        key
        for key in model.shapes
        if key in shapes and shapes[key] != model.shapes[key] and key not in MultiTaskMixin.MULTITASK_OPTIONAL_STATE
    ]
    if reshaped:
        key = reshaped[0]
        differences.append(f"{key} is {list(shapes[key])} in the checkpoint, {list(model.shapes[key])} in the config")
    missing = [key for key in model.shapes if key not in shapes and not _optional_state(key)]
    if missing:
        differences.append(f"the checkpoint lacks {_names(missing)}")
    unexpected = [key for key in shapes if key not in model.shapes]
    if unexpected:
        differences.append(f"the config's model lacks {_names(unexpected)}")
    if not differences and list(held.tasks.items()) == list(model.tasks.items()) and held.weighting == model.weighting:
        return
    detail = f" ({'; '.join(differences)})" if differences else ""
    raise MultiLossError(
        f"ckpt_path {checkpoint.path!r} does not fit the configured model: the checkpoint holds "
        f"{held.describe()}; the config asks for {model.describe()}{detail}"
    )


def check_same_optimizer(checkpoint: CheckpointInfo, optimizer: Mapping[str, Any]) -> None:
    """An error where the config's ``model.optimizer`` is not the one the checkpoint was trained with.

    A resumed fit loads the optimizer's state, the options of its parameter groups included: an
    optimizer of another class fails at its first step (SGD finds no ``momentum`` in Adam's
    groups), and another value of an option (``model.optimizer.lr``) would be replaced by the
    checkpoint's without a word. Compared on the configs (the model's hyper-parameters), not on the
    optimizer's state, where a scheduler or a callback may have changed a value legitimately.
    """
    held = checkpoint.optimizer
    if held is None:
        return
    if held.get("_target_") != optimizer.get("_target_"):
        raise MultiLossError(
            f"ckpt_path {checkpoint.path!r} was trained with model.optimizer._target_={held.get('_target_')}, the "
            f"config asks for {optimizer.get('_target_')}: a resumed run continues the checkpoint's optimizer; "
            f"resume with model.optimizer._target_={held.get('_target_')}"
        )
    for key in sorted({*held, *optimizer} - {"_target_"}):
        before, now = held.get(key, _NOT_SET), optimizer.get(key, _NOT_SET)
        if _option(before) == _option(now):
            continue
        raise MultiLossError(
            f"ckpt_path {checkpoint.path!r} was trained with model.optimizer.{key}={before}, the config asks for "
            f"{now}: a resumed run continues with the optimizer's state from the checkpoint, where this value "
            f"would not take effect; resume with model.optimizer.{key}={before}"
        )


# The weighting settings a resumed run cannot follow, and why.
_FIXED_ON_RESUME = {
    # The first value of a learned state, which a resumed run loads from the checkpoint.
    "init": "a resumed run continues with the weighting's learned state from the checkpoint, where this value "
    "would not take effect",
    # STCH records its nadir at the warm-up's end: moved below the epochs done, it never would.
    "warmup_epochs": "the warm-up's end is when the weighting records its reference point, which a resumed run "
    "would miss or take at another epoch than the checkpoint's run planned",
}


def check_same_weighting_settings(checkpoint: CheckpointInfo, weighting: Mapping[str, Any], warn: bool = True) -> None:
    """An error where the config changes a weighting setting that a resumed run cannot follow (an
    initial value of a learned state, ``weighting.init``; STCH's ``warmup_epochs``), a warning naming
    each other change (a temperature, a seed: followed from the resumed step on). The weighting
    itself is compared by :func:`check_same_model`."""
    held = checkpoint.weighting
    if held is None or held.get("_target_") != weighting.get("_target_"):
        return
    changed = []
    for key in sorted({*held, *weighting} - {"_target_"}):
        before, now = held.get(key, _NOT_SET), weighting.get(key, _NOT_SET)
        if _option(before) == _option(now):
            continue
        if key in _FIXED_ON_RESUME:
            raise MultiLossError(
                f"ckpt_path {checkpoint.path!r} was trained with weighting.{key}={before}, the config asks for "
                f"{now}: {_FIXED_ON_RESUME[key]}; resume with weighting.{key}={before}"
            )
        changed.append(f"weighting.{key} from {before} to {now}")
    if changed and warn:
        log.warning("the resumed run changes %s: from the resumed step on", ", ".join(changed))


_NOT_SET = "(not set)"


def _option(value: Any) -> Any:
    """An optimizer option as a comparable plain value (a tuple as a list)."""
    return [_option(v) for v in value] if isinstance(value, tuple | list) else value


def keep_earlier_csv_metrics(trainer: Any, step: int) -> None:
    """Before a run resumes into its own folder (``hydra.run.dir`` of the run it resumes): Lightning's
    ``CSVLogger`` deletes the ``metrics.csv`` it finds there when it starts, with the earlier rows;
    they are moved beside it, to ``metrics-until-step-<step>.csv``."""
    for logger in trainer.loggers:
        if type(logger).__name__ != "CSVLogger":
            continue
        path = os.path.join(logger.log_dir, "metrics.csv")
        if os.path.isfile(path):
            kept = os.path.join(logger.log_dir, f"metrics-until-step-{step}.csv")
            os.replace(path, kept)
            log.warning(
                "resumed into a folder that holds %s: Lightning's CSVLogger starts it anew; the rows logged "
                "before the checkpoint are in %s",
                path,
                kept,
            )


def check_resumable(checkpoint: CheckpointInfo, max_epochs: int | None, max_steps: int) -> None:
    """An error when the Trainer's limits leave nothing to train after ``checkpoint``."""
    if max_epochs is not None and max_epochs >= 0 and checkpoint.epochs >= max_epochs:
        raise MultiLossError(
            f"ckpt_path {checkpoint.path!r} has trained {checkpoint.epochs} epochs already and "
            f"trainer.max_epochs={max_epochs} leaves nothing to train: set trainer.max_epochs above "
            f"{checkpoint.epochs} to continue"
        )
    if max_steps >= 0 and checkpoint.steps >= max_steps:
        raise MultiLossError(
            f"ckpt_path {checkpoint.path!r} has trained {checkpoint.steps} optimizer steps already and "
            f"trainer.max_steps={max_steps} leaves nothing to train: set trainer.max_steps above "
            f"{checkpoint.steps} to continue"
        )


def _resolved(cfg: DictConfig) -> DictConfig:
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", "") or ""
        message = (getattr(error, "msg", None) or str(error)).splitlines()[0]
        raise MultiLossError(f"config key '{key}': {message}" if key else f"config: {message}") from None
    resolved = OmegaConf.create(plain)
    assert isinstance(resolved, DictConfig)
    return resolved


def single_task(cfg: DictConfig, task: str) -> DictConfig:
    """The config of a single-task baseline: only ``task`` of the model, on its plain loss (weight 1)."""
    tasks = cfg.model.tasks
    if task not in tasks:
        raise MultiLossError(f"baseline_of={task!r}: the model has no such task; its tasks are {list(tasks)}")
    cfg = cfg.copy()
    cfg.model.tasks = {task: tasks[task]}
    cfg.weighting = {"_target_": "lightning_multiloss.weighting.Fixed"}
    return cfg


def with_scheduled_task(cfg: DictConfig) -> DictConfig:
    """``weighting=scheduled``: the experiment's ``scheduled_task`` as the weighting's ``task``, if it names none.

    The plugin's ``weighting/scheduled.yaml`` knows nothing of the demo's experiments: a single
    schedule is ``alpha`` (two tasks) unless ``weighting.task`` names the task it drives. Each
    experiment of the demo names that task (``recon`` for digits), so ``weighting=scheduled``
    works on every experiment as it is.
    """
    weighting = cfg.get("weighting")
    task = cfg.get("scheduled_task")
    if task is None or _weighting_name(weighting) != "scheduled" or weighting.get("task") is not None:
        return cfg
    schedule = weighting.get("schedule")
    if isinstance(schedule, ListConfig) or (isinstance(schedule, DictConfig) and "_target_" not in schedule):
        return cfg  # one schedule per task (a list, or a dict by task): no task to drive
    tasks = list(cfg.model.get("tasks") or {})
    if task not in tasks:  # e.g. the experiment's task was removed with ~model.tasks.<task>
        raise MultiLossError(
            f"weighting=scheduled: the experiment's scheduled_task={task!r} is not a task of the model {tasks}; "
            f"name the task the schedule drives with weighting.task=<task> (or scheduled_task=<task>)"
        )
    cfg = cfg.copy()
    cfg.weighting.task = task
    return cfg


def build(cfg: DictConfig, check_model: Callable[[Any, Any], None] | None = None) -> tuple[Any, Any, Any]:
    """The datamodule, model and trainer of a composed config (validated, resolved).

    All of them, the callbacks and the loggers come from the Lightning package of the config's
    ``lightning`` key (:mod:`~lightning_multiloss.app.namespace`). ``check_model`` runs on the
    datamodule and the model before the Trainer is made (which logs its devices): an error there is
    the only output.
    """
    validate_config(cfg)
    cfg = _resolved(cfg)
    package = str(cfg.get("lightning", DEFAULT_LIGHTNING))
    lightning = import_lightning(package)
    use_lightning(cfg, package)
    if cfg.get("baseline_of") is not None:
        chosen = _weighting_name(cfg.get("weighting"))
        if chosen not in (None, "fixed"):
            log.warning(
                "single-task baseline of task %r: weighting %r does not apply (one task, weight 1)",
                cfg.baseline_of,
                chosen,
            )
        cfg = single_task(cfg, cfg.baseline_of)
    cfg = with_scheduled_task(cfg)
    check_one_set_of_processes(cfg.trainer.get("strategy"))
    if cfg.get("torch_threads") is not None:  # checked >= 1 with the config
        torch.set_num_threads(int(cfg.torch_threads))
    lightning.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = call(cfg.data, "data")
    check_evaluated(cfg, datamodule)
    model = call(
        cfg.model, "model", input_shape=list(datamodule.input_shape), weighting=cfg.weighting, _recursive_=False
    )
    model.configure_optimizers()  # the optimizer's arguments are checked now, not when training starts
    check_heads_fit_data(model, datamodule)
    check_monitors(cfg, model)
    if check_model is not None:
        check_model(datamodule, model)
    callbacks = [
        call(node, f"callbacks.{key}") for key, node in (cfg.get("callbacks") or {}).items() if node is not None
    ]
    loggers = [call(node, f"logger.{key}") for key, node in (cfg.get("logger") or {}).items() if node is not None]
    options: dict[str, Any] = {}
    if cfg.trainer.get("enable_checkpointing") is None and not any(
        isinstance(cb, lightning.callbacks.Checkpoint) for cb in callbacks
    ):
        # callbacks=none (or a set without the checkpoint): no checkpoints, as chosen, where Lightning
        # would add its own ModelCheckpoint (writing into the logger's folder, not checkpoints/).
        options["enable_checkpointing"] = False
    trainer = call(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, **options)
    # In the precision's dtype now (float64 under "64-true"), as trainer.init_module() would build
    # it: Lightning loads a checkpoint into the module as it is, then converts it, so a resumed run
    # started from the float32 rounding of the float64 weights it saved.
    model = trainer.precision_plugin.convert_module(model)
    return datamodule, model, trainer


def check_heads_fit_data(model: Any, datamodule: Any) -> None:
    """Refuse a head whose outputs are not the number of classes of the target it reads, where the
    data's settings decide that number (``data.grid`` of loc_cls: grid² cells), before training."""
    classes = datamodule.target_classes() if hasattr(datamodule, "target_classes") else {}
    sizes = ModelSummary.of(model.hparams, {}).tasks
    for task in model.tasks:
        wanted, size = classes.get(task.target_key), sizes.get(task.name)
        if wanted is not None and size is not None and size != wanted:
            raise MultiLossError(
                f"model.tasks.{task.name}.out_features is {size}, but its target {task.target_key!r} has "
                f"{wanted} classes with these data settings ({type(datamodule).__name__}): the head must give "
                f"{wanted} outputs"
            )


def check_monitors(cfg: DictConfig, model: Any) -> None:
    """Refuse, before training, a callback's ``monitor`` that the model does not log (a typo): the
    checkpoint's stopped the run at the first validation's end, ``EarlyStopping``'s with a
    traceback. The app's own models only: another module may log keys of its own."""
    if not type(model).__module__.startswith("lightning_multiloss."):
        return
    for name, node in (cfg.get("callbacks") or {}).items():
        monitor = node.get("monitor") if isinstance(node, DictConfig) else None
        problem = model.monitor_problem(monitor) if isinstance(monitor, str) else None
        if problem is not None:
            raise MultiLossError(f"config key 'callbacks.{name}.monitor': {problem}")


def check_evaluated(cfg: DictConfig, datamodule: Any) -> None:
    """Refuse, before training, a run that trains nothing (``max_epochs`` or ``max_steps`` 0: it
    would record an untrained model as completed) or whose validation after training (or test,
    with ``test``) has no batch: a trainer limit of 0, or an empty split of a data module that has
    fractions."""
    for key in ("max_epochs", "max_steps"):
        value = cfg.trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value == 0:
            also = " (or epochs, which sets it)" if key == "max_epochs" else ""
            raise MultiLossError(f"config key 'trainer.{key}'{also}: 0 trains nothing; give at least 1 (-1: no limit)")
    stages = [("val", "validation", "result.json's metrics, the checkpoints' monitor")]
    if cfg.get("test", True):
        stages.append(("test", "test", "test=false skips the test"))
    for stage, what, why in stages:
        limit = cfg.trainer.get(f"limit_{stage}_batches")
        if isinstance(limit, int | float) and limit == 0:
            raise MultiLossError(
                f"config key 'trainer.limit_{stage}_batches': 0 leaves the run without {what}, "
                f"which it needs after training ({why})"
            )
        fraction = getattr(datamodule, f"{stage}_fraction", None)
        if isinstance(fraction, int | float) and fraction == 0:
            raise MultiLossError(
                f"config key 'data.{stage}_fraction': 0 leaves the {what} split empty, "
                f"which the run needs after training ({why})"
            )


# Lightning's strategies that start new processes for each of fit, validate and test (from the
# main process, with torch.multiprocessing), and their start methods.
_NEW_PROCESSES_PER_CALL = ("ddp_spawn", "ddp_fork", "ddp_notebook")
_START_METHODS = ("spawn", "fork", "forkserver")


def check_one_set_of_processes(strategy: Any) -> None:
    """Refuse a strategy that starts new processes for each Trainer call (``ddp_spawn``, ``ddp_fork``,
    ``ddp_notebook``): the run validates and tests after fitting, so each call would rewrite
    ``csv/metrics.csv``, and the loss weights of the fit would stay in its processes."""
    if isinstance(strategy, str):
        refused = strategy.startswith(_NEW_PROCESSES_PER_CALL)
    elif isinstance(strategy, Mapping | DictConfig):
        refused = strategy.get("start_method") in _START_METHODS
    else:
        refused = False
    if refused:
        shown = strategy if isinstance(strategy, str) else f"start_method={strategy.get('start_method')}"
        raise MultiLossError(
            f"config key 'trainer.strategy': {shown} starts new processes for each of fit, validate and test, "
            "so each would rewrite csv/metrics.csv and the fit's loss weights would stay in its processes; "
            "use trainer.strategy=ddp (trainer=ddp_cpu on CPU), which starts the processes once"
        )


def _weighting_name(node: Any) -> str | None:
    """The registry name of a weighting config's strategy (before it is built)."""
    from hydra.utils import get_object

    from lightning_multiloss.weighting import Weighting

    target = node.get("_target_") if isinstance(node, Mapping | DictConfig) else None
    if not isinstance(target, str):
        return None
    if target.endswith("scheduled_weighting"):
        return "scheduled"
    try:
        with hydra_import_errors_unlogged():  # the config check names a bad _target_ in one line
            obj = get_object(target)
    except Exception:
        return target
    return obj.name if isinstance(obj, type) and issubclass(obj, Weighting) and obj.name else target


def _finish_wandb_run() -> None:
    """End the W&B run of a job that logged to W&B: the next job of a sweep would log into it otherwise."""
    wandb = sys.modules.get("wandb")  # imported only where a WandbLogger was used
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _restore_env(saved: Mapping[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def run(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train, validate and test one configuration; write ``result.json`` into ``cfg.output_dir``.

    Returns the result as written (the JSON object of :class:`RunResult`). Raises :class:`MultiLossError`
    for a configuration the library rejects (after writing ``"status": "failed"`` when the run had started).
    """
    output_dir = str(_resolved(OmegaConf.masked_copy(cfg, ["output_dir"])).output_dir)
    path = os.path.join(output_dir, RESULT_FILE)
    result = RunResult(
        status="running",
        experiment=cfg.get("name"),
        baseline_of=cfg.get("baseline_of"),
        weighting=_weighting_name(cfg.get("weighting")),
        seed=cfg.get("seed"),
        overrides=list(overrides),
        config_key=config_key(overrides),
        output_dir=output_dir,
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    rank_zero = launched_as_rank_zero()
    threads = torch.get_num_threads()  # build() may change it (torch_threads): restored at the end
    try:
        checkpoint = check_checkpoint(cfg.get("ckpt_path"))

        def resumable(datamodule: Any, model: Any) -> None:
            if checkpoint is not None:
                limits = _resolved(cfg).trainer  # the whole config: the trainer's values may read others (epochs)
                max_steps = limits.get("max_steps")
                check_resumable(checkpoint, limits.get("max_epochs"), -1 if max_steps is None else int(max_steps))
                check_same_model(checkpoint, ModelSummary.of(model.hparams, model.state_dict()))
                optimizer = model.hparams.get("optimizer")
                if isinstance(optimizer, Mapping):
                    check_same_optimizer(checkpoint, optimizer)
                weighting = model.hparams.get("weighting")
                if isinstance(weighting, Mapping):  # the error on every process, the warning once
                    check_same_weighting_settings(checkpoint, weighting, warn=rank_zero)
                saved = checkpoint.datamodule_states.get(type(datamodule).__qualname__)
                if saved is not None and hasattr(datamodule, "check_split_of"):
                    datamodule.check_split_of(saved, f"ckpt_path {checkpoint.path!r}")

        datamodule, model, trainer = build(cfg, check_model=resumable)
        ckpt_path = None if checkpoint is None else checkpoint.path
    except BaseException as error:
        if rank_zero:
            result.status = "failed"
            result.error = f"{type(error).__name__}: {error}"
            os.makedirs(output_dir, exist_ok=True)
            result.write(path)
        torch.set_num_threads(threads)
        raise
    tasks = [task.name for task in model.tasks]
    result.weighting = model.weighting.name or type(model.weighting).__name__
    result.seed = int(cfg.seed)
    result.directions = {t: {**model.directions[t], "loss": "min"} for t in tasks}
    result.primary = {t: model.primary[t] or "loss" for t in tasks}
    result.world_size = int(trainer.world_size)
    rank_zero = trainer.is_global_zero
    if rank_zero:
        os.makedirs(output_dir, exist_ok=True)
        result.write(path)
    saved_env = {key: os.environ.get(key) for key in _DDP_ENV}
    # The DDP processes that Lightning starts re-run this program: they must join this run.
    os.environ[RUN_DIR_ENV] = str(output_dir)
    os.environ[OVERRIDES_ENV] = json.dumps(list(overrides))
    try:
        if checkpoint is not None and rank_zero:
            keep_earlier_csv_metrics(trainer, checkpoint.steps)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.interrupted:
            raise KeyboardInterrupt("training was interrupted")
        val = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
        result.val_metrics = task_metrics(val, "val", tasks)
        if cfg.get("test", True):
            test = trainer.test(model, datamodule=datamodule, verbose=False)[0]
            result.metrics = task_metrics(test, "test", tasks)
            result.evaluated_on = "test"
        else:
            result.metrics = result.val_metrics
            result.evaluated_on = "val"
        last = model.weighting.last_weights
        result.weights = {t: float(w) for t, w in zip(tasks, last.tolist(), strict=True)}
        result.planned_steps = next((cb.plans for cb in trainer.callbacks if isinstance(cb, LossWeightingHooks)), [])
        result.status = "completed"
    except BaseException as error:
        # Not trainer.interrupted: Lightning sets that for any exception raised inside fit.
        interrupted = isinstance(error, KeyboardInterrupt | SystemExit)
        result.status = "interrupted" if interrupted else "failed"
        if not interrupted:
            result.error = f"{type(error).__name__}: {error}"
        raise
    finally:
        if rank_zero:
            result.write(path)
        _restore_env(saved_env)
        torch.set_num_threads(threads)
        _finish_wandb_run()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if rank_zero:
        print("\n" + format_table(result), flush=True)
    return result.to_dict()


# -- the command line ----------------------------------------------------------------------------
def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_CONFIG_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def _config_sources(argv: Sequence[str]) -> list[str]:
    """The arguments of ``argv`` that say where the config comes from: Hydra's ``--config-dir``,
    ``--config-path`` and ``--config-name`` (with their values) and ``hydra.searchpath`` overrides."""
    kept: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg.split("=", 1)[0] in _CONFIG_FLAGS:
            kept += [arg] if "=" in arg else [arg, next(args, "")]
        elif arg.lstrip("+~").split("=", 1)[0] == "hydra.searchpath":
            kept.append(arg)
    return kept


def ddp_child_argv(environ: Mapping[str, str] = os.environ, argv: Sequence[str] | None = None) -> list[str] | None:
    """The arguments of a DDP process started by Lightning for a run of this app, else ``None``.

    Lightning starts the ranks > 0 by re-running the command line (``argv``: this process's own,
    by default). Under ``-m`` that would start a second sweep, and Lightning's own fix reuses
    ``hydra.run.dir`` (not the sweep job's folder). So the training process passes its run folder
    and its job's overrides in the environment, and a rank > 0 runs that one job, in that folder,
    writing no Hydra files, with the config from where the command line said
    (``--config-dir``, ``hydra.searchpath``: a user's own config groups).
    """
    run_dir = environ.get(RUN_DIR_ENV)
    local_rank = environ.get("LOCAL_RANK")
    if not run_dir or local_rank in (None, "", "0"):
        return None
    sources = _config_sources(sys.argv[1:] if argv is None else argv)
    overrides = [str(o) for o in json.loads(environ.get(OVERRIDES_ENV) or "[]")]
    extra = [f"hydra.run.dir={_quote(run_dir)}", "hydra.output_subdir=null", f"hydra.job.name=rank{local_rank}"]
    if not any(o.lstrip("+~").startswith("hydra/job_logging=") for o in overrides):
        extra.append("hydra/job_logging=disabled")  # no log file of its own in the run folder
    return [*sources, *overrides, *extra]


def external_launch_argv(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> list[str]:
    """Extra arguments when an outside launcher started this process as one of several, else ``[]``.

    Under SLURM (``srun``, one task per device) or ``torchrun`` every process runs the command
    line, and each would create its own time-stamped Hydra folder. They agree instead on one
    folder named by the launch (``slurm-<job>.<step>`` or ``torchrun-<run id>``), unless the
    command line chooses the folder itself; the processes other than global rank 0 write no
    Hydra files (config copy, log file) there.
    """
    if int(environ.get("SLURM_NTASKS") or 1) > 1 and environ.get("SLURM_JOB_ID") and "SLURM_PROCID" in environ:
        launch = f"slurm-{environ['SLURM_JOB_ID']}.{environ.get('SLURM_STEP_ID', '0')}"
        rank = environ["SLURM_PROCID"]
    elif int(environ.get("WORLD_SIZE") or 1) > 1 and environ.get("TORCHELASTIC_RUN_ID") and "RANK" in environ:
        launch = f"torchrun-{environ['TORCHELASTIC_RUN_ID']}"
        rank = environ["RANK"]
    else:
        return []
    given = " ".join(argv)
    extra = []
    if "hydra.run.dir=" not in given:
        extra.append(f"hydra.run.dir=outputs/${{name}}/{launch}")
    if "hydra.sweep.dir=" not in given:
        extra.append(f"hydra.sweep.dir=multirun/${{name}}/{launch}")
    if rank != "0":
        extra.append("hydra.output_subdir=null")
        if "hydra/job_logging=" not in given:
            extra.append("hydra/job_logging=disabled")
    return extra


_FULL_ERROR = "HYDRA_FULL_ERROR"
_users_full_error: str | None = None
"""The user's own ``HYDRA_FULL_ERROR``: :func:`main` sets it while Hydra composes the config."""


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _dotted_task_name(overrides: Sequence[str]) -> str | None:
    """The error for a task added under a name with a dot (``+task@model.tasks.a.b=...``), else None."""
    for override in overrides:
        match = re.match(r"^\+{0,2}/?task@model\.tasks\.([^=]+)=", override)
        if match and "." in match.group(1):
            name = match.group(1)
            return (
                f"config key 'model.tasks.{name}': a task name cannot contain '.' (it would nest the task in "
                f"'model.tasks.{name.split('.')[0]}'); name it without a dot, e.g. {name.replace('.', '_')!r}"
            )
    return None


_NULL_ITEM = re.compile(r"(^|[\[,])\s*null\s*([\],]|$)")
"""An override's value that is ``null`` or holds it as a list item (``logger=[csv,null]``)."""


def composition_error(error: BaseException, overrides: Sequence[str]) -> str:
    """One line for an error Hydra raised before the app ran (composing the config, parsing an override).

    Example:
        >>> from hydra.errors import OverrideParseException
        >>> composition_error(OverrideParseException("seed=[1", "no viable alternative at input '[1'\\nSee ..."), [])
        "config key 'seed': cannot parse the override 'seed=[1': no viable alternative at input '[1'"
    """
    from hydra.errors import MissingConfigException, OverrideParseException

    dotted = _dotted_task_name(overrides)
    if dotted is not None:
        return dotted
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        # The override that chose it, e.g. loss@model.tasks.recon.loss=l2: its key says where.
        chosen = [o.lstrip("+~").split("=", 1) for o in overrides]
        keys = [k for k, *v in chosen if v == [option] and (k == group or k.startswith((f"{group}@", f"/{group}@")))]
        options = f". Available options: {', '.join(error.options)}" if error.options else ""
        return f"config key '{keys[0] if keys else group}': Could not find '{error.missing_cfg_file}'{options}"
    cause: BaseException | None = error
    while cause is not None:  # OmegaConf's error names the full key: a wrong type, an unknown key
        key = getattr(cause, "full_key", None)
        if isinstance(cause, OmegaConfBaseException) and key:
            message = _first_line(getattr(cause, "msg", None) or str(cause))
            typed = [o for o in overrides if o.split("=", 1)[0] == key]
            if typed and "not in struct" in message and any(a in ("-m", "--multirun") for a in sys.argv[1:]):
                # A sweep composes the primary config once without the swept choices (the defaults'
                # group options), where a key of a swept option (weighting.route) does not exist yet.
                message += (
                    f"; a sweep first composes the config without the swept options, where it does not "
                    f"exist: add it with ++ (++{typed[0]})"
                )
            return f"config key '{key}': {message}"
        cause = cause.__cause__
    if isinstance(error, OverrideParseException):
        key, _, value = error.override.lstrip("+~").partition("=")
        # A path such as checkpoints/epoch=3-step=16.ckpt: Hydra reads its '=' as syntax.
        hint = f"; quote a value that holds '=': \"{key}='{value}'\"" if "=" in value else ""
        return f"config key '{key}': cannot parse the override {error.override!r}: {_first_line(error.message)}{hint}"
    # Hydra's composition errors are short, and their later lines say what to do ("To append to your
    # default list use +group=option"): all of it, on one line.
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    interpolated = [o.lstrip("+~").split("=", 1)[0] for o in overrides if "${" in o]
    if isinstance(error, OmegaConfBaseException) and len(interpolated) == 1:  # the override that holds it
        return f"config key '{interpolated[0]}': {text}"
    return f"config: {text}"


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _app(cfg: DictConfig) -> float | None:
    global _task_started
    _task_started = True
    _restore_env({_FULL_ERROR: _users_full_error})  # errors of the run itself: Hydra reports them its own way
    hydra_cfg = HydraConfig.get()
    overrides = task_overrides()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        result = run(cfg, overrides)
    except Exception as caught:
        error = caught
        if isinstance(error, OmegaConfBaseException):  # an interpolation of the config that does not resolve
            error = MultiLossError(composition_error(error, overrides))
        if not isinstance(error, MultiLossError) and type(error).__name__ != "MisconfigurationException":
            if not in_sweep:
                raise
            log.exception("job %s failed", hydra_cfg.job.num)  # the traceback, in the job's train.log too
        if launched_as_rank_zero():
            print(f"error: {error}", file=sys.stderr, flush=True)
        elif not getattr(error, "on_every_process", False):  # one that every process raises: rank 0's line
            print(f"error (rank {os.environ.get('RANK', '?')}): {error}", file=sys.stderr, flush=True)
        if in_sweep:  # result.json says "failed"; the sweep goes on with its next job
            _failed_jobs.append(f"#{hydra_cfg.job.num} ({' '.join(overrides) or 'defaults'}): {error}")
            # What the sweeper raises after its jobs (Optuna, when every trial failed) reaches main().
            os.environ[_FULL_ERROR] = "1"
            return None
        raise SystemExit(2) from None
    # The sweep objective (for a sweeper such as Optuna's): the first task's primary metric on the
    # validation split, so that tuning never looks at the test split.
    first = next(iter(result["primary"]))
    value = result["val_metrics"].get(first, {}).get(result["primary"][first])
    return value if value is None or math.isfinite(value) else None


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in record.getMessage() for fragment in self.fragments)


def _quiet_lightning() -> None:
    """Hide what would alarm or distract a user of this app and says nothing about the run.

    A deprecation inside Lightning's own code (with recent torch), the note that best-model
    bookkeeping is not carried over when a run resumes into its new folder (expected: each run
    has its own), and an advertisement.
    """
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from .* won't be reloaded")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropMessages("litlogger"))


def _missing_plugin(error: Exception) -> str | None:
    """The message for a Hydra plugin (launcher, sweeper) that a chosen option names but that is not
    installed; ``None`` for any other error.

    Hydra raises a bare ``RuntimeError`` then. Its plugins are packages ``hydra_plugins.<package>``,
    installed from PyPI as ``<package>`` with dashes (``hydra-submitit-launcher``).
    """
    found = re.fullmatch(r"Unknown plugin class : '((hydra_plugins\.(\w+))?[\w.]*)'", str(error).strip())
    if not isinstance(error, RuntimeError) or found is None:
        return None
    package = f": pip install {found.group(3).replace('_', '-')}" if found.group(3) else ""
    return f"the Hydra plugin {found.group(1)!r} is not installed{package}"


def main() -> None:
    """The ``multiloss-train`` console script.

    Exit status: 0 on success; 2 for a configuration that cannot be composed or that the library
    or Lightning rejects (the message names the key, task, strategy or file); 1 for any other
    failure. Under ``-m`` a failed job does not stop the sweep: its ``result.json`` says
    ``"failed"`` with the error, the other jobs run, and the exit status is 1 if any job failed.
    A run stopped by SIGTERM (a scheduler's preemption, ``kill``) exits with 143 (128 + SIGTERM),
    its ``result.json`` saying ``"interrupted"``; under ``-m`` the jobs after it do not run.
    """
    child = ddp_child_argv()
    if child is not None:
        sys.argv = [sys.argv[0], *child]
    else:
        sys.argv += external_launch_argv(sys.argv[1:])
    global _users_full_error, _task_started
    _failed_jobs.clear()
    _task_started = False
    _quiet_lightning()
    # Hydra prints the errors of composing the config in several lines, unless HYDRA_FULL_ERROR is
    # set: then it raises them, and they become one line here (the user's own setting wins).
    _users_full_error = os.environ.get(_FULL_ERROR)
    os.environ[_FULL_ERROR] = "1"
    try:
        _app()
    except SystemExit as exit_:
        if exit_.code == 1 and not _task_started:  # Hydra could not compose the config
            raise SystemExit(2) from None
        if type(exit_).__name__ == "SIGTERMException":
            # Lightning stops on SIGTERM with this SystemExit, which has no code: exiting 0 would
            # tell a scheduler or a script that the run succeeded.
            print('error: the run was terminated (SIGTERM); its result.json says "interrupted"', file=sys.stderr)
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    except (HydraException, OmegaConfBaseException) as error:
        if _task_started or _users_full_error == "1":
            raise
        message = composition_error(error, sys.argv[1:])
        if "'hydra/sweeper/optuna'" in message:  # +hparams_search without the sweeper installed
            message += " (the Optuna sweeper is an extra package: pip install hydra-optuna-sweeper)"
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except Exception as error:
        missing = _missing_plugin(error)
        if missing is not None and not _task_started:
            print(f"error: {missing}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        if isinstance(error, ValueError | TypeError) and not _task_started and _users_full_error != "1":
            # Hydra refuses some overrides with these, not a HydraException (`logger=null`: "Config
            # group override must be a string or a list. Got NoneType"): still the config's error.
            message = composition_error(error, sys.argv[1:])
            nulls = [o.lstrip("+~").split("=", 1)[0] for o in sys.argv[1:] if _NULL_ITEM.search(o.partition("=")[2])]
            if len(nulls) == 1 and message.startswith("config: "):  # the one override that could be it
                message = f"config key '{nulls[0]}': {message.removeprefix('config: ')} ('~{nulls[0]}' removes it)"
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        if not _failed_jobs:
            raise
        # The sweeper itself gave up after failed jobs (Optuna: "No trials are completed yet" when
        # every trial failed): the jobs' errors are what the user needs, listed below.
        reason = _first_line(str(error)) or type(error).__name__
        print(f"error: the sweep ended after its jobs failed ({reason})", file=sys.stderr)
    finally:
        _restore_env({_FULL_ERROR: _users_full_error})
    if _failed_jobs:
        print(f"error: {len(_failed_jobs)} job(s) of the sweep failed:", file=sys.stderr)
        for line in _failed_jobs:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
