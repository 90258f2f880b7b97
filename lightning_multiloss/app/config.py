"""Structured-config schemas (registered in Hydra's ConfigStore) and config validation.

The YAML files of the demo (``app/conf/``) and of the plugin's ``task`` group name these schemas
in their defaults lists (``optional``, so that an app which has not imported this module still
composes them), so a wrong type fails when the config is composed. Hydra lets ``+key=value`` add
keys even to a schema, so :func:`validate_config` checks the composed config again before anything
is built: an unknown key or a value of the wrong type fails at once, with the key's full name.
Nodes without a dataclass here (weightings, schedules, losses, metrics, callbacks, loggers) are
checked against the signature of their ``_target_``, so a strategy added later is covered too.

Example:
    >>> from omegaconf import OmegaConf
    >>> trainer = {"_target_": "lightning.pytorch.Trainer", "max_epoch": 3}
    >>> validate_config(OmegaConf.create({"trainer": trainer}), "trainer")
    Traceback (most recent call last):
    ...
    lightning_multiloss.errors.MultiLossError: config key 'trainer.max_epoch': Key 'max_epoch' not in 'TrainerConf'
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Dict, List, Optional, Union  # noqa: UP035 (OmegaConf needs typing generics)

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_multiloss.app.namespace import DEFAULT_LIGHTNING, target_for
from lightning_multiloss.errors import MultiLossError
from lightning_multiloss.factories import check_lightning_package
from lightning_multiloss.weighting import Weighting

# ruff: noqa: UP006, UP045  (OmegaConf reads these annotations at run time: typing forms only)


def config_dir() -> str:
    """The folder of the demo app's Hydra configs, ``lightning_multiloss/app/conf`` (``train.yaml``)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")


def plugin_config_dir() -> str:
    """The folder of the plugin's Hydra configs: ``lightning_multiloss/conf`` once installed.

    From a source checkout, ``conf/`` beside the package folder.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # lightning_multiloss/
    for candidate in (os.path.join(package, "conf"), os.path.join(os.path.dirname(package), "conf")):
        if os.path.isdir(os.path.join(candidate, "weighting")):
            return candidate
    raise MultiLossError(f"the Hydra configs of lightning_multiloss are missing (looked in {package}/conf)")


def _expose_source_configs() -> None:
    """Make ``lightning_multiloss.conf`` importable when the package runs from a source checkout.

    An installed package holds ``lightning_multiloss/conf``; a checkout keeps ``conf/`` beside the
    package folder, so ``pkg://lightning_multiloss.conf`` (the demo's search path) would not find it there.
    """
    import importlib.util
    import sys

    name = "lightning_multiloss.conf"
    if name in sys.modules:
        return
    try:
        if importlib.util.find_spec(name) is not None:
            return
    except ImportError:
        pass
    folder = plugin_config_dir()
    init = os.path.join(folder, "__init__.py")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[folder])
    if spec is None or spec.loader is None or not os.path.isfile(init):
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_expose_source_configs()


# -- schemas ----------------------------------------------------------------------------------
@dataclass
class TrainerConf:
    """The Trainer's arguments, of either package (``logger`` and ``callbacks`` come from their groups)."""

    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "auto"
    strategy: Any = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    precision: Any = None
    fast_dev_run: Any = False
    max_epochs: Optional[int] = None
    min_epochs: Optional[int] = None
    max_steps: int = -1
    min_steps: Optional[int] = None
    max_time: Any = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    overfit_batches: Any = 0.0
    val_check_interval: Any = None
    check_val_every_n_epoch: Optional[int] = 1
    num_sanity_val_steps: Optional[int] = None
    log_every_n_steps: Optional[int] = None
    enable_checkpointing: Optional[bool] = None
    enable_progress_bar: Optional[bool] = None
    enable_model_summary: Optional[bool] = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    gradient_clip_algorithm: Optional[str] = None
    deterministic: Any = None
    benchmark: Optional[bool] = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    profiler: Any = None
    detect_anomaly: bool = False
    barebones: bool = False
    plugins: Any = None
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = 0
    default_root_dir: Optional[str] = None


@dataclass
class DataConf:
    """The split and loader settings every datamodule of ``lightning_multiloss.app.data`` takes."""

    _target_: str = MISSING
    batch_size: int = 64
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    num_workers: int = 0


@dataclass
class DigitsDataConf(DataConf):
    _target_: str = "lightning_multiloss.app.data.DigitsDataModule"


@dataclass
class LocClsDataConf(DataConf):
    _target_: str = "lightning_multiloss.app.data.LocClsDataModule"
    canvas: int = 24
    grid: int = 12
    copies: int = 1


@dataclass
class MultiMNISTDataConf(DataConf):
    _target_: str = "lightning_multiloss.app.data.MultiMNISTDataModule"
    size: int = 28
    shift: int = 4
    copies: int = 1


@dataclass
class TaskConf:
    """One branch: its head, loss, metrics and target (see ``conf/task/``)."""

    out_features: int = MISSING
    head: str = "linear"
    head_hidden: int = 0
    loss: Any = MISSING
    metrics: Dict[str, Any] = field(default_factory=dict)
    primary: Optional[str] = None
    target: Optional[str] = None
    mask: Optional[str] = None
    ignore_value: Optional[float] = None


@dataclass
class MLPTrunkConf:
    _target_: str = "lightning_multiloss.app.models.MLPTrunk"
    hidden: List[int] = field(default_factory=lambda: [128, 64])
    activation: str = "relu"
    dropout: float = 0.0


@dataclass
class ConvTrunkConf:
    _target_: str = "lightning_multiloss.app.models.ConvTrunk"
    channels: List[int] = field(default_factory=lambda: [16, 32])
    kernel_size: int = 3
    padding: str = "same"
    pool: List[int] = field(default_factory=lambda: [1, 2])
    feature: str = "max"
    fc: List[int] = field(default_factory=list)
    activation: str = "relu"
    dropout: float = 0.0
    image_shape: Optional[List[int]] = None


@dataclass
class ModelConf:
    _target_: str = "lightning_multiloss.app.models.MultiTaskNet"
    trunk: Any = MISSING
    tasks: Dict[str, TaskConf] = field(default_factory=dict)
    optimizer: Any = field(default_factory=lambda: {"_target_": "torch.optim.Adam", "lr": 1e-3})
    input_key: str = "x"
    on_nonfinite: str = "raise"
    reuse_jacobian: bool = True


@dataclass
class MLPModelConf(ModelConf):
    trunk: MLPTrunkConf = field(default_factory=MLPTrunkConf)


@dataclass
class ConvModelConf(ModelConf):
    trunk: ConvTrunkConf = field(default_factory=ConvTrunkConf)


@dataclass
class TrainConf:
    """The top level of the demo's ``train.yaml``."""

    name: str = MISSING
    lightning: str = "lightning.pytorch"
    baseline_of: Optional[str] = None
    seed: int = 0
    epochs: int = 30
    ckpt_path: Optional[str] = None
    test: bool = True
    output_dir: Optional[str] = MISSING  # None where Hydra's resolvers are not at hand (--cfg job --resolve)
    scheduled_task: Optional[str] = None
    torch_threads: Optional[int] = None
    data: Any = MISSING
    model: Any = MISSING
    weighting: Any = MISSING
    trainer: Any = MISSING
    callbacks: Dict[str, Any] = field(default_factory=dict)
    logger: Dict[str, Any] = field(default_factory=dict)


SCHEMAS: dict[str, type] = {
    "lightning.pytorch.Trainer": TrainerConf,
    "lightning_multiloss.app.data.DigitsDataModule": DigitsDataConf,
    "lightning_multiloss.app.data.LocClsDataModule": LocClsDataConf,
    "lightning_multiloss.app.data.MultiMNISTDataModule": MultiMNISTDataConf,
    "lightning_multiloss.app.models.MultiTaskNet": ModelConf,
    "lightning_multiloss.app.models.MLPTrunk": MLPTrunkConf,
    "lightning_multiloss.app.models.ConvTrunk": ConvTrunkConf,
}
"""The dataclass that checks a node, by the node's ``_target_`` (named for ``lightning.pytorch``; the classes of
``pytorch_lightning`` are checked by the same dataclasses)."""


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (group ``schema/<part>``); done on import."""
    cs = ConfigStore.instance()
    cs.store(group="schema/train", name="train", node=TrainConf)
    cs.store(group="schema/trainer", name="trainer", node=TrainerConf)
    cs.store(group="schema/data", name="digits", node=DigitsDataConf)
    cs.store(group="schema/data", name="loc_cls", node=LocClsDataConf)
    cs.store(group="schema/data", name="multimnist", node=MultiMNISTDataConf)
    cs.store(group="schema/model", name="mlp", node=MLPModelConf)
    cs.store(group="schema/model", name="conv", node=ConvModelConf)
    cs.store(group="schema/task", name="task", node=TaskConf)


register_configs()


# -- validation -------------------------------------------------------------------------------
_SIMPLE = (int, float, bool, str)


def _simple_type(annotation: Any) -> Any:
    """``annotation`` if OmegaConf can check it (int, float, bool, str, optionally None), else Any."""
    if annotation in _SIMPLE:
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        return str if values and all(isinstance(v, str) for v in values) else Any
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            inner = _simple_type(args[0])
            return Optional[inner] if inner is not Any else Any
    return Any


def signature_schema(target: Callable[..., Any]) -> tuple[type, bool]:
    """A dataclass of ``target``'s keyword arguments (checkable types, else Any), and whether it takes ``**kwargs``."""
    function = target.__init__ if inspect.isclass(target) else target
    parameters = [p for p in inspect.signature(function).parameters.values() if p.name != "self"]
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # annotations that do not evaluate here: check the names only
        hints = {}
    var_keyword = any(p.kind == p.VAR_KEYWORD for p in parameters)
    fields = [
        (p.name, _simple_type(hints.get(p.name, Any)), field(default=MISSING))
        for p in parameters
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    name = getattr(target, "__name__", "target")
    return make_dataclass(f"{name}Args", fields), var_keyword


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


@contextmanager
def hydra_import_errors_unlogged() -> Iterator[None]:
    """Hydra's ``hydra.utils`` logs a failed import of a ``_target_`` (three lines) before raising it;
    the error it raises becomes one line naming the key here, so the log is left out."""
    logger = logging.getLogger("hydra.utils")
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def check_node(node: Any, where: str, schema: type | None = None) -> None:
    """Check ``node`` (a dict config) against ``schema`` or the signature of its ``_target_``.

    Raises:
        MultiLossError: naming the full key, for an unknown key or a value of the wrong type.
    """
    if not isinstance(node, DictConfig | Mapping):
        return
    node = node if isinstance(node, DictConfig) else OmegaConf.create(dict(node))
    target = node.get("_target_")
    var_keyword = False
    if schema is None and isinstance(target, str):
        schema = SCHEMAS.get(target_for(target, DEFAULT_LIGHTNING))
        if schema is None:
            try:
                with hydra_import_errors_unlogged():
                    obj = get_object(target)
            except Exception as error:
                reason = str(error.__cause__ or error).strip().splitlines()[0]  # Hydra's own text spans lines
                raise MultiLossError(f"config key '{where}._target_': cannot import {target!r} ({reason})") from None
            schema, var_keyword = signature_schema(obj)
    if schema is None:
        return
    values = OmegaConf.masked_copy(node, [k for k in node if not (str(k).startswith("_") and str(k).endswith("_"))])
    if var_keyword:  # extra keyword arguments are accepted: check the types of the named ones only
        names = set(getattr(schema, "__dataclass_fields__", {}))
        values = OmegaConf.masked_copy(values, [str(k) for k in values if k in names])
    try:
        OmegaConf.merge(OmegaConf.structured(schema), values)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or ""
        message = getattr(error, "msg", None) or str(error)
        full = ".".join(part for part in (where, str(key)) if part)
        raise MultiLossError(f"config key '{full}': {message.splitlines()[0]}") from None


def validate_config(cfg: DictConfig, *parts: str) -> None:
    """Check the composed config (or only ``parts`` of it) before anything is built.

    Every key of the top level, the trainer, data, model (trunk and each task, its loss and
    metrics), weighting (and its schedule), callbacks and loggers.
    """
    selected = set(parts) if parts else None

    def wanted(part: str) -> bool:
        return selected is None or part in selected

    if selected is None:
        check_node(OmegaConf.masked_copy(cfg, [str(k) for k in cfg]), "", TrainConf)
        check_lightning_package(str(cfg.get("lightning", DEFAULT_LIGHTNING)))  # before the targets that name it
    for part in cfg:
        if part not in ("model", "callbacks", "logger") and wanted(str(part)) and isinstance(cfg[part], DictConfig):
            check_node(cfg[part], str(part))  # trainer, data, weighting: by their _target_
    if wanted("weighting") and isinstance(cfg.get("weighting"), DictConfig):
        for key, value in cfg.weighting.items():
            if isinstance(value, DictConfig) and "_target_" in value:  # weighting=scheduled: its schedule
                check_node(value, f"weighting.{key}")
    if wanted("model") and cfg.get("model") is not None:
        model = cfg.model
        check_node(model, "model")
        if isinstance(model.get("trunk"), DictConfig):
            check_node(model.trunk, "model.trunk")
        if isinstance(model.get("optimizer"), DictConfig) and "_target_" in model.optimizer:
            check_node(model.optimizer, "model.optimizer")
        for name, task in (model.get("tasks") or {}).items():
            check_node(task, f"model.tasks.{name}", TaskConf)
            check_node(task.get("loss"), f"model.tasks.{name}.loss")
            for metric, metric_cfg in (task.get("metrics") or {}).items():
                check_node(metric_cfg, f"model.tasks.{name}.metrics.{metric}")
    for part in ("callbacks", "logger"):
        if wanted(part) and cfg.get(part):
            for key, value in cfg[part].items():
                check_node(value, f"{part}.{key}")
    check_counts(cfg, wanted)


# Integer keys that must be >= 1 and that their consumers do not check themselves (Lightning divides
# by accumulate_grad_batches only when training starts: 0 is a ZeroDivisionError, -1 trains nothing).
POSITIVE_COUNTS = (("trainer", "accumulate_grad_batches"), ("", "torch_threads"))


# NumPy's seeds (seed_everything seeds NumPy too): an unsigned 32-bit integer.
SEED_RANGE = (0, 2**32 - 1)


def check_counts(cfg: DictConfig, wanted: Any) -> None:
    """Refuse a count below 1 (``null`` is left to its default) and a seed out of range, naming the key."""
    seed = cfg.get("seed") if wanted("seed") else None
    if isinstance(seed, int) and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise MultiLossError(f"config key 'seed': must be an integer from 0 to {SEED_RANGE[1]}, got {seed}")
    for part, key in POSITIVE_COUNTS:
        node = cfg.get(part) if part else cfg
        if (part and not wanted(part)) or not isinstance(node, DictConfig) or node.get(key) is None:
            continue
        value = node.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            full = f"{part}.{key}" if part else key
            raise MultiLossError(f"config key '{full}': must be an integer >= 1, got {value!r}")


def refused_key(node: Mapping[str, Any], message: str) -> str | None:
    """The argument of ``node`` that a target's error ``message`` is about, if it can tell: the one
    whose name and value the message quotes (or, failing a unique such key, its name or its value).

    Example:
        >>> refused_key({"lr": -1, "weight_decay": 0.0}, "Invalid learning rate: -1")
        'lr'
        >>> refused_key({"precision": 17, "strategy": "auto"}, "Precision 17 is invalid. Allowed: 16, 32")
        'precision'
    """
    scores: dict[str, int] = {}
    for key, value in node.items():
        key = str(key)
        if key.startswith("_") and key.endswith("_"):
            continue
        score = int(re.search(rf"(?<![\w]){re.escape(key)}(?![\w])", message, re.IGNORECASE) is not None)
        if isinstance(value, int | float | str) and not isinstance(value, bool) and str(value):
            score += re.search(rf"(?<![\w.]){re.escape(str(value))}(?![\w.])", message) is not None
        if score:
            scores[key] = score
    best = max(scores.values(), default=0)
    chosen = [key for key, score in scores.items() if score == best]
    return chosen[0] if best and len(chosen) == 1 else None


def mistyped_key(node: Mapping[str, Any]) -> str | None:
    """The one argument of ``node`` that is not a number where its ``_target_``'s default is one.

    torch's ``Adam(lr="abc")`` says ``'<=' not supported between instances of 'float' and 'str'``,
    naming no argument.

    Example:
        >>> mistyped_key({"_target_": "torch.optim.Adam", "lr": "abc", "weight_decay": 0.0})
        'lr'
    """
    try:
        with hydra_import_errors_unlogged():
            parameters = inspect.signature(get_object(str(node["_target_"]))).parameters
    except Exception:  # no target, or one without a signature: nothing to tell
        return None

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    found = [
        str(key)
        for key, value in node.items()
        if key in parameters and number(parameters[key].default) and not number(value) and value is not None
    ]
    return found[0] if len(found) == 1 else None


def refusal(node: Mapping[str, Any], where: str, error: BaseException) -> str:
    """One line for a value that ``node``'s target refused: ``config key '<key>': <the target's reason>``."""
    key = refused_key(node, str(error))
    if key is None and isinstance(error, TypeError) and "_target_" in node:
        mistyped = mistyped_key(node)
        if mistyped is not None:
            return f"config key '{where}.{mistyped}': must be a number, got {node[mistyped]!r}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[0] if lines else type(error).__name__
    return f"config key '{where}.{key}': {reason}" if key else f"config key '{where}': {reason}"


def call(node: Any, node_key: str | None = None, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``, letting a :class:`MultiLossError` through unwrapped.

    Hydra wraps whatever the target raises in an ``InstantiationException``; the library's own
    errors already name the key, task or value, so they reach the user as they are. With
    ``node_key`` (the node's place in the config, e.g. ``"trainer"``), a value that a target
    outside this package refuses (its ``ValueError`` or ``TypeError``, or Lightning's
    ``MisconfigurationException``, e.g. ``trainer.precision=17``) becomes a
    :class:`MultiLossError` naming the key (see :func:`refusal`); without it, Lightning's
    ``MisconfigurationException`` becomes one naming the target.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        with hydra_import_errors_unlogged():
            return instantiate(node, **kwargs)
    except InstantiationException as error:
        innermost, cause = error, error.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            innermost, cause = cause, cause.__cause__
        if isinstance(cause, MultiLossError):
            # A node inside the one instantiated (a weighting's schedule) is named by its key, which
            # Hydra gives as the last line of its message; the node itself is named by its error.
            key = _full_key(innermost)
            if key is not None and node_key is not None and key != node_key and not str(cause).startswith("config key"):
                raise MultiLossError(f"config key '{key}': {cause}") from None
            raise cause from None
        target = node.get("_target_") if isinstance(node, Mapping | DictConfig) else None
        misconfigured = type(cause).__name__ == "MisconfigurationException"  # Lightning's (either package)
        # This package's own targets raise MultiLossError for a bad value: any other error of theirs is a bug.
        refused = isinstance(cause, ValueError | TypeError) and not str(target).startswith("lightning_multiloss.")
        if node_key is not None and cause is not None and (misconfigured or refused):
            raise MultiLossError(refusal(_plain(node), node_key, cause)) from None
        if node_key is not None and isinstance(cause, ImportError):
            lines = [line.strip() for line in str(cause).splitlines() if line.strip()] or [type(cause).__name__]
            if lines[0].startswith("Error loading"):  # Hydra could not import the _target_ itself (a typo)
                raise MultiLossError(
                    f"config key '{node_key}._target_': cannot import {target!r} ({lines[-1]})"
                ) from None
            # The target ran and lacks an optional package (TensorBoardLogger without tensorboard).
            raise MultiLossError(
                f"config key '{node_key}': {target or 'the target'} needs a package: {lines[0]}"
            ) from None
        if misconfigured:
            raise MultiLossError(f"{target or 'config'}: {cause}") from None
        raise


def _full_key(error: BaseException) -> str | None:
    """The config key of the node whose target raised: the ``full_key: ...`` line of Hydra's message."""
    last = str(error).rstrip().rsplit("\n", 1)[-1]
    return last.removeprefix("full_key: ").strip() if last.startswith("full_key: ") else None


def build_weighting(cfg: Any) -> Weighting:
    """The weighting of a config node (``_target_`` and hyper-parameters), checked first.

    Example:
        >>> build_weighting({"_target_": "lightning_multiloss.weighting.Fixed", "weights": [0.5, 0.3]})
        Fixed()
        >>> build_weighting({"_target_": "lightning_multiloss.weighting.Fixed", "weight": [0.5, 0.3]})
        Traceback (most recent call last):
        ...
        lightning_multiloss.errors.MultiLossError: config key 'weighting.weight': Key 'weight' not in 'FixedArgs'
    """
    if isinstance(cfg, Weighting):
        return cfg
    if not isinstance(cfg, DictConfig | Mapping) or "_target_" not in cfg:
        raise MultiLossError(f"weighting: expected a config with a _target_, got {_plain(cfg)!r}")
    check_node(cfg, "weighting")
    weighting = call(cfg, "weighting", _convert_="all")
    if not isinstance(weighting, Weighting):
        raise MultiLossError(f"weighting: {cfg['_target_']!r} built a {type(weighting).__name__}, not a Weighting")
    return weighting
