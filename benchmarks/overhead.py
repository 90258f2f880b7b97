"""Per-step overhead of ``MultiTaskMixin`` against a hand-written weighted sum.

The same network, a shared MLP trunk with a 10-class head and a 64-value reconstruction head
(the shape of sklearn's digits: 64 inputs), is trained with Lightning's real loop
(``Trainer.fit`` with ``max_steps``) in several variants:

- ``hand-written (3 keys)``: a plain ``LightningModule`` whose ``training_step`` computes
  ``0.5 * l1 + 0.3 * l2`` and logs the two task losses and the total with ``self.log``, as a
  user would; the targets apply to the ratio against it;
- ``hand-written (A/A)``: the same module again: how far apart two identical variants measure;
- ``hand-written, same logging``: the same, logging what the mixin logs the way it logs it:
  ``train/loss`` every step, the task losses and weights (``train/loss/<task>``,
  ``train/weight/<task>``) only on the Trainer's logging steps, the only steps whose values
  reach the loggers, and each task's epoch-mean training loss (``train/loss/<task>_epoch``)
  at each epoch's end. Each ``self.log`` key costs Lightning a fixed amount per call, so the
  ratio against it ("same-logging ratio") is the cost of the mixin's code alone;
- the same network through ``MultiTaskMixin`` with ``fixed`` [0.5, 0.3], ``scheduled`` (a
  cosine alpha that changes every step), ``learnable``, and every other registered strategy
  that ``create_weighting(name)`` builds without arguments and that does not need the task
  gradients (``GradientWeighting``; those have their own benchmark).

A step's time is the time from one ``on_train_batch_start`` to the next: the whole loop
iteration (fetching a pre-collated batch, the hooks, ``training_step``, backward, the
optimizer step, the callbacks and Lightning's processing of the logged values). By default
(CPU, one torch thread) it is the CPU time of the training thread, so that other processes
on the machine count less; ``--clock wall`` uses ``time.perf_counter``. Each fit drops its
first steps (warm-up). The variants are interleaved in rounds, in a new random order each round, so that
slow phases of the machine hit them all alike; the ratio to a reference is computed within
each round (typical step time over typical step time) and its median over the rounds is
reported. A fit's typical step time is the 10% quantile of its step times: the code's own cost
is paid at every step, while interruptions by the machine (other processes, a busy hyperthread
sibling) only add time, and on a shared 2-core machine they made the median of a fit move by
±10% between identical fits, the 10% quantile by ±2% (the '(A/A)' row shows it).

Targets: ``fixed``, ``scheduled`` and ``learnable`` at most 1.03× the hand-written module with
three keys, every other loss-level strategy 1.05×; ``fixed`` at most 1.02× the hand-written
module that logs the same values.

Run: ``python benchmarks/overhead.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import pkgutil
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger
from scaling import check_known, check_run_arguments
from torch import Tensor, nn
from torch.utils.data import DataLoader

import lightning_multiloss.weighting as weighting_package
from lightning_multiloss import MultiTaskMixin, Task
from lightning_multiloss.callback import LossWeightingCallback
from lightning_multiloss.schedules import Cosine
from lightning_multiloss.weighting import WEIGHTINGS, Fixed, GradientWeighting, Scheduled, Weighting, create_weighting

INPUTS, CLASSES = 64, 10
TARGET_CORE = 1.03  # fixed, scheduled, learnable
TARGET_OTHER = 1.05  # every other loss-level strategy
TARGET_SAME_LOGGING = 1.02  # fixed, against the hand-written module that logs the same values
TYPICAL_QUANTILE = 0.1  # a fit's typical step time: this quantile of its step times (see the docs)
BASELINE = "hand-written (3 keys)"
SAME_KEYS = "hand-written, same logging"


# -- the network ---------------------------------------------------------------------------
class _Net(pl.LightningModule):
    """Shared MLP trunk (64 → hidden → hidden), a 10-class head and a 64-value head."""

    def __init__(self, hidden: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(INPUTS, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.heads = nn.ModuleDict({"digit": nn.Linear(hidden, CLASSES), "recon": nn.Linear(hidden, INPUTS)})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.trunk(x)
        return {"digit": self.heads["digit"](z), "recon": self.heads["recon"](z)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class HandWritten(_Net):
    """What a user writes without the package."""

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self(batch["x"])
        l1 = F.cross_entropy(out["digit"], batch["digit"])
        l2 = F.mse_loss(out["recon"], batch["x"])
        loss = 0.5 * l1 + 0.3 * l2
        self.log("train/loss/digit", l1)
        self.log("train/loss/recon", l2)
        self.log("train/loss", loss, prog_bar=True)
        return loss


class HandWrittenSameKeys(_Net):
    """The hand-written module logging as the mixin does: the total every step, the rest on logging steps."""

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self(batch["x"])
        l1 = F.cross_entropy(out["digit"], batch["digit"])
        l2 = F.mse_loss(out["recon"], batch["x"])
        loss = 0.5 * l1 + 0.3 * l2
        self.log("train/loss", loss, prog_bar=True)
        self.epoch_sums += torch.stack([l1, l2]).detach()
        self.epoch_batches += 1
        if self.trainer._logger_connector.should_update_logs:
            self.log("train/loss/digit", l1)
            self.log("train/loss/recon", l2)
            self.log("train/weight/digit", 0.5)
            self.log("train/weight/recon", 0.3)
        return loss

    def on_train_epoch_start(self) -> None:
        self.epoch_sums = torch.zeros(2, device=self.device)
        self.epoch_batches = 0

    def on_train_epoch_end(self) -> None:
        # Each task's epoch-mean training loss (Keras' per-epoch history), as the mixin logs it.
        means = self.epoch_sums / max(self.epoch_batches, 1)
        self.log("train/loss/digit_epoch", means[0], on_step=False, on_epoch=True)
        self.log("train/loss/recon_epoch", means[1], on_step=False, on_epoch=True)


class WithMixin(MultiTaskMixin, _Net):  # type: ignore[misc]
    """The same network and losses through the mixin."""

    def __init__(self, hidden: int, weighting: Weighting) -> None:
        super().__init__(hidden)
        self.configure_multitask(
            [Task("digit", F.cross_entropy), Task("recon", F.mse_loss, target="x")],
            weighting,
        )


def make_batches(n_batches: int, batch_size: int, seed: int = 0) -> list[dict[str, Tensor]]:
    """Pre-collated batches of digits-like data (64 values in [0, 16], a label in 0..9)."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "x": torch.randint(0, 17, (batch_size, INPUTS), generator=g).float() / 16.0,
            "digit": torch.randint(0, CLASSES, (batch_size,), generator=g),
        }
        for _ in range(n_batches)
    ]


# -- timing --------------------------------------------------------------------------------
class StepTimer(pl.Callback):
    """Stamps every ``on_train_batch_start``: consecutive stamps bound one loop iteration.

    ``clock="cpu"`` reads the CPU time of the training thread (``time.thread_time``): with one
    torch thread every step runs on it, and the time the machine gives other processes is left
    out. ``clock="wall"`` reads ``time.perf_counter`` (after a CUDA synchronisation on GPU).
    """

    def __init__(self, clock: str, sync: bool) -> None:
        self.read = time.thread_time if clock == "cpu" else time.perf_counter
        self.sync = sync
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.sync:
            torch.cuda.synchronize()
        self.stamps.append(self.read())

    def step_times(self, skip: int) -> list[float]:
        return [b - a for a, b in zip(self.stamps[skip:], self.stamps[skip + 1 :], strict=False)]


@dataclass
class Variant:
    label: str
    build: Callable[[], pl.LightningModule]
    target: float | None  # None: a hand-written reference
    uses_mixin: bool
    same_logging_target: float | None = None  # against SAME_KEYS, where it differs from ``target``
    rounds: list[list[float]] = field(default_factory=list)  # step times (s), one list per round


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (the nearest rank below)."""
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def fit(variant: Variant, args: argparse.Namespace, batches: list[dict[str, Tensor]], steps: int) -> list[float]:
    model = variant.build()
    gc.collect()  # not during the timed steps
    timer = StepTimer(args.clock, sync=args.device == "cuda")
    callbacks: list[pl.Callback] = [timer]
    if variant.uses_mixin:
        # The callback the mixin would add, without the end-of-fit PNG (not a per-step cost).
        callbacks.append(LossWeightingCallback(plot=False))
    with tempfile.TemporaryDirectory() as folder:
        trainer = pl.Trainer(
            accelerator="gpu" if args.device == "cuda" else "cpu",
            devices=1,
            max_steps=steps + args.warmup + 1,
            logger=CSVLogger(folder, name="") if args.logger == "csv" else False,
            default_root_dir=folder,
            callbacks=callbacks,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
        )
        loader: DataLoader[Any] = DataLoader(batches, batch_size=None, shuffle=False)  # type: ignore[arg-type]
        trainer.fit(model, train_dataloaders=loader)
    return timer.step_times(args.warmup)


# -- the variants --------------------------------------------------------------------------
def import_all_strategies() -> list[str]:
    """Import every strategy module, so that each registers itself; return import errors."""
    errors = []
    for info in pkgutil.iter_modules(weighting_package.__path__):
        if info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{weighting_package.__name__}.{info.name}")
        except Exception as error:  # a strategy under construction must not stop the benchmark
            errors.append(f"module {info.name}: {type(error).__name__}: {error}")
    return errors


def build_variants(args: argparse.Namespace, total_steps: int) -> tuple[list[Variant], list[str]]:
    hidden = args.hidden

    def mixin(make: Callable[[], Weighting]) -> Callable[[], pl.LightningModule]:
        return lambda: WithMixin(hidden, make())

    variants = [
        Variant(BASELINE, lambda: HandWritten(hidden), None, False),
        Variant("hand-written (A/A)", lambda: HandWritten(hidden), None, False),
        Variant(SAME_KEYS, lambda: HandWrittenSameKeys(hidden), None, False),
        Variant("fixed [0.5, 0.3]", mixin(lambda: Fixed([0.5, 0.3])), TARGET_CORE, True, TARGET_SAME_LOGGING),
        Variant(
            "scheduled (cosine alpha)",
            mixin(lambda: Scheduled(Cosine(start=0.9, end=0.1, duration=total_steps))),
            TARGET_CORE,
            True,
        ),
        Variant("learnable", mixin(lambda: create_weighting("learnable")), TARGET_CORE, True),
    ]
    skipped = import_all_strategies()
    for name in sorted(WEIGHTINGS):
        if name in ("fixed", "scheduled", "learnable"):
            continue
        if issubclass(WEIGHTINGS[name], GradientWeighting):
            continue  # gradient strategies have their own benchmark
        try:
            WithMixin(hidden, create_weighting(name))  # built once now, so that a failure is reported here
        except Exception as error:
            skipped.append(f"{name}: create_weighting({name!r}) failed: {type(error).__name__}: {error}")
            continue
        variants.append(Variant(name, mixin(partial(create_weighting, name)), TARGET_OTHER, True))
    return variants, skipped


# -- main ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="timed training steps per fit (default 100)")
    p.add_argument("--rounds", type=int, default=12, help="rounds; each round fits every variant once (default 12)")
    p.add_argument("--warmup", type=int, default=20, help="steps dropped at the start of each fit (default 20)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1, for stable timings)")
    p.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default=None,
        help="cpu: CPU time of the training thread (default on CPU with one thread: other processes on the\n"
        "machine do not count); wall: time.perf_counter (default otherwise, and always on CUDA)",
    )
    p.add_argument("--hidden", type=int, default=256, help="width of the trunk (default 256)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--logger", choices=("csv", "none"), default="csv", help="CSVLogger to a temporary folder, or none")
    p.add_argument("--only", nargs="*", default=None, help="benchmark only these variants (labels or names)")
    p.add_argument("--check", action="store_true", help="exit with status 1 if any variant misses its target")
    args = p.parse_args(argv)
    check_run_arguments(p, args, min_steps=10)
    if args.threads < 1 or args.hidden < 1:  # torch.set_num_threads takes no 0
        p.error(f"--threads and --hidden must be >= 1, got {args.threads} and {args.hidden}")
    args.parser = p  # for --only, checked against the variants once they are built
    if args.clock is None:
        args.clock = "cpu" if args.device == "cpu" and args.threads == 1 else "wall"
    if args.clock == "cpu" and (args.device == "cuda" or args.threads != 1):
        p.error("--clock cpu needs --device cpu and --threads 1 (the step must run on one thread)")
    return args


def quiet() -> None:
    for name in (
        "pytorch_lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "lightning_fabric",
        "lightning_multiloss",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads)
    batches = make_batches(n_batches=28, batch_size=args.batch_size)  # 1792 samples an epoch, like digits
    total_steps = args.steps + args.warmup + 1
    variants, skipped = build_variants(args, total_steps)
    names = {v.label for v in variants} | {v.label.split(" ")[0] for v in variants if v.uses_mixin}
    check_known(args.parser, "--only", args.only, sorted(names))
    if args.only:
        keep = set(args.only) | {v.label for v in variants if v.target is None}
        variants = [v for v in variants if v.label in keep or v.label.split(" ")[0] in keep]

    print(
        f"MultiTaskMixin overhead: torch {torch.__version__}, pytorch_lightning {pl.__version__}, "
        f"Python {platform.python_version()}, device {args.device}, torch threads {args.threads}, "
        f"clock: {'CPU time of the training thread' if args.clock == 'cpu' else 'wall (perf_counter)'}"
    )
    print(
        f"network: 64 -> {args.hidden} -> {args.hidden} MLP trunk (ReLU), heads 10 classes + 64 values, "
        f"batch {args.batch_size}, Adam; logger: {args.logger}"
    )
    print(
        f"baseline '{BASELINE}': a plain LightningModule computing 0.5 * l1 + 0.3 * l2 that logs its two task "
        "losses and the total with self.log, as a user would;\n"
        "  the mixin logs the total every step and the 2 losses and 2 weights on the Trainer's logging steps, "
        f"as '{SAME_KEYS}' does;\n"
        "  '(A/A)' is the baseline again: how far apart two identical variants measure on this machine"
    )
    print(f"{args.rounds} rounds x {args.steps} timed steps per variant (after {args.warmup} warm-up steps per fit)\n")

    # Warm-up fits (first-call costs, allocator), and a check that every variant trains.
    working = []
    for variant in variants:
        try:
            fit(variant, args, batches, steps=20)
            working.append(variant)
        except Exception as error:
            skipped.append(f"{variant.label}: training failed: {type(error).__name__}: {error}")
    # A variant with a target that did not train misses it (--check passed with none measured).
    unmeasured = [v.label for v in variants if v.target is not None and v not in working]
    variants = working

    started = time.perf_counter()
    shuffle = random.Random(0).shuffle
    for _ in range(args.rounds):
        order = list(variants)
        shuffle(order)  # a new order each round: no variant always runs first, or after the same one
        for variant in order:
            variant.rounds.append(fit(variant, args, batches, args.steps))
    elapsed = time.perf_counter() - started

    by_label = {v.label: v for v in variants}
    references = [by_label[BASELINE], by_label.get(SAME_KEYS)]
    typical = {v.label: [quantile(times, TYPICAL_QUANTILE) for times in v.rounds] for v in variants}

    def ratios(variant: Variant, reference: Variant | None) -> list[float]:
        if reference is None:
            return []
        pairs = zip(typical[variant.label], typical[reference.label], strict=True)
        return sorted(a / b for a, b in pairs)  # one ratio per round

    def ratio(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    def quartiles(values: list[float]) -> str:
        if len(values) < 4:
            return ""
        q1, _, q3 = statistics.quantiles(values, n=4)
        return f"{q1:.2f}..{q3:.2f}"

    def verdict(value: float | None, target: float | None) -> str:
        if value is None or target is None:
            return ""
        return "PASS" if value <= target else "FAIL"

    header = (
        f"{'variant':<32} {'median step':>11}  {'ratio':>6} {'(IQR)':>10}  {'target':>7}  {'result':<6}  "
        f"{'same-logging ratio':>18} {'(IQR)':>10}  {'target':>7}  {'result':<6}"
    )
    print(header)
    print("-" * len(header))
    failed = bool(unmeasured)
    for variant in variants:
        pooled = statistics.median(t for times in variant.rounds for t in times)
        x1, x2 = (ratios(variant, ref) for ref in references)
        r1, r2 = ratio(x1), ratio(x2)
        v1 = verdict(r1, variant.target)
        v2 = verdict(r2, variant.same_logging_target)
        failed |= v1 == "FAIL" or (variant.same_logging_target is not None and v2 == "FAIL")
        target = f"<= {variant.target:.2f}" if variant.target is not None else ""
        target2 = f"<= {variant.same_logging_target:.2f}" if variant.same_logging_target is not None else ""
        print(
            f"{variant.label:<32} {pooled * 1e6:>8.0f} us  {r1:>6.3f} {quartiles(x1):>10}  {target:>7}  {v1:<6}  "
            f"{'' if r2 is None else f'{r2:.3f}':>18} {quartiles(x2):>10}  {target2:>7}  {v2:<6}"
        )
    print(
        f"\nratio: median over the rounds of (typical step time) / (that of '{BASELINE}' in the same round), "
        "with the quartiles of the rounds' ratios;\n"
        f"typical step time: the {TYPICAL_QUANTILE:.0%} quantile of a fit's step times (a per-step cost shows in "
        "every step; the machine's interruptions only add time); 'median step': over all rounds;\n"
        f"same-logging ratio: the same against '{SAME_KEYS}'."
    )
    for line in skipped:
        print(f"not benchmarked: {line}")
    print(f"timed rounds took {elapsed:.0f} s")
    return 1 if (failed and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
