"""2-process DDP runs of every gradient strategy, both routes, exact and local modes (one launch).

Each rank saves, per run ``"<strategy>|<route>|<ddp>"``: its final parameters, its last weights,
the tasks and whether the strategy is deterministic. The test compares them with one process
on the doubled batch.

Usage: python ddp_exact.py OUT_DIR [NUM_STEPS] [BATCH_PER_RANK]
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytorch_lightning as pl
from torch.utils.data import DataLoader, DistributedSampler

from tests._ddp import save_rank_result
from tests._models import ToyDataset
from tests.test_gradient_routes import (
    STRATEGIES,
    is_deterministic,
    make_strategy,
    net_for,
    quiet_trainer,
    tasks_for,
)


class Interleaved(pl.LightningDataModule):
    """Rank r gets the samples r, r+2, r+4, ... in order (no shuffling): per step, the two ranks
    together hold exactly the doubled batch of the single-process reference."""

    def __init__(self, n: int, batch_size: int) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def train_dataloader(self) -> DataLoader:
        dataset = ToyDataset(self.n)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=DistributedSampler(dataset, shuffle=False))


def runs() -> list[tuple[str, str, str]]:
    out = [(name, route, "exact") for name in STRATEGIES for route in ("representation", "parameters")]
    out.append(("graddrop", "representation", "exact"))
    local = [n for n in ("mgda", "upgrad") if n in STRATEGIES] or ["test-mgda2"]
    out += [(name, route, "local") for name in local for route in ("representation", "parameters")]
    return out


def main() -> None:
    out_dir = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    results = {}
    rank = 0
    for name, route, ddp in runs():
        tasks = tasks_for(name)
        model = net_for(route, make_strategy(name, route, ddp), tasks, lr=0.2)
        trainer = quiet_trainer(
            accelerator="cpu",
            devices=2,
            strategy="ddp",
            max_steps=steps,
            default_root_dir=out_dir,
            use_distributed_sampler=False,
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=Interleaved(n=2 * steps * batch, batch_size=batch))
        rank = trainer.global_rank
        results[f"{name}|{route}|{ddp}"] = {
            "params": {k: v.detach().clone() for k, v in model.named_parameters()},
            "weights": model.weighting.last_weights.clone(),
            "global_step": trainer.global_step,
            "tasks": list(tasks),
            "deterministic": name == "graddrop" or is_deterministic(name, tasks),
            "seconds": time.perf_counter() - start,
        }
    save_rank_result(out_dir, rank, results)


if __name__ == "__main__":
    main()
