"""The extension API: a user's own strategies, schedules and registry entries fail early, with a
message that names the strategy (or task) at fault, not deep inside the mixin or torch."""

from __future__ import annotations

import csv
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from lightning_multiloss.callback import LossWeightingCallback
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.schedules import Linear, Schedule
from lightning_multiloss.weighting import (
    WEIGHTINGS,
    Fixed,
    GramianWeighting,
    Progress,
    Scheduled,
    WeightedLoss,
    Weighting,
    create_weighting,
    register,
    weighted_sum,
)
from tests._models import ToyNet, quiet_trainer, toy_loader


@pytest.fixture(autouse=True)
def _registry_restored() -> Iterator[None]:
    """What a test registers is gone after it: the registry is the process's."""
    saved = dict(WEIGHTINGS)
    yield
    WEIGHTINGS.clear()
    WEIGHTINGS.update(saved)


class Equal(Weighting):
    """A user's strategy, not registered: equal weights."""

    def forward(self, losses: Tensor) -> WeightedLoss:
        return weighted_sum(torch.ones_like(losses), losses)


# ---------------------------------------------------------------------------------------------
# What a loss-level strategy's forward returns
# ---------------------------------------------------------------------------------------------
def _returning(result: Any) -> type[Weighting]:
    class Returns(Weighting):
        def forward(self, losses: Tensor) -> WeightedLoss:
            return result(losses)

    return Returns


@pytest.mark.parametrize(
    ("result", "got"),
    [
        (lambda losses: WeightedLoss(losses.sum(), torch.ones(3)), r"a loss of shape \(\) and weights of shape \(3,\)"),
        (
            lambda losses: WeightedLoss(losses.sum(), torch.tensor(1.0)),
            r"a loss of shape \(\) and weights of shape \(\)",
        ),
        (
            lambda losses: WeightedLoss(losses.sum(), [1.0, 1.0]),  # type: ignore[arg-type]
            r"a loss of shape \(\) and weights of type list",
        ),
        (lambda losses: WeightedLoss(losses * 1.0, torch.ones(2)), r"a loss of shape \(2,\) and weights of"),
        (lambda losses: losses.sum(), r"a Tensor$"),
        (lambda losses: (losses.sum(), torch.ones(2)), r"a tuple$"),
    ],
    ids=["weights_3", "weights_0d", "weights_list", "loss_2", "bare_tensor", "tuple"],
)
def test_a_forward_that_returns_no_weighted_loss_of_the_tasks_is_refused_naming_the_strategy(result, got) -> None:
    # They failed in the mixin's logging with an IndexError, AttributeError or a zip() error.
    weighting = _returning(result)()
    weighting.bind(["a", "b"])
    with pytest.raises(
        MultiLossError,
        match=r"weighting 'Returns': forward must return WeightedLoss\(loss, weights\) with a scalar loss "
        rf"and \(2,\) weights, got {got}",
    ):
        weighting(torch.tensor([1.0, 2.0]))


def test_a_forward_that_returns_no_weighted_loss_is_refused_in_training() -> None:
    model = ToyNet(_returning(lambda losses: WeightedLoss(losses.sum(), torch.ones(3)))())
    with pytest.raises(MultiLossError, match=r"weighting 'Returns': forward must return WeightedLoss"):
        quiet_trainer(max_steps=1).fit(model, toy_loader(n=16))


# ---------------------------------------------------------------------------------------------
# The name in messages
# ---------------------------------------------------------------------------------------------
def test_an_unregistered_strategy_is_named_by_its_class() -> None:
    class NeedsThree(Equal):
        min_tasks = 3

    with pytest.raises(MultiLossError, match=r"weighting 'NeedsThree' needs at least 3 tasks, got 2"):
        NeedsThree().bind(["a", "b"])
    assert Equal().name == "Equal"
    assert Fixed([1.0]).name == "fixed"
    # The class still says it is not registered: the app names the strategy of a config by its
    # registry name where it has one, by its `_target_` otherwise.
    assert Equal.name == "" and Fixed.name == "fixed"


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------
def test_register_without_parentheses_is_refused() -> None:
    # The class became register's inner function, and failed only when called.
    with pytest.raises(MultiLossError, match=r"""write @register\("name"\)"""):

        @register  # type: ignore[arg-type]
        class Mine(Equal):
            pass


def test_register_refuses_a_class_that_is_no_weighting() -> None:
    class NotAWeighting:
        pass

    with pytest.raises(MultiLossError, match=r"register\('plain'\): NotAWeighting is not a Weighting subclass"):
        register("plain")(NotAWeighting)  # type: ignore[type-var]
    assert "plain" not in WEIGHTINGS


@pytest.mark.parametrize("name", ["", "my strategy", "a/b", "a.b", "1st", 3, None])
def test_register_refuses_a_name_unusable_in_configs_and_logging_keys(name: Any) -> None:
    # An int was registered, and create_weighting's list of names (sorted) then failed.
    with pytest.raises(MultiLossError, match=r"register: weighting name .* cannot be used"):
        register(name)(Equal)
    assert name not in WEIGHTINGS
    with pytest.raises(MultiLossError, match=r"unknown weighting 'nothing'"):
        create_weighting("nothing")


def test_a_redefined_class_replaces_its_registration() -> None:
    # A notebook cell run again (or importlib.reload) defines a new class of the same name in the
    # same module: "already registered" was raised.
    def define() -> type[Weighting]:
        @register("my-equal")
        class MyEqual(Equal):
            pass

        return MyEqual

    first, second = define(), define()
    assert first is not second
    assert WEIGHTINGS["my-equal"] is second and isinstance(create_weighting("my-equal"), second)

    class MyEqual(Equal):  # the same name, defined elsewhere: another class
        pass

    with pytest.raises(MultiLossError, match=r"a weighting named 'my-equal' is already registered"):
        register("my-equal")(MyEqual)
    assert WEIGHTINGS["my-equal"] is second


def test_a_class_registers_under_one_name_only() -> None:
    # The second name rewrote the class's name: create_weighting("one").name said "two".
    class Twice(Equal):
        pass

    register("one")(Twice)
    with pytest.raises(MultiLossError, match=r"register\('two'\): Twice is already registered as 'one'"):
        register("two")(Twice)
    assert "two" not in WEIGHTINGS and create_weighting("one").name == "one"
    register("one")(Twice)  # the same class under its own name again: nothing to refuse


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schedule", "where"),
    [
        (Linear, "schedule of alpha"),
        ([1.0, Linear], "schedule at index 1 of the list"),
        ({"b": Linear}, "schedule of task 'b'"),
    ],
    ids=["alpha", "list", "dict"],
)
def test_scheduled_refuses_a_schedule_class_at_construction(schedule: Any, where: str) -> None:
    # It failed when the weights were first computed, with a TypeError from Linear's __init__.
    with pytest.raises(
        MultiLossError, match=rf"weighting 'scheduled': the {where} is the class Linear.*Linear\(\.\.\.\)"
    ):
        Scheduled(schedule)


class Raising(Schedule):
    """A user's schedule that raises from t = 5 on."""

    def __call__(self, t: float) -> float:
        if t >= 5:
            raise RuntimeError("out of my table")
        return 0.5


@pytest.mark.parametrize(
    ("schedule", "who"), [(Raising(), "alpha"), ({"b": Raising()}, "task 'b'")], ids=["alpha", "task"]
)
def test_an_error_of_a_users_schedule_in_the_plan_check_names_the_task_and_t(schedule: Any, who: str) -> None:
    weighting = Scheduled(schedule)
    weighting.bind(["a", "b"])
    with pytest.raises(
        MultiLossError,
        match=rf"the schedule of {who} raised RuntimeError at t=5\.0: out of my table .*before the first",
    ) as info:
        weighting.check_plan(Progress(step=0, epoch=0, total_steps=10))
    assert isinstance(info.value.__cause__, RuntimeError)


class CountDown(Schedule):
    """``1 / (N - t)``: meant for the N steps that train (t < N) only."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, t: float) -> float:
        return 1.0 / (self.n - t)


def test_a_schedule_that_fails_only_after_the_last_step_ends_the_fit_normally(tmp_path: Path) -> None:
    # 8 steps train at t = 0..7; the Callback then asks for the weights at t = 8 (those a further
    # step would use): the ZeroDivisionError ended the fit there, and no loss_weights.csv was written.
    callback = LossWeightingCallback(plot=False)
    model = ToyNet(Scheduled({"reg": CountDown(8)}, unit="step"))
    trainer = quiet_trainer(max_epochs=2, callbacks=[callback], default_root_dir=tmp_path)
    trainer.fit(model, toy_loader(n=64, batch_size=16))
    assert trainer.global_step == 8
    assert [row[1] for row in callback.weights] == pytest.approx([1.0 / (8 - t) for t in range(8)])
    assert callback.end_weights == pytest.approx([1.0, 1.0])  # the last step's weights stand
    with open(tmp_path / "loss_weights.csv") as f:
        assert len(list(csv.reader(f))) == 1 + 8 + 1  # the header, the steps, the end row


# ---------------------------------------------------------------------------------------------
# A strategy's __init__ that does not call the base's
# ---------------------------------------------------------------------------------------------
class NoSuperLoss(Equal):
    def __init__(self, beta: float = 0.5) -> None:
        self.beta = beta


class NoSuperGramian(GramianWeighting):
    def __init__(self, beta: float = 0.5) -> None:
        self.beta = beta

    def compute_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        return torch.ones_like(losses)


@pytest.mark.parametrize("cls", [NoSuperLoss, NoSuperGramian])
def test_a_strategy_that_does_not_call_the_base_init_is_told_to(cls: type[Weighting]) -> None:
    # AttributeError: 'NoSuperLoss' object has no attribute '_task_names', from torch's Module.
    with pytest.raises(
        MultiLossError, match=rf"weighting '{cls.__name__}': {cls.__name__}.__init__ must call super\(\).__init__\(\)"
    ):
        ToyNet(cls())


# ---------------------------------------------------------------------------------------------
# A Gramian strategy's host state
# ---------------------------------------------------------------------------------------------
class Counting(GramianWeighting):
    host_state = ("count",)

    def __init__(self, count: Any = None, **options: Any) -> None:
        super().__init__(**options)
        if count is not None:
            self.count = count

    def compute_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        return torch.ones_like(losses)


def test_a_host_state_entry_never_set_is_refused_when_bound() -> None:
    # It was silently left out of the checkpoints.
    with pytest.raises(MultiLossError, match=r"weighting 'Counting': host state 'count' .* is not set"):
        Counting().bind(["a", "b"])


def test_a_host_state_entry_off_the_host_is_refused_naming_it() -> None:
    # Made under torch.device("meta") (Lightning's init_module(empty_init=True)): a meta tensor, whose
    # first read in compute_weights failed with "Tensor.item() cannot be called on meta tensors".
    with torch.device("meta"):
        weighting = Counting(count=torch.zeros((), dtype=torch.long))
    with pytest.raises(
        MultiLossError, match=r"weighting 'Counting': host state 'count' is on meta, not the host: create it with "
    ):
        weighting.bind(["a", "b"])
    with torch.device("meta"):
        on_the_host = Counting(count=torch.zeros((), dtype=torch.long, device="cpu"))
        on_the_host.bind(["a", "b"])
    assert on_the_host.count.device.type == "cpu"


def test_a_host_state_entry_that_is_no_tensor_is_refused_naming_it() -> None:
    with pytest.raises(MultiLossError, match=r"weighting 'Counting': host state 'count' must be a Tensor, got int"):
        Counting(count=0).bind(["a", "b"])
    # Replaced by a number after the bind (in compute_weights): at the checkpoint, which failed with
    # "'int' object has no attribute 'clone'".
    weighting = Counting(count=torch.zeros((), dtype=torch.long))
    weighting.bind(["a", "b"])
    assert weighting.state_dict()["count"] == 0
    weighting.count = 3
    with pytest.raises(MultiLossError, match=r"weighting 'Counting': host state 'count' must be a Tensor, got int"):
        weighting.state_dict()


class Remembering(Weighting):
    """A user's strategy that keeps the last losses with their graph and a lock: neither deep-copies."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self._seen = 0
        self.previous: Tensor | None = None

    def build(self, num_tasks: int) -> None:
        self.register_buffer("scale", torch.ones(num_tasks))

    def forward(self, losses: Tensor) -> WeightedLoss:
        if self.training:
            self._seen += 1
            self.scale.mul_(0.5)
            self.previous = losses * 2.0
        return weighted_sum(self.scale, losses)


def test_reset_parameters_of_a_users_strategy_that_holds_what_cannot_be_copied() -> None:
    # It deep-copied the strategy: "Only Tensors created explicitly by the user (graph leaves)
    # support the deepcopy protocol", "cannot pickle '_thread.lock'".
    weighting = Remembering()
    weighting.bind(["a", "b"])
    for _ in range(3):
        weighting(torch.tensor([1.0, 2.0], requires_grad=True))
    lock = weighting.lock
    weighting.reset_parameters()
    assert weighting.scale.tolist() == [1.0, 1.0] and weighting._seen == 0
    assert weighting.lock is lock  # configuration and other objects stay as they are


class OwnAdam(Weighting):
    """A user's strategy with private logits stepped by an Adam of its own (as LibMTL's FAMO), and a
    private handle on one of its buffers."""

    def build(self, num_tasks: int) -> None:
        self._logits = torch.zeros(num_tasks, requires_grad=True)
        self._adam = torch.optim.Adam([self._logits], lr=0.1)
        self.register_buffer("ema", torch.ones(num_tasks))
        self._ema = self.ema

    def forward(self, losses: Tensor) -> WeightedLoss:
        if self.training:
            self._adam.zero_grad()
            (self._logits * losses.detach()).sum().backward()
            self._adam.step()
            self._ema.mul_(0.5).add_(losses.detach())
        return weighted_sum(torch.softmax(self._logits.detach(), 0) * self.ema, losses)


def test_reset_parameters_restores_private_tensors_in_place() -> None:
    # The reset put back copies: the logits lost requires_grad and left the Adam that steps them
    # ("element 0 of tensors does not require grad"), and the handle on the buffer was split from it.
    def steps(weighting: OwnAdam) -> list[list[float]]:
        return [weighting(torch.tensor([1.0, 2.0])).weights.tolist() for _ in range(3)]

    fresh = OwnAdam()
    fresh.bind(["a", "b"])
    trained = OwnAdam()
    trained.bind(["a", "b"])
    steps(trained)
    trained.reset_parameters()
    trained._adam.state.clear()  # the optimizer's own state is the user's to reset
    assert trained._logits.requires_grad and trained._ema is trained.ema
    assert steps(trained) == steps(fresh)
    assert trained.ema.tolist() == fresh.ema.tolist()


def test_reset_parameters_of_a_strategy_from_an_earlier_version_says_what_it_cannot_restore() -> None:
    # A strategy unpickled from an earlier version's checkpoint has no record of its state when bound.
    weighting = create_weighting("pcgrad")
    weighting.bind(["a", "b"])
    del weighting.__dict__["_at_bind"]
    with pytest.warns(
        UserWarning, match=r"weighting 'pcgrad' was made by an earlier version .* create the strategy anew"
    ):
        weighting.reset_parameters()


class Viewing(Weighting):
    """A user's strategy whose private tensors cannot take values in place: a broadcast view, one
    made under inference mode (as in Lightning's evaluation), one carrying a graph."""

    def build(self, num_tasks: int) -> None:
        self._scale = torch.ones(()).expand(num_tasks)
        self._seen = torch.zeros(num_tasks)

    def forward(self, losses: Tensor) -> WeightedLoss:
        if self.training:
            self._scale = self._scale * 2.0
            with torch.inference_mode():
                self._seen = self._seen + 1.0
        return weighted_sum(self._scale.detach(), losses)


def test_reset_parameters_assigns_what_cannot_take_values_in_place() -> None:
    # The in-place restore raised: "more than one element of the written-to tensor refers to a single
    # memory location", "Inplace update to inference tensor outside InferenceMode".
    weighting = Viewing()
    weighting.bind(["a", "b"])
    weighting(torch.tensor([1.0, 2.0]))
    weighting._scale = torch.ones(()).expand(2) * torch.tensor(3.0, requires_grad=True)  # in a graph
    weighting.reset_parameters()
    assert weighting._scale.tolist() == [1.0, 1.0] and weighting._scale.grad_fn is None
    assert weighting._seen.tolist() == [0.0, 0.0]
