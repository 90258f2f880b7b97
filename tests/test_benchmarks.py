"""The benchmark scripts still run and print their tables (tiny settings: what they measure is not checked here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_overhead_prints_a_ratio_per_variant() -> None:
    out = run_script("overhead.py", "--steps", "10", "--warmup", "1", "--rounds", "1", "--only", "fixed", "famo")
    rows = {line.split("  ")[0].strip(): line.split() for line in out.splitlines() if line[:1].isalpha()}
    for label, target in (("fixed [0.5, 0.3]", "1.03"), ("famo", "1.05")):
        row = rows[label]
        assert f"<= {target}" in " ".join(row), row
        assert float(row[row.index("us") + 1]) > 0 and row[-1] in ("PASS", "FAIL"), row


@pytest.mark.slow
def test_scaling_prints_time_and_memory_per_route(tmp_path: Path) -> None:
    out = run_script(
        "scaling.py", "--tasks", "2", "3", "--steps", "1", "--warmup", "1", "--rounds", "1", "--only", "mgda"
    )
    for label in ("| fixed |", "| mgda (repr) |", "| mgda (para) |"):
        rows = [line for line in out.splitlines() if line.startswith(label)]
        assert len(rows) == 2, (label, out)  # one time row, one memory row
        assert all(len(row.strip("|").split("|")) == 3 for row in rows), rows  # label + one cell per K
