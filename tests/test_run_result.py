"""``result.json`` from any app: ``LossWeightingCallback(result_file=...)`` and the Hydra ``RunResultCallback``.

The metrics written are checked against a plain-PyTorch evaluation of the trained model, the
weights against the fixed weights given, and the sweep's files against what ``multiloss-report``
makes of them.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_multiloss import LossWeightingCallback
from lightning_multiloss.app.report import make_report
from lightning_multiloss.results import RunResult
from lightning_multiloss.weighting import Fixed, Learnable
from tests._models import ToyDataset, ToyNet, quiet_trainer, toy_loader
from tests.test_train_cli import clean_env

WEIGHTS = [0.25, 2.0]  # cls, reg


def plain_metrics(model: ToyNet, n: int, seed: int) -> dict[str, dict[str, float]]:
    """Accuracy, MSE and the unweighted losses of ``model`` on ``ToyDataset(n, seed)``, in plain PyTorch."""
    data = ToyDataset(n, seed)
    with torch.no_grad():
        out = model(data.x)
    acc = (out["cls"].argmax(1) == data.cls).float().mean().item()
    ce = torch.nn.functional.cross_entropy(out["cls"], data.cls).item()
    mse = ((out["reg"] - data.reg) ** 2).mean().item()
    return {"cls": {"acc": acc, "loss": ce}, "reg": {"mse": mse, "loss": mse}}


def assert_close(found: dict[str, dict[str, float]], expected: dict[str, dict[str, float]]) -> None:
    assert found.keys() == expected.keys()
    for task, metrics in expected.items():
        assert found[task].keys() == metrics.keys(), task
        for name, value in metrics.items():
            assert found[task][name] == pytest.approx(value, rel=1e-5, abs=1e-6), f"{task}/{name}"


def test_result_file_holds_the_final_metrics_weights_and_directions(tmp_path: Path) -> None:
    model = ToyNet(Fixed(WEIGHTS), metrics=True)
    trainer = quiet_trainer(
        max_epochs=2, default_root_dir=str(tmp_path), callbacks=[LossWeightingCallback(result_file="result.json")]
    )
    # Validation and test sets of one batch each: their epoch means are the plain means.
    trainer.fit(model, toy_loader(64), toy_loader(32, batch_size=32, seed=1))
    after_fit = RunResult.read(str(tmp_path / "result.json"))
    assert after_fit.status == "completed" and after_fit.evaluated_on == "val"
    assert_close(after_fit.metrics, plain_metrics(model, 32, 1))
    trainer.test(model, toy_loader(48, batch_size=48, seed=2))

    result = RunResult.read(str(tmp_path / "result.json"))
    assert result.status == "completed" and result.error is None
    assert result.evaluated_on == "test" and result.weighting == "fixed" and result.world_size == 1
    assert_close(result.metrics, plain_metrics(model, 48, 2))
    assert_close(result.val_metrics, plain_metrics(model, 32, 1))
    assert result.weights == {"cls": 0.25, "reg": 2.0}
    # torchmetrics: accuracy is higher-better, MSE lower-better; a task's first metric is its primary.
    assert result.directions == {"cls": {"acc": "max", "loss": "min"}, "reg": {"mse": "min", "loss": "min"}}
    assert result.primary == {"cls": "acc", "reg": "mse"}
    assert result.output_dir == str(tmp_path) and (result.overrides, result.config_key) == ([], "")

    report = make_report([str(tmp_path)])
    (row,) = report.experiments[0].rows
    assert row.metrics["cls"].mean == pytest.approx(plain_metrics(model, 48, 2)["cls"]["acc"])


class FailingNet(ToyNet):
    """Raises ``error`` in the second epoch."""

    error: BaseException = RuntimeError("the data ran dry")

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.current_epoch == 1:
            raise self.error
        return super().training_step(batch, batch_idx)


def test_a_failure_inside_fit_is_recorded_with_its_error(tmp_path: Path) -> None:
    trainer = quiet_trainer(
        max_epochs=3, default_root_dir=str(tmp_path), callbacks=[LossWeightingCallback(result_file="run/result.json")]
    )
    with pytest.raises(RuntimeError, match="the data ran dry"):
        trainer.fit(FailingNet(Fixed(WEIGHTS), metrics=True), toy_loader(32), toy_loader(16))
    result = RunResult.read(str(tmp_path / "run/result.json"))
    assert result.status == "failed" and result.error == "RuntimeError: the data ran dry"
    assert result.primary == {"cls": "acc", "reg": "mse"} and result.metrics == {}


def test_ctrl_c_inside_fit_is_recorded_as_interrupted(tmp_path: Path) -> None:
    model = FailingNet(Fixed(WEIGHTS), metrics=True)
    model.error = KeyboardInterrupt()
    trainer = quiet_trainer(
        max_epochs=3, default_root_dir=str(tmp_path), callbacks=[LossWeightingCallback(result_file="result.json")]
    )
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown ignores SIGINT, then exits
            trainer.fit(model, toy_loader(32), toy_loader(16))
    finally:
        signal.signal(signal.SIGINT, handler)
    result = RunResult.read(str(tmp_path / "result.json"))
    assert (result.status, result.error) == ("interrupted", None)


class FailOnce(FailingNet):
    """Raises as ``FailingNet`` while ``failing``."""

    failing = True

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.failing:
            return super().training_step(batch, batch_idx)
        return ToyNet.training_step(self, batch, batch_idx)


def test_the_same_trainer_fitting_on_after_a_failure_records_how_it_ends(tmp_path: Path) -> None:
    # A notebook's trainer.fit again after an error: the run completed, and result.json said "failed".
    model = FailOnce(Fixed(WEIGHTS), metrics=True)
    trainer = quiet_trainer(
        max_epochs=2, default_root_dir=str(tmp_path), callbacks=[LossWeightingCallback(result_file="result.json")]
    )
    with pytest.raises(RuntimeError, match="the data ran dry"):
        trainer.fit(model, toy_loader(32), toy_loader(16))
    assert RunResult.read(str(tmp_path / "result.json")).status == "failed"
    model.failing = False
    trainer.fit(model, toy_loader(32), toy_loader(16))
    assert trainer.current_epoch == 2
    result = RunResult.read(str(tmp_path / "result.json"))
    assert (result.status, result.error) == ("completed", None)
    assert_close(result.metrics, plain_metrics(model, 16, 0))


def test_the_recorded_weights_are_those_of_the_last_step_or_none(tmp_path: Path) -> None:
    # A fit with no step (max_time, or a finished run resumed) recorded last_weights' initial ones.
    learnable = ToyNet(Learnable(init=0.3), metrics=True)
    callbacks = [LossWeightingCallback(result_file="a/result.json")]
    quiet_trainer(max_time={"seconds": 0}, default_root_dir=str(tmp_path), callbacks=callbacks).fit(
        learnable, toy_loader(32), toy_loader(16)
    )
    assert RunResult.read(str(tmp_path / "a/result.json")).weights == {}
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    model = ToyNet(Learnable(init=0.3), metrics=True)
    callbacks = [LossWeightingCallback(result_file="b/result.json"), saver]
    trainer = quiet_trainer(
        max_epochs=1, default_root_dir=str(tmp_path), callbacks=callbacks, enable_checkpointing=True
    )
    trainer.fit(model, toy_loader(32), toy_loader(16))
    alpha = model.weighting.last_weights.tolist()  # the first (and only) fit's last step's
    assert alpha != [1.0, 1.0]
    resumed = ToyNet(Learnable(init=0.3), metrics=True)
    callbacks = [LossWeightingCallback(result_file="c/result.json")]
    trainer = quiet_trainer(max_epochs=1, default_root_dir=str(tmp_path), callbacks=callbacks)
    trainer.fit(resumed, toy_loader(32), toy_loader(16), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == 2  # no step left to take
    recorded = RunResult.read(str(tmp_path / "c/result.json")).weights
    assert list(recorded.values()) == pytest.approx(alpha)


def test_without_a_validation_the_missing_metric_is_named_until_a_test_logs_it(tmp_path: Path) -> None:
    model = ToyNet(Fixed(WEIGHTS), metrics=True)
    trainer = quiet_trainer(
        max_epochs=1, default_root_dir=str(tmp_path), callbacks=[LossWeightingCallback(result_file="result.json")]
    )
    trainer.fit(model, toy_loader(32))  # no validation data
    result = RunResult.read(str(tmp_path / "result.json"))
    assert result.status == "failed"
    assert result.error is not None and "['cls/acc', 'reg/mse']" in result.error
    trainer.test(model, toy_loader(16, batch_size=16, seed=3))
    result = RunResult.read(str(tmp_path / "result.json"))
    assert result.status == "completed" and result.error is None
    assert_close(result.metrics, plain_metrics(model, 16, 3))


# -- the Hydra callback -------------------------------------------------------------------------
def sweep_app(config_dir: Path):  # type: ignore[no-untyped-def]
    """A user's Hydra app (no multiloss-train): it trains the toy model, or fails before training for seed 3."""

    @hydra.main(version_base="1.3", config_path=str(config_dir), config_name="app")
    def app(cfg: DictConfig) -> float:
        if cfg.seed == 3:
            raise ValueError("no data for seed 3")
        torch.manual_seed(cfg.seed)
        model = ToyNet(Fixed(WEIGHTS), metrics=True, seed=cfg.seed)
        trainer = quiet_trainer(max_epochs=1, default_root_dir=cfg.out)
        trainer.fit(model, toy_loader(32, seed=cfg.seed), toy_loader(16, batch_size=16, seed=10))
        objective = float(trainer.callback_metrics["val/acc/cls"])
        trainer.test(model, toy_loader(16, batch_size=16, seed=11))
        (Path(cfg.out) / "plain.json").write_text(json.dumps(plain_metrics(model, 16, 11)))
        return objective

    return app


def test_hydra_callback_writes_each_job_of_a_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "app.yaml").write_text(
        "seed: 0\n"
        "out: ${hydra:runtime.output_dir}\n"
        "hydra:\n"
        "  job:\n"
        "    name: toy_app\n"
        "  sweep:\n"
        f"    dir: {tmp_path / 'sweep'}\n"
        "    subdir: ${hydra.job.num}\n"
        "  callbacks:\n"
        "    run_result:\n"
        "      _target_: lightning_multiloss.hydra_callbacks.RunResultCallback\n"
    )
    monkeypatch.setattr(sys, "argv", ["app.py", "-m", "seed=1,2,3", "hydra/job_logging=disabled"])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit):  # Hydra reports the failed job after the sweep, and exits
        sweep_app(tmp_path)()
    GlobalHydra.instance().clear()
    assert "no data for seed 3" in capsys.readouterr().err

    results = {job: RunResult.read(str(tmp_path / "sweep" / job / "result.json")) for job in ("0", "1", "2")}
    for job, seed in (("0", 1), ("1", 2)):
        result = results[job]
        assert result.status == "completed", result.error
        assert (result.seed, result.overrides, result.config_key) == (seed, [f"seed={seed}"], "")
        assert result.experiment == "toy_app"  # the job's name (the app has no experiment group)
        assert result.output_dir == str(tmp_path / "sweep" / job)
        assert_close(result.metrics, json.loads((tmp_path / "sweep" / job / "plain.json").read_text()))
        assert result.weights == {"cls": 0.25, "reg": 2.0}
    failed = results["2"]
    assert (failed.status, failed.error, failed.seed) == ("failed", "ValueError: no data for seed 3", 3)

    report = make_report([str(tmp_path / "sweep")])
    assert report.counts["completed"] == 2 and report.counts["failed"] == 1
    (row,) = report.experiments[0].rows  # two seeds of one configuration
    assert row.seeds == [1, 2]
    accs = [results[job].metrics["cls"]["acc"] for job in ("0", "1")]
    assert row.metrics["cls"].mean == pytest.approx(sum(accs) / 2)
    (problem,) = report.problems
    assert problem.error == "ValueError: no data for seed 3"


@pytest.mark.slow
def test_under_ddp_rank_zero_writes_the_metrics_of_the_whole_split(tmp_path: Path) -> None:
    """Two CPU processes (Lightning starts rank 1 by re-running the Hydra app): one result.json, global metrics."""
    env = clean_env()
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    script = Path(__file__).parent / "scripts" / "hydra_result_ddp.py"
    proc = subprocess.run(
        [sys.executable, str(script), "hydra.run.dir=run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = RunResult.read(str(tmp_path / "run" / "result.json"))
    assert (result.status, result.world_size, result.seed, result.experiment) == ("completed", 2, 5, "ddp_app")
    plain = json.loads((tmp_path / "run" / "plain.json").read_text())
    assert_close(result.metrics, plain["test"])
    assert_close(result.val_metrics, plain["val"])
    assert result.weights == {"cls": 0.25, "reg": 2.0}
    assert result.pid == plain["pid"]  # written by rank 0 alone


def failed_single_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: str, callbacks: list[Any], metrics: bool = False
) -> RunResult:
    """One job of a Hydra app with the run_result callback (its ``options``, YAML lines) that fits
    ToyNet with ``callbacks``; the job must fail before training. Its result.json."""
    (tmp_path / "app.yaml").write_text(
        "out: ${hydra:runtime.output_dir}\n"
        "hydra:\n"
        f"  run:\n    dir: {tmp_path / 'run'}\n"
        "  callbacks:\n"
        "    run_result:\n"
        "      _target_: lightning_multiloss.hydra_callbacks.RunResultCallback\n" + options
    )
    trained: list[int] = []

    @hydra.main(version_base="1.3", config_path=str(tmp_path), config_name="app")
    def app(cfg: DictConfig) -> None:
        trainer = quiet_trainer(max_epochs=1, default_root_dir=cfg.out, callbacks=callbacks)
        trainer.fit(ToyNet(Fixed(WEIGHTS), metrics=metrics), toy_loader(32))
        trained.append(trainer.global_step)

    monkeypatch.setattr(sys, "argv", ["app.py", "hydra/job_logging=disabled"])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit):  # Hydra reports the job's error and exits
        app()
    GlobalHydra.instance().clear()
    assert trained == []
    result = RunResult.read(str(tmp_path / "run" / "result.json"))
    assert result.status == "failed"
    return result


def test_a_result_file_beside_the_hydra_run_result_callback_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Callback filled its own file alone: the job's result.json said "failed" for a completed
    # run, and the report counted the one run twice.
    callback = LossWeightingCallback(plot=False, result_file="res/result.json")
    result = failed_single_job(tmp_path, monkeypatch, "", [callback])
    assert result.error is not None and re.search(
        r"^MultiLossError: LossWeightingCallback\(result_file='res/result\.json'\) writes .*: one run would be "
        r"recorded twice",
        result.error,
    )
    assert not (tmp_path / "run" / "res" / "result.json").exists()


def test_baseline_of_set_by_each_experiment_of_a_sweep_is_recorded_per_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hydra builds its callbacks once per sweep, from the sweep's config: a sweep over two
    # single-task experiments recorded baseline_of None for both, and the report ignored them.
    (tmp_path / "experiment").mkdir()
    for task in ("cls", "reg"):
        (tmp_path / "experiment" / f"single_{task}.yaml").write_text(
            f"# @package _global_\nhydra:\n  callbacks:\n    run_result:\n      baseline_of: {task}\n"
        )
    (tmp_path / "app.yaml").write_text(
        "defaults:\n  - experiment: single_cls\n  - _self_\n"
        "hydra:\n"
        f"  sweep:\n    dir: {tmp_path / 'sweep'}\n    subdir: ${{hydra.job.num}}\n"
        "  callbacks:\n"
        "    run_result:\n"
        "      _target_: lightning_multiloss.hydra_callbacks.RunResultCallback\n"
    )

    @hydra.main(version_base="1.3", config_path=str(tmp_path), config_name="app")
    def app(cfg: DictConfig) -> None:
        pass  # the job's recorder is all this test reads

    monkeypatch.setattr(sys, "argv", ["app.py", "-m", "experiment=single_cls,single_reg", "hydra/job_logging=disabled"])
    GlobalHydra.instance().clear()
    app()
    GlobalHydra.instance().clear()
    recorded = [RunResult.read(str(tmp_path / "sweep" / job / "result.json")) for job in ("0", "1")]
    assert [(r.experiment, r.baseline_of) for r in recorded] == [("single_cls", "cls"), ("single_reg", "reg")]


def test_a_primary_metric_the_task_does_not_have_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # primary={cls: accc}: the run trained to its end, exit 0, and result.json said "failed" with
    # no word on the console.
    result = failed_single_job(tmp_path, monkeypatch, "      primary: {cls: accc}\n", [], metrics=True)
    assert result.error == "MultiLossError: primary: task 'cls' has no metric 'accc'; it has ['acc', 'loss']"
