"""Properties every registered weighting strategy must have, checked over the whole registry.

Each strategy is built by name (``create_weighting``); the few that need an argument get it
from ``REQUIRED``. Strategies that need the task gradients (``GradientWeighting``) are checked
through a real Trainer run wherever a check would otherwise call them on the losses alone.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_multiloss import MultiLossError, MultiTaskMixin, NonFiniteLossError, Task
from lightning_multiloss.callback import LossWeightingCallback
from lightning_multiloss.schedules import Linear
from lightning_multiloss.weighting import (
    WEIGHTINGS,
    Fixed,
    GradientWeighting,
    GramianWeighting,
    Learnable,
    Progress,
    WeightedLoss,
    Weighting,
    create_weighting,
    weighted_sum,
)
from tests._ddp import run_ddp_script
from tests._models import HEAD_SIZES, ToyDataset, assert_params_close, quiet_trainer, toy_tasks

# Arguments a strategy cannot be built without (or that make a short run exercise all its phases).
REQUIRED: dict[str, Callable[[int], dict[str, Any]]] = {
    "scheduled": lambda k: {"schedule": [Linear(1.0, 0.0, duration=10)] * k},
    "stch": lambda k: {"warmup_epochs": 1},
}

NAMES = sorted(WEIGHTINGS)
TASKS = {2: ("cls", "reg"), 3: ("cls", "reg", "aux")}


def make_weighting(name: str, num_tasks: int = 2) -> Weighting:
    return create_weighting(name, **REQUIRED.get(name, lambda k: {})(num_tasks))


def needs_gradients(name: str) -> bool:
    return issubclass(WEIGHTINGS[name], GradientWeighting)


class MaskedToyDataset(Dataset):
    """``ToyDataset`` plus a ``reg_mask`` that is false (no ``reg`` label) for the samples in ``unlabelled``."""

    def __init__(self, n: int, unlabelled: Sequence[int] = ()) -> None:
        self.data = ToyDataset(n)
        self.unlabelled = set(unlabelled)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = dict(self.data[i])
        item["reg_mask"] = torch.tensor(i not in self.unlabelled)
        return item


def loader(n: int = 16, batch_size: int = 8, unlabelled: Sequence[int] = ()) -> DataLoader:
    return DataLoader(MaskedToyDataset(n, unlabelled), batch_size=batch_size, shuffle=False)


class PropNet(MultiTaskMixin, pl.LightningModule):
    """A shared trunk (marked as the shared representation) and one head per task; ``reg`` may be masked."""

    def __init__(self, weighting: Weighting, tasks: Sequence[str] = ("cls", "reg"), seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.heads = nn.ModuleDict({name: nn.Linear(16, HEAD_SIZES[name]) for name in tasks})
        task_list = [Task("reg", nn.MSELoss(), mask="reg_mask") if t.name == "reg" else t for t in toy_tasks(tasks)]
        self.configure_multitask(task_list, weighting)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.shared_representation(self.trunk(x))
        return {name: head(z) for name, head in self.heads.items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


class RecordWeights(pl.Callback):
    """Keeps the weights and the loss of every training step."""

    def __init__(self) -> None:
        self.weights: list[Tensor] = []
        self.losses: list[Tensor] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.weights.append(pl_module.weighting.last_weights.detach().clone())
        self.losses.append(outputs["loss"].detach().clone())


def fit(model: PropNet, data: DataLoader, ckpt_path: str | None = None, **trainer_kw: Any) -> tuple[Any, RecordWeights]:
    """Fit without a plot; the weight trajectory CSV goes to a temporary folder."""
    record = RecordWeights()
    with tempfile.TemporaryDirectory() as folder:
        trainer_kw.setdefault("default_root_dir", folder)
        trainer = quiet_trainer(callbacks=[record, LossWeightingCallback(plot=False)], **trainer_kw)
        trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer, record


def model_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def direct(name: str) -> bool:
    """Whether a strategy's step can be called without a model: on the losses, or on a Gramian."""
    return not needs_gradients(name) or issubclass(WEIGHTINGS[name], GramianWeighting)


def run_direct(weighting: Weighting, steps: int, seed: int = 0, zero_task: int | None = None) -> list[Any]:
    """Training-mode steps without a model, with the Callback's hooks as in training.

    The losses are random and positive (task ``zero_task``'s is exactly 0); the weighting's own
    parameters take SGD steps. A Gramian strategy gets ``weights_from_gramian`` with the Gramian
    of random task gradients (``zero_task``'s gradient is 0). Returns ``(loss, weights, d loss /
    d losses)`` per step.
    """
    g = torch.Generator().manual_seed(seed)
    params = [p for p in weighting.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1) if params else None
    k = weighting.num_tasks
    keep = torch.ones(k) if zero_task is None else torch.eye(k)[zero_task].logical_not().float()
    outputs = []
    for step in range(steps):
        weighting.set_progress(Progress(step=step, epoch=step // 3, total_steps=steps))
        losses = ((torch.rand(k, generator=g) * 2 + 0.1) * keep).requires_grad_()
        if isinstance(weighting, GramianWeighting):
            jacobian = torch.randn(k, 6, generator=g) * keep[:, None]
            weights = weighting.weights_from_gramian(jacobian @ jacobian.T, losses.detach()).detach()
            outputs.append((weights @ losses.detach(), weights, weights))
        else:
            out = weighting(losses)
            grad = torch.autograd.grad(out.loss, [losses, *params], allow_unused=True)
            outputs.append((out.loss.detach(), out.weights, grad[0]))
            if optimizer is not None:
                for p, gp in zip(params, grad[1:], strict=True):
                    p.grad = gp
                optimizer.step()
        weighting.constrain()  # as the Callback after each batch that took an optimizer step
        weighting.after_optimizer_step()
        if weighting.uses_epoch_losses and step % 3 == 2:
            weighting.on_epoch_losses(torch.rand(k, generator=g) + 0.5)
    return outputs


def assert_finite(*tensors: Tensor | None) -> None:
    for t in tensors:
        assert t is not None and bool(torch.isfinite(t).all()), t


# -- finite outputs, one weight per task --------------------------------------------------------
@pytest.mark.parametrize("num_tasks", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_finite_output_one_weight_per_task(name, num_tasks):
    weighting = make_weighting(name, num_tasks)
    weighting.bind(TASKS[num_tasks])
    for loss, weights, grad in run_direct(weighting, steps=9) if direct(name) else []:
        assert loss.ndim == 0
        assert weights.shape == (num_tasks,) and not weights.requires_grad
        assert_finite(loss, weights, grad)
    if needs_gradients(name) and num_tasks == 3:  # through the Trainer (2 tasks: the resume test)
        _, record = fit(PropNet(make_weighting(name, 3), TASKS[3]), loader(), max_epochs=1)
        assert len(record.weights) == 2
        for weights, loss in zip(record.weights, record.losses, strict=True):
            assert weights.shape == (num_tasks,)
            assert_finite(weights, loss)


@pytest.mark.parametrize("name", NAMES)
def test_losses_of_another_shape_than_the_bound_tasks_are_refused(name):
    # Called directly (outside the mixin), learnable took the first two of three losses, gls gave three
    # weights for two tasks and imtl_l / famo broadcast a single loss to both.
    weighting = make_weighting(name)
    weighting.bind(TASKS[2])
    for losses in (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[1.0], [2.0]]), torch.tensor(1.0)):
        shape = re.escape(str(tuple(losses.shape)))
        with pytest.raises(MultiLossError, match=rf"weighting '{name}' is bound to 2 tasks .*got {shape}"):
            weighting(losses)


# -- state_dict round trip ----------------------------------------------------------------------
def trained_weighting(name: str) -> Weighting:
    """The strategy ``name`` after some training: 7 direct steps, or a short fit for the gradient ones."""
    weighting = make_weighting(name)
    if direct(name):
        weighting.bind(TASKS[2])
        run_direct(weighting, steps=7)
    else:
        fit(PropNet(weighting), loader(), max_epochs=1)
    return weighting


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    """A fresh instance that loads the state (through a weights-only file) continues as the original."""
    original = trained_weighting(name)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    fresh = make_weighting(name)
    fresh.bind(TASKS[2])
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    # What a loaded model reports: FAMO, GLS, STCH and RLW reported weights of 1.
    torch.testing.assert_close(fresh.current_weights(), original.current_weights(), rtol=0, atol=0)
    if direct(name):
        for weighting in (original, fresh):
            weighting.set_progress(Progress(step=7, epoch=2, total_steps=10))
        a = run_direct(original, steps=3, seed=5)
        b = run_direct(fresh, steps=3, seed=5)
        for (loss_a, weights_a, grad_a), (loss_b, weights_b, grad_b) in zip(a, b, strict=True):
            torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=0)
            torch.testing.assert_close(weights_a, weights_b, rtol=0, atol=0)
            torch.testing.assert_close(grad_a, grad_b, rtol=0, atol=0)
        return
    trained = []
    for weighting in (copy.deepcopy(original), fresh):
        model = PropNet(weighting, seed=1)
        _, record = fit(model, loader(n=8), max_epochs=1)
        trained.append((model_state(model), torch.stack(record.weights)))
    (params_a, weights_a), (params_b, weights_b) = trained
    torch.testing.assert_close(weights_a, weights_b, rtol=0, atol=0)
    for key, value in params_a.items():
        torch.testing.assert_close(value, params_b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", NAMES)
def test_a_trained_strategy_pickled_with_the_hyperparameters_loads_weights_only(name):
    """``save_hyperparameters()`` pickles a strategy passed to the module into every checkpoint:
    torch's default loader (``weights_only=True``) refused its class."""
    original = trained_weighting(name)
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": {"weighting": original}}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["hyper_parameters"]["weighting"]
    assert type(loaded) is type(original) and loaded.task_names == original.task_names
    want = original.state_dict()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", [n for n in NAMES if WEIGHTINGS[n].last_weights_are_state])
def test_a_state_without_the_last_weights_still_loads(name):
    """Checkpoints of the versions that left them out of FAMO's, GLS', STCH's and RLW's state."""
    saved, fresh = make_weighting(name), make_weighting(name)
    for weighting in (saved, fresh):
        weighting.bind(TASKS[2])
    fresh.load_state_dict({k: v for k, v in saved.state_dict().items() if k != "last_weights"})  # strict
    assert fresh.last_weights.tolist() == [1.0, 1.0]


@contextlib.contextmanager
def uninitialised_memory_as_nan() -> Iterator[None]:
    """``torch.empty`` (and so ``to_empty``) memory filled with NaN (floats) and the largest value
    (integers), torch's documented deterministic fill: left-over memory then shows in any result."""
    before = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.utils.deterministic.fill_uninitialized_memory = before[1]  # type: ignore[attr-defined]


def made_on_the_meta_device(name: str) -> PropNet:
    """``PropNet`` made under ``torch.device("meta")``, then given (NaN-filled) memory by ``to_empty``."""
    with torch.device("meta"):
        model = PropNet(make_weighting(name))
    with uninitialised_memory_as_nan():
        model.to_empty(device="cpu")
    return model


@pytest.mark.parametrize("name", NAMES)
def test_a_model_made_on_the_meta_device_then_loaded_holds_the_checkpoints_strategy(name):
    """``to_empty`` then a strict ``load_state_dict``: the buffers that checkpoints leave out (fixed
    weights, last weights computed from the state, Learnable's marks) and the evaluation means
    kept the uninitialised memory (fixed weights of 1e-18 trained without an error). The
    reference: a model built on the CPU, loaded."""
    trained = PropNet(make_weighting(name))
    fit(trained, loader(), max_epochs=2)
    saved = model_state(trained)
    empty = made_on_the_meta_device(name)
    empty.load_state_dict(saved)
    built = PropNet(make_weighting(name), seed=5)
    built.load_state_dict(saved)
    want = dict(built.weighting.named_buffers())
    for key, value in empty.weighting.named_buffers():
        torch.testing.assert_close(value, want[key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(empty.weighting.current_weights(), built.weighting.current_weights(), rtol=0, atol=0)
    (logged,) = quiet_trainer().validate(empty, loader(), verbose=False)
    assert logged == quiet_trainer().validate(built, loader(), verbose=False)[0]


@pytest.mark.parametrize("name", NAMES)
def test_a_model_made_on_the_meta_device_trains_from_its_reset_parameters_as_one_built_on_the_cpu(name):
    """PyTorch's convention for a model made on the meta device, as Lightning's ``ModelParallel``
    follows it: ``to_empty``, then ``reset_parameters()`` of each module holding tensors (the
    strategies had none: their state, and the epoch means, stayed uninitialised memory). The
    network then takes the reference's weights; the fits must be the same."""
    reference = PropNet(make_weighting(name))
    model = made_on_the_meta_device(name)
    for module in model.modules():
        if list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)):
            module.reset_parameters()
    network = {k: v for k, v in reference.state_dict().items() if not k.startswith("weighting.")}
    model.load_state_dict(network, strict=False)
    for each in (reference, model):
        fit(each, loader(n=16, batch_size=8, unlabelled=range(4)), max_epochs=2)
    assert_params_close(model_state(model), model_state(reference), atol=0.0, what=name)


@pytest.mark.parametrize("name", NAMES)
def test_reset_parameters_gives_a_trained_strategy_its_initial_state(name):
    """A trained strategy reset, in the same model with its network put back, fits as a new one:
    the step counters made in ``__init__`` (PCGrad's random orders), the flags mirroring buffers on
    the host (STCH's nadir, FAMO's pending update, GradDrop's draws) were the trained ones."""
    data = loader(n=16, batch_size=8, unlabelled=range(4))
    reference = PropNet(make_weighting(name))
    start = model_state(reference)
    fit(reference, data, max_epochs=3)
    model = PropNet(make_weighting(name))
    fit(model, data, max_epochs=3)
    model.load_state_dict({k: v for k, v in start.items() if not k.startswith("weighting.")}, strict=False)
    model.weighting.reset_parameters()
    torch.testing.assert_close(
        model.weighting.current_weights(), PropNet(make_weighting(name)).weighting.current_weights()
    )
    fit(model, data, max_epochs=3)
    assert_params_close(model_state(model), model_state(reference), atol=0.0, what=name)


def test_reset_parameters_of_a_float64_strategy_is_float64s_initial_state():
    # precision="64-true" under init_module: the reset rebuilt it in float32, and Learnable's 1/3
    # came back 3e-8 off the simplex.
    with contextlib.ExitStack() as stack:
        stack.callback(torch.set_default_dtype, torch.get_default_dtype())
        torch.set_default_dtype(torch.float64)
        learnable = Learnable()
        learnable.bind(TASKS[3])
    learnable.reset_parameters()
    assert learnable.alpha.dtype == torch.float64 and learnable.alpha.tolist() == [1 / 3] * 3
    # Bound in float32, then cast (64-true without init_module): float32's 1/3, as bound.
    cast = Learnable()
    cast.bind(TASKS[3])
    cast.double().reset_parameters()
    assert cast.alpha.tolist() == [float(torch.tensor(1 / 3, dtype=torch.float32))] * 3


def test_the_last_weights_of_a_loaded_strategy_are_the_weights_in_force():
    """``last_weights`` (the last training step's weights) read ones after a load where the
    strategy computes them from its state; they are the weights in force, by hand here."""
    fixed = Fixed([1.0, 0.5])
    fixed.bind(TASKS[2])
    fixed.load_state_dict({})
    assert fixed.last_weights.tolist() == [1.0, 0.5]
    learnable = Learnable()
    learnable.bind(TASKS[2])
    learnable.load_state_dict({"alpha": torch.tensor(0.25)})
    assert learnable.last_weights.tolist() == [0.25, 0.75]  # Keras: alpha and 1 - alpha


class UsersSchedule(Linear):
    """A user's schedule: not the package's to allow-list."""


def test_only_the_packages_own_classes_are_allow_listed_for_torch_load():
    # torch's allow-list holds for every torch.load of the process: a user's class is the user's call.
    buffer = io.BytesIO()
    torch.save({"ours": Linear(1.0, 0.0, duration=4), "theirs": UsersSchedule(1.0, 0.0, duration=4)}, buffer)
    buffer.seek(0)
    with pytest.raises(Exception, match="UsersSchedule"):
        torch.load(buffer, weights_only=True)
    buffer.seek(0)
    with torch.serialization.safe_globals([UsersSchedule]):
        loaded = torch.load(buffer, weights_only=True)
    assert loaded["ours"](2.0) == 0.5 and isinstance(loaded["theirs"], UsersSchedule)  # 1 - 2/4


# -- evaluation changes nothing ----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_evaluation_changes_no_state(name):
    """Evaluation calls (no gradients needed) leave the state, and the next training steps, as they were."""
    weighting = make_weighting(name)
    weighting.bind(TASKS[2])
    if direct(name):
        run_direct(weighting, steps=7)
    twin = copy.deepcopy(weighting)
    before = copy.deepcopy(weighting.state_dict())
    weighting.eval()
    for losses in ([0.5, 2.0], [0.0, 1.0], [3.0, 0.1]):
        out = weighting(torch.tensor(losses))
        assert out.weights.shape == (2,)
        assert_finite(out.loss, out.weights)
    for key, value in weighting.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    weighting.train()
    if direct(name):
        for a, b in zip(run_direct(weighting, steps=3, seed=9), run_direct(twin, steps=3, seed=9), strict=True):
            for x, y in zip(a, b, strict=True):
                torch.testing.assert_close(x, y, rtol=0, atol=0)


# -- resume = uninterrupted; a batch without any label for a task -----------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_resumed_run_equals_uninterrupted_and_missing_labels_give_no_nan(name, tmp_path):
    """3 epochs of 2 steps in one run, or 2 epochs, a checkpoint, and a new model resumed for the third.

    The first batch of every epoch has no labelled ``reg`` sample (its loss is exactly 0):
    every weight, loss and parameter must stay finite.
    """
    data = loader(n=16, batch_size=8, unlabelled=range(8))
    whole = PropNet(make_weighting(name))
    _, whole_record = fit(whole, data, max_epochs=3)

    first = PropNet(make_weighting(name))
    trainer, first_record = fit(first, data, max_epochs=2)
    path = str(tmp_path / "two_epochs.ckpt")
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # plain values only
    assert any(key.startswith("weighting.") for key in checkpoint["state_dict"]) or not list(
        first.weighting.state_dict()
    )
    resumed = PropNet(make_weighting(name), seed=123)  # other initial values: all must come from the checkpoint
    _, resumed_record = fit(resumed, data, ckpt_path=path, max_epochs=3)

    assert len(first_record.weights) == 4 and len(resumed_record.weights) == len(whole_record.weights) - 4 == 2
    for weights, loss in zip(whole_record.weights, whole_record.losses, strict=True):
        assert_finite(weights, loss)
    assert_finite(*model_state(whole).values())
    torch.testing.assert_close(
        torch.stack(first_record.weights + resumed_record.weights), torch.stack(whole_record.weights), rtol=0, atol=1e-6
    )
    expected = model_state(whole)
    for key, value in model_state(resumed).items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")


@pytest.mark.parametrize("name", NAMES)
def test_a_nan_loss_of_one_of_three_tasks_stops_training_naming_it(name, tmp_path):
    # Whatever the strategy does with the NaN before the check reads it (learnable's projection
    # onto the simplex raised an internal error on NaN weights), the error names the task and step.
    samples = [dict(MaskedToyDataset(24)[i]) for i in range(24)]
    for sample in samples[16:]:  # the third batch of 8
        sample["aux"] = torch.full_like(sample["aux"], float("nan"))
    model = PropNet(make_weighting(name, 3), tasks=TASKS[3])
    with pytest.raises(NonFiniteLossError, match=r"\{'aux': nan\} at train step 2, epoch 0, batch 2"):
        fit(model, DataLoader(samples, batch_size=8), max_epochs=1, default_root_dir=tmp_path)


@pytest.mark.parametrize("name", [n for n in NAMES if direct(n)])
def test_zero_task_loss_gives_no_nan(name):
    """Without a model: a zero loss (and, for a Gramian strategy, a zero gradient). All go through the Trainer above."""
    weighting = make_weighting(name)
    weighting.bind(TASKS[2])
    for loss, weights, grad in run_direct(weighting, steps=6, zero_task=1):
        assert_finite(loss, weights, grad)


# -- DDP: every strategy in one 2-process launch ----------------------------------------------------
@pytest.mark.slow
def test_ddp_all_weightings_agree_across_ranks(tmp_path):
    """Same weights at every step and same parameters on both processes, for every strategy.

    The reg task has no labelled sample in rank 0's first batch (see the script): no hang, no NaN.
    """
    rank0, rank1 = run_ddp_script("ddp_all_weightings.py", tmp_path, timeout=300)
    assert sorted(rank0) == sorted(rank1) == NAMES
    for name in NAMES:
        a, b = rank0[name], rank1[name]
        assert a["global_step"] == b["global_step"] == 6, name
        assert a["weights"].shape == (6, 2), name
        assert_finite(a["weights"], b["weights"], torch.tensor(a["losses"]), torch.tensor(b["losses"]))
        torch.testing.assert_close(a["weights"], b["weights"], rtol=0, atol=0, msg=f"{name}: weights differ")
        for key, value in a["params"].items():
            assert_finite(value)
            torch.testing.assert_close(value, b["params"][key], rtol=0, atol=0, msg=f"{name}: {key} differs")


# -- epoch means: per task, over the batches that labelled it --------------------------------------
class RecordEpochMeans(Weighting):
    """An equal-weight sum that keeps what the Callback hands over at each epoch end."""

    uses_epoch_losses = True

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Tensor] = []

    def forward(self, losses: Tensor) -> WeightedLoss:
        return weighted_sum(torch.ones_like(losses), losses)

    def on_epoch_losses(self, epoch_losses: Tensor) -> None:
        self.received.append(epoch_losses.clone())


def test_epoch_means_leave_out_batches_without_a_label():
    """Three batches of 4; ``reg`` has no label in the whole first batch and half the second.

    With a learning rate of 0 the losses of both epochs are those of the initial model, replayed
    here in plain PyTorch: cls over 3 batches, reg over the 2 batches that have a label (a batch
    without any would pull the mean towards 0).
    """

    class Frozen(PropNet):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    model = Frozen(RecordEpochMeans())
    data = loader(n=12, batch_size=4, unlabelled=[0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        cls, reg = [], []
        for batch in data:
            out = model(batch["x"])
            cls.append(nn.functional.cross_entropy(out["cls"], batch["cls"]))
            keep = batch["reg_mask"]
            if keep.any():
                reg.append(nn.functional.mse_loss(out["reg"][keep], batch["reg"][keep]))
    assert len(reg) == 2
    expected = torch.stack([torch.stack(cls).mean(), torch.stack(reg).mean()])
    fit(model, data, max_epochs=2)
    assert len(model.weighting.received) == 2
    for means in model.weighting.received:
        torch.testing.assert_close(means, expected, rtol=1e-6, atol=0)


def test_an_epoch_without_a_label_of_a_task_logs_its_epoch_mean_as_nan():
    # Not 0.0, which ModelCheckpoint(monitor="train/loss/reg_epoch", mode="min") would take for the
    # best loss; cls's mean is the plain mean of its batches' losses (learning rate 0: the initial model).
    class Frozen(PropNet):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    model = Frozen(Fixed([1.0, 1.0]))
    data = loader(n=8, batch_size=4, unlabelled=range(8))
    with torch.no_grad():
        cls = torch.stack([nn.functional.cross_entropy(model(b["x"])["cls"], b["cls"]) for b in data]).mean()
    trainer, _ = fit(model, data, max_epochs=1)
    logged = trainer.callback_metrics
    assert math.isnan(float(logged["train/loss/reg_epoch"]))
    assert float(logged["train/loss/cls_epoch"]) == pytest.approx(float(cls), rel=1e-6)
