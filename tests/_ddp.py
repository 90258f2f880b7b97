"""Run a test script as a real 2-process DDP job on CPU (gloo) and collect what each rank wrote.

Lightning's ``ddp`` strategy launches the other ranks by re-running the script, which cannot
happen inside pytest, so each DDP test lives in ``tests/scripts/`` and is run as a subprocess.
A script writes its per-rank results with :func:`save_rank_result`; the test reads them with
:func:`run_ddp_script`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

SCRIPTS = Path(__file__).parent / "scripts"
ROOT = Path(__file__).parent.parent


def run_ddp_script(name: str, out_dir: Path, *args: str, timeout: float = 240) -> list[dict[str, Any]]:
    """Run ``tests/scripts/<name>`` with ``out_dir`` and ``args``; return the ranks' results in rank order."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    for var in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), str(out_dir), *args],
        env=env,
        cwd=str(out_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    results = sorted(out_dir.glob("rank*.pt"))
    assert results, f"{name} wrote no rank results:\n{proc.stderr[-4000:]}"
    return [torch.load(p, weights_only=True) for p in results]


def save_rank_result(out_dir: str | Path, rank: int, result: dict[str, Any]) -> None:
    """Write one rank's result (tensors, numbers, lists, dicts: loadable with weights_only=True),
    the last thing a script does, then leave the process group, as ``multiloss-train`` does at the
    end of a run: a process that exits with it alive leaves gloo's threads to the interpreter's
    exit, which now and then aborts ("terminate called without an active exception")."""
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
