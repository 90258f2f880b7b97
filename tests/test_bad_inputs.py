"""Every bad input that gets one clear line, in one place: a table for the command line, a table for the API.

A new case is one row. CLI rows run ``multiloss-train``'s ``main()`` in this process (the same
code as the console script; ``tests/test_train_cli.py`` runs the script itself) and check the
exit status and that stderr holds exactly one ``error:`` line, matching the row's pattern, and no
traceback. API rows call a function and check the exception's type and its one-line message.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import io
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torchmetrics
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_multiloss import MultiLossError, Task, create_weighting
from lightning_multiloss.app import config, train
from lightning_multiloss.app.results import RunResult
from lightning_multiloss.schedules import Linear
from lightning_multiloss.weighting import Fixed, Progress, Scheduled, Weighting
from tests._models import ToyNet

TINY = ("trainer=debug", "trainer.enable_progress_bar=false", "test=false")
TASKS = r"tasks digit \(10 outputs\), recon \(64 outputs\), centre \(1 output\)"


@dataclass(frozen=True)
class CliCase:
    """``multiloss-train <argv>``: exit ``status`` and the one ``error:`` line, matching ``line`` (a regex).

    In ``argv``, ``{ckpt}`` is a 2-epoch checkpoint of the default experiment and ``{tmp}`` the
    test's own folder.
    """

    id: str
    argv: tuple[str, ...]
    line: str
    status: int = 2


CLI_CASES = [
    # -- interpolations in overrides: Hydra's chained tracebacks, exit 1, where they do not resolve --
    CliCase(
        "interpolation-of-an-unset-variable",
        ("seed=${oc.env:MULTILOSS_TEST_UNSET}",),
        r"error: config key 'seed': KeyError raised while resolving interpolation: "
        r"\"Environment variable 'MULTILOSS_TEST_UNSET' not found\"",
    ),
    CliCase(
        "interpolation-of-another-type",
        ("seed=${oc.env:HOME}",),
        r"error: config key 'seed': While dereferencing interpolation '\$\{oc\.env:HOME\}': Value '.*' of type "
        r"'str' could not be converted to Integer",
    ),
    # -- config keys and values (issue 14) --------------------------------------------------------
    # Counts that Lightning and torch check late or not at all: 0 was a ZeroDivisionError traceback
    # when training started, -1 a "completed" run that trained nothing; torch_threads=0 was ignored.
    CliCase(
        "accumulate-zero",
        ("trainer.accumulate_grad_batches=0",),
        r"error: config key 'trainer\.accumulate_grad_batches': must be an integer >= 1, got 0",
    ),
    CliCase(
        "accumulate-negative",
        ("trainer.accumulate_grad_batches=-1",),
        r"error: config key 'trainer\.accumulate_grad_batches': must be an integer >= 1, got -1",
    ),
    CliCase(
        "threads-negative", ("torch_threads=-2",), r"error: config key 'torch_threads': must be an integer >= 1, got -2"
    ),
    CliCase("threads-zero", ("torch_threads=0",), r"error: config key 'torch_threads': must be an integer >= 1, got 0"),
    CliCase(
        "wrong-type",
        ("trainer.max_epochs=three",),
        r"error: config key 'trainer\.max_epochs': Value 'three' of type 'str' could not be converted to Integer",
    ),
    CliCase(
        "wrong-type-top-level",
        ("seed=abc",),
        r"error: config key 'seed': Value 'abc' of type 'str' could not be converted to Integer",
    ),
    CliCase(
        "unknown-key",
        ("trainer.max_epoch=3",),
        r"error: config key 'trainer\.max_epoch': Key 'max_epoch' not in 'TrainerConf'",
    ),
    CliCase(
        "unknown-key-added",
        ("+trainer.max_epoch=3",),
        r"error: config key 'trainer\.max_epoch': Key 'max_epoch' not in 'TrainerConf'",
    ),
    CliCase(
        "unknown-nested-key",
        ("model.trunk.hiden=[8]",),
        r"error: config key 'model\.trunk\.hiden': Key 'hiden' not in 'MLPTrunkConf'",
    ),
    CliCase(
        "unknown-nested-key-added",
        ("+model.trunk.hiden=[8]",),
        r"error: config key 'model\.trunk\.hiden': Key 'hiden' not in 'MLPTrunkConf'",
    ),
    CliCase(
        "task-name-with-a-dot",
        ("+task@model.tasks.a.b=regression",),
        r"error: config key 'model\.tasks\.a\.b': a task name cannot contain '\.' \(it would nest the task in "
        r"'model\.tasks\.a'\); name it without a dot, e\.g\. 'a_b'",
    ),
    CliCase(
        "negative-learning-rate",
        ("model.optimizer.lr=-1",),
        r"error: config key 'model\.optimizer\.lr': Invalid learning rate: -1(\.0)?",
    ),
    CliCase(
        "unknown-precision",
        ("trainer.precision=17",),
        r"error: config key 'trainer\.precision': Precision '?17'? is invalid\. Allowed precision values: .*",
    ),
    CliCase(
        "unknown-strategy",
        ("trainer.strategy=foo",),
        r"error: config key 'trainer\.strategy': You selected an invalid strategy name: `strategy='foo'`.*",
    ),
    CliCase(
        "metric-argument-refused",
        ("model.tasks.digit.metrics.acc.num_classes=-3",),
        r"error: config key 'model\.tasks\.digit\.metrics\.acc\.num_classes': Expected argument `num_classes` to be an "
        r"integer larger than 1, but got -3",
    ),
    CliCase(
        "override-syntax",
        ("seed=[1",),
        r"error: config key 'seed': cannot parse the override 'seed=\[1': no viable alternative at input '\[1'",
    ),
    CliCase(
        "checkpoint-name-with-equals",
        ("ckpt_path=out/epoch=0-step=2.ckpt",),
        r"error: config key 'ckpt_path': cannot parse the override 'ckpt_path=out/epoch=0-step=2\.ckpt': .*; quote a "
        r"value that holds '=': \"ckpt_path='out/epoch=0-step=2\.ckpt'\"",
    ),
    CliCase(
        "scheduled-task-removed",
        ("~model.tasks.recon", "weighting=scheduled"),
        r"error: weighting=scheduled: the experiment's scheduled_task='recon' is not a task of the model "
        r"\['digit', 'centre'\]; name the task the schedule drives with weighting\.task=<task> "
        r"\(or scheduled_task=<task>\)",
    ),
    CliCase(
        "class-loss-on-a-binary-head",
        ("+task@model.tasks.parity=binary", "loss@model.tasks.parity.loss=cross_entropy"),
        r"error: task 'parity': a loss over classes needs one output per class, the head has one \(output \(\d+, 1\) "
        r"float32, target \(\d+, 1\) float32, loss CrossEntropyLoss\): .* use a binary loss on one logit .*",
    ),
    CliCase(
        "group-not-in-defaults",  # Hydra's hint, on its second line, is kept
        ("hparams_search=digits_weights",),
        r"error: config: Could not override 'hparams_search'\. No match in the defaults list\. To append to your "
        r"default list use \+hparams_search=digits_weights",
    ),
    # -- resuming (issue 14) ------------------------------------------------------------------------
    CliCase(
        "resume-other-tasks",
        ("ckpt_path={ckpt}", "trainer.max_epochs=3", "~model.tasks.centre"),
        rf"error: ckpt_path '.*last\.ckpt' does not fit the configured model: the checkpoint holds {TASKS} and "
        r"weighting 'fixed'; the config asks for tasks digit \(10 outputs\), recon \(64 outputs\) and weighting "
        r"'fixed' \(the config's model lacks heads\.centre\.weight, heads\.centre\.bias\)",
    ),
    CliCase(
        "resume-other-weighting",
        ("ckpt_path={ckpt}", "trainer.max_epochs=3", "weighting=uncertainty"),
        rf"error: ckpt_path '.*last\.ckpt' does not fit the configured model: the checkpoint holds {TASKS} and "
        rf"weighting 'fixed'; the config asks for {TASKS} and weighting 'uncertainty' "
        r"\(the checkpoint lacks weighting\.log_var\)",
    ),
    CliCase(
        "resume-other-head-size",
        ("ckpt_path={ckpt}", "trainer.max_epochs=3", "model.tasks.digit.out_features=12"),
        r"error: ckpt_path '.*' does not fit the configured model: .*; the config asks for tasks digit \(12 outputs\), "
        r"recon \(64 outputs\), centre \(1 output\) and weighting 'fixed' \(heads\.digit\.weight is \[10, 64\] in the "
        r"checkpoint, \[12, 64\] in the config\)",
    ),
    CliCase(
        "resume-on-another-split",  # seed=1 draws another split: 68% of its test samples were trained on
        ("ckpt_path={ckpt}", "trainer.max_epochs=3", "seed=1"),
        r"error: DigitsDataModule: ckpt_path '.*last\.ckpt' was trained on another split of the data \(seed=0 there, "
        r"1 here\): resumed on this one, it would be validated and tested on samples it trained on; resume with the "
        r"same seed",
    ),
    CliCase(  # was accepted, and trained on at the checkpoint's learning rate
        "resume-with-another-learning-rate",
        ("ckpt_path={ckpt}", "trainer.max_epochs=3", "model.optimizer.lr=0.01"),
        r"error: ckpt_path '.*last\.ckpt' was trained with model\.optimizer\.lr=0\.003, the config asks for 0\.01: "
        r"a resumed run continues with the optimizer's state from the checkpoint, where this value would not take "
        r"effect; resume with model\.optimizer\.lr=0\.003",
    ),
    CliCase(  # was torch's KeyError: 'momentum' at the first step, after the checkpoint was loaded
        "resume-with-another-optimizer",
        ("ckpt_path={ckpt}", "trainer.max_epochs=3", "model.optimizer._target_=torch.optim.SGD"),
        r"error: ckpt_path '.*last\.ckpt' was trained with model\.optimizer\._target_=torch\.optim\.Adam, the "
        r"config asks for torch\.optim\.SGD: a resumed run continues the checkpoint's optimizer; resume with "
        r"model\.optimizer\._target_=torch\.optim\.Adam",
    ),
    CliCase(  # was "config key 'model.optimizer': '<=' not supported between instances of 'float' and 'str'"
        "optimizer-option-not-a-number",
        ("model.optimizer.lr=abc",),
        r"error: config key 'model\.optimizer\.lr': must be a number, got 'abc'",
    ),
    CliCase(
        "loss-target-that-does-not-exist",  # Hydra's three-line log of the failed import came first
        ("model.tasks.digit.loss._target_=torch.nn.Foo",),
        r"error: config key 'model\.tasks\.digit\.loss\._target_': cannot import 'torch\.nn\.Foo' "
        r"\(No module named 'torch\.nn\.Foo'\)",
    ),
    # -- found by trying the app from outside ---------------------------------------------------------
    CliCase(  # NumPy's range (seed_everything seeds NumPy): a ValueError traceback from Lightning before
        "seed-negative",
        ("seed=-1",),
        r"error: config key 'seed': must be an integer from 0 to 4294967295, got -1",
    ),
    CliCase(
        "seed-too-large",
        ("seed=4294967296",),
        r"error: config key 'seed': must be an integer from 0 to 4294967295, got 4294967296",
    ),
    CliCase(  # trained against targets on an 8 x 8 grid with a 12 x 12 heat map, and exited 0
        "heat-map-of-another-grid",
        ("experiment=loc_cls", "data.grid=8"),
        r"error: model\.tasks\.loc\.out_features is 144, but its target 'loc' has 64 classes with these data "
        r"settings \(LocClsDataModule\): the head must give 64 outputs",
    ),
    CliCase(  # a ValueError traceback from Hydra (not a HydraException), exit 1
        "group-set-to-null",
        ("logger=null",),
        r"error: config key 'logger': Config group override must be a string or a list\. Got NoneType "
        r"\('~logger' removes it\)",
    ),
    CliCase(  # exited 0 with an untrained model's metrics in a "completed" result.json, no checkpoint
        "no-epochs",
        ("trainer.max_epochs=${epochs}", "epochs=0"),  # as trainer=default sets it (trainer=debug sets its own)
        r"error: config key 'trainer\.max_epochs' \(or epochs, which sets it\): 0 trains nothing; give at least 1 "
        r"\(-1: no limit\)",
    ),
    CliCase(
        "no-steps",
        ("trainer.max_steps=0",),
        r"error: config key 'trainer\.max_steps': 0 trains nothing; give at least 1 \(-1: no limit\)",
    ),
    CliCase(  # an IndexError traceback after the whole training (trainer.validate returned [])
        "no-validation-batches",
        ("trainer.limit_val_batches=0",),
        r"error: config key 'trainer\.limit_val_batches': 0 leaves the run without validation, which it needs after "
        r"training \(result\.json's metrics, the checkpoints' monitor\)",
    ),
    CliCase(
        "no-test-batches",
        ("test=true", "trainer.limit_test_batches=0"),
        r"error: config key 'trainer\.limit_test_batches': 0 leaves the run without test, which it needs after "
        r"training \(test=false skips the test\)",
    ),
    CliCase(  # refused only after the whole training, by the loader
        "empty-test-split",
        ("test=true", "data.test_fraction=0"),
        r"error: config key 'data\.test_fraction': 0 leaves the test split empty, which the run needs after training "
        r"\(test=false skips the test\)",
    ),
    CliCase(
        "empty-validation-split",
        ("data.val_fraction=0",),
        r"error: config key 'data\.val_fraction': 0 leaves the validation split empty, which the run needs after "
        r"training \(result\.json's metrics, the checkpoints' monitor\)",
    ),
    CliCase(
        "strategy-spawning-processes-per-call",
        ("trainer.devices=2", "trainer.strategy=ddp_spawn"),
        r"error: config key 'trainer\.strategy': ddp_spawn starts new processes for each of fit, validate and test, "
        r"so each would rewrite csv/metrics\.csv and the fit's loss weights would stay in its processes; use "
        r"trainer\.strategy=ddp \(trainer=ddp_cpu on CPU\), which starts the processes once",
    ),
    CliCase(  # hydra/launcher=submitit_slurm without hydra-submitit-launcher: a RuntimeError traceback before
        "launcher-plugin-not-installed",
        (
            "hydra.mode=MULTIRUN",
            "hydra/launcher=submitit_slurm",
            "hydra.launcher._target_=hydra_plugins.no_such_launcher.x.Launcher",
        ),
        r"error: the Hydra plugin 'hydra_plugins\.no_such_launcher\.x\.Launcher' is not installed: "
        r"pip install no-such-launcher",
    ),
    # -- earlier issues ------------------------------------------------------------------------------
    CliCase(
        "unknown-task-in-weights",
        ("+weighting.weights={digit:1.0,colour:2.0}",),
        r"error: weighting 'fixed': weights names unknown task\(s\) \['colour'\]; "
        r"the tasks are \['digit', 'recon', 'centre'\]",
    ),
    CliCase(
        "weights-of-the-wrong-length",
        ("weighting.weights=[1,2]",),
        r"error: weighting 'fixed': weights has 2 values for 3 tasks \['digit', 'recon', 'centre'\]",
    ),
    CliCase(
        "unknown-option",
        ("weighting=fixd",),
        r"error: config key 'weighting': Could not find 'weighting/fixd'\. "
        r"Available options: .*\bfixed\b.*\blearnable\b.*",
    ),
    CliCase(
        "unknown-option-of-a-placed-group",
        ("loss@model.tasks.recon.loss=l2",),
        r"error: config key 'loss@model\.tasks\.recon\.loss': Could not find 'loss/l2'\. "
        r"Available options: .*\bmse\b.*",
    ),
    CliCase(
        "wrong-type-many",
        ("trainer.max_epochs=many",),
        r"error: config key 'trainer\.max_epochs': Value 'many' of type 'str' could not be converted to Integer",
    ),
    CliCase("missing-checkpoint", ("ckpt_path={tmp}/nope.ckpt",), r"error: ckpt_path '.*nope\.ckpt': no such file"),
    CliCase(
        "checkpoint-folder",
        ("ckpt_path={tmp}",),
        r"error: ckpt_path '.*' is a folder; give the checkpoint file \(e\.g\. checkpoints/last\.ckpt\)",
    ),
    CliCase(
        "corrupt-checkpoint",
        ("ckpt_path={tmp}/corrupt.ckpt",),
        r"error: ckpt_path '.*corrupt\.ckpt' is not a readable PyTorch checkpoint: the file is not in torch\.save's "
        r"format",
    ),
    CliCase(
        "nothing-left-to-train",
        ("ckpt_path={ckpt}", "trainer.max_epochs=2"),
        r"error: ckpt_path '.*last\.ckpt' has trained 2 epochs already and trainer\.max_epochs=2 leaves nothing to "
        r"train: set trainer\.max_epochs above 2 to continue",
    ),
    CliCase(
        "baseline-of-an-unknown-task",
        ("baseline_of=colour",),
        r"error: baseline_of='colour': the model has no such task; its tasks are \['digit', 'recon', 'centre'\]",
    ),
    CliCase(
        "primary-metric-not-a-metric",
        ("model.tasks.digit.primary=f1",),
        r"error: model\.tasks\.digit\.primary 'f1' is not one of its metrics \['acc'\]",
    ),
    CliCase(
        "unknown-head",
        ("model.tasks.digit.head=conv",),
        r"error: model\.tasks\.digit\.head must be 'linear' or 'heatmap', got 'conv'",
    ),
    CliCase(
        "unknown-activation",
        ("model.trunk.activation=swish",),
        r"error: model\.trunk: unknown activation 'swish'; available: gelu, relu, silu, tanh",
    ),
    # -- found by the core before or at the first step (issue 14) ---------------------------------
    CliCase(
        "head-smaller-than-the-classes",
        ("trainer=debug", "model.tasks.digit.out_features=5"),
        r"error: task 'digit': class indices must be in \[0, 4\] for a head of 5 outputs, the target has \d; "
        r"give the head as many outputs as there are classes",
    ),
    CliCase(
        "schedule-out-of-range",
        ("trainer=debug", "weighting=scheduled", "schedule@weighting.schedule=linear", "weighting.schedule.end=-0.5"),
        r"error: weighting 'scheduled': the scheduled weight at t=[0-9.]+ for task 'recon' must be finite and >= 0, "
        r"got -[0-9.e-]+ \(checked over the planned run, before the first step\)",
    ),
    CliCase(
        "batch-size",
        ("data.batch_size=0",),
        r"error: DigitsDataModule: batch_size must be >= 1, got 0",
    ),
    CliCase(
        "unimportable-target",
        ("+callbacks.extra._target_=nowhere.Callback",),
        r"error: config key 'callbacks\.extra\._target_': cannot import 'nowhere\.Callback' "
        r"\(No module named 'nowhere'\)",
    ),
]


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default experiment, 2 epochs of ``trainer=debug``: the checkpoint of the resume rows."""
    out = tmp_path_factory.mktemp("digits")
    code, err = run_main([*TINY, "trainer.max_epochs=2", f"hydra.run.dir={out}"])
    assert code == 0, err
    return out / "checkpoints" / "last.ckpt"


def run_main(argv: list[str]) -> tuple[int, str]:
    """``multiloss-train argv`` in this process: its exit status and what it wrote to stderr."""
    saved, job = sys.argv, HydraConfig.instance().cfg
    sys.argv = ["multiloss-train", *argv]
    train._task_started = False
    GlobalHydra.instance().clear()
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            train.main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            sys.argv = saved
            GlobalHydra.instance().clear()
            # `--cfg job` composes without running a job: its Hydra config, with no output folder,
            # would be the "job running now" of the later tests' callbacks.
            HydraConfig.instance().cfg = job
    return code, err.getvalue()


def check_cli(case: CliCase, tmp_path: Path, checkpoint: Path | None) -> None:
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint")
    argv = [arg.replace("{tmp}", str(tmp_path)).replace("{ckpt}", str(checkpoint)) for arg in case.argv]
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    code, err = run_main([*TINY, *argv, f"hydra.run.dir={tmp_path / 'run'}"])
    assert os.environ.get("HYDRA_FULL_ERROR") == full_error  # main() sets it while composing, then puts it back
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"expected one error: line, got {errors}\n{err[-3000:]}"
    assert re.fullmatch(case.line, errors[0]), f"{errors[0]!r} does not match {case.line!r}"
    assert code == case.status, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "[hydra.utils]" not in err, err[-3000:]  # Hydra's own multi-line log of a failed import


@pytest.mark.parametrize("case", CLI_CASES, ids=[case.id for case in CLI_CASES])
def test_cli(case: CliCase, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    checkpoint = request.getfixturevalue("digits_checkpoint") if any("{ckpt}" in a for a in case.argv) else None
    check_cli(case, tmp_path, checkpoint)


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("trainer.max_epoch=3", "error: config key 'trainer.max_epoch': Key 'max_epoch' not in 'TrainerConf'"),
        (  # Hydra's logger printed three lines of its own before (a handler of this process's stderr)
            "model.tasks.digit.loss._target_=torch.nn.Foo",
            "error: config key 'model.tasks.digit.loss._target_': cannot import 'torch.nn.Foo' "
            "(No module named 'torch.nn.Foo')",
        ),
    ],
)
def test_the_console_script_prints_the_same_one_line(override: str, line: str, tmp_path: Path) -> None:
    """The rows above run ``main()`` in this process; the installed script behaves the same."""
    script = Path(sys.executable).parent / "multiloss-train"
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "LOCAL_RANK", "WORLD_SIZE", "RANK")}
    proc = subprocess.run(
        [str(script), override, "hydra.run.dir=run"],
        cwd=tmp_path,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == line + "\n"
    assert "hydra.utils" not in proc.stdout, proc.stdout


def test_a_checkpoint_that_cannot_resume_is_the_only_output(tmp_path: Path, digits_checkpoint: Path) -> None:
    # The Trainer was made before the checks, so Lightning's "GPU available: ..." lines came first.
    script = Path(sys.executable).parent / "multiloss-train"
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "LOCAL_RANK", "WORLD_SIZE", "RANK")}
    for extra in (["trainer.max_epochs=2"], ["trainer.max_epochs=3", "model.tasks.digit.out_features=12"]):
        proc = subprocess.run(
            [str(script), f"ckpt_path={digits_checkpoint}", *extra, "hydra.run.dir=run"],
            cwd=tmp_path,
            env={**env, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.startswith(f"error: ckpt_path '{digits_checkpoint}' ") and proc.stderr.count("\n") == 1, (
            proc.stderr
        )


def test_the_cli_ids_are_unique() -> None:
    assert len({case.id for case in CLI_CASES}) == len(CLI_CASES)


@dataclass(frozen=True)
class ApiCase:
    """``call()`` raises ``error`` whose message is one line matching ``message`` (a regex)."""

    id: str
    call: Callable[[], object]
    message: str
    error: type[BaseException] = MultiLossError


def logger_without_its_package(save_dir: str) -> object:
    """Stands for a logger whose optional package is not installed (TensorBoardLogger without tensorboard)."""
    raise ModuleNotFoundError("Neither `tensorboard` nor `tensorboardX` is available. Try `pip install`ing either.")


API_CASES = [
    ApiCase(
        "target-that-does-not-exist",  # an ImportError too, but Hydra's own: a typo, not a missing package
        lambda: config.call({"_target_": "lightning.pytorch.loggers.TensorBoardLoggr"}, "logger.tb"),
        r"config key 'logger\.tb\._target_': cannot import 'lightning\.pytorch\.loggers\.TensorBoardLoggr' "
        r"\(Are you sure that 'TensorBoardLoggr' is importable from module 'lightning\.pytorch\.loggers'\?\)",
    ),
    ApiCase(
        "logger-without-its-package",  # was Hydra's multi-line instantiation error
        lambda: config.call(
            {"_target_": f"{__name__}.logger_without_its_package", "save_dir": "."}, "logger.tensorboard"
        ),
        r"config key 'logger\.tensorboard': tests\.test_bad_inputs\.logger_without_its_package needs a package: "
        r"Neither `tensorboard` nor `tensorboardX` is available\. Try `pip install`ing either\.",
    ),
    ApiCase(
        "reuse-jacobian-not-a-bool",
        lambda: ToyNet("upgrad", reuse_jacobian="no"),
        r"reuse_jacobian must be True or False, got 'no'",
    ),
    ApiCase(
        "unknown-weighting",
        lambda: create_weighting("fixd"),
        r"unknown weighting 'fixd'; available: .*\bfixed\b.*",
    ),
    ApiCase(
        "unknown-weighting-argument",
        lambda: create_weighting("fixed", weight=[1.0]),
        r"weighting 'fixed' has no hyper-parameter\(s\) \['weight'\]; it accepts \['weights'\]",
    ),
    ApiCase(
        "corrupt-run-result",
        lambda: RunResult.from_dict({"status": "completed", "metrics": {"cls": {"acc": "high"}}}, "runs/0/result.json"),
        r"corrupt runs/0/result\.json: 'metrics': metric 'acc' of task 'cls' must be a number, got 'high'",
    ),
    ApiCase(
        "metric-function",
        lambda: Task("reg", nn.MSELoss(), metrics={"mae": lambda output, target: 0.0}),
        r"task 'reg': metric 'mae' must be a torchmetrics Metric or MetricCollection instance "
        r"\(e\.g\. torchmetrics\.Accuracy\(\.\.\.\)\), "
        r"got function",
    ),
    ApiCase(
        "metric-class",
        lambda: Task("reg", nn.MSELoss(), metrics={"mae": torchmetrics.MeanAbsoluteError}),
        r"task 'reg': metric 'mae' must be a torchmetrics Metric or MetricCollection instance .*, "
        r"got the class MeanAbsoluteError",
    ),
    ApiCase(
        "ignore-value-string",
        lambda: Task("reg", nn.MSELoss(), ignore_value="none"),  # type: ignore[arg-type]
        r"task 'reg': ignore_value must be a number \(e\.g\. -100 or float\('nan'\)\) or None, got 'none'",
    ),
    ApiCase(
        "fixed-list-weight-names-the-task",
        lambda: Fixed([1.0, -1.0]).bind(["cls", "reg"]),
        r"weighting 'fixed': weight for task 'reg' must be finite and >= 0, got -1\.0",
    ),
    # Weights that a float32 buffer cannot hold: 1e40 trained as inf (stopped at the first step),
    # 1e-50 as 0 (every step a zero loss, silently); a set took its hash order.
    ApiCase(
        "fixed-weight-beyond-float32",
        lambda: Fixed([1e40, 1.0]).bind(["cls", "reg"]),
        r"weighting 'fixed': the weights \{'cls': 1e\+40, 'reg': 1\.0\} are \[inf, 1\.0\] in torch\.float32, "
        r"beyond its range",
    ),
    ApiCase(
        "fixed-weights-zero-in-float32",
        lambda: Fixed([1e-50, 0.0]).bind(["cls", "reg"]),
        r"weighting 'fixed': the weights .* are \[0\.0, 0\.0\] in torch\.float32, all 0 once rounded: "
        r"nothing would train",
    ),
    ApiCase(
        "fixed-weights-a-set",
        lambda: Fixed({1.0, 0.1}),  # type: ignore[arg-type]
        r"weighting 'fixed': weights must be a list \(task order\) or a dict by task name, got a set .*, "
        r"which has no order",
    ),
    ApiCase(
        "fixed-weights-a-numpy-number",
        lambda: Fixed(np.float32(0.5)),  # type: ignore[arg-type]
        r"weighting 'fixed': weights must be a list \(task order\) or a dict by task name, got np\.float32\(0\.5\)",
    ),
    ApiCase(
        "schedule-out-of-range-before-training",
        lambda: planned(Scheduled({"reg": Linear(1.0, -0.5, duration=1.0)}, unit="fraction"), total_steps=10),
        # 1 - 1.5 t < 0 from t = 2/3 on; of the 10 planned steps, step 7 (t = 0.7) is the first there.
        r"weighting 'scheduled': the scheduled weight at t=0\.7 for task 'reg' must be finite and >= 0, got .*"
        r" \(checked over the planned run, before the first step\)",
    ),
    ApiCase(
        "float-class-indices",
        lambda: losses_of(targets={"cls": torch.zeros(4)}),
        r"task 'cls': class indices must be integers \(torch\.long\); got output \(4, 3\) float32, "
        r"target \(4,\) float32, loss CrossEntropyLoss: convert the target with \.long\(\)",
    ),
    ApiCase(
        "class-target-with-a-column",
        lambda: losses_of(targets={"cls": torch.zeros(4, 1, dtype=torch.long)}),
        r"task 'cls': the target must hold one class index per sample, shape \(4,\) \(or class probabilities "
        r"of the output's shape\); got output \(4, 3\) float32, target \(4, 1\) int64, loss CrossEntropyLoss",
    ),
    ApiCase(
        "regression-target-too-wide",
        lambda: losses_of(targets={"reg": torch.zeros(4, 3)}),
        r"task 'reg': the target's shape must equal the output's; got output \(4, 2\) float32, target \(4, 3\) "
        r"float32, loss MSELoss\. Reshape the target \(or the head's output\) to match",
    ),
    ApiCase(
        "regression-target-that-broadcasts",
        lambda: losses_of(targets={"reg": torch.zeros(4, 1)}),
        r"task 'reg': the target's shape must equal the output's; got output \(4, 2\) float32, target \(4, 1\) "
        r"float32, loss MSELoss; it would broadcast to a wrong loss\. "
        r"Reshape the target \(or the head's output\) to match",
    ),
    ApiCase(
        "class-loss-on-one-output",  # always 0: the head would never learn
        lambda: Task("parity", nn.CrossEntropyLoss()).check_target(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long)),
        r"task 'parity': a loss over classes needs one output per class, the head has one \(output \(4, 1\) "
        r"float32, target \(4,\) int64, loss CrossEntropyLoss\): a softmax over one class is always 1, so the loss "
        r"is always 0 and the head never learns; for a yes/no task use a binary loss on one logit "
        r"\(BCEWithLogitsLoss; multiloss-train: loss@model.tasks.parity.loss=bce\)",
    ),
    ApiCase(
        "class-index-outside-the-head",
        lambda: losses_of(targets={"cls": torch.tensor([0, 1, 2, 7])}),
        r"task 'cls': class indices must be in \[0, 2\] for a head of 3 outputs, the target has 7; "
        r"give the head as many outputs as there are classes",
    ),
    ApiCase(
        "partial-loss-target-that-broadcasts",  # Hydra's `_partial_: true` loss: was not recognised
        lambda: Task("reg", functools.partial(F.huber_loss, delta=0.5)).check_target(torch.zeros(4, 1), torch.zeros(4)),
        r"task 'reg': the target's shape must equal the output's; got output \(4, 1\) float32, target \(4,\) "
        r"float32, loss huber_loss; it would broadcast to a wrong loss\. "
        r"Reshape the target \(or the head's output\) to match",
    ),
    ApiCase(
        "huber-integer-target",  # was torch's "Found dtype Long but expected Float" in Lightning's backward
        lambda: Task("reg", nn.HuberLoss()).check_target(torch.zeros(4, 2), torch.zeros(4, 2, dtype=torch.long)),
        r"task 'reg': the Huber loss needs a floating-point target; got output \(4, 2\) float32, target \(4, 2\) "
        r"int64, loss HuberLoss: convert the target with \.float\(\)",
    ),
    ApiCase(
        "mask-of-another-length",  # was torch's "shape '[4, -1]' is invalid for input of size 3"
        lambda: Task("reg", nn.MSELoss(), mask="has_reg").select(
            torch.zeros(4, 2), torch.zeros(4, 2), {"has_reg": torch.ones(3, dtype=torch.bool)}
        ),
        r"task 'reg': the mask 'has_reg' must hold one entry per sample \(batch first\), got shape \(3,\) "
        r"for 4 samples of target 'reg'",
    ),
    ApiCase(
        "mask-of-several-entries-per-sample",  # a per-element mask: was taken as "every entry true"
        lambda: Task("reg", nn.MSELoss(), mask="has_reg").select(
            torch.zeros(4, 3), torch.zeros(4, 3), {"has_reg": torch.ones(4, 3, dtype=torch.bool)}
        ),
        r"task 'reg': the mask 'has_reg' must hold one entry per sample \(batch first\), got shape \(4, 3\) "
        r"for 4 samples of target 'reg'; to leave out single elements of a sample, give the task a loss that "
        r"masks them",
    ),
    ApiCase(
        "checkpoint-folder",
        lambda: train.check_checkpoint("."),
        r"ckpt_path '.*' is a folder; give the checkpoint file \(e\.g\. checkpoints/last\.ckpt\)",
    ),
]


def planned(weighting: Weighting, total_steps: int) -> None:
    """Bind a two-task weighting and show it the planned run, as the Callback does before step 1."""
    weighting.bind(["cls", "reg"])
    weighting.check_plan(Progress(step=0, epoch=0, total_steps=total_steps))


def losses_of(targets: dict[str, Tensor]) -> Tensor:
    """The task losses of ToyNet (cls: 3 classes, reg: 2 values) on 4 samples, with these targets."""
    model = ToyNet()
    batch = {"x": torch.zeros(4, 8), "cls": torch.zeros(4, dtype=torch.long), "reg": torch.zeros(4, 2), **targets}
    return model.task_losses(model(batch["x"]), batch)


def check_api(case: ApiCase) -> None:
    with pytest.raises(case.error) as info:
        case.call()
    message = str(info.value)
    assert "\n" not in message, message
    assert re.fullmatch(case.message, message), f"{message!r} does not match {case.message!r}"


@pytest.mark.parametrize("case", API_CASES, ids=[case.id for case in API_CASES])
def test_api(case: ApiCase) -> None:
    check_api(case)


def test_the_api_ids_are_unique() -> None:
    assert len({case.id for case in API_CASES}) == len(API_CASES)


def test_the_resolved_job_config_prints(capsys: pytest.CaptureFixture[str]) -> None:
    # `--cfg job --resolve` (to see the trainer.max_epochs that `epochs` sets) failed for every config:
    # output_dir, Hydra's, is None where Hydra's resolvers are not at hand.
    code, err = run_main(["--cfg", "job", "--resolve", "epochs=7"])
    printed = capsys.readouterr().out
    assert code == 0, err[-3000:]
    assert "output_dir: null" in printed and "max_epochs: 7" in printed


def test_a_partial_class_loss_keeps_its_ignore_index() -> None:
    # functools.partial(F.cross_entropy, ignore_index=255): 255 marks an unlabelled sample, not a class.
    task = Task("cls", functools.partial(F.cross_entropy, ignore_index=255))
    task.check_class_range(torch.zeros(4, 3), torch.tensor([0, 1, 255, 2]))
    with pytest.raises(MultiLossError, match=r"class indices must be in \[0, 2\] .* the target has 7"):
        task.check_class_range(torch.zeros(4, 3), torch.tensor([0, 1, 255, 7]))


def test_one_weighting_object_in_two_models_is_refused() -> None:
    # A sweep loop reusing `w = create_weighting("uncertainty")`: the second model started from the
    # first one's learned log-variances.
    weighting = create_weighting("uncertainty")
    first = ToyNet(weighting)
    refused = (
        r"^weighting 'uncertainty' was configured in another module already; .*create one weighting per model "
        r"\(.*copy\.copy\(weighting\), which is unclaimed\)$"
    )
    with pytest.raises(MultiLossError, match=refused):
        ToyNet(weighting)
    first.configure_multitask(list(first.tasks), weighting)  # the same module may configure it again
    copied = copy.deepcopy(first)  # a copy holds a copy of the weighting, its own
    assert copied.weighting is not weighting
    copied.configure_multitask(list(copied.tasks), copied.weighting)
    pickled = pickle.loads(pickle.dumps(first))
    pickled.configure_multitask(list(pickled.tasks), pickled.weighting)
    for other in (copied, pickled):  # a copy is another model: the original's weighting is not its own
        with pytest.raises(MultiLossError, match=refused):
            other.configure_multitask(list(other.tasks), weighting)
    del first, copied, pickled
    gc.collect()
    with pytest.raises(MultiLossError, match=refused):  # its module gone, it still holds that module's state
        ToyNet(weighting)
    ToyNet(copy.copy(weighting))  # what the message offers: a copy is unclaimed


def test_a_learning_rate_changed_by_training_resumes(tmp_path: Path, digits_checkpoint: Path) -> None:
    # The optimizer's state may hold another lr than the config (a scheduler or a callback changed
    # it): the configs are compared, not the state, so the same config resumes.
    saved = torch.load(digits_checkpoint, weights_only=True)
    for group in saved["optimizer_states"][0]["param_groups"]:
        group["lr"] = group["lr"] / 2
    changed = tmp_path / "halved.ckpt"
    torch.save(saved, changed)
    code, err = run_main([*TINY, f"ckpt_path={changed}", "trainer.max_epochs=3", f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 0, err[-3000:]
