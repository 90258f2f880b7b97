"""Schedules against values computed by hand from their formulas, and their argument checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_multiloss.callback import LossWeightingCallback
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.schedules import (
    SCHEDULES,
    Constant,
    Cosine,
    Cyclic,
    Exponential,
    Linear,
    Piecewise,
    Step,
    Warmup,
    as_schedule,
)
from lightning_multiloss.weighting import Progress, Scheduled

NAN = float("nan")
INF = float("inf")


def values(schedule, ts):
    return [schedule(t) for t in ts]


def test_constant():
    s = Constant(0.3)
    assert values(s, [-5, 0, 0.5, 7, 1e9]) == [0.3] * 5


def test_linear_with_delay():
    # v(t) = 2 + (0 - 2) * clip((t - 1) / 4, 0, 1)
    s = Linear(start=2.0, end=0.0, duration=4, delay=1)
    ts = [-3, 0, 1, 2, 3, 4.5, 5, 6, 100]
    expected = [2.0, 2.0, 2.0, 1.5, 1.0, 0.25, 0.0, 0.0, 0.0]
    assert values(s, ts) == pytest.approx(expected, abs=1e-12)


def test_linear_increasing_no_delay():
    s = Linear(start=0.2, end=1.0, duration=8)
    # 0.2 + 0.8 * t / 8 = 0.2 + 0.1 t on [0, 8]
    assert values(s, [-1, 0, 2, 8, 9]) == pytest.approx([0.2, 0.2, 0.4, 1.0, 1.0], abs=1e-12)


def test_cosine():
    s = Cosine(start=1.0, end=0.0, duration=10, delay=2)
    # p = clip((t - 2) / 10, 0, 1); v = 1 - (1 - cos(pi p)) / 2 = (1 + cos(pi p)) / 2
    assert s(-4) == 1.0
    assert s(2) == 1.0
    assert s(4.5) == pytest.approx((1 + math.cos(math.pi / 4)) / 2, abs=1e-12)  # 0.853553...
    assert s(4.5) == pytest.approx(0.8535533905932737, abs=1e-12)
    assert s(7) == pytest.approx(0.5, abs=1e-12)
    assert s(9.5) == pytest.approx((1 + math.cos(3 * math.pi / 4)) / 2, abs=1e-12)  # 0.146446...
    assert s(12) == pytest.approx(0.0, abs=1e-12)
    assert s(50) == pytest.approx(0.0, abs=1e-12)


def test_cosine_increasing():
    s = Cosine(start=0.5, end=1.5, duration=4)
    # 0.5 + 1.0 * (1 - cos(pi t / 4)) / 2
    assert s(1) == pytest.approx(0.5 + (1 - math.sqrt(0.5)) / 2, abs=1e-12)
    assert s(2) == pytest.approx(1.0, abs=1e-12)
    assert s(4) == pytest.approx(1.5, abs=1e-12)


def test_exponential_decay_and_bounds():
    s = Exponential(start=1.0, gamma=0.5)
    assert values(s, [0, 1, 3, 10]) == pytest.approx([1.0, 0.5, 0.125, 1 / 1024], abs=1e-15)
    floored = Exponential(start=1.0, gamma=0.5, min_value=0.2)
    assert values(floored, [0, 2, 3, 50]) == pytest.approx([1.0, 0.25, 0.2, 0.2], abs=1e-15)
    grow = Exponential(start=0.5, gamma=2.0, max_value=5.0)
    assert values(grow, [0, 1, 2, 3, 4]) == pytest.approx([0.5, 1.0, 2.0, 4.0, 5.0], abs=1e-15)


def test_exponential_growth_far_past_its_cap_stays_capped():
    # 1.001 ** 1e6 = e^1000 is beyond a float: the cap must still hold (a long run counted in steps).
    s = Exponential(start=0.01, gamma=1.001, max_value=1.0)
    assert s(1_000_000) == 1.0
    assert Exponential(start=1.0, gamma=0.999, min_value=0.1)(1_000_000) == 0.1
    assert Exponential(start=-1.0, gamma=2.0, min_value=-3.0)(1_000_000) == -3.0
    assert Exponential(start=0.0, gamma=2.0)(1_000_000) == 0.0  # 0 * gamma^t stays 0


def test_step():
    s = Step(milestones=[10, 20], values=[1.0, 0.5, 0.1])
    ts = [-5, 0, 9.99, 10, 15, 19.999, 20, 21, 1e6]
    assert values(s, ts) == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1]
    assert Step(milestones=[], values=[0.7])(123) == 0.7


def test_warmup():
    s = Warmup(value=1.0, duration=4, start=0.2)
    # 0.2 + 0.8 * clip(t / 4, 0, 1)
    ts = [-2, 0, 1, 2, 4, 5, 1000]
    assert values(s, ts) == pytest.approx([0.2, 0.2, 0.4, 0.6, 1.0, 1.0, 1.0], abs=1e-12)
    assert Warmup(value=3.0, duration=10)(5) == pytest.approx(1.5, abs=1e-12)


def test_cyclic_triangle():
    s = Cyclic(low=0.0, high=1.0, period=4)
    ts = [0, 1, 2, 3, 4, 5, 6, 8, -1]
    # a triangle starting at low, peaking at half the period; periodic (t = -1 is t = 3)
    assert values(s, ts) == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0, 0.5, 1.0, 0.0, 0.5], abs=1e-12)
    shifted = Cyclic(low=0.2, high=0.6, period=10)
    assert shifted(2.5) == pytest.approx(0.2 + 0.4 * 0.5, abs=1e-12)


def test_cyclic_cosine():
    s = Cyclic(low=1.0, high=3.0, period=8, shape="cosine")
    # 1 + 2 * (1 - cos(2 pi t / 8)) / 2 = 2 - cos(pi t / 4)
    for t in [0, 1, 2, 3, 4, 6, 8, 9]:
        assert s(t) == pytest.approx(2 - math.cos(math.pi * t / 4), abs=1e-12), t
    assert s(4) == pytest.approx(3.0, abs=1e-12)


def test_piecewise():
    s = Piecewise([(0, 0.0), (10, 1.0), (20, 1.0), (30, 0.0)])
    ts = [-5, 0, 5, 7.5, 10, 15, 20, 25, 30, 40]
    expected = [0.0, 0.0, 0.5, 0.75, 1.0, 1.0, 1.0, 0.5, 0.0, 0.0]
    assert values(s, ts) == pytest.approx(expected, abs=1e-12)
    single = Piecewise([(5, 0.4)])
    assert values(single, [0, 5, 9]) == [0.4, 0.4, 0.4]
    offset = Piecewise([[2, 1.0], [6, 3.0]])
    assert values(offset, [1, 2, 3, 6, 7]) == pytest.approx([1.0, 1.0, 1.5, 3.0, 3.0], abs=1e-12)


def test_registry_of_schedule_names():
    expected = {
        "constant": Constant,
        "linear": Linear,
        "cosine": Cosine,
        "exponential": Exponential,
        "step": Step,
        "warmup": Warmup,
        "cyclic": Cyclic,
        "piecewise": Piecewise,
    }
    assert expected == SCHEDULES


def test_as_schedule():
    assert as_schedule(0.25, "here")(100) == 0.25
    f = lambda t: t + 1.0  # noqa: E731
    assert as_schedule(f, "here") is f
    with pytest.raises(MultiLossError, match=r"here: expected a schedule, a callable or a number, got True"):
        as_schedule(True, "here")
    with pytest.raises(MultiLossError, match=r"schedule of x: expected .* got str"):
        as_schedule("linear", "schedule of x")


def test_plain_callable_through_scheduled():
    # alpha(t) = 1 / (1 + t): a plain function, no Schedule class
    w = Scheduled(lambda t: 1.0 / (1.0 + t))
    w.bind(["a", "b"])
    assert w.weights.tolist() == [1.0, 0.0]  # t = 0
    w.set_progress(Progress(step=3, epoch=0))
    torch.testing.assert_close(w.weights, torch.tensor([0.25, 0.75]), rtol=0, atol=0)
    per_task = Scheduled([lambda t: 2.0 * t, 0.5])
    per_task.bind(["a", "b"])
    per_task.set_progress(Progress(step=7, epoch=0))
    assert per_task.weights.tolist() == [14.0, 0.5]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Constant(NAN), r"constant schedule: value must be finite, got nan"),
        (lambda: Constant(INF), r"constant schedule: value must be finite, got inf"),
        (lambda: Linear(1.0, 0.0, duration=0), r"linear schedule: duration must be > 0, got 0"),
        (lambda: Linear(1.0, 0.0, duration=-3), r"linear schedule: duration must be > 0, got -3"),
        (lambda: Linear(NAN, 0.0, duration=3), r"linear schedule: start must be finite, got nan"),
        (lambda: Linear(1.0, 0.0, duration=NAN), r"linear schedule: duration must be finite, got nan"),
        (lambda: Linear(1.0, 0.0, duration=3, delay=-1), r"linear schedule: delay must be >= 0, got -1"),
        (lambda: Cosine(1.0, 0.0, duration=0), r"cosine schedule: duration must be > 0"),
        (lambda: Cosine(1.0, INF, duration=1), r"cosine schedule: end must be finite"),
        (lambda: Exponential(1.0, gamma=0.0), r"exponential schedule: gamma must be > 0, got 0"),
        (lambda: Exponential(NAN, gamma=0.5), r"exponential schedule: start must be finite"),
        (
            lambda: Exponential(1.0, gamma=0.5, min_value=2.0, max_value=1.0),
            r"exponential schedule: min_value must be <= max_value, got min_value=2.0 and max_value=1.0$",
        ),
        (lambda: Step([10, 20], [1.0, 0.5]), r"step schedule: needs one more value than milestones, got 2 .* 2 values"),
        (lambda: Step([10], [1.0, 0.5, 0.1]), r"step schedule: needs one more value than milestones"),
        (lambda: Step([10, 10], [1.0, 0.5, 0.1]), r"step schedule: milestones must be strictly increasing"),
        (lambda: Step([20, 10], [1.0, 0.5, 0.1]), r"step schedule: milestones must be strictly increasing"),
        (lambda: Step([NAN], [1.0, 0.5]), r"step schedule: milestone must be finite"),
        (lambda: Step([1], [1.0, NAN]), r"step schedule: value must be finite"),
        (lambda: Warmup(1.0, duration=0), r"warmup schedule: duration must be > 0"),
        (lambda: Warmup(NAN, duration=2), r"warmup schedule: value must be finite"),
        (lambda: Cyclic(0.0, 1.0, period=0), r"cyclic schedule: period must be > 0"),
        (lambda: Cyclic(0.0, 1.0, period=4, shape="square"), r"cyclic schedule: shape must be .* got 'square'"),
        (lambda: Cyclic(NAN, 1.0, period=4), r"cyclic schedule: low must be finite"),
        (lambda: Piecewise([]), r"piecewise schedule: needs at least one point"),
        (lambda: Piecewise([(0, 0.0), (0, 1.0)]), r"piecewise schedule: the points' t must be strictly increasing"),
        (lambda: Piecewise([(5, 0.0), (1, 1.0)]), r"piecewise schedule: the points' t must be strictly increasing"),
        (lambda: Piecewise([(0, 0.0, 1.0)]), r"piecewise schedule: each point is a pair \(t, value\)"),
        (lambda: Piecewise([0, 1]), r"piecewise schedule: each point is a pair \(t, value\), got 0"),
        (lambda: Piecewise([(0, NAN)]), r"piecewise schedule: value must be finite"),
        (lambda: Piecewise([(INF, 1.0)]), r"piecewise schedule: t must be finite"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(MultiLossError, match=match):
        make()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        # float() raised a bare TypeError or ValueError, or took "0.5", True and "12" (as [1.0, 2.0]).
        (lambda: Linear(None, 0.0, 10.0), r"linear schedule: start must be a number, got None"),
        (lambda: Linear("abc", 0.0, 10.0), r"linear schedule: start must be a number, got 'abc'"),
        (lambda: Linear(1.0, 0.0, True), r"linear schedule: duration must be a number, got True"),
        (lambda: Constant("0.5"), r"constant schedule: value must be a number, got '0.5'"),
        (lambda: Step(None, [1.0]), r"step schedule: milestones must be a list, got None"),
        (lambda: Step("12", [1.0, 2.0, 3.0]), r"step schedule: milestones must be a list, got '12'"),
        (lambda: Step([1.0], [None, 2.0]), r"step schedule: value must be a number, got None"),
        (lambda: Piecewise(None), r"piecewise schedule: points must be a list, got None"),
        (lambda: Piecewise([[0.0, "abc"]]), r"piecewise schedule: value must be a number, got 'abc'"),
        (lambda: Piecewise(["ab"]), r"piecewise schedule: each point is a pair \(t, value\), got 'ab'"),
    ],
)
def test_arguments_that_are_not_numbers_are_named(build, message):
    with pytest.raises(MultiLossError, match=message):
        build()


@pytest.mark.parametrize("value", [None, "0.5", True])
def test_an_alpha_schedule_that_gives_no_number_is_named(value):
    # The per-task form refused these; the two-task alpha form took "0.5" and True, and None was a TypeError.
    weighting = Scheduled(lambda t: value)
    with pytest.raises(MultiLossError, match=r"the value of alpha's schedule at t=0.0 must be a number, got "):
        weighting.bind(["a", "b"])


@pytest.mark.parametrize(
    ("spec", "whose"), [([1.0, float("nan")], "schedule of task 'b'"), (math.inf, "schedule of alpha")]
)
def test_a_constant_schedule_out_of_range_names_whose_it_is(spec, whose):
    with pytest.raises(MultiLossError, match=rf"^{whose}: constant schedule: value must be finite"):
        Scheduled(spec).bind(["a", "b"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # NaN passed `< 1` (every_n_steps=nan recorded step 1 only, max_points=nan never thinned);
        # 2.5 was taken, "2" and None raised a bare TypeError, and bool("false") is True.
        ({"every_n_steps": math.nan}, r"every_n_steps must be an integer >= 1, got nan"),
        ({"every_n_steps": 2.5}, r"every_n_steps must be an integer >= 1, got 2.5"),
        ({"every_n_steps": "2"}, r"every_n_steps must be an integer >= 1, got '2'"),
        ({"every_n_steps": None}, r"every_n_steps must be an integer >= 1, got None"),
        ({"every_n_steps": True}, r"every_n_steps must be an integer >= 1, got True"),
        ({"every_n_steps": 0}, r"every_n_steps must be an integer >= 1, got 0"),
        ({"max_points": math.nan}, r"max_points must be an integer >= 2, got nan"),
        ({"max_points": math.inf}, r"max_points must be an integer >= 2, got inf"),
        ({"max_points": 1}, r"max_points must be an integer >= 2, got 1"),
        ({"replan_on_resume": "false"}, r"replan_on_resume must be true or false, got 'false'"),
        ({"plot": 1}, r"plot must be true or false, got 1"),
        ({"filename": None}, r"filename must be a plain file stem \(no folder, at most 250 bytes\), got None"),
        # "." wrote "..csv" and "..png.png"; a NUL byte and 300 characters failed after training.
        ({"filename": "."}, r"filename must be a plain file stem \(no folder, at most 250 bytes\), got '\.'"),
        ({"filename": ".."}, r"filename must be a plain file stem \(no folder, at most 250 bytes\), got '\.\.'"),
        ({"filename": "..."}, r"filename must be a plain file stem \(no folder, at most 250 bytes\), got '\.\.\.'"),
        ({"filename": "a\0b"}, r"filename must be a plain file stem \(no folder, at most 250 bytes\), got 'a\\x00b'"),
        (
            {"filename": "w" * 251},
            rf"filename must be a plain file stem \(no folder, at most 250 bytes\), got '{'w' * 251}'",
        ),
        ({"result_file": ""}, r"result_file must be a file path or None, got ''"),
    ],
)
def test_the_callbacks_arguments_are_checked(kwargs, message):
    with pytest.raises(MultiLossError, match=rf"^LossWeightingCallback: {message}$"):
        LossWeightingCallback(**kwargs)


def test_the_callback_takes_whole_floats_numpy_integers_and_paths():
    callback = LossWeightingCallback(every_n_steps=4.0, max_points=10.0)  # YAML may write 4.0
    assert (callback.every_n_steps, callback.max_points) == (4, 10)
    assert isinstance(callback.every_n_steps, int)
    callback = LossWeightingCallback(every_n_steps=np.int64(5), max_points=np.int32(7), result_file=Path("r.json"))
    assert (callback.every_n_steps, callback.max_points, callback.result_file) == (5, 7, "r.json")


def test_a_float64_module_keeps_the_schedules_float64_value() -> None:
    # precision="64-true" converts the buffer to float64; the value copied into it was float32
    # (0.6666666865348816 for 1 - 1/3), and the two weights summed to 1 + 3e-8.
    weighting = Scheduled(Linear(1.0, 0.0, duration=3), unit="step")
    weighting.bind(["a", "b"])
    weighting.double()
    weighting.set_progress(Progress(step=1, epoch=0, total_steps=3))
    assert weighting.weights.dtype == torch.float64
    alpha = 1.0 - 1.0 / 3.0  # Linear(1, 0, 3) at step 1; the second task gets 1 - alpha
    assert weighting.weights.tolist() == [alpha, 1.0 - alpha]
