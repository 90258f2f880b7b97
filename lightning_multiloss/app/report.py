r"""``multiloss-report``: compare the runs of a sweep, mean ± std over seeds and Δm%.

Reads every ``result.json`` under the given folders (the Hydra app writes one per run), groups
the runs by configuration (the composed ``.hydra/config.yaml``, resolved, without what makes no other
configuration, :data:`NOT_CONFIGURATION`; the overrides, ``config_key``, for a run without one)
and writes one
row per configuration: the weighting, the overrides that set it apart from the other rows, the
number of seeds, each task's primary metric as mean ± standard deviation over seeds, and Δm%
against the single-task baselines when they are there (Maninis et al., "Attentive Single-Tasking
of Multiple Tasks", CVPR 2019):

.. math:: \Delta m = \frac{1}{T} \sum_{t=1}^{T} (-1)^{l_t} \frac{M_t - M_{b,t}}{|M_{b,t}|} \times 100

with :math:`M_t` the primary metric of task :math:`t`, :math:`M_{b,t}` its mean over the row's
seeds of the single-task baseline (runs with ``baseline_of`` set, same experiment),
:math:`l_t = 1` when lower is better, and the absolute value for a metric that can be negative
(R², a negative log-likelihood). Higher Δm% is better; Δm% is computed for each seed and
reported as mean ± std over seeds (its mean equals Δm% of the metric means). The seed also draws
the train/val/test split, so a row's Δm% is left empty (and a note names the row and the seeds)
unless each of its seeds is a seed of every task's baseline, it is against the baselines of
those seeds only, and rows run with different seeds are named: they were evaluated on different
splits. Unknown seeds (``None``) are not checked. Each row is checked on its own: a row left
empty (no baseline for one of its tasks, another split, other seeds) leaves the others' Δm%.

Runs that failed, were interrupted, are still running, left no ``result.json`` (a Hydra job
folder with ``.hydra/`` only) or one that cannot be read (truncated, edited by hand: the reason
names the file) are listed in their own section and counted in the header; a "running" run whose
process on this machine no longer exists counts as interrupted. With
two tasks, ``pareto.png`` shows every run of the sweep in the plane of the two primary metrics,
the non-dominated runs highlighted and connected.

Usage::

    multiloss-report multirun/2026-01-01/10-00-00 [more folders] [--baselines FOLDER] [--out DIR]

writes ``report.md``, ``report.csv`` (and ``pareto.png``) into ``--out`` (default: the first folder).

Example:
    >>> round(delta_m({"cls": 0.9, "reg": 0.2}, {"cls": 0.8, "reg": 0.25}, {"cls": "max", "reg": "min"}), 6)
    16.25
    >>> pareto_front([(1.0, 1.0), (2.0, 0.5), (0.5, 0.5), (1.0, 2.0)])
    [3, 1]
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import re
import socket
import statistics
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.results import (
    RESULT_FILE,
    STATUSES,
    RunResult,
    canonical_override,
    canonical_value,
    config_key,
)

NO_RESULT = "no result"
UNREADABLE = "unreadable"  # a result.json that cannot be read: listed with why, the other runs still compared
CITATION = "Maninis et al. 2019"


# -- what a run folder holds ------------------------------------------------------------------
@dataclass
class Run:
    """One run: its ``result.json`` (or, for ``status == "no result"``, its ``.hydra/`` folder; for
    ``"unreadable"``, why its ``result.json`` cannot be read, in ``error``)."""

    folder: str
    status: str
    error: str | None = None
    experiment: str = ""
    baseline_of: str | None = None
    weighting: str = ""
    seed: int | None = None
    overrides: list[str] = field(default_factory=list)
    config_key: str = ""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    directions: dict[str, dict[str, str]] = field(default_factory=dict)
    primary: dict[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    evaluated_on: str | None = None
    """The split of ``metrics`` (``"test"`` or ``"val"``), when the run says."""
    planned_steps: list[int] = field(default_factory=list)
    """The planned lengths its weights followed, where they depend on it (``result.json``'s)."""

    def value(self, task: str, metric: str) -> float | None:
        """The run's value of ``metric`` on ``task`` (``None`` if it has none)."""
        return self.metrics.get(task, {}).get(metric)


@dataclass
class Stat:
    """Mean and sample standard deviation (n − 1; ``None`` for a single value)."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        values = list(values)
        if len(values) == 1:
            return cls(values[0], None, 1)
        if not all(math.isfinite(v) for v in values):  # a diverged run: NaN or inf, not a crash
            return cls(sum(values) / len(values), math.nan, len(values))  # +inf and -inf: NaN
        try:
            return cls(statistics.fmean(values), statistics.stdev(values), len(values))
        except OverflowError:  # values near float's limit: their sum overflows, their mean need not
            return cls(math.fsum(v / len(values) for v in values), math.nan, len(values))


@dataclass
class ConfigRow:
    """One configuration of the sweep: its runs (one per seed) and their summary."""

    experiment: str
    config_key: str
    weighting: str
    overrides: list[str]
    """The overrides that set this configuration apart from the others of its experiment."""
    runs: list[Run]
    metrics: dict[str, Stat]
    """Task → the primary metric over seeds."""
    delta_m: Stat | None = None

    @property
    def label(self) -> str:
        return " ".join([self.weighting, *self.overrides]) if self.overrides else self.weighting

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]


@dataclass
class Baseline:
    """The single-task baseline of one task: its primary metric over seeds."""

    task: str
    metric: str
    stat: Stat
    runs: list[Run]

    def mean_over_seeds(self, seeds: set[int]) -> float:
        """Its mean over the runs of ``seeds`` (a row's: the seed draws the split, so the row's runs
        and these were tested on the same data); over all its runs where a seed is unknown."""
        values = [(r.seed, v) for r in self.runs if (v := r.value(self.task, self.metric)) is not None]
        if not seeds or any(seed is None for seed, _ in values):
            return self.stat.mean
        return Stat.of([v for seed, v in values if seed in seeds]).mean

    @property
    def counted(self) -> str:
        """How many runs its mean is over, and of how many seeds where that differs: ``3 seeds``,
        ``2 runs, 1 seed``."""
        runs = [r for r in self.runs if r.value(self.task, self.metric) is not None]
        seeds = {r.seed for r in runs}
        if None in seeds or len(seeds) == len(runs):
            return _count(len(runs), "seed")
        return f"{_count(len(runs), 'run')}, {_count(len(seeds), 'seed')}"


@dataclass
class ParetoPoint:
    """One run in the plane of the two tasks' primary metrics (raw values, not oriented)."""

    run: Run
    row: ConfigRow
    x: float
    y: float


@dataclass
class ExperimentReport:
    name: str
    tasks: list[str]
    primary: dict[str, str]
    """Task → its primary metric."""
    directions: dict[str, str]
    """Task → ``"max"`` or ``"min"`` for its primary metric."""
    rows: list[ConfigRow]
    baselines: dict[str, Baseline]
    missing_baselines: list[str]
    front: list[ParetoPoint] = field(default_factory=list)
    """With two tasks: the non-dominated runs, from worst to best on the first task."""
    points: list[ParetoPoint] = field(default_factory=list)
    """With two tasks: every run with both metrics finite (the points of the Pareto plot)."""
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    folders: list[str]
    baseline_folders: list[str]
    experiments: list[ExperimentReport]
    problems: list[Run]
    """Runs that did not complete: failed, interrupted, running, no result, unreadable."""
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


# -- formulas -----------------------------------------------------------------------------------
def delta_m(metrics: Mapping[str, float], baselines: Mapping[str, float], directions: Mapping[str, str]) -> float:
    r"""Δm% of one set of task metrics against the single-task baselines (Maninis et al. 2019).

    .. math:: \Delta m = \frac{1}{T} \sum_t (-1)^{l_t} \frac{M_t - M_{b,t}}{M_{b,t}} \times 100

    Args:
        metrics: task → metric :math:`M_t`.
        baselines: task → the baseline's metric :math:`M_{b,t}` (non-zero).
        directions: task → ``"max"`` (higher is better) or ``"min"`` (:math:`l_t = 1`).

    Example:
        >>> round(delta_m({"a": 0.5}, {"a": 0.4}, {"a": "min"}), 6)
        -25.0
    """
    if not metrics:
        raise MultiLossError("delta_m needs at least one task")
    total = 0.0
    for task, value in metrics.items():
        base = baselines[task]
        if base == 0:
            raise MultiLossError(f"Δm% is undefined: the baseline metric of task {task!r} is 0")
        sign = -1.0 if directions[task] == "min" else 1.0
        total += sign * (value - base) / abs(base)
    return total / len(metrics) * 100.0


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, both coordinates to maximise, sorted by the first.

    A point is dominated when another is at least as good on both coordinates and better on one.
    Equal points are all kept.

    Example:
        >>> pareto_front([(0.0, 3.0), (1.0, 1.0), (0.5, 0.5), (3.0, 0.0)])
        [0, 1, 3]
    """
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front: list[int] = []
    best_y = -math.inf
    last: tuple[float, float] | None = None
    for i in order:
        x, y = points[i]
        if y > best_y or (last is not None and (x, y) == last):
            front.append(i)
            if y > best_y:
                best_y = y
                last = (x, y)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


# -- reading ------------------------------------------------------------------------------------
def _process_gone(host: str | None, pid: int | None) -> bool:
    """Whether a run's process ran on this machine and no longer exists (a PID reused since counts as alive)."""
    if os.name != "posix":  # elsewhere os.kill(pid, 0) would end the process
        return False
    if host != socket.gethostname() or pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. no permission: it exists
        return False
    return False


def run_of(result: RunResult, folder: str) -> Run:
    """The :class:`Run` of one checked ``result.json`` (a "running" run whose process is gone: interrupted)."""
    run = Run(
        folder=folder,
        status=result.status,
        error=result.error,
        experiment=result.experiment or "",
        baseline_of=result.baseline_of,
        weighting=result.weighting or "",
        seed=result.seed,
        overrides=result.overrides,
        # From the overrides, in Hydra's canonical form (results written before it was one, and any
        # written elsewhere, group alike): a sweep's `false` is a single run's `False`.
        config_key=config_key(result.overrides) if result.overrides else result.config_key,
    )
    if result.status == "running" and _process_gone(result.host, result.pid):
        run.status = "interrupted"
        run.error = f"its process ({result.pid} on {result.host}) is gone: killed before it could record its end"
    if result.status != "completed":
        return run
    run.metrics = result.metrics
    run.primary = result.primary
    run.directions = {task: {metric: result.directions[task][metric]} for task, metric in result.primary.items()}
    run.evaluated_on = result.evaluated_on
    run.weights = result.weights
    run.planned_steps = result.planned_steps
    return run


def _hydra_file(job_dir: str, name: str) -> object:
    """The content of a job's ``.hydra/<name>`` (``None`` if missing or unreadable: the run is still listed)."""
    import yaml

    try:
        with open(os.path.join(job_dir, ".hydra", name), encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _hydra_overrides(job_dir: str) -> list[str]:
    data = _hydra_file(job_dir, "overrides.yaml")
    return [str(o) for o in data] if isinstance(data, list) else []


class _Progress:
    """A progress line on a terminal, shown only once reading takes more than a second."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream if stream is not None and stream.isatty() else None
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def update(self, runs: int, folders: int) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if now - self.start > 1.0 and now - self.last > 0.2:
            self.stream.write(f"\rreading runs: {runs} found in {folders} folders")
            self.stream.flush()
            self.last, self.shown = now, True

    def done(self) -> None:
        if self.stream is not None and self.shown:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()


def collect_runs(folder: str, progress: TextIO | None = None) -> list[Run]:
    """Every run under ``folder``: each folder with a ``result.json``, and each Hydra job folder
    (``.hydra/``) without one (``status == "no result"``).

    A ``result.json`` that cannot be read is a run of status ``"unreadable"``, its error the
    reason naming the file: one damaged file leaves the comparison of the others.

    Raises :class:`~lightning_multiloss.MultiLossError` when the folder does not exist or holds
    no run.
    """
    if not os.path.exists(folder):
        raise MultiLossError(f"folder {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise MultiLossError(f"{folder!r} is not a folder")
    runs: list[Run] = []
    bar = _Progress(progress)
    for searched, (root, dirs, files) in enumerate(_walk(folder), 1):
        shown = os.path.normpath(root)
        if RESULT_FILE in files:
            path = os.path.join(root, RESULT_FILE)
            try:
                runs.append(run_of(RunResult.read(path), shown))
            except MultiLossError as error:
                runs.append(Run(folder=shown, status=UNREADABLE, error=str(error), overrides=_hydra_overrides(root)))
            # Runs may lie below it: a Trainer's default_root_dir is often the parent of others'.
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        elif ".hydra" in dirs and not _result_below(root):  # a result_file in a subfolder is found below
            runs.append(Run(folder=shown, status=NO_RESULT, overrides=_hydra_overrides(root)))
            dirs[:] = []
        else:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        bar.update(len(runs), searched)
    bar.done()
    if not runs:
        raise MultiLossError(
            f"no runs under {folder!r}: no {RESULT_FILE} and no Hydra job folder (.hydra/) in it or below it"
        )
    return runs


def _walk(folder: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` in sorted order, following links to folders (a folder of links to chosen runs
    is a folder of runs), each real folder once (a link to a folder above it makes no loop)."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        yield root, dirs, files


def _result_below(folder: str) -> bool:
    """Whether a ``result.json`` lies in a (non-hidden) subfolder of ``folder``."""
    for _, dirs, files in _walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if RESULT_FILE in files:
            return True
    return False


# -- summarising --------------------------------------------------------------------------------
def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _is_seed(override: str) -> bool:
    key = _override_key(override)
    return key == "seed" or key.endswith(".seed")


# Overrides that change how a model is trained (not what is compared): a baseline trained otherwise
# than the runs (2 epochs against 1) makes Δm% compare unlike things.
TRAINING_SETUP = ("epochs", "trainer", "data", "model.trunk", "model.optimizer")
NOT_TRAINING = frozenset(
    f"trainer.{key}"
    for key in (
        "enable_progress_bar",
        "enable_model_summary",
        "enable_checkpointing",
        "log_every_n_steps",
        "num_sanity_val_steps",
        "accelerator",
        "profiler",
    )
)


Setup = tuple[tuple[str, str], ...]

# What in a composed config makes no other configuration: the seed and the checkpoint a run starts
# from (as in config_key), where the job writes, and what only shows or records the run or sets the
# machine's resources.
NOT_CONFIGURATION = (
    "seed",
    "ckpt_path",
    "output_dir",
    "logger",
    "torch_threads",
    "callbacks.loss_weighting",
    "callbacks.checkpoint",
    "data.num_workers",
    "trainer.logger",
    "trainer.default_root_dir",
    *sorted(NOT_TRAINING),
)

# Top-level keys of `multiloss-train`'s config that only an interpolation reads (train.yaml's `epochs`:
# trainer.max_epochs is `${oc.select:epochs,30}`): once resolved, what they set is where they are read,
# and an unread one (trainer=debug sets its own max_epochs) trains nothing otherwise.
READ_THROUGH_INTERPOLATION = ("epochs",)

Configs = dict[str, Mapping[str, object] | None]  # each run folder's composed config, resolved


def _composed_configs(runs: Sequence[Run]) -> Configs:
    """Each run's ``.hydra/config.yaml``, resolved (``None`` where it has none), each file read once."""
    configs: Configs = {}
    for run in runs:
        if run.folder not in configs:
            config = _hydra_file(run.folder, "config.yaml")
            configs[run.folder] = _resolved(config) if isinstance(config, Mapping) else None
    return configs


def _resolved(config: Mapping[str, object]) -> Mapping[str, object]:
    """``config`` as the run read it: its interpolations resolved (``${oc.select:epochs,30}`` is the
    number of epochs it trained), without :data:`READ_THROUGH_INTERPOLATION`.

    What reads a setting of :data:`NOT_CONFIGURATION` reads its name instead (``data.seed`` is
    ``${oc.select:seed,0}``: the seed, compared apart, is no configuration there either), and an
    interpolation that does not resolve here (``${hydra:...}``: Hydra's, set while the job ran) is kept
    as written.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    masked = copy.deepcopy(dict(config))
    for key in NOT_CONFIGURATION:
        *parents, leaf = key.split(".")
        node: object = masked
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = "\\${" + key + "}"  # escaped: its readers resolve to the text ${key}
    try:
        plain = _plain(OmegaConf.create(masked))
    except OmegaConfBaseException:  # a value OmegaConf does not hold (a YAML date): compared as written
        plain = dict(config)
    assert isinstance(plain, dict)
    return {key: value for key, value in plain.items() if key not in READ_THROUGH_INTERPOLATION}


def _plain(node: object) -> object:
    """An OmegaConf node as plain dicts and lists, each value resolved where it resolves, else as written."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(node, DictConfig | ListConfig):
        return node
    written = OmegaConf.to_container(node, resolve=False)
    items = written.items() if isinstance(written, dict) else enumerate(written or [])
    container: Any = node  # indexed by its own keys
    plain: dict[object, object] = {}
    for key, as_written in items:
        try:
            plain[key] = _plain(container[key])
        except OmegaConfBaseException:
            plain[key] = as_written
    return {str(key): value for key, value in plain.items()} if isinstance(node, DictConfig) else list(plain.values())


def _settings(config: Mapping[str, object]) -> dict[str, str]:
    """The flattened settings of a composed config that tell configurations apart."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        _flatten(str(key), value, flat)
    return {k: v for k, v in flat.items() if not any(k == x or k.startswith(x + ".") for x in NOT_CONFIGURATION)}


def _flatten(prefix: str, node: object, out: dict[str, str]) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            _flatten(f"{prefix}.{key}", value, out)
    else:
        out[prefix] = canonical_value(node)


def _training_setup(run: Run, config: Mapping[str, object] | None) -> Setup:
    """The run's training setup (:data:`TRAINING_SETUP`) as sorted ``(key, value)`` pairs: from its
    composed ``config`` where given (a default written out equals it left out), else its overrides."""
    pairs: dict[str, str] = {}
    if config is not None:
        for section in TRAINING_SETUP:
            node: object = config
            for part in section.split("."):
                node = node.get(part) if isinstance(node, Mapping) else None
            if node is not None:
                _flatten(section, node, pairs)
    else:
        for override in run.overrides:
            key = _override_key(override)
            if any(key == p or key.startswith(p + ".") for p in TRAINING_SETUP):
                pairs[key] = override.split("=", 1)[1] if "=" in override else ""
    return tuple(sorted((key, value) for key, value in pairs.items() if key not in NOT_TRAINING))


def _setup_mismatch(rows: list[ConfigRow], baselines: dict[str, Baseline], configs: Configs) -> list[str]:
    """Notes naming each setting in which the baselines were trained otherwise than the swept runs
    (than each row's, where the rows were not all trained alike), from the composed configs where
    every run has one."""
    runs = [*(r for row in rows for r in row.runs), *(r for base in baselines.values() for r in base.runs)]
    composed = all(configs[r.folder] is not None for r in runs)

    def setup_of(run: Run) -> Setup:
        return _training_setup(run, configs[run.folder] if composed else None)

    # Each training setup of the swept runs, with the rows trained with it (a sweep of epochs=1,2: two).
    by_setup: dict[Setup, list[str]] = {}
    for row in rows:
        for setup in dict.fromkeys(setup_of(r) for r in row.runs):
            by_setup.setdefault(setup, []).append(repr(row.label))
    notes: list[str] = []
    for setup, labels in by_setup.items():
        ours = dict(setup)
        differences: list[str] = []
        for task, base in baselines.items():
            for their_setup in sorted({setup_of(r) for r in base.runs}):
                theirs = dict(their_setup)
                changed = sorted(key for key in {*ours, *theirs} if ours.get(key) != theirs.get(key))
                if changed:
                    shown = ", ".join(f"{key}={theirs.get(key, '—')} (runs: {ours.get(key, '—')})" for key in changed)
                    differences.append(f"{task}: {shown}")
        if differences:
            runs_named = "the runs" if len(by_setup) == 1 else f"the runs of row(s) {', '.join(labels)}"
            notes.append(
                f"the single-task baselines were trained otherwise than {runs_named}: {'; '.join(differences)}; "
                "Δm% compares unlike training"
            )
    return notes


def _distinguishing(rows: list[ConfigRow]) -> None:
    """Keep, in each row, the overrides that not every row of the experiment shares (seeds dropped)."""
    per_row = [[o for o in row.overrides if not _is_seed(o)] for row in rows]
    # Compared as Hydra reads them: `trainer.logger=False` and `=false` are one override.
    common = set.intersection(*({canonical_override(o) for o in row} for row in per_row)) if len(rows) > 1 else set()
    for row, overrides in zip(rows, per_row, strict=True):
        row.overrides = [
            o
            for o in overrides
            if canonical_override(o) not in common
            and not (_override_key(o) == "weighting" and o.split("=", 1)[-1] == row.weighting)
        ]


def _identity(run: Run, settings: Mapping[str, Mapping[str, str]], single_task: bool = False) -> str:
    """What makes the run's configuration: its composed config's settings (a default written out is
    the same configuration as one left out), its overrides where it has none. ``single_task``: a
    baseline's, whose ``settings`` leave out the weighting (:func:`_without_weighting`), as must
    its overrides: it trains its one task alone whatever the weighting says."""
    settled = settings.get(run.folder)
    if settled is not None:
        return f"composed {sorted(settled.items())!r}"
    if single_task:
        return f"overrides {config_key([o for o in run.overrides if not _is_weighting_setting(_override_key(o))])}"
    plans = f" planned_steps={run.planned_steps}" if run.planned_steps else ""
    return f"overrides {run.config_key}{plans}"


def _is_weighting_setting(key: str) -> bool:
    """``weighting``, ``weighting.<...>`` or a group placed in it (``schedule@weighting.schedule``)."""
    return key.split("@")[-1].split(".")[0] == "weighting"


def _without_weighting(settings: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    """Each run's settings without the weighting's (the app warns that it does not apply to a baseline)."""
    return {folder: {k: v for k, v in s.items() if not _is_weighting_setting(k)} for folder, s in settings.items()}


def _differences(ours: Mapping[str, str], theirs: Sequence[Mapping[str, str]]) -> str:
    """The settings of ``ours`` that some of ``theirs`` have otherwise."""
    keys = sorted(k for k in {*ours, *(k for t in theirs for k in t)} if any(t.get(k) != ours.get(k) for t in theirs))
    return " ".join(f"{k}={ours.get(k, '—')}" for k in keys)


def _first_seen(runs: list[Run]) -> tuple[list[str], dict[str, str], dict[str, str], list[str]]:
    tasks: list[str] = []
    primary: dict[str, str] = {}
    directions: dict[str, str] = {}
    notes: list[str] = []
    for run in runs:
        for task, metric in run.primary.items():
            if task not in primary:
                tasks.append(task)
                primary[task] = metric
                directions[task] = run.directions[task][metric]
            elif primary[task] != metric:
                notes.append(
                    f"run {run.folder} takes {metric!r} as the primary metric of task {task!r}; "
                    f"the report uses {primary[task]!r}, as the first run does"
                )
            elif run.directions.get(task, {}).get(metric, directions[task]) != directions[task]:
                notes.append(
                    f"run {run.folder} says {metric!r} of task {task!r} is better when "
                    f"{'higher' if run.directions[task][metric] == 'max' else 'lower'}; the report uses the "
                    f"first run's direction ({directions[task]})"
                )
    return tasks, primary, directions, notes


def _summarise_experiment(name: str, swept: list[Run], baseline_runs: list[Run]) -> ExperimentReport:
    tasks, primary, directions, notes = _first_seen(swept)
    configs = _composed_configs([*swept, *baseline_runs])
    # By composed config (a default written out on the command line is the same configuration as
    # one left out), by overrides for a run without one; and by strategy: runs without Hydra have
    # no overrides, and two of them with different weightings are two configurations.
    settings = {r.folder: _settings(c) for r in [*swept, *baseline_runs] if (c := configs[r.folder]) is not None}
    for run in swept:
        if run.planned_steps and run.folder in settings:
            # A schedule over the fraction of training followed this plan: a run resumed to a longer
            # one that kept its first plan trained otherwise than a fresh run of that length.
            settings[run.folder] = {**settings[run.folder], "planned_steps": str(run.planned_steps)}
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in swept:
        groups.setdefault((_identity(run, settings), run.weighting), []).append(run)
    rows: list[ConfigRow] = []
    for runs in groups.values():
        runs.sort(key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0, r.folder))
        key = runs[0].config_key
        seeds = [r.seed for r in runs]
        repeated = sorted({s for s in seeds if s is not None and seeds.count(s) > 1})
        if repeated:
            notes.append(f"configuration {key!r} has seed(s) {repeated} more than once: each run counts")
        stats: dict[str, Stat] = {}
        for task in tasks:
            values = [v for v in (r.value(task, primary[task]) for r in runs) if v is not None]
            if values:
                stats[task] = Stat.of(values)
        # The overrides all its runs share (one written out where another left a default is no label).
        shared = set.intersection(*({canonical_override(o) for o in r.overrides} for r in runs))
        overrides = [o for o in runs[0].overrides if canonical_override(o) in shared]
        rows.append(ConfigRow(name, key, runs[0].weighting, overrides, runs, stats))
    _distinguishing(rows)
    labels = [row.label for row in rows]
    for row, label in zip(rows, labels, strict=True):
        if labels.count(label) > 1:  # alike on the command line, not in their composed configs
            twins = [other for other, its in zip(rows, labels, strict=True) if its == label and other is not row]
            composed = all(r.runs[0].folder in settings for r in (row, *twins))
            if composed:
                told = _differences(settings[row.runs[0].folder], [settings[t.runs[0].folder] for t in twins])
            elif any(t.config_key != row.config_key for t in twins):
                told = row.config_key
            else:  # the same overrides: apart only because some runs have no composed config to compare
                has = row.runs[0].folder in settings
                told = "composed config" if has else "no composed config (.hydra/config.yaml)"
            row.overrides.append(f"[{told or 'defaults'}]")
    for row in rows:
        for task in row.metrics:
            without = [r.seed for r in row.runs if r.value(task, primary[task]) is None]
            if without:  # some seeds only: the mean and Δm% are over fewer seeds than the row counts
                notes.append(
                    f"configuration {row.label!r}: seed(s) {without} have no {primary[task]} for task {task!r}: "
                    f"its mean is over {row.metrics[task].n} of {len(row.runs)} seeds, and Δm% over the seeds "
                    "that have every task"
                )
        if len(row.metrics) < len(tasks):  # e.g. a run of the experiment with a task removed
            lacking = [task for task in tasks if task not in row.metrics]
            notes.append(
                f"configuration {row.label!r} has no {', '.join(primary[t] for t in lacking)} for task(s) "
                f"{lacking} (the experiment's other runs have): its cells are empty, and its Δm% is over its "
                "other tasks"
            )

    by_split: dict[str, list[str]] = {}
    for row in rows:
        for split in sorted({str(r.evaluated_on) for r in row.runs if r.status == "completed"}):
            by_split.setdefault(split, []).append(repr(row.label))
    if len(by_split) > 1:  # test=false in some runs: their metrics are the validation split's
        listed = "; ".join(f"{split}: {', '.join(labels)}" for split, labels in sorted(by_split.items()))
        notes.append(f"the rows' metrics come from different splits ({listed}): compare rows of one split")
    # The seed draws the train/val/test split: rows run with other seeds were tested on other data.
    by_seeds: dict[tuple[int, ...], list[str]] = {}
    for row in rows:
        known = tuple(sorted({s for s in row.seeds if s is not None}))
        if known:  # a row of unknown seeds only: nothing to compare (as before)
            by_seeds.setdefault(known, []).append(repr(row.label))
    if len(by_seeds) > 1:
        listed = "; ".join(f"seeds {list(seeds)}: {', '.join(labels)}" for seeds, labels in sorted(by_seeds.items()))
        notes.append(
            f"the rows were run with different seeds ({listed}), and the seed draws the train/val/test split: "
            "rows with different seeds were evaluated on different splits: compare rows with the same seeds"
        )

    baselines: dict[str, Baseline] = {}
    baseline_settings = _without_weighting(settings)
    for task in tasks:
        metric = primary[task]
        own = [r for r in baseline_runs if r.baseline_of == task]
        values = [v for v in (r.value(task, metric) for r in own) if v is not None]
        if own and not values:
            notes.append(f"the baseline runs of task {task!r} have no metric {metric!r}")
        if values:
            # Configurations as the rows are (a display setting makes none), each named by what sets
            # it apart from the others (by its overrides where some run has no composed config).
            by_identity: dict[str, Run] = {}
            for run in own:
                by_identity.setdefault(_identity(run, baseline_settings, single_task=True), run)
            if len(by_identity) > 1:
                firsts = list(by_identity.values())
                if all(r.folder in baseline_settings for r in firsts):
                    apart = [baseline_settings[r.folder] for r in firsts]
                    named = [_differences(a, [o for o in apart if o is not a]) for a in apart]
                else:
                    named = [r.config_key for r in firsts]
                notes.append(
                    f"the baseline of task {task!r} mixes {len(firsts)} configurations {sorted(named)}: "
                    "their mean is used"
                )
            seeds = [r.seed for r in own if r.value(task, metric) is not None]
            repeated = sorted({s for s in seeds if s is not None and seeds.count(s) > 1})
            if repeated:
                notes.append(f"the baseline of task {task!r} has seed(s) {repeated} more than once: each run counts")
            baselines[task] = Baseline(task, metric, Stat.of(values), own)
    missing = [task for task in tasks if task not in baselines]
    # Each row's Δm% is over the tasks it has (a run of the experiment with a task removed has
    # fewer), where each of them has a baseline: a task without one leaves only its rows empty.
    own_tasks = {id(row): [task for task in tasks if task in row.metrics] for row in rows}
    measured = [row for row in rows if own_tasks[id(row)] and all(t in baselines for t in own_tasks[id(row)])]
    used = [task for task in tasks if any(task in own_tasks[id(row)] for row in measured)]
    if measured:
        notes += _setup_mismatch(measured, {task: baselines[task] for task in used}, configs)
        # Each row on its own: a row left empty leaves the others' Δm%. Test metrics against
        # validation baselines (test=false) would compare different data; so would other seeds.
        base_splits = {
            task: {str(r.evaluated_on) for r in baselines[task].runs if r.status == "completed"} for task in used
        }
        # The seeds of each task's baseline (the seed draws the split): a row's seed that some
        # baseline lacks was tested on other data. Unknown seeds (None) are not checked.
        base_seeds = {
            task: {r.seed for r in baselines[task].runs if r.value(task, primary[task]) is not None} for task in used
        }
        other_splits: list[str] = []
        unmatched: list[str] = []
        undefined: list[str] = []
        for row in measured:
            row_tasks = own_tasks[id(row)]
            row_splits = {str(r.evaluated_on) for r in row.runs if r.status == "completed"}
            if len(row_splits) > 1 or any(base_splits[task] != row_splits for task in row_tasks):
                other_splits.append(f"{row.label!r} ({', '.join(sorted(row_splits))})")
                continue
            complete = [r for r in row.runs if all(r.value(task, primary[task]) is not None for task in row_tasks)]
            tested = {r.seed for r in complete if r.seed is not None}  # the known seeds of its Δm%
            if any(None not in base_seeds[task] and not tested <= base_seeds[task] for task in row_tasks):
                unmatched.append(f"{row.label!r} (seeds {sorted(tested)})")
                continue
            base = {task: baselines[task].mean_over_seeds(tested) for task in row_tasks}
            zero = [task for task in row_tasks if base[task] == 0]
            if zero:
                undefined.append(f"{row.label!r} (task(s) {zero})")
                continue
            per_seed = [
                delta_m({task: cast(float, r.value(task, primary[task])) for task in row_tasks}, base, directions)
                for r in complete
            ]
            row.delta_m = Stat.of(per_seed) if per_seed else None
        if other_splits:
            bases = "; ".join(f"{task}: {', '.join(sorted(own))}" for task, own in base_splits.items())
            notes.append(
                f"Δm% is left empty for {', '.join(other_splits)}: evaluated on another split than the "
                f"single-task baselines ({bases}), or on several: compare runs evaluated alike "
                "(test=true or test=false for all)"
            )
        if undefined:
            notes.append(f"Δm% is undefined for {', '.join(undefined)}: the baseline metric is 0")
        if unmatched:
            theirs = "; ".join(f"{task}: {_seed_list(own)}" for task, own in base_seeds.items())
            notes.append(
                f"Δm% is left empty for {', '.join(unmatched)}: the single-task baselines were run with "
                f"seeds {theirs}, and the seed draws the train/val/test split: Δm% compares only a row "
                "whose seeds are all among every task's baseline seeds (run the baselines with the same seeds)"
            )
        task_sets = {tuple(own_tasks[id(row)]) for row in measured if row.delta_m is not None}
        if len(task_sets) > 1:
            listed = "; ".join(
                f"{', '.join(task_set)}: "
                + ", ".join(repr(r.label) for r in measured if tuple(own_tasks[id(r)]) == task_set)
                for task_set in sorted(task_sets, key=len, reverse=True)
            )
            notes.append(
                f"Δm% is over each row's own tasks, and the rows have different ones ({listed}): "
                "compare the Δm% of rows over the same tasks"
            )

    nonfinite = [
        f"{row.label!r} seed {r.seed} ({task} {primary[task]} = {value})"
        for row in rows
        for r in row.runs
        for task in tasks
        if (value := r.value(task, primary[task])) is not None and not math.isfinite(value)
    ] + [
        f"the baseline of task {task!r} seed {r.seed} ({base.metric} = {value})"
        for task, base in baselines.items()
        for r in base.runs
        if (value := r.value(task, base.metric)) is not None and not math.isfinite(value)
    ]
    if nonfinite:  # a run that diverged yet completed, or a task no sample scored: NaN in every mean over it
        notes.append(
            f"non-finite metric values: {'; '.join(nonfinite)}; the means, standard deviations and Δm% over them "
            "are NaN"
        )

    def sort_key(row: ConfigRow) -> tuple[bool, float, str]:
        dm = row.delta_m.mean if row.delta_m is not None and math.isfinite(row.delta_m.mean) else None
        return (dm is None, -(dm or 0.0), row.label)

    rows.sort(key=sort_key)
    report = ExperimentReport(name, tasks, primary, directions, rows, baselines, missing, notes=notes)
    if len(tasks) == 2:
        _pareto(report)
    return report


def _seed_list(seeds: set[int | None]) -> str:
    """The seeds sorted, an unknown one (``None``) last."""
    return str(sorted(seeds, key=lambda s: (s is None, s or 0)))


def _pareto(report: ExperimentReport) -> None:
    t1, t2 = report.tasks
    sign = {t: (1.0 if report.directions[t] == "max" else -1.0) for t in (t1, t2)}
    for row in report.rows:
        for run in row.runs:
            x, y = run.value(t1, report.primary[t1]), run.value(t2, report.primary[t2])
            if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
                report.points.append(ParetoPoint(run, row, x, y))
    front = pareto_front([(sign[t1] * p.x, sign[t2] * p.y) for p in report.points])
    report.front = [report.points[i] for i in front]
    dropped = sum(len(row.runs) for row in report.rows) - len(report.points)
    if dropped:
        report.notes.append(f"{dropped} run(s) without finite values of both metrics are left out of the Pareto plot")


def build_report(
    runs: Sequence[Run],
    baseline_runs: Sequence[Run] = (),
    folders: Sequence[str] = (),
    baseline_folders: Sequence[str] = (),
) -> Report:
    """Group the runs by configuration and summarise them (see the module's docstring)."""
    seen: set[str] = set()
    unique: list[Run] = []
    for run in [*runs, *baseline_runs]:
        real = os.path.realpath(run.folder)
        if real not in seen:  # overlapping folders read the same run once
            seen.add(real)
            unique.append(run)
    # Runs met only under --baselines (a folder given both ways counts as a sweep folder).
    from_baseline_folders = {os.path.realpath(r.folder) for r in baseline_runs} - {
        os.path.realpath(r.folder) for r in runs
    }
    notes: list[str] = []
    counts = {"runs": len(unique), "completed": 0, "swept": 0, "configurations": 0, "baselines": 0, "ignored": 0}
    counts.update({status: 0 for status in (*STATUSES[1:], NO_RESULT, UNREADABLE)})
    # Under --baselines only the single-task baselines count: another run there (a job of another
    # sweep, completed or not) is not this report's. A job folder without a result.json may be a
    # baseline that never started, an unreadable one a damaged baseline: they are listed.
    ignored = [
        r
        for r in unique
        if r.baseline_of is None
        and r.status not in (NO_RESULT, UNREADABLE)
        and os.path.realpath(r.folder) in from_baseline_folders
    ]
    if ignored:
        notes.append(f"{len(ignored)} run(s) under --baselines are not single-task baselines (no baseline_of): ignored")
        unique = [r for r in unique if r not in ignored]
    problems = [r for r in unique if r.status != "completed"]
    for run in problems:
        counts[run.status] += 1
    completed = [r for r in unique if r.status == "completed"]
    counts["completed"] = len(completed)
    baselines = [r for r in completed if r.baseline_of is not None]
    swept = [r for r in completed if r.baseline_of is None]
    counts["baselines"] = len(baselines)
    counts["swept"] = len(swept)
    counts["ignored"] = len(ignored)
    experiments: list[ExperimentReport] = []
    names = list(dict.fromkeys(r.experiment for r in swept))
    for name in names:
        experiments.append(
            _summarise_experiment(
                name, [r for r in swept if r.experiment == name], [r for r in baselines if r.experiment == name]
            )
        )
    orphans = sorted({r.experiment for r in baselines} - set(names))
    if orphans:
        notes.append(f"baseline runs of experiment(s) {orphans} have no swept run to compare with")
    counts["configurations"] = sum(len(e.rows) for e in experiments)
    problems.sort(key=lambda r: (r.status, r.folder))
    return Report(list(folders), list(baseline_folders), experiments, problems, counts, notes)


# -- writing ------------------------------------------------------------------------------------
def fmt(value: float) -> str:
    """A metric as the report prints it: four significant digits."""
    return f"{value:.4g}"


def fmt_stat(stat: Stat | None, signed: bool = False) -> str:
    """``mean ± std``: the mean with four significant digits, the std with two (``—`` for a single
    seed); Δm% (``signed``) with two decimals. Empty for no value."""
    if stat is None:
        return ""
    sign = "+" if math.isfinite(stat.mean) else ""  # "+nan" would read as a gain
    mean = f"{stat.mean:{sign}.2f}" if signed else fmt(stat.mean)
    if stat.std is None:
        return f"{mean} ± —"
    return f"{mean} ± {stat.std:.2f}" if signed else f"{mean} ± {stat.std:.2g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _arrow(direction: str) -> str:
    return "↑" if direction == "max" else "↓"


def _header(report: Report) -> str:
    c = report.counts
    bad = [f"{c[s]} {s}" for s in ("failed", "interrupted", "running", NO_RESULT)]
    if c.get(UNREADABLE):
        bad.append(f"{c[UNREADABLE]} {UNREADABLE}")
    ignored = f"; {c['ignored']} more under --baselines ignored (not baselines)" if c.get("ignored") else ""
    return (
        f"{_count(c['runs'], 'run')} read: {c['completed']} completed ({c['swept']} swept in "
        f"{_count(c['configurations'], 'configuration')}, {_count(c['baselines'], 'single-task baseline')}"
        f"); {', '.join(bad)}{ignored}."
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def render_markdown(report: Report) -> str:
    """The report as Markdown (what ``multiloss-report`` prints and writes as ``report.md``)."""
    lines = ["# Sweep report", ""]
    if report.folders:
        lines += ["Folders: " + ", ".join(f"`{f}`" for f in report.folders), ""]
    if report.baseline_folders:
        lines += ["Baselines from: " + ", ".join(f"`{f}`" for f in report.baseline_folders), ""]
    lines += [_header(report), ""]
    for exp in report.experiments:
        title = f"## Experiment `{exp.name}`" if exp.name else "## Experiment"
        tasks = ", ".join(
            f"{t} ({exp.primary[t]}, {'higher' if exp.directions[t] == 'max' else 'lower'} is better)"
            for t in exp.tasks
        )
        splits = {run.evaluated_on for row in exp.rows for run in row.runs}
        split = f" Metrics of the {splits.pop()} split." if len(splits) == 1 and None not in splits else ""
        lines += [title, "", f"Tasks: {tasks}.{split}", ""]
        header = ["#", "weighting", "overrides", "runs"]  # one per seed in a sweep; runs without one count too
        header += [f"{t} {exp.primary[t]} {_arrow(exp.directions[t])}" for t in exp.tasks]
        header += ["Δm% ↑"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for i, row in enumerate(exp.rows, 1):
            cells = [str(i), row.weighting, " ".join(row.overrides) or "—", str(len(row.runs))]
            cells += [fmt_stat(row.metrics.get(t)) for t in exp.tasks]
            cells += [fmt_stat(row.delta_m, signed=True)]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
        lines.append("Mean ± standard deviation over the runs (n − 1), one per seed in a sweep; one run: ± —.")
        if not exp.missing_baselines:
            bases = ", ".join(f"{t} {b.metric} {fmt_stat(b.stat)} ({b.counted})" for t, b in exp.baselines.items())
            lines += [
                "",
                f"Single-task baselines: {bases}. Δm% = (1/T) Σ_t (−1)^l_t (M_t − M_b,t)/|M_b,t| × 100 on each "
                f"task's primary metric, M_b,t over the baseline runs of the row's seeds, l_t = 1 when lower is "
                f"better ({CITATION}); higher is better; rows sorted by it.",
            ]
        elif exp.baselines:
            lines += [
                "",
                f"**No single-task baseline for task(s) {', '.join(exp.missing_baselines)}**: Δm% is left empty "
                "for the rows with these tasks. "
                "Add their baseline runs (result.json with `baseline_of` set) to the folders or pass them with "
                "`--baselines`.",
            ]
        else:
            lines += [
                "",
                "**No single-task baselines found** (runs whose result.json has `baseline_of` set, same experiment): "
                "Δm% is left empty. Pass the baseline runs with `--baselines FOLDER`.",
            ]
        if exp.front:
            t1, t2 = exp.tasks
            lines += [
                "",
                f"Pareto front ({t1} {exp.primary[t1]} vs {t2} {exp.primary[t2]}, {len(exp.points)} runs):",
                "",
            ]
            for p in exp.front:
                lines.append(f"- {p.row.label}, seed {p.run.seed}: {t1} {fmt(p.x)}, {t2} {fmt(p.y)} (`{p.run.folder}`)")
        for note in exp.notes:
            lines += ["", f"Note: {note}"]
        lines.append("")
    if not report.experiments:
        lines += ["No completed run to compare.", ""]
    lines += [f"## Runs that did not complete ({len(report.problems)})", ""]
    if report.problems:
        lines += ["| status | folder | weighting | seed | overrides | error |", "|---|---|---|---|---|---|"]
        for run in report.problems:
            error = run.error or ("no result.json: never started, or stopped hard" if run.status == NO_RESULT else "")
            if run.status == "running" and not run.error:
                error = "still running, or killed before it could record its end"
            cells = [
                run.status,
                f"`{run.folder}`",
                run.weighting or "—",
                "—" if run.seed is None else str(run.seed),
                " ".join(run.overrides) or "—",
                error[:300],
            ]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    else:
        lines.append("None.")
    for note in report.notes:
        lines += ["", f"Note: {note}"]
    if report.files:
        out = os.path.dirname(report.files[0]) or "."
        lines += ["", f"Written to `{out}`: " + ", ".join(f"`{os.path.basename(p)}`" for p in report.files)]
    return "\n".join(lines) + "\n"


def write_csv(report: Report, path: str) -> None:
    """One line per configuration, full precision (the numbers of the Markdown table)."""
    columns: list[str] = []
    for exp in report.experiments:
        for t in exp.tasks:
            for suffix in ("mean", "std"):
                name = f"{t}/{exp.primary[t]}/{suffix}"
                if name not in columns:
                    columns.append(name)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "experiment",
                "weighting",
                "overrides",
                "config_key",
                "seeds",
                "n",
                *columns,
                "delta_m/mean",
                "delta_m/std",
            ]
        )
        for exp in report.experiments:
            for row in exp.rows:
                values: dict[str, float | None] = {}
                for t, stat in row.metrics.items():
                    values[f"{t}/{exp.primary[t]}/mean"] = stat.mean
                    values[f"{t}/{exp.primary[t]}/std"] = stat.std
                dm = row.delta_m
                writer.writerow(
                    [
                        exp.name,
                        row.weighting,
                        " ".join(row.overrides),
                        row.config_key,
                        " ".join(str(s) for s in row.seeds),
                        len(row.runs),
                        *("" if values.get(c) is None else repr(values[c]) for c in columns),
                        "" if dm is None else repr(dm.mean),
                        "" if dm is None or dm.std is None else repr(dm.std),
                    ]
                )


def plot_pareto(exp: ExperimentReport, path: str) -> None:
    """Every run of a two-task sweep, better up and right, the non-dominated runs joined."""
    # A Figure of its own, not pyplot's: the caller's backend stays as it was (report functions
    # run in notebooks too); savefig draws it with Agg.
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    t1, t2 = exp.tasks
    m1, m2 = exp.primary[t1], exp.primary[t2]
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.subplots()
    colors = colormaps["tab10"]
    # Rows by their number in the table: a row's label holds every override that sets it apart,
    # which at the points or in a legend inside the axes ran off the figure.
    number = {id(row): i for i, row in enumerate(exp.rows, 1)}
    for row in exp.rows:
        pts = [p for p in exp.points if p.row is row]
        if pts:
            label = textwrap.fill(f"#{number[id(row)]} {row.label}", width=48, subsequent_indent="   ")
            color = colors((number[id(row)] - 1) % 10)
            ax.scatter([p.x for p in pts], [p.y for p in pts], color=color, label=label, alpha=0.8)
    fx, fy = [p.x for p in exp.front], [p.y for p in exp.front]
    ax.plot(fx, fy, color="black", lw=1.2, zorder=1, label="Pareto front")
    ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="black", lw=1.5, zorder=3)
    for p in exp.front:
        ax.annotate(
            f"#{number[id(p.row)]} seed {p.run.seed}", (p.x, p.y), textcoords="offset points", xytext=(6, 6), fontsize=8
        )
    for t, line, style in ((t1, ax.axvline, "--"), (t2, ax.axhline, ":")):
        if t in exp.baselines:
            line(exp.baselines[t].stat.mean, color="gray", ls=style, lw=1.2, label=f"{t} single-task baseline")
    if exp.directions[t1] == "min":
        ax.invert_xaxis()
    if exp.directions[t2] == "min":
        ax.invert_yaxis()

    def axis_label(t: str, m: str) -> str:
        if exp.directions[t] == "min":
            return f"{t} {m} (lower is better; axis reversed)"
        return f"{t} {m} (higher is better)"

    ax.set_xlabel(axis_label(t1, m1))
    ax.set_ylabel(axis_label(t2, m2))
    ax.set_title(f"{exp.name or 'sweep'}: every run, better is up and right")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the figure grows to hold the legend beside the axes


def write_report(report: Report, out: str) -> list[str]:
    """Write ``report.md``, ``report.csv`` and, for two-task experiments, the Pareto plot(s)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise MultiLossError(f"--out {out!r} is a file, not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise MultiLossError(f"--out {out!r}: cannot create the folder ({error.strerror or error})") from None
    files = [os.path.join(out, "report.md"), os.path.join(out, "report.csv")]
    two_task = [exp for exp in report.experiments if len(exp.tasks) == 2 and exp.points]
    try:
        names: set[str] = set()
        for index, exp in enumerate(two_task, 1):
            name = "pareto" if len(two_task) == 1 else "pareto_" + re.sub(r"[^\w.-]", "_", exp.name or "experiment")
            if name in names:  # names that differ only by characters a file name cannot hold ("a/b", "a_b")
                name += f"_{index}"
            names.add(name)
            path = os.path.join(out, name + ".png")
            plot_pareto(exp, path)
            files.append(path)
        report.files = files
        write_csv(report, files[1])
        with open(files[0], "w", encoding="utf-8") as f:  # Δ, ↑, ±: not in every locale's encoding
            f.write(render_markdown(report))
    except OSError as error:
        where = getattr(error, "filename", None) or out
        raise MultiLossError(f"--out {out!r}: cannot write {where!r} ({error.strerror or error})") from None
    return files


def make_report(
    folders: Sequence[str],
    baselines: Sequence[str] = (),
    out: str | None = None,
    progress: TextIO | None = None,
) -> Report:
    """Read the runs under ``folders`` (and the baseline runs under ``baselines``), summarise them
    and, if ``out`` is given, write the files there."""
    if not folders:
        raise MultiLossError("give at least one folder of runs")
    runs = [run for folder in folders for run in collect_runs(folder, progress)]
    baseline_runs = [run for folder in baselines for run in collect_runs(folder, progress)]
    report = build_report(runs, baseline_runs, list(folders), list(baselines))
    if out is not None:
        write_report(report, out)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="multiloss-report",
        description="Compare the runs of a sweep: mean ± std over seeds of each task's primary metric, "
        "Δm% against single-task baselines, a Pareto plot for two tasks.",
    )
    parser.add_argument("folders", nargs="+", help="folders holding runs (searched recursively for result.json)")
    parser.add_argument(
        "--baselines",
        action="append",
        default=[],
        metavar="FOLDER",
        help="folder of single-task baseline runs (repeatable)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where to write report.md/.csv and pareto.png (default: first folder)",
    )
    args = parser.parse_args(argv)
    try:
        report = make_report(args.folders, args.baselines, args.out or args.folders[0], progress=sys.stderr)
    except MultiLossError as exc:
        print(f"multiloss-report: error: {exc}", file=sys.stderr)
        return 2
    text = render_markdown(report)
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:  # a terminal whose encoding lacks Δ, ↑, ±: the files are UTF-8 anyway
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode(sys.stdout.encoding or "ascii", errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
