"""The training app: overrides that must work as written, outputs, resume, errors, DDP and multirun.

Fast checks compose the config with Hydra's compose API and build or run it in this process;
the slow ones run the real command line (``multiloss-train`` / ``python -m``) as subprocesses.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_multiloss import MultiLossError, NonFiniteLossError
from lightning_multiloss.app.config import config_dir
from lightning_multiloss.app.results import RunResult
from lightning_multiloss.app.train import RUN_DIR_ENV, build, config_key, ddp_child_argv, external_launch_argv, run
from lightning_multiloss.weighting import Progress, Scheduled

QUIET = ("trainer=debug", "trainer.enable_progress_bar=false")


def compose_train(out: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"output_dir={out}"])


def run_here(out: Path, *overrides: str) -> dict:
    """One tiny run in this process (trainer=debug: 2 epochs of 3 batches)."""
    overrides = (*QUIET, *overrides)
    return run(compose_train(out, *overrides), overrides)


def cli(args: list[str], cwd: Path, module: bool = False, timeout: float = 240) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "multiloss-train"
    command = [sys.executable, "-m", "lightning_multiloss.app.train"] if module else [str(script)]
    env = clean_env()
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def clean_env() -> dict[str, str]:
    """This environment without any launcher's variables (DDP, SLURM, torchrun, a run of this app)."""
    launchers = ("LIGHTNING_MULTILOSS_", "SLURM_", "TORCHELASTIC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launchers)}
    for var in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK"):
        env.pop(var, None)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# -- overrides, composed ----------------------------------------------------------------------
def test_scheduled_cosine(tmp_path):
    cfg = compose_train(tmp_path, "weighting=scheduled", "schedule@weighting.schedule=cosine")
    _, model, _ = build(cfg)
    assert isinstance(model.weighting, Scheduled) and model.weighting.unit == "fraction"
    model.weighting.set_progress(Progress(step=25, epoch=0, total_steps=100))
    recon = 1.0 + (0.0 - 1.0) * (1 - math.cos(math.pi * 0.25)) / 2  # the cosine ramp by hand
    torch.testing.assert_close(model.weighting.weights, torch.tensor([1.0, recon, 1.0]))


def test_scheduled_cosine_run_follows_the_schedule(tmp_path):
    result = run_here(tmp_path, "weighting=scheduled", "schedule@weighting.schedule=cosine")
    assert result["status"] == "completed" and result["weighting"] == "scheduled"
    with open(tmp_path / "csv" / "loss_weights.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6, 7]  # 2 epochs x 3 batches, then the end
    for row in rows:  # the weights used at optimizer step s were set at progress (s - 1) / 6
        p = (int(row["step"]) - 1) / 6
        assert float(row["recon"]) == pytest.approx((1 + math.cos(math.pi * p)) / 2, abs=1e-6)
        assert float(row["digit"]) == float(row["centre"]) == 1.0


def test_change_one_branch_loss(tmp_path):
    cfg = compose_train(tmp_path, "loss@model.tasks.recon.loss=l1")
    _, model, _ = build(cfg)
    losses = {t.name: type(t.loss) for t in model.tasks}
    assert losses == {"digit": nn.CrossEntropyLoss, "recon": nn.L1Loss, "centre": nn.MSELoss}


def test_add_a_branch(tmp_path):
    result = run_here(tmp_path, "+task@model.tasks.parity=binary", "weighting=learnable")
    assert list(result["metrics"]) == ["digit", "recon", "centre", "parity"]
    assert set(result["metrics"]["parity"]) == {"acc", "loss"}
    assert result["directions"]["parity"] == {"acc": "max", "loss": "min"}
    assert sum(result["weights"].values()) == pytest.approx(1.0)  # learnable, 4 tasks: on the simplex


def test_trainer_gpu_composes(tmp_path):
    cfg = compose_train(tmp_path, "trainer=gpu")
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 1
    cfg = compose_train(tmp_path, "trainer=ddp")
    assert (cfg.trainer.accelerator, cfg.trainer.strategy, cfg.trainer.devices) == ("gpu", "ddp", 2)
    cfg = compose_train(tmp_path, "trainer=ddp_cpu", "trainer.devices=3")
    assert (cfg.trainer.accelerator, cfg.trainer.strategy, cfg.trainer.devices) == ("cpu", "ddp", 3)


def test_seed_changes_split_and_init(tmp_path):
    parts = {s: build(compose_train(tmp_path, f"seed={s}")) for s in (0, 1)}
    for dm, _, _ in parts.values():
        dm.setup()
    assert not torch.equal(parts[0][0].splits["test"], parts[1][0].splits["test"])
    assert not torch.equal(parts[0][1].trunk.body[1].weight, parts[1][1].trunk.body[1].weight)
    again = build(compose_train(tmp_path, "seed=0"))
    again[0].setup()
    assert torch.equal(parts[0][0].splits["test"], again[0].splits["test"])
    assert torch.equal(parts[0][1].trunk.body[1].weight, again[1].trunk.body[1].weight)


def test_same_seed_same_results(tmp_path):
    a = run_here(tmp_path / "a", "seed=5")
    b = run_here(tmp_path / "b", "seed=5")
    c = run_here(tmp_path / "c", "seed=6")
    assert a["metrics"] == b["metrics"] and a["config_key"] == b["config_key"] == c["config_key"]
    state_a = torch.load(tmp_path / "a/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    state_b = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert a["metrics"] != c["metrics"]


# -- outputs, result.json, resume -----------------------------------------------------------------
def test_result_json_and_resume(tmp_path):
    first = run_here(tmp_path / "first", "weighting=learnable", "seed=2")
    saved = json.loads((tmp_path / "first/result.json").read_text())
    assert saved == json.loads(json.dumps(first))
    assert RunResult.read(str(tmp_path / "first/result.json")).to_dict() == saved  # the schema report reads
    assert saved["status"] == "completed" and saved["experiment"] == "digits" and saved["baseline_of"] is None
    assert saved["weighting"] == "learnable" and saved["seed"] == 2 and saved["world_size"] == 1
    assert saved["config_key"] == config_key(saved["overrides"])
    assert "seed=2" in saved["overrides"] and "seed=2" not in saved["config_key"]
    assert saved["primary"] == {"digit": "acc", "recon": "mse", "centre": "mae"}
    assert saved["directions"]["digit"]["acc"] == "max" and saved["directions"]["centre"]["mae"] == "min"
    assert 0.0 <= saved["metrics"]["digit"]["acc"] <= 1.0 and saved["evaluated_on"] == "test"
    assert saved["metrics"]["recon"]["mse"] == pytest.approx(saved["metrics"]["recon"]["loss"], rel=1e-5)
    for name in ("checkpoints/last.ckpt", "csv/metrics.csv", "csv/loss_weights.csv", "csv/loss_weights.png"):
        assert (tmp_path / "first" / name).is_file(), name

    ckpt = tmp_path / "first/checkpoints/last.ckpt"
    before = torch.load(ckpt, weights_only=True)
    assert before["global_step"] == 6
    run_here(tmp_path / "second", "weighting=learnable", "seed=2", f"ckpt_path={ckpt}", "trainer.max_epochs=3")
    resumed = torch.load(tmp_path / "second/checkpoints/last.ckpt", weights_only=True)
    assert resumed["global_step"] == 9 and resumed["epoch"] == before["epoch"] + 1  # one more epoch of 3 batches
    assert resumed["callbacks"]["LossWeightingCallback"]["steps"][:6] == [1, 2, 3, 4, 5, 6]
    # A checkpoint at (or past) the Trainer's limits: one clear error, not an empty "completed" run.
    for limit, done in (("trainer.max_epochs=2", "2 epochs"), ("trainer.max_epochs=1", "2 epochs")):
        with pytest.raises(MultiLossError, match=rf"has trained {done} already and {limit} leaves nothing to train"):
            run_here(tmp_path / "again", "weighting=learnable", f"ckpt_path={ckpt}", limit)
    # trainer.max_epochs read from the experiment's `epochs` (a top-level key the check must see too)
    with pytest.raises(MultiLossError, match=r"has trained 2 epochs already and trainer.max_epochs=2 leaves nothing"):
        run_here(
            tmp_path / "again", "weighting=learnable", f"ckpt_path={ckpt}", "trainer.max_epochs=${epochs}", "epochs=2"
        )
    with pytest.raises(MultiLossError, match=r"has trained 6 optimizer steps already and trainer.max_steps=5 leaves"):
        run_here(tmp_path / "again", f"ckpt_path={ckpt}", "trainer.max_epochs=9", "trainer.max_steps=5")
    assert json.loads((tmp_path / "again/result.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_an_apps_checkpoint_predicts_outside_hydra_with_the_apps_data_module(tmp_path):
    # As the README shows: MultiTaskNet.load_from_checkpoint, then trainer.predict with the run's
    # data module (which had no predict_dataloader: Lightning's "must be implemented").
    import lightning.pytorch as lp

    from lightning_multiloss.app.data.digits import DigitsDataModule
    from lightning_multiloss.app.models import MultiTaskNet

    run_here(tmp_path / "run", "seed=3")
    model = MultiTaskNet.load_from_checkpoint(tmp_path / "run/checkpoints/last.ckpt")
    data = DigitsDataModule(seed=3, batch_size=64)
    trainer = lp.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    predicted = trainer.predict(model, datamodule=data)
    assert predicted is not None
    test_inputs = data.datasets["test"].tensors["x"]
    model.eval()
    with torch.no_grad():
        expected = model(test_inputs)
    for task, values in expected.items():
        got = torch.cat([batch[task] for batch in predicted])
        torch.testing.assert_close(got, values, rtol=1e-5, atol=1e-6, msg=task)


def test_a_run_in_its_own_folder_resumes_from_a_path_relative_to_the_launch_folder(tmp_path):
    """hydra.job.chdir=true read ckpt_path from the run's folder; without a logger of its own folder
    (no CSV logger here), the loss-weight CSV and plot went into the launch folder, every run's over
    the one before."""
    first = cli(["trainer=debug", "trainer.enable_progress_bar=false", "hydra.run.dir=first"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    args = ["trainer=debug", "trainer.enable_progress_bar=false", "hydra.job.chdir=true", "hydra.run.dir=second"]
    second = cli([*args, "ckpt_path=first/checkpoints/last.ckpt", "trainer.max_epochs=3", "~logger"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert torch.load(tmp_path / "second/checkpoints/last.ckpt", weights_only=True)["global_step"] == 9  # 6 + 3
    assert (tmp_path / "second/loss_weights.csv").is_file() and (tmp_path / "second/loss_weights.png").is_file()
    assert not list(tmp_path.glob("loss_weights.*"))


def test_missing_or_corrupt_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "last.ckpt"
    with pytest.raises(MultiLossError, match=f"ckpt_path '{missing}': no such file"):
        run_here(tmp_path / "a", f"ckpt_path={missing}")
    failed = json.loads((tmp_path / "a/result.json").read_text())
    assert failed["status"] == "failed" and str(missing) in failed["error"]
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(
        MultiLossError,
        match=f"ckpt_path '{corrupt}' is not a readable PyTorch checkpoint: the file is not in torch.save",
    ):
        run_here(tmp_path / "b", f"ckpt_path={corrupt}")
    with pytest.raises(MultiLossError, match=f"ckpt_path '{tmp_path}' is a folder; give the checkpoint file"):
        run_here(tmp_path / "c", f"ckpt_path={tmp_path}")
    code = tmp_path / "code.ckpt"
    torch.save({"state_dict": {}, "hook": print}, code)  # unpickling it would need arbitrary code
    with pytest.raises(MultiLossError, match=r"holds more than plain values \(torch.load with weights_only=True"):
        run_here(tmp_path / "d", f"ckpt_path={code}")


def test_a_failure_inside_fit_is_recorded_as_failed_not_interrupted(tmp_path):
    with pytest.raises(NonFiniteLossError):
        run_here(tmp_path, "model.optimizer.lr=1e12")
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "failed" and result["error"].startswith("NonFiniteLossError: non-finite task loss")


def test_single_task_baseline(tmp_path):
    result = run_here(tmp_path, "experiment=digits_single_centre", "weighting=learnable")
    assert result["experiment"] == "digits" and result["baseline_of"] == "centre"
    assert list(result["metrics"]) == ["centre"] and result["weighting"] == "fixed"


def test_ddp_child_arguments():
    env = {RUN_DIR_ENV: "/runs/a b/0", "LOCAL_RANK": "1", "LIGHTNING_MULTILOSS_OVERRIDES": '["seed=1", "x=2"]'}
    assert ddp_child_argv(env, []) == [
        "seed=1",
        "x=2",
        "hydra.run.dir='/runs/a b/0'",
        "hydra.output_subdir=null",
        "hydra.job.name=rank1",
        "hydra/job_logging=disabled",
    ]
    # Where the config comes from, as Lightning passes the command line on: kept (a user's own
    # config groups); the sweep and its job's overrides are the environment's.
    argv = ["-m", "--config-dir", "/my conf", "-cn=mine", "+hydra.searchpath=[file:///extra]", "seed=1,2"]
    assert ddp_child_argv(env, argv)[:4] == [
        "--config-dir",
        "/my conf",
        "-cn=mine",
        "+hydra.searchpath=[file:///extra]",
    ]
    assert ddp_child_argv(env, argv)[4:] == ddp_child_argv(env, [])
    assert ddp_child_argv({**env, "LOCAL_RANK": "0"}) is None  # the process that started the run
    assert ddp_child_argv({"LOCAL_RANK": "1"}) is None  # ranks started by someone else (torchrun, SLURM)


def test_external_launch_arguments():
    slurm = {"SLURM_NTASKS": "2", "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "3", "SLURM_PROCID": "1"}
    assert external_launch_argv(["seed=1"], slurm) == [
        "hydra.run.dir=outputs/${name}/slurm-77.3",
        "hydra.sweep.dir=multirun/${name}/slurm-77.3",
        "hydra.output_subdir=null",
        "hydra/job_logging=disabled",
    ]
    rank0 = external_launch_argv(["hydra.run.dir=mine"], {**slurm, "SLURM_PROCID": "0"})
    assert rank0 == ["hydra.sweep.dir=multirun/${name}/slurm-77.3"]  # the user's folder is kept
    torchrun = {"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "abc"}
    assert external_launch_argv([], torchrun)[:2] == [
        "hydra.run.dir=outputs/${name}/torchrun-abc",
        "hydra.sweep.dir=multirun/${name}/torchrun-abc",
    ]
    assert external_launch_argv([], {**slurm, "SLURM_NTASKS": "1"}) == []  # one task: nothing to share
    assert external_launch_argv([], {"SLURM_JOB_ID": "77"}) == []  # an allocation, not a launch
    assert external_launch_argv([], {}) == []


# -- the real command line --------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_default_run(tmp_path):
    proc = cli([*QUIET[:1], "hydra.run.dir=run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "run"
    assert "digits, weighting=fixed, seed=0" in proc.stdout
    assert proc.stdout.count("* primary metric") == 1
    for task in ("digit", "recon", "centre"):
        assert any(line.startswith(task) for line in proc.stdout.splitlines()), task
    for name in (".hydra/config.yaml", "checkpoints/last.ckpt", "csv/metrics.csv", "csv/loss_weights.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "result.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["+trainer.max_epoch=3"], "error: config key 'trainer.max_epoch': Key 'max_epoch' not in 'TrainerConf'"),
        (
            ["+weighting.weights={digit:1.0,colour:2.0}"],
            "error: weighting 'fixed': weights names unknown task(s) ['colour']; "
            "the tasks are ['digit', 'recon', 'centre']",
        ),
        (["weighting=fixd"], "Could not find 'weighting/fixd'"),
        (
            ["trainer.max_epochs=many"],
            "error: config key 'trainer.max_epochs': Value 'many' of type 'str' could not be converted to Integer",
        ),
        (  # an error of a node inside the weighting named no key
            ["weighting=scheduled", "weighting.schedule.duration=-1"],
            "error: config key 'weighting.schedule': linear schedule: duration must be > 0, got -1.0",
        ),
        (  # every swept option has the key; the sweep composes the default (fixed) first
            ["-m", "weighting=mgda,pcgrad", "weighting.route=representation"],
            "error: config key 'weighting.route': Key 'route' is not in struct; a sweep first composes the config "
            "without the swept options, where it does not exist: add it with ++ (++weighting.route=representation)",
        ),
    ],
)
def test_cli_errors_are_one_clear_message(tmp_path, monkeypatch, capsys, args, message):
    """The console script's main(), in this process: exit status 2 and a message, no traceback."""
    from lightning_multiloss.app import train

    monkeypatch.setattr(sys, "argv", ["multiloss-train", *args, f"hydra.run.dir={tmp_path / 'run'}"])
    monkeypatch.setattr(train, "_task_started", False)
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as info:
        train.main()
    GlobalHydra.instance().clear()
    stderr = capsys.readouterr().err
    assert info.value.code == 2, stderr
    assert message in stderr
    assert "Traceback" not in stderr
    if args == ["weighting=fixd"]:
        assert "Available options" in stderr and "learnable" in stderr
    elif message.startswith("error:"):
        assert stderr.strip().splitlines()[-1] == message


def test_a_target_that_cannot_be_imported_is_one_line(tmp_path):
    # Hydra logged its own 3-line ERROR of the failed import before the one-line error.
    proc = cli(["weighting._target_=lightning_multiloss.weighting.Fixd", "hydra.run.dir=run"], cwd=tmp_path)
    assert proc.returncode == 2
    assert (proc.stdout + proc.stderr).strip().splitlines() == [
        "error: config key 'weighting._target_': cannot import 'lightning_multiloss.weighting.Fixd' "
        "(No module named 'lightning_multiloss.weighting.Fixd')"
    ]


def test_cli_help_lists_every_group(monkeypatch, capsys):
    """``multiloss-train --help``: the demo's groups and the plugin's, each with its options."""
    from lightning_multiloss.app import train

    monkeypatch.setattr(sys, "argv", ["multiloss-train", "--help"])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as info:
        train.main()
    GlobalHydra.instance().clear()
    assert info.value.code in (0, None)
    listed = {
        line.split(":")[0]: line.split(": ", 1)[1].split(", ")
        for line in capsys.readouterr().out.splitlines()
        if ": " in line and not line.startswith((" ", "schema/"))
    }
    demo = ("data", "model", "experiment", "trainer")
    plugin = ("weighting", "schedule", "loss", "task", "callbacks", "logger")
    for group in (*demo, *plugin):
        assert group in listed, group
    assert {"fixed", "scheduled", "learnable"} <= set(listed["weighting"]) and "cosine" in listed["schedule"]


@pytest.mark.slow
def test_cli_ddp_cpu(tmp_path):
    # A weighting config of the user's own, found through hydra.searchpath: the second process,
    # started by Lightning, must find it too (it lost the searchpath and failed alone).
    own = tmp_path.parent / f"{tmp_path.name}_conf"
    (own / "weighting").mkdir(parents=True)
    (own / "weighting" / "mine.yaml").write_text("_target_: lightning_multiloss.weighting.GLS\n")
    tiny = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    args = ["trainer=ddp_cpu", "trainer.devices=2", *tiny, "trainer.limit_test_batches=1"]
    args += [f"hydra.searchpath=[file://{own}]", "weighting=mine"]
    proc = cli([*args, "trainer.enable_progress_bar=false", "hydra.run.dir=run"], cwd=tmp_path)  # console script
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "run/result.json").read_text())
    assert result["status"] == "completed" and result["world_size"] == 2
    assert result["weighting"] == "gls"
    assert proc.stdout.count("* primary metric") == 1  # rank 0 prints the table, rank 1 does not
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        ".hydra", "checkpoints", "csv", "result.json", "train.log"
    ]  # fmt: skip


@pytest.mark.slow
def test_cli_ddp_error_in_training_is_one_line(tmp_path):
    # Both processes meet a non-finite loss and stop together; each printed the error line.
    tiny = ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1"]
    args = ["trainer=ddp_cpu", "trainer.devices=2", *tiny, "trainer.log_every_n_steps=1", "model.optimizer.lr=1e12"]
    proc = cli([*args, "trainer.enable_progress_bar=false", "hydra.run.dir=run"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "non-finite task loss(es)" in errors[0], proc.stderr[-4000:]


def test_an_error_of_another_process_alone_is_printed_by_it(tmp_path):
    # Only rank 0 printed its error line: an error that one process alone meets (a bad batch in its
    # shard) left nothing on the screen while rank 0 waited for it.
    script = Path(sys.executable).parent / "multiloss-train"
    env = {**clean_env(), "RANK": "1"}
    proc = subprocess.run(
        [str(script), "model.optimizer.lr=-1", "hydra.run.dir=run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].startswith("error (rank 1): config key 'model.optimizer.lr'"), proc.stderr


@pytest.mark.slow
def test_cli_ddp_multirun_runs_each_job_once(tmp_path):
    tiny = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    args = ["-m", "trainer=ddp_cpu", "trainer.devices=2", *tiny, "trainer.limit_test_batches=1", "seed=1,2"]
    proc = cli([*args, "trainer.enable_progress_bar=false", "hydra.sweep.dir=sweep"], cwd=tmp_path, module=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # no run folder of rank 1's own
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert jobs == ["0", "1"]  # exactly two jobs: rank 1 started no sweep
    seeds = []
    for job in jobs:
        result = json.loads((tmp_path / "sweep" / job / "result.json").read_text())
        assert result["status"] == "completed" and result["world_size"] == 2
        seeds.append(result["seed"])
        assert (tmp_path / "sweep" / job / "checkpoints/last.ckpt").is_file()
    assert seeds == [1, 2]
    assert proc.stdout.count("* primary metric") == 2
    assert shutil.which("multiloss-train", path=str(Path(sys.executable).parent))


@pytest.mark.slow
def test_cli_under_srun_shares_one_folder(tmp_path):
    """Two processes started as SLURM's srun starts them (one task per device), 2 s apart.

    With time-stamped folders each would make its own; they share ``outputs/digits/slurm-<job>.<step>``,
    rank 0 writes the run's files, and rank 1 no log file or config copy of its own.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tiny = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    args = ["trainer=ddp_cpu", *tiny, "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false"]
    script = Path(sys.executable).parent / "multiloss-train"
    procs = []
    for rank in (0, 1):
        env = clean_env()
        env.update(
            SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
            SLURM_NODEID="0", SLURM_JOB_ID="77", SLURM_STEP_ID="3", SLURM_JOB_NAME="train",
            SLURM_NODELIST="localhost", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )  # fmt: skip
        procs.append(
            subprocess.Popen(
                [str(script), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
        time.sleep(2.0)
    outputs = [proc.communicate(timeout=240) for proc in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr[-4000:]
    assert [p.name for p in (tmp_path / "outputs" / "digits").iterdir()] == ["slurm-77.3"]
    run_dir = tmp_path / "outputs" / "digits" / "slurm-77.3"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed" and result["world_size"] == 2
    assert outputs[0][0].count("* primary metric") == 1 and "* primary metric" not in outputs[1][0]
    log = (run_dir / "train.log").read_text()
    assert "GLOBAL_RANK: 0" in log and "GLOBAL_RANK: 1" not in log


@pytest.mark.slow
def test_a_run_terminated_by_sigterm_exits_143_and_is_recorded_as_interrupted(tmp_path):
    """A scheduler's preemption (SIGTERM) is not a success: status 128 + 15, result.json "interrupted"."""
    args = ["trainer.max_epochs=1000", "trainer.enable_progress_bar=false", "hydra.run.dir=run"]
    script = Path(sys.executable).parent / "multiloss-train"
    proc = subprocess.Popen(
        [str(script), *args], cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    result = tmp_path / "run" / "result.json"
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not (result.is_file() and last.is_file()):  # a first epoch ended: its checkpoint is there
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert json.loads(result.read_text())["status"] == "interrupted"
    assert 'error: the run was terminated (SIGTERM); its result.json says "interrupted"' in stderr
    # The checkpoint of the last finished epoch stays, and the run resumes from it.
    checkpoint = torch.load(last, weights_only=True)
    assert 1 <= checkpoint["epoch"] + 1 < 1000 and checkpoint["global_step"] > 0
    epochs = checkpoint["epoch"] + 2  # one more epoch than the checkpoint has
    resumed = cli([f"ckpt_path={last}", f"trainer.max_epochs={epochs}", *args[1:2], "hydra.run.dir=resumed"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "resumed" / "result.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_cli_sweep_goes_on_after_a_failed_job(tmp_path):
    """Job 0 is rejected (two weights for three tasks), job 1 runs; the sweep ends with status 1."""
    args = ["-m", "weighting.weights=[1,2],[1,1,1]", "trainer=debug", "trainer.enable_progress_bar=false"]
    proc = cli([*args, "hydra.sweep.dir=sweep"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    status = {job: json.loads((tmp_path / "sweep" / job / "result.json").read_text()) for job in ("0", "1")}
    assert status["0"]["status"] == "failed" and "weights has 2 values for 3 tasks" in status["0"]["error"]
    assert status["1"]["status"] == "completed"
    assert "error: 1 job(s) of the sweep failed:" in proc.stderr
    assert "#0 (weighting.weights=[1,2]" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_ddp_evaluation_counts_every_sample_once(tmp_path):
    """2-process validate and test equal a plain-PyTorch evaluation of the whole splits (odd sizes)."""
    from tests._ddp import run_ddp_script
    from tests.scripts.ddp_eval import OVERRIDES

    r0, r1 = run_ddp_script("ddp_eval.py", tmp_path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*OVERRIDES, f"output_dir={tmp_path}"])
    datamodule, model, _ = build(cfg)
    model.load_state_dict(r0["state_dict"])
    model.eval()
    datamodule.setup()
    for stage in ("val", "test"):
        data = datamodule.datasets[stage].tensors
        n = len(data["x"])
        assert n % 2 == 1 and r0["shares"][stage] + r1["shares"][stage] == n  # no sample twice
        with torch.no_grad():
            out = model(data["x"])
        losses = {
            "digit": nn.functional.cross_entropy(out["digit"], data["digit"]),
            "recon": nn.functional.mse_loss(out["recon"], data["x"]),
            "centre": nn.functional.mse_loss(out["centre"], data["centre"]),
        }
        expected = {
            f"{stage}/acc/digit": (out["digit"].argmax(1) == data["digit"]).float().mean(),
            f"{stage}/mse/recon": losses["recon"],
            f"{stage}/mae/centre": (out["centre"] - data["centre"]).abs().mean(),
            f"{stage}/loss": sum(losses.values()),
            **{f"{stage}/loss/{task}": loss for task, loss in losses.items()},
            **{f"{stage}/weight/{task}": torch.tensor(1.0) for task in losses},  # fixed, all 1
        }
        for rank in (r0, r1):
            assert expected.keys() <= rank[stage].keys()
            for key, value in expected.items():
                assert rank[stage][key] == pytest.approx(float(value), rel=1e-5, abs=1e-7), key


class LastOnly(ModelCheckpoint):
    """A user's own checkpoint callback (a subclass): the Trainer keeps checkpointing."""


@pytest.mark.parametrize(
    ("overrides", "checkpoints"),
    [
        (["callbacks=none"], False),
        (["callbacks=early_stopping"], False),
        (["callbacks=default"], True),
        ([f"callbacks.checkpoint._target_={__name__}.LastOnly"], True),  # was refused: not named ModelCheckpoint
    ],
)
def test_a_callback_set_without_the_checkpoint_writes_no_checkpoint(tmp_path, overrides, checkpoints):
    # callbacks=none still got Lightning's own ModelCheckpoint (csv/checkpoints/epoch=...ckpt).
    from lightning_multiloss.app.train import build

    _, _, trainer = build(compose_train(tmp_path, *QUIET, *overrides))
    assert (trainer.checkpoint_callback is not None) == checkpoints
