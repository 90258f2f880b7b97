"""Every option of every config group composes and instantiates; the schemas reject bad keys and types.

The options are the YAML files found in the plugin's ``conf/`` and the demo's ``app/conf/``, so a
config added later (a new weighting) is covered without touching this file. The Lightning objects
of the ``trainer``, ``callbacks`` and ``logger`` options are built for both Lightning packages.
"""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as lp
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from lightning_multiloss import MultiLossError, ShardSampler
from lightning_multiloss.app.config import TrainerConf, build_weighting, config_dir, plugin_config_dir, validate_config
from lightning_multiloss.app.data import DigitsDataModule, LocClsDataModule, MultiMNISTDataModule
from lightning_multiloss.app.models import MultiTaskNet
from lightning_multiloss.app.train import build, check_one_set_of_processes
from lightning_multiloss.schedules import Schedule
from lightning_multiloss.weighting import Progress, Weighting

CONF = Path(config_dir())  # the demo's
PLUGIN = Path(plugin_config_dir())
ROOT = Path(__file__).resolve().parent.parent
PLUGIN_GROUPS = {"weighting", "schedule", "loss", "task", "callbacks", "logger"}
DEMO_GROUPS = {"data", "model", "experiment", "trainer", "hydra", "hparams_search"}
PACKAGES = {"lightning.pytorch": lp, "pytorch_lightning": pl}


def group_dir(group: str) -> Path:
    return PLUGIN if group in PLUGIN_GROUPS else CONF


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (group_dir(group) / group).glob("*.yaml"))


def groups(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("__")}


def compose_train(tmp_path: Path, *overrides: str):
    """The app's whole config (train.yaml)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"output_dir={tmp_path}"])


def compose_group(group: str, name: str, *overrides: str):
    """One group's option alone, from the folder that holds it (faster than the whole config)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(group_dir(group)), version_base="1.3"):
        return compose(overrides=[f"+{group}={name}", *overrides])


def test_every_group_has_options():
    # A user's search path gets these and nothing else (hydra/callbacks: the run-result callback).
    assert groups(PLUGIN) == PLUGIN_GROUPS | {"hydra"}
    assert groups(PLUGIN / "hydra") == {"callbacks"}
    assert groups(CONF) == DEMO_GROUPS
    assert (CONF / "train.yaml").is_file() and not list(PLUGIN.glob("*.yaml"))
    assert {"fixed", "scheduled", "learnable"} <= set(options("weighting"))
    assert set(options("schedule")) == {
        "constant", "linear", "cosine", "exponential", "step", "warmup", "cyclic", "piecewise"
    }  # fmt: skip
    assert set(options("loss")) == {"cross_entropy", "bce", "mse", "l1", "huber"}
    assert {"default", "cpu", "gpu", "ddp", "ddp_cpu", "debug"} <= set(options("trainer"))
    assert {"digits", "loc_cls", "multimnist"} <= set(options("experiment"))


def test_every_option_is_commented():
    for path in [*CONF.rglob("*.yaml"), *PLUGIN.rglob("*.yaml")]:
        assert any(line.lstrip().startswith("#") for line in path.read_text().splitlines()), f"{path}: no comment"


# -- one test per option -----------------------------------------------------------------------
@pytest.mark.parametrize("name", options("weighting"))
def test_weighting_option(tmp_path, name):
    cfg = compose_group("weighting", name, *(["weighting.task=recon"] if name == "scheduled" else []))
    weighting = build_weighting(cfg.weighting)
    assert isinstance(weighting, Weighting)
    assert weighting.name == name, f"conf/weighting/{name}.yaml builds the strategy registered as {weighting.name!r}"
    tasks = ["digit", "recon", "centre"]
    if weighting.max_tasks is not None and weighting.max_tasks < len(tasks):
        tasks = tasks[: weighting.max_tasks]
    weighting.bind(tasks)
    assert weighting.task_names == tuple(tasks)


@pytest.mark.parametrize("name", options("schedule"))
def test_schedule_option(tmp_path, name):
    cfg = compose_group("weighting", "scheduled", f"schedule@weighting.schedule={name}", "weighting.task=recon")
    assert set(cfg) == {"weighting"}  # the schedule lives inside the weighting
    schedule = instantiate(cfg.weighting.schedule, _convert_="all")
    assert isinstance(schedule, Schedule)
    for t in (0.0, 0.3, 1.0):  # the defaults are valid alphas over the whole run (unit=fraction)
        value = schedule(t)
        assert math.isfinite(value) and 0.0 <= value <= 1.0, f"{name} at {t}: {value}"
    weighting = build_weighting(cfg.weighting)
    weighting.bind(["digit", "recon", "centre"])  # the digits experiment: the schedule is recon's weight
    weighting.set_progress(Progress(step=30, epoch=1, total_steps=100))
    expected = torch.tensor([1.0, schedule(0.3), 1.0])
    torch.testing.assert_close(weighting.weights, expected)


@pytest.mark.parametrize("name", options("loss"))
def test_loss_option(tmp_path, name):
    cfg = compose_group("loss", name)
    validate_config(cfg, "loss")
    loss = instantiate(cfg.loss, _convert_="all")
    assert isinstance(loss, nn.Module)
    g = torch.Generator().manual_seed(0)
    if name == "cross_entropy":
        output, target = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    else:
        output, target = torch.randn(6, 2, generator=g), torch.rand(6, 2, generator=g)
    value = loss(output, target)
    assert value.ndim == 0 and torch.isfinite(value)


@pytest.mark.parametrize("name", options("task"))
def test_task_option(tmp_path, name):
    cfg = compose_train(tmp_path, "model=conv", f"+task@model.tasks.extra={name}")
    spec = OmegaConf.to_container(cfg.model.tasks.extra)
    if spec["out_features"] == "???":
        spec["out_features"] = 144 if spec["head"] == "heatmap" else 3
    trunk = {"_target_": "lightning_multiloss.app.models.ConvTrunk", "channels": [4], "pool": [2]}
    cfg.model.tasks.extra.out_features = spec["out_features"]
    spec = OmegaConf.to_container(cfg.model.tasks.extra, resolve=True)
    net = MultiTaskNet(trunk=trunk, tasks={"extra": spec}, input_shape=[1, 24, 24])
    assert net(torch.zeros(2, 1, 24, 24))["extra"].shape == (2, spec["out_features"])
    assert [t.name for t in net.tasks] == ["extra"]
    assert net.primary["extra"] == spec["primary"]


@pytest.mark.parametrize("name", options("model"))
def test_model_option(tmp_path, name):
    cfg = compose_train(tmp_path, f"model={name}")
    if cfg.model.trunk._target_.endswith("ConvTrunk"):
        cfg = compose_train(tmp_path, f"model={name}", "model.trunk.image_shape=[1,8,8]")
    validate_config(cfg, "model")
    net = instantiate(cfg.model, input_shape=[64], weighting=cfg.weighting, _recursive_=False)
    outputs = net(torch.zeros(3, 64))
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {"digit": (3, 10), "recon": (3, 64), "centre": (3, 1)}
    assert isinstance(net.configure_optimizers(), torch.optim.Optimizer)


@pytest.mark.parametrize("name", options("data"))
def test_data_option(tmp_path, name):
    cfg = compose_group("data", name, "data.batch_size=5")
    validate_config(cfg, "data")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (5, *dm.input_shape)
    total = sum(len(ds) for ds in dm.datasets.values())
    assert len(dm.datasets["test"]) == round(total * cfg.data.test_fraction)


def test_evaluation_shares_under_ddp_cover_each_sample_once():
    """Under DDP the val/test loaders shard the split (no padding); train is left to Lightning."""
    dm = DigitsDataModule(batch_size=7, val_fraction=0.045, test_fraction=0.025)  # 81 and 45 samples
    dm.setup()
    for split, size in (("val", 81), ("test", 45)):
        seen = []
        for rank in range(4):
            dm.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 4, "rank": rank})
            loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
            assert isinstance(loader.sampler, ShardSampler) and len(loader.sampler) in (size // 4, size // 4 + 1)
            seen += [int(i) for i in loader.sampler]
            assert sum(len(b["x"]) for b in loader) == len(loader.sampler)
        assert sorted(seen) == list(range(size))
    assert not isinstance(dm.train_dataloader().sampler, ShardSampler)
    dm.trainer = SimpleNamespace(distributed_sampler_kwargs=None)
    assert not isinstance(dm.val_dataloader().sampler, ShardSampler)  # one process: Lightning's default
    tiny = DigitsDataModule(val_fraction=0.001)  # 2 validation samples
    tiny.setup()
    tiny.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 4, "rank": 0})
    with pytest.raises(MultiLossError, match=r"DigitsDataModule: the val split has 2 sample\(s\) for 4 processes"):
        tiny.val_dataloader()


def package_overrides(package: str | None) -> list[str]:
    """No ``lightning`` key (the configs' default, lightning.pytorch), or the key set to ``package``."""
    return [] if package is None else [f"+lightning={package}"]


@pytest.mark.parametrize("package", [None, "pytorch_lightning"])
@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_option(tmp_path, name, package):
    cfg = compose_group("trainer", name, *package_overrides(package))
    validate_config(cfg, "trainer")
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    target = kwargs.pop("_target_")
    lightning = PACKAGES[package or "lightning.pytorch"]
    assert target == f"{lightning.__name__}.Trainer"
    inspect.signature(lightning.Trainer).bind(**kwargs, logger=False)  # every key is a Trainer argument
    if kwargs["accelerator"] == "gpu" and not torch.cuda.is_available():
        assert name in ("gpu", "ddp")  # compose only on a machine without a GPU
        return
    trainer = instantiate(cfg.trainer, logger=False)
    assert type(trainer) is lightning.Trainer
    assert trainer.num_devices == (kwargs["devices"] if isinstance(kwargs["devices"], int) else trainer.num_devices)


def test_a_data_module_refuses_to_resume_on_another_split() -> None:
    saved = DigitsDataModule(seed=0).state_dict()
    DigitsDataModule(seed=0).load_state_dict(saved)  # the same split
    DigitsDataModule(seed=1).load_state_dict({})  # a checkpoint of an earlier version: nothing to compare
    with pytest.raises(
        MultiLossError,
        match=r"DigitsDataModule: the checkpoint was trained on another split of the data \(seed=0 there, 1 here\): "
        r"resumed on this one, it would be validated and tested on samples it trained on; resume with the same seed",
    ):
        DigitsDataModule(seed=1).load_state_dict(saved)
    with pytest.raises(MultiLossError, match=r"\(val_fraction=0\.15 there, 0\.2 here\).*the same val_fraction$"):
        DigitsDataModule(val_fraction=0.2).load_state_dict(saved)


@pytest.mark.parametrize("module", [LocClsDataModule, MultiMNISTDataModule])
def test_another_number_of_copies_is_another_split(module: Any) -> None:
    # copies sets the number of samples, and so which of them the seeded permutation puts in each
    # split: resumed with copies=2, a run trained on most of the first run's held-out digits.
    one, two = module(copies=1), module(copies=2)
    one.setup(), two.setup()
    assert len(one.datasets["val"]) != len(two.datasets["val"])
    with pytest.raises(MultiLossError, match=r"another split of the data \(copies=1 there, 2 here\).*the same copies$"):
        two.load_state_dict(one.state_dict())


@pytest.mark.parametrize(
    ("strategy", "refused"),
    [
        ("ddp", False),
        ("auto", False),
        ("ddp_spawn", True),
        ("ddp_fork", True),
        ("ddp_notebook", True),
        ("ddp_spawn_find_unused_parameters_true", True),
        ({"_target_": "lightning.pytorch.strategies.DDPStrategy", "start_method": "spawn"}, True),
        ({"_target_": "lightning.pytorch.strategies.DDPStrategy"}, False),
    ],
)
def test_strategies_that_start_processes_for_each_call_are_refused(strategy, refused) -> None:
    if not refused:
        check_one_set_of_processes(OmegaConf.create(strategy) if isinstance(strategy, dict) else strategy)
        return
    with pytest.raises(
        MultiLossError, match=r"config key 'trainer\.strategy': .* starts new processes for each of fit"
    ):
        check_one_set_of_processes(OmegaConf.create(strategy) if isinstance(strategy, dict) else strategy)


@pytest.mark.parametrize(
    ("overrides", "max_epochs"),
    [
        ((), 30),
        (("experiment=loc_cls",), 15),
        (("experiment=multimnist",), 10),
        (("experiment=loc_cls", "trainer=debug"), 2),  # an experiment took 15 over debug's 2
        (("experiment=loc_cls", "trainer.max_epochs=4"), 4),
        (("experiment=loc_cls", "epochs=7"), 7),
        (("trainer=debug", "epochs=7"), 2),
    ],
)
def test_the_training_length_follows_the_experiment_unless_the_trainer_sets_it(tmp_path, overrides, max_epochs):
    cfg = compose_train(tmp_path, *overrides)
    assert OmegaConf.to_container(cfg.trainer, resolve=True)["max_epochs"] == max_epochs


@pytest.mark.parametrize("package", [None, "pytorch_lightning", "lightning.pytorch"])
@pytest.mark.parametrize("name", options("callbacks"))
def test_callbacks_option(tmp_path, name, package):
    cfg = compose_group("callbacks", name, f"+output_dir={tmp_path}", *package_overrides(package))
    validate_config(cfg, "callbacks")
    lightning, other = (lp, pl) if package in (None, "lightning.pytorch") else (pl, lp)
    for key, node in cfg.callbacks.items():
        callback = instantiate(node)
        assert isinstance(callback, lightning.Callback) and not isinstance(callback, other.Callback), key


@pytest.mark.parametrize("package", [None, "pytorch_lightning"])
@pytest.mark.parametrize("name", options("logger"))
def test_logger_option(tmp_path, name, package):
    import importlib.util

    cfg = compose_group("logger", name, f"+output_dir={tmp_path}", *package_overrides(package))
    validate_config(cfg, "logger")
    lightning = PACKAGES[package or "lightning.pytorch"]
    for key, node in cfg.logger.items():
        if key == "tensorboard" and not (
            importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
        ):
            with pytest.raises(InstantiationException, match="Neither `tensorboard` nor `tensorboardX`"):
                instantiate(node)
            continue
        logger = instantiate(node)
        assert isinstance(logger, lightning.loggers.Logger), key
        if key == "mlflow":  # a SQLite store in the run folder, created with the logger
            assert (tmp_path / "mlflow.db").is_file()
            continue
        assert Path(logger.save_dir) == tmp_path


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_option(tmp_path, name, caplog):
    cfg = compose_train(tmp_path, f"experiment={name}")
    datamodule, model, trainer = build(cfg)
    names = [t.name for t in model.tasks]
    if cfg.baseline_of is not None:
        assert names == [cfg.baseline_of] and model.weighting.name == "fixed"
        # The loc_cls baselines inherited its learnable weighting and warned on every run that it does not apply.
        assert not [r for r in caplog.records if "does not apply" in r.getMessage()]
        assert cfg.name in name  # a baseline carries its experiment's name
    else:
        assert cfg.name == name and len(names) >= 2
    assert tuple(datamodule.input_shape) == tuple(model.hparams.input_shape)
    assert isinstance(trainer, lp.Trainer)


def test_loc_cls_is_the_keras_recipe(tmp_path):
    cfg = compose_train(tmp_path, "experiment=loc_cls")
    _, model, _ = build(cfg)
    assert [t.name for t in model.tasks] == ["loc", "cls"]
    assert model.weighting.name == "learnable"
    assert model(torch.zeros(2, 1, 24, 24))["loc"].shape == (2, 144)  # one logit per cell of the 12x12 map


def test_slurm_launcher_example_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=submitit_slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert cfg.hydra.launcher.timeout_min == 60


# -- schemas --------------------------------------------------------------------------------------
@pytest.mark.parametrize("lightning", [lp, pl], ids=["lightning.pytorch", "pytorch_lightning"])
def test_trainer_schema_matches_the_trainer(lightning):
    parameters = inspect.signature(lightning.Trainer).parameters
    for name, spec in TrainerConf.__dataclass_fields__.items():
        if name == "_target_":
            continue
        assert name in parameters, f"TrainerConf.{name} is not a Trainer argument"
        assert spec.default == parameters[name].default, f"TrainerConf.{name}: default differs from Lightning's"


def test_typo_key_fails_with_its_name(tmp_path):
    with pytest.raises(ConfigCompositionException, match=r"trainer\.max_epoch"):
        compose_train(tmp_path, "trainer.max_epoch=3")  # without +: Hydra refuses a new key
    # With +, Hydra adds the key even under a schema: the app's validation catches it.
    cases = {
        "+trainer.max_epoch=3": "config key 'trainer.max_epoch': Key 'max_epoch' not in 'TrainerConf'",
        "+model.tasks.digit.head_hiden=8": "config key 'model.tasks.digit.head_hiden'",
        "+weighting.weight=[1,2,3]": "config key 'weighting.weight': Key 'weight' not in 'FixedArgs'",
        "+data.batchsize=3": "config key 'data.batchsize'",
        "+seeed=3": "config key 'seeed'",
        "+model.tasks.recon.loss.delta=2": "config key 'model.tasks.recon.loss.delta'",
    }
    for override, message in cases.items():
        cfg = compose_train(tmp_path, override)
        with pytest.raises(MultiLossError) as info:
            validate_config(cfg)
        assert message in str(info.value), override


def test_wrong_type_fails_with_its_name(tmp_path):
    with pytest.raises(ConfigCompositionException) as info:
        compose_train(tmp_path, "trainer.max_epochs=abc")
    assert "trainer.max_epochs" in str(info.value) and "Integer" in str(info.value.__cause__)
    with pytest.raises(ConfigCompositionException):
        compose_train(tmp_path, "model.tasks.digit.head_hidden=wide")
    cfg = compose_train(tmp_path, "weighting=learnable", "weighting.check_every=often")
    with pytest.raises(MultiLossError, match=r"config key 'weighting.check_every'.*often"):
        validate_config(cfg)


def test_weight_for_an_unknown_task_names_it(tmp_path):
    cfg = compose_train(tmp_path, "+weighting.weights={digit:1.0,colour:0.5}")
    with pytest.raises(
        MultiLossError, match=r"unknown task\(s\) \['colour'\]; the tasks are \['digit', 'recon', 'centre'\]"
    ):
        build(cfg)


def test_missing_value_names_the_key(tmp_path):
    cfg = compose_train(tmp_path, "+task@model.tasks.parity=classification")  # out_features: ???
    with pytest.raises(MultiLossError, match=r"model\.tasks\.parity\.out_features"):
        build(cfg)


def test_unknown_option_lists_the_available_ones(tmp_path):
    with pytest.raises(ConfigCompositionException) as info:
        compose_train(tmp_path, "weighting=fixd")
    message = str(info.value)
    assert "fixd" in message and "Available options" in message
    assert "fixed" in message and "learnable" in message and "scheduled" in message


# -- packaging and use from another Hydra app -----------------------------------------------------
def test_every_subpackage_is_listed_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^packages = \[(.*?)\]", text, re.S | re.M)
    assert block, "pyproject.toml lists no packages"
    listed = set(re.findall(r'"([\w.]+)"', block.group(1)))
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for folder in ("lightning_multiloss", "hydra_plugins")
        for p in (ROOT / folder).rglob("__init__.py")
    }
    assert found | {"lightning_multiloss.conf", "hydra_plugins"} == listed
    assert not (ROOT / "hydra_plugins" / "__init__.py").exists()  # a namespace that other packages share


def test_the_demo_search_path_plugin_acts_for_the_demo_only(tmp_path):
    """Hydra lists in --help only the groups of its first search path: the plugin adds ours for the demo alone."""
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    ours = [p for p in Plugins.instance().discover(SearchPathPlugin) if "lightning_multiloss" in p.__module__]
    assert [p.__name__ for p in ours] == ["LightningMultilossDemoSearchPath"]  # found by Hydra's plugin scan
    plugin_class = ours[0]
    for main, expected in ((str(CONF), True), ("pkg://lightning_multiloss.app.conf", True), (str(tmp_path), False)):
        search_path = ConfigSearchPathImpl()
        search_path.append("hydra", "pkg://hydra.conf")
        search_path.append("main", main)
        plugin_class().manipulate_search_path(search_path)
        paths = [element.path for element in search_path.get_path()]
        assert ("pkg://lightning_multiloss.conf" in paths) is expected, main


def test_demo_configs_compose_from_another_hydra_app(tmp_path):
    """A user's app that wants the demo's data and network too adds both search-path entries."""
    (tmp_path / "app.yaml").write_text(
        "defaults:\n"
        "  - weighting: learnable\n"
        "  - model: mlp\n"
        "  - data: digits\n"
        "  - /task@model.tasks.digit: classification\n"
        "  - /task@model.tasks.centre: regression\n"
        "  - _self_\n"
        "hydra:\n"
        "  searchpath:\n"
        "    - pkg://lightning_multiloss.conf\n"
        "    - pkg://lightning_multiloss.app.conf\n"
        "seed: 3\n"
        "model:\n"
        "  tasks:\n"
        "    digit:\n"
        "      out_features: 10\n"
    )
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(tmp_path), version_base="1.3"):
        cfg = compose("app", overrides=["weighting.init=0.25"])
    assert cfg.data.seed == 3
    dm = instantiate(cfg.data)
    net = instantiate(cfg.model, input_shape=list(dm.input_shape), weighting=cfg.weighting, _recursive_=False)
    assert [t.name for t in net.tasks] == ["digit", "centre"]
    assert float(net.weighting.alpha.detach()) == 0.25
    assert isinstance(dm, lp.LightningDataModule) and isinstance(net, lp.LightningModule)


def test_the_plugin_search_path_brings_only_the_plugin_groups(tmp_path):
    """``pkg://lightning_multiloss.conf`` alone: the plugin's groups; no demo option shadows the app's own."""
    (tmp_path / "config.yaml").write_text(
        "defaults:\n"
        "  - weighting: fixed\n"
        "  - _self_\n"
        "hydra:\n"
        "  searchpath:\n"
        "    - pkg://lightning_multiloss.conf\n"
        "scheduled_task: recon\n"  # a key of the demo's: the plugin's configs must not read it
    )
    demo = {
        "data": "digits",
        "model": "mlp",
        "experiment": "digits",
        "trainer": "debug",
        "hydra/launcher": "submitit_slurm",
    }
    for group, option in demo.items():  # an app whose defaults list picks a demo option
        (tmp_path / f"uses_{group.replace('/', '_')}.yaml").write_text(
            f"defaults:\n  - {group}: {option}\n  - _self_\nhydra:\n  searchpath:\n    - pkg://lightning_multiloss.conf\n"
        )
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(tmp_path), version_base="1.3"):
        # Each plugin group is there (its folder holds nothing else: test_every_group_has_options) ...
        for group in sorted(PLUGIN_GROUPS):
            probe = compose("config", overrides=[f"+{group}@probe={options(group)[0]}"])
            assert probe.probe, group
        # ... and no option of the demo's groups, nor its train.yaml.
        for group, option in demo.items():
            with pytest.raises(MissingConfigException, match=f"Could not find '{group}/{option}'"):
                compose(f"uses_{group.replace('/', '_')}")
        with pytest.raises(MissingConfigException, match="Cannot find primary config 'train'"):
            compose("train")
        cfg = compose("config", overrides=["weighting=scheduled", "schedule@weighting.schedule=cosine"])
    assert set(cfg) == {"weighting", "scheduled_task"}  # no top-level schedule
    assert cfg.weighting.task is None and cfg.weighting.schedule._target_ == "lightning_multiloss.schedules.Cosine"
    weighting = build_weighting(cfg.weighting)
    weighting.bind(["a", "b"])  # no task named: the schedule is alpha of two tasks
    weighting.set_progress(Progress(step=0, epoch=0, total_steps=10))
    torch.testing.assert_close(weighting.weights, torch.tensor([1.0, 0.0]))


def refuse_setup(reason: str) -> None:
    """A target that Lightning would raise from: its configuration error."""
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    raise MisconfigurationException(reason)


def test_lightning_configuration_errors_become_one_message():
    """``trainer=gpu`` without a GPU: Lightning's MisconfigurationException, naming the target, no Hydra wrapping."""
    from lightning_multiloss.app.config import call

    node = OmegaConf.create({"_target_": f"{__name__}.refuse_setup", "reason": "No supported gpu backend found!"})
    with pytest.raises(MultiLossError, match=rf"^{re.escape(__name__)}.refuse_setup: No supported gpu backend found!$"):
        call(node)
    with pytest.raises(InstantiationException):  # other errors keep Hydra's message (target and key)
        call(OmegaConf.create({"_target_": "math.sqrt", "x": "not a number"}))


def test_a_negative_head_hidden_is_refused(tmp_path):
    # It trained as head_hidden=0 (a single Linear layer), silently.
    cfg = compose_train(tmp_path, "model.tasks.digit.head_hidden=-1")
    with pytest.raises(MultiLossError, match=r"model\.tasks\.digit\.head_hidden must be a non-negative integer"):
        build(cfg)


def test_one_schedule_per_task_is_not_given_the_experiments_scheduled_task(tmp_path):
    # The experiment's scheduled_task went into weighting.task beside the dict, and the factory
    # refused a task= the user never gave.
    overrides = ["weighting=scheduled", "~weighting.schedule", "+weighting.schedule={digit:0.3,recon:0.5,centre:0.2}"]
    cfg = compose_train(tmp_path, *overrides)
    assert cfg.scheduled_task == "recon"
    _, model, _ = build(cfg)
    assert model.weighting.weights_by_task() == pytest.approx({"digit": 0.3, "recon": 0.5, "centre": 0.2})


MONITOR_REFUSALS = {
    # EarlyStopping's stopped the run with a traceback after an epoch, the checkpoint's at the first
    # validation's end.
    "val/acc/digits": r"the model logs no 'val/acc/digits'; did you mean 'val/acc/digit'\? it logs \['train/loss', ",
    # Listed by logged_keys, but logged every log_every_n_steps steps: at the default 50 and an
    # epoch of fewer steps, EarlyStopping and the checkpoint found no value ("not available").
    "train/loss/recon": r"'train/loss/recon' is logged on the Trainer's logging steps only \(log_every_n_steps\): "
    r".*; monitor 'train/loss/recon_epoch'",
    # It said "monitor 'a validation key'": a placeholder quoted as a key.
    "train/weight/recon": r"'train/weight/recon' is logged on the Trainer's logging steps only .*; monitor "
    r"a validation key instead \(e\.g\. 'val/loss'\)$",
}


@pytest.mark.parametrize("callback", ["checkpoint", "early_stopping"])
@pytest.mark.parametrize("monitor", list(MONITOR_REFUSALS))
def test_a_monitor_that_would_find_no_value_is_refused_before_training(tmp_path, callback, monitor):
    cfg = compose_train(tmp_path, "callbacks=[default,early_stopping]", f"callbacks.{callback}.monitor={monitor}")
    with pytest.raises(
        MultiLossError, match=rf"config key 'callbacks\.{callback}\.monitor': {MONITOR_REFUSALS[monitor]}"
    ):
        build(cfg)


@pytest.mark.parametrize("callback", ["checkpoint", "early_stopping"])
def test_a_monitor_the_model_logs_is_taken(tmp_path, callback):
    for key in ("val/acc/digit", "val/loss", "train/loss/recon_epoch", "val/mse/recon"):
        build(compose_train(tmp_path, "callbacks=[default,early_stopping]", f"callbacks.{callback}.monitor={key}"))
