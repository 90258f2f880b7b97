"""Every ```python block of the README runs as written (each in a fresh namespace, in a temporary folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_readme_hydra_app_runs(tmp_path: Path) -> None:
    """The "own Hydra app" example: its config.yaml and my_app.py, written out and run as a user would."""
    text = README.read_text(encoding="utf-8")
    yaml_block = re.search(r"^```yaml\n(# conf/config\.yaml of your app\n.*?)^```", text, re.MULTILINE | re.DOTALL)
    app_block = re.search(r"^```python my_app\.py\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert yaml_block and app_block, "the README's own-Hydra-app example (config.yaml + my_app.py) is missing"
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(yaml_block.group(1), encoding="utf-8")
    (tmp_path / "my_app.py").write_text(app_block.group(1), encoding="utf-8")
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
    assert "max_epochs=10" in proc.stderr + proc.stdout, "the app did not train to the end"
    assert (tmp_path / "run" / "lightning_logs").is_dir()  # the app's logs went into Hydra's run folder
    assert not (tmp_path / "lightning_logs").exists()
