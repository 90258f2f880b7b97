"""The gradient strategies against the peers a user would pick instead, side by side in one run.

One model for everyone: batch 64 of 1×16×16 inputs, a conv trunk (conv 16 → conv 32 → max-pool 4
→ linear 512→128 = the shared representation ``z``, 70k shared parameters) and K linear
regression heads (128 → 1, MSE). For each K in ``--tasks`` and each method in ``--methods``
(UPGrad, MGDA, PCGrad by default), one SGD step costs, as a ratio to the step of a hand-written
summed loss (``sum(losses).backward()``):

- ``torchjd``: TorchJD's ``mtl_backward(losses, features=z)`` (the Jacobian of the losses with
  respect to the trunk's parameters, by a vectorised backward) then ``jac_to_grad`` with its
  aggregator of the same name;
- ``LibMTL way``: K ``losses[i].backward(retain_graph=True)`` calls, each task's trunk gradient
  flattened into a K×P matrix, the weights from its Gramian (the package's solver for the same
  method, so that only the way the gradients are taken and applied differs) and the trunk's
  ``.grad`` set by hand to ``Σ wᵢgᵢ`` (the heads keep their unweighted task gradients, as in
  LibMTL);
- ``package, parameters`` (and, with ``--batched`` or by default on CUDA, ``…, batched
  Jacobian``: ``set_jacobian_mode("batched")``) and ``package, representation``: the strategy
  through ``MultiTaskMixin``'s real ``training_step``, then the backward of the returned loss and
  the optimizer step, as Lightning's automatic optimization runs them (the Trainer's own loop
  costs the same for every variant and is left out, as in ``scaling.py``). Without a Trainer
  every step would count as a logging step, on which the mixin reads the task losses it kept
  (a wait for the device); the module does that every 50th step, as on Lightning's default
  logging steps.

Each variant runs ``--warmup`` steps, then at least ``--steps`` timed steps (a cheap variant
runs more, about ``--min-time`` seconds, up to ten times ``--steps``); its time in the round is
the 10% quantile of those steps: the code's cost is paid at every step, while the machine's
interruptions only add time (``summed (A/A)``, the reference measured again, shows how far apart
identical variants measure). On CPU with one
thread the clock is the CPU time of the training thread (``time.thread_time``), so that other
processes on a shared machine count less; ``--clock wall`` (and any CUDA run, synchronised
around each step) uses ``time.perf_counter``. The variants of one K run interleaved in
``--rounds`` rounds, in a rotated order; each ratio is taken within its round and the table
shows the median over the rounds.

The minor page faults of each timed step are counted too (the median is printed): glibc hands
freed memory back to the kernel depending on what ran before, and the new pages a step then gets
are paid in its time (0 to about 2 700 a step here for the same code in different orders).

Peak memory of one step (measured in the first round), above what was allocated before it:
CUDA: ``torch.cuda.max_memory_allocated``; CPU: the peak of live tensor memory recorded by
``torch.profiler`` (an estimate at operator granularity, see ``scaling.py``). ``one backward`` is
the peak of the summed loss's backward alone; the memory target is that the parameter route's
step needs at most the K×P Jacobian plus one backward more than the summed step.

The targets are printed with PASS or FAIL (the median over the rounds, and the rounds' range):
the parameter route at most 0.7× torchjd's time for the same method at K = 8 and 0.4× at K = 40,
and below the LibMTL way at every K; the representation route at most 1.2× the summed loss at
K = 8 and 2× at K = 40; the memory bound above. ``--check`` exits with 1 when one fails.

TorchJD is optional (``pip install ".[bench]"``); without it its columns are left out.

Run: ``python benchmarks/peers.py`` (``--help`` for the options; ``--device cuda``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from scaling import check_run_arguments, cpu_peak_bytes, sync
from torch import Tensor, nn

from lightning_multiloss import MultiTaskMixin, Task
from lightning_multiloss.gradients import JacobianMode, set_jacobian_mode
from lightning_multiloss.weighting import WEIGHTINGS, GramianWeighting, Progress

resource: Any
try:
    import resource
except ImportError:  # Windows has no resource module: no page-fault counts
    resource = None

torchjd_aggregation: Any
try:
    import torchjd.aggregation as torchjd_aggregation
    from torchjd.autojac import jac_to_grad, mtl_backward
except ImportError:  # the bench extra is not installed
    torchjd_aggregation = None

METHODS = ("upgrad", "mgda", "pcgrad")
TORCHJD_NAMES = {"upgrad": "UPGrad", "mgda": "MGDA", "pcgrad": "PCGrad", "imtl_g": "IMTLG", "aligned_mtl": "AlignedMTL"}
SUMMED = "summed"
SUMMED_AGAIN = "summed (A/A)"  # the reference measured twice: how far apart identical variants measure
TYPICAL_QUANTILE = 0.1  # a variant's step time in a round: this quantile of its timed steps
FAMILIES = {
    "torchjd": "torchjd",
    "libmtl": "LibMTL way",
    "para": "package, parameters",
    "batched": "package, parameters, batched Jacobian",
    "repr": "package, representation",
}
TARGET_TORCHJD = {8: 0.7, 40: 0.4}
LOG_EVERY_N_STEPS = 50  # Lightning's default: the mixin checks the kept losses on these steps
TARGET_REPRESENTATION = {8: 1.2, 40: 2.0}

Batch = tuple[Tensor, Tensor]
Step = Callable[[Batch], None]


# -- the model ---------------------------------------------------------------------------------
def make_trunk() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 128),
        nn.ReLU(),
    )


class TrunkAndHeads(nn.Module):
    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        torch.manual_seed(0)  # every variant starts from the same weights
        self.trunk = make_trunk()
        self.heads = nn.ModuleList(nn.Linear(128, 1) for _ in range(num_tasks))

    def task_losses(self, batch: Batch) -> tuple[Tensor, list[Tensor]]:
        x, y = batch
        z = self.trunk(x)
        return z, [F.mse_loss(head(z), y[:, i : i + 1]) for i, head in enumerate(self.heads)]


class MixinNet(MultiTaskMixin, pl.LightningModule):
    """The same network through the package: the mixin computes the task losses and the weights."""

    def __init__(self, weighting: GramianWeighting, num_tasks: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = make_trunk()
        self.heads = nn.ModuleList(nn.Linear(128, 1) for _ in range(num_tasks))
        self.configure_multitask([Task(f"t{i}", F.mse_loss) for i in range(num_tasks)], weighting)
        self.checks_asked = 0

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.shared_representation(self.trunk(x))
        return {f"t{i}": head(z) for i, head in enumerate(self.heads)}

    # Logging is Lightning's job, the same for every variant: no Trainer here.
    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def check_finite_losses(self) -> None:
        # Outside a Trainer every step counts as a logging step, where the mixin reads the kept
        # losses; in one, that happens on the logging steps alone (Lightning's default: every 50).
        self.checks_asked += 1
        if self.checks_asked % LOG_EVERY_N_STEPS == 0:
            super().check_finite_losses()

    def log_dict(self, *args: Any, **kwargs: Any) -> None:
        pass


def gramian_strategy(method: str, route: str) -> GramianWeighting:
    strategy = WEIGHTINGS[method](route=route)  # type: ignore[call-arg]
    assert isinstance(strategy, GramianWeighting)
    return strategy


def make_batch(num_tasks: int, batch_size: int, device: torch.device) -> Batch:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch_size, 1, 16, 16, generator=g)
    y = torch.randn(batch_size, num_tasks, generator=g)
    return x.to(device), y.to(device)


def shared_size() -> int:
    return sum(p.numel() for p in make_trunk().parameters())


# -- the variants: each builds its model and returns one training step --------------------------
def summed_step(k: int, device: torch.device) -> Step:
    model = TrunkAndHeads(k).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        _, losses = model.task_losses(batch)
        sum(losses).backward()  # type: ignore[union-attr]
        optimizer.step()

    return step


def package_step(method: str, route: str, mode: JacobianMode, k: int, device: torch.device) -> Step:
    model = MixinNet(gramian_strategy(method, route), k).to(device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    counter = [0]

    def step(batch: Batch) -> None:
        x, y = batch
        inputs = {"x": x, **{f"t{i}": y[:, i : i + 1] for i in range(k)}}
        set_jacobian_mode(mode)
        model.weighting.set_progress(Progress(counter[0], 0, None))
        optimizer.zero_grad(set_to_none=True)
        loss = model.training_step(inputs, counter[0])
        loss.backward()
        optimizer.step()
        model.weighting.after_optimizer_step()
        counter[0] += 1

    return step


def torchjd_step(method: str, k: int, device: torch.device) -> Step:
    assert torchjd_aggregation is not None
    model = TrunkAndHeads(k).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    aggregator = getattr(torchjd_aggregation, TORCHJD_NAMES[method])()
    shared = list(model.trunk.parameters())

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        z, losses = model.task_losses(batch)
        mtl_backward(losses, features=z)
        jac_to_grad(shared, aggregator)
        optimizer.step()

    return step


def libmtl_step(method: str, k: int, device: torch.device) -> Step:
    model = TrunkAndHeads(k).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    strategy = gramian_strategy(method, "parameters")
    strategy.bind([f"t{i}" for i in range(k)])
    shared = list(model.trunk.parameters())
    sizes = [p.numel() for p in shared]

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        _, losses = model.task_losses(batch)
        grads = torch.empty(k, sum(sizes), device=device)
        for i, loss in enumerate(losses):
            loss.backward(retain_graph=True)
            torch.cat([p.grad.reshape(-1) for p in shared if p.grad is not None], out=grads[i])
            for p in shared:
                assert p.grad is not None
                p.grad.zero_()
        weights = strategy.weights_from_gramian(grads @ grads.T, torch.stack(losses).detach())
        combined = weights.to(grads.dtype) @ grads
        for p, piece in zip(shared, combined.split(sizes), strict=True):
            p.grad = piece.view_as(p).clone()
        optimizer.step()

    return step


@dataclass(frozen=True)
class Variant:
    family: str  # "summed" or a key of FAMILIES
    method: str = ""

    @property
    def label(self) -> str:
        return self.family if self.family in (SUMMED, SUMMED_AGAIN) else f"{self.family} {self.method}"

    def build(self, k: int, device: torch.device) -> Step:
        if self.family in (SUMMED, SUMMED_AGAIN):
            return summed_step(k, device)
        if self.family == "torchjd":
            return torchjd_step(self.method, k, device)
        if self.family == "libmtl":
            return libmtl_step(self.method, k, device)
        route = "representation" if self.family == "repr" else "parameters"
        mode: JacobianMode = "batched" if self.family == "batched" else "loop"
        return package_step(self.method, route, mode, k, device)


# -- measuring ---------------------------------------------------------------------------------
def minor_faults() -> int:
    """The calling thread's minor page faults so far (0 where the platform does not count them per thread)."""
    who = getattr(resource, "RUSAGE_THREAD", None) if resource is not None else None
    return resource.getrusage(who).ru_minflt if who is not None else 0


def peak_bytes(run: Callable[[], None], device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return cpu_peak_bytes(run)


def measure(
    variant: Variant, k: int, args: argparse.Namespace, device: torch.device, memory: bool
) -> tuple[float, float, float]:
    """(typical step seconds, peak step memory in MiB or NaN when ``memory`` is false, median minor
    page faults per timed step)."""
    step = variant.build(k, device)
    batch = make_batch(k, args.batch_size, device)
    read = time.thread_time if args.clock == "cpu" else time.perf_counter
    start = read()
    for _ in range(args.warmup):
        step(batch)
    warmup = (read() - start) / max(args.warmup, 1)
    # Cheap variants take more steps (about --min-time seconds in all): a steadier median.
    count = max(args.steps, min(10 * args.steps, math.ceil(args.min_time / max(warmup, 1e-6))))
    times, faults = [], []
    for _ in range(count):
        sync(device)
        faults_before = minor_faults()
        start = read()
        step(batch)
        sync(device)
        times.append(read() - start)
        faults.append(minor_faults() - faults_before)
    peak = peak_bytes(lambda: step(batch), device) / 2**20 if memory else math.nan
    set_jacobian_mode("loop")
    typical = sorted(times)[int(TYPICAL_QUANTILE * (len(times) - 1))]
    return typical, peak, statistics.median(faults)


def one_backward_mib(k: int, args: argparse.Namespace, device: torch.device) -> float:
    """Peak memory of the summed loss's backward alone (the forward's activations already held)."""
    model = TrunkAndHeads(k).to(device)
    batch = make_batch(k, args.batch_size, device)
    model.zero_grad(set_to_none=True)
    _, losses = model.task_losses(batch)
    total = sum(losses)
    return peak_bytes(lambda: total.backward(), device) / 2**20  # type: ignore[union-attr]


# -- the report --------------------------------------------------------------------------------
def fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 8, 40], help="values of K")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=sorted(TORCHJD_NAMES))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and round (at least)")
    parser.add_argument(
        "--min-time", type=float, default=0.25, help="seconds of timed steps per variant and round, up to 10× --steps"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (ratios: median over rounds)")
    parser.add_argument(
        "--batched",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time the parameter route with the batched Jacobian (default: on CUDA only)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on CPU (0: torch's default)")
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default=None,
        help="cpu: CPU time of the training thread (default on CPU with one thread); wall: time.perf_counter",
    )
    parser.add_argument("--check", action="store_true", help="exit with 1 when a target is missed")
    args = parser.parse_args()
    check_run_arguments(parser, args)

    if args.clock is None:
        args.clock = "cpu" if args.device == "cpu" and args.threads == 1 else "wall"
    if args.clock == "cpu" and (args.device != "cpu" or args.threads != 1):
        parser.error("--clock cpu needs --device cpu and --threads 1 (the step must run on one thread)")
    device = torch.device(args.device)
    if args.threads > 0 and device.type == "cpu":
        torch.set_num_threads(args.threads)
    families = [f for f in FAMILIES if not (f == "torchjd" and torchjd_aggregation is None)]
    if not (device.type == "cuda" if args.batched is None else args.batched):
        families.remove("batched")
    variants = [Variant(SUMMED), Variant(SUMMED_AGAIN)] + [Variant(f, m) for f in families for m in args.methods]

    ratio: dict[tuple[str, int], list[float]] = {}
    against: dict[tuple[str, str, int], list[float]] = {}  # parameter route / a peer, same method
    seconds: dict[int, list[float]] = {}
    memory: dict[tuple[str, int], float] = {}
    faults: dict[tuple[str, int], list[float]] = {}
    backward_mib: dict[int, float] = {}
    started = time.perf_counter()
    for k in args.tasks:
        backward_mib[k] = one_backward_mib(k, args, device)
        for r in range(args.rounds):
            shift = r % len(variants)
            results = {v.label: measure(v, k, args, device, memory=r == 0) for v in variants[shift:] + variants[:shift]}
            base = results[SUMMED][0]
            seconds.setdefault(k, []).append(base)
            for label, (t, mib, step_faults) in results.items():
                ratio.setdefault((label, k), []).append(t / base)
                faults.setdefault((label, k), []).append(step_faults)
                if r == 0:
                    memory[(label, k)] = mib
            for method in args.methods:
                for peer in ("torchjd", "libmtl"):
                    if f"{peer} {method}" in results:
                        para = results[f"para {method}"][0]
                        against.setdefault((peer, method, k), []).append(para / results[f"{peer} {method}"][0])
    elapsed = time.perf_counter() - started

    def median_ratio(family: str, method: str, k: int) -> float:
        values = ratio.get((f"{family} {method}", k))
        return statistics.median(values) if values else math.nan

    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(
        f"device={device} threads={threads} clock={args.clock} batch={args.batch_size} steps={args.steps} "
        f"warmup={args.warmup} rounds={args.rounds} ({elapsed:.0f} s)\n"
    )
    names = " / ".join(args.methods)
    print(f"Step time as a ratio to the hand-written summed loss (same K, same round; median over rounds), {names}\n")
    print("| K | summed (ms) | summed (A/A) | " + " | ".join(FAMILIES[f] for f in families) + " |")
    print("|---|---:|---:|" + "---|" * len(families))
    for k in args.tasks:
        cells = [" / ".join(fmt(median_ratio(f, m, k)) for m in args.methods) for f in families]
        again = fmt(statistics.median(ratio[(SUMMED_AGAIN, k)]))
        print(f"| {k} | {statistics.median(seconds[k]) * 1000:.1f} | {again} | " + " | ".join(cells) + " |")

    jacobian_mib = {k: k * shared_size() * 4 / 2**20 for k in args.tasks}
    print(f"\nPeak memory of one step in MiB, above the memory held before it (methods {names})\n")
    print("| K | summed | one backward | K×P Jacobian | " + " | ".join(FAMILIES[f] for f in families) + " |")
    print("|---|---:|---:|---:|" + "---|" * len(families))
    for k in args.tasks:
        cells = [" / ".join(fmt(memory[(f"{f} {m}", k)]) for m in args.methods) for f in families]
        print(
            f"| {k} | {fmt(memory[(SUMMED, k)])} | {fmt(backward_mib[k])} | {fmt(jacobian_mib[k])} | "
            + " | ".join(cells)
            + " |"
        )

    print(
        f"\nMinor page faults per timed step (median over its steps and the rounds; methods {names}): "
        "new pages the step's buffers got from the kernel, paid in its time; with glibc, "
        "MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_MMAP_THRESHOLD_=1073741824 keeps the pages\n"
    )
    print("| K | summed | " + " | ".join(FAMILIES[f] for f in families) + " |")
    print("|---|---:|" + "---|" * len(families))
    for k in args.tasks:
        cells = [
            " / ".join(f"{statistics.median(faults[(f'{f} {m}', k)]):.0f}" for m in args.methods) for f in families
        ]
        print(f"| {k} | {statistics.median(faults[(SUMMED, k)]):.0f} | " + " | ".join(cells) + " |")

    print("\nTargets\n")
    failed = False

    def target(text: str, values: list[float], limit: float, strict: bool = False) -> None:
        """The median over the rounds against ``limit``; the rounds' range shows how settled it is."""
        nonlocal failed
        value = statistics.median(values)
        ok = value < limit if strict else value <= limit
        failed |= not ok
        spread = f" (rounds {min(values):.2f}–{max(values):.2f})" if len(values) > 1 else ""
        print(f"- {text}: {value:.2f}{spread} {'<' if strict else '<='} {limit:g} {'PASS' if ok else 'FAIL'}")

    for k in args.tasks:
        for method in args.methods:
            if k in TARGET_TORCHJD and ("torchjd", method, k) in against:
                target(f"K={k} {method}: parameter route / torchjd", against[("torchjd", method, k)], TARGET_TORCHJD[k])
            target(f"K={k} {method}: parameter route / LibMTL way", against[("libmtl", method, k)], 1.0, strict=True)
            if k in TARGET_REPRESENTATION:
                values = ratio[(f"repr {method}", k)]
                target(f"K={k} {method}: representation route / summed", values, TARGET_REPRESENTATION[k])
            extra = memory[(f"para {method}", k)] - memory[(SUMMED, k)]
            bound = jacobian_mib[k] + backward_mib[k]
            what = f"extra {extra:.1f} MiB / (Jacobian {jacobian_mib[k]:.1f} + one backward {backward_mib[k]:.1f})"
            target(f"K={k} {method}: parameter route's memory, {what}", [extra / bound], 1.0)
    if torchjd_aggregation is None:
        print('\ntorchjd is not installed (pip install ".[bench]"): its columns and targets are left out')
    if args.check and failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
