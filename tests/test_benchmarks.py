"""The benchmark scripts still run and print their tables (tiny settings: what they measure is not checked here)."""

from __future__ import annotations

import importlib.util
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
        assert float(row[row.index("us") + 1]) > 0 and row[row.index(target) + 1] in ("PASS", "FAIL"), row
    fixed = rows["fixed [0.5, 0.3]"]  # against the hand-written module that logs the same values: 1.02
    assert fixed[-3:-1] == ["<=", "1.02"] and fixed[-1] in ("PASS", "FAIL"), fixed
    assert rows["famo"][-1] not in ("PASS", "FAIL"), rows["famo"]  # no same-logging target


@pytest.mark.slow
def test_scaling_prints_time_and_memory_per_route(tmp_path: Path) -> None:
    out = run_script(
        "scaling.py", "--tasks", "2", "3", "--steps", "1", "--warmup", "1", "--rounds", "1", "--only", "mgda"
    )
    for label in ("| fixed |", "| mgda (repr) |", "| mgda (para) |"):
        rows = [line for line in out.splitlines() if line.startswith(label)]
        assert len(rows) == 2, (label, out)  # one time row, one memory row
        assert all(len(row.strip("|").split("|")) == 3 for row in rows), rows  # label + one cell per K


@pytest.mark.slow
def test_peers_prints_the_side_by_side_table_and_the_targets() -> None:
    out = run_script(
        "peers.py",
        "--tasks",
        "2",
        "8",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--rounds",
        "1",
        "--min-time",
        "0",
        "--batched",
        "--methods",
        "mgda",
        "pcgrad",
    )
    with_torchjd = importlib.util.find_spec("torchjd") is not None
    families = ["LibMTL way", "package, parameters", "package, parameters, batched Jacobian", "package, representation"]
    if with_torchjd:
        families.insert(0, "torchjd")
    else:
        assert 'torchjd is not installed (pip install ".[bench]")' in out, out
    headers = [line for line in out.splitlines() if line.startswith("| K |")]
    assert len(headers) == 3, out  # the time table, the memory table and the page faults
    assert all(family in headers[0] and family in headers[2] for family in families), headers
    for k in ("2", "8"):
        time_row, memory_row, faults_row = [line for line in out.splitlines() if line.startswith(f"| {k} |")]
        counts = [cell.strip() for cell in faults_row.strip("|").split("|")][1:]
        assert len(counts) == 1 + len(families), faults_row
        assert all(float(value) >= 0 for cell in counts for value in cell.split(" / ")), faults_row
        cells = [cell.strip() for cell in time_row.strip("|").split("|")]
        # K, summed (ms), summed (A/A), families
        assert len(cells) == 3 + len(families) and float(cells[1]) > 0 and float(cells[2]) > 0, time_row
        for cell in cells[3:]:
            assert all(float(value) > 0 for value in cell.split(" / ")) and cell.count(" / ") == 1, time_row
        assert len(memory_row.strip("|").split("|")) == 4 + len(families), memory_row
    targets = [line for line in out.splitlines() if line.startswith("- K=")]
    assert all(line.endswith(("PASS", "FAIL")) for line in targets), targets
    for method in ("mgda", "pcgrad"):
        assert any(line.startswith(f"- K=2 {method}: parameter route / LibMTL way:") for line in targets), targets
        assert any(line.startswith(f"- K=8 {method}: representation route / summed:") for line in targets), targets
        assert any(line.startswith(f"- K=8 {method}: parameter route's memory") for line in targets), targets
        has_torchjd_target = any(line.startswith(f"- K=8 {method}: parameter route / torchjd:") for line in targets)
        assert has_torchjd_target == with_torchjd, targets


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        # Each failed after its timing began: a traceback (IndexError, KeyError, a NaN loss), or ran the
        # references alone and exited 0 under --check.
        ("scaling.py", ("--steps", "0"), "--steps must be >= 1, got 0"),
        ("scaling.py", ("--only", "nosuch"), "--only: unknown ['nosuch']"),
        ("peers.py", ("--tasks", "0"), "--tasks: each K must be >= 1, got [0]"),
        ("peers.py", ("--device", "foo"), "--device must be cpu or cuda (cuda:N), got 'foo'"),
        ("overhead.py", ("--batch-size", "0"), "--batch-size must be >= 1, got 0"),
        ("overhead.py", ("--only", "nosuch", "--check"), "--only: unknown ['nosuch']"),
    ],
)
def test_bad_arguments_are_one_line_before_any_timing(script: str, args: tuple[str, ...], message: str) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines()[-1].startswith(f"{script}: error: {message}"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
