"""Hydra callbacks: a ``result.json`` per job of any Hydra app, for ``multiloss-report``.

Add the callback to your app's config (or pick ``hydra/callbacks=run_result`` from
``pkg://lightning_multiloss.conf``)::

    hydra:
      callbacks:
        run_result:
          _target_: lightning_multiloss.hydra_callbacks.RunResultCallback

Each job then leaves a ``result.json`` in its folder, as ``multiloss-train``'s runs do: the
callback writes ``"running"`` with the job's overrides and seed when the job starts; the
``LossWeightingCallback`` that the ``MultiTaskMixin`` module trains with adds the tasks, the final
validation and test metrics (``<stage>/<metric>/<task>`` in ``trainer.callback_metrics``) and the
weights; the end of the job sets the final status (``"failed"`` with the error when the job raised).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lightning_multiloss._run_recorder import (
    RunRecorder,
    active_recorder,
    launched_as_rank_zero,
    set_active_recorder,
)
from lightning_multiloss.results import RESULT_FILE


def in_hydra_job() -> bool:
    """Whether a Hydra job is running in this process: Hydra's config is set, with the job's folder
    (an app that ran earlier in the process, a test's, leaves its config behind without one)."""
    if not HydraConfig.initialized():
        return False
    return not OmegaConf.is_missing(HydraConfig.get().runtime, "output_dir")


def task_overrides() -> list[str]:
    """The running job's overrides as typed: an override holding an interpolation
    (``seed=${oc.env:SEED}``) is its text, not resolved here (an unset variable would raise)."""
    typed = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)
    assert isinstance(typed, list)
    return [str(override) for override in typed]


def job_recorder(
    result_file: str = RESULT_FILE,
    experiment: str | None = None,
    baseline_of: str | None = None,
    primary: Mapping[str, str] | None = None,
    seed: int | None = None,
) -> RunRecorder:
    """The recorder of the Hydra job running now: ``result_file`` in its output folder (an absolute path as it is).

    ``experiment`` defaults to the job's ``experiment`` choice (``experiment=...``), else the job's name.
    """
    hydra_cfg = HydraConfig.get()
    path = os.path.join(hydra_cfg.runtime.output_dir, os.path.expanduser(result_file))
    if experiment is None:
        choice = hydra_cfg.runtime.choices.get("experiment")
        experiment = str(choice) if choice else hydra_cfg.job.name
    return RunRecorder(
        path,
        overrides=task_overrides(),
        experiment=experiment,
        baseline_of=baseline_of,
        seed=seed,
        primary=primary,
        write=launched_as_rank_zero(),
    )


def _seed(config: DictConfig) -> int | None:
    try:
        seed = OmegaConf.select(config, "seed", default=None)
    except Exception:  # an interpolation that does not resolve here: Lightning's seed is read later
        return None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


class RunResultCallback(Callback):
    """Writes each job's ``result.json`` (:class:`~lightning_multiloss.results.RunResult`) for ``multiloss-report``.

    Args:
        result_file: the file, relative to the job's output folder (``hydra.runtime.output_dir``).
        experiment: the experiment's name (the report compares the runs of one experiment in one
            table); default: the job's ``experiment`` choice, else the job's name.
        baseline_of: set it in the config of a single-task baseline run (the task it is the
            baseline of), so that the report computes Δm% against it.
        primary: ``{task: metric}``: the metric the report compares for each task (default: the
            task's first metric, ``loss`` for a task without metrics).
    """

    def __init__(
        self,
        result_file: str = RESULT_FILE,
        experiment: str | None = None,
        baseline_of: str | None = None,
        primary: Mapping[str, str] | None = None,
    ) -> None:
        self.result_file = result_file
        self.experiment = experiment
        self.baseline_of = baseline_of
        self.primary = dict(primary) if primary else None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        settings = self._job_settings()
        recorder = job_recorder(
            settings.get("result_file", self.result_file),
            settings.get("experiment", self.experiment),
            settings.get("baseline_of", self.baseline_of),
            settings.get("primary", self.primary) or None,
            _seed(config),
        )
        recorder.write()
        set_active_recorder(recorder)

    def _job_settings(self) -> dict[str, Any]:
        """This callback's arguments as the running job's own config gives them. Hydra builds its
        callbacks once per sweep, from the sweep's config: a job whose experiment sets
        ``hydra.callbacks.<name>.baseline_of`` (a single-task baseline among other experiments)
        would lose it."""
        target = f"{type(self).__module__}.{type(self).__qualname__}"
        nodes = HydraConfig.get().callbacks or {}
        for node in nodes.values():
            if isinstance(node, DictConfig) and node.get("_target_") == target:
                values = OmegaConf.to_container(node, resolve=True)
                assert isinstance(values, dict)
                return {str(k): v for k, v in values.items() if k != "_target_"}
        return {}

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        recorder = active_recorder()
        set_active_recorder(None)
        if recorder is None:
            return
        try:
            job_return.return_value  # noqa: B018 (raises the job's exception when the job failed)
        except BaseException as error:
            recorder.stopped(error)
        if recorder.result.status == "running":  # the job returned without a finished fit or test
            recorder.finished()
        recorder.write()
