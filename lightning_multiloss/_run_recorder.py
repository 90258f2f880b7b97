"""Writes one run's ``result.json`` as the run goes, for apps other than ``multiloss-train``.

A :class:`RunRecorder` is started by the Hydra callback at the start of a job (it knows the job's
folder, overrides and seed) or by ``LossWeightingCallback(result_file=...)``; the callback fills
in what only the Trainer knows (the tasks, the metrics logged under ``<stage>/<metric>/<task>``,
the weights) and the end of the fit, of a test, or of the job sets the status. Only global rank 0
writes. Nothing here imports Lightning or Hydra.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.results import RunResult, TaskMetrics, config_key, metric_direction

_active: RunRecorder | None = None


def active_recorder() -> RunRecorder | None:
    """The recorder of the Hydra job running in this process (set by ``RunResultCallback``), else ``None``."""
    return _active


def set_active_recorder(recorder: RunRecorder | None) -> None:
    global _active
    _active = recorder


def launched_as_rank_zero(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is global rank 0 as far as its launcher says (before a Trainer exists).

    Lightning's DDP processes, ``torchrun`` and ``srun`` set these variables; a plain run sets none.
    """
    return all(environ.get(key, "0") == "0" for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))


def logged_task_metrics(logged: Mapping[str, Any], stage: str, tasks: Sequence[str]) -> TaskMetrics:
    """``{task: {metric: value}}`` from the values Lightning holds (``trainer.callback_metrics``).

    Reads the package's keys ``<stage>/<metric>/<task>`` (``<stage>/<task>/<metric>`` too, and for a
    single task ``<stage>/<metric>`` where the task's own key is absent); the task's ``loss`` is
    among them, the ``weight`` is not.

    Example:
        >>> logged_task_metrics({"val/acc/digit": 0.5, "val/loss/digit": 1.0, "val/weight/digit": 1.0,
        ...                      "val/loss": 2.0, "val/mae": 0.25, "train/loss/digit": 3.0}, "val", ["digit"])
        {'digit': {'acc': 0.5, 'loss': 1.0, 'mae': 0.25}}
    """
    found: TaskMetrics = {task: {} for task in tasks}
    alone: dict[str, float] = {}  # <stage>/<metric>: a single task's, unless it has its own key
    for key, value in logged.items():
        parts = key.split("/")
        if parts[0] != stage or len(parts) not in (2, 3):
            continue
        if len(parts) == 2:
            task, metric = (tasks[0], parts[1]) if len(tasks) == 1 else ("", "")
        elif parts[2] in found:
            task, metric = parts[2], parts[1]
        elif parts[1] in found:
            task, metric = parts[1], parts[2]
        else:
            continue
        if not task or metric == "weight":
            continue
        (alone if len(parts) == 2 else found[task])[metric] = float(value)
    for metric, value in alone.items():
        found[tasks[0]].setdefault(metric, value)
    return found


def make_folder(folder: str, purpose: str) -> None:
    """``os.makedirs(folder, exist_ok=True)``, or a :class:`MultiLossError` that names ``folder`` and
    ``purpose`` (what goes there) and says why in words: "File exists" means a part of the path
    is a file."""
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise MultiLossError(f"cannot make the folder {folder!r} for {purpose}: a part of it is a file") from error
    except OSError as error:
        raise MultiLossError(f"cannot make the folder {folder!r} for {purpose}: {error.strerror or error}") from error


class RunRecorder:
    """One run's :class:`RunResult`, written to ``path`` each time it changes (rank 0 only).

    Args:
        path: the ``result.json`` to write.
        overrides: the run's command-line overrides (Hydra's task overrides).
        experiment: the experiment's name (runs of one experiment are compared in one table).
        baseline_of: the task this run is the single-task baseline of, else ``None``.
        seed: the run's seed, if known (else the one Lightning's ``seed_everything`` set).
        primary: ``{task: metric}``, the metric that the report compares for a task (default: the
            task's first metric, ``"loss"`` for a task without metrics).
        write: whether this process writes (global rank 0).
    """

    def __init__(
        self,
        path: str,
        overrides: Sequence[str] = (),
        experiment: str | None = None,
        baseline_of: str | None = None,
        seed: int | None = None,
        primary: Mapping[str, str] | None = None,
        write: bool = True,
    ) -> None:
        self.path = os.path.abspath(path)
        self.writes = write
        self.primary_choice = dict(primary or {})
        self.result = RunResult(
            status="running",
            experiment=experiment,
            baseline_of=baseline_of,
            seed=seed,
            overrides=list(overrides),
            config_key=config_key(overrides),
            output_dir=os.path.dirname(self.path),
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        self._tested = False
        self._stopped = False

    def write(self) -> None:
        if self.writes:
            make_folder(os.path.dirname(self.path), f"the run result {os.path.basename(self.path)}")
            self.result.write(self.path)

    def set_model(self, task_metrics: Mapping[str, Iterable[tuple[str, Any]]], weighting: str) -> None:
        """The tasks, in order, with their metrics (``{task: [(name, torchmetrics metric), ...]}``)."""
        self.result.weighting = weighting
        self.result.directions = {}
        self.result.primary = {}
        for task, metrics in task_metrics.items():
            directions = {name: metric_direction(metric) for name, metric in metrics}
            chosen = self.primary_choice.get(task)
            if chosen is not None and chosen not in (*directions, "loss"):
                # Found only when the run ended, as a "failed" result.json with no word on the console.
                raise MultiLossError(f"primary: task {task!r} has no metric {chosen!r}; it has {[*directions, 'loss']}")
            self.result.directions[task] = {**directions, "loss": "min"}
            self.result.primary[task] = chosen if chosen is not None else next(iter(directions), "loss")
        if self.result.seed is None and os.environ.get("PL_GLOBAL_SEED", "").lstrip("-").isdigit():
            self.result.seed = int(os.environ["PL_GLOBAL_SEED"])  # what Lightning's seed_everything set

    def evaluated(self, stage: str, logged: Mapping[str, Any]) -> None:
        """Take the metrics of a finished validation (``stage="val"``) or test (``"test"``)."""
        metrics = logged_task_metrics(logged, stage, list(self.result.primary))
        if stage == "test":
            self._tested = True
            self.result.metrics, self.result.evaluated_on = metrics, "test"
        else:
            self.result.val_metrics = metrics
            if not self._tested:
                self.result.metrics, self.result.evaluated_on = metrics, "val"

    def finished(
        self,
        weights: Mapping[str, float] | None = None,
        world_size: int | None = None,
        planned_steps: Sequence[int] | None = None,
    ) -> None:
        """A fit or a test finished: ``"completed"`` if each task's primary metric was logged."""
        if weights is not None:
            self.result.weights = dict(weights)
        if world_size is not None:
            self.result.world_size = world_size
        if planned_steps is not None:
            self.result.planned_steps = list(planned_steps)
        if self._stopped:
            return
        metrics, primary = self.result.metrics, self.result.primary
        missing = [f"{task}/{metric}" for task, metric in primary.items() if metric not in metrics.get(task, {})]
        if not self.result.primary:
            self.result.status, self.result.error = "failed", "no multi-task model was trained or tested in this run"
        elif missing:
            stage = self.result.evaluated_on or "val"
            self.result.status = "failed"
            self.result.error = (
                f"no {stage} value of the primary metric(s) {missing} was logged (keys <stage>/<metric>/<task>): "
                "run a validation or test, or name the primary metrics that are logged"
            )
        else:
            self.result.status, self.result.error = "completed", None

    def fitting_again(self) -> None:
        """The same run fits on after a stop (the same Trainer, ``trainer.fit`` again after Ctrl-C
        or an error): running again, the stop forgotten; the fit's end records how it ends."""
        if self._stopped:
            self._stopped = False
            self.result.status, self.result.error = "running", None

    def stopped(self, error: BaseException) -> None:
        """The run stopped on ``error``: interrupted (Ctrl-C, a signal) or failed."""
        if self._stopped:
            return  # the first error is the cause; later ones follow from it
        self._stopped = True
        interrupted = isinstance(error, KeyboardInterrupt | SystemExit)
        self.result.status = "interrupted" if interrupted else "failed"
        self.result.error = None if interrupted else f"{type(error).__name__}: {error}"
