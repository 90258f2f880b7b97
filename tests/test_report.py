"""``multiloss-report`` on run folders laid out as a Hydra multirun writes them.

Every expected number (means, sample standard deviations, Δm%, the Pareto front) is computed
here by hand from the values written into the fixtures, not by the code under test.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import random
import re
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_multiloss import MultiLossError
from lightning_multiloss.app.report import collect_runs, main, make_report, pareto_front

ROOT = Path(__file__).resolve().parents[1]

# Two tasks: cls (accuracy, higher is better), reg (mse, lower is better); two seeds per configuration.
SWEEP = {
    # weighting: (distinguishing overrides, {seed: (acc, mse)})
    "fixed": ((), {0: (0.80, 0.30), 1: (0.84, 0.26)}),
    "scheduled": ((), {0: (0.86, 0.20), 1: (0.82, 0.24)}),
    "learnable": (("weighting.init=0.3",), {0: (0.90, 0.35), 1: (0.88, 0.33)}),
}
BASE_ACC = {0: 0.85, 1: 0.87}  # single-task cls, by seed
BASE_MSE = {0: 0.25, 1: 0.27}  # single-task reg, by seed
COMMON = "trainer.max_epochs=5"  # an override every job shares: not a distinguishing one


def config_key(experiment: str, overrides: list[str]) -> str:
    text = experiment + "|" + " ".join(sorted(o for o in overrides if not o.startswith("seed=")))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def composed_config(overrides: list[str]) -> dict[str, Any]:
    """The config Hydra would compose from ``overrides`` on a primary config of the two tasks, ``seed: 0``
    and ``trainer.max_epochs: 5``: a group choice ``weighting=x`` picks ``weighting._target_: x``,
    values are parsed (``false`` and ``False`` alike), ``~key`` deletes."""
    tasks = {"cls": {"loss": "CrossEntropyLoss"}, "reg": {"loss": "MSELoss"}}
    config: dict[str, Any] = {
        "seed": 0,
        "trainer": {"max_epochs": 5},
        "model": {"tasks": tasks},
        "weighting": {"_target_": "fixed"},
    }
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        parts = key.lstrip("~").split(".")
        if parts == ["weighting"]:
            parts = ["weighting", "_target_"]
        node = config
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if key.startswith("~"):
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = yaml.safe_load(value)
    return config


def write_job(
    folder: Path,
    overrides: list[str],
    result: dict[str, Any] | None,
) -> None:
    """A Hydra job folder: ``.hydra/{overrides,config}.yaml`` and, unless ``None``, ``result.json``."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(composed_config(overrides)))
    (folder / "lightning_logs" / "version_0").mkdir(parents=True)
    (folder / "lightning_logs" / "version_0" / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
    if result is not None:
        (folder / "result.json").write_text(json.dumps(result, indent=2))


def completed(
    weighting: str,
    seed: int | None,
    overrides: list[str],
    metrics: dict[str, dict[str, float]],
    baseline_of: str | None = None,
    experiment: str = "toy",
) -> dict[str, Any]:
    directions = {"cls": {"acc": "max"}, "reg": {"mse": "min"}, "aux": {"mse": "min"}}
    primary = {"cls": "acc", "reg": "mse", "aux": "mse"}
    return {
        "status": "completed",
        "experiment": experiment,
        "baseline_of": baseline_of,
        "weighting": weighting,
        "seed": seed,
        "overrides": overrides,
        "config_key": config_key(experiment, overrides),
        "metrics": metrics,
        "directions": {t: directions[t] for t in metrics},
        "primary": {t: primary[t] for t in metrics},
        "weights": {t: 0.5 for t in metrics},
    }


def make_sweep(root: Path, with_baselines_inside: bool = False) -> Path:
    """``multiloss-train -m weighting=fixed,scheduled,learnable seed=0,1`` as folders, plus one
    failed job, one interrupted job and one job that never wrote its result."""
    sweep = root / "multirun" / "2026-01-01" / "10-00-00"
    job = 0
    for weighting, (extra, seeds) in SWEEP.items():
        for seed, (acc, mse) in seeds.items():
            overrides = [f"weighting={weighting}", *extra, f"seed={seed}", COMMON]
            metrics = {"cls": {"acc": acc, "loss": 0.4}, "reg": {"mse": mse, "mae": 0.3}}
            write_job(sweep / str(job), overrides, completed(weighting, seed, overrides, metrics))
            job += 1
    failed = ["weighting=learnable", "weighting.init=0.9", "seed=0", COMMON]
    write_job(
        sweep / str(job),
        failed,
        {
            "status": "failed",
            "error": "NonFiniteLossError: non-finite task loss(es) {'reg': nan} at train step 12",
            "experiment": "toy",
            "baseline_of": None,
            "weighting": "learnable",
            "seed": 0,
            "overrides": failed,
            "config_key": config_key("toy", failed),
        },
    )
    interrupted = ["weighting=fixed", "weighting.weights=[1,2]", "seed=1", COMMON]
    write_job(
        sweep / str(job + 1),
        interrupted,
        {"status": "interrupted", "experiment": "toy", "weighting": "fixed", "seed": 1, "overrides": interrupted},
    )
    write_job(sweep / str(job + 2), ["weighting=scheduled", "weighting.unit=epoch", "seed=2", COMMON], None)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    if with_baselines_inside:
        write_baselines(sweep, first_job=job + 3)
    return root / "multirun"


def write_baselines(folder: Path, first_job: int = 0) -> None:
    job = first_job
    for task, metric, values in (("cls", "acc", BASE_ACC), ("reg", "mse", BASE_MSE)):
        for seed, value in values.items():
            overrides = [f"baseline={task}", f"seed={seed}"]
            result = completed("fixed", seed, overrides, {task: {metric: value}}, baseline_of=task)
            write_job(folder / str(job), overrides, result)
            job += 1


def evaluate_on(folder: Path, split_of: Callable[[dict[str, Any]], str]) -> None:
    """Set ``evaluated_on`` of every ``result.json`` under ``folder`` to ``split_of(result)``."""
    for path in folder.rglob("result.json"):
        result = json.loads(path.read_text())
        path.write_text(json.dumps({**result, "evaluated_on": split_of(result)}))


def sample_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def hand_delta_m(acc: float, mse: float) -> float:
    """Δm% = (1/T) Σ_t (−1)^{l_t} (M_t − M_b,t)/M_b,t × 100, T = 2, l = 0 for acc, 1 for mse."""
    base_acc = (BASE_ACC[0] + BASE_ACC[1]) / 2
    base_mse = (BASE_MSE[0] + BASE_MSE[1]) / 2
    return ((acc - base_acc) / base_acc - (mse - base_mse) / base_mse) / 2 * 100


def expected_rows() -> dict[str, dict[str, float]]:
    rows = {}
    for weighting, (_, seeds) in SWEEP.items():
        accs = [seeds[s][0] for s in (0, 1)]
        mses = [seeds[s][1] for s in (0, 1)]
        dms = [hand_delta_m(a, m) for a, m in zip(accs, mses, strict=True)]
        rows[weighting] = {
            "acc": sum(accs) / 2,
            "acc_std": sample_std(accs),
            "mse": sum(mses) / 2,
            "mse_std": sample_std(mses),
            "dm": sum(dms) / 2,
            "dm_std": sample_std(dms),
        }
    return rows


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "lightning_multiloss.app.report", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_main(*args: str, cwd: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The console script's entry point, in this process (the subprocess test covers ``-m``)."""
    here = os.getcwd()
    os.chdir(cwd)
    try:
        code = main(list(args))
    finally:
        os.chdir(here)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- the report as a function --------------------------------------------------------------------
def test_report_values_against_hand_computation(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    write_baselines(tmp_path / "baselines")
    report = make_report([str(sweep)], [str(tmp_path / "baselines")])
    (exp,) = report.experiments
    assert exp.name == "toy" and exp.tasks == ["cls", "reg"]
    assert exp.primary == {"cls": "acc", "reg": "mse"} and exp.directions == {"cls": "max", "reg": "min"}
    expected = expected_rows()
    # Sorted by Δm%, best first.
    order = sorted(expected, key=lambda w: -expected[w]["dm"])
    assert [row.weighting for row in exp.rows] == order == ["scheduled", "fixed", "learnable"]
    for row in exp.rows:
        e = expected[row.weighting]
        assert len(row.runs) == 2 and row.seeds == [0, 1]
        assert row.metrics["cls"].mean == pytest.approx(e["acc"], abs=1e-12)
        assert row.metrics["cls"].std == pytest.approx(e["acc_std"], abs=1e-12)
        assert row.metrics["reg"].mean == pytest.approx(e["mse"], abs=1e-12)
        assert row.metrics["reg"].std == pytest.approx(e["mse_std"], abs=1e-12)
        assert row.delta_m is not None
        assert row.delta_m.mean == pytest.approx(e["dm"], abs=1e-9)
        assert row.delta_m.std == pytest.approx(e["dm_std"], abs=1e-9)
    # Only what sets a configuration apart: no seed, no shared override, no repeat of the weighting.
    assert {row.weighting: row.overrides for row in exp.rows} == {
        "scheduled": [],
        "fixed": [],
        "learnable": ["weighting.init=0.3"],
    }
    assert exp.baselines["cls"].stat.mean == pytest.approx(0.86)
    assert exp.baselines["reg"].stat.mean == pytest.approx(0.26)
    assert exp.missing_baselines == []
    # Every job counted; the ones that did not complete listed with folder and error.
    c = report.counts
    assert (c["runs"], c["completed"], c["swept"], c["baselines"], c["configurations"]) == (13, 10, 6, 4, 3)
    assert (c["failed"], c["interrupted"], c["running"], c["no result"]) == (1, 1, 0, 1)
    problems = {run.status: run for run in report.problems}
    assert problems["failed"].folder.endswith(os.path.join("10-00-00", "6"))
    assert "non-finite task loss" in (problems["failed"].error or "")
    assert problems["interrupted"].folder.endswith("7")
    assert problems["no result"].folder.endswith("8")
    assert "weighting.unit=epoch" in problems["no result"].overrides  # read from .hydra/overrides.yaml


def test_pareto_front_of_the_sweep_matches_brute_force(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    report = make_report([str(sweep)], out=str(tmp_path / "out"))
    (exp,) = report.experiments
    points = [(w, s, acc, mse) for w, (_, seeds) in SWEEP.items() for s, (acc, mse) in seeds.items()]

    def dominates(a: tuple[str, int, float, float], b: tuple[str, int, float, float]) -> bool:
        # acc higher is better, mse lower is better
        at_least = a[2] >= b[2] and a[3] <= b[3]
        strictly = a[2] > b[2] or a[3] < b[3]
        return at_least and strictly

    expected = {(p[0], p[1]) for p in points if not any(dominates(q, p) for q in points)}
    assert expected == {("scheduled", 0), ("learnable", 0), ("learnable", 1)}
    assert {(p.row.weighting, p.run.seed) for p in exp.front} == expected
    assert len(exp.points) == 6
    png = tmp_path / "out" / "pareto.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_pareto_front_function_against_brute_force() -> None:
    rng = random.Random(0)
    for trial in range(50):
        # A small grid forces ties and duplicates.
        points = [(float(rng.randint(0, 6)), float(rng.randint(0, 6))) for _ in range(rng.randint(1, 30))]
        brute = {
            i
            for i, p in enumerate(points)
            if not any(q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1]) for q in points)
        }
        got = pareto_front(points)
        assert set(got) == brute, (trial, points)
        assert len(got) == len(set(got))
        xs = [points[i][0] for i in got]
        assert xs == sorted(xs)


# -- the command line ----------------------------------------------------------------------------
def test_cli_prints_and_writes_mean_std_and_delta_m(tmp_path: Path) -> None:
    make_sweep(tmp_path, with_baselines_inside=True)  # baselines in the same multirun folder
    out = tmp_path / "out"
    proc = run_cli("multirun", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    expected = expected_rows()
    assert "13 runs read: 10 completed (6 swept in 3 configurations, 4 single-task baselines); " in text
    assert "1 failed, 1 interrupted, 0 running, 1 no result." in text
    table = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split(" | ")[1] for line in table] == ["scheduled", "fixed", "learnable"]
    for line, weighting in zip(table, ["scheduled", "fixed", "learnable"], strict=True):
        e = expected[weighting]
        cells = [c.strip() for c in line.strip("| ").split(" | ")]
        assert cells[3] == "2"
        # By hand: mean with four significant digits, std (n − 1) with two; Δm% with two decimals.
        assert cells[4] == f"{e['acc']:.4g} ± {e['acc_std']:.2g}"
        assert cells[5] == f"{e['mse']:.4g} ± {e['mse_std']:.2g}"
        assert cells[6] == f"{e['dm']:+.2f} ± {e['dm_std']:.2f}"
    # fixed: acc (0.80 + 0.84)/2 = 0.82, std |0.84 − 0.80|/√2 = 0.028284…; Δm%, worked out in full:
    # ((0.82 − 0.86)/0.86 − (0.28 − 0.26)/0.26)/2 × 100 = −6.17
    assert "| fixed | — | 2 | 0.82 ± 0.028 | 0.28 ± 0.028 | -6.17 ± " in text
    assert "| learnable | weighting.init=0.3 | 2 |" in text
    assert "Maninis et al. 2019" in text and "No single-task baselines" not in text
    # Failed, interrupted and no-result runs: listed with folder and error, never dropped.
    assert "## Runs that did not complete (3)" in text
    failed_line = next(line for line in text.splitlines() if line.startswith("| failed |"))
    assert os.path.join("multirun", "2026-01-01", "10-00-00", "6") in failed_line
    assert "non-finite task loss(es) {'reg': nan} at train step 12" in failed_line
    assert any(line.startswith("| interrupted |") and "weighting.weights=[1,2]" in line for line in text.splitlines())
    assert any(line.startswith("| no result |") and "no result.json" in line for line in text.splitlines())

    assert (out / "report.md").read_text() == text
    assert (out / "pareto.png").is_file()
    rows = {r["weighting"]: r for r in read_csv(out / "report.csv")}
    assert set(rows) == {"fixed", "scheduled", "learnable"}
    for weighting, e in expected.items():
        r = rows[weighting]
        assert r["n"] == "2" and r["seeds"] == "0 1"
        assert float(r["cls/acc/mean"]) == pytest.approx(e["acc"], abs=1e-12)
        assert float(r["cls/acc/std"]) == pytest.approx(e["acc_std"], abs=1e-12)
        assert float(r["reg/mse/mean"]) == pytest.approx(e["mse"], abs=1e-12)
        assert float(r["reg/mse/std"]) == pytest.approx(e["mse_std"], abs=1e-12)
        assert float(r["delta_m/mean"]) == pytest.approx(e["dm"], abs=1e-9)
        assert float(r["delta_m/std"]) == pytest.approx(e["dm_std"], abs=1e-9)


def test_cli_without_baselines_says_so_and_leaves_delta_m_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_sweep(tmp_path)
    code, out, err = run_main("multirun", cwd=tmp_path, capsys=capsys)
    assert code == 0, err
    assert "No single-task baselines found" in out and "Δm% is left empty" in out
    written = tmp_path / "multirun"  # the default --out: the first folder
    assert (written / "report.md").is_file() and (written / "pareto.png").is_file()
    rows = read_csv(written / "report.csv")
    assert len(rows) == 3 and all(r["delta_m/mean"] == "" and r["delta_m/std"] == "" for r in rows)
    table = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    # Without Δm%, rows in the order of their labels, and the Δm% cell is empty.
    assert [line.split(" | ")[1] for line in table] == ["fixed", "learnable", "scheduled"]
    assert all(line.rstrip().endswith("|  |") for line in table)
    # A second report over the same folder reads the same runs (its own files are not runs).
    code, again, _ = run_main("multirun", cwd=tmp_path, capsys=capsys)
    assert out.startswith("# Sweep report") and "\n9 runs read: 6 completed" in out
    assert code == 0 and "\n9 runs read: 6 completed" in again


def test_missing_baseline_of_one_task_is_named(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    write_baselines(tmp_path / "baselines")
    for job in ("2", "3"):  # drop the reg baselines
        (tmp_path / "baselines" / job / "result.json").unlink()
    report = make_report([str(sweep)], [str(tmp_path / "baselines")], out=str(tmp_path / "out"))
    (exp,) = report.experiments
    assert exp.missing_baselines == ["reg"]
    assert all(row.delta_m is None for row in exp.rows)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "No single-task baseline for task(s) reg" in text
    assert sum(run.status == "no result" for run in report.problems) == 3  # two baselines + one sweep job


def test_the_baselines_line_counts_each_tasks_seeds(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    write_baselines(tmp_path / "baselines")
    (tmp_path / "baselines" / "1" / "result.json").unlink()  # cls keeps one seed, reg two
    make_report([str(sweep)], [str(tmp_path / "baselines")], out=str(tmp_path / "out"))
    line = next(x for x in (tmp_path / "out" / "report.md").read_text().splitlines() if x.startswith("Single-task"))
    assert f"cls acc {BASE_ACC[0]:.4g} ± — (1 seed), reg mse " in line and " (2 seeds). " in line


def test_delta_m_needs_the_runs_and_the_baselines_evaluated_on_one_split(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    write_baselines(tmp_path / "baselines")
    for folder, split in ((sweep, "test"), (tmp_path / "baselines", "val")):  # baselines run with test=false
        evaluate_on(folder, lambda result, split=split: split)
    report = make_report([str(sweep)], [str(tmp_path / "baselines")], out=str(tmp_path / "out"))
    (exp,) = report.experiments
    assert all(row.delta_m is None for row in exp.rows)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Δm% is left empty for 'fixed' (test), 'scheduled' (test), " in text
    assert "evaluated on another split than the single-task baselines (cls: val; reg: val)" in text
    # Evaluated alike, Δm% is there.
    evaluate_on(tmp_path / "baselines", lambda result: "test")
    (exp,) = make_report([str(sweep)], [str(tmp_path / "baselines")], out=str(tmp_path / "out")).experiments
    assert all(row.delta_m is not None for row in exp.rows)


def test_rows_evaluated_on_different_splits_are_named(tmp_path: Path) -> None:
    # A run with test=false reports validation metrics: beside test rows, the table mixed splits
    # without a word (its "Metrics of the test split." line only went away).
    sweep = make_sweep(tmp_path)
    evaluate_on(sweep, lambda result: "val" if result.get("weighting") == "scheduled" else "test")
    make_report([str(sweep)], out=str(tmp_path / "out"))
    text = (tmp_path / "out" / "report.md").read_text()
    assert (
        "the rows' metrics come from different splits (test: 'fixed', 'learnable weighting.init=0.3'; "
        "val: 'scheduled'): compare rows of one split"
    ) in text


def test_rows_run_with_other_seeds_than_the_baselines_have_no_delta_m(tmp_path: Path) -> None:
    # `multiloss-report multirun/s1 multirun/s3 --baselines multirun/b1`: a configuration run with seeds 2, 3
    # ranked first, by its Δm% against baselines (and beside rows) of seeds 0, 1, with no word. The seed
    # draws the train/val/test split: those were other test sets.
    sweep = make_sweep(tmp_path)
    write_baselines(tmp_path / "baselines")
    unknown = ["weighting=dwa", COMMON]  # a run that does not know its seed: compared as before, named nowhere
    write_job(sweep / "unknown", unknown, completed("dwa", None, unknown, {"cls": {"acc": 0.83}, "reg": {"mse": 0.27}}))
    # By hand, against the baselines' means acc (0.85 + 0.87)/2 = 0.86 and mse (0.25 + 0.27)/2 = 0.26:
    dwa = ((0.83 - 0.86) / 0.86 - (0.27 - 0.26) / 0.26) / 2 * 100  # −3.667
    fixed = (((0.80 - 0.86) / 0.86 - (0.30 - 0.26) / 0.26) + ((0.84 - 0.86) / 0.86 - (0.26 - 0.26) / 0.26)) / 4 * 100
    scheduled = (
        (((0.86 - 0.86) / 0.86 - (0.20 - 0.26) / 0.26) + ((0.82 - 0.86) / 0.86 - (0.24 - 0.26) / 0.26)) / 4 * 100
    )
    learnable = (
        (((0.90 - 0.86) / 0.86 - (0.35 - 0.26) / 0.26) + ((0.88 - 0.86) / 0.86 - (0.33 - 0.26) / 0.26)) / 4 * 100
    )

    def delta_ms(exp: Any) -> dict[str, float | None]:
        return {row.weighting: None if row.delta_m is None else row.delta_m.mean for row in exp.rows}

    # Every row and baseline on seeds 0, 1: Δm% as ever, no note.
    (exp,) = make_report([str(sweep)], [str(tmp_path / "baselines")], out=str(tmp_path / "out")).experiments
    assert exp.notes == []
    assert delta_ms(exp) == pytest.approx({"scheduled": scheduled, "dwa": dwa, "fixed": fixed, "learnable": learnable})
    assert [row.weighting for row in exp.rows] == ["scheduled", "dwa", "fixed", "learnable"]
    assert (round(fixed, 2), round(dwa, 2)) == (-6.17, -3.67)
    # The learnable configuration run again with seeds 2 and 3, better: it would have ranked first, at
    # ((0.91 − 0.86)/0.86 − (0.21 − 0.26)/0.26)/2 × 100 = +12.52.
    for path in sweep.rglob("result.json"):
        result = json.loads(path.read_text())
        if result["weighting"] == "learnable" and result["status"] == "completed":
            seed = result["seed"] + 2
            acc, mse = {2: (0.92, 0.20), 3: (0.90, 0.22)}[seed]
            overrides = [f"seed={seed}" if o.startswith("seed=") else o for o in result["overrides"]]
            metrics = {"cls": {"acc": acc, "loss": 0.4}, "reg": {"mse": mse, "mae": 0.3}}
            path.write_text(json.dumps({**result, "seed": seed, "overrides": overrides, "metrics": metrics}))
    report = make_report([str(sweep)], [str(tmp_path / "baselines")], out=str(tmp_path / "out"))
    (exp,) = report.experiments
    assert delta_ms(exp) == pytest.approx({"scheduled": scheduled, "dwa": dwa, "fixed": fixed, "learnable": None})
    assert [row.weighting for row in exp.rows] == ["scheduled", "dwa", "fixed", "learnable"]
    (row,) = [row for row in exp.rows if row.weighting == "learnable"]
    assert row.seeds == [2, 3] and row.metrics["cls"].mean == pytest.approx(0.91)
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| 4 | learnable | weighting.init=0.3 | 2 | 0.91 ± 0.014 | 0.21 ± 0.014 |  |" in text
    assert (
        "Note: Δm% is left empty for 'learnable weighting.init=0.3' (seeds [2, 3]): the single-task baselines "
        "were run with seeds cls: [0, 1]; reg: [0, 1], and the seed draws the train/val/test split"
    ) in text
    assert (
        "Note: the rows were run with different seeds (seeds [0, 1]: 'fixed', 'scheduled'; seeds [2, 3]: "
        "'learnable weighting.init=0.3'), and the seed draws the train/val/test split: rows with different seeds "
        "were evaluated on different splits: compare rows with the same seeds"
    ) in text
    assert "'dwa'" not in text  # its seed is unknown: in neither note
    csv_rows = {r["weighting"]: r for r in read_csv(tmp_path / "out" / "report.csv")}
    assert csv_rows["learnable"]["delta_m/mean"] == "" and csv_rows["learnable"]["seeds"] == "2 3"


def test_baselines_of_other_seeds_leave_delta_m_empty(tmp_path: Path) -> None:
    # `multiloss-report multirun/s1 --baselines multirun/b_seed5`: runs of seeds 0, 1 against baselines
    # trained (and tested) on seed 5's split only gave Δm% with no word.
    sweep = make_sweep(tmp_path)
    write_baselines(tmp_path / "seed5")
    for job in ("1", "3"):  # write_baselines: jobs 0-1 cls (seeds 0, 1), 2-3 reg; keep seed 0's, as seed 5
        (tmp_path / "seed5" / job / "result.json").unlink()
    for job in ("0", "2"):
        path = tmp_path / "seed5" / job / "result.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "seed": 5}))
    report = make_report([str(sweep)], [str(tmp_path / "seed5")], out=str(tmp_path / "out"))
    (exp,) = report.experiments
    assert all(row.delta_m is None for row in exp.rows)
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert (
        "Note: Δm% is left empty for 'fixed' (seeds [0, 1]), 'scheduled' (seeds [0, 1]), "
        "'learnable weighting.init=0.3' (seeds [0, 1]): the single-task baselines were run with seeds "
        "cls: [5]; reg: [5], and the seed draws the train/val/test split: Δm% compares only a row whose seeds "
        "are all among every task's baseline seeds (run the baselines with the same seeds)"
    ) in text
    assert "different seeds" not in text  # the rows share their seeds
    assert all(r["delta_m/mean"] == "" for r in read_csv(tmp_path / "out" / "report.csv"))
    # Baselines of seeds 0 and 1 besides: each row's seed has its baseline, and Δm% is against the
    # baselines of the row's seeds alone (seed 5's was tested on another split): acc (0.85 + 0.87)/2,
    # mse (0.25 + 0.27)/2; over all three, acc (0.85 + 0.85 + 0.87)/3, it was -6.69.
    write_baselines(tmp_path / "seeds01")
    report = make_report([str(sweep)], [str(tmp_path / "seed5"), str(tmp_path / "seeds01")], out=str(tmp_path / "out"))
    base_acc, base_mse = (0.85 + 0.87) / 2, (0.25 + 0.27) / 2
    fixed = [
        ((acc - base_acc) / base_acc - (mse - base_mse) / base_mse) / 2 * 100
        for acc, mse in ((0.80, 0.30), (0.84, 0.26))
    ]
    (exp,) = report.experiments
    (row,) = [row for row in exp.rows if row.weighting == "fixed"]
    assert row.delta_m is not None and row.delta_m.mean == pytest.approx(sum(fixed) / 2, abs=1e-9)
    assert round(sum(fixed) / 2, 2) == -6.17
    assert all(row.delta_m is not None for row in exp.rows) and exp.notes == []


def test_a_configuration_without_a_task_of_the_experiment_is_named(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    write_baselines(sweep / "baselines")
    overrides = ["weighting=fixed", "~model.tasks.reg", "seed=0"]  # the same experiment, one task fewer
    write_job(sweep / "extra", overrides, completed("fixed", 0, overrides, {"cls": {"acc": 0.9}}))
    report = make_report([str(sweep)], out=str(tmp_path / "out"))
    (exp,) = report.experiments
    (row,) = [row for row in exp.rows if "~model.tasks.reg" in row.label]
    assert set(row.metrics) == {"cls"}
    # Its Δm% is over its own task, by hand: (0.9 − cls's baseline of its seed, 0) / that, in %; the
    # other rows keep theirs (a row of fewer tasks left every row's Δm% empty when it lacked a baseline).
    base_acc = BASE_ACC[0]
    assert row.delta_m is not None and row.delta_m.mean == pytest.approx((0.9 - base_acc) / base_acc * 100, abs=1e-9)
    assert all(other.delta_m is not None for other in exp.rows)
    text = (tmp_path / "out" / "report.md").read_text()
    assert (
        "configuration 'fixed ~model.tasks.reg' has no mse for task(s) ['reg'] (the experiment's other runs have): "
        "its cells are empty, and its Δm% is over its other tasks" in text
    )
    assert "Δm% is over each row's own tasks, and the rows have different ones (cls, reg: " in text


def test_a_task_without_a_baseline_leaves_only_its_rows_without_delta_m(tmp_path: Path) -> None:
    # Runs of the experiment with a task added that has no baseline: before, every row lost its Δm%.
    sweep = make_sweep(tmp_path)
    write_baselines(sweep / "baselines")
    overrides = ["weighting=fixed", "+model.tasks.aux=x", "seed=0"]
    metrics = {"cls": {"acc": 0.9}, "reg": {"mse": 0.2}, "aux": {"mse": 0.5}}
    write_job(sweep / "extra", overrides, completed("fixed", 0, overrides, metrics))
    report = make_report([str(sweep)], out=str(tmp_path / "out"))
    (exp,) = report.experiments
    assert exp.missing_baselines == ["aux"]
    (row,) = [row for row in exp.rows if "+model.tasks.aux=x" in row.label]
    assert row.delta_m is None
    others = [other for other in exp.rows if other is not row]
    assert others and all(other.delta_m is not None for other in others)
    (fixed,) = [other for other in others if other.weighting == "fixed"]
    base_acc, base_mse = (sum(v.values()) / len(v) for v in (BASE_ACC, BASE_MSE))
    by_hand = [
        ((run.value("cls", "acc") - base_acc) / base_acc - (run.value("reg", "mse") - base_mse) / base_mse) / 2 * 100
        for run in fixed.runs
    ]
    assert fixed.delta_m is not None and fixed.delta_m.mean == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-9)


def test_one_configuration_is_one_row_however_its_overrides_were_typed(tmp_path: Path) -> None:
    # A sweep records its jobs' overrides in Hydra's normalised form, a single run as typed.
    metrics = {"cls": {"acc": 0.8}, "reg": {"mse": 0.3}}
    typed = {
        0: ["weighting=learnable", "trainer.enable_progress_bar=False", "weighting.weights=[1,2]", "~model.x=null"],
        1: ["weighting=learnable", "trainer.enable_progress_bar=False", "weighting.weights=[1,2]", "~model.x=null"],
        2: ["weighting=learnable", "trainer.enable_progress_bar=false", "weighting.weights=[1, 2]", "~model.x"],
    }
    for seed, overrides in typed.items():
        with_seed = [*overrides, f"seed={seed}"]
        write_job(tmp_path / "runs" / str(seed), with_seed, completed("learnable", seed, with_seed, metrics))
    report = make_report([str(tmp_path / "runs")], out=str(tmp_path / "runs"))
    (row,) = report.experiments[0].rows
    assert row.seeds == [0, 1, 2]


def test_runs_of_one_composed_config_are_one_row_whatever_their_overrides(tmp_path: Path) -> None:
    # A default written out (weighting=fixed) or a display setting (the progress bar) made another
    # row of what is one configuration; settings that train otherwise stay apart.
    metrics = {0: 0.80, 1: 0.84, 2: 0.86, 3: 0.70, 4: 0.60}
    jobs = {
        0: ["trainer.enable_progress_bar=false", "seed=0"],  # a display setting, not the row's label
        1: ["weighting=fixed", "seed=1"],
        2: ["weighting=fixed", "callbacks.loss_weighting.plot=false", "torch_threads=2", "seed=2"],
        3: ["trainer.max_epochs=3", "seed=0"],
        4: ["seed=1"],  # alike on the command line, but composed otherwise (another version's default)
    }
    for job, overrides in jobs.items():
        result = completed("fixed", job % 3, overrides, {"cls": {"acc": metrics[job]}, "reg": {"mse": 0.3}})
        write_job(tmp_path / "runs" / str(job), overrides, result)
    (tmp_path / "runs" / "4" / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({**composed_config(jobs[4]), "trainer": {"max_epochs": 4}})
    )
    rows = {
        row.label: row for row in make_report([str(tmp_path / "runs")], out=str(tmp_path / "out")).experiments[0].rows
    }
    assert set(rows) == {"fixed [trainer.max_epochs=5]", "fixed trainer.max_epochs=3", "fixed [trainer.max_epochs=4]"}
    same = rows["fixed [trainer.max_epochs=5]"]
    assert same.seeds == [0, 1, 2]
    assert same.metrics["cls"].mean == pytest.approx((0.80 + 0.84 + 0.86) / 3)
    assert rows["fixed trainer.max_epochs=3"].metrics["cls"].mean == pytest.approx(0.70)
    assert rows["fixed [trainer.max_epochs=4]"].metrics["cls"].mean == pytest.approx(0.60)


@pytest.mark.parametrize("composed", [True, False], ids=["composed-config", "overrides-only"])
def test_a_number_written_as_an_int_or_a_float_is_one_configuration(tmp_path: Path, composed: bool) -> None:
    # `weighting.init=1` and `weighting.init=1.0` train alike; compared as written they were two rows.
    metrics = {0: 0.80, 1: 0.84, 2: 0.70}
    jobs = {
        0: ["weighting=learnable", "weighting.init=1", "weighting.weights=[1,0.5]", "seed=0"],
        1: ["weighting=learnable", "weighting.init=1.0", "weighting.weights=[1.0, 0.5]", "seed=1"],
        2: ["weighting=learnable", "weighting.init=1.5", "weighting.weights=[1,0.5]", "seed=2"],
    }
    for job, overrides in jobs.items():
        result = completed("learnable", job, overrides, {"cls": {"acc": metrics[job]}, "reg": {"mse": 0.3}})
        write_job(tmp_path / "runs" / str(job), overrides, result)
        if not composed:
            (tmp_path / "runs" / str(job) / ".hydra" / "config.yaml").unlink()
    rows = make_report([str(tmp_path / "runs")], out=str(tmp_path / "out")).experiments[0].rows
    assert sorted(row.seeds for row in rows) == [[0, 1], [2]]
    (together,) = [row for row in rows if row.seeds == [0, 1]]
    assert together.metrics["cls"].mean == pytest.approx((0.80 + 0.84) / 2)


def test_a_run_without_a_composed_config_leaves_the_others_grouped_by_theirs(tmp_path: Path) -> None:
    metrics = {"cls": {"acc": 0.8}, "reg": {"mse": 0.3}}
    for job, overrides in enumerate((["seed=0"], ["weighting=fixed", "seed=1"], ["weighting=fixed", "seed=2"])):
        write_job(tmp_path / "runs" / str(job), overrides, completed("fixed", job, overrides, metrics))
    (tmp_path / "runs" / "2" / ".hydra" / "config.yaml").unlink()
    rows = make_report([str(tmp_path / "runs")], out=str(tmp_path / "out")).experiments[0].rows
    assert sorted(row.seeds for row in rows) == [[0, 1], [2]]


def test_single_seed_shows_a_dash_for_the_std(tmp_path: Path) -> None:
    overrides = ["weighting=fixed", "seed=3"]
    write_job(
        tmp_path / "sweep" / "0",
        overrides,
        completed("fixed", 3, overrides, {"cls": {"acc": 0.75}, "reg": {"mse": 0.5}}),
    )
    report = make_report([str(tmp_path / "sweep")], out=str(tmp_path / "sweep"))
    (row,) = report.experiments[0].rows
    assert row.metrics["cls"].std is None
    text = (tmp_path / "sweep" / "report.md").read_text()
    assert "| 1 | fixed | — | 1 | 0.75 ± — | 0.5 ± — |  |" in text
    assert read_csv(tmp_path / "sweep" / "report.csv")[0]["cls/acc/std"] == ""


# -- errors ---------------------------------------------------------------------------------------
def test_errors_name_the_folder_or_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(MultiLossError, match=r"folder '.*nowhere' does not exist"):
        collect_runs(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(MultiLossError, match=r"no runs under '.*empty'"):
        collect_runs(str(tmp_path / "empty"))

    def corrupt(name: str, content: str) -> Path:
        folder = tmp_path / name / "0"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(content)
        return folder / "result.json"

    def unreadable_because(name: str) -> str:
        """A damaged result.json is a run of its own status, its error the reason naming the file."""
        (run,) = collect_runs(str(tmp_path / name))
        assert run.status == "unreadable" and run.folder == str(tmp_path / name / "0")
        assert run.error is not None
        return run.error

    truncated = corrupt("truncated", '{"status": "completed", "metr')
    assert re.match(rf"corrupt {re.escape(str(truncated))}: cannot read it as JSON", unreadable_because("truncated"))
    bad_status = corrupt("status", json.dumps({"status": "done"}))
    assert re.match(
        rf"corrupt {re.escape(str(bad_status))}: 'status' must be one of .* got 'done'", unreadable_because("status")
    )
    result = completed("fixed", 0, [], {"cls": {"acc": 0.5}})
    result["primary"] = {"cls": "f1"}
    no_primary = corrupt("primary", json.dumps(result))
    assert "the primary metric 'f1' of task 'cls' is not in 'metrics'" in unreadable_because("primary")
    assert no_primary.exists()
    result = completed("fixed", 0, [], {"cls": {"acc": 0.5}})
    result["directions"] = {"cls": {"acc": "up"}}
    corrupt("direction", json.dumps(result))
    assert "must be 'max' or 'min', got 'up'" in unreadable_because("direction")
    result = completed("fixed", 0, [], {"cls": {"acc": "0.5"}})
    corrupt("number", json.dumps(result))
    assert "metric 'acc' of task 'cls' must be a number, got '0.5'" in unreadable_because("number")

    # The command line: a one-line error, exit status 2, no traceback.
    code, out, err = run_main("nowhere", cwd=tmp_path, capsys=capsys)
    assert (code, out, err) == (2, "", "multiloss-report: error: folder 'nowhere' does not exist\n")
    code, out, err = run_main("multirun", "--baselines", "truncated", cwd=tmp_path, capsys=capsys)
    assert code == 2 and out == ""
    assert err.startswith("multiloss-report: error: folder 'multirun' does not exist")
    make_sweep(tmp_path)
    (tmp_path / "afile").write_text("")
    code, out, err = run_main("multirun", "--out", "afile", cwd=tmp_path, capsys=capsys)
    assert (code, out, err) == (2, "", "multiloss-report: error: --out 'afile' is a file, not a folder\n")
    code, out, err = run_main("multirun", "--out", "afile/sub", cwd=tmp_path, capsys=capsys)
    assert code == 2 and out == ""
    assert err.startswith("multiloss-report: error: --out 'afile/sub': cannot create the folder (")


def test_overlapping_folders_read_each_run_once(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    day = sweep / "2026-01-01"
    report = make_report([str(sweep), str(day), str(day / "10-00-00")])
    assert report.counts["runs"] == 9
    assert [len(row.runs) for row in report.experiments[0].rows] == [2, 2, 2]
    assert list(itertools.chain.from_iterable(r.seeds for r in report.experiments[0].rows)) == [0, 1] * 3


def test_a_diverged_run_shows_nan_and_leaves_the_pareto_plot(tmp_path: Path) -> None:
    # json writes NaN for a metric of a run that diverged yet completed.
    for seed, acc in ((0, 0.75), (1, math.nan)):
        overrides = ["weighting=learnable", f"seed={seed}"]
        result = completed("learnable", seed, overrides, {"cls": {"acc": acc}, "reg": {"mse": 0.5}})
        write_job(tmp_path / "sweep" / str(seed), overrides, result)
    report = make_report([str(tmp_path / "sweep")], out=str(tmp_path / "out"))
    (exp,) = report.experiments
    (row,) = exp.rows
    assert math.isnan(row.metrics["cls"].mean) and math.isnan(row.metrics["cls"].std or 0.0)
    assert row.metrics["reg"].mean == 0.5 and row.metrics["reg"].std == 0.0
    assert [p.run.seed for p in exp.points] == [0]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| 1 | learnable | — | 2 | nan ± nan | 0.5 ± 0 |  |" in text
    assert "1 run(s) without finite values of both metrics are left out of the Pareto plot" in text
    # Which run and metric: the table's "nan ± nan" named neither.
    assert "non-finite metric values: 'learnable' seed 1 (cls acc = nan); the means" in text


def test_a_nan_baseline_is_named_and_its_delta_m_has_no_sign(tmp_path: Path) -> None:
    """One NaN in a baseline run made every row's Δm% "+nan ± nan", with no word on which run."""
    for seed in (0, 1):
        overrides = ["weighting=fixed", f"seed={seed}"]
        result = completed("fixed", seed, overrides, {"cls": {"acc": 0.8}, "reg": {"mse": 0.5}})
        write_job(tmp_path / "sweep" / str(seed), overrides, result)
        for task, metrics in (("cls", {"acc": 0.75}), ("reg", {"mse": math.nan if seed == 1 else 0.4})):
            overrides = [f"baseline={task}", f"seed={seed}"]
            base = completed("fixed", seed, overrides, {task: metrics}, baseline_of=task)
            write_job(tmp_path / "base" / f"{task}{seed}", overrides, base)
    report = make_report([str(tmp_path / "sweep")], baselines=[str(tmp_path / "base")], out=str(tmp_path / "out"))
    (exp,) = report.experiments
    assert math.isnan(exp.rows[0].delta_m.mean)  # type: ignore[union-attr]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| nan ± nan |" in text and "+nan" not in text
    assert "non-finite metric values: the baseline of task 'reg' seed 1 (mse = nan); the means" in text


def test_a_running_run_whose_process_is_gone_counts_as_interrupted(tmp_path: Path) -> None:
    """``result.json`` says running: still running if its process lives (or ran elsewhere), else interrupted."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    host = socket.gethostname()
    cases = {"alive": (host, os.getpid()), "gone": (host, dead_pid), "elsewhere": (host + "-other", dead_pid)}
    for name, (where, pid) in cases.items():
        result = {"status": "running", "experiment": "toy", "weighting": "fixed", "seed": 0, "overrides": []}
        write_job(tmp_path / "multirun" / name, ["seed=0"], {**result, "host": where, "pid": pid})
    report = make_report([str(tmp_path / "multirun")], out=str(tmp_path / "out"))
    status = {Path(run.folder).name: run.status for run in report.problems}
    assert status == {"alive": "running", "gone": "interrupted", "elsewhere": "running"}
    (gone,) = [run for run in report.problems if run.status == "interrupted"]
    assert f"its process ({dead_pid} on {host}) is gone" in (gone.error or "")
    assert (report.counts["running"], report.counts["interrupted"]) == (2, 1)


def test_runs_of_the_defaults_have_an_empty_key_and_are_one_configuration(tmp_path: Path) -> None:
    """``multiloss-train -m seed=0,1``: no override but the seed, so ``config_key`` is empty."""
    for seed, (acc, mse) in {0: (0.8, 0.3), 1: (0.9, 0.2)}.items():
        result = completed("fixed", seed, [f"seed={seed}"], {"cls": {"acc": acc}, "reg": {"mse": mse}})
        write_job(tmp_path / "multirun" / str(seed), [f"seed={seed}"], {**result, "config_key": ""})
    report = make_report([str(tmp_path / "multirun")], out=str(tmp_path / "out"))
    (exp,) = report.experiments
    (row,) = exp.rows
    assert row.seeds == [0, 1] and row.config_key == ""
    assert row.metrics["cls"].mean == pytest.approx(0.85) and row.metrics["reg"].mean == pytest.approx(0.25)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "2 runs read: 2 completed (2 swept in 1 configuration, 0 single-task baselines)" in text


def test_baselines_trained_otherwise_than_the_runs_are_named(tmp_path: Path) -> None:
    # Runs of 5 epochs against baselines of 2 gave a Δm% with no word about it. Compared on the composed
    # configs (.hydra/config.yaml), so that a default written out (trainer.max_epochs=5 on the runs'
    # command line, not on the baselines') is no difference.
    sweep = make_sweep(tmp_path)
    write_baselines(tmp_path / "baselines")
    report = make_report([str(sweep)], [str(tmp_path / "baselines")], out=str(tmp_path / "out"))
    assert "trained otherwise" not in (tmp_path / "out" / "report.md").read_text()
    for job, epochs in ((0, 2), (1, 2), (2, 3), (3, 3)):  # write_baselines: jobs 0-1 cls, 2-3 reg
        (tmp_path / "baselines" / str(job) / ".hydra" / "config.yaml").write_text(f"trainer:\n  max_epochs: {epochs}\n")
    make_report([str(sweep)], [str(tmp_path / "baselines")], out=str(tmp_path / "out"))
    text = (tmp_path / "out" / "report.md").read_text()
    assert (
        "the single-task baselines were trained otherwise than the runs: cls: trainer.max_epochs=2 (runs: 5); "
        "reg: trainer.max_epochs=3 (runs: 5); Δm% compares unlike training"
    ) in text
    assert report.counts["ignored"] == 0
    # The experiment's length (`epochs`) counts through the trainer.max_epochs it sets (resolved).
    for job in range(4):
        (tmp_path / "baselines" / str(job) / ".hydra" / "config.yaml").write_text(
            "epochs: 2\ntrainer:\n  max_epochs: ${oc.select:epochs,30}\n"
        )
    make_report([str(sweep)], [str(tmp_path / "baselines")], out=str(tmp_path / "out"))
    text = (tmp_path / "out" / "report.md").read_text()
    assert (
        "the single-task baselines were trained otherwise than the runs: cls: trainer.max_epochs=2 (runs: 5);" in text
    )


def write_task_baselines(folder: Path, extra: dict[tuple[str, int], list[str]]) -> None:
    """``write_baselines``' runs with ``extra`` overrides for some (task, seed), composed alike."""
    for job, (task, metric, values) in enumerate((("cls", "acc", BASE_ACC), ("reg", "mse", BASE_MSE))):
        for seed, value in values.items():
            overrides = [f"baseline={task}", *extra.get((task, seed), []), f"seed={seed}"]
            result = completed("fixed", seed, overrides, {task: {metric: value}}, baseline_of=task)
            write_job(folder / f"{job}_{seed}", overrides, result)


@pytest.mark.parametrize("composed", [True, False], ids=["composed-config", "overrides-only"])
def test_rows_trained_otherwise_than_the_baselines_are_named_when_the_rows_differ(
    tmp_path: Path, composed: bool
) -> None:
    # `multiloss-train -m epochs=1,2` against 1-epoch baselines: the rows were not trained alike, and the
    # note was dropped, so the 2-epoch row's Δm% against the 1-epoch baselines had no word about it.
    for seed, (acc, mse) in {0: (0.80, 0.30), 1: (0.84, 0.26)}.items():
        for name, extra in (("five", []), ("two", ["trainer.max_epochs=2"])):
            overrides = [*extra, f"seed={seed}"]
            result = completed("fixed", seed, overrides, {"cls": {"acc": acc}, "reg": {"mse": mse}})
            write_job(tmp_path / "runs" / f"{name}_{seed}", overrides, result)
    write_task_baselines(tmp_path / "base5", {})  # the composed default: trainer.max_epochs 5
    write_task_baselines(tmp_path / "base2", {(t, s): ["trainer.max_epochs=2"] for t in ("cls", "reg") for s in (0, 1)})
    if not composed:
        for config in tmp_path.rglob("config.yaml"):
            config.unlink()
    # Without composed configs the defaults are unknown: a setting only one side sets shows "—" on the other.
    five = "5" if composed else "—"

    def setup_notes(baselines: str) -> list[str]:
        (exp,) = make_report([str(tmp_path / "runs")], [str(tmp_path / baselines)]).experiments
        assert sorted(row.label for row in exp.rows) == ["fixed", "fixed trainer.max_epochs=2"]
        return [note for note in exp.notes if "trained otherwise" in note]

    assert setup_notes("base5") == [
        "the single-task baselines were trained otherwise than the runs of row(s) 'fixed trainer.max_epochs=2': "
        f"cls: trainer.max_epochs={five} (runs: 2); reg: trainer.max_epochs={five} (runs: 2); "
        "Δm% compares unlike training"
    ]
    assert setup_notes("base2") == [
        "the single-task baselines were trained otherwise than the runs of row(s) 'fixed': "
        f"cls: trainer.max_epochs=2 (runs: {five}); reg: trainer.max_epochs=2 (runs: {five}); "
        "Δm% compares unlike training"
    ]


def app_config(seed: int, epochs: int, max_epochs: int | str) -> dict[str, Any]:
    """A composed config as `multiloss-train` writes it: interpolations unresolved."""
    return {
        "name": "toy",
        "seed": seed,
        "epochs": epochs,  # read only by trainer.max_epochs below
        "output_dir": "${hydra:runtime.output_dir}",  # Hydra's: not resolvable at report time
        "data": {"seed": "${oc.select:seed,0}", "batch_size": 64},
        "model": {
            "tasks": {"cls": {"out_features": 10, "num_classes": "${.out_features}"}, "reg": {"out_features": 1}},
            "optimizer": {"lr": 0.003},
            "where": "${hydra:runtime.cwd}",  # kept as written: the same text in every run
        },
        "weighting": {"_target_": "fixed"},
        "trainer": {
            "max_epochs": max_epochs,
            "default_root_dir": "${oc.select:output_dir,null}",
            "enable_progress_bar": False,
        },
    }


def test_the_composed_configs_compare_as_resolved(tmp_path: Path) -> None:
    # Runs of `epochs=1` against baselines of `trainer.max_epochs=1` were "trained otherwise": the
    # report compared `trainer.max_epochs: ${oc.select:epochs,30}` with 1 (and epochs 1 with 30), and
    # the runs of `epochs=1` and of `trainer.max_epochs=1` were two rows. Both trained 1 epoch.
    runs = {0: (0.80, 0.30, 1, "${oc.select:epochs,30}"), 1: (0.84, 0.26, 1, "${oc.select:epochs,30}")}
    runs[2] = (0.82, 0.28, 30, 1)
    for seed, (acc, mse, epochs, max_epochs) in runs.items():
        overrides = [f"epochs={epochs}" if epochs == 1 else "trainer.max_epochs=1", f"seed={seed}"]
        write_job(
            tmp_path / "runs" / str(seed),
            overrides,
            completed("fixed", seed, overrides, {"cls": {"acc": acc}, "reg": {"mse": mse}}),
        )
        (tmp_path / "runs" / str(seed) / ".hydra" / "config.yaml").write_text(
            yaml.safe_dump(app_config(seed, epochs, max_epochs))
        )
    for epochs_of_baselines in (1, 2):
        folder = tmp_path / f"base{epochs_of_baselines}"
        for task, metric, value in (("cls", "acc", 0.85), ("reg", "mse", 0.25)):
            for seed in runs:
                overrides = [f"baseline={task}", f"trainer.max_epochs={epochs_of_baselines}", f"seed={seed}"]
                result = completed("fixed", seed, overrides, {task: {metric: value}}, baseline_of=task)
                write_job(folder / f"{task}_{seed}", overrides, result)
                (folder / f"{task}_{seed}" / ".hydra" / "config.yaml").write_text(
                    yaml.safe_dump(app_config(seed, 30, epochs_of_baselines))
                )
    (exp,) = make_report([str(tmp_path / "runs")], [str(tmp_path / "base1")]).experiments
    (row,) = exp.rows  # one configuration: every seed trained 1 epoch (data.seed reads the seed: no other one)
    assert row.seeds == [0, 1, 2]
    assert exp.notes == []
    # By hand: acc (0.80 + 0.84 + 0.82)/3 = 0.82 against 0.85, mse (0.30 + 0.26 + 0.28)/3 = 0.28 against 0.25.
    assert row.delta_m is not None
    assert row.delta_m.mean == pytest.approx(((0.82 - 0.85) / 0.85 - (0.28 - 0.25) / 0.25) / 2 * 100)
    # Baselines of 2 epochs: named by what the runs trained with, 1 epoch (not by `epochs`, which only sets it).
    (exp,) = make_report([str(tmp_path / "runs")], [str(tmp_path / "base2")]).experiments
    assert [note for note in exp.notes if "trained otherwise" in note] == [
        "the single-task baselines were trained otherwise than the runs: cls: trainer.max_epochs=2 (runs: 1); "
        "reg: trainer.max_epochs=2 (runs: 1); Δm% compares unlike training"
    ]


def test_baselines_that_differ_only_in_display_settings_are_one_configuration(tmp_path: Path) -> None:
    # A baseline seed run with the progress bar off, another with it on: "mixes 2 configurations", from
    # the overrides, although the progress bar makes no configuration (as in the rows).
    sweep = make_sweep(tmp_path)
    display = {("cls", 0): ["trainer.enable_progress_bar=false"], ("reg", 1): ["trainer.enable_model_summary=false"]}
    write_task_baselines(tmp_path / "display", display)
    (exp,) = make_report([str(sweep)], [str(tmp_path / "display")]).experiments
    assert exp.notes == []
    # A setting that trains otherwise is another configuration: named by what sets the two apart.
    write_task_baselines(tmp_path / "epochs", {**display, ("reg", 1): ["trainer.max_epochs=3"]})
    (exp,) = make_report([str(sweep)], [str(tmp_path / "epochs")]).experiments
    assert [note for note in exp.notes if "mixes" in note] == [
        "the baseline of task 'reg' mixes 2 configurations ['trainer.max_epochs=3', 'trainer.max_epochs=5']: "
        "their mean is used"
    ]


@pytest.mark.parametrize("composed", [True, False], ids=["composed-config", "overrides-only"])
def test_baselines_run_with_other_weightings_are_one_configuration(tmp_path: Path, composed: bool) -> None:
    # A single-task run trains its one task whatever the weighting: `-m experiment=<baselines> weighting=fixed,
    # uncertainty` was "mixes 2 configurations", one per weighting.
    sweep = make_sweep(tmp_path)
    write_task_baselines(tmp_path / "b", {("cls", 1): ["weighting=uncertainty", "schedule@weighting.schedule=cosine"]})
    if not composed:
        for config in (tmp_path / "b").glob("*/.hydra/config.yaml"):
            config.unlink()
    (exp,) = make_report([str(sweep)], [str(tmp_path / "b")]).experiments
    assert [note for note in exp.notes if "mixes" in note] == []
    # Another setting still is another configuration.
    write_task_baselines(tmp_path / "c", {("cls", 1): ["weighting=uncertainty", "trainer.max_epochs=3"]})
    if not composed:
        for config in (tmp_path / "c").glob("*/.hydra/config.yaml"):
            config.unlink()
    (exp,) = make_report([str(sweep)], [str(tmp_path / "c")]).experiments
    assert len([note for note in exp.notes if "the baseline of task 'cls' mixes 2 configurations" in note]) == 1


def test_baselines_of_one_seed_run_twice_count_runs_not_seeds(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    write_baselines(tmp_path / "b")
    write_baselines(tmp_path / "again")  # every baseline seed a second time
    report = make_report([str(sweep)], [str(tmp_path / "b"), str(tmp_path / "again")], out=str(tmp_path / "out"))
    (exp,) = report.experiments
    n_cls, n_reg = len(BASE_ACC), len(BASE_MSE)
    assert f"the baseline of task 'cls' has seed(s) {sorted(BASE_ACC)} more than once: each run counts" in exp.notes
    line = next(x for x in (tmp_path / "out" / "report.md").read_text().splitlines() if x.startswith("Single-task"))
    assert f"({2 * n_cls} runs, {n_cls} seed{'s' if n_cls > 1 else ''})" in line
    assert f"({2 * n_reg} runs, {n_reg} seed{'s' if n_reg > 1 else ''})" in line


def test_twin_rows_apart_only_by_a_missing_composed_config_say_so(tmp_path: Path) -> None:
    # Two runs of each weighting without .hydra/config.yaml: the rows of one weighting read alike and were
    # labelled with the same list of overrides.
    metrics = {"cls": {"acc": 0.8}, "reg": {"mse": 0.3}}
    job = 0
    for weighting in ("fixed", "scheduled"):
        for seed in (0, 1, 2):
            overrides = [f"weighting={weighting}", f"seed={seed}", COMMON]
            write_job(tmp_path / "runs" / str(job), overrides, completed(weighting, seed, overrides, metrics))
            if seed == 2:
                (tmp_path / "runs" / str(job) / ".hydra" / "config.yaml").unlink()
            job += 1
    rows = make_report([str(tmp_path / "runs")], out=str(tmp_path / "out")).experiments[0].rows
    labels = sorted(row.label for row in rows)
    assert labels == [
        "fixed [composed config]",
        "fixed [no composed config (.hydra/config.yaml)]",
        "scheduled [composed config]",
        "scheduled [no composed config (.hydra/config.yaml)]",
    ]


def test_the_header_counts_the_runs_ignored_under_baselines(tmp_path: Path) -> None:
    # "27 runs read: 27 completed (9 swept ..., 9 single-task baselines)": the 9 others were not counted.
    sweep = make_sweep(tmp_path)
    report = make_report([str(sweep)], [str(sweep)], out=str(tmp_path / "out"))
    text = (tmp_path / "out" / "report.md").read_text()
    assert report.counts["ignored"] == 0  # a folder given both ways counts as swept
    other = make_sweep(tmp_path / "other")
    report = make_report([str(sweep)], [str(other)], out=str(tmp_path / "out"))
    text = (tmp_path / "out" / "report.md").read_text()
    swept = report.counts["swept"]
    # The other sweep's jobs, its failed and interrupted ones too (their result.json says they are no
    # baselines): not this report's. A job folder without a result.json may be a baseline: listed.
    assert report.counts["ignored"] == swept + 2 and report.counts["completed"] == swept
    assert report.counts["runs"] == 2 * (swept + 3)
    assert [report.counts[s] for s in ("failed", "interrupted", "no result")] == [1, 1, 2]
    assert f"({swept} swept in " in text and f"; {swept + 2} more under --baselines ignored (not baselines)." in text
    listed = [line for line in text.splitlines() if str(other) in line]
    assert len(listed) == 2 and "Baselines from" in listed[0] and "no result" in listed[1]


# -- corner cases the report read wrong ---------------------------------------------------------
def result_file(folder: Path, result: dict[str, Any]) -> None:
    """A ``result.json`` alone, as ``LossWeightingCallback(result_file=...)`` writes it without Hydra."""
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(result))


def test_runs_without_hydra_are_one_configuration_per_weighting(tmp_path: Path) -> None:
    # No overrides, so one empty key: the fixed and learnable runs were averaged into one "fixed" row.
    for weighting, values in (("fixed", (0.80, 0.84)), ("learnable", (0.90, 0.86))):
        for seed, acc in enumerate(values):
            metrics = {"cls": {"acc": acc}, "reg": {"mse": 0.3}}
            result_file(tmp_path / "nh" / weighting / f"seed{seed}", completed(weighting, seed, [], metrics))
    (exp,) = make_report([str(tmp_path / "nh")]).experiments
    rows = {row.weighting: row for row in exp.rows}
    assert set(rows) == {"fixed", "learnable"}
    assert rows["fixed"].metrics["cls"].mean == pytest.approx(0.82)
    assert rows["learnable"].metrics["cls"].mean == pytest.approx(0.88)


def test_a_seed_without_a_task_metric_is_named(tmp_path: Path) -> None:
    # Seed 2 lacks reg's mse: its mean is over 2 seeds while the row says 3, and nothing said so.
    for seed in range(3):
        metrics = {"cls": {"acc": 0.8}, **({"reg": {"mse": 0.3}} if seed < 2 else {})}
        write_job(tmp_path / "s" / str(seed), [f"seed={seed}"], completed("fixed", seed, [f"seed={seed}"], metrics))
    make_report([str(tmp_path / "s")], out=str(tmp_path / "out"))
    assert "configuration 'fixed': seed(s) [2] have no mse for task 'reg': its mean is over 2 of 3 seeds" in (
        tmp_path / "out" / "report.md"
    ).read_text(encoding="utf-8")


def test_plus_and_minus_infinity_in_one_configuration_do_not_crash(tmp_path: Path) -> None:
    for seed, mse in enumerate((math.inf, -math.inf)):
        metrics = {"cls": {"acc": 0.8}, "reg": {"mse": mse}}
        write_job(tmp_path / "s" / str(seed), [f"seed={seed}"], completed("fixed", seed, [f"seed={seed}"], metrics))
    (exp,) = make_report([str(tmp_path / "s")]).experiments
    assert math.isnan(exp.rows[0].metrics["reg"].mean)  # was "ValueError: -inf + inf in fsum"


def test_runs_below_a_folder_with_a_result_and_below_a_hydra_job_are_found(tmp_path: Path) -> None:
    top = tmp_path / "top"
    result_file(top, completed("fixed", 0, [], {"cls": {"acc": 0.8}, "reg": {"mse": 0.3}}))
    result_file(top / "learnable", completed("learnable", 0, [], {"cls": {"acc": 0.9}, "reg": {"mse": 0.2}}))
    # A Hydra job whose result_file is results/result.json: it was listed as "no result".
    job = tmp_path / "top" / "job"
    write_job(job, ["weighting=dwa", "seed=0"], None)
    result_file(
        job / "results", completed("dwa", 0, ["weighting=dwa", "seed=0"], {"cls": {"acc": 0.7}, "reg": {"mse": 0.4}})
    )
    runs = collect_runs(str(tmp_path / "top"))
    assert sorted(run.weighting for run in runs) == ["dwa", "fixed", "learnable"]
    assert all(run.status == "completed" for run in runs)


def test_the_report_files_are_utf8_in_any_locale(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_multiloss.app.report", str(sweep), "--out", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Δm%" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")


def test_an_out_folder_that_cannot_be_written_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = make_sweep(tmp_path)
    (tmp_path / "out" / "report.md").mkdir(parents=True)  # report.md cannot be written: a folder holds its name
    code, _, err = run_main(str(sweep), "--out", str(tmp_path / "out"), cwd=tmp_path, capsys=capsys)
    assert code == 2
    assert (
        err.startswith(f"multiloss-report: error: --out '{tmp_path / 'out'}': cannot write ") and err.count("\n") == 1
    )
    assert "(Is a directory)" in err


def test_disagreeing_directions_and_shared_overrides_spelled_differently(tmp_path: Path) -> None:
    for seed in range(2):
        overrides = [f"seed={seed}", "trainer.logger=False" if seed == 0 else "trainer.logger=false", "weighting=dwa"]
        result = completed("dwa", seed, overrides, {"cls": {"acc": 0.8}, "reg": {"mse": 0.3}})
        if seed == 1:
            result["directions"] = {"cls": {"acc": "min"}, "reg": {"mse": "min"}}
        write_job(tmp_path / "s" / str(seed), overrides, result)
    other = ["seed=0", "trainer.logger=false", "weighting=fixed"]
    write_job(tmp_path / "s" / "2", other, completed("fixed", 0, other, {"cls": {"acc": 0.7}, "reg": {"mse": 0.4}}))
    report = make_report([str(tmp_path / "s")], out=str(tmp_path / "out"))
    (exp,) = report.experiments
    assert sorted(row.label for row in exp.rows) == ["dwa", "fixed"]  # trainer.logger is shared by every row
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "says 'acc' of task 'cls' is better when lower; the report uses the first run's direction (max)" in text


def test_a_run_that_kept_a_shorter_plan_is_not_the_fresh_runs_configuration(tmp_path: Path) -> None:
    # A unit="fraction" schedule resumed to 4 epochs kept its 2-epoch plan (by default): it trained
    # otherwise than a fresh 4-epoch run of the same overrides, and was averaged with it as one row.
    overrides = ["weighting=scheduled", "trainer.max_epochs=4", "seed=0"]
    for job, plans, acc in (("fresh", [80], 0.9), ("resumed", [40], 0.7), ("again", [80], 0.8)):
        metrics = {"cls": {"acc": acc}, "reg": {"mse": 0.2}}
        result = {**completed("scheduled", 0, overrides, metrics), "planned_steps": plans}
        write_job(tmp_path / "runs" / job, overrides, result)
    report = make_report([str(tmp_path / "runs")], out=str(tmp_path / "out"))
    (exp,) = report.experiments
    assert sorted((len(row.runs), row.metrics["cls"].mean) for row in exp.rows) == [
        (1, 0.7),
        (2, pytest.approx(0.85)),
    ]


# -- Δm% and grouping that a careful comparison would have been misled by ---------------------------
def test_delta_m_over_a_negative_baseline_keeps_better_positive(tmp_path: Path) -> None:
    # R² (or a negative log-likelihood) below 0: dividing by M_b itself flipped the sign, so a run
    # better than its baseline had a negative Δm% and sorted last.
    directions = {"cls": {"acc": "max"}, "reg": {"r2": "max"}}
    for seed in (0, 1):
        for task, metric, value in (("cls", "acc", 0.9), ("reg", "r2", -0.5)):
            overrides = [f"baseline={task}", f"seed={seed}"]
            result = completed("fixed", seed, overrides, {task: {metric: value}}, baseline_of=task)
            result.update(directions={task: directions[task]}, primary={task: metric})
            write_job(tmp_path / "base" / f"{task}{seed}", overrides, result)
        for weighting, r2 in (("fixed", -0.25), ("dwa", -0.75)):
            overrides = [f"weighting={weighting}", f"seed={seed}"]
            result = completed(weighting, seed, overrides, {"cls": {"acc": 0.9}, "reg": {"r2": r2}})
            result.update(directions=directions, primary={"cls": "acc", "reg": "r2"})
            write_job(tmp_path / "runs" / f"{weighting}{seed}", overrides, result)
    (exp,) = make_report([str(tmp_path / "runs")], [str(tmp_path / "base")], out=str(tmp_path / "out")).experiments
    by_hand = {  # (1/2) (0 + (M - M_b)/|M_b|) × 100, higher r2 is better
        "fixed": (0.0 + (-0.25 - -0.5) / 0.5) / 2 * 100,
        "dwa": (0.0 + (-0.75 - -0.5) / 0.5) / 2 * 100,
    }
    assert by_hand == {"fixed": 25.0, "dwa": -25.0}
    assert [(row.weighting, row.delta_m and row.delta_m.mean) for row in exp.rows] == [
        ("fixed", pytest.approx(by_hand["fixed"])),
        ("dwa", pytest.approx(by_hand["dwa"])),
    ]


def test_delta_m_is_against_the_baselines_of_the_rows_seeds(tmp_path: Path) -> None:
    # The seed draws the split: a seed-0 row was compared with the mean of the seed-0 and seed-1
    # baselines, half of them tested on other data, without a word.
    sweep = make_sweep(tmp_path)
    write_baselines(tmp_path / "base")  # seeds 0 and 1
    for job in ("1", "3", "5"):  # keep seed 0 of each configuration
        (sweep / "2026-01-01" / "10-00-00" / job / "result.json").unlink()
    (exp,) = make_report([str(sweep)], [str(tmp_path / "base")], out=str(tmp_path / "out")).experiments
    (fixed,) = [row for row in exp.rows if row.weighting == "fixed"]
    assert fixed.seeds == [0]
    acc, mse = SWEEP["fixed"][1][0]
    by_hand = ((acc - BASE_ACC[0]) / BASE_ACC[0] - (mse - BASE_MSE[0]) / BASE_MSE[0]) / 2 * 100
    assert fixed.delta_m is not None and fixed.delta_m.mean == pytest.approx(by_hand, abs=1e-9)
    all_seeds = hand_delta_m(acc, mse)  # against the mean of both seeds' baselines: what it was
    assert abs(by_hand - all_seeds) > 0.5
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "M_b,t over the baseline runs of the row's seeds" in text


def test_a_row_on_another_split_leaves_the_other_rows_delta_m(tmp_path: Path) -> None:
    # One configuration run with test=false emptied Δm% for every row, the rows tested like their
    # baselines too.
    sweep = make_sweep(tmp_path)
    write_baselines(sweep / "baselines")
    rows_on_val = {"scheduled"}  # its rows, not the baselines (weighting "fixed")
    evaluate_on(sweep, lambda result: "val" if result["weighting"] in rows_on_val else "test")
    (exp,) = make_report([str(sweep)], out=str(tmp_path / "out")).experiments
    assert {row.weighting: row.delta_m is not None for row in exp.rows} == {
        "fixed": True,
        "learnable": True,
        "scheduled": False,
    }
    (fixed,) = [row for row in exp.rows if row.weighting == "fixed"]
    assert fixed.delta_m is not None and fixed.delta_m.mean == pytest.approx(expected_rows()["fixed"]["dm"])
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert (
        "Note: Δm% is left empty for 'scheduled' (val): evaluated on another split than the single-task "
        "baselines (cls: test; reg: test), or on several"
    ) in text


def test_a_zero_baseline_leaves_only_the_rows_with_that_task_empty(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    write_baselines(sweep / "baselines")
    for seed in (0, 1):
        base = ["baseline=aux", f"seed={seed}"]
        write_job(sweep / f"aux-base{seed}", base, completed("fixed", seed, base, {"aux": {"mse": 0.0}}, "aux"))
        row = ["weighting=fixed", "+model.tasks.aux=x", f"seed={seed}"]
        metrics = {"cls": {"acc": 0.9}, "reg": {"mse": 0.2}, "aux": {"mse": 0.5}}
        write_job(sweep / f"aux{seed}", row, completed("fixed", seed, row, metrics))
    (exp,) = make_report([str(sweep)], out=str(tmp_path / "out")).experiments
    with_aux = [row for row in exp.rows if "aux" in row.metrics]
    assert len(with_aux) == 1 and with_aux[0].delta_m is None
    assert all(row.delta_m is not None for row in exp.rows if "aux" not in row.metrics)
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "Δm% is undefined for 'fixed +model.tasks.aux=x' (task(s) ['aux']): the baseline metric is 0" in text


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("weighting.weights={cls:1,reg:0.3}", "weighting.weights={reg: 0.3, cls: 1.0}"),
        ("++weighting.weights.reg=0.3", "+weighting.weights.reg=0.3"),
    ],
    ids=["numbers-in-a-mapping", "plus-prefixes"],
)
def test_a_setting_typed_two_ways_stays_in_its_rows_label(tmp_path: Path, first: str, second: str) -> None:
    # The runs were one row (their composed configs are equal), labelled "fixed" alone: as if the
    # weights were the defaults.
    for seed, setting in enumerate((first, second)):
        overrides = ["weighting=fixed", setting, f"seed={seed}"]
        result = completed("fixed", seed, overrides, {"cls": {"acc": 0.8}, "reg": {"mse": 0.3}})
        write_job(tmp_path / "runs" / str(seed), overrides, result)
        config = {**composed_config(["weighting=fixed"]), "weighting": {"_target_": "fixed", "weights": "tuned"}}
        (tmp_path / "runs" / str(seed) / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    overrides = ["weighting=fixed", "seed=0"]
    default = completed("fixed", 0, overrides, {"cls": {"acc": 0.7}, "reg": {"mse": 0.4}})
    write_job(tmp_path / "default", overrides, default)
    report = make_report([str(tmp_path / "runs"), str(tmp_path / "default")], out=str(tmp_path / "out"))
    rows = report.experiments[0].rows
    labels = sorted(row.label for row in rows)
    assert labels == sorted(["fixed", f"fixed {first}"])
    (tuned,) = [row for row in rows if row.label != "fixed"]
    assert tuned.seeds == [0, 1]


def test_runs_reached_through_links_are_read(tmp_path: Path) -> None:
    # A folder of links to chosen runs: the walk did not follow them ("1 run read" of 2; a folder
    # of links only had "no runs").
    sweep = make_sweep(tmp_path) / "2026-01-01" / "10-00-00"
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    for job in ("0", "1"):  # fixed, seeds 0 and 1
        (chosen / f"fixed-{job}").symlink_to(sweep / job, target_is_directory=True)
    (chosen / "loop").symlink_to(chosen, target_is_directory=True)  # a link to a folder above: no loop
    runs = collect_runs(str(chosen))
    assert sorted(r.seed for r in runs) == [0, 1]
    report = make_report([str(chosen), str(sweep / "0")], out=str(tmp_path / "out"))  # a run twice: once
    (row,) = report.experiments[0].rows
    assert row.seeds == [0, 1] and report.counts["runs"] == 2


def test_the_pareto_plot_leaves_the_users_backend_and_figures(tmp_path: Path) -> None:
    """make_report in a notebook: its backend and open figures stay (pyplot's matplotlib.use("Agg")
    switched the whole process)."""
    import matplotlib
    import matplotlib.pyplot as plt

    sweep = make_sweep(tmp_path)
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        users = plt.figure()
        make_report([str(sweep)], out=str(tmp_path / "out"))
        assert (tmp_path / "out" / "pareto.png").read_bytes().startswith(b"\x89PNG")
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == [users.number]
    finally:
        plt.close("all")
        matplotlib.use(before)


def test_one_damaged_result_leaves_the_other_runs_compared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sweep whose job 0 (fixed, seed 0) has a truncated result.json: the other runs are compared
    as without it (fixed keeps its seed-1 run) and the damaged one is listed, naming the file; a
    damaged file under --baselines is listed too, not ignored as a run of another sweep."""
    sweep = make_sweep(tmp_path)
    damaged = sweep / "2026-01-01" / "10-00-00" / "0" / "result.json"
    damaged.write_text('{"status": "completed", "metr')
    baselines = tmp_path / "baselines"
    write_baselines(baselines)
    (baselines / "0" / "result.json").write_text("{")
    code, out, err = run_main("multirun", "--baselines", "baselines", cwd=tmp_path, capsys=capsys)
    assert code == 0 and err == ""
    report = make_report([str(sweep)], [str(baselines)], out=str(tmp_path / "out"))
    c = report.counts
    assert (c["runs"], c["completed"], c["unreadable"], c["ignored"]) == (13, 8, 2, 0)
    fixed = {row.weighting: row for row in report.experiments[0].rows}["fixed"]
    acc, mse = SWEEP["fixed"][1][1]  # its seed-1 run alone
    assert fixed.seeds == [1] and fixed.metrics["cls"].mean == pytest.approx(acc)
    assert fixed.metrics["reg"].mean == pytest.approx(mse)
    unreadable = sorted(run.folder for run in report.problems if run.status == "unreadable")
    assert unreadable == [str(baselines / "0"), str(damaged.parent)]
    assert any(line.endswith(", 2 unreadable.") for line in out.splitlines()[:8])  # the header counts them
    rows = [line for line in out.splitlines() if line.startswith("| unreadable |")]
    assert len(rows) == 2 and all("cannot read it as JSON" in row for row in rows)
    assert any(os.path.join("10-00-00", "0", "result.json") in row for row in rows)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"status": "completed", "metrics": {"cls": {"acc": 1' + "0" * 400 + "}}}", "within float's range"),
        ('{"status": "completed", "seed": 1' + "0" * 5000 + "}", "cannot read it as JSON"),
        ("[" * 100_000 + "]" * 100_000, "cannot read it as JSON"),
    ],
    ids=["beyond-float", "too-many-digits", "too-deep"],
)
def test_a_result_json_python_cannot_hold_is_listed_as_unreadable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, reason: str
) -> None:
    (tmp_path / "runs" / "0").mkdir(parents=True)
    (tmp_path / "runs" / "0" / "result.json").write_text(content)
    code, out, err = run_main("runs", cwd=tmp_path, capsys=capsys)
    assert code == 0 and "Traceback" not in err
    (row,) = [line for line in out.splitlines() if line.startswith("| unreadable |")]
    assert f"`{os.path.join('runs', '0')}`" in row and "corrupt " in row and reason in row


def test_the_pareto_plot_holds_long_row_labels(tmp_path: Path) -> None:
    """A row is labelled with every override that sets it apart (all of them for a report of one
    configuration): its legend entry and the labels at the front's points ran off the figure, and
    matplotlib warned "Tight layout not applied"."""
    from matplotlib import image as mpimg

    overrides = [
        "weighting=fixed",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2",
        "trainer.max_epochs=1",
    ]
    for seed, (acc, mse) in ((0, (0.8, 0.5)), (1, (0.7, 0.4))):
        result = completed("fixed", seed, [*overrides, f"seed={seed}"], {"cls": {"acc": acc}, "reg": {"mse": mse}})
        write_job(tmp_path / "sweep" / str(seed), [*overrides, f"seed={seed}"], result)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_report([str(tmp_path / "sweep")], out=str(tmp_path / "out"))
    width = mpimg.imread(tmp_path / "out" / "pareto.png").shape[1]
    assert width > 7.5 * 120  # the figure grew to hold the legend beside the axes
