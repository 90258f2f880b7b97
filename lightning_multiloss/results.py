"""The run result, ``result.json``: one schema, read by ``multiloss-report``.

Written into the run's folder (global rank 0 only) by ``multiloss-train``, and in any Hydra app
by :class:`~lightning_multiloss.hydra_callbacks.RunResultCallback` (``hydra.callbacks``) or by
``LossWeightingCallback(result_file=...)``: ``"running"`` when training starts, then the final
status when it ends. It is one JSON object with the fields of :class:`RunResult`::

    {
      "status": "running" | "completed" | "failed" | "interrupted",
                          # "running" is written when training starts, the rest when it ends
      "error": str | null,  # when "failed": the exception's message
      "experiment": str,  # the experiment's name (`name` in multiloss-train; elsewhere the
                          # Hydra `experiment` choice, else the job's name); a single-task
                          # baseline carries the name of the multi-task experiment it is the
                          # baseline for
      "baseline_of": str | null,   # the task of a single-task baseline run, else null
      "weighting": str,   # the weighting's registry name ("fixed", "scheduled", ...)
      "seed": int,
      "overrides": [str], # the run's command-line overrides (Hydra's task overrides)
      "config_key": str,  # the overrides without seed= (and without ckpt_path=, hydra.*),
                          # sorted and joined by " " (:func:`config_key`): runs that differ
                          # only by seed share it
      "metrics": {task: {metric: float}},   # final test metrics (validation if test=false),
                          # each task's metrics plus "loss" (its unweighted loss)
      "directions": {task: {metric: "max" | "min"}},   # which way is better
      "primary": {task: metric},   # the metric for Δm% (the task's `primary`, else "loss")
      "weights": {task: float},    # the weights of the last training step
      "val_metrics": {task: {metric: float}},          # final validation metrics
      "evaluated_on": "test" | "val" | null,           # where "metrics" come from
      "world_size": int | null,  # the number of training processes
      "planned_steps": [int],  # the planned lengths (optimizer steps) that the weights followed,
                          # in order, where they depend on it (unit="fraction" schedules): one
                          # for a run that kept its plan (also when resumed), more for one
                          # re-planned on resume; [] where the weights do not depend on it
      "output_dir": str,
      "host": str, "pid": int,     # where rank 0 ran: the report tells a killed run from a
                                   # running one on the same machine
    }

Reading (:meth:`RunResult.read`, :meth:`RunResult.from_dict`) checks every field's type; only
``status`` is required, and for a completed run ``metrics``, ``directions`` and ``primary`` too
(each task's primary metric in ``metrics``, with a direction). Absent fields take their
defaults; keys that the schema does not know are ignored (a newer writer may add some). A file
that does not match raises :class:`~lightning_multiloss.MultiLossError` naming the file and the key.

Example:
    >>> result = RunResult(status="completed", metrics={"cls": {"acc": 0.5}},
    ...                    directions={"cls": {"acc": "max"}}, primary={"cls": "acc"})
    >>> RunResult.from_dict(result.to_dict(), "result.json") == result
    True
    >>> RunResult.from_dict({"status": "failed", "seed": "3"}, "result.json")
    Traceback (most recent call last):
    ...
    lightning_multiloss.errors.MultiLossError: corrupt result.json: 'seed' must be an integer or null, got '3'
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lightning_multiloss.errors import MultiLossError, first_line

_EXCLUDED_FROM_KEY = ("seed", "ckpt_path", "hydra.", "hydra/", "output_dir")

RESULT_FILE = "result.json"
"""The run result's file name, in the run's folder."""
Status = Literal["completed", "failed", "interrupted", "running"]
STATUSES: tuple[str, ...] = typing.get_args(Status)
Direction = Literal["max", "min"]


def metric_direction(metric: Any) -> Direction:
    """``"max"`` or ``"min"``: torchmetrics' ``higher_is_better`` (``"min"`` when the metric does not say)."""
    return "max" if getattr(metric, "higher_is_better", False) else "min"


TaskMetrics = dict[str, dict[str, float]]
"""``{task: {metric: value}}``."""


@dataclass
class RunResult:
    """One run's ``result.json`` (the fields are documented in the module's docstring)."""

    status: Status
    error: str | None = None
    experiment: str | None = None
    baseline_of: str | None = None
    weighting: str | None = None
    seed: int | None = None
    overrides: list[str] = field(default_factory=list)
    config_key: str = ""
    metrics: TaskMetrics = field(default_factory=dict)
    directions: dict[str, dict[str, Direction]] = field(default_factory=dict)
    primary: dict[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    val_metrics: TaskMetrics = field(default_factory=dict)
    evaluated_on: Literal["test", "val"] | None = None
    world_size: int | None = None
    planned_steps: list[int] = field(default_factory=list)
    output_dir: str | None = None
    host: str | None = None
    pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (plain values: every field, null where not known)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, path: str) -> None:
        """Write the JSON file atomically (a reader never sees half a file)."""
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: str) -> RunResult:
        """Read and check ``path``; a :class:`MultiLossError` naming the file for one that does not match."""
        try:
            with open(path) as f:
                data = json.load(f)
        # ValueError: JSONDecodeError, or an integer of more digits than Python reads from text;
        # RecursionError: nesting deeper than the parser goes.
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
            raise MultiLossError(f"corrupt {path}: cannot read it as JSON ({first_line(error)})") from error
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, path: str) -> RunResult:
        """Check the decoded JSON of ``path`` against the schema and build the result."""
        if not isinstance(data, Mapping):
            raise MultiLossError(f"corrupt {path}: expected a JSON object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            if item.name in data:
                values[item.name] = _checked(data[item.name], hints[item.name], path, [item.name])
            elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                raise MultiLossError(f"corrupt {path}: the key {item.name!r} is missing")
        result = cls(**values)
        if result.status == "completed":
            result._check_completed(data, path)
        return result

    def _check_completed(self, data: Mapping[str, Any], path: str) -> None:
        """A completed run names each task's primary metric, its value and which way is better."""
        for key in ("metrics", "directions", "primary"):
            if key not in data:
                raise MultiLossError(f"corrupt {path}: the key {key!r} is missing (a completed run has it)")
        if not self.primary:
            raise MultiLossError(f"corrupt {path}: 'primary' names no task")
        for task, metric in self.primary.items():
            if metric not in self.metrics.get(task, {}):
                raise MultiLossError(
                    f"corrupt {path}: the primary metric {metric!r} of task {task!r} is not in 'metrics'"
                )
            if metric not in self.directions.get(task, {}):
                raise MultiLossError(
                    f"corrupt {path}: 'directions' has no direction for the primary metric {metric!r} of task {task!r}"
                )


def config_key(overrides: Sequence[str]) -> str:
    """The overrides that identify a configuration: all but ``seed=``, ``ckpt_path=``, ``hydra.*``.

    Each in Hydra's canonical form, so that one configuration has one key however it was typed:
    Hydra records a sweep job's overrides normalised (``False``, ``[1,2]``), a single run's as typed
    (``false``, ``[1, 2]``).

    Example:
        >>> config_key(["weighting=learnable", "seed=3", "experiment=loc_cls", "trainer.logger=false"])
        'experiment=loc_cls trainer.logger=False weighting=learnable'
    """
    kept = []
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if any(key == k or (k.endswith((".", "/")) and key.startswith(k)) for k in _EXCLUDED_FROM_KEY):
            continue
        kept.append(canonical_override(override))
    return " ".join(sorted(kept))


def canonical_override(override: str) -> str:
    """``override`` as Hydra's parser reads it (as written if it does not parse): the setting it
    makes, however it was typed. ``+key=``, ``++key=`` and ``key=`` set the same value; values
    compare by value, in lists and mappings too (``{a:1}`` and ``{a: 1.0}``); ``~key`` deletes.

    Example:
        >>> canonical_override("++weighting.weights={digit:1, recon:0.3}")
        "weighting.weights={'digit': 1, 'recon': 0.3}"
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Sweep
    from hydra.errors import HydraException

    try:
        (parsed,) = OverridesParser.create().parse_overrides([override])
    except HydraException:
        return override
    if parsed.is_delete() and parsed.value() is None:  # ``~key`` and ``~key=null`` delete alike
        return parsed.get_key_element()
    key = parsed.get_key_element().lstrip("+")
    value = parsed.value()
    if isinstance(value, Sweep):  # not a job's override (a sweep's is one value each)
        return f"{key}={parsed.get_value_element_as_str()}"
    return f"{key}={canonical_value(value)}"


def canonical_value(value: object) -> str:
    """A config value as text, numbers by value: ``1`` and ``1.0`` are one setting (``"1"``), in lists
    and mappings too, where strings keep their quotes (``["a", "b"]`` is not ``["a, b"]``). A string
    is written as it is, unless it reads like another type's value (``"1"``, ``"True"``, ``"None"``):
    then with quotes, so that it stays apart from that value.

    Example:
        >>> canonical_value([1.0, 0.5, "1"]), canonical_value(3.0), canonical_value("1"), canonical_value("adam")
        ("[1, 0.5, '1']", '3', "'1'", 'adam')
    """
    if isinstance(value, str):
        return repr(value) if _reads_like_another_type(value) else value
    return _canonical_item(value)


def _reads_like_another_type(text: str) -> bool:
    """Whether ``text`` is what a number, a boolean or ``None`` is written as."""
    if text in ("True", "False", "None"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _canonical_item(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_canonical_item(v) for v in value) + "]"
    if isinstance(value, Mapping):  # in any order, as a config compares
        items = sorted(value.items(), key=lambda item: str(item[0]))
        return "{" + ", ".join(f"{k!r}: {_canonical_item(v)}" for k, v in items) + "}"
    return repr(value) if isinstance(value, str) else str(value)


def _where(keys: list[str | int]) -> str:
    """A value's place in the file: the top-level key, then the task (and the metric) inside it."""
    text = repr(keys[0])
    if len(keys) == 2:
        text += f": task {keys[1]!r}" if isinstance(keys[1], str) else f": item {keys[1]}"
    elif len(keys) == 3:
        text += f": metric {keys[2]!r} of task {keys[1]!r}"
    return text


def _checked(value: Any, hint: Any, path: str, keys: list[str | int], nullable: bool = False) -> Any:
    """``value`` if it has the type ``hint`` (an int where a float is expected becomes a float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or isinstance(hint, types.UnionType):  # X | None
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _checked(value, inner, path, keys, nullable=True)
    expected: str
    if origin is Literal:
        if value in args:
            return value
        expected = " or ".join(repr(a) for a in args) if len(args) == 2 else f"one of {list(args)}"
    elif origin is list:
        if isinstance(value, list):
            return [_checked(v, args[0], path, [*keys, i]) for i, v in enumerate(value)]
        expected = "a list"
    elif origin is dict:
        if isinstance(value, Mapping):
            return {k: _checked(v, args[1], path, [*keys, k]) for k, v in value.items()}
        expected = "an object keyed by task name" if len(keys) == 1 else "an object"
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond float's range
                expected = "a number within float's range"
        else:
            expected = "a number"
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "an integer"
    elif hint is str:
        if isinstance(value, str):
            return value
        expected = "a string"
    else:  # a field of a type this reader does not know: a bug of the schema, not of the file
        raise TypeError(f"RunResult: no check for the type {hint!r} of {keys[0]!r}")
    if nullable:
        expected += " or null"
    raise MultiLossError(f"corrupt {path}: {_where(keys)} must be {expected}, got {value!r}")
