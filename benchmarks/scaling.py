"""Cost of the gradient-level strategies against a fixed sum, as the number of tasks K grows.

A small conv trunk (1×16×16 input → conv 16 → conv 32, stride 2 → linear 2048→64 = the shared
representation ``z``, 136k shared parameters) with K linear classification heads (10 classes
each), through ``MultiTaskMixin``. For each K in ``--tasks``: ``fixed``, then every registered
gradient strategy on both routes (``representation``, ``parameters``) and GradDrop.

A step is what Lightning's automatic optimization does per batch: ``training_step`` (forward,
task losses, the strategy's per-task gradients and weights), the backward of the returned loss
and the optimizer step (SGD), timed with ``time.perf_counter`` (CUDA: synchronised). Lightning's
own loop (the Trainer's hooks and logging) is left out: it costs the same for every strategy and
would only lower the ratios. Each configuration runs ``--warmup`` steps, then ``--steps`` timed
steps (median). The configurations of one K are interleaved in rounds (``--rounds``), in a rotated
order, and each ratio is taken to ``fixed`` within its round; the table shows the median over
the rounds. The ``gramian only`` rows use weights of 1 computed from the Gramian: the cost of the
route itself (per-task gradients, Gramian, combined loss), without any strategy's solver.

Peak memory of one step (measured in the first round), above what was allocated before it:
CUDA: ``torch.cuda.max_memory_allocated``; CPU: the peak of live CPU tensor memory from
``torch.profiler`` (``profile_memory=True``), summed op by op in time order (an estimate at
operator granularity).

The CPU default is one intra-op thread: with tiny operators, a thread pool on busy cores stalls
and makes the timings erratic (``--threads 0`` keeps torch's default).

Run: ``python benchmarks/scaling.py`` (``--help`` for the options; ``--device cuda``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_multiloss import MultiTaskMixin, Task
from lightning_multiloss.weighting import WEIGHTINGS, Fixed, GradDrop, GramianWeighting, Progress, Weighting


class ConvNet(MultiTaskMixin, pl.LightningModule):
    def __init__(self, weighting: Weighting, num_tasks: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 8 * 8, 64),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict({f"t{i}": nn.Linear(64, 10) for i in range(num_tasks)})
        tasks = [Task(f"t{i}", F.cross_entropy) for i in range(num_tasks)]
        self.configure_multitask(tasks, weighting)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.shared_representation(self.trunk(x))
        return {name: head(z) for name, head in self.heads.items()}

    # Logging is Lightning's job, measured elsewhere: no Trainer here.
    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_dict(self, *args: Any, **kwargs: Any) -> None:
        pass


class EqualWeights(GramianWeighting):
    """w = 1 from the Gramian: the cost of the route alone, without a strategy's solver."""

    name = "gramian-only"

    def compute_weights(self, gramian: Tensor, losses: Tensor) -> Tensor:
        return torch.ones_like(losses)


def configurations() -> list[tuple[str, Callable[[], Weighting]]]:
    configs: list[tuple[str, Callable[[], Weighting]]] = [
        ("fixed", Fixed),
        ("gramian only (repr)", lambda: EqualWeights(route="representation")),
        ("gramian only (para)", lambda: EqualWeights(route="parameters")),
    ]
    names = sorted(n for n, c in WEIGHTINGS.items() if issubclass(c, GramianWeighting))
    for route in ("representation", "parameters"):
        for name in names:
            configs.append((f"{name} ({route[:4]})", lambda n=name, r=route: WEIGHTINGS[n](route=r)))  # type: ignore[misc,call-arg]
    configs.append(("graddrop (repr)", GradDrop))
    return configs


def make_batch(num_tasks: int, batch_size: int, device: torch.device) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    batch = {"x": torch.randn(batch_size, 1, 16, 16, generator=g)}
    for i in range(num_tasks):
        batch[f"t{i}"] = torch.randint(0, 10, (batch_size,), generator=g)
    return {k: v.to(device) for k, v in batch.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_step(model: ConvNet, optimizer: torch.optim.Optimizer, batch: dict[str, Tensor], step: int) -> None:
    model.weighting.set_progress(Progress(step, 0, None))
    optimizer.zero_grad(set_to_none=True)
    loss = model.training_step(batch, step)
    assert loss is not None
    loss.backward()
    optimizer.step()
    model.weighting.after_optimizer_step()


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Hide what native code writes to file descriptor 2 (the profiler logs two lines per use)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def cpu_peak_bytes(run: Callable[[], None]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def measure(
    factory: Callable[[], Weighting], num_tasks: int, args: argparse.Namespace, device: torch.device, memory: bool
) -> tuple[float, float]:
    """(median step seconds, peak step memory in MiB or NaN when ``memory`` is false)."""
    model = ConvNet(factory(), num_tasks).to(device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = make_batch(num_tasks, args.batch_size, device)
    step = 0
    for _ in range(args.warmup):
        one_step(model, optimizer, batch, step)
        step += 1
    times = []
    for _ in range(args.steps):
        sync(device)
        start = time.perf_counter()
        one_step(model, optimizer, batch, step)
        sync(device)
        times.append(time.perf_counter() - start)
        step += 1
    if not memory:
        return statistics.median(times), math.nan
    optimizer.zero_grad(set_to_none=False)  # gradients allocated before the memory step, as in training
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        one_step(model, optimizer, batch, step)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = cpu_peak_bytes(lambda: one_step(model, optimizer, batch, step))
    return statistics.median(times), peak / 2**20


def check_run_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, min_steps: int = 1) -> None:
    """Refuse, in one line, the arguments that would fail after minutes of timing (a table of
    nothing, a loss of an empty batch, no CUDA), for every benchmark that has them."""
    bounds = {"steps": min_steps, "rounds": 1, "warmup": 0, "batch_size": 1, "threads": 0}
    for name, least in bounds.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            parser.error(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
    if any(k < 1 for k in getattr(args, "tasks", None) or ()):
        parser.error(f"--tasks: each K must be >= 1, got {args.tasks}")
    device = getattr(args, "device", "cpu")
    if re.fullmatch(r"cpu|cuda(:\d+)?", device) is None:  # torch.device("cuda:x") is a traceback
        parser.error(f"--device must be cpu or cuda (cuda:N), got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")


def check_known(parser: argparse.ArgumentParser, option: str, given: list[str] | None, known: list[str]) -> None:
    """Refuse names in ``given`` that none of ``known`` is (a typo ran the references alone)."""
    unknown = sorted(set(given or ()) - set(known))
    if unknown:
        parser.error(f"{option}: unknown {unknown}; the choices are {sorted(set(known))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 4, 8, 16, 40], help="values of K")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (ratios: median over rounds)")
    parser.add_argument("--only", nargs="*", default=None, help="strategy names to keep (fixed is always run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on CPU (0: torch's default)")
    args = parser.parse_args()
    check_run_arguments(parser, args)
    device = torch.device(args.device)
    if args.threads > 0 and device.type == "cpu":
        torch.set_num_threads(args.threads)
    configs = configurations()
    check_known(parser, "--only", args.only, sorted({c[0].split(" ")[0] for c in configs}))
    if args.only:
        configs = [c for c in configs if c[0] == "fixed" or c[0].split(" ")[0] in args.only]
    labels = [label for label, _ in configs]
    ratio: dict[tuple[str, int], list[float]] = {}
    seconds: dict[tuple[str, int], list[float]] = {}
    memory: dict[tuple[str, int], float] = {}
    started = time.perf_counter()
    for k in args.tasks:
        for r in range(args.rounds):
            order = configs[r % len(configs) :] + configs[: r % len(configs)]
            results = {}
            for label, factory in order:
                results[label] = measure(factory, k, args, device, memory=r == 0)
            for label, (t, mem) in results.items():
                seconds.setdefault((label, k), []).append(t)
                ratio.setdefault((label, k), []).append(t / results["fixed"][0])
                if r == 0:
                    memory[(label, k)] = mem
    elapsed = time.perf_counter() - started
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(
        f"device={device} threads={threads} batch={args.batch_size} steps={args.steps} "
        f"rounds={args.rounds} ({elapsed:.0f} s)\n"
    )
    print("Step time in ms (ratio to fixed, same K, same round)\n")
    print("| strategy | " + " | ".join(f"K={k}" for k in args.tasks) + " |")
    print("|---|" + "---:|" * len(args.tasks))
    for label in labels:
        cells = []
        for k in args.tasks:
            ms = statistics.median(seconds[(label, k)]) * 1000
            cells.append(f"{ms:.1f}" if label == "fixed" else f"{ms:.1f} ({statistics.median(ratio[(label, k)]):.2f}×)")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nPeak memory of one step in MiB, above the memory held before it\n")
    print("| strategy | " + " | ".join(f"K={k}" for k in args.tasks) + " |")
    print("|---|" + "---:|" * len(args.tasks))
    for label in labels:
        print(f"| {label} | " + " | ".join(f"{memory[(label, k)]:.1f}" for k in args.tasks) + " |")


if __name__ == "__main__":
    main()
