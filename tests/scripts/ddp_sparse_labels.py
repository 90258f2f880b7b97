"""2 DDP processes, a task labelled on one process only (its validation shard has no label).

Each process logs that task's metric at every step (labelled or not), so Lightning's epoch-end
computation, a collective, runs on both: without that, the process with labels waited forever.
Each rank saves the logged values and its final parameters.

Usage: python ddp_sparse_labels.py OUT_DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
from torch.utils.data import DataLoader, Dataset

from tests._ddp import save_rank_result
from tests._models import ToyDataset, ToyNet, quiet_trainer

N, BATCH = 16, 8
KEYS = ("val/mse/reg", "val/loss/reg", "val/mse_best/reg", "val/acc/cls")


def sparse_net() -> ToyNet:
    """The toy network with accuracy and MSE, and best values; ``reg`` counts where ``labelled`` is true."""
    return ToyNet(lr=0.1, metrics=True, masks={"reg": "labelled"}, best_metrics=True)


class Shard(Dataset):
    """ToyDataset(N, seed) with a ``labelled`` flag for ``reg`` (all True or all False)."""

    def __init__(self, seed: int, labelled: bool) -> None:
        self.data, self.labelled = ToyDataset(N, seed=seed), labelled

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict:
        return {**self.data[i], "labelled": torch.tensor(self.labelled)}


def main() -> None:
    out_dir = Path(sys.argv[1])
    trainer = quiet_trainer(devices=2, strategy="ddp", max_epochs=2, use_distributed_sampler=False)
    rank = trainer.global_rank
    model = sparse_net()
    train = DataLoader(Shard(rank, True), batch_size=BATCH)
    val = DataLoader(Shard(10 + rank, rank == 0), batch_size=BATCH)  # reg labelled on rank 0 only
    trainer.fit(model, train, val)
    save_rank_result(
        out_dir,
        rank,
        {
            "logged": {k: float(trainer.callback_metrics[k]) for k in KEYS},
            "params": {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("_mt")},
        },
    )


if __name__ == "__main__":
    main()
