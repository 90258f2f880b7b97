"""``result.json``'s one schema (:class:`RunResult`): what train writes, report reads back; a bad file is named."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from lightning_multiloss import MultiLossError, results
from lightning_multiloss.results import RunResult, canonical_override, canonical_value

COMPLETED: dict[str, Any] = {
    "status": "completed",
    "error": None,
    "experiment": "digits",
    "baseline_of": None,
    "weighting": "learnable",
    "seed": 2,
    "overrides": ["weighting=learnable", "seed=2"],
    "config_key": "weighting=learnable",
    "metrics": {"digit": {"acc": 0.75, "loss": 0.5}, "centre": {"mae": 0.25, "loss": 0.125}},
    "directions": {"digit": {"acc": "max", "loss": "min"}, "centre": {"mae": "min", "loss": "min"}},
    "primary": {"digit": "acc", "centre": "mae"},
    "weights": {"digit": 0.5, "centre": 0.5},
    "val_metrics": {"digit": {"acc": 0.5, "loss": 1.0}, "centre": {"mae": 0.5, "loss": 0.25}},
    "evaluated_on": "test",
    "world_size": 1,
    "planned_steps": [],
    "output_dir": "outputs/digits/run",
    "host": "node1",
    "pid": 123,
}


def test_write_then_read_gives_the_same_json(tmp_path: Path) -> None:
    result = RunResult.from_dict(COMPLETED, "result.json")
    path = tmp_path / "result.json"
    result.write(str(path))
    assert json.loads(path.read_text()) == COMPLETED  # every field, as given
    assert RunResult.read(str(path)) == result
    assert not (tmp_path / "result.json.tmp").exists()


def test_the_documented_fields_are_the_schema_fields() -> None:
    """The field list of the module's docstring and the dataclass agree (the docs are the schema's)."""
    doc = results.__doc__ or ""
    documented = re.findall(r'^\s+"(\w+)":', doc, re.MULTILINE) + re.findall(r'^\s+"\w+": \w+, "(\w+)":', doc, re.M)
    assert sorted(documented) == sorted(f.name for f in dataclasses.fields(RunResult))


def test_ints_read_as_floats_and_absent_optional_fields_take_defaults() -> None:
    minimal = {"status": "completed", "metrics": {"a": {"acc": 1}}, "directions": {"a": {"acc": "max"}}}
    result = RunResult.from_dict({**minimal, "primary": {"a": "acc"}}, "r.json")
    assert result.metrics == {"a": {"acc": 1.0}} and isinstance(result.metrics["a"]["acc"], float)
    assert (result.seed, result.overrides, result.config_key, result.world_size) == (None, [], "", None)
    nan = RunResult.from_dict(json.loads(json.dumps({**COMPLETED, "weights": {"digit": math.nan}})), "r.json")
    assert math.isnan(nan.weights["digit"])  # a diverged run's NaN is a number


def test_unknown_keys_are_ignored() -> None:
    assert RunResult.from_dict({**COMPLETED, "added_later": [1]}, "r.json") == RunResult.from_dict(COMPLETED, "r.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "done"}, "'status' must be one of ['completed', 'failed', 'interrupted', 'running'], got 'done'"),
        ({"status": None}, "'status' must be one of ['completed', 'failed', 'interrupted', 'running'], got None"),
        ({"seed": True}, "'seed' must be an integer or null, got True"),
        ({"seed": "3"}, "'seed' must be an integer or null, got '3'"),
        ({"experiment": 3}, "'experiment' must be a string or null, got 3"),
        ({"overrides": "seed=2"}, "'overrides' must be a list, got 'seed=2'"),
        ({"overrides": ["seed=2", 3]}, "'overrides': item 1 must be a string, got 3"),
        ({"config_key": None}, "'config_key' must be a string, got None"),
        ({"metrics": [0.5]}, "'metrics' must be an object keyed by task name, got [0.5]"),
        ({"metrics": {"digit": 0.5}}, "'metrics': task 'digit' must be an object, got 0.5"),
        ({"metrics": {"digit": {"acc": "0.5"}}}, "'metrics': metric 'acc' of task 'digit' must be a number, got '0.5'"),
        ({"val_metrics": {"digit": {"acc": None}}}, "'val_metrics': metric 'acc' of task 'digit' must be a number"),
        ({"directions": {"digit": {"acc": "up"}}}, "'directions': metric 'acc' of task 'digit' must be 'max' or 'min'"),
        ({"primary": {"digit": 1}}, "'primary': task 'digit' must be a string, got 1"),
        ({"primary": {}}, "'primary' names no task"),
        ({"primary": {"digit": "f1"}}, "the primary metric 'f1' of task 'digit' is not in 'metrics'"),
        ({"directions": {"digit": {}}}, "'directions' has no direction for the primary metric 'acc' of task 'digit'"),
        ({"weights": {"digit": "half"}}, "'weights': task 'digit' must be a number, got 'half'"),
        ({"evaluated_on": "train"}, "'evaluated_on' must be 'test' or 'val' or null, got 'train'"),
        ({"world_size": 1.5}, "'world_size' must be an integer or null, got 1.5"),
        ({"pid": "123"}, "'pid' must be an integer or null, got '123'"),
    ],
)
def test_a_field_that_does_not_match_is_named_with_the_file(change: dict[str, Any], message: str) -> None:
    with pytest.raises(MultiLossError) as info:
        RunResult.from_dict({**COMPLETED, **change}, "runs/0/result.json")
    assert str(info.value).startswith("corrupt runs/0/result.json: ")
    assert message in str(info.value)


@pytest.mark.parametrize("key", ["metrics", "directions", "primary"])
def test_a_completed_run_needs_its_metrics(key: str) -> None:
    data = {k: v for k, v in COMPLETED.items() if k != key}
    with pytest.raises(MultiLossError, match=rf"corrupt r.json: the key '{key}' is missing \(a completed run has it\)"):
        RunResult.from_dict(data, "r.json")
    failed = {"status": "failed", "error": "ValueError: x"}  # only the status is required of a run that did not end
    assert RunResult.from_dict(failed, "r.json") == RunResult(status="failed", error="ValueError: x")


def test_not_an_object_or_no_status_or_not_json(tmp_path: Path) -> None:
    with pytest.raises(MultiLossError, match=r"corrupt r.json: expected a JSON object, got list"):
        RunResult.from_dict([COMPLETED], "r.json")
    with pytest.raises(MultiLossError, match=r"corrupt r.json: the key 'status' is missing"):
        RunResult.from_dict({"seed": 1}, "r.json")
    path = tmp_path / "result.json"
    path.write_text('{"status": "compl')
    with pytest.raises(MultiLossError, match=rf"corrupt {re.escape(str(path))}: cannot read it as JSON"):
        RunResult.read(str(path))


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (1, 1.0, True),
        ([1, 0.5], [1.0, 0.5], True),
        ([{"w": 1.0}], [{"w": 1}], True),
        (1e-3, 0.001, True),
        (["a, b"], ["a", "b"], False),
        ("[a, b]", ["a", "b"], False),
        ([1, "1"], [1, 1], False),
        ([True], ["True"], False),
        (True, 1, False),
        ("1.0", 1.0, False),
        (10**17 + 1, 1e17, False),
        ("1", 1, False),
        ("1", 1.0, False),
        ("True", True, False),
        ("None", None, False),
        ("nan", float("nan"), False),
        ("adam", "adam", True),
        ({"a": 1, "b": 0.5}, {"b": 0.5, "a": 1.0}, True),
        ({"a": 1}, {"a": 1, "b": 1}, False),
        ({"a": "1"}, {"a": 1}, False),
    ],
)
def test_canonical_value_compares_numbers_by_value_and_nothing_else(a: object, b: object, same: bool) -> None:
    assert (canonical_value(a) == canonical_value(b)) is same


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("weighting.weights={a:1,b:0.3}", "weighting.weights={b: 0.3, a: 1.0}", True),
        ("++weighting.init=1", "+weighting.init=1.0", True),
        ("+weighting.init=1", "weighting.init=1", True),
        ("trainer.logger=false", "trainer.logger=False", True),
        ("~model.x", "~model.x=null", True),
        ("weighting.weights=[1,2]", "weighting.weights=[1.0, 2]", True),
        ("~model.x", "model.x=null", False),
        ("weighting.init='1'", "weighting.init=1", False),
        ("weighting.weights={a:1}", "weighting.weights={a:2}", False),
        ("weighting.init=1", "weighting.lr=1", False),
    ],
)
def test_canonical_override_compares_the_setting_made(a: str, b: str, same: bool) -> None:
    assert (canonical_override(a) == canonical_override(b)) is same
