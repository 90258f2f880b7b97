"""Tuning the fixed weights with Optuna (``+hparams_search=digits_weights``): two real trials of ``multiloss-train``.

Checked against the trials' own files: each trial's sampled weights reached its model (its
``result.json`` weights equal the overrides Hydra saved for it), the study's best value is the
best validation accuracy among the trials, and ``multiloss-report`` lists both trials.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lightning_multiloss.app.config import config_dir
from tests.test_train_cli import clean_env, cli


def test_the_search_config_tunes_one_fixed_weight_per_task() -> None:
    """As composed: Optuna's sweeper, fixed weights, one `++weighting.weights.<task>` per task but the first."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["+hparams_search=digits_weights"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "maximize"
    assert cfg.weighting._target_ == "lightning_multiloss.weighting.Fixed"
    tasks = list(cfg.model.tasks)
    assert list(cfg.hydra.sweeper.params) == [f"++weighting.weights.{task}" for task in tasks[1:]]
    GlobalHydra.instance().clear()


def two_trials(*overrides: str) -> list[str]:
    """``multiloss-train`` arguments of a two-trial search of the fixed weights, in ``sweep/``."""
    return [
        *overrides,
        "+hparams_search=digits_weights",
        "hydra.sweeper.n_trials=2",
        "trainer=debug",
        "trainer.enable_progress_bar=false",
        "hydra.sweep.dir=sweep",
    ]


@pytest.mark.slow
def test_optuna_tunes_one_weight_per_task_on_the_validation_metric(tmp_path: Path) -> None:
    proc = cli(two_trials(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep = tmp_path / "sweep"
    trials = {}
    for job in ("0", "1"):
        overrides = yaml.safe_load((sweep / job / ".hydra" / "overrides.yaml").read_text())
        prefix = "++weighting.weights."
        sampled = {o.split("=")[0][len(prefix) :]: float(o.split("=")[1]) for o in overrides if o.startswith(prefix)}
        assert set(sampled) == {"recon", "centre"}
        assert all(0.01 <= value <= 10.0 for value in sampled.values())
        result = json.loads((sweep / job / "result.json").read_text())
        assert result["status"] == "completed" and result["weighting"] == "fixed"
        # The sampled weights are the model's; the task left out keeps weight 1.
        assert result["weights"] == pytest.approx({"digit": 1.0, **sampled})
        trials[job] = (sampled, result["val_metrics"]["digit"]["acc"])
    assert trials["0"][0] != trials["1"][0]

    study = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best_job = max(trials, key=lambda job: trials[job][1])
    assert study["best_value"] == pytest.approx(trials[best_job][1])  # validation accuracy, maximised
    assert study["best_params"] == pytest.approx({prefix + task: w for task, w in trials[best_job][0].items()})

    report = subprocess.run(
        [str(Path(sys.executable).parent / "multiloss-report"), "sweep"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    assert "2 runs read: 2 completed (2 swept in 2 configurations" in report.stdout


@pytest.mark.slow
def test_a_search_whose_trials_all_fail_lists_them_without_a_traceback(tmp_path: Path) -> None:
    # The search's weights name the digits tasks; loc_cls has others: every trial fails at once.
    # Optuna then raised "No trials are completed yet" from its sweeper, a traceback after the trials.
    proc = cli(two_trials("experiment=loc_cls"), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    unknown = (
        "error: weighting 'fixed': weights names unknown task(s) ['recon', 'centre']; the tasks are ['loc', 'cls']"
    )
    assert lines == [
        unknown,
        unknown,
        "error: the sweep ended after its jobs failed (No trials are completed yet.)",
        "error: 2 job(s) of the sweep failed:",
    ], proc.stderr[-4000:]
