"""Every ```python block of the README runs as written (each in a fresh namespace, in a temporary folder)."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[str]:
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def test_readme_has_python_examples() -> None:
    assert python_blocks(), f"{README.name} has no ```python block (the quick start is missing)"


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for index, code in enumerate(python_blocks()):
        namespace = {"__name__": f"readme_block_{index}"}
        try:
            exec(compile(code, f"{README.name}:python block {index}", "exec"), namespace)
        except Exception as error:  # report which block failed and how
            pytest.fail(
                f"{README.name} python block {index} raised {type(error).__name__}: {error}\n"
                f"{traceback.format_exc()}\n--- block {index} ---\n{code}"
            )


def write_hydra_app(folder: Path) -> None:
    """The README's "own Hydra app" example, written out as a user would: ``conf/config.yaml`` and ``my_app.py``."""
    text = README.read_text(encoding="utf-8")
    yaml_block = re.search(r"^```yaml\n(# conf/config\.yaml of your app\n.*?)^```", text, re.MULTILINE | re.DOTALL)
    app_block = re.search(r"^```python my_app\.py\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert yaml_block and app_block, "the README's own-Hydra-app example (config.yaml + my_app.py) is missing"
    (folder / "conf").mkdir()
    (folder / "conf" / "config.yaml").write_text(yaml_block.group(1), encoding="utf-8")
    (folder / "my_app.py").write_text(app_block.group(1), encoding="utf-8")


def test_readme_hydra_app_gets_only_the_plugin_groups(tmp_path: Path) -> None:
    """Its one search-path entry brings the plugin's groups; ``data``, ``model``, ``experiment`` and
    ``trainer`` are no groups there (``+data=digits`` adds a plain string, not the demo's config)."""
    write_hydra_app(tmp_path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(tmp_path / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+data=digits", "+model=mlp", "+experiment=digits", "+trainer=debug"])
        scheduled = compose("config", overrides=["weighting=scheduled", "schedule@weighting.schedule=cosine"])
    GlobalHydra.instance().clear()
    for group in ("data", "model", "experiment", "trainer"):
        assert cfg[group] == {"data": "digits", "model": "mlp", "experiment": "digits", "trainer": "debug"}[group]
    assert cfg.weighting._target_ == "lightning_multiloss.weighting.Uncertainty"
    assert set(cfg.callbacks) == {"checkpoint", "loss_weighting"} and set(cfg.logger) == {"csv"}
    assert set(cfg.losses) == {"digit", "parity"}
    assert set(scheduled) == set(cfg) - {"data", "model", "experiment", "trainer"}  # no top-level schedule
    assert scheduled.weighting.schedule._target_ == "lightning_multiloss.schedules.Cosine"


@pytest.mark.slow
def test_readme_hydra_app_runs(tmp_path: Path) -> None:
    """The "own Hydra app" example runs as a user would run it, and writes into Hydra's run folder."""
    write_hydra_app(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "my_app.py", "hydra.run.dir=run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"my_app.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "max_epochs=3" in proc.stderr + proc.stdout, "the app did not train to the end"
    run = tmp_path / "run"
    for name in ("checkpoints/last.ckpt", "csv/metrics.csv", "csv/loss_weights.csv", "csv/loss_weights.png"):
        assert (run / name).is_file(), name
    with open(run / "csv" / "loss_weights.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # 3 epochs of 448 / 32 batches (64 samples validate), one record per optimizer step, then the weights at the end
    assert [int(r["step"]) for r in rows] == list(range(1, 3 * 14 + 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf", "my_app.py", "run"]  # nothing outside it
    # The command the README gives for a gradient strategy on the representation.
    args = ["weighting=mgda", "weighting.route=representation", "max_epochs=1", "hydra.run.dir=mgda"]
    proc = subprocess.run(
        [sys.executable, "my_app.py", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"my_app.py {' '.join(args)} failed:\n{proc.stderr[-6000:]}"
    with open(tmp_path / "mgda" / "csv" / "loss_weights.csv", newline="") as f:
        weights = [[float(v) for k, v in row.items() if k not in ("step", "epoch")] for row in csv.DictReader(f)]
    assert len(weights) == 14 + 1 and all(abs(sum(w) - 1.0) < 1e-5 for w in weights)  # MGDA: on the simplex
    # With the run-result callback (multiloss-report for your own app), the run is recorded complete
    # (it was "failed": without a validation set, no metric to compare) and the report reads it.
    args = ["hydra/callbacks=run_result", "max_epochs=1", "hydra.run.dir=recorded"]
    proc = subprocess.run(
        [sys.executable, "my_app.py", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"my_app.py {' '.join(args)} failed:\n{proc.stderr[-6000:]}"
    result = json.loads((tmp_path / "recorded" / "result.json").read_text(encoding="utf-8"))
    assert result["status"] == "completed", result
    report = subprocess.run(
        [sys.executable, "-m", "lightning_multiloss.app.report", "recorded"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0 and "1 completed" in report.stdout, report.stdout + report.stderr


def demo_commands() -> list[list[str]]:
    """The arguments of every ``multiloss-train`` line of the README's ```bash blocks (comments dropped)."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            if line.startswith("multiloss-train "):
                args = shlex.split(line.split("  #")[0])[1:]
                commands.append([a for a in args if a not in ("-m", "--help")])
    return commands


@pytest.mark.slow
def test_readme_demo_commands_compose(tmp_path: Path) -> None:
    """Every ``multiloss-train`` command of the README composes and passes the app's checks.

    A sweep (``-m a=x,y``) is checked with its first value (tests/test_configs.py builds every option).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from lightning_multiloss.app.config import config_dir, validate_config

    commands = demo_commands()
    assert len(commands) >= 20 and ["lightning=pytorch_lightning"] in commands
    parser = OverridesParser.create()
    for args in commands:
        args = [re.sub(r"<[a-z ]+>", "run", arg) for arg in args]  # a placeholder: the user's run folder
        overrides = [
            f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
            for o in parser.parse_overrides(args)
        ]
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, f"output_dir={tmp_path}"])
        validate_config(cfg)
    GlobalHydra.instance().clear()
