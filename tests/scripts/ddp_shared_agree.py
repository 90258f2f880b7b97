"""2-process DDP run, parameter route: a layer that tasks ``cls`` and ``reg`` share, and ``reg``'s
loss constant on rank 1's first batch (no labels there). Each rank saves its parameters.

Each process used to choose its shared parameters from its own first graph: rank 0 the trunk and
the layer, rank 1 the trunk alone, and the all-reduce of their Jacobians (of different sizes)
aborted. Usage: python ddp_shared_agree.py OUT_DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pytorch_lightning.strategies import DDPStrategy
from torch import Tensor, nn

from lightning_multiloss.weighting import create_weighting
from tests._ddp import save_rank_result
from tests._models import ToyNet, quiet_trainer, toy_loader


class SharedLayer(ToyNet):
    def __init__(self) -> None:
        super().__init__(create_weighting("upgrad"), tasks=("cls", "reg", "aux"), lr=0.2)
        self.layer = nn.Sequential(nn.Linear(16, 16), nn.Tanh())
        self.unlabelled = False

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.unlabelled = self.trainer.global_rank == 1 and batch_idx == 0

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.trunk(x)
        shared = self.layer(z)
        reg = self.heads["reg"](shared)
        return {
            "cls": self.heads["cls"](shared),
            "reg": reg.detach() if self.unlabelled else reg,
            "aux": self.heads["aux"](z),
        }


def main() -> None:
    out_dir = sys.argv[1]
    model = SharedLayer()
    # reg's head gets no gradient on rank 1's first step, as with a plain summed loss.
    trainer = quiet_trainer(
        accelerator="cpu", devices=2, strategy=DDPStrategy(find_unused_parameters=True), max_steps=3
    )
    trainer.fit(model, toy_loader(n=48, batch_size=8))
    save_rank_result(
        out_dir,
        trainer.global_rank,
        {
            "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "shared": [name for name, p in model.named_parameters() if any(p is s for s in model.shared_parameters())],
            "global_step": trainer.global_step,
        },
    )


if __name__ == "__main__":
    main()
