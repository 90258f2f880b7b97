"""``torch.compile`` with every route: the compiled run trains exactly as the eager one.

Two ways users compile, each checked against the same model trained uncompiled (same seed,
same batches): the trunk alone, compiled in ``setup`` as lightning-hydra-template does with
``model.compile=true``; and the whole module, ``trainer.fit(torch.compile(model))``, where
Lightning compiles ``forward`` and the steps. The routes: a loss-level strategy, the
representation route and the parameter route. The data end with a smaller batch, so the trunk is
compiled again with dynamic shapes, whose backward torch compiles at once with donated buffers:
the parameter route's ``retain_graph=True`` gradients failed there before.

``aot_eager`` runs AOTAutograd (where donated buffers live) without generating C++ kernels;
one case uses the default backend, as the template does. Several seconds per compiled graph on
CPU, hence ``slow``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_multiloss.weighting import create_weighting
from tests._models import ToyDataset, ToyNet, quiet_trainer, toy_loader, toy_tasks

pytestmark = pytest.mark.slow

STEPS = 3  # batches of 16, 16 and 8 (a smaller last batch: a dynamic-shape recompile)


class CompilableNet(ToyNet):
    """A deeper trunk (its graph saves intermediates: donated buffers) and a switch to compile it in ``setup``."""

    def __init__(self, weighting: Any, mark_representation: bool, compile_trunk: dict[str, Any] | None = None) -> None:
        super().__init__(weighting)
        torch.manual_seed(1)
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh())
        self.mark_representation = mark_representation
        self.compile_trunk = compile_trunk

    def setup(self, stage: str) -> None:
        if self.compile_trunk is not None and stage == "fit":  # as the template's `model.compile=true`
            self.trunk = torch.compile(self.trunk, **self.compile_trunk)  # type: ignore[assignment]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.trunk(x)
        if self.mark_representation:
            z = self.shared_representation(z)
        return {name: head(z) for name, head in self.heads.items()}


ROUTES = {
    "loss-level": ("uncertainty", {}),
    "representation": ("mgda", {"route": "representation"}),
    "parameters": ("mgda", {"route": "parameters"}),
}


def build(route: str, compile_trunk: dict[str, Any] | None = None) -> CompilableNet:
    name, options = ROUTES[route]
    return CompilableNet(create_weighting(name, **options), route == "representation", compile_trunk)


def train(model: Any, folder: Path, validate: bool = False) -> None:
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=1 if validate else 0, default_root_dir=folder)
    trainer.fit(model, toy_loader(n=40), toy_loader(n=16) if validate else None)
    assert trainer.global_step == STEPS


def assert_same_training(compiled: CompilableNet, eager: CompilableNet) -> None:
    compiled_state = {k.replace("._orig_mod", ""): v for k, v in compiled.state_dict().items()}
    eager_state = eager.state_dict()
    assert compiled_state.keys() == eager_state.keys()
    for key, value in eager_state.items():
        torch.testing.assert_close(compiled_state[key], value, rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(compiled.weighting.last_weights, eager.weighting.last_weights, rtol=1e-5, atol=1e-6)


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Any:
    torch._dynamo.reset()  # each test compiles its own graphs (the cache limit counts per code object)
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("route", list(ROUTES))
def test_trunk_compiled_in_setup_trains_as_eager(route: str, tmp_path: Path) -> None:
    eager = build(route)
    train(eager, tmp_path)
    compiled = build(route, {"backend": "aot_eager"})
    train(compiled, tmp_path)
    assert_same_training(compiled, eager)


def test_parameter_route_with_the_templates_compile(tmp_path: Path) -> None:
    # The reported failure: the default backend, compiled in setup, a dynamic-shape recompile.
    eager = build("parameters")
    train(eager, tmp_path)
    compiled = build("parameters", {})
    train(compiled, tmp_path)
    assert_same_training(compiled, eager)
    assert torch._functorch.config.donated_buffer  # switched off only during the training steps


@pytest.mark.parametrize("route", list(ROUTES))
def test_whole_module_compiled_by_lightning_trains_as_eager(route: str, tmp_path: Path) -> None:
    # Lightning compiles forward and the steps; the mixin's steps run eagerly, forward compiled.
    eager = build(route)
    train(eager, tmp_path, validate=True)
    model = build(route)
    train(torch.compile(model, backend="aot_eager"), tmp_path, validate=True)
    # The default shared parameters of the parameter route are found through the compiled graph:
    # the trunk's, not the heads' (which would change the Gramian and the weights).
    assert_same_training(model, eager)
    if route == "parameters":
        trunk = {id(p) for p in model.trunk.parameters()}
        assert {id(p) for p in model.shared_parameters()} == trunk


def test_a_checkpoint_of_a_trunk_compiled_in_setup_loads_into_the_plain_model_and_back(tmp_path: Path) -> None:
    # Its keys read trunk._orig_mod.0.weight: load_from_checkpoint and validate(ckpt_path=...) into
    # the plain class failed on them ("Missing key(s) trunk.0.weight").
    compiled = build("loss-level", {"backend": "eager"})
    train(compiled, tmp_path)
    path = tmp_path / "compiled.ckpt"
    assert compiled.trainer is not None
    compiled.trainer.save_checkpoint(path)
    assert any("_orig_mod" in key for key in torch.load(path)["state_dict"])
    trained = {k.replace("._orig_mod", ""): v for k, v in compiled.state_dict().items()}

    loaded = CompilableNet.load_from_checkpoint(
        path, weighting=create_weighting("uncertainty"), mark_representation=False
    )
    assert loaded.state_dict().keys() == trained.keys()
    for key, value in trained.items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    validated = build("loss-level")
    quiet_trainer().validate(validated, toy_loader(n=16), ckpt_path=path)
    torch.testing.assert_close(validated.trunk[0].weight, trained["trunk.0.weight"], rtol=0, atol=0)

    # And a plain run's checkpoint resumes into the compiled module (its keys have _orig_mod).
    resumed = build("loss-level", {"backend": "eager"})
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0, default_root_dir=tmp_path)
    plain_path = tmp_path / "plain.ckpt"
    eager = build("loss-level")
    train(eager, tmp_path)
    assert eager.trainer is not None
    eager.trainer.save_checkpoint(plain_path)
    trainer.fit(resumed, toy_loader(n=40), ckpt_path=plain_path)
    assert trainer.global_step == 2 * STEPS


class FirstBatchUnlabelled(Dataset):
    """The toy data with a ``reg_mask`` that is false for the whole first batch (of 16)."""

    def __init__(self, n: int = 40) -> None:
        self.data = ToyDataset(n)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {**self.data[i], "reg_mask": torch.tensor(i >= 16)}


def masked_mgda(compile_trunk: dict[str, Any] | None = None) -> CompilableNet:
    model = CompilableNet(create_weighting("mgda", route="parameters"), False, compile_trunk)
    model.configure_multitask(toy_tasks(masks={"reg": "reg_mask"}), model.weighting)
    return model


@pytest.mark.parametrize("how", ["trunk", "module"])
def test_a_task_without_labels_in_the_first_batch_does_not_hide_its_parameters(how: str, tmp_path: Path) -> None:
    # Through a compiled graph the parameters' use is read from nonzero gradients on the first step:
    # reg's loss there was 0 · output.sum(), so no parameter seemed shared ("no trainable parameter
    # is used by two or more task losses"), and its head seemed no task's own.
    def fit(model: Any) -> None:
        trainer = quiet_trainer(max_epochs=1, limit_val_batches=0, default_root_dir=tmp_path)
        trainer.fit(model, DataLoader(FirstBatchUnlabelled(), batch_size=16))
        assert trainer.global_step == STEPS

    eager = masked_mgda()
    fit(eager)
    compiled = masked_mgda({"backend": "aot_eager"} if how == "trunk" else None)
    fit(compiled if how == "trunk" else torch.compile(compiled, backend="aot_eager"))
    assert_same_training(compiled, eager)
    assert {id(p) for p in compiled.shared_parameters()} == {id(p) for p in compiled.trunk.parameters()}


class SideBranch(ToyNet):
    """A ``side`` layer on the input that ``reg`` reads from the start and ``cls`` too from the second
    batch on: a graph that changes, compiled again when it does."""

    def __init__(self, reuse: bool) -> None:
        super().__init__(
            create_weighting("upgrad", route="parameters"), tasks=("cls", "reg", "aux"), reuse_jacobian=reuse
        )
        torch.manual_seed(1)
        self.side = nn.Linear(8, 3)
        self.batch_idx = 0

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.trunk(x)
        side = self.side(x)
        cls = self.heads["cls"](z)
        if self.batch_idx >= 1:
            cls = cls + side
        return {"cls": cls, "reg": self.heads["reg"](z) + side[:, :2], "aux": self.heads["aux"](z)}


def test_a_compiled_graph_that_changes_gets_lightnings_update(tmp_path: Path) -> None:
    # Every task reaches every parameter of a compiled graph, so the graph walk saw no change when
    # cls began to read `side`: the heads found on the first step stood, and cls's part of side's
    # gradient was lost (side.weight 0.023 off after 3 steps).
    results = []
    for reuse in (True, False):
        model = SideBranch(reuse)
        trainer = quiet_trainer(max_epochs=1, limit_val_batches=0, default_root_dir=tmp_path / str(reuse))
        trainer.fit(torch.compile(model, backend="aot_eager"), toy_loader(n=40, batch_size=16))
        results.append(model)
    assert_same_training(results[0], results[1])


@pytest.mark.parametrize("strict", [False, True])
def test_a_trained_module_in_training_mode_exports_its_forward(strict: bool, tmp_path: Path) -> None:
    # After trainer.fit the module is still in training mode; under a representation strategy its
    # shared_representation was a torch.compiler.disable'd call, which strict export refuses.
    model = build("representation")
    train(model, tmp_path)
    assert model.training
    x = torch.randn(5, 8)
    exported = torch.export.export(model, (x,), strict=strict).module()
    with torch.no_grad():
        expected = {name: head(model.trunk(x)) for name, head in model.heads.items()}  # the network by hand
        got = exported(x)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value)
